/**
 * The bench's central receiver as its own process, like a real central on
 * another machine: decoding and acking a million events must not share an
 * event loop with the load generator, or the latency samples would measure
 * the bench rather than the edge.
 *
 * Env: BENCH_CENTRAL_URL (the broker). It subscribes `edgeward/v1/+/+/events`
 * (QoS 1), acks every batch at once on `P/ack`, and counts distinct events by
 * (epoch, seq) and batches.
 * IPC (child → parent): `{ type: 'ready' }`, `{ type: 'critical', n, at }`
 * for each critical event (`at` = wall-clock ms with sub-ms precision, stamped
 * on arrival before decoding), `{ type: 'counts', received, distinct }` in
 * answer to `{ cmd: 'counts' }`.
 */
import mqtt from 'mqtt';
import { ackEveryBatch, SeqSet } from './lib.js';

function send(msg: Record<string, unknown>): void {
  process.send?.(msg);
}

function main(): void {
  const url = process.env.BENCH_CENTRAL_URL;
  if (!url) throw new Error('BENCH_CENTRAL_URL is not set');
  const seen = new SeqSet();
  let received = 0;
  let ready = false;
  const client = mqtt.connect(url, {
    protocolVersion: 4,
    clientId: `bench-central-${process.pid}`,
    clean: true,
    reconnectPeriod: 100,
  });
  client.on('error', () => undefined);
  let batches = 0;
  client.on('message', () => batches++);
  ackEveryBatch(client, (e, arrivedAt, epoch) => {
    received++;
    if (e.seq !== undefined) seen.add(epoch, e.seq);
    // Wall clock with sub-ms precision: comparable with the parent's stamps.
    if (e.severity === 'critical') send({ type: 'critical', n: (e.data as { n?: number }).n ?? -1, at: performance.timeOrigin + arrivedAt });
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
    if (m.cmd === 'counts') send({ type: 'counts', received, distinct: seen.size, batches });
    else if (m.cmd === 'stop') client.end(true, {}, () => process.exit(0));
  });
  process.on('disconnect', () => client.end(true, {}, () => process.exit(0)));
}

main();
