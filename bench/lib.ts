/**
 * Shared plumbing for `npm run bench`: Mosquitto processes with a config of
 * our own (the peer needs bridge and persistence settings the test helper
 * does not offer), free ports, MQTT clients, percentiles and event payloads.
 * Everything binds to 127.0.0.1 and every wait has a deadline.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { chmod, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { type Envelope, makeEnvelope } from '../edge/envelope.js';
import { decodeBatch, encodeAck, toRanges } from '../sync/batch-codec.js';
import { freePort } from '../test/helpers/mosquitto.js';
import { delay, waitFor } from '../test/helpers/wait.js';

export { delay, freePort, waitFor };
export { tmpDir } from '../test/helpers/tmp.js';

/** True when something accepts TCP connections on 127.0.0.1:port. */
export function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host: '127.0.0.1', port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/** A mosquitto process we started, with its config written to `dir`. */
export interface MosquittoProc {
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  readonly pid: number | undefined;
  /** SIGKILL and wait for the exit: nothing gets saved. */
  kill(): Promise<void>;
  /** SIGTERM and wait for the exit: mosquitto saves its persistence file on the way out. */
  stop(): Promise<void>;
  /** Start again with the same config, port and persistence directory. */
  restart(): Promise<void>;
}

/**
 * Start `mosquitto -c <dir>/mosquitto.conf` listening on 127.0.0.1:`port`,
 * with `extra` config lines appended. Resolves when the port accepts connections.
 */
export async function startMosquittoProc(opts: {
  dir: string;
  port?: number;
  extra?: string[];
  name?: string;
}): Promise<MosquittoProc> {
  const port = opts.port ?? (await freePort());
  const conf = join(opts.dir, 'mosquitto.conf');
  const lines = [
    `listener ${port} 127.0.0.1`,
    'allow_anonymous true',
    // The default limit silently drops QoS 1 bursts to slow or offline
    // subscribers (NOTES.md): a benchmark must not measure that.
    'max_queued_messages 0',
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    ...(opts.extra ?? []),
  ];
  await writeFile(conf, `${lines.join('\n')}\n`);
  // Started as root, mosquitto drops to the `mosquitto` user and must still be
  // able to write its persistence file into our (root-owned) temp dir.
  await chmod(opts.dir, 0o777);
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const logFile = createWriteStream(join(opts.dir, 'mosquitto.log'), { flags: 'a' });

  const launch = async () => {
    const c = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    c.stderr?.pipe(logFile, { end: false });
    exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    let failed: Error | undefined;
    c.once('error', (err) => {
      failed = err;
    });
    await waitFor(
      async () => {
        if (failed) throw failed;
        if (c.exitCode !== null) throw new Error(`mosquitto ${opts.name ?? ''} exited with ${c.exitCode}`);
        return portOpen(port);
      },
      { timeoutMs: 10_000, intervalMs: 20, message: `mosquitto ${opts.name ?? ''} listening on ${port}` },
    );
  };
  const signal = async (sig: NodeJS.Signals) => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill(sig);
    await exited;
  };

  await launch();
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    dir: opts.dir,
    get pid() {
      return child?.pid;
    },
    kill: () => signal('SIGKILL'),
    stop: async () => {
      await signal('SIGTERM');
    },
    restart: async () => {
      await signal('SIGTERM');
      await launch();
    },
  };
}

/** Connect an mqtt.js client and resolve on the first CONNACK (rejects after `timeoutMs`). */
export async function connectMqtt(url: string, opts: IClientOptions = {}, timeoutMs = 10_000): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 200, connectTimeout: 5000, ...opts });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => {
      client.end(true);
      reject(new Error(`no CONNACK from ${url} within ${timeoutMs} ms`));
    }, timeoutMs);
    client.once('connect', () => {
      clearTimeout(t);
      resolve();
    });
  });
  return client;
}

export function endMqtt(client: MqttClient, force = false): Promise<void> {
  return new Promise((resolve) => client.end(force, {}, () => resolve()));
}

/**
 * Publish `count` QoS 1 messages with at most `window` unacknowledged at once.
 * `payload(i)` builds message i. Stops issuing new publishes after `maxMs`
 * or once `stop()` says so. Resolves with the indexes that got a PUBACK.
 */
export async function publishWindowed(
  client: MqttClient,
  opts: {
    topic: string;
    count: number;
    window: number;
    payload: (i: number) => string | Buffer;
    maxMs?: number;
    stop?: () => boolean;
  },
): Promise<{ acked: number[]; sent: number; elapsedMs: number }> {
  const acked: number[] = [];
  const started = performance.now();
  const deadline = started + (opts.maxMs ?? Number.POSITIVE_INFINITY);
  let next = 0;
  let inflight = 0;
  return new Promise((resolve) => {
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      resolve({ acked, sent: next, elapsedMs: performance.now() - started });
    };
    const pump = () => {
      while (
        inflight < opts.window &&
        next < opts.count &&
        performance.now() < deadline &&
        !(opts.stop?.() ?? false)
      ) {
        const i = next++;
        inflight++;
        client.publish(opts.topic, opts.payload(i), { qos: 1 }, (err) => {
          inflight--;
          if (!err) acked.push(i);
          if (!done) pump();
        });
      }
      if (inflight === 0) finish();
    };
    // A killed broker never answers: the caller's stop() plus this check ends the wait.
    const watchdog = setInterval(() => {
      if (opts.stop?.() || performance.now() >= deadline + 5000) {
        clearInterval(watchdog);
        finish();
      } else if (inflight === 0 && next >= opts.count) {
        clearInterval(watchdog);
        finish();
      }
    }, 50);
    pump();
  });
}

