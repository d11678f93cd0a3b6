import type { Clock } from '../../edge/clock.js';
import { EdgewardError } from '../../edge/errors.js';
import type { Logger } from '../../edge/log.js';
import { PacedCount } from '../../edge/paced.js';
import type { Resource } from '../../edge/registry.js';
import { crcOk, rtuFrame } from './crc.js';
import { type ByteLink, SerialLink, TcpLink } from './link.js';
import {
  decodeReply,
  FC,
  isBitRead,
  MAX_READ_BITS,
  MAX_READ_REGISTERS,
  readPdu,
  rtuReplyLength,
  writeCoilPdu,
  writeRegisterPdu,
  writeRegistersPdu,
} from './pdu.js';

/** Settings of one Modbus bus (the `edgeward-modbus-bus` config node). */
export interface ModbusBusOptions {
  transport: 'rtu' | 'tcp';
  /** Serial device (rtu). */
  path?: string;
  baudRate?: number;
  parity?: 'none' | 'even' | 'odd';
  /** RTU stop bits (default 1; Modbus RTU asks for 2 without parity, and a strict 8N2 unit needs them). */
  stopBits?: 1 | 2;
  /** Modbus TCP server (tcp). */
  host?: string;
  port?: number;
  /** Per-request reply timeout (default 200 ms). */
  timeoutMs?: number;
  /**
   * RTU: silence after a partial reply that ends it as a short frame
   * (default max(3.5 characters, 20 ms): USB adapters deliver in 1–16 ms chunks).
   */
  frameGapMs?: number;
  /** Reconnect backoff after the device disappears (defaults 100 ms doubling to 5 s). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Merge queued reads of the same unit and table whose ranges are at most this many addresses apart (default 8). */
  coalesceGap?: number;
  /**
   * TCP: a connection on which no reply at all came for this long, with at
   * least WEDGED_TCP_TIMEOUTS timeouts since the last one, is reopened
   * (default max(30 s, 10 × timeoutMs); see silentTimeouts).
   */
  wedgedAfterMs?: number;
}

/** What the bus needs from its owner; `link` replaces the serial/TCP link (tests, benches). */
export interface ModbusBusContext {
  clock: Clock;
  log: Logger;
  link?: ByteLink;
}

/** Options of one request. */
export interface RequestOptions {
  timeoutMs?: number;
  /**
   * Commands go before polls: a door unlock must not wait behind a poll round.
   * `probe`: a poll of a unit that did not answer its last one. Probes go
   * after the other polls, at most one every `probeGapMs`, so dead units
   * cannot take the line from live ones (see `nextJob`).
   */
  priority?: 'high' | 'normal' | 'probe';
}

/** Counters for status, metrics and benches. */
export interface ModbusBusStats {
  transactions: number;
  timeouts: number;
  crcErrors: number;
  exceptions: number;
  garbled: number;
  coalesced: number;
  reconnects: number;
}

interface Waiter {
  address: number;
  count: number;
  resolve(v: unknown): void;
  reject(err: Error): void;
}

interface Job {
  unit: number;
  fc: number;
  /** For reads: the (possibly merged) range; for writes: the prepared PDU. */
  address: number;
  count: number;
  pdu?: Buffer;
  timeoutMs: number;
  waiters: Waiter[];
}

interface InFlight {
  job: Job;
  request: Buffer;
  rx: Buffer[];
  rxLen: number;
  txId: number;
  timer?: NodeJS.Timeout;
  gapTimer?: NodeJS.Timeout;
  /** The unit of a complete frame of another unit skipped while waiting (RTU): named if ours never comes. */
  foreign?: number;
}

/** Timeouts since the last reply after which a silent TCP connection may be reopened (see silentTimeouts). */
const WEDGED_TCP_TIMEOUTS = 5;
/** How long a TCP connection must have had no reply at all to be reopened (at least; see silentTimeouts). */
const WEDGED_TCP_MS = 30_000;
const CODES = {
  timeout: 'EDGE_MODBUS_TIMEOUT',
  crc: 'EDGE_MODBUS_CRC',
  garbled: 'EDGE_MODBUS_GARBLED',
  short: 'EDGE_MODBUS_SHORT_REPLY',
  disconnected: 'EDGE_MODBUS_DISCONNECTED',
  notConnected: 'EDGE_MODBUS_NOT_CONNECTED',
  closed: 'EDGE_MODBUS_CLOSED',
  badRequest: 'EDGE_MODBUS_BAD_REQUEST',
} as const;

