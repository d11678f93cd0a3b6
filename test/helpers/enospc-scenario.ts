/**
 * A full disk for real, for test/integration/outbox-enospc.test.ts: run inside
 * `unshare -rm` with a small tmpfs mounted at argv[3] (the mount lives only in
 * that namespace, so both steps run there, one after the other).
 *
 *   enospc-scenario.ts write <dir>   fill the tmpfs with a filler file, append until the
 *                                    store refuses (ENOSPC), remove the filler, append 300
 *                                    more (retrying until accepted), write the acknowledged
 *                                    ids to <dir>/acked.json, then SIGKILL itself.
 *   enospc-scenario.ts check <dir>   reopen the store; print one JSON line: how many ids were
 *                                    acknowledged and how many of them it no longer holds.
 */
import { randomBytes } from 'node:crypto';
import { appendFileSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { systemClock } from '../../edge/clock.js';
import { makeEnvelope } from '../../edge/envelope.js';
import { LevelOutbox } from '../../sync/outbox.js';

const IDS = { site: 'enospc-site', edge: 'gate-97' };

async function main(): Promise<void> {
  const [mode, dir] = process.argv.slice(2);
  // A small hot tail, so that reads go to LevelDB rather than to memory.
  const small = { critical: 4096, warning: 4096, info: 4096 };
  // The reopen back-off is timing logic: its clock is ours, shifted forward instead of slept on.
  let offset = 0;
  const clock = { ...systemClock, now: () => Date.now() + offset };
  const ob = new LevelOutbox({ dir: join(dir, 'outbox'), maxBytes: 1 << 30, ...IDS, hotTailBytes: small, clock });
  await ob.open();
  // Noise, not a repeated letter: LevelDB compresses its tables, and the table of a log of
  // compressible events would still fit on the disk that log filled.
  const ev = (i: number) =>
    makeEnvelope(
      {
        type: 'door.opened',
        source: { device: 'door-1' },
        data: { i, pad: randomBytes(300).toString('base64') },
      },
      IDS,
    );
  if (mode === 'check') {
    const stored = new Set(
      (await ob.read({ maxEvents: 1_000_000, maxBytes: 1 << 30 })).map(
        (e) => (JSON.parse(e.json) as { id: string }).id,
      ),
    );
    const acked = JSON.parse(readFileSync(join(dir, 'acked.json'), 'utf8')) as string[];
    const missing = acked.filter((id) => !stored.has(id));
    process.stdout.write(`${JSON.stringify({ acked: acked.length, missing: missing.length })}\n`);
    await ob.close();
    return;
  }
  const acked: string[] = [];
  const save = () => writeFileSync(join(dir, 'acked.json'), JSON.stringify(acked));
  /** Append 300 more, retrying each until accepted (the store reopens once it can), then save. */
  const appendAfter = async (): Promise<number> => {
    const deadline = Date.now() + 20_000;
    for (let i = 0; i < 300; i++) {
      for (;;) {
        try {
          const [e] = await ob.append([ev(1_000_000 + i)]);
          acked.push(e.id);
          break;
        } catch (err) {
          if (Date.now() > deadline) throw err;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
    save();
    return 300;
  };
  const readNow = async (): Promise<number | string> => {
    try {
      return (await ob.read({ maxEvents: 100, maxBytes: 1 << 30 })).length;
    } catch (err) {
      return String(err);
    }
  };
  // Leave ~1.5 MB: the log fills it within a few thousand events.
  const fs = statfsSync(dir);
  writeFileSync(join(dir, 'filler'), Buffer.alloc(Math.max(0, fs.bavail * fs.bsize - 1_500_000)));
  let refused = 0;
  let message = '';
  for (let i = 0; i < 100_000 && refused < 5; i++) {
    try {
      const [e] = await ob.append([ev(i)]);
      acked.push(e.id);
    } catch (err) {
      refused++;
      message ||= String((err as { cause?: { message?: string } }).cause?.message ?? err);
    }
  }
  const writeError = ob.stats().writeError;
  const before = acked.length;
  // Take the last free pages too, then give the store a write to try (after its reopen
  // back-off): with no room at all, a reopen would fail and shut the store, reads included.
  for (;;) {
    try {
      appendFileSync(join(dir, 'filler'), Buffer.alloc(4096));
    } catch {
      break;
    }
  }
  offset += 1100;
  await ob.append([ev(-1)]).then(
    () => undefined,
    () => refused++,
  );
  // While the disk is full, what is stored can still be read (and so sent upstream).
  const readDuringSpell = await readNow();
  rmSync(join(dir, 'filler'));
  const after = await appendAfter();
  process.stdout.write(
    `${JSON.stringify({ refused, message, writeError, readDuringSpell, before, after, cleared: ob.stats().writeError === undefined })}\n`,
  );
  // No close: whatever LevelDB has not made durable is lost, as in a power cut or a crash.
  process.kill(process.pid, 'SIGKILL');
}

main().catch((err) => {
  process.stderr.write(`enospc-scenario failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
