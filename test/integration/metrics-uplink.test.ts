import assert from 'node:assert/strict';
import { parseConfig } from '../../edge/config.js';
import { silentLogger } from '../../edge/log.js';
import { Runtime } from '../../edge/runtime.js';
import { startTestCentral, type TestCentral } from '../helpers/central.js';
import { startMosquitto, type TestMosquitto } from '../helpers/mosquitto.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

/** The value of one sample line of the Prometheus text, e.g. `edgeward_events_out_total{type="door.opened"}`. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('metrics: events in and out by type through a real uplink (integration)', function () {
  this.timeout(30_000);
  let broker: TestMosquitto;
  let central: TestCentral;
  let runtime: Runtime;
  let dir: TmpDir;

  before(async () => {
    dir = await tmpDir('metrics-uplink');
    broker = await startMosquitto();
    central = await startTestCentral({ url: broker.url, site: 'test-site', edge: 'gate-01', ack: true });
    const config = parseConfig(
      [
        'site: test-site',
        'edge: gate-01',
        `dataDir: ${dir.path}`,
        'http: { host: 127.0.0.1, port: 0 }',
        `uplink: { url: "${broker.url}", ack: central, batch: { maxEvents: 7, maxBytes: 262144, lingerMs: 20 } }`,
        'privacy: { siteKey: test-site-key-0123456789 }',
      ].join('\n'),
      {},
    );
    runtime = new Runtime({ config, log: silentLogger() });
    await runtime.start();
  });

  after(async () => {
    await runtime?.stop();
    await central?.close();
    await broker?.stop();
    await dir?.cleanup();
  });

  it('counts every acked event out under its type, once', async () => {
    const doors = Array.from({ length: 30 }, (_, i) => ({ type: 'door.opened' as const, source: { device: 'door-1' }, data: { door: i % 2 } }));
    const denied = Array.from({ length: 5 }, () => ({ type: 'access.denied' as const, source: { device: 'door-2' }, data: { door: 0 } }));
    await runtime.ingest([...doors, ...denied]);
    await runtime.ingest([{ type: 'door.forced', source: { device: 'door-3' }, data: { door: 0 } }]);
    await waitFor(() => runtime.outbox.stats().events === 0, { timeoutMs: 15_000, message: 'everything acked' });
    assert.equal(central.byId.size, 36);
    const text = await (await fetch(`http://127.0.0.1:${runtime.port}/metrics`)).text();
    for (const [type, n] of [
      ['door.opened', 30],
      ['access.denied', 5],
      ['door.forced', 1],
    ] as const) {
      assert.equal(sample(text, `edgeward_events_in_total{type="${type}"}`), n, `in ${type}`);
      assert.equal(sample(text, `edgeward_events_out_total{type="${type}"}`), n, `out ${type}`);
    }
  });
});
