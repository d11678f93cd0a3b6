/**
 * Child process for the outbox crash test: appends events to the LevelOutbox
 * at argv[2] forever, in a mix of single, concurrent and 50-event appends, and
 * acks older seqs now and then. It prints, one line each, only facts that are
 * durable by contract:
 *
 *   EPOCH <epoch> <lastSeq at open>
 *   A <seq> <id>        after the append holding it resolved
 *   ACKING <from> <to>  before an ack is issued (it may or may not land)
 *   ACKED <from> <to>   after the ack resolved
 *
 * The test SIGKILLs it at a random instant. Pipe writes are synchronous on
 * Linux, so a printed line was written before the kill.
 *
 * Usage: outbox-writer <dir> [maxBytes] [mix]. mix `all` (default) writes
 * info/warning/critical; `info` writes info events only (with a small maxBytes
 * the outbox then evicts all the time).
 */
import { type Envelope, makeEnvelope, type Severity } from '../../edge/envelope.js';
import { LevelOutbox } from '../../sync/outbox.js';

const IDS = { site: 'crash-site', edge: 'gate-99' };
const MIXES: Record<string, Severity[]> = {
  all: ['info', 'info', 'info', 'warning', 'critical'],
  info: ['info'],
};
let sevs: Severity[] = MIXES.all;

function ev(i: number): Envelope {
  const severity = sevs[i % sevs.length];
  const type = severity === 'critical' ? 'door.forced' : severity === 'warning' ? 'door.held_open' : 'door.opened';
  return makeEnvelope({ type, severity, source: { device: `door-${i % 7}`, driver: 'modbus-door' }, data: { door: i % 4, i } }, IDS);
}

function report(stored: Envelope[]): void {
  process.stdout.write(stored.map((e) => `A ${e.seq} ${e.id}\n`).join(''));
}

async function main(): Promise<void> {
  const dir = process.argv[2];
  if (!dir) throw new Error('usage: outbox-writer <dir> [maxBytes] [mix]');
  const maxBytes = Number(process.argv[3] ?? 1 << 30);
  sevs = MIXES[process.argv[4] ?? 'all'] ?? MIXES.all;
  const ob = new LevelOutbox({ dir, maxBytes, ...IDS });
  await ob.open();
  process.stdout.write(`EPOCH ${ob.epoch} ${ob.stats().lastSeq}\n`);
  let i = 0;
  let ackFrom = 1;
  for (let round = 0; ; round++) {
    const mode = round % 4;
    if (mode === 0) {
      report(await ob.append([ev(i++)]));
    } else if (mode === 1) {
      // Concurrent singles: group commit puts them in few batches.
      await Promise.all(Array.from({ length: 20 }, () => ob.append([ev(i++)]).then(report)));
    } else if (mode === 2) {
      report(await ob.append(Array.from({ length: 50 }, () => ev(i++))));
    } else {
      // An ack racing with appends, over a few old seqs.
      const from = ackFrom;
      const to = from + 9;
      ackFrom = to + 40;
      process.stdout.write(`ACKING ${from} ${to}\n`);
      const [, stored] = await Promise.all([
        ob.ack([[from, to]]).then(() => process.stdout.write(`ACKED ${from} ${to}\n`)),
        ob.append([ev(i++), ev(i++)]),
      ]);
      report(stored);
    }
  }
}

main().catch((err) => {
  process.stderr.write(`outbox-writer failed: ${err?.stack ?? err}\n`);
  process.exit(1);
});
