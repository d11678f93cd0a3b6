import { mkdir } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import express from 'express';
import type { CommandRequest, Driver, DriverContext } from '../drivers/driver.js';
import type { Outbox, OutboxWriteError } from '../sync/outbox-api.js';
import { EVICTABLE, LevelOutbox, outboxPath, refusedForRoom } from '../sync/outbox.js';
import { maxEventBytes, Uplink } from '../sync/uplink.js';
import { EventBus } from './bus.js';
import { type Clock, systemClock } from './clock.js';
import type { SiteConfig } from './config-types.js';
import { isLoopbackHost, unusableTlsFiles } from './config.js';
import { DriverStateStore } from './driver-state.js';
import { type Envelope, type EventInput, isEventType, isSeverity, makeEnvelope } from './envelope.js';
import { EdgewardError, isEdgewardError } from './errors.js';
import { registerFamilies } from './families.js';
import { bearerOk, type Health, isDeviceName, mountHttpApi, type RuntimeStatus } from './http.js';
import { guardUpgrades, originGuard } from './origin-guard.js';
import type { Logger } from './log.js';
import { Metrics } from './metrics.js';
import type { EdgewardNodeApi } from './node-api.js';
import { embedNodeRed } from './nodered.js';
import { Registry } from './registry.js';
import { HeldEvents, type HeldLossData, LossTally } from './held-events.js';
import { SeqSlots } from './seq-slots.js';

/** Options of {@link Runtime}. */
export interface RuntimeOptions {
  config: SiteConfig;
  log: Logger;
  clock?: Clock;
  /** Reported in status, `P/status` and /api/v1/status. */
  version?: string;
  /** Inject an outbox (tests, bench); default a LevelOutbox in `<dataDir>/outbox`. */
  outbox?: Outbox;
}

/** The uplink may be down this long before /healthz says so (a weak cellular link drops often). */
export const UPLINK_UNHEALTHY_AFTER_MS = 60_000;
/**
 * An event sent may wait this long for its ack before /healthz says so: the
 * central (or the broker's ACL, or a subscription) swallows batches, the
 * central refuses one batch while it acks the others, or the connection
 * drops at every publish.
 */
export const ACK_SILENT_UNHEALTHY_AFTER_MS = 60_000;

/**
 * A write to the outbox's disk may take this long before /healthz says so
 * (an fsync normally takes milliseconds; a dying SD card hangs for seconds).
 */
export const OUTBOX_WRITE_STALLED_AFTER_MS = 10_000;

/** `stop()` gives up on a step after this long, and on the whole after STOP_BUDGET_MS (+ the outbox close). */
const STOP_STEP_MS = 4_000;
const STOP_BUDGET_MS = 12_000;
const OUTBOX_CLOSE_MIN_MS = 2_500;
/** Bus events held in memory while the outbox cannot write (see HeldEvents), and how often storing them is retried. */
const HELD_MAX_EVENTS = 10_000;
/** …and at most this much of their JSON (events may be up to uplink.maxPacketBytes each). */
const HELD_MAX_BYTES = 16 * 1024 * 1024;
const HELD_RETRY_MS = 1_000;

interface DeviceRecord {
  name: string;
  driver: string;
  online: boolean;
  lastSeen: string | null;
  instance?: Driver;
}

/**
 * The process that wires everything: outbox, bus, registry, uplink, HTTP API,
 * Node-RED and the drivers the flows register. One broken device never takes
 * it down: drivers start in try/catch and their faults become events.
 */
export class Runtime {
  readonly config: SiteConfig;
  readonly version: string;
  readonly bus = new EventBus();
  readonly registry = new Registry();
  readonly metrics = new Metrics();
  private readonly log: Logger;
  /** Handed to the modules we create: each makes its own `{ module }` child. */
  private readonly rootLog: Logger;
  private readonly clock: Clock;
  private outboxImpl?: Outbox;
  private uplink?: Uplink;
  private server?: http.Server;
  private nodeRed?: { stop(): Promise<void>; problem(): string | null };
  private readonly devices = new Map<string, DeviceRecord>();
  private readonly driverTasks = new Set<Promise<unknown>>();
  private readonly inflight = new Set<Promise<unknown>>();
  private pendingInputs: EventInput[] = [];
  private flushScheduled = false;
  private readonly held = new HeldEvents(HELD_MAX_EVENTS, HELD_MAX_BYTES);
  private driverState?: DriverStateStore;
  /** With an uplink, events it could never send (over its packet limit even alone) are refused at ingest. */
  private readonly maxEventBytes?: number;
  /** Retries storing held events and the report of refused ones (see scheduleRetry). */
  private retryTimer: NodeJS.Timeout | null = null;
  /** Bus events refused by a store full of critical events (EDGE_OUTBOX_FULL), until reported. */
  private readonly refused = new LossTally('outbox_full');
  /** When start() ran, on a monotonic clock: uptime must not go negative when NTP steps the wall clock back. */
  private startedMono = 0;
  private boundPort = 0;
  private state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';
  private nodeApiValue?: EdgewardNodeApi;
  private stopDeadline = 0;

