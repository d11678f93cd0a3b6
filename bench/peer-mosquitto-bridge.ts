/**
 * The peer: what a user would otherwise install at the edge. A local
 * Mosquitto bridged to a central Mosquitto (persistence on, `cleansession
 * false`, QoS 1), in two flavours:
 *
 * - `default`: persistence with the default autosave (every 1800 s, and on a
 *   clean shutdown);
 * - `autosave-on-changes`: `autosave_on_changes true` with `autosave_interval 1`,
 *   which per mosquitto.conf(5) saves the in-memory database whenever the count
 *   of subscription changes, retained and queued messages reaches 1, i.e.
 *   after every change: the most durable setting Mosquitto offers.
 *
 * Measured for each: QoS 1 throughput accepted (PUBACKed) by the edge broker
 * with the bridge up, and delivered/acknowledged after a `kill -9` of the
 * edge broker during an uplink outage.
 */
import type { MqttClient } from 'mqtt';
import {
  connectMqtt,
  delay,
  endMqtt,
  envInt,
  type MosquittoProc,
  progress,
  publishWindowed,
  startMosquittoProc,
  tmpDir,
  waitFor,
} from './lib.js';

export type PeerFlavour = 'default' | 'autosave-on-changes';

export interface PeerThroughput {
  /** Messages PUBACKed by the edge broker. */
  acked: number;
  /** PUBACKed messages per second, first publish to last PUBACK. */
  ackedPerS: number;
  /** Messages that reached the subscriber on the central broker. */
  delivered: number;
  /** Delivered per second, first publish to last delivery. */
  deliveredPerS: number;
}

export interface PeerKillResult {
  /** Messages PUBACKed by the edge broker while the central was down. */
  acknowledged: number;
  /** Of those, how many reached the central subscriber after the kill -9 and restarts. */
  delivered: number;
  /** Publish rate (PUBACKed/s) at the edge during the outage. */
  ackedPerS: number;
  /** Up to 10 indexes of acknowledged messages that never arrived, and the last acknowledged index. */
  lostSample: number[];
  lastAcked: number;
}

export interface PeerResult {
  flavour: PeerFlavour;
  throughput: PeerThroughput;
  kill: PeerKillResult;
}

const TOPIC = 'edgeward/v1/bench-site/peer/events';

function flavourLines(flavour: PeerFlavour): string[] {
  return flavour === 'default' ? [] : ['autosave_on_changes true', 'autosave_interval 1'];
}

/** The config lines of the edge broker: persistence and the bridge to the central broker. */
function edgeLines(dir: string, centralPort: number, flavour: PeerFlavour): string[] {
  return [
    'persistence true',
    `persistence_location ${dir}/`,
    ...flavourLines(flavour),
    'connection central',
    `address 127.0.0.1:${centralPort}`,
    'cleansession false',
    'clientid bench-edge-bridge',
    'topic edgeward/# out 1',
    // Reconnect quickly once the central is back, so the measurement waits on
    // delivery, not on the bridge's back-off (2.0 defaults to 5–30 s).
    'restart_timeout 1',
    'notifications false',
    'try_private true',
  ];
}

function centralLines(dir: string): string[] {
  // The central keeps the subscriber's session across its own restart, like a
  // real central would; it is stopped cleanly, so it saves on the way out.
  return ['persistence true', `persistence_location ${dir}/`];
}

/** A message body shaped like an envelope (~300 B), carrying its index for counting. */
function peerPayload(run: string, i: number): string {
  return JSON.stringify({
    id: `${run}-${i}`,
    ts: new Date().toISOString(),
    site: 'bench-site',
    edge: 'peer',
    type: 'access.granted',
    severity: 'info',
    source: { device: `door-${i % 33}`, driver: 'modbus-door' },
    data: { door: i % 4, card: 'a1b2c3d4e5f60718', n: i },
    count: 1,
    pad: 'x'.repeat(40),
  });
}

