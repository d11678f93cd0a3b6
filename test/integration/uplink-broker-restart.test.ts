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
import { delay, waitFor } from '../helpers/wait.js';

const site = 'pengqu-qumei';
const edge = 'gate-07';

describe('uplink across a broker crash (integration, Mosquitto SIGKILL + restart)', function () {
  this.timeout(45_000);
  let broker: TestMosquitto;
  let dir: TmpDir;
  let outbox: LevelOutbox;
  let uplink: Uplink;
  let central: TestCentral;

  before(async () => {
    ({ broker, dir, outbox, central } = await startUplinkHarness({
      site,
      edge,
      prefix: 'uplink-restart',
      maxBytes: 256 * 1024 * 1024,
      centralAck: true,
    }));
    const config: UplinkConfig = {
      url: broker.url,
      ack: 'central',
      batch: { maxEvents: 200, maxBytes: 262144, lingerMs: 50 },
      compress: 'gzip',
      ackTimeoutMs: 2000,
    };
    uplink = new Uplink({ config, site, edge, version: '0.1.0-test', outbox, log: silentLogger() });
  });

  after(async () => {
    await stopUplinkHarness({ uplink, central, outbox, broker, dir });
  });

  it('every accepted event reaches the central although the broker is killed mid-stream', async () => {
    let connects = 0;
    let disconnects = 0;
    uplink.on('connect', () => connects++);
    uplink.on('disconnect', () => disconnects++);
    await uplink.start();
    await waitFor(() => uplink.status().connected, { message: 'uplink connected' });

    const accepted = new Set<string>();
    let stopStreaming = false;
    // Stream: 20 events every 5 ms, whatever happens to the broker.
    const streaming = (async () => {
      let i = 0;
      while (!stopStreaming) {
        const batch = Array.from({ length: 20 }, () =>
          makeEnvelope(
            { type: 'sensor.reading', source: { device: 'smoke-1' }, data: { i: i++ } },
            { site, edge },
          ),
        );
        const stored = await outbox.append(batch);
        for (const e of stored) accepted.add(e.id);
        await delay(5);
      }
    })();

    await waitFor(() => central.byId.size >= 500, {
      timeoutMs: 10_000,
      message: 'stream flowing before the crash',
    });
    await broker.kill();
    const killedAt = Date.now();
    await waitFor(() => !uplink.status().connected, { message: 'uplink noticed the crash' });
    // 3 s of outage, the stream keeps appending.
    await delay(3000 - (Date.now() - killedAt));
    await broker.restart();
    await waitFor(() => uplink.status().connected, { timeoutMs: 15_000, message: 'uplink reconnected' });
    await waitFor(() => central.connected, { timeoutMs: 5000, message: 'central reconnected' });
    // The stream goes on across the restart: events appended after it must arrive too.
    const atReconnect = accepted.size;
    await waitFor(() => accepted.size >= atReconnect + 500, { timeoutMs: 15_000, message: 'events appended after the restart' });
    stopStreaming = true;
    await streaming;

    await waitFor(() => [...accepted].every((id) => central.byId.has(id)), {
      timeoutMs: 20_000,
      intervalMs: 100,
      message: `all ${accepted.size} accepted events at the central`,
    });
    await waitFor(() => outbox.stats().events === 0, {
      timeoutMs: 10_000,
      message: 'outbox drained by acks',
    });
    assert.equal(central.byId.size, accepted.size);
    assert.ok(connects >= 2 && disconnects >= 1, `connects ${connects}, disconnects ${disconnects}`);
  });
});
