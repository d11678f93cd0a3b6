import { open as openFile, readdir, rename, stat, statfs, unlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Level } from 'level';
import { type Clock, systemClock } from '../edge/clock.js';
import { type Envelope, isSeverity, makeEnvelope, newId, type Severity, withSeq } from '../edge/envelope.js';
import { causeChain, EdgewardError, isEdgewardError } from '../edge/errors.js';
import { PacedCount } from '../edge/paced.js';
import { SeqSlots } from '../edge/seq-slots.js';
import { type Logger, silentLogger } from '../edge/log.js';
import type { AppendOptions, Outbox, OutboxReadOptions, OutboxStats, OutboxWriteError, StoredEvent } from './outbox-api.js';

/*
 * Layout of the LevelDB store (string keys, UTF-8 JSON values):
 *
 *   m!meta                 { v, epoch, lastSeq, maxBytes, counts: {sev: {events, bytes}}, heads: {sev: {seq, ts}|null} }
 *   e!c!<16-digit seq>     critical envelope JSON (with seq)
 *   e!w!<16-digit seq>     warning  envelope JSON
 *   e!i!<16-digit seq>     info     envelope JSON
 *
 * One key space per severity makes "critical first, oldest first" an ordered
 * scan, and lets eviction take the oldest info events from the head of `e!i!`.
 * Every write (events, deletions, the meta record with lastSeq and counters)
 * goes through one synced `batch`, which LevelDB applies atomically: after a
 * kill -9 the store is either before or after a batch, never in between, so
 * seqs are never reused and the counters always match the events.
 */

/** Severities from highest to lowest priority: the order `read()` serves them in. */
export const PRIORITY: readonly Severity[] = ['critical', 'warning', 'info'];

const SEV_PREFIX: Record<Severity, string> = { critical: 'e!c!', warning: 'e!w!', info: 'e!i!' };
const META_KEY = 'm!meta';
/** A snapshot of the recent ring (newest first), so GET /api/v1/events shows acknowledged events after a restart too. */
const RECENT_KEY = 'm!recent';
/** How often the recent ring is looked at for a snapshot (and it is written on close). */
const RECENT_SAVE_MS = 5000;
/**
 * The snapshot is rewritten whole (up to RECENT_SIZE events, ~270 KB for
 * 1,000 door events, at most ~1 MiB, see RecentRing): once
 * a quarter of the ring is new, or once a change is this old. Rewritten at
 * every look with anything new, a quiet box (an event every 5 s) wrote
 * 4.6 GiB a day to its SD card for a few MB of events (measured); now at
 * most 270 KB per 10 minutes, or ~4 times each event's size when busy.
 */
const RECENT_MAX_AGE_MS = 10 * 60_000;
const META_VERSION = 1;
/** 16 digits cover Number.MAX_SAFE_INTEGER, so lexicographic order is numeric order. */
const SEQ_DIGITS = 16;
/** Upper bound of a severity's key space ('~' sorts after every digit). */
const SEQ_END = '~';
/**
 * A key kept at the end of each severity's range (`e!i!~`…), and the end of
 * every read of that range (`lt`: never read itself). LevelDB's iterators have no
 * upper bound: a read that finds no live event left in its range walks on
 * over the tombstones of the next range until it meets a live key. With no
 * info left, each eviction of warnings walked over the tombstones of every
 * warning evicted or acked since the last compaction (9.4 ms a read; a
 * critical append p99 66-138 ms after 200,000 warnings acked; found by a
 * review). The sentinel stops such a walk at the range's end.
 */
function rangeEndKey(severity: Severity): string {
  return SEV_PREFIX[severity] + SEQ_END;
}
/**
 * LevelDB's memtable size (its default is 4 MiB). A write waits when the
 * memtable is full while the previous one is still being flushed; draining a
 * backlog, the acks' tombstones filled 4 MiB every half second while the
 * background thread was busy compacting the deleted events, and an alarm's
 * 2-op write then waited 57-287 ms (measured, 1,000,000-event backlog). With
 * 32 MiB no such wait was seen. Costs up to two memtables of RSS under heavy
 * writes; an idle memtable holds only what was written since its last flush.
 */
const WRITE_BUFFER_BYTES = 32 << 20;
/**
 * Disk space held back for the store: a file of zeros beside it
 * (`<dir>.reserve`), deleted when the disk is full and the store must write
 * anyway. A box whose disk filled and then lost power (or was kill -9'd) did
 * not start again: LevelDB's recovery writes its log into a table, had no
 * room, and the runtime exited into the same failure at every restart, door
 * alarms unread, until someone freed space (found by a chaos run). Room for
 * a full log (the memtable's size) and some writes after it. It is written
 * only while the disk has twice its size free, so it never takes the last
 * space, and put back once it has again.
 */
const RESERVE_BYTES = WRITE_BUFFER_BYTES + (8 << 20);
/**
 * Non-critical appends refused for a full store (EDGE_OUTBOX_FULL) are
 * reported in `stats().refusingFull` until this long after the last one,
 * and logged at most once per WRITE_ERROR_LOG_MS.
 */
const FULL_REPORT_MS = 60_000;
/** How often a missing or short reserve is looked at. */
const RESERVE_CHECK_MS = 10 * 60_000;
/** Most report ids an overflow report lists in `supersedes` (the newest). */
const MAX_SUPERSEDES = 64;
/** Room kept for the overflow event itself when evicting. */
export const OVERFLOW_RESERVE = 1024;
/**
 * Most events written in one batch; bigger backlogs of appends take several
 * batches. Bounds how long one batch (and so a critical event behind it) takes.
 */
const MAX_BATCH_EVENTS = 5000;
/**
 * Most events one write evicts. `outbox.maxBytes` lowered below what is
 * stored (a technician shrinking it on a filling disk) made the next append
 * evict everything over the new bound in one batch: 294,000 events, 1.9 s,
 * during which an alarm waited (measured; a 1 GiB store would take ~20 s and
 * a batch of millions of deletes). Past this many, the store stays over its
 * bound and each later write evicts as many again (the same cap as MAX_BATCH_EVENTS:
 * an alarm behind such a write waits ~25 ms, measured).
 */
const MAX_EVICTIONS_PER_WRITE = 5_000;
/** Entries one eviction read asks LevelDB for: at least / at most (EvictionReader)… */
const EVICTION_READ_MIN = 16;
const EVICTION_READ_MAX = 1000;
/** …and about this much stored JSON at most, whatever the number (a store of large events). */
const EVICTION_READ_BYTES = 1 << 20;
/** Stored critical events loaded into the hot tail at open, up to this many (a burst of alarms, not a backlog). */
const CRITICAL_PRELOAD_MAX = 10_000;
/** Memory the hot tail of each severity may hold (serialized JSON bytes). */
const HOT_TAIL_BYTES: Record<Severity, number> = { critical: 4 << 20, warning: 4 << 20, info: 8 << 20 };
/** Events remembered for `recent()`. */
const RECENT_SIZE = 1000;
/** …and at most this much of their JSON (characters; the newest event is kept whatever its size). */
const RECENT_MAX_CHARS = 1024 * 1024;
/**
 * Read-but-unacked seqs are remembered for fast acks in 2^16 slots (~1 MB,
 * see SeqSlots); one whose slot a later seq took is looked up instead.
 */
const TRACKED_BITS = 16;
/**
 * Head lookups (refreshHeads) start at most this often. Each is an iterator
 * that walks the tombstones of the events acked since the last one; one per
 * ack batch under a draining backlog cost more CPU than the appends
 * themselves (measured, appends with a reader acking at once: 19.4 → 14.3 µs
 * of CPU per event, acked 80k → 99k events/s). Meanwhile a stale head is a
 * valid lower bound for reads, eviction and the open check; only
 * `stats().oldestTs` lags by up to this long.
 */
const HEAD_REFRESH_MIN_MS = 1000;
/** A damaged store is repaired (RepairDB rewrites it) at most this often. */
const REPAIR_MIN_INTERVAL_MS = 10 * 60_000;
/** After a failed write, the store is reopened before the next one; a failed reopen is retried at most this often. */
const REOPEN_RETRY_MS = 1000;
/** While writes keep failing, one log line at most this often (each failed batch would be one otherwise). */
const WRITE_ERROR_LOG_MS = 10_000;
/** Deleting batches remembered, so a read or head lookup that spanned them can drop what they deleted. */
const DELETE_LOG_SIZE = 32;

/**
 * The longest `whenWriting` work waits for the next write. A commit's gap and
 * the next batch's build take ~2 ms (800 events); a build that evicts on a
 * full store took 5-65 ms, and one whose reads stall on a slow card as long
 * as they stall (a review: alarms stored during an outage went out 14.7 s
 * after the reconnect, behind one such build). Past this, the work runs
 * during the build (which is then waiting on reads, not holding the thread).
 */
export const WHEN_WRITING_MAX_WAIT_MS = 5;

/** Free bytes and what an open or a repair needs (see LevelOutbox.room); a refused probe's errno and the disk's own free bytes. */
type Room = { free: number; need: number; probeError?: string; diskFree?: number };

/** One committed batch that deleted events: its delete generation and what it deleted. */
type DeletedBatch = { gen: number; seqs: ReadonlyMap<number, Severity> };

function deletedIn(batches: readonly DeletedBatch[], seq: number): boolean {
  return batches.some((d) => d.seqs.has(seq));
}

/**
 * An event's severity and stored size as one small integer, bytes × 4 +
 * priority index: what `tracked` and an ack's lookup hold per seq.
 */
function packStored(severity: Severity, bytes: number): number {
  return bytes * 4 + PRIORITY.indexOf(severity);
}

function storedSeverity(packed: number): Severity {
  return PRIORITY[packed & 3];
}

function storedBytes(packed: number): number {
  return packed >>> 2;
}
/** Acks for ranges wider than this always look up the store instead of walking the range. */
const MAX_WALK_RANGE = 100_000;