/** Distinct message indexes received, for a given run prefix. */
function collector(client: MqttClient, run: string) {
  const seen = new Set<number>();
  let last = performance.now();
  const prefix = `{"id":"${run}-`;
  client.on('message', (_topic, payload) => {
    const s = payload.toString('utf8');
    if (!s.startsWith(prefix)) return;
    const n = Number.parseInt(s.slice(prefix.length, s.indexOf('"', prefix.length)), 10);
    if (!seen.has(n)) {
      seen.add(n);
      last = performance.now();
    }
  });
  return {
    seen,
    get lastAt() {
      return last;
    },
  };
}

async function subscribe(client: MqttClient, topic: string): Promise<void> {
  await new Promise<void>((resolve, reject) =>
    client.subscribe(topic, { qos: 1 }, (err) => (err ? reject(err) : resolve())),
  );
}

/** Publish probes through the bridge until one arrives at the central subscriber. */
async function awaitBridge(edgeUrl: string, sub: MqttClient, timeoutMs: number): Promise<void> {
  const probe = await connectMqtt(edgeUrl, { clientId: `bench-probe-${process.pid}`, clean: true });
  let arrived = false;
  const onMsg = (topic: string) => {
    if (topic.endsWith('/probe')) arrived = true;
  };
  sub.on('message', onMsg);
  try {
    await waitFor(
      async () => {
        if (arrived) return true;
        probe.publish('edgeward/v1/bench-site/peer/probe', 'probe', { qos: 1 });
        await delay(200);
        return arrived;
      },
      { timeoutMs, intervalMs: 0, message: 'a probe through the Mosquitto bridge' },
    );
  } finally {
    sub.off('message', onMsg);
    await endMqtt(probe, true);
  }
}

/** The two brokers of one peer run, and the clients to end when it is over. */
interface PeerBrokers {
  cb: MosquittoProc;
  eb: MosquittoProc;
  clients: MqttClient[];
}

/**
 * Start a central broker and an edge broker bridged to it (each in its own
 * temp dir), run `fn`, then end the clients it pushed, stop both brokers and
 * remove the dirs, whether `fn` succeeded or not.
 */
async function withPeerBrokers<T>(flavour: PeerFlavour, fn: (b: PeerBrokers) => Promise<T>): Promise<T> {
  const central = await tmpDir('bench-central');
  const edge = await tmpDir('bench-edge');
  let cb: MosquittoProc | undefined;
  let eb: MosquittoProc | undefined;
  const clients: MqttClient[] = [];
  try {
    cb = await startMosquittoProc({ dir: central.path, name: 'central', extra: centralLines(central.path) });
    eb = await startMosquittoProc({
      dir: edge.path,
      name: 'edge',
      extra: edgeLines(edge.path, cb.port, flavour),
    });
    return await fn({ cb, eb, clients });
  } finally {
    await Promise.all(clients.map((c) => endMqtt(c, true)));
    await eb?.stop();
    await cb?.stop();
    await central.cleanup();
    await edge.cleanup();
  }
}

/** Publish `count` peer payloads of `run` with QoS 1, 500 in flight, for at most `maxMs`. */
function publishRun(pub: MqttClient, run: string, count: number, maxMs: number) {
  return publishWindowed(pub, {
    topic: TOPIC,
    count,
    window: 500,
    maxMs,
    payload: (i) => peerPayload(run, i),
  });
}

function throughput(flavour: PeerFlavour, count: number, maxMs: number): Promise<PeerThroughput> {
  return withPeerBrokers(flavour, async ({ cb, eb, clients }) => {
    const sub = await connectMqtt(cb.url, { clientId: `bench-sub-tp-${flavour}`, clean: true });
    clients.push(sub);
    await subscribe(sub, 'edgeward/#');
    await awaitBridge(eb.url, sub, 15_000);
    const run = `tp${Date.now()}`;
    const got = collector(sub, run);
    const pub = await connectMqtt(eb.url, { clientId: `bench-pub-tp-${flavour}`, clean: true });
    clients.push(pub);
    const t0 = performance.now();
    const res = await publishRun(pub, run, count, maxMs);
    // Delivery to the central trails the PUBACKs; wait for it with a deadline.
    await waitFor(() => got.seen.size >= res.acked.length || performance.now() - got.lastAt > 5000, {
      timeoutMs: 120_000,
      intervalMs: 50,
      message: 'peer deliveries to settle',
    });
    const deliveredMs = got.lastAt - t0;
    return {
      acked: res.acked.length,
      ackedPerS: (res.acked.length / res.elapsedMs) * 1000,
      delivered: got.seen.size,
      deliveredPerS: deliveredMs > 0 ? (got.seen.size / deliveredMs) * 1000 : 0,
    };
  });
}

