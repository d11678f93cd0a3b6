import { Counter, Gauge, Registry } from 'prom-client';
import type { OutboxStats } from '../sync/outbox-api.js';

/** What the metrics read at scrape time (not pushed: a gauge is never stale). */
export interface MetricsSources {
  outboxStats?: () => OutboxStats | undefined;
  uplink?: () => { connected: boolean; ackLagMs?: number; unsendable?: number } | undefined;
  now?: () => number;
  /** Bus events held in memory while the outbox cannot write. */
  heldEvents?: () => number;
}

/**
 * The runtime's Prometheus metrics, on their own Registry (never prom-client's
 * global one: two runtimes in one process, as in tests, must not collide).
 * Others call the small helpers (`eventIn`, `driverError`, `ruleFired`, …)
 * instead of touching prom-client objects.
 */
/** `alert.<rule>` types with a label of their own in the event counters; more are `alert.other`. */
export const MAX_ALERT_TYPES = 100;

export class Metrics {
  readonly registry = new Registry();
  /** The alert.<rule> types that have a label of their own (see typeLabel). */
  private readonly alertTypes = new Set<string>();
  private readonly eventsIn: Counter<'type'>;
  private readonly eventsOut: Counter<'type'>;
  private readonly driverErrors: Counter<'device' | 'code'>;
  private readonly ruleFirings: Counter<'rule'>;
  private readonly ingestErrors: Counter;
  private readonly deviceOnline: Gauge<'device' | 'driver'>;
  private sources: MetricsSources;

  constructor(sources: MetricsSources = {}) {
    this.sources = sources;
    const registers = [this.registry];
    this.eventsIn = new Counter({
      name: 'edgeward_events_in_total',
      help: 'Events stored in the outbox, by type',
      labelNames: ['type'],
      registers,
    });
    this.eventsOut = new Counter({
      name: 'edgeward_events_out_total',
      help: 'Events delivered upstream (acknowledged), by type',
      labelNames: ['type'],
      registers,
    });
    this.driverErrors = new Counter({
      name: 'edgeward_driver_errors_total',
      help: 'Driver errors by device and error code',
      labelNames: ['device', 'code'],
      registers,
    });
    this.ruleFirings = new Counter({
      name: 'edgeward_rule_firings_total',
      help: 'Rule firings by rule',
      labelNames: ['rule'],
      registers,
    });
    this.ingestErrors = new Counter({
      name: 'edgeward_ingest_errors_total',
      help: 'Events that could not be stored (bus input that failed validation or storage)',
      registers,
    });
    this.deviceOnline = new Gauge({
      name: 'edgeward_device_online',
      help: '1 when the device is online, 0 when offline',
      labelNames: ['device', 'driver'],
      registers,
    });
    const self = this;
    new Gauge({
      name: 'edgeward_outbox_events',
      help: 'Events held in the outbox (not yet acknowledged)',
      registers,
      collect() {
        this.set(self.sources.outboxStats?.()?.events ?? 0);
      },
    });
    new Gauge({
      name: 'edgeward_outbox_bytes',
      help: 'Bytes held in the outbox',
      registers,
      collect() {
        this.set(self.sources.outboxStats?.()?.bytes ?? 0);
      },
    });
    new Gauge({
      name: 'edgeward_uplink_connected',
      help: '1 when the uplink is connected to the broker',
      registers,
      collect() {
        this.set(self.sources.uplink?.()?.connected ? 1 : 0);
      },
    });
    new Gauge({
      name: 'edgeward_uplink_unsendable_events',
      help: 'Stored events too large for uplink.maxPacketBytes even alone: kept, not sent',
      registers,
      collect() {
        this.set(self.sources.uplink?.()?.unsendable ?? 0);
      },
    });
    new Gauge({
      name: 'edgeward_ack_lag_seconds',
      help: 'Publish-to-acknowledgement time of the last fully acknowledged batch',
      registers,
      collect() {
        this.set((self.sources.uplink?.()?.ackLagMs ?? 0) / 1000);
      },
    });
    new Gauge({
      name: 'edgeward_ingest_held_events',
      help: 'Bus events held in memory because the outbox cannot write (stored once it can)',
      registers,
      collect() {
        this.set(self.sources.heldEvents?.() ?? 0);
      },
    });
    new Gauge({
      name: 'edgeward_outbox_write_failing',
      help: '1 while the outbox cannot write (disk full, I/O error) and refuses events, else 0',
      registers,
      collect() {
        this.set(self.sources.outboxStats?.()?.writeError ? 1 : 0);
      },
    });
    let failuresSeen = 0;
    new Counter({
      name: 'edgeward_outbox_write_failures_total',
      help: 'Outbox writes that failed (each refused the events it held)',
      registers,
      collect() {
        const total = self.sources.outboxStats?.()?.writeFailures ?? failuresSeen;
        // The store counts since it was opened; a counter only goes up.
        if (total > failuresSeen) this.inc(total - failuresSeen);
        failuresSeen = Math.max(failuresSeen, total);
      },
    });
    new Gauge({
      name: 'edgeward_outbox_oldest_age_seconds',
      help: 'Age of the oldest event not yet acknowledged (0 when the outbox is empty)',
      registers,
      collect() {
        const oldest = self.sources.outboxStats?.()?.oldestTs;
        const now = self.sources.now?.() ?? Date.now();
        const t = oldest ? Date.parse(oldest) : Number.NaN;
        this.set(Number.isFinite(t) ? Math.max(0, (now - t) / 1000) : 0);
      },
    });
  }

