/**
 * `npm run bench [-- section…]`: measures the quality bars of SPEC.md in one
 * run and prints them next to the peer (a Mosquitto bridge) measured in the
 * same minute. Sections: `pipeline`, `backlog`, `peer`, and `modbus` when
 * bench/modbus.ts exports `runModbusBench()`. Default: all available.
 * Results also go to bench/results.json (not committed).
 *
 * Counts (env): BENCH_EVENTS (200000), BENCH_BATCH (100), BENCH_CONCURRENCY (8),
 * BENCH_BACKLOG (1000000), BENCH_LATENCY_SAMPLES (200), BENCH_PEER_EVENTS (50000),
 * BENCH_PEER_MAX_S (20), BENCH_COMPRESS (gzip | none).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { type Figure, fmtInt, fmtNum, mb, progress } from './lib.js';
import { type PeerResult, runPeerBench } from './peer-mosquitto-bridge.js';
import {
  type BacklogResult,
  type EdgewardKillResult,
  type LatencyFigures,
  type PipelineResult,
  runBacklogBench,
  runEdgewardKill,
  childScripts,
  runPipelineBench,
} from './pipeline.js';

const SECTIONS = ['pipeline', 'backlog', 'peer', 'modbus'] as const;
type Section = (typeof SECTIONS)[number];

interface Results {
  startedAt: string;
  /** How the runtime and central children ran: compiled JS (like production) or under tsx. */
  children: string;
  node: string;
  cpus: number;
  loadavgAtStart: number[];
  env: Record<string, string>;
  pipeline?: PipelineResult;
  backlog?: BacklogResult;
  peer?: { mosquitto: PeerResult[]; edgeward: EdgewardKillResult };
  modbus?: unknown;
  figures: Figure[];
  errors: Array<{ section: string; error: string }>;
}

/**
 * Compile the project (tsc → dist/, as `npm run build` does) so the runtime
 * and central children run as plain `node`, like in production; tsx would add
 * its compiler to the measured RSS and CPU. Returns the mode used.
 */
function prepareChildren(): string {
  if (__filename.endsWith('.js')) {
    childScripts.dir = __dirname; // already running compiled
    return 'compiled JS';
  }
  if (process.env.BENCH_TSX === '1') return 'tsx (BENCH_TSX=1)';
  const root = join(__dirname, '..');
  const t0 = Date.now();
  progress('compiling the project (tsc → dist/) so the children run as plain node');
  const r = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.json')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = join(root, 'dist', 'bench');
  const fresh = ['edgeward-child.js', 'central-child.js'].every((f) => {
    const file = join(out, f);
    return existsSync(file) && statSync(file).mtimeMs >= t0 - 2000;
  });
  if (!fresh) {
    progress(`tsc produced no fresh dist/bench (status ${r.status}): the children run under tsx`);
    return 'tsx (tsc failed)';
  }
  if (r.status !== 0) progress('tsc reported type errors elsewhere in the tree; running its output anyway');
  childScripts.dir = out;
  return 'compiled JS (dist/)';
}

/** bench/modbus.ts is another helper's: load it only if it is there. */
async function loadModbus(): Promise<(() => Promise<unknown>) | undefined> {
  if (!existsSync(join(__dirname, 'modbus.ts')) && !existsSync(join(__dirname, 'modbus.js'))) return undefined;
  const spec = './modbus.js';
  const mod = (await import(spec)) as { runModbusBench?: () => Promise<unknown>; default?: { runModbusBench?: () => Promise<unknown> } };
  return mod.runModbusBench ?? mod.default?.runModbusBench;
}

