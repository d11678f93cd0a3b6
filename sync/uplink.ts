import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { Severity } from '../edge/envelope.js';
import { type Clock, systemClock } from '../edge/clock.js';
import type { UplinkConfig } from '../edge/config-types.js';
import { type TlsPem, tlsPemProblems } from '../edge/config.js';
import { EdgewardError, isEdgewardError } from '../edge/errors.js';
import { type Logger, urlWithoutUserinfo } from '../edge/log.js';
import { PacedCount } from '../edge/paced.js';
import type { Outbox, StoredEvent } from './outbox-api.js';
import { batchBuffer, decodeAck, encodeBatch, encodeStatus, type StatusPayload, toRanges } from './batch-codec.js';

/** What the uplink needs; everything with timing or I/O is injected. */
export interface UplinkOptions {
  config: UplinkConfig;
  site: string;
  edge: string;
  /** Runtime version, reported in `P/status`. */
  version: string;
  outbox: Outbox;
  log: Logger;
  clock?: Clock;
  /** Refresh the retained `P/status` this often (default 30 s). */
  statusIntervalMs?: number;
  /** MQTT keepalive in seconds (default 30): how fast the broker notices a dead link and sends the will. */
  keepaliveS?: number;
  /** MQTT client id (default `edgeward_{site}_{edge}`). */
  clientId?: string;
  /** Reconnect backoff: first delay and cap in ms (defaults 250 and 10 000), ±30 % jitter. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Source of jitter, for tests (default Math.random). */
  random?: () => number;
}

/** A snapshot for `/healthz`, `/api/v1/status` and metrics. */
export interface UplinkStatus {
  connected: boolean;
  /** ISO time of the last ack (central ack or PUBACK, per `ack` mode), or null. */
  lastAckAt: string | null;
  /** Batches published (or being published) and not yet acknowledged. */
  inflightBatches: number;
  /** Publish → ack time of the last fully acknowledged batch. */
  ackLagMs?: number;
  /** Stored events too large to be sent within `maxPacketBytes` even alone: kept, not sent (see README). */
  unsendable: number;
  /**
   * While batches are in flight: how long ago the oldest event in them was
   * first sent (by this copy or an earlier one: resends, reconnects and acks
   * of other batches do not reset it).
   */
  unackedForMs?: number;
  /**
   * How long the uplink has been down: disconnected, or connected within a
   * spell of connections that drop soon after they are made (`unstable`),
   * since the last connection that lasted STABLE_CONNECTION_MS or on which
   * acks (with `ack: broker`, PUBACKs) deleted events. 0 otherwise.
   */
  downForMs: number;
  /** Connections have dropped within STABLE_CONNECTION_MS of being made, and none has lasted since. */
  unstable: boolean;
}

/** Events the uplink emits, for metrics and logs. */
export interface UplinkEvents {
  connect: [];
  disconnect: [{ reason: string }];
  /** A batch went on the wire. */
  publish: [{ events: number; bytes: number; critical: boolean }];
  /** Events left the outbox because they were acknowledged. */
  ack: [{ events: number; lagMs?: number }];
}

interface InflightBatch {
  /** Seqs of this batch not yet acknowledged (see `PendingSeqs`). */
  pending: PendingSeqs;
  /** Lowest seq per severity, to rewind the read cursor when the batch is released. */
  minSeq: Partial<Record<Severity, number>>;
  critical: boolean;
  sentAt: number;
  /**
   * When the oldest of its events was first sent, this copy or an earlier one
   * (kept across resends and reconnects): what /healthz measures an ack
   * against. Unset until the batch is published, unless inherited.
   */
  firstSentAt?: number;
  /** The PUBACK arrived (ack: broker completes the batch then). */
  published: boolean;
  timer?: NodeJS.Timeout;
  /** The ack timeout this batch was given (ack: central). */
  timeoutMs?: number;
}

const DEFAULT_MAX_INFLIGHT = 16;
/** An ack the outbox could not apply (a full disk) is applied again after this long. */
const ACK_RETRY_MS = 1_000;
const DEFAULT_ACK_TIMEOUT_MS = 10_000;
/** A `rewinds` count no read began at: a claim given it leaves the cursor where it is. */
const NO_ADVANCE = -1;
/**
 * The ack timeout grows to at most this many times ackTimeoutMs while acks come late (see
 * `ackBackoff`): enough for a central 8 times slower than configured, and a central that comes
 * back from a silent spell waits at most 8 × ackTimeoutMs for the resend (a reconnect resends at once).
 */
const MAX_ACK_BACKOFF = 8;
/** While acks time out, at most one log line about it this often (see logResend). */
const RESEND_LOG_MS = 60_000;
/**
 * A connection that lasted this long ends the reconnect backoff (see
 * connectionLasted). One that closes sooner is a short drop (logDisconnect):
 * logged once a minute at most, the backoff growing, and while such drops
 * go on /healthz counts the uplink as down. A broker that drops the edge at
 * every publish (a size limit, an ACL that disconnects) was reconnected every
 * ~250 ms for good, with a pair of log lines each time, and /healthz said 200
 * (found by a review).
 */
const STABLE_CONNECTION_MS = 10_000;
/**
 * A critical event stored while the uplink waits out a reconnect backoff
 * brings the next attempt forward to this long after the last one
 * (reconnectSoonForAlarm).
 */
const ALARM_RECONNECT_MS = 1000;
/**
 * Largest ack payload looked at with the default batches (a bigger window
 * allows more: 40 bytes per seq it can hold, each acked as a range of its
 * own); a larger one is ignored as malformed before it is parsed. One 30 MB
 * ack (valid JSON, a range per seq) took the runtime to 1.85 GB and 5.8 s of
 * blocked event loop, and kept retained on the ack topic it crashed a
 * runtime with a 512 MB heap at every start (found by a review). An ack
 * naming singly each seq of a full window (16 batches of 500, seqs of 16
 * digits) is ~300 KB.
 */
export const MAX_ACK_BYTES = 1024 * 1024;
/**
 * Ranges the sent-seq record keeps beyond two per seq in flight (see
 * keepNewestRanges). At a fixed 1,024, a backlog drain with critical events
 * among the info ones (critical batches pass a full window; each critical
 * seq is a range of its own until the info around it is sent) dropped the
 * oldest ranges still in flight, so a correct central's acks for them were
 * ignored and the batches resent: 16,976 duplicates for a 20,000-event
 * drain, against none for info alone (found by a review).
 */
const SPARE_SENT_RANGES = 1024;
const DEFAULT_STATUS_INTERVAL_MS = 30_000;
const STOP_PUBLISH_TIMEOUT_MS = 2_000;
/**
 * `uplink.maxPacketBytes` when not set: at or under the limits of common
 * brokers (AWS IoT Core 128 KB, Azure IoT Hub 256 KB, EMQX 1 MB). A default
 * 500-event batch of ~300-byte events gzips to ~8 KB; uncompressed
 * (`compress: none`) it is up to 256 KiB and is split.
 */
export const DEFAULT_MAX_PACKET_BYTES = 128 * 1024;

/** Size of an MQTT 3.1.1 PUBLISH with QoS 1: fixed header, topic, packet id and payload. */
export function publishPacketBytes(topic: string, payloadBytes: number): number {
  const remaining = 2 + Buffer.byteLength(topic) + 2 + payloadBytes;
  const lengthBytes = remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4;
  return 1 + lengthBytes + remaining;
}

/**
 * The largest stored event JSON that always fits in one packet of
 * `maxPacketBytes` on its own: the limit less the packet's header and topic,
 * the batch's own JSON around the event, and gzip's worst case on
 * incompressible data (deflate's stored blocks and header: under 0.1 % + 64
 * bytes). The runtime refuses larger events at ingest.
 */
