import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { fillMqttLengthHeaders } from '../../sync/mqtt-headers.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

describe('mqtt-packet length headers (sync/mqtt-headers.ts)', () => {
  it('are made once, together: packets of 3,000 new lengths later keep no Buffer pool slab alive', async () => {
    fillMqttLengthHeaders();
    // The copy mqtt.js uses, as the uplink's publishes go through it.
    const { writeToStream } = createRequire(require.resolve('mqtt'))('mqtt-packet') as {
      writeToStream(packet: object, stream: object): boolean;
    };
    const sink = { write: () => true, destroy: () => undefined };
    const payload = Buffer.alloc(16_384);
    gc();
    const before = process.memoryUsage().arrayBuffers;
    for (let n = 6000; n < 9000; n++) {
      // A gzipped batch's worth of the shared 8 KiB pool between two new lengths, dropped at once.
      Buffer.allocUnsafe(3000);
      writeToStream({ cmd: 'publish', topic: 't', payload: payload.subarray(0, n), qos: 0 }, sink);
    }
    // Backing stores are freed after the collection, off the main thread: collect until the
    // figure settles below the bar, or has had 20 turns to (what is really kept stays).
    let kept = Number.POSITIVE_INFINITY;
    for (let turn = 0; turn < 20 && kept >= 1 << 20; turn++) {
      gc();
      await new Promise((resolve) => setImmediate(resolve));
      kept = process.memoryUsage().arrayBuffers - before;
    }
    assert.ok(kept < 1 << 20, `${kept} bytes of ArrayBuffers kept by the headers of 3,000 new packet lengths`);
  });
});