function pipelineFigures(p: PipelineResult): Figure[] {
  const ratio = p.outboxAlonePerS / p.pipelinePerS;
  const driverRatio = p.driverRatio;
  const med = p.rounds[p.rounds.map((r) => r.alonePerS / r.driverPerS).indexOf(driverRatio)] ?? p.rounds[0];
  const list = (f: (r: PipelineResult['rounds'][number]) => string): string => p.rounds.map(f).join(', ');
  return [
    {
      section: 'pipeline',
      name: 'HTTP → outbox → uplink → Mosquitto → central ack',
      value: p.pipelinePerS,
      unit: 'events/s',
      target: '≥ 30,000',
      pass: p.pipelinePerS >= 30_000,
      note: `${fmtNum(p.events)} events, ${p.batch}/request, ${p.concurrency} connections`,
    },
    {
      section: 'pipeline',
      name: 'outbox alone (same batches, sync writes)',
      value: p.outboxAlonePerS,
      unit: 'events/s',
      note: `median of ${p.rounds.length} runs: ${list((r) => fmtInt(r.alonePerS))}`,
    },
    {
      section: 'pipeline',
      name: 'outbox alone / HTTP pipeline',
      value: ratio,
      unit: '×',
      target: '≤ 1.5',
      ratio: `${fmtNum(ratio)}×`,
      pass: ratio <= 1.5,
      note: 'the SPEC reads "HTTP or driver → … → uplink"; the HTTP path also parses and validates every body (see the CPU rows), and runs on to the central\'s ack',
    },
    {
      // SPEC's bar: "durable pipeline (HTTP or driver → rules → outbox → uplink to a local Mosquitto)".
      section: 'pipeline',
      name: 'driver path (runtime.ingest) → outbox → uplink → Mosquitto PUBACK',
      value: p.driverPathPerS,
      unit: 'events/s',
      target: '≥ 30,000',
      pass: p.driverPathPerS >= 30_000,
      note: `ack: broker, to the outbox empty (every event PUBACKed and deleted); median of ${p.rounds.length} runs: ${list((r) => fmtInt(r.driverPerS))}`,
    },
    {
      section: 'pipeline',
      name: 'driver path ingested (stored durably, uplink running)',
      value: p.driverIngestedPerS,
      unit: 'events/s',
    },
    {
      section: 'pipeline',
      name: 'outbox alone / driver path',
      value: driverRatio,
      unit: '×',
      target: '≤ 1.5',
      ratio: `${fmtNum(driverRatio)}×`,
      pass: driverRatio <= 1.5,
      note: `within each round (alone, then driver): ${list((r) => `${fmtNum(r.alonePerS / r.driverPerS)}×`)}; the median round`,
    },
    {
      // Beyond the SPEC's pipeline: the central decoding and acking on the same 2 cores.
      section: 'pipeline',
      name: 'driver path → … → Mosquitto → central ack (end to end)',
      value: p.e2eDriverPathPerS,
      unit: 'events/s',
      ratio: `outbox alone / this: ${fmtNum(p.e2eRatio)}×`,
      note: `ack: central, to the last event decoded and acked by a central on the same 2 cores; median of ${p.rounds.length} runs: ${list((r) => fmtInt(r.e2ePerS))}; within each round: ${list((r) => `${fmtNum(r.alonePerS / r.e2ePerS)}×`)}`,
    },
    {
      // Not the bar's figure: the same store doing the deletes the pipeline does, no network.
      section: 'pipeline',
      name: 'outbox alone with its deletes (in-process reader acking)',
      value: p.outboxCyclePerS,
      unit: 'events/s',
      ratio: `this / driver path: ${fmtNum(p.outboxCyclePerS / p.driverPathPerS)}×`,
      note: 'one run after the rounds; against the median driver path',
    },
    {
      // Not the bar's figure either: what a box with its uplink down takes in once its store is full.
      section: 'pipeline',
      name: 'outbox alone at its bound (every append evicting)',
      value: p.outboxFullPerS,
      unit: 'events/s',
      ratio: `outbox alone / this: ${fmtNum(p.outboxAlonePerS / p.outboxFullPerS)}×`,
      note: 'a 64 MiB bound, filled first (not timed); the same appenders; one run after the rounds',
    },
    {
      section: 'pipeline',
      name: 'runtime event loop per event, driver path (µs)',
      value: med.mainUsPerEvent,
      unit: 'µs',
      note: `the round of the median ratio: utilization ${fmtNum(med.elu)}, of which GC pauses ${fmtNum(med.gcUsPerEvent)} µs/event; ${fmtInt(med.eventsPerBatch)} events per batch; all rounds: ${list((r) => fmtNum(r.mainUsPerEvent))} µs`,
    },
    {
      section: 'pipeline',
      name: 'driver path with the reference in-memory outbox (no durability)',
      value: p.memoryDriverPathPerS,
      unit: 'events/s',
      ratio: `outbox alone / this: ${fmtNum(p.outboxAlonePerS / p.memoryDriverPathPerS)}×`,
      note: 'MemoryOutbox, the tests\' reference, to the broker like the driver path: what the rest of the pipeline does with storing for free',
    },
    {
      section: 'pipeline',
      name: 'HTTP accepted (202 = stored durably)',
      value: p.httpAcceptedPerS,
      unit: 'events/s',
    },
    ...cpuRows(p),
    ...latencyRows('pipeline', 'idle', p.idleLatency),
    {
      section: 'pipeline',
      name: 'RSS runtime, no editor, after the load',
      value: mb(p.rssNoEditor),
      unit: 'MB',
    },
    {
      section: 'pipeline',
      name: 'RSS runtime with the Node-RED editor, no flows',
      value: mb(p.rssEditor),
      unit: 'MB',
    },
    {
      section: 'pipeline',
      name: `RSS runtime with the editor and ${p.devices} simulated doors`,
      value: mb(p.rssEditorDevices),
      unit: 'MB',
      target: '< 150',
      pass: p.rssEditorDevices < 150 * 1024 * 1024 && p.devicesOnline >= p.devices,
      note: `${p.devicesOnline} of ${p.devices} door controllers online (DoorSim over Modbus TCP, polled every 500 ms)`,
    },
  ];
}

