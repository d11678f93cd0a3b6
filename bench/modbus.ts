/**
 * Modbus bench (`npm run bench -- modbus`, or `tsx bench/modbus.ts`):
 *
 * 1. Dead unit: 8 healthy door controllers + 1 that never answers on one RTU
 *    bus (socat PTY, simulator pacing replies at 115200 baud wire speed),
 *    100 ms polls, 200 ms timeout. Healthy poll rate with and without the dead
 *    unit (as a ratio), register-change detection latency (median / max, target
 *    one poll interval + one timeout) and seconds without any healthy read.
 *    The peer measured on this machine kind (Node-RED 4 + node-red-contrib-modbus
 *    5.60, same scenario): 10 → 2.9 reads/s, detection 1.1 s median / 2.2 s max,
 *    22 of 55 s without reads.
 * 2. Poll-cycle time for N units against the bus's wire time at 9600, 19200 and
 *    115200 baud (11 bits per character, 3.5-character gaps), target ≤ 1.2×,
 *    with each transaction split into wire time, the simulator's pacing error,
 *    the socat PTY pair's two crossings and the master's own overhead.
 *
 * Env: BENCH_MODBUS_S (seconds per dead-unit scenario, default 10), BENCH_MODBUS_UNITS (8), BENCH_MODBUS_CYCLES (10).
 */
import type { Driver, DriverContext } from '../drivers/driver.js';
import { ModbusDoorDriver } from '../drivers/door/driver.js';
import { loadDoorProfile } from '../drivers/door/profile.js';
import { ModbusBus } from '../drivers/modbus/bus.js';
import { SerialLink } from '../drivers/modbus/link.js';
import { EventBus } from '../edge/bus.js';
import { systemClock } from '../edge/clock.js';
import type { EventInput } from '../edge/envelope.js';
import { silentLogger } from '../edge/log.js';
import { DoorSim } from '../hardware/sim/door-sim.js';
import { openPtyPair } from '../test/helpers/pty.js';
import { type Figure, delay, tmpDir, waitFor } from './lib.js';

const POLL_MS = 100;
const TIMEOUT_MS = 200;

interface Scenario {
  readsPerS: number;
  latencies: number[];
  silentSeconds: number;
  seconds: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : Number.NaN;
}

