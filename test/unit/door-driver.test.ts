import assert from 'node:assert/strict';
import type { DriverContext } from '../../drivers/driver.js';
import { parseDoorProps } from '../../drivers/door/index.js';
import { ModbusDoorDriver } from '../../drivers/door/driver.js';
import { loadDoorProfile } from '../../drivers/door/profile.js';
import { ModbusBus } from '../../drivers/modbus/bus.js';
import { EventBus } from '../../edge/bus.js';
import { systemClock } from '../../edge/clock.js';
import type { EventInput } from '../../edge/envelope.js';
import { silentLogger } from '../../edge/log.js';
import { DoorSim } from '../../hardware/sim/door-sim.js';
import { FakeRtuLine } from '../../hardware/sim/modbus-fake-line.js';
import { waitFor } from '../helpers/wait.js';

describe('door driver', () => {
  it('polls a dead unit with backoff, so it costs the bus at most one timeout per backoff period', async () => {
    const POLL_MS = 20;
    const MAX_BACKOFF_MS = 1000;
    const sim = new DoorSim({ units: [1, 2, 3] });
    sim.setFault(3, 'silent');
    const line = new FakeRtuLine(sim);
    // Healthy units answer within a turn; a 150 ms timeout means a scheduling stall cannot make one look dead.
    const bus = new ModbusBus(
      { transport: 'rtu', path: 'fake', baudRate: 115200, timeoutMs: 150, frameGapMs: 2 },
      { clock: systemClock, log: silentLogger(), link: line },
    );
    await bus.start();
    const events: EventInput[] = [];
    const ctx: DriverContext = {
      bus: new EventBus(),
      clock: systemClock,
      log: silentLogger(),
      emit: (e) => void events.push(e),
      privacy: { siteKey: 'k', rawCards: false },
    };
    const profile = loadDoorProfile('generic-door');
    const drivers = [1, 2, 3].map(
      (u) =>
        new ModbusDoorDriver(
          `door-${u}`,
          { unitId: u, profile, doors: 1, pollMs: POLL_MS, maxBackoffMs: MAX_BACKOFF_MS },
          () => ({ resource: bus, release: async () => undefined }),
          ctx,
        ),
    );
    const states: Array<{ name: string; online: boolean }> = [];
    ctx.bus.on('device.state', states, (s) => void states.push({ name: s.name, online: s.online }));
    // Requests the line has seen for `unit`: a healthy poll is 2 (event counter, inputs), a dead unit's probe 1 (it stops at the first failure).
    const requests = (unit: number) => line.requests.filter((r) => r.unit === unit).length;
    try {
      for (const d of drivers) await d.start();
      await waitFor(() => events.some((e) => e.type === 'device.offline'), { message: 'door-3 offline' });
      // From its 6th probe on, unit 3 waits at least min(1000, 20 * 2^5) = 640 ms between probes: far longer
      // than a probe's 150 ms timeout, so a prober without backoff would probe several times as often.
      await waitFor(() => requests(3) >= 6, { message: () => `6 probes of unit 3, got ${requests(3)}` });
      const t0 = performance.now();
      const deadBefore = requests(3);
      const minGap = Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** (deadBefore - 1));
      const healthyBefore = [requests(1), requests(2)];
      const healthyPolls = () =>
        Math.min(...[1, 2].map((u, i) => Math.floor((requests(u) - healthyBefore[i]) / 2)));
      // Timers only fire late on a busy machine, never early, so a stall can only lower the probe count.
      // One probe may fall due at once, one more for ms rounding; the rest are at least minGap apart.
      const allowed = (ms: number) => Math.floor(ms / minGap) + 2;
      // The healthy units keep being polled (counted, not timed: their rate is the bench's business).
      await waitFor(() => healthyPolls() >= 50, {
        timeoutMs: 10_000,
        message: () => {
          const ms = performance.now() - t0;
          return `50 polls of units 1 and 2, got ${healthyPolls()} while unit 3 was probed ${requests(3) - deadBefore} times in ${ms.toFixed(0)} ms (backoff allows ${allowed(ms)})`;
        },
      });
      const elapsed = performance.now() - t0;
      const dead = requests(3) - deadBefore;
      assert.ok(
        dead <= allowed(elapsed),
        `dead unit probed ${dead} times in ${elapsed.toFixed(0)} ms with a backoff of at least ${minGap} ms`,
      );
      assert.deepEqual(
        events.map((e) => [e.source.device, e.type]),
        [
          ['door-1', 'device.online'],
          ['door-2', 'device.online'],
          ['door-3', 'device.offline'],
        ],
      );
      assert.equal(events[2].data?.error, 'EDGE_MODBUS_TIMEOUT');
      assert.deepEqual(states.at(-1), { name: 'door-3', online: false });
      assert.deepEqual(drivers[2].state(), { online: false, lastSeen: undefined });
    } finally {
      for (const d of drivers) await d.stop();
      await bus.close();
      await sim.stop();
    }
  });

  it('reports raw cards only when privacy.rawCards is set', async () => {
    const sim = new DoorSim({ units: [1] });
    const bus = new ModbusBus(
      { transport: 'rtu', path: 'fake', timeoutMs: 30, frameGapMs: 2 },
      { clock: systemClock, log: silentLogger(), link: new FakeRtuLine(sim) },
    );
    await bus.start();
    const events: EventInput[] = [];
    const ctx: DriverContext = {
      bus: new EventBus(),
      clock: systemClock,
      log: silentLogger(),
      emit: (e) => void events.push(e),
      privacy: { siteKey: 'k', rawCards: true },
    };
    const d = new ModbusDoorDriver(
      'door-1',
      { unitId: 1, profile: loadDoorProfile('generic-door'), doors: 1, pollMs: 10 },
      () => ({ resource: bus, release: async () => undefined }),
      ctx,
    );
    try {
      await d.start();
      await waitFor(() => d.state().online, { message: 'online' });
      sim.unit(1).swipe(0, 4_000_000_000, 'schedule');
      const ev = await waitFor(() => events.find((e) => e.type === 'access.denied'), { message: 'denied' });
      assert.deepEqual(ev.data, { door: 0, card: '4000000000', reason: 'schedule' });
    } finally {
      await d.stop();
      await bus.close();
      await sim.stop();
    }
  });

  it('validates its properties, naming the field (unit 0 is rejected, not defaulted)', () => {
    assert.throws(() => parseDoorProps('d', { unitId: 0 }), /unitId/);
    assert.throws(() => parseDoorProps('d', { doors: 5 }), /doors/);
    assert.throws(() => parseDoorProps('d', { profile: '../etc/passwd' }), { code: 'EDGE_PROFILE_INVALID' });
    assert.throws(() => parseDoorProps('d', { profile: 'no-such-vendor' }), {
      code: 'EDGE_PROFILE_NOT_FOUND',
    });
    const ok = parseDoorProps('d', { unitId: '17', doors: '2', pollMs: '100' });
    assert.equal(ok.unitId, 17);
    assert.equal(ok.doors, 2);
  });
});
