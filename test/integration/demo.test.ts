import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import net from 'node:net';
import pino from 'pino';
import { type DemoInfo, type DemoSummary, runDemo } from '../../edge/demo.js';
import { waitFor } from '../helpers/wait.js';

/** True when something accepts TCP connections on 127.0.0.1:port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

describe('edgeward demo (integration, in-process)', function () {
  this.timeout(30_000);

  it('runs the whole loop: synthetic events reach the central, are acked, and everything stops cleanly', async () => {
    const lines: string[] = [];
    const ac = new AbortController();
    let info: DemoInfo | undefined;
    const sigintBefore = process.listenerCount('SIGINT');
    const done: Promise<DemoSummary> = runDemo({
      httpPort: 0,
      durationMs: 25_000, // a backstop: the test stops it through the signal
      ratePerSec: 10,
      signal: ac.signal,
      print: (l) => lines.push(l),
      log: pino({ level: 'silent' }),
      onReady: (i) => {
        info = i;
      },
    });
    // Surface a failed start at once instead of as a waitFor timeout.
    let failed: unknown;
    done.catch((err) => {
      failed = err;
    });
    try {
      const ready = await waitFor(
        () => {
          if (failed) throw failed;
          return info;
        },
        { timeoutMs: 15_000, message: 'demo ready' },
      );
      assert.ok(lines.some((l) => l.includes(`editor   http://127.0.0.1:${ready.httpPort}/`)));

      // The central printed events and acked them: the edge saw the acks (lastAckAt) over a live uplink.
      await waitFor(() => ready.central.acked > 0 && ready.central.received >= 5, {
        timeoutMs: 10_000,
        message: 'central acked at least 5 events',
      });
      const status = await waitFor(
        async () => {
          const s = (await (await fetch(ready.statusUrl)).json()) as {
            site: string;
            uplink: { connected: boolean; lastAckAt: string | null };
          };
          return s.uplink.connected && s.uplink.lastAckAt !== null ? s : undefined;
        },
        { timeoutMs: 5_000, message: '/api/v1/status shows uplink connected with an ack' },
      );
      assert.equal(status.site, 'demo-community');
      const eventLines = lines.filter((l) => l.includes(' demo-community/gate-01 '));
      assert.ok(eventLines.length >= 5, `event lines printed: ${eventLines.length}`);
      // Card numbers leave the box only as 16-hex pseudonyms.
      for (const l of eventLines.filter((x) => x.includes('"card"'))) assert.match(l, /"card":"[0-9a-f]{16}"/);
      const metrics = await (await fetch(ready.metricsUrl)).text();
      assert.match(metrics, /edgeward_/);

      ac.abort();
      const summary = await done;
      assert.ok(summary.emitted > 0);
      assert.ok(summary.received >= 5);
      assert.ok(summary.acked > 0);
      assert.equal(await listening(ready.httpPort), false, 'HTTP port closed');
      assert.equal(await listening(Number(new URL(ready.brokerUrl).port)), false, 'broker port closed');
      assert.equal(existsSync(ready.dataDir), false, 'temp data dir removed');
      assert.equal(process.listenerCount('SIGINT'), sigintBefore, 'SIGINT handler removed');
      assert.ok(lines.includes('edgeward demo: stopping'));
    } finally {
      ac.abort();
      await done.catch(() => undefined);
    }
  });
});
