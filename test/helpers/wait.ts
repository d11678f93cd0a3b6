/** Options for {@link waitFor}. */
export interface WaitOptions {
  /** Give up after this many ms (default 5000). */
  timeoutMs?: number;
  /** Poll interval in ms (default 10). */
  intervalMs?: number;
  /** Text of the error thrown on timeout, so a failing test says what it waited for. */
  message?: string;
}

/**
 * Poll `cond` until it returns a truthy value (sync or async) and resolve with
 * that value; reject with an Error naming `message` after `timeoutMs`.
 * Tests wait on conditions with a deadline, never on fixed sleeps.
 * A `cond` that throws is treated as "not yet"; the last error becomes the cause on timeout.
 */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  opts: WaitOptions = {},
): Promise<Exclude<T, false | null | undefined | 0 | ''>> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const intervalMs = opts.intervalMs ?? 10;
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as Exclude<T, false | null | undefined | 0 | ''>;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) {
      const msg = `waitFor timed out after ${timeoutMs} ms: ${opts.message ?? 'condition not met'}`;
      throw lastErr === undefined ? new Error(msg) : new Error(msg, { cause: lastErr });
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Resolve after `ms`. For pacing loads only, never as synchronization. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
