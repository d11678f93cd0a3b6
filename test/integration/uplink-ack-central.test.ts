import assert from 'node:assert/strict';
import { systemClock } from '../../edge/clock.js';
import { parseConfig } from '../../edge/config.js';
import { makeEnvelope } from '../../edge/envelope.js';
import { silentLogger } from '../../edge/log.js';
import { Runtime } from '../../edge/runtime.js';
import type { UplinkConfig } from '../../edge/config-types.js';
import { LevelOutbox } from '../../sync/outbox.js';
import { MAX_ACK_BYTES, Uplink } from '../../sync/uplink.js';
import { type AckPolicy, startTestCentral, type TestCentral } from '../helpers/central.js';
import { startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';
import { captureLogger } from '../helpers/log.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { stopUplinkHarness } from '../helpers/uplink-harness.js';
import { waitFor } from '../helpers/wait.js';

const site = 'pengqu-qumei';
const edge = 'gate-07';

describe('uplink, ack: central (integration, Mosquitto + LevelOutbox)', function () {
  this.timeout(30_000);
  let broker: TestMosquitto;
  let dir: TmpDir;
  let outbox: LevelOutbox;
  let uplink: Uplink;
  let central: TestCentral;
  let logs: ReturnType<typeof captureLogger>;

  before(async () => {
    broker = await startMosquitto();
  });
  after(async () => {
    await broker?.stop();
  });

  async function setup(ack: AckPolicy, ackEpoch?: string, url = broker.url): Promise<void> {
    dir = await tmpDir('uplink-ack');
    outbox = new LevelOutbox({ dir: dir.path, maxBytes: 64 * 1024 * 1024, site, edge });
    await outbox.open();
    central = await startTestCentral({ url: broker.url, site, edge, ack, ackEpoch });
    logs = captureLogger();
    const config: UplinkConfig = {
      url,
      ack: 'central',
      batch: { maxEvents: 50, maxBytes: 262144, lingerMs: 20 },
      compress: 'gzip',
      ackTimeoutMs: 1000,
    };
    uplink = new Uplink({ config, site, edge, version: '0.1.0-test', outbox, log: logs.log });
    await uplink.start();
    await waitFor(() => uplink.status().connected, { message: 'uplink connected' });
  }

  afterEach(async () => {
    // The broker is shared by the tests: stopped in after().
    await stopUplinkHarness({ uplink, central, outbox, dir });
  });

  async function append(n: number): Promise<number[]> {
    const envs = Array.from({ length: n }, (_, i) =>
      makeEnvelope({ type: 'sensor.reading', source: { device: 'smoke-1' }, data: { i } }, { site, edge }),
    );
    const stored = await outbox.append(envs);
    return stored.map((e) => e.seq!);
  }

  it('logs the broker URL without its userinfo, also with a raw @ in the password', async () => {
    await setup(true, undefined, broker.url.replace('://', '://gate:Tr0ub@dor-S3cret@'));
    const connected = logs.lines.find((l) => l.msg === 'uplink connected');
    assert.equal(connected?.url, broker.url);
    const text = JSON.stringify(logs.lines);
    assert.ok(!text.includes('dor-S3cret') && !text.includes('Tr0ub'), 'no part of the password is logged');
  });

  it('deletes nothing before the central acks, resends after the timeout, drains once acked', async () => {
    await setup(false);
    await append(120);
    await waitFor(() => central.byId.size === 120, { message: 'central received all 120 events' });
    assert.equal(outbox.stats().events, 120, 'nothing leaves the outbox before an ack');
    // Unacked batches come again after ackTimeoutMs.
    await waitFor(() => central.arrivals.length >= 240, {
      timeoutMs: 8000,
      message: 'unacked batches resent',
    });
    assert.equal(outbox.stats().events, 120, 'still nothing deleted');
    assert.equal(uplink.status().lastAckAt, null);
    central.setAck(true);
    // Resends are paced: every timeout so far doubled the next (up to 8 × ackTimeoutMs), so the
    // waiting batches come again within 8 s of the central's recovery.
    await waitFor(() => outbox.stats().events === 0, {
      timeoutMs: 15_000,
      message: 'outbox drained after acks',
    });
    await waitFor(() => uplink.status().inflightBatches === 0, { message: 'no batch left in flight' });
    assert.ok(uplink.status().lastAckAt);
    assert.equal(typeof uplink.status().ackLagMs, 'number');
  });

  it('a central that ignores every first delivery still gets everything, via resends', async () => {
    const seen = new Map<string, number>();
    await setup((batch) => {
      let again = true;
      for (const e of batch.events) {
        const n = (seen.get(e.id) ?? 0) + 1;
        seen.set(e.id, n);
        if (n < 2) again = false;
      }
      return again;
    });
    await append(75);
    await waitFor(() => outbox.stats().events === 0, { timeoutMs: 10_000, message: 'drained via resends' });
    assert.equal(central.byId.size, 75);
    for (const [, n] of seen) assert.ok(n >= 2, 'every event was delivered at least twice');
  });

  it('ignores (and logs, once a minute at most) acks with another epoch', async () => {
    await setup(true, 'ANOTHER-EPOCH');
    const seqs = await append(60);
    await waitFor(() => central.byId.size === 60, { message: 'central received all' });
    await waitFor(() => logs.lines.some((l) => l.msg === 'ignoring ack for another outbox epoch'), {
      message: 'foreign-epoch ack logged',
    });
    // A second box with this site/edge, or a central acking an old store, sends them for as long as it lasts.
    for (let i = 0; i < 50; i++) await central.publishRawAck(JSON.stringify({ epoch: 'ANOTHER-EPOCH', seqs: [[1, 60]] }));
    // A valid ack sent after the foreign ones is applied after them (one publisher, in order).
    await central.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[seqs[0], seqs[0]]] }));
    await waitFor(() => outbox.stats().events === 59, { message: 'the valid ack was applied' });
    assert.equal(outbox.stats().events, 59, 'foreign-epoch acks deleted nothing');
    assert.equal(logs.lines.filter((l) => l.msg === 'ignoring ack for another outbox epoch').length, 1, 'one line for 50+ acks within a minute');
  });

  it('an ack payload over MAX_ACK_BYTES is ignored as malformed before it is parsed, and deletes nothing', async () => {
    await setup(false);
    const seqs = await append(30);
    await waitFor(() => central.byId.size === 30, { message: 'central received all' });
    // Valid JSON, the right epoch, every seq sent: only its size is wrong (one range per seq, repeated).
    const ranges = Array.from({ length: Math.ceil(MAX_ACK_BYTES / 5) }, (_, i) => [seqs[i % 30], seqs[i % 30]]);
    const big = JSON.stringify({ epoch: outbox.epoch, seqs: ranges });
    assert.ok(big.length > MAX_ACK_BYTES);
    await central.publishRawAck(big);
    await central.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[seqs[0], seqs[0]]] }));
    await waitFor(() => outbox.stats().events === 29, { message: 'the valid ack after the big one was applied' });
    const warned = logs.lines.filter((l) => l.msg === 'ignoring malformed ack');
    assert.equal(warned.length, 1);
    assert.match(String(warned[0].err), /^ack payload of \d+ bytes, over 1048576: not parsed$/);
  });

  it('malformed ack payloads change nothing and are logged (once a minute at most)', async () => {
    await setup(false);
    const seqs = await append(30);
    await waitFor(() => central.byId.size === 30, { message: 'central received all' });
    const bad = [
      'not json at all',
      '',
      '[]',
      '{"epoch":"x"}',
      JSON.stringify({ epoch: outbox.epoch, seqs: 'all' }),
      JSON.stringify({ epoch: outbox.epoch, seqs: [[5, 1]] }),
      JSON.stringify({ epoch: outbox.epoch, seqs: [[0, 10]] }),
      JSON.stringify({ epoch: outbox.epoch, seqs: [[1, 2, 3]] }),
      JSON.stringify({ epoch: outbox.epoch, seqs: [['1', '30']] }),
      JSON.stringify({ epoch: 42, seqs: [[1, 30]] }),
    ];
    for (const b of bad) await central.publishRawAck(b);
    await central.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[seqs[29], seqs[29]]] }));
    await waitFor(() => outbox.stats().events === 29, {
      message: 'the valid ack after the bad ones was applied',
    });
    const warned = logs.lines.filter((l) => l.msg === 'ignoring malformed ack');
    // The first at once; the rest are counted into the next line, a minute later at the earliest
    // (a central looping on a bad ack wrote one line per message).
    assert.equal(warned.length, 1, 'one line for ten malformed acks within a minute');
    assert.equal(warned[0].level, 40, 'as a warning');
    assert.equal(warned[0].malformedAcks, 1);
  });
});

