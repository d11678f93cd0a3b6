import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Envelope, type EventType, makeEnvelope, type Severity } from '../../edge/envelope.js';
import { isEdgewardError } from '../../edge/errors.js';
import { MemoryOutbox } from '../../sync/memory-outbox.js';
import { Level } from 'level';
import { eventKey, LevelOutbox, type OverflowData, OverflowTally, readOutboxStats, WHEN_WRITING_MAX_WAIT_MS } from '../../sync/outbox.js';
import type { Outbox, StoredEvent } from '../../sync/outbox-api.js';
import { diskFull, replaceBatchWrites } from '../helpers/batch-writes.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { ManualClock } from '../helpers/clock.js';
import { waitFor } from '../helpers/wait.js';
import pino from 'pino';
import { cp, rm } from 'node:fs/promises';

const IDS = { site: 'test-site', edge: 'gate-01' };

function ev(severity: Severity, type: EventType = 'door.opened', data: Record<string, unknown> = { door: 0 }): Envelope {
  return makeEnvelope({ type, severity, source: { device: 'door-1', driver: 'modbus-door' }, data }, IDS);
}

/** Stored size of an envelope once it has a seq (seqs here stay below 100, so 2 digits). */
function sizeOf(e: Envelope): number {
  return Buffer.byteLength(JSON.stringify({ ...e, seq: 10 }));
}

function sumSize(es: Envelope[]): number {
  return es.reduce((n, e) => n + sizeOf(e), 0);
}

function parsed(events: StoredEvent[]): Envelope[] {
  return events.map((e) => JSON.parse(e.json) as Envelope);
}

async function readAll(ob: Outbox): Promise<StoredEvent[]> {
  return ob.read({ maxEvents: 1_000_000, maxBytes: Number.MAX_SAFE_INTEGER });
}

/** Counts the store's head lookups (refreshHeads' findHead) from now on. */
function countHeadLookups(ob: LevelOutbox): { n: number } {
  const inner = ob as unknown as { findHead: (...a: unknown[]) => Promise<unknown> };
  const real = inner.findHead.bind(ob);
  const count = { n: 0 };
  inner.findHead = (...a: unknown[]) => {
    count.n++;
    return real(...a);
  };
  return count;
}

/** Deterministic random integers below `n` (a linear congruential generator from `seed`). */
function seededRandom(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
}

/** A factory gives a fresh, unopened outbox; `reopen` gives a new instance over the same storage, if it has one. */
interface Harness {
  create(maxBytes: number): Promise<Outbox>;
  cleanup(): Promise<void>;
}

/**
 * One suite, run against every implementation (as MQTT.js does for its
 * stores): both must behave the same for everything but durability.
 */