export function maxEventBytes(cfg: Pick<UplinkConfig, 'maxPacketBytes'>, site: string, edge: string): number {
  const limit = cfg.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES;
  const topic = `edgeward/v1/${site}/${edge}/events`;
  const wrapper = batchBuffer({ site, edge, epoch: '0'.repeat(26) }, []).length;
  return limit - publishPacketBytes(topic, 0) - wrapper - 64 - Math.ceil(limit / 1024);
}

/**
 * The MQTT uplink (SPEC.md "MQTT protocol (contract)"): drains the outbox in
 * batches to `P/events`, deletes events only once acknowledged (by the central
 * on `P/ack`, or by the broker's PUBACK with `ack: broker`), keeps a bounded
 * window of unacknowledged batches, resends after a timeout and after every
 * reconnect, and lets critical events overtake any backlog.
 *
 * One `MqttClient` per connection: on close it is ended (its pending publishes
 * fail) and a fresh one is made after a jittered backoff, so mqtt.js never
 * queues or replays anything behind our back; resending is ours alone.
 */
export class Uplink extends EventEmitter<UplinkEvents> {
  private readonly cfg: UplinkConfig;
  private readonly outbox: Outbox;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly prefix: string;
  private readonly maxInflight: number;
  private readonly ackTimeoutMs: number;
  private readonly statusIntervalMs: number;
  private readonly maxPacketBytes: number;

  private running = false;
  private client: MqttClient | null = null;
  private connected = false;
  private attempts = 0;
  private tls: Pick<IClientOptions, 'ca' | 'cert' | 'key'> = {};
  private reconnectTimer: NodeJS.Timeout | null = null;
  /** When the scheduled reconnect is due, and when the last connection attempt began (clock ms). */
  private reconnectDueAt = 0;
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private statusTimer: NodeJS.Timeout | null = null;
  private lingerTimer: NodeJS.Timeout | null = null;
  /** The pump's retry after a failed publish. */
  private retryTimer: NodeJS.Timeout | null = null;
  /**
   * Publishes that failed on one connection after the first (logged): a link
   * lost with a window in flight failed each batch with its own warning
   * (563 lines in one disconnect of a chaos run, 200 within 10 ms: mqtt.js
   * fails every pending publish before it emits 'close'). Summed up in one
   * line when that connection closes.
   */
  private failedPublishes: { client: MqttClient; batches: number; events: number } | undefined;
  private lingerSince: number | null = null;
  private unsubscribeAppend: (() => void) | null = null;
  private unsubscribeHealth: (() => void) | null = null;

  private readonly inflight = new Set<InflightBatch>();
  /**
   * Per severity, every seq up to here is in flight or gone: reads start after
   * it (`OutboxReadOptions.after`) instead of rescanning the window each time.
   * Releasing a batch rewinds it so the batch's events are read again.
   */
  private readonly cursor: Record<Severity, number> = { critical: 0, warning: 0, info: 0 };
  /**
   * Bumped by every release that rewinds the cursor. A read that began before
   * one excluded the released seqs (then in flight): its claim must not move
   * the cursor past them, or they are never read again (seen: alarms left
   * unsent until a restart when an ack timeout fell during a read).
   */
  private rewinds = 0;
  /** The ack timeout is ackTimeoutMs times this: doubled by each timeout, halved by each prompt ack (1 … MAX_ACK_BACKOFF). */
  private ackBackoff = 1;
  /**
   * Seqs an ack may delete: what this uplink has published and no ack has
   * covered yet (see clipToSent).
   */
  private sentRanges: Array<[number, number]> = [];
  private sentEpoch: string | undefined;
  private readonly unsentAckLog = new PacedCount(RESEND_LOG_MS);
  /** Malformed acks, and acks with another epoch: each logged once a minute at most, with the count. */
  private readonly malformedAcks = new PacedCount(RESEND_LOG_MS);
  private readonly otherEpochAcks = new PacedCount(RESEND_LOG_MS);
  /** Ack timeouts since the last line about them (see logResend); loggedAt null outside a silent spell. */
  private resends: { loggedAt: number | null; batches: number; events: number } = { loggedAt: null, batches: 0, events: 0 };
  private warnedRetainedAck = false;
  private pumping = false;
  /** A pump is waiting for the store's next write (see `pump`). */
  private pumpWaiting = false;
  private pumpAgain = false;
  private pumpDone: Promise<void> = Promise.resolve();
  /** Acks are applied one after another, in arrival order. */
  private ackChain: Promise<void> = Promise.resolve();
  /** Acked ranges not yet applied: applied together, one outbox write for all that arrived meanwhile. */
  private pendingAcks: Array<[number, number]> = [];
  private acking = false;
  /** Acked ranges the outbox could not apply yet (a full disk), and the timer that applies them again. */
  private failedAcks: Array<[number, number]> = [];
  private ackRetryTimer: NodeJS.Timeout | null = null;

  private lastAckAt: string | null = null;
  private ackLagMs: number | undefined;
  /**
   * First send time of events released unacknowledged (an ack timeout, a
   * lost connection, a failed publish), by seq, until they are sent again:
   * the new batch inherits it, so the age of the oldest unacknowledged send
   * survives resends. Measured from the last ack of anything, a batch the
   * central never acks while it acks the others never showed in /healthz
   * (found by a review). Only batches in flight are measured: a released
   * event waiting in the outbox (behind a backlog of warnings, or evicted
   * meanwhile) is not waiting for an ack (it was counted so, and a healthy
   * drain after an outage said 503), nor one released for want of a
   * connection until it goes again (see release). At most maxReleasedSeqs
   * entries (four windows), the oldest dropped first: evicted seqs are never
   * sent again.
   */
  private readonly releasedSentAt = new Map<number, ReleasedSend>();
  private readonly maxReleasedSeqs: number;
  /** See MAX_ACK_BYTES. */
  private readonly maxAckBytes: number;
  /** When the current connection was made (null while disconnected). */
  private connectedAt: number | null = null;
  /** The current connection has lasted STABLE_CONNECTION_MS. */
  private lasted = false;
  /** Since when the uplink has been down (see UplinkStatus.downForMs); null while it is up. */
  private downSince: number | null = null;
  /** Connections dropped within STABLE_CONNECTION_MS of being made, since the last line about them. */
  private shortDrops = 0;
  private readonly shortDropLog = new PacedCount(RESEND_LOG_MS);
  /**
   * Seqs of stored events that do not fit in one packet even alone (stored
   * before `maxPacketBytes` was lowered): never published, since the broker
   * would drop the connection and every resend would do it again. Kept in
   * the outbox; looked at again after a restart.
   */
  private readonly unsendable = new Set<number>();
  /** Neither in a batch in flight nor unsendable: what a read may take. */
  private readonly sendable = (seq: number): boolean => !this.isInflight(seq) && !this.unsendable.has(seq);

  constructor(private readonly opts: UplinkOptions) {
    super();
    this.cfg = opts.config;
    this.outbox = opts.outbox;
    this.log = opts.log.child({ module: 'sync/uplink' });
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.prefix = `edgeward/v1/${opts.site}/${opts.edge}`;
    this.maxInflight = opts.config.maxInflight ?? DEFAULT_MAX_INFLIGHT;
    this.ackTimeoutMs = opts.config.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS;
    this.statusIntervalMs = opts.statusIntervalMs ?? DEFAULT_STATUS_INTERVAL_MS;
    this.maxPacketBytes = opts.config.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES;
    this.maxReleasedSeqs = 4 * (this.maxInflight + 1) * opts.config.batch.maxEvents;
    this.maxAckBytes = Math.max(MAX_ACK_BYTES, 40 * (this.maxInflight + 1) * opts.config.batch.maxEvents);
  }

  /** Topics of this edge. */
  get topics(): { events: string; status: string; ack: string } {
    return { events: `${this.prefix}/events`, status: `${this.prefix}/status`, ack: `${this.prefix}/ack` };
  }

  /** The broker URL without any user:password part, for logs. */
  private get safeUrl(): string {
    return urlWithoutUserinfo(this.cfg.url);
  }

