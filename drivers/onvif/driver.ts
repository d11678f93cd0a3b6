import { EdgewardError, isEdgewardError } from '../../edge/errors.js';
import type { Logger } from '../../edge/log.js';
import type { CommandRequest, Driver, DriverContext } from '../driver.js';
import { type CameraInfo, type Notification, OnvifClient, type OnvifClientOptions, type PullPoint } from './client.js';
import { mapAnyNotification, normaliseTopic } from './topics.js';

/**
 * Properties of an ONVIF camera (node properties / site config): the client's
 * connection settings (host, port, path, credentials, timeoutMs, maxXmlBytes)
 * plus the subscription's.
 */
export interface OnvifCameraProps extends OnvifClientOptions {
  /** Subscription lifetime asked for, s (default 60). Renewed at `renewAt` of what the camera grants. */
  subscriptionS?: number;
  /** Fraction of the granted lifetime after which we renew (default 0.8). */
  renewAt?: number;
  /** How long one PullMessages is held open, s (default 20). */
  pullTimeoutS?: number;
  /** Back-off after repeated failures: first retry immediate, then min·2^n up to max (ms; defaults 1 000 / 60 000). */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Consecutive failures before device.offline (default 3). */
  offlineAfter?: number;
}

/** Per-camera health, exported to /metrics. */
export interface OnvifHealth {
  /** Age of the current subscription in seconds (null when none). */
  subscriptionAgeS: number | null;
  renewFailures: number;
  /** Subscriptions created after the first one (reboots, faults, failed renewals). */
  resubscriptions: number;
  lastEventAt: string | null;
  /** Seconds since the last camera event (numeric twin of lastEventAt, for /metrics). */
  lastEventAgeS: number | null;
  renewals: number;
  consecutiveFailures: number;
  online: boolean;
  lastError: string | null;
}

interface ActiveSub {
  /** Sequence number of the subscription (1 for the first one). */
  seq: number;
  pp: PullPoint;
  createdAt: number;
  /** Rejects when the subscription must be abandoned (renew failed, stop). */
  dead: Promise<never>;
  kill(err: Error): void;
  renewTimer?: NodeJS.Timeout;
}

const NETWORK_CODES = new Set(['EDGE_ONVIF_UNREACHABLE', 'EDGE_ONVIF_TIMEOUT', 'EDGE_ONVIF_NOT_CONNECTED']);

/**
 * Longest wait before a renew, ms. A camera may grant years (one granted
 * until 2100 was seen in review): 0.8 of that overflows setTimeout's 2^31−1 ms,
 * which Node turns into 1 ms, and the driver sent 366 Renews in 3 s.
 * Renewing early is harmless; every 10 min at most keeps the subscription
 * known to be alive.
 */
const MAX_RENEW_DELAY_MS = 10 * 60_000;

/**
 * Shortest time from the start of one empty pull to the next, ms. A camera
 * that ignores the pull Timeout and answers at once made the driver pull
 * 280 times a second (half a core); a pull that brings messages goes on at once.
 */
const MIN_EMPTY_PULL_GAP_MS = 1000;

/** How many property states (topic + source) are remembered to recognise a repeated Initialized snapshot. */
const MAX_KNOWN_STATES = 1024;

/**
 * An ONVIF camera: connects, reports device information and stream URIs in
 * device.online, and keeps a PullPoint subscription alive forever (renewed
 * at ~80 % of its granted lifetime, recreated after faults, reboots and
 * failed renewals, with back-off on a camera that keeps failing), turning
 * motion, tamper and analytics notifications into events. A camera fault is
 * never thrown out of this class: it becomes a log line, a health counter
 * and, when it persists, device.offline.
 */
