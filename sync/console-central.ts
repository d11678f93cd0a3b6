import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { Envelope } from '../edge/envelope.js';
import { type Logger, silentLogger } from '../edge/log.js';
import { decodeBatch, decodeStatus, encodeAck, toRanges } from './batch-codec.js';

/** Options of {@link startConsoleCentral}. */
export interface ConsoleCentralOptions {
  /** Broker URL, e.g. `mqtt://127.0.0.1:1883`. */
  url: string;
  /** Site to listen to (default `+`, every site). */
  site?: string;
  /** Edge to listen to (default `+`, every edge). */
  edge?: string;
  /** Where each line goes (e.g. `console.log`). */
  print: (line: string) => void;
  log?: Logger;
  /** Extra MQTT client options (credentials, TLS, protocolVersion…). */
  mqtt?: IClientOptions;
}

/** A running console central. */
export interface ConsoleCentral {
  /** Events printed and acknowledged so far (each id once). */
  readonly received: number;
  /** Batches acknowledged so far. */
  readonly acked: number;
  close(): Promise<void>;
}

/** Ids remembered to print a resent event once (a resend after a lost ack is normal). */
const SEEN_IDS_MAX = 50_000;

/**
 * A central receiver that prints instead of storing: the demo's and a
 * technician's view of what an edge forwards. Subscribes to
 * `edgeward/v1/{site}/{edge}/events` and `…/status`, prints one line per
 * event and acks every batch on `…/ack` (so `ack: central` edges drain).
 * It acks what it printed; the reference receiver acks what it stored.
 */
export async function startConsoleCentral(opts: ConsoleCentralOptions): Promise<ConsoleCentral> {
  const log = (opts.log ?? silentLogger()).child({ module: 'sync/console-central' });
  const site = opts.site ?? '+';
  const edge = opts.edge ?? '+';
  const seen = new Set<string>();
  let received = 0;
  let acked = 0;

  // MQTT 3.1.1: the demo's embedded aedes broker refuses MQTT 5.
  const client: MqttClient = await mqtt.connectAsync(opts.url, {
    protocolVersion: 4,
    clientId: `edgeward-console-central-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
    reconnectPeriod: 1000,
    ...opts.mqtt,
  });
  client.on('error', (err) => log.warn({ err }, 'mqtt error'));

  client.on('message', (topic, payload) => {
    const parts = topic.split('/');
    // edgeward/v1/{site}/{edge}/{kind}
    if (parts.length !== 5 || parts[0] !== 'edgeward' || parts[1] !== 'v1') return;
    const [, , tSite, tEdge, kind] = parts;
    if (kind === 'status') {
      printStatus(tSite, tEdge, payload);
      return;
    }
    if (kind === 'events') {
      onBatch(tSite, tEdge, payload).catch((err) => {
        log.warn({ err, site: tSite, edge: tEdge }, 'batch rejected');
        opts.print(`!! ${tSite}/${tEdge} batch rejected: ${(err as Error).message}`);
      });
    }
  });

  async function onBatch(tSite: string, tEdge: string, payload: Buffer): Promise<void> {
    const batch = await decodeBatch(payload);
    if (batch.site !== tSite || batch.edge !== tEdge) {
      throw new Error(`batch from ${batch.site}/${batch.edge} on the topic of ${tSite}/${tEdge}`);
    }
    for (const e of batch.events) {
      if (seen.has(e.id)) continue;
      remember(e.id);
      received++;
      opts.print(formatEvent(e));
    }
    const seqs = batch.events.map((e) => e.seq).filter((s): s is number => typeof s === 'number');
    if (seqs.length === 0) return;
    await client.publishAsync(
      `edgeward/v1/${batch.site}/${batch.edge}/ack`,
      encodeAck({ epoch: batch.epoch, seqs: toRanges(seqs) }),
      { qos: 1 },
    );
    acked++;
  }

  function remember(id: string): void {
    seen.add(id);
    if (seen.size > SEEN_IDS_MAX) {
      // Sets iterate in insertion order: drop the oldest.
      const oldest = seen.values().next().value;
      if (oldest !== undefined) seen.delete(oldest);
    }
  }

  function printStatus(tSite: string, tEdge: string, payload: Buffer): void {
    if (payload.length === 0) return; // a cleared retained status
    try {
      const s = decodeStatus(payload);
      opts.print(`** ${tSite}/${tEdge} ${s.state} (version ${s.version}, outbox ${s.outbox.events} events) at ${s.ts}`);
    } catch (err) {
      log.warn({ err, site: tSite, edge: tEdge }, 'bad status payload');
    }
  }

  await client.subscribeAsync(
    [`edgeward/v1/${site}/${edge}/events`, `edgeward/v1/${site}/${edge}/status`],
    { qos: 1 },
  );
  log.info({ url: opts.url, site, edge }, 'console central listening');

  return {
    get received() {
      return received;
    },
    get acked() {
      return acked;
    },
    close: async () => {
      await client.endAsync();
    },
  };
}

/** One line per event: ts, severity, type, site/edge device, data, then the alert text in zh / bo / en. */
export function formatEvent(e: Envelope): string {
  const count = e.count > 1 ? ` x${e.count}` : '';
  let line = `${e.ts} ${e.severity.padEnd(8)} ${e.type.padEnd(16)} ${e.site}/${e.edge} ${e.source.device}${count} seq=${e.seq ?? '-'} ${JSON.stringify(e.data)}`;
  if (e.msg) line += ` | ${e.msg.zh} | ${e.msg.bo} | ${e.msg.en}`;
  return line;
}