  constructor(opts: RuntimeOptions) {
    this.config = opts.config;
    this.rootLog = opts.log;
    this.log = opts.log.child({ module: 'edge/runtime' });
    this.clock = opts.clock ?? systemClock;
    this.version = opts.version ?? '0.0.0';
    this.outboxImpl = opts.outbox;
    const up = opts.config.uplink;
    if (up) this.maxEventBytes = maxEventBytes(up, opts.config.site, opts.config.edge);
  }

  /** The bound HTTP port (useful with `http.port: 0`). */
  get port(): number {
    return this.boundPort;
  }

  get outbox(): Outbox {
    if (!this.outboxImpl) throw new EdgewardError('EDGE_NOT_STARTED', 'runtime not started');
    return this.outboxImpl;
  }

  /** What Node-RED nodes get as `RED.settings.edgeward`. */
  get nodeApi(): EdgewardNodeApi {
    this.nodeApiValue ??= {
      bus: this.bus,
      log: this.rootLog,
      registry: this.registry,
      driverContext: (device) => this.driverContext(device),
      registerDriver: (driver) => this.registerDriver(driver),
      ingest: (inputs) => this.ingest(inputs),
    };
    return this.nodeApiValue;
  }

  async start(): Promise<void> {
    if (this.state !== 'new') throw new EdgewardError('EDGE_RUNTIME_STATE', `cannot start a runtime that is ${this.state}`);
    this.state = 'starting';
    this.startedMono = performance.now();
    const c = this.config;
    try {
      // A TLS file that cannot be read or used fails the start before the data dir is touched (loadConfig checks it too).
      const unreadable = unusableTlsFiles(c);
      if (unreadable.length > 0) {
        throw new EdgewardError('EDGE_CONFIG_INVALID', `invalid site config: ${unreadable.join('; ')}`, { details: { errors: unreadable } });
      }
      await mkdir(c.dataDir, { recursive: true });
      this.driverState = new DriverStateStore(
        join(c.dataDir, 'driver-state.json'),
        this.rootLog.child({ module: 'edge/driver-state' }),
        this.clock,
        () => this.held.size === 0 && this.pendingInputs.length === 0 && !this.outboxWriteFailing(),
      );
      this.driverState.load();
      this.outboxImpl ??= new LevelOutbox({
        dir: outboxPath(c.dataDir),
        maxBytes: c.outbox.maxBytes,
        log: this.rootLog,
        clock: this.clock,
        site: c.site,
        edge: c.edge,
      });
      await this.outboxImpl.open();
      const outbox = meterOutbox(this.outboxImpl, this.metrics);
      this.metrics.setSources({
        outboxStats: () => this.outboxImpl?.stats(),
        uplink: () => this.uplink?.status(),
        now: () => this.clock.now(),
        heldEvents: () => this.held.size,
      });

      // Drivers that expose `health()` (ONVIF: subscription age, renew failures…) get their
      // numeric and boolean fields exported without knowing about Prometheus.
      this.metrics.registerGauge({
        name: 'edgeward_driver_health',
        help: 'Numeric and boolean fields of each driver health() report',
        labelNames: ['device', 'driver', 'metric'],
        collect: () => this.driverHealthSamples(),
      });
      registerFamilies(this.registry);
      this.bus.on('event.input', this, (input) => this.enqueue(input));
      this.bus.on('device.state', this, (s) => this.deviceState(s.name, s.driver, s.online, s.lastSeen));
      this.bus.on('command', this, (cmd) => {
        this.executeCommand(cmd).catch(() => undefined); // logged and counted inside
      });

      if (c.uplink) {
        this.uplink = new Uplink({
          config: c.uplink,
          site: c.site,
          edge: c.edge,
          version: this.version,
          outbox,
          log: this.rootLog,
          clock: this.clock,
        });
        await this.uplink.start();
      }

      const app = express();
      app.disable('x-powered-by');
      // Before every route: no other site's page may drive this box through the technician's browser.
      const policy = { loopbackOnly: isLoopbackHost(c.http.host), editorPage: c.nodeRed.editor ? '/' : undefined };
      app.use(originGuard(policy));
      mountHttpApi(app, {
        log: this.rootLog,
        metrics: this.metrics,
        token: c.http.token,
        privacy: c.privacy,
        ingest: (inputs) => this.ingest(inputs),
        recentJson: (limit) => this.outbox.recentJson(limit),
        status: () => this.status(),
        health: () => this.health(),
      });
      this.server = http.createServer(app);
      const tokenOk = c.http.token === undefined ? undefined : bearerOk(c.http.token);
      guardUpgrades(this.server, policy, {
        tokenOk,
        // The editor's own websocket, which adminAuth guards; without the editor there is none.
        adminPath: c.nodeRed.editor ? '/comms' : undefined,
        onRefused: (why, path) => this.log.warn({ path, why }, 'websocket refused'),
      });
      await listen(this.server, c.http.host, c.http.port);
      this.boundPort = (this.server.address() as AddressInfo).port;

      if (c.nodeRed.flowFile !== undefined || c.nodeRed.editor) {
        this.nodeRed = await embedNodeRed({
          app,
          server: this.server,
          config: c,
          api: this.nodeApi,
          log: this.rootLog,
          userDir: join(c.dataDir, 'node-red'),
        });
      }
      this.state = 'running';
      this.log.info(
        { site: c.site, edge: c.edge, port: this.boundPort, host: c.http.host, uplink: Boolean(c.uplink) },
        'runtime started',
      );
    } catch (err) {
      this.log.error({ err }, 'runtime failed to start; closing what was opened');
      await this.stop().catch(() => undefined);
      throw err;
    }
  }

