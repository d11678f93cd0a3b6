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
 * concurrency, offset?, untilEmpty? }` (the driver path: runtime.ingest
 * directly; with `untilEmpty`, then until the outbox holds nothing),
 * `{ cmd: 'stop' }`. Child → parent: `{ type: 'ready', port }`, `{ type:
 * 'rss', rss }`, `{ type: 'ingested', n, ms, elu, gcMs, emptyMs?, batches }`
 * (`batches`: published meanwhile), `{ type: 'error', message }`.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { parseConfig } from '../edge/config.js';
import { createLogger } from '../edge/log.js';
import { Runtime } from '../edge/runtime.js';
import { MemoryOutbox } from '../sync/memory-outbox.js';
import { benchInput, chunked } from './lib.js';

type ParentMessage =
  | { cmd: 'rss' }
  | { cmd: 'ingest'; n: number; batch: number; concurrency: number; offset?: number; untilEmpty?: boolean }
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

/**
 * Until the outbox holds nothing: with `ack: broker`, every event stored has
 * been published and PUBACKed by the broker, and deleted. Checked every
 * millisecond (a timer, not a busy loop: the uplink runs in between).
 */
async function untilEmpty(runtime: Runtime): Promise<void> {
  while (runtime.outbox.stats().events > 0) await new Promise((resolve) => setTimeout(resolve, 1));
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
  // Batches published, for the events per batch of a run that ends at the broker (the
  // uplink is private to the runtime: reached here by name, bench tooling only).
  let published = 0;
  (runtime as unknown as { uplink?: { on(e: 'publish', f: () => void): void } }).uplink?.on('publish', () => {
    published++;
  });
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
      const t0 = performance.now();
      const published0 = published;
      ingestLoad(runtime, m.n, m.batch, m.concurrency, m.offset ?? 0).then(
        async (ms) => {
          const elu = performance.eventLoopUtilization(elu0).utilization;
          gc.disconnect();
          let emptyMs: number | undefined;
          if (m.untilEmpty) {
            await untilEmpty(runtime);
            emptyMs = performance.now() - t0;
          }
          send({ type: 'ingested', n: m.n, ms, elu, gcMs, emptyMs, batches: published - published0 });
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
