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