  /** Close everything in reverse order; each step is bounded so the whole stop ends within 15 s. */
  async stop(): Promise<void> {
    if (this.state === 'stopped' || this.state === 'stopping') return;
    this.state = 'stopping';
    this.stopDeadline = Date.now() + STOP_BUDGET_MS;
    await this.step('node-red', async () => this.nodeRed?.stop());
    await this.step('drivers', async () => {
      const stops = [...this.devices.values()].map((d) => d.instance?.stop());
      await Promise.allSettled([...stops, ...this.driverTasks]);
    });
    this.bus.removeOwner(this);
    await this.step('driver state', async () => this.driverState?.flush());
    await this.step('http', async () => {
      const server = this.server;
      if (!server) return;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
    });
    await this.step('ingest', async () => {
      this.flush();
      await Promise.allSettled([...this.inflight]);
      if (this.retryTimer) this.clock.clearTimeout(this.retryTimer);
      this.retryTimer = null;
      // A last try for bus events held while the outbox could not write.
      if (this.held.pending && !(await this.storeHeld())) {
        this.metrics.ingestError(this.held.size);
        // Those dropped past the bounds while held were counted then; their report is lost too.
        this.log.error(
          { events: this.held.size, droppedUnreported: this.held.lostCount },
          'bus events held while the outbox could not write are lost at stop',
        );
      }
      if (this.refused.pending && !(await this.storeRefusedReport())) {
        this.log.error({ events: this.refused.count }, 'bus events refused by a full outbox: not reported to the central (no room before the stop)');
      }
    });
    await this.step('uplink', async () => this.uplink?.stop());
    // The outbox close always gets time of its own: it is what makes the last appends durable.
    await this.step('outbox', async () => this.outboxImpl?.close(), OUTBOX_CLOSE_MIN_MS);
    this.server?.closeAllConnections();
    this.state = 'stopped';
    this.log.info('runtime stopped');
  }

  /**
   * Complete inputs into envelopes, store them durably (one group commit),
   * and announce each on the bus as 'event.stored'. Resolves with seqs set.
   */
  async ingest(inputs: EventInput[]): Promise<Envelope[]> {
    if (this.state !== 'running' && this.state !== 'starting' && this.state !== 'stopping') {
      throw new EdgewardError('EDGE_NOT_RUNNING', 'runtime is not running');
    }
    return this.store(this.envelopes(inputs));
  }

