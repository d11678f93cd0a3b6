import assert from 'node:assert/strict';
import type { DriverContext } from '../../drivers/driver.js';
import { register as registerDoor } from '../../drivers/door/index.js';
import type { ModbusBus } from '../../drivers/modbus/bus.js';
import { EventBus } from '../../edge/bus.js';
import { systemClock } from '../../edge/clock.js';
import { type EventInput, pseudonymiseCard } from '../../edge/envelope.js';
import { createLogger } from '../../edge/log.js';
import { Registry } from '../../edge/registry.js';
import type { Driver } from '../../drivers/driver.js';
import { DoorSim } from '../../hardware/sim/door-sim.js';
import type { RtuServer } from '../../hardware/sim/modbus-server.js';
import { openPtyPair, type PtyPair } from '../helpers/pty.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { delay, waitFor } from '../helpers/wait.js';

const SITE_KEY = 'test-site-key';
const POLL_MS = 50;
const TIMEOUT_MS = 100;
const UNITS = [1, 2, 3, 4, 5, 6, 7, 8];

/**
 * Eight simulated door controllers on one RTU bus over a real socat PTY pair
 * (RTU framing and CRC on the wire), driven through the registry like the runtime does.
 */
describe('door controllers over Modbus RTU on a PTY pair (integration)', function () {
  this.timeout(30_000);
  let tmp: TmpDir;
  let pty: PtyPair;
  let sim: DoorSim;
  let registry: Registry;
  let drivers: Driver[];
  let rtu: RtuServer;
  /** `deadProbes`: requests unit 5 had received when the event was emitted (the fault tests count them). */
  let events: Array<EventInput & { at: number; deadProbes: number }>;
  let logs: string[];
  let ctx: DriverContext;

  const of = (device: string) => events.filter((e) => e.source.device === device);
  const compact = (device: string) => of(device).map((e) => ({ type: e.type, data: e.data }));
  /** Wait until `device` emitted `n` events, then a little longer to prove no extra ones follow. */
  async function expectEvents(
    device: string,
    expected: Array<{ type: string; data: Record<string, unknown> }>,
    opts: { unordered?: boolean } = {},
  ): Promise<void> {
    await waitFor(() => of(device).length >= expected.length, {
      timeoutMs: 5000,
      message: () => `${expected.length} events from ${device}, got ${JSON.stringify(compact(device))}`,
    });
    await delay(3 * POLL_MS);
    // Ring events and input changes made in the same instant may land in one poll or two: compare as a set then.
    const order = (list: unknown[]) => (opts.unordered ? list.map((x) => JSON.stringify(x)).sort() : list);
    assert.deepEqual(order(compact(device)), order(expected));
  }

  before(async () => {
    tmp = await tmpDir('door-rtu');
    pty = await openPtyPair(tmp.path);
    sim = new DoorSim({ units: [...UNITS, 9], doors: 2 });
    for (const u of sim.units.values()) u.hr[0] = 1; // 1 s unlock pulse keeps the tests short
    sim.unit(8).ir[0] = 65533; // unit 8 starts near the u16 wrap of its event counter
    rtu = await sim.serveRtu(pty.b);
    events = [];
    logs = [];
    const log = createLogger({ level: 'debug', destination: { write: (s: string) => void logs.push(s) } });
    ctx = {
      bus: new EventBus(),
      clock: systemClock,
      log,
      emit: (e) =>
        void events.push({ ...e, at: performance.now(), deadProbes: rtu.counters.byUnit.get(5) ?? 0 }),
      privacy: { siteKey: SITE_KEY, rawCards: false },
    };
    registry = new Registry();
    registerDoor(registry);
    const busConfig = { transport: 'rtu', path: pty.a, baudRate: 115200, timeoutMs: TIMEOUT_MS };
    drivers = UNITS.map((u) =>
      registry.createDriver(
        'modbus-door',
        `door-${u}`,
        { bus: 'bus-1', busConfig, unitId: u, doors: 2, pollMs: POLL_MS, maxBackoffMs: 1000 },
        ctx,
      ),
    );
    for (const d of drivers) await d.start();
    await waitFor(() => drivers.every((d) => d.state().online), { message: 'all units online' });
  });

  after(async () => {
    for (const d of drivers ?? []) await d.stop();
    await sim?.stop();
    await pty?.kill();
    await tmp?.cleanup();
  });

  beforeEach(() => {
    events.length = 0;
  });

  it('reported every unit online once at start, and shares one bus among them', () => {
    const bus = registry.peek<ModbusBus>('modbus-bus', 'bus-1');
    assert.ok(bus?.isConnected);
  });

  it('door contact: door.opened then door.closed on the right door; opening a locked door is forced', async () => {
    await drivers[0].execute({ id: 'h1', action: 'door.hold', target: 'door-1', args: { door: 1 } });
    await expectEvents('door-1', [{ type: 'door.unlocked', data: { door: 1 } }]);
    events.length = 0;
    sim.unit(1).open(1);
    await expectEvents('door-1', [{ type: 'door.opened', data: { door: 1 } }]);
    sim.unit(1).close(1);
    await expectEvents('door-1', [
      { type: 'door.opened', data: { door: 1 } },
      { type: 'door.closed', data: { door: 1 } },
    ]);
    await drivers[0].execute({
      id: 'h2',
      action: 'door.hold',
      target: 'door-1',
      args: { door: 1, hold: false },
    });
    await waitFor(() => of('door-1').some((e) => e.type === 'door.locked'), { message: 'door.locked' });
    events.length = 0;
    sim.unit(1).open(1);
    await expectEvents(
      'door-1',
      [
        { type: 'door.forced', data: { door: 1 } },
        { type: 'door.opened', data: { door: 1 } },
      ],
      { unordered: true },
    );
    sim.unit(1).close(1);
  });

  it('card swipes: granted (with unlock pulse) and both denials carry the pseudonym, never the number', async () => {
    const card = 3_405_691_582; // needs both card words
    sim.unit(2).swipe(0, card, 'granted');
    await expectEvents(
      'door-2',
      [
        { type: 'access.granted', data: { door: 0, card: pseudonymiseCard(card, SITE_KEY) } },
        { type: 'door.unlocked', data: { door: 0 } },
      ],
      { unordered: true },
    );
    await waitFor(() => of('door-2').some((e) => e.type === 'door.locked'), { message: 'pulse ends' });
    events.length = 0;
    sim.unit(2).swipe(1, 12345, 'unknown');
    sim.unit(2).swipe(1, 67890, 'schedule');
    await expectEvents('door-2', [
      {
        type: 'access.denied',
        data: { door: 1, card: pseudonymiseCard(12345, SITE_KEY), reason: 'unknown_card' },
      },
      {
        type: 'access.denied',
        data: { door: 1, card: pseudonymiseCard(67890, SITE_KEY), reason: 'schedule' },
      },
    ]);
    const all = logs.join('') + JSON.stringify(events);
    for (const raw of [String(card), '12345', '67890'])
      assert.ok(!all.includes(raw), `raw card ${raw} leaked`);
  });

  it('forced door, held open, exit button and tamper', async () => {
    const u = sim.unit(3);
    u.force(0);
    await expectEvents(
      'door-3',
      [
        { type: 'door.forced', data: { door: 0 } },
        { type: 'door.opened', data: { door: 0 } },
      ],
      { unordered: true },
    );
    events.length = 0;
    u.heldOpen(0);
    u.tamper(1, true);
    await expectEvents(
      'door-3',
      [
        { type: 'door.held_open', data: { door: 0 } },
        { type: 'alert.door_tamper', data: { door: 1, active: true } },
      ],
      { unordered: true },
    );
    assert.equal(of('door-3').find((e) => e.type === 'alert.door_tamper')?.severity, 'critical');
    u.close(0);
    u.tamper(1, false);
    await waitFor(() => of('door-3').length >= 4, { message: 'door.closed and tamper cleared' });
    events.length = 0;
    u.exit(1);
    await expectEvents(
      'door-3',
      [
        { type: 'access.granted', data: { door: 1, via: 'exit_button' } },
        { type: 'door.unlocked', data: { door: 1 } },
      ],
      { unordered: true },
    );
  });

  it('a flood of 40 events between polls reports edge.events_lost with 8 and delivers the last 32', async () => {
    const u = sim.unit(4);
    // Stop the driver's view of the unit between polls by writing all 40 synchronously.
    u.flood(40);
    await waitFor(() => of('door-4').length >= 33, { message: '33 events from door-4' });
    await delay(3 * POLL_MS);
    const got = of('door-4');
    assert.equal(got.length, 33);
    assert.deepEqual(got[0].data, { count: 8, unit: 4 });
    assert.equal(got[0].type, 'edge.events_lost');
    const cards = got.slice(1).map((e) => e.data?.card);
    const want = Array.from({ length: 32 }, (_, i) => pseudonymiseCard(1_000_000 + 8 + i, SITE_KEY));
    assert.deepEqual(cards, want);
  });

  it('the event counter wraps at 65536 without losing or repeating events', async () => {
    const u = sim.unit(8);
    for (let i = 0; i < 5; i++) u.swipe(0, 500 + i, 'unknown');
    assert.equal(u.counter, 2); // 65533 + 5 wrapped
    await waitFor(() => of('door-8').length >= 5, { message: '5 events from door-8' });
    await delay(3 * POLL_MS);
    assert.deepEqual(
      of('door-8').map((e) => e.data?.card),
      [500, 501, 502, 503, 504].map((c) => pseudonymiseCard(c, SITE_KEY)),
    );
  });

  it('commands: unlock with seconds, hold, release, lock', async () => {
    const d = drivers[5]; // door-6, unit 6
    const own = sim.unit(6).hr[0];
    assert.deepEqual(
      await d.execute({ id: 'c1', action: 'door.unlock', target: 'door-6', args: { door: 1, seconds: 2 } }),
      { door: 1, seconds: 2 },
    );
    // The pulse took 2 s; the unit's own pulse length (card swipes use it) is back.
    assert.deepEqual(sim.unit(6).pulses.at(-1), { door: 1, seconds: 2 });
    assert.equal(sim.unit(6).hr[0], own);
    await expectEvents('door-6', [{ type: 'door.unlocked', data: { door: 1 } }]);
    await d.execute({ id: 'c2', action: 'door.lock', target: 'door-6', args: { door: 1 } });
    await waitFor(() => of('door-6').some((e) => e.type === 'door.locked'), {
      message: 'door.locked after door.lock',
    });
    events.length = 0;
    await d.execute({ id: 'c3', action: 'door.hold', target: 'door-6', args: { door: 0 } });
    await expectEvents('door-6', [{ type: 'door.unlocked', data: { door: 0 } }]);
    assert.ok(sim.unit(6).isReleased(0));
    await d.execute({ id: 'c4', action: 'door.hold', target: 'door-6', args: { door: 0, release: true } });
    await expectEvents('door-6', [
      { type: 'door.unlocked', data: { door: 0 } },
      { type: 'door.locked', data: { door: 0 } },
    ]);
    await assert.rejects(
      d.execute({ id: 'c5', action: 'door.unlock', target: 'door-6', args: { door: 7 } }),
      { code: 'EDGE_COMMAND_INVALID' },
    );
  });

  for (const fault of ['silent', 'bad-crc', 'exception', 'short', 'wrong-unit'] as const) {
    it(`a unit with fault "${fault}" goes offline and back online, and never delays the others beyond one timeout`, async () => {
      sim.setFault(5, fault);
      try {
        await waitFor(() => of('door-5').some((e) => e.type === 'device.offline'), {
          message: 'door-5 offline',
        });
        assert.deepEqual(
          of('door-5').map((e) => e.type),
          ['device.offline'],
        );
        // While unit 5 is dead, a change on another unit is seen at that unit's next poll, which waits behind
        // at most one probe of unit 5: backoff spaces the probes (200 ms, doubling to 1 s) far wider than a
        // poll (50 ms), so a probe costs each other unit at most one timeout. Counted in requests, not ms,
        // so a stalled CPU cannot fail it; a dead unit that holds the bus (no backoff, retries, a queue
        // that waits on it) puts two or more of its requests between a change and its detection.
        const samples: Array<{ door: string; probes: number; ms: number }> = [];
        for (let i = 0; i < 4; i++) {
          for (const u of [1, 2, 7]) {
            const door = `door-${u}`;
            const open = i % 2 === 0;
            const type = open ? 'door.opened' : 'door.closed';
            const t0 = performance.now();
            const before = rtu.counters.byUnit.get(5) ?? 0;
            if (open) sim.unit(u).open(0);
            else sim.unit(u).close(0);
            const ev = await waitFor(
              () => events.find((e) => e.source.device === door && e.type === type && e.at >= t0),
              {
                message: () =>
                  `${type} on ${door}, got ${JSON.stringify(compact(door))}; online: ${drivers.map((d) => Number(d.state().online)).join('')}`,
              },
            );
            samples.push({ door, probes: ev.deadProbes - before, ms: Math.round(ev.at - t0) });
          }
          events.length = 0;
        }
        const worst = Math.max(...samples.map((x) => x.probes));
        const others = logs.filter((l) => l.includes('door poll failed') && !l.includes('"door-5"'));
        assert.ok(
          worst <= 1,
          `unit 5 was probed ${worst} times while a change on another unit waited to be seen ` +
            `(probes/ms per change: ${samples.map((x) => `${x.probes}/${x.ms}`).join(' ')}; ${others.length} failed polls elsewhere)`,
        );
      } finally {
        sim.setFault(5, 'none');
        await waitFor(() => drivers[4].state().online, { message: 'door-5 back online', timeoutMs: 5000 });
      }
      assert.deepEqual(
        of('door-5').map((e) => e.type),
        ['device.online'],
      );
    });
  }

  it('an unplug (socat killed and restarted) recovers without restarting the drivers', async () => {
    await pty.kill();
    await sim.stop();
    await waitFor(() => UNITS.every((u) => of(`door-${u}`).some((e) => e.type === 'device.offline')), {
      message: 'all offline after unplug',
    });
    assert.ok(drivers.every((d) => !d.state().online));
    await pty.restart();
    rtu = await sim.serveRtu(pty.b);
    await waitFor(() => UNITS.every((u) => of(`door-${u}`).some((e) => e.type === 'device.online')), {
      message: 'all online after replug',
      timeoutMs: 8000,
    });
    events.length = 0;
    sim.unit(7).swipe(0, 42, 'unknown');
    await expectEvents('door-7', [
      {
        type: 'access.denied',
        data: { door: 0, card: pseudonymiseCard(42, SITE_KEY), reason: 'unknown_card' },
      },
    ]);
    const bus = registry.peek<ModbusBus>('modbus-bus', 'bus-1');
    assert.ok((bus?.stats.reconnects ?? 0) >= 1);
  });
});
