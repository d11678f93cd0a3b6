/**
 * Child process: open the LevelOutbox at argv[2] once and print one JSON line,
 * `{"ok":true,"events":n,"epoch":"…"}` or `{"ok":false,"code":"…","message":"…"}`
 * (the messages of the error and its causes, joined by ` | `).
 * For tests that open a store under resource limits (`ulimit -S -f`).
 */
import { isEdgewardError } from '../../edge/errors.js';
import { LevelOutbox } from '../../sync/outbox.js';

async function main(): Promise<void> {
  const ob = new LevelOutbox({ dir: process.argv[2], maxBytes: 1 << 30, site: 'open-site', edge: 'gate-98' });
  try {
    await ob.open();
  } catch (err) {
    const code = isEdgewardError(err) ? err.code : 'UNKNOWN';
    // The store's own words are at the bottom of the cause chain (LevelDB's `IO error: …`).
    const messages: string[] = [];
    for (let e = err as { message?: string; cause?: unknown } | undefined; e; e = e.cause as typeof e) messages.push(String(e.message));
    process.stdout.write(`${JSON.stringify({ ok: false, code, message: messages.join(' | ') })}\n`);
    return;
  }
  process.stdout.write(`${JSON.stringify({ ok: true, events: ob.stats().events, epoch: ob.epoch })}\n`);
  await ob.close();
}

main().catch((err) => {
  process.stderr.write(`outbox-open failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