async function deadUnitScenario(withDead: boolean, seconds: number): Promise<Scenario> {
  const tmp = await tmpDir('bench-modbus');
  const pty = await openPtyPair(tmp.path);
  const healthy = [1, 2, 3, 4, 5, 6, 7, 8];
  const sim = new DoorSim({ units: [...healthy, 9] });
  sim.setFault(9, 'silent');
  const server = await sim.serveRtu(pty.b, { baudRate: 115200, pace: true });
  const bus = new ModbusBus(
    { transport: 'rtu', path: pty.a, baudRate: 115200, timeoutMs: TIMEOUT_MS },
    { clock: systemClock, log: silentLogger() },
  );
  await bus.start();
  const seen: Array<{ device: string; type: string; at: number }> = [];
  const ctx: DriverContext = {
    bus: new EventBus(),
    clock: systemClock,
    log: silentLogger(),
    emit: (e: EventInput) => void seen.push({ device: e.source.device, type: e.type, at: performance.now() }),
    privacy: { siteKey: 'bench', rawCards: false },
  };
  const profile = loadDoorProfile('generic-door');
  const units = withDead ? [...healthy, 9] : healthy;
  const drivers: Driver[] = units.map(
    (u) =>
      new ModbusDoorDriver(
        `door-${u}`,
        { unitId: u, profile, doors: 1, pollMs: POLL_MS },
        () => ({ resource: bus, release: async () => undefined }),
        ctx,
      ),
  );
  try {
    for (const d of drivers) await d.start();
    await waitFor(() => drivers.slice(0, 8).every((d) => d.state().online), {
      message: 'healthy units online',
    });
    if (withDead)
      await waitFor(() => seen.some((e) => e.device === 'door-9' && e.type === 'device.offline'), {
        message: 'dead unit offline',
      });
    const count = () => healthy.reduce((n, u) => n + (server.counters.byUnit.get(u) ?? 0), 0);
    const start = performance.now();
    const startCount = count();
    const perSecond: number[] = [];
    const latencies: number[] = [];
    let lastCount = startCount;
    let nextSecond = start + 1000;
    let i = 0;
    while (performance.now() - start < seconds * 1000) {
      // Toggle one healthy unit's door contact and time how long until the driver reports it.
      const u = healthy[i++ % healthy.length];
      const unit = sim.unit(u);
      const open = !unit.isOpen(0);
      const t0 = performance.now();
      if (open) unit.writeCoil(1, true); // held unlocked: opening is not a forced entry
      if (open) unit.open(0);
      else unit.close(0);
      const type = open ? 'door.opened' : 'door.closed';
      const ev = await waitFor(
        () => seen.find((e) => e.device === `door-${u}` && e.type === type && e.at >= t0),
        { timeoutMs: 10_000, intervalMs: 1 },
      );
      latencies.push(ev.at - t0);
      seen.length = 0;
      await delay(50 + Math.random() * 100);
      const now = performance.now();
      if (now >= nextSecond) {
        const c = count();
        perSecond.push(c - lastCount);
        lastCount = c;
        nextSecond += 1000;
      }
    }
    const elapsed = (performance.now() - start) / 1000;
    // Each poll is two requests (event counter, then discrete inputs).
    const readsPerS = (count() - startCount) / 2 / healthy.length / elapsed;
    return {
      readsPerS,
      latencies,
      silentSeconds: perSecond.filter((n) => n === 0).length,
      seconds: perSecond.length,
    };
  } finally {
    for (const d of drivers) await d.stop();
    await bus.close();
    await sim.stop();
    await pty.kill();
    await tmp.cleanup();
  }
}

/** Wire time of one transaction: request, 3.5-char gap, reply, 3.5-char gap; 11 bits per character. */
function wireMs(baud: number, reqBytes: number, replyBytes: number): number {
  return ((reqBytes + 3.5 + replyBytes + 3.5) * 11 * 1000) / baud;
}

/**
 * Where one transaction's time goes, mean ms per transaction. The four parts
 * add up to the measured cycle time: `wire` (the bus's own time), `sim` (paced
 * replies written later than their wire-time target), `pty` (both crossings of
 * the socat PTY pair: master write → sim has the request, sim writes the reply
 * → master has its last byte) and `master` (the rest: reply handling, the
 * promise back to the caller, the next request built and written, beyond the
 * 3.5-character gap that `wire` already counts).
 */
interface Breakdown {
  wire: number;
  sim: number;
  pty: number;
  master: number;
}

interface CycleResult {
  cycleMs: number;
  /** Median of the per-cycle times: what the bus does when the shared machine does not preempt it. */
  medianCycleMs: number;
  wireMs: number;
  perTx: Breakdown;
  simLateMaxMs: number;
}

