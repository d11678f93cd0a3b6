import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Clock } from '../../edge/clock.js';
import type { UplinkConfig } from '../../edge/config-types.js';
import { type EventType, makeEnvelope } from '../../edge/envelope.js';
import { EdgewardError, isEdgewardError } from '../../edge/errors.js';
import { type Logger, silentLogger } from '../../edge/log.js';
import { MemoryOutbox } from '../../sync/memory-outbox.js';
import { encodeBatch } from '../../sync/batch-codec.js';
import { keepNewestRanges, maxEventBytes, mergeSortedRanges, normalizeRanges, PendingSeqs, publishPacketBytes, subtractRanges, Uplink } from '../../sync/uplink.js';
import { startTestCentral, type TestCentral } from '../helpers/central.js';
import { freePort, startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';
import { ManualClock } from '../helpers/clock.js';
import { captureLogger } from '../helpers/log.js';
import { tmpDir } from '../helpers/tmp.js';
import { delay, waitFor } from '../helpers/wait.js';

const site = 'pengqu-qumei';
const edge = 'gate-07';

describe('Uplink (MemoryOutbox, real Mosquitto)', function () {
  this.timeout(20_000);
  let broker: TestMosquitto;
  let outbox: MemoryOutbox;
  let uplink: Uplink | undefined;
  let central: TestCentral | undefined;

  before(async () => {
    broker = await startMosquitto();
  });
  after(async () => {
    await broker?.stop();
  });
  beforeEach(async () => {
    outbox = new MemoryOutbox({ maxBytes: 64 * 1024 * 1024, site, edge });
    await outbox.open();
  });
  afterEach(async () => {
    await uplink?.stop();
    await central?.close();
    await outbox.close();
    uplink = central = undefined;
  });

  function make(
    config: Partial<UplinkConfig>,
    url = broker.url,
    clock?: Clock,
    log = silentLogger(),
    backoff = { reconnectMinMs: 50, reconnectMaxMs: 300 },
  ): Uplink {
    const full: UplinkConfig = {
      url,
      ack: 'central',
      batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 20 },
      compress: 'gzip',
      ...config,
    };
    uplink = new Uplink({
      config: full,
      site,
      edge,
      version: 't',
      outbox,
      log,
      ...backoff,
      ...(clock ? { clock } : {}),
    });
    return uplink;
  }

  function append(n: number, type: EventType = 'sensor.reading') {
    return outbox.append(
      Array.from({ length: n }, (_, i) =>
        makeEnvelope({ type, source: { device: 'd1' }, data: { i } }, { site, edge }),
      ),
    );
  }

  /**
   * A connected uplink on the test's clock (ackTimeoutMs 1 s, no linger) and a
   * central that does not ack: ack timeouts fire when the test moves the clock.
   */
  async function unackedOnClock(config: Partial<UplinkConfig>, log?: Logger): Promise<{ clock: ManualClock; u: Uplink; c: TestCentral }> {
    central = await startTestCentral({ url: broker.url, site, edge, ack: false });
    const clock = new ManualClock();
    const u = make({ ackTimeoutMs: 1000, batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 0 }, ...config }, broker.url, clock, log);
    await u.start();
    await waitFor(() => u.status().connected, { message: 'connected' });
    return { clock, u, c: central };
  }

  /**
   * A connected uplink on the test's clock (no linger), with a broker of its
   * own that the test may kill and restart, and a central acking or not.
   * The caller stops the broker.
   */
  async function onOwnBroker(ack: boolean, config: Partial<UplinkConfig> = {}): Promise<{ b: TestMosquitto; clock: ManualClock; u: Uplink; c: TestCentral }> {
    const b = await startMosquitto();
    const clock = new ManualClock();
    central = await startTestCentral({ url: b.url, site, edge, ack });
    const u = make({ batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 0 }, ...config }, b.url, clock);
    await u.start();
    await waitFor(() => u.status().connected, { message: 'connected' });
    return { b, clock, u, c: central };
  }

  /** Move the test's clock until the uplink's reconnect attempts (timers on that clock) get it connected. */
  function reconnectedOnClock(u: Uplink, clock: ManualClock): Promise<unknown> {
    return waitFor(
      () => {
        clock.advance(300);
        return u.status().connected;
      },
      { timeoutMs: 10_000, message: 'reconnected' },
    );
  }

  /** Hold the outbox's next read once it has read the store, until `release()`. */
  function holdNextRead(): { holding: () => boolean; release: () => void } {
    const read = outbox.read.bind(outbox);
    let open: (() => void) | undefined;
    let hold = true;
    outbox.read = async (o) => {
      const r = await read(o);
      if (hold) {
        hold = false;
        await new Promise<void>((resolve) => {
          open = resolve;
        });
      }
      return r;
    };
    return { holding: () => open !== undefined, release: () => open?.() };
  }

  /** A connected uplink with batches of 10, a 3 s linger on the test's clock, and an acking central. */
  async function lingering(): Promise<{ clock: ManualClock; c: TestCentral }> {
    central = await startTestCentral({ url: broker.url, site, edge, ack: true });
    // Linger is timing logic: the uplink's clock is the test's, so a busy machine cannot fake it.
    const clock = new ManualClock();
    const u = make({ batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 3000 } }, broker.url, clock);
    await u.start();
    await waitFor(() => u.status().connected, { message: 'connected' });
    return { clock, c: central };
  }

  it('sends full batches at once and holds a partial one for lingerMs', async () => {
    const { clock, c } = await lingering();
    await append(25);
    await waitFor(() => c.byId.size >= 20, { message: 'two full batches without lingering' });
    // The partial batch is held: a linger timer of lingerMs is armed and, time standing still, nothing more is sent.
    await waitFor(() => clock.pending().includes(3000), { message: 'linger timer armed' });
    assert.equal(c.byId.size, 20, 'the partial batch lingers');
    clock.advance(2999);
    assert.equal(c.byId.size, 20, 'still lingering 1 ms before lingerMs');
    clock.advance(1);
    await waitFor(() => c.byId.size === 25, { message: 'partial batch once lingerMs passed' });
    assert.deepEqual(
      c.batches.map((b) => b.events.length),
      [10, 10, 5],
    );
  });

  it('a wall clock stepped back (NTP) does not hold a partial batch for the size of the step', async () => {
    const { clock, c } = await lingering();
    await append(5);
    await waitFor(() => clock.pending().includes(3000), { message: 'linger timer armed' });
    // An hour back, then the linger timer fires: the batch goes now, not in an hour.
    clock.jump(-3_600_000);
    clock.advance(3000);
    await waitFor(() => c.byId.size === 5, { message: 'partial batch sent when its linger timer fired' });
  });

  it('critical events do not wait for linger', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: true });
    // Time stands still: a critical that waited for linger would never be sent.
    const clock = new ManualClock();
    const u = make({ batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 5000 } }, broker.url, clock);
    await u.start();
    await waitFor(() => u.status().connected, { message: 'connected' });
    const c = central;
    await append(3);
    const [crit] = await append(1, 'fire.alarm');
    await waitFor(() => c.byId.has(crit.id), { message: 'critical sent without any time passing' });
  });

  it('sends what is stored once the store hands its next write to disk (whenWriting), alarms at once', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: true });
    const u = make({ batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 0 } });
    await u.start();
    await waitFor(() => u.status().connected, { message: 'connected' });
    const c = central;
    // A store with a writer: the uplink's work waits for its next write.
    const held: Array<() => void> = [];
    (outbox as { whenWriting?: (fn: () => void) => void }).whenWriting = (fn) => held.push(fn);
    const infos = await append(5);
    await waitFor(() => held.length === 1, { message: 'the pump waits for the next write' });
    const [alarm] = await append(1, 'fire.alarm');
    await waitFor(() => c.byId.has(alarm.id), { message: 'the alarm went without waiting' });
    assert.equal(held.length, 1, 'one pump waiting, however often asked');
    assert.ok(infos.every((e) => !c.byId.has(e.id)), 'the info events waited for the write');
    held.shift()!();
    await waitFor(() => infos.every((e) => c.byId.has(e.id)), { message: 'sent once the write was on its way' });
  });

  it('keeps at most maxInflight unacked batches, lets a critical past a full window', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: false });
    const u = make({ maxInflight: 2, ackTimeoutMs: 60_000 });
    await u.start();
    await waitFor(() => u.status().connected, { message: 'connected' });
    const c = central;
    await append(100);
    await waitFor(() => c.byId.size === 20, { message: 'window filled' });
    assert.equal(u.status().inflightBatches, 2);
    const [crit] = await append(1, 'door.forced');
    await waitFor(() => c.byId.has(crit.id), { message: 'critical past the full window' });
    assert.equal(c.byId.size, 21, 'no info batch beyond the window');
    assert.equal(u.status().inflightBatches, 3);
    assert.equal(outbox.stats().events, 101, 'nothing acked, nothing deleted');
    // Ack what was sent: the window slides and the rest follows.
    const first = c.batches.flatMap((b) => b.events.map((e) => e.seq!));
    c.setAck(true);
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: first.map((s) => [s, s]) }));
    await waitFor(() => outbox.stats().events === 0, { message: 'drained after acks' });
    assert.equal(c.byId.size, 101);
  });

  it('a batch acked in parts stays in flight until every seq is covered; the unacked part is resent', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: false });
    const u = make({ maxInflight: 1, ackTimeoutMs: 1500 });
    await append(10);
    await u.start();
    const c = central;
    await waitFor(() => c.batches.length === 1, { message: 'one full batch sent' });
    const seqs = c.batches[0].events.map((e) => e.seq!);
    // Ack every other seq: half the batch leaves the outbox, the batch stays in flight.
    const half = seqs.filter((_, i) => i % 2 === 0);
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: half.map((s) => [s, s]) }));
    await waitFor(() => outbox.stats().events === 5, { message: 'the acked half deleted' });
    assert.equal(u.status().inflightBatches, 1, 'still waiting for the other half');
    // No ack for the rest: after the timeout only the unacked half is read and sent again.
    await waitFor(() => c.batches.length === 2, { message: 'resent after the ack timeout' });
    assert.deepEqual(
      c.batches[1].events.map((e) => e.seq!),
      seqs.filter((_, i) => i % 2 === 1),
    );
    c.setAck(true);
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[seqs[0], seqs[9]]] }));
    await waitFor(() => outbox.stats().events === 0 && u.status().inflightBatches === 0, { message: 'all acked' });
  });

  it('a batch whose ack timed out while a read was in flight is sent again: the cursor does not jump past it', async () => {
    const { clock, c } = await unackedOnClock({});
    const [first] = await append(1);
    await waitFor(() => c.batches.length === 1, { message: 'the first batch sent' });
    // Hold the next read once it has read the store (seq 1 excluded: it is in flight).
    const held = holdNextRead();
    await append(1);
    await waitFor(() => held.holding(), { message: 'a read held with the second event' });
    // The first batch times out meanwhile: released, its seq to be read again.
    clock.advance(2000);
    held.release();
    await waitFor(() => c.batches.length >= 3 && c.batches.slice(1).some((b) => b.events.some((e) => e.seq === first.seq)), {
      message: 'the timed-out seq sent again',
    });
  });

  it('the halves of a batch split for maxPacketBytes do not move the cursor past a batch released meanwhile', async () => {
    const { clock, c } = await unackedOnClock({ maxPacketBytes: 4096, compress: 'none' });
    const ev = (pad: number) => makeEnvelope({ type: 'sensor.reading', source: { device: 'd1' }, data: { pad: 'x'.repeat(pad) } }, { site, edge });
    const [first] = await outbox.append([ev(10)]);
    await waitFor(() => c.batches.length === 1, { message: 'the first batch sent' });
    const held = holdNextRead();
    // Together over maxPacketBytes: sent as two halves.
    await outbox.append([ev(2500), ev(2500)]);
    await waitFor(() => held.holding(), { message: 'a read held' });
    clock.advance(2000); // the first batch times out: released, the cursor rewound
    held.release();
    await waitFor(() => c.batches.slice(1).some((b) => b.events.some((e) => e.seq === first.seq)), {
      message: () => `the timed-out seq sent again; batches: ${JSON.stringify(c.batches.map((b) => b.events.map((e) => e.seq)))}`,
    });
  });

  it('paces resends: each ack timeout doubles the next timeouts, a prompt ack halves them again', async () => {
    const { clock, u, c } = await unackedOnClock({});
    // The ack timer of the batch in flight, jittered ±20 % around ackTimeoutMs × the backoff.
    const ackTimer = (base: number) =>
      waitFor(() => clock.pending().find((ms) => ms >= base * 0.8 && ms <= base * 1.2), { message: () => `an ack timer of ${base} ms ±20 %: ${clock.pending().join(', ')}` });
    await append(1);
    await waitFor(() => c.batches.length === 1, { message: 'sent' });
    await ackTimer(1000);
    clock.advance(1200);
    await waitFor(() => c.batches.length === 2, { message: 'resent after the first timeout' });
    await ackTimer(2000);
    clock.advance(2400);
    await waitFor(() => c.batches.length === 3, { message: 'resent after the second timeout' });
    await ackTimer(4000);
    // A prompt ack: the next batch waits half as long again.
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[1, 1]] }));
    await waitFor(() => u.status().inflightBatches === 0, { message: 'acked' });
    await append(1);
    await waitFor(() => c.batches.length === 4, { message: 'the next batch' });
    await ackTimer(2000);
  });

  it('a central acking promptly again gets at once what it missed while silent, not after the paced timeout', async () => {
    const { clock, c } = await unackedOnClock({});
    await append(1);
    await waitFor(() => c.batches.length === 1, { message: 'sent' });
    // Silent: three timeouts pace the resends to 8 × ackTimeoutMs.
    for (const [n, wait] of [[2, 1200], [3, 2400], [4, 4800]] as const) {
      clock.advance(wait);
      await waitFor(() => c.batches.length === n, { message: `resend ${n - 1}` });
    }
    await waitFor(() => clock.pending().some((ms) => ms >= 6400), { message: () => `an ack timer of 8 s ±20 %: ${clock.pending().join(', ')}` });
    // The central is back: it acks a new event's batch at once. Seq 1 was sent 1.5 s
    // before that batch and is not acked: it was lost in the silence.
    clock.advance(1500);
    c.setAck(true);
    await append(1);
    await waitFor(() => c.batches.length >= 6, { message: () => `seq 1 resent without waiting out its 8 s timer (${c.batches.length} batches)` });
    await waitFor(() => outbox.stats().events === 0, { message: 'both acked' });
  });

  it('a critical batch acked at once does not resend a backlog batch the central is still storing (a concurrent central)', async () => {
    const { clock, u, c } = await unackedOnClock({});
    await append(1); // seq 1, info
    await waitFor(() => c.batches.length === 1, { message: 'sent' });
    clock.advance(1200); // one timeout: seq 1 resent, paced to ~2 s
    await waitFor(() => c.batches.length === 2, { message: 'resent once' });
    clock.advance(1100); // seq 1's resend is over 1 s old, its timer (≥ 1.6 s) still pending
    await append(1, 'door.forced'); // seq 2, critical: a batch of its own
    await waitFor(() => c.batches.some((b) => b.events.some((e) => e.seq === 2)), { message: 'the alarm sent' });
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[2, 2]] })); // stored and acked at once
    await waitFor(() => u.status().inflightBatches === 1, { message: 'the alarm acked' });
    await append(1); // seq 3: its batch goes out after anything the ack released
    await waitFor(() => c.batches.some((b) => b.events.some((e) => e.seq === 3)), { message: 'seq 3 sent' });
    assert.equal(c.batches.filter((b) => b.events.some((e) => e.seq === 1)).length, 2, 'seq 1 waits for its paced timer');
  });

  it('an ack slower than half of ackTimeoutMs resends nothing early: the pacing of a slow central stays', async () => {
    const { clock, u, c } = await unackedOnClock({});
    await append(1);
    await waitFor(() => c.batches.length === 1, { message: 'sent' });
    for (const [n, wait] of [[2, 1200], [3, 2400]] as const) {
      clock.advance(wait);
      await waitFor(() => c.batches.length === n, { message: `resend ${n - 1}` });
    }
    clock.advance(100); // seq 1's last resend went out before seq 2 (its timer is ≥ 3.2 s away)
    await append(1); // seq 2, paced to a 4 s timeout like seq 1's resend
    await waitFor(() => c.batches.length === 4, { message: 'seq 2 sent' });
    // 1.5 s later (3 × half the configured timeout) the central acks seq 2 only: slow, not lost.
    clock.advance(1500);
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[2, 2]] }));
    await waitFor(() => u.status().inflightBatches === 1, { message: 'seq 2 acked' });
    await append(1); // seq 3: its batch goes out after anything the ack released
    await waitFor(() => c.batches.some((b) => b.events.some((e) => e.seq === 3)), { message: 'seq 3 sent' });
    const seq1Sends = c.batches.filter((b) => b.events.some((e) => e.seq === 1)).length;
    assert.equal(seq1Sends, 3, 'seq 1 waits for its paced timer');
  });

  it('logs a silent central once, then at most once a minute with what was resent meanwhile; again once acks flowed', async () => {
    const { log, lines } = captureLogger('info');
    const { clock, c } = await unackedOnClock({ maxInflight: 4 }, log);
    const about = () => lines.filter((l) => /no ack from central/.test(String(l.msg))) as Array<{ msg: string; batches?: number }>;
    await append(40); // 4 batches in flight
    await waitFor(() => c.batches.length === 4, { message: 'sent' });
    for (let round = 1; round <= 3; round++) {
      clock.advance(10_000); // every timer of the window fires
      await waitFor(() => c.batches.length === 4 * (round + 1), { message: `resend round ${round}` });
    }
    assert.equal(about().length, 1, about().map((l) => l.msg).join(' | '));
    // Round after round (paced to 8 s now), one step of the clock at a time, until the next line.
    const from = clock.now();
    for (let sent = c.batches.length; about().length < 2 && clock.now() - from < 200_000; sent = c.batches.length) {
      clock.advance(10_000);
      await waitFor(() => c.batches.length >= sent + 4, { message: 'another resend round' });
    }
    const second = about()[1] as { msg: string; batches?: number; sinceMs?: number };
    assert.equal(second.msg, 'still no ack from central in time; resent meanwhile');
    assert.ok((second.sinceMs ?? 0) >= 60_000 && (second.batches ?? 0) >= 8, JSON.stringify(second));
    // Acks flow, then stop again: a new spell has its line at once.
    c.setAck(true);
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[1, 40]] }));
    await waitFor(() => outbox.stats().events === 0, { message: 'acked' });
    c.setAck(false);
    const before = c.batches.length;
    await append(1);
    await waitFor(() => c.batches.length === before + 1, { message: 'a new batch' });
    clock.advance(10_000);
    await waitFor(() => about().length === 3, { message: 'the new spell logged' });
    assert.equal(about()[2].msg, 'no ack from central in time; resending');
  });

  it('unackedForMs: the first send of the oldest unacked event, kept across resends and other acks; a clock stepped back restarts it', async () => {
    const { clock, u, c } = await unackedOnClock({});
    assert.equal(u.status().unackedForMs, undefined, 'nothing sent');
    await append(1);
    await waitFor(() => c.batches.length === 1, { message: 'sent' });
    clock.advance(5_000); // its ack times out: resent
    await waitFor(() => c.batches.length === 2, { message: 'resent' });
    assert.equal(u.status().unackedForMs, 5_000, 'from its first send, not from the resend');
    // The central acks a newer event only: the oldest still waits.
    const [newer] = await append(1);
    await waitFor(() => c.bySeq.has(newer.seq!), { message: 'the newer one sent' });
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[newer.seq, newer.seq]] }));
    await waitFor(() => outbox.stats().events === 1, { message: 'the newer one acked' });
    assert.equal(u.status().unackedForMs, 5_000);
    // NTP steps the wall clock back an hour: the count restarts rather than hiding the wait for an hour.
    clock.jump(-3_600_000);
    assert.equal(u.status().unackedForMs, 0);
    clock.advance(61_000);
    // Its ack timed out meanwhile: sampled once it is in flight again (it inherits its first send).
    await waitFor(() => u.status().unackedForMs === 61_000, { message: () => `unackedForMs ${u.status().unackedForMs}` });
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[1, 1]] }));
    await waitFor(() => outbox.stats().events === 0, { message: 'acked' });
    assert.equal(u.status().unackedForMs, undefined, 'nothing waits');
  });

  it('unackedForMs counts only what is in flight: events released by an outage and waiting behind warnings are not waiting for an ack', async () => {
    const { b, clock, u, c } = await onOwnBroker(false, { ackTimeoutMs: 600_000 });
    try {
      await append(10); // info, in flight, not acked
      await waitFor(() => c.byId.size === 10, { message: 'sent' });
      await b.kill(); // the outage: released, to go again after the warnings
      await waitFor(() => !u.status().connected, { message: 'disconnected' });
      await outbox.append(
        Array.from({ length: 300 }, (_, i) => makeEnvelope({ type: 'access.denied', source: { device: 'd1' }, data: { i } }, { site, edge })),
      );
      clock.advance(61_000);
      await b.restart();
      c.setAck(true);
      // The central resubscribes first: what the edge sends before that goes nowhere.
      await waitFor(() => c.connected, { message: 'the central back' });
      let sampled: number | undefined | 'none' = 'none';
      u.once('publish', () => {
        sampled = u.status().unackedForMs;
      });
      // Reconnect attempts run on the test's clock.
      await reconnectedOnClock(u, clock);
      await waitFor(() => outbox.stats().events === 0, { timeoutMs: 10_000, message: 'drained' });
      assert.equal(sampled, 0, 'the first batch after the outage (warnings) was just sent; the released info waits in the outbox, not for an ack');
    } finally {
      await b.stop();
    }
  });

  it('a connection on which acks delete events works: the backoff of an outage is over, the next restart reconnects at once', async () => {
    const { b, clock, u, c } = await onOwnBroker(true);
    try {
      const reconnectDelay = () => Math.min(...clock.pending().filter((d) => d > 0));
      clock.advance(10_000); // a connection that lasted: its loss is an outage, not a short drop
      await b.kill();
      // An outage of several attempts: the delay grows to reconnectMaxMs (300 here).
      for (let i = 0; i < 6; i++) {
        await waitFor(() => clock.pending().length > 0 && !u.status().connected, { message: 'a reconnect scheduled' });
        clock.advance(400);
      }
      await b.restart();
      await waitFor(() => c.connected, { message: 'the central back' });
      await reconnectedOnClock(u, clock);
      await append(5);
      await waitFor(() => outbox.stats().events === 0, { message: 'acked on the new connection' });
      assert.equal(u.status().downForMs, 0, 'up: acks delete events on it');
      await b.kill();
      await waitFor(() => !u.status().connected && clock.pending().length > 0, { message: 'the next reconnect scheduled' });
      const next = reconnectDelay();
      assert.ok(next <= 65, `reconnect in ${next} ms (reconnectMinMs 50, ±30 %), not the outage's 300`);
    } finally {
      await b.stop();
    }
  });

  it('an outage is not time waiting for an ack, nor down once reconnected: unackedForMs and downForMs after a 2-minute outage', async () => {
    const { b, clock, u, c } = await onOwnBroker(false, { ackTimeoutMs: 600_000 });
    try {
      clock.advance(10_000); // the connection lasts
      await append(10);
      await waitFor(() => c.byId.size === 10, { message: 'sent' });
      clock.advance(5_000); // waited 5 s for its ack, then the link goes
      assert.equal(u.status().unackedForMs, 5_000);
      await b.kill();
      await waitFor(() => !u.status().connected, { message: 'disconnected' });
      clock.advance(120_000);
      assert.ok(u.status().downForMs >= 120_000, 'down while disconnected');
      await b.restart();
      await waitFor(() => c.connected, { message: 'the central back' });
      const arrived = c.arrivals.length;
      await reconnectedOnClock(u, clock);
      assert.equal(u.status().downForMs, 0, 'up as soon as connected (not 503 for the connection\'s first 10 s)');
      await waitFor(() => c.arrivals.length > arrived, { message: 'resent' });
      const unacked = u.status().unackedForMs!;
      assert.ok(unacked >= 5_000 && unacked < 10_000, `the 5 s it waited before the outage and what passed since the resend, not the outage: ${unacked}`);
    } finally {
      await b.stop();
    }
  });

  it('a critical event stored during a reconnect backoff brings the next attempt forward to a second after the last', async () => {
    const b = await startMosquitto();
    try {
      const clock = new ManualClock();
      central = await startTestCentral({ url: b.url, site, edge, ack: true });
      // The production backoff: up to 10 s (here at least 5 s, ±30 %).
      const u = make({ batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 0 } }, b.url, clock, silentLogger(), {
        reconnectMinMs: 5000,
        reconnectMaxMs: 10_000,
      });
      await u.start();
      await waitFor(() => u.status().connected, { message: 'connected' });
      await b.kill();
      await waitFor(() => !u.status().connected && clock.pending().length > 0, { message: 'a reconnect scheduled' });
      assert.ok(Math.min(...clock.pending().filter((d) => d > 0)) >= 3500, 'the backoff is seconds');
      await b.restart();
      await waitFor(() => central!.connected, { message: 'the central back' });
      const [alarm] = await outbox.append([makeEnvelope({ type: 'door.forced', source: { device: 'door-1' }, data: { door: 0 } }, { site, edge })]);
      assert.ok(Math.min(...clock.pending().filter((d) => d > 0)) <= 1000, 'the attempt brought forward');
      clock.advance(1000);
      await waitFor(() => central!.byId.has(alarm.id), { timeoutMs: 5000, message: 'the alarm delivered a second after the last attempt' });
      // Info events do not do that.
      await b.kill();
      await waitFor(() => !u.status().connected && clock.pending().length > 0, { message: 'a reconnect scheduled again' });
      await b.restart();
      await waitFor(() => central!.connected, { message: 'the central back again' });
      const before = Math.min(...clock.pending().filter((d) => d > 0));
      await append(3);
      assert.equal(Math.min(...clock.pending().filter((d) => d > 0)), before, 'info waits for the backoff');
    } finally {
      await b.stop();
    }
  });

  it('an outage after one short connection ends the spell: up at once when reconnected', async () => {
    const { b, clock, u } = await onOwnBroker(true);
    try {
      clock.advance(60_000); // a connection that lasted
      await b.kill();
      await b.restart();
      await reconnectedOnClock(u, clock);
      clock.advance(3_000);
      await b.kill(); // this one drops after 3 s: a short connection
      await waitFor(() => !u.status().connected, { message: 'dropped' });
      assert.equal(u.status().unstable, true);
      // Then an outage of two minutes: reconnect attempts fail.
      for (let i = 0; i < 12; i++) {
        await waitFor(() => clock.pending().length > 0, { message: 'a reconnect scheduled' });
        clock.advance(10_000);
      }
      await b.restart();
      await reconnectedOnClock(u, clock);
      assert.equal(u.status().unstable, false, 'the outage ended the spell');
      assert.equal(u.status().downForMs, 0, 'up as soon as reconnected');
    } finally {
      await b.stop();
    }
  });

  it('an event released by an ack timeout, then an outage before it went again: the outage is not ack wait', async () => {
    const { b, clock, u, c } = await onOwnBroker(false, { ackTimeoutMs: 5_000, maxInflight: 1 });
    try {
      clock.advance(10_000); // the connection lasts
      await append(1); // info
      await waitFor(() => c.byId.size === 1, { message: 'sent' });
      await outbox.append(
        Array.from({ length: 30 }, (_, i) => makeEnvelope({ type: 'access.denied', source: { device: 'd1' }, data: { i } }, { site, edge })),
      );
      clock.advance(6_000); // its ack times out: released, and warnings go first (window of 1)
      await waitFor(() => c.arrivals.length > 1, { message: 'a warning batch in flight' });
      await b.kill();
      await waitFor(() => !u.status().connected, { message: 'disconnected' });
      clock.advance(120_000);
      await b.restart();
      c.setAck(true);
      await waitFor(() => c.connected, { message: 'the central back' });
      const sampled: number[] = [];
      u.on('publish', () => sampled.push(u.status().unackedForMs ?? 0));
      await reconnectedOnClock(u, clock);
      await waitFor(() => outbox.stats().events === 0, { timeoutMs: 10_000, message: 'drained' });
      assert.ok(sampled.length > 0 && Math.max(...sampled) < 60_000, `ack waits at each publish: ${sampled}`);
    } finally {
      await b.stop();
    }
  });

  it('two uplinks with one client id kicking each other off (a cloned SD card): backoff grows and the drops are logged once, acks or not', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: true });
    const other = new MemoryOutbox({ maxBytes: 64 * 1024 * 1024, site, edge });
    await other.open();
    const logs = [captureLogger('info'), captureLogger('info')];
    const a = make({}, broker.url, undefined, logs[0].log);
    const b = new Uplink({
      config: { url: broker.url, ack: 'central', batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 20 }, compress: 'gzip' },
      site,
      edge,
      version: 't',
      outbox: other,
      log: logs[1].log,
      reconnectMinMs: 50,
      reconnectMaxMs: 300,
    });
    const connects = [0, 0];
    a.on('connect', () => connects[0]++);
    b.on('connect', () => connects[1]++);
    // Both keep storing events, so acks flow on many of their short connections.
    let i = 0;
    const feed = setInterval(() => {
      for (const ob of [outbox, other]) void ob.append([makeEnvelope({ type: 'sensor.reading', source: { device: 'd1' }, data: { i: i++ } }, { site, edge })]);
    }, 25);
    try {
      await a.start();
      await b.start();
      await waitFor(() => connects[0] >= 8 && connects[1] >= 8, { timeoutMs: 20_000, message: () => `connects ${connects}` });
    } finally {
      clearInterval(feed);
      await b.stop();
      await other.close();
    }
    for (const l of logs) {
      const drops = l.lines.filter((x) => Number(x.level) >= 40 && /^uplink (disconnected|connections keep)/.test(String(x.msg)));
      assert.ok(drops.length <= 2, JSON.stringify(drops.map((x) => x.msg)));
      assert.ok(l.lines.filter((x) => x.msg === 'uplink connected').length <= 2, 'reconnections at debug');
    }
  });

  it('an ack deletes only what this edge has sent: a wide range does not take an event still waiting to go', async () => {
    const { c } = await unackedOnClock({ maxInflight: 1, batch: { maxEvents: 1, maxBytes: 262144, lingerMs: 0 } });
    await append(2); // seq 1 goes, seq 2 waits for the window
    await waitFor(() => c.batches.length === 1, { message: 'seq 1 sent' });
    // A central acking "first to last" of what it thinks it has.
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[1, 2]] }));
    await waitFor(() => c.batches.some((b) => b.events.some((e) => e.seq === 2)), { message: 'seq 2 sent after all' });
    assert.deepEqual(
      c.batches.map((b) => b.events.map((e) => e.seq)),
      [[1], [2]],
    );
    assert.equal(outbox.stats().events, 1, 'seq 2 stays until acked itself');
  });

  it('an alarm a silent central missed is resent as soon as any batch is acked promptly again', async () => {
    const { clock, c } = await unackedOnClock({});
    await append(1, 'door.forced'); // seq 1, critical
    await waitFor(() => c.batches.length === 1, { message: 'sent' });
    for (const [n, wait] of [[2, 1200], [3, 2400], [4, 4800]] as const) {
      clock.advance(wait);
      await waitFor(() => c.batches.length === n, { message: `resend ${n - 1}` });
    }
    clock.advance(1500);
    c.setAck(true);
    await append(1); // seq 2, info, acked at once
    await waitFor(() => c.batches.filter((b) => b.events.some((e) => e.seq === 1)).length === 5, {
      message: () => `the alarm resent without waiting out its 8 s timer (${c.batches.length} batches)`,
    });
  });

  it('an ack for events stored before the uplink started deletes only what it has sent (after a restart, the backlog goes again)', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: false });
    await append(2); // stored while the uplink was down
    const u = make({ ackTimeoutMs: 60_000, maxInflight: 1, batch: { maxEvents: 1, maxBytes: 262144, lingerMs: 0 } }, broker.url, new ManualClock());
    await u.start();
    const c = central;
    await waitFor(() => c.batches.length === 1, { message: 'seq 1 sent' });
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: [[1, 2]] }));
    await waitFor(() => c.batches.some((b) => b.events.some((e) => e.seq === 2)), { message: 'seq 2 sent after all' });
    assert.equal(outbox.stats().events, 1, 'seq 2 stays until acked itself');
  });

  it('what was sent under one epoch does not let an ack of a new epoch (a store rebuilt meanwhile) delete unsent seqs', async () => {
    const { log, lines } = captureLogger('info');
    const { c } = await unackedOnClock({}, log);
    await append(1);
    await waitFor(() => c.batches.length === 1, { message: 'seq 1 sent' });
    // The store is rebuilt in this process: a new epoch, seq 1 not sent under it.
    Object.defineProperty(outbox, 'epoch', { get: () => '01NEWEPOCH0000000000000000', configurable: true });
    await c.publishRawAck(JSON.stringify({ epoch: '01NEWEPOCH0000000000000000', seqs: [[1, 1]] }));
    // Either it is ignored (and said so) or it deletes seq 1.
    await waitFor(() => outbox.stats().events === 0 || lines.some((l) => /not in flight/.test(String(l.msg))), { message: 'the ack handled' });
    assert.equal(outbox.stats().events, 1, 'seq 1 not deleted by an ack naming the new epoch');
  });

  it('keepNewestRanges: the sent-seq record keeps its newest ranges only', () => {
    const r: Array<[number, number]> = Array.from({ length: 2000 }, (_, i) => [i * 3, i * 3 + 1]);
    keepNewestRanges(r, 1024);
    assert.equal(r.length, 1024);
    assert.deepEqual(r.at(-1), [5997, 5998]);
    assert.deepEqual(r[0], [(2000 - 1024) * 3, (2000 - 1024) * 3 + 1]);
  });

  it('subtractRanges: what is left of sorted ranges without others', () => {
    assert.deepEqual(subtractRanges([[1, 10]], [[3, 4], [6, 6]]), [[1, 2], [5, 5], [7, 10]]);
    assert.deepEqual(subtractRanges([[1, 3], [5, 9]], [[0, 6]]), [[7, 9]]);
    assert.deepEqual(subtractRanges([[1, 3], [5, 9]], [[1, 9]]), []);
    assert.deepEqual(subtractRanges([[5, 9]], []), [[5, 9]]);
    assert.deepEqual(subtractRanges([[1, 2], [4, 5], [8, 9]], [[2, 4], [9, 20]]), [[1, 1], [5, 5], [8, 8]]);
  });

  it('mergeSortedRanges: two sorted lists joined where they overlap or touch', () => {
    assert.deepEqual(mergeSortedRanges([[1, 2], [10, 12]], [[3, 4], [6, 6], [11, 20]]), [[1, 4], [6, 6], [10, 20]]);
    assert.deepEqual(mergeSortedRanges([], [[5, 9]]), [[5, 9]]);
    assert.deepEqual(mergeSortedRanges([[5, 9]], []), [[5, 9]]);
    assert.deepEqual(mergeSortedRanges([[1, 1], [3, 3]], [[2, 2]]), [[1, 3]]);
    const a: Array<[number, number]> = [[1, 5]];
    mergeSortedRanges(a, [[6, 7]]);
    assert.deepEqual(a, [[1, 5]], 'its inputs unchanged');
  });

  it('normalizeRanges: an ack is clamped to the seqs handed out, sorted and merged, whatever it lists', () => {
    assert.deepEqual(normalizeRanges([[5, 9], [1, 3], [4, 4], [20, 30]], 25), [[1, 9], [20, 25]]);
    assert.deepEqual(normalizeRanges([[0, 2], [-5, -1], [26, 40]], 25), [[1, 2]]);
    // 20,000 ranges up to MAX_SAFE_INTEGER (a valid ack that cost seconds of bookkeeping): one range.
    const wide = Array.from({ length: 20_000 }, (_, i) => [1_000 + i, Number.MAX_SAFE_INTEGER] as [number, number]);
    assert.deepEqual(normalizeRanges(wide, 5_000), [[1_000, 5_000]]);
    assert.deepEqual(normalizeRanges(wide, 500), []);
  });

  it('applies a wide ack to what it covers, and only that', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: false });
    const u = make({ ackTimeoutMs: 60_000 });
    await u.start();
    const c = central;
    const stored = await append(25);
    await waitFor(() => c.byId.size === 25, { message: 'all sent' });
    const ranges = Array.from({ length: 20_000 }, (_, i) => [stored[10].seq! + i, Number.MAX_SAFE_INTEGER]);
    await c.publishRawAck(JSON.stringify({ epoch: outbox.epoch, seqs: ranges }));
    await waitFor(() => outbox.stats().events === 10, { message: 'seqs from the 11th on deleted' });
    const left = (await outbox.read({ maxEvents: 100, maxBytes: 1 << 20 })).map((e) => e.seq);
    assert.deepEqual(left, stored.slice(0, 10).map((e) => e.seq));
  });

  it('PendingSeqs: membership, partial and repeated acks, remaining ranges', () => {
    const p = new PendingSeqs([9, 3, 4, 5, 12, 7]);
    assert.equal(p.size, 6);
    assert.deepEqual([p.lo, p.hi], [3, 12]);
    assert.deepEqual(
      [2, 3, 6, 7, 12, 13].map((s) => p.has(s)),
      [false, true, false, true, true, false],
    );
    assert.deepEqual(p.ranges(), [[3, 5], [7, 7], [9, 9], [12, 12]]);
    assert.equal(p.ack([[1, 4], [8, 9]]), 3);
    assert.equal(p.size, 3);
    assert.equal(p.has(4), false);
    assert.equal(p.ack([[4, 4], [9, 9]]), 0, 'acked twice counts once');
    assert.deepEqual(p.ranges(), [[5, 5], [7, 7], [12, 12]]);
    assert.equal(p.ack([[5, 100]]), 3);
    assert.equal(p.size, 0);
    assert.equal(p.has(12), false);
    assert.deepEqual(p.ranges(), []);
  });

  it('drains a backlog with critical events among the info ones without resending what a prompt central acked', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: true });
    // Every other event critical: each critical seq is a range of its own in the record of what
    // was sent, and critical batches pass the full window: 2,000 ranges in flight at once.
    await outbox.append(
      Array.from({ length: 4000 }, (_, i) =>
        makeEnvelope({ type: i % 2 ? 'door.forced' : 'sensor.reading', source: { device: 'd1' }, data: { i } }, { site, edge }),
      ),
    );
    const u = make({ ackTimeoutMs: 5000 });
    await u.start();
    const c = central;
    await waitFor(() => outbox.stats().events === 0, { timeoutMs: 15_000, message: 'the backlog drained' });
    assert.equal(c.byId.size, 4000);
    assert.equal(c.arrivals.length, 4000, 'no batch resent: every ack was applied');
  });

  it('ack: broker deletes on PUBACK', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: false });
    const u = make({ ack: 'broker' });
    let acked = 0;
    u.on('ack', (a) => {
      acked += a.events;
    });
    await append(55);
    await u.start();
    const c = central;
    await waitFor(() => outbox.stats().events === 0, { message: 'PUBACKs emptied the outbox' });
    assert.equal(acked, 55);
    await waitFor(() => c.byId.size === 55, { message: 'central got everything' });
  });

  it('publishes with a length header mqtt-packet may cache for good that holds its own bytes, not an 8 KiB pool slab', async () => {
    const u = make({ ack: 'broker', compress: 'none', batch: { maxEvents: 1, maxBytes: 262144, lingerMs: 0 } });
    await u.start();
    await waitFor(() => u.status().connected, { message: 'connected' });
    const client = (u as unknown as { client: { stream: { write: (...a: unknown[]) => boolean }; on(e: 'packetsend', f: (p: { cmd: string; topic: string; payload: Buffer }) => void): void } }).client;
    const small: Buffer[] = [];
    const realWrite = client.stream.write;
    client.stream.write = function (this: unknown, ...a: unknown[]) {
      if (Buffer.isBuffer(a[0]) && a[0].length <= 4) small.push(a[0]);
      return realWrite.apply(this, a);
    };
    const lengths: number[] = [];
    client.on('packetsend', (p) => {
      if (p.cmd === 'publish' && p.topic.endsWith('/events')) lengths.push(2 + Buffer.byteLength(p.topic) + 2 + p.payload.length);
    });
    // Lengths nothing else in this process publishes (a test central's acks are far shorter),
    // so each header is made by these publishes.
    for (let i = 0; i < 5; i++) {
      await outbox.append([makeEnvelope({ type: 'sensor.reading', source: { device: 'd1' }, data: { pad: 'p'.repeat(9000 + 397 * i) } }, { site, edge })]);
    }
    await waitFor(() => outbox.stats().events === 0, { message: 'PUBACKed' });
    assert.equal(lengths.length, 5);
    for (const n of lengths) {
      const expected = Buffer.from([(n % 128) | 0x80, n >> 7]);
      const header = small.find((b) => b.equals(expected));
      assert.ok(header, `the remaining-length header of a ${n}-byte publish was written`);
      assert.ok(header.buffer.byteLength <= 4, `its memory is ${header.buffer.byteLength} bytes: a pool slab kept alive as long as mqtt-packet caches it`);
    }
  });

  it('ack: broker retries an ack the outbox could not apply (a full disk): nothing stays stuck in flight', async () => {
    central = await startTestCentral({ url: broker.url, site, edge, ack: false });
    // The store refuses its writes for a while (disk full), then takes them again.
    const realAck = outbox.ack.bind(outbox);
    let refusing = true;
    const refusedSeqs = new Set<number>();
    outbox.ack = (ranges) => {
      if (!refusing) return realAck(ranges);
      for (const [from, to] of ranges) for (let q = from; q <= to; q++) refusedSeqs.add(q);
      return Promise.reject(new EdgewardError('EDGE_OUTBOX_WRITE_FAILED', 'IO error: No space left on device'));
    };
    const u = make({ ack: 'broker' });
    await append(30);
    await u.start();
    await waitFor(() => refusedSeqs.size === 30, { message: 'every batch PUBACKed, its delete refused' });
    refusing = false;
    // No reconnect, no new event: the refused acks are applied once the store writes again.
    await waitFor(() => outbox.stats().events === 0, { timeoutMs: 10_000, message: 'the PUBACKed events deleted' });
    assert.equal(u.status().inflightBatches, 0, 'nothing left in flight');
  });

  it('keeps retrying while the broker is absent, publishes nothing, drains the backlog once it is up', async () => {
    const port = await freePort();
    // The uplink may reconnect before the central has subscribed: what it sent then went
    // nowhere, and only the resend after ackTimeoutMs delivers it (no new append needed).
    const u = make({ ackTimeoutMs: 1000 }, `mqtt://127.0.0.1:${port}`);
    let published = 0;
    u.on('publish', () => {
      published++;
    });
    await append(35);
    await u.start();
    // An observation window for a negative check (several reconnect attempts fit in it), not synchronization.
    await delay(600);
    assert.equal(u.status().connected, false);
    assert.equal(published, 0, 'nothing published while disconnected');
    const late = await startMosquitto({ port });
    try {
      central = await startTestCentral({ url: late.url, site, edge, ack: true });
      const c = central;
      // No new event is appended: the backlog must drain on connect.
      await waitFor(() => outbox.stats().events === 0, {
        timeoutMs: 10_000,
        message: 'backlog drained on connect',
      });
      assert.equal(c.byId.size, 35);
      await u.stop();
      await c.close();
      central = undefined;
    } finally {
      await late.stop();
    }
  });

  it('a link lost with many publishes pending logs two lines, not one per batch', async () => {
    const frozen = await startMosquitto();
    const { log, lines } = captureLogger('info');
    try {
      central = await startTestCentral({ url: frozen.url, site, edge, ack: false });
      const cfg: UplinkConfig = { url: frozen.url, ack: 'central', batch: { maxEvents: 10, maxBytes: 262144, lingerMs: 0 }, compress: 'gzip', maxInflight: 16 };
      // Keepalive 1 s: a frozen broker is noticed in ~1.5 s, with every publish since still pending.
      const u = new Uplink({ config: cfg, site, edge, version: 't', outbox, log, reconnectMinMs: 50, reconnectMaxMs: 300, keepaliveS: 1 });
      uplink = u;
      let published = 0;
      u.on('publish', () => {
        published++;
      });
      await u.start();
      await waitFor(() => u.status().connected, { message: 'connected' });
      const pid = frozen.pid;
      assert.ok(pid !== undefined, 'the broker runs');
      process.kill(pid, 'SIGSTOP');
      try {
        await append(120); // 12 batches, none PUBACKed: the broker reads nothing
        await waitFor(() => !u.status().connected, { timeoutMs: 10_000, message: 'keepalive noticed the frozen broker' });
      } finally {
        process.kill(pid, 'SIGCONT');
      }
      const failed = lines.filter((l) => /failed/.test(String(l.msg)));
      assert.deepEqual(
        failed.map((l) => l.msg),
        ['batch publish failed; will resend', 'more batches failed with the connection; will resend'],
        JSON.stringify(failed),
      );
      assert.ok(published >= 2, `published ${published}`);
      assert.equal((failed[1] as { batches?: number }).batches, published - 1, 'the first is on its own line');
      // And nothing is lost for it: the batches go again once the broker answers.
      central.setAck(true);
      await waitFor(() => outbox.stats().events === 0, { timeoutMs: 15_000, message: 'resent and acked after the freeze' });
    } finally {
      await uplink?.stop();
      uplink = undefined;
      await central?.close();
      central = undefined;
      await frozen.stop();
    }
  });

  it('start() fails clearly when a TLS file is missing', async () => {
    const u = make({ url: 'mqtts://127.0.0.1:8883', ca: '/nonexistent/ca.pem' });
    await assert.rejects(u.start(), (err: unknown) => isEdgewardError(err, 'EDGE_UPLINK_TLS'));
    assert.equal(u.status().connected, false);
  });

  it('start() fails clearly, instead of mqtt.js throwing later, when the key file is not a PEM key', async () => {
    const dir = await tmpDir('uplink-bad-key');
    try {
      const key = path.join(dir.path, 'client.key');
      writeFileSync(key, 'this is not a key');
      const u = make({ url: 'mqtts://127.0.0.1:8883', key });
      await assert.rejects(
        u.start(),
        (err: unknown) => isEdgewardError(err, 'EDGE_UPLINK_TLS') && /^uplink\.key: .*client\.key: not a usable PEM private key/.test((err as Error).message),
      );
    } finally {
      await dir.cleanup();
    }
  });
});

