import assert from 'node:assert/strict';
import { SeqSlots } from '../../edge/seq-slots.js';
import { HotTail } from '../../sync/outbox.js';

describe('SeqSlots', () => {
  it('maps seqs to values; a later seq in the same slot replaces the older one', () => {
    const t = new SeqSlots<string>(4); // 16 slots
    t.set(3, 'a');
    t.set(2 ** 40 + 5, 'big');
    assert.equal(t.get(3), 'a');
    assert.equal(t.get(2 ** 40 + 5), 'big');
    assert.equal(t.get(19), undefined, 'same slot as 3, another seq');
    t.set(19, 'b');
    assert.equal(t.get(3), undefined, '3 was forgotten');
    assert.equal(t.get(19), 'b');
    assert.equal(t.delete(3), false);
    assert.equal(t.delete(19), true);
    assert.equal(t.get(19), undefined);
    t.clear();
    assert.equal(t.get(2 ** 40 + 5), undefined);
  });

  it('takeRange removes and reports exactly the held seqs in range, narrow or wider than the table', () => {
    const t = new SeqSlots<number>(4);
    for (const s of [1, 4, 5, 9, 12]) t.set(s, s * 10);
    const got: number[] = [];
    t.takeRange(4, 9, (s, v) => got.push(s, v));
    assert.deepEqual(got, [4, 40, 5, 50, 9, 90]);
    assert.equal(t.get(5), undefined);
    const wide: number[] = [];
    t.takeRange(0, 1000, (s) => wide.push(s)); // wider than the 16 slots: walks the slots
    assert.deepEqual(wide.sort((a, b) => a - b), [1, 12]);
    t.takeRange(5, 4, () => assert.fail('empty range'));
  });
});

describe('HotTail', () => {
  const ev = (seq: number, bytes = 10) => ({ seq, severity: 'info' as const, bytes, json: `{"seq":${seq}}` });
  const offered = (h: HotTail, after = 0) => {
    const out: number[] = [];
    h.take(after, undefined, (e) => {
      out.push(e.seq);
      return true;
    });
    return out;
  };

  it('hands out what is stored, skips deleted and excluded seqs, drops what the cursor passed', () => {
    const h = new HotTail(1000, 1);
    for (const s of [1, 2, 4, 7, 8]) h.add(ev(s));
    h.delete(4);
    h.delete(99); // never held: harmless
    assert.deepEqual(offered(h), [1, 2, 7, 8]);
    const out: number[] = [];
    h.take(0, (s) => s === 7, (e) => out.push(e.seq) > 0);
    assert.deepEqual(out, [1, 2, 8]);
    assert.deepEqual(offered(h, 2), [7, 8]);
    assert.equal(h.covers(2), true);
    assert.equal(h.covers(0), false, '1 and 2 left the tail');
  });

  it('keeps its byte budget with the live events only, and stays sorted if a seq ever comes out of order', () => {
    const h = new HotTail(30, 1);
    for (const s of [1, 2, 3]) h.add(ev(s));
    h.delete(2);
    h.add(ev(4)); // 30 live bytes: nothing dropped
    assert.deepEqual(offered(h), [1, 3, 4]);
    h.add(ev(6));
    assert.deepEqual(offered(h), [3, 4, 6], 'over budget: the oldest left');
    h.add(ev(5));
    assert.deepEqual(offered(h), [4, 5, 6]);
    h.delete(5);
    assert.deepEqual(offered(h), [4, 6]);
  });

  it('compacts after many shifts and still finds seqs to delete', () => {
    const h = new HotTail(10 * 3000, 1);
    for (let s = 1; s <= 5000; s++) h.add(ev(s));
    assert.deepEqual(offered(h, 4990), [4991, 4992, 4993, 4994, 4995, 4996, 4997, 4998, 4999, 5000]);
    h.delete(4995);
    assert.deepEqual(offered(h, 4990), [4991, 4992, 4993, 4994, 4996, 4997, 4998, 4999, 5000]);
  });
});