export class OnvifCameraDriver implements Driver {
  readonly driver = 'onvif';
  readonly actions: readonly string[] = [];
  readonly name: string;
  private readonly props: OnvifCameraProps;
  private readonly ctx: DriverContext;
  private readonly log: Logger;
  private client?: OnvifClient;
  private loop?: Promise<void>;
  private stopped = true;
  private info?: CameraInfo;
  private online = false;
  private announcedOffline = false;
  private lastSeen?: number;
  private sub?: ActiveSub;
  private wake?: () => void;
  private failures = 0;
  private renewFailures = 0;
  private renewals = 0;
  private subscriptions = 0;
  private lastEventAt: number | null = null;
  private lastError: string | null = null;
  /**
   * Recently emitted notifications (insertion-ordered) → the subscription that
   * delivered them, to drop the copy a replacement subscription delivers again.
   */
  private readonly recent = new Map<string, number>();
  /** Last known state of each property (topic and source), to recognise a repeated Initialized snapshot. */
  private readonly states = new Map<string, boolean>();

  constructor(name: string, props: OnvifCameraProps, ctx: DriverContext) {
    this.name = name;
    this.props = props;
    this.ctx = ctx;
    this.log = ctx.log.child({ module: 'drivers/onvif', device: name });
  }

  /** Starts the supervision loop and returns at once: an unreachable camera is reported, not thrown. */
  async start(): Promise<void> {
    if (!this.stopped) return;
    this.stopped = false;
    this.client = new OnvifClient({
      host: this.props.host,
      port: this.props.port,
      path: this.props.path,
      username: this.props.username,
      password: this.props.password,
      timeoutMs: this.props.timeoutMs,
      maxXmlBytes: this.props.maxXmlBytes,
    });
    this.loop = this.run().catch((err) => {
      // run() catches everything itself; this is the last net so the runtime never sees a rejection.
      this.log.error({ err }, 'onvif supervision loop ended unexpectedly');
    });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.wake?.();
    const sub = this.sub;
    this.dropSubscription(new EdgewardError('EDGE_ONVIF_STOPPED', 'driver stopped'));
    if (sub && this.client) {
      // Best effort, bounded: a dead camera must not hold up shutdown.
      await Promise.race([this.client.unsubscribe(sub.pp).catch(() => undefined), new Promise((r) => setTimeout(r, 2000).unref())]);
    }
    this.client?.close();
    await Promise.race([this.loop, new Promise((r) => setTimeout(r, 5000).unref())]);
    this.client = undefined;
  }

  async execute(cmd: CommandRequest): Promise<Record<string, unknown> | undefined> {
    throw new EdgewardError('EDGE_COMMAND_UNSUPPORTED', `camera ${this.name} accepts no command "${cmd.action}"`);
  }

  state(): { online: boolean; lastSeen?: string; reason?: string } {
    const lastSeen = this.lastSeen === undefined ? undefined : new Date(this.lastSeen).toISOString();
    // Offline says why on the node (a wrong password showed a bare red "offline"): the error code only.
    const reason = !this.online && this.lastError ? this.lastError.split(':', 1)[0] : undefined;
    return { online: this.online, lastSeen, ...(reason ? { reason } : {}) };
  }

  /** What the camera reported on its last connect (undefined before the first one). */
  cameraInfo(): CameraInfo | undefined {
    return this.info;
  }

  health(): OnvifHealth {
    return {
      subscriptionAgeS: this.sub ? (this.ctx.clock.now() - this.sub.createdAt) / 1000 : null,
      renewFailures: this.renewFailures,
      resubscriptions: Math.max(0, this.subscriptions - 1),
      lastEventAt: this.lastEventAt === null ? null : new Date(this.lastEventAt).toISOString(),
      lastEventAgeS: this.lastEventAt === null ? null : (this.ctx.clock.now() - this.lastEventAt) / 1000,
      renewals: this.renewals,
      consecutiveFailures: this.failures,
      online: this.online,
      lastError: this.lastError,
    };
  }

