import { EdgewardError } from '../../edge/errors.js';

/** Modbus function codes used by Edgeward. */
export const FC = {
  readCoils: 1,
  readDiscreteInputs: 2,
  readHoldingRegisters: 3,
  readInputRegisters: 4,
  writeSingleCoil: 5,
  writeSingleRegister: 6,
  writeMultipleCoils: 15,
  writeMultipleRegisters: 16,
} as const;

/** Protocol limits per request (Modbus application protocol v1.1b3, 6.1–6.4). */
export const MAX_READ_BITS = 2000;
export const MAX_READ_REGISTERS = 125;

export const EXCEPTION_NAMES: Record<number, string> = {
  1: 'illegal function',
  2: 'illegal data address',
  3: 'illegal data value',
  4: 'server device failure',
  5: 'acknowledge',
  6: 'server device busy',
  10: 'gateway path unavailable',
  11: 'gateway target device failed to respond',
};

export function isBitRead(fc: number): boolean {
  return fc === FC.readCoils || fc === FC.readDiscreteInputs;
}

export function isRegisterRead(fc: number): boolean {
  return fc === FC.readHoldingRegisters || fc === FC.readInputRegisters;
}

export function readPdu(fc: number, address: number, count: number): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = fc;
  b.writeUInt16BE(address, 1);
  b.writeUInt16BE(count, 3);
  return b;
}

export function writeCoilPdu(address: number, value: boolean): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = FC.writeSingleCoil;
  b.writeUInt16BE(address, 1);
  b.writeUInt16BE(value ? 0xff00 : 0x0000, 3);
  return b;
}

export function writeRegisterPdu(address: number, value: number): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = FC.writeSingleRegister;
  b.writeUInt16BE(address, 1);
  b.writeUInt16BE(value & 0xffff, 3);
  return b;
}

export function writeRegistersPdu(address: number, values: readonly number[]): Buffer {
  const b = Buffer.allocUnsafe(6 + 2 * values.length);
  b[0] = FC.writeMultipleRegisters;
  b.writeUInt16BE(address, 1);
  b.writeUInt16BE(values.length, 3);
  b[5] = 2 * values.length;
  for (let i = 0; i < values.length; i++) b.writeUInt16BE(values[i] & 0xffff, 6 + 2 * i);
  return b;
}

/**
 * Length of the RTU reply (unit + PDU + CRC) to `request`, once the first
 * three reply bytes are known; undefined while fewer are buffered.
 */
export function rtuReplyLength(requestFc: number, head: Uint8Array): number | undefined {
  if (head.length < 2) return undefined;
  if (head[1] & 0x80) return 5;
  if (isBitRead(requestFc) || isRegisterRead(requestFc)) return head.length < 3 ? undefined : 5 + head[2];
  return 8; // echo of the write request: unit, fc, address, value/count, CRC
}

/**
 * Check a reply PDU against its request and decode it: bits for FC 1/2,
 * registers for FC 3/4, nothing for writes. Throws EdgewardError
 * `EDGE_MODBUS_EXCEPTION` for an exception reply and `EDGE_MODBUS_GARBLED`
 * for a reply that does not answer the request.
 */
export function decodeReply(request: Buffer, reply: Buffer, unit: number): boolean[] | number[] | undefined {
  const fc = request[0];
  if (reply.length >= 2 && reply[0] === (fc | 0x80)) {
    const code = reply[1];
    throw new EdgewardError(
      'EDGE_MODBUS_EXCEPTION',
      `unit ${unit}: exception ${code} (${EXCEPTION_NAMES[code] ?? 'unknown'})`,
      {
        details: { unit, fc, exception: code },
      },
    );
  }
  const garbled = (why: string) =>
    new EdgewardError('EDGE_MODBUS_GARBLED', `unit ${unit}: garbled reply to function ${fc}: ${why}`, {
      details: { unit, fc },
    });
  if (reply[0] !== fc) throw garbled(`function ${reply[0]} in reply`);
  const count = request.readUInt16BE(3);
  if (isBitRead(fc)) {
    const bytes = Math.ceil(count / 8);
    if (reply[1] !== bytes || reply.length !== 2 + bytes)
      throw garbled(`byte count ${reply[1]}, expected ${bytes}`);
    const bits: boolean[] = new Array(count);
    for (let i = 0; i < count; i++) bits[i] = ((reply[2 + (i >> 3)] >> (i & 7)) & 1) === 1;
    return bits;
  }
  if (isRegisterRead(fc)) {
    if (reply[1] !== 2 * count || reply.length !== 2 + 2 * count)
      throw garbled(`byte count ${reply[1]}, expected ${2 * count}`);
    const regs: number[] = new Array(count);
    for (let i = 0; i < count; i++) regs[i] = reply.readUInt16BE(2 + 2 * i);
    return regs;
  }
  // The whole echo: address and value (FC 5/6), address and quantity (FC 15/16). On RTU, with no
  // transaction id, the late echo of a timed-out write to the same address (a lock after an unlock
  // timed out) was taken as this write's: a command reported done that the unit never got (found
  // by a review).
  if (reply.length !== 5 || !reply.subarray(1, 5).equals(request.subarray(1, 5)))
    throw garbled('write echo does not match');
  return undefined;
}