/** CPU per event by process: where the 2 cores go in each throughput run (the ratio's budget). */
function cpuRows(p: PipelineResult): Figure[] {
  const row = (name: string, us: Record<string, number>): Figure => {
    const total = Object.values(us).reduce((a, b) => a + b, 0);
    const parts = Object.entries(us).map(([k, v]) => `${k} ${fmtNum(v)}`);
    return { section: 'pipeline', name: `CPU per event, ${name} (µs, all threads)`, value: total, unit: 'µs', note: parts.join(' + ') };
  };
  return [
    row('outbox alone', p.cpuUs.outboxAlone),
    row('HTTP pipeline', p.cpuUs.http),
    row('driver path', p.cpuUs.driver),
    row('driver path to the central', p.cpuUs.e2e),
    row('driver path, in-memory outbox', p.cpuUs.memoryDriver),
  ];
}

function slow(l: LatencyFigures): string {
  return l.slowest.map(([i, ms]) => `#${i}: ${fmtNum(ms)}`).join(', ');
}

/** The p50/p99 of a critical event POST → broker (the bar), with POST → 202 (stored) and → central as the breakdown. */
function latencyRows(section: string, label: string, l: { broker: LatencyFigures; total: LatencyFigures; stored: LatencyFigures }): Figure[] {
  const b = l.broker;
  const t = l.total;
  const missing = (f: LatencyFigures) => (f.missing ? `, ${f.missing} never arrived` : '');
  return [
    // SPEC: "critical event from driver to broker: p99 under 50 ms": the bar is on arrival at the broker.
    { section, name: `critical event POST → broker, ${label}: p50`, value: b.p50, unit: 'ms' },
    {
      section,
      name: `critical event POST → broker, ${label}: p99`,
      value: b.p99,
      unit: 'ms',
      target: '< 50',
      pass: b.p99 < 50,
      note: `${b.samples} samples one per 20 ms, stamped by a subscriber on the edge's Mosquitto; max ${fmtNum(b.max)} ms${missing(b)}; slowest (sample #: ms, broker | stored): ${slow(b)} | ${slow(l.stored)}`,
    },
    {
      section,
      name: `  of which POST → 202 (stored durably): p50 / p99`,
      value: `${fmtNum(l.stored.p50)} / ${fmtNum(l.stored.p99)}`,
      unit: 'ms',
    },
    {
      section,
      name: `  and on to the central (decoded, acked): p50 / p99`,
      value: `${fmtNum(t.p50)} / ${fmtNum(t.p99)}`,
      unit: 'ms',
      note: `the central shares these 2 cores and decodes batches in arrival order; max ${fmtNum(t.max)} ms${missing(t)}; slowest: ${slow(t)}`,
    },
  ];
}