  // ---- supervision ----------------------------------------------------------

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        if (!this.info) await this.connect();
        await this.subscribeAndPull();
      } catch (err) {
        if (this.stopped) break;
        this.onFailure(err);
        await this.sleep(this.backoffMs());
      }
    }
  }

  private async connect(): Promise<void> {
    this.info = await (this.client as OnvifClient).connect();
    this.seen();
  }

  /**
   * device.online with what the camera reported. The first time it follows
   * the first subscription; after device.offline only a successful pull
   * brings it back, so a camera that connects but keeps failing does not flap.
   */
  private markOnline(): void {
    const info = this.info;
    if (this.online || !info) return;
    this.online = true;
    this.announcedOffline = false;
    this.log.info({ model: info.model, firmware: info.firmware }, 'camera online');
    this.ctx.emit({
      type: 'device.online',
      source: { device: this.name, driver: this.driver },
      data: {
        host: this.props.host,
        port: this.props.port ?? 80,
        manufacturer: info.manufacturer,
        model: info.model,
        firmware: info.firmware,
        serial: info.serial,
        hardwareId: info.hardwareId,
        profiles: info.profiles,
        streamUri: info.streamUri,
        snapshotUri: info.snapshotUri,
      },
    });
    this.publishState();
  }

  private async subscribeAndPull(): Promise<void> {
    const client = this.client as OnvifClient;
    const pp = await client.createPullPoint(this.props.subscriptionS ?? 60);
    this.subscriptions++;
    this.seen();
    let kill: (err: Error) => void = () => undefined;
    const dead = new Promise<never>((_, reject) => {
      kill = reject;
    });
    dead.catch(() => undefined); // observed through Promise.race below
    const sub: ActiveSub = { seq: this.subscriptions, pp, createdAt: this.ctx.clock.now(), dead, kill };
    this.sub = sub;
    this.log.info({ grantedS: pp.grantedS, resubscription: this.subscriptions > 1 }, 'pull-point subscription created');
    this.scheduleRenew(sub, pp.grantedS);
    if (!this.announcedOffline) this.markOnline();
    const pullS = this.props.pullTimeoutS ?? 20;
    while (!this.stopped && this.sub === sub) {
      // While reported offline, pull briefly: one good round trip brings the camera back online without waiting a full hold.
      const holdS = this.announcedOffline ? 1 : pullS;
      const startedAt = this.ctx.clock.now();
      const pulled = client.pull(pp, holdS).then((msgs) => {
        this.onMessages(msgs, sub);
        return msgs.length;
      });
      pulled.catch(() => undefined); // observed through Promise.race below, even when the race is lost
      const count = await Promise.race([pulled, sub.dead]);
      // A good pull proves the camera and the subscription are healthy.
      this.failures = 0;
      this.seen();
      this.markOnline();
      const gap = MIN_EMPTY_PULL_GAP_MS - (this.ctx.clock.now() - startedAt);
      if (count === 0 && gap > 0) await this.sleep(gap);
    }
  }

  private scheduleRenew(sub: ActiveSub, grantedS: number): void {
    const ms = Math.min(MAX_RENEW_DELAY_MS, Math.max(100, grantedS * 1000 * (this.props.renewAt ?? 0.8)));
    sub.renewTimer = this.ctx.clock.setTimeout(() => {
      this.renew(sub).catch(() => undefined);
    }, ms);
  }

  private async renew(sub: ActiveSub): Promise<void> {
    if (this.sub !== sub || this.stopped) return;
    try {
      const granted = await (this.client as OnvifClient).renew(sub.pp, this.props.subscriptionS ?? 60);
      if (this.sub !== sub) return;
      this.renewals++;
      this.seen();
      this.scheduleRenew(sub, granted);
    } catch (err) {
      if (this.sub !== sub || this.stopped) return;
      this.renewFailures++;
      const e = err as EdgewardError;
      this.log.warn({ code: e.code, err: e.message }, 'renew failed: recreating the subscription');
      // Unrecoverable for this subscription (expired, lost in a reboot, credentials refused): drop it, the loop re-subscribes.
      this.dropSubscription(new EdgewardError('EDGE_ONVIF_RENEW_FAILED', `renew failed: ${e.message}`, { cause: err }));
    }
  }

  private dropSubscription(reason: Error): void {
    const sub = this.sub;
    if (!sub) return;
    this.sub = undefined;
    if (sub.renewTimer) this.ctx.clock.clearTimeout(sub.renewTimer);
    sub.kill(reason);
  }

  private onMessages(msgs: Notification[], sub: ActiveSub): void {
    for (const n of msgs) {
      try {
        const ev = mapAnyNotification(n);
        if (!ev) {
          this.log.debug({ topic: n.topic }, 'unmapped camera topic');
          continue;
        }
        // An abandoned subscription's last pull and its replacement can both carry the same notification. Only a copy
        // from another subscription is dropped: within one stream, cameras with 1-second timestamps send identical
        // notifications that are real events (motion true, false, true within a second).
        const key = `${n.topic}|${n.utcTime}|${n.operation}|${JSON.stringify(n.source)}|${JSON.stringify(n.data)}`;
        const from = this.recent.get(key);
        if (n.utcTime !== undefined && from !== undefined && from !== sub.seq) continue;
        this.recent.delete(key);
        this.recent.set(key, sub.seq);
        if (this.recent.size > 256) this.recent.delete(this.recent.keys().next().value as string);
        if (!this.isNews(n, ev.data.state as boolean | undefined)) continue;
        this.lastEventAt = this.ctx.clock.now();
        this.ctx.emit({ type: ev.type, severity: ev.severity, source: { device: this.name, driver: this.driver }, data: ev.data });
      } catch (err) {
        this.log.warn({ err, topic: n.topic }, 'could not map camera notification');
      }
    }
  }

  /**
   * Every new subscription starts with an Initialized snapshot of each
   * property's current state. It is an event only when it differs from what
   * we last knew (inactive when nothing): otherwise a motion or tamper still
   * active came back as a new event (a fresh camera.tamper warning) on every
   * resubscription, and a tamper that cleared while we were away was never reported.
   */
  private isNews(n: Notification, state: boolean | undefined): boolean {
    if (state === undefined) return n.operation !== 'Initialized';
    const prop = `${normaliseTopic(n.topic)}|${JSON.stringify(n.source)}`;
    const known = this.states.get(prop);
    this.states.delete(prop);
    this.states.set(prop, state);
    if (this.states.size > MAX_KNOWN_STATES) this.states.delete(this.states.keys().next().value as string);
    return n.operation !== 'Initialized' || state !== (known ?? false);
  }

  private onFailure(err: unknown): void {
    const e = isEdgewardError(err) ? err : new EdgewardError('EDGE_ONVIF_ERROR', String((err as Error)?.message ?? err), { cause: err });
    this.failures++;
    this.lastError = `${e.code}: ${e.message}`;
    this.ctx.error?.(e.code);
    this.dropSubscription(e);
    const network = NETWORK_CODES.has(e.code);
    // A refused UsernameToken is most often a camera clock that stepped (NTP sync, power cut): the library reads the
    // camera's time only on connect, so reconnect at once rather than after the three failures that mean offline.
    const auth = e.code === 'EDGE_ONVIF_AUTH' || isEdgewardError(e.cause, 'EDGE_ONVIF_AUTH');
    // Reconnect on network errors (a rebooted camera may come back changed) and when faults persist.
    if (network || auth || this.failures >= 3) this.info = undefined;
    this.log.warn({ code: e.code, err: e.message, failures: this.failures }, 'camera failure');
    const offlineAfter = this.props.offlineAfter ?? 3;
    if (this.failures >= offlineAfter && !this.announcedOffline) {
      this.online = false;
      this.announcedOffline = true;
      this.ctx.emit({
        type: 'device.offline',
        source: { device: this.name, driver: this.driver },
        data: { host: this.props.host, port: this.props.port ?? 80, error: e.code, reason: e.message, failures: this.failures },
      });
      this.publishState();
    }
  }

  /** First retry immediate (a lost subscription is normal after a reboot), then exponential. */
  private backoffMs(): number {
    if (this.failures <= 1) return 0;
    const min = this.props.backoffMinMs ?? 1000;
    const max = this.props.backoffMaxMs ?? 60_000;
    return Math.min(max, min * 2 ** Math.min(20, this.failures - 2));
  }

  private sleep(ms: number): Promise<void> {
    if (ms <= 0 || this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const t = this.ctx.clock.setTimeout(done, ms);
      const self = this;
      function done() {
        self.ctx.clock.clearTimeout(t);
        self.wake = undefined;
        resolve();
      }
      this.wake = done;
    });
  }

  private seen(): void {
    this.lastSeen = this.ctx.clock.now();
  }

  private publishState(): void {
    this.ctx.bus.emit('device.state', { name: this.name, driver: this.driver, ...this.state() });
  }
}
