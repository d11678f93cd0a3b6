import assert from 'node:assert/strict';
import { parseConfig } from '../../edge/config.js';
import { type Envelope, type EventType, makeEnvelope, type Severity } from '../../edge/envelope.js';
import { type HeldLossData, HeldEvents } from '../../edge/held-events.js';
import { silentLogger } from '../../edge/log.js';
import { captureLogger } from '../helpers/log.js';
import { Runtime } from '../../edge/runtime.js';
import { diskFull, replaceBatchWrites } from '../helpers/batch-writes.js';
import { ManualClock } from '../helpers/clock.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

const IDS = { site: 's', edge: 'gate-01' };

function ev(severity: Severity, n: number, type: EventType = 'door.opened'): Envelope {
  return makeEnvelope(
    { type, severity, source: { device: 'door-1' }, data: { n } },
    IDS,
    Date.UTC(2025, 0, 1, 0, 0, n),
  );
}

describe('HeldEvents: bus events kept while the outbox cannot write', () => {
  it('keeps events oldest first, as they were made', () => {
    const h = new HeldEvents(10);
    const a = [ev('info', 1), ev('critical', 2), ev('warning', 3)];
    h.hold(a);
    assert.equal(h.size, 3);
    assert.ok(h.pending);
    assert.deepEqual(h.take(IDS, 0), a, 'the same envelopes: ids and ts unchanged');
    assert.equal(h.size, 0);
    assert.equal(h.pending, false);
  });

  it('past the bound drops the oldest info, then the oldest warnings, never a critical; one edge.events_lost reports it', () => {
    const h = new HeldEvents(3);
    h.hold([ev('warning', 1), ev('critical', 2), ev('info', 3), ev('info', 4)]);
    assert.deepEqual(
      h
        .take(IDS, 0)
        .slice(0, -1)
        .map((e) => e.data.n),
      [1, 2, 4],
      'the oldest info went',
    );
    h.hold([ev('critical', 5), ev('warning', 6), ev('critical', 7), ev('critical', 8), ev('info', 9)]);
    const taken = h.take(IDS, Date.UTC(2025, 0, 2));
    // 5 held, bound 3: the info, then the oldest warning.
    assert.deepEqual(
      taken.slice(0, -1).map((e) => e.data.n),
      [5, 7, 8],
    );
    const report = taken.at(-1)!;
    assert.equal(report.type, 'edge.events_lost');
    assert.equal(report.severity, 'warning');
    assert.ok(report.msg?.zh && report.msg.bo && report.msg.en, 'trilingual, as every warning');
    assert.deepEqual(report.source, { device: 'gate-01', driver: 'runtime' });
    assert.deepEqual(report.data as unknown as HeldLossData, {
      count: 2,
      reason: 'outbox_write_failed',
      bySeverity: { info: 1, warning: 1 },
      fromTs: '2025-01-01T00:00:06.000Z',
      toTs: '2025-01-01T00:00:09.000Z',
    });
  });

  it('the first loss report is made by the first take, and a failed store puts everything back, report merged', () => {
    const h = new HeldEvents(2);
    h.hold([ev('info', 1), ev('info', 2), ev('info', 3)]);
    const first = h.take(IDS, 0);
    assert.equal(first.at(-1)!.type, 'edge.events_lost');
    assert.equal((first.at(-1)!.data as unknown as HeldLossData).count, 1);
    // Storing failed; meanwhile two more came and the bound is 2 again.
    h.hold([ev('critical', 4)]);
    h.putBack(first);
    const again = h.take(IDS, 0);
    assert.deepEqual(
      again.slice(0, -1).map((e) => e.data.n),
      [3, 4],
      'put back ahead of the newer one, the oldest info dropped again',
    );
    assert.equal((again.at(-1)!.data as unknown as HeldLossData).count, 2, 'both losses in one report');
    assert.equal(h.pending, false);
  });

  it('is bounded in bytes too: big info events go first, and the bytes held are those kept', () => {
    const big = (severity: Severity, n: number) =>
      makeEnvelope(
        { type: 'camera.motion', severity, source: { device: 'cam-1' }, data: { n, pad: 'z'.repeat(10_000) } },
        IDS,
        Date.UTC(2025, 0, 1, 0, 0, n),
      );
    const all = [big('info', 1), big('critical', 2), big('info', 3), big('warning', 4), big('info', 5)];
    const size = (e: Envelope) => Buffer.byteLength(JSON.stringify(e));
    // Room for the last three (a critical, a warning, an info), not one byte more.
    const h = new HeldEvents(1000, size(all[1]) + size(all[3]) + size(all[4]));
    h.hold(all);
    const kept = h.take(IDS, 0);
    assert.deepEqual(
      kept.slice(0, -1).map((e) => e.data.n),
      [2, 4, 5],
      'the two oldest info events went',
    );
    assert.equal((kept.at(-1)!.data as unknown as HeldLossData).count, 2);
    assert.equal(h.heldBytes, 0, 'nothing held once taken');
    h.hold([all[0]]);
    assert.equal(h.heldBytes, size(all[0]));
  });

  it('criticals alone may exceed the bound: they are never dropped', () => {
    const h = new HeldEvents(2);
    h.hold([ev('critical', 1), ev('critical', 2), ev('critical', 3)]);
    assert.equal(h.size, 3);
    assert.ok(h.take(IDS, 0).every((e) => e.type !== 'edge.events_lost'));
  });
});

