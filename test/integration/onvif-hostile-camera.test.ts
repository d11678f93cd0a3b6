import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { DriverContext } from '../../drivers/driver.js';
import { OnvifClient } from '../../drivers/onvif/client.js';
import { discoverAndDescribe } from '../../drivers/onvif/discovery.js';
import { OnvifCameraDriver } from '../../drivers/onvif/driver.js';
import { EventBus } from '../../edge/bus.js';
import { systemClock } from '../../edge/clock.js';
import type { EventInput } from '../../edge/envelope.js';
import { isEdgewardError } from '../../edge/errors.js';
import { silentLogger } from '../../edge/log.js';
import { CameraSim } from '../../hardware/sim/camera-sim.js';
import { waitFor } from '../helpers/wait.js';

function recordingContext(): DriverContext & { events: EventInput[] } {
  const events: EventInput[] = [];
  const bus = new EventBus();
  return { bus, clock: systemClock, log: silentLogger(), privacy: { siteKey: 'k', rawCards: false }, events, emit: (e) => events.push(e) };
}

/** An HTTP server on 127.0.0.x, port 0, recording each request body; `reply` answers it. */
async function server(host: string, reply: (res: http.ServerResponse) => void): Promise<{ port: number; bodies: string[]; close(): Promise<void> }> {
  const bodies: string[] = [];
  const srv = http.createServer((req, res) => {
    let b = '';
    req.on('data', (c) => {
      b += c;
    });
    req.on('end', () => {
      bodies.push(b);
      reply(res);
    });
  });
  await new Promise<void>((r) => srv.listen(0, host, () => r()));
  return {
    port: (srv.address() as AddressInfo).port,
    bodies,
    close: () => {
      srv.closeAllConnections();
      return new Promise<void>((r) => srv.close(() => r()));
    },
  };
}

describe('onvif against hostile cameras (real HTTP)', function () {
  this.timeout(20_000);

  describe('a reply that would stall the onvif library', () => {
    // 64 KiB of `xmlns` with no `=`: onvif 0.8.3's namespace regex blocks the event loop 484 ms on it (1.97 s at 128 KiB).
    const BODY = 'xmlns'.repeat((64 * 1024) / 5);
    const cases: Array<[string, (res: http.ServerResponse) => void]> = [
      ['with Content-Length', (res) => res.writeHead(200, { 'content-type': 'application/soap+xml' }).end(BODY)],
      [
        'chunked, every chunk boundary inside an `xmlns` (the raw stream never shows one whole)',
        (res) => {
          res.writeHead(200, { 'content-type': 'application/soap+xml' });
          // Chunks of 50 bytes starting 3 bytes in: each boundary falls after the "xml" of an "xmlns".
          for (let start = 0, end = 3; start < BODY.length; start = end, end += 50) res.write(BODY.slice(start, end));
          res.end();
        },
      ],
    ];
    for (const [how, reply] of cases) {
      it(`is refused before the library parses it: ${how}`, async () => {
        const evil = await server('127.0.0.1', reply);
        const client = new OnvifClient({ host: '127.0.0.1', port: evil.port, username: 'u', password: 'p', timeoutMs: 5000 });
        try {
          const err = await client.connect().then(
            () => assert.fail('connect succeeded'),
            (e: unknown) => e,
          );
          assert.ok(isEdgewardError(err, 'EDGE_ONVIF_BAD_XML'), String(err));
          // Without the budget the library parses the body first and our own parser then calls it "not well-formed".
          assert.match(err.message, /refused before parsing/);
        } finally {
          client.close();
          await evil.close();
        }
      });
    }
  });

  it('does not follow a subscription address on another host (the UsernameToken would go with it)', async () => {
    const foreign = await server('127.0.0.2', (res) => res.writeHead(500).end());
    const sim = new CameraSim({ username: 'u', password: 'p', subscriptionBase: `http://127.0.0.2:${foreign.port}` });
    await sim.start();
    const ctx = recordingContext();
    const driver = new OnvifCameraDriver('cam', { host: '127.0.0.1', port: sim.port, username: 'u', password: 'p', timeoutMs: 2000, backoffMinMs: 100 }, ctx);
    try {
      await driver.start();
      await waitFor(() => /^EDGE_ONVIF_BAD_REPLY: subscription address is on host 127\.0\.0\.2/.test(driver.health().lastError ?? ''), {
        message: () => `refused subscription address (lastError ${driver.health().lastError})`,
      });
      assert.equal(foreign.bodies.length, 0, 'nothing was sent to the other host');
    } finally {
      await driver.stop();
      await sim.stop();
      await foreign.close();
    }
  });

  it('accepts a subscription address on the address the configured host name resolves to', async () => {
    const sim = new CameraSim({ username: 'u', password: 'p' }); // its addresses say 127.0.0.1
    await sim.start();
    const ctx = recordingContext();
    const driver = new OnvifCameraDriver('cam', { host: 'localhost', port: sim.port, username: 'u', password: 'p', timeoutMs: 2000 }, ctx);
    try {
      await driver.start();
      await waitFor(() => sim.pullsHeld === 1, { message: 'pulling from 127.0.0.1 with host "localhost"' });
      assert.equal(driver.health().lastError, null);
    } finally {
      await driver.stop();
      await sim.stop();
    }
  });

  for (const SECRET of ['Cam3ra-S3cret', 'Cam/Pa55#x?y']) it(`strips credentials a camera embeds in its stream and snapshot URIs (device.online, discovery): ${SECRET}`, async () => {
    const sim = new CameraSim({ username: 'u', password: 'p', uriCredentials: `admin:${SECRET}`, discovery: { port: 0 } });
    await sim.start();
    const ctx = recordingContext();
    const driver = new OnvifCameraDriver('cam', { host: '127.0.0.1', port: sim.port, username: 'u', password: 'p', timeoutMs: 2000 }, ctx);
    try {
      await driver.start();
      const online = await waitFor(() => ctx.events.find((e) => e.type === 'device.online'), { message: 'device.online' });
      assert.equal(online.data?.streamUri, sim.streamUri);
      assert.equal(online.data?.snapshotUri, sim.snapshotUri);
      assert.ok(!JSON.stringify(ctx.events).includes(SECRET), 'no event carries the password');
      // What `edgeward discover onvif` prints comes from here.
      const described = await discoverAndDescribe({ timeoutMs: 1000, multicast: false, probe: [`127.0.0.1:${sim.discoveryPort}`], username: 'u', password: 'p' });
      assert.equal(described[0]?.streamUri, sim.streamUri);
      assert.ok(!JSON.stringify(described).includes(SECRET), 'discovery output carries no password');
    } finally {
      await driver.stop();
      await sim.stop();
    }
  });
});
