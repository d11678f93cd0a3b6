/**
 * The Edgeward runtime as its own process, for the bench: the pipeline is
 * measured the way it runs in production (its own event loop, not sharing
 * one with the load generator and the central), and it can be `kill -9`ed.
 *
 * Started by bench/pipeline.ts with `fork()`; the site config arrives as JSON
 * in BENCH_CHILD_CONFIG (validated by parseConfig like any site.yaml).
 * BENCH_CHILD_OUTBOX=memory swaps the LevelDB outbox for the in-memory one
 * (no durability): the bench's "storage were free" ceiling of the rest of the
 * pipeline, never a figure against a bar.
 * IPC protocol (parent → child): `{ cmd: 'rss' }`, `{ cmd: 'ingest', n, batch,
 * concurrency }` (the driver path: runtime.ingest directly), `{ cmd: 'stop' }`.
 * Child → parent: `{ type: 'ready', port }`, `{ type: 'rss', rss }`,
 * `{ type: 'ingested', n, ms }`, `{ type: 'error', message }`.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { parseConfig } from '../edge/config.js';
import { createLogger } from '../edge/log.js';
import { Runtime } from '../edge/runtime.js';
import { MemoryOutbox } from '../sync/memory-outbox.js';
import { benchInput, chunked } from './lib.js';

type ParentMessage =
  | { cmd: 'rss' }
  | { cmd: 'ingest'; n: number; batch: number; concurrency: number; offset?: number }
  | { cmd: 'stop' };

function send(msg: Record<string, unknown>): void {
  process.send?.(msg);
}

function ingestLoad(runtime: Runtime, n: number, batch: number, concurrency: number, offset: number): Promise<number> {
  return chunked(n, batch, concurrency, (from, to) => {
    const inputs = [];
    for (let i = from; i < to; i++) inputs.push(benchInput(offset + i));
    return runtime.ingest(inputs);
  });
}

async function main(): Promise<void> {
  const raw = process.env.BENCH_CHILD_CONFIG;
  if (!raw) throw new Error('BENCH_CHILD_CONFIG is not set');
  const config = parseConfig(raw, {});
  const log = createLogger({ level: config.log.level });
  const outbox =
    process.env.BENCH_CHILD_OUTBOX === 'memory'
      ? new MemoryOutbox({ maxBytes: config.outbox.maxBytes, site: config.site, edge: config.edge, log })
      : undefined;
  const runtime = new Runtime({ config, log, version: 'bench', outbox });
  await runtime.start();
  process.on('message', (m: ParentMessage) => {
    if (m.cmd === 'rss') {
      send({ type: 'rss', rss: process.memoryUsage().rss });
    } else if (m.cmd === 'ingest') {
      const elu0 = performance.eventLoopUtilization();
      let gcMs = 0;
      const gc = new PerformanceObserver((list) => {
        for (const e of list.getEntries()) gcMs += e.duration;
      });
      gc.observe({ entryTypes: ['gc'] });
      ingestLoad(runtime, m.n, m.batch, m.concurrency, m.offset ?? 0).then(
        (ms) => {
          gc.disconnect();
          send({ type: 'ingested', n: m.n, ms, elu: performance.eventLoopUtilization(elu0).utilization, gcMs });
        },
        (err) => send({ type: 'error', message: String(err) }),
      );
    } else if (m.cmd === 'stop') {
      runtime.stop().finally(() => process.exit(0));
    }
  });
  // The parent going away (it crashed, or was interrupted) must not leave us behind.
  process.on('disconnect', () => {
    runtime.stop().finally(() => process.exit(0));
  });
  send({ type: 'ready', port: runtime.port });
}

main().catch((err) => {
  send({ type: 'error', message: String(err?.stack ?? err) });
  process.exit(1);
});