async function cycleBench(baud: number, nUnits: number, cycles: number): Promise<CycleResult> {
  const tmp = await tmpDir('bench-cycle');
  const pty = await openPtyPair(tmp.path);
  const units = Array.from({ length: nUnits }, (_, i) => i + 1);
  const sim = new DoorSim({ units });
  // Trace timestamps (one clock: sim and master share this process) to split each transaction.
  let tracing = false;
  let outLeg = 0;
  let backLeg = 0;
  let lastWrite = 0;
  let lastReply = 0;
  let lastRx = 0;
  let replied = false;
  const server = await sim.serveRtu(pty.b, {
    baudRate: baud,
    pace: true,
    trace: (event, at) => {
      if (!tracing) return;
      if (event === 'request') outLeg += at - lastWrite;
      else {
        lastReply = at;
        replied = true;
      }
    },
  });
  const link = new SerialLink({ path: pty.a, baudRate: baud, parity: 'none' });
  const write = link.write.bind(link);
  const closeLeg = () => {
    if (replied) backLeg += lastRx - lastReply;
    replied = false;
  };
  link.write = (data: Buffer) => {
    if (tracing) {
      closeLeg();
      lastWrite = performance.now();
    }
    write(data);
  };
  const bus = new ModbusBus(
    { transport: 'rtu', path: pty.a, baudRate: baud, timeoutMs: 1000 },
    { clock: systemClock, log: silentLogger(), link },
  );
  try {
    await bus.start();
    await waitFor(() => bus.isConnected, { message: 'bus open' });
    const onData = link.onData;
    link.onData = (chunk) => {
      lastRx = performance.now();
      onData(chunk);
    };
    // The door driver's poll: event counter (1 register), then 4 discrete inputs of one door.
    const poll = async (u: number) => {
      await bus.readInputRegisters(u, 0, 1);
      await bus.readDiscreteInputs(u, 0, 4);
    };
    for (const u of units) await poll(u); // warm-up
    const late0 = { ...server.pacing };
    const tx0 = bus.stats.transactions;
    tracing = true;
    const perCycle: number[] = [];
    const t0 = performance.now();
    for (let c = 0; c < cycles; c++) {
      const c0 = performance.now();
      for (const u of units) await poll(u);
      perCycle.push(performance.now() - c0);
    }
    const total = performance.now() - t0;
    tracing = false;
    closeLeg();
    const txs = bus.stats.transactions - tx0;
    // Request frames are 8 bytes; replies 7 (1 register) and 6 (1 byte of bits).
    const wire = nUnits * (wireMs(baud, 8, 7) + wireMs(baud, 8, 6));
    const sim = (server.pacing.lateMsSum - late0.lateMsSum) / (server.pacing.replies - late0.replies);
    const ptyMs = (outLeg + backLeg) / txs;
    const wirePerTx = (wire * cycles) / txs;
    return {
      cycleMs: total / cycles,
      medianCycleMs: median(perCycle),
      wireMs: wire,
      perTx: { wire: wirePerTx, sim, pty: ptyMs, master: total / txs - wirePerTx - sim - ptyMs },
      simLateMaxMs: server.pacing.lateMsMax,
    };
  } finally {
    await bus.close();
    await sim.stop();
    await pty.kill();
    await tmp.cleanup();
  }
}

/**
 * Round trip of a bare 8-byte request / 7-byte reply through a socat PTY pair,
 * with the same descriptor I/O as the master and the simulator on both ends:
 * what the emulated line itself adds to every transaction, whatever the baud
 * rate (a PTY has no wire time).
 */
async function ptyRoundTripMs(samples = 1000): Promise<number> {
  const tmp = await tmpDir('bench-rtt');
  const pty = await openPtyPair(tmp.path);
  const a = new SerialLink({ path: pty.a, baudRate: 115200, parity: 'none' });
  const b = new SerialLink({ path: pty.b, baudRate: 115200, parity: 'none' });
  await a.open();
  await b.open();
  try {
    b.onData = () => b.write(Buffer.alloc(7));
    const echo = () =>
      new Promise<void>((resolve) => {
        a.onData = () => resolve();
        a.write(Buffer.alloc(8));
      });
    for (let i = 0; i < 50; i++) await echo();
    const t0 = performance.now();
    for (let i = 0; i < samples; i++) await echo();
    return (performance.now() - t0) / samples;
  } finally {
    await a.close();
    await b.close();
    await pty.kill();
    await tmp.cleanup();
  }
}