function outboxSuite(name: string, makeHarness: () => Harness): void {
  describe(`Outbox contract: ${name}`, () => {
    let h: Harness;
    const opened: Outbox[] = [];
    async function make(maxBytes = 1 << 30): Promise<Outbox> {
      const ob = await h.create(maxBytes);
      await ob.open();
      opened.push(ob);
      return ob;
    }

    beforeEach(() => {
      h = makeHarness();
    });
    afterEach(async () => {
      for (const ob of opened.splice(0)) await ob.close();
      await h.cleanup();
    });

    it('has a ULID epoch and assigns strictly increasing seqs in input order', async () => {
      const ob = await make();
      assert.match(ob.epoch, /^[0-9A-HJKMNP-TV-Z]{26}$/);
      const a = await ob.append([ev('info')]);
      const b = await ob.append([ev('info'), ev('critical'), ev('warning')]);
      const c = await Promise.all([ob.append([ev('info')]), ob.append([ev('info')])]);
      const seqs = [...a, ...b, ...c.flat()].map((e) => e.seq);
      assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6]);
      assert.equal(b[1].severity, 'critical');
      assert.equal(ob.stats().lastSeq, 6);
      // The stored JSON carries the seq.
      const stored = parsed(await readAll(ob));
      assert.deepEqual(stored.map((e) => e.seq).sort((x, y) => x! - y!), [1, 2, 3, 4, 5, 6]);
    });

    it('does not mutate the caller envelopes', async () => {
      const ob = await make();
      const e = ev('info');
      const [stored] = await ob.append([e]);
      assert.equal(e.seq, undefined);
      assert.equal(stored.seq, 1);
      assert.equal(stored.id, e.id);
    });

    it('reads critical first, then warning, then info, oldest first within each', async () => {
      const ob = await make();
      await ob.append([ev('info'), ev('warning'), ev('critical'), ev('info'), ev('critical'), ev('warning')]);
      const got = await readAll(ob);
      assert.deepEqual(
        got.map((e) => [e.severity, e.seq]),
        [
          ['critical', 3],
          ['critical', 5],
          ['warning', 2],
          ['warning', 6],
          ['info', 1],
          ['info', 4],
        ],
      );
      for (const e of got) assert.equal(e.bytes, Buffer.byteLength(e.json));
    });

    it('honours maxEvents, maxBytes (at least one event) and severities', async () => {
      const ob = await make();
      await ob.append([ev('info'), ev('info'), ev('info'), ev('critical')]);
      assert.deepEqual(
        (await ob.read({ maxEvents: 2, maxBytes: 1e9 })).map((e) => e.seq),
        [4, 1],
      );
      const one = await ob.read({ maxEvents: 10, maxBytes: 1 });
      assert.deepEqual(
        one.map((e) => e.seq),
        [4],
      );
      const size = one[0].bytes;
      const two = await ob.read({ maxEvents: 10, maxBytes: size * 2 + 10 });
      assert.equal(two.length, 2);
      assert.deepEqual(
        (await ob.read({ maxEvents: 10, maxBytes: 1e9, severities: ['info'] })).map((e) => e.seq),
        [1, 2, 3],
      );
      assert.deepEqual(await ob.read({ maxEvents: 0, maxBytes: 1e9 }), []);
    });

    it('skips excluded seqs and starts after the per-severity cursor', async () => {
      const ob = await make();
      await ob.append([ev('info'), ev('critical'), ev('info'), ev('critical'), ev('info')]);
      const inFlight = new Set([2, 3]);
      assert.deepEqual(
        (await ob.read({ maxEvents: 10, maxBytes: 1e9, exclude: (s) => inFlight.has(s) })).map((e) => e.seq),
        [4, 1, 5],
      );
      assert.deepEqual(
        (await ob.read({ maxEvents: 10, maxBytes: 1e9, after: { critical: 2, info: 3 } })).map((e) => e.seq),
        [4, 5],
      );
    });

    it('ack deletes inclusive ranges; unknown and repeated acks are harmless', async () => {
      const ob = await make();
      await ob.append([ev('info'), ev('warning'), ev('critical'), ev('info'), ev('info'), ev('info')]);
      // Seqs 1..3 were read (tracked), 4..6 were not: both paths must work.
      await ob.read({ maxEvents: 3, maxBytes: 1e9, severities: ['critical', 'warning'] });
      assert.equal(await ob.ack([[2, 3]]), 2);
      assert.equal(
        await ob.ack([
          [1, 1],
          [5, 5],
        ]),
        2,
      );
      assert.equal(await ob.ack([[1, 3]]), 0);
      assert.equal(await ob.ack([[100, 200]]), 0);
      assert.equal(await ob.ack([[7, 3]]), 0);
      assert.deepEqual(
        (await readAll(ob)).map((e) => e.seq),
        [4, 6],
      );
      const s = ob.stats();
      assert.equal(s.events, 2);
      assert.equal(s.bySeverity.info.events, 2);
      assert.equal(s.bySeverity.critical.events, 0);
      assert.equal(s.bySeverity.warning.bytes, 0);
      assert.equal(await ob.ack([[0, Number.MAX_SAFE_INTEGER]]), 2);
      assert.equal(ob.stats().events, 0);
      assert.equal(ob.stats().bytes, 0);
      assert.equal(ob.stats().oldestTs, null);
      await assert.rejects(
        ob.ack([[1.5, 2] as [number, number]]),
        (e) => isEdgewardError(e, 'EDGE_OUTBOX_BAD_ACK'),
      );
    });

    it('keeps stats: events and bytes per severity, oldest ts, last seq', async () => {
      const ob = await make(123_456);
      const s0 = ob.stats();
      assert.equal(s0.events, 0);
      assert.equal(s0.oldestTs, null);
      assert.equal(s0.maxBytes, 123_456);
      assert.equal(s0.epoch, ob.epoch);
      const early = makeEnvelope({ type: 'door.opened', source: { device: 'd' }, ts: '2020-01-01T00:00:00.000Z' }, IDS);
      await ob.append([ev('warning'), early, ev('critical')]);
      const all = await readAll(ob);
      const s = ob.stats();
      assert.equal(s.events, 3);
      assert.equal(
        s.bytes,
        all.reduce((n, e) => n + e.bytes, 0),
      );
      for (const sev of ['info', 'warning', 'critical'] as const) {
        const mine = all.filter((e) => e.severity === sev);
        assert.deepEqual(s.bySeverity[sev], { events: mine.length, bytes: mine.reduce((n, e) => n + e.bytes, 0) });
      }
      assert.equal(s.oldestTs, '2020-01-01T00:00:00.000Z');
      assert.equal(s.lastSeq, 3);
      await ob.ack([[2, 2]]);
      assert.notEqual(ob.stats().oldestTs, '2020-01-01T00:00:00.000Z');
    });

    it('refuses an append whose data is not JSON (BigInt, cycle) without failing the appends it shares a write with', async () => {
      const ob = await make();
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      const results = await Promise.allSettled([
        ob.append([ev('info')]),
        ob.append([ev('info', 'sensor.reading', { v: 10n as unknown as number })]),
        ob.append([ev('critical', 'fire.alarm', cyclic)]),
        ob.append([ev('warning')]),
      ]);
      assert.equal(results[0].status, 'fulfilled');
      assert.equal(results[3].status, 'fulfilled');
      for (const r of [results[1], results[2]]) {
        assert.equal(r.status, 'rejected');
        assert.ok(isEdgewardError((r as PromiseRejectedResult).reason, 'EDGE_OUTBOX_INVALID'), String((r as PromiseRejectedResult).reason));
      }
      const seqs = (await readAll(ob)).map((e) => e.seq).sort((a, b) => a - b);
      assert.deepEqual(seqs, [1, 2], 'no seq spent on the refused appends');
    });

    it('recent() gives the newest appended envelopes first, acked or not', async () => {
      const ob = await make();
      await ob.append([ev('info'), ev('critical')]);
      await ob.append([ev('warning')]);
      await ob.ack([[1, 3]]);
      assert.deepEqual(
        ob.recent(10).map((e) => e.seq),
        [3, 2, 1],
      );
      assert.deepEqual(
        ob.recent(2).map((e) => e.seq),
        [3, 2],
      );
      const many = Array.from({ length: 1100 }, () => ev('info'));
      await ob.append(many);
      const r = ob.recent(5000);
      assert.equal(r.length, 1000);
      assert.equal(r[0].seq, 1103);
      assert.equal(r[999].seq, 104);
    });

    it('notifies onAppend with the severities written; unsubscribe stops it', async () => {
      const ob = await make();
      const seen: Severity[][] = [];
      const off = ob.onAppend((s) => seen.push([...s].sort()));
      await ob.append([ev('info'), ev('critical')]);
      off();
      await ob.append([ev('warning')]);
      assert.deepEqual(seen, [['critical', 'info']]);
    });

    it('evicts the oldest info events first and appends an overflow event', async () => {
      const batches = [
        Array.from({ length: 15 }, () => ev('info')),
        Array.from({ length: 5 }, () => ev('warning', 'door.held_open')),
        [ev('critical', 'door.forced')],
        Array.from({ length: 5 }, () => ev('info', 'sensor.reading', { v: 1 })),
      ];
      const pending = Array.from({ length: 8 }, () => ev('info', 'sensor.reading', { v: 2 }));
      // Room for everything but `pending` (plus a little): that last write must evict.
      const maxBytes = sumSize(batches.flat()) + 100;
      const ob = await make(maxBytes);
      const [firstInfo, warnings, crits, sensors] = [
        await ob.append(batches[0]),
        await ob.append(batches[1]),
        await ob.append(batches[2]),
        await ob.append(batches[3]),
      ];
      assert.ok(ob.stats().bytes <= maxBytes, 'not yet full');
      assert.equal(ob.stats().events, 26, 'nothing evicted yet');
      const lastSeqBefore = ob.stats().lastSeq;
      // This needs room: some of the oldest door.opened (info) events must go, nothing else.
      const more = await ob.append(pending);
      const stored = parsed(await readAll(ob));
      const storedSeqs = new Set(stored.map((e) => e.seq));
      const overflow = stored.filter((e) => e.type === 'edge.outbox_overflow');
      assert.equal(overflow.length, 1, 'one overflow event');
      const o = overflow[0];
      assert.equal(o.severity, 'warning');
      assert.equal(o.seq, lastSeqBefore + 9, 'overflow event follows the events of the write');
      assert.deepEqual(o.source, { device: IDS.edge, driver: 'outbox' });
      assert.ok(o.msg?.zh && o.msg.bo && o.msg.en, 'trilingual message');
      const d = o.data as {
        evicted: number;
        byType: Record<string, number>;
        bySeverity: { info: number; warning: number };
        fromSeq: number;
        toSeq: number;
        fromTs: string;
        toTs: string;
      };
      assert.ok(d.evicted > 0);
      assert.deepEqual(d.byType, { 'door.opened': d.evicted });
      assert.deepEqual(d.bySeverity, { info: d.evicted, warning: 0 });
      assert.equal(d.fromSeq, firstInfo[0].seq);
      assert.equal(d.toSeq, firstInfo[d.evicted - 1].seq);
      assert.equal(d.fromTs, firstInfo[0].ts);
      assert.equal(d.toTs, firstInfo[d.evicted - 1].ts);
      // Exactly the oldest info events are gone.
      for (const e of firstInfo) assert.equal(storedSeqs.has(e.seq), e.seq! > d.toSeq, `info seq ${e.seq}`);
      for (const e of [...warnings, ...crits, ...sensors, ...more]) assert.ok(storedSeqs.has(e.seq), `seq ${e.seq} kept`);
      assert.ok(ob.stats().bytes <= maxBytes, `${ob.stats().bytes} <= ${maxBytes}`);
      assert.equal(ob.stats().events, stored.length);
      assert.ok(ob.recent(1)[0].type === 'edge.outbox_overflow');
    });

    it('merges overflow events no reader has seen; starts a new one after a read', async () => {
      const fill = Array.from({ length: 20 }, () => ev('info'));
      const maxBytes = sumSize(fill) + 100;
      const ob = await make(maxBytes);
      await ob.append(fill);
      const overflows = async () =>
        parsed(await readAll(ob)).filter((e) => e.type === 'edge.outbox_overflow') as Array<
          Envelope & { data: { evicted: number; fromSeq: number; toSeq: number; byType: Record<string, number> } }
        >;
      // Two evicting writes, nobody reads in between: one overflow event covering both.
      await ob.append(Array.from({ length: 5 }, () => ev('info')));
      const [first] = await ob.read({ maxEvents: 1, maxBytes: 1e9, severities: ['warning'] }).then(parsed);
      assert.equal(first.type, 'edge.outbox_overflow');
      const n1 = (first.data as { evicted: number }).evicted;
      // That read handed the event out: the next eviction must write a new one, not replace it.
      await ob.append(Array.from({ length: 5 }, () => ev('info')));
      await ob.append(Array.from({ length: 5 }, () => ev('info')));
      const after = await overflows();
      assert.equal(after.length, 2, 'the event already read stays; later evictions merge into one new event');
      assert.equal(after[0].seq, first.seq);
      const merged = after[1];
      assert.ok(merged.data.evicted > 0);
      assert.equal(merged.data.fromSeq, (first.data as { toSeq: number }).toSeq + 1, 'ranges continue');
      // Everything evicted is accounted for exactly once across the overflow events.
      const lost = 20 + 15 - (await readAll(ob)).filter((e) => !e.json.includes('edge.outbox_overflow')).length;
      assert.equal(n1 + merged.data.evicted, lost);
      assert.deepEqual(merged.data.byType, { 'door.opened': merged.data.evicted });
      assert.ok(ob.stats().bytes <= maxBytes);
    });

    it('folds an unread overflow event that is itself evicted into the next one: every loss reported once', async () => {
      const w = () => ev('warning', 'door.held_open');
      const fill = Array.from({ length: 10 }, w);
      const maxBytes = sumSize(fill) + 100;
      const ob = await make(maxBytes);
      await ob.append(fill);
      // Only warnings are stored: the first eviction's overflow event is a warning among them.
      await ob.append(Array.from({ length: 3 }, w));
      // recent() is not a read: the overflow event stays unread.
      const first = ob.recent(1)[0];
      assert.equal(first.type, 'edge.outbox_overflow', 'first overflow event');
      // Nobody reads. A write as big as the bound evicts every older warning, the overflow event too.
      const appended = 10 + 3 + 9;
      await ob.append(Array.from({ length: 9 }, w));
      const stored = parsed(await readAll(ob));
      const overflows = stored.filter((e) => e.type === 'edge.outbox_overflow');
      assert.equal(overflows.length, 1, 'one overflow event left');
      assert.notEqual(overflows[0].seq, first.seq, 'the first one was evicted');
      const d = overflows[0].data as { evicted: number; byType: Record<string, number>; fromSeq: number };
      const lost = appended - stored.filter((e) => e.type === 'door.held_open').length;
      assert.equal(d.evicted, lost, 'the losses the evicted report carried are in the new one');
      assert.deepEqual(d.byType, { 'door.held_open': lost }, 'the report itself is not counted as a lost event');
      assert.equal(d.fromSeq, (first.data as { fromSeq: number }).fromSeq);
    });

    it('folds an overflow event handed out but not acknowledged, when evicted, into the next one: it may never have arrived', async () => {
      const w = () => ev('warning', 'door.held_open');
      const fill = Array.from({ length: 10 }, w);
      const ob = await make(sumSize(fill) + 100);
      await ob.append(fill);
      await ob.append(Array.from({ length: 3 }, w));
      // The uplink takes everything, the first overflow report included, and no ack comes.
      const handed = parsed(await ob.read({ maxEvents: 100, maxBytes: 1e9 }));
      const first = handed.find((e) => e.type === 'edge.outbox_overflow');
      assert.ok(first, 'the first overflow event was handed out');
      await ob.append(Array.from({ length: 9 }, w));
      const stored = parsed(await readAll(ob));
      assert.ok(!stored.some((e) => e.seq === first.seq), 'the handed-out report was evicted');
      const overflows = stored.filter((e) => e.type === 'edge.outbox_overflow');
      assert.equal(overflows.length, 1);
      const d = overflows[0].data as { evicted: number; byType: Record<string, number>; supersedes?: string[] };
      const lost = 10 + 3 + 9 - stored.filter((e) => e.type === 'door.held_open').length;
      assert.equal(d.evicted, lost, 'every lost event counted in the report that is left');
      assert.deepEqual(d.byType, { 'door.held_open': lost });
      // A central that got the first report too can tell which one this one includes.
      assert.deepEqual(d.supersedes, [first.id]);
    });

    it('an epoch\'s evictedTotal counts every evicted event once, across 80 reports handed out and evicted unacknowledged', async () => {
      // Found by a chaos run: past 64 superseded reports, the ids cut from `supersedes` made a
      // central that subtracts superseded reports count their evictions twice.
      const i = () => ev('info', 'door.opened');
      const probe = i();
      const one = sumSize([probe]);
      const ob = await make(one * 40 + 100);
      const appended = new Set<string>();
      const add = async (es: Envelope[]) => {
        for (const e of await ob.append(es)) appended.add(e.id);
      };
      await add(Array.from({ length: 40 }, i));
      const reports = new Map<string, { evicted: number; supersedes?: string[]; evictedTotal?: number }>();
      const handOut = async () => {
        for (const e of parsed(await ob.read({ maxEvents: 1e6, maxBytes: 1e9 }))) {
          if (e.type === 'edge.outbox_overflow') reports.set(e.id, e.data as { evicted: number });
        }
      };
      // Evicting writes, each report handed out (read) and never acknowledged, until more
      // reports than `supersedes` can name.
      for (let k = 0; k < 400 && reports.size <= 80; k++) {
        await add([i(), i()]);
        await handOut();
      }
      // Warnings nearly as big as what is stored: every info goes, and then the reports handed out.
      const w = () => ev('warning', 'door.held_open');
      await add(Array.from({ length: Math.floor((ob.stats().bytes - 1500) / sumSize([w()])) }, w));
      await handOut();
      const stored = new Set(parsed(await readAll(ob)).map((e) => e.id));
      const evicted = [...appended].filter((id) => !stored.has(id)).length;
      const newest = [...reports.values()].at(-1)!;
      assert.equal(newest.evictedTotal, evicted, 'the newest report counts every evicted event, once');
      const totals = [...reports.values()].map((d) => d.evictedTotal ?? 0);
      assert.deepEqual(totals, [...totals].sort((a, b) => a - b), 'evictedTotal only grows');
      assert.ok(reports.size > 64, `${reports.size} reports handed out: more than supersedes can name`);
    });

    it('evicts the oldest warnings once no info is left (for any append, info too), and never a critical', async () => {
      const c4 = Array.from({ length: 4 }, () => ev('critical', 'fire.alarm'));
      const w6 = Array.from({ length: 6 }, () => ev('warning', 'door.held_open'));
      const i3 = Array.from({ length: 3 }, () => ev('info'));
      const maxBytes = sumSize([...c4, ...w6]) + 100;
      const ob = await make(maxBytes);
      const crits = await ob.append(c4);
      const warns = await ob.append(w6);
      assert.equal(ob.stats().events, 10, 'nothing evicted yet');
      // No info is stored: the oldest warnings make room, as the eviction order says.
      const extra = await ob.append(i3);
      const stored = parsed(await readAll(ob));
      const seqs = new Set(stored.map((e) => e.seq));
      for (const e of crits) assert.ok(seqs.has(e.seq), 'critical kept');
      const o = stored.find((e) => e.type === 'edge.outbox_overflow');
      assert.ok(o, 'overflow event present');
      const d = o.data as { evicted: number; bySeverity: { info: number; warning: number }; byType: Record<string, number> };
      assert.ok(d.evicted > 0);
      assert.equal(d.bySeverity.info, 0);
      assert.equal(d.bySeverity.warning, d.evicted);
      assert.deepEqual(d.byType, { 'door.held_open': d.evicted });
      for (const [i, e] of warns.entries()) assert.equal(seqs.has(e.seq), i >= d.evicted, `warning ${i}`);
      for (const e of extra) assert.ok(seqs.has(e.seq));
    });

    it('stores the overflow event with the contract key order, like every other event', async () => {
      const ob = await make(sumSize(Array.from({ length: 4 }, () => ev('info'))) + 100);
      for (let i = 0; i < 2; i++) await ob.append(Array.from({ length: 3 }, () => ev('info')));
      const o = (await readAll(ob)).find((e) => e.json.includes('"edge.outbox_overflow"'));
      assert.ok(o, 'overflow event present');
      assert.deepEqual(Object.keys(JSON.parse(o.json)), ['id', 'seq', 'ts', 'site', 'edge', 'type', 'severity', 'source', 'data', 'msg', 'count']);
    });

    it('never evicts criticals: accepts them over the bound, then refuses non-critical with EDGE_OUTBOX_FULL', async () => {
      const probe = JSON.stringify({ ...ev('critical', 'fire.alarm'), seq: 10 }).length;
      const maxBytes = probe * 5;
      const ob = await make(maxBytes);
      await ob.append(Array.from({ length: 3 }, () => ev('info')));
      const crits = await ob.append(Array.from({ length: 8 }, () => ev('critical', 'fire.alarm')));
      assert.equal(crits.length, 8);
      const s = ob.stats();
      assert.equal(s.bySeverity.critical.events, 8);
      assert.equal(s.bySeverity.info.events, 0, 'info evicted to make room for criticals');
      assert.ok(s.bytes > maxBytes, 'over the bound with criticals');
      // The overflow warning itself is evictable: a further critical can push it out, never a critical.
      await assert.rejects(ob.append([ev('info')]), (e) => isEdgewardError(e, 'EDGE_OUTBOX_FULL'));
      await assert.rejects(ob.append([ev('warning', 'door.held_open')]), (e) => isEdgewardError(e, 'EDGE_OUTBOX_FULL'));
      const c = await ob.append([ev('critical', 'door.forced')]);
      const seqs = new Set((await readAll(ob)).map((e) => e.seq));
      for (const e of [...crits, ...c]) assert.ok(seqs.has(e.seq!));
      // A refused append consumed no seq beyond what was stored.
      assert.equal(Math.max(...seqs), ob.stats().lastSeq);
    });

    it('refuses a single non-critical event larger than the whole bound', async () => {
      const ob = await make(2000);
      await assert.rejects(ob.append([ev('info', 'sensor.reading', { blob: 'x'.repeat(5000) })]), (e) =>
        isEdgewardError(e, 'EDGE_OUTBOX_FULL'),
      );
      assert.equal(ob.stats().events, 0);
      assert.equal(ob.stats().lastSeq, 0);
    });

    it('rejects events without a valid severity (EDGE_OUTBOX_INVALID) and stores nothing', async () => {
      const ob = await make();
      const bad = { ...ev('info'), severity: 'urgent' } as unknown as Envelope;
      await assert.rejects(ob.append([ev('info'), bad]), (e) => isEdgewardError(e, 'EDGE_OUTBOX_INVALID'));
      assert.equal(ob.stats().events, 0);
      assert.equal(ob.stats().lastSeq, 0);
    });

    it('with maxEventBytes refuses a whole append holding a larger event (EDGE_OUTBOX_EVENT_TOO_LARGE), and only that append', async () => {
      const ob = await make();
      const big = makeEnvelope({ type: 'camera.motion', source: { device: 'cam-1' }, data: { pad: 'x'.repeat(2000) } }, IDS);
      const small = ev('info');
      const [refused, fine] = await Promise.allSettled([
        ob.append([ev('critical'), big], { maxEventBytes: 1500 }),
        ob.append([small], { maxEventBytes: 1500 }),
      ]);
      assert.equal(refused.status, 'rejected');
      const err = (refused as PromiseRejectedResult).reason;
      assert.ok(isEdgewardError(err, 'EDGE_OUTBOX_EVENT_TOO_LARGE'));
      const d = err.details as { index: number; bytes: number; maxEventBytes: number };
      assert.deepEqual(
        { index: d.index, maxEventBytes: d.maxEventBytes, over: d.bytes > 1500 },
        { index: 1, maxEventBytes: 1500, over: true },
      );
      assert.equal(fine.status, 'fulfilled');
      assert.equal(ob.stats().events, 1, 'only the other append');
      assert.equal((await ob.append([big]))[0].seq, 2, 'no limit, no refusal; no seq was used by the refused append');
    });

    it('rejects use before open with EDGE_OUTBOX_NOT_OPEN', async () => {
      const ob = await h.create(1e6);
      await assert.rejects(ob.append([ev('info')]), (e) => isEdgewardError(e, 'EDGE_OUTBOX_NOT_OPEN'));
    });
  });
}

