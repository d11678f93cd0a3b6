import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { makeEnvelope } from '../../edge/envelope.js';
import { LevelOutbox, RecentRing } from '../../sync/outbox.js';
import { tmpDir } from '../helpers/tmp.js';

describe('RecentRing: the newest events for GET /api/v1/events', () => {
  it('keeps the newest `size`, newest first', () => {
    const r = new RecentRing(3, 1_000);
    for (let i = 0; i < 5000; i++) r.push(`"${i}"`);
    assert.equal(r.length, 3);
    assert.deepEqual(r.newestJson(10), ['"4999"', '"4998"', '"4997"']);
    assert.deepEqual(r.newestJson(1), ['"4999"']);
  });

  it('drops the oldest past its characters too, and keeps the newest one whatever its size', () => {
    const r = new RecentRing(100, 10);
    r.push('"aaaa"'); // 6
    r.push('"bb"'); // 4: 10 in all
    assert.deepEqual(r.newestJson(100), ['"bb"', '"aaaa"']);
    r.push('"c"'); // 3: the oldest goes
    assert.deepEqual(r.newestJson(100), ['"c"', '"bb"']);
    r.push(`"${'x'.repeat(50)}"`);
    assert.equal(r.length, 1, 'alone over the bound, and kept');
    r.push('"d"');
    assert.deepEqual(r.newestJson(100), ['"d"']);
  });

  it('lets go of what it drops at once: no reference kept to big events gone', () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const r = new RecentRing(1000, 1024 * 1024);
    gc();
    const before = process.memoryUsage().heapUsed;
    // 300 distinct 1 MB strings: each push drops the one before.
    for (let i = 0; i < 300; i++) r.push(`"${Buffer.alloc(1_000_000, 97 + (i % 26)).toString('latin1')}"`);
    gc();
    const held = process.memoryUsage().heapUsed - before;
    assert.equal(r.length, 1);
    assert.ok(held < 50 * 1024 * 1024, `${Math.round(held / 1048576)} MB still held`);
  });

  it('after a reopen: the newest within its bound, from the store and from the snapshot once acked', async () => {
    const dir = await tmpDir('recent-ring');
    const open = async () => {
      const ob = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, site: 's', edge: 'e', reserveBytes: 0 });
      await ob.open();
      return ob;
    };
    try {
      let ob = await open();
      for (let i = 0; i < 40; i++) {
        const severity = i % 3 === 0 ? 'critical' : 'info';
        await ob.append([makeEnvelope({ type: 'sensor.reading', severity, source: { device: 'big' }, data: { i, pad: 'x'.repeat(200_000) } }, { site: 's', edge: 'e' })]);
      }
      const newest = ob.recent(1000).map((e) => e.data.i);
      assert.deepEqual(newest, [39, 38, 37, 36, 35]);
      await ob.close();
      ob = await open();
      assert.deepEqual(ob.recent(1000).map((e) => e.data.i), newest, 'reseeded from the store (and the snapshot)');
      await ob.ack([[1, 40]]);
      await ob.close();
      ob = await open();
      assert.equal(ob.stats().events, 0);
      assert.deepEqual(ob.recent(1000).map((e) => e.data.i), newest, 'from the snapshot alone');
      await ob.close();
    } finally {
      await dir.cleanup();
    }
  });
});
