import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');

/** Run the CLI as a user would (a child process), without a shell. */
function cli(...args: string[]): { status: number | null; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'edge/cli.ts'), ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

describe('edgeward CLI usage errors', function () {
  this.timeout(60_000);

  it('says what is wrong when an action rejects its options (exit 2)', () => {
    const none = cli('scan', 'modbus');
    assert.equal(none.status, 2);
    assert.match(none.stderr, /give exactly one of --serial DEV or --tcp HOST:PORT/);
    const range = cli('scan', 'modbus', '--tcp', '127.0.0.1:1', '--units', '1-999');
    assert.equal(range.status, 2);
    assert.match(range.stderr, /unit range "1-999" must be within 1-247/);
  });

  it('reports a runtime failure by its code, without a stack trace (exit 1)', () => {
    const r = cli('scan', 'modbus', '--tcp', '127.0.0.1:1', '--units', '1');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^edgeward: EDGE_MODBUS_OPEN: cannot open 127\.0\.0\.1:1$/m);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  it('rejects an unknown command with usage help (exit 2)', () => {
    const r = cli('frobnicate');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command 'frobnicate'/);
  });
});
