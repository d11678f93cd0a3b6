import { LevelOutbox } from '../../sync/outbox.js';
import type { Uplink } from '../../sync/uplink.js';
import { startTestCentral, type TestCentral } from './central.js';
import { startMosquitto, type TestMosquitto } from './mosquitto.js';
import { type TmpDir, tmpDir } from './tmp.js';

/**
 * What an uplink integration test runs against: a Mosquitto broker, a
 * LevelOutbox in a temp dir and a test central subscribed on the broker. The
 * test builds its own Uplink (its config is what each test is about).
 */
export interface UplinkHarness {
  broker: TestMosquitto;
  dir: TmpDir;
  outbox: LevelOutbox;
  central: TestCentral;
}

/** Options for {@link startUplinkHarness}. */
export interface UplinkHarnessOptions {
  site: string;
  edge: string;
  /** Temp dir name prefix. */
  prefix: string;
  /** The outbox's maxBytes. */
  maxBytes: number;
  /** Whether the central acks what it receives. */
  centralAck: boolean;
}

/** Start broker, open the outbox, start the central; on a failure, stop what did start and reject. */
export async function startUplinkHarness(opts: UplinkHarnessOptions): Promise<UplinkHarness> {
  const { site, edge } = opts;
  const h: Partial<UplinkHarness> = {};
  try {
    h.broker = await startMosquitto();
    h.dir = await tmpDir(opts.prefix);
    h.outbox = new LevelOutbox({ dir: h.dir.path, maxBytes: opts.maxBytes, site, edge });
    await h.outbox.open();
    h.central = await startTestCentral({ url: h.broker.url, site, edge, ack: opts.centralAck });
    return h as UplinkHarness;
  } catch (err) {
    await stopUplinkHarness(h);
    throw err;
  }
}

/**
 * Stop, in dependency order, whichever of the parts are set: the uplink before
 * the central and the outbox it reads, the broker after its clients, the temp
 * dir last.
 */
export async function stopUplinkHarness(h: Partial<UplinkHarness> & { uplink?: Uplink }): Promise<void> {
  await h.uplink?.stop();
  await h.central?.close();
  await h.outbox?.close();
  await h.broker?.stop();
  await h.dir?.cleanup();
}
