import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import type { UplinkConfig } from '../../edge/config-types.js';
import { makeEnvelope } from '../../edge/envelope.js';
import { silentLogger } from '../../edge/log.js';
import { LevelOutbox } from '../../sync/outbox.js';
import { Uplink } from '../../sync/uplink.js';
import { startTestCentral, type TestCentral } from '../helpers/central.js';
import { startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

const site = 'pengqu-qumei';
const ROOT = join(__dirname, '..', '..');

/** The uplink in a child process: what `kill -9` of the runtime looks like to the broker. */
const CHILD = `
const { Uplink } = require(${JSON.stringify(join(ROOT, 'sync/uplink.ts'))});
const { LevelOutbox } = require(${JSON.stringify(join(ROOT, 'sync/outbox.ts'))});
const { silentLogger } = require(${JSON.stringify(join(ROOT, 'edge/log.ts'))});
const o = JSON.parse(process.env.EDGEWARD_TEST_UPLINK);
(async () => {
  const outbox = new LevelOutbox({ dir: o.dir, maxBytes: 1e7, site: o.site, edge: o.edge });
  await outbox.open();
  const uplink = new Uplink({ config: o.config, site: o.site, edge: o.edge, version: 'child-1', outbox,
    log: silentLogger(), keepaliveS: 2 });
  uplink.on('connect', () => process.stdout.write('connected\\n'));
  await uplink.start();
})().catch((err) => { console.error(err); process.exit(1); });
`;

describe('uplink status and last will (integration)', function () {
  this.timeout(30_000);
  let broker: TestMosquitto;
  let dir: TmpDir;
  let central: TestCentral | undefined;
  let late: TestCentral | undefined;
  let child: ChildProcess | undefined;

  before(async () => {
    broker = await startMosquitto();
  });
  beforeEach(async () => {
    dir = await tmpDir('uplink-status');
  });
  afterEach(async () => {
    child?.kill('SIGKILL');
    await central?.close();
    await late?.close();
    central = late = child = undefined;
    await dir.cleanup();
  });
  after(async () => {
    await broker?.stop();
  });

  const config = (): UplinkConfig => ({
    url: broker.url,
    ack: 'central',
    batch: { maxEvents: 100, maxBytes: 262144, lingerMs: 20 },
    compress: 'gzip',
  });

  it('retained status goes online, and flips to offline (the will) when the process is killed', async () => {
    const edge = 'gate-kill';
    central = await startTestCentral({ url: broker.url, site, edge, ack: true });
    child = spawn(process.execPath, ['--import', 'tsx', '-e', CHILD], {
      cwd: ROOT,
      env: {
        ...process.env,
        EDGEWARD_TEST_UPLINK: JSON.stringify({ dir: dir.path, site, edge, config: config() }),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    await waitFor(() => out.includes('connected'), {
      timeoutMs: 15_000,
      message: () => `child connected (stderr: ${err})`,
    });
    const c = central;
    await waitFor(() => c.statuses.some((s) => s.state === 'online' && s.version === 'child-1'), {
      message: 'online status seen',
    });

    child.kill('SIGKILL');
    await waitFor(() => c.statuses.at(-1)?.state === 'offline', {
      timeoutMs: 6000,
      message: 'will published',
    });
    const offline = c.statuses.at(-1)!;
    assert.equal(offline.version, 'child-1');
    assert.equal(typeof offline.outbox.events, 'number');
    // The will says it is one (its ts and depth are from the connect), and names the epoch.
    assert.equal(offline.will, true);
    assert.equal(offline.epoch, c.statuses.find((s) => s.state === 'online')?.epoch);
    assert.match(String(offline.epoch), /^[0-9A-HJKMNP-TV-Z]{26}$/);

    // Retained: a central that subscribes later sees the edge offline.
    late = await startTestCentral({ url: broker.url, site, edge, ack: false });
    const l = late;
    await waitFor(() => l.statuses.length > 0, { message: 'retained status delivered to a late subscriber' });
    assert.equal(l.statuses[0].state, 'offline');
  });

  it('refreshes the online status with the outbox depth, and publishes offline on stop()', async () => {
    const edge = 'gate-stop';
    central = await startTestCentral({ url: broker.url, site, edge, ack: false });
    const outbox = new LevelOutbox({ dir: dir.path, maxBytes: 1e7, site, edge });
    await outbox.open();
    const uplink = new Uplink({
      config: config(),
      site,
      edge,
      version: '9.9.9',
      outbox,
      log: silentLogger(),
      statusIntervalMs: 100,
    });
    try {
      await outbox.append([
        makeEnvelope({ type: 'door.opened', source: { device: 'door-1' } }, { site, edge }),
      ]);
      await uplink.start();
      const c = central;
      await waitFor(() => c.statuses.filter((s) => s.state === 'online').length >= 3, {
        message: 'periodic online refreshes',
      });
      const online = c.statuses.find((s) => s.state === 'online')!;
      assert.equal(online.version, '9.9.9');
      assert.equal(online.outbox.events, 1, 'unacked event counted in the status');
      assert.equal(online.epoch, outbox.epoch);
      assert.equal(online.will, undefined);
      await uplink.stop();
      assert.equal(uplink.status().connected, false);
      await waitFor(() => c.statuses.at(-1)?.state === 'offline', { message: 'offline published on stop' });
      assert.equal(c.statuses.at(-1)?.will, undefined, 'a clean stop is no will');
      late = await startTestCentral({ url: broker.url, site, edge, ack: false });
      const l = late;
      await waitFor(() => l.statuses.length > 0, { message: 'retained status' });
      assert.equal(l.statuses[0].state, 'offline');
    } finally {
      await uplink.stop();
      await outbox.close();
    }
  });
});
