/** CRC-16/MODBUS lookup table (polynomial 0xA001, reflected). */
const TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    t[i] = c;
  }
  return t;
})();

/** CRC-16/MODBUS of `buf[start, end)`; on the wire it is sent low byte first. */
export function crc16(buf: Uint8Array, start = 0, end = buf.length): number {
  let crc = 0xffff;
  for (let i = start; i < end; i++) crc = (crc >>> 8) ^ TABLE[(crc ^ buf[i]) & 0xff];
  return crc;
}

/** Append the CRC to `unit + pdu`, giving a complete RTU frame. */
export function rtuFrame(unit: number, pdu: Buffer): Buffer {
  const out = Buffer.allocUnsafe(pdu.length + 3);
  out[0] = unit;
  pdu.copy(out, 1);
  out.writeUInt16LE(crc16(out, 0, pdu.length + 1), pdu.length + 1);
  return out;
}

/** True when the last two bytes of `frame` are the CRC of the rest. */
export function crcOk(frame: Uint8Array): boolean {
  if (frame.length < 4) return false;
  const n = frame.length - 2;
  return crc16(frame, 0, n) === (frame[n] | (frame[n + 1] << 8));
}