  private envelopes(inputs: EventInput[]): Envelope[] {
    const ids = { site: this.config.site, edge: this.config.edge };
    const now = this.clock.now();
    return inputs.map((i) => makeEnvelope(i, ids, now));
  }

  /** Store envelopes durably (one group commit) and announce each on the bus as 'event.stored'. */
  private async store(envelopes: Envelope[]): Promise<Envelope[]> {
    const p = this.outbox.append(envelopes, { maxEventBytes: this.maxEventBytes });
    this.inflight.add(p);
    try {
      const stored = await p;
      // One counter update per type, not per event: labelled inc() is not free at 50k events/s.
      const byType = new Map<string, number>();
      for (const e of stored) {
        byType.set(e.type, (byType.get(e.type) ?? 0) + 1);
        this.bus.emit('event.stored', e);
      }
      for (const [type, n] of byType) this.metrics.eventIn(type, n);
      return stored;
    } finally {
      this.inflight.delete(p);
    }
  }

  /**
   * Register a driver; the runtime starts it (a failing start is logged and
   * marks the device offline, never thrown) and stops it on unregister.
   */
  registerDriver(driver: Driver): () => Promise<void> {
    // The same rule as an event's source.device: ' door-1' and 'door-1' must not be two devices.
    if (!isDeviceName(driver.name)) {
      throw new EdgewardError(
        'EDGE_DEVICE_NAME',
        `device name ${JSON.stringify(driver.name).slice(0, 140)} must be 1-128 printable characters, no space at either end`,
      );
    }
    if (this.devices.get(driver.name)?.instance) {
      throw new EdgewardError('EDGE_DUPLICATE_DEVICE', `a device named "${driver.name}" is already registered`);
    }
    const claim = driver.exclusive;
    const owner = claim === undefined ? undefined : [...this.devices.values()].find((d) => d.instance?.exclusive === claim);
    if (owner) {
      // Two nodes on one unit would each report every event of it, twice over.
      throw new EdgewardError('EDGE_DUPLICATE_DEVICE', `${driver.name}: ${claim} is already driven by "${owner.name}"`);
    }
    const rec: DeviceRecord = { name: driver.name, driver: driver.driver, online: false, lastSeen: null, instance: driver };
    this.devices.set(driver.name, rec);
    this.metrics.deviceState(driver.name, driver.driver, false);
    const started = this.track(
      driver.start().catch((err) => {
        const code = isEdgewardError(err) ? err.code : 'EDGE_DRIVER_START';
        this.metrics.driverError(driver.name, code);
        this.log.error({ err, device: driver.name, driver: driver.driver, code }, 'driver failed to start');
      }),
    );
    let registered = true;
    let stopped: Promise<void> = Promise.resolve();
    return () => {
      if (!registered) return stopped;
      registered = false;
      if (this.devices.get(driver.name) === rec) this.devices.delete(driver.name);
      this.metrics.removeDevice(driver.name, driver.driver);
      stopped = this.track(
        started
          .then(() => driver.stop())
          .catch((err) => this.log.warn({ err, device: driver.name }, 'driver failed to stop')),
      );
      // A redeployed node waits for this before its successor starts: two drivers on one unit
      // for a moment each reported its events (measured on nodes-only deploys).
      return stopped;
    };
  }

  /** Route a verified command to the driver named by `target`. Rejects with an EdgewardError. */
  async executeCommand(cmd: CommandRequest): Promise<Record<string, unknown> | undefined> {
    const driver = this.devices.get(cmd.target)?.instance;
    if (!driver) throw new EdgewardError('EDGE_UNKNOWN_TARGET', `no device named "${cmd.target}"`);
    if (!driver.actions.includes(cmd.action)) {
      throw new EdgewardError('EDGE_ACTION_UNSUPPORTED', `${cmd.target} does not accept ${cmd.action}`);
    }
    try {
      return await driver.execute(cmd);
    } catch (err) {
      const code = isEdgewardError(err) ? err.code : 'EDGE_COMMAND_FAILED';
      this.metrics.driverError(cmd.target, code);
      this.log.warn({ err, id: cmd.id, action: cmd.action, target: cmd.target, code }, 'command failed');
      throw err;
    }
  }

  /** The names of registered devices (the command verifier checks targets against these). */
  deviceNames(): string[] {
    return [...this.devices.values()].filter((d) => d.instance).map((d) => d.name);
  }

