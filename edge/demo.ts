import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { type ConsoleCentral, startConsoleCentral } from '../sync/console-central.js';
import type { SiteConfig } from './config-types.js';
import { type Logger, REDACT_PATHS } from './log.js';
import { DEMO_FLOW_FILE } from './nodered.js';
import { Runtime } from './runtime.js';
import { SyntheticSource } from './synthetic-source.js';

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Port of the runtime's HTTP API and editor (default 1880; 0 picks a free one). */
  httpPort?: number;
  /** Where the outbox and the demo's flow copy live (default a temp dir, removed at the end). */
  dataDir?: string;
  /** Stop after this long (default: run until SIGINT/SIGTERM or `signal`). */
  durationMs?: number;
  /** Stop when this aborts (tests; embedding). */
  signal?: AbortSignal;
  /** Synthetic events per second (default 2). */
  ratePerSec?: number;
  /** Where the banner and the central's lines go (default stdout). */
  print?: (line: string) => void;
  /** The runtime's logger (default warnings and errors as JSON on stderr, so stdout stays readable). */
  log?: Logger;
  /** Called once everything runs. */
  onReady?: (info: DemoInfo) => void;
}

/** What runs during a demo. */
export interface DemoInfo {
  httpPort: number;
  brokerUrl: string;
  editorUrl: string;
  statusUrl: string;
  metricsUrl: string;
  dataDir: string;
  runtime: Runtime;
  central: ConsoleCentral;
}

/** What a finished demo did. */
export interface DemoSummary {
  /** Events the synthetic source emitted. */
  emitted: number;
  /** Events the central printed and acknowledged. */
  received: number;
  /** Batches the central acknowledged. */
  acked: number;
}

/**
 * `edgeward demo`: the whole loop in one process with nothing installed
 * beyond `npm ci`. An embedded MQTT broker (aedes, MQTT 3.1.1) on a free
 * loopback port, a console central that prints and acks what it receives, a
 * runtime for `demo-community/gate-01` with the demo flow and the editor on
 * 127.0.0.1 (no adminAuth: loopback only), and a synthetic event source.
 * Runs until SIGINT/SIGTERM, `signal` or `durationMs`, then stops everything
 * in reverse order.
 */
export async function runDemo(opts: DemoOptions = {}): Promise<DemoSummary> {
  const print = opts.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  const log =
    opts.log ?? pino({ level: 'warn', redact: { paths: REDACT_PATHS, censor: '[redacted]' } }, pino.destination(2));
  const ownDataDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await mkdtemp(path.join(tmpdir(), 'edgeward-demo-')));
  const stack: Array<[string, () => Promise<void> | void]> = [];
  const ac = new AbortController();
  const stopOn = () => ac.abort();
  const finished = new Promise<void>((resolve) => ac.signal.addEventListener('abort', () => resolve(), { once: true }));
  process.once('SIGINT', stopOn);
  process.once('SIGTERM', stopOn);
  opts.signal?.addEventListener('abort', stopOn, { once: true });
  if (opts.signal?.aborted) ac.abort();

  let source: SyntheticSource | undefined;
  let central: ConsoleCentral | undefined;
  try {
    await mkdir(dataDir, { recursive: true });
    if (ownDataDir) stack.push(['data dir', () => rm(dataDir, { recursive: true, force: true })]);

    const broker = await startBroker();
    stack.push(['broker', () => broker.close()]);

    central = await startConsoleCentral({ url: broker.url, print, log });
    stack.push(['central', () => central?.close()]);

    // A copy, so deploys from the editor change the demo's data dir, never the repository.
    const flowFile = path.join(dataDir, 'flows.json');
    if (!existsSync(flowFile)) await copyFile(DEMO_FLOW_FILE, flowFile);

    const siteKey = randomBytes(32).toString('hex');
    const config = demoConfig({ dataDir, httpPort: opts.httpPort ?? 1880, brokerUrl: broker.url, siteKey, flowFile });
    const runtime = new Runtime({ config, log, version: 'demo' });
    await runtime.start();
    stack.push(['runtime', () => runtime.stop()]);

    source = new SyntheticSource({ bus: runtime.bus, siteKey, ratePerSec: opts.ratePerSec, seed: Date.now() });
    source.start();
    stack.push(['synthetic source', () => source?.stop()]);

    const base = `http://127.0.0.1:${runtime.port}`;
    const info: DemoInfo = {
      httpPort: runtime.port,
      brokerUrl: broker.url,
      editorUrl: `${base}/`,
      statusUrl: `${base}/api/v1/status`,
      metricsUrl: `${base}/metrics`,
      dataDir,
      runtime,
      central,
    };
    print(`edgeward demo: ${config.site}/${config.edge}`);
    print(`  editor   ${info.editorUrl}`);
    print(`  status   ${info.statusUrl}`);
    print(`  metrics  ${info.metricsUrl}`);
    print(`  broker   ${info.brokerUrl} (embedded)   data ${dataDir}`);
    print('  Ctrl-C stops. Events the central stores:');
    opts.onReady?.(info);

    let timer: NodeJS.Timeout | undefined;
    if (opts.durationMs !== undefined) timer = setTimeout(stopOn, opts.durationMs);
    await finished;
    clearTimeout(timer);
    print('edgeward demo: stopping');
  } finally {
    process.off('SIGINT', stopOn);
    process.off('SIGTERM', stopOn);
    opts.signal?.removeEventListener('abort', stopOn);
    // Reverse order of start; a failing step is reported and the rest still runs.
    for (const [what, close] of stack.reverse()) {
      try {
        await close();
      } catch (err) {
        log.warn({ err, step: what }, 'demo: stop step failed');
      }
    }
  }
  return { emitted: source?.emitted ?? 0, received: central?.received ?? 0, acked: central?.acked ?? 0 };
}

/** The demo site: built in code, no YAML needed. */
function demoConfig(o: { dataDir: string; httpPort: number; brokerUrl: string; siteKey: string; flowFile: string }): SiteConfig {
  return {
    site: 'demo-community',
    edge: 'gate-01',
    dataDir: o.dataDir,
    http: { host: '127.0.0.1', port: o.httpPort },
    uplink: {
      url: o.brokerUrl,
      ack: 'central',
      batch: { maxEvents: 500, maxBytes: 262_144, lingerMs: 250 },
      compress: 'gzip',
    },
    outbox: { maxBytes: 256 * 1024 * 1024 },
    privacy: { siteKey: o.siteKey, rawCards: false },
    commands: { publicKeys: [], allow: ['door.unlock', 'door.lock', 'door.hold', 'fire.silence', 'edge.ping'] },
    // Editor without adminAuth: allowed because the demo binds 127.0.0.1 only.
    nodeRed: { flowFile: o.flowFile, editor: true },
    log: { level: 'warn' },
  };
}

/** An aedes broker on a free loopback port (1883 may belong to a system Mosquitto). */
async function startBroker(): Promise<{ url: string; close(): Promise<void> }> {
  // aedes 1.x is an ES module: a dynamic import loads it from this CommonJS build.
  const { Aedes } = await import('aedes');
  const aedes = await Aedes.createBroker();
  const server = net.createServer(aedes.handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    close: async () => {
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