  /** Read TLS files and start connecting; resolves at once (the broker may be down: we keep retrying). */
  async start(): Promise<void> {
    if (this.running) return;
    this.tls = await this.readTlsFiles();
    this.running = true;
    this.downSince = this.clock.now();
    this.unsubscribeAppend = this.outbox.onAppend((severities) => this.onAppend(severities));
    // The central learns at once when the store starts or stops refusing events (disk full).
    this.unsubscribeHealth = this.outbox.onWriteHealth?.(() => this.statusNow()) ?? null;
    this.connect();
  }

  /** Publish the offline status (when connected), disconnect, and forget in-flight batches (they stay in the outbox). */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.unsubscribeAppend?.();
    this.unsubscribeHealth?.();
    this.unsubscribeAppend = this.unsubscribeHealth = null;
    for (const t of [this.reconnectTimer, this.statusTimer, this.lingerTimer, this.retryTimer, this.ackRetryTimer])
      if (t) this.clock.clearTimeout(t);
    this.reconnectTimer = this.statusTimer = this.lingerTimer = this.retryTimer = this.ackRetryTimer = null;
    this.failedAcks = [];
    await this.pumpDone;
    const client = this.client;
    this.client = null;
    if (client) {
      if (this.connected) {
        await this.publishStatus(client, 'offline', STOP_PUBLISH_TIMEOUT_MS);
        await withTimeout(client.endAsync(), STOP_PUBLISH_TIMEOUT_MS).catch(() => client.end(true));
      } else {
        client.end(true);
      }
    }
    const wasConnected = this.connected;
    this.connected = false;
    this.releaseAll();
    await this.ackChain;
    if (wasConnected) this.emit('disconnect', { reason: 'stopped' });
  }

  status(): UplinkStatus {
    this.connectionLasted();
    const s: UplinkStatus = {
      downForMs: 0,
      unstable: this.shortDrops > 0,
      connected: this.connected,
      lastAckAt: this.lastAckAt,
      inflightBatches: this.inflight.size,
      unsendable: this.unsendable.size,
    };
    if (this.ackLagMs !== undefined) s.ackLagMs = this.ackLagMs;
    const now = this.clock.now();
    const oldest = this.oldestUnackedSentAt();
    if (oldest !== undefined) s.unackedForMs = now - oldest;
    // A wall clock stepped back restarts the count rather than hiding the state for the size of the step.
    if (this.downSince !== null && this.downSince > now) this.downSince = now;
    // Connected and not in a spell of short connections: up, even before the connection has
    // lasted (an idle box reconnected after a 48 s outage said 503 for 10 s; found by a review).
    s.downForMs = this.downSince === null || (this.connected && this.shortDrops === 0) ? 0 : now - this.downSince;
    return s;
  }

  /**
   * The first send time of the oldest event in the batches in flight. A wall
   * clock stepped back below it restarts the count from now rather than
   * hiding a silent central for the size of the step.
   */
  private oldestUnackedSentAt(): number | undefined {
    const now = this.clock.now();
    let oldest: number | undefined;
    for (const b of this.inflight) {
      if (b.firstSentAt === undefined) continue;
      if (b.firstSentAt > now) b.firstSentAt = now;
      if (oldest === undefined || b.firstSentAt < oldest) oldest = b.firstSentAt;
    }
    return oldest;
  }

  // ---- connection ----------------------------------------------------------

  private async readTlsFiles(): Promise<Pick<IClientOptions, 'ca' | 'cert' | 'key'>> {
    const out: Pick<IClientOptions, 'ca' | 'cert' | 'key'> = {};
    for (const k of ['ca', 'cert', 'key'] as const) {
      const path = this.cfg[k];
      if (path === undefined) continue;
      try {
        out[k] = await readFile(path);
      } catch (err) {
        throw new EdgewardError('EDGE_UPLINK_TLS', `cannot read uplink.${k} file ${path}`, {
          cause: err,
          details: { path: `uplink.${k}` },
        });
      }
    }
    // A key or certificate that is not PEM made mqtt.connect throw out of the runtime.
    const problems = tlsPemProblems(out as TlsPem, this.cfg);
    if (problems.length > 0) throw new EdgewardError('EDGE_UPLINK_TLS', problems.join('; '), { details: { path: problems[0].split(':')[0] } });
    return out;
  }

  private statusPayload(state: StatusPayload['state'], will = false): Buffer {
    const stats = this.outbox.stats();
    const w = stats.writeError;
    return encodeStatus({
      state,
      ts: new Date(this.clock.now()).toISOString(),
      version: this.opts.version,
      outbox: { events: stats.events, ...(w ? { writeError: { since: w.since, message: w.message } } : {}) },
      // Optional extensions for a central: the outbox epoch its acks must name (a rebuilt store
      // starts a new one), and, in the last will, that its ts and depth are from the connect.
      epoch: this.outbox.epoch,
      ...(will ? { will: true } : {}),
    });
  }

  private connect(): void {
    this.reconnectTimer = null;
    if (!this.running) return;
    if (this.cfg.ca === undefined && this.cfg.cert === undefined && this.cfg.key === undefined) {
      this.openConnection();
      return;
    }
    // Certificates get renewed on disk (short-lived client certs, a new CA bundle): read
    // them for every connection, so a renewal is used without a restart. Files that cannot
    // be read now (replaced, mid-write) leave the last ones read in use.
    this.readTlsFiles()
      .then(
        (tls) => {
          this.tls = tls;
        },
        (err: Error) => this.log.warn({ err: err.message }, 'cannot read the TLS files again: connecting with the last ones read'),
      )
      .finally(() => {
        if (this.running && this.client === null && this.reconnectTimer === null) this.openConnection();
      });
  }

  private openConnection(): void {
    this.lastAttemptAt = this.clock.now();
    const options: IClientOptions = {
      protocolVersion: 4,
      // '_' is in neither name ([a-z0-9-]): with '-', alpha-north/gate-1 and alpha/north-gate-1 got the
      // same id and the broker kept dropping one for the other (measured: 22 reconnects in 12 s).
      clientId: this.opts.clientId ?? `edgeward_${this.opts.site}_${this.opts.edge}`,
      clean: true,
      keepalive: this.opts.keepaliveS ?? 30,
      // We reconnect ourselves with a fresh client and jittered backoff.
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      queueQoSZero: false,
      resubscribe: false,
      username: this.cfg.username,
      password: this.cfg.password,
      rejectUnauthorized: true,
      ...this.tls,
      will: { topic: this.topics.status, payload: this.statusPayload('offline', true), qos: 1, retain: true },
    };
    this.log.debug({ url: this.safeUrl, attempt: this.attempts }, 'connecting');
    const client = mqtt.connect(this.cfg.url, options);
    this.client = client;
    client.on('connect', () => {
      // mqtt.js leaves Nagle on: a lone critical event would wait for the ACK of the
      // previous segment (tens of ms with delayed ACKs). Alarms go out at once.
      (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
      void this.onConnect(client);
    });
    client.on('close', () => this.onClose(client));
    client.on('error', (err) => {
      if (client !== this.client) return;
      // Loud for the first failure, quiet while retrying through a long outage.
      const level = this.attempts === 0 ? 'warn' : 'debug';
      this.log[level]({ err: err.message, url: this.safeUrl }, 'mqtt error');
    });
    client.on('message', (topic, payload, packet) => {
      if (client === this.client && topic === this.topics.ack) this.onAckMessage(payload, packet.retain);
    });
  }

  private live(client: MqttClient | null = this.client): client is MqttClient {
    return this.running && this.connected && client !== null && client === this.client && client.connected;
  }

  private async onConnect(client: MqttClient): Promise<void> {
    if (client !== this.client || !this.running) return;
    try {
      // Subscribe before sending anything, or the acks of the first batches could be missed.
      if (this.cfg.ack === 'central') {
        const granted = await client.subscribeAsync(this.topics.ack, { qos: 1 });
        // MQTT 3.1.1 refuses a subscription with SUBACK code 0x80 rather than an error.
        if (granted.some((g) => g.qos === 128))
          throw new Error(`broker refused the subscription to ${this.topics.ack}`);
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot subscribe to the ack topic; reconnecting');
      client.end(true);
      return;
    }
    if (client !== this.client || !this.running || !client.connected) return;
    this.connected = true;
    this.connectedAt = this.clock.now();
    this.lasted = false;
    // The backoff is reset only once this connection has lasted (see STABLE_CONNECTION_MS).
    // A new session resends everything at once: its acks time out from scratch.
    this.ackBackoff = 1;
    this.log[this.shortDrops > 0 ? 'debug' : 'info']({ url: this.safeUrl, backlog: this.outbox.stats().events }, 'uplink connected');
    void this.publishStatus(client, 'online');
    this.scheduleStatus();
    this.emit('connect');
    // A backlog drains as soon as the link is back, not when the next event arrives.
    this.pump();
  }

  private onClose(client: MqttClient): void {
    if (client !== this.client) return;
    this.client = null;
    const wasConnected = this.connected;
    this.connected = false;
    // Forget in-flight batches first (their events are read again after the reconnect), then end
    // the client: its pending publishes fail quietly instead of being replayed by mqtt.js.
    this.releaseAll();
    client.end(true);
    if (this.statusTimer) this.clock.clearTimeout(this.statusTimer);
    this.statusTimer = null;
    const failed = this.failedPublishes;
    if (failed?.client === client) {
      this.failedPublishes = undefined;
      if (failed.batches > 0)
        this.log.warn({ batches: failed.batches, events: failed.events }, 'more batches failed with the connection; will resend');
    }
    if (wasConnected) {
      this.logDisconnect();
      this.emit('disconnect', { reason: 'connection closed' });
    } else {
      // An attempt that did not connect: an outage, which ends a spell of short connections (one
      // that dropped before a 2-minute outage made the reconnect after it read as still
      // unstable: 503 and the outage's backoff; found by a review).
      this.shortDrops = 0;
    }
    this.downSince ??= this.clock.now();
    this.connectedAt = null;
    this.lasted = false;
    if (!this.running) return;
    const base = Math.min(
      this.opts.reconnectMaxMs ?? 10_000,
      (this.opts.reconnectMinMs ?? 250) * 2 ** this.attempts,
    );
    const delay = Math.round(base * (0.7 + 0.6 * this.random()));
    this.attempts = Math.min(this.attempts + 1, 30);
    this.log.debug({ delayMs: delay, attempt: this.attempts }, 'reconnect scheduled');
    this.reconnectDueAt = this.clock.now() + delay;
    this.reconnectTimer = this.clock.setTimeout(() => this.connect(), delay);
  }

  /**
   * A connection that lasted STABLE_CONNECTION_MS is logged as it goes and
   * ends any backoff. One dropped sooner is logged the first time, then once
   * a minute with the count, and the backoff grows meanwhile (to
   * reconnectMaxMs), acks on it or not: two boxes sharing a client id (a
   * cloned SD card) kick each other off after a few acks each time, and
   * counting those as working connections reconnected them every ~250 ms
   * with two log lines each time (found by a review).
   */
  private logDisconnect(): void {
    const now = this.clock.now();
    const lastedMs = this.connectedAt === null ? 0 : now - this.connectedAt;
    if (this.hasLasted(now)) {
      this.attempts = 0;
      this.shortDrops = 0;
      this.log.warn({ url: this.safeUrl }, 'uplink disconnected');
      this.downSince = now;
      return;
    }
    this.shortDrops++;
    // The first of a spell at once (a new spell starts the pacing again).
    if (this.shortDrops === 1) this.shortDropLog.reset();
    if (this.shortDropLog.hit(now) === undefined) {
      this.log.debug({ url: this.safeUrl, lastedMs }, 'uplink disconnected');
      return;
    }
    this.log.warn(
      { url: this.safeUrl, lastedMs, drops: this.shortDrops },
      this.shortDrops === 1
        ? 'uplink disconnected soon after connecting'
        : 'uplink connections keep dropping soon after connecting (a broker size limit or ACL that disconnects, or a second box with this site and edge?); backing off',
    );
  }

  /**
   * The current connection has lasted STABLE_CONNECTION_MS (a wall clock
   * stepped back counts as lasted: its age is unknown): the backoff starts
   * again from its least and a spell of short connections is over.
   */
  private connectionLasted(): void {
    if (this.lasted || !this.connected || !this.hasLasted(this.clock.now())) return;
    this.lasted = true;
    this.attempts = 0;
    this.downSince = null;
    if (this.shortDrops > 0) {
      this.log.info({ url: this.safeUrl }, 'uplink connection stable again');
      this.shortDrops = 0;
    }
  }

  /** Whether the current (or just closed) connection has lasted STABLE_CONNECTION_MS; a negative age (a clock stepped back) counts. */
  private hasLasted(now: number): boolean {
    if (this.lasted) return true;
    if (this.connectedAt === null) return false;
    const age = now - this.connectedAt;
    return age >= STABLE_CONNECTION_MS || age < 0;
  }

  /**
   * Acks deleted events on the current connection: the uplink is up. Outside
   * a spell of short connections this also ends the backoff of an outage, so
   * a broker restarted again soon after the reconnect is reconnected at once,
   * not after the outage's 10 s (found by a review).
   */
  private acksFlow(): void {
    if (!this.connected) return;
    this.downSince = null;
    if (this.shortDrops === 0) this.attempts = 0;
  }

  private publishStatus(
    client: MqttClient,
    state: StatusPayload['state'],
    timeoutMs?: number,
  ): Promise<void> {
    const done = new Promise<void>((resolve) => {
      publishUnpooled(client, this.topics.status, this.statusPayload(state), { qos: 1, retain: true }, (err) => {
        if (err) this.log.debug({ err: err.message, state }, 'status publish failed');
        resolve();
      });
    });
    return timeoutMs === undefined ? done : withTimeout(done, timeoutMs).catch(() => undefined);
  }

  /** Publish the online status now (when connected) and restart the refresh period. */
  private statusNow(): void {
    const client = this.client;
    if (!this.live(client)) return;
    this.connectionLasted();
    void this.publishStatus(client, 'online');
    this.scheduleStatus();
  }

  private scheduleStatus(): void {
    if (this.statusTimer) this.clock.clearTimeout(this.statusTimer);
    this.statusTimer = this.clock.setTimeout(() => {
      this.statusTimer = null;
      this.statusNow();
    }, this.statusIntervalMs);
  }

  // ---- sending -------------------------------------------------------------

  private onAppend(severities: Set<Severity>): void {
    if (severities.has('critical')) {
      this.reconnectSoonForAlarm();
      void this.sendCriticalNow();
    }
    this.pump();
  }

  /**
   * A critical event stored while the uplink waits to reconnect: the next
   * attempt comes ALARM_RECONNECT_MS after the last one, unless due sooner.
   * The backoff grows to reconnectMaxMs (10 s) over an outage, and over a
   * spell of connections that drop within 10 s, which is also what a broker
   * restarted every few seconds or a flaky link looks like: alarms waited
   * 0.7-8 s there, with the broker up 93 % of the time (found by a review).
   * The backoff itself goes on: at most one attempt a second, and only when
   * an alarm comes (a broker that drops the edge at each publish is not
   * retried in a loop: the alarm is already stored when its attempt fails).
   */
  private reconnectSoonForAlarm(): void {
    if (!this.running || this.reconnectTimer === null) return;
    const now = this.clock.now();
    // Within [now, now + ALARM_RECONNECT_MS]: a clock stepped back cannot push it out.
    const soon = Math.min(Math.max(this.lastAttemptAt + ALARM_RECONNECT_MS, now), now + ALARM_RECONNECT_MS);
    if (soon >= this.reconnectDueAt) return;
    this.clock.clearTimeout(this.reconnectTimer);
    this.reconnectDueAt = soon;
    this.reconnectTimer = this.clock.setTimeout(() => this.connect(), soon - now);
    this.log.debug({ inMs: soon - now }, 'critical event waiting: reconnecting sooner');
  }

  /**
   * Critical events do not wait for the pump's current round (a backlog batch
   * being read and compressed): they are read and published at once, beside it.
   * A critical event claimed by both paths is sent once (see `send`).
   */
  private async sendCriticalNow(): Promise<void> {
    const client = this.client;
    if (!client || !this.live(client)) return;
    try {
      const { maxEvents, maxBytes } = this.cfg.batch;
      const rewinds = this.rewinds;
      const events = await this.outbox.read({
        maxEvents,
        maxBytes,
        exclude: (seq) => !this.sendable(seq),
        severities: ['critical'],
        after: { ...this.cursor },
      });
      if (events.length > 0 && this.live(client)) await this.send(client, events, true, rewinds);
    } catch (err) {
      // The pump sends it anyway; this path only saves time.
      this.log.warn({ err }, 'fast path for critical events failed');
    }
  }

  /**
   * Read and send what is stored, once the store's next write is on its way
   * to disk (`Outbox.whenWriting`): batching, gzip and publishing then overlap
   * the fsync instead of delaying the next group commit. Critical events do
   * not wait for this (`sendCriticalNow`).
   */
  private pump(): void {
    if (this.pumpWaiting) return;
    const whenWriting = this.outbox.whenWriting;
    if (!whenWriting) {
      this.pumpNow();
      return;
    }
    this.pumpWaiting = true;
    whenWriting.call(this.outbox, () => {
      this.pumpWaiting = false;
      this.pumpNow();
    });
  }

  /** Fill the window from the outbox. Re-entrant calls while running just ask for one more round. */
  private pumpNow(): void {
    if (!this.live()) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    this.pumpDone = (async () => {
      try {
        do {
          this.pumpAgain = false;
          await this.fill();
        } while (this.pumpAgain && this.live());
      } catch (err) {
        this.log.error({ err }, 'uplink pump failed');
      } finally {
        this.pumping = false;
      }
    })();
  }

  /** Whether `seq` is in a batch in flight and not yet acknowledged. */
  private isInflight(seq: number): boolean {
    for (const b of this.inflight) if (b.pending.has(seq)) return true;
    return false;
  }

  private normalInflight(): number {
    let n = 0;
    for (const b of this.inflight) if (!b.critical) n++;
    return n;
  }

  private async fill(): Promise<void> {
    const { maxEvents, maxBytes, lingerMs } = this.cfg.batch;
    const exclude = (seq: number) => !this.sendable(seq);
    for (;;) {
      if (!this.live()) return;
      // A full window still lets critical events through: they are never stuck behind a backlog.
      const windowOpen = this.normalInflight() < this.maxInflight;
      const rewinds = this.rewinds;
      const events = await this.outbox.read({
        maxEvents,
        maxBytes,
        exclude,
        severities: windowOpen ? undefined : ['critical'],
        after: { ...this.cursor },
      });
      if (!this.live()) return;
      if (events.length === 0) {
        if (windowOpen) this.lingerSince = null;
        return;
      }
      const critical = events.some((e) => e.severity === 'critical');
      let bytes = 0;
      for (const e of events) bytes += e.bytes;
      const full = events.length >= maxEvents || bytes + bytes / events.length > maxBytes;
      if (!critical && !full) {
        // A partial batch waits up to lingerMs after we first saw it, for company.
        const now = this.clock.now();
        this.lingerSince ??= now;
        // The wall clock stepped back (NTP): how long we waited is unknown, so it has been long
        // enough. Otherwise the batch would linger for the size of the step.
        if (this.lingerSince > now) this.lingerSince = now - lingerMs;
        const wait = this.lingerSince + lingerMs - now;
        if (wait > 0) {
          this.armLinger(wait);
          return;
        }
      }
      this.lingerSince = null;
      if (this.lingerTimer) this.clock.clearTimeout(this.lingerTimer);
      this.lingerTimer = null;
      await this.send(this.client!, events, critical, rewinds);
    }
  }

  private armLinger(ms: number): void {
    if (this.lingerTimer) return;
    this.lingerTimer = this.clock.setTimeout(() => {
      this.lingerTimer = null;
      this.pump();
    }, ms);
  }

  /** `rewinds`: the count when the read of `claimed` began (see `rewinds`). */
  private async send(client: MqttClient, claimed: StoredEvent[], critical: boolean, rewinds: number): Promise<void> {
    // Read concurrently by the pump and the critical fast path: whoever gets here first sends it.
    const events = claimed.filter((e) => this.sendable(e.seq));
    if (events.length === 0) return;
    await this.publishClaimed(client, this.claim(events, critical, rewinds), events, critical);
  }

  /**
   * Put `events` in flight as one batch, synchronously, so that no concurrent
   * read picks these seqs again. The cursor moves past them unless a release
   * rewound it since their read began: then it stays, and the next read starts
   * there (what is in flight is excluded anyway).
   */
  private claim(events: StoredEvent[], critical: boolean, rewinds = this.rewinds): InflightBatch {
    const minSeq: Partial<Record<Severity, number>> = {};
    const advance = rewinds === this.rewinds;
    for (const e of events) {
      minSeq[e.severity] = Math.min(minSeq[e.severity] ?? e.seq, e.seq);
      if (advance && e.seq > this.cursor[e.severity]) this.cursor[e.severity] = e.seq;
    }
    let firstSentAt: number | undefined;
    if (this.releasedSentAt.size > 0) {
      const now = this.clock.now();
      for (const e of events) {
        const known = this.releasedSentAt.get(e.seq);
        if (known === undefined) continue;
        this.releasedSentAt.delete(e.seq);
        const at = releasedFirstSend(known, now);
        if (firstSentAt === undefined || at < firstSentAt) firstSentAt = at;
      }
    }
    const batch: InflightBatch = {
      pending: new PendingSeqs(events.map((e) => e.seq)),
      minSeq,
      critical,
      sentAt: this.clock.now(),
      firstSentAt,
      published: false,
    };
    this.inflight.add(batch);
    return batch;
  }

  private async publishClaimed(client: MqttClient, batch: InflightBatch, events: StoredEvent[], critical: boolean): Promise<void> {
    let payload: Buffer;
    try {
      payload = await encodeBatch(
        { site: this.opts.site, edge: this.opts.edge, epoch: this.outbox.epoch },
        events.map((e) => e.json),
        this.cfg.compress,
        this.cfg.gzipLevel,
      );
    } catch (err) {
      this.release(batch, true, true);
      throw err;
    }
    // Never hand mqtt.js a publish while offline: it would queue it behind our back.
    if (!this.live(client) || !this.inflight.has(batch)) {
      this.release(batch, true, true);
      return;
    }
    const packetBytes = publishPacketBytes(this.topics.events, payload.length);
    if (packetBytes > this.maxPacketBytes) {
      // The broker would drop the connection, and every resend would drop it again: a dead
      // uplink. Halves go as batches of their own (both claimed before either is encoded).
      this.inflight.delete(batch);
      if (events.length === 1) {
        this.unsendable.add(events[0].seq);
        this.log.error(
          { seq: events[0].seq, severity: events[0].severity, jsonBytes: events[0].bytes, packetBytes, maxPacketBytes: this.maxPacketBytes },
          'stored event too large for uplink.maxPacketBytes even alone: kept in the outbox, not sent',
        );
        return;
      }
      const half = events.length >> 1;
      const parts = [events.slice(0, half), events.slice(half)];
      // Already read and claimed once: the halves never move the cursor (a release since the
      // read may have put it below them, and below what it released).
      const batches = parts.map((p) => this.claim(p, critical, NO_ADVANCE));
      for (const b of batches) b.firstSentAt = batch.firstSentAt;
      for (let i = 0; i < parts.length; i++) await this.publishClaimed(client, batches[i], parts[i], critical);
      return;
    }
    batch.sentAt = this.clock.now();
    batch.firstSentAt ??= batch.sentAt;
    publishUnpooled(client, this.topics.events, payload, { qos: 1 }, (err) => this.onPuback(client, batch, err));
    if (this.cfg.ack === 'central') {
      // What a central's ack may delete (with ack: broker the PUBACK is the ack).
      this.markSent(batch.pending.ranges());
      // Jittered so that a window sent together does not time out (and resend) together.
      const ms = Math.round(this.ackTimeoutMs * this.ackBackoff * (0.8 + 0.4 * this.random()));
      batch.timeoutMs = ms;
      batch.timer = this.clock.setTimeout(() => this.onAckTimeout(batch), ms);
    }
    this.emit('publish', { events: events.length, bytes: payload.length, critical });
  }

  private onPuback(client: MqttClient, batch: InflightBatch, err: Error | undefined): void {
    if (!this.inflight.has(batch)) return;
    if (err) {
      // The events stay in the outbox; the batch is resent after the reconnect (or right away if still up).
      const failed = this.failedPublishes;
      if (failed?.client === client) {
        failed.batches++;
        failed.events += batch.pending.size;
      } else {
        this.failedPublishes = { client, batches: 0, events: 0 };
        this.log.warn({ err: err.message, events: batch.pending.size }, 'batch publish failed; will resend');
      }
      this.release(batch, true, true);
      if (client === this.client && !this.retryTimer) {
        this.retryTimer = this.clock.setTimeout(() => {
          this.retryTimer = null;
          this.pump();
        }, 100);
      }
      return;
    }
    batch.published = true;
    if (this.cfg.ack === 'broker') {
      const ranges = batch.pending.ranges();
      this.queueAck(ranges);
    }
  }

  private onAckTimeout(batch: InflightBatch): void {
    batch.timer = undefined;
    if (!this.inflight.has(batch)) return;
    // Paced: a central slower than the timeout would otherwise get every batch twice, be slower
    // still, and never catch up (measured: acks 1.5 s late against a 1 s timeout, the same window
    // resent 470 times while 50,945 events were never sent). Each timeout doubles the next ones.
    this.ackBackoff = Math.min(MAX_ACK_BACKOFF, this.ackBackoff * 2);
    this.logResend(batch);
    this.release(batch);
    this.pump();
  }

  /**
   * The central just acked, within half of `ackTimeoutMs`, a batch sent at
   * `promptSentAt` (per kind). Batches sent a whole `ackTimeoutMs` before it
   * and still unacked were lost (in a silent spell, say): they are resent now,
   * not when their paced timers fire (up to 8 × ackTimeoutMs later: an alarm
   * in one of them waited that long after the central was back). A central
   * slower than half the timeout never triggers this, so it cannot undo the
   * pacing that protects a slow central from resend storms.
   */
  private resendMissed(promptSentAt: { critical?: number; normal?: number }): void {
    let resent = 0;
    for (const batch of [...this.inflight]) {
      // Only against a batch of its own kind, sent a whole ackTimeoutMs after it: a central
      // storing batches concurrently acks a small critical one at once while a big backlog
      // batch is still being stored, and resending that one undid the pacing (seen in a review).
      // A critical batch against any prompt ack: small, it is what a concurrent central stores
      // first, so one unacked a whole timeout before a prompt ack was lost (an alarm waited the
      // paced 8 × ackTimeoutMs otherwise; seen in a review).
      const prompt = batch.critical
        ? Math.max(promptSentAt.critical ?? Number.NEGATIVE_INFINITY, promptSentAt.normal ?? Number.NEGATIVE_INFINITY)
        : promptSentAt.normal;
      if (prompt !== undefined && batch.sentAt <= prompt - this.ackTimeoutMs) {
        resent += batch.pending.size;
        this.release(batch);
      }
    }
    if (resent > 0) this.log.info({ events: resent }, 'central acks promptly again: resending what it missed');
  }

  /**
   * One line for the first ack timeout of a silent spell, then at most one a
   * minute with what was resent since: a central that never acks made one
   * line per batch per resend, 120 a minute for as long as it stayed silent
   * (measured over 22 minutes; /healthz reports the state anyway).
   */
  private logResend(batch: InflightBatch): void {
    const now = this.clock.now();
    const r = this.resends;
    r.batches++;
    r.events += batch.pending.size;
    if (r.loggedAt !== null && now - r.loggedAt < RESEND_LOG_MS) return;
    this.log.info(
      {
        batches: r.batches,
        events: r.events,
        waitedMs: now - batch.sentAt,
        nextTimeoutMs: this.ackTimeoutMs * this.ackBackoff,
        ...(r.loggedAt !== null ? { sinceMs: now - r.loggedAt } : {}),
      },
      r.loggedAt === null ? 'no ack from central in time; resending' : 'still no ack from central in time; resent meanwhile',
    );
    this.resends = { loggedAt: now, batches: 0, events: 0 };
  }

  /**
   * Forget a batch without acknowledging it: its events are read (and sent)
   * again. `paused`: released for want of a connection (lost, a failed
   * publish), so the time until it goes again is not time waiting for an
   * ack: a drain after an outage over 60 s, the central acking every batch,
   * said 503 for the re-sent window otherwise (found by a review). An ack
   * timeout releases it with the clock running.
   */
  private release(batch: InflightBatch, rewind = true, paused = false): void {
    if (!this.inflight.delete(batch)) return;
    if (batch.timer) this.clock.clearTimeout(batch.timer);
    batch.timer = undefined;
    if (!rewind) return;
    const first = batch.firstSentAt;
    if (first !== undefined) {
      const m = this.releasedSentAt;
      const now = this.clock.now();
      const entry: ReleasedSend = paused ? pausedSince(first, now) : { at: first, paused: false };
      batch.pending.forEachPending((seq) => {
        const known = m.get(seq);
        if (known === undefined || releasedFirstSend(entry, now) < releasedFirstSend(known, now)) m.set(seq, entry);
      });
      // Seqs evicted before they went again are never claimed: the oldest entries go (insertion order).
      if (m.size > this.maxReleasedSeqs) {
        let excess = m.size - this.maxReleasedSeqs;
        for (const seq of m.keys()) {
          if (excess-- <= 0) break;
          m.delete(seq);
        }
      }
    }
    this.rewinds++;
    for (const [sev, min] of Object.entries(batch.minSeq) as Array<[Severity, number]>) {
      if (min - 1 < this.cursor[sev]) this.cursor[sev] = min - 1;
    }
  }

  private releaseAll(): void {
    for (const b of [...this.inflight]) this.release(b, true, true);
    // Events released earlier by an ack timeout and not yet sent again wait for the connection
    // now, not for an ack: their clock stops too (found by a review). One pass per lost connection.
    if (this.releasedSentAt.size > 0) {
      const now = this.clock.now();
      // Entries are shared by the seqs of one batch: each converted once.
      const paused = new Map<ReleasedSend, ReleasedSend>();
      for (const [seq, r] of this.releasedSentAt) {
        if (r.paused) continue;
        let p = paused.get(r);
        if (!p) {
          p = pausedSince(r.at, now);
          paused.set(r, p);
        }
        this.releasedSentAt.set(seq, p);
      }
    }
    this.lingerSince = null;
    if (this.lingerTimer) this.clock.clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
  }

  // ---- acks ----------------------------------------------------------------

  private onAckMessage(payload: Buffer, retained = false): void {
    let ack: ReturnType<typeof decodeAck>;
    try {
      if (payload.length > this.maxAckBytes) throw new Error(`ack payload of ${payload.length} bytes, over ${this.maxAckBytes}: not parsed`);
      ack = decodeAck(payload);
    } catch (err) {
      // Once a minute at most, with the count since: a central looping on a bad ack wrote a line per message.
      const malformedAcks = this.malformedAcks.hit(this.clock.now());
      if (malformedAcks !== undefined) {
        this.log.warn(
          { err: (err as Error).message, payload: payload.subarray(0, 200).toString('utf8'), malformedAcks },
          'ignoring malformed ack',
        );
      }
      return;
    }
    if (ack.epoch !== this.outbox.epoch) {
      // The same pacing: a second box with this site/edge, or a central acking a store that was
      // rebuilt, wrote a line per ack (3,000 acks, 3,000 lines, seen in a review).
      const acks = this.otherEpochAcks.hit(this.clock.now());
      if (acks !== undefined) this.log.warn({ ackEpoch: ack.epoch, epoch: this.outbox.epoch, acks }, 'ignoring ack for another outbox epoch');
      return;
    }
    if (retained && !this.warnedRetainedAck) {
      // Replayed by the broker at every connect. Harmless (it covers only seqs acked
      // before), but a central that retains acks is misconfigured: say so once.
      this.warnedRetainedAck = true;
      this.log.warn({ topic: this.topics.ack }, 'a retained ack on the ack topic: the central should publish acks without retain');
    }
    // Only seqs this outbox has handed out: a valid but wide ack (20,000 ranges up to
    // MAX_SAFE_INTEGER, measured) otherwise cost seconds of bookkeeping, alarms waiting.
    let lastSeq: number;
    try {
      lastSeq = this.outbox.stats().lastSeq;
    } catch {
      return; // the outbox is closing: nothing to delete now; unacked events are resent later
    }
    const ranges = this.clipToSent(normalizeRanges(ack.seqs, lastSeq));
    if (ranges.length > 0) this.queueAck(ranges);
  }

  private markSent(ranges: Array<[number, number]>): void {
    if (ranges.length === 0) return;
    // A store rebuilt in this process starts a new epoch, its seqs from where it found them:
    // what was sent under the old one says nothing about the new one's seqs.
    if (this.sentEpoch !== this.outbox.epoch) {
      this.sentEpoch = this.outbox.epoch;
      this.sentRanges = [];
    }
    const last = this.sentRanges.at(-1);
    // Usually the next seqs after everything sent: extend, no merge of the whole list.
    if (ranges.length === 1 && last && ranges[0][0] > last[1]) {
      if (ranges[0][0] === last[1] + 1) last[1] = ranges[0][1];
      else this.sentRanges.push(ranges[0]);
    } else {
      // Linear: the record may hold thousands of ranges, and this runs for every batch sent.
      this.sentRanges = mergeSortedRanges(this.sentRanges, ranges);
    }
    let inflightSeqs = 0;
    for (const b of this.inflight) inflightSeqs += b.pending.size;
    keepNewestRanges(this.sentRanges, SPARE_SENT_RANGES + 2 * inflightSeqs);
  }

  /**
   * The part of a central's ack this uplink has sent. An ack is trusted only
   * for what the central can have: one that acked each batch as its
   * first-to-last seq range ([[18, 20]] for a batch of 18 and 20, the alarm
   * 19 going alone in a batch the central lost) deleted a fire alarm never
   * delivered (seen in a review). The rest is ignored, and said once a
   * minute. Also what a previous process sent: after a restart everything
   * stored is sent again anyway, and an ack for the earlier copy deleted,
   * after a reboot during an outage, a backlog never delivered.
   */
  private clipToSent(ranges: Array<[number, number]>): Array<[number, number]> {
    const allowed = this.sentEpoch === this.outbox.epoch ? this.sentRanges : [];
    const out: Array<[number, number]> = [];
    let dropped = 0;
    let j = 0;
    for (const [from, to] of ranges) {
      let covered = 0;
      while (j < allowed.length && allowed[j][1] < from) j++;
      for (let k = j; k < allowed.length && allowed[k][0] <= to; k++) {
        const lo = Math.max(from, allowed[k][0]);
        const hi = Math.min(to, allowed[k][1]);
        if (lo <= hi) {
          out.push([lo, hi]);
          covered += hi - lo + 1;
        }
      }
      dropped += to - from + 1 - covered;
    }
    if (dropped > 0) {
      if (this.unsentAckLog.hit(this.clock.now()) !== undefined) {
        // Info, not a warning: a resent batch acked twice lands here too (its first ack took them).
        this.log.info(
          { seqs: dropped },
          'an ack covers seqs not in flight (acked already, or never sent): ignored for those (a central must ack only the seqs it stored)',
        );
      }
    }
    return mergeRanges(out);
  }

  /**
   * Apply acks in arrival order, one at a time; those that arrive while one is
   * being applied are merged into the next outbox write. One write per ack
   * message capped the drain at one ack per group commit (behind the fsync of
   * concurrent appends), however many the central sent.
   */
  private queueAck(ranges: Array<[number, number]>): void {
    for (const r of ranges) this.pendingAcks.push(r);
    if (this.acking) return;
    this.acking = true;
    this.ackChain = (async () => {
      try {
        while (this.pendingAcks.length > 0) {
          // Merged first: acks pile up while one is applied (late and repeated acks of resent
          // batches, measured: 22,667 ranges waiting), and each range costs the store a lookup.
          const next = mergeRanges(this.pendingAcks);
          this.pendingAcks = [];
          await this.applyAck(next);
        }
      } finally {
        this.acking = false;
      }
    })();
  }

  /** Delete acknowledged seqs (sorted and merged by queueAck) from the outbox, then settle the batches they complete. */
  private async applyAck(ranges: Array<[number, number]>): Promise<void> {
    if (ranges.length === 0) return;
    let deleted: number;
    try {
      deleted = await this.outbox.ack(ranges);
    } catch (err) {
      // The store could not delete them (disk full): nothing is forgotten, the ack is applied
      // again shortly. A PUBACK (ack: broker) comes only once, and its batch has no ack timeout:
      // without this it stayed in flight, neither deleted nor resent, until a reconnect.
      const level = isEdgewardError(err, 'EDGE_OUTBOX_WRITE_FAILED') ? 'debug' : 'error';
      this.log[level]({ err }, 'outbox ack failed; retrying');
      for (const r of ranges) this.failedAcks.push(r);
      if (!this.ackRetryTimer && this.running) {
        this.ackRetryTimer = this.clock.setTimeout(() => {
          this.ackRetryTimer = null;
          if (!this.running) return;
          const again = this.failedAcks;
          this.failedAcks = [];
          this.queueAck(again);
        }, ACK_RETRY_MS);
      }
      return;
    }
    // Acked: no longer what an ack may delete (bounded by what is in flight; it grew by one range
    // per kept warning among evicted events, 1,125 after four outages, seen in a review).
    this.sentRanges = subtractRanges(this.sentRanges, ranges);
    const now = this.clock.now();
    let lagMs: number | undefined;
    /** Per kind (critical or not): the send time of the latest batch this ack completed promptly. */
    const promptSentAt: { critical?: number; normal?: number } = {};
    for (const batch of [...this.inflight]) {
      // Each ack usually covers one batch of the window: skip the others without visiting their seqs.
      const { lo, hi } = batch.pending;
      if (!ranges.some(([from, to]) => to >= lo && from <= hi)) continue;
      batch.pending.ack(ranges);
      if (batch.pending.size === 0) {
        lagMs = now - batch.sentAt;
        // Acks well within the timeout again: pace down, a step at a time.
        if (batch.timeoutMs !== undefined && lagMs < batch.timeoutMs / 2) this.ackBackoff = Math.max(1, this.ackBackoff / 2);
        // Within half the configured timeout (not the paced one): a central that fast left
        // nothing sent a whole timeout before unacked, unless it never got it.
        if (batch.timeoutMs !== undefined && lagMs < this.ackTimeoutMs / 2) {
          const kind = batch.critical ? 'critical' : 'normal';
          promptSentAt[kind] = Math.max(promptSentAt[kind] ?? batch.sentAt, batch.sentAt);
        }
        this.release(batch, false);
      }
    }
    if (promptSentAt.critical !== undefined || promptSentAt.normal !== undefined) this.resendMissed(promptSentAt);
    // Acks flow again: the next timeout starts a new spell, with a line of its own.
    if (lagMs !== undefined) this.resends = { loggedAt: null, batches: 0, events: 0 };
    this.lastAckAt = new Date(now).toISOString();
    if (lagMs !== undefined) this.ackLagMs = lagMs;
    this.forgetReleased(ranges);
    if (deleted > 0 || lagMs !== undefined) this.acksFlow();
    this.emit('ack', lagMs === undefined ? { events: deleted } : { events: deleted, lagMs });
    this.pump();
  }

  /** Acked seqs released earlier (a late ack of their first copy) wait for nothing any more. */
  private forgetReleased(ranges: ReadonlyArray<readonly [number, number]>): void {
    const m = this.releasedSentAt;
    if (m.size === 0) return;
    for (const [from, to] of ranges) {
      if (to - from < m.size) {
        for (let q = from; q <= to; q++) m.delete(q);
      } else {
        for (const seq of m.keys()) if (seq >= from && seq <= to) m.delete(seq);
      }
    }
  }
}

/**
 * Ack ranges as the outbox needs them: clamped to [1, lastSeq] (seqs never
 * handed out cannot be acked), empty ones dropped, sorted and merged where
 * they overlap or touch. At most one range per gap between acked seqs, each
 * within what exists: the work of an ack is bounded by the store, not by
 * what a central (or a forger with the ack topic) sends.
 */
export function normalizeRanges(ranges: ReadonlyArray<readonly [number, number]>, lastSeq: number): Array<[number, number]> {
  const clamped: Array<[number, number]> = [];
  for (const [from, to] of ranges) {
    const lo = Math.max(1, from);
    const hi = Math.min(lastSeq, to);
    if (lo <= hi) clamped.push([lo, hi]);
  }
  return mergeRanges(clamped);
}

/**
 * The seqs of one in-flight batch that no ack has covered yet: a sorted array
 * and a flag per seq, instead of a Set per batch plus a Map from every seq to
 * its batch. Those cost the event loop ~7 hash-table operations per event
 * (claim, exclude checks, ack, release); the window holds a few batches, so
 * "is this seq in flight" is a range check per batch and a binary search.
 */
export class PendingSeqs {
  /** Ascending. */
  private readonly seqs: number[];
  private readonly acked: Uint8Array;
  /** How many are not acknowledged yet. */
  size: number;

  constructor(seqs: number[]) {
    this.seqs = seqs.sort((a, b) => a - b);
    this.acked = new Uint8Array(this.seqs.length);
    this.size = this.seqs.length;
  }

  /** Lowest and highest seq of the batch: an ack outside them cannot concern it. */
  get lo(): number {
    return this.seqs[0];
  }

  get hi(): number {
    return this.seqs[this.seqs.length - 1];
  }

  has(seq: number): boolean {
    const s = this.seqs;
    if (this.size === 0 || seq < s[0] || seq > s[s.length - 1]) return false;
    let lo = 0;
    let hi = s.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (s[mid] < seq) lo = mid + 1;
      else if (s[mid] > seq) hi = mid - 1;
      else return this.acked[mid] === 0;
    }
    return false;
  }

  /** Mark the seqs covered by `merged` (sorted, disjoint inclusive ranges) acknowledged; returns how many were pending. */
  ack(merged: ReadonlyArray<readonly [number, number]>): number {
    const s = this.seqs;
    let n = 0;
    let r = 0;
    for (let i = 0; i < s.length && r < merged.length; i++) {
      while (r < merged.length && merged[r][1] < s[i]) r++;
      if (r === merged.length) break;
      if (s[i] >= merged[r][0] && this.acked[i] === 0) {
        this.acked[i] = 1;
        n++;
      }
    }
    this.size -= n;
    return n;
  }

  forEachPending(fn: (seq: number) => void): void {
    for (let i = 0; i < this.seqs.length; i++) if (this.acked[i] === 0) fn(this.seqs[i]);
  }

  /** The seqs not yet acknowledged, as inclusive ranges. */
  ranges(): Array<[number, number]> {
    return toRanges(this.seqs.filter((_, i) => this.acked[i] === 0));
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (err) => {
        clearTimeout(t);
        reject(err);
      },
    );
  });
}