  private outboxWriteFailing(): boolean {
    try {
      return Boolean(this.outboxImpl?.stats().writeError);
    } catch {
      return true;
    }
  }

  driverContext(device: string): DriverContext {
    return {
      bus: this.bus,
      clock: this.clock,
      // Unbound: each driver binds its own module and device (both bound here too made every
      // line carry "module" and "device" twice, and a shared bus logged as its first door).
      log: this.rootLog,
      emit: (event) => this.bus.emit('event.input', event),
      error: (code) => this.metrics.driverError(device, code),
      privacy: this.config.privacy,
      state: this.driverState?.scope(device),
      // ' units': no device is named so (a name never starts with a space).
      unitState: this.driverState?.scope(' units'),
    };
  }

  status(): RuntimeStatus {
    const stats = this.outboxImpl?.stats();
    const up = this.uplink?.status();
    const devices = [...this.devices.values()].map((d) => {
      const live = d.instance?.state();
      return {
        name: d.name,
        driver: d.driver,
        online: live?.online ?? d.online,
        lastSeen: live?.lastSeen ?? d.lastSeen,
      };
    });
    return {
      site: this.config.site,
      edge: this.config.edge,
      version: this.version,
      uptimeS: this.uptimeS(),
      uplink: { connected: up?.connected ?? false, lastAckAt: isoOrNull(up?.lastAckAt), configured: Boolean(this.uplink) },
      outbox: {
        events: stats?.events ?? 0,
        bytes: stats?.bytes ?? 0,
        oldestTs: stats?.oldestTs ?? null,
        ...(stats?.writeError ? { writeError: stats.writeError } : {}),
      },
      devices,
    };
  }

  health(): Health {
    const problems: string[] = [];
    if (this.state !== 'running') problems.push(`runtime is ${this.state}`);
    let outbox: string | { events: number; bytes: number; maxBytes: number; writeError?: OutboxWriteError; heldEvents?: number } = 'not open';
    try {
      const s = this.outboxImpl?.stats();
      if (s) {
        outbox = { events: s.events, bytes: s.bytes, maxBytes: s.maxBytes };
        if (s.writeError) outbox.writeError = s.writeError;
        // Bus events waiting in memory for the store (see HeldEvents).
        if (this.held.size > 0) outbox.heldEvents = this.held.size;
      }
      const w = s?.writeError;
      // Disk full or an I/O error: every event is refused until a write succeeds.
      if (w) problems.push(`outbox cannot store events since ${w.since} (${w.failures} failed writes): ${w.message}`);
      // Only criticals left, none evictable: door events and warnings are refused until the central acks.
      const full = s?.refusingFull;
      if (full)
        problems.push(`outbox full of critical events since ${full.since}: ${full.events} other events refused (EDGE_OUTBOX_FULL) until the central acknowledges`);
      if (s?.reserveReleasedAt)
        problems.push(`disk full since ${s.reserveReleasedAt}: the outbox's disk reserve is used or has no room; free space on this disk`);
      const c = s?.corruption;
      if (c) problems.push(`outbox store damaged since ${c.since}, repair pending: ${c.message}`);
      const pending = s?.writePendingMs;
      if (pending !== undefined && pending > OUTBOX_WRITE_STALLED_AFTER_MS) {
        problems.push(`outbox write on its way to disk for ${Math.floor(pending / 1000)} s: appends wait behind it`);
      }
    } catch (err) {
      outbox = `error: ${(err as Error).message}`;
    }
    if (typeof outbox === 'string') problems.push(`outbox ${outbox}`);
    // No device is read while the flows do not run.
    const flows = this.nodeRed?.problem();
    if (flows) problems.push(flows);
    let uplink: Record<string, unknown> = { configured: false };
    if (this.uplink) {
      const { connected, unsendable, unackedForMs, inflightBatches, downForMs } = this.uplink.status();
      uplink = { configured: true, connected, downS: Math.floor(downForMs / 1000) };
      // Down: disconnected, or connected within a spell of connections that drop soon after they
      // are made (a broker that drops the edge at every publish was "connected" a moment each
      // time, and never reported).
      const down = downForMs > UPLINK_UNHEALTHY_AFTER_MS;
      if (down) {
        const s = Math.floor(downForMs / 1000);
        problems.push(connected ? `no working uplink connection for ${s} s (connections drop soon after they are made)` : `uplink disconnected for ${s} s`);
      }
      // Not while the uplink is reported down: that says why already.
      if (connected && !down && unackedForMs !== undefined && unackedForMs > ACK_SILENT_UNHEALTHY_AFTER_MS) {
        const who = this.config.uplink?.ack === 'broker' ? 'the broker' : 'the central';
        problems.push(`oldest event sent ${Math.floor(unackedForMs / 1000)} s ago still not acknowledged by ${who} (${inflightBatches} batches in flight)`);
      }
      if (unsendable > 0) {
        uplink.unsendable = unsendable;
        problems.push(`${unsendable} stored events too large for uplink.maxPacketBytes: kept, not sent`);
      }
    }
    return {
      ok: problems.length === 0,
      problems,
      site: this.config.site,
      edge: this.config.edge,
      version: this.version,
      uptimeS: this.uptimeS(),
      outbox,
      uplink,
    };
  }

