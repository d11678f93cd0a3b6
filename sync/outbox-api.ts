import type { Envelope, Severity } from '../edge/envelope.js';

/** Counts and bytes held in the outbox, by severity and in total. */
export interface OutboxStats {
  epoch: string;
  events: number;
  bytes: number;
  bySeverity: Record<Severity, { events: number; bytes: number }>;
  /** ts of the oldest event held, or null when empty. */
  oldestTs: string | null;
  /** Last seq assigned in this epoch (0 when none yet). */
  lastSeq: number;
  maxBytes: number;
  /**
   * Present while the store cannot write (disk full, I/O error): since when
   * writes fail, the last error, and how many writes failed since. Appends
   * are refused meanwhile (never acknowledged, so nothing accepted is lost);
   * the first write that succeeds clears it.
   */
  writeError?: OutboxWriteError;
  /**
   * Present while LevelDB reports damaged data (`Corruption: …`, bit rot on an
   * SD card): since when, and its message. The store is repaired (see README).
   */
  corruption?: { since: string; message: string };
  /**
   * How long the write now on its way to disk has taken, while one is: a card
   * that hangs on fsync holds every append (alarms too) behind it.
   */
  writePendingMs?: number;
  /** Writes that failed since the store was opened, when any did (a counter: it never goes down). */
  writeFailures?: number;
  /**
   * Present while the disk reserve (`<dir>.reserve`) is released (the disk
   * filled, and the store writes in the room the reserve left), or missing
   * with no room to write it (after a restart on a full disk, or a disk with
   * less than twice its size free). Someone must free space.
   */
  reserveReleasedAt?: string;
  /**
   * Present while non-critical appends are refused for a full store
   * (`EDGE_OUTBOX_FULL`: only critical events left, none evictable), until a
   * minute after the last refusal: since when, the last one, how many events.
   */
  refusingFull?: { since: string; last: string; events: number };
}

/** See `OutboxStats.writeError`. */
export interface OutboxWriteError {
  /** ISO time of the first failed write of this spell. */
  since: string;
  /** The last failure's message (LevelDB's, e.g. `IO error: …: No space left on device`). */
  message: string;
  /** Failed writes in this spell. */
  failures: number;
}

/** A stored event as read back for sending: the envelope (with seq) and its serialized size. */
export interface StoredEvent {
  seq: number;
  severity: Severity;
  bytes: number;
  /** The envelope serialized as JSON (what goes into a batch). */
  json: string;
  /** The envelope's type, when the store has it at hand (events served from memory). */
  type?: string;
}

/** Options of `Outbox.append`. */
export interface AppendOptions {
  /** Largest stored JSON of one event (the uplink's packet limit less the batch's own bytes). */
  maxEventBytes?: number;
}

/** Options of `Outbox.read`. */
export interface OutboxReadOptions {
  maxEvents: number;
  /** Byte budget over the events' JSON sizes; at least one event is returned even if it alone is larger. */
  maxBytes: number;
  /** Seqs to skip (e.g. those already in flight). */
  exclude?: (seq: number) => boolean;
  /** Only these severities (default all). */
  severities?: Severity[];
  /**
   * Per-severity cursor: start after this seq (optional). Lets a reader that
   * already holds seqs up to N in flight skip them without rescanning.
   */
  after?: Partial<Record<Severity, number>>;
}

/**
 * The durable outbox. `append` resolves only when the events are on disk
 * (group commit: concurrent appends share one synced write). Seqs strictly
 * increase within one epoch. Critical events are read first.
 */
export interface Outbox {
  open(): Promise<void>;
  close(): Promise<void>;
  readonly epoch: string;
  /**
   * Store envelopes durably; assigns and returns them with `seq` set, in input order.
   * With `maxEventBytes`, an append holding an event whose stored JSON is larger is
   * refused whole with `EDGE_OUTBOX_EVENT_TOO_LARGE` (details: index, bytes, maxEventBytes).
   */
  append(events: Envelope[], opts?: AppendOptions): Promise<Envelope[]>;
  /**
   * Read up to `maxEvents`/`maxBytes` events not in `exclude`, highest
   * priority first (critical, then warning, then info), oldest first within a priority.
   */
  read(opts: OutboxReadOptions): Promise<StoredEvent[]>;
  /** Delete acknowledged seqs (inclusive ranges). Returns how many were deleted. */
  ack(ranges: Array<[number, number]>): Promise<number>;
  stats(): OutboxStats;
  /** Newest events stored by this process, newest first (acknowledged or not). */
  recent(limit: number): Envelope[];
  /** The same, as stored JSON (what `GET /api/v1/events` sends as it is). */
  recentJson(limit: number): string[];
  /** Subscribe to appends (the uplink wakes on this). Returns an unsubscribe function. */
  onAppend(listener: (severities: Set<Severity>) => void): () => void;
  /**
   * Subscribe to the store starting or ceasing to fail its writes (`stats().writeError`
   * appears or goes): the uplink republishes its status at once. Optional: a store
   * that cannot fail (the memory reference) need not have it.
   */
  onWriteHealth?(listener: (failing: boolean) => void): () => void;
  /**
   * Run `fn` once the store's next write has been handed to disk, or at once
   * while a write is on disk or when none is coming, and after a few ms at
   * the latest (`WHEN_WRITING_MAX_WAIT_MS`): work that reads what was just
   * stored (the uplink's batching, gzip and publish) then overlaps the fsync
   * instead of sitting between two group commits, where it delays every
   * append behind it. Optional: a store without a writer (the memory
   * reference) need not have it; callers then just run `fn`.
   */
  whenWriting?(fn: () => void): void;
}
