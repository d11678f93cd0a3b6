import { type Clock, systemClock } from '../edge/clock.js';
import { type Envelope, isSeverity, newId, type Severity, withSeq } from '../edge/envelope.js';
import { EdgewardError } from '../edge/errors.js';
import { type Logger, silentLogger } from '../edge/log.js';
import type { AppendOptions, Outbox, OutboxReadOptions, OutboxStats, StoredEvent } from './outbox-api.js';
import {
  EVICTABLE,
  type OverflowData,
  OverflowTally,
  OVERFLOW_RESERVE,
  outboxFull,
  overflowDataOf,
  PRIORITY,
  RecentRing,
  refusedForRoom,
  serializeEnvelopes,
  tooLarge,
} from './outbox.js';

/** Options of {@link MemoryOutbox}. */
export interface MemoryOutboxOptions {
  maxBytes: number;
  site: string;
  edge: string;
  log?: Logger;
  clock?: Clock;
  /** Fixed epoch (default: a new ULID per instance). */
  epoch?: string;
}

interface Held {
  json: string;
  bytes: number;
  ts: string;
  type: string;
}

/**
 * An outbox in memory with the semantics of {@link LevelOutbox} (seqs,
 * priority, exclude/after, acks, byte bound with eviction and overflow event,
 * EDGE_OUTBOX_FULL, stats, recent) but no durability. For unit tests of
 * other modules, and as the reference the LevelDB store is tested against.
 */
export class MemoryOutbox implements Outbox {
  /** Number of append/ack writes performed (no group commit here: one per call that changed something). */
  writes = 0;