  /** Seconds since start(), monotonic (a wall clock stepped back an hour gave -3,496; found by a review). */
  private uptimeS(): number {
    return Math.floor((performance.now() - this.startedMono) / 1000);
  }

  private driverHealthSamples(): Array<{ labels: { device: string; driver: string; metric: string }; value: number }> {
    const out: Array<{ labels: { device: string; driver: string; metric: string }; value: number }> = [];
    for (const d of this.devices.values()) {
      const health = (d.instance as { health?: () => unknown } | undefined)?.health;
      if (typeof health !== 'function') continue;
      let report: unknown;
      try {
        report = health.call(d.instance);
      } catch {
        continue; // a scrape must never fail because of one driver
      }
      if (report === null || typeof report !== 'object') continue;
      for (const [metric, v] of Object.entries(report)) {
        const value = typeof v === 'boolean' ? Number(v) : v;
        if (typeof value === 'number' && Number.isFinite(value)) {
          out.push({ labels: { device: d.name, driver: d.driver, metric }, value });
        }
      }
    }
    return out;
  }

  private enqueue(input: EventInput): void {
    // Checked here, one event at a time: a bad event reaching the store would fail the
    // whole tick's append, and with it every other device's events of that tick.
    if (
      !input ||
      !isEventType(input.type) ||
      typeof input.source?.device !== 'string' ||
      (input.severity !== undefined && !isSeverity(input.severity)) ||
      (input.data !== undefined && (input.data === null || typeof input.data !== 'object'))
    ) {
      this.metrics.ingestError();
      this.log.warn({ type: input?.type, device: input?.source?.device }, 'dropped malformed bus event');
      return;
    }
    this.pendingInputs.push(input);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      // Everything emitted in one tick goes out as one append (one synced write).
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.pendingInputs.length === 0) return;
    const batch = this.pendingInputs;
    this.pendingInputs = [];
    const envelopes = this.envelopes(batch);
    this.store(envelopes).catch((err) => {
      if (isEdgewardError(err, 'EDGE_OUTBOX_WRITE_FAILED')) {
        // The store cannot write (disk full): keep them until it can, id and ts as they are.
        this.hold(envelopes);
        return;
      }
      if (isEdgewardError(err, 'EDGE_OUTBOX_FULL')) {
        this.refuse(envelopes);
        return;
      }
      const oneEvent = isEdgewardError(err, 'EDGE_OUTBOX_INVALID') || isEdgewardError(err, 'EDGE_OUTBOX_EVENT_TOO_LARGE');
      if (batch.length === 1 || !oneEvent) {
        // Not about one event's content (a store that failed otherwise): one line, not one per event.
        this.metrics.ingestError(batch.length);
        this.log.error({ err, events: batch.length, type: batch[0].type, device: batch[0].source.device }, 'could not store bus events');
        return;
      }
      // One event the store refuses (say, data that is not JSON) must not take the others
      // of its tick with it: store them one by one, so only what fails is lost.
      this.log.warn({ err, events: batch.length }, 'bus events refused together: storing them one by one');
      for (const envelope of envelopes) {
        this.store([envelope]).catch((e) => {
          if (isEdgewardError(e, 'EDGE_OUTBOX_WRITE_FAILED')) {
            this.hold([envelope]);
            return;
          }
          if (isEdgewardError(e, 'EDGE_OUTBOX_FULL')) {
            this.refuse([envelope]);
            return;
          }
          this.metrics.ingestError();
          this.log.error({ err: e, type: envelope.type, device: envelope.source.device }, 'could not store a bus event');
        });
      }
    });
  }

  /**
   * Bus events a store full of critical events refused (EDGE_OUTBOX_FULL: an
   * append with a critical event is never refused). Not held: the store is at
   * its bound, and what it cannot keep, memory should not either. They are
   * lost, and the central learns it from one `edge.events_lost`
   * `{reason: "outbox_full"}` stored as soon as there is room for it. The
   * store logs the refusals (once, then every 10 s) and /healthz reports them.
   */
  private refuse(envelopes: Envelope[]): void {
    this.metrics.ingestError(envelopes.length);
    this.refused.add(envelopes);
    this.log.debug({ events: envelopes.length }, 'bus events refused: outbox full of critical events');
    this.scheduleRetry();
  }

  /**
   * Store the report of refused bus events, if the store has room for it now
   * (room is only made by the central acknowledging critical events); tried
   * every HELD_RETRY_MS until it is stored. An append bound to be refused is
   * not made: each would count as one more refusal in /healthz.
   */
  private async storeRefusedReport(): Promise<boolean> {
    const report = this.refused.take({ site: this.config.site, edge: this.config.edge }, this.clock.now());
    if (!report) return true;
    if (!this.boundToBeRefused([report], true)) {
      try {
        await this.store([report]);
        this.log.warn({ events: (report.data as { count: number }).count }, 'bus events refused by a full outbox: reported to the central');
        return true;
      } catch (err) {
        if (!isEdgewardError(err, 'EDGE_OUTBOX_FULL') && !isEdgewardError(err, 'EDGE_OUTBOX_WRITE_FAILED')) {
          this.log.error({ err }, 'could not store the report of bus events refused by a full outbox');
        }
      }
    }
    this.refused.merge(report.data as unknown as HeldLossData);
    this.scheduleRetry();
    return false;
  }

  /**
   * Whether the store would refuse `envelopes` as one append for want of room
   * (EDGE_OUTBOX_FULL, the stores' own rule `refusedForRoom`, sized with 64
   * bytes each for the seq the store adds); `ifUnknown` when the store
   * cannot say (not open). Such an append
   * is not made: it would count as one more refusal in /healthz.
   */
  private boundToBeRefused(envelopes: readonly Envelope[], ifUnknown: boolean): boolean {
    if (envelopes.some((e) => e.severity === 'critical')) return false;
    let s: ReturnType<Outbox['stats']>;
    try {
      s = this.outbox.stats();
    } catch {
      return ifUnknown;
    }
    let size = 0;
    for (const e of envelopes) size += Buffer.byteLength(JSON.stringify(e)) + 64;
    const evictableBytes = EVICTABLE.reduce((n, sev) => n + s.bySeverity[sev].bytes, 0);
    return refusedForRoom(size, false, { maxBytes: s.maxBytes, storedBytes: s.bytes, evictableBytes });
  }

  private hold(envelopes: Envelope[]): void {
    const before = this.held.size;
    this.metrics.ingestError(this.held.hold(envelopes));
    if (before === 0) this.log.warn({ events: envelopes.length }, 'outbox cannot write: holding bus events in memory until it can');
    this.scheduleRetry();
  }

  /** One timer retries both: the held events, and the report of refused ones (a stop makes its own last try). */
  private scheduleRetry(): void {
    if (this.retryTimer || this.state === 'stopping' || this.state === 'stopped') return;
    this.retryTimer = this.clock.setTimeout(() => {
      this.retryTimer = null;
      void this.storeHeld().then(() => this.storeRefusedReport());
    }, HELD_RETRY_MS);
    this.retryTimer.unref?.();
  }

  /**
   * Try to store the held bus events (and the report of any dropped): one
   * append; on another write failure they are held again, ahead of newer ones.
   */
  private async storeHeld(): Promise<boolean> {
    if (!this.held.pending) return true;
    const taken = this.held.take({ site: this.config.site, edge: this.config.edge }, this.clock.now());
    const refuseTaken = (): false => {
      // The store is full of alarms (the disk may have room again): these are refused like any bus
      // event; the report of those dropped while held waits for room, as the refused ones' does.
      const dropped = this.held.drop(taken);
      if (dropped.length > 0) this.refuse(dropped);
      if (this.held.pending) this.scheduleRetry();
      return false;
    };
    // A store that cannot say (reopening after a failed write) is tried: the append reopens it.
    if (this.boundToBeRefused(taken, false)) return refuseTaken();
    try {
      await this.store(taken);
      this.log.warn({ events: taken.length }, 'held bus events stored: the outbox writes again');
      return true;
    } catch (err) {
      if (isEdgewardError(err, 'EDGE_OUTBOX_FULL')) return refuseTaken();
      this.metrics.ingestError(this.held.putBack(taken));
      if (!isEdgewardError(err, 'EDGE_OUTBOX_WRITE_FAILED')) this.log.error({ err, events: taken.length }, 'could not store held bus events');
      this.scheduleRetry();
      return false;
    }
  }

  private deviceState(name: string, driver: string, online: boolean, lastSeen?: string): void {
    const rec = this.devices.get(name) ?? { name, driver, online, lastSeen: null };
    rec.online = online;
    if (lastSeen !== undefined) rec.lastSeen = lastSeen;
    this.devices.set(name, rec);
    this.metrics.deviceState(name, driver, online);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.driverTasks.add(p);
    p.finally(() => this.driverTasks.delete(p)).catch(() => undefined);
    return p;
  }

  private async step(what: string, fn: () => Promise<unknown>, minMs = 100): Promise<void> {
    const budget = Math.max(minMs, Math.min(STOP_STEP_MS, this.stopDeadline - Date.now()));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), budget);
    });
    try {
      const r = await Promise.race([fn().then(() => 'ok' as const), timeout]);
      if (r === 'timeout') this.log.warn({ step: what }, 'stop step timed out');
    } catch (err) {
      this.log.warn({ err, step: what }, 'stop step failed');
    } finally {
      clearTimeout(timer);
    }
  }
}

