import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import type { Envelope } from '../../edge/envelope.js';
import { LevelOutbox } from '../../sync/outbox.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

const ROOT = join(__dirname, '..', '..');
const WRITER = join(ROOT, 'test', 'helpers', 'outbox-writer.ts');

/** What the writer printed before it was killed (complete lines only). */
interface Transcript {
  epoch: string | null;
  appended: Map<number, string>;
  acking: Array<[number, number]>;
  acked: Array<[number, number]>;
}

function startWriter(
  dir: string,
  args: string[] = [],
): { child: ChildProcess; t: Transcript; stderr: () => string; exited: Promise<void> } {
  const child = spawn(process.execPath, ['--import', 'tsx', WRITER, dir, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const t: Transcript = { epoch: null, appended: new Map(), acking: [], acked: [] };
  let buf = '';
  let err = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    buf += chunk;
    const lines = buf.split('\n');
    buf = lines.pop()!; // an incomplete last line proves nothing
    for (const line of lines) {
      const [tag, a, b] = line.split(' ');
      if (tag === 'A') t.appended.set(Number(a), b);
      else if (tag === 'EPOCH') t.epoch = a;
      else if (tag === 'ACKING') t.acking.push([Number(a), Number(b)]);
      else if (tag === 'ACKED') t.acked.push([Number(a), Number(b)]);
    }
  });
  child.stderr!.on('data', (c) => {
    err += c;
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return { child, t, stderr: () => err, exited };
}

/**
 * Run a writer on `dir` until it has acknowledged `killAfter` events, then
 * SIGKILL it at a random instant in the middle of the stream (not on a batch
 * boundary). Returns what it printed.
 */
async function killWriterAfter(dir: string, killAfter: number, args: string[] = []): Promise<Transcript> {
  const { child, t, stderr, exited } = startWriter(dir, args);
  await waitFor(() => t.appended.size >= killAfter || child.exitCode !== null, {
    timeoutMs: 60_000,
    message: `writer acknowledged ${killAfter} events`,
  });
  assert.equal(child.exitCode, null, `writer died on its own: ${stderr()}`);
  await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 25)));
  child.kill('SIGKILL');
  await exited;
  assert.equal(child.signalCode, 'SIGKILL');
  return t;
}

const inRanges = (seq: number, ranges: Array<[number, number]>) => ranges.some(([a, b]) => seq >= a && seq <= b);