describe('maxEventBytes: an event of that size always fits in one packet of maxPacketBytes', () => {
  it('holds for incompressible events, gzip (levels 1 and 9) or none, at several limits', async () => {
    const site = 'qumei-alley-07';
    const edge = 'gate-07';
    const topic = `edgeward/v1/${site}/${edge}/events`;
    for (const limit of [4096, 65_536, 131_072, 1_048_576]) {
      const room = maxEventBytes({ maxPacketBytes: limit }, site, edge);
      assert.ok(room > limit * 0.97 - 400, `room ${room} for ${limit}`);
      // Noise as a JSON string value: incompressible for deflate beyond base64's 6 bits per byte.
      const noise = randomBytes(room).toString('base64');
      const json = `{"data":"${noise}`.slice(0, room - 2) + '"}';
      assert.equal(Buffer.byteLength(json), room);
      for (const compress of ['gzip', 'none'] as const) {
        for (const level of [1, 9]) {
          const payload = await encodeBatch({ site, edge, epoch: '01JQ3V6X0000000000000000ZZ' }, [json], compress, level);
          const packet = publishPacketBytes(topic, payload.length);
          assert.ok(packet <= limit, `${compress}/${level}: packet ${packet} > ${limit}`);
        }
      }
    }
  });

  it('publishPacketBytes counts the fixed header, topic, packet id and payload', () => {
    // remaining = 2 + 1 + 2 + 100 = 105 (< 128: one length byte)
    assert.equal(publishPacketBytes('t', 100), 1 + 1 + 105);
    // remaining = 2 + 1 + 2 + 200 = 205 (two length bytes)
    assert.equal(publishPacketBytes('t', 200), 1 + 2 + 205);
  });
});
