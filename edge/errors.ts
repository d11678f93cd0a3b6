/**
 * Every error Edgeward raises is an `EdgewardError` with a stable `code`
 * (`EDGE_CONFIG_INVALID`, `EDGE_MODBUS_TIMEOUT`, …) and, where it wraps a
 * library error, a `cause`. Callers branch on `code`, never on `message`.
 */
export class EdgewardError extends Error {
  readonly code: string;
  readonly details?: Record<string, unknown>;

  constructor(code: string, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'EdgewardError';
    this.code = code;
    this.details = options.details;
  }
}

export function isEdgewardError(err: unknown, code?: string): err is EdgewardError {
  return err instanceof EdgewardError && (code === undefined || err.code === code);
}

/** An error and its causes, outermost first (ours wrap classic-level's, which wrap LevelDB's): at most 4. */
export function causeChain(err: unknown): Array<{ code?: unknown; message?: unknown }> {
  const chain: Array<{ code?: unknown; message?: unknown; cause?: unknown }> = [];
  for (let e = err as (typeof chain)[number] | undefined; e && chain.length < 4; e = e.cause as typeof e) chain.push(e);
  return chain;
}