describe('LevelOutbox survives kill -9 (integration)', function () {
  this.timeout(120_000);
  let dir: TmpDir;
  before(async () => {
    dir = await tmpDir('outbox-crash');
  });
  after(async () => {
    await dir.cleanup();
  });

  it('keeps every acknowledged event, the epoch, and never reuses a seq, across 3 kills', async () => {
    let epoch: string | null = null;
    let maxPrinted = 0;
    // Cumulative over rounds: a later round's acks may delete an earlier round's events,
    // and an earlier round's events must survive the later kills.
    const everAcked: Array<[number, number]> = [];
    const everAcking: Array<[number, number]> = [];
    const everAppended = new Map<number, string>();
    for (let round = 0; round < 3; round++) {
      const killAfter = 200 + Math.floor(Math.random() * 3000);
      const t = await killWriterAfter(dir.path, killAfter);
      assert.ok(t.epoch, 'writer printed its epoch');
      if (epoch === null) epoch = t.epoch;
      assert.equal(t.epoch, epoch, `round ${round}: epoch kept across restarts`);
      everAcked.push(...t.acked);
      everAcking.push(...t.acking);
      for (const [seq, id] of t.appended) {
        assert.ok(!everAppended.has(seq), `seq ${seq} reused after a restart`);
        everAppended.set(seq, id);
      }

      const ob = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, site: 'crash-site', edge: 'gate-99' });
      const t0 = performance.now();
      await ob.open();
      const reopenMs = performance.now() - t0;
      try {
        assert.equal(ob.epoch, epoch);
        const stored = await ob.read({ maxEvents: 10_000_000, maxBytes: Number.MAX_SAFE_INTEGER });
        const byseq = new Map(stored.map((e) => [e.seq, (JSON.parse(e.json) as Envelope).id]));
        let checked = 0;
        for (const [seq, id] of everAppended) {
          if (inRanges(seq, everAcked)) {
            assert.ok(!byseq.has(seq), `seq ${seq} was acked (ack resolved) but is still stored`);
          } else if (!inRanges(seq, everAcking)) {
            assert.equal(byseq.get(seq), id, `acknowledged seq ${seq} lost or wrong after kill -9`);
            checked++;
          }
          if (seq > maxPrinted) maxPrinted = seq;
        }
        // Counters recovered from the meta record match the store.
        const s = ob.stats();
        assert.equal(s.events, stored.length);
        assert.equal(
          s.bytes,
          stored.reduce((n, e) => n + e.bytes, 0),
        );
        assert.ok(s.lastSeq >= maxPrinted, `lastSeq ${s.lastSeq} >= printed ${maxPrinted}`);
        const [next] = await ob.append([
          { ...(JSON.parse(stored[0].json) as Envelope), id: `01TESTNEXT${round}`.padEnd(26, '0'), seq: undefined },
        ]);
        assert.ok(next.seq! > maxPrinted, `next seq ${next.seq} > every printed seq ${maxPrinted}`);
        maxPrinted = next.seq!;
        console.log(
          `      round ${round}: killed after ${t.appended.size} acks (target ${killAfter}), ${checked} verified present, ` +
            `${stored.length} stored, reopen ${reopenMs.toFixed(1)} ms, next seq ${next.seq}`,
        );
      } finally {
        await ob.close();
      }
    }
  });
  it('accounts for every lost event with an overflow event when killed while full and evicting', async () => {
    const maxBytes = 200_000;
    const d = await tmpDir('outbox-crash-full');
    try {
      const killAfter = 2000 + Math.floor(Math.random() * 2000);
      const t = await killWriterAfter(d.path, killAfter, [String(maxBytes), 'info']);
      const ob = new LevelOutbox({ dir: d.path, maxBytes, site: 'crash-site', edge: 'gate-99' });
      await ob.open();
      try {
        const stored = await ob.read({ maxEvents: 10_000_000, maxBytes: Number.MAX_SAFE_INTEGER });
        const envs = stored.map((e) => JSON.parse(e.json) as Envelope);
        const byseq = new Map(envs.map((e) => [e.seq, e.id]));
        const overflowRanges = envs
          .filter((e) => e.type === 'edge.outbox_overflow')
          .map((e) => [e.data.fromSeq, e.data.toSeq] as [number, number]);
        assert.ok(overflowRanges.length > 0, 'the outbox evicted');
        let present = 0;
        let evicted = 0;
        for (const [seq, id] of t.appended) {
          if (inRanges(seq, t.acked) || inRanges(seq, t.acking)) continue;
          if (byseq.has(seq)) {
            assert.equal(byseq.get(seq), id);
            present++;
          } else {
            assert.ok(inRanges(seq, overflowRanges), `seq ${seq} vanished without an overflow event`);
            evicted++;
          }
        }
        const s = ob.stats();
        assert.equal(s.events, stored.length);
        assert.equal(
          s.bytes,
          stored.reduce((n, e) => n + e.bytes, 0),
        );
        assert.ok(s.bytes <= maxBytes, `${s.bytes} <= ${maxBytes}`);
        console.log(
          `      full outbox: killed after ${t.appended.size} acks, ${present} present, ${evicted} evicted and accounted for, ` +
            `${overflowRanges.length} overflow events stored`,
        );
      } finally {
        await ob.close();
      }
    } finally {
      await d.cleanup();
    }
  });
});
