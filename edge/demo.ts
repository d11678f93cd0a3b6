import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { loadDoorProfile } from '../drivers/door/profile.js';
import { CameraSim } from '../hardware/sim/camera-sim.js';
import { DoorSim, DoorUnit } from '../hardware/sim/door-sim.js';
import { pendingTimers } from '../hardware/sim/timers.js';
import { type ConsoleCentral, startConsoleCentral } from '../sync/console-central.js';
import type { SiteConfig } from './config-types.js';
import { type Logger, REDACT_PATHS } from './log.js';
import { EdgewardError, isEdgewardError } from './errors.js';
import { credentialSecret, credentialsFile, DEMO_FLOW_FILE, encryptedCredentials } from './nodered.js';
import { Runtime } from './runtime.js';
import { SyntheticSource } from './synthetic-source.js';

/**
 * The door controllers of the demo's Modbus line. Must match the
 * `edgeward-door` nodes of flows/demo.json (unit id, doors, name).
 */
export const DEMO_DOOR_UNITS: ReadonlyArray<{ unit: number; doors: number; name: string }> = [
  { unit: 1, doors: 1, name: 'door-1' },
  { unit: 2, doors: 1, name: 'door-2' },
  { unit: 3, doors: 1, name: 'door-3' },
  { unit: 4, doors: 2, name: 'gate-4' },
];
/** Device name of the demo's camera node. */
export const DEMO_CAMERA_NAME = 'cam-entrance';
/** The simulated camera's login (the flow's camera node has the same user; the password goes into its credentials). */
export const DEMO_CAMERA_USER = 'demo';
export const DEMO_CAMERA_PASSWORD = 'password';
/** Ids of the flow nodes whose address the demo sets at every start (the simulators listen on free ports). */
const FLOW_BUS_NODE = 'ew.demo.modbus';
const FLOW_CAMERA_NODE = 'ew.demo.camera';

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
  /** One simulated door activity (card, exit button, forced, held open…) every this many ms (default 3000; 0 = none). */
  doorEveryMs?: number;
  /** One scripted camera motion (plus now and then a line crossing or a tamper) every this many ms (default 8000; 0 = none). */
  cameraEveryMs?: number;
  /** Extra synthetic events per second straight onto the bus, beside the simulators (default 0 = off). */
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
  /** The flow file the runtime runs (the demo's copy of flows/demo.json). */
  flowFile: string;
  runtime: Runtime;
  central: ConsoleCentral;
  /** The simulated door controllers (scriptable: `doors.unit(1).swipe(0, card)`). */
  doors: DoorSim;
  /** Modbus TCP port of the door simulator on 127.0.0.1. */
  modbusPort: number;
  /** The simulated ONVIF camera (scriptable: `camera.motion(true)`). */
  camera: CameraSim;
}

/** What a finished demo did. */
export interface DemoSummary {
  /** Events the synthetic source emitted (0 unless `ratePerSec` > 0). */
  emitted: number;
  /** Events the central printed and acknowledged. */
  received: number;
  /** Batches the central acknowledged. */
  acked: number;
}

/**
 * `edgeward demo`: the whole loop in one process with nothing installed
 * beyond `npm ci`. An embedded MQTT broker (aedes, MQTT 3.1.1) on a free
 * loopback port; a console central that prints and acks what it receives;
 * simulated door controllers on Modbus TCP and a simulated ONVIF camera (HTTP
 * and UDP discovery), both on free loopback ports; a runtime for
 * `demo-community/gate-01` running the demo flow (whose bus and camera nodes
 * are pointed at the simulators) with the editor on 127.0.0.1 (no adminAuth:
 * loopback only). The runtime talks to the simulators exactly as to real
 * devices. Runs until SIGINT/SIGTERM, `signal` or `durationMs`, then stops
 * everything in reverse order.
 */