/**
 * Drop the oldest ranges past `max` (in place). For the sent-seq record:
 * seqs sent and then evicted unacked are never acked, and left a range each
 * between acked ones (306 ranges after three outage rounds, growing; seen in
 * a review). A seq dropped from it that is still stored is resent after its
 * timeout and recorded again: an ack waits for that, nothing is lost.
 */
export function keepNewestRanges(ranges: Array<[number, number]>, max: number): void {
  if (ranges.length > max) ranges.splice(0, ranges.length - max);
}

/** `a` without the seqs of `b` (both sorted and merged). */
export function subtractRanges(a: Array<[number, number]>, b: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let j = 0;
  for (const [from, to] of a) {
    while (j < b.length && b[j][1] < from) j++;
    let lo = from;
    for (let k = j; lo <= to; k++) {
      if (k >= b.length || b[k][0] > to) {
        out.push([lo, to]);
        break;
      }
      if (b[k][0] > lo) out.push([lo, b[k][0] - 1]);
      lo = Math.max(lo, b[k][1] + 1);
    }
  }
  return out;
}

/**
 * A released event's first send: `at` is that time (released by an ack
 * timeout: the wait goes on counting), or, `paused`, its age at release
 * (released for want of a connection: that wait is not waiting for an ack).
 */
interface ReleasedSend {
  at: number;
  paused: boolean;
}

