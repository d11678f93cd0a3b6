import type { Clock } from '../../edge/clock.js';

/**
 * A clock the test moves: `now()` stands still and timers fire only in
 * `advance()`, so timing logic (linger, timeouts) is asserted without
 * depending on how busy the machine is.
 */
export class ManualClock implements Clock {
  private readonly timers = new Map<NodeJS.Timeout, { due: number; fn: () => void }>();

  constructor(private t = Date.UTC(2025, 2, 5, 8, 0, 0)) {}

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): NodeJS.Timeout {
    // An opaque handle: only clearTimeout ever sees it.
    const handle = { ref: () => handle, unref: () => handle, hasRef: () => false } as unknown as NodeJS.Timeout;
    this.timers.set(handle, { due: this.t + Math.max(0, ms), fn });
    return handle;
  }

  clearTimeout(handle: NodeJS.Timeout): void {
    this.timers.delete(handle);
  }

  /** Delays (from now) of the timers still pending, soonest first. */
  pending(): number[] {
    return [...this.timers.values()].map((x) => x.due - this.t).sort((a, b) => a - b);
  }

  /**
   * Step the wall clock by `ms` (negative: back, as NTP may step it) without
   * firing anything: timers keep their delays, as Node's monotonic timers do.
   */
  jump(ms: number): void {
    this.t += ms;
    for (const timer of this.timers.values()) timer.due += ms;
  }

  /** Move time forward, firing every timer that falls due, in order (including ones they set). */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: [NodeJS.Timeout, { due: number; fn: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].due <= end && (!next || entry[1].due < next[1].due)) next = entry;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].due);
      next[1].fn();
    }
    this.t = end;
  }
}
