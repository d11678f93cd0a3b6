import { readFileSync } from 'node:fs';
import mqtt, { type MqttClient } from 'mqtt';
import type { Envelope } from '../../edge/envelope.js';
import {
  type Batch,
  decodeBatch,
  decodeStatus,
  encodeAck,
  type StatusPayload,
  toRanges,
} from '../../sync/batch-codec.js';

/** Decide per batch whether the test central acks it (`index` counts batches received, from 0). */
export type AckPolicy = boolean | ((batch: Batch, index: number) => boolean);

export interface TestCentralOptions {
  url: string;
  site: string;
  edge: string;
  ack: AckPolicy;
  /** Ack with this epoch instead of the batch's (to test foreign-epoch acks). */
  ackEpoch?: string;
  /** PEM file paths for an `mqtts://` broker. */
  tls?: { ca?: string; cert?: string; key?: string };
}

/** A minimal central receiver for tests: records every batch, optionally acks it. */
export interface TestCentral {
  /** Every event received, in arrival order, duplicates included. */
  readonly arrivals: Envelope[];
  /** Distinct events by seq and by id (first arrival kept). */
  readonly bySeq: Map<number, Envelope>;
  readonly byId: Map<string, Envelope>;
  /** Arrival index of the first arrival of each id. */
  readonly arrivalIndex: Map<string, number>;
  /** Batches received (after decoding). */
  readonly batches: Batch[];
  /** Payloads that failed to decode, with the error code. */
  readonly errors: Array<{ topic: string; code: string }>;
  /** Status payloads seen on `P/status`, in order (retained ones included). */
  readonly statuses: StatusPayload[];
  /** True while the central's own MQTT connection is up and subscribed. */
  readonly connected: boolean;
  /** Change the ack policy (e.g. start acking after ignoring). */
  setAck(policy: AckPolicy): void;
  /** Publish a raw payload on `P/ack` (for malformed-ack tests). */
  publishRawAck(payload: string | Buffer): Promise<void>;
  close(): Promise<void>;
}

/**
 * Start a test central: subscribes `edgeward/v1/+/+/events` and `…/status`
 * with QoS 1, decodes batches with `decodeBatch`, records events and acks
 * `{epoch, seqs}` ranges on `P/ack` per the policy. It resubscribes on every
 * reconnect (test brokers keep no sessions) and resolves once subscribed.
 */
export async function startTestCentral(opts: TestCentralOptions): Promise<TestCentral> {
  let policy = opts.ack;
  let connected = false;
  let chain: Promise<void> = Promise.resolve();
  const arrivals: Envelope[] = [];
  const bySeq = new Map<number, Envelope>();
  const byId = new Map<string, Envelope>();
  const arrivalIndex = new Map<string, number>();
  const batches: Batch[] = [];
  const errors: Array<{ topic: string; code: string }> = [];
  const statuses: StatusPayload[] = [];
  const ackTopic = `edgeward/v1/${opts.site}/${opts.edge}/ack`;

  const client: MqttClient = mqtt.connect(opts.url, {
    protocolVersion: 4,
    clientId: `edgeward-test-central-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
    clean: true,
    reconnectPeriod: 100,
    connectTimeout: 5000,
    ...(opts.tls?.ca ? { ca: readFileSync(opts.tls.ca) } : {}),
    ...(opts.tls?.cert ? { cert: readFileSync(opts.tls.cert) } : {}),
    ...(opts.tls?.key ? { key: readFileSync(opts.tls.key) } : {}),
  });
  client.on('error', () => undefined);
  client.on('close', () => {
    connected = false;
  });

  const subscribe = async () => {
    await client.subscribeAsync({
      'edgeward/v1/+/+/events': { qos: 1 },
      'edgeward/v1/+/+/status': { qos: 1 },
    });
    connected = true;
  };

  const onBatch = async (topic: string, payload: Buffer) => {
    let batch: Batch;
    try {
      batch = await decodeBatch(payload);
    } catch (err) {
      errors.push({ topic, code: (err as { code?: string }).code ?? 'UNKNOWN' });
      return;
    }
    const index = batches.length;
    batches.push(batch);
    for (const e of batch.events) {
      if (!byId.has(e.id)) arrivalIndex.set(e.id, arrivals.length);
      arrivals.push(e);
      if (e.seq !== undefined && !bySeq.has(e.seq)) bySeq.set(e.seq, e);
      if (!byId.has(e.id)) byId.set(e.id, e);
    }
    const doAck = typeof policy === 'function' ? policy(batch, index) : policy;
    if (doAck && client.connected) {
      const seqs = toRanges(batch.events.map((e) => e.seq ?? 0).filter((s) => s > 0));
      client.publish(
        `edgeward/v1/${batch.site}/${batch.edge}/ack`,
        encodeAck({ epoch: opts.ackEpoch ?? batch.epoch, seqs }),
        {
          qos: 1,
        },
      );
    }
  };

  client.on('message', (topic, payload) => {
    if (topic.endsWith('/events')) {
      // Decoding is async (gunzip): chain it so arrival order is kept.
      chain = chain.then(() => onBatch(topic, payload));
    } else if (topic.endsWith('/status')) {
      try {
        if (payload.length > 0) statuses.push(decodeStatus(payload));
      } catch (err) {
        errors.push({ topic, code: (err as { code?: string }).code ?? 'UNKNOWN' });
      }
    }
  });

  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(
      () => reject(new Error(`test central could not connect to ${opts.url} within 5 s`)),
      5000,
    );
    client.on('connect', () => {
      subscribe().then(
        () => {
          clearTimeout(t);
          resolve();
        },
        () => client.end(true),
      );
    });
  });

  return {
    arrivals,
    bySeq,
    byId,
    arrivalIndex,
    batches,
    errors,
    statuses,
    get connected() {
      return connected;
    },
    setAck(p: AckPolicy) {
      policy = p;
    },
    async publishRawAck(payload: string | Buffer) {
      await client.publishAsync(ackTopic, payload, { qos: 1 });
    },
    async close() {
      await chain;
      await client.endAsync(true);
    },
  };
}