function killDuringOutage(flavour: PeerFlavour, count: number, maxMs: number): Promise<PeerKillResult> {
  const subId = `bench-sub-kill-${flavour}-${process.pid}`;
  return withPeerBrokers(flavour, async ({ cb, eb, clients }) => {
    // A persistent subscriber on the central, and a bridge proven to work.
    const sub0 = await connectMqtt(cb.url, { clientId: subId, clean: false });
    await subscribe(sub0, 'edgeward/#');
    await awaitBridge(eb.url, sub0, 15_000);
    await endMqtt(sub0);

    // Uplink outage: the central goes away, the bridge queues at the edge.
    await cb.stop();
    const run = `k${Date.now()}`;
    const pub = await connectMqtt(eb.url, {
      clientId: `bench-pub-kill-${flavour}`,
      clean: true,
      reconnectPeriod: 0,
    });
    clients.push(pub);
    const res = await publishRun(pub, run, count, maxMs);
    const acknowledged = new Set(res.acked);
    progress(
      `peer ${flavour}: ${acknowledged.size} acknowledged during the outage; kill -9 of the edge broker`,
    );

    await eb.kill();
    await endMqtt(pub, true);
    await eb.restart();
    await cb.restart();

    const sub = await connectMqtt(cb.url, { clientId: subId, clean: false });
    clients.push(sub);
    const got = collector(sub, run);
    // The probe queues behind anything the edge broker restored, so once it
    // arrives the restored backlog has been forwarded (or there was none).
    await awaitBridge(eb.url, sub, 30_000);
    await waitFor(() => got.seen.size >= acknowledged.size || performance.now() - got.lastAt > 3000, {
      timeoutMs: 30_000,
      intervalMs: 50,
      message: 'peer deliveries after the restart to settle',
    }).catch(() => undefined);
    let delivered = 0;
    for (const n of got.seen) if (acknowledged.has(n)) delivered++;
    const lostSample: number[] = [];
    for (const n of res.acked) {
      if (lostSample.length >= 10) break;
      if (!got.seen.has(n)) lostSample.push(n);
    }
    return {
      acknowledged: acknowledged.size,
      delivered,
      ackedPerS: (res.acked.length / res.elapsedMs) * 1000,
      lostSample,
      lastAcked: res.acked.length ? Math.max(...res.acked) : -1,
    };
  });
}

/**
 * Run the peer bench for both flavours. Counts: BENCH_PEER_EVENTS (default
 * 50,000, the figure) for both the throughput run and the outage;
 * BENCH_PEER_MAX_S caps how long either keeps publishing (default 20 s), so
 * the slow durable flavour stays bounded: its figures are then over fewer messages.
 */
export async function runPeerBench(): Promise<PeerResult[]> {
  const count = envInt('BENCH_PEER_EVENTS', 50_000);
  const maxMs = envInt('BENCH_PEER_MAX_S', 20) * 1000;
  const out: PeerResult[] = [];
  for (const flavour of ['default', 'autosave-on-changes'] as const) {
    progress(`peer ${flavour}: throughput`);
    const tp = await throughput(flavour, count, maxMs);
    progress(`peer ${flavour}: ${Math.round(tp.ackedPerS)} msg/s accepted; outage + kill -9`);
    const kill = await killDuringOutage(flavour, count, maxMs);
    out.push({ flavour, throughput: tp, kill });
  }
  return out;
}
