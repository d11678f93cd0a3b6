import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';

const ROOT = join(__dirname, '..', '..');
const SCENARIO = join(ROOT, 'test', 'helpers', 'enospc-scenario.ts');

describe('outbox on a really full disk (integration: a 6 MiB tmpfs in a user and mount namespace)', function () {
  this.timeout(90_000);
  let dir: TmpDir;

  before(async () => {
    dir = await tmpDir('enospc');
  });
  after(async () => {
    await dir?.cleanup();
  });

  it('ENOSPC: refuses and reports while full, accepts once there is room, and every acknowledged event survives a kill -9', () => {
    // The tmpfs exists only inside `unshare -rm` (no root needed): the writer and the check
    // run there one after the other. The writer SIGKILLs itself; the shell goes on.
    const node = `"${process.execPath}" --import tsx "${SCENARIO}"`;
    const script = `mount -t tmpfs -o size=6m tmpfs "$0" && ${node} write "$0"; ${node} check "$0"`;
    const r = spawnSync('unshare', ['-rm', 'sh', '-c', script, dir.path], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 80_000,
    });
    assert.equal(r.error, undefined, `unshare could not run (user namespaces needed): ${r.error}`);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 2, `writer and check each print a line; stderr:\n${r.stderr}`);
    const w = JSON.parse(lines[0]) as {
      refused: number;
      message: string;
      writeError?: { message: string };
      readDuringSpell: number | string;
      before: number;
      after: number;
      cleared: boolean;
    };
    const c = JSON.parse(lines[1]) as { acked: number; missing: number };
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
