import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import express from 'express';
import pino from 'pino';
import { EventBus } from '../../edge/bus.js';
import { systemClock } from '../../edge/clock.js';
import type { SiteConfig } from '../../edge/config-types.js';
import { type Envelope, type EventInput, isEventType, isSeverity, makeEnvelope } from '../../edge/envelope.js';
import { EdgewardError, isEdgewardError } from '../../edge/errors.js';
import type { Logger } from '../../edge/log.js';
import type { EdgewardNodeApi } from '../../edge/node-api.js';
import { type EmbeddedNodeRed, embedNodeRed } from '../../edge/nodered.js';
import { Registry } from '../../edge/registry.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

// bcrypt of 'tech-secret-1' (cost 8, so the login is fast on a busy box).
const PASSWORD = 'tech-secret-1';
const PASSWORD_HASH = '$2b$08$ujWrDslAELZpvNPRtE4j/eY4tTzVVDNjhyr5Ia0vXie3jrkQ8Pwl2';

/** inject (good) → edgeward-event, inject (bad) → the same node. Injects fire only when POSTed. */
const TEST_FLOW = [
  { id: 't.tab', type: 'tab', label: 'test' },
  {
    id: 't.good',
    type: 'inject',
    z: 't.tab',
    props: [{ p: 'payload' }],
    payload: '{"type":"sensor.reading","data":{"value":21.5}}',
    payloadType: 'json',
    repeat: '',
    once: false,
    wires: [['t.event']],
  },
  {
    id: 't.bad',
    type: 'inject',
    z: 't.tab',
    props: [{ p: 'payload' }],
    payload: '{"type":"not-a-type","data":{}}',
    payloadType: 'json',
    repeat: '',
    once: false,
    wires: [['t.event']],
  },
  { id: 't.event', type: 'edgeward-event', z: 't.tab', name: 'flow-sensor', eventType: '', severity: '', wires: [[]] },
];

/** Stand-in for the runtime's node api: validates like the runtime and keeps what it stores. */
function fakeApi(log: Logger): EdgewardNodeApi & { stored: Envelope[] } {
  const stored: Envelope[] = [];
  const bus = new EventBus();
  return {
    stored,
    bus,
    log,
    registry: new Registry(),
    driverContext: (device) => ({
      bus,
      clock: systemClock,
      log: log.child({ device }),
      emit: (e) => bus.emit('event.input', e),
      privacy: { siteKey: 'k', rawCards: false },
    }),
    registerDriver: () => () => undefined,
    ingest: async (inputs: EventInput[]) => {
      for (const i of inputs) {
        if (!isEventType(i.type)) throw new EdgewardError('EDGE_EVENT_INVALID', `type "${String(i.type)}" is not an event type`);
        if (i.severity !== undefined && !isSeverity(i.severity)) throw new EdgewardError('EDGE_EVENT_INVALID', 'bad severity');
      }
      const out = inputs.map((i) => ({ ...makeEnvelope(i, { site: 's', edge: 'e' }), seq: stored.length + 1 }));
      stored.push(...out);
      return out;
    },
  };
}

function config(over: Partial<SiteConfig['nodeRed']>, host = '127.0.0.1'): SiteConfig {
  return {
    site: 'test-site',
    edge: 'test-edge',
    dataDir: '/nonexistent',
    http: { host, port: 0 },
    outbox: { maxBytes: 1 << 20 },
    privacy: { siteKey: 'test-site-key', rawCards: false },
    commands: { publicKeys: [], allow: [] },
    nodeRed: { editor: true, ...over },
    log: { level: 'info' },
  };
}

/** A pino logger whose records land in `lines` (to see what Node-RED reported). */
function captureLogger(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const dest = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { log: pino({ level: 'info' }, dest), lines };
}

interface Harness {
  base: string;
  red: EmbeddedNodeRed;
  api: EdgewardNodeApi & { stored: Envelope[] };
  lines: Array<Record<string, unknown>>;
  close(): Promise<void>;
}