  private readonly log: Logger;
  private readonly clock: Clock;
  private _epoch: string | null = null;
  private isOpen = false;
  private lastSeq = 0;
  /** Per severity, seq → event; Map keeps insertion order, which is seq order. */
  private readonly store: Record<Severity, Map<number, Held>> = {
    critical: new Map(),
    warning: new Map(),
    info: new Map(),
  };
  private readonly bytesBy: Record<Severity, number> = { critical: 0, warning: 0, info: 0 };
  private readonly listeners = new Set<(severities: Set<Severity>) => void>();
  private readonly recentRing = new RecentRing();
  private pendingOverflow: { seq: number; data: OverflowData } | null = null;
  /** Events evicted so far (OverflowData.evictedTotal). */
  private evictedTotal = 0;
  /** Serializes writes like the LevelDB writer loop, so awaits inside never interleave. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: MemoryOutboxOptions) {
    this.log = (opts.log ?? silentLogger()).child({ module: 'sync/memory-outbox' });
    this.clock = opts.clock ?? systemClock;
  }

  get epoch(): string {
    if (this._epoch === null) throw notOpen();
    return this._epoch;
  }

  async open(): Promise<void> {
    // Reopening keeps the contents, like a store on disk within one process.
    this._epoch ??= this.opts.epoch ?? newId();
    this.isOpen = true;
  }

  async close(): Promise<void> {
    await this.chain;
    this.isOpen = false;
  }

  append(events: Envelope[], opts: AppendOptions = {}): Promise<Envelope[]> {
    if (!this.isOpen) return Promise.reject(notOpen());
    for (const e of events) {
      if (!e || !isSeverity(e.severity) || typeof e.id !== 'string') {
        return Promise.reject(new EdgewardError('EDGE_OUTBOX_INVALID', 'outbox events need an id and a valid severity'));
      }
    }
    return this.serial(() => this.doAppend(events, opts.maxEventBytes));
  }

  ack(ranges: Array<[number, number]>): Promise<number> {
    if (!this.isOpen) return Promise.reject(notOpen());
    for (const r of ranges) {
      if (!Array.isArray(r) || !Number.isSafeInteger(r[0]) || !Number.isSafeInteger(r[1])) {
        return Promise.reject(new EdgewardError('EDGE_OUTBOX_BAD_ACK', 'ack ranges must be [from, to] integer pairs'));
      }
    }
    return this.serial(() => this.doAck(ranges));
  }

  async read(opts: OutboxReadOptions): Promise<StoredEvent[]> {
    if (!this.isOpen) throw notOpen();
    const out = this.collect(opts);
    if (this.pendingOverflow && out.some((e) => e.seq === this.pendingOverflow!.seq)) this.pendingOverflow = null;
    return out;
  }

  private collect(opts: OutboxReadOptions): StoredEvent[] {
    const wanted = opts.severities ?? PRIORITY;
    const out: StoredEvent[] = [];
    let bytes = 0;
    for (const severity of PRIORITY) {
      if (!wanted.includes(severity)) continue;
      const after = opts.after?.[severity] ?? 0;
      for (const [seq, h] of this.store[severity]) {
        if (seq <= after || opts.exclude?.(seq)) continue;
        if (out.length >= opts.maxEvents || (out.length > 0 && bytes + h.bytes > opts.maxBytes)) return out;
        out.push({ seq, severity, bytes: h.bytes, json: h.json });
        bytes += h.bytes;
      }
    }
    return out.slice(0, Math.max(0, opts.maxEvents));
  }

  stats(): OutboxStats {
    const bySeverity = {
      critical: { events: this.store.critical.size, bytes: this.bytesBy.critical },
      warning: { events: this.store.warning.size, bytes: this.bytesBy.warning },
      info: { events: this.store.info.size, bytes: this.bytesBy.info },
    };
    let oldestTs: string | null = null;
    for (const s of PRIORITY) {
      const first = this.store[s].values().next();
      if (!first.done && (oldestTs === null || first.value.ts < oldestTs)) oldestTs = first.value.ts;
    }
    return {
      epoch: this.epoch,
      events: bySeverity.critical.events + bySeverity.warning.events + bySeverity.info.events,
      bytes: this.totalBytes(),
      bySeverity,
      oldestTs,
      lastSeq: this.lastSeq,
      maxBytes: this.opts.maxBytes,
    };
  }

  recent(limit: number): Envelope[] {
    return this.recentRing.newest(limit);
  }

  recentJson(limit: number): string[] {
    return this.recentRing.newestJson(limit);
  }

  onAppend(listener: (severities: Set<Severity>) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  private serial<T>(fn: () => T): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private totalBytes(): number {
    return this.bytesBy.critical + this.bytesBy.warning + this.bytesBy.info;
  }

  private doAppend(events: Envelope[], maxEventBytes: number | undefined): Envelope[] {
    if (events.length === 0) return [];
    const seqd = events.map((e, i) => withSeq(e, this.lastSeq + 1 + i));
    const jsons = serializeEnvelopes(seqd);
    const sizes = jsons.map((j) => Buffer.byteLength(j));
    const refused = tooLarge(sizes, maxEventBytes);
    if (refused) throw refused;
    const size = sizes.reduce((n, s) => n + s, 0);
    const hasCritical = seqd.some((e) => e.severity === 'critical');
    const over = this.totalBytes() + size - this.opts.maxBytes;
    let tally: OverflowTally | null = null;
    let folded = 0;
    if (over > 0) {
      const victims = EVICTABLE;
      let evictable = 0;
      for (const sev of victims) evictable += this.bytesBy[sev];
      const room = { maxBytes: this.opts.maxBytes, storedBytes: this.totalBytes(), evictableBytes: evictable };
      if (refusedForRoom(size, hasCritical, room)) throw outboxFull(size, room.maxBytes, room.storedBytes, evictable, victims);
      // Same reserve as LevelOutbox: room for the overflow event itself.
      const need = over + OVERFLOW_RESERVE;
      let freed = 0;
      for (const severity of victims) {
        for (const [seq, h] of this.store[severity]) {
          if (freed >= need) break;
          this.store[severity].delete(seq);
          this.bytesBy[severity] -= h.bytes;
          tally ??= new OverflowTally();
          // Same as LevelOutbox: an overflow event evicted here, read or not, is folded in.
          const handedOut = seq !== this.pendingOverflow?.seq && h.type === 'edge.outbox_overflow' ? overflowDataOf(h.json) : null;
          if (seq === this.pendingOverflow?.seq) {
            folded += this.pendingOverflow.data.evicted;
            tally.merge(this.pendingOverflow.data);
          } else if (handedOut) {
            folded += handedOut.evicted;
            tally.supersede(handedOut.id, handedOut);
          } else tally.add(seq, severity, h.bytes, h.type, h.ts);
          freed += h.bytes;
        }
      }
      if (freed < over) this.log.warn({ maxBytes: this.opts.maxBytes }, 'outbox over its byte bound with critical events only');
    }
    this.lastSeq += seqd.length;
    const stored: Envelope[] = [...seqd];
    const storedJson: string[] = [...jsons];
    seqd.forEach((e, i) => {
      this.put(e, jsons[i]);
    });
    if (tally) {
      // Same as LevelOutbox: the epoch's count of evicted events, reports not counted.
      this.evictedTotal += tally.evicted - folded;
      tally.total = this.evictedTotal;
      // Same as LevelOutbox: an overflow event no reader has seen yet is replaced by a merged one.
      const prev = this.pendingOverflow;
      if (prev && this.store.warning.has(prev.seq)) {
        this.remove('warning', prev.seq);
        tally.merge(prev.data);
      }
      const overflow = withSeq(tally.toEnvelope({ site: this.opts.site, edge: this.opts.edge }, this.clock.now()), ++this.lastSeq);
      const overflowJson = JSON.stringify(overflow);
      this.put(overflow, overflowJson);
      stored.push(overflow);
      storedJson.push(overflowJson);
      this.pendingOverflow = { seq: overflow.seq!, data: tally.data() };
    }
    this.writes++;
    for (const j of storedJson) this.recentRing.push(j);
    const sevs = new Set<Severity>(stored.map((e) => e.severity));
    for (const l of this.listeners) {
      try {
        l(sevs);
      } catch (err) {
        this.log.error({ err }, 'outbox append listener threw');
      }
    }
    return seqd;
  }

  private put(e: Envelope, json: string): void {
    const bytes = Buffer.byteLength(json);
    this.store[e.severity].set(e.seq!, { json, bytes, ts: e.ts, type: e.type });
    this.bytesBy[e.severity] += bytes;
  }

  private doAck(ranges: Array<[number, number]>): number {
    let n = 0;
    for (const [from, to] of ranges) {
      for (const severity of PRIORITY) {
        const m = this.store[severity];
        // Walk whichever is smaller: the range or the stored events.
        if (to - from + 1 <= m.size) {
          for (let seq = Math.max(from, 1); seq <= to; seq++) n += this.remove(severity, seq);
        } else {
          for (const seq of [...m.keys()]) if (seq >= from && seq <= to) n += this.remove(severity, seq);
        }
      }
    }
    if (n > 0) this.writes++;
    return n;
  }

  private remove(severity: Severity, seq: number): number {
    const h = this.store[severity].get(seq);
    if (!h) return 0;
    this.store[severity].delete(seq);
    this.bytesBy[severity] -= h.bytes;
    return 1;
  }
}

function notOpen(): EdgewardError {
  return new EdgewardError('EDGE_OUTBOX_NOT_OPEN', 'outbox is not open');
}