/** The register/bit tables a Modbus server exposes (used by the simulator). */
export interface ServerModel {
  /** Return the values, or an exception code (2 = illegal data address). */
  readBits(unit: number, fc: 1 | 2, address: number, count: number): boolean[] | number;
  readRegisters(unit: number, fc: 3 | 4, address: number, count: number): number[] | number;
  writeCoils(unit: number, address: number, values: boolean[]): number | undefined;
  writeRegisters(unit: number, address: number, values: number[]): number | undefined;
}

export function exceptionPdu(fc: number, code: number): Buffer {
  return Buffer.from([fc | 0x80, code]);
}

/** Length of an RTU request frame from its first bytes (server side); undefined until known, -1 for an unsupported function. */
export function rtuRequestLength(head: Uint8Array): number | undefined {
  if (head.length < 2) return undefined;
  const fc = head[1];
  if (fc >= 1 && fc <= 6) return 8;
  if (fc === FC.writeMultipleCoils || fc === FC.writeMultipleRegisters)
    return head.length < 7 ? undefined : 9 + head[6];
  return -1;
}

/** Serve one request PDU against `model`, returning the reply PDU (server side). */
export function serveRequest(model: ServerModel, unit: number, req: Buffer): Buffer {
  const fc = req[0];
  if (req.length < 5) return exceptionPdu(fc, 3);
  const address = req.readUInt16BE(1);
  if (isBitRead(fc)) {
    const count = req.readUInt16BE(3);
    if (count < 1 || count > MAX_READ_BITS) return exceptionPdu(fc, 3);
    const bits = model.readBits(unit, fc as 1 | 2, address, count);
    if (typeof bits === 'number') return exceptionPdu(fc, bits);
    const bytes = Math.ceil(count / 8);
    const out = Buffer.alloc(2 + bytes);
    out[0] = fc;
    out[1] = bytes;
    bits.forEach((v, i) => {
      if (v) out[2 + (i >> 3)] |= 1 << (i & 7);
    });
    return out;
  }
  if (isRegisterRead(fc)) {
    const count = req.readUInt16BE(3);
    if (count < 1 || count > MAX_READ_REGISTERS) return exceptionPdu(fc, 3);
    const regs = model.readRegisters(unit, fc as 3 | 4, address, count);
    if (typeof regs === 'number') return exceptionPdu(fc, regs);
    const out = Buffer.allocUnsafe(2 + 2 * count);
    out[0] = fc;
    out[1] = 2 * count;
    for (let i = 0; i < count; i++) out.writeUInt16BE(regs[i] & 0xffff, 2 + 2 * i);
    return out;
  }
  if (fc === FC.writeSingleCoil) {
    const v = req.readUInt16BE(3);
    if (v !== 0 && v !== 0xff00) return exceptionPdu(fc, 3);
    const ex = model.writeCoils(unit, address, [v === 0xff00]);
    return ex === undefined ? Buffer.from(req.subarray(0, 5)) : exceptionPdu(fc, ex);
  }
  if (fc === FC.writeSingleRegister) {
    const ex = model.writeRegisters(unit, address, [req.readUInt16BE(3)]);
    return ex === undefined ? Buffer.from(req.subarray(0, 5)) : exceptionPdu(fc, ex);
  }
  if (fc === FC.writeMultipleCoils || fc === FC.writeMultipleRegisters) {
    const count = req.readUInt16BE(3);
    const bytes = req[5];
    if (req.length < 6 + bytes) return exceptionPdu(fc, 3);
    let ex: number | undefined;
    if (fc === FC.writeMultipleCoils) {
      if (bytes !== Math.ceil(count / 8)) return exceptionPdu(fc, 3);
      const vals: boolean[] = [];
      for (let i = 0; i < count; i++) vals.push(((req[6 + (i >> 3)] >> (i & 7)) & 1) === 1);
      ex = model.writeCoils(unit, address, vals);
    } else {
      if (bytes !== 2 * count) return exceptionPdu(fc, 3);
      const vals: number[] = [];
      for (let i = 0; i < count; i++) vals.push(req.readUInt16BE(6 + 2 * i));
      ex = model.writeRegisters(unit, address, vals);
    }
    return ex === undefined ? Buffer.from(req.subarray(0, 5)) : exceptionPdu(fc, ex);
  }
  return exceptionPdu(fc, 1);
}
