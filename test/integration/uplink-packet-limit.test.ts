import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { parseConfig } from '../../edge/config.js';
import { makeEnvelope } from '../../edge/envelope.js';
import { isEdgewardError } from '../../edge/errors.js';
import { silentLogger } from '../../edge/log.js';
import { systemClock } from '../../edge/clock.js';
import { captureLogger } from '../helpers/log.js';
import { Runtime } from '../../edge/runtime.js';
import { LevelOutbox, outboxPath } from '../../sync/outbox.js';
import type { Uplink } from '../../sync/uplink.js';
import { startTestCentral, type TestCentral } from '../helpers/central.js';
import { startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

const SITE = 'packet-site';
const EDGE = 'gate-12';
/** The central broker's limit: Mosquitto drops the connection of a client that sends a bigger packet. */
const BROKER_MAX_PACKET = 65_536;

function config(dataDir: string, url: string, uplinkExtra: string, maxPacketBytes = BROKER_MAX_PACKET) {
  return parseConfig(
    [
      `site: ${SITE}`,
      `edge: ${EDGE}`,
      `dataDir: ${dataDir}`,
      'http: { host: 127.0.0.1, port: 0 }',
      `uplink: { url: "${url}", ack: central, maxPacketBytes: ${maxPacketBytes}${uplinkExtra} }`,
      'privacy: { siteKey: packet-test-site-key-0123456789 }',
      'log: { level: silent }',
      '',
    ].join('\n'),
    {},
  );
}

/** The runtime's uplink, to count its disconnects (each one here would be the broker refusing a packet). */
function uplinkOf(rt: Runtime): Uplink {
  return (rt as unknown as { uplink: Uplink }).uplink;
}

/** ~100 KB of base64 noise: gzip cannot bring it under the limit. */
function blob(): string {
  return randomBytes(75_000).toString('base64');
}

describe('uplink against a broker with a packet size limit (integration)', function () {
  this.timeout(60_000);
  let broker: TestMosquitto;
  let central: TestCentral;
  let dir: TmpDir;
  let rt: Runtime | undefined;

  before(async () => {
    broker = await startMosquitto({ extraConfig: [`max_packet_size ${BROKER_MAX_PACKET}`] });
    central = await startTestCentral({ url: broker.url, site: SITE, edge: EDGE, ack: true });
  });
  beforeEach(async () => {
    dir = await tmpDir('packet');
  });
  afterEach(async () => {
    await rt?.stop();
    rt = undefined;
    await dir.cleanup();
  });
  after(async () => {
    await central?.close();
    await broker?.stop();
  });

  it('splits batches larger than maxPacketBytes: everything arrives, the broker never drops the link', async () => {
    // Uncompressed, a full batch (500 events, up to 256 KiB) is ~4 times the broker's limit.
    rt = new Runtime({ config: config(dir.path, broker.url, ', compress: none'), log: silentLogger() });
    await rt.start();
    const runtime = rt;
    let disconnects = 0;
    uplinkOf(runtime).on('disconnect', () => disconnects++);
    await waitFor(() => runtime.status().uplink.connected, { message: 'uplink connected' });
    const ids: string[] = [];
    await Promise.all(
      Array.from({ length: 8 }, async (_, w) => {
        for (let i = 0; i < 5; i++) {
          const stored = await runtime.ingest(
            Array.from({ length: 100 }, (_, k) => ({
              type: 'door.opened' as const,
              source: { device: `door-${w}` },
              data: { door: k % 4, n: i * 100 + k, note: 'x'.repeat(200) },
            })),
          );
          for (const e of stored) ids.push(e.id);
        }
      }),
    );
    await waitFor(() => ids.every((id) => central.byId.has(id)), {
      timeoutMs: 30_000,
      message: () =>
        `all ${ids.length} events at the central (${ids.filter((id) => central.byId.has(id)).length} so far, ${disconnects} disconnects)`,
    });
    assert.equal(disconnects, 0, 'no batch made the broker drop the connection');
    const mine = central.batches.filter((b) => b.events.some((e) => ids.includes(e.id)));
    const largest = Math.max(...mine.map((b) => b.events.length));
    assert.ok(largest < 250, `batches were split (largest ${largest} events; a full one is 500)`);
    await waitFor(() => runtime.outbox.stats().events === 0, { message: 'all acknowledged' });
  });

  it('refuses at ingest an event that could never fit (413 over HTTP, isolated on the bus), stores nothing of it', async () => {
    rt = new Runtime({ config: config(dir.path, broker.url, ''), log: silentLogger() });
    await rt.start();
    const runtime = rt;
    const before = runtime.outbox.stats();
    const res = await fetch(`http://127.0.0.1:${runtime.port}/api/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify([
        { type: 'door.opened', source: { device: 'door-1' }, data: {} },
        { type: 'camera.motion', source: { device: 'cam-1' }, data: { blob: blob() } },
      ]),
    });
    assert.equal(res.status, 413);
    const body = (await res.json()) as { error: string; field: string };
    assert.equal(body.field, 'events[1]');
    assert.match(body.error, /at most \d+ can be sent/);
    await assert.rejects(
      runtime.ingest([{ type: 'camera.motion', source: { device: 'cam-1' }, data: { blob: blob() } }]),
      (e) => isEdgewardError(e, 'EDGE_OUTBOX_EVENT_TOO_LARGE'),
    );
    assert.deepEqual(runtime.outbox.stats(), before, 'nothing stored');
    // On the bus, in one tick with an alarm: the alarm is stored all the same.
    runtime.bus.emit('event.input', {
      type: 'camera.motion',
      source: { device: 'cam-1' },
      data: { blob: blob() },
    });
    runtime.bus.emit('event.input', { type: 'door.forced', source: { device: 'door-1' }, data: { door: 0 } });
    const alarm = await waitFor(
      () => [...central.byId.values()].find((e) => e.type === 'door.forced' && e.source.device === 'door-1'),
      { timeoutMs: 10_000, message: 'the alarm of the same tick at the central' },
    );
    assert.equal(alarm.edge, EDGE);
    assert.match(await runtime.metrics.registry.metrics(), /^edgeward_ingest_errors_total 1$/m);
  });

  it('keeps, and does not send, a stored event too large for the limit; the rest flows and the link stays up', async () => {
    // Stored earlier, with no limit (say, before maxPacketBytes was lowered).
    const earlier = new LevelOutbox({ dir: outboxPath(dir.path), maxBytes: 1 << 30, site: SITE, edge: EDGE });
    await earlier.open();
    const env = (data: Record<string, unknown>, type: 'door.opened' | 'camera.motion' = 'door.opened') =>
      makeEnvelope({ type, source: { device: 'dev-1' }, data }, { site: SITE, edge: EDGE });
    const [first, huge, last] = await earlier.append([
      env({ n: 1 }),
      env({ blob: blob() }, 'camera.motion'),
      env({ n: 2 }),
    ]);
    await earlier.close();

    rt = new Runtime({ config: config(join(dir.path), broker.url, ''), log: silentLogger() });
    let disconnects = 0;
    await rt.start();
    const runtime = rt;
    uplinkOf(runtime).on('disconnect', () => disconnects++);
    await waitFor(() => central.byId.has(first.id) && central.byId.has(last.id), {
      timeoutMs: 15_000,
      message: 'the events around it at the central',
    });
    await waitFor(() => runtime.outbox.stats().events === 1, { message: 'the others acknowledged' });
    assert.equal(central.byId.has(huge.id), false);
    assert.equal(disconnects, 0);
    const health = runtime.health();
    assert.equal(health.ok, false);
    assert.ok(
      health.problems.includes('1 stored events too large for uplink.maxPacketBytes: kept, not sent'),
      JSON.stringify(health.problems),
    );
    assert.match(await runtime.metrics.registry.metrics(), /^edgeward_uplink_unsendable_events 1$/m);
  });
  it('maxPacketBytes set above the broker\'s limit (the broker drops the link at each publish): backs off, logs little, /healthz says so', async () => {
    let offset = 0;
    // Only now() is shifted; the reconnect timers run for real.
    const clock = { ...systemClock, now: () => Date.now() + offset };
    const logs = captureLogger('info');
    // 128 KiB allowed here, 64 KiB at the broker: an event of ~100 KB of noise is sent, and refused.
    rt = new Runtime({ config: config(dir.path, broker.url, ', compress: none', 128 * 1024), log: logs.log, clock });
    await rt.start();
    const runtime = rt;
    const uplink = uplinkOf(runtime);
    const connects: number[] = [];
    uplink.on('connect', () => connects.push(performance.now()));
    await waitFor(() => runtime.status().uplink.connected, { message: 'uplink connected' });
    await runtime.ingest([{ type: 'camera.motion', source: { device: 'cam-1' }, data: { blob: blob() } }]);
    const sentAt = Date.now();
    await waitFor(() => connects.length >= 6, { timeoutMs: 30_000, message: 'six connections made and dropped' });
    // Backoff 250, 500, 1000, 2000, 4000 ms (±30 %: at least 5.4 s) between them. It stayed at
    // 250 ms before: 2.0-2.5 s for five reconnects, the connect and the drop included (measured).
    const elapsed = connects[5] - connects[0];
    assert.ok(elapsed >= 4_500, `the reconnect backoff grows: ${Math.round(elapsed)} ms for five reconnects`);
    const dropLines = logs.lines.filter((l) => String(l.msg).startsWith('uplink disconnected') || String(l.msg).startsWith('uplink connections keep'));
    assert.equal(dropLines.length, 1, JSON.stringify(dropLines.map((l) => l.msg)));
    assert.equal(dropLines[0].msg, 'uplink disconnected soon after connecting');
    assert.equal(logs.lines.filter((l) => l.msg === 'uplink connected').length, 1, 'reconnections logged at debug');
    // None of these connections worked: the uplink counts as down since the first drop.
    const down = uplink.status().downForMs;
    assert.ok(down >= Date.now() - sentAt - 1000, `downForMs ${down}`);
    // A minute on (shifted as a connection drops, so that none seems to have lasted a minute):
    // even at the moment of the next connection, /healthz says it.
    uplink.once('disconnect', () => {
      offset = 61_000;
    });
    await new Promise<void>((resolve) => uplink.once('disconnect', () => resolve()));
    const health = await new Promise<ReturnType<Runtime['health']>>((resolve) => uplink.once('connect', () => resolve(runtime.health())));
    assert.equal(health.ok, false);
    // 61 s shifted, plus the real seconds since the first drop.
    const waited = health.problems
      .map((p) => /^no working uplink connection for (\d+) s \(connections drop soon after they are made\)$/.exec(p))
      .find((m) => m !== null);
    assert.ok(waited && Number(waited[1]) >= 61, JSON.stringify(health.problems));
  });
});