export async function runModbusBench(): Promise<Figure[]> {
  const seconds = Number(process.env.BENCH_MODBUS_S ?? 10);
  const nUnits = Number(process.env.BENCH_MODBUS_UNITS ?? 8);
  const cycles = Number(process.env.BENCH_MODBUS_CYCLES ?? 10);
  const figures: Figure[] = [];
  const clean = await deadUnitScenario(false, seconds);
  const dead = await deadUnitScenario(true, seconds);
  const ratio = dead.readsPerS / clean.readsPerS;
  const bound = POLL_MS + TIMEOUT_MS;
  figures.push(
    {
      section: 'modbus',
      name: 'healthy unit poll rate, 8 units, no dead unit',
      value: clean.readsPerS,
      unit: 'reads/s',
      note: `100 ms polls, 115200 baud paced, ${seconds} s`,
    },
    {
      section: 'modbus',
      name: 'healthy unit poll rate, 8 units + 1 dead unit',
      value: dead.readsPerS,
      unit: 'reads/s',
      note: 'peer (Node-RED + contrib-modbus): 10 → 2.9 reads/s',
    },
    {
      section: 'modbus',
      name: 'poll rate with dead unit / without',
      value: ratio * 100,
      unit: '%',
      target: '≥ 90 %',
      ratio: `${ratio.toFixed(3)}`,
      pass: ratio >= 0.9,
    },
    {
      section: 'modbus',
      name: 'change detection with dead unit, median',
      value: median(dead.latencies),
      unit: 'ms',
      note: 'peer: 1.1 s median',
    },
    {
      section: 'modbus',
      name: 'change detection with dead unit, max',
      value: Math.max(...dead.latencies),
      unit: 'ms',
      target: `≤ ${bound} (poll + timeout)`,
      pass: Math.max(...dead.latencies) <= bound,
      note: `${dead.latencies.length} changes; without the dead unit max ${Math.max(...clean.latencies).toFixed(1)} ms, median ${median(clean.latencies).toFixed(1)} ms; peer: 2.2 s max`,
    },
    {
      section: 'modbus',
      name: 'seconds without healthy reads, with dead unit',
      value: `${dead.silentSeconds} of ${dead.seconds}`,
      unit: 's',
      target: '0',
      pass: dead.silentSeconds === 0,
      note: 'peer: 22 of 55 s',
    },
  );
  const rtt = await ptyRoundTripMs();
  for (const baud of [9600, 19200, 115200]) {
    const r = await cycleBench(baud, nUnits, cycles);
    const x = r.cycleMs / r.wireMs;
    const p = r.perTx;
    const part = (ms: number) => `${(ms * 1000).toFixed(0)} µs (${(ms / p.wire).toFixed(3)}×)`;
    figures.push({
      section: 'modbus',
      name: `poll cycle, ${nUnits} units at ${baud} baud`,
      value: r.cycleMs,
      unit: 'ms',
      target: '≤ 1.2× wire',
      ratio: `${x.toFixed(3)}× of ${r.wireMs.toFixed(1)} ms`,
      pass: x <= 1.2,
      note:
        `median cycle ${(r.medianCycleMs / r.wireMs).toFixed(3)}×; per transaction: wire ${(p.wire * 1000).toFixed(0)} µs` +
        ` + sim pacing late ${part(p.sim)} (max ${(r.simLateMaxMs * 1000).toFixed(0)} µs)` +
        ` + PTY pair ${part(p.pty)} (bare echo ${(rtt * 1000).toFixed(0)} µs)` +
        ` + master ${part(p.master)}; without the PTY pair ${((p.wire + p.sim + p.master) / p.wire).toFixed(3)}×`,
    });
  }
  return figures;
}

if (require.main === module) {
  runModbusBench().then(
    (figs) => {
      for (const f of figs)
        console.log(
          `${f.name}: ${typeof f.value === 'number' ? f.value.toFixed(2) : f.value} ${f.unit}${f.ratio ? ` (${f.ratio})` : ''}${f.pass === undefined ? '' : f.pass ? ' PASS' : ' FAIL'}${f.note ? ` — ${f.note}` : ''}`,
        );
      process.exit(0);
    },
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
