import assert from 'node:assert/strict';
import type { UplinkConfig } from '../../edge/config-types.js';
import { makeEnvelope } from '../../edge/envelope.js';
import { silentLogger } from '../../edge/log.js';
import type { LevelOutbox } from '../../sync/outbox.js';
import { Uplink } from '../../sync/uplink.js';
import type { TestCentral } from '../helpers/central.js';
import type { TestMosquitto } from '../helpers/mosquitto.js';
import type { TmpDir } from '../helpers/tmp.js';
import { startUplinkHarness, stopUplinkHarness } from '../helpers/uplink-harness.js';
import { waitFor } from '../helpers/wait.js';

const site = 'pengqu-qumei';
const edge = 'gate-07';
const BACKLOG = 100_000;

for (const ack of ['central', 'broker'] as const) {
  describe(`uplink priority, ack: ${ack} (integration, 100k backlog)`, function () {
    this.timeout(60_000);
    let broker: TestMosquitto;
    let dir: TmpDir;
    let outbox: LevelOutbox;
    let uplink: Uplink;
    let central: TestCentral;

    before(async () => {
      ({ broker, dir, outbox, central } = await startUplinkHarness({
        site,
        edge,
        prefix: 'uplink-priority',
        maxBytes: 512 * 1024 * 1024,
        centralAck: ack === 'central',
      }));
    });

    after(async () => {
      await stopUplinkHarness({ uplink, central, outbox, broker, dir });
    });

    it('a new critical event overtakes the info backlog, then the backlog drains completely', async () => {
      // The backlog builds up while the uplink is stopped.
      for (let i = 0; i < BACKLOG; i += 1000) {
        await outbox.append(
          Array.from({ length: 1000 }, (_, k) =>
            makeEnvelope(
              { type: 'sensor.reading', source: { device: 'smoke-1' }, data: { i: i + k } },
              { site, edge },
            ),
          ),
        );
      }
      assert.equal(outbox.stats().events, BACKLOG);

      const config: UplinkConfig = {
        url: broker.url,
        ack,
        batch: { maxEvents: 500, maxBytes: 262144, lingerMs: 250 },
        compress: 'gzip',
      };
      uplink = new Uplink({ config, site, edge, version: '0.1.0-test', outbox, log: silentLogger() });
      const startedAt = Date.now();
      await uplink.start();
      // The backlog drains on connect, without waiting for a new event.
      await waitFor(() => central.arrivals.length > 0, {
        timeoutMs: 10_000,
        message: 'backlog starts draining',
      });

      const [critical] = await outbox.append([
        makeEnvelope(
          { type: 'fire.alarm', source: { device: 'panel-1' }, data: { zone: 3 } },
          { site, edge },
        ),
      ]);
      const appendedAt = Date.now();
      await waitFor(() => central.byId.has(critical.id), { timeoutMs: 10_000, message: 'critical arrived' });
      const latencyMs = Date.now() - appendedAt;
      const index = central.arrivalIndex.get(critical.id)!;
      const infoBefore = new Set(central.arrivals.slice(0, index).map((e) => e.id)).size;
      assert.ok(infoBefore < BACKLOG, `critical arrived after ${infoBefore} of ${BACKLOG} info events`);

      await waitFor(() => central.byId.size === BACKLOG + 1, {
        timeoutMs: 40_000,
        intervalMs: 50,
        message: 'whole backlog arrived',
      });
      const drainS = (Date.now() - startedAt) / 1000;
      await waitFor(() => outbox.stats().events === 0, {
        timeoutMs: 10_000,
        message: 'outbox emptied by acks',
      });
      assert.ok(central.byId.size - infoBefore > 1000, 'the critical did not just arrive at the very end');
      console.log(
        `      ack: ${ack}: critical after ${infoBefore} info events, ${latencyMs} ms after append; ` +
          `${BACKLOG} events drained in ${drainS.toFixed(2)} s (${Math.round(BACKLOG / drainS)} events/s)`,
      );
    });
  });
}
