/**
 * Edgeward's side of the bench: the durable pipeline (HTTP → outbox → uplink
 * → local Mosquitto → a central that acks), the outbox alone with the same
 * durability, critical-event latency with a 1,000,000-event backlog draining,
 * RSS, and delivered/acknowledged after a `kill -9` of the runtime during an
 * uplink outage. The runtime runs as a child process (bench/edgeward-child.ts).
 */
import { type ChildProcess, fork } from 'node:child_process';
import http from 'node:http';
import { gunzipSync } from 'node:zlib';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import type { Envelope } from '../edge/envelope.js';
import { DoorSim } from '../hardware/sim/door-sim.js';
import { LevelOutbox, outboxPath } from '../sync/outbox.js';
import { startMosquitto, type TestMosquitto } from '../test/helpers/mosquitto.js';
import {
  ackEveryBatch,
  BENCH_IDS,
  connectMqtt,
  endMqtt,
  benchEnvelope,
  benchInput,
  chunked,
  cpuMeter,
  delay,
  envInt,
  percentile,
  progress,
  tmpDir,
  waitFor,
} from './lib.js';

// ---- a central that acks -----------------------------------------------------

/** A minimal central receiver: counts events (optionally their ids) and acks every batch at once. */
export interface BenchCentral {
  /** Events received, duplicates included. */
  readonly received: number;
  /** Distinct ids received (only when started with `recordIds`). */
  readonly ids: Set<string>;
  readonly connected: boolean;
  close(): Promise<void>;
}

export async function startBenchCentral(
  url: string,
  opts: { recordIds?: boolean; onCritical?: (e: Envelope, arrivedAt: number) => void } = {},
): Promise<BenchCentral> {
  const ids = new Set<string>();
  let received = 0;
  let connected = false;
  const client: MqttClient = mqtt.connect(url, {
    protocolVersion: 4,
    clientId: `bench-central-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
    clean: true,
    reconnectPeriod: 100,
  });
  client.on('error', () => undefined);
  client.on('close', () => {
    connected = false;
  });
  ackEveryBatch(client, (e, arrivedAt) => {
    received++;
    if (opts.recordIds) ids.add(e.id);
    if (e.severity === 'critical') opts.onCritical?.(e, arrivedAt);
  });
  // Test brokers keep no sessions: subscribe again on every connect.
  client.on('connect', () => {
    client.subscribeAsync('edgeward/v1/+/+/events', { qos: 1 }).then(
      () => {
        connected = true;
      },
      () => undefined,
    );
  });
  await waitFor(() => connected, { timeoutMs: 10_000, message: `bench central subscribed at ${url}` });
  return {
    get received() {
      return received;
    },
    ids,
    get connected() {
      return connected;
    },
    close: () => client.endAsync(true),
  };
}

// ---- the runtime as a child process -------------------------------------------

interface ChildMessage {
  type: 'ready' | 'rss' | 'ingested' | 'error' | 'critical' | 'counts';
  port?: number;
  rss?: number;
  ms?: number;
  message?: string;
  n?: number;
  at?: number;
  received?: number;
  distinct?: number;
  batches?: number;
  elu?: number;
  gcMs?: number;
  emptyMs?: number;
}

/** A runtime child process (bench/edgeward-child.ts). */
export interface RuntimeChild {
  readonly port: number;
  readonly pid: number | undefined;
  rss(): Promise<number>;
  /** The driver path: `runtime.ingest` inside the child, `n` events; resolves with the child's ms. */
  /** The ingest's duration, the child's event-loop utilization (0..1) and its GC pauses (ms) meanwhile. */
  /**
   * With `untilEmpty`, the child also waits until its outbox is empty and
   * reports that as `emptyMs` from the ingest's start (`ack: broker`: every
   * event published, PUBACKed by the broker and deleted).
   */
  ingest(
    n: number,
    batch: number,
    concurrency: number,
    offset?: number,
    untilEmpty?: boolean,
  ): Promise<{ ms: number; elu: number; gcMs: number; emptyMs?: number; batches?: number }>;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

function siteConfig(dataDir: string, brokerUrl: string | undefined, editor = false, flowFile?: string, ack?: 'broker' | 'central'): string {
  return JSON.stringify({
    site: BENCH_IDS.site,
    edge: BENCH_IDS.edge,
    dataDir,
    http: { host: '127.0.0.1', port: 0 },
    ...(brokerUrl
      ? {
          uplink: {
            url: brokerUrl,
            ack: ack ?? (process.env.BENCH_ACK === 'broker' ? 'broker' : 'central'),
            compress: process.env.BENCH_COMPRESS === 'none' ? 'none' : 'gzip',
            // Resend sooner than the default after the bench's broker restarts.
            ackTimeoutMs: 3000,
            ...(process.env.BENCH_UPLINK_EXTRA ? JSON.parse(process.env.BENCH_UPLINK_EXTRA) : {}),
          },
        }
      : {}),
    privacy: { siteKey: 'bench-site-key-not-secret' },
    nodeRed: flowFile === undefined ? { editor } : { editor, flowFile },
    log: { level: 'error' },
  });
}

interface Forked {
  child: ChildProcess;
  exited: Promise<void>;
  expect(type: ChildMessage['type'], timeoutMs: number): Promise<ChildMessage>;
  /** Every message, for streams such as the central's critical arrivals. */
  onMessage(f: (m: ChildMessage) => void): void;
}

/**
 * Where the child scripts run from. Under tsx a process carries the compiler
 * and its caches (tens of MB of RSS), so the runner compiles the project
 * (`tsc`, to dist/ like `npm run build`) and points this at dist/bench: the
 * runtime is then measured as it runs in production, `node dist/…`.
 */
export const childScripts: { dir?: string } = {};

/** Fork a bench script (compiled JS from `childScripts.dir`, else the .ts under tsx) with an IPC channel. */
function forkTs(script: string, env: Record<string, string>): Forked {
  // BENCH_CPU_PROF=<dir>: write a V8 CPU profile of each child, to see where the time goes.
  const prof = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  const compiled = childScripts.dir !== undefined;
  const file = compiled ? join(childScripts.dir!, script.replace(/\.ts$/, '.js')) : join(__dirname, script);
  const child: ChildProcess = fork(file, [], {
    execArgv: [...(compiled ? prof : ['--import', 'tsx', ...prof]), ...(process.env.BENCH_TRACE_GC ? ['--trace-gc'] : [])],
    env: { ...process.env, ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const waiters: Array<(m: ChildMessage) => boolean> = [];
  const listeners: Array<(m: ChildMessage) => void> = [];
  child.on('message', (m: ChildMessage) => {
    for (const l of listeners) l(m);
    const i = waiters.findIndex((w) => w(m));
    if (i >= 0) waiters.splice(i, 1);
  });
  const expect = (type: ChildMessage['type'], timeoutMs: number): Promise<ChildMessage> =>
    new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${script}: no '${type}' within ${timeoutMs} ms`)), timeoutMs);
      const onExit = () => reject(new Error(`${script} exited while waiting for '${type}'`));
      child.once('exit', onExit);
      waiters.push((m) => {
        if (m.type === 'error') {
          clearTimeout(t);
          child.off('exit', onExit);
          reject(new Error(`${script}: ${m.message}`));
          return true;
        }
        if (m.type !== type) return false;
        clearTimeout(t);
        child.off('exit', onExit);
        resolve(m);
        return true;
      });
    });
  return { child, exited, expect, onMessage: (f) => listeners.push(f) };
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

