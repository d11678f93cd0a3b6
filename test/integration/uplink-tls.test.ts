import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { UplinkConfig } from '../../edge/config-types.js';
import { makeEnvelope } from '../../edge/envelope.js';
import { createLogger, silentLogger } from '../../edge/log.js';
import { LevelOutbox } from '../../sync/outbox.js';
import { Uplink } from '../../sync/uplink.js';
import { startTestCentral, type TestCentral } from '../helpers/central.js';
import { startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { stopUplinkHarness } from '../helpers/uplink-harness.js';
import { waitFor } from '../helpers/wait.js';

const site = 'pengqu-qumei';
const edge = 'gate-07';

/** A throwaway CA, a server cert for 127.0.0.1 and a client cert, made with the openssl CLI. */
function makePki(
  dir: string,
): Record<'ca' | 'serverCert' | 'serverKey' | 'clientCert' | 'clientKey', string> {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  ssl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=edgeward-test-ca',
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
  );
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  for (const name of ['server', 'client']) {
    ssl(
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      `/CN=${name}`,
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.csr`,
    );
    ssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      '2',
      '-out',
      `${name}.pem`,
      ...(name === 'server' ? ['-extfile', 'server.ext'] : []),
    );
  }
  // Mosquitto may drop root privileges before reading its key: let it.
  chmodSync(dir, 0o755);
  for (const f of ['ca.pem', 'server.pem', 'server.key']) chmodSync(join(dir, f), 0o644);
  return {
    ca: join(dir, 'ca.pem'),
    serverCert: join(dir, 'server.pem'),
    serverKey: join(dir, 'server.key'),
    clientCert: join(dir, 'client.pem'),
    clientKey: join(dir, 'client.key'),
  };
}

describe('uplink over mutual TLS (integration, Mosquitto require_certificate)', function () {
  this.timeout(30_000);
  let dir: TmpDir;
  let pki: ReturnType<typeof makePki>;
  let broker: TestMosquitto;
  let outbox: LevelOutbox;
  let uplink: Uplink | undefined;
  let central: TestCentral;

  /** An uplink that retries every 50-200 ms, and the records of its debug log. */
  function retryingUplink(config: UplinkConfig): { u: Uplink; lines: Array<{ msg?: string }> } {
    const lines: Array<{ msg?: string }> = [];
    const log = createLogger({ level: 'debug', destination: { write: (l: string) => lines.push(JSON.parse(l)) } });
    uplink = new Uplink({ config, site, edge, version: 't', outbox, log, reconnectMinMs: 50, reconnectMaxMs: 200 });
    return { u: uplink, lines };
  }

  before(async () => {
    dir = await tmpDir('uplink-tls');
    pki = makePki(dir.path);
    broker = await startMosquitto({
      tls: { cafile: pki.ca, certfile: pki.serverCert, keyfile: pki.serverKey, requireCertificate: true },
    });
    outbox = new LevelOutbox({ dir: join(dir.path, 'outbox'), maxBytes: 1e8, site, edge });
    await outbox.open();
  });

  after(async () => {
    await stopUplinkHarness({ uplink, central, outbox, broker, dir });
  });

  it('connects with ca/cert/key files and delivers acked events', async () => {
    central = await startTestCentral({
      url: broker.url,
      site,
      edge,
      ack: true,
      tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
    });
    const config: UplinkConfig = {
      url: broker.url,
      ca: pki.ca,
      cert: pki.clientCert,
      key: pki.clientKey,
      username: 'gate-07',
      password: 'secret',
      ack: 'central',
      batch: { maxEvents: 50, maxBytes: 262144, lingerMs: 20 },
      compress: 'gzip',
    };
    uplink = new Uplink({ config, site, edge, version: 't', outbox, log: silentLogger() });
    await outbox.append(
      Array.from({ length: 30 }, (_, i) =>
        makeEnvelope({ type: 'door.opened', source: { device: 'door-1' }, data: { i } }, { site, edge }),
      ),
    );
    await uplink.start();
    await waitFor(() => uplink!.status().connected, { timeoutMs: 10_000, message: 'TLS connect' });
    await waitFor(() => outbox.stats().events === 0, { timeoutMs: 10_000, message: 'acked over TLS' });
    assert.equal(central.byId.size, 30);
  });

  it('uses a renewed client certificate at the next connection, without a restart', async () => {
    await uplink?.stop();
    // The box's certificate is one the broker does not trust (another CA): every handshake fails.
    mkdirSync(join(dir.path, 'other'));
    const other = makePki(join(dir.path, 'other'));
    const cert = join(dir.path, 'rotating.pem');
    const key = join(dir.path, 'rotating.key');
    copyFileSync(other.clientCert, cert);
    copyFileSync(other.clientKey, key);
    const config: UplinkConfig = {
      url: broker.url,
      ca: pki.ca,
      cert,
      key,
      ack: 'central',
      batch: { maxEvents: 50, maxBytes: 262144, lingerMs: 20 },
      compress: 'gzip',
    };
    const { u, lines } = retryingUplink(config);
    let connects = 0;
    u.on('connect', () => connects++);
    const [e] = await outbox.append([
      makeEnvelope({ type: 'door.opened', source: { device: 'door-2' } }, { site, edge }),
    ]);
    await u.start();
    await waitFor(() => lines.filter((l) => l.msg === 'reconnect scheduled').length >= 3, {
      message: 'three refused handshakes',
    });
    assert.equal(connects, 0);
    // The renewal lands on disk, as a cert-manager or a cron job would write it.
    copyFileSync(pki.clientCert, `${cert}.new`);
    copyFileSync(pki.clientKey, `${key}.new`);
    renameSync(`${key}.new`, key);
    renameSync(`${cert}.new`, cert);
    await waitFor(() => u.status().connected, {
      timeoutMs: 10_000,
      message: 'connected with the renewed certificate',
    });
    await waitFor(() => central.byId.has(e.id) && outbox.stats().events === 0, {
      timeoutMs: 10_000,
      message: 'the event delivered and acked',
    });
    assert.equal(connects, 1, 'the first connection is the one with the renewed certificate');
  });

  it('does not connect without a client certificate (and keeps the events)', async () => {
    await uplink?.stop();
    const config: UplinkConfig = {
      url: broker.url,
      ca: pki.ca,
      ack: 'central',
      batch: { maxEvents: 50, maxBytes: 262144, lingerMs: 20 },
      compress: 'gzip',
    };
    const { u, lines } = retryingUplink(config);
    let published = 0;
    u.on('publish', () => {
      published++;
    });
    await outbox.append([
      makeEnvelope({ type: 'door.opened', source: { device: 'door-1' } }, { site, edge }),
    ]);
    await u.start();
    let connects = 0;
    u.on('connect', () => connects++);
    // The TLS handshake is refused: several failed attempts, each followed by a scheduled retry.
    await waitFor(() => lines.filter((l) => l.msg === 'reconnect scheduled').length >= 3, {
      message: 'three refused attempts',
    });
    assert.equal(u.status().connected, false);
    assert.equal(connects, 0);
    assert.equal(published, 0);
    assert.equal(outbox.stats().events, 1);
  });
});