function listen(server: http.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => {
      reject(new EdgewardError('EDGE_HTTP_LISTEN', `cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

function isoOrNull(v: unknown): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'number') return Number.isFinite(v) && v > 0 ? new Date(v).toISOString() : null;
  if (v instanceof Date) return v.toISOString();
  return typeof v === 'string' ? v : null;
}

/**
 * Count `edgeward_events_out_total{type}` without the uplink knowing about
 * metrics: remember the type of every seq handed out by `read()` and count it
 * when `ack()` covers it. Memory is fixed (2^16 slots, ~1 MB): a seq read
 * 65,536 seqs after another that is still unacked takes its slot, and that one
 * goes uncounted (the window in flight is a few thousand).
 */
function meterOutbox(inner: Outbox, metrics: Metrics): Outbox {
  const typeOf = new SeqSlots<string>(16);
  const TYPE_RE = /"type":"([^"]+)"/;
  return {
    open: () => inner.open(),
    close: () => inner.close(),
    get epoch() {
      return inner.epoch;
    },
    append: (events, opts) => inner.append(events, opts),
    whenWriting: inner.whenWriting ? (fn) => inner.whenWriting!(fn) : undefined,
    read: async (opts) => {
      const got = await inner.read(opts);
      for (const s of got) {
        if (s.type !== undefined) {
          typeOf.set(s.seq, s.type);
          continue;
        }
        // The envelope's own `type` is its first "type" key (makeEnvelope's key order).
        const m = TYPE_RE.exec(s.json);
        if (m) typeOf.set(s.seq, m[1]);
      }
      return got;
    },
    ack: async (ranges) => {
      const n = await inner.ack(ranges);
      // Acked seqs mostly come in runs of one type: count runs, not one map update per event.
      const byType = new Map<string, number>();
      let runType: string | undefined;
      let run = 0;
      const flush = () => {
        if (runType !== undefined) byType.set(runType, (byType.get(runType) ?? 0) + run);
      };
      for (const [from, to] of ranges) {
        typeOf.takeRange(from, to, (_seq, type) => {
          if (type !== runType) {
            flush();
            runType = type;
            run = 0;
          }
          run++;
        });
      }
      flush();
      for (const [type, k] of byType) metrics.eventOut(type, k);
      return n;
    },
    stats: () => inner.stats(),
    recent: (limit) => inner.recent(limit),
    recentJson: (limit) => inner.recentJson(limit),
    onAppend: (listener) => inner.onAppend(listener),
    onWriteHealth: inner.onWriteHealth ? (listener) => inner.onWriteHealth!(listener) : undefined,
  };
}
