/**
 * The bench's central receiver as its own process, like a real central on
 * another machine: decoding and acking a million events must not share an
 * event loop with the load generator, or the latency samples would measure
 * the bench rather than the edge.
 *
 * Env: BENCH_CENTRAL_URL (the broker). It subscribes `edgeward/v1/+/+/events`
 * (QoS 1), acks every batch at once on `P/ack`, and counts distinct ids.
 * IPC (child → parent): `{ type: 'ready' }`, `{ type: 'critical', n, at }`
 * for each critical event (`at` = wall-clock ms with sub-ms precision, stamped
 * on arrival before decoding), `{ type: 'counts', received, distinct }` in
 * answer to `{ cmd: 'counts' }`.
 */
import mqtt from 'mqtt';
import { decodeBatch, encodeAck, toRanges } from '../sync/batch-codec.js';

function send(msg: Record<string, unknown>): void {
  process.send?.(msg);
}

function main(): void {
  const url = process.env.BENCH_CENTRAL_URL;
  if (!url) throw new Error('BENCH_CENTRAL_URL is not set');
  const ids = new Set<string>();
  let received = 0;
  let ready = false;
  const client = mqtt.connect(url, {
    protocolVersion: 4,
    clientId: `bench-central-${process.pid}`,
    clean: true,
    reconnectPeriod: 100,
  });
  client.on('error', () => undefined);
  client.on('message', (_topic, payload) => {
    const at = performance.timeOrigin + performance.now();
    decodeBatch(payload).then(
      (batch) => {
        const seqs: number[] = [];
        for (const e of batch.events) {
          received++;
          ids.add(e.id);
          if (e.seq !== undefined) seqs.push(e.seq);
          if (e.severity === 'critical') send({ type: 'critical', n: (e.data as { n?: number }).n ?? -1, at });
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
  client.on('connect', () => {
    client.subscribeAsync('edgeward/v1/+/+/events', { qos: 1 }).then(
      () => {
        if (!ready) send({ type: 'ready' });
        ready = true;
      },
      () => undefined,
    );
  });
  process.on('message', (m: { cmd: string }) => {
    if (m.cmd === 'counts') send({ type: 'counts', received, distinct: ids.size });
    else if (m.cmd === 'stop') client.end(true, {}, () => process.exit(0));
  });
  process.on('disconnect', () => client.end(true, {}, () => process.exit(0)));
}

main();