outboxSuite('MemoryOutbox', () => ({
  create: async (maxBytes) => new MemoryOutbox({ maxBytes, ...IDS }),
  cleanup: async () => undefined,
}));

const levelDirs: TmpDir[] = [];
outboxSuite('LevelOutbox', () => ({
  create: async (maxBytes) => {
    const d = await tmpDir('outbox');
    levelDirs.push(d);
    return new LevelOutbox({ dir: d.path, maxBytes, ...IDS });
  },
  cleanup: async () => {
    for (const d of levelDirs.splice(0)) await d.cleanup();
  },
}));

describe('LevelOutbox (durable)', () => {
  let dir: TmpDir;
  const toClose: LevelOutbox[] = [];
  beforeEach(async () => {
    dir = await tmpDir('outbox');
  });
  afterEach(async () => {
    for (const ob of toClose.splice(0)) await ob.close();
    await dir.cleanup();
  });
  async function open(maxBytes = 1 << 30): Promise<LevelOutbox> {
    const ob = new LevelOutbox({ dir: dir.path, maxBytes, ...IDS });
    await ob.open();
    toClose.push(ob);
    return ob;
  }
  /** `make()` opened (closed after the test). */
  async function opened(make: () => LevelOutbox): Promise<LevelOutbox> {
    const ob = make();
    await ob.open();
    toClose.push(ob);
    return ob;
  }
  /** Close `ob` and open `make()` over the same store. */
  async function reopened(ob: LevelOutbox, make: () => LevelOutbox): Promise<LevelOutbox> {
    await closeIt(ob);
    return opened(make);
  }
  async function closeIt(ob: LevelOutbox): Promise<void> {
    await ob.close();
    toClose.splice(toClose.indexOf(ob), 1);
  }

  it('a disk reserve with no room to be written says so (a restart after a release hid it)', async () => {
    // Twice a petabyte free is never there: the reserve cannot be written, as on a full disk after a restart.
    const ob = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, reserveBytes: 2 ** 50 });
    await ob.open();
    toClose.push(ob);
    await waitFor(() => ob.stats().reserveReleasedAt !== undefined, { message: 'the missing reserve reported' });
    // And a reserve that fits is written, and reported by nothing.
    const fits = new LevelOutbox({ dir: join(dir.path, 'second'), maxBytes: 1 << 30, ...IDS, reserveBytes: 1 << 20 });
    await fits.open();
    toClose.push(fits);
    await waitFor(() => existsSync(`${join(dir.path, 'second')}.reserve`), { message: 'reserve written' });
    await fits.close();
    toClose.splice(toClose.indexOf(fits), 1);
    assert.equal(statSync(`${join(dir.path, 'second')}.reserve`).size, 1 << 20);
  });

  it('keeps its disk reserve when a reopen lacks room for another reason than space (EIO, read-only)', async () => {
    const clock = new ManualClock();
    const ob = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, reserveBytes: 1 << 20, clock });
    await ob.open();
    toClose.push(ob);
    const reserve = `${dir.path}.reserve`;
    await waitFor(() => existsSync(reserve) && statSync(reserve).size === 1 << 20, { message: 'reserve written' });
    // The write probe fails (EISDIR stands in for EIO or a read-only disk), and so do writes.
    mkdirSync(join(dir.path, 'edgeward-write-probe'));
    const restore = replaceBatchWrites(ob, async () => {
      throw Object.assign(new Error('IO error: Input/output error'), { code: 'LEVEL_IO_ERROR' });
    });
    try {
      await assert.rejects(ob.append([ev('info')]));
      clock.advance(2000); // past the reopen back-off: the next append tries to reopen
      await assert.rejects(ob.append([ev('info')]));
    } finally {
      restore();
    }
    assert.equal(statSync(reserve).size, 1 << 20, 'the reserve is kept: deleting it gives no room on such a disk');
    assert.equal(ob.stats().reserveReleasedAt, undefined);
    rmSync(join(dir.path, 'edgeward-write-probe'), { recursive: true });
  });

  it('reports a spell of appends refused for a store full of alarms (stats().refusingFull), not past a clock stepped back', async () => {
    const clock = new ManualClock();
    const one = sumSize([ev('info')]);
    const ob = new LevelOutbox({ dir: dir.path, maxBytes: one * 4, ...IDS, reserveBytes: 0, clock });
    await ob.open();
    toClose.push(ob);
    // An append larger than the bound on a store without alarms: refused, but not "full of alarms".
    await assert.rejects(ob.append(Array.from({ length: 8 }, () => ev('info'))), (e) => isEdgewardError(e, 'EDGE_OUTBOX_FULL'));
    assert.equal(ob.stats().refusingFull, undefined);
    await ob.append(Array.from({ length: 6 }, () => ev('critical', 'fire.alarm')));
    await assert.rejects(ob.append([ev('info')]), (e) => isEdgewardError(e, 'EDGE_OUTBOX_FULL'));
    await assert.rejects(ob.append([ev('info'), ev('info')]), (e) => isEdgewardError(e, 'EDGE_OUTBOX_FULL'));
    assert.equal(ob.stats().refusingFull?.events, 3);
    await assert.rejects(ob.append(Array.from({ length: 8 }, () => ev('info'))), (e) => isEdgewardError(e, 'EDGE_OUTBOX_FULL'));
    assert.equal(ob.stats().refusingFull?.events, 3, 'an append larger than the whole bound is not counted');
    clock.advance(59_000);
    assert.equal(ob.stats().refusingFull?.events, 3, 'for a minute after the last refusal');
    clock.advance(2_000);
    assert.equal(ob.stats().refusingFull, undefined);
    await assert.rejects(ob.append([ev('info')]));
    assert.equal(ob.stats().refusingFull?.events, 1, 'a new spell');
    // NTP steps the wall clock back an hour: not reported for an hour.
    clock.jump(-3_600_000);
    assert.equal(ob.stats().refusingFull, undefined);
    await assert.rejects(ob.append([ev('info')]));
    const spell = ob.stats().refusingFull!;
    assert.equal(spell.events, 1, 'a refusal after the step starts a new spell');
    assert.ok(spell.since <= spell.last);
  });

  it('reopen keeps epoch, counters, recent and continues seq', async () => {
    const a = await open();
    const epoch = a.epoch;
    await a.append([ev('info'), ev('critical'), ev('warning'), ev('info')]);
    await a.ack([[1, 1]]);
    const statsBefore = a.stats();
    await closeIt(a);
    const b = await open();
    assert.equal(b.epoch, epoch);
    assert.deepEqual(b.stats(), statsBefore);
    // Acknowledged or not (SPEC: GET /api/v1/events): seq 1 was acked before the close.
    assert.deepEqual(
      b.recent(10).map((e) => e.seq),
      [4, 3, 2, 1],
    );
    const [e] = await b.append([ev('info')]);
    assert.equal(e.seq, 5);
    assert.deepEqual(
      (await readAll(b)).map((x) => x.seq),
      [2, 3, 4, 5],
    );
    // Seqs acked before the restart are not tracked any more: acks look them up.
    assert.equal(await b.ack([[2, 5]]), 4);
    assert.equal(b.stats().events, 0);
  });

  it('recent events survive a kill -9: the ring is snapshotted while events come in', async () => {
    const ob = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, recentSaveMs: 20, recentMaxAgeMs: 20 });
    await ob.open();
    toClose.push(ob);
    const stored = await ob.append(Array.from({ length: 6 }, () => ev('info')));
    assert.equal(await ob.ack([[1, 6]]), 6, 'all acknowledged: only the snapshot still has them');
    // What a kill -9 leaves on disk: a copy of the open store's files.
    const copy = await tmpDir('outbox-copy');
    try {
      await waitFor(
        async () => {
          await rm(copy.path, { recursive: true, force: true });
          await cp(dir.path, copy.path, { recursive: true });
          const b = new LevelOutbox({ dir: copy.path, maxBytes: 1 << 30, ...IDS });
          await b.open();
          try {
            return b.recent(10).map((e) => e.id).join() === stored.map((e) => e.id).reverse().join();
          } finally {
            await b.close();
          }
        },
        { message: 'acknowledged events in recent() of a store copied while open', timeoutMs: 10_000 },
      );
    } finally {
      await copy.cleanup();
    }
  });

  it('rewrites the recent snapshot once a quarter of the ring is new or a change is old, not at every look (SD cards)', async () => {
    const written: number[] = [];
    const log = pino({ level: 'debug' }, { write: (line: string) => {
      const r = JSON.parse(line) as { msg?: string; newEvents?: number };
      if (r.msg === 'outbox recent snapshot written') written.push(r.newEvents ?? -1);
    } });
    const ob = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, log, recentSaveMs: 5, recentMaxAgeMs: 60_000 });
    await ob.open();
    toClose.push(ob);
    // A quiet box: an event now and then, looks (every 5 ms) in between.
    for (let i = 0; i < 20; i++) {
      await ob.append([ev('info')]);
      await new Promise((r) => setTimeout(r, 5));
    }
    // A quarter of the ring new: written at the next look, with all 250 in it, so none before.
    await ob.append(Array.from({ length: 230 }, () => ev('info')));
    await waitFor(() => written.length >= 1, { message: 'the snapshot written' });
    assert.deepEqual(written, [250], 'one rewrite, not one per look with something new');
  });

  it('recent() and its snapshot keep what was stored, whatever a caller later does to the envelopes it got', async () => {
    const ob = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, recentSaveMs: 20, recentMaxAgeMs: 20 });
    await ob.open();
    toClose.push(ob);
    const [stored] = await ob.append([ev('info', 'door.opened', { door: 1 })]);
    // A flow downstream of edgeward-event gets this object as msg.payload and changes it.
    const data = stored.data as Record<string, unknown>;
    data.big = 10n;
    data.self = data;
    assert.deepEqual(ob.recent(1)[0].data, { door: 1 }, 'recent() shows what was stored');
    await ob.append([ev('info')]); // a change for the snapshot timer to write
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      await closeIt(ob); // the final snapshot write must not throw either
    } finally {
      process.off('uncaughtException', onUncaught);
    }
    assert.deepEqual(uncaught, []);
    const b = await open();
    assert.deepEqual(
      b.recent(2).map((e) => e.data),
      [{ door: 0 }, { door: 1 }],
    );
  });

  it('hands out criticals the same from memory and from LevelDB (before/after reopen, past the cache bound)', async () => {
    const a = await open();
    const first = await a.append([ev('critical'), ev('info'), ev('critical'), ev('critical')]);
    const critSeqs = first.filter((e) => e.severity === 'critical').map((e) => e.seq!);
    const readCrit = async (ob: LevelOutbox, after = 0) =>
      (await ob.read({ maxEvents: 100_000, maxBytes: Number.MAX_SAFE_INTEGER, severities: ['critical'], after: { critical: after } })).map(
        (x) => x.seq,
      );
    assert.deepEqual(await readCrit(a), critSeqs);
    assert.deepEqual(await readCrit(a, critSeqs[0]), critSeqs.slice(1));
    await a.ack([[critSeqs[1], critSeqs[1]]]);
    assert.deepEqual(await readCrit(a), [critSeqs[0], critSeqs[2]]);
    await closeIt(a);
    // After a restart they come from the store (and are cached again).
    const b = await open();
    assert.deepEqual(await readCrit(b), [critSeqs[0], critSeqs[2]]);
    const [late] = await b.append([ev('critical')]);
    assert.deepEqual(await readCrit(b), [critSeqs[0], critSeqs[2], late.seq!]);
    // Past 10,000 stored criticals reads fall back to LevelDB: same answer.
    const burst: Envelope[] = [];
    for (let i = 0; i < 10_001; i++) burst.push(ev('critical'));
    const stored = await b.append(burst);
    const all = await readCrit(b);
    assert.equal(all.length, 10_004);
    assert.deepEqual(all.slice(0, 3), [critSeqs[0], critSeqs[2], late.seq]);
    assert.equal(all[all.length - 1], stored[stored.length - 1].seq);
    // Drained, the cache is complete again (empty), and new criticals are served.
    await b.ack([[1, stored[stored.length - 1].seq!]]);
    assert.deepEqual(await readCrit(b), []);
    const [again] = await b.append([ev('critical')]);
    assert.deepEqual(await readCrit(b), [again.seq]);
  });

  it('hands out the same events as the reference MemoryOutbox, hot tail or LevelDB (random reads, rewinds, acks, reopens)', async function () {
    this.timeout(30_000);
    // A tiny hot tail so reads cross between memory and LevelDB all the time.
    const make = () =>
      new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, hotTailBytes: { critical: 1500, warning: 1200, info: 3000 } });
    let level = await opened(make);
    const mem = new MemoryOutbox({ maxBytes: 1 << 30, ...IDS });
    await mem.open();
    const rnd = seededRandom(42);
    const sevs: Severity[] = ['info', 'warning', 'critical'];
    const cursor: Record<Severity, number> = { critical: 0, warning: 0, info: 0 };
    for (let step = 0; step < 600; step++) {
      const op = rnd(10);
      if (op < 4) {
        const batch = Array.from({ length: 1 + rnd(12) }, () => ev(sevs[rnd(10) < 6 ? 0 : rnd(3)]));
        const a = await level.append(batch);
        const b = await mem.append(batch);
        assert.deepEqual(
          a.map((e) => e.seq),
          b.map((e) => e.seq),
        );
      } else if (op < 8) {
        const opts = {
          maxEvents: 1 + rnd(20),
          maxBytes: 400 + rnd(4000),
          exclude: rnd(3) === 0 ? (seq: number) => seq % 7 === 0 : undefined,
          after: { ...cursor },
        };
        const a = await level.read(opts);
        const b = await mem.read(opts);
        assert.deepEqual(
          a.map((e) => [e.seq, e.json]),
          b.map((e) => [e.seq, e.json]),
          `read at step ${step}`,
        );
        for (const e of a) cursor[e.severity] = Math.max(cursor[e.severity], e.seq);
      } else if (op === 8) {
        // A rewind (resend after a timeout or reconnect), sometimes to the start.
        const sev = sevs[rnd(3)];
        cursor[sev] = rnd(2) === 0 ? 0 : Math.max(0, cursor[sev] - rnd(15));
      } else {
        const last = level.stats().lastSeq;
        const from = 1 + rnd(Math.max(1, last));
        const range: [number, number] = [from, from + rnd(10)];
        assert.equal(await level.ack([range]), await mem.ack([range]), `ack at step ${step}`);
      }
      if (step % 150 === 149) {
        level = await reopened(level, make);
      }
    }
    assert.equal(level.stats().events, mem.stats().events);
  });

  it('evicts the same events as the reference MemoryOutbox (random appends, reads, acks, reopens)', async function () {
    this.timeout(30_000);
    // A bound of ~40 events: most appends evict. A tiny hot tail: reads go to LevelDB too.
    const maxBytes = 40 * sizeOf(ev('info'));
    const make = () => new LevelOutbox({ dir: dir.path, maxBytes, ...IDS, hotTailBytes: { critical: 600, warning: 600, info: 900 } });
    let level = await opened(make);
    const mem = new MemoryOutbox({ maxBytes, ...IDS });
    await mem.open();
    const rnd = seededRandom(7);
    // The overflow reports' ids and times differ between the two stores; everything else must not.
    const same = (e: StoredEvent) => {
      const { type } = JSON.parse(e.json) as Envelope;
      return [e.seq, e.severity, type, type === 'edge.outbox_overflow' ? '' : e.json];
    };
    const sevs: Severity[] = ['info', 'info', 'info', 'warning', 'warning', 'critical'];
    const cursor: Record<Severity, number> = { critical: 0, warning: 0, info: 0 };
    for (let step = 0; step < 500; step++) {
      const op = rnd(10);
      if (op < 5) {
        const batch = Array.from({ length: 1 + rnd(8) }, () => ev(sevs[rnd(sevs.length)]));
        assert.deepEqual(
          (await level.append(batch)).map((e) => e.seq),
          (await mem.append(batch)).map((e) => e.seq),
          `append at step ${step}`,
        );
      } else if (op < 8) {
        const opts = { maxEvents: 1 + rnd(30), maxBytes: 1e9, after: { ...cursor } };
        const a = await level.read(opts);
        assert.deepEqual(a.map(same), (await mem.read(opts)).map(same), `read at step ${step}`);
        for (const e of a) cursor[e.severity] = Math.max(cursor[e.severity], e.seq);
        if (rnd(3) === 0) for (const sev of ['critical', 'warning', 'info'] as const) cursor[sev] = 0;
      } else if (op === 8) {
        const from = 1 + rnd(Math.max(1, level.stats().lastSeq));
        const range: [number, number] = [from, from + rnd(6)];
        assert.equal(await level.ack([range]), await mem.ack([range]), `ack at step ${step}`);
      } else if (rnd(3) === 0) {
        level = await reopened(level, make);
      }
      assert.equal(level.stats().events, mem.stats().events, `events stored at step ${step}`);
    }
    const all = { maxEvents: 1e6, maxBytes: 1e9 };
    assert.deepEqual((await level.read(all)).map(same), (await mem.read(all)).map(same));
  });

  it('group commits of several evicting appends evict the oldest first and lose no kept event from reads', async function () {
    this.timeout(30_000);
    const maxBytes = 40 * sizeOf(ev('info'));
    const make = () => new LevelOutbox({ dir: dir.path, maxBytes, ...IDS, hotTailBytes: { critical: 600, warning: 600, info: 900 } });
    let ob = await opened(make);
    const rnd = seededRandom(11);
    /** Ids of the info and warning events appended and not acked, oldest first. */
    const live: Record<'info' | 'warning', string[]> = { info: [], warning: [] };
    const acked = new Set<number>();
    const seqOf = new Map<string, number>();
    for (let step = 0; step < 300; step++) {
      const op = rnd(10);
      if (op < 6) {
        // 1-4 appends taken in one group commit, each of which may evict.
        const appends = Array.from({ length: 1 + rnd(4) }, () =>
          Array.from({ length: 1 + rnd(8) }, () => ev(rnd(10) < 7 ? 'info' : 'warning')),
        );
        for (const stored of await Promise.all(appends.map((batch) => ob.append(batch)))) {
          for (const e of stored) {
            live[e.severity as 'info' | 'warning'].push(e.id);
            seqOf.set(e.id, e.seq!);
          }
        }
      } else if (op < 9) {
        const from = 1 + rnd(Math.max(1, ob.stats().lastSeq));
        const range: [number, number] = [from, from + rnd(6)];
        const last = ob.stats().lastSeq;
        await ob.ack([range]);
        for (let seq = range[0]; seq <= Math.min(range[1], last); seq++) acked.add(seq);
      } else {
        ob = await reopened(ob, make);
      }
      const stored = parsed(await readAll(ob));
      assert.equal(stored.length, ob.stats().events, `reads hand out every stored event (step ${step})`);
      for (const sev of ['info', 'warning'] as const) {
        const kept = stored.filter((e) => e.severity === sev && e.type !== 'edge.outbox_overflow');
        // Acked or evicted leave; what is left of the rest is its newest part.
        const unacked = live[sev].filter((id) => !acked.has(seqOf.get(id)!));
        const expected = unacked.slice(unacked.length - kept.length);
        assert.deepEqual(
          kept.map((e) => e.id),
          expected,
          `${sev}: the oldest unacked are evicted first (step ${step})`,
        );
      }
    }
  });

  it('an eviction leaves the exact oldest event as head: oldestTs right at once, no lookup', async () => {
    const at = (i: number) =>
      makeEnvelope({ type: 'door.opened', source: { device: 'd' }, ts: new Date(Date.UTC(2020, 0, 1, 0, 0, i)).toISOString() }, IDS);
    const fill = Array.from({ length: 20 }, (_, i) => at(i));
    const ob = await open(sumSize(fill) + 100);
    await ob.append(fill);
    const lookups = countHeadLookups(ob);
    // Two evicting writes in a row: the second must not start from the first one's evictions.
    await ob.append([at(20), at(21)]);
    await ob.append([at(22), at(23), at(24)]);
    const oldestTs = ob.stats().oldestTs;
    assert.equal(lookups.n, 0, 'the head was looked up: eviction left it stale');
    const kept = parsed(await readAll(ob)).filter((e) => e.type === 'door.opened');
    assert.ok(kept.length < 25, 'something was evicted');
    assert.equal(oldestTs, kept[0].ts);
  });

  it('evicting warnings from a store with no info reads no info range (it would walk the tombstones past it)', async () => {
    const fill = Array.from({ length: 20 }, () => ev('warning'));
    const ob = await open(sumSize(fill) + 100);
    await ob.append(fill);
    const db = (ob as unknown as { db: { iterator: (o: { gt?: string; gte?: string }) => unknown } }).db;
    const realIterator = db.iterator.bind(db);
    const starts: string[] = [];
    db.iterator = (o) => {
      starts.push(o.gt ?? o.gte ?? '');
      return realIterator(o);
    };
    await ob.append([ev('warning'), ev('warning')]);
    assert.ok(starts.some((k) => k.startsWith('e!w!')), `the warnings were read for eviction: ${starts}`);
    assert.deepEqual(
      starts.filter((k) => k.startsWith('e!i!')),
      [],
      'an info range was read',
    );
  });

  it('keeps a key at the end of each severity range, written with the next batch also in a store made without them', async () => {
    const ends = ['e!c!~', 'e!i!~', 'e!w!~'];
    const rawKeys = async () => {
      const raw = new Level<string, string>(dir.path);
      await raw.open();
      const keys = await raw.keys({ gte: 'e!', lt: 'e!~' }).all();
      return { raw, keys };
    };
    const a = await open();
    await a.append([ev('info'), ev('critical')]);
    await closeIt(a);
    const { raw, keys } = await rawKeys();
    assert.deepEqual(
      keys.filter((k) => k.endsWith('~')),
      ends,
    );
    // A store from before them.
    await raw.batch(ends.map((key) => ({ type: 'del' as const, key })));
    await raw.close();
    const b = await open();
    assert.equal(b.stats().events, 2);
    await b.append([ev('warning')]);
    assert.deepEqual(
      parsed(await readAll(b)).map((e) => e.severity),
      ['critical', 'warning', 'info'],
      'never read as events',
    );
    assert.equal(b.stats().events, 3);
    await closeIt(b);
    const again = await rawKeys();
    await again.raw.close();
    assert.deepEqual(
      again.keys.filter((k) => k.endsWith('~')),
      ends,
    );
  });

  it('looks up a deleted head beside the writer: oldestTs catches up, a reopen in between needs no rescan', async () => {
    const warnings: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => warnings.push(JSON.parse(line).msg) });
    const at = (ts: string) => makeEnvelope({ type: 'door.opened', source: { device: 'd' }, ts }, IDS);
    const a = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, log });
    await a.open();
    toClose.push(a);
    await a.append([at('2020-01-01T00:00:00.000Z'), at('2020-01-02T00:00:00.000Z'), at('2020-01-03T00:00:00.000Z')]);
    await a.ack([[1, 1]]);
    // Right after the ack the oldest ts may still be the deleted one's (here older than the truth: ts grow with seq)…
    assert.ok(a.stats().oldestTs! <= '2020-01-02T00:00:00.000Z');
    // …and becomes exact once the lookup ran.
    await waitFor(() => a.stats().oldestTs === '2020-01-02T00:00:00.000Z', { message: 'oldestTs refreshed' });
    // Close right after a deleting ack, so the stored meta may hold a stale head: still consistent.
    await a.ack([[2, 2]]);
    await closeIt(a);
    const b = new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, log });
    await b.open();
    toClose.push(b);
    assert.deepEqual(warnings, [], 'no rescan on open');
    assert.equal(b.stats().events, 1);
    assert.deepEqual(
      (await readAll(b)).map((e) => e.seq),
      [3],
    );
    await waitFor(() => b.stats().oldestTs === '2020-01-03T00:00:00.000Z', { message: 'oldestTs after reopen' });
  });

  it('rate-limits head lookups under a stream of acks, and still ends with the exact head', async () => {
    const at = (d: number) => makeEnvelope({ type: 'door.opened', source: { device: 'd' }, ts: new Date(Date.UTC(2020, 0, 1, 0, 0, d)).toISOString() }, IDS);
    const ob = await open();
    const n = 60;
    await ob.append(Array.from({ length: n + 1 }, (_, i) => at(i)));
    const lookups = countHeadLookups(ob);
    // Every ack deletes the head: without the limit, each one starts a lookup.
    const t0 = performance.now();
    for (let seq = 1; seq <= n; seq++) await ob.ack([[seq, seq]]);
    const elapsed = performance.now() - t0;
    // One per started second (the limit is 1/s), plus the one that may run at the end.
    const allowed = Math.ceil(elapsed / 1000) + 1;
    assert.ok(lookups.n <= allowed, `${lookups.n} head lookups for ${n} acks in ${Math.round(elapsed)} ms (at most ${allowed})`);
    // The stale head is a lower bound meanwhile, and becomes exact without any further write.
    assert.ok(ob.stats().oldestTs! <= at(n).ts);
    await waitFor(() => ob.stats().oldestTs === at(n).ts, { message: 'oldestTs exact after the acks stopped' });
  });

  it('a read that spans a commit does not hand out what that commit deleted (a replaced overflow event)', async () => {
    const fill = Array.from({ length: 20 }, () => ev('info'));
    // No hot tail: every read goes to LevelDB, where it can be caught mid-way.
    const ob = new LevelOutbox({ dir: dir.path, maxBytes: sumSize(fill) + 100, ...IDS, hotTailBytes: { critical: 1, warning: 1, info: 1 } });
    await ob.open();
    toClose.push(ob);
    await ob.append(fill);
    await ob.append(Array.from({ length: 5 }, () => ev('info')));
    const first = ob.recent(1)[0];
    assert.equal(first.type, 'edge.outbox_overflow', 'an overflow event nobody has read');
    // Hold the next iterator's answer (the read's snapshot still has that event) until a commit replaced it.
    const db = (ob as unknown as { db: { iterator: (o: unknown) => { nextv: (...a: unknown[]) => Promise<unknown[]> } } }).db;
    const realIterator = db.iterator.bind(db);
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let armed = true;
    db.iterator = (o: unknown) => {
      const it = realIterator(o);
      if (!armed) return it;
      armed = false;
      const nextv = it.nextv.bind(it);
      it.nextv = async (...a: unknown[]) => {
        const got = await nextv(...a);
        await gate;
        return got;
      };
      return it;
    };
    const reading = ob.read({ maxEvents: 100, maxBytes: 1e9, severities: ['warning'] });
    await ob.append(Array.from({ length: 5 }, () => ev('info'))); // evicts again: the unread overflow event is replaced
    const merged = ob.recent(1)[0];
    assert.equal(merged.type, 'edge.outbox_overflow');
    assert.notEqual(merged.seq, first.seq);
    release();
    const got = (await reading).map((e) => e.seq);
    assert.ok(!got.includes(first.seq!), `the replaced overflow event ${first.seq} was handed out: ${got}`);
    const next = parsed(await ob.read({ maxEvents: 100, maxBytes: 1e9, severities: ['warning'] }));
    assert.deepEqual(
      next.map((e) => e.seq),
      [merged.seq],
      'only the merged one, which counts both evictions',
    );
  });

  it('a head found in a snapshot that a later ack deleted stays a lower bound and is looked up again', async () => {
    const at = (ts: string) => makeEnvelope({ type: 'door.opened', source: { device: 'd' }, ts }, IDS);
    const ob = await open();
    await ob.append([1, 2, 3, 4].map((d) => at(`2020-01-0${d}T00:00:00.000Z`)));
    // Hold the first lookup's answer until a second ack has committed.
    const inner = ob as unknown as { findHead: (...a: unknown[]) => Promise<unknown> };
    const real = inner.findHead.bind(ob);
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let calls = 0;
    inner.findHead = async (...a: unknown[]) => {
      const found = await real(...a); // the snapshot: seq 2 still stored
      if (++calls === 1) await gate;
      return found;
    };
    await ob.ack([[1, 1]]);
    await waitFor(() => calls === 1, { message: 'first head lookup started' });
    await ob.ack([[2, 2]]);
    release();
    await waitFor(() => ob.stats().oldestTs === '2020-01-03T00:00:00.000Z', { message: 'head moved past the deleted seq 2' });
    assert.ok(calls >= 2, 'looked up again');
  });

  it('recovers from a meta record that does not match the store (rescan, never reuse a seq)', async () => {
    const a = await open();
    const epoch = a.epoch;
    await a.append([ev('info'), ev('critical'), ev('info')]);
    await closeIt(a);
    // An event above lastSeq that the meta record does not know of.
    const raw = new Level<string, string>(dir.path);
    await raw.open();
    const stray = JSON.stringify({ ...ev('warning', 'door.held_open'), seq: 10 });
    await raw.put(eventKey('warning', 10), stray);
    await raw.close();
    const b = await open();
    assert.equal(b.epoch, epoch, 'epoch kept when only counters were off');
    assert.equal(b.stats().events, 4);
    assert.equal(b.stats().bySeverity.warning.bytes, Buffer.byteLength(stray));
    assert.equal(b.stats().lastSeq, 10);
    assert.equal((await b.append([ev('info')]))[0].seq, 11);
    await closeIt(b);
    // Meta record lost: counters rebuilt, a new epoch (the old seqs cannot be trusted fresh).
    const raw2 = new Level<string, string>(dir.path);
    await raw2.open();
    await raw2.del('m!meta');
    await raw2.close();
    const c = await open();
    assert.notEqual(c.epoch, epoch);
    assert.equal(c.stats().events, 5);
    assert.equal(c.stats().lastSeq, 11);
    assert.equal((await c.append([ev('info')]))[0].seq, 12);
  });

  it('a batch given up half-built (a failed eviction scan) rejects its jobs, changes nothing and is released', async () => {
    const full = Array.from({ length: 10 }, () => ev('info'));
    const ob = await open(sumSize(full) + 2 * sizeOf(ev('info')));
    await ob.append(full);
    const before = ob.stats();
    type Db = {
      _chainedBatch: () => unknown;
      detachResource: (r: unknown) => void;
      iterator: (...a: unknown[]) => { nextv: () => Promise<unknown>; close: () => Promise<void> };
    };
    const db = (ob as unknown as { db: Db }).db;
    const real = { chained: db._chainedBatch, detach: db.detachResource, iterator: db.iterator };
    const made: unknown[] = [];
    const detached: unknown[] = [];
    db._chainedBatch = function (this: unknown) {
      const b = real.chained.call(this);
      made.push(b);
      return b;
    };
    db.detachResource = function (this: unknown, r: unknown) {
      detached.push(r);
      return real.detach.call(this, r);
    };
    // The eviction's scan fails: a stand-in for an I/O error while reading.
    db.iterator = () => ({
      nextv: async () => {
        throw Object.assign(new Error('IO error: read failed'), { code: 'LEVEL_IO_ERROR' });
      },
      close: async () => undefined,
    });
    // One commit: the first append fits and is put into the native batch, the
    // second needs room, and its eviction scan throws mid-build.
    const results = await Promise.allSettled([ob.append([ev('info')]), ob.append(full.map(() => ev('info')))]);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.ok(isEdgewardError((r as PromiseRejectedResult).reason, 'EDGE_OUTBOX_WRITE_FAILED'));
    }
    const { writeError, writeFailures, ...after } = ob.stats();
    assert.deepEqual(after, before, 'nothing of the half-built batch was committed');
    assert.match(writeError?.message ?? '', /read failed/, 'the failure is reported');
    assert.equal(writeFailures, 1);
    assert.ok(made.length > 0, 'the first append had reached a native batch');
    assert.deepEqual(detached, made, 'every native batch was detached from the db');
    Object.assign(db, { _chainedBatch: real.chained, detachResource: real.detach, iterator: real.iterator });
    const [e] = await ob.append([ev('critical', 'door.forced')]);
    assert.equal(e.seq, before.lastSeq + 1, 'the seqs of the failed batch were never handed out');
    assert.equal(ob.stats().writeError, undefined, 'a write that succeeds ends the spell');
    await closeIt(ob);
  });

  it('a failed write (e.g. disk full) rejects with EDGE_OUTBOX_WRITE_FAILED, changes nothing, is reported, and the store is reopened before the next write', async () => {
    const ob = await open();
    await ob.append([ev('info'), ev('critical')]);
    const before = ob.stats();
    // Stand-in for ENOSPC from LevelDB: every batch write fails, on this handle and on any
    // reopened one, as on a full disk (the outbox writes through classic-level's chained
    // batch, `_chainedBatch()` … `_write()`). The real thing: test/integration/outbox-disk-full.
    const first = (ob as unknown as { db: object }).db;
    let failedWrites = 0;
    const restore = replaceBatchWrites(ob, async () => {
      failedWrites++;
      throw diskFull();
    });
    const health: boolean[] = [];
    const unsubscribe = ob.onWriteHealth((failing) => health.push(failing));
    const t0 = Date.now();
    try {
      const failed = await Promise.allSettled([ob.append([ev('info')]), ob.append([ev('warning')]), ob.ack([[1, 2]])]);
      for (const r of failed) {
        assert.equal(r.status, 'rejected');
        assert.ok(isEdgewardError((r as PromiseRejectedResult).reason, 'EDGE_OUTBOX_WRITE_FAILED'));
      }
    } finally {
      restore();
    }
    const { writeError, writeFailures, reserveReleasedAt, ...after } = ob.stats();
    assert.deepEqual(after, before);
    // "No space left": the disk reserve beside the store was released for the reopen.
    assert.equal(typeof reserveReleasedAt, 'string');
    assert.ok(failedWrites > 0, 'the writes went through the stubbed batch');
    // Reported while it lasts: since when, the store's own message, how many writes failed.
    assert.equal(writeError?.message, 'IO error: No space left on device');
    assert.ok(writeError!.failures >= failedWrites);
    assert.equal(writeFailures, writeError!.failures);
    assert.ok(Date.parse(writeError!.since) >= t0 - 1000 && Date.parse(writeError!.since) <= Date.now());
    assert.deepEqual(health, [true], 'listeners hear once that writes fail, not once per failed write');
    // The disk has room again. The next write goes to a reopened handle (LevelDB's log may end
    // in a torn record after a failed write); a reopen is tried at most once a second.
    const e = await waitFor(() => ob.append([ev('info')]).then(([x]) => x, () => undefined), {
      timeoutMs: 10_000,
      intervalMs: 50,
      message: 'an append succeeds once writes work again',
    });
    assert.notEqual((ob as unknown as { db: object }).db, first, 'the store was reopened');
    assert.equal(e.seq, 3, 'seqs of failed writes were never handed out');
    assert.equal(ob.stats().writeError, undefined, 'the first write that succeeds ends the spell');
    assert.ok(ob.stats().writeFailures! >= failedWrites, 'the count of failures since open stays');
    assert.deepEqual(health, [true, false]);
    unsubscribe();
    assert.equal(await ob.ack([[1, 2]]), 2);
    assert.equal(ob.stats().events, 1);
    assert.deepEqual(
      (await ob.read({ maxEvents: 10, maxBytes: 1 << 20 })).map((x) => x.seq),
      [3],
      'the reopened store holds exactly what was acknowledged',
    );
  });

  it('group commit: many concurrent appends share few synced batches', async () => {
    const ob = await open();
    const n = 2000;
    const results = await Promise.all(Array.from({ length: n }, () => ob.append([ev('info')])));
    const seqs = results.map((r) => r[0].seq!);
    assert.deepEqual(
      [...seqs].sort((x, y) => x - y),
      Array.from({ length: n }, (_, i) => i + 1),
    );
    // Appends resolve in seq order (one writer, FIFO).
    assert.deepEqual(
      seqs,
      Array.from({ length: n }, (_, i) => i + 1),
    );
    assert.ok(ob.writes < n / 20, `${ob.writes} batches for ${n} appends`);
    assert.equal(ob.stats().events, n);
  });

  it('group commit: appenders that come back after their commit all get into the next one', async () => {
    const ob = await open();
    // Like runtime.ingest under a driver: each appender's next append comes a few
    // promise hops after its last one resolved. Cutting the next batch at once
    // split them into alternating commits (1 append, then 7, and so on).
    const hops = async (depth: number, f: () => Promise<unknown>): Promise<unknown> => (depth === 0 ? f() : hops(depth - 1, f));
    const appenders = 8;
    const rounds = 25;
    const before = ob.writes;
    await Promise.all(
      Array.from({ length: appenders }, async () => {
        for (let r = 0; r < rounds; r++) await hops(3, () => ob.append([ev('info'), ev('info')]));
      }),
    );
    assert.equal(ob.stats().events, appenders * rounds * 2);
    const writes = ob.writes - before;
    assert.ok(writes <= rounds + 2, `${writes} writes for ${rounds} rounds of ${appenders} concurrent appenders`);
  });

  it('a critical append overtakes a backlog of queued appends (at most one batch behind)', async () => {
    const ob = await open();
    const order: string[] = [];
    const infos = Array.from({ length: 40 }, (_, i) =>
      ob.append(Array.from({ length: 500 }, () => ev('info'))).then((r) => {
        order.push(`info${i}`);
        return r;
      }),
    );
    const crit = ob.append([ev('critical', 'fire.alarm')]).then((r) => {
      order.push('critical');
      return r;
    });
    const [c] = await crit;
    const all = (await Promise.all(infos)).flat();
    assert.ok(order.indexOf('critical') <= 11, `critical resolved ${order.indexOf('critical')}th: ${order.join(',')}`);
    assert.ok(c.seq! < Math.max(...all.map((e) => e.seq!)));
    // Seqs stay unique and dense.
    const seqs = [c, ...all].map((e) => e.seq!).sort((x, y) => x - y);
    assert.deepEqual(
      seqs,
      Array.from({ length: 20_001 }, (_, i) => i + 1),
    );
    // The other appends kept their arrival order.
    assert.deepEqual(
      order.filter((o) => o !== 'critical'),
      Array.from({ length: 40 }, (_, i) => `info${i}`),
    );
  });

  it('acks and appends interleaved concurrently keep counters exact', async () => {
    const ob = await open();
    await ob.append(Array.from({ length: 300 }, (_, i) => ev(i % 10 === 0 ? 'critical' : 'info')));
    const batch = await ob.read({ maxEvents: 100, maxBytes: 1e9 });
    const ops: Promise<unknown>[] = [];
    for (const e of batch) ops.push(ob.ack([[e.seq, e.seq]]));
    for (let i = 0; i < 50; i++) ops.push(ob.append([ev('warning', 'door.held_open')]));
    ops.push(ob.ack([[250, 260]]));
    const deleted = new Set([...batch.map((e) => e.seq), ...Array.from({ length: 11 }, (_, i) => 250 + i)]);
    await Promise.all(ops);
    const all = await readAll(ob);
    const s = ob.stats();
    assert.equal(s.events, all.length);
    assert.equal(
      s.bytes,
      all.reduce((n, e) => n + e.bytes, 0),
    );
    assert.equal(s.events, 300 - deleted.size + 50);
    await closeIt(ob);
    const again = await open();
    assert.deepEqual(again.stats(), s);
  });

  it('acks of seqs nobody read are looked up before they queue: overlapping ones delete each event once', async () => {
    const ob = await open();
    await ob.append(Array.from({ length: 100 }, () => ev('info')));
    await ob.append([ev('critical'), ev('warning', 'door.held_open')]);
    // Never read here: both acks need lookups, which run concurrently and see 40-60 twice.
    const [a, b] = await Promise.all([ob.ack([[1, 60]]), ob.ack([[40, 101]])]);
    assert.equal(a + b, 101, `deleted ${a} + ${b}`);
    const s = ob.stats();
    assert.equal(s.events, 1);
    assert.equal(s.bySeverity.warning.events, 1);
    assert.equal(s.bytes, (await readAll(ob)).reduce((n, e) => n + e.bytes, 0));
    await closeIt(ob);
    assert.deepEqual((await open()).stats(), s);
  });

  it('an append (an alarm) does not wait for the lookup of an ack queued before it', async () => {
    const ob = await open();
    await ob.append(Array.from({ length: 10 }, () => ev('info')));
    // Hold the ack's lookup of untracked seqs (a LevelDB scan behind a busy thread pool).
    const internals = ob as unknown as { lookupStored: (r: Array<[number, number]>) => Promise<Map<number, number>> };
    const real = internals.lookupStored.bind(ob);
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => {
      release = r;
    });
    internals.lookupStored = async (r) => {
      await held;
      return real(r);
    };
    let acked = false;
    const ack = ob.ack([[1, 10]]).then((n) => {
      acked = true;
      return n;
    });
    const [alarm] = await ob.append([ev('critical')]);
    assert.equal(alarm.seq, 11);
    assert.equal(acked, false, 'the alarm was stored while the ack was still being looked up');
    release();
    assert.equal(await ack, 10);
    assert.equal(ob.stats().events, 1);
  });

  it('a bound lowered below what is stored evicts by steps: at most maxEvictionsPerWrite per write, every eviction reported', async () => {
    const a = await open();
    await a.append(Array.from({ length: 60 }, () => ev('info')));
    await a.append([ev('critical', 'door.forced')]);
    await closeIt(a);
    // The technician shrinks outbox.maxBytes to a tenth of what is stored.
    const stored = a.stats().bytes;
    const ob = new LevelOutbox({ dir: dir.path, maxBytes: Math.floor(stored / 10), ...IDS, maxEvictionsPerWrite: 20 });
    await ob.open();
    toClose.push(ob);
    const counts: number[] = [];
    for (let i = 0; i < 4; i++) {
      await ob.append([ev('info')]);
      counts.push(ob.stats().bySeverity.info.events);
    }
    // 60 info stored; each write adds one info (and one overflow warning, merged while unread)
    // and evicts 20 of the oldest: 41, 22, then within the bound.
    assert.deepEqual(counts.slice(0, 2), [41, 22]);
    assert.ok(ob.stats().bytes <= Math.floor(stored / 10), 'within the bound once enough writes came');
    assert.equal(ob.stats().bySeverity.critical.events, 1, 'never a critical');
    const overflow = parsed(await readAll(ob)).filter((e) => e.type === 'edge.outbox_overflow');
    assert.equal(overflow.length, 1, 'unread: one merged overflow event');
    const evicted = (overflow[0].data as unknown as OverflowData).evicted;
    assert.equal(evicted, 60 + 4 - ob.stats().bySeverity.info.events, 'every eviction reported');
  });

  describe('a store that does not open', () => {
    const storeIn = (parent: string) => join(parent, 'outbox');
    const OPENER = join(__dirname, '..', 'helpers', 'outbox-open.ts');
    async function filled(path: string, n: number): Promise<{ epoch: string; ids: string[] }> {
      const ob = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await ob.open();
      const stored = await ob.append(Array.from({ length: n }, (_, i) => ev(i % 10 === 0 ? 'critical' : 'info')));
      await ob.ack([[1, 5]]);
      const epoch = ob.epoch;
      await ob.close();
      return { epoch, ids: stored.slice(5).map((e) => e.id) };
    }

    it('with a damaged MANIFEST (a power cut on an SD card) is repaired at open: same epoch, every event back, acked ones stay gone', async () => {
      const path = storeIn(dir.path);
      const { epoch, ids } = await filled(path, 300);
      const manifest = readdirSync(path).find((f) => f.startsWith('MANIFEST-'))!;
      writeFileSync(join(path, manifest), 'not a manifest');
      // Without the repair this open fails ("no meta-nextfile entry in descriptor").
      const ob = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await ob.open();
      toClose.push(ob);
      assert.equal(ob.epoch, epoch);
      assert.equal(ob.stats().events, 295);
      const read = await ob.read({ maxEvents: 1000, maxBytes: 1 << 30 });
      assert.deepEqual(new Set(read.map((e) => (JSON.parse(e.json) as Envelope).id)), new Set(ids));
      const [next] = await ob.append([ev('info')]);
      assert.equal(next.seq, 301, 'no seq reused');
    });

    it('that cannot be repaired is moved aside, and a new store starts with an edge.events_lost saying so', async () => {
      const path = storeIn(dir.path);
      const { epoch } = await filled(path, 50);
      // CURRENT turned into a directory: neither open nor RepairDB get past it.
      rmSync(join(path, 'CURRENT'));
      mkdirSync(join(path, 'CURRENT', 'x'), { recursive: true });
      const ob = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await ob.open();
      toClose.push(ob);
      assert.notEqual(ob.epoch, epoch, 'a new store, a new epoch');
      const aside = readdirSync(dir.path).filter((f) => f.startsWith('outbox.unrecoverable-'));
      assert.equal(aside.length, 1, 'the old store is kept for a technician');
      assert.ok(readdirSync(join(dir.path, aside[0])).some((f) => /\.(log|ldb)$/.test(f)), 'with its files');
      const [report] = await ob.read({ maxEvents: 10, maxBytes: 1 << 30 });
      const e = JSON.parse(report.json) as Envelope;
      assert.equal(e.type, 'edge.events_lost');
      assert.equal(e.seq, 1);
      assert.deepEqual(e.source, { device: IDS.edge, driver: 'outbox' });
      assert.equal(e.data.reason, 'outbox_unrecoverable');
      assert.equal(e.data.movedTo, join(dir.path, aside[0]));
      assert.match(String(e.data.error), /CURRENT|dbtmp|directory/);
      assert.ok(e.msg?.zh && e.msg.bo && e.msg.en);
    });

    it('with a damaged table block (bit rot) opens, and the first read that hits it has the store repaired: the rest is sent, the loss reported', async () => {
      const path = storeIn(dir.path);
      const a = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await a.open();
      const all: Envelope[] = [];
      for (let i = 0; i < 40; i++) {
        const batch = Array.from({ length: 100 }, (_, k) =>
          makeEnvelope({ type: 'door.opened', source: { device: 'door-1' }, data: { i, k, pad: 'y'.repeat(300) } }, IDS),
        );
        all.push(...(await a.append(batch)));
      }
      const epoch = a.epoch;
      await a.close();
      // A reopen turns the log into a table (LevelDB's recovery); then damage one block of it.
      const b = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await b.open();
      await b.close();
      const table = readdirSync(path).find((f) => f.endsWith('.ldb'))!;
      const bytes = readFileSync(join(path, table));
      for (let i = 1000; i < 1100; i++) bytes[i] ^= 0xff;
      writeFileSync(join(path, table), bytes);

      const ob = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await ob.open();
      toClose.push(ob);
      assert.equal(ob.stats().events, 4000, 'the meta record still counts what was stored');
      const everything = { maxEvents: 100_000, maxBytes: 1 << 30 };
      await assert.rejects(ob.read(everything), (e) => (e as { code?: string }).code === 'LEVEL_CORRUPTION');
      const withReport = (r: StoredEvent[]) => (r.some((e) => e.json.includes('edge.events_lost')) ? r : undefined);
      const read = await waitFor(() => ob.read(everything).then(withReport), {
        timeoutMs: 20_000,
        message: 'reads work again after the repair, with the report',
      });
      assert.equal(ob.stats().corruption, undefined);
      assert.equal(ob.epoch, epoch);
      const envelopes = read.map((e) => JSON.parse(e.json) as Envelope);
      const report = envelopes.find((e) => e.type === 'edge.events_lost')!;
      const kept = envelopes.filter((e) => e.type === 'door.opened');
      assert.ok(kept.length > 3500 && kept.length < 4000, `${kept.length} of 4000 readable after the repair`);
      // Which message depends on what the flipped bytes hit (block contents, its type byte…).
      assert.match(String(report.data.error), /^Corruption: /);
      assert.deepEqual({ ...report.data, error: 'Corruption' }, { reason: 'outbox_corrupt', count: 4000 - kept.length, error: 'Corruption' });
      assert.equal(report.seq, 4001, 'no seq reused');
      assert.equal(ob.stats().events, kept.length + 1, 'recounted');
      const ids = new Set(all.map((e) => e.id));
      assert.ok(kept.every((e) => ids.has(e.id)), 'only events that were stored');
    });

    it('on a full disk is left as it is: no repair, nothing moved, every event there at the next open', async () => {
      const path = storeIn(dir.path);
      const { epoch, ids } = await filled(path, 2000);
      // Opened by a process that may write no file past 1 KiB: LevelDB's recovery cannot write
      // the table of its log (EFBIG, as ENOSPC on a full disk). A RepairDB here archived the
      // log into lost/ and left an empty store with a new epoch.
      const child = spawnSync('bash', ['-c', `ulimit -S -f 1 && exec "$@"`, 'open', process.execPath, '--import', 'tsx', OPENER, path], {
        cwd: join(__dirname, '..', '..'),
        encoding: 'utf8',
      });
      assert.equal(child.status, 0, child.stderr);
      const result = JSON.parse(child.stdout.trim()) as { ok: boolean; code?: string; message?: string };
      assert.deepEqual({ ok: result.ok, code: result.code }, { ok: false, code: 'EDGE_OUTBOX_OPEN_FAILED' });
      assert.match(result.message ?? '', /File too large/);
      assert.deepEqual(readdirSync(dir.path), ['outbox', 'outbox.reserve'], 'nothing moved aside (the disk reserve is beside the store)');
      assert.ok(!readdirSync(path).includes('lost'), 'no RepairDB (it archives what it cannot convert into lost/)');
      const ob = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await ob.open();
      toClose.push(ob);
      assert.equal(ob.epoch, epoch);
      const read = await ob.read({ maxEvents: 10_000, maxBytes: 1 << 30 });
      assert.deepEqual(new Set(read.map((e) => (JSON.parse(e.json) as Envelope).id)), new Set(ids));
    });

    it('locked by another process is neither repaired nor moved: EDGE_OUTBOX_LOCKED', async () => {
      const path = storeIn(dir.path);
      const first = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await first.open();
      toClose.push(first);
      await first.append([ev('critical')]);
      const second = new LevelOutbox({ dir: path, maxBytes: 1 << 30, ...IDS });
      await assert.rejects(second.open(), (e) => isEdgewardError(e, 'EDGE_OUTBOX_LOCKED'));
      assert.deepEqual(readdirSync(dir.path).filter((f) => f !== 'outbox.reserve'), ['outbox']);
      assert.equal(first.stats().events, 1);
    });
  });

  it('does not look the store up for an ack of seqs already deleted (a central acking a resent batch again)', async () => {
    const ob = await open(1 << 20);
    const stored = await ob.append(Array.from({ length: 20 }, () => ev('info')));
    const seqs = stored.map((e) => e.seq!);
    await ob.read({ maxEvents: 100, maxBytes: 1 << 20 });
    let lookups = 0;
    const inner = (ob as unknown as { lookupStored: (r: unknown) => Promise<unknown> }).lookupStored.bind(ob);
    (ob as unknown as { lookupStored: (r: unknown) => Promise<unknown> }).lookupStored = (r) => {
      lookups++;
      return inner(r);
    };
    assert.equal(await ob.ack([[seqs[0], seqs[9]]]), 10);
    assert.equal(lookups, 0, 'tracked: no lookup');
    // The same ack again: known gone (a recent batch deleted them), no lookup, nothing deleted.
    assert.equal(await ob.ack([[seqs[0], seqs[9]]]), 0);
    assert.equal(lookups, 0, 'known gone: no lookup');
    assert.equal(ob.stats().events, 10);
    await closeIt(ob);
  });

  it('whenWriting: at once when idle or while a write is on disk; else once the next write is handed over (before it settles), or when the writer stops', async () => {
    const ob = await open();
    let now = 0;
    ob.whenWriting(() => now++);
    assert.equal(now, 1, 'an idle store runs it at once');

    // Every write waits at a gate we open (all of them at the end, even after a failed assertion).
    let gates: Array<() => void> = [];
    let released = false;
    const restore = replaceBatchWrites(ob, async (real, options) => {
      if (!released) await new Promise<void>((resolve) => gates.push(resolve));
      return real(options);
    });
    try {
      let settled = false;
      const first = ob.append([ev('info')]).then(() => {
        settled = true;
      });
      const seen: Array<{ writing: boolean; settled: boolean }> = [];
      // The batch is being built: the write is not issued yet.
      ob.whenWriting(() => seen.push({ writing: ob.stats().writePendingMs !== undefined, settled }));
      assert.equal(seen.length, 0, 'waits for the write');
      await waitFor(() => gates.length === 1, { message: 'the write at its gate' });
      assert.deepEqual(seen, [{ writing: true, settled: false }], 'ran once the write was handed over, before it settled');

      // Asked while that write is on disk: at once (it overlaps the write).
      let during = 0;
      ob.whenWriting(() => during++);
      assert.equal(during, 1, 'ran at once during a write');

      // Asked between a commit and the next write: when that write is handed over.
      const second = ob.append([ev('info')]);
      let next = 0;
      let nextAtOnce = -1;
      let handedOver = false;
      void first.then(() => {
        // The first write just settled; the second is queued, not yet written.
        ob.whenWriting(() => {
          next++;
          handedOver = gates.length === 1;
        });
        nextAtOnce = next;
      });
      gates.shift()!();
      await first;
      assert.equal(nextAtOnce, 0, 'waits between a commit and the next write');
      await waitFor(() => gates.length === 1, { message: 'the second write at its gate' });
      assert.equal(next, 1, 'ran when the next write was handed over');
      assert.ok(handedOver, 'the write was at its gate (handed over, not settled) when it ran');

      // Asked between a commit and nothing more to write: when the writer stops.
      let atEnd = 0;
      let atEndAtOnce = -1;
      void second.then(() => {
        ob.whenWriting(() => atEnd++);
        atEndAtOnce = atEnd;
      });
      gates.shift()!();
      await second;
      assert.equal(atEndAtOnce, 0, 'waits while the writer may cut another batch');
      await waitFor(() => atEnd === 1, { message: 'ran when the writer had nothing more to write' });

      // A write that fails still ran it (it was on its way), and the store goes on.
      const failing = replaceBatchWrites(ob, async () => {
        throw diskFull();
      });
      try {
        const refused = ob.append([ev('info')]);
        let onFailing = 0;
        ob.whenWriting(() => onFailing++);
        await assert.rejects(refused, (e) => isEdgewardError(e, 'EDGE_OUTBOX_WRITE_FAILED'));
        assert.equal(onFailing, 1);
      } finally {
        failing();
      }
    } finally {
      restore();
      released = true;
      for (const open of gates) open();
      gates = [];
    }
  });

  it('whenWriting: a writer whose every turn refuses its appends (full of alarms) does not hold what waits', async () => {
    const ob = await open(16 * 1024);
    while (ob.stats().bytes < 16 * 1024) await ob.append([ev('critical')]);
    // A driver offering events in a loop, each refused: the writer never ends a drain, never writes.
    let stop = false;
    let refused = 0;
    const loop = (async () => {
      while (!stop) {
        await ob.append([ev('info')]).catch((e) => {
          assert.ok(isEdgewardError(e, 'EDGE_OUTBOX_FULL'), String(e));
          refused++;
        });
      }
    })();
    try {
      await waitFor(() => refused >= 20, { message: 'appends refused' });
      let ran = false;
      ob.whenWriting(() => {
        ran = true;
      });
      const before = refused;
      await waitFor(() => ran, { timeoutMs: 3000, message: 'ran while every turn was refused' });
      assert.ok(refused - before < 1000, 'within a few turns');
    } finally {
      stop = true;
      await loop;
    }
  });

  it('whenWriting: at once while the store must reopen after a failed write (its disk probe may hang)', async () => {
    const ob = await open();
    await ob.append([ev('info')]);
    const restore = replaceBatchWrites(ob, async () => {
      throw diskFull();
    });
    let release: () => void = () => undefined;
    try {
      await assert.rejects(ob.append([ev('info')]), (e) => isEdgewardError(e, 'EDGE_OUTBOX_WRITE_FAILED'));
      // The reopen first probes the disk; on a card that hangs on fsync, so does the probe.
      let probes = 0;
      const inner = ob as unknown as { room: (...a: unknown[]) => Promise<unknown> };
      inner.room = async () => {
        probes++;
        await new Promise<void>((resolve) => {
          release = resolve;
        });
        return { free: 0, need: 1, probeError: 'EIO' };
      };
      const next = ob.append([ev('info')]).catch(() => undefined);
      await waitFor(() => probes === 1, { message: 'the reopen attempt is probing' });
      let ran = 0;
      ob.whenWriting(() => ran++);
      assert.equal(ran, 1, 'ran at once: no write is coming before the probe ends');
      release();
      await next;
    } finally {
      release();
      restore();
    }
  });

  it('whenWriting: nothing waits longer than WHEN_WRITING_MAX_WAIT_MS for a write whose build takes long', async () => {
    const clock = new ManualClock(Date.parse('2026-12-06T12:00:00Z'));
    const ob = await opened(() => new LevelOutbox({ dir: dir.path, maxBytes: 1 << 30, ...IDS, clock }));
    // A build that takes long (evictions on a full store, reads from a slow card): held at a gate.
    const inner = ob as unknown as { buildAndWrite: (...a: unknown[]) => Promise<void> };
    const realBuild = inner.buildAndWrite.bind(ob);
    let open: () => void = () => undefined;
    let building = false;
    inner.buildAndWrite = async (...a: unknown[]) => {
      building = true;
      await new Promise<void>((resolve) => {
        open = resolve;
      });
      return realBuild(...a);
    };
    try {
      const appended = ob.append([ev('info')]);
      await waitFor(() => building, { message: 'the build is under way' });
      let ran = 0;
      ob.whenWriting(() => ran++);
      ob.whenWriting(() => ran++);
      assert.equal(ran, 0, 'waits for the write');
      clock.advance(WHEN_WRITING_MAX_WAIT_MS - 1);
      assert.equal(ran, 0);
      clock.advance(1);
      assert.equal(ran, 2, 'both ran once the wait was over, the build still going');
      open();
      await appended;
      assert.equal(ran, 2, 'and not again');
      assert.deepEqual(clock.pending(), [], 'no timer left');
    } finally {
      open();
    }
  });

  it('readOutboxStats reads a closed store, and reports a locked one and a missing one', async () => {
    const ob = await open(5555);
    await ob.append([ev('info'), ev('critical')]);
    const live = ob.stats();
    await assert.rejects(readOutboxStats(dir.path), (e) => isEdgewardError(e, 'EDGE_OUTBOX_LOCKED'));
    await closeIt(ob);
    assert.deepEqual(await readOutboxStats(dir.path), live);
    await assert.rejects(readOutboxStats(`${dir.path}/nope`), (e) => isEdgewardError(e, 'EDGE_OUTBOX_NOT_FOUND'));
  });

  it('prints throughput figures (concurrent single appends, 500-event appends, reads over a backlog); group commit holds', async function () {
    this.timeout(60_000);
    const ob = await open();
    const singles = 10_000;
    let t = performance.now();
    await Promise.all(Array.from({ length: singles }, () => ob.append([ev('info', 'sensor.reading', { v: 1 })])));
    const singleRate = singles / ((performance.now() - t) / 1000);
    const singleWrites = ob.writes;

    const batches = 200;
    const fiveHundred = Array.from({ length: batches }, () =>
      Array.from({ length: 500 }, () => ev('info', 'sensor.reading', { v: 2 })),
    );
    t = performance.now();
    for (const b of fiveHundred) await ob.append(b);
    const batchRate = (batches * 500) / ((performance.now() - t) / 1000);

    // Backlog: 110k info events now stored, plus a few criticals at the end.
    await ob.append([ev('critical', 'fire.alarm')]);
    t = performance.now();
    const reads = 20;
    for (let i = 0; i < reads; i++) {
      const got = await ob.read({ maxEvents: 500, maxBytes: 262_144 });
      assert.equal(got[0].severity, 'critical');
    }
    const readMs = (performance.now() - t) / reads;
    // Reading past 100k in-flight seqs with the cursor is as fast as from the head.
    t = performance.now();
    const far = await ob.read({ maxEvents: 500, maxBytes: 262_144, after: { info: 100_000 }, severities: ['info'] });
    const cursorMs = performance.now() - t;
    assert.equal(far[0].seq, 100_001);
    console.log(
      `      outbox: ${Math.round(singleRate)} ev/s concurrent single appends (${singleWrites} batches for ${singles}), ` +
        `${Math.round(batchRate)} ev/s in 500-event appends, read(500) ${readMs.toFixed(2)} ms over ${ob.stats().events} stored, ` +
        `read(500, after 100k) ${cursorMs.toFixed(2)} ms`,
    );
    // Figures only (the bench measures speed); what must hold is structural: the group commit.
    assert.ok(singleWrites < singles / 10, `${singleWrites} writes for ${singles} concurrent single appends`);
  });
});