/** The stored JSON of each envelope; EDGE_OUTBOX_INVALID when one does not serialize (a BigInt or a cycle in `data`). */
export function serializeEnvelopes(envelopes: readonly Envelope[]): string[] {
  try {
    return envelopes.map((e) => JSON.stringify(e));
  } catch (err) {
    throw new EdgewardError('EDGE_OUTBOX_INVALID', `event not serializable as JSON: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * What an append may evict to make room, oldest first within each: info,
 * then warnings (SPEC: "the oldest info events go first, then warnings");
 * critical events never. For any append: refusing new info while older
 * warnings fill the store (tried, and reverted) left a store flooded with
 * warnings refusing every new door event for good, drivers' events dropped
 * with no overflow report.
 */
export const EVICTABLE: readonly ('info' | 'warning')[] = ['info', 'warning'];

/**
 * Whether an append of `size` bytes is refused for want of room
 * (EDGE_OUTBOX_FULL): one holding a critical event never is; any other when
 * it does not fit even after evicting everything evictable. The one rule of
 * both stores, and of the runtime deciding not to try (`Runtime.boundToBeRefused`).
 */
export function refusedForRoom(size: number, hasCritical: boolean, room: { maxBytes: number; storedBytes: number; evictableBytes: number }): boolean {
  return !hasCritical && room.storedBytes + size - room.maxBytes > room.evictableBytes;
}

/** EDGE_OUTBOX_FULL for an append of `bytes` that does not fit even after evicting every stored event of `victims`. */
export function outboxFull(bytes: number, maxBytes: number, storedBytes: number, evictableBytes: number, victims: readonly string[]): EdgewardError {
  return new EdgewardError('EDGE_OUTBOX_FULL', `outbox full: the append does not fit even after evicting every stored ${victims.join(' and ')} event`, {
    details: { bytes, maxBytes, storedBytes, evictableBytes },
  });
}

/** EDGE_OUTBOX_EVENT_TOO_LARGE for the first event whose stored JSON is over `max`, else null. */
export function tooLarge(sizes: readonly number[], max: number | undefined): EdgewardError | null {
  if (max === undefined) return null;
  const index = sizes.findIndex((n) => n > max);
  if (index < 0) return null;
  return new EdgewardError(
    'EDGE_OUTBOX_EVENT_TOO_LARGE',
    `event ${index} is ${sizes[index]} bytes as JSON; at most ${max} can be sent (uplink.maxPacketBytes less the batch's own bytes)`,
    { details: { index, bytes: sizes[index], maxEventBytes: max } },
  );
}

/** Each severity's key prefix with the zeros that pad a seq of n digits: `KEY_HEADS[severity][n]`. */
const KEY_HEADS = Object.fromEntries(
  PRIORITY.map((s) => [s, Array.from({ length: SEQ_DIGITS + 1 }, (_, n) => SEV_PREFIX[s] + '0'.repeat(SEQ_DIGITS - n))]),
) as Record<Severity, string[]>;

/** `e!<c|w|i>!` and the seq zero-padded to 16 digits (one concatenation: half the time and garbage of `padStart`). */
export function eventKey(severity: Severity, seq: number): string {
  const digits = String(seq);
  return KEY_HEADS[severity][digits.length] + digits;
}

function seqOfKey(key: string): number {
  return Number(key.slice(4));
}

/** Where the outbox store lives inside a site's `dataDir` (runtime and CLI agree on this). */
export function outboxPath(dataDir: string): string {
  return join(dataDir, 'outbox');
}

type Counts = Record<Severity, { events: number; bytes: number }>;
/**
 * The oldest stored event of a severity. `stale`: that event was deleted and
 * the real head is not looked up yet; the seq is then a lower bound, which is
 * all reads and evictions need (they skip missing keys), and `ts` is older
 * than the real oldest.
 */
type Head = { seq: number; ts: string; stale?: boolean };
type Heads = Record<Severity, Head | null>;

interface Meta {
  v: number;
  epoch: string;
  lastSeq: number;
  maxBytes: number;
  counts: Counts;
  heads: Heads;
  /** Events evicted in this epoch so far (see `OverflowData.evictedTotal`); absent while none. */
  evictedTotal?: number;
}

function emptyCounts(): Counts {
  return { critical: { events: 0, bytes: 0 }, warning: { events: 0, bytes: 0 }, info: { events: 0, bytes: 0 } };
}

function cloneCounts(c: Counts): Counts {
  return { critical: { ...c.critical }, warning: { ...c.warning }, info: { ...c.info } };
}

function totalBytes(c: Counts): number {
  return c.critical.bytes + c.warning.bytes + c.info.bytes;
}

function totalEvents(c: Counts): number {
  return c.critical.events + c.warning.events + c.info.events;
}

/** The lowest seq any severity may still hold (its head, a lower bound), or null when nothing is stored. */
function storedFloor(meta: Meta): number | null {
  let floor: number | null = null;
  for (const s of PRIORITY) {
    const h = meta.heads[s];
    if (meta.counts[s].events > 0 && h) floor = floor === null ? h.seq : Math.min(floor, h.seq);
  }
  return floor;
}

function oldestOf(heads: Heads): string | null {
  let oldest: string | null = null;
  for (const s of PRIORITY) {
    const h = heads[s];
    if (h && (oldest === null || h.ts < oldest)) oldest = h.ts;
  }
  return oldest;
}

/** ts and type of a stored envelope, without trusting it to parse (a corrupt value must not stop eviction). */
function peek(json: string): { ts: string; type: string } {
  // Stored events are written in the contract's key order (withSeq): id, seq, ts, site,
  // edge, type, … A raw `"` only delimits strings in JSON, so with no object or array
  // opened before them, the first `,"ts":"` and `,"type":"` are the event's own. Parsing
  // the whole event was 8.7 % of a full store's time, on each evicted event.
  const t = json.indexOf(',"ts":"');
  const y = json.indexOf(',"type":"', t);
  if (t > 0 && y > t && json.startsWith('{"id":"') && !/[{[\\]/.test(json.slice(1, y))) {
    const tsEnd = json.indexOf('"', t + 7);
    const typeEnd = json.indexOf('"', y + 9);
    if (tsEnd > 0 && typeEnd > 0 && !json.slice(y + 9, typeEnd).includes('\\')) {
      return { ts: json.slice(t + 7, tsEnd), type: json.slice(y + 9, typeEnd) };
    }
  }
  try {
    const e = JSON.parse(json) as Envelope;
    return { ts: String(e.ts), type: String(e.type) };
  } catch {
    return { ts: '', type: 'unknown' };
  }
}

/** The `data` of a stored `edge.outbox_overflow` event, or null when it does not parse as one. */
export function overflowDataOf(json: string): (OverflowData & { id: string }) | null {
  try {
    const e = JSON.parse(json) as Envelope;
    const d = e.data as Partial<OverflowData> | undefined;
    if (!d || typeof d.evicted !== 'number' || typeof d.evictedBytes !== 'number' || typeof d.byType !== 'object' || !d.byType || !d.bySeverity) {
      return null;
    }
    return { ...(d as OverflowData), id: String(e.id) };
  } catch {
    return null;
  }
}

/** `data` of an `edge.outbox_overflow` event. */
export interface OverflowData {
  evicted: number;
  evictedBytes: number;
  byType: Record<string, number>;
  bySeverity: { info: number; warning: number };
  fromTs: string | null;
  toTs: string | null;
  fromSeq: number | null;
  toSeq: number | null;
  /**
   * Added field, present when not empty: the ids of earlier overflow events,
   * handed to the uplink but not acknowledged and then evicted, whose counts
   * this one includes. A central that stored one of them subtracts it.
   * At most the 64 newest: supersession is transitive (a report replaces
   * what the reports it names replaced), so a central resolves a longer
   * chain from the reports it holds, but a report cut from every list is
   * counted twice by such a central: count with `evictedTotal` instead.
   */
  supersedes?: string[];
  /**
   * Added field: the events evicted in this epoch up to and including this
   * report (kept in the store's meta record). Exact for a central whatever
   * reports it missed, got twice or got replaced: the epoch's loss is the
   * largest `evictedTotal` it has seen. Absent from reports of a version
   * before 2026-12-06.
   */
  evictedTotal?: number;
}

/**
 * Tally of the events evicted in one write, turned into the data of the
 * `edge.outbox_overflow` event: how many, of which types and severities, from
 * when to when. Shared by the LevelDB and the memory outbox.
 *
 * While the latest overflow event has not been handed to a reader yet, the
 * next eviction replaces it (in the same atomic write) with one merged event,
 * so a full outbox holds one growing overflow event instead of one per write
 * crowding out the events it should make room for.
 */
export class OverflowTally {
  evicted = 0;
  readonly byType: Record<string, number> = {};
  readonly bySeverity = { info: 0, warning: 0 };
  bytes = 0;
  fromTs: string | null = null;
  toTs: string | null = null;
  fromSeq: number | null = null;
  toSeq: number | null = null;
  readonly supersedes: string[] = [];
  /** `evictedTotal` of the report, set by the store (never merged: the newest count is the count). */
  total: number | undefined;

  add(seq: number, severity: 'info' | 'warning', bytes: number, type: string, ts: string): void {
    this.evicted++;
    this.bytes += bytes;
    this.byType[type] = (this.byType[type] ?? 0) + 1;
    this.bySeverity[severity]++;
    if (ts && (this.fromTs === null || ts < this.fromTs)) this.fromTs = ts;
    if (ts && (this.toTs === null || ts > this.toTs)) this.toTs = ts;
    if (this.fromSeq === null || seq < this.fromSeq) this.fromSeq = seq;
    if (this.toSeq === null || seq > this.toSeq) this.toSeq = seq;
  }

  /**
   * At most the MAX_SUPERSEDES newest ids: a chain grew by one per turnover
   * of a full store, without bound, and past the packet limit the report
   * itself would never be sent. Each report names what it replaced, so a
   * central that keeps them resolves longer chains itself.
   */
  private capSupersedes(): void {
    if (this.supersedes.length > MAX_SUPERSEDES) this.supersedes.splice(0, this.supersedes.length - MAX_SUPERSEDES);
  }

  /** Fold in the data of an earlier overflow event this one replaces. */
  merge(d: OverflowData): void {
    this.evicted += d.evicted;
    this.bytes += d.evictedBytes;
    for (const [type, n] of Object.entries(d.byType)) this.byType[type] = (this.byType[type] ?? 0) + n;
    this.bySeverity.info += d.bySeverity.info;
    this.bySeverity.warning += d.bySeverity.warning;
    if (d.fromTs && (this.fromTs === null || d.fromTs < this.fromTs)) this.fromTs = d.fromTs;
    if (d.toTs && (this.toTs === null || d.toTs > this.toTs)) this.toTs = d.toTs;
    if (d.fromSeq !== null && (this.fromSeq === null || d.fromSeq < this.fromSeq)) this.fromSeq = d.fromSeq;
    if (d.toSeq !== null && (this.toSeq === null || d.toSeq > this.toSeq)) this.toSeq = d.toSeq;
    // Its ids are older than those folded in already: put them first, so that the cap cuts the
    // oldest (appended, a merged pending report's long list cut the ids folded in by this write).
    const older = (d.supersedes ?? []).filter((id) => !this.supersedes.includes(id));
    this.supersedes.unshift(...older);
    this.capSupersedes();
  }

  /** Fold in an earlier overflow event `id` that was handed out (maybe delivered) and is now evicted. */
  supersede(id: string, d: OverflowData): void {
    this.merge(d);
    if (!this.supersedes.includes(id)) this.supersedes.push(id);
    this.capSupersedes();
  }

  data(): OverflowData {
    return {
      evicted: this.evicted,
      evictedBytes: this.bytes,
      byType: { ...this.byType },
      bySeverity: { ...this.bySeverity },
      fromTs: this.fromTs,
      toTs: this.toTs,
      fromSeq: this.fromSeq,
      toSeq: this.toSeq,
      ...(this.supersedes.length > 0 ? { supersedes: [...this.supersedes] } : {}),
      ...(this.total !== undefined ? { evictedTotal: this.total } : {}),
    };
  }

  /** The overflow event (without seq) announcing this eviction. */
  toEnvelope(ids: { site: string; edge: string }, now: number): Envelope {
    return makeEnvelope(
      {
        type: 'edge.outbox_overflow',
        severity: 'warning',
        source: { device: ids.edge, driver: 'outbox' },
        data: this.data() as unknown as Record<string, unknown>,
      },
      ids,
      now,
    );
  }
}

/**
 * The newest envelopes, for `recent()`: at most `size` of them and `maxChars`
 * of their JSON (the newest one is kept whatever its size). Kept as the JSON
 * that was stored: the envelope objects go on to callers (a Node-RED flow
 * gets one as msg.payload and may change it), and neither `recent()` nor the
 * snapshot may see such changes, or fail to serialize them.
 *
 * Bounded in size too: by count alone, a thousand events of up to 1 MiB each
 * (the HTTP limit, with no uplink) held 0.5 GB, and the snapshot's join of
 * them passed V8's longest string: a RangeError out of a timer killed the
 * runtime, and again after every restart, the ring being refilled from the
 * store (found by a review).
 */
export class RecentRing {
  /** A circular buffer: `n` entries from `start`, oldest first. */
  private readonly buf: string[];
  private start = 0;
  private n = 0;
  private chars = 0;

  constructor(
    private readonly size: number = RECENT_SIZE,
    private readonly maxChars: number = RECENT_MAX_CHARS,
  ) {
    this.buf = Array.from({ length: size }, () => '');
  }

  get length(): number {
    return this.n;
  }

  push(json: string): void {
    const size = this.size;
    if (this.n === size) {
      this.chars -= this.buf[this.start].length;
      this.buf[this.start] = json;
      this.start = (this.start + 1) % size;
    } else {
      this.buf[(this.start + this.n) % size] = json;
      this.n++;
    }
    this.chars += json.length;
    while (this.n > 1 && this.chars > this.maxChars) {
      this.chars -= this.buf[this.start].length;
      // Released now: a dropped slot kept its 1 MB event reachable (862 MB; found by a review).
      this.buf[this.start] = '';
      this.start = (this.start + 1) % size;
      this.n--;
    }
  }

  /** Newest first, as stored. */
  newestJson(limit: number): string[] {
    const k = Math.min(Math.max(0, Math.floor(limit)), this.n);
    const out: string[] = [];
    for (let i = 1; i <= k; i++) out.push(this.buf[(this.start + this.n - i) % this.size]);
    return out;
  }

  /** Newest first, parsed afresh: every caller gets its own copies. */
  newest(limit: number): Envelope[] {
    return this.newestJson(limit).map((j) => JSON.parse(j) as Envelope);
  }
}

/** Options of {@link LevelOutbox}. */
export interface LevelOutboxOptions {
  /** Directory of the LevelDB store itself (see {@link outboxPath}). */
  dir: string;
  /** Byte bound over the stored JSON sizes; info then warning events are evicted beyond it. */
  maxBytes: number;
  site: string;
  edge: string;
  log?: Logger;
  clock?: Clock;
  /** Memory per severity for the hot tail (serialized bytes); defaults suit the uplink's batches. */
  hotTailBytes?: Partial<Record<Severity, number>>;
  /** How often the recent ring is looked at for a snapshot (default 5 s; tests). */
  recentSaveMs?: number;
  /** Longest a change to the recent ring waits for its snapshot (default 10 min; tests). */
  recentMaxAgeMs?: number;
  /** Most events one write evicts (default MAX_EVICTIONS_PER_WRITE; tests). */
  maxEvictionsPerWrite?: number;
  /** Bytes of the disk reserve `<dir>.reserve` (default RESERVE_BYTES; 0: none). */
  reserveBytes?: number;
}

interface AppendJob {
  kind: 'append';
  events: Envelope[];
  maxEventBytes?: number;
  critical: boolean;
  resolve: (v: Envelope[]) => void;
  reject: (e: unknown) => void;
}

interface AckJob {
  kind: 'ack';
  ranges: Array<[number, number]>;
  /**
   * When some acked seqs were not tracked: every stored seq of the ranges,
   * looked up before the job was queued (seq → `packStored`), as of delete
   * generation `foundGen`. See `ack`.
   */
  found?: Map<number, number>;
  foundGen?: number;
  resolve: (n: number) => void;
  reject: (e: unknown) => void;
}

type Job = AppendJob | AckJob;

type Db = Level<string, string>;

/**
 * The entries of a key range, `size` at a time (a number, or asked before each
 * chunk). The LevelDB iterator is opened on the first step, synchronously, so
 * its snapshot is taken where the loop starts, and closed however the loop is
 * left (end, break, return or throw).
 */
async function* chunks(
  db: Db,
  range: { gt?: string; gte?: string; lt?: string; lte?: string; reverse?: boolean; limit?: number },
  size: number | (() => number),
): AsyncGenerator<Array<[string, string]>> {
  const it = db.iterator(range);
  try {
    for (;;) {
      const chunk = await it.nextv(typeof size === 'number' ? size : size());
      if (chunk.length === 0) return;
      yield chunk;
    }
  } finally {
    await it.close();
  }
}

/**
 * The oldest stored events of one severity, for eviction: the append jobs of
 * one batch share one iterator and take their victims from its buffer, and
 * what is left in the buffer tells the new head (headAfterEviction). Each
 * read asks for about what the batch's remaining appends will evict (an
 * iterator per job read 256 entries, ~2.5 times what a full store's batch of
 * 800 events evicted). Its snapshot is taken when it is opened, during the
 * build: nothing of the batch is written before `close()`.
 */
class EvictionReader {
  private it: { nextv(size: number): Promise<Array<[string, string]>>; close(): Promise<void> } | null = null;
  private buf: Array<[string, string]> = [];
  private at = 0;
  private done = false;

  /** `cursor`: the seq of the last entry handed out (at first, the seq below the range). */
  constructor(
    private readonly db: Db,
    private readonly severity: Severity,
    public cursor: number,
  ) {}

  /** The next entry in key order, or null at the end of the range; `want` sizes a read when one is needed. */
  async next(want: number): Promise<[string, string] | null> {
    if (this.at === this.buf.length) {
      if (this.done) return null;
      this.it ??= this.db.iterator({ gt: eventKey(this.severity, this.cursor), lt: rangeEndKey(this.severity) });
      this.buf = await this.it.nextv(Math.min(EVICTION_READ_MAX, Math.max(EVICTION_READ_MIN, want)));
      this.at = 0;
      if (this.buf.length === 0) {
        this.done = true;
        return null;
      }
    }
    const entry = this.buf[this.at++];
    this.cursor = seqOfKey(entry[0]);
    return entry;
  }

  /**
   * What the reads found past the entries taken so far: the first entry read
   * and not yet taken whose seq `gone` does not name, `'end'` when the range
   * has no more (every stored entry was taken), or `'unknown'` (not read yet).
   */
  following(gone: (seq: number) => boolean): [string, string] | 'end' | 'unknown' {
    for (let i = this.at; i < this.buf.length; i++) if (!gone(seqOfKey(this.buf[i][0]))) return this.buf[i];
    return this.done ? 'end' : 'unknown';
  }

  async close(): Promise<void> {
    const it = this.it;
    this.it = null;
    await it?.close();
  }
}

/**
 * The oldest event of a severity this batch evicted from. Eviction takes the
 * oldest first, so none is left at or below the last key it went over (the
 * reader's cursor): the next entry the reader already holds is the head, exactly;
 * past the stored range, the oldest added by this batch. Otherwise the key
 * after the cursor is a lower bound (stale, looked up later). Keeping the
 * previous head as that bound instead, as for acks, made every eviction of
 * the next second (head lookups run at most once a second) seek from it
 * over the tombstones of all evicted since: a full store took 10 ms to build
 * each batch of 800 events instead of 1.4 and sustained 60-68k events/s
 * against 230k empty; with the exact head, 114-117k (measured, 8 appenders
 * of 100 events, a 64 MiB bound).
 */
function headAfterEviction(
  reader: EvictionReader,
  gone: (seq: number) => boolean,
  previous: Head | null,
  firstAdded: Head | null,
): Head | null {
  const next = reader.following(gone);
  if (next === 'end') return firstAdded;
  if (next !== 'unknown') return { seq: seqOfKey(next[0]), ts: peek(next[1]).ts };
  return { seq: reader.cursor + 1, ts: previous?.ts ?? firstAdded?.ts ?? '', stale: true };
}

/**
 * The durable outbox on LevelDB (`level` 10 / classic-level).
 *
 * All writes go through one writer loop (group commit): appends and acks that
 * arrive while a batch is being synced wait, and are then written together as
 * ONE `batch(ops, { sync: true })`. Each append resolves once the batch holding
 * it is on disk. Reads run concurrently with the writer on LevelDB snapshots.
 */
export class LevelOutbox implements Outbox {
  /** Number of synced batches written (group commit makes this far smaller than the number of appends). */
  writes = 0;

  private readonly log: Logger;
  private readonly clock: Clock;
  private db: Db | null = null;
  private meta: Meta | null = null;
  private closing = false;
  private readonly queue: Job[] = [];
  private draining: Promise<void> | null = null;
  private readonly listeners = new Set<(severities: Set<Severity>) => void>();
  /** Work waiting for the next write to be handed to disk (`whenWriting`). */
  private whileWriting: Array<() => void> = [];
  /** The writer's current turn has handed its write to disk. */
  private handedOver = false;
  /** Runs what waits for a write after WHEN_WRITING_MAX_WAIT_MS at the latest. */
  private whileWritingTimer: NodeJS.Timeout | null = null;
  private recentRing = new RecentRing();
  /**
   * seq → severity and size (`packStored`) of events handed out by read() and
   * not yet deleted, so acking them needs no lookup. A small integer, not an
   * object, to keep a large in-flight window cheap.
   */
  private readonly tracked = new SeqSlots<number>(TRACKED_BITS);
  /** Bumped by every committed batch that deletes; with `deleteLog` it keeps read() from handing out or tracking a seq deleted meanwhile. */
  private deleteGen = 0;
  /** The range-end keys (rangeEndKey) are not in the store yet: the next batch writes them. */
  private rangeEndsMissing = false;
  private readonly deleteLog: DeletedBatch[] = [];
  private warnedOverBound = false;
  /** The latest overflow event while no reader has seen it: the next eviction replaces it. */
  private pendingOverflow: { seq: number; bytes: number; data: OverflowData } | null = null;
  /** Seq of the overflow event being replaced by the batch in flight: read() must not hand it out. */
  private replacingOverflow: number | null = null;
  private readonly evictLog = new PacedCount(10_000);
  /**
   * The newest stored events of each severity, so read() hands out what was
   * just appended from memory: an alarm does not wait for a LevelDB iterator
   * queued on the thread pool behind fsyncs, and a caught-up uplink does not
   * read back what it was just given.
   */
  private hot: Record<Severity, HotTail>;
  /** The last batch held only critical appends taken ahead of other jobs (takeBatch). */
  private expressed = false;
  /** The running head lookup (refreshHeads), if any. */
  private refreshing: Promise<void> | null = null;
  /** When the last head lookup started (performance.now(): a rate limit, not logic). */
  private lastRefreshAt = Number.NEGATIVE_INFINITY;
  private refreshTimer: NodeJS.Timeout | null = null;
  /** Events pushed to the recent ring, and how many of them the snapshot had when last written. */
  private recentVersion = 0;
  private recentSavedVersion = 0;
  private recentSavedAt = 0;
  private recentTimer: NodeJS.Timeout | null = null;
  private recentSaving: Promise<void> | null = null;
  /** The current spell of failing writes (see `OutboxStats.writeError`), and all failures since open. */
  private writeError: OutboxWriteError | null = null;
  private writeFailures = 0;
  private readonly writeErrorLog = new PacedCount(WRITE_ERROR_LOG_MS);
  private readonly healthListeners = new Set<(failing: boolean) => void>();
  /** A write failed: reopen the store before the next one (see reopenAfterFailure). */
  private needsReopen = false;
  /** LevelDB reported a damaged block: repair the store (see repairAfterCorruption). */
  private corruption: { since: string; message: string } | null = null;
  private lastRepairAt = Number.NEGATIVE_INFINITY;
  private lastReopenAt = Number.NEGATIVE_INFINITY;
  /** When the write on its way to disk started (null: none): a card that hangs on fsync shows here. */
  private writingSince: number | null = null;
  /** Since when the disk reserve is released and not yet written back (see RESERVE_BYTES). */
  private reserveReleasedAt: string | null = null;
  /** The current spell of appends refused for a full store (see `OutboxStats.refusingFull`). */
  private full: { since: number; last: number; events: number; logged: number; loggedAt: number } | null = null;
  private reserving: Promise<void> | null = null;
  private reserveTimer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: LevelOutboxOptions) {
    this.log = (opts.log ?? silentLogger()).child({ module: 'sync/outbox' });
    this.clock = opts.clock ?? systemClock;
    this.hot = this.newHotTails(0);
  }

  get epoch(): string {
    if (!this.meta) throw new EdgewardError('EDGE_OUTBOX_NOT_OPEN', 'outbox is not open');
    return this.meta.epoch;
  }

  async open(): Promise<void> {
    if (this.db) return;
    const t0 = performance.now();
    const { db, meta, movedAside } = await this.openOrRecover();
    try {
      this.meta = meta;
      this.db = db;
      this.closing = false;
      this.recentRing = new RecentRing();
      // An overflow event from before a restart may have been sent already: never replace it.
      this.pendingOverflow = null;
      await this.seedRecent();
      await this.loadHotTails(db, meta);
      this.recentVersion = this.recentSavedVersion = 0;
      this.recentSavedAt = this.clock.now();
      this.recentTimer = setInterval(() => void this.saveRecent(false, false), this.opts.recentSaveMs ?? RECENT_SAVE_MS);
      this.recentTimer.unref();
      if (PRIORITY.some((sev) => meta.heads[sev]?.stale)) this.refreshHeads();
      void this.ensureReserve();
      this.reserveTimer = setInterval(() => void this.ensureReserve(), RESERVE_CHECK_MS);
      this.reserveTimer.unref();
    } catch (err) {
      this.db = null;
      this.meta = null;
      await db.close().catch(() => undefined);
      throw new EdgewardError('EDGE_OUTBOX_OPEN_FAILED', `cannot open outbox at ${this.opts.dir}`, { cause: err });
    }
    this.log.info(
      { epoch: this.meta.epoch, lastSeq: this.meta.lastSeq, events: totalEvents(this.meta.counts), ms: Math.round(performance.now() - t0) },
      'outbox open',
    );
    if (movedAside) {
      // The first event of the new store says what became of the old one (the store is open
      // and usable even if this one cannot be written: the log has said it already).
      const report = makeEnvelope(
        {
          type: 'edge.events_lost',
          source: { device: this.opts.edge, driver: 'outbox' },
          data: { reason: 'outbox_unrecoverable', movedTo: movedAside.to, error: movedAside.error },
        },
        { site: this.opts.site, edge: this.opts.edge },
        this.clock.now(),
      );
      await this.append([report]).catch((err) => this.log.error({ err }, 'outbox: the report of a store moved aside was not stored'));
    }
  }

  /**
   * Open the store, and heal one that does not open rather than stop the box
   * from storing alarms (a runtime that cannot open its outbox exits, and its
   * supervisor restarts it into the same failure). A power cut on an SD card
   * can leave CURRENT or the MANIFEST damaged: such a store is repaired with
   * LevelDB's RepairDB, which rebuilds the MANIFEST from the log and table
   * files (the meta record is then checked against the store as at every
   * open, and rebuilt from it if need be). One that still does not open is
   * renamed to `<dir>.unrecoverable-<time>` (kept for a technician) and an
   * empty store with a new epoch takes its place; its first event is an
   * `edge.events_lost` saying so. A store locked by another process is never
   * touched.
   */
  private async openOrRecover(): Promise<{ db: Db; meta: Meta; movedAside?: { to: string; error: string } }> {
    let firstErr: unknown;
    try {
      return await this.openStore();
    } catch (err) {
      firstErr = err;
    }
    // A full disk: the recovery of the log had no room for its table. The reserve is for this.
    if (isNoSpace(firstErr) && (await this.releaseReserve('the store did not open'))) {
      try {
        return await this.openStore();
      } catch (err) {
        firstErr = err;
      }
    }
    // A disk that refuses (full, read-only, no permission) is not damage: RepairDB would
    // fail to write its tables and archive the logs it could not convert (measured: a full
    // disk at open turned 2,000 stored events into an empty store). Leave the store as it
    // is; the runtime exits and its supervisor tries again once the disk has room.
    if (isEdgewardError(firstErr, 'EDGE_OUTBOX_LOCKED') || !isDamage(firstErr)) throw firstErr;
    const dir = this.opts.dir;
    this.log.error({ err: firstErr, dir }, 'outbox store does not open: repairing it');
    let repairErr: unknown;
    try {
      await this.repairWithRoom();
      const repaired = await this.openStore({ rebuild: true });
      this.log.warn({ dir, events: totalEvents(repaired.meta.counts), epoch: repaired.meta.epoch }, 'outbox store repaired');
      return repaired;
    } catch (err) {
      if (isEdgewardError(err, 'EDGE_OUTBOX_LOCKED')) throw err;
      if (isDiskRefusal(err)) {
        // Not the store's fault: keep it as it is for the next start.
        this.log.error({ err }, 'outbox store not repaired: the disk refuses');
        throw firstErr;
      }
      repairErr = err;
    }
    const to = `${dir}.unrecoverable-${new Date(this.clock.now()).toISOString().replace(/[:.]/g, '-')}`;
    try {
      await rename(dir, to);
    } catch {
      // Not even that (a read-only disk, no permission): the first error says why.
      throw firstErr;
    }
    const error = causeMessage(repairErr as EdgewardError);
    this.log.error({ err: repairErr, movedTo: to }, 'outbox store unrecoverable: moved aside; starting an empty store with a new epoch');
    return { ...(await this.openStore()), movedAside: { to, error } };
  }

  /** Open the LevelDB store and its meta record, checked against the store (rebuilt when it does not match). */
  private async openStore(opts: { rebuild?: boolean } = {}): Promise<{ db: Db; meta: Meta }> {
    const db: Db = new Level<string, string>(this.opts.dir, { keyEncoding: 'utf8', valueEncoding: 'utf8', writeBufferSize: WRITE_BUFFER_BYTES });
    try {
      await db.open();
    } catch (err) {
      throw translateOpenError(err, this.opts.dir);
    }
    try {
      // Written with the next batch when missing (a store made before them): not here, where a
      // failed write (a full disk) would leave the store unwritable before anything was stored.
      const ends = await db.getMany(PRIORITY.map(rangeEndKey));
      this.rangeEndsMissing = ends.some((v) => v === undefined);
      const raw = await db.get(META_KEY);
      let meta: Meta;
      if (raw === undefined) {
        meta = await rebuildMeta(db, null, this.opts.maxBytes);
        if (meta.lastSeq > 0) this.log.warn({ dir: this.opts.dir }, 'outbox meta record missing: rebuilt from events, new epoch');
        await db.put(META_KEY, JSON.stringify(meta), { sync: true });
      } else {
        meta = JSON.parse(raw) as Meta;
        if (opts.rebuild) {
          // After a repair: recount what is really there (RepairDB drops what it cannot read).
          meta = await rebuildMeta(db, meta, this.opts.maxBytes);
          await db.put(META_KEY, JSON.stringify(meta), { sync: true });
        } else if (!(await metaConsistent(db, meta))) {
          this.log.warn({ dir: this.opts.dir, epoch: meta.epoch }, 'outbox counters inconsistent: rescanning store');
          meta = await rebuildMeta(db, meta, this.opts.maxBytes);
          await db.put(META_KEY, JSON.stringify(meta), { sync: true });
        }
      }
      meta.maxBytes = this.opts.maxBytes;
      return { db, meta };
    } catch (err) {
      await db.close().catch(() => undefined);
      throw new EdgewardError('EDGE_OUTBOX_OPEN_FAILED', `cannot open outbox at ${this.opts.dir}`, { cause: err });
    }
  }

  /**
   * Reopen the store after a failed write, before anything else is written.
   * A write that fails (disk full, I/O error) can leave a torn record at the
   * end of LevelDB's log, and LevelDB 1.23 goes on appending to that log:
   * measured, after a disk-full spell 300 events written and synced (each
   * answered 202) were all dropped by the recovery of that log after a
   * kill -9 ("checksum mismatch", whole 32 KiB blocks dropped). Reopening
   * recovers the log while the torn record is still its last, writes what it
   * held to a table and starts a new log. Also clears LevelDB's sticky
   * background error (a failed compaction or fsync fails every later write).
   *
   * It needs disk space too, so it is tried only with room for it (see
   * `room`), at most every REOPEN_RETRY_MS; until it succeeds every batch is
   * refused. While there is no room the old handle stays open for reads; a
   * reopen that fails anyway (room, but the open still fails) leaves the
   * store shut until the next one succeeds. The meta record is read back from
   * the store, not kept: a batch whose fsync failed may have reached it after
   * all. Reads in flight on the old handle fail (the uplink reads again later).
   */
  private async reopenAfterFailure(): Promise<boolean> {
    const now = this.clock.now();
    // (A wall clock stepped back must not hold reopens off for the size of the step.)
    if (now >= this.lastReopenAt && now - this.lastReopenAt < REOPEN_RETRY_MS) return false;
    this.lastReopenAt = now;
    // Opening recovers the log into a table: on a disk without room for it the open fails and
    // the store is shut until there is room. Until then keep the old handle: writes stay
    // refused, but reads go on, so the uplink still delivers what is stored.
    // A full disk: the reserve makes room for the reopen and for the writes after it (alarms).
    if (isNoSpace(this.writeError?.message)) await this.releaseReserve('writes failed: no space left');
    const room = await this.roomReleasing(1, false, 'no room to reopen the store');
    if (room.free < room.need) {
      this.log.debug(room, 'outbox: no room to reopen yet; reads go on, writes stay refused');
      return false;
    }
    const old = this.db!;
    await old.close().catch((err) => this.log.debug({ err }, 'outbox: closing the failed store handle'));
    let opened: { db: Db; meta: Meta };
    try {
      opened = await this.openStore();
    } catch (err) {
      this.log.debug({ err }, 'outbox reopen after a failed write failed; retrying');
      return false;
    }
    await this.install(opened.db, opened.meta);
    this.needsReopen = false;
    this.log.warn({ lastSeq: opened.meta.lastSeq, events: totalEvents(opened.meta.counts) }, 'outbox store reopened after a failed write');
    return true;
  }

  /**
   * A damaged block (bit rot on an SD card) made a read fail: every read
   * that reaches it fails the same way, so the uplink would be stuck behind
   * it for good. The writer repairs the store before its next batch.
   */
  private noteCorruption(err: unknown): void {
    if (this.closing) return;
    if (!this.corruption) {
      this.corruption = { since: new Date(this.clock.now()).toISOString(), message: causeMessage(err as EdgewardError) };
      this.log.error({ err }, 'outbox store damaged: repairing it');
    }
    if (!this.draining) this.draining = this.drain();
  }

  /**
   * Repair the store in place (LevelDB's RepairDB keeps every entry it can
   * read and drops the damaged blocks), recount it, and report what was lost
   * as one `edge.events_lost` {reason: outbox_corrupt, count, error}. At most
   * one repair per REPAIR_MIN_INTERVAL_MS (it rewrites the store); meanwhile,
   * or if it fails, the damage stays reported in `stats().corruption`.
   */
  private async repairAfterCorruption(): Promise<void> {
    const now = this.clock.now();
    if (now >= this.lastRepairAt && now - this.lastRepairAt < REPAIR_MIN_INTERVAL_MS) return;
    this.lastRepairAt = now;
    const before = totalEvents(this.meta!.counts);
    const error = this.corruption!.message;
    await this.db!.close().catch((err) => this.log.debug({ err }, 'outbox: closing the damaged store handle'));
    let opened: { db: Db; meta: Meta };
    try {
      await this.repairWithRoom();
      opened = await this.openStore({ rebuild: true });
    } catch (err) {
      // The handle is closed: the next batch fails and reopens it (reopenAfterFailure).
      this.needsReopen = true;
      this.log.error({ err }, 'outbox repair failed');
      return;
    }
    await this.install(opened.db, opened.meta);
    this.needsReopen = false;
    this.corruption = null;
    const lost = before - totalEvents(opened.meta.counts);
    this.log.warn({ lost, events: totalEvents(opened.meta.counts) }, 'outbox store repaired');
    if (lost > 0) {
      const report = makeEnvelope(
        {
          type: 'edge.events_lost',
          source: { device: this.opts.edge, driver: 'outbox' },
          data: { reason: 'outbox_corrupt', count: lost, error },
        },
        { site: this.opts.site, edge: this.opts.edge },
        this.clock.now(),
      );
      // Queued behind this turn of the writer; nobody waits for it.
      this.append([report]).catch((err) => this.log.error({ err }, 'outbox: the report of a repair was not stored'));
    }
  }

  /** The disk reserve's path: beside the store, on the same disk (LevelDB leaves files it does not know alone, but a repair need not meet it). */
  private get reservePath(): string {
    return `${this.opts.dir}.reserve`;
  }

  /** Bytes of the disk reserve on disk (0 when there is none). */
  private reserveSize(): Promise<number> {
    return stat(this.reservePath).then(
      (st) => st.size,
      () => 0,
    );
  }

  /**
   * Write the disk reserve, or what is missing of it, while the disk has
   * room for twice that (see RESERVE_BYTES). A write that fails keeps what
   * it wrote: a short reserve is still a reserve.
   */
  private ensureReserve(): Promise<void> {
    const size = this.opts.reserveBytes ?? RESERVE_BYTES;
    if (size <= 0 || this.reserving) return this.reserving ?? Promise.resolve();
    this.reserving = (async () => {
      const path = this.reservePath;
      try {
        const have = await this.reserveSize();
        if (have < size) {
          const fs = await statfs(dirname(path));
          if (fs.bavail * fs.bsize < 2 * (size - have)) {
            // Released before a restart, or never written on a disk this full: say so (a restart
            // hid a released reserve, and the next full disk found none).
            this.reserveMissing();
            return;
          }
          const fh = await openFile(path, 'a', 0o600);
          try {
            const zeros = Buffer.alloc(1 << 20);
            for (let at = have; at < size; at += zeros.length) {
              // A stop does not wait for 40 MiB on a slow SD card: the rest is written at the next start.
              if (this.closing) return;
              await fh.write(zeros, 0, Math.min(zeros.length, size - at));
            }
            await fh.sync();
          } finally {
            await fh.close();
          }
        }
        if (this.reserveReleasedAt) this.log.warn({ bytes: size, releasedAt: this.reserveReleasedAt }, 'outbox disk reserve written back');
        this.reserveReleasedAt = null;
      } catch (err) {
        this.log.debug({ err }, 'outbox: disk reserve not written');
        this.reserveMissing();
      } finally {
        this.reserving = null;
      }
    })();
    return this.reserving;
  }

  /**
   * An append was refused for a full store (only critical events left to
   * evict): counted in the spell, logged once, then at most every
   * WRITE_ERROR_LOG_MS (a poster retrying against a full store wrote a
   * line per request, 10,247 in 4 minutes, while /healthz said ok).
   */
  private refusedFull(events: number): void {
    const now = this.clock.now();
    // A wall clock stepped back (NTP) starts a new spell rather than freezing this one.
    if (!this.full || now - this.full.last >= FULL_REPORT_MS || now < this.full.last) {
      this.full = { since: now, last: now, events: 0, logged: 0, loggedAt: Number.NEGATIVE_INFINITY };
    }
    const full = this.full;
    full.last = now;
    full.events += events;
    if (now - full.loggedAt >= WRITE_ERROR_LOG_MS) {
      this.log.warn(
        { since: new Date(full.since).toISOString(), refused: full.events - full.logged },
        'outbox full of critical events: non-critical events refused until the central acknowledges',
      );
      full.logged = full.events;
      full.loggedAt = now;
    }
  }

  /** The reserve is short or missing and there is no room to write it: reported as released (once). */
  private reserveMissing(): void {
    if (this.reserveReleasedAt) return;
    this.reserveReleasedAt = new Date(this.clock.now()).toISOString();
    this.log.error(
      { path: this.reservePath, bytes: this.opts.reserveBytes ?? RESERVE_BYTES },
      'disk nearly full: no room for the outbox disk reserve; free space on this disk',
    );
  }

  /**
   * Room for an open, a reopen or a repair (see `room`), counting the disk
   * reserve as free: when only the reserve is in the way it is released
   * first. A repair refused for want of the reserve's 40 MiB left a damaged
   * store unopened at every restart.
   */
  private async roomReleasing(times: number, allFiles: boolean, why: string): Promise<Room> {
    const room = await this.room(times, allFiles);
    if (room.free >= room.need) return room;
    // Only a disk short of space: deleting the reserve does not help a disk that fails with EIO,
    // is read-only or out of descriptors (a review saw it deleted, and rewritten, over and over).
    if (room.probeError !== undefined && room.probeError !== 'ENOSPC' && room.probeError !== 'EDQUOT') return room;
    const reserve = await this.reserveSize();
    const free = room.probeError ? (room.diskFree ?? 0) : room.free;
    // Nor one whose need the reserve does not cover: it is kept for the next time.
    if (reserve === 0 || free + reserve < room.need) return room;
    return (await this.releaseReserve(why)) ? this.room(times, allFiles) : room;
  }

  /** Delete the disk reserve (the disk is full and the store must write); false when there is none. */
  private async releaseReserve(why: string): Promise<boolean> {
    await this.reserving;
    let bytes: number;
    try {
      bytes = (await stat(this.reservePath)).size;
      await unlink(this.reservePath);
    } catch {
      return false;
    }
    if (bytes === 0) return false;
    this.reserveReleasedAt = new Date(this.clock.now()).toISOString();
    this.log.error({ bytes, why }, 'disk full: released the outbox disk reserve so that events are stored again; free space on this disk');
    return true;
  }

  /**
   * RepairDB, only with room for it: where it cannot write a table it archives
   * the log it came from into `lost/`, events and all. So it runs only when
   * the disk has free space for twice the store's files (and 1 MiB).
   */
  private async repairWithRoom(): Promise<void> {
    const { free, need } = await this.roomReleasing(2, true, 'no room to repair the store');
    if (free < need) {
      throw new EdgewardError('EDGE_OUTBOX_NO_ROOM', `not repairing the outbox store: ${free} bytes free, a repair may need ${need}`, {
        details: { free, need },
      });
    }
    await repairStore(this.opts.dir);
  }

  /**
   * Free bytes on the store's disk (statfs), and what an open or a repair may
   * need: `times` the size of its log files (all its files with `allFiles`),
   * plus 1 MiB. A disk that refuses a 1-byte probe file has no room; a store
   * whose directory cannot be read counts as needing nothing.
   */
  private async room(times: number, allFiles = false): Promise<Room> {
    const dir = this.opts.dir;
    // Free space is not enough: a disk remounted read-only after errors (ext4 on an SD card
    // does that) or failing with EIO has room and takes no write. Write a probe first.
    const probe = join(dir, 'edgeward-write-probe');
    let probeError: string | undefined;
    try {
      await writeFile(probe, 'x', { flush: true });
      await unlink(probe);
    } catch (err) {
      probeError = (err as NodeJS.ErrnoException).code ?? 'EIO';
    }
    let used = 0;
    try {
      for (const f of await readdir(dir)) if (allFiles || f.endsWith('.log')) used += (await stat(join(dir, f))).size;
      const fs = await statfs(dir);
      const need = times * used + (1 << 20);
      // A disk that refuses the probe has no room, whatever statfs says.
      return probeError ? { free: 0, need, probeError, diskFree: fs.bavail * fs.bsize } : { free: fs.bavail * fs.bsize, need };
    } catch {
      return probeError ? { free: 0, need: 1, probeError } : { free: 1, need: 0 };
    }
  }

  /** Take a reopened store handle and its meta: what was known of the old handle is dropped. */
  private async install(db: Db, meta: Meta): Promise<void> {
    this.db = db;
    this.meta = meta;
    this.tracked.clear();
    // Reads and lookups that began before see a new generation: nothing they found is tracked.
    this.deleteGen++;
    this.deleteLog.length = 0;
    this.pendingOverflow = null;
    this.expressed = false;
    try {
      await this.loadHotTails(db, meta);
    } catch (err) {
      // Tails that hold only what comes next: reads of what is stored go to LevelDB.
      this.hot = this.newHotTails(meta.lastSeq + 1);
      this.log.warn({ err }, 'outbox hot tails not reloaded after reopen');
    }
    if (PRIORITY.some((sev) => meta.heads[sev]?.stale)) this.refreshHeads();
  }

  async close(): Promise<void> {
    if (!this.db) return;
    this.closing = true;
    while (this.draining) await this.draining;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    await this.refreshing;
    if (this.recentTimer) clearInterval(this.recentTimer);
    this.recentTimer = null;
    if (this.reserveTimer) clearInterval(this.reserveTimer);
    this.reserveTimer = null;
    await this.reserving;
    await this.recentSaving;
    await this.saveRecent(true);
    const db = this.db;
    this.db = null;
    await db.close();
    this.tracked.clear();
  }

  append(events: Envelope[], opts: AppendOptions = {}): Promise<Envelope[]> {
    if (!this.db || this.closing) return Promise.reject(notOpen());
    if (events.length === 0) return Promise.resolve([]);
    let critical = false;
    for (const e of events) {
      // The severity picks the key space: a bad one must not reach the store.
      if (!e || !isSeverity(e.severity) || typeof e.id !== 'string') {
        return Promise.reject(new EdgewardError('EDGE_OUTBOX_INVALID', 'outbox events need an id and a valid severity'));
      }
      if (e.severity === 'critical') critical = true;
    }
    return new Promise<Envelope[]>((resolve, reject) => {
      this.enqueue({ kind: 'append', events, critical, maxEventBytes: opts.maxEventBytes, resolve, reject });
    });
  }

  ack(ranges: Array<[number, number]>): Promise<number> {
    if (!this.db || this.closing) return Promise.reject(notOpen());
    for (const r of ranges) {
      if (!Array.isArray(r) || !Number.isSafeInteger(r[0]) || !Number.isSafeInteger(r[1])) {
        return Promise.reject(new EdgewardError('EDGE_OUTBOX_BAD_ACK', 'ack ranges must be [from, to] integer pairs'));
      }
    }
    if (ranges.length === 0) return Promise.resolve(0);
    const queue = (found?: Map<number, number>, foundGen?: number) =>
      new Promise<number>((resolve, reject) => {
        this.enqueue({ kind: 'ack', ranges, found, foundGen, resolve, reject });
      });
    if (!this.needsLookup(ranges)) return queue();
    // Seqs nobody read in this process (or whose tracking was lost) are looked up
    // here, before the job joins the writer's queue: a LevelDB scan waits on
    // libuv's pool behind the reads of a draining backlog, and done by the writer
    // it held every append behind it, alarms included (measured: a critical
    // append waited 36-96 ms behind one such lookup of a single seq).
    const gen = this.deleteGen;
    return this.lookupStored(ranges).then((found) => {
      if (!this.db || this.closing) throw notOpen();
      return queue(found, gen);
    });
  }

  /**
   * Whether some seq of `ranges` may be stored without being tracked (then the
   * store is looked up), or a range is too wide to walk. Known gone, so no
   * lookup: seqs below every severity's head, and seqs a recent batch deleted
   * (a central acking a resent batch again: measured, every such duplicate
   * ack looked the store up over the tombstones of the drain, 31 ms per range,
   * and a drain of 100k events behind late acks stalled for minutes).
   */
  private needsLookup(ranges: Array<[number, number]>): boolean {
    const meta = this.meta;
    if (!meta) return false;
    const floor = storedFloor(meta);
    if (floor === null) return false; // nothing stored: nothing to delete
    for (const [from, to] of ranges) {
      const lo = Math.max(from, 1, floor);
      const hi = Math.min(to, meta.lastSeq);
      if (hi < lo) continue;
      if (hi - lo + 1 > MAX_WALK_RANGE) return true;
      for (let seq = lo; seq <= hi; seq++) {
        if (this.tracked.get(seq) === undefined && !this.knownGone(seq, floor)) return true;
      }
    }
    return false;
  }

  /** Not stored, without a lookup: below every severity's head (`floor`, see storedFloor), or deleted by a recent batch. */
  private knownGone(seq: number, floor: number): boolean {
    return seq < floor || deletedIn(this.deleteLog, seq);
  }

  /** Every stored seq in `ranges`, each severity's key space scanned: seq → `packStored`. */
  private async lookupStored(ranges: Array<[number, number]>): Promise<Map<number, number>> {
    const db = this.db;
    if (!db) throw notOpen();
    const found = new Map<number, number>();
    const meta = this.meta!;
    const stored = PRIORITY.filter((severity) => meta.counts[severity].events > 0);
    for (const [from, to] of ranges) {
      await scanStored(
        db,
        Math.max(from, 1),
        to,
        stored,
        (seq, severity, bytes) => {
          found.set(seq, packStored(severity, bytes));
        },
        meta.heads,
      );
    }
    return found;
  }

  async read(opts: OutboxReadOptions): Promise<StoredEvent[]> {
    try {
      return await this.readStored(opts);
    } catch (err) {
      if (isCorruption(err)) this.noteCorruption(err);
      throw err;
    }
  }

  private async readStored(opts: OutboxReadOptions): Promise<StoredEvent[]> {
    const db = this.db;
    const meta = this.meta;
    if (!db || !meta) throw notOpen();
    const maxEvents = Math.max(0, Math.floor(opts.maxEvents));
    const maxBytes = opts.maxBytes;
    const wanted = opts.severities ?? PRIORITY;
    const gen = this.deleteGen;
    const out: StoredEvent[] = [];
    let bytes = 0;
    for (const severity of PRIORITY) {
      if (out.length >= maxEvents || !wanted.includes(severity)) continue;
      if (meta.counts[severity].events === 0) continue;
      // Start past the known head (skips the tombstones of acked events) and past the caller's cursor.
      const head = meta.heads[severity];
      const after = Math.max(opts.after?.[severity] ?? 0, head ? head.seq - 1 : meta.lastSeq);
      const hot = this.hot[severity];
      if (hot.covers(after)) {
        let full = false;
        hot.take(after, opts.exclude, (e) => {
          if (out.length >= maxEvents || (out.length > 0 && bytes + e.bytes > maxBytes)) {
            full = true;
            return false;
          }
          out.push(e);
          bytes += e.bytes;
          return true;
        });
        if (full) break;
        continue;
      }
      const range = { gt: eventKey(severity, after), lt: rangeEndKey(severity) };
      let full = false;
      for await (const chunk of chunks(db, range, () => Math.min(1000, Math.max(64, (maxEvents - out.length) * 2)))) {
        for (const [key, json] of chunk) {
          const seq = seqOfKey(key);
          if (opts.exclude?.(seq)) continue;
          const size = Buffer.byteLength(json);
          // Always hand out at least one event, so one oversized event cannot block the queue.
          if (out.length > 0 && bytes + size > maxBytes) {
            full = true;
            break;
          }
          out.push({ seq, severity, bytes: size, json });
          bytes += size;
          if (out.length >= maxEvents) {
            full = true;
            break;
          }
        }
        if (full) break;
      }
      if (full) break;
    }
    // Checked synchronously after the last await, so the writer's decision to
    // replace the pending overflow event and this hand-out cannot interleave.
    // A batch committed while we were reading may have deleted some of these (acked,
    // evicted, or an overflow event replaced by a merged one): hand out none of them,
    // or a central would count a replaced overflow report twice. Only the last
    // DELETE_LOG_SIZE deleting batches are known; past that, a duplicate is possible.
    const since = this.deletedSince(gen);
    const known = since ?? this.deleteLog;
    const live = known.length === 0 ? out : out.filter((e) => !deletedIn(known, e.seq));
    const result = this.replacingOverflow === null ? live : live.filter((e) => e.seq !== this.replacingOverflow);
    if (this.pendingOverflow && result.some((e) => e.seq === this.pendingOverflow!.seq)) this.pendingOverflow = null;
    // Tracked seqs let an ack skip its lookups; only track when nothing deleted meanwhile can be among them.
    if (since !== null) this.track(result);
    return result;
  }

  stats(): OutboxStats {
    const meta = this.meta;
    if (!meta) throw notOpen();
    const s = statsOf(meta);
    if (this.writeFailures > 0) s.writeFailures = this.writeFailures;
    if (this.writeError) s.writeError = { ...this.writeError };
    if (this.corruption) s.corruption = { ...this.corruption };
    if (this.writingSince !== null) s.writePendingMs = Math.max(0, this.clock.now() - this.writingSince);
    if (this.reserveReleasedAt) s.reserveReleasedAt = this.reserveReleasedAt;
    const full = this.full;
    const sinceLast = full ? this.clock.now() - full.last : Number.POSITIVE_INFINITY;
    // (Negative after a clock stepped back: not reported for the size of the step.)
    if (full && sinceLast >= 0 && sinceLast < FULL_REPORT_MS) {
      s.refusingFull = { since: new Date(full.since).toISOString(), last: new Date(full.last).toISOString(), events: full.events };
    }
    return s;
  }

  onWriteHealth(listener: (failing: boolean) => void): () => void {
    this.healthListeners.add(listener);
    return () => {
      this.healthListeners.delete(listener);
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

  /**
   * See `Outbox.whenWriting`. Measured (2026-12-06, the bench's driver path
   * with `ack: broker`): the uplink's work after each commit (the events just
   * stored read, batched, gzipped and published: ~0.6 ms per commit of 800)
   * ran between the commit and the next batch's cut, which waited 1.2 ms
   * there against 0.2 ms for the outbox alone. Run while the next write is
   * on disk, the wait fell to 0.27 ms and the path went from 140-150k to
   * 157-182k events/s.
   * Only the time between a commit and the next write waits: asked while a
   * write is on disk, `fn` runs at once (it overlaps that write; a card that
   * hangs on fsync for seconds does not hold the uplink's resends too), and
   * so it does while the store must reopen or repair first (no write is
   * coming soon: a reopen probes the disk with an fsync of its own). A
   * writer's turn that ends without handing a write over (every append
   * refused, a batch given up) runs what waited: appends refused in every
   * turn must not hold the uplink (seen in a review: a store full of alarms,
   * refusing a driver's events in a loop, kept 400 alarms from being sent,
   * and only acks of those alarms could make room). And nothing waits more
   * than WHEN_WRITING_MAX_WAIT_MS: a long build (evictions, slow reads) does
   * not hold it either.
   */
  whenWriting(fn: () => void): void {
    if (!this.draining || this.writingSince !== null || this.needsReopen || this.corruption) {
      this.runSafely(fn);
      return;
    }
    this.whileWriting.push(fn);
    this.whileWritingTimer ??= this.clock.setTimeout(() => {
      this.whileWritingTimer = null;
      this.runWhileWriting();
    }, WHEN_WRITING_MAX_WAIT_MS);
  }

  /** Run what waited for a write (one was just handed to disk, or none is coming, or it waited long enough). */
  private runWhileWriting(): void {
    if (this.whileWritingTimer) {
      this.clock.clearTimeout(this.whileWritingTimer);
      this.whileWritingTimer = null;
    }
    if (this.whileWriting.length === 0) return;
    const fns = this.whileWriting;
    this.whileWriting = [];
    for (const fn of fns) this.runSafely(fn);
  }

  private runSafely(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ err }, 'outbox: work waiting for a write threw');
    }
  }

  // ---- writer loop -------------------------------------------------------

  private enqueue(job: Job): void {
    this.queue.push(job);
    if (!this.draining) this.draining = this.drain();
  }

  private async drain(): Promise<void> {
    // `draining` is cleared in the same tick the loop sees an empty queue: a job
    // enqueued after that starts a new drain, one enqueued before is taken here.
    let first = true;
    for (;;) {
      // After a commit, let the appenders it just settled come back before the
      // next batch is cut (their promise chains settle within the turn; one
      // turn of the event loop). Taking the queue at once instead locked
      // concurrent appenders into alternating commits: measured with 8
      // appenders of 100 events through runtime.ingest, commits of 1 and 7
      // appends by turns, 400 events per fsync; with the turn, 8 appends, 800
      // events per fsync, and the driver path went from 94-112k to 112-130k
      // events/s. The first batch of a drain is cut at once: an alarm on an
      // idle box waits for nothing.
      if (!first) await new Promise<void>((resolve) => setImmediate(resolve));
      first = false;
      if (this.corruption && !this.closing) {
        this.runWhileWriting();
        await this.repairAfterCorruption();
      }
      if (this.queue.length === 0) break;
      if (this.needsReopen && !this.closing) {
        this.runWhileWriting();
        if (!(await this.reopenAfterFailure())) {
          // The store is not usable yet: refuse what is queued now (nothing of it is stored).
          const jobs = this.queue.splice(0);
          const last = this.writeError?.message ?? 'reopen failed';
          const e = new EdgewardError('EDGE_OUTBOX_WRITE_FAILED', `outbox store unusable after a failed write: ${last}`);
          this.writeFailed(e, jobs.length, last);
          for (const j of jobs) j.reject(e);
          continue;
        }
      }
      const jobs = this.takeBatch();
      this.handedOver = false;
      try {
        await this.writeBatch(jobs);
      } catch (err) {
        const e =
          err instanceof EdgewardError ? err : new EdgewardError('EDGE_OUTBOX_WRITE_FAILED', 'outbox write failed', { cause: err });
        this.writeFailed(e, jobs.length);
        for (const j of jobs) j.reject(e);
      } finally {
        this.replacingOverflow = null;
      }
      // A turn that wrote nothing: what waited for a write waits no longer.
      if (!this.handedOver) this.runWhileWriting();
    }
    this.draining = null;
    this.runWhileWriting();
  }

  /**
   * The jobs of the next batch: everything queued (the group commit) up to
   * MAX_BATCH_EVENTS. Past the cap, acks and appends holding a critical event
   * go first, so a critical event waits for at most one batch, not a backlog.
   */
  private takeBatch(): Job[] {
    const size = (j: Job) => (j.kind === 'append' ? j.events.length : 0);
    // An alarm goes in a batch of its own: appends need no reads, while acks wait
    // for the lookups of the events they delete. Everything else follows in the
    // next batch, which takes all that is queued: a flood of alarms cannot starve it.
    const isCritical = (j: Job) => j.kind === 'append' && j.critical;
    const expressed = this.expressed;
    this.expressed = false;
    if (!expressed && this.queue.some(isCritical) && !this.queue.every(isCritical)) {
      const critical = this.queue.filter(isCritical);
      const rest = this.queue.filter((j) => !isCritical(j));
      this.queue.length = 0;
      for (const j of rest) this.queue.push(j);
      this.expressed = true;
      return critical;
    }
    let total = 0;
    for (const j of this.queue) total += size(j);
    if (total <= MAX_BATCH_EVENTS) return this.queue.splice(0);
    const urgent = (j: Job) => j.kind === 'ack' || j.critical;
    const taken = new Set<Job>();
    let events = 0;
    const take = (j: Job): boolean => {
      if (taken.size > 0 && events + size(j) > MAX_BATCH_EVENTS) return false;
      taken.add(j);
      events += size(j);
      return true;
    };
    for (const j of this.queue) if (urgent(j)) take(j);
    // Then the others in arrival order, stopping at the first that does not fit.
    for (const j of this.queue) if (!urgent(j) && !take(j)) break;
    const jobs = this.queue.filter((j) => taken.has(j));
    const rest = this.queue.filter((j) => !taken.has(j));
    // No spread: the queue can hold more jobs than a call takes arguments.
    this.queue.length = 0;
    for (const j of rest) this.queue.push(j);
    return jobs;
  }

  /** Build one batch from the queued jobs, sync it, then commit the in-memory state and settle the jobs. */
  private async writeBatch(jobs: Job[]): Promise<void> {
    const ops = new BatchOps(this.db!);
    try {
      await this.buildAndWrite(jobs, ops);
    } finally {
      // A batch given up half-built (a failed lookup) must not stay attached to the db.
      ops.discard();
    }
  }

  private async buildAndWrite(jobs: Job[], ops: BatchOps): Promise<void> {
    const db = this.db!;
    const meta = this.meta!;
    const counts = cloneCounts(meta.counts);
    let lastSeq = meta.lastSeq;
    const deleted = new Map<number, Severity>();
    /** Bytes and first event of each severity added by this batch (not yet in the store, so not evictable). */
    const added = emptyCounts();
    const firstAdded: Heads = { critical: null, warning: null, info: null };
    const appended: Envelope[] = [];
    const appendedStored: StoredEvent[] = [];
    const ackResults = new Map<AckJob, number>();
    const appendResults = new Map<AppendJob, Envelope[] | EdgewardError>();

    const del = (seq: number, severity: Severity, bytes: number) => {
      ops.del(eventKey(severity, seq));
      deleted.set(seq, severity);
      counts[severity].events--;
      counts[severity].bytes -= bytes;
    };

    // Acks first: they free room before anything is evicted.
    for (const job of jobs) {
      if (job.kind !== 'ack') continue;
      let n = 0;
      for (const [from, to] of job.ranges) n += await this.collectAck(db, job, from, to, deleted, counts, del);
      ackResults.set(job, n);
    }

    let tally: OverflowTally | null = null;
    /** Evictions already counted by an unread overflow event folded into `tally`. */
    let foldedIn = 0;
    /** Evict stored events of `severities` (info, then warning; oldest first) until `need` bytes are freed; returns bytes freed. */
    const maxEvictions = this.opts.maxEvictionsPerWrite ?? MAX_EVICTIONS_PER_WRITE;
    let evictions = 0;
    const readers: Partial<Record<'info' | 'warning', EvictionReader>> = {};
    /** Events the appends of this batch not yet built will add: sizes the eviction reads. */
    let eventsToCome = 0;
    for (const job of jobs) if (job.kind === 'append') eventsToCome += job.events.length;
    const evict = async (need: number, severities: readonly ('info' | 'warning')[]): Promise<number> => {
      let freed = 0;
      const enough = () => freed >= need || evictions >= maxEvictions;
      /** Stored before this batch and not deleted by it: what eviction can still take. */
      const storedLeft = (severity: 'info' | 'warning') => counts[severity].events - added[severity].events;
      for (const severity of severities) {
        if (enough()) break;
        // Nothing of it stored: no read at all (one would find nothing, at the cost of a seek).
        if (storedLeft(severity) <= 0) continue;
        // From the head as the batch began: none is stored below it (a stale head is a lower bound).
        readers[severity] ??= new EvictionReader(db, severity, (meta.heads[severity]?.seq ?? meta.lastSeq + 1) - 1);
        const reader = readers[severity];
        // Enough for this need and about one stored event per event still to come in the
        // batch, within EVICTION_READ_BYTES of JSON (stored events may be far larger than new ones).
        const avg = counts[severity].events > 0 ? counts[severity].bytes / counts[severity].events : 1;
        while (storedLeft(severity) > 0) {
          const want = Math.min(Math.ceil((need - freed) / avg) + eventsToCome, Math.ceil(EVICTION_READ_BYTES / avg));
          const entry = await reader.next(want);
          if (!entry) break;
          const [key, json] = entry;
          const seq = seqOfKey(key);
          if (deleted.has(seq)) continue;
          const size = Buffer.byteLength(json);
          const { ts, type } = peek(json);
          del(seq, severity, size);
          tally ??= new OverflowTally();
          // The unread overflow event goes with the rest: fold in what it reported
          // (nobody has it yet). One already handed out counts as an evicted event.
          // Reads skip it from here on (as when it is replaced), so nobody gets both.
          if (seq === this.pendingOverflow?.seq) {
            this.replacingOverflow = seq;
            foldedIn += this.pendingOverflow.data.evicted;
            tally.merge(this.pendingOverflow.data);
          } else {
            // A report already handed out but not acknowledged may never have arrived (a
            // central down, a broker without subscriber): its counts go on in the new one
            // rather than vanish with it (measured: 10,000 evictions reported nowhere).
            const earlier = type === 'edge.outbox_overflow' ? overflowDataOf(json) : null;
            if (earlier) {
              foldedIn += earlier.evicted;
              tally.supersede(earlier.id, earlier);
            } else tally.add(seq, severity, size, type, ts);
          }
          freed += size;
          evictions++;
          if (enough()) break;
        }
      }
      return freed;
    };

    const put = (env: Envelope, json: string, size: number): void => {
      ops.put(eventKey(env.severity, env.seq!), json);
      counts[env.severity].events++;
      counts[env.severity].bytes += size;
      added[env.severity].events++;
      added[env.severity].bytes += size;
      firstAdded[env.severity] ??= { seq: env.seq!, ts: env.ts };
      appended.push(env);
      appendedStored.push({ seq: env.seq!, severity: env.severity, bytes: size, json, type: env.type });
    };

    try {
      for (const job of jobs) {
        if (job.kind !== 'append') continue;
        eventsToCome -= job.events.length;
        const seqd = job.events.map((e, i) => withSeq(e, lastSeq + 1 + i));
        let jsons: string[];
        try {
          jsons = serializeEnvelopes(seqd);
        } catch (err) {
          // A BigInt or a cycle in `data`: refuse this append only, not the others of the group commit.
          appendResults.set(job, err as EdgewardError);
          continue;
        }
        const sizes = jsons.map((j) => Buffer.byteLength(j));
        const refused = tooLarge(sizes, job.maxEventBytes);
        if (refused) {
          appendResults.set(job, refused);
          continue;
        }
        let size = 0;
        let hasCritical = false;
        for (let i = 0; i < seqd.length; i++) {
          size += sizes[i];
          if (seqd[i].severity === 'critical') hasCritical = true;
        }
        const over = totalBytes(counts) + size - meta.maxBytes;
        if (over > 0) {
          const victims = EVICTABLE;
          let evictable = 0;
          for (const sev of victims) evictable += counts[sev].bytes - added[sev].bytes;
          const need = over + OVERFLOW_RESERVE;
          if (refusedForRoom(size, hasCritical, { maxBytes: meta.maxBytes, storedBytes: totalBytes(counts), evictableBytes: evictable })) {
            appendResults.set(job, outboxFull(size, meta.maxBytes, totalBytes(counts), evictable, victims));
            // Full of alarms; not an append larger than the whole bound.
            if (counts.critical.events > 0 && size <= meta.maxBytes) this.refusedFull(seqd.length);
            continue;
          }
          const freed = await evict(need, victims);
          // Critical events are never refused nor evicted: above the bound only criticals (and this write) remain.
          // Or this write evicted its most (maxEvictions), and later ones go on.
          if (freed < over && !this.warnedOverBound) {
            this.warnedOverBound = true;
            this.log.warn(
              { maxBytes: meta.maxBytes, bytes: totalBytes(counts) + size, evictions },
              evictions >= maxEvictions ? 'outbox over its byte bound: evicting by steps' : 'outbox over its byte bound with critical events only',
            );
          }
        }
        lastSeq += seqd.length;
        for (let i = 0; i < seqd.length; i++) put(seqd[i], jsons[i], sizes[i]);
        appendResults.set(job, seqd);
      }
    } finally {
      // Before the write: an iterator left open would hold its snapshot (and a pool thread's attention) for nothing.
      await Promise.all(Object.values(readers).map((r) => r.close()));
    }

    let overflowWritten: { seq: number; bytes: number; data: OverflowData } | null = null;
    let evictedNow = 0;
    let evictedTotal = meta.evictedTotal ?? 0;
    if (tally) {
      const t = tally as OverflowTally;
      evictedNow = t.evicted - foldedIn;
      evictedTotal += evictedNow;
      t.total = evictedTotal;
      const prev = this.pendingOverflow;
      if (prev && !deleted.has(prev.seq)) {
        // Nobody has read the previous overflow event: replace it by one that covers both.
        this.replacingOverflow = prev.seq;
        del(prev.seq, 'warning', prev.bytes);
        t.merge(prev.data);
      }
      // withSeq: the contract's key order (id, seq, ts, …), like every other stored event.
      const overflow = withSeq(t.toEnvelope({ site: this.opts.site, edge: this.opts.edge }, this.clock.now()), ++lastSeq);
      const json = JSON.stringify(overflow);
      const size = Buffer.byteLength(json);
      put(overflow, json, size);
      overflowWritten = { seq: overflow.seq!, bytes: size, data: t.data() };
    }
    if (totalBytes(counts) <= meta.maxBytes) this.warnedOverBound = false;

    // New heads. One deleted here stays as a lower bound, marked stale, and the
    // real one is looked up after the commit, off the writer's path
    // (refreshHeads): that lookup is an iterator on the thread pool, slow behind
    // a draining backlog, and an alarm queued behind this batch must not wait for it.
    const heads: Heads = { ...meta.heads };
    for (const severity of PRIORITY) {
      const h = heads[severity];
      const reader = severity === 'critical' ? undefined : readers[severity];
      if (counts[severity].events === 0) heads[severity] = null;
      // Every one left came with this batch (an unread overflow report replaced, say).
      else if (counts[severity].events === added[severity].events) heads[severity] = firstAdded[severity];
      else if (reader) heads[severity] = headAfterEviction(reader, (seq) => deleted.has(seq), h, firstAdded[severity]);
      else if (h && deleted.has(h.seq) && !h.stale) heads[severity] = { ...h, stale: true };
      else heads[severity] ??= firstAdded[severity];
    }

    const next: Meta = { v: META_VERSION, epoch: meta.epoch, lastSeq, maxBytes: meta.maxBytes, counts, heads, ...(evictedTotal ? { evictedTotal } : {}) };
    if (ops.size === 0) {
      // Nothing to write (acks of unknown seqs, rejected appends): no need to touch the disk.
      this.settle(jobs, ackResults, appendResults);
      return;
    }
    ops.put(META_KEY, JSON.stringify(next));
    const writesRangeEnds = this.rangeEndsMissing;
    if (writesRangeEnds) for (const severity of PRIORITY) ops.put(rangeEndKey(severity), '');
    // Appends are synced: their 202 promises durability. A batch of acks alone is
    // not: losing it in a crash only means resending events the central already
    // has (duplicates are allowed, loss is not), and the next synced batch
    // persists it anyway (LevelDB's log is written in order). This keeps fsyncs
    // of a draining backlog's acks from sitting in front of an alarm's append.
    const durable = jobs.some((j) => j.kind === 'append');
    this.writingSince = this.clock.now();
    try {
      const written = ops.write(durable);
      this.handedOver = true;
      this.runWhileWriting();
      await written;
    } finally {
      this.writingSince = null;
    }
    this.writes++;
    if (writesRangeEnds) this.rangeEndsMissing = false;
    if (this.writeError) this.writeRecovered();

    // Committed: publish the new state.
    this.meta = next;
    if (PRIORITY.some((sev) => next.heads[sev]?.stale)) this.refreshHeads();
    for (const e of appendedStored) this.hot[e.severity].add(e);
    if (deleted.size > 0) {
      this.deleteGen++;
      // The batch's own map, not a copy: nothing changes it once committed.
      this.deleteLog.push({ gen: this.deleteGen, seqs: deleted });
      if (this.deleteLog.length > DELETE_LOG_SIZE) this.deleteLog.shift();
      // forEach, not for…of: no [seq, severity] pair allocated per deleted event.
      deleted.forEach((severity, seq) => {
        this.tracked.delete(seq);
        this.hot[severity].delete(seq);
      });
      if (this.pendingOverflow && deleted.has(this.pendingOverflow.seq)) this.pendingOverflow = null;
    }
    if (overflowWritten) this.pendingOverflow = overflowWritten;
    for (const e of appendedStored) this.recentRing.push(e.json);
    this.recentVersion += appendedStored.length;
    if (tally) {
      // A full outbox evicts on every write: log at most every 10 s, with the count since the last line.
      const evicted = this.evictLog.hit(this.clock.now(), evictedNow);
      if (evicted !== undefined) {
        const t = tally as OverflowTally;
        this.log.warn({ evicted, overflowSeq: overflowWritten?.seq, fromSeq: t.fromSeq, toSeq: t.toSeq }, 'outbox full: oldest events evicted');
      }
    }
    this.settle(jobs, ackResults, appendResults);
    if (appended.length > 0) {
      const sevs = new Set<Severity>(appended.map((e) => e.severity));
      for (const l of this.listeners) {
        try {
          l(sevs);
        } catch (err) {
          this.log.error({ err }, 'outbox append listener threw');
        }
      }
    }
  }

  /**
   * A batch failed: its jobs are rejected (nothing of it was committed). Disk
   * full and I/O errors start a spell of failing writes, reported by
   * `stats().writeError` until a write succeeds; logged once, then at most
   * every WRITE_ERROR_LOG_MS.
   */
  private writeFailed(e: EdgewardError, jobs: number, message = causeMessage(e)): void {
    if (this.closing && e.code === 'EDGE_OUTBOX_NOT_OPEN') return;
    this.needsReopen = true;
    if (isCorruption(e)) this.noteCorruption(e);
    this.writeFailures++;
    const first = this.writeError === null;
    if (first) this.writeError = { since: new Date(this.clock.now()).toISOString(), message, failures: 0 };
    const spell = this.writeError!;
    spell.failures++;
    spell.message = message;
    // The first of a spell at once.
    if (first) this.writeErrorLog.reset();
    if (this.writeErrorLog.hit(this.clock.now()) !== undefined) {
      this.log.error({ err: e, jobs, failures: spell.failures, since: spell.since }, 'outbox cannot write: events are refused until it can');
    }
    if (first) this.notifyHealth(true);
  }

  private writeRecovered(): void {
    const spell = this.writeError!;
    this.writeError = null;
    this.log.warn({ failures: spell.failures, since: spell.since, lastError: spell.message }, 'outbox writes again');
    this.notifyHealth(false);
    // Space came back (or the reserve made it): write the reserve back if there is room for it.
    if (this.reserveReleasedAt) void this.ensureReserve();
  }

  private notifyHealth(failing: boolean): void {
    for (const l of this.healthListeners) {
      try {
        l(failing);
      } catch (err) {
        this.log.error({ err }, 'outbox health listener threw');
      }
    }
  }

  private settle(jobs: Job[], acks: Map<AckJob, number>, appends: Map<AppendJob, Envelope[] | EdgewardError>): void {
    for (const j of jobs) {
      if (j.kind === 'ack') j.resolve(acks.get(j) ?? 0);
      else {
        const r = appends.get(j)!;
        if (r instanceof EdgewardError) j.reject(r);
        else j.resolve(r);
      }
    }
  }

  /** Find the live events in [from, to]; calls `del` for each. Tracked seqs need no lookup. */
  private async collectAck(
    db: Db,
    job: AckJob,
    from: number,
    to: number,
    deleted: Map<number, Severity>,
    counts: Counts,
    del: (seq: number, severity: Severity, bytes: number) => void,
  ): Promise<number> {
    if (to < from) return 0;
    const lo = Math.max(from, 1);
    const hi = Math.min(to, this.meta!.lastSeq);
    if (hi < lo) return 0;
    let n = 0;
    // Looked up before queueing: what was stored then, less what commits since deleted.
    const since = job.found && job.foundGen !== undefined ? this.deletedSince(job.foundGen) : null;
    if (job.found && since !== null) {
      const take = (seq: number, t: number) => {
        if (seq < lo || seq > hi || deleted.has(seq) || deletedIn(since, seq)) return;
        del(seq, storedSeverity(t), storedBytes(t));
        n++;
      };
      if (hi - lo + 1 <= job.found.size) {
        for (let seq = lo; seq <= hi; seq++) {
          const t = job.found.get(seq);
          if (t !== undefined) take(seq, t);
        }
      } else {
        for (const [seq, t] of job.found) take(seq, t);
      }
      return n;
    }
    let missing = hi - lo + 1 > MAX_WALK_RANGE;
    if (!missing) {
      // Known gone (below every head, or deleted by a recent batch): no scan for those (see needsLookup).
      const floor = storedFloor(this.meta!) ?? Number.POSITIVE_INFINITY;
      for (let seq = lo; seq <= hi; seq++) {
        if (deleted.has(seq)) continue;
        const t = this.tracked.get(seq);
        if (t !== undefined) {
          del(seq, storedSeverity(t), storedBytes(t));
          n++;
        } else if (!this.knownGone(seq, floor)) missing = true;
      }
    }
    if (!missing) return n;
    // Some seqs were never read (or read before a restart): look them up in each key space.
    const stored = PRIORITY.filter((severity) => counts[severity].events > 0);
    await scanStored(
      db,
      lo,
      hi,
      stored,
      (seq, severity, bytes) => {
        if (deleted.has(seq)) return;
        del(seq, severity, bytes);
        n++;
      },
      this.meta!.heads,
    );
    return n;
  }

  /**
   * Replace stale heads by the real oldest events, beside the writer: one
   * lookup at a time, at most one per HEAD_REFRESH_MIN_MS (a later call
   * schedules one for when that has passed).
   */
  private refreshHeads(): void {
    if (this.refreshing || this.closing) return;
    const wait = this.lastRefreshAt + HEAD_REFRESH_MIN_MS - performance.now();
    if (wait > 0) {
      if (!this.refreshTimer) {
        this.refreshTimer = setTimeout(() => {
          this.refreshTimer = null;
          this.refreshHeads();
        }, wait);
        this.refreshTimer.unref();
      }
      return;
    }
    this.lastRefreshAt = performance.now();
    let again = false;
    this.refreshing = (async () => {
      for (const severity of PRIORITY) {
        const db = this.db;
        const h = this.meta?.heads[severity];
        if (!db || !h?.stale) continue;
        const gen = this.deleteGen;
        let found: Head | null;
        try {
          found = await this.findHead(db, severity, h.seq, new Map());
        } catch (err) {
          this.log.debug({ err, severity }, 'outbox head lookup failed; keeping the lower bound');
          continue;
        }
        // A commit meanwhile either carried this same object along (replace it in
        // place: the next batch persists it) or replaced it (leave that alone).
        // null: an append not yet in the lookup's snapshot; the next commit retries.
        const meta = this.meta;
        if (!found || !meta || meta.heads[severity] !== h) continue;
        // The lookup read a snapshot: a batch committed since may have deleted
        // what it found. Then that is only a lower bound too: keep it stale, look again.
        if (this.deleteGen !== gen && !this.notDeletedSince(found.seq, gen)) {
          meta.heads[severity] = { ...found, stale: true };
          again = true;
        } else {
          meta.heads[severity] = found;
        }
      }
    })().finally(() => {
      this.refreshing = null;
      // Heads a commit made stale during this lookup were left to us: the next one
      // (rate limited) picks them up even if no other commit comes.
      if (again || PRIORITY.some((sev) => this.meta?.heads[sev]?.stale)) this.refreshHeads();
    });
  }

  /** Whether `seq` is known not to have been deleted by a batch committed after `gen`. */
  private notDeletedSince(seq: number, gen: number): boolean {
    const since = this.deletedSince(gen);
    return since !== null && !deletedIn(since, seq);
  }

  /**
   * The deleting batches committed after `gen`, or null when the log (the last
   * DELETE_LOG_SIZE of them) no longer reaches back that far: then "unknown".
   */
  private deletedSince(gen: number): DeletedBatch[] | null {
    if (this.deleteGen === gen) return [];
    const since = this.deleteLog.filter((d) => d.gen > gen);
    return since.length === this.deleteGen - gen ? since : null;
  }

  private async findHead(
    db: Db,
    severity: Severity,
    from: number,
    deleted: Map<number, Severity>,
  ): Promise<{ seq: number; ts: string } | null> {
    for await (const chunk of chunks(db, { gte: eventKey(severity, from), lt: rangeEndKey(severity) }, 256)) {
      for (const [key, json] of chunk) {
        const seq = seqOfKey(key);
        if (!deleted.has(seq)) return { seq, ts: peek(json).ts };
      }
    }
    return null;
  }

  /** Remember seq → severity and size of events handed out (read() has already dropped any deleted meanwhile). */
  private track(events: StoredEvent[]): void {
    for (const e of events) this.tracked.set(e.seq, packStored(e.severity, e.bytes));
  }

  /** Fill the `recent()` ring from the newest stored events (by seq, across severities). */
  private hotBytes(severity: Severity): number {
    return this.opts.hotTailBytes?.[severity] ?? HOT_TAIL_BYTES[severity];
  }

  private newHotTails(from: number): Record<Severity, HotTail> {
    return {
      critical: new HotTail(this.hotBytes('critical'), from),
      warning: new HotTail(this.hotBytes('warning'), from),
      info: new HotTail(this.hotBytes('info'), from),
    };
  }

  /**
   * Empty hot tails that cover everything after the last seq; the stored
   * criticals are loaded too when they are few, so alarms left over from
   * before a restart are also served from memory.
   */
  private async loadHotTails(db: Db, meta: Meta): Promise<void> {
    this.hot = this.newHotTails(meta.lastSeq + 1);
    if (meta.counts.critical.events > CRITICAL_PRELOAD_MAX) return;
    const critical = new HotTail(this.hotBytes('critical'), 0);
    for await (const [key, json] of db.iterator({ gt: SEV_PREFIX.critical, lt: rangeEndKey('critical') })) {
      critical.add({ seq: seqOfKey(key), severity: 'critical', bytes: Buffer.byteLength(json), json });
    }
    this.hot.critical = critical;
  }

  /**
   * Write the recent ring's snapshot if it changed. Not synced except on close:
   * losing the last seconds of it in a power cut only shortens the history
   * GET /api/v1/events shows (unacknowledged events are reseeded from the store).
   */
  private saveRecent(sync: boolean, force = true): Promise<void> {
    const db = this.db;
    if (!db || this.recentSaving || this.recentVersion === this.recentSavedVersion) return this.recentSaving ?? Promise.resolve();
    const fresh = this.recentVersion - this.recentSavedVersion;
    const now = this.clock.now();
    if (!force && fresh < RECENT_SIZE / 4 && now - this.recentSavedAt < (this.opts.recentMaxAgeMs ?? RECENT_MAX_AGE_MS)) return Promise.resolve();
    const version = this.recentVersion;
    // Joined from the stored JSON, bounded in size (see RecentRing): nothing here can fail.
    const json = `[${this.recentRing.newestJson(RECENT_SIZE).join(',')}]`;
    this.recentSaving = db
      .put(RECENT_KEY, json, { sync })
      .then(
        () => {
          this.recentSavedVersion = version;
          this.recentSavedAt = now;
          this.log.debug({ newEvents: fresh }, 'outbox recent snapshot written');
        },
        (err) => this.log.debug({ err }, 'outbox recent snapshot not written'),
      )
      .finally(() => {
        this.recentSaving = null;
      });
    return this.recentSaving;
  }

  /** The recent ring after a (re)open: the last snapshot merged with the newest stored events, by seq. */
  private async seedRecent(): Promise<void> {
    const db = this.db!;
    // Kept as stored JSON, and read within the list's bound: reading (and parsing) the 1,000 newest
    // of each severity whatever their size ran a runtime with a 512 MB heap out of memory at every
    // start after a thousand 1 MB events (found by a review).
    const all: Array<{ seq: number; id: string; json: string }> = [];
    try {
      const raw = await db.get(RECENT_KEY);
      // One written before the list was bounded in size may be huge: not worth the memory.
      if (raw !== undefined && raw.length > 4 * RECENT_MAX_CHARS) throw new Error(`snapshot of ${raw.length} characters, over the list's bound`);
      const snap: unknown = raw === undefined ? [] : JSON.parse(raw);
      if (Array.isArray(snap)) {
        for (const e of snap) {
          if (e && typeof e === 'object' && Number.isSafeInteger(e.seq)) all.push({ seq: e.seq, id: String(e.id), json: JSON.stringify(e) });
        }
      }
    } catch (err) {
      this.log.warn({ err }, 'outbox recent snapshot unreadable: recent events start from the stored ones');
    }
    for (const severity of PRIORITY) {
      if (this.meta!.counts[severity].events === 0) continue;
      const newest = { gt: SEV_PREFIX[severity], lt: rangeEndKey(severity), reverse: true, limit: RECENT_SIZE };
      let chars = 0;
      read: for await (const chunk of chunks(db, newest, 32)) {
        for (const [key, json] of chunk) {
          let id: unknown;
          try {
            id = (JSON.parse(json) as Envelope).id;
          } catch {
            continue; // a value that does not parse is still sent as stored; it just does not show in recent()
          }
          all.push({ seq: seqOfKey(key), id: String(id), json });
          chars += json.length;
          if (chars > RECENT_MAX_CHARS) break read;
        }
      }
    }
    all.sort((a, b) => a.seq - b.seq);
    // A stored event is usually in the snapshot too: keep one per id.
    const seen = new Set<string>();
    const unique = all.filter((e) => {
      if (seen.has(e.id)) return false;
      seen.add(e.id);
      return true;
    });
    for (const e of unique.slice(-RECENT_SIZE)) this.recentRing.push(e.json);
  }
}

/** The store's own words for a failure (LevelDB's `IO error: …`), else the error's. */
function causeMessage(e: EdgewardError): string {
  const cause = e.cause as { message?: unknown } | undefined;
  return typeof cause?.message === 'string' ? cause.message : e.message;
}

/** LevelDB's RepairDB (level's Level is classic-level's ClassicLevel in Node; its typings leave out the static repair()). */
function repairStore(dir: string): Promise<void> {
  return (Level as unknown as { repair(location: string): Promise<void> }).repair(dir);
}

/**
 * An open failure that is damage to LevelDB's own files, which RepairDB can
 * mend: `Corruption: …`, or CURRENT/MANIFEST missing or not a file. Not the
 * disk refusing to write (full, read-only, quota, permission, I/O error).
 */
function isDamage(err: unknown): boolean {
  if (isCorruption(err)) return true;
  if (isDiskRefusal(err)) return false;
  return /(CURRENT|MANIFEST-\d+)[^:|]*: (No such file or directory|Is a directory)|Corruption/.test(errorText(err));
}

/** The disk refused (full, too large for a limit, read-only, quota, permission, I/O error): nothing to repair. */
function isDiskRefusal(err: unknown): boolean {
  if (isEdgewardError(err, 'EDGE_OUTBOX_NO_ROOM')) return true;
  return /No space left|File too large|Read-only file system|Permission denied|Operation not permitted|quota|Too many open files|Cannot allocate memory|Input\/output error/i.test(
    errorText(err),
  );
}

/** The disk is full (ENOSPC, or a quota: EDQUOT), from an error or a message: what the disk reserve is for (not a file-size limit or a read-only disk). */
function isNoSpace(err: unknown): boolean {
  return /No space left|ENOSPC|Disk quota exceeded|EDQUOT/.test(typeof err === 'string' ? err : errorText(err));
}

/** The messages of an error and its causes, joined. */
function errorText(err: unknown): string {
  return causeChain(err)
    .flatMap((e) => (typeof e.message === 'string' ? [e.message] : []))
    .join(' | ');
}

/** LevelDB found a damaged block or file (classic-level's code for `Corruption: …`). */
function isCorruption(err: unknown): boolean {
  return causeChain(err).some((e) => e.code === 'LEVEL_CORRUPTION');
}

function notOpen(): EdgewardError {
  return new EdgewardError('EDGE_OUTBOX_NOT_OPEN', 'outbox is not open');
}

function translateOpenError(err: unknown, dir: string): EdgewardError {
  const code = (err as { code?: string; cause?: { code?: string } })?.cause?.code ?? (err as { code?: string })?.code;
  if (code === 'LEVEL_LOCKED') {
    return new EdgewardError('EDGE_OUTBOX_LOCKED', `outbox at ${dir} is in use by another process`, { cause: err });
  }
  return new EdgewardError('EDGE_OUTBOX_OPEN_FAILED', `cannot open outbox at ${dir}`, { cause: err });
}

function statsOf(meta: Meta): OutboxStats {
  return {
    epoch: meta.epoch,
    events: totalEvents(meta.counts),
    bytes: totalBytes(meta.counts),
    bySeverity: cloneCounts(meta.counts),
    oldestTs: oldestOf(meta.heads),
    lastSeq: meta.lastSeq,
    maxBytes: meta.maxBytes,
  };
}

/**
 * Cheap check of the meta record against the store (per severity: one get and
 * one seek over a range that never held keys, so no tombstones to wade
 * through): the recorded head exists, and no event lies above lastSeq (a seq
 * that could be handed out again). Batches are atomic, so this only catches
 * a store changed behind our back or a meta record of another format.
 */
async function metaConsistent(db: Db, meta: Meta): Promise<boolean> {
  if (meta.v !== META_VERSION || typeof meta.epoch !== 'string' || !Number.isSafeInteger(meta.lastSeq)) return false;
  for (const severity of PRIORITY) {
    const c = meta.counts?.[severity];
    const h = meta.heads?.[severity];
    if (!c || typeof c.events !== 'number' || typeof c.bytes !== 'number') return false;
    if ((c.events === 0) !== !h) return false;
    if (h && !h.stale && (await db.get(eventKey(severity, h.seq))) === undefined) return false;
    // A stale head must still be a lower bound: nothing stored below it.
    if (h?.stale) {
      const below = await db.keys({ gte: SEV_PREFIX[severity], lt: eventKey(severity, h.seq), limit: 1 }).all();
      if (below.length > 0) return false;
    }
    const above = await db.keys({ gt: eventKey(severity, meta.lastSeq), lt: rangeEndKey(severity), limit: 1 }).all();
    if (above.length > 0) return false;
  }
  return true;
}

/** Full scan: recount everything (only after a failed consistency check, or a store without meta). */
async function rebuildMeta(db: Db, old: Meta | null, maxBytes: number): Promise<Meta> {
  const counts = emptyCounts();
  const heads: Heads = { critical: null, warning: null, info: null };
  let lastSeq = old?.lastSeq ?? 0;
  for (const severity of PRIORITY) {
    for await (const chunk of chunks(db, { gt: SEV_PREFIX[severity], lt: rangeEndKey(severity) }, 1000)) {
      for (const [key, json] of chunk) {
        const seq = seqOfKey(key);
        heads[severity] ??= { seq, ts: peek(json).ts };
        counts[severity].events++;
        counts[severity].bytes += Buffer.byteLength(json);
        if (seq > lastSeq) lastSeq = seq;
      }
    }
  }
  // Without a trustworthy epoch the seqs cannot be trusted to be fresh: start a new epoch.
  const epoch = old && typeof old.epoch === 'string' ? old.epoch : newId();
  const evictedTotal = epoch === old?.epoch ? old.evictedTotal : undefined;
  return { v: META_VERSION, epoch, lastSeq, maxBytes, counts, heads, ...(evictedTotal ? { evictedTotal } : {}) };
}

/**
 * Open the outbox store at `dir` just long enough to read its stats (for
 * `edgeward outbox stats`). Fails with EDGE_OUTBOX_LOCKED while the runtime
 * holds the store, EDGE_OUTBOX_OPEN_FAILED when there is none.
 */
type Op = { type: 'put'; key: string; value: string } | { type: 'del'; key: string };

/**
 * The newest stored events of one severity, in seq order. Invariant: every
 * stored event of this severity with seq >= `from` is held here. A read that
 * starts at or past `from` is served from memory; one that starts before it
 * (a resend after a rewind, a backlog behind the reader) goes to LevelDB.
 * Events behind the reader's cursor leave the tail and raise `from`; so does
 * the oldest event when the tail is over its byte budget.
 */
export class HotTail {
  /** Events in seq order from `head`. */
  private queue: StoredEvent[] = [];
  /**
   * 1 while `queue[i]` is stored, 0 once deleted (acked or evicted). A flag
   * beside each entry, found by binary search on delete, instead of a Map of
   * the live ones: the Map cost four hash-table operations per event on the
   * runtime's busiest path.
   */
  private alive: number[] = [];
  private head = 0;
  private bytes = 0;

  constructor(
    private readonly maxBytes: number,
    private from: number,
  ) {}

  /** Whether every stored event after `after` is held here. */
  covers(after: number): boolean {
    return after + 1 >= this.from;
  }

  add(e: StoredEvent): void {
    const last = this.queue.length - 1;
    if (last < this.head || this.queue[last].seq < e.seq) {
      this.queue.push(e);
      this.alive.push(1);
    } else {
      // Seqs are added in increasing order (commits assign them so); keep the
      // queue sorted for the binary search all the same, should one ever not be.
      let i = last;
      while (i >= this.head && this.queue[i].seq > e.seq) i--;
      if (i >= this.head && this.queue[i].seq === e.seq) {
        if (this.alive[i] === 1) this.bytes -= this.queue[i].bytes;
        this.queue[i] = e;
        this.alive[i] = 1;
      } else {
        this.queue.splice(i + 1, 0, e);
        this.alive.splice(i + 1, 0, 1);
      }
    }
    this.bytes += e.bytes;
    while (this.bytes > this.maxBytes && this.head < this.queue.length) this.shift();
  }

  /** A deleted (acked or evicted) event: it is no longer stored, `from` is unaffected. */
  delete(seq: number): void {
    const i = this.indexOf(seq);
    if (i < 0 || this.alive[i] === 0) return;
    this.alive[i] = 0;
    this.bytes -= this.queue[i].bytes;
  }

  /**
   * Offer the events after `after`, oldest first, skipping excluded ones, to
   * `accept` until it returns false. Events at or before `after` are behind
   * the reader's cursor and leave the tail; those offered stay until the
   * cursor passes them (a reader may read a partial batch and come back for
   * it after its linger).
   */
  take(after: number, exclude: ((seq: number) => boolean) | undefined, accept: (e: StoredEvent) => boolean): void {
    while (this.head < this.queue.length && this.queue[this.head].seq <= after) this.shift();
    for (let i = this.head; i < this.queue.length; i++) {
      const e = this.queue[i];
      if (this.alive[i] === 0 || exclude?.(e.seq)) continue;
      if (!accept(e)) return;
    }
  }

  /** Index of `seq` in the queue (from `head`), or -1. */
  private indexOf(seq: number): number {
    let lo = this.head;
    let hi = this.queue.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = this.queue[mid].seq;
      if (s < seq) lo = mid + 1;
      else if (s > seq) hi = mid - 1;
      else return mid;
    }
    return -1;
  }

  /** Drop the oldest entry and raise `from` past it. */
  private shift(): void {
    const i = this.head++;
    const e = this.queue[i];
    if (this.alive[i] === 1) this.bytes -= e.bytes;
    if (e.seq + 1 > this.from) this.from = e.seq + 1;
    // Not kept until the next compaction: the tail held up to twice its budget (measured in
    // a soak: heap climbing 1.75 MB a minute, then 11 MB freed at each compaction).
    (this.queue as Array<StoredEvent | undefined>)[i] = undefined;
    // Compact now and then so the arrays do not grow with everything ever added.
    if (this.head >= 1024 && this.head * 2 >= this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.alive = this.alive.slice(this.head);
      this.head = 0;
    }
  }
}


/**
 * The abstract-level implementer API of a chained batch (classic-level's
 * `ChainedBatch`): each `_put`/`_del` is one native call with the key and value
 * as arguments.
 */
interface NativeChainedBatch {
  _put(key: string, value: string): void;
  _del(key: string): void;
  _write(options: { sync: boolean }): Promise<void>;
}

/**
 * The ops of one atomic LevelDB write, our own utf8 strings, handed to
 * classic-level's native chained batch as they are made.
 *
 * abstract-level's public batch() clones, validates and re-encodes every
 * operation (measured: 100k puts of 300 B, 950 ms vs 250 ms of CPU). Its
 * implementer API for an array, `_batch`, still costs the event loop ~1.5 µs
 * per put and ~0.7 µs per del: the native side reads `type`, `key` and
 * `value` of every op object through N-API property lookups. The chained
 * batch's `_put`/`_del` pass them as arguments: ~0.6 µs per put and ~0.25 µs
 * per del (measured on 800-op batches of 300 B events). Passing each op on as
 * it is made, rather than collecting op objects first, spares the garbage
 * collector two objects per event in the pipeline (each event is put once and
 * deleted once). The native batch is created on the first op after the same
 * open check as abstract-level's, is attached to the db as a resource by its
 * constructor, and is detached once written or discarded (abstract-level's
 * own write() would do both). Any other implementation gets the public batch().
 */
class BatchOps {
  private native: NativeChainedBatch | null = null;
  private readonly fallback: Op[] | null;
  private count = 0;

  constructor(private readonly db: Db) {
    const impl = db as unknown as { _chainedBatch?: unknown; detachResource?: unknown };
    this.fallback = typeof impl._chainedBatch === 'function' && typeof impl.detachResource === 'function' ? null : [];
  }

  get size(): number {
    return this.count;
  }

  put(key: string, value: string): void {
    this.count++;
    if (this.fallback) this.fallback.push({ type: 'put', key, value });
    else this.batch()._put(key, value);
  }

  del(key: string): void {
    this.count++;
    if (this.fallback) this.fallback.push({ type: 'del', key });
    else this.batch()._del(key);
  }

  /** Write the ops atomically (`sync`: fsync'ed before it resolves). Once only. */
  async write(sync: boolean): Promise<void> {
    if (this.fallback) {
      await this.db.batch(this.fallback, { sync });
      return;
    }
    try {
      await this.batch()._write({ sync });
    } finally {
      this.discard();
    }
  }

  /** Drop what was not written (a no-op once written). */
  discard(): void {
    if (!this.native) return;
    (this.db as unknown as { detachResource(resource: unknown): void }).detachResource(this.native);
    this.native = null;
  }

  private batch(): NativeChainedBatch {
    if (this.native) return this.native;
    if (this.db.status !== 'open') {
      throw new EdgewardError('EDGE_OUTBOX_NOT_OPEN', `outbox database is ${this.db.status}`);
    }
    this.native = (this.db as unknown as { _chainedBatch(): NativeChainedBatch })._chainedBatch();
    return this.native;
  }
}

/** Each stored event with a seq in [lo, hi] of the given severities: its seq, severity and JSON size. */
async function scanStored(
  db: Db,
  lo: number,
  hi: number,
  severities: readonly Severity[],
  each: (seq: number, severity: Severity, bytes: number) => void,
  heads?: Heads,
): Promise<void> {
  if (hi < lo) return;
  for (const severity of severities) {
    // From the severity's head (a lower bound of what it holds): below it lie only the tombstones
    // of acked events, which a seek would step over one by one.
    const from = Math.max(lo, heads?.[severity]?.seq ?? lo);
    if (hi < from) continue;
    for await (const chunk of chunks(db, { gte: eventKey(severity, from), lte: eventKey(severity, hi) }, 1000)) {
      for (const [key, json] of chunk) each(seqOfKey(key), severity, Buffer.byteLength(json));
    }
  }
}

export async function readOutboxStats(dir: string): Promise<OutboxStats> {
  const none = (cause?: unknown) =>
    new EdgewardError('EDGE_OUTBOX_NOT_FOUND', `no outbox at ${dir}: nothing was ever stored with this dataDir`, { cause });
  if (!(await stat(dir).catch(() => null))) throw none();
  const db: Db = new Level<string, string>(dir, { keyEncoding: 'utf8', valueEncoding: 'utf8', createIfMissing: false });
  try {
    await db.open();
  } catch (err) {
    if (/does not exist \(create_if_missing is false\)/.test(errorText(err))) throw none(err);
    throw translateOpenError(err, dir);
  }
  try {
    const raw = await db.get(META_KEY);
    let meta = raw === undefined ? null : (JSON.parse(raw) as Meta);
    if (!meta || !(await metaConsistent(db, meta))) meta = await rebuildMeta(db, meta, meta?.maxBytes ?? 0);
    return statsOf(meta);
  } finally {
    await db.close();
  }
}
