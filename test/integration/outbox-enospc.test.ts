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
  acked: number;
  missing: number;
}

describe('outbox on a really full disk (integration: a 6 MiB tmpfs in a user and mount namespace)', function () {
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
  function scenario(mode: 'write'): [Written, Checked] {
    const node = `"${process.execPath}" --import tsx "${SCENARIO}"`;
    const script = `mount -t tmpfs -o size=6m tmpfs "$0" && ${node} ${mode} "$0"; ${node} check "$0"`;
    const r = spawnSync('unshare', ['-rm', 'sh', '-c', script, dir.path], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 80_000,
    });
    assert.equal(r.error, undefined, `unshare could not run (user namespaces needed): ${r.error}`);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 2, `the step and the check each print a line; stderr:\n${r.stderr}`);
    return [JSON.parse(lines[0]) as Written, JSON.parse(lines[1]) as Checked];
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
});
