/** Options for {@link waitFor}. */
export interface WaitOptions {
  /** Give up after this many ms (default 5000). */
  timeoutMs?: number;
  /** Poll interval in ms (default 10). */
  intervalMs?: number;
  /**
   * What the wait is for, shown in the error. Pass a function to describe the state seen at the
   * moment the wait fails (a template string is built before the wait starts, so it shows the initial state).
   */
  message?: string | (() => string);
  /**
   * Fail at once when `cond` throws, instead of treating the error as "not yet" (default false).
   * For a `cond` that catches its own not-ready errors and throws only when waiting longer is
   * pointless, e.g. the peer process has exited.
   */
  failFast?: boolean;
}

/**
 * Poll `cond` until it returns a truthy value (sync or async) and resolve with
 * that value; reject with an Error naming `message` after `timeoutMs`.
 * Tests wait on conditions with a deadline, never on fixed sleeps.
 * A `cond` that throws is treated as "not yet" (the last error is reported on timeout),
 * unless `failFast` is set: then the first error ends the wait.
 */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  opts: WaitOptions = {},
): Promise<Exclude<T, false | null | undefined | 0 | ''>> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const intervalMs = opts.intervalMs ?? 10;
  const started = Date.now();
  const deadline = started + timeoutMs;
  const describe = (): string => {
    const m = opts.message;
    if (m === undefined) return 'condition not met';
    if (typeof m === 'string') return m;
    try {
      return m();
    } catch (err) {
      return `(message function threw: ${(err as Error).message})`;
    }
  };
  // mocha prints the cause ("Caused by: …") under the message.
  const failure = (head: string, err: unknown): Error => {
    const msg = `${head}: ${describe()}`;
    return err === undefined ? new Error(msg) : new Error(msg, { cause: err });
  };
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as Exclude<T, false | null | undefined | 0 | ''>;
    } catch (err) {
      if (opts.failFast) throw failure(`waitFor failed after ${Date.now() - started} ms`, err);
      lastErr = err;
    }
    if (Date.now() >= deadline) throw failure(`waitFor timed out after ${timeoutMs} ms`, lastErr);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Resolve after `ms`. For pacing loads only, never as synchronization. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
