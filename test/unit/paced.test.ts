import assert from 'node:assert/strict';
import { PacedCount } from '../../edge/paced.js';

describe('PacedCount (log pacing)', () => {
  it('lets the first through, then one per period with the count since the last', () => {
    const p = new PacedCount(1000);
    assert.equal(p.hit(0), 1);
    assert.equal(p.hit(10), undefined);
    assert.equal(p.hit(999, 5), undefined);
    assert.equal(p.hit(1000), 7);
    assert.equal(p.hit(1500), undefined);
  });

  it('a reset starts a new spell: the next hit logs at once', () => {
    const p = new PacedCount(60_000);
    assert.equal(p.hit(0), 1);
    assert.equal(p.hit(5), undefined);
    p.reset();
    assert.equal(p.hit(6), 1, 'the count before the reset belonged to the old spell');
  });

  it('a clock stepped back makes a line due instead of silence until it catches up', () => {
    const p = new PacedCount(60_000);
    assert.equal(p.hit(3_600_000), 1);
    assert.equal(p.hit(3_600_010), undefined);
    assert.equal(p.hit(10), 2);
    assert.equal(p.hit(20), undefined);
  });
});