/**
 * One Modbus bus (an RS-485 line or a TCP connection) with exactly one
 * transaction queue. The unit id travels with each request; a timeout, CRC
 * error, exception or garbled reply fails that request only and the queue
 * moves on to the next one. Reads of adjacent ranges queued together are
 * merged into one transaction. After the device disappears the bus reopens
 * it with exponential backoff; requests made meanwhile fail fast with
 * `EDGE_MODBUS_NOT_CONNECTED`.
 */
export class ModbusBus implements Resource {
  readonly stats: ModbusBusStats = {
    transactions: 0,
    timeouts: 0,
    crcErrors: 0,
    exceptions: 0,
    garbled: 0,
    coalesced: 0,
    reconnects: 0,
  };
  private link?: ByteLink;
  private connected = false;
  private closed = false;
  private started = false;
  private readonly high: Job[] = [];
  private readonly normal: Job[] = [];
  private readonly probes: Job[] = [];
  private lastProbeAt = Number.NEGATIVE_INFINITY;
  private inflight?: InFlight;
  private pumpScheduled = false;
  private quietUntil = 0;
  /** performance.now() of the last byte received: RTU frames need 3.5 characters of silence after it. */
  private lastRxAt = Number.NEGATIVE_INFINITY;
  private quietTimer?: NodeJS.Timeout;
  private probeTimer?: NodeJS.Timeout;
  private reconnectTimer?: NodeJS.Timeout;
  private reconnectAttempt = 0;
  /**
   * A reply (or an exception: the device answered) came over the current
   * link. Only then is the reconnect backoff reset: a TCP gateway that
   * accepts each connection and closes it at once was reopened 10 times a
   * second for good, two log lines each time (found by a review).
   */
  private linkWorked = false;
  /**
   * Timeouts on the current TCP link since its last reply (from any unit),
   * and when that reply came (or the link opened). Past WEDGED_TCP_TIMEOUTS
   * and `wedgedAfterMs` of silence the connection is reopened: a gateway
   * whose session wedged (it takes requests and never answers on that
   * connection) kept every door behind it offline for good, while a new
   * connection would have worked (found by a review). Timeouts alone are not
   * enough: five dead units polled in a row after a reconnect reopened the
   * link again and again, the healthy doors behind it offline (found by the
   * next review). Not on RTU: a line has no session to renew.
   */
  private silentTimeouts = 0;
  private lastReplyAt = 0;
  /** Links lost before any reply, since the last line about them. */
  private deadLinks = 0;
  private readonly deadLinkLog = new PacedCount(60_000);
  private lastOpenError: string | undefined;
  private txId = 0;
  private readonly log: Logger;
  private readonly listeners = new Set<(connected: boolean) => void>();

  constructor(
    readonly options: ModbusBusOptions,
    private readonly ctx: ModbusBusContext,
  ) {
    this.log = ctx.log.child({
      module: 'drivers/modbus',
      bus: options.transport === 'rtu' ? options.path : `${options.host}:${options.port}`,
    });
  }

  get isConnected(): boolean {
    return this.connected;
  }

  /** A human-readable name of the line: the serial path or host:port. */
  get label(): string {
    return this.options.transport === 'rtu'
      ? String(this.options.path)
      : `${this.options.host}:${this.options.port}`;
  }

