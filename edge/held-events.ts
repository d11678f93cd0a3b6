import { type Envelope, makeEnvelope } from './envelope.js';

/** `data` of the `edge.events_lost` event for bus events the runtime could not store. */
export interface HeldLossData {
  count: number;
  /**
   * `outbox_write_failed`: dropped from the events held while the store could
   * not write (see HeldEvents); `outbox_full`: refused by a store full of
   * critical events (`EDGE_OUTBOX_FULL`), see LossTally.
   */
  reason: 'outbox_write_failed' | 'outbox_full';
  bySeverity: { info: number; warning: number };
  fromTs: string | null;
  toTs: string | null;
}

/**
 * Bus events lost for one reason, counted until one `edge.events_lost`
 * reports them all: how many, of which severity, and the ts of the first and
 * last. `take` makes the report and clears the tally; a report that could not
 * be stored goes back with `merge`.
 */
export class LossTally {
  private lost: HeldLossData | null = null;

  constructor(private readonly reason: HeldLossData['reason']) {}

  get pending(): boolean {
    return this.lost !== null;
  }

  /** Events counted and not yet taken into a report. */
  get count(): number {
    return this.lost?.count ?? 0;
  }

  add(envelopes: readonly Envelope[]): void {
    for (const e of envelopes) {
      this.merge({
        count: 1,
        reason: this.reason,
        bySeverity: { info: e.severity === 'info' ? 1 : 0, warning: e.severity === 'warning' ? 1 : 0 },
        fromTs: e.ts,
        toTs: e.ts,
      });
    }
  }

  merge(d: HeldLossData): void {
    this.lost ??= { count: 0, reason: this.reason, bySeverity: { info: 0, warning: 0 }, fromTs: null, toTs: null };
    const l = this.lost;
    l.count += d.count;
    l.bySeverity.info += d.bySeverity.info;
    l.bySeverity.warning += d.bySeverity.warning;
    if (d.fromTs !== null && (l.fromTs === null || d.fromTs < l.fromTs)) l.fromTs = d.fromTs;
    if (d.toTs !== null && (l.toTs === null || d.toTs > l.toTs)) l.toTs = d.toTs;
  }

  /** The `edge.events_lost` report of everything counted, made now, or null; the tally starts again. */
  take(ids: { site: string; edge: string }, now: number): Envelope | null {
    const lost = this.lost;
    this.lost = null;
    if (!lost) return null;
    return makeEnvelope(
      { type: 'edge.events_lost', source: { device: ids.edge, driver: 'runtime' }, data: lost as unknown as Record<string, unknown> },
      ids,
      now,
    );
  }
}

/**
 * Bus events (a driver's, a flow's) that the outbox refused because it could
 * not write (disk full, I/O error), held in memory, oldest first, until it
 * can: their envelopes are kept, so id and ts stay those of when they
 * happened. Bounded in count and in bytes (of their JSON, measured only
 * while events are held, i.e. while the disk is full): past either bound the
 * oldest info events go first, then the oldest warnings; critical events are
 * never dropped (above the bounds only criticals remain). What was dropped is
 * reported by one `edge.events_lost` event, stored with the held events once
 * the store writes again.
 */
export class HeldEvents {
  private events: Envelope[] = [];
  /** JSON size of each held event, by position in `events`. */
  private sizes: number[] = [];
  private bytes = 0;
  private readonly lost = new LossTally('outbox_write_failed');
  /** The loss report handed out by the last `take`. */
  private report: Envelope | null = null;

  constructor(
    private readonly max: number,
    private readonly maxBytes: number = Number.POSITIVE_INFINITY,
  ) {}

  /** JSON bytes of the held events. */
  get heldBytes(): number {
    return this.bytes;
  }

  get size(): number {
    return this.events.length;
  }

  /** Whether there is anything to store: held events or a loss to report. */
  get pending(): boolean {
    return this.events.length > 0 || this.lost.pending;
  }

  /** Events dropped (past the bounds) and not yet taken into a loss report. */
  get lostCount(): number {
    return this.lost.count;
  }

  /** Hold `envelopes` after those held; returns how many held events the bounds dropped. */
  hold(envelopes: readonly Envelope[]): number {
    for (const e of envelopes) {
      const size = Buffer.byteLength(JSON.stringify(e));
      this.events.push(e);
      this.sizes.push(size);
      this.bytes += size;
    }
    let count = this.events.length;
    let dropped = 0;
    const over = () => count > this.max || this.bytes > this.maxBytes;
    for (const severity of ['info', 'warning'] as const) {
      if (!over()) return dropped;
      const kept: Envelope[] = [];
      const keptSizes: number[] = [];
      for (let i = 0; i < this.events.length; i++) {
        const e = this.events[i];
        if (e.severity === severity && over()) {
          this.lost.add([e]);
          this.bytes -= this.sizes[i];
          count--;
          dropped++;
        } else {
          kept.push(e);
          keptSizes.push(this.sizes[i]);
        }
      }
      this.events = kept;
      this.sizes = keptSizes;
    }
    return dropped;
  }

  /**
   * Everything to store now, oldest first, with the `edge.events_lost` report
   * (made now) last when events were dropped. Hand it back with `putBack` if
   * storing fails.
   */
  take(ids: { site: string; edge: string }, now: number): Envelope[] {
    const out = this.events;
    this.events = [];
    this.sizes = [];
    this.bytes = 0;
    this.report = this.lost.take(ids, now);
    if (this.report) out.push(this.report);
    return out;
  }

  /**
   * Storing what `take` gave failed: hold it again, ahead of what came
   * meanwhile (the loss report is remade later). Returns how many the bounds dropped.
   */
  putBack(taken: readonly Envelope[]): number {
    const events = this.drop(taken);
    const later = this.events;
    this.events = [];
    this.sizes = [];
    this.bytes = 0;
    return this.hold(events) + this.hold(later);
  }

  /**
   * Storing what `take` gave was refused for good (a store full of critical
   * events): its events, which the caller counts as lost; the loss report
   * among them is remade later, with anything held meanwhile still held.
   */
  drop(taken: readonly Envelope[]): Envelope[] {
    const report = this.report;
    this.report = null;
    const events = taken.filter((e) => e !== report);
    if (report && events.length < taken.length) this.lost.merge(report.data as unknown as HeldLossData);
    return events;
  }
}
