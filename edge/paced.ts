/**
 * Occurrences of one thing to log, paced: the first line at once, then at
 * most one per `everyMs`, each with how many happened since the last. For
 * what can repeat fast for good (evictions of a full store, stray acks, a
 * gateway that drops every connection, counter glitches): one line a
 * minute says it still happens, a line each time would drown the log.
 */
export class PacedCount {
  private count = 0;
  private lastAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly everyMs: number) {}

  /**
   * Count `n` at `now`; the count to log when a line is due, else undefined.
   * A clock stepped back makes a line due (rather than none until it catches up).
   */
  hit(now: number, n = 1): number | undefined {
    this.count += n;
    if (now >= this.lastAt && now - this.lastAt < this.everyMs) return undefined;
    const count = this.count;
    this.count = 0;
    this.lastAt = now;
    return count;
  }

  /** A new spell: the next hit logs at once. */
  reset(): void {
    this.count = 0;
    this.lastAt = Number.NEGATIVE_INFINITY;
  }
}
