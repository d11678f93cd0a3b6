import { createRequire } from 'node:module';

/** Packet lengths whose header mqtt-packet keeps once made (`varByteIntCache` in its writeToStream.js). */
const CACHED_LENGTHS = 16_384;

let filled = false;

/**
 * Fill mqtt-packet's cache of "remaining length" headers once, at start.
 *
 * mqtt-packet (9.x, under mqtt.js) keeps the 4-byte header of every packet
 * length below 16,384 the first time a packet of that length is written,
 * made from Node's shared 8 KiB Buffer pool. Gzipped batches come in a new
 * length almost every time, and between two new lengths the pool moves on
 * by kilobytes (the batches themselves), so each cached header kept a whole
 * 8 KiB slab alive: JS ArrayBuffers grew for hours, up to 16,384 slabs
 * (128 MB) at worst, ~64 MB for the lengths batches of 1-500 events take.
 * Made here all at once, the headers share 16 slabs (128 KB).
 *
 * It writes one QoS 0 PUBLISH per length into a stream that discards it,
 * through the copy of mqtt-packet that mqtt.js itself loads. Not fatal if
 * that fails (another layout of node_modules): memory grows as before.
 */
export function fillMqttLengthHeaders(): void {
  if (filled) return;
  filled = true;
  try {
    const fromMqtt = createRequire(require.resolve('mqtt'));
    const { writeToStream } = fromMqtt('mqtt-packet') as { writeToStream(packet: object, stream: object): boolean };
    const sink = { write: () => true, destroy: () => undefined };
    const payload = Buffer.alloc(CACHED_LENGTHS);
    // Remaining length of a QoS 0 PUBLISH to topic "t": 2 + 1 + the payload.
    for (let n = 0; n + 3 < CACHED_LENGTHS; n++) writeToStream({ cmd: 'publish', topic: 't', payload: payload.subarray(0, n), qos: 0 }, sink);
  } catch {
    // The cache stays lazy.
  }
}