function backlogFigures(b: BacklogResult): Figure[] {
  return [
    ...latencyRows('backlog', `${fmtNum(b.backlog)} backlog draining`, b.latency),
    {
      section: 'backlog',
      name: 'backlog drain rate during the samples',
      value: b.drainPerS,
      unit: 'events/s',
      note: `${fmtInt(b.left)} events still queued when the samples ended${b.left === 0 ? ' (drained too early: raise BENCH_BACKLOG)' : ''}`,
    },
    { section: 'backlog', name: 'backlog preload (outbox, 5000/append)', value: b.preloadPerS, unit: 'events/s' },
  ];
}

function peerFigures(peers: PeerResult[], ew: EdgewardKillResult, p?: PipelineResult): Figure[] {
  const out: Figure[] = [];
  for (const r of peers) {
    out.push({
      section: 'peer',
      name: `Mosquitto bridge (${r.flavour}): QoS 1 accepted, bridge up`,
      value: r.throughput.ackedPerS,
      unit: 'msg/s',
      ratio: p ? `Edgeward pipeline / this: ${fmtNum(p.pipelinePerS / r.throughput.ackedPerS)}×` : undefined,
      note: `${fmtInt(r.throughput.delivered)}/${fmtInt(r.throughput.acked)} at central`,
    });
    out.push({
      section: 'peer',
      name: `Mosquitto bridge (${r.flavour}): delivered/acknowledged after kill -9 in outage`,
      value: `${fmtInt(r.kill.delivered)}/${fmtInt(r.kill.acknowledged)}`,
      unit: pct(r.kill.delivered, r.kill.acknowledged),
      note: `${fmtNum(r.kill.ackedPerS)} msg/s accepted during the outage`,
    });
  }
  out.push({
    section: 'peer',
    name: 'Edgeward: delivered/acknowledged after kill -9 in outage',
    value: `${fmtInt(ew.delivered)}/${fmtInt(ew.acknowledged)}`,
    unit: pct(ew.delivered, ew.acknowledged),
    target: '100 %',
    pass: ew.acknowledged > 0 && ew.delivered === ew.acknowledged,
    note: `${fmtNum(ew.acceptedPerS)} events/s accepted (HTTP 202) during the outage`,
  });
  return out;
}

function pct(a: number, b: number): string {
  if (b === 0) return 'n/a';
  // 2,413 of 2,414 must not print as 100 %: show what was lost.
  return a === b ? '100 %' : `${((a / b) * 100).toFixed(2)} %, ${fmtInt(b - a)} lost`;
}

function modbusFigures(r: unknown): Figure[] {
  if (Array.isArray(r) && r.every((f) => f && typeof f === 'object' && 'name' in f && 'value' in f)) {
    return (r as Figure[]).map((f) => ({ ...f, section: f.section ?? 'modbus', unit: f.unit ?? '' }));
  }
  return [{ section: 'modbus', name: 'result', value: JSON.stringify(r), unit: '' }];
}

