import assert from 'node:assert/strict';
import { decodeTime, encodeTime, isValid, monotonicFactory } from 'ulid';
import { encodeUlidTime, monotonicUlid } from '../../edge/ulid.js';

/** A "random" source that hands out the given bytes, then zeros. */
function bytesFrom(...fills: number[][]): (n: number) => Uint8Array {
  let call = 0;
  return (n) => {
    const out = new Uint8Array(n);
    out.set((fills[call++] ?? []).slice(0, n));
    return out;
  };
}

describe('ULID generator (edge/ulid.ts)', () => {
  it('encodes the time part as the ulid library does', () => {
    for (const ms of [0, 1, 31, 32, 1_700_000_000_000, Date.UTC(2026, 10, 29, 3, 21), 2 ** 48 - 1]) {
      assert.equal(encodeUlidTime(ms), encodeTime(ms, 10), `time ${ms}`);
    }
    assert.throws(() => encodeUlidTime(2 ** 48), RangeError);
    assert.throws(() => encodeUlidTime(-1), RangeError);
    assert.throws(() => encodeUlidTime(1.5), RangeError);
  });

  it('makes valid ULIDs whose time the ulid library decodes', () => {
    const next = monotonicUlid();
    const t = Date.UTC(2026, 10, 29, 3, 21, 13, 250);
    for (const ms of [t, t + 1, t + 1000]) {
      const id = next(ms);
      assert.match(id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
      assert.ok(isValid(id), id);
      assert.equal(decodeTime(id), ms);
    }
    assert.equal(Math.abs(decodeTime(next()) - Date.now()) < 5000, true, 'no seed: the current time');
  });

  it('draws the random part from the source: the low 5 bits of each byte', () => {
    const next = monotonicUlid(bytesFrom([0, 1, 2, 31, 32, 33, 255, 0, 0, 0, 0, 0, 0, 0, 0, 7]));
    assert.equal(next(0).slice(10), '012Z01Z000000007');
  });

  it('increments the random part within a millisecond, carrying across digits', () => {
    // Random part 0…0 Z Z: the third id carries into the third-last digit.
    const next = monotonicUlid(bytesFrom([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 31, 30]));
    const ids = [next(5), next(5), next(5), next(5)];
    assert.deepEqual(
      ids.map((id) => id.slice(10)),
      ['00000000000000ZY', '00000000000000ZZ', '0000000000000100', '0000000000000101'],
    );
    assert.ok(ids.every((id) => decodeTime(id) === 5));
  });

  it('stays monotonic when the clock steps back, as ulid monotonicFactory does', () => {
    const ours = monotonicUlid(bytesFrom([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
    const theirs = monotonicFactory(() => 0.5);
    const a = ours(1000);
    const b = ours(999);
    const c = ours(1000);
    assert.ok(a < b && b < c, `${a} < ${b} < ${c}`);
    assert.equal(decodeTime(b), 1000, 'the last time is kept, like the reference');
    const r1 = theirs(1000);
    const r2 = theirs(999);
    assert.equal(decodeTime(r2), decodeTime(r1));
  });

  it('sorts ids in creation order over many milliseconds and within each', () => {
    const next = monotonicUlid();
    const ids: string[] = [];
    for (let ms = 1_700_000_000_000; ms < 1_700_000_000_020; ms++) for (let i = 0; i < 200; i++) ids.push(next(ms));
    const sorted = [...ids].sort();
    assert.deepEqual(sorted, ids);
    assert.equal(new Set(ids).size, ids.length);
  });

  it('refuses to wrap the random part', () => {
    const next = monotonicUlid(bytesFrom(Array.from({ length: 16 }, () => 31)));
    assert.equal(next(7).slice(10), 'ZZZZZZZZZZZZZZZZ');
    assert.throws(() => next(7), /overflow/);
    assert.equal(next(8).slice(0, 10), encodeTime(8, 10), 'a new millisecond starts afresh');
  });
});
