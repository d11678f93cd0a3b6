import { createServer, type Server, type Socket } from 'node:net';
import { SerialPort } from 'serialport';
import { crcOk, rtuFrame } from '../../drivers/modbus/crc.js';
import { SerialPortIo } from '../../drivers/modbus/link.js';
import { exceptionPdu, rtuRequestLength, type ServerModel, serveRequest } from '../../drivers/modbus/pdu.js';

/**
 * How one simulated unit misbehaves, as real buses do:
 * `silent` never answers, `bad-crc` answers with a corrupted CRC,
 * `exception` answers every request with exception 4 (server device failure),
 * `short` sends only the first half of its reply, `wrong-unit` answers under another unit id.
 */
export type FaultMode = 'none' | 'silent' | 'bad-crc' | 'exception' | 'short' | 'wrong-unit';

/** What a simulated server serves: the register model, which units exist, and each unit's fault mode. */
export interface SimBackend extends ServerModel {
  hasUnit(unit: number): boolean;
  fault(unit: number): FaultMode;
}

export interface RtuServerOptions {
  path: string;
  baudRate?: number;
  /** Delay each reply by its wire time (request + 3.5-char gap + reply, 11 bits per character). A PTY ignores baud rates. */
  pace?: boolean;
  /** Called when a whole request has arrived and when its reply is written (performance.now() ms): benches split a transaction's time with it. */
  trace?: (event: 'request' | 'reply', at: number) => void;
}

/** How closely paced replies kept to their wire-time target (a sim slower than the wire would inflate a master's figures). */
export interface PacingStats {
  replies: number;
  /** Sum and maximum of (reply written − target), ms. */
  lateMsSum: number;
  lateMsMax: number;
}

function charMs(baud: number): number {
  return (11 * 1000) / baud;
}

/** Wait until `target` (performance.now() ms) with sub-millisecond precision: a timer for the bulk, then yielding turns. */
function waitUntil(target: number, cb: () => void): NodeJS.Timeout | undefined {
  const left = target - performance.now();
  if (left > 2) return setTimeout(() => waitUntil(target, cb), left - 1.5);
  if (left > 0) {
    setImmediate(() => waitUntil(target, cb));
    return undefined;
  }
  cb();
  return undefined;
}

/** Build the reply frame for `unit`/`pdu` per the unit's fault mode, or undefined to stay silent. */
function rtuReply(backend: SimBackend, unit: number, pdu: Buffer): Buffer | undefined {
  const fault = backend.fault(unit);
  if (fault === 'silent') return undefined;
  if (fault === 'exception') return rtuFrame(unit, exceptionPdu(pdu[0], 4));
  const reply = rtuFrame(fault === 'wrong-unit' ? (unit % 247) + 1 : unit, serveRequest(backend, unit, pdu));
  if (fault === 'bad-crc') reply[reply.length - 1] ^= 0x5a;
  if (fault === 'short') return reply.subarray(0, Math.max(2, reply.length >> 1));
  return reply;
}

/**
 * A Modbus RTU server (slave) on a serial path. Frames end by length parsing
 * (every supported request has a computable length); a frame with a bad CRC
 * is dropped, as a real slave does, and the buffer resynchronises.
 */