export async function startRuntimeChild(opts: {
  dataDir: string;
  brokerUrl?: string;
  editor?: boolean;
  flowFile?: string;
  /** `memory`: the reference in-memory outbox, no durability. */
  outbox?: 'memory';
  /** The uplink's ack mode (default `central`, or BENCH_ACK). */
  ack?: 'broker' | 'central';
}): Promise<RuntimeChild> {
  const { child, exited, expect } = forkTs('edgeward-child.ts', {
    BENCH_CHILD_CONFIG: siteConfig(opts.dataDir, opts.brokerUrl, opts.editor, opts.flowFile, opts.ack),
    ...(opts.outbox ? { BENCH_CHILD_OUTBOX: opts.outbox } : {}),
  });
  const ready = await expect('ready', 60_000);
  return {
    port: ready.port ?? 0,
    pid: child.pid,
    async rss() {
      const p = expect('rss', 10_000);
      child.send({ cmd: 'rss' });
      return (await p).rss ?? 0;
    },
    async ingest(n, batch, concurrency, offset = 0, untilEmpty = false) {
      const p = expect('ingested', 600_000);
      child.send({ cmd: 'ingest', n, batch, concurrency, offset, untilEmpty });
      const m = await p;
      return { ms: m.ms ?? 0, elu: m.elu ?? 0, gcMs: m.gcMs ?? 0, emptyMs: m.emptyMs, batches: m.batches };
    },
    async stop() {
      if (!isRunning(child)) return;
      child.send({ cmd: 'stop' });
      const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(t);
    },
    async kill() {
      if (!isRunning(child)) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** The central receiver in its own process (bench/central-child.ts). */
export interface CentralChild {
  readonly pid: number | undefined;
  counts(): Promise<{ received: number; distinct: number; batches: number }>;
  /** Called with the marker `data.n` and the wall-clock arrival time of each critical event. */
  onCritical(f: (n: number, at: number) => void): void;
  stop(): Promise<void>;
}

export async function startCentralChild(brokerUrl: string): Promise<CentralChild> {
  const { child, exited, expect, onMessage } = forkTs('central-child.ts', { BENCH_CENTRAL_URL: brokerUrl });
  let critical: (n: number, at: number) => void = () => undefined;
  onMessage((m) => {
    if (m.type === 'critical') critical(m.n ?? -1, m.at ?? 0);
  });
  await expect('ready', 30_000);
  return {
    pid: child.pid,
    async counts() {
      const p = expect('counts', 10_000);
      child.send({ cmd: 'counts' });
      const m = await p;
      return { received: m.received ?? 0, distinct: m.distinct ?? 0, batches: m.batches ?? 0 };
    },
    onCritical(f) {
      critical = f;
    },
    async stop() {
      if (!isRunning(child)) return;
      child.send({ cmd: 'stop' });
      const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(t);
    },
  };
}

// ---- HTTP load -------------------------------------------------------------------

function request(
  agent: http.Agent,
  port: number,
  method: 'GET' | 'POST',
  path: string,
  body?: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: '127.0.0.1',
        port,
        method,
        path,
        headers: body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * POST `n` events to /api/v1/events, `batch` per request over `concurrency`
 * keep-alive connections. Resolves with the ids the runtime accepted (202),
 * the failed requests, and the elapsed time.
 */
async function postEvents(
  port: number,
  opts: { n: number; batch: number; concurrency: number; offset?: number; stop?: () => boolean },
): Promise<{ accepted: string[]; failed: number; ms: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: opts.concurrency });
  const accepted: string[] = [];
  let failed = 0;
  let next = 0;
  const offset = opts.offset ?? 0;
  const t0 = performance.now();
  const worker = async () => {
    while (next < opts.n && !(opts.stop?.() ?? false)) {
      const from = next;
      next = Math.min(opts.n, next + opts.batch);
      const inputs = [];
      for (let i = from; i < next; i++) inputs.push(benchInput(offset + i));
      try {
        const res = await request(agent, port, 'POST', '/api/v1/events', JSON.stringify(inputs));
        if (res.status === 202) {
          for (const a of (JSON.parse(res.body) as { accepted: Array<{ id: string }> }).accepted) accepted.push(a.id);
        } else failed++;
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  const ms = performance.now() - t0;
  agent.destroy();
  return { accepted, failed, ms };
}

async function runtimeStatus(
  port: number,
): Promise<{ uplink: { connected: boolean }; outbox: { events: number }; devices: Array<{ online: boolean }> }> {
  const agent = new http.Agent({ keepAlive: false });
  try {
    const res = await request(agent, port, 'GET', '/api/v1/status');
    return JSON.parse(res.body);
  } finally {
    agent.destroy();
  }
}

async function awaitUplink(port: number, timeoutMs = 30_000): Promise<void> {
  await waitFor(async () => (await runtimeStatus(port)).uplink.connected, {
    timeoutMs,
    intervalMs: 50,
    message: 'runtime uplink connected',
  });
}

/** Wall-clock ms with sub-ms precision: comparable across the bench's processes. */
function wallNow(): number {
  return performance.timeOrigin + performance.now();
}

/** p50/p99/max of latency samples (ms). */
export interface LatencyFigures {
  p50: number;
  p99: number;
  max: number;
  samples: number;
  /** Samples that never arrived within the deadline (counted as infinite in the percentiles). */
  missing: number;
  /** The five slowest samples as [sample index, ms]: warm-up outliers show as low indexes. */
  slowest: Array<[number, number]>;
}

function latencyFigures(samples: Map<number, number>, count: number): LatencyFigures {
  const lat = [...samples.values()];
  const missing = count - lat.length;
  const all = [...lat, ...Array.from({ length: missing }, () => Number.POSITIVE_INFINITY)];
  const slowest = [...samples.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5);
  return {
    slowest: slowest.map(([i, ms]) => [i, Math.round(ms * 10) / 10]),
    p50: percentile(all, 50),
    p99: percentile(all, 99),
    max: all.length ? Math.max(...all) : Number.NaN,
    samples: all.length,
    missing,
  };
}

/**
 * Critical-event latency: every `intervalMs` POST one critical event, and
 * time it from just before the request to its arrival at the central
 * (`total`); `stored` is the same event's request → 202 (durably stored).
 */
/**
 * A subscriber on the edge's Mosquitto that stamps the arrival of each bench
 * critical event (by its marker `data.n`): the SPEC's "driver to broker" figure.
 * It inflates every batch (the backlog's too, ~0.2 ms each) but parses only
 * those with a critical event in them.
 */
async function brokerProbe(brokerUrl: string, onCritical: (n: number, at: number) => void): Promise<MqttClient> {
  const client = await connectMqtt(brokerUrl, { clientId: `bench-probe-${process.pid}`, clean: true });
  client.on('message', (_topic, payload) => {
    const at = wallNow();
    const raw = payload[0] === 0x1f && payload[1] === 0x8b ? gunzipSync(payload) : payload;
    const text = raw.toString('utf8');
    if (!text.includes('"severity":"critical"')) return;
    const batch = JSON.parse(text) as { events: Array<{ severity: string; data: { n?: number } }> };
    for (const e of batch.events) if (e.severity === 'critical' && typeof e.data.n === 'number') onCritical(e.data.n, at);
  });
  await client.subscribeAsync('edgeward/v1/+/+/events', { qos: 0 });
  return client;
}

async function criticalLatency(
  port: number,
  central: CentralChild,
  brokerUrl: string,
  samples: number,
  intervalMs: number,
): Promise<{ broker: LatencyFigures; total: LatencyFigures; stored: LatencyFigures }> {
  const sent = new Map<number, number>();
  const sentAt: number[] = [];
  /** sample index → ms */
  const total = new Map<number, number>();
  const stored = new Map<number, number>();
  const atBroker = new Map<number, number>();
  const base = 2_000_000_000 + Math.floor(Math.random() * 1_000_000);
  central.onCritical((n, at) => {
    const t0 = sent.get(n);
    if (t0 !== undefined) {
      sent.delete(n);
      total.set(n - base, at - t0);
    }
  });
  const probe = await brokerProbe(brokerUrl, (n, at) => {
    const i = n - base;
    if (i >= 0 && i < samples && sentAt[i] !== undefined && !atBroker.has(i)) atBroker.set(i, at - sentAt[i]);
  });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const posts: Promise<unknown>[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      const n = base + i;
      const body = JSON.stringify([benchInput(n, 'critical')]);
      const t0 = wallNow();
      sent.set(n, t0);
      sentAt[i] = t0;
      posts.push(
        request(agent, port, 'POST', '/api/v1/events', body).then(
          (res) => {
            if (res.status === 202) stored.set(i, wallNow() - t0);
          },
          () => undefined,
        ),
      );
      await delay(intervalMs);
    }
    await Promise.all(posts);
    await waitFor(() => sent.size === 0, { timeoutMs: 30_000, intervalMs: 20, message: 'critical events at the central' }).catch(
      () => undefined,
    );
  } finally {
    agent.destroy();
    central.onCritical(() => undefined);
    await endMqtt(probe, true);
  }
  return {
    broker: latencyFigures(atBroker, samples),
    total: latencyFigures(total, samples),
    stored: latencyFigures(stored, samples),
  };
}

async function awaitDistinct(central: CentralChild, atLeast: number, what: string): Promise<void> {
  await waitFor(async () => (await central.counts()).distinct >= atLeast, {
    timeoutMs: 300_000,
    intervalMs: 20,
    message: what,
  });
}

// ---- sections ---------------------------------------------------------------------

export interface PipelineResult {
  events: number;
  batch: number;
  concurrency: number;
  /** LevelOutbox.append alone, same batches and concurrency, sync writes: the median of `rounds` runs. */
  outboxAlonePerS: number;
  /** The outbox alone with an in-process reader acking everything (`runOutboxCycle`), once after the rounds. */
  outboxCyclePerS: number;
  /** The outbox alone with its store full, every append evicting (`runOutboxFull`), once after the rounds. */
  outboxFullPerS: number;
  /**
   * The outbox-alone and driver-path runs, interleaved (alone, driver, then
   * the driver path to the central's ack; alone, driver, …) so that each
   * round shares the same minute of a shared box. `driverPerS` is the bar's
   * pipeline, `e2ePerS` the same load on to the central.
   */
  rounds: Array<{
    alonePerS: number;
    driverPerS: number;
    e2ePerS: number;
    elu: number;
    mainUsPerEvent: number;
    gcUsPerEvent: number;
    eventsPerBatch: number;
  }>;
  /** HTTP → outbox → uplink → Mosquitto → central ack, first POST to last event at the central. */
  pipelinePerS: number;
  /** Same, but only up to the last 202 (stored durably). */
  httpAcceptedPerS: number;
  /**
   * The SPEC's pipeline from a driver: runtime.ingest in the runtime process →
   * outbox → uplink → a local Mosquitto, `ack: broker` (each event deleted
   * from the outbox on the broker's PUBACK), to the moment the outbox is
   * empty: the median of `rounds` runs.
   */
  driverPathPerS: number;
  /** The median over the rounds of (outbox alone / driver path) within each round: the bar. */
  driverRatio: number;
  /** The driver path up to the last ingest resolved (stored durably), without waiting for the uplink (median run). */
  driverIngestedPerS: number;
  /** The same load end to end: `ack: central`, to the last event decoded and acked by the central (median run). */
  e2eDriverPathPerS: number;
  /** The median over the rounds of (outbox alone / end-to-end driver path). */
  e2eRatio: number;
  /** The driver path (to the broker) with the reference in-memory outbox (no durability). */
  memoryDriverPathPerS: number;
  /**
   * CPU µs per event by process (all threads) in each throughput run: `bench` is
   * this process (the appenders of the outbox-alone run, the HTTP load generator).
   */
  cpuUs: {
    outboxAlone: Record<string, number>;
    http: Record<string, number>;
    driver: Record<string, number>;
    e2e: Record<string, number>;
    memoryDriver: Record<string, number>;
  };
  /** Critical event POST → arrival at the broker, at the central, and → 202, idle system (ms). */
  idleLatency: { broker: LatencyFigures; total: LatencyFigures; stored: LatencyFigures };
  /** RSS of the runtime process after the throughput runs (bytes), without the editor. */
  rssNoEditor: number;
  /** RSS of a runtime with the Node-RED editor loaded (bytes), idle. */
  rssEditor: number;
  /** RSS with the editor and `devices` simulated door controllers polled over Modbus TCP (bytes). */
  rssEditorDevices: number;
  devices: number;
  /** How many of them the runtime reported online when RSS was taken. */
  devicesOnline: number;
}

export interface BacklogResult {
  backlog: number;
  preloadPerS: number;
  latency: { broker: LatencyFigures; total: LatencyFigures; stored: LatencyFigures };
  /** Backlog events drained per second while the samples were taken. */
  drainPerS: number;
  /** Backlog events still queued when the samples ended (0 means it drained too early). */
  left: number;
}

export interface EdgewardKillResult {
  acknowledged: number;
  delivered: number;
  acceptedPerS: number;
}

/** Append `n` fresh bench envelopes to `outbox`, `batch` per append, `concurrency` appenders; resolves with the ms. */
function appendLoad(outbox: LevelOutbox, n: number, batch: number, concurrency: number): Promise<number> {
  return chunked(n, batch, concurrency, (from, to) => {
    const envs = [];
    for (let i = from; i < to; i++) envs.push(benchEnvelope(i));
    return outbox.append(envs);
  });
}

/** The outbox alone: appends of `batch` fresh envelopes from `concurrency` writers, synced like the runtime's. */
export async function runOutboxAlone(n: number, batch: number, concurrency: number): Promise<number> {
  const dir = await tmpDir('bench-outbox');
  // No disk reserve: a fresh store writes its 40 MiB in the background just as the timed appends
  // start, which slowed this side alone (the runtime's was written at its start, long before).
  const outbox = new LevelOutbox({ dir: outboxPath(dir.path), maxBytes: 4 * 1024 ** 3, ...BENCH_IDS, reserveBytes: 0 });
  try {
    await outbox.open();
    const ms = await appendLoad(outbox, n, batch, concurrency);
    return (n / ms) * 1000;
  } finally {
    await outbox.close();
    await dir.cleanup();
  }
}

/**
 * The outbox's whole duty cycle without the network: the same appenders as
 * `runOutboxAlone`, plus one in-process reader that reads batches of 500 (the
 * uplink's default) after its cursor and acks each at once, up to 16 acks in
 * flight (the uplink's default window). Events/s until every event is deleted.
 * A store only sustains a rate if it also gets rid of what it stores: this is
 * the outbox alone with the deletes the pipeline does. Reported beside the
 * bar's figure, never in its place.
 */
export async function runOutboxCycle(n: number, batch: number, concurrency: number): Promise<number> {
  const dir = await tmpDir('bench-outbox-cycle');
  // No disk reserve, as in runOutboxAlone.
  const outbox = new LevelOutbox({ dir: outboxPath(dir.path), maxBytes: 4 * 1024 ** 3, ...BENCH_IDS, reserveBytes: 0 });
  try {
    await outbox.open();
    let acked = 0;
    let cursor = 0;
    let wake: (() => void) | null = null;
    const unsubscribe = outbox.onAppend(() => {
      const w = wake;
      wake = null;
      w?.();
    });
    const inflight = new Set<Promise<void>>();
    const t0 = performance.now();
    const reader = (async () => {
      while (acked < n) {
        const events = await outbox.read({ maxEvents: 500, maxBytes: 256 * 1024, after: { info: cursor } });
        if (events.length === 0) {
          await new Promise<void>((resolve) => {
            wake = resolve;
            setTimeout(resolve, 5);
          });
          continue;
        }
        cursor = events[events.length - 1].seq;
        const p: Promise<void> = outbox.ack([[events[0].seq, cursor]]).then((k) => {
          acked += k;
          inflight.delete(p);
        });
        inflight.add(p);
        while (inflight.size >= 16) await Promise.race(inflight);
      }
    })();
    await appendLoad(outbox, n, batch, concurrency);
    await reader;
    const ms = performance.now() - t0;
    unsubscribe();
    return (n / ms) * 1000;
  } finally {
    await outbox.close();
    await dir.cleanup();
  }
}

/** The bound of `runOutboxFull`'s store: small, so that it is reached in a second or two. */
const FULL_BOUND_BYTES = 64 * 1024 ** 2;

/**
 * The outbox alone at its byte bound: the same appenders as `runOutboxAlone`
 * into a store already full (filled first, not timed), so every write evicts
 * the oldest info events and writes an overflow report. What a box takes in
 * with its uplink down for long. Events/s of `n` appends.
 */
export async function runOutboxFull(n: number, batch: number, concurrency: number): Promise<number> {
  const dir = await tmpDir('bench-outbox-full');
  const outbox = new LevelOutbox({ dir: outboxPath(dir.path), maxBytes: FULL_BOUND_BYTES, ...BENCH_IDS, reserveBytes: 0 });
  try {
    await outbox.open();
    // Past the bound by a little: from here on, every append evicts.
    const fill = Math.ceil(FULL_BOUND_BYTES / Buffer.byteLength(JSON.stringify(benchEnvelope(0)))) + 10 * batch * concurrency;
    await appendLoad(outbox, fill, batch, concurrency);
    const ms = await appendLoad(outbox, n, batch, concurrency);
    return (n / ms) * 1000;
  } finally {
    await outbox.close();
    await dir.cleanup();
  }
}

export async function runPipelineBench(): Promise<PipelineResult> {
  const n = envInt('BENCH_EVENTS', 200_000);
  const batch = envInt('BENCH_BATCH', 100);
  const concurrency = envInt('BENCH_CONCURRENCY', 8);
  const roundCount = Math.max(1, envInt('BENCH_ROUNDS', 3));

  const broker = await startMosquitto();
  // The bar's pipeline ends at a local Mosquitto of its own: no central
  // subscribed to it (the central's wildcard subscription would decode it).
  const edgeBroker = await startMosquitto();
  let central: CentralChild | undefined;
  const dir = await tmpDir('bench-pipeline');
  let child: RuntimeChild | undefined;
  let toBroker: RuntimeChild | undefined;
  try {
    central = await startCentralChild(broker.url);
    child = await startRuntimeChild({ dataDir: join(dir.path, 'central'), brokerUrl: broker.url });
    await awaitUplink(child.port);
    toBroker = await startRuntimeChild({ dataDir: join(dir.path, 'broker'), brokerUrl: edgeBroker.url, ack: 'broker' });
    await awaitUplink(toBroker.port);

    progress('critical latency, idle');
    const idle = await criticalLatency(child.port, central, broker.url, 100, 20);

    // Warm-up, not counted: the first POSTs run the runtime's HTTP path cold
    // (a cold run measured 89k events/s where the next one measured 121k); the
    // outbox-alone figure it is compared with is warm too (see below).
    const warm = Math.min(n, 20_000);
    progress(`pipeline: HTTP warm-up, ${warm} events (not counted)`);
    const warmFrom = (await central.counts()).distinct;
    const warmed = await postEvents(child.port, { n: warm, batch, concurrency, offset: 100 * n });
    await awaitDistinct(central, warmFrom + warmed.accepted.length, 'every warm-up event at the central');

    progress(`pipeline: POST ${n} events over HTTP`);
    const pids = { runtime: child.pid, central: central.pid, broker: broker.pid, bench: process.pid };
    const brokerPids = { runtime: toBroker.pid, broker: edgeBroker.pid, bench: process.pid };
    const before = (await central.counts()).distinct;
    const cpuHttp = cpuMeter(pids);
    const t0 = performance.now();
    const posted = await postEvents(child.port, { n, batch, concurrency });
    if (posted.failed > 0) progress(`pipeline: ${posted.failed} requests failed`);
    const accepted = posted.accepted.length;
    await awaitDistinct(central, before + accepted, 'every accepted event at the central');
    const pipelineMs = performance.now() - t0;
    const cpu: PipelineResult['cpuUs'] = { outboxAlone: {}, http: cpuHttp.stop(accepted), driver: {}, e2e: {}, memoryDriver: {} };

    // The outbox alone and the driver path, interleaved in rounds: one round
    // shares a minute of this shared box, so the ratio is taken within each
    // round and the median round is reported (single runs of either moved by
    // ±15% from one minute to the next). The runtime children idle during
    // the outbox-alone run (their uplinks have nothing to send).
    // Warm-up, not counted: the runtime children's outbox code is warm (the
    // HTTP run, the warm-up below), this process's was not (the first
    // outbox-alone run measured 8-12 % below the next two, which made the
    // first pair's ratio the lowest in every run).
    progress('outbox alone and driver path to the broker, warm-up (not counted)');
    await runOutboxAlone(Math.min(n, 50_000), batch, concurrency);
    await toBroker.ingest(warm, batch, concurrency, 101 * n, true);
    const rounds: PipelineResult['rounds'] = [];
    const driverRuns: DriverRun[] = [];
    const e2eRuns: DriverRun[] = [];
    const aloneCpu: Array<Record<string, number>> = [];
    for (let r = 0; r < roundCount; r++) {
      progress(`round ${r + 1}/${roundCount}: outbox alone, ${n} events, ${batch} per append, ${concurrency} writers`);
      const cpuAlone = cpuMeter({ bench: process.pid });
      const alonePerS = await runOutboxAlone(n, batch, concurrency);
      aloneCpu.push(cpuAlone.stop(n));
      progress(`round ${r + 1}/${roundCount}: driver path to the broker, runtime.ingest ${n} events`);
      const d = await driverRunToBroker(toBroker, brokerPids, { n, batch, concurrency, offset: (r + 1) * n });
      driverRuns.push(d);
      progress(`round ${r + 1}/${roundCount}: driver path to the central's ack, runtime.ingest ${n} events`);
      const e = await driverRun(child, central, pids, { n, batch, concurrency, offset: (r + 1) * n }, 'every ingested event at the central');
      e2eRuns.push(e);
      rounds.push({
        alonePerS,
        driverPerS: (n / d.ms) * 1000,
        e2ePerS: (n / e.ms) * 1000,
        elu: d.elu,
        mainUsPerEvent: (d.elu * d.ingestMs * 1000) / n,
        gcUsPerEvent: (d.gcMs * 1000) / n,
        eventsPerBatch: d.eventsPerBatch,
      });
    }
    // Once, after the rounds, so that the runs the bar is judged on stay back to back.
    progress('outbox alone with its deletes (an in-process reader acking)');
    const outboxCyclePerS = await runOutboxCycle(n, batch, concurrency);
    progress(`outbox alone at its bound (${FULL_BOUND_BYTES / 1024 ** 2} MiB, every append evicting)`);
    const outboxFullPerS = await runOutboxFull(n, batch, concurrency);
    const medianIndex = (values: number[]): number => {
      const order = values.map((v, i) => [v, i] as const).sort((a, b) => a[0] - b[0]);
      return order[(order.length - 1) >> 1][1];
    };
    const aloneMedian = medianIndex(rounds.map((x) => x.alonePerS));
    const driverMedian = medianIndex(rounds.map((x) => x.driverPerS));
    const e2eMedian = medianIndex(rounds.map((x) => x.e2ePerS));
    const ratios = rounds.map((x) => x.alonePerS / x.driverPerS);
    const e2eRatios = rounds.map((x) => x.alonePerS / x.e2ePerS);
    cpu.outboxAlone = aloneCpu[aloneMedian];
    cpu.driver = driverRuns[driverMedian].cpu;
    cpu.e2e = e2eRuns[e2eMedian].cpu;
    const driver = driverRuns[driverMedian];
    const rssNoEditor = await child.rss();
    await child.stop();
    child = undefined;
    await toBroker.stop();
    toBroker = undefined;

    // The same driver path with the reference MemoryOutbox: no disk, but its own
    // simple bookkeeping. It was a ceiling (storing for free) until the durable
    // outbox's bookkeeping got leaner than the reference's; now a comparison only.
    progress(`driver path to the broker, reference in-memory outbox: runtime.ingest ${n} events`);
    toBroker = await startRuntimeChild({ dataDir: join(dir.path, 'memory'), brokerUrl: edgeBroker.url, outbox: 'memory', ack: 'broker' });
    await awaitUplink(toBroker.port);
    const memory = await driverRunToBroker(
      toBroker,
      { ...brokerPids, runtime: toBroker.pid },
      { n, batch, concurrency, offset: (roundCount + 1) * n },
    );
    cpu.memoryDriver = memory.cpu;
    await toBroker.stop();
    toBroker = undefined;

    progress('RSS with the Node-RED editor');
    const editorRss = await measureEditorRss(broker.url);
    return {
      events: n,
      batch,
      concurrency,
      outboxAlonePerS: rounds[aloneMedian].alonePerS,
      outboxCyclePerS,
      outboxFullPerS,
      rounds,
      pipelinePerS: (accepted / pipelineMs) * 1000,
      httpAcceptedPerS: (accepted / posted.ms) * 1000,
      driverPathPerS: rounds[driverMedian].driverPerS,
      driverRatio: ratios[medianIndex(ratios)],
      driverIngestedPerS: (n / driver.ingestMs) * 1000,
      e2eDriverPathPerS: rounds[e2eMedian].e2ePerS,
      e2eRatio: e2eRatios[medianIndex(e2eRatios)],
      memoryDriverPathPerS: (n / memory.ms) * 1000,
      idleLatency: idle,
      cpuUs: cpu,
      rssNoEditor,
      ...editorRss,
    };
  } finally {
    await child?.kill();
    await toBroker?.kill();
    await central?.stop();
    await broker.stop();
    await edgeBroker.stop();
    await dir.cleanup();
  }
}

/** One driver-path run: to its end (`ms`), the child's ingest alone, its event loop and GC, and CPU µs per event by process. */
interface DriverRun {
  ms: number;
  ingestMs: number;
  elu: number;
  gcMs: number;
  eventsPerBatch: number;
  cpu: Record<string, number>;
}

/**
 * The bar's driver path once: `runtime.ingest` of `n` events inside a child
 * whose uplink (`ack: broker`) publishes to its own Mosquitto, timed to the
 * moment its outbox is empty (every event PUBACKed and deleted; the child
 * checks every millisecond); also the child's own ingest time and the CPU µs
 * per event of `pids` meanwhile.
 */
async function driverRunToBroker(
  child: RuntimeChild,
  pids: Record<string, number | undefined>,
  load: { n: number; batch: number; concurrency: number; offset: number },
): Promise<DriverRun> {
  const meter = cpuMeter(pids);
  const t0 = performance.now();
  const { ms: ingestMs, elu, gcMs, emptyMs, batches } = await child.ingest(load.n, load.batch, load.concurrency, load.offset, true);
  const ms = emptyMs ?? performance.now() - t0;
  const cpu = meter.stop(load.n);
  return { ms, ingestMs, elu, gcMs, eventsPerBatch: load.n / Math.max(1, batches ?? 0), cpu };
}

/**
 * The driver path once: `runtime.ingest` of `n` events inside the child, timed
 * to the last one at the central; also the child's own ingest time and the
 * CPU µs per event of `pids` meanwhile.
 */
async function driverRun(
  child: RuntimeChild,
  central: CentralChild,
  pids: Record<string, number | undefined>,
  load: { n: number; batch: number; concurrency: number; offset: number },
  what: string,
): Promise<DriverRun> {
  const start = await central.counts();
  const before = start.distinct;
  const meter = cpuMeter(pids);
  const t0 = performance.now();
  const { ms: ingestMs, elu, gcMs } = await child.ingest(load.n, load.batch, load.concurrency, load.offset);
  await awaitDistinct(central, before + load.n, what);
  const ms = performance.now() - t0;
  const cpu = meter.stop(load.n);
  const batches = (await central.counts()).batches - start.batches;
  return { ms, ingestMs, elu, gcMs, eventsPerBatch: load.n / Math.max(1, batches), cpu };
}

/** A flow of one Modbus TCP bus and `n` edgeward-door nodes (units 1…n), as a technician would wire them. */
function doorsFlow(n: number, port: number, pollMs: number): unknown[] {
  const flow: unknown[] = [
    { id: 'bench.tab', type: 'tab', label: 'bench doors' },
    {
      id: 'bench.bus',
      type: 'edgeward-modbus-bus',
      name: 'bench line',
      transport: 'tcp',
      path: '',
      baudRate: '115200',
      parity: 'none',
      host: '127.0.0.1',
      port: String(port),
      timeoutMs: '500',
    },
  ];
  for (let u = 1; u <= n; u++) {
    flow.push({
      id: `bench.door.${u}`,
      type: 'edgeward-door',
      z: 'bench.tab',
      name: `door-${u}`,
      bus: 'bench.bus',
      unitId: String(u),
      profile: 'generic-door',
      doors: '1',
      pollMs: String(pollMs),
      wires: [[]],
    });
  }
  return flow;
}

/**
 * RSS of a runtime with the Node-RED editor: idle without flows, then with
 * BENCH_DEVICES (33) simulated door controllers (hardware/sim DoorSim over
 * Modbus TCP) wired in a flow and polled, once they are online.
 */
async function measureEditorRss(
  brokerUrl: string,
): Promise<{ rssEditor: number; rssEditorDevices: number; devices: number; devicesOnline: number }> {
  const devices = envInt('BENCH_DEVICES', 33);
  const dir = await tmpDir('bench-editor');
  let child: RuntimeChild | undefined;
  const sim = new DoorSim({ units: Array.from({ length: devices }, (_, i) => i + 1) });
  try {
    child = await startRuntimeChild({ dataDir: join(dir.path, 'a'), brokerUrl, editor: true });
    await awaitUplink(child.port);
    const rssEditor = await child.rss();
    await child.stop();
    child = undefined;

    const { port } = await sim.serveTcp(0);
    const flowFile = join(dir.path, 'doors.json');
    await writeFile(flowFile, JSON.stringify(doorsFlow(devices, port, 500)));
    child = await startRuntimeChild({ dataDir: join(dir.path, 'b'), brokerUrl, editor: true, flowFile });
    const c = child;
    await awaitUplink(c.port);
    let online = 0;
    await waitFor(
      async () => {
        online = (await runtimeStatus(c.port)).devices.filter((d) => d.online).length;
        return online >= devices;
      },
      { timeoutMs: 30_000, intervalMs: 200, message: `${devices} simulated doors online` },
    ).catch(() => undefined);
    if (online < devices) progress(`RSS: only ${online} of ${devices} simulated doors online`);
    // Let a few poll cycles run so the figure is of a working box, not of one just started.
    await delay(3000);
    const rssEditorDevices = await c.rss();
    return { rssEditor, rssEditorDevices, devices, devicesOnline: online };
  } finally {
    await child?.kill();
    await sim.stop();
    await dir.cleanup();
  }
}

/** Critical latency while a backlog of `BENCH_BACKLOG` (default 1,000,000) info events drains. */
export async function runBacklogBench(): Promise<BacklogResult> {
  const backlog = envInt('BENCH_BACKLOG', 1_000_000);
  const samples = envInt('BENCH_LATENCY_SAMPLES', 200);
  const dir = await tmpDir('bench-backlog');
  let broker: TestMosquitto | undefined;
  let central: CentralChild | undefined;
  let child: RuntimeChild | undefined;
  try {
    progress(`backlog: preloading ${backlog} info events into the outbox`);
    const outbox = new LevelOutbox({ dir: outboxPath(dir.path), maxBytes: 4 * 1024 ** 3, ...BENCH_IDS });
    await outbox.open();
    const preloadMs = await appendLoad(outbox, backlog, 5000, 2);
    const preloadPerS = (backlog / preloadMs) * 1000;
    await outbox.close();

    broker = await startMosquitto();
    central = await startCentralChild(broker.url);
    const c = central;
    child = await startRuntimeChild({ dataDir: dir.path, brokerUrl: broker.url });
    await awaitUplink(child.port);
    await waitFor(async () => (await c.counts()).received > 0, {
      timeoutMs: 30_000,
      message: 'the backlog starting to drain',
    });
    progress(`backlog: ${samples} critical events while it drains`);
    const r0 = (await c.counts()).received;
    const t1 = performance.now();
    const latency = await criticalLatency(child.port, c, broker.url, samples, 20);
    const drainPerS = (((await c.counts()).received - r0) / (performance.now() - t1)) * 1000;
    const left = (await runtimeStatus(child.port)).outbox.events;
    progress(`backlog: ${left} events still queued after the samples (draining at ${Math.round(drainPerS)}/s)`);
    if (left === 0) progress('backlog: WARNING the backlog drained before the samples ended');
    return { backlog, preloadPerS, latency, drainPerS, left };
  } finally {
    await child?.kill();
    await central?.stop();
    await broker?.stop();
    await dir.cleanup();
  }
}

/**
 * Edgeward in the peer's scenario: uplink outage (broker down), POST
 * `BENCH_PEER_EVENTS` events (the 202s are the acknowledged ones), `kill -9`
 * the runtime, bring the broker back, restart the runtime on the same data
 * dir, and count acknowledged ids that reach the central.
 */
export async function runEdgewardKill(): Promise<EdgewardKillResult> {
  const n = envInt('BENCH_PEER_EVENTS', 50_000);
  const dir = await tmpDir('bench-kill');
  const broker = await startMosquitto();
  let central: BenchCentral | undefined;
  let child: RuntimeChild | undefined;
  try {
    central = await startBenchCentral(broker.url, { recordIds: true });
    const c = central;
    child = await startRuntimeChild({ dataDir: dir.path, brokerUrl: broker.url });
    await awaitUplink(child.port);
    // The outage: the broker goes away with the runtime's uplink connected.
    await broker.kill();
    await waitFor(async () => !(await runtimeStatus(child!.port)).uplink.connected, {
      timeoutMs: 10_000,
      message: 'the runtime noticing the outage',
    });
    progress(`edgeward: outage; POST ${n} events`);
    const posted = await postEvents(child.port, { n, batch: 100, concurrency: 4 });
    const acknowledged = new Set(posted.accepted);
    progress(`edgeward: ${acknowledged.size} acknowledged (202) during the outage; kill -9 of the runtime`);
    await child.kill();
    child = undefined;
    await broker.restart();
    await waitFor(() => c.connected, { timeoutMs: 10_000, message: 'bench central back' });
    child = await startRuntimeChild({ dataDir: dir.path, brokerUrl: broker.url });
    let lastCount = -1;
    let lastChange = performance.now();
    const delivered = () => {
      let d = 0;
      for (const id of acknowledged) if (c.ids.has(id)) d++;
      return d;
    };
    await waitFor(
      () => {
        const d = delivered();
        if (d !== lastCount) {
          lastCount = d;
          lastChange = performance.now();
        }
        return d >= acknowledged.size || performance.now() - lastChange > 15_000;
      },
      { timeoutMs: 120_000, intervalMs: 200, message: 'deliveries after the restart' },
    ).catch(() => undefined);
    return { acknowledged: acknowledged.size, delivered: delivered(), acceptedPerS: (acknowledged.size / posted.ms) * 1000 };
  } finally {
    await child?.kill();
    await central?.close();
    await broker.stop();
    await dir.cleanup();
  }
}