describe('runtime, its store on a disk that fails (a real LevelDB, its batch writes replaced)', function () {
  this.timeout(30_000);
  let dir: TmpDir;
  let runtime: Runtime | undefined;

  beforeEach(async () => {
    dir = await tmpDir('held');
  });
  afterEach(async () => {
    await runtime?.stop();
    runtime = undefined;
    await dir.cleanup();
  });

  /** A started runtime on `clock`, no uplink, its data in this test's dir. */
  async function start(clock: ManualClock, extra = '', log = silentLogger()): Promise<Runtime> {
    const config = parseConfig(
      `site: s\nedge: gate-01\ndataDir: ${dir.path}\nhttp: { host: 127.0.0.1, port: 0 }\nprivacy: { siteKey: held-test-site-key-0123456789 }\nlog: { level: silent }\n${extra}`,
      {},
    );
    runtime = new Runtime({ config, log, clock });
    await runtime.start();
    return runtime;
  }

  it('bus events refused by a store that cannot write: keeps id and ts, reports them held in /healthz and metrics, stores them within a retry of the store coming back', async () => {
    const clock = new ManualClock();
    const rt = await start(clock);
    // Stand-in for a full disk (the real one: integration/outbox-disk-full and outbox-enospc).
    const restore = replaceBatchWrites(rt.outbox, async () => {
      throw diskFull();
    });
    const emittedAt = clock.now();
    try {
      rt.bus.emit('event.input', { type: 'door.forced', source: { device: 'door-1' }, data: { door: 0 } });
      rt.bus.emit('event.input', { type: 'door.opened', source: { device: 'door-2' }, data: { door: 1 } });
      await waitFor(() => (rt.health().outbox as { heldEvents?: number }).heldEvents === 2, {
        message: () => `2 bus events held: ${JSON.stringify(rt.health())}`,
      });
      const health = rt.health();
      assert.equal(health.ok, false, 'the write failure is a problem');
      const metrics = await rt.metrics.registry.metrics();
      assert.match(metrics, /^edgeward_ingest_held_events 2$/m);
      assert.match(metrics, /^edgeward_ingest_errors_total 0$/m, 'held is not lost');
      assert.equal(rt.outbox.stats().events, 0);
      // A retry while the disk is still full holds them again, and schedules the next.
      const failures = rt.outbox.stats().writeError!.failures;
      clock.advance(1000);
      await waitFor(
        () => rt.outbox.stats().writeError!.failures > failures && clock.pending().includes(1000),
        {
          message: 'a retry failed and the next one is scheduled',
        },
      );
      assert.equal((rt.health().outbox as { heldEvents?: number }).heldEvents, 2);
    } finally {
      restore();
    }
    // The wall clock steps back an hour (NTP) as the disk gets room again: the next retry
    // still reopens the store (its rate limit must not wait for the clock to catch up).
    clock.jump(-3_600_000);
    clock.advance(1000);
    await waitFor(() => rt.outbox.stats().events === 2, {
      message: 'the held events stored once the store writes',
    });
    const stored = rt.outbox.recent(2).reverse();
    assert.deepEqual(
      stored.map((e) => [e.type, e.source.device, e.ts]),
      [
        ['door.forced', 'door-1', new Date(emittedAt).toISOString()],
        ['door.opened', 'door-2', new Date(emittedAt).toISOString()],
      ],
      'stored in order, with the ts of when they happened (not of the store, an hour earlier by the clock)',
    );
    assert.equal((rt.health().outbox as { heldEvents?: number }).heldEvents, undefined);
    // The failures said "no space": the disk reserve went, and is written back now that writes work.
    await waitFor(() => rt.health().ok, { message: () => `healthy again: ${JSON.stringify(rt.health().problems)}` });
    assert.match(await rt.metrics.registry.metrics(), /^edgeward_ingest_held_events 0$/m);
  });

  /** Critical events of ~100 KB each, straight into the store, until `bytes` of them are stored. */
  async function storeAlarms(rt: Runtime, bytes: number, clock: ManualClock): Promise<void> {
    while (rt.outbox.stats().bySeverity.critical.bytes < bytes) {
      await rt.outbox.append([
        makeEnvelope({ type: 'door.forced', source: { device: 'door-9' }, data: { pad: 'x'.repeat(100_000) } }, IDS, clock.now()),
      ]);
    }
  }

  /** Let the event loop turn a few times (what a retry that stores nothing does is over by then). */
  async function delayTurns(n: number): Promise<void> {
    for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
  }

  function lossReports(rt: Runtime): Envelope[] {
    return rt.outbox.recent(1000).filter((e) => e.type === 'edge.events_lost');
  }

  it('bus events refused by a store full of alarms: counted, and one edge.events_lost {reason: outbox_full} once acks make room', async () => {
    const clock = new ManualClock();
    const rt = await start(clock, 'outbox: { maxBytes: 1048576 }\n');
    await storeAlarms(rt, 1_048_576, clock);
    const firstAt = new Date(clock.now()).toISOString();
    rt.bus.emit('event.input', { type: 'door.opened', source: { device: 'door-1' }, data: { door: 0 } });
    rt.bus.emit('event.input', { type: 'door.held_open', severity: 'warning', source: { device: 'door-1' }, data: { door: 0 } });
    await waitFor(async () => /^edgeward_ingest_errors_total 2$/m.test(await rt.metrics.registry.metrics()), {
      message: 'the first tick refused',
    });
    clock.advance(400);
    rt.bus.emit('event.input', { type: 'door.opened', source: { device: 'door-2' }, data: { door: 1 } });
    await waitFor(async () => /^edgeward_ingest_errors_total 3$/m.test(await rt.metrics.registry.metrics()), {
      message: 'the second tick refused',
    });
    const lastAt = new Date(clock.now()).toISOString();
    const stored = rt.outbox.stats().events;
    // Still full at the retry: no append is tried (it would be one more refusal in /healthz), the next retry is set.
    const refusals = rt.outbox.stats().refusingFull?.events;
    assert.equal(refusals, 3);
    clock.advance(1000);
    await delayTurns(5);
    assert.equal(rt.outbox.stats().events, stored, 'nothing stored while full');
    assert.equal(rt.outbox.stats().refusingFull?.events, refusals, 'no refused append of our own');
    assert.deepEqual(lossReports(rt), []);
    // The central acks two alarms: room for the report (not for the events, which are gone).
    await rt.outbox.ack([[1, 2]]);
    clock.advance(1000);
    await waitFor(() => lossReports(rt).length === 1, { message: 'the loss report stored' });
    const [report] = lossReports(rt);
    assert.equal(report.severity, 'warning');
    assert.deepEqual(report.source, { device: 'gate-01', driver: 'runtime' });
    assert.ok(report.msg?.zh && report.msg.bo && report.msg.en);
    assert.deepEqual(report.data as unknown as HeldLossData, {
      count: 3,
      reason: 'outbox_full',
      bySeverity: { info: 2, warning: 1 },
      fromTs: firstAt,
      toTs: lastAt,
    });
    // Reported once: later retries store nothing more.
    clock.advance(5000);
    await delayTurns(5);
    assert.equal(lossReports(rt).length, 1);
    assert.equal(rt.outbox.stats().events, stored - 2 + 1);
  });

  it('held bus events that meet a store full of alarms once the disk writes again: reported as refused, not held for good', async () => {
    const clock = new ManualClock();
    const rt = await start(clock, 'outbox: { maxBytes: 1048576 }\n');
    await storeAlarms(rt, 900_000, clock);
    const restore = replaceBatchWrites(rt.outbox, async () => {
      throw diskFull();
    });
    try {
      rt.bus.emit('event.input', { type: 'door.opened', source: { device: 'door-1' }, data: { door: 0 } });
      rt.bus.emit('event.input', { type: 'door.opened', source: { device: 'door-2' }, data: { door: 1 } });
      await waitFor(() => (rt.health().outbox as { heldEvents?: number }).heldEvents === 2, { message: '2 bus events held' });
    } finally {
      restore();
    }
    // Before the held events' retry, alarms fill what the disk's room allows the bound.
    await storeAlarms(rt, 1_048_576, clock);
    clock.advance(1000);
    await waitFor(async () => /^edgeward_ingest_errors_total 2$/m.test(await rt.metrics.registry.metrics()), {
      message: () => `the held events refused and counted: ${JSON.stringify(rt.health())}`,
    });
    assert.equal((rt.health().outbox as { heldEvents?: number }).heldEvents, undefined, 'no longer held');
    await rt.outbox.ack([[1, 3]]);
    clock.advance(1000);
    await waitFor(() => lossReports(rt).length === 1, { message: 'the loss report stored' });
    const data = lossReports(rt)[0].data as unknown as HeldLossData;
    assert.equal(data.reason, 'outbox_full');
    assert.equal(data.count, 2);
  });

  it('held events dropped past the bound, then a store full of alarms: both losses reported once there is room, no refused append meanwhile', async () => {
    const clock = new ManualClock();
    const rt = await start(clock, 'outbox: { maxBytes: 16777216 }\n');
    const restore = replaceBatchWrites(rt.outbox, async () => {
      throw diskFull();
    });
    try {
      // One tick of 10,005: 10,000 are held, the 5 oldest dropped (and counted at once).
      for (let i = 0; i < 10_005; i++) rt.bus.emit('event.input', { type: 'door.opened', source: { device: 'door-1' }, data: { i } });
      await waitFor(() => (rt.health().outbox as { heldEvents?: number }).heldEvents === 10_000, { message: '10,000 held' });
      assert.match(await rt.metrics.registry.metrics(), /^edgeward_ingest_errors_total 5$/m);
    } finally {
      restore();
    }
    await storeAlarms(rt, 16_777_216, clock);
    clock.advance(1000);
    await waitFor(async () => /^edgeward_ingest_errors_total 10005$/m.test(await rt.metrics.registry.metrics()), {
      message: 'the held events refused and counted',
    });
    for (let i = 0; i < 3; i++) {
      clock.advance(1000);
      await delayTurns(5);
    }
    assert.equal(rt.outbox.stats().refusingFull, undefined, 'no append of ours was refused');
    assert.deepEqual(lossReports(rt), []);
    await rt.outbox.ack([[1, 3]]);
    clock.advance(1000);
    await waitFor(() => lossReports(rt).length === 2, { message: () => `both reports stored: ${JSON.stringify(lossReports(rt).map((e) => e.data))}` });
    const byReason = Object.fromEntries(lossReports(rt).map((e) => [(e.data as unknown as HeldLossData).reason, (e.data as unknown as HeldLossData).count]));
    assert.deepEqual(byReason, { outbox_write_failed: 5, outbox_full: 10_000 });
  });

  it('a bus event refused during the stop is not reported silently: the stop says it could not store the report', async () => {
    const clock = new ManualClock();
    const { log, lines } = captureLogger('warn');
    const rt = await start(clock, 'outbox: { maxBytes: 1048576 }\n', log);
    await storeAlarms(rt, 1_048_576, clock);
    rt.bus.emit('event.input', { type: 'door.opened', source: { device: 'door-1' }, data: { door: 0 } });
    // The stop flushes the tick's event itself; the store refuses it.
    await rt.stop();
    runtime = undefined;
    const line = lines.find((l) => String(l.msg).startsWith('bus events refused by a full outbox: not reported'));
    assert.ok(line, JSON.stringify(lines.map((l) => l.msg)));
    assert.equal(line.events, 1);
  });

  it('uptimeS does not go negative when the wall clock is stepped back', async () => {
    const clock = new ManualClock();
    const rt = await start(clock);
    clock.jump(-3_600_000);
    const uptime = rt.health().uptimeS as number;
    assert.ok(uptime >= 0, String(uptime));
    assert.ok(rt.status().uptimeS >= 0);
  });

  it('/healthz reports a write to disk pending over 10 s (a dying SD card), and nothing once it lands', async () => {
    const clock = new ManualClock();
    const rt = await start(clock);
    // The batch write hangs until the test lets it go on.
    let letGo: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => {
      letGo = resolve;
    });
    const restore = replaceBatchWrites(rt.outbox, (real, options) => gate.then(() => real(options)));
    try {
      const stored = rt.ingest([{ type: 'door.forced', source: { device: 'door-1' }, data: { door: 0 } }]);
      await waitFor(() => rt.outbox.stats().writePendingMs !== undefined, { message: 'a write on its way to disk' });
      clock.advance(9_000);
      assert.equal(rt.health().ok, true, '9 s is slow, not yet a problem');
      clock.advance(2_000);
      const health = rt.health();
      assert.equal(health.ok, false);
      assert.ok(
        health.problems.includes('outbox write on its way to disk for 11 s: appends wait behind it'),
        health.problems.join('; '),
      );
      letGo();
      const [alarm] = await stored;
      assert.equal(alarm.type, 'door.forced');
    } finally {
      restore();
      letGo();
    }
    assert.equal(rt.outbox.stats().writePendingMs, undefined);
    assert.equal(rt.health().ok, true);
  });
});