describe('OverflowTally', () => {
  it('names at most the 64 newest reports it replaces (a long chain stays one sendable event)', () => {
    const t = new OverflowTally();
    const empty = { evicted: 1, evictedBytes: 10, byType: { 'sensor.reading': 1 }, bySeverity: { info: 1, warning: 0 }, fromTs: null, toTs: null, fromSeq: 1, toSeq: 1 };
    for (let i = 0; i < 200; i++) t.supersede(`r${i}`, { ...empty, supersedes: [`r${i - 1}`] });
    const d = t.data();
    assert.equal(d.supersedes?.length, 64);
    assert.equal(d.supersedes?.at(-1), 'r199');
    assert.equal(d.evicted, 200, 'the counts of every one are folded in');
  });

  it('keeps the ids folded in by this write when it merges an older report with a full list', () => {
    const t = new OverflowTally();
    const one = { evicted: 1, evictedBytes: 10, byType: { 'sensor.reading': 1 }, bySeverity: { info: 1, warning: 0 }, fromTs: null, toTs: null, fromSeq: 1, toSeq: 1 };
    t.supersede('new-1', one);
    t.supersede('new-2', one);
    // The pending report it replaces named 64 older ones: those are the ones to cut.
    t.merge({ ...one, supersedes: Array.from({ length: 64 }, (_, i) => `old-${i}`) });
    const d = t.data();
    assert.equal(d.supersedes?.length, 64);
    assert.deepEqual(d.supersedes?.slice(-2), ['new-1', 'new-2']);
    assert.ok(!d.supersedes?.includes('old-0') && d.supersedes?.includes('old-63'));
  });
});
