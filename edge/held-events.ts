import { type Envelope, makeEnvelope } from './envelope.js';

/** `data` of the `edge.events_lost` event for bus events dropped while the outbox could not write. */
export interface HeldLossData {
  count: number;
  reason: 'outbox_write_failed';
  bySeverity: { info: number; warning: number };
  fromTs: string | null;
  toTs: string | null;
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
  private lost: HeldLossData | null = null;
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
    return this.events.length > 0 || this.lost !== null;
  }

  hold(envelopes: readonly Envelope[]): void {
    for (const e of envelopes) {
      const size = Buffer.byteLength(JSON.stringify(e));
      this.events.push(e);
      this.sizes.push(size);
      this.bytes += size;
    }
    let count = this.events.length;
    const over = () => count > this.max || this.bytes > this.maxBytes;
    for (const severity of ['info', 'warning'] as const) {
      if (!over()) return;
      const kept: Envelope[] = [];
      const keptSizes: number[] = [];
      for (let i = 0; i < this.events.length; i++) {
        const e = this.events[i];
        if (e.severity === severity && over()) {
          this.mergeLoss({
            count: 1,
            reason: 'outbox_write_failed',
            bySeverity: { info: severity === 'info' ? 1 : 0, warning: severity === 'warning' ? 1 : 0 },
            fromTs: e.ts,
            toTs: e.ts,
          });
          this.bytes -= this.sizes[i];
          count--;
        } else {
          kept.push(e);
          keptSizes.push(this.sizes[i]);
        }
      }
      this.events = kept;
      this.sizes = keptSizes;
    }
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
    this.report = null;
    const lost = this.lost;
    this.lost = null;
    if (lost) {
      this.report = makeEnvelope(
        {
          type: 'edge.events_lost',
          source: { device: ids.edge, driver: 'runtime' },
          data: lost as unknown as Record<string, unknown>,
        },
        ids,
        now,
      );
      out.push(this.report);
    }
    return out;
  }

  /** Storing what `take` gave failed: hold it again, ahead of what came meanwhile (the loss report is remade later). */
  putBack(taken: readonly Envelope[]): void {
    const report = this.report;
    this.report = null;
    const events = taken.filter((e) => e !== report);
    if (report && events.length < taken.length) this.mergeLoss(report.data as unknown as HeldLossData);
    const later = this.events;
    this.events = [];
    this.sizes = [];
    this.bytes = 0;
    this.hold(events);
    this.hold(later);
  }

  private mergeLoss(d: HeldLossData): void {
    this.lost ??= {
      count: 0,
      reason: 'outbox_write_failed',
      bySeverity: { info: 0, warning: 0 },
      fromTs: null,
      toTs: null,
    };
    const l = this.lost;
    l.count += d.count;
    l.bySeverity.info += d.bySeverity.info;
    l.bySeverity.warning += d.bySeverity.warning;
    if (d.fromTs !== null && (l.fromTs === null || d.fromTs < l.fromTs)) l.fromTs = d.fromTs;
    if (d.toTs !== null && (l.toTs === null || d.toTs > l.toTs)) l.toTs = d.toTs;
  }
}