export class RtuServer {
  private port?: SerialPort;
  private io?: SerialPortIo;
  private buf: Buffer = Buffer.alloc(0);
  private staleTimer?: NodeJS.Timeout;
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Requests answered and requests dropped for a bad CRC (tests check that the master's CRCs are right). */
  readonly counters = { requests: 0, badCrc: 0, byUnit: new Map<number, number>() };
  readonly pacing: PacingStats = { replies: 0, lateMsSum: 0, lateMsMax: 0 };

  constructor(
    private readonly backend: SimBackend,
    private readonly opts: RtuServerOptions,
  ) {}

  start(): Promise<void> {
    const port = new SerialPort({
      path: this.opts.path,
      baudRate: this.opts.baudRate ?? 9600,
      autoOpen: false,
    });
    return new Promise((resolve, reject) => {
      port.open((err) => {
        if (err) return reject(err);
        this.port = port;
        // Direct descriptor I/O, like the master's: the sim must not add thread-pool hops the wire does not have.
        const io = new SerialPortIo(port);
        this.io = io;
        io.onData = (chunk) => this.onData(chunk);
        io.start();
        resolve();
      });
    });
  }

  async stop(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    if (this.staleTimer) clearTimeout(this.staleTimer);
    this.io?.stop();
    this.io = undefined;
    const port = this.port;
    this.port = undefined;
    if (port?.isOpen) await new Promise<void>((r) => port.close(() => r()));
  }

  private onData(chunk: Buffer): void {
    const rxAt = performance.now();
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    for (;;) {
      const need = rtuRequestLength(this.buf);
      if (need === undefined || (need > 0 && this.buf.length < need)) break;
      if (need < 0) {
        this.buf = Buffer.alloc(0); // unknown function: resynchronise on the next frame
        break;
      }
      const frame = this.buf.subarray(0, need);
      this.buf = this.buf.subarray(need);
      if (!crcOk(frame)) {
        this.counters.badCrc++;
        this.buf = Buffer.alloc(0);
        break;
      }
      this.handle(frame, rxAt);
    }
    // A partial frame left by line noise is discarded after a silence, like the 3.5-character rule.
    if (this.staleTimer) clearTimeout(this.staleTimer);
    if (this.buf.length) this.staleTimer = setTimeout(() => (this.buf = Buffer.alloc(0)), 50);
  }

  private handle(frame: Buffer, rxAt: number): void {
    this.opts.trace?.('request', rxAt);
    const unit = frame[0];
    if (unit === 0 || !this.backend.hasUnit(unit)) return;
    this.counters.requests++;
    this.counters.byUnit.set(unit, (this.counters.byUnit.get(unit) ?? 0) + 1);
    const reply = rtuReply(this.backend, unit, Buffer.from(frame.subarray(1, frame.length - 2)));
    if (!reply) return;
    // Paced: the reply's last byte would reach the master after request, 3.5-character gap and reply on the wire.
    const target = this.opts.pace
      ? rxAt + (frame.length + 3.5 + reply.length) * charMs(this.opts.baudRate ?? 9600)
      : undefined;
    const send = (): void => {
      const at = performance.now();
      if (target !== undefined) {
        const late = at - target;
        this.pacing.replies++;
        this.pacing.lateMsSum += late;
        if (late > this.pacing.lateMsMax) this.pacing.lateMsMax = late;
      }
      this.io?.write(reply);
      this.opts.trace?.('reply', at);
    };
    if (target === undefined) {
      send();
      return;
    }
    const t = waitUntil(target, send);
    if (t) this.timers.add(t);
  }
}

/** A Modbus TCP server: MBAP framing, the unit id from the header picks the simulated unit. */
export class TcpServer {
  private server?: Server;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly backend: SimBackend,
    private readonly opts: { host?: string; port?: number } = {},
  ) {}

  /** Listen and resolve with the bound port (0 picks a free one). */
  start(): Promise<number> {
    const server = createServer((s) => this.onSocket(s));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port ?? 0, this.opts.host ?? '127.0.0.1', () => {
        const addr = server.address();
        resolve(typeof addr === 'object' && addr ? addr.port : 0);
      });
    });
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }

  /** Drop every client connection (a TCP drop as seen by the master). */
  dropClients(): void {
    for (const s of this.sockets) s.destroy();
  }

  private onSocket(s: Socket): void {
    this.sockets.add(s);
    s.setNoDelay(true);
    let buf: Buffer = Buffer.alloc(0);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    s.on('data', (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      while (buf.length >= 7) {
        const len = buf.readUInt16BE(4);
        if (buf.length < 6 + len) break;
        const frame = buf.subarray(0, 6 + len);
        buf = buf.subarray(6 + len);
        const unit = frame[6];
        if (!this.backend.hasUnit(unit)) continue;
        const pdu = Buffer.from(frame.subarray(7));
        const fault = this.backend.fault(unit);
        if (fault === 'silent') continue;
        let reply = fault === 'exception' ? exceptionPdu(pdu[0], 4) : serveRequest(this.backend, unit, pdu);
        if (fault === 'short') reply = reply.subarray(0, 1);
        const out = Buffer.allocUnsafe(7 + reply.length);
        frame.copy(out, 0, 0, 4);
        out.writeUInt16BE(reply.length + 1, 4);
        out[6] = fault === 'wrong-unit' ? (unit % 247) + 1 : unit;
        reply.copy(out, 7);
        s.write(out);
      }
    });
  }
}
