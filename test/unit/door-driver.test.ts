import assert from 'node:assert/strict';
import { EdgewardError } from '../../edge/errors.js';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DriverContext } from '../../drivers/driver.js';
import { parseDoorProps } from '../../drivers/door/index.js';
import { ModbusDoorDriver } from '../../drivers/door/driver.js';
import { loadDoorProfile } from '../../drivers/door/profile.js';
import { ModbusBus } from '../../drivers/modbus/bus.js';
import { EventBus } from '../../edge/bus.js';
import { systemClock } from '../../edge/clock.js';
import { DriverStateStore } from '../../edge/driver-state.js';
import type { EventInput } from '../../edge/envelope.js';
import { silentLogger } from '../../edge/log.js';
import { DoorSim } from '../../hardware/sim/door-sim.js';
import { FakeRtuLine } from '../../hardware/sim/modbus-fake-line.js';
import { ManualClock } from '../helpers/clock.js';
import { tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

/** A bus on an in-process fake RTU line to `sim` (healthy units answer within a turn: 150 ms is no stall). */
async function fakeBus(sim: DoorSim, line = new FakeRtuLine(sim), timeoutMs = 150): Promise<ModbusBus> {
  const bus = new ModbusBus(
    { transport: 'rtu', path: 'fake', baudRate: 115200, timeoutMs, frameGapMs: 2 },
    { clock: systemClock, log: silentLogger(), link: line },
  );
  await bus.start();
  return bus;
}

/** A driver context whose events land in `events`. */
function context(events: EventInput[], rawCards: boolean, state?: DriverContext['state']): DriverContext {
  return {
    bus: new EventBus(),
    clock: systemClock,
    log: silentLogger(),
    emit: (e) => void events.push(e),
    privacy: { siteKey: 'k', rawCards },
    ...(state ? { state } : {}),
  };
}

/**
 * Unit 1 of a DoorSim on a fake RTU bus, and a driver context whose state is
 * kept in a Map (what survives a driver's restart): what the counter tests share.
 */
async function keptUnit() {
  const sim = new DoorSim({ units: [1] });
  const bus = await fakeBus(sim);
  const kept = new Map<string, unknown>();
  const events: EventInput[] = [];
  const ctx = context(events, true, { get: (k) => kept.get(k), set: (k, v) => void kept.set(k, v) });
  return {
    sim,
    bus,
    kept,
    events,
    ctx,
    unit: sim.unit(1),
    /** The event counter the driver saved. */
    counter: () => (kept.get('eventCounter@bus#unit1') as { counter: number } | undefined)?.counter,
    close: async () => {
      sim.stop();
      await bus.close();
    },
  };
}

/** A generic-door driver named door-<unit> on `bus`. */
function doorOn(
  bus: ModbusBus,
  ctx: DriverContext,
  opts: { unitId: number; doors?: number; pollMs: number; maxBackoffMs?: number },
): ModbusDoorDriver {
  return new ModbusDoorDriver(
    `door-${opts.unitId}`,
    { profile: loadDoorProfile('generic-door'), doors: 1, ...opts },
    () => ({ resource: bus, release: async () => undefined }),
    ctx,
  );
}

/** A stand-in bus: a unit with no events and doors shut, whose pulse length (holding register 0) and writes are the test's. */
function stubBus(
  pulseLength: () => number,
  writeRegister: (address: number, value: number) => Promise<void>,
  writeCoil: (address: number, value: boolean) => Promise<void>,
): ModbusBus {
  return {
    onConnection: () => () => undefined,
    readInputRegisters: async (_u: number, _a: number, n: number) => new Array(n).fill(0),
    readDiscreteInputs: async (_u: number, _a: number, n: number) => new Array(n).fill(false),
    readHoldingRegisters: async () => [pulseLength()],
    writeRegister: async (_u: number, a: number, v: number) => writeRegister(a, v),
    writeCoil: async (_u: number, a: number, v: boolean) => writeCoil(a, v),
  } as unknown as ModbusBus;
}

/** A bus the test sees every write of: a unit whose pulse length is 5, no events, doors shut. */
function recordingBus(): { ops: string[]; bus: ModbusBus } {
  const ops: string[] = [];
  const bus = stubBus(
    () => 5,
    async (a, v) => void ops.push(`writeHR ${a}=${v}`),
    async (a, v) => void ops.push(`writeCoil ${a}=${v}`),
  );
  return { ops, bus };
}

/** A driver state in a Map, with the given persist(). */
function mapState(persist?: () => Promise<boolean>) {
  const saved = new Map<string, unknown>();
  const state = { get: (k: string) => saved.get(k), set: (k: string, v: unknown) => void saved.set(k, v), ...(persist ? { persist } : {}) };
  return { saved, state };
}

/** Start `d` on a manual clock (its first poll runs now); resolves once it is online. */
async function startedOnline(d: ModbusDoorDriver, clock: ManualClock): Promise<void> {
  await d.start();
  clock.advance(0);
  await waitFor(() => d.state().online, { message: 'online' });
}

describe('door driver', () => {
  it('polls a dead unit with backoff, so it costs the bus at most one timeout per backoff period', async () => {
    const POLL_MS = 20;
    const MAX_BACKOFF_MS = 1000;
    const sim = new DoorSim({ units: [1, 2, 3] });
    sim.setFault(3, 'silent');
    const line = new FakeRtuLine(sim);
    const bus = await fakeBus(sim, line);
    const events: EventInput[] = [];
    const ctx = context(events, false);
    const drivers = [1, 2, 3].map((u) =>
      doorOn(bus, ctx, { unitId: u, pollMs: POLL_MS, maxBackoffMs: MAX_BACKOFF_MS }),
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
      assert.deepEqual(drivers[2].state(), {
        online: false,
        lastSeen: undefined,
        reason: 'EDGE_MODBUS_TIMEOUT',
      });
    } finally {
      for (const d of drivers) await d.stop();
      await bus.close();
      await sim.stop();
    }
  });

  it('asks for a unit that did not answer its last poll as a probe (after the live units, one per gap), and for a healthy one as a poll', async () => {
    const priorities: Array<string | undefined> = [];
    let answer = false;
    const bus = {
      ...stubBus(
        () => 5,
        async () => undefined,
        async () => undefined,
      ),
      readInputRegisters: async (_u: number, _a: number, n: number, opts?: { priority?: string }) => {
        priorities.push(opts?.priority);
        if (!answer) throw new EdgewardError('EDGE_MODBUS_TIMEOUT', 'no reply');
        return new Array(n).fill(0);
      },
    } as unknown as ModbusBus;
    const d = doorOn(bus, context([], false), { unitId: 1, pollMs: 10, maxBackoffMs: 20 });
    await d.start();
    try {
      await waitFor(() => priorities.length >= 3, { message: 'three polls' });
      answer = true;
      await waitFor(() => d.state().online === true, { message: 'back online' });
      const n = priorities.length;
      await waitFor(() => priorities.length >= n + 2, { message: 'two more polls' });
      assert.deepEqual(priorities.slice(0, 3), ['normal', 'probe', 'probe']);
      assert.deepEqual(priorities.slice(n), ['normal', 'normal']);
    } finally {
      await d.stop();
    }
  });

  it('reports raw cards only when privacy.rawCards is set', async () => {
    const sim = new DoorSim({ units: [1] });
    const bus = await fakeBus(sim);
    const events: EventInput[] = [];
    const d = doorOn(bus, context(events, true), { unitId: 1, pollMs: 10 });
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

  describe('commands and the event ring against a simulated unit', () => {
    let sim: DoorSim;
    let bus: ModbusBus;
    let driver: ModbusDoorDriver;
    const events: EventInput[] = [];

    beforeEach(async () => {
      events.length = 0;
      sim = new DoorSim({ units: [1], doors: 2 });
      bus = await fakeBus(sim);
      driver = doorOn(bus, context(events, true), { unitId: 1, doors: 2, pollMs: 20 });
      await driver.start();
      await waitFor(() => driver.state().online, { message: 'online' });
    });
    afterEach(async () => {
      await driver.stop();
      sim.stop();
      await bus.close();
    });

    it('an unlock of N seconds pulses that long and puts the unit pulse length back; concurrent ones do not mix', async () => {
      const unit = sim.unit(1);
      const own = unit.hr[0];
      const req = (door: number, seconds: number) => ({
        id: `u${door}`,
        action: 'door.unlock',
        target: 'door-1',
        args: { door, seconds },
      });
      await Promise.all([driver.execute(req(0, 2)), driver.execute(req(1, 600))]);
      assert.deepEqual(unit.pulses, [
        { door: 0, seconds: 2 },
        { door: 1, seconds: 600 },
      ]);
      assert.equal(unit.hr[0], own, 'the unit pulse length is back');
      // A card swipe afterwards takes the unit's own length, not the last command's.
      unit.swipe(0, 4242);
      assert.deepEqual(unit.pulses.at(-1), { door: 0, seconds: own });
      await driver.execute({ id: 'l', action: 'door.lock', target: 'door-1', args: { door: 1 } });
    });

    it('door.hold takes booleans only: "false", 0 or null are refused, not taken as hold', async () => {
      const unit = sim.unit(1);
      for (const args of [{ hold: 'false' }, { hold: 0 }, { hold: null }, { release: 'true' }]) {
        await assert.rejects(
          driver.execute({
            id: 'h',
            action: 'door.hold',
            target: 'door-1',
            args: { door: 1, ...args } as never,
          }),
          (e) => (e as { code?: string }).code === 'EDGE_COMMAND_INVALID',
          JSON.stringify(args),
        );
      }
      assert.equal(unit.coils[8 + 1], false, 'door 1 not held');
      assert.deepEqual(
        await driver.execute({
          id: 'h',
          action: 'door.hold',
          target: 'door-1',
          args: { door: 1, hold: true },
        }),
        { door: 1, hold: true },
      );
      assert.equal(unit.coils[8 + 1], true);
      await driver.execute({
        id: 'h',
        action: 'door.hold',
        target: 'door-1',
        args: { door: 1, release: true },
      });
      assert.equal(unit.coils[8 + 1], false);
    });

    it('an event logged while the ring is read does not duplicate an entry or lose one silently', async () => {
      const unit = sim.unit(1);
      // 32 new events fill the ring; the 33rd lands while the driver reads the entries.
      const read = sim.readRegisters.bind(sim);
      let injected = false;
      sim.readRegisters = (u, fc, address, count) => {
        if (!injected && fc === 4 && address >= 16) {
          injected = true;
          unit.swipe(0, 777, 'unknown');
        }
        return read(u, fc, address, count);
      };
      for (let i = 0; i < 32; i++) unit.swipe(0, 1000 + i, 'unknown');
      await waitFor(() => events.filter((e) => e.type === 'access.denied').length >= 32, {
        message: '32 denials',
      });
      const cards = events
        .filter((e) => e.type === 'access.denied')
        .map((e) => Number((e.data as { card: string }).card));
      const lost = events
        .filter((e) => e.type === 'edge.events_lost')
        .reduce((n, e) => n + (e.data as { count: number }).count, 0);
      assert.equal(new Set(cards).size, cards.length, `no card twice: ${cards.join(' ')}`);
      assert.equal(
        cards.length + lost,
        33,
        `every event delivered or counted lost (${cards.length} + ${lost})`,
      );
      assert.equal(cards.at(-1), 777, 'the event logged during the read comes last');
    });
  });

  it('reads at its next start what the unit logged while it was stopped; a controller restart is no flood of lost events', async () => {
    const { bus, kept, events, ctx, unit, close } = await keptUnit();
    const make = () => doorOn(bus, ctx, { unitId: 1, pollMs: 20 });
    let driver = make();
    try {
      await driver.start();
      await waitFor(() => driver.state().online, { message: 'online' });
      unit.swipe(0, 1, 'unknown');
      await waitFor(() => events.some((e) => e.type === 'access.denied'), { message: 'the first denial' });
      await driver.stop();
      // The edge restarts (or Node-RED redeploys): meanwhile a denied card and a forced door.
      unit.swipe(0, 2, 'unknown');
      unit.force(0);
      events.length = 0;
      driver = make();
      await driver.start();
      await waitFor(() => events.some((e) => e.type === 'door.forced'), {
        message: 'the forced door logged while stopped',
      });
      assert.deepEqual(
        events.filter((e) => e.type === 'access.denied').map((e) => (e.data as { card: string }).card),
        ['2'],
      );
      // The controller restarts: its counter starts again at 0. Not 65,000 lost events.
      events.length = 0;
      unit.ir[0] = 0;
      await waitFor(() => (kept.get('eventCounter@bus#unit1') as { counter: number }).counter === 0, { message: 'the new counter taken' });
      unit.swipe(0, 3, 'unknown');
      await waitFor(() => events.some((e) => e.type === 'access.denied'), {
        message: 'a denial after the restart',
      });
      assert.ok(!events.some((e) => e.type === 'edge.events_lost'), JSON.stringify(events));
      // A power cut restarts both: the edge saved 40,000 a moment ago, the unit counts from 0 again
      // and logs 3 events. 25,539 "events" in a second is no controller: its 3 events are read, nothing lost.
      await driver.stop();
      kept.set('eventCounter@bus#unit1', { counter: 40_000, at: Date.now() });
      unit.ir[0] = 0;
      for (const card of [201, 202, 203]) unit.swipe(0, card, 'unknown');
      events.length = 0;
      driver = make();
      await driver.start();
      await waitFor(() => (kept.get('eventCounter@bus#unit1') as { counter: number }).counter === 3, { message: 'the unit counter taken' });
      await waitFor(() => events.filter((e) => e.type === 'access.denied').length === 3, { message: 'the 3 events since the restart' });
      assert.deepEqual(
        events.filter((e) => e.type === 'access.denied').map((e) => (e.data as { card: string }).card),
        ['201', '202', '203'],
      );
      assert.ok(!events.some((e) => e.type === 'edge.events_lost'), JSON.stringify(events));
      // The same with the edge running: the counter goes back, what came since is read.
      events.length = 0;
      unit.ir[0] = 0;
      unit.swipe(0, 301, 'unknown');
      await waitFor(() => events.some((e) => e.type === 'access.denied'), { message: 'the event after a restart while running' });
      assert.equal((events.find((e) => e.type === 'access.denied')!.data as { card: string }).card, '301');
    } finally {
      await driver.stop();
      await close();
    }
  });

  it('while running: a counter read below the last one at 40,000 is ignored, and a controller restarting alone from 40,000 is read from 0 (no stale alarm)', async () => {
    const { bus, events, ctx, unit, counter, close } = await keptUnit();
    // Counting for a long time already: a forced door among its last 32 events.
    unit.ir[0] = 39_990;
    unit.force(0);
    for (let card = 1; card <= 9; card++) unit.swipe(0, card, 'granted');
    assert.equal(unit.counter, 40_000);
    const driver = doorOn(bus, ctx, { unitId: 1, pollMs: 20 });
    try {
      await driver.start();
      await waitFor(() => counter() === 40_000, { message: 'the counter taken as it is' });
      events.length = 0;
      // A gateway that serves a stale value (or a torn read) for a while: 2 below the last.
      unit.ir[0] = 39_998;
      // Each poll is at least two transactions (the counter, the door inputs).
      const tx = bus.stats.transactions;
      await waitFor(() => bus.stats.transactions >= tx + 10, { message: 'five polls of the stale counter' });
      unit.ir[0] = 40_000;
      await waitFor(() => bus.stats.transactions >= tx + 14, { message: 'polls of the right one again' });
      assert.equal(events.length, 0, `no event read again, none counted lost: ${JSON.stringify(events)}`);
      // The controller alone restarts, keeping its ring, and logs 3 events.
      unit.ir[0] = 0;
      for (const card of [201, 202, 203]) unit.swipe(0, card, 'unknown');
      await waitFor(() => counter() === 3, { message: 'the new counter taken' });
      await waitFor(() => events.filter((e) => e.type === 'access.denied').length === 3, { message: 'the 3 events since the restart' });
      assert.deepEqual(
        events.map((e) => e.type),
        ['access.denied', 'access.denied', 'access.denied'],
        'no stale door.forced, no 25,507 events counted lost',
      );
    } finally {
      await driver.stop();
      await close();
    }
  });

  it('a box booting with its clock behind the saved time: 40 events read as 40 (not a restart), a restarted controller still read from 0', async () => {
    const { bus, kept, events, ctx, unit, counter, close } = await keptUnit();
    let driver = doorOn(bus, ctx, { unitId: 1, pollMs: 20 });
    try {
      // Saved "10 minutes from now": the box's clock came up behind (no RTC, before NTP).
      unit.ir[0] = 5_000;
      for (let card = 1; card <= 40; card++) unit.swipe(0, card, 'unknown');
      kept.set('eventCounter@bus#unit1', { counter: 5_000, at: Date.now() + 600_000 });
      await driver.start();
      await waitFor(() => counter() === 5_040, { message: 'the counter taken' });
      await waitFor(() => events.some((e) => e.type === 'edge.events_lost'), { message: 'the overrun reported' });
      const lost = events.find((e) => e.type === 'edge.events_lost')!.data as { count: number };
      assert.equal(lost.count, 8, 'the 40 new events: 8 overwritten in the ring of 32, not 5,008');
      assert.equal(events.filter((e) => e.type === 'access.denied').length, 32);
      await driver.stop();
      // The same clock, but the controller restarted (a power cut): its 3 events are read, nothing lost.
      events.length = 0;
      kept.set('eventCounter@bus#unit1', { counter: 40_000, at: Date.now() + 600_000 });
      unit.ir[0] = 0;
      for (const card of [201, 202, 203]) unit.swipe(0, card, 'unknown');
      driver = doorOn(bus, ctx, { unitId: 1, pollMs: 20 });
      await driver.start();
      await waitFor(() => counter() === 3, { message: 'the restarted counter taken' });
      await waitFor(() => events.filter((e) => e.type === 'access.denied').length === 3, { message: 'its 3 events' });
      assert.ok(!events.some((e) => e.type === 'edge.events_lost'), JSON.stringify(events));
    } finally {
      await driver.stop();
      await close();
    }
  });

  it("a poll during a timed unlock does not put the unit's pulse length back between the command's write and its pulse", async () => {
    // A bus the test steps: ops are recorded in the order issued, the command's length write waits for the test.
    const ops: string[] = [];
    let releaseWrite: (() => void) | undefined;
    const bus = {
      onConnection: () => () => undefined,
      readInputRegisters: async (_u: number, a: number, n: number) => {
        ops.push(`readIR ${a}`);
        return new Array(n).fill(0);
      },
      readDiscreteInputs: async (_u: number, _a: number, n: number) => {
        ops.push('readDI');
        return new Array(n).fill(false);
      },
      readHoldingRegisters: async () => {
        ops.push('readHR 0');
        return [5];
      },
      writeRegister: (_u: number, a: number, v: number) => {
        ops.push(`writeHR ${a}=${v}`);
        return v === 60 ? new Promise<void>((resolve) => (releaseWrite = resolve)) : Promise.resolve();
      },
      writeCoil: async (_u: number, a: number, v: boolean) => void ops.push(`writeCoil ${a}=${v}`),
    } as unknown as ModbusBus;
    const clock = new ManualClock();
    const ctx = { ...context([], false), clock };
    const d = doorOn(bus, ctx, { unitId: 1, pollMs: 100 });
    await startedOnline(d, clock);
    const done = d.execute({ id: 'u', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 60 } });
    await waitFor(() => releaseWrite !== undefined, { message: 'the length write issued' });
    // A poll falls due while the command waits on its length write.
    clock.advance(100);
    await waitFor(() => ops.filter((o) => o === 'readDI').length >= 2, { message: 'the second poll ran' });
    releaseWrite!();
    await done;
    const from = ops.indexOf('writeHR 0=60');
    const pulse = ops.indexOf('writeCoil 0=true');
    assert.deepEqual(ops.slice(from, pulse).filter((o) => o.startsWith('writeHR')), ['writeHR 0=60'], ops.join(' | '));
    assert.equal(ops.at(-1), 'writeHR 0=5', 'the length put back after the pulse');
    await d.stop();
  });

  it('door inputs that changed while no driver polled (a deploy, a restart) are reported at the first poll; a tamper found active with nothing saved is raised', async () => {
    const sim = new DoorSim({ units: [1] });
    const bus = await fakeBus(sim);
    const saved = new Map<string, unknown>();
    const state = { get: (k: string) => saved.get(k), set: (k: string, v: unknown) => void saved.set(k, v) };
    const events: EventInput[] = [];
    const clock = new ManualClock();
    const ctx = { ...context(events, false, state), clock };
    const unit = sim.unit(1);
    const kinds = () => events.filter((e) => e.type !== 'device.online').map((e) => `${e.type}${e.severity ? ` ${e.severity}` : ''} ${JSON.stringify(e.data)}`);
    try {
      const a = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
      await startedOnline(a, clock);
      await a.stop();
      // Between the two drivers: the tamper switch trips and the door opens.
      unit.tamper(0, true);
      unit.open(0);
      const b = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
      await startedOnline(b, clock);
      // door.forced from the unit's event log (read across restarts already), the rest from its inputs.
      assert.deepEqual(
        kinds().sort(),
        ['alert.door_tamper critical {"door":0,"active":true}', 'door.forced {"door":0}', 'door.opened {"door":0}'].sort(),
      );
      await b.stop();
      // A successor that finds nothing changed reports nothing.
      events.length = 0;
      const c = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
      await startedOnline(c, clock);
      assert.deepEqual(kinds(), []);
      await c.stop();
      // A counter saved before door states were kept (an upgrade): a plain baseline, no tamper raised again.
      saved.set('eventCounter@bus#unit1', { counter: (saved.get('eventCounter@bus#unit1') as { counter: number }).counter, at: clock.now() });
      events.length = 0;
      const u = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
      await startedOnline(u, clock);
      assert.deepEqual(kinds(), []);
      await u.stop();
      // No saved state at all (a new install): an active tamper is still an alarm.
      saved.clear();
      events.length = 0;
      const d = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
      await startedOnline(d, clock);
      assert.deepEqual(kinds(), ['alert.door_tamper critical {"door":0,"active":true}']);
      await d.stop();
    } finally {
      sim.stop();
      await bus.close();
    }
  });

  it('saves what it keeps about the unit when it changes, and otherwise once a minute, not at every poll (SD cards)', async () => {
    const sim = new DoorSim({ units: [1] });
    const bus = await fakeBus(sim);
    const sets: number[] = [];
    const saved = new Map<string, unknown>();
    const state = {
      get: (k: string) => saved.get(k),
      set: (k: string, v: unknown) => {
        saved.set(k, v);
        if (k.startsWith('eventCounter@')) sets.push(clock.now());
      },
    };
    const clock = new ManualClock();
    const ctx = { ...context([], false, state), clock };
    const d = doorOn(bus, ctx, { unitId: 1, pollMs: 1000 });
    try {
      await startedOnline(d, clock);
      await waitFor(() => sets.length === 1, { message: 'saved at the first poll' });
      const polls = () => sets.length;
      // 30 quiet polls: nothing new to save.
      for (let i = 0; i < 30; i++) {
        const before = polls();
        clock.advance(1000);
        await waitFor(() => d.state().lastSeen === new Date(clock.now()).toISOString(), { message: `poll ${i}` });
        assert.equal(polls(), before);
      }
      assert.equal(sets.length, 1, 'no write for quiet polls');
      // An event: saved at once.
      sim.unit(1).swipe(0, 4242);
      clock.advance(1000);
      await waitFor(() => sets.length === 2, { message: 'saved after the event' });
      // Quiet again for over a minute: one refresh of the time it was saved at.
      for (let i = 0; i < 61; i++) {
        clock.advance(1000);
        await waitFor(() => d.state().lastSeen === new Date(clock.now()).toISOString(), { message: `quiet poll ${i}` });
      }
      assert.equal(sets.length, 3, 'one refresh a minute');
      await d.stop();
    } finally {
      sim.stop();
      await bus.close();
    }
  });

  it('what is kept about a unit follows the unit, not the node: a renamed node reads what the unit logged meanwhile', async () => {
    const sim = new DoorSim({ units: [1] });
    const bus = await fakeBus(sim);
    const store = () => {
      const m = new Map<string, unknown>();
      return { m, state: { get: (k: string) => m.get(k), set: (k: string, v: unknown) => void m.set(k, v) } };
    };
    const units = store();
    const events: EventInput[] = [];
    const clock = new ManualClock();
    const door = (name: string, own: ReturnType<typeof store>) =>
      new ModbusDoorDriver(
        name,
        { profile: loadDoorProfile('generic-door'), doors: 1, unitId: 1, pollMs: 60_000, busKey: 'n1', endpoint: 'tcp://10.0.0.9:502' },
        () => ({ resource: bus, release: async () => undefined }),
        { ...context(events, false, own.state), clock, unitState: units.state },
      );
    try {
      const a = door('east-door', store());
      await startedOnline(a, clock);
      await a.stop();
      sim.unit(1).force(0); // during the deploy that renames the node
      const b = door('east-entrance', store());
      await startedOnline(b, clock);
      await waitFor(() => events.some((e) => e.type === 'door.forced'), { message: 'the forced door read by the renamed node' });
      await b.stop();
      // A counter kept the old way (per device, per config node id) is still found once.
      const legacy = store();
      legacy.m.set('eventCounter@n1#unit1', units.m.get('eventCounter@tcp://10.0.0.9:502#unit1'));
      units.m.clear();
      events.length = 0;
      sim.unit(1).force(0);
      const c = door('east-entrance', legacy);
      await startedOnline(c, clock);
      await waitFor(() => events.some((e) => e.type === 'door.forced'), { message: 'read from the legacy counter' });
      await c.stop();
    } finally {
      sim.stop();
      await bus.close();
    }
  });

  it('a stop during a timed unlock waits for it, so the unit gets its own pulse length back before the bus goes', async () => {
    // A bus the test steps, which refuses everything once its driver released it (a deploy closes the bus).
    const ops: string[] = [];
    let closed = false;
    let releaseWrite: (() => void) | undefined;
    const refuseClosed = () => (closed ? Promise.reject(new Error('EDGE_MODBUS_CLOSED')) : undefined);
    const bus = {
      onConnection: () => () => undefined,
      readInputRegisters: async (_u: number, _a: number, n: number) => refuseClosed() ?? new Array(n).fill(0),
      readDiscreteInputs: async (_u: number, _a: number, n: number) => refuseClosed() ?? new Array(n).fill(false),
      readHoldingRegisters: async () => refuseClosed() ?? [5],
      writeRegister: (_u: number, a: number, v: number) => {
        const refused = refuseClosed();
        if (refused) return refused;
        ops.push(`writeHR ${a}=${v}`);
        return v === 30 ? new Promise<void>((resolve) => (releaseWrite = resolve)) : Promise.resolve();
      },
      writeCoil: async (_u: number, a: number, v: boolean) => refuseClosed() ?? void ops.push(`writeCoil ${a}=${v}`),
    } as unknown as ModbusBus;
    const clock = new ManualClock();
    const ctx = { ...context([], false), clock };
    const d = new ModbusDoorDriver(
      'door-1',
      { profile: loadDoorProfile('generic-door'), doors: 1, unitId: 1, pollMs: 60_000 },
      () => ({
        resource: bus,
        release: async () => {
          closed = true;
        },
      }),
      ctx,
    );
    await startedOnline(d, clock);
    const done = d.execute({ id: 'u', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 30 } });
    // A second command queued behind it: not started once the driver is told to stop.
    const queued = d.execute({ id: 'h', action: 'door.hold', target: 'door-1', args: { door: 0 } });
    await waitFor(() => releaseWrite !== undefined, { message: 'the length write issued' });
    const stopped = d.stop(); // the deploy
    releaseWrite!();
    await done;
    await assert.rejects(queued, { code: 'EDGE_DRIVER_STOPPED' });
    await stopped;
    assert.deepEqual(ops, ['writeHR 0=30', 'writeCoil 0=true', 'writeHR 0=5']);
  });

  it('the unit pulse length is on disk before a timed unlock changes it (a kill -9 mid-command leaves it for the successor)', async () => {
    const dir = await tmpDir('door-pulse-persist');
    try {
      const file = join(dir.path, 'driver-state.json');
      const store = new DriverStateStore(file, silentLogger(), systemClock);
      let onDisk: unknown;
      let releaseWrite: (() => void) | undefined;
      const bus = {
        onConnection: () => () => undefined,
        readInputRegisters: async (_u: number, _a: number, n: number) => new Array(n).fill(0),
        readDiscreteInputs: async (_u: number, _a: number, n: number) => new Array(n).fill(false),
        readHoldingRegisters: async () => [5],
        writeRegister: (_u: number, _a: number, v: number) => {
          if (v !== 30) return Promise.resolve();
          // What a kill -9 right now would leave on disk.
          onDisk = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : undefined;
          return new Promise<void>((resolve) => (releaseWrite = resolve));
        },
        writeCoil: async () => undefined,
      } as unknown as ModbusBus;
      const clock = new ManualClock();
      const ctx = { ...context([], false, store.scope('door-1')), clock };
      const d = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
      await startedOnline(d, clock);
      const done = d.execute({ id: 'u', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 30 } });
      await waitFor(() => releaseWrite !== undefined, { message: 'the length write issued' });
      assert.equal((onDisk as Record<string, Record<string, unknown>> | undefined)?.['door-1']?.['pulseRestore@bus#unit1'], 5);
      releaseWrite!();
      await done;
      await d.stop();
    } finally {
      await dir.cleanup();
    }
  });

  it('a timed unlock whose saved length is slow to reach the disk is not run once the driver stopped meanwhile', async () => {
    const { ops, bus } = recordingBus();
    let written: ((ok: boolean) => void) | undefined;
    // An SD card stalling the fsync.
    const { saved, state } = mapState(() => new Promise<boolean>((resolve) => (written = resolve)));
    const clock = new ManualClock();
    const d = new ModbusDoorDriver(
      'door-1',
      { profile: loadDoorProfile('generic-door'), doors: 1, unitId: 1, pollMs: 60_000, stopCommandWaitMs: 20 },
      () => ({ resource: bus, release: async () => undefined }),
      { ...context([], false, state), clock },
    );
    await startedOnline(d, clock);
    const done = d.execute({ id: 'u', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 3600 } });
    await waitFor(() => written !== undefined, { message: 'the length being written' });
    await d.stop(); // gives up waiting for the command
    written!(true);
    await assert.rejects(done, { code: 'EDGE_DRIVER_STOPPED' });
    assert.deepEqual(ops, [], 'nothing written to the unit');
    assert.equal(saved.get('pulseRestore@bus#unit1'), 5, 'the record stays for a successor');
  });

  it('refuses a timed unlock when the unit length cannot be saved first (a plain unlock still works)', async () => {
    const { ops, bus } = recordingBus();
    const { state } = mapState(async () => false);
    const clock = new ManualClock();
    const d = doorOn(bus, { ...context([], false, state), clock }, { unitId: 1, pollMs: 60_000 });
    await startedOnline(d, clock);
    await assert.rejects(d.execute({ id: 'u', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 60 } }), {
      code: 'EDGE_STATE_NOT_WRITTEN',
    });
    assert.ok(!ops.includes('writeHR 0=60'));
    await d.execute({ id: 'p', action: 'door.unlock', target: 'door-1', args: { door: 0 } });
    assert.ok(ops.includes('writeCoil 0=true'));
    await d.stop();
  });

  it("a poll's restore that overlaps a second timed unlock does not clear that command's record (same number, another command)", async () => {
    /** A line that loses chosen "write HR0 = 5" requests (noise): the bus times them out. */
    class LossyLine extends FakeRtuLine {
      restoreWrites = 0;
      onRestoreWrite: (n: number) => 'drop' | 'pass' = () => 'pass';
      override write(frame: Buffer): void {
        const pdu = frame.subarray(1, frame.length - 2);
        if (pdu[0] === 6 && pdu.readUInt16BE(1) === 0 && pdu.readUInt16BE(3) === 5 && this.onRestoreWrite(++this.restoreWrites) === 'drop') return;
        super.write(frame);
      }
    }
    const sim = new DoorSim({ units: [1] });
    const line = new LossyLine(sim);
    const bus = await fakeBus(sim, line);
    const saved = new Map<string, unknown>();
    const state = { get: (k: string) => saved.get(k), set: (k: string, v: unknown) => void saved.set(k, v), persist: async () => true };
    const clock = new ManualClock();
    const d = doorOn(bus, { ...context([], false, state), clock }, { unitId: 1, pollMs: 60_000 });
    const hr0 = () => sim.unit(1).hr[0];
    try {
      await startedOnline(d, clock);
      let second: Promise<unknown> | undefined;
      line.onRestoreWrite = (n) => {
        if (n === 1) return 'drop'; // the first unlock's restore lost: retried at the next poll
        if (n === 2) {
          // The poll's retry is on the wire when a second timed unlock arrives.
          second = d.execute({ id: 'u2', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 3600 } });
          return 'pass';
        }
        return n === 3 ? 'drop' : 'pass'; // the second unlock's restore lost too
      };
      await d.execute({ id: 'u1', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 3600 } });
      assert.equal(hr0(), 3600);
      const poll = async () => {
        const seen = d.state().lastSeen;
        clock.advance(60_000);
        await waitFor(() => d.state().lastSeen !== seen, { message: 'a poll' });
      };
      await poll();
      await waitFor(() => second !== undefined, { message: 'the second unlock issued' });
      await second;
      for (let i = 0; i < 3 && hr0() !== 5; i++) await poll();
      assert.equal(hr0(), 5, "the unit keeps the command's length for every later card");
      await d.stop();
    } finally {
      sim.stop();
      await bus.close();
    }
  });

  it("a plain unlock is refused while the unit still has a timed unlock's length that cannot be put back (no hour-long pulse reported ok)", async () => {
    let hr0 = 5;
    let lossy = false;
    let pulses = 0;
    const pulsed: number[] = [];
    const bus = stubBus(
      () => hr0,
      async (_a, v) => {
        // The line loses the writes that would put the length back.
        if (lossy && v === 5) throw new EdgewardError('EDGE_MODBUS_TIMEOUT', 'unit 1: no reply');
        hr0 = v;
      },
      async (_a, v) => {
        if (!v) return;
        pulsed.push(hr0);
        if (++pulses === 1) lossy = true;
      },
    );
    const clock = new ManualClock();
    const ctx = { ...context([], false, mapState().state), clock };
    const d = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
    await startedOnline(d, clock);
    await d.execute({ id: 'u', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 3600 } });
    assert.equal(hr0, 3600, 'its restore was lost');
    await assert.rejects(d.execute({ id: 'v', action: 'door.unlock', target: 'door-1', args: { door: 0 } }), { code: 'EDGE_MODBUS_TIMEOUT' });
    assert.deepEqual(pulsed, [3600], 'no second pulse with the hour-long length');
    lossy = false;
    await d.execute({ id: 'w', action: 'door.unlock', target: 'door-1', args: { door: 0 } });
    assert.deepEqual(pulsed, [3600, 5], 'once the length is back, a plain unlock pulses the unit own length');
    await d.stop();
  });

  it("a pulse length the unit did not get back is kept in the driver state: the successor restores it, never taking the command's as the unit's own", async () => {
    const ops: string[] = [];
    let hr0 = 5;
    let broken = false;
    let pulses = 0;
    const bus = stubBus(
      () => hr0,
      async (a, v) => {
        // The link fails right after the pulse (a cable pulled, the process killed).
        if (broken) throw new Error('EDGE_MODBUS_TIMEOUT');
        ops.push(`writeHR ${a}=${v}`);
        hr0 = v;
      },
      async (a, v) => {
        ops.push(`writeCoil ${a}=${v}`);
        if (++pulses === 1) broken = true;
      },
    );
    const saved = new Map<string, unknown>();
    const state = { get: (k: string) => saved.get(k), set: (k: string, v: unknown) => void saved.set(k, v) };
    const clock = new ManualClock();
    const ctx = { ...context([], false, state), clock };
    const a = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
    await startedOnline(a, clock);
    await a.execute({ id: 'u', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 30 } });
    await a.stop();
    assert.equal(hr0, 30, 'the restore failed: the unit still has the command length');
    broken = false;
    ops.length = 0;
    const b = doorOn(bus, ctx, { unitId: 1, pollMs: 60_000 });
    await startedOnline(b, clock);
    await waitFor(() => hr0 === 5, { message: () => `the successor put the length back (ops: ${ops.join(' | ')})` });
    await b.execute({ id: 'v', action: 'door.unlock', target: 'door-1', args: { door: 0, seconds: 10 } });
    assert.equal(hr0, 5, 'and restores the unit length after its own timed unlock, not 30');
    await b.stop();
  });

  it('a stop during a poll waits for it, and that poll reports and saves nothing: its successor reads those events once', async () => {
    let counter = 0;
    let releaseRing: (() => void) | undefined;
    const bus = {
      onConnection: () => () => undefined,
      readInputRegisters: (_u: number, a: number, n: number) => {
        if (a === 0) return Promise.resolve([counter]);
        // Ring entry 1: a denied card 4242, held until the test lets it go.
        return new Promise<number[]>((resolve) => {
          releaseRing = () => resolve([2, 0, 0, 4242].slice(0, n));
        });
      },
      readDiscreteInputs: async (_u: number, _a: number, n: number) => new Array(n).fill(false),
    } as unknown as ModbusBus;
    const clock = new ManualClock();
    const kept = new Map<string, unknown>();
    const events: EventInput[] = [];
    const ctx = { ...context(events, true, { get: (k) => kept.get(k), set: (k, v) => void kept.set(k, v) }), clock };
    const d = doorOn(bus, ctx, { unitId: 1, pollMs: 100 });
    await startedOnline(d, clock);
    counter = 1;
    clock.advance(100);
    await waitFor(() => releaseRing !== undefined, { message: 'the poll reading the ring' });
    let stopped = false;
    const stopping = d.stop().then(() => {
      stopped = true;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(stopped, false, 'stop waits for the poll on its way');
    releaseRing!();
    await stopping;
    assert.ok(!events.some((e) => e.type === 'access.denied'), 'nothing reported after the stop');
    assert.deepEqual((kept.get('eventCounter@bus#unit1') as { counter: number }).counter, 0, 'the counter before the event');
  });

  it('validates its properties, naming the field (unit 0 is rejected, not defaulted)', () => {
    assert.throws(() => parseDoorProps('d', { unitId: 0 }), /unitId/);
    assert.throws(() => parseDoorProps('d', { doors: 5 }), /doors/);
    assert.throws(() => parseDoorProps('d', { profile: '../etc/passwd' }), { code: 'EDGE_PROFILE_INVALID' });
    assert.throws(() => parseDoorProps('d', { profile: 'no-such-vendor' }), {
      code: 'EDGE_PROFILE_NOT_FOUND',
    });
    // A typo is told which profiles there are.
    assert.throws(() => parseDoorProps('d', { profile: 'generic_door' }), /profiles here: .*generic-door/);
    const ok = parseDoorProps('d', { unitId: '17', doors: '2', pollMs: '100' });
    assert.equal(ok.unitId, 17);
    assert.equal(ok.doors, 2);
  });
});