function printTable(figures: Figure[]): void {
  const rows = figures.map((f) => [
    f.section,
    f.name,
    `${fmtNum(f.value)} ${f.unit}`.trim(),
    f.target ?? '',
    f.ratio ?? '',
    f.pass === undefined ? '' : f.pass ? 'PASS' : 'FAIL',
  ]);
  const head = ['section', 'figure', 'value', 'target', 'ratio', 'bar'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  console.log(line(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(line(r));
  const notes = figures.filter((f) => f.note);
  if (notes.length > 0) {
    console.log('\nnotes:');
    for (const f of notes) console.log(`  ${f.section} / ${f.name}: ${f.note}`);
  }
}

function printSideBySide(peers: PeerResult[], ew: EdgewardKillResult, p?: PipelineResult): void {
  console.log('\nside by side (same run): what a user would otherwise install vs Edgeward');
  const rows = [
    ['', 'accepted/s, link up', 'accepted/s, outage', 'kill -9 in outage: delivered/acked'],
    ...peers.map((r) => [
      `Mosquitto bridge, ${r.flavour}`,
      fmtNum(r.throughput.ackedPerS),
      fmtNum(r.kill.ackedPerS),
      `${fmtInt(r.kill.delivered)}/${fmtInt(r.kill.acknowledged)} (${pct(r.kill.delivered, r.kill.acknowledged)})`,
    ]),
    [
      'Edgeward (HTTP → outbox → uplink)',
      p ? fmtNum(p.pipelinePerS) : 'n/a',
      fmtNum(ew.acceptedPerS),
      `${fmtInt(ew.delivered)}/${fmtInt(ew.acknowledged)} (${pct(ew.delivered, ew.acknowledged)})`,
    ],
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd());
}

async function main(argv: string[]): Promise<number> {
  const asked = argv.filter((a) => !a.startsWith('-'));
  for (const a of asked) {
    if (!(SECTIONS as readonly string[]).includes(a)) {
      console.error(`unknown section "${a}"; sections: ${SECTIONS.join(', ')}`);
      return 2;
    }
  }
  const modbus = await loadModbus();
  const wanted = new Set<Section>(asked.length > 0 ? (asked as Section[]) : SECTIONS.filter((s) => s !== 'modbus' || modbus));
  if (wanted.has('modbus') && !modbus) {
    console.error('section "modbus" asked for, but bench/modbus.ts exports no runModbusBench()');
    return 2;
  }

  const needsChildren = wanted.has('pipeline') || wanted.has('backlog') || wanted.has('peer');
  const res: Results = {
    startedAt: new Date().toISOString(),
    children: needsChildren ? prepareChildren() : 'none',
    node: process.version,
    cpus: cpus().length,
    loadavgAtStart: loadavg(),
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('BENCH_')) as Array<[string, string]>),
    figures: [],
    errors: [],
  };
  const t0 = performance.now();
  const attempt = async <T>(section: string, fn: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await fn();
    } catch (err) {
      progress(`${section} failed: ${(err as Error).stack ?? err}`);
      res.errors.push({ section, error: String((err as Error).message ?? err) });
      return undefined;
    }
  };

  if (wanted.has('pipeline')) {
    res.pipeline = await attempt('pipeline', runPipelineBench);
    if (res.pipeline) res.figures.push(...pipelineFigures(res.pipeline));
  }
  if (wanted.has('backlog')) {
    res.backlog = await attempt('backlog', runBacklogBench);
    if (res.backlog) res.figures.push(...backlogFigures(res.backlog));
  }
  if (wanted.has('peer')) {
    const mosquitto = await attempt('peer', runPeerBench);
    const edgeward = await attempt('peer', runEdgewardKill);
    if (mosquitto && edgeward) {
      res.peer = { mosquitto, edgeward };
      res.figures.push(...peerFigures(mosquitto, edgeward, res.pipeline));
    }
  }
  if (wanted.has('modbus') && modbus) {
    res.modbus = await attempt('modbus', modbus);
    if (res.modbus !== undefined) res.figures.push(...modbusFigures(res.modbus));
  }

  console.log(
    `\nEdgeward bench — ${res.startedAt}, Node ${res.node}, ${res.cpus} CPUs, load at start ${res.loadavgAtStart
      .map((l) => l.toFixed(2))
      .join(' ')}, took ${((performance.now() - t0) / 1000).toFixed(0)} s, runtime child: ${res.children}\n`,
  );
  printTable(res.figures);
  if (res.peer) printSideBySide(res.peer.mosquitto, res.peer.edgeward, res.pipeline);
  for (const e of res.errors) console.log(`\nERROR in ${e.section}: ${e.error}`);
  await writeFile(join(__dirname, 'results.json'), `${JSON.stringify(res, null, 2)}\n`);
  console.log('\nresults: bench/results.json');
  return res.errors.length > 0 ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
