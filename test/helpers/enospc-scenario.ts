/**
 * A full disk for real, for test/integration/outbox-enospc.test.ts: run inside
 * `unshare -rm` with a small tmpfs mounted at argv[3] (the mount lives only in
 * that namespace, so both steps run there, one after the other).
 *
 *   enospc-scenario.ts write <dir>   fill the tmpfs with a filler file, append until the
 *                                    store refuses (ENOSPC), remove the filler, append 300
 *                                    more (retrying until accepted), write the acknowledged
 *                                    ids to <dir>/acked.json, then SIGKILL itself.
 *   enospc-scenario.ts crash-full <dir>  with a 3 MiB disk reserve written, append 2,000 events,
 *                                    fill the tmpfs to the last page with a filler file (the store
 *                                    itself never fails a write), write the ids, SIGKILL itself:
 *                                    a box whose disk filled, then lost power.
 *   enospc-scenario.ts full-reserve <dir>  with a 2 MiB disk reserve written, fill the tmpfs with
 *                                    a filler file and append until the store refuses (ENOSPC); then
 *                                    append an alarm (after the reopen back-off): print whether it
 *                                    was stored, write the ids, SIGKILL itself.
 *   enospc-scenario.ts repair-full <dir>  with a 6 MiB disk reserve written, append 2,000 events,
 *                                    close, damage the MANIFEST (a power cut on an SD card), fill
 *                                    the tmpfs until a repair fits only with the reserve's room,
 *                                    write the ids, exit.
 *   enospc-scenario.ts check <dir>   reopen the store; print one JSON line: how many ids were
 *                                    acknowledged and how many of them it no longer holds, and
 *                                    whether it had to release the disk reserve to open.
 */
import { randomBytes } from 'node:crypto';
import { appendFileSync, readdirSync, readFileSync, rmSync, statfsSync, statSync, writeFileSync } from 'node:fs';
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
  // No reserve in the write step (its tmpfs is too small for the default anyway): that step is
  // about the store's own reopen; the crash-full step is about the reserve.
  // The check's 6 MiB: too much to write back on these disks, so a released reserve stays released.
  const reserveBytes = mode === 'write' ? 0 : mode === 'full-reserve' ? 2 << 20 : mode === 'crash-full' ? 3 << 20 : 6 << 20;
  const ob = new LevelOutbox({ dir: join(dir, 'outbox'), maxBytes: 1 << 30, ...IDS, hotTailBytes: small, clock, reserveBytes });
  let opened: string;
  try {
    await ob.open();
    opened = 'ok';
  } catch (err) {
    opened = String((err as Error).message);
  }
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
    if (opened !== 'ok') {
      process.stdout.write(`${JSON.stringify({ opened })}\n`);
      return;
    }
    const stored = new Set(
      (await ob.read({ maxEvents: 1_000_000, maxBytes: 1 << 30 })).map(
        (e) => (JSON.parse(e.json) as { id: string }).id,
      ),
    );
    const acked = JSON.parse(readFileSync(join(dir, 'acked.json'), 'utf8')) as string[];
    const missing = acked.filter((id) => !stored.has(id));
    const reserveReleased = ob.stats().reserveReleasedAt !== undefined;
    process.stdout.write(`${JSON.stringify({ opened, acked: acked.length, missing: missing.length, reserveReleased })}\n`);
    await ob.close();
    return;
  }
  const acked: string[] = [];
  const save = () => writeFileSync(join(dir, 'acked.json'), JSON.stringify(acked));
  const reserve = join(dir, 'outbox.reserve');
  if (mode === 'crash-full' || mode === 'full-reserve' || mode === 'repair-full') {
    const size = () => {
      try {
        return statSync(reserve).size;
      } catch {
        return 0;
      }
    };
    // Written in the background after the open.
    for (const deadline = Date.now() + 10_000; size() < reserveBytes && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
    if (mode === 'repair-full') {
      for (let i = 0; i < 10; i++) {
        for (const e of await ob.append(Array.from({ length: 200 }, (_, k) => ev(i * 200 + k)))) acked.push(e.id);
      }
      save();
      await ob.close();
      const store = join(dir, 'outbox');
      const manifest = readdirSync(store).find((f) => f.startsWith('MANIFEST-'))!;
      writeFileSync(join(store, manifest), 'not a manifest');
      const files = readdirSync(store).reduce((n, f) => n + statSync(join(store, f)).size, 0);
      // What a repair needs (twice the store's files and 1 MiB, see `room`), less 2 MiB: only
      // the reserve's room makes it fit.
      const need = 2 * files + (1 << 20);
      const free = () => statfsSync(dir).bavail * statfsSync(dir).bsize;
      writeFileSync(join(dir, 'filler'), Buffer.alloc(Math.max(0, free() - (need - (2 << 20)))));
      process.stdout.write(`${JSON.stringify({ acked: acked.length, reserve: size(), need, free: free() })}\n`);
      return;
    }
    if (mode === 'full-reserve') {
      const reserved = size();
      const fs0 = statfsSync(dir);
      writeFileSync(join(dir, 'filler'), Buffer.alloc(Math.max(0, fs0.bavail * fs0.bsize - 1_000_000)));
      let refused = 0;
      for (let i = 0; i < 100_000 && refused === 0; i++) {
        try {
          const [e] = await ob.append([ev(i)]);
          acked.push(e.id);
        } catch {
          refused++;
        }
      }
      const released = () => ob.stats().reserveReleasedAt !== undefined;
      const releasedBefore = released();
      offset += 1100; // past the reopen back-off
      const alarm = makeEnvelope({ type: 'door.forced', source: { device: 'door-1' }, data: { door: 0 } }, IDS);
      let alarmStored = false;
      try {
        const [e] = await ob.append([alarm]);
        acked.push(e.id);
        alarmStored = true;
      } catch (err) {
        alarmStored = false;
        process.stderr.write(`alarm refused: ${String(err)}\n`);
      }
      save();
      process.stdout.write(
        `${JSON.stringify({ reserved, refused, releasedBefore, alarmStored, released: released(), reserveLeft: size(), acked: acked.length })}\n`,
      );
      process.kill(process.pid, 'SIGKILL');
    }
    for (let i = 0; i < 20; i++) {
      for (const e of await ob.append(Array.from({ length: 100 }, (_, k) => ev(i * 100 + k)))) acked.push(e.id);
    }
    save();
    // Something else fills the disk (logs, a download) to the last page.
    for (const chunk of [1 << 16, 4096, 512]) {
      for (;;) {
        try {
          appendFileSync(join(dir, 'filler'), Buffer.alloc(chunk));
        } catch {
          break;
        }
      }
    }
    process.stdout.write(`${JSON.stringify({ opened, acked: acked.length, reserve: size(), free: statfsSync(dir).bavail })}\n`);
    process.kill(process.pid, 'SIGKILL');
  }
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
