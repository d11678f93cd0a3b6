import { crcOk, rtuFrame } from '../../drivers/modbus/crc.js';
import type { ByteLink } from '../../drivers/modbus/link.js';
import { exceptionPdu, serveRequest } from '../../drivers/modbus/pdu.js';
import type { SimBackend } from './modbus-server.js';

/**
 * An in-process RTU line for unit tests: frames written by a ModbusBus are
 * checked (a bad CRC throws) and answered by a simulator backend on a later
 * turn, with the backend's per-unit faults. Pass it as the bus's `link`.
 */
export class FakeRtuLine implements ByteLink {
  onData: (chunk: Buffer) => void = () => undefined;
  onLost: (err: Error) => void = () => undefined;
  /** Every request seen, in order. */
  readonly requests: Array<{ unit: number; pdu: Buffer; at: number }> = [];
  /** Deliver replies one byte at a time, as a slow adapter would. */
  dribble = false;
  /** Bytes sent just ahead of the next reply, once (line noise, another unit's late frame). */
  prefix?: Buffer;
  /** With `prefix`: its bytes come one per macrotask, as a serial port delivers a slow frame. */
  prefixSlow = false;

  constructor(readonly backend: SimBackend) {}

  async open(): Promise<void> {}
  async close(): Promise<void> {}

  write(frame: Buffer): void {
    if (!crcOk(frame)) throw new Error('the bus sent a frame with a bad CRC');
    const unit = frame[0];
    const pdu = Buffer.from(frame.subarray(1, frame.length - 2));
    this.requests.push({ unit, pdu, at: performance.now() });
    if (!this.backend.hasUnit(unit)) return;
    const fault = this.backend.fault(unit);
    if (fault === 'silent') return;
    let reply = rtuFrame(
      fault === 'wrong-unit' ? (unit % 247) + 1 : unit,
      fault === 'exception' ? exceptionPdu(pdu[0], 4) : serveRequest(this.backend, unit, pdu),
    );
    if (fault === 'bad-crc') reply[reply.length - 1] ^= 0xff;
    if (fault === 'short') reply = reply.subarray(0, 3);
    if (this.prefix && this.prefixSlow) {
      const bytes = [...this.prefix];
      this.prefix = undefined;
      const full = reply;
      // Each byte a macrotask apart, the reply 20 ms later (longer than a test bus's frame gap):
      // gaps a parser's timers see.
      const next = () => {
        const b = bytes.shift();
        if (b === undefined) setTimeout(() => this.onData(full), 20);
        else {
          this.onData(Buffer.from([b]));
          setTimeout(next, 1);
        }
      };
      setImmediate(next);
      return;
    }
    if (this.prefix) {
      reply = Buffer.concat([this.prefix, reply]);
      this.prefix = undefined;
    }
    setImmediate(() => {
      if (!this.dribble) this.onData(reply);
      else for (const b of reply) this.onData(Buffer.from([b]));
    });
  }
}