  /** Called with true/false whenever the link comes up or goes down. Returns an unsubscribe function. */
  onConnection(listener: (connected: boolean) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Open the link. Never rejects for a missing device: it keeps retrying in the background. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.closed = false;
    await this.connect();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.reconnectTimer) this.ctx.clock.clearTimeout(this.reconnectTimer);
    if (this.quietTimer) this.ctx.clock.clearTimeout(this.quietTimer);
    if (this.probeTimer) this.ctx.clock.clearTimeout(this.probeTimer);
    this.failAll(new EdgewardError(CODES.closed, `bus ${this.label} closed`));
    const link = this.link;
    this.link = undefined;
    this.setConnected(false);
    await link?.close();
  }

  readCoils(unit: number, address: number, count: number, opts?: RequestOptions): Promise<boolean[]> {
    return this.read(unit, FC.readCoils, address, count, opts) as Promise<boolean[]>;
  }
  readDiscreteInputs(
    unit: number,
    address: number,
    count: number,
    opts?: RequestOptions,
  ): Promise<boolean[]> {
    return this.read(unit, FC.readDiscreteInputs, address, count, opts) as Promise<boolean[]>;
  }
  readHoldingRegisters(
    unit: number,
    address: number,
    count: number,
    opts?: RequestOptions,
  ): Promise<number[]> {
    return this.read(unit, FC.readHoldingRegisters, address, count, opts) as Promise<number[]>;
  }
  readInputRegisters(unit: number, address: number, count: number, opts?: RequestOptions): Promise<number[]> {
    return this.read(unit, FC.readInputRegisters, address, count, opts) as Promise<number[]>;
  }
  async writeCoil(unit: number, address: number, value: boolean, opts?: RequestOptions): Promise<void> {
    await this.write(
      unit,
      this.build(() => writeCoilPdu(address, value)),
      opts,
    );
  }
  async writeRegister(unit: number, address: number, value: number, opts?: RequestOptions): Promise<void> {
    await this.write(
      unit,
      this.build(() => writeRegisterPdu(address, value)),
      opts,
    );
  }
  async writeRegisters(
    unit: number,
    address: number,
    values: number[],
    opts?: RequestOptions,
  ): Promise<void> {
    await this.write(
      unit,
      this.build(() => writeRegistersPdu(address, values)),
      opts,
    );
  }

  private read(
    unit: number,
    fc: number,
    address: number,
    count: number,
    opts: RequestOptions = {},
  ): Promise<unknown> {
    const max = isBitRead(fc) ? MAX_READ_BITS : MAX_READ_REGISTERS;
    const bad = this.checkUnit(unit);
    if (bad) return Promise.reject(bad);
    if (
      !Number.isInteger(address) ||
      address < 0 ||
      !Number.isInteger(count) ||
      count < 1 ||
      count > max ||
      address + count > 0x10000
    ) {
      return Promise.reject(
        new EdgewardError(CODES.badRequest, `bad read range ${address}+${count} for function ${fc}`),
      );
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { address, count, resolve, reject };
      const queue = this.queueOf(opts.priority ?? 'normal');
      if (!this.merge(queue, unit, fc, waiter, max)) {
        queue.push({
          unit,
          fc,
          address,
          count,
          timeoutMs: opts.timeoutMs ?? this.timeoutMs,
          waiters: [waiter],
        });
      }
      this.schedule();
    });
  }

  private write(unit: number, pdu: Buffer, opts: RequestOptions = {}): Promise<unknown> {
    const bad = this.checkUnit(unit);
    if (bad) return Promise.reject(bad);
    return new Promise((resolve, reject) => {
      const queue = this.queueOf(opts.priority ?? 'high');
      queue.push({
        unit,
        fc: pdu[0],
        address: 0,
        count: 0,
        pdu,
        timeoutMs: opts.timeoutMs ?? this.timeoutMs,
        waiters: [{ address: 0, count: 0, resolve, reject }],
      });
      this.schedule();
    });
  }

  private checkUnit(unit: number): EdgewardError | undefined {
    // Unit 0 is broadcast (no reply); TCP allows 255 for "the server itself".
    if (!Number.isInteger(unit) || unit < 1 || unit > 255)
      return new EdgewardError(CODES.badRequest, `bad unit id ${unit}`);
    return undefined;
  }

  /** PDU builders throw RangeError on bad numbers: turn that into the bus's own error code. */
  private build(make: () => Buffer): Buffer {
    try {
      return make();
    } catch (err) {
      throw new EdgewardError(CODES.badRequest, `bad write request: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /** Coalesce a read into a queued one of the same unit and table when the merged range stays small and within limits. */
  private merge(queue: Job[], unit: number, fc: number, w: Waiter, max: number): boolean {
    const gap = this.options.coalesceGap ?? 8;
    for (const job of queue) {
      if (job.pdu || job.unit !== unit || job.fc !== fc) continue;
      const lo = Math.min(job.address, w.address);
      const hi = Math.max(job.address + job.count, w.address + w.count);
      const apart = Math.max(w.address - (job.address + job.count), job.address - (w.address + w.count));
      if (apart > gap || hi - lo > max) continue;
      job.address = lo;
      job.count = hi - lo;
      job.waiters.push(w);
      this.stats.coalesced++;
      return true;
    }
    return false;
  }

  private get timeoutMs(): number {
    return this.options.timeoutMs ?? 200;
  }

  private get charMs(): number {
    return (11 * 1000) / (this.options.baudRate ?? 9600);
  }

  private get frameGapMs(): number {
    return this.options.frameGapMs ?? Math.max(3.5 * this.charMs, 20);
  }

  /** Dispatch on the next turn, so requests made in the same tick can still be merged. */
  private schedule(): void {
    if (this.pumpScheduled || this.inflight) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    if (this.inflight || this.quietTimer) return;
    if (!this.connected) {
      this.failAll(new EdgewardError(CODES.notConnected, `bus ${this.label} is not connected`));
      return;
    }
    // The 3.5-character gap runs from the last byte on the line (0.33 ms at 115200 baud), measured with
    // performance.now(): a timer would round it up to 1 ms or more.
    const gap = this.options.transport === 'rtu' ? this.lastRxAt + 3.5 * this.charMs : 0;
    const wait = Math.max(this.quietUntil, gap) - performance.now();
    if (wait > 0) {
      // RTU needs 3.5 characters of silence between frames, and a moment after a failed reply for stray bytes to drain.
      // Timers round up to 1 ms, so short gaps are waited out by yielding turns instead.
      if (wait < 1.5) {
        this.pumpScheduled = true;
        setImmediate(() => {
          this.pumpScheduled = false;
          this.pump();
        });
        return;
      }
      this.quietTimer = this.ctx.clock.setTimeout(() => {
        this.quietTimer = undefined;
        this.pump();
      }, wait - 0.5);
      return;
    }
    const job = this.nextJob();
    if (!job) {
      // Only probes wait, their gap not over: come back when it is.
      if (this.probes.length > 0 && !this.probeTimer) {
        this.probeTimer = this.ctx.clock.setTimeout(
          () => {
            this.probeTimer = undefined;
            this.pump();
          },
          Math.max(1, this.lastProbeAt + this.probeGapMs - this.ctx.clock.now()),
        );
      }
      return;
    }
    const pdu = job.pdu ?? readPdu(job.fc, job.address, job.count);
    const tcp = this.options.transport === 'tcp';
    this.txId = (this.txId + 1) & 0xffff;
    const txId = this.txId;
    let request: Buffer;
    if (tcp) {
      request = Buffer.allocUnsafe(7 + pdu.length);
      request.writeUInt16BE(txId, 0);
      request.writeUInt16BE(0, 2);
      request.writeUInt16BE(pdu.length + 1, 4);
      request[6] = job.unit;
      pdu.copy(request, 7);
    } else {
      request = rtuFrame(job.unit, pdu);
    }
    const fl: InFlight = { job, request: pdu, rx: [], rxLen: 0, txId };
    this.inflight = fl;
    this.stats.transactions++;
    fl.timer = this.ctx.clock.setTimeout(() => {
      if (fl.foreign !== undefined) {
        // Only another unit's frame came: a unit set to the wrong address, or a late reply and then nothing.
        this.stats.garbled++;
        this.finish(
          fl,
          new EdgewardError(CODES.garbled, `unit ${job.unit}: reply from unit ${fl.foreign}, none from unit ${job.unit} within ${job.timeoutMs} ms`, {
            details: { unit: job.unit, fc: job.fc },
          }),
        );
        return;
      }
      this.stats.timeouts++;
      this.finish(
        fl,
        new EdgewardError(CODES.timeout, `unit ${job.unit}: no reply within ${job.timeoutMs} ms`, {
          details: { unit: job.unit, fc: job.fc },
        }),
      );
    }, job.timeoutMs);
    this.link!.write(request);
  }

  private onData(chunk: Buffer): void {
    this.lastRxAt = performance.now();
    const fl = this.inflight;
    if (!fl) return; // stray bytes between transactions (late replies, line noise) are dropped
    fl.rx.push(chunk);
    fl.rxLen += chunk.length;
    if (this.options.transport === 'tcp') this.parseTcp(fl);
    else this.parseRtu(fl);
  }

  /**
   * RTU has no transaction id: the reply is the frame for this unit and
   * function with a good CRC. Measured before this, each of these failed the
   * request in flight: a complete frame of another unit ahead of ours (a slow
   * unit's late reply, which then knocked a healthy unit on the same line
   * offline for good, both drivers backing off in lock-step), and one noise
   * byte before a good reply. Now complete foreign frames are skipped and our
   * frame is looked for past any noise; what is left when the line goes quiet
   * fails with the most specific error (another unit, function, CRC, short).
   */
  private parseRtu(fl: InFlight): void {
    // Bytes came: the line is not quiet. Re-armed below if what is there is still not a reply
    // (left armed, a foreign frame completed by this chunk and skipped would fail us later).
    if (fl.gapTimer) this.ctx.clock.clearTimeout(fl.gapTimer);
    fl.gapTimer = undefined;
    let buf = fl.rx.length === 1 ? fl.rx[0] : Buffer.concat(fl.rx, fl.rxLen);
    const unit = fl.job.unit;
    const fc = fl.job.fc;
    while (buf.length >= 2 && buf[0] !== unit) {
      const n = rtuReplyLength(buf[1] & 0x7f, buf);
      if (n === undefined || buf.length < n || !crcOk(buf.subarray(0, n))) break;
      fl.foreign = buf[0];
      buf = buf.subarray(n);
    }
    fl.rx = buf.length > 0 ? [buf] : [];
    fl.rxLen = buf.length;
    if (buf.length === 0) return;
    for (let i = 0; i < buf.length; i++) {
      if (buf[i] !== unit || (i + 1 < buf.length && buf[i + 1] !== fc && buf[i + 1] !== (fc | 0x80))) continue;
      const frame = buf.subarray(i);
      const need = rtuReplyLength(fc, frame);
      if (need === undefined || frame.length < need || !crcOk(frame.subarray(0, need))) continue;
      if (i > 0) this.stats.garbled++;
      this.complete(fl, frame.subarray(1, need - 2));
      return;
    }
    // Nothing complete yet: the line going quiet ends it, well before the request timeout.
    fl.gapTimer = this.ctx.clock.setTimeout(() => this.failRtu(fl), this.frameGapMs);
  }

  /** The line went quiet without a good reply in `fl.rx`: say what came instead. */
  private failRtu(fl: InFlight): void {
    const buf = fl.rx.length === 1 ? fl.rx[0] : Buffer.concat(fl.rx, fl.rxLen);
    const unit = fl.job.unit;
    const fc = fl.job.fc;
    const need = rtuReplyLength(fc, buf);
    let err: EdgewardError;
    if (buf[0] !== unit) {
      err = new EdgewardError(CODES.garbled, `unit ${unit}: reply from unit ${buf[0]}`, { details: { unit } });
    } else if (buf.length >= 2 && buf[1] !== fc && buf[1] !== (fc | 0x80)) {
      err = new EdgewardError(CODES.garbled, `unit ${unit}: reply with function ${buf[1]}`, { details: { unit } });
    } else if (need !== undefined && buf.length >= need) {
      this.stats.crcErrors++;
      this.finish(fl, new EdgewardError(CODES.crc, `unit ${unit}: CRC error in reply`, { details: { unit } }));
      return;
    } else {
      err = new EdgewardError(CODES.short, `unit ${unit}: short reply (${fl.rxLen} bytes)`, { details: { unit } });
    }
    this.stats.garbled++;
    this.finish(fl, err);
  }

  private parseTcp(fl: InFlight): void {
    let buf = fl.rx.length === 1 ? fl.rx[0] : Buffer.concat(fl.rx, fl.rxLen);
    // A loop, not a call per skipped frame: 64 KiB of 7-byte foreign frames in one read overflowed
    // the stack and killed the runtime, every door with it (found by a review).
    let len: number;
    for (;;) {
      fl.rx = buf.length ? [buf] : [];
      fl.rxLen = buf.length;
      if (buf.length < 7) return;
      len = buf.readUInt16BE(4);
      if (buf.length < 6 + len) return;
      if (buf.readUInt16BE(0) === fl.txId && buf.readUInt16BE(2) === 0 && len >= 2) break;
      // A late reply to an earlier (timed-out) transaction: skip it and keep waiting for ours.
      buf = buf.subarray(6 + len);
    }
    const frame = buf.subarray(0, 6 + len);
    if (frame[6] !== fl.job.unit) {
      this.stats.garbled++;
      this.finish(
        fl,
        new EdgewardError(CODES.garbled, `unit ${fl.job.unit}: reply from unit ${frame[6]}`, {
          details: { unit: fl.job.unit },
        }),
      );
      return;
    }
    this.complete(fl, frame.subarray(7));
  }

  private complete(fl: InFlight, replyPdu: Buffer): void {
    let value: boolean[] | number[] | undefined;
    try {
      value = decodeReply(fl.request, Buffer.from(replyPdu), fl.job.unit);
    } catch (err) {
      if ((err as EdgewardError).code === 'EDGE_MODBUS_EXCEPTION') this.stats.exceptions++;
      else this.stats.garbled++;
      this.finish(fl, err as Error);
      return;
    }
    this.finish(fl, undefined, value);
  }

  private finish(fl: InFlight, err: Error | undefined, value?: boolean[] | number[]): void {
    if (this.inflight !== fl) return;
    this.inflight = undefined;
    const answered = !err || (err as EdgewardError).code !== CODES.timeout;
    if (answered) {
      this.silentTimeouts = 0;
      this.lastReplyAt = performance.now();
    } else if (this.options.transport === 'tcp' && ++this.silentTimeouts >= WEDGED_TCP_TIMEOUTS && this.link) {
      const silentMs = performance.now() - this.lastReplyAt;
      const wedgedMs = this.options.wedgedAfterMs ?? Math.max(WEDGED_TCP_MS, 10 * (this.options.timeoutMs ?? 0));
      if (silentMs >= wedgedMs) {
        this.silentTimeouts = 0;
        const link = this.link;
        void link.close().catch(() => undefined);
        this.linkLost(link, new Error(`no reply for ${Math.round(silentMs / 1000)} s (${WEDGED_TCP_TIMEOUTS}+ timeouts): reopening the connection`));
      }
    }
    if (!this.linkWorked && (!err || (err as EdgewardError).code === 'EDGE_MODBUS_EXCEPTION')) {
      this.linkWorked = true;
      this.reconnectAttempt = 0;
      if (this.deadLinks > 0) {
        this.log.info({ links: this.deadLinks }, 'modbus link answers again');
        this.deadLinks = 0;
      }
    }
    if (fl.timer) this.ctx.clock.clearTimeout(fl.timer);
    if (fl.gapTimer) this.ctx.clock.clearTimeout(fl.gapTimer);
    // After a failure wait for the line to go quiet, so the rest of a bad reply cannot be read as the next one.
    // After a good reply the 3.5-character gap from its last byte (lastRxAt) is enough.
    if (err && this.options.transport === 'rtu') this.quietUntil = performance.now() + this.frameGapMs;
    const job = fl.job;
    for (const w of job.waiters) {
      if (err) w.reject(err);
      else if (value) w.resolve(value.slice(w.address - job.address, w.address - job.address + w.count));
      else w.resolve(undefined);
    }
    if (err && (err as EdgewardError).code !== CODES.timeout)
      this.log.debug({ unit: job.unit, code: (err as EdgewardError).code }, 'modbus request failed');
    this.schedule();
  }

  /** The queue of requests of `priority` (reads default to normal, writes to high). */
  private queueOf(priority: NonNullable<RequestOptions['priority']>): Job[] {
    return priority === 'high' ? this.high : priority === 'probe' ? this.probes : this.normal;
  }

  /**
   * Commands first, then polls; a probe (a poll of a unit that did not
   * answer its last one) once no probe went for `probeGapMs` (4 timeouts, at least 1 s), even on an idle
   * line: a probe's timeout holds the line, and the live polls that come
   * meanwhile wait. So timeouts take at most a quarter of the line's time,
   * however many units are dead; each is probed less often instead. In one
   * first-in-first-out queue, 33 doors on one Modbus TCP gateway polled
   * every 200 ms took 1.6 s (max 6.5 s) to see a forced door with 5 units
   * dead, and with 10 dead missed 86 of 100 (found by a review).
   */
  private nextJob(): Job | undefined {
    const high = this.high.shift();
    if (high) return high;
    const now = this.ctx.clock.now();
    if (this.probes.length > 0 && (now - this.lastProbeAt >= this.probeGapMs || now < this.lastProbeAt)) {
      this.lastProbeAt = now;
      return this.probes.shift();
    }
    return this.normal.shift();
  }

  private get probeGapMs(): number {
    return Math.max(1000, 4 * this.timeoutMs);
  }

  private failAll(err: Error): void {
    const fl = this.inflight;
    if (fl) this.finish(fl, err);
    for (const job of this.high.splice(0).concat(this.normal.splice(0), this.probes.splice(0)))
      for (const w of job.waiters) w.reject(err);
  }

  private setConnected(v: boolean): void {
    if (this.connected === v) return;
    this.connected = v;
    for (const l of this.listeners) l(v);
  }

  private makeLink(): ByteLink {
    if (this.ctx.link) return this.ctx.link;
    const o = this.options;
    if (o.transport === 'tcp')
      return new TcpLink({
        host: o.host ?? '127.0.0.1',
        port: o.port ?? 502,
        connectTimeoutMs: Math.max(1000, this.timeoutMs),
      });
    return new SerialLink({ path: o.path ?? '', baudRate: o.baudRate ?? 9600, parity: o.parity ?? 'none', stopBits: o.stopBits ?? 1 });
  }

  /** Why the link last failed to open (ENOENT, EACCES, ECONNREFUSED…), until it opens. */
  get openError(): string | undefined {
    return this.lastOpenError;
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const link = this.makeLink();
    link.onData = (chunk) => this.onData(chunk);
    link.onLost = (err) => this.linkLost(link, err);
    try {
      await link.open();
    } catch (err) {
      this.lastOpenError = (err as Error).message;
      if (this.reconnectAttempt === 0)
        this.log.warn({ err: (err as Error).message }, 'modbus link unavailable, retrying');
      this.scheduleReconnect();
      return;
    }
    if (this.closed) {
      await link.close();
      return;
    }
    if (this.reconnectAttempt > 0) this.stats.reconnects++;
    this.lastOpenError = undefined;
    this.link = link;
    this.silentTimeouts = 0;
    this.lastReplyAt = performance.now();
    this.quietUntil = 0;
    this.lastRxAt = Number.NEGATIVE_INFINITY;
    this.setConnected(true);
    this.log[this.deadLinks > 0 ? 'debug' : 'info']('modbus link open');
    this.schedule();
  }

  /** `link` is gone (closed by the peer, or by us for want of answers): fail what waits, reconnect. */
  private linkLost(link: ByteLink, err: Error): void {
    if (this.link !== link) return;
    this.link = undefined;
    this.setConnected(false);
    if (this.linkWorked) {
      this.reconnectAttempt = 0;
      this.log.warn({ err: err.message }, 'modbus link lost, reconnecting');
    } else {
      this.deadLinks++;
      // The first of a spell at once (a link that answered ends one).
      if (this.deadLinks === 1) this.deadLinkLog.reset();
      if (this.deadLinkLog.hit(performance.now()) !== undefined) {
        this.log.warn({ err: err.message, links: this.deadLinks }, 'modbus link lost before any reply; reconnecting with backoff');
      } else this.log.debug({ err: err.message }, 'modbus link lost before any reply');
    }
    this.linkWorked = false;
    this.failAll(
      new EdgewardError(CODES.disconnected, `bus ${this.label} disconnected: ${err.message}`, {
        cause: err,
      }),
    );
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer) return;
    const min = this.options.reconnectMinMs ?? 100;
    const max = this.options.reconnectMaxMs ?? 5000;
    const delay = Math.min(max, min * 2 ** this.reconnectAttempt);
    this.reconnectAttempt++;
    this.reconnectTimer = this.ctx.clock.setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.connect();
    }, delay);
  }
}
