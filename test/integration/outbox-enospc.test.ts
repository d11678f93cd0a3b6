import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';

const ROOT = join(__dirname, '..', '..');
const SCENARIO = join(ROOT, 'test', 'helpers', 'enospc-scenario.ts');

/** What the scenario's writer step prints (see test/helpers/enospc-scenario.ts). */
interface Written {
  refused: number;
  message: string;
  writeError?: { message: string };
  readDuringSpell: number | string;
  before: number;
  after: number;
  cleared: boolean;
}

/** What its check step prints after the writer's `kill -9`. */
interface Checked {
  /** 'ok', or why the store did not open. */
  opened: string;
  acked: number;
  missing: number;
  reserveReleased: boolean;
}

/** What the repair-full step prints: the store damaged, the disk filled. */
interface Damaged {
  acked: number;
  reserve: number;
  need: number;
  free: number;
}

/** What the full-reserve step prints before its `kill -9`. */
interface FilledWithReserve {
  reserved: number;
  refused: number;
  releasedBefore: boolean;
  alarmStored: boolean;
  released: boolean;
  reserveLeft: number;
  acked: number;
}

/** What the crash-full step prints before its `kill -9`. */
interface Crashed {
  opened: string;
  acked: number;
  /** Bytes of the disk reserve beside the store. */
  reserve: number;
  /** Free blocks on the tmpfs. */
  free: number;
}

describe('outbox on a really full disk (integration: a 6 or 8 MiB tmpfs in a user and mount namespace)', function () {
  this.timeout(90_000);
  let dir: TmpDir;

  beforeEach(async () => {
    dir = await tmpDir('enospc');
  });
  afterEach(async () => {
    await dir?.cleanup();
  });

  /**
   * Run one scenario step, then the check, inside `unshare -rm` on a fresh 6 MiB tmpfs (it
   * exists only in that namespace, so both run there, one after the other; no root needed).
   * The step SIGKILLs itself; the shell goes on to the check.
   */
  function scenario(mode: 'write'): [Written, Checked];
  function scenario(mode: 'crash-full', sizeMiB: number): [Crashed, Checked];
  function scenario(mode: 'full-reserve', sizeMiB: number): [FilledWithReserve, Checked];
  function scenario(mode: 'repair-full', sizeMiB: number): [Damaged, Checked];
  function scenario(mode: 'write' | 'crash-full' | 'full-reserve' | 'repair-full', sizeMiB = 6): [Written | Crashed | FilledWithReserve | Damaged, Checked] {
    const node = `"${process.execPath}" --import tsx "${SCENARIO}"`;
    const script = `mount -t tmpfs -o size=${sizeMiB}m tmpfs "$0" && ${node} ${mode} "$0"; ${node} check "$0"`;
    const r = spawnSync('unshare', ['-rm', 'sh', '-c', script, dir.path], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 80_000,
    });
    assert.equal(r.error, undefined, `unshare could not run (user namespaces needed): ${r.error}`);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 2, `the step and the check each print a line; stderr:\n${r.stderr}`);
    return [JSON.parse(lines[0]) as Written | Crashed | FilledWithReserve | Damaged, JSON.parse(lines[1]) as Checked];
  }

  it('ENOSPC: refuses and reports while full, stays readable, accepts once there is room, and every acknowledged event survives a kill -9', () => {
    const [w, c] = scenario('write');
    assert.equal(w.refused, 6, 'appends refused once the disk was full');
    assert.match(w.message, /No space left on device/);
    assert.match(w.writeError?.message ?? '', /No space left on device/, 'reported in stats().writeError');
    assert.ok(w.before > 1000, `${w.before} accepted before the disk was full`);
    // The store is not shut while there is no room to reopen it: the uplink can still send.
    assert.equal(w.readDuringSpell, 100, 'stored events readable during the spell');
    assert.equal(w.after, 300, 'accepted again once there was room');
    assert.ok(w.cleared, 'the report cleared');
    assert.equal(c.acked, w.before + 300);
    // Before the reopen-after-failure, the 300 written after the spell were all lost here.
    assert.equal(c.missing, 0, `${c.missing} of ${c.acked} acknowledged events lost`);
  });

  it('a store that filled its disk to the last page and was kill -9ed opens again by releasing its disk reserve', () => {
    const [w, c] = scenario('crash-full', 8);
    assert.equal(w.opened, 'ok');
    assert.equal(w.reserve, 3 << 20, 'the reserve was written before the disk filled');
    assert.equal(w.free, 0, 'the disk was full at the crash');
    // Without the reserve: "cannot open outbox": LevelDB's recovery had no room for its table,
    // and the runtime would exit into the same failure at every restart.
    assert.equal(c.opened, 'ok', `the store opened: ${c.opened}`);
    assert.ok(c.reserveReleased, 'stats().reserveReleasedAt says the disk is full');
    assert.equal(c.acked, 2000);
    assert.equal(c.missing, 0, `${c.missing} of ${c.acked} acknowledged events lost`);
  });

  it('a store whose writes fail for a full disk releases its reserve and stores the next alarm', () => {
    const [w, c] = scenario('full-reserve', 8);
    assert.equal(w.reserved, 2 << 20, 'the reserve was written before the disk filled');
    assert.equal(w.refused, 1, 'an append was refused once the disk was full');
    assert.equal(w.releasedBefore, false, 'the reserve goes at the reopen after the failure, not before');
    // Without the reserve the alarm would be refused until someone freed space.
    assert.ok(w.alarmStored, 'the alarm after the refusal was stored');
    assert.ok(w.released && w.reserveLeft === 0, JSON.stringify(w));
    assert.equal(c.opened, 'ok', `the store opened: ${c.opened}`);
    assert.equal(c.acked, w.acked);
    assert.equal(c.missing, 0, `${c.missing} of ${c.acked} acknowledged events lost`);
  });

  it('a damaged store on a disk too full to repair it releases the disk reserve and is repaired', () => {
    const [w, c] = scenario('repair-full', 32);
    assert.equal(w.reserve, 6 << 20);
    assert.ok(w.free < w.need && w.free + w.reserve >= w.need, `only the reserve makes room: ${JSON.stringify(w)}`);
    // Before: EDGE_OUTBOX_NO_ROOM kept the repair from running, at every restart.
    assert.equal(c.opened, 'ok', `the store opened: ${c.opened}`);
    assert.ok(c.reserveReleased);
    assert.equal(c.acked, 2000);
    assert.equal(c.missing, 0, `${c.missing} of ${c.acked} acknowledged events lost`);
  });
});
