/**
 * A direct-mapped table from seq to a value: slot `seq mod 2^bits`, the seq
 * stored beside the value. Setting a seq overwrites whatever older seq shared
 * its slot, so it is for caches that can afford to forget (the outbox's "seqs
 * handed out", the metrics' "type of a seq in flight"), never for the truth.
 *
 * It replaces `Map<number, T>` where every event costs a set, a get and a
 * delete: on the runtime's event loop under load those hash-table operations
 * were ~10% of its time (perf: MapPrototypeSet, FindOrderedHashMapEntry,
 * rehashes), while here each is two array accesses and nothing to collect.
 */
export class SeqSlots<T> {
  private readonly seqs: Float64Array;
  private readonly values: Array<T | undefined>;
  private readonly mask: number;

  /** 2^bits slots: keep it well above the number of seqs alive at once. */
  constructor(bits = 16) {
    const n = 2 ** bits;
    this.mask = n - 1;
    this.seqs = new Float64Array(n).fill(-1);
    this.values = new Array<T | undefined>(n).fill(undefined);
  }

  set(seq: number, value: T): void {
    // `&` keeps the low bits of any integer seq up to 2^53 (ToInt32 is modulo 2^32).
    const i = seq & this.mask;
    this.seqs[i] = seq;
    this.values[i] = value;
  }

  get(seq: number): T | undefined {
    const i = seq & this.mask;
    return this.seqs[i] === seq ? this.values[i] : undefined;
  }

  delete(seq: number): boolean {
    const i = seq & this.mask;
    if (this.seqs[i] !== seq) return false;
    this.seqs[i] = -1;
    this.values[i] = undefined;
    return true;
  }

  /** Remove every seq in [from, to] that is held, calling `f` with each (in no particular order when the range is wide). */
  takeRange(from: number, to: number, f: (seq: number, value: T) => void): void {
    if (to < from) return;
    if (to - from < this.seqs.length) {
      for (let seq = from; seq <= to; seq++) {
        const i = seq & this.mask;
        if (this.seqs[i] !== seq) continue;
        const v = this.values[i] as T;
        this.seqs[i] = -1;
        this.values[i] = undefined;
        f(seq, v);
      }
      return;
    }
    for (let i = 0; i < this.seqs.length; i++) {
      const seq = this.seqs[i];
      if (seq < from || seq > to) continue;
      const v = this.values[i] as T;
      this.seqs[i] = -1;
      this.values[i] = undefined;
      f(seq, v);
    }
  }

  clear(): void {
    this.seqs.fill(-1);
    this.values.fill(undefined);
  }
}