export async function runDemo(opts: DemoOptions = {}): Promise<DemoSummary> {
  const print = opts.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  const log =
    opts.log ??
    pino({ level: 'warn', redact: { paths: REDACT_PATHS, censor: '[redacted]' } }, pino.destination(2));
  const ownDataDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await mkdtemp(path.join(tmpdir(), 'edgeward-demo-')));
  const stack: Array<[string, () => Promise<void> | void]> = [];
  const ac = new AbortController();
  const stopOn = () => ac.abort();
  const finished = new Promise<void>((resolve) =>
    ac.signal.addEventListener('abort', () => resolve(), { once: true }),
  );
  process.once('SIGINT', stopOn);
  process.once('SIGTERM', stopOn);
  opts.signal?.addEventListener('abort', stopOn, { once: true });
  if (opts.signal?.aborted) ac.abort();

  // The central's and the device lines are held back until the banner is out, then flow through.
  let held: string[] | undefined = [];
  const emit = (line: string) => {
    if (held) held.push(line);
    else print(line);
  };

  let source: SyntheticSource | undefined;
  let central: ConsoleCentral | undefined;
  try {
    await mkdir(dataDir, { recursive: true });
    if (ownDataDir) stack.push(['data dir', () => rm(dataDir, { recursive: true, force: true })]);

    const broker = await startBroker();
    stack.push(['broker', () => broker.close()]);

    central = await startConsoleCentral({ url: broker.url, print: emit, log });
    stack.push(['central', () => central?.close()]);

    // Simulators first and stopped last, so the drivers never see them vanish while stopping.
    const doors = new DoorSim({ units: DEMO_DOOR_UNITS.map((u) => u.unit) });
    // DoorSim gives every unit the same door count; the gate is a two-door controller.
    const profile = loadDoorProfile('generic-door');
    for (const u of DEMO_DOOR_UNITS)
      if (u.doors !== 1) doors.units.set(u.unit, new DoorUnit(u.unit, u.doors, profile));
    stack.push(['door simulator', () => doors.stop()]);
    const { port: modbusPort } = await doors.serveTcp(0, '127.0.0.1');

    const camera = new CameraSim({
      host: '127.0.0.1',
      port: 0,
      username: DEMO_CAMERA_USER,
      password: DEMO_CAMERA_PASSWORD,
      name: DEMO_CAMERA_NAME,
      // Unicast WS-Discovery on a free UDP port: the editor's "discover" button can probe it.
      discovery: { port: 0 },
    });
    stack.push(['camera simulator', () => camera.stop()]);
    await camera.start();

    // A copy, so deploys from the editor change the demo's data dir, never the repository.
    const flowFile = path.join(dataDir, 'flows.json');
    // Not copyFile: it keeps the repository file's 0644 instead of honouring the umask.
    if (!existsSync(flowFile)) await writeFile(flowFile, await readFile(DEMO_FLOW_FILE));
    await pointFlowAtSimulators(flowFile, { modbusPort, cameraPort: camera.port });
    const siteKey = await demoSiteKey(dataDir, ownDataDir);
    const config = demoConfig({
      dataDir,
      httpPort: opts.httpPort ?? 1880,
      brokerUrl: broker.url,
      siteKey,
      flowFile,
    });
    // Node-RED keeps `flows_cred.json` in its userDir (`<dataDir>/node-red`), encrypted with the
    // box's credential secret: written so once, never in clear. An existing file (a kept data
    // dir) is left alone: it may hold credentials the technician set.
    const credFile = credentialsFile(path.join(dataDir, 'node-red'), flowFile);
    if (!existsSync(credFile)) {
      await mkdir(path.dirname(credFile), { recursive: true });
      const secret = credentialSecret(config);
      await writeFile(credFile, JSON.stringify(encryptedCredentials(secret, { [FLOW_CAMERA_NODE]: { password: DEMO_CAMERA_PASSWORD } })), {
        mode: 0o600,
      });
    }
    const runtime = new Runtime({ config, log, version: 'demo' });

    // One line per device coming online or going offline.
    const presence = new Map<string, boolean>();
    const deviceOwner = {};
    runtime.bus.on('device.state', deviceOwner, (s) => {
      if (presence.get(s.name) === s.online) return;
      presence.set(s.name, s.online);
      emit(`>> ${s.name} ${s.online ? 'online' : 'OFFLINE'} (${s.driver})`);
    });
    stack.push(['device lines', () => runtime.bus.removeOwner(deviceOwner)]);

    try {
      await runtime.start();
    } catch (err) {
      const cause = (err as Error).cause as NodeJS.ErrnoException | undefined;
      if (isEdgewardError(err, 'EDGE_HTTP_LISTEN') && cause?.code === 'EADDRINUSE') {
        // 1880 is Node-RED's own port: a Node-RED already on this machine has it.
        throw new EdgewardError(
          'EDGE_HTTP_LISTEN',
          `port ${opts.httpPort ?? 1880} is taken (another Node-RED?): run \`npm run demo -- --port 0\` to take a free one`,
          { cause: err },
        );
      }
      throw err;
    }
    stack.push(['runtime', () => runtime.stop()]);

    // Activity starts once the drivers run: a door's first poll is its baseline.
    const doorEveryMs = opts.doorEveryMs ?? 3000;
    if (doorEveryMs > 0) {
      const stopDoors = doors.autoplay(doorEveryMs);
      stack.push(['door activity', stopDoors]);
    }
    const cameraEveryMs = opts.cameraEveryMs ?? 8000;
    if (cameraEveryMs > 0) {
      const stopCamera = scriptCamera(camera, cameraEveryMs);
      stack.push(['camera activity', stopCamera]);
    }
    if ((opts.ratePerSec ?? 0) > 0) {
      source = new SyntheticSource({
        bus: runtime.bus,
        siteKey,
        ratePerSec: opts.ratePerSec,
        doors: ['synthetic-1', 'synthetic-2'],
        seed: Date.now(),
        log,
      });
      source.start();
      stack.push(['synthetic source', () => source?.stop()]);
    }

    const base = `http://127.0.0.1:${runtime.port}`;
    const info: DemoInfo = {
      httpPort: runtime.port,
      brokerUrl: broker.url,
      editorUrl: `${base}/`,
      statusUrl: `${base}/api/v1/status`,
      metricsUrl: `${base}/metrics`,
      dataDir,
      flowFile,
      runtime,
      central,
      doors,
      modbusPort,
      camera,
    };
    const doorList = DEMO_DOOR_UNITS.map((u) => `${u.name}${u.doors > 1 ? ` (${u.doors} doors)` : ''}`).join(
      ', ',
    );
    print(`edgeward demo: site ${config.site}, edge ${config.edge}; everything below runs in this process`);
    print(
      `  doors    ${DEMO_DOOR_UNITS.length} simulated controllers on Modbus TCP 127.0.0.1:${modbusPort}: ${doorList}`,
    );
    print(
      `  camera   simulated ONVIF camera ${DEMO_CAMERA_NAME} at ${camera.deviceUrl} (user ${DEMO_CAMERA_USER})`,
    );
    print(`           answers discovery probes on udp 127.0.0.1:${camera.discoveryPort}`);
    print('  not yet  fire panel and local rules (held-open, forced, fire evacuation): later releases');
    print(`  editor   ${info.editorUrl}   flow ${flowFile}`);
    print(`  status   ${info.statusUrl}`);
    print(`  metrics  ${info.metricsUrl}`);
    print(`  broker   ${info.brokerUrl} (embedded)   data ${dataDir}`);
    if (source) print(`  extra    ${opts.ratePerSec} synthetic events/s (devices synthetic-1, synthetic-2)`);
    print('  Ctrl-C stops. Below, "**" is the edge\'s MQTT status as the central sees it, ">>" a device');
    print(
      '  going online or offline, and every other line one event the central stores (it acks each batch):',
    );
    const where = `${config.site}/${config.edge}`;
    print(
      `${'time'.padEnd(24)} ${'severity'.padEnd(8)} ${'type'.padEnd(16)} ${'site/edge'.padEnd(where.length)} device seq data`,
    );
    for (const line of held) print(line);
    held = undefined;
    opts.onReady?.(info);

    let timer: NodeJS.Timeout | undefined;
    if (opts.durationMs !== undefined) timer = setTimeout(stopOn, opts.durationMs);
    await finished;
    clearTimeout(timer);
    print('edgeward demo: stopping');
  } finally {
    // A start that failed half-way still shows what the central had printed.
    for (const line of held ?? []) print(line);
    held = undefined;
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

/**
 * Point the flow's Modbus bus and camera nodes at the simulators' ports. Done
 * at every start (the ports are free ones); a technician's other nodes are
 * left as they are.
 */
async function pointFlowAtSimulators(
  flowFile: string,
  ports: { modbusPort: number; cameraPort: number },
): Promise<void> {
  const flow = JSON.parse(await readFile(flowFile, 'utf8')) as Array<Record<string, unknown>>;
  for (const node of flow) {
    if (node.id === FLOW_BUS_NODE)
      Object.assign(node, { transport: 'tcp', host: '127.0.0.1', port: ports.modbusPort });
    if (node.id === FLOW_CAMERA_NODE) Object.assign(node, { host: '127.0.0.1', port: ports.cameraPort });
  }
  await writeFile(flowFile, `${JSON.stringify(flow, null, 4)}\n`);
}

/**
 * The demo's site key. A temp data dir gets a fresh one; a kept data dir
 * (`--data-dir`) keeps its key in a file, so card pseudonyms and the flow's
 * encrypted credentials (derived from it) stay valid across runs.
 */
async function demoSiteKey(dataDir: string, fresh: boolean): Promise<string> {
  const file = path.join(dataDir, 'demo-site.key');
  if (!fresh && existsSync(file)) return (await readFile(file, 'utf8')).trim();
  const key = randomBytes(32).toString('hex');
  if (!fresh) await writeFile(file, `${key}\n`, { mode: 0o600 });
  return key;
}

/**
 * Scripted camera activity: every `everyMs` motion starts (and stops half a
 * period later, at most 2 s); every third time something crosses the
 * entrance line; every fifth time the view is covered for a moment (tamper).
 * Returns a function that stops it.
 */
function scriptCamera(camera: CameraSim, everyMs: number): () => void {
  const { later, clear } = pendingTimers();
  const settle = Math.min(2000, everyMs / 2);
  let tick = 0;
  const interval = setInterval(() => {
    tick++;
    camera.motion(true);
    later(settle, () => camera.motion(false));
    if (tick % 3 === 0) camera.lineCrossed(String(tick));
    if (tick % 5 === 0) {
      camera.tamper(true);
      later(settle, () => camera.tamper(false));
    }
  }, everyMs);
  return () => {
    clearInterval(interval);
    clear();
  };
}

/** The demo site: built in code, no YAML needed. */
function demoConfig(o: {
  dataDir: string;
  httpPort: number;
  brokerUrl: string;
  siteKey: string;
  flowFile: string;
}): SiteConfig {
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
    commands: {
      publicKeys: [],
      allow: ['door.unlock', 'door.lock', 'door.hold', 'fire.silence', 'edge.ping'],
    },
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