/** Nearest-rank percentile of `values` (0 < p ≤ 100). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1];
}

/** Envelope-shaped bench events (~300 B as JSON), like a door controller emits. */
export const BENCH_IDS = { site: 'bench-site', edge: 'bench-edge' } as const;

export function benchInput(i: number, severity: 'info' | 'critical' = 'info') {
  return {
    type: severity === 'critical' ? ('door.forced' as const) : ('access.granted' as const),
    severity,
    source: { device: `door-${i % 33}`, driver: 'modbus-door' },
    data: { door: i % 4, reader: 'entrance-north', credential: 'a1b2c3d4e5f60718', n: i },
  };
}

export function benchEnvelope(i: number, severity: 'info' | 'critical' = 'info'): Envelope {
  return makeEnvelope(benchInput(i, severity), BENCH_IDS);
}

export function mb(bytes: number): number {
  return Math.round((bytes / 1024 / 1024) * 10) / 10;
}

export function envInt(name: string, dflt: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${raw}`);
  return Math.floor(n);
}

/** One printed figure of the bench; `pass` is undefined when no quality bar applies. */
export interface Figure {
  section: string;
  name: string;
  value: number | string;
  unit: string;
  target?: string;
  ratio?: string;
  pass?: boolean;
  note?: string;
}

export function fmtNum(v: number | string): string {
  if (typeof v === 'string') return v;
  if (!Number.isFinite(v)) return String(v);
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

export function fmtInt(v: number): string {
  return Math.round(v).toLocaleString('en-US');
}

/** Human-readable elapsed time since `t0` (performance.now()). */
export function since(t0: number): string {
  return `${((performance.now() - t0) / 1000).toFixed(1)} s`;
}

export function progress(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

/**
 * Run `work(from, to)` over [0, n) in chunks of `batch`, `concurrency` chunks
 * at a time; resolves with the elapsed ms. Every load of the bench (outbox
 * alone, driver path, backlog preload) goes through this one loop, so the
 * ratios compare the same shape of load.
 */
export async function chunked(
  n: number,
  batch: number,
  concurrency: number,
  work: (from: number, to: number) => Promise<unknown>,
): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  const worker = async () => {
    while (next < n) {
      const from = next;
      next = Math.min(n, next + batch);
      await work(from, next);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return performance.now() - t0;
}

/**
 * Make `client` an acking central: every batch on its `events` topics is
 * decoded, each event handed to `onEvent` with the batch's arrival time
 * (`performance.now()`, stamped before decoding: the central's own parsing is
 * not the edge's latency), then the batch's seqs are acked on its `P/ack`.
 */
export function ackEveryBatch(
  client: MqttClient,
  onEvent: (e: Envelope, arrivedAt: number, epoch: string) => void,
): void {
  client.on('message', (_topic, payload) => {
    const at = performance.now();
    decodeBatch(payload).then(
      (batch) => {
        const seqs: number[] = [];
        for (const e of batch.events) {
          if (e.seq !== undefined) seqs.push(e.seq);
          onEvent(e, at, batch.epoch);
        }
        client.publish(
          `edgeward/v1/${batch.site}/${batch.edge}/ack`,
          encodeAck({ epoch: batch.epoch, seqs: toRanges(seqs) }),
          { qos: 1 },
        );
      },
      () => undefined,
    );
  });
}

/**
 * Distinct events by (epoch, seq), the identity the protocol acks by (seqs
 * strictly increase within an epoch): one bit per seq instead of a Set of a
 * million id strings, whose hashing and rehashing cost the bench's central
 * ~1.5 µs per event on the cores it shares with the runtime it measures.
 */
export class SeqSet {
  private readonly bits = new Map<string, Uint8Array>();
  size = 0;

  add(epoch: string, seq: number): void {
    let b = this.bits.get(epoch);
    if (b === undefined || seq >> 3 >= b.length) {
      const grown = new Uint8Array(Math.max(1 << 16, 2 * ((seq >> 3) + 1)));
      if (b !== undefined) grown.set(b);
      this.bits.set(epoch, grown);
      b = grown;
    }
    const mask = 1 << (seq & 7);
    if ((b[seq >> 3] & mask) === 0) {
      b[seq >> 3] |= mask;
      this.size++;
    }
  }
}

// ---- CPU accounting ----------------------------------------------------------------

let clockTicks: number | undefined;

/**
 * CPU time (user + system, every thread: LevelDB's writer and compaction, libuv's
 * pool) a process has used so far, in ms, from /proc/<pid>/stat. `undefined`
 * when the process is gone or /proc is not there.
 */
export function cpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined || pid <= 0) return undefined;
  try {
    clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) / clockTicks) * 1000;
  } catch {
    return undefined;
  }
}

/** CPU µs per event each named process (this one too, by its pid) spent between the call and `stop(events)`. */
export function cpuMeter(pids: Record<string, number | undefined>): { stop(events: number): Record<string, number> } {
  const at0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuMs(pid)]));
  return {
    stop(events) {
      const out: Record<string, number> = {};
      for (const [k, pid] of Object.entries(pids)) {
        const now = cpuMs(pid);
        const then = at0[k];
        if (now !== undefined && then !== undefined) out[k] = ((now - then) * 1000) / events;
      }
      return out;
    },
  };
}
