import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { StatusPayload } from '../../sync/batch-codec.js';
import { LevelOutbox, outboxPath } from '../../sync/outbox.js';
import { startTestCentral, type TestCentral } from '../helpers/central.js';
import { startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';
import {
  killRuntimeChild,
  type RuntimeChild,
  startRuntimeChild,
  writeSiteConfig,
} from '../helpers/runtime-process.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

const SITE = 'disk-site';
const EDGE = 'gate-11';

/**
 * Set the child's soft file-size limit (KiB, or 'unlimited') with util-linux's
 * prlimit. A write past it fails with EFBIG: LevelDB takes the same path as
 * for ENOSPC (an IO error from its log or table file).
 */
function setFileSizeLimit(pid: number, kib: number | 'unlimited'): void {
  const soft = kib === 'unlimited' ? 'unlimited' : String(kib * 1024);
  execFileSync('prlimit', [`--fsize=${soft}:`, '--pid', String(pid)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const now = readFileSync(`/proc/${pid}/limits`, 'utf8');
  assert.match(
    now,
    kib === 'unlimited' ? /Max file size\s+unlimited/ : new RegExp(`Max file size\\s+${kib * 1024}\\s`),
    now,
  );
}

type Post = { status: number; ids: string[]; code?: string; retryAfter: string | null };

async function post(port: number, n: number, tag: string): Promise<Post> {
  const body = Array.from({ length: n }, (_, k) => ({
    type: 'sensor.reading',
    source: { device: `probe-${k % 4}` },
    data: { tag, k, pad: 'x'.repeat(200) },
  }));
  const res = await fetch(`http://127.0.0.1:${port}/api/v1/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as { accepted?: Array<{ id: string }>; code?: string };
  return {
    status: res.status,
    ids: (json.accepted ?? []).map((a) => a.id),
    code: json.code,
    retryAfter: res.headers.get('retry-after'),
  };
}

async function getJson(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function metric(port: number, name: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

describe('outbox on a full disk: refuses, reports, recovers, loses nothing acknowledged (integration, real I/O errors)', function () {
  this.timeout(90_000);
  let dir: TmpDir;
  let broker: TestMosquitto;
  let central: TestCentral;
  let child: RuntimeChild | undefined;

  before(async () => {
    dir = await tmpDir('disk-full');
    broker = await startMosquitto();
    // The central never acks: every accepted event must still be in the store at the end.
    central = await startTestCentral({ url: broker.url, site: SITE, edge: EDGE, ack: false });
  });

  after(async () => {
    await killRuntimeChild(child);
    await central?.close();
    await broker?.stop();
    await dir?.cleanup();
  });

  it('503 + /healthz, status and metrics while writes fail; 202 again once they work; every 202 survives a kill -9', async () => {
    const configFile = writeSiteConfig(dir.path, {
      site: SITE,
      edge: EDGE,
      uplink: `{ url: "${broker.url}", ack: central, ackTimeoutMs: 60000 }`,
    });
    // prlimit sets only the soft limit below: the hard one stays unlimited, so it can be raised back.
    child = await startRuntimeChild(configFile);
    const { port, pid } = child;
    const accepted = new Set<string>();
    const keep = (p: Post) => {
      for (const id of p.ids) accepted.add(id);
      return p;
    };

    for (let i = 0; i < 20; i++) assert.equal(keep(await post(port, 20, `before-${i}`)).status, 202);
    await waitFor(() => central.statuses.some((s) => s.state === 'online'), {
      timeoutMs: 10_000,
      message: 'status online',
    });

    // The disk is full: no file may grow past 1 KiB. LevelDB's log is already larger, so the
    // next write fails; a reopen must write a table of the log's events, which fails too.
    setFileSizeLimit(pid, 1);
    const refused = await post(port, 20, 'during-0');
    assert.equal(refused.status, 503, JSON.stringify(refused));
    assert.equal(refused.code, 'EDGE_OUTBOX_WRITE_FAILED');
    assert.equal(refused.retryAfter, '1', 'a poster learns when to try again');
    // It stays refused (reopens are tried, and fail), and reported everywhere.
    for (let i = 1; i < 5; i++) assert.equal((await post(port, 5, `during-${i}`)).status, 503);
    const health = await getJson(`http://127.0.0.1:${port}/healthz`);
    assert.equal(health.status, 503);
    const problems = health.body.problems as string[];
    assert.ok(
      problems.some((p) => p.startsWith('outbox cannot store events since') && p.includes('File too large')),
      JSON.stringify(problems),
    );
    const status = await getJson(`http://127.0.0.1:${port}/api/v1/status`);
    const writeError = (status.body.outbox as { writeError?: { message: string; failures: number } })
      .writeError;
    assert.match(writeError?.message ?? '', /File too large/);
    assert.ok(writeError!.failures >= 5, JSON.stringify(writeError));
    assert.equal(await metric(port, 'edgeward_outbox_write_failing'), 1);
    assert.ok((await metric(port, 'edgeward_outbox_write_failures_total'))! >= 5);
    const told = await waitFor(
      () => central.statuses.find((s) => s.state === 'online' && s.outbox.writeError),
      {
        timeoutMs: 10_000,
        message:
          'a retained status carrying outbox.writeError reaches the central at once (not at the 30 s refresh)',
      },
    );
    assert.match((told as StatusPayload).outbox.writeError!.message, /File too large/);
    assert.equal(child.proc.exitCode, null, 'it reports, it does not crash');

    // Room again: within a reopen retry (1 s) events are accepted again, and the reports clear.
    setFileSizeLimit(pid, 'unlimited');
    const back = await waitFor(
      async () => {
        const p = keep(await post(port, 20, 'after-0'));
        return p.status === 202 ? p : undefined;
      },
      { timeoutMs: 15_000, intervalMs: 100, message: 'POST answered 202 again' },
    );
    assert.equal(back.ids.length, 20);
    assert.equal((await getJson(`http://127.0.0.1:${port}/healthz`)).status, 200);
    assert.equal(await metric(port, 'edgeward_outbox_write_failing'), 0);
    await waitFor(
      () =>
        central.statuses.at(-1)?.state === 'online' &&
        central.statuses.at(-1)?.outbox.writeError === undefined,
      {
        timeoutMs: 10_000,
        message: 'a status without writeError once writes work',
      },
    );

    // What is written after the spell must survive a crash: LevelDB's log of the spell ends
    // in a torn record, and before the reopen-after-failure every later write to that log
    // was lost on recovery.
    for (let i = 1; i < 20; i++) assert.equal(keep(await post(port, 20, `after-${i}`)).status, 202);
    await killRuntimeChild(child);
    child = undefined;

    const ob = new LevelOutbox({
      dir: outboxPath(join(dir.path, 'data')),
      maxBytes: 1 << 30,
      site: SITE,
      edge: EDGE,
    });
    await ob.open();
    try {
      const stored = new Set<string>();
      const all = await ob.read({ maxEvents: 100_000, maxBytes: 1 << 30 });
      for (const e of all) stored.add((JSON.parse(e.json) as { id: string }).id);
      const lost = [...accepted].filter((id) => !stored.has(id));
      assert.equal(accepted.size, 800);
      assert.deepEqual(lost, [], `${lost.length} of ${accepted.size} acknowledged events lost`);
    } finally {
      await ob.close();
    }
  });
});