  /** Late binding: the runtime creates the outbox and uplink after the metrics. */
  setSources(sources: MetricsSources): void {
    this.sources = { ...this.sources, ...sources };
  }

  eventIn(type: string, n = 1): void {
    this.eventsIn.inc({ type: this.typeLabel(type) }, n);
  }

  eventOut(type: string, n = 1): void {
    this.eventsOut.inc({ type: this.typeLabel(type) }, n);
  }

  /**
   * The `type` label: every contract type, and the first MAX_ALERT_TYPES
   * `alert.<rule>` types seen; later ones are counted as `alert.other`. Each
   * label value is a series kept for the life of the process: a flow building
   * alert types from data (a card number in the name, measured) would grow
   * the scrape without bound.
   */
  private typeLabel(type: string): string {
    if (!type.startsWith('alert.') || this.alertTypes.has(type)) return type;
    if (this.alertTypes.size >= MAX_ALERT_TYPES) return 'alert.other';
    this.alertTypes.add(type);
    return type;
  }

  driverError(device: string, code: string): void {
    this.driverErrors.inc({ device, code });
  }

  ruleFired(rule: string): void {
    this.ruleFirings.inc({ rule });
  }

  ingestError(n = 1): void {
    this.ingestErrors.inc(n);
  }

  deviceState(device: string, driver: string, online: boolean): void {
    this.deviceOnline.set({ device, driver }, online ? 1 : 0);
  }

  /** Forget a device that was unregistered (its series would otherwise stay forever). */
  removeDevice(device: string, driver: string): void {
    this.deviceOnline.remove({ device, driver });
  }

  /**
   * Register an extra gauge (e.g. ONVIF per-camera health). `collect` runs at
   * every scrape and returns the current values. The name must start with
   * `edgeward_`; registering the same name twice returns the existing gauge's remover.
   */
  registerGauge<L extends string>(opts: {
    name: string;
    help: string;
    labelNames?: readonly L[];
    collect: () => Array<{ labels?: Partial<Record<L, string>>; value: number }> | number;
  }): () => void {
    if (!opts.name.startsWith('edgeward_')) throw new Error(`metric ${opts.name} must start with edgeward_`);
    const existing = this.registry.getSingleMetric(opts.name);
    if (existing) return () => this.registry.removeSingleMetric(opts.name);
    const collectFn = opts.collect;
    new Gauge<L>({
      name: opts.name,
      help: opts.help,
      labelNames: opts.labelNames ?? [],
      registers: [this.registry],
      collect() {
        const v = collectFn();
        this.reset();
        if (typeof v === 'number') this.set(v);
        else for (const s of v) this.set((s.labels ?? {}) as Partial<Record<L, string | number>>, s.value);
      },
    });
    return () => this.registry.removeSingleMetric(opts.name);
  }

  contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