async function start(tmp: TmpDir, cfg: SiteConfig, name: string): Promise<Harness> {
  const flowFile = path.join(tmp.path, `${name}.json`);
  await writeFile(flowFile, JSON.stringify(TEST_FLOW));
  cfg.nodeRed.flowFile = flowFile;
  const { log, lines } = captureLogger();
  const api = fakeApi(log);
  const app = express();
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let red: EmbeddedNodeRed;
  try {
    red = await embedNodeRed({ app, server, config: cfg, api, log, userDir: path.join(tmp.path, `${name}-user`) });
  } catch (err) {
    server.close();
    throw err;
  }
  return {
    base,
    red,
    api,
    lines,
    close: async () => {
      await red.stop();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('embedded Node-RED (integration)', function () {
  this.timeout(30_000);
  let tmp: TmpDir;

  before(async () => {
    tmp = await tmpDir('nodered');
  });
  after(async () => {
    await tmp.cleanup();
  });

  it('refuses an editor without adminAuth off loopback', async () => {
    const { log } = captureLogger();
    await assert.rejects(
      embedNodeRed({
        app: express(),
        server: http.createServer(),
        config: config({}, '0.0.0.0'),
        api: fakeApi(log),
        log,
        userDir: path.join(tmp.path, 'unsafe'),
      }),
      (err) => isEdgewardError(err, 'EDGE_NODERED_UNSAFE'),
    );
  });

  describe('with the editor behind adminAuth', () => {
    let h: Harness;
    let token: string;

    before(async () => {
      h = await start(tmp, config({ adminAuth: { username: 'tech', passwordHash: PASSWORD_HASH } }), 'auth');
    });
    after(async () => {
      await h?.close();
    });

    it('refuses a second embed in the same process', async () => {
      await assert.rejects(
        embedNodeRed({
          app: express(),
          server: http.createServer(),
          config: config({}),
          api: h.api,
          log: h.api.log,
          userDir: path.join(tmp.path, 'second'),
        }),
        (err) => isEdgewardError(err, 'EDGE_NODERED_RUNNING'),
      );
    });

    it('asks for credentials and refuses the admin API without a token', async () => {
      const login = await fetch(`${h.base}/auth/login`);
      assert.equal(login.status, 200);
      const body = (await login.json()) as { type: string };
      assert.equal(body.type, 'credentials');
      const flows = await fetch(`${h.base}/flows`);
      assert.equal(flows.status, 401);
    });

    it('logs in with the configured user', async () => {
      const res = await fetch(`${h.base}/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ client_id: 'node-red-admin', grant_type: 'password', scope: '*', username: 'tech', password: PASSWORD }),
      });
      assert.equal(res.status, 200);
      token = ((await res.json()) as { access_token: string }).access_token;
      assert.ok(token);
      const flows = await fetch(`${h.base}/flows`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(flows.status, 200);
    });

    it('stores the event a flow sends to edgeward-event', async () => {
      const res = await fetch(`${h.base}/inject/t.good`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
      assert.equal(res.status, 200);
      const stored = await waitFor(() => h.api.stored.find((e) => e.type === 'sensor.reading'), {
        message: 'sensor.reading from the flow stored',
      });
      assert.deepEqual(stored.data, { value: 21.5 });
      assert.equal(stored.source.device, 'flow-sensor');
      assert.equal(stored.severity, 'info');
    });

    it('rejects a bad payload with an error and stores nothing', async () => {
      const before = h.api.stored.length;
      const res = await fetch(`${h.base}/inject/t.bad`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
      assert.equal(res.status, 200);
      const line = await waitFor(
        () => h.lines.find((l) => l.nodeType === 'edgeward-event' && String(l.msg).includes('not-a-type')),
        { message: 'edgeward-event reported the rejected payload' },
      );
      assert.equal(line.level, 50); // pino error
      assert.match(String(line.msg), /event rejected/);
      assert.equal(h.api.stored.length, before);
    });
  });

  describe('with the editor disabled', () => {
    let h: Harness;

    before(async () => {
      h = await start(tmp, config({ editor: false }), 'noeditor');
    });
    after(async () => {
      await h?.close();
    });

    it('serves no editor and no admin API', async () => {
      assert.equal((await fetch(`${h.base}/flows`)).status, 404);
      assert.equal((await fetch(`${h.base}/auth/login`)).status, 404);
      assert.equal((await fetch(`${h.base}/`)).status, 404);
    });
  });
});