describe('runtime health when the central does not ack (integration, Mosquitto)', function () {
  this.timeout(30_000);
  let broker: TestMosquitto;
  let central: TestCentral | undefined;
  let dir: TmpDir | undefined;
  let rt: Runtime | undefined;

  before(async () => {
    broker = await startMosquitto();
  });
  afterEach(async () => {
    await rt?.stop();
    await central?.close();
    await dir?.cleanup();
    rt = central = dir = undefined;
  });
  after(async () => {
    await broker?.stop();
  });

  /**
   * A started runtime (ackTimeoutMs 300, no linger) whose clock's now() the
   * test shifts (`shift(ms)`); timers (ack timeouts, resends) run for real.
   * Its central acks by `policy`.
   */
  async function start(policy: AckPolicy): Promise<{ runtime: Runtime; c: TestCentral; shift: (ms: number) => void }> {
    central = await startTestCentral({ url: broker.url, site, edge, ack: policy });
    dir = await tmpDir('ack-silent');
    let offset = 0;
    const clock = { ...systemClock, now: () => Date.now() + offset };
    const config = parseConfig(
      [
        `site: ${site}`,
        `edge: ${edge}`,
        `dataDir: ${dir.path}`,
        'http: { host: 127.0.0.1, port: 0 }',
        `uplink: { url: "${broker.url}", ack: central, ackTimeoutMs: 300, batch: { maxEvents: 500, maxBytes: 262144, lingerMs: 0 } }`,
        'privacy: { siteKey: ack-silent-site-key-0123456789 }',
        'log: { level: silent }',
      ].join('\n'),
      {},
    );
    rt = new Runtime({ config, log: silentLogger(), clock });
    await rt.start();
    const runtime = rt;
    await waitFor(() => runtime.status().uplink.connected, { message: 'uplink connected' });
    return {
      runtime,
      c: central,
      shift: (ms) => {
        offset = ms;
      },
    };
  }

  it('says 503 on /healthz once batches have waited over 60 s for an ack (resends do not reset it), and 200 once acks flow', async () => {
    // Connected and subscribed, but it acks nothing: as a central that swallows batches,
    // or a broker ACL that drops the edge's publishes (MQTT 3.1.1 still PUBACKs them).
    const { runtime, c: central, shift } = await start(false);
    const healthz = async () => {
      const res = await fetch(`http://127.0.0.1:${runtime.port}/healthz`);
      return { status: res.status, body: (await res.json()) as { problems: string[] } };
    };
    const [alarm] = await runtime.ingest([{ type: 'door.forced', source: { device: 'door-1' }, data: { door: 0 } }]);
    await waitFor(() => central.byId.has(alarm.id), { message: 'the batch reached the central' });
    assert.equal((await healthz()).status, 200, 'waiting a little for an ack is normal');
    shift(61_000);
    // Resends after the ack timeout go on meanwhile; they are not progress.
    await waitFor(() => central.arrivals.length >= 3, { message: 'resent at least twice' });
    // Sampled until seen: between an ack timeout and its resend nothing is in flight for a moment.
    const silent = await waitFor(
      async () => {
        const h = await healthz();
        return h.status === 503 && h.body.problems.some((p) => /^oldest event sent 6\d s ago still not acknowledged by the central \(1 batches in flight\)$/.test(p)) ? h : undefined;
      },
      { message: 'the silent central reported' },
    );
    assert.equal(silent.status, 503);
    central.setAck(true);
    await waitFor(() => runtime.outbox.stats().events === 0, { message: 'acked once the central acks' });
    assert.equal((await healthz()).status, 200);
  });

  it('says 503 once its oldest unacked event was sent over 60 s ago, however many other batches are acked meanwhile', async () => {
    // A central that cannot store one event (a bug, a constraint it violates) and acks the rest.
    const { runtime, c: central, shift } = await start((batch) => !batch.events.some((e) => e.data.poison === true));
    const [poison] = await runtime.ingest([{ type: 'door.opened', source: { device: 'door-1' }, data: { poison: true } }]);
    await waitFor(() => central.byId.has(poison.id), { message: 'the poison event reached the central' });
    shift(61_000);
    // Acks flow for everything else meanwhile: that is progress, but not for the oldest event.
    for (let i = 0; i < 3; i++) {
      const [ok] = await runtime.ingest([{ type: 'door.opened', source: { device: 'door-2' }, data: { i } }]);
      await waitFor(() => central.byId.has(ok.id) && runtime.outbox.stats().events === 1, {
        message: 'another event delivered and acked, only the poison event left',
      });
    }
    // Sampled until seen: between an ack timeout and its resend nothing is in flight for a moment.
    await waitFor(
      () => runtime.health().problems.some((p) => /^oldest event sent 6\d s ago still not acknowledged by the central \(\d+ batches in flight\)$/.test(p)),
      { message: () => `the refused batch reported: ${JSON.stringify(runtime.health().problems)}` },
    );
    central.setAck(true);
    await waitFor(() => runtime.outbox.stats().events === 0, { message: 'acked once the central can' });
    assert.equal(runtime.health().ok, true, JSON.stringify(runtime.health().problems));
  });
});
