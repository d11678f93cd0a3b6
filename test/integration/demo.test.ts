import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import pino from 'pino';
import {
  DEMO_CAMERA_NAME,
  DEMO_DOOR_UNITS,
  type DemoInfo,
  type DemoOptions,
  type DemoSummary,
  runDemo,
} from '../../edge/demo.js';
import { tmpDir } from '../helpers/tmp.js';
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

/** An event line of the console central (sync/console-central.ts formatEvent). */
interface Printed {
  type: string;
  device: string;
  seq: number;
  line: string;
}

const EVENT_LINE = /^\S+ +\S+ +(\S+) +demo-community\/gate-01 (\S+?)(?: x\d+)? seq=(\d+) /;

function printedEvents(lines: readonly string[]): Printed[] {
  const out: Printed[] = [];
  for (const line of lines) {
    const m = EVENT_LINE.exec(line);
    if (m) out.push({ type: m[1], device: m[2], seq: Number(m[3]), line });
  }
  return out;
}

/** A demo started by a test, printing into `lines`, stopped through `ac`. */
interface StartedDemo {
  done: Promise<DemoSummary>;
  lines: string[];
  ac: AbortController;
  /** Throw at once if the demo failed to start (instead of as a waitFor timeout). */
  notFailed(): void;
  /** Wait for onReady, rethrowing a failed start as its cause. */
  ready(): Promise<DemoInfo>;
}

