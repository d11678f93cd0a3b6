import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { makeEnvelope } from '../../edge/envelope.js';
import { LevelOutbox, outboxPath } from '../../sync/outbox.js';
import { tmpDir } from '../helpers/tmp.js';

const ROOT = path.resolve(__dirname, '../..');

/** Run the CLI as a user would (a child process), without a shell. */
function cli(...args: string[]): { status: number | null; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'edge/cli.ts'), ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 30_000,
    // No EDGEWARD_* secrets from the caller's shell.
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('EDGEWARD_'))),
  });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

/** The same, without blocking this process's event loop (for a test that serves the CLI a peer). */
function cliAsync(...args: string[]): Promise<{ status: number | null; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'edge/cli.ts'), ...args], { cwd: ROOT });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
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
    // With the reason: a technician tells a missing adapter or a refused port from a silent bus.
    assert.match(r.stderr, /^edgeward: EDGE_MODBUS_OPEN: cannot open 127\.0\.0\.1:1: connect ECONNREFUSED/m);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    // No empty table before the error.
    assert.doesNotMatch(r.stdout, /device type/);
  });

  it('a scan whose link drops fails (exit 1) instead of listing every unit id as present', async () => {
    // A Modbus TCP endpoint that hangs up on the first request.
    const server = net.createServer((s) => s.on('data', () => s.destroy()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const r = await cliAsync('scan', 'modbus', '--tcp', `127.0.0.1:${port}`, '--units', '1-6');
      assert.equal(r.status, 1, r.stdout + r.stderr);
      assert.match(r.stderr, /the link dropped during the scan at unit 1/);
      assert.doesNotMatch(r.stdout, /answers/);
    } finally {
      server.close();
    }
  });

  it('checks numeric options before anything runs: exit 2 naming the option, no stack trace', () => {
    const cases: Array<[string[], RegExp]> = [
      [['discover', 'onvif', '--timeout', 'abc'], /option '--timeout <s>' argument 'abc' is invalid/],
      [['scan', 'modbus', '--tcp', '127.0.0.1:1', '--timeout', 'abc', '--units', '1'], /option '--timeout <ms>' argument 'abc' is invalid/],
      [['scan', 'modbus', '--serial', '/dev/null', '--baud', 'fast'], /option '--baud <n>' argument 'fast' is invalid/],
      [['scan', 'modbus', '--tcp', '127.0.0.1:99999'], /the port must be from 1 to 65535/],
      [['sim', 'door', '--tcp', 'abc'], /option '--tcp <port>' argument 'abc' is invalid/],
      [['sim', 'door', '--tcp', '0', '--doors', '9'], /option '--doors <n>' argument '9' is invalid. must be an integer from 1 to 4/],
      [['sim', 'camera', '--port', '99999'], /option '--port <n>' argument '99999' is invalid/],
      // --multicast answers on 3702 instead: a port given with it would be ignored without a word.
      [['sim', 'camera', '--multicast', '--discovery-port', '4000'], /give --multicast or --discovery-port, not both/],
      [['discover', 'onvif', '--no-multicast', '--username', 'a"b'], /option '-u, --username <user>' argument 'a"b' is invalid. must not contain a double quote/],
    ];
    for (const [args, want] of cases) {
      const r = cli(...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, want, args.join(' '));
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    }
  });

  it('says plainly that a contract command of a later version is not built yet (exit 2), with its usage in help', () => {
    for (const args of [['keygen', '--out', 'x'], ['sign', '--key', 'k'], ['central', '--broker', 'mqtt://x'], ['sim', 'fire']]) {
      const r = cli(...args);
      assert.equal(r.status, 2, args.join(' '));
      assert.match(r.stderr, new RegExp(`^edgeward: ${args[0] === 'sim' ? 'sim fire' : args[0]} is not built yet in this version`, 'm'));
    }
    const help = cli('keygen', '--help');
    assert.equal(help.status, 0);
    assert.match(help.stdout, /Usage: edgeward keygen --out <dir>/);
  });

  it('outbox stats reads a stopped store without the secrets of the box; says so when there is none', async () => {
    const dir = await tmpDir('cli-stats');
    try {
      const ids = { site: 's1', edge: 'e1' };
      const ob = new LevelOutbox({ dir: outboxPath(path.join(dir.path, 'data')), maxBytes: 1 << 20, ...ids });
      await ob.open();
      await ob.append([
        makeEnvelope({ type: 'door.opened', source: { device: 'd1' } }, ids),
        makeEnvelope({ type: 'door.forced', source: { device: 'd1' } }, ids),
      ]);
      const epoch = ob.epoch;
      await ob.close();
      const file = path.join(dir.path, 'site.yaml');
      writeFileSync(
        file,
        'site: s1\nedge: e1\ndataDir: ./data\nprivacy: { siteKey: env:EDGEWARD_SITE_KEY }\nhttp: { token: env:EDGEWARD_TOKEN }\nuplink: { url: env:EDGEWARD_URL }\n',
      );
      const r = cli('outbox', 'stats', '-c', file, '--json');
      assert.equal(r.status, 0, r.stderr);
      const stats = JSON.parse(r.stdout) as { epoch: string; events: number; bySeverity: { critical: { events: number } } };
      assert.equal(stats.epoch, epoch);
      assert.equal(stats.events, 2);
      assert.equal(stats.bySeverity.critical.events, 1);
      // check still wants every secret.
      assert.equal(cli('check', '-c', file).status, 2);
      // Secrets set but invalid (a short site key, a public host without its token) are not its business either.
      writeFileSync(file, 'site: s1\nedge: e1\ndataDir: ./data\nprivacy: { siteKey: short }\nhttp: { host: 0.0.0.0 }\n');
      const invalidSecrets = cli('outbox', 'stats', '-c', file, '--json');
      assert.equal(invalidSecrets.status, 0, invalidSecrets.stderr);
      assert.equal((JSON.parse(invalidSecrets.stdout) as { events: number }).events, 2);
      // A bad dataDir still is.
      writeFileSync(file, 'site: s1\nedge: e1\ndataDir: 7\nprivacy: { siteKey: short }\n');
      assert.equal(cli('outbox', 'stats', '-c', file).status, 2);
      writeFileSync(file, 'site: s1\nedge: e1\ndataDir: ./none\nprivacy: { siteKey: env:EDGEWARD_SITE_KEY }\n');
      const none = cli('outbox', 'stats', '-c', file);
      assert.equal(none.status, 1);
      assert.match(none.stderr, /^edgeward: no outbox at .*none\/outbox: nothing was ever stored with this dataDir/m);
    } finally {
      await dir.cleanup();
    }
  });

  it('rejects an unknown command with usage help (exit 2)', () => {
    const r = cli('frobnicate');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command 'frobnicate'/);
  });

  it('demo --data-dir writes files only its own user can read (as start does)', async () => {
    const dir = await tmpDir('cli-demo-modes');
    try {
      const data = path.join(dir.path, 'demo-data');
      const r = await cliAsync('demo', '--port', '0', '--data-dir', data, '--duration', '3', '--door-every', '500');
      assert.equal(r.status, 0, r.stderr);
      const open: string[] = [];
      const walk = (p: string) => {
        const st = statSync(p);
        if ((st.mode & 0o077) !== 0) open.push(`${path.relative(data, p) || '.'} ${(st.mode & 0o777).toString(8)}`);
        if (st.isDirectory()) for (const f of readdirSync(p)) walk(path.join(p, f));
      };
      walk(data);
      assert.deepEqual(open, [], 'group or others may read these');
    } finally {
      await dir.cleanup();
    }
  });
});
