import assert from 'node:assert/strict';
import { RecentRing } from '../../sync/outbox.js';

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
});