function startDemo(opts: Omit<DemoOptions, 'signal' | 'print' | 'log' | 'onReady'>): StartedDemo {
  const lines: string[] = [];
  const ac = new AbortController();
  let info: DemoInfo | undefined;
  const done = runDemo({
    ...opts,
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
  const notFailed = () => {
    if (failed) throw new Error(`demo failed: ${(failed as Error).message}`, { cause: failed });
  };
  const ready = () =>
    waitFor(
      () => {
        notFailed();
        return info;
      },
      { timeoutMs: 15_000, message: 'demo ready' },
    );
  return { done, lines, ac, notFailed, ready };
}

describe('edgeward demo (integration, in-process)', function () {
  this.timeout(40_000);

  it('runs simulated doors and camera through the flow to the central, which acks them; then stops cleanly', async () => {
    const sigintBefore = process.listenerCount('SIGINT');
    const doorNames = DEMO_DOOR_UNITS.map((u) => u.name);
    const { done, lines, ac, notFailed, ready: demoReady } = startDemo({
      httpPort: 0,
      durationMs: 35_000, // a backstop: the test stops it through the signal
      doorEveryMs: 1000,
      cameraEveryMs: 1500,
    });
    try {
      const ready = await demoReady();
      notFailed();
      assert.ok(lines.some((l) => l.includes(`editor   http://127.0.0.1:${ready.httpPort}/`)));
      assert.ok(lines.some((l) => l.includes(`Modbus TCP 127.0.0.1:${ready.modbusPort}`)));

      const seen = (pred: (e: Printed) => boolean) => printedEvents(lines).find(pred);

      // Every door controller and the camera come online, printed as ">>" lines and as device.online events.
      const doorOnline = await waitFor(
        () => seen((e) => e.type === 'device.online' && doorNames.includes(e.device)),
        {
          timeoutMs: 10_000,
          message: 'device.online of a door at the central',
        },
      );
      const camOnline = await waitFor(
        () => seen((e) => e.type === 'device.online' && e.device === DEMO_CAMERA_NAME),
        {
          timeoutMs: 10_000,
          message: 'device.online of the camera at the central',
        },
      );
      assert.ok(lines.includes(`>> ${doorOnline.device} online (modbus-door)`), 'a door online line');
      assert.ok(lines.includes(`>> ${DEMO_CAMERA_NAME} online (onvif)`), 'the camera online line');

      // A scripted card at door-1 (besides the autoplay): the Modbus driver polls it from the simulator's ring.
      await waitFor(() => seen((e) => e.type === 'device.online' && e.device === 'door-1'), {
        timeoutMs: 10_000,
        message: 'door-1 online',
      });
      ready.doors.unit(1).swipe(0, 10045821, 'granted');
      const granted = await waitFor(() => seen((e) => e.type === 'access.granted' && e.device === 'door-1'), {
        timeoutMs: 10_000,
        message: 'access.granted of door-1 at the central',
      });
      // Card numbers leave the box only as 16-hex pseudonyms.
      assert.doesNotMatch(granted.line, /10045821/);
      const doorEvent = await waitFor(
        () =>
          seen(
            (e) =>
              (e.type === 'door.opened' || e.type === 'access.granted') &&
              doorNames.includes(e.device) &&
              e.seq !== granted.seq,
          ),
        { timeoutMs: 10_000, message: 'a door event from the autoplay' },
      );
      // Camera motion from the scripted activity, through a real PullPoint subscription.
      const motion = await waitFor(
        () => seen((e) => e.type === 'camera.motion' && e.device === DEMO_CAMERA_NAME),
        {
          timeoutMs: 10_000,
          message: 'camera.motion at the central',
        },
      );
      for (const l of printedEvents(lines).filter((x) => x.line.includes('"card"')))
        assert.match(l.line, /"card":"[0-9a-f]{16}"/);

      // Acked: the edge deletes an event from its outbox only when the central's ack covers its seq.
      const watched = [doorOnline, camOnline, granted, doorEvent, motion].map((e) => e.seq);
      await waitFor(
        async () => {
          const unacked = await ready.runtime.outbox.read({ maxEvents: 100_000, maxBytes: 1 << 30 });
          const held = new Set(unacked.map((s) => s.seq));
          return watched.every((seq) => !held.has(seq));
        },
        { timeoutMs: 10_000, message: `central acked seqs ${watched.join(',')}` },
      );
      const status = (await (await fetch(ready.statusUrl)).json()) as {
        site: string;
        uplink: { connected: boolean; lastAckAt: string | null };
        devices: Array<{ name: string; online: boolean }>;
      };
      assert.equal(status.site, 'demo-community');
      assert.equal(status.uplink.connected, true);
      assert.notEqual(status.uplink.lastAckAt, null);
      for (const name of [...doorNames, DEMO_CAMERA_NAME])
        assert.equal(
          status.devices.find((d) => d.name === name)?.online,
          true,
          `${name} online in /api/v1/status`,
        );

      ac.abort();
      const summary = await done;
      assert.equal(summary.emitted, 0, 'no synthetic events by default');
      assert.ok(summary.received >= 5);
      assert.ok(summary.acked > 0);
      for (const [what, port] of [
        ['HTTP', ready.httpPort],
        ['broker', Number(new URL(ready.brokerUrl).port)],
        ['Modbus simulator', ready.modbusPort],
        ['camera simulator', ready.camera.port],
      ] as const)
        assert.equal(await listening(port), false, `${what} port ${port} closed`);
      assert.equal(existsSync(ready.dataDir), false, 'temp data dir removed');
      assert.equal(process.listenerCount('SIGINT'), sigintBefore, 'SIGINT handler removed');
      assert.ok(lines.includes('edgeward demo: stopping'));
    } finally {
      ac.abort();
      await done.catch(() => undefined);
    }
  });
  it("with a kept data dir and --rate: synthetic events beside the devices, the flow points at this run's simulators, the dir stays", async () => {
    const tmp = await tmpDir('demo-kept');
    const { done, lines, ac, ready: demoReady } = startDemo({
      httpPort: 0,
      dataDir: tmp.path,
      durationMs: 35_000,
      ratePerSec: 20,
      doorEveryMs: 0,
      cameraEveryMs: 0,
    });
    try {
      const ready = await demoReady();
      const flow = JSON.parse(readFileSync(path.join(tmp.path, 'flows.json'), 'utf8')) as Array<
        Record<string, unknown>
      >;
      assert.equal(flow.find((n) => n.type === 'edgeward-modbus-bus')?.port, ready.modbusPort);
      assert.equal(flow.find((n) => n.type === 'edgeward-camera')?.port, ready.camera.port);
      await waitFor(() => printedEvents(lines).filter((e) => e.device.startsWith('synthetic-')).length >= 5, {
        timeoutMs: 10_000,
        message: 'synthetic events at the central',
      });
      await waitFor(
        () => printedEvents(lines).some((e) => e.type === 'device.online' && e.device === DEMO_CAMERA_NAME),
        {
          timeoutMs: 10_000,
          message: 'the camera online beside the synthetic source',
        },
      );
      ac.abort();
      const summary = await done;
      assert.ok(summary.emitted >= 5);
      assert.ok(existsSync(path.join(tmp.path, 'demo-site.key')), 'site key kept for the next run');
    } finally {
      ac.abort();
      await done.catch(() => undefined);
      await tmp.cleanup();
    }
  });
});