/** The first send time a released event stands for now (see ReleasedSend). */
function releasedFirstSend(r: ReleasedSend, now: number): number {
  return r.paused ? now - r.at : r.at;
}

/** Stop the clock of a send made at `firstSentAt`: its age as of now (never negative: a clock stepped back). */
function pausedSince(firstSentAt: number, now: number): ReleasedSend {
  return { at: Math.max(0, now - firstSentAt), paused: true };
}

/** Merge two lists of sorted, disjoint inclusive ranges into one (overlapping or adjacent ones joined), in linear time. */
export function mergeSortedRanges(
  a: ReadonlyArray<readonly [number, number]>,
  b: ReadonlyArray<readonly [number, number]>,
): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const r = j >= b.length || (i < a.length && a[i][0] <= b[j][0]) ? a[i++] : b[j++];
    const last = out[out.length - 1];
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

/** Sort and merge overlapping or adjacent inclusive ranges. */
function mergeRanges(ranges: Array<[number, number]>): Array<[number, number]> {
  const sorted = ranges.map(([a, b]): [number, number] => [a, b]).sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push(r);
  }
  return out;
}

/**
 * `client.publish` with Node's Buffer pool off for the call. mqtt-packet
 * (9.0.2, `varByteIntCache` in writeToStream.js) keeps, for good, the 1-4
 * byte "remaining length" header of every packet length below 16,384 it has
 * written, made by `Buffer.allocUnsafe`: a slice of Node's shared 8 KiB pool,
 * so each cached header kept a whole slab alive. Gzipped batches come in
 * ever new lengths, and between two of them the pool moves on by kilobytes:
 * JS ArrayBuffers grew by an 8 KiB slab per new length, without end but for
 * the 16,384 lengths (128 MiB). Measured in a process publishing batches of
 * 20 gzipped events: +272 KiB after 3,000 batches, +376 KiB after 10,000;
 * with the pool off here, +0 in both (a header then holds its own 4 bytes).
 * The call is synchronous down to the socket write (mqtt.js's in-memory store
 * calls back at once), so nothing else allocates meanwhile; `poolSize` is
 * read by every `allocUnsafe`, and put back before anything else runs.
 * Filling mqtt-packet's cache at start was tried instead: 10 MB of RSS at once.
 */
function publishUnpooled(
  client: MqttClient,
  topic: string,
  payload: string | Buffer,
  opts: { qos: 1; retain?: boolean },
  callback: (err?: Error) => void,
): void {
  const pool = Buffer.poolSize;
  Buffer.poolSize = 0;
  try {
    client.publish(topic, payload, opts, callback);
  } finally {
    Buffer.poolSize = pool;
  }
}
