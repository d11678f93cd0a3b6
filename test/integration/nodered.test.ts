import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { Writable } from 'node:stream';
import express from 'express';
import pino from 'pino';
import type { SiteConfig } from '../../edge/config-types.js';
import { isEdgewardError } from '../../edge/errors.js';
import type { Logger } from '../../edge/log.js';
import { embedNodeRed } from '../../edge/nodered.js';
import { Runtime } from '../../edge/runtime.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

// bcrypt of 'tech-secret-1' (cost 8, so the login is fast on a busy box).
const PASSWORD = 'tech-secret-1';
const PASSWORD_HASH = '$2b$08$ujWrDslAELZpvNPRtE4j/eY4tTzVVDNjhyr5Ia0vXie3jrkQ8Pwl2';

/**
 * inject (good) → edgeward-event, inject (bad) → the same node (injects fire
 * only when POSTed to the admin API); http in → edgeward-event → http response,
 * to see the node's output (the stored envelope).
 */
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
  { id: 't.http', type: 'http in', z: 't.tab', url: '/test/event', method: 'post', upload: false, wires: [['t.event2']] },
  { id: 't.event2', type: 'edgeward-event', z: 't.tab', name: 'http-door', eventType: 'door.opened', severity: '', wires: [['t.res']] },
  { id: 't.res', type: 'http response', z: 't.tab', statusCode: '', headers: {}, wires: [] },
  // What a flow (a debug node printing msg.req, say) gets to see of a request.
  { id: 't.hdrs', type: 'http in', z: 't.tab', url: '/test/headers', method: 'get', upload: false, wires: [['t.echo']] },
  {
    id: 't.echo',
    type: 'function',
    z: 't.tab',
    func: 'msg.payload = { headers: msg.req.headers, raw: msg.req.rawHeaders }; return msg;',
    outputs: 1,
    wires: [['t.res']],
  },
];

function config(over: Partial<SiteConfig['nodeRed']>, dataDir: string, host = '127.0.0.1'): SiteConfig {
  return {
    site: 'test-site',
    edge: 'test-edge',
    dataDir,
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
  runtime: Runtime;
  lines: Array<Record<string, unknown>>;
  close(): Promise<void>;
}

/** A Runtime (real outbox in a temp dataDir, port 0) running a temp copy of TEST_FLOW. */
async function start(
  tmp: TmpDir,
  over: Partial<SiteConfig['nodeRed']>,
  name: string,
  flow: unknown[] = TEST_FLOW,
  token?: string,
): Promise<Harness> {
  const flowFile = path.join(tmp.path, `${name}.json`);
  await writeFile(flowFile, JSON.stringify(flow));
  const cfg = config({ ...over, flowFile }, path.join(tmp.path, name));
  if (token !== undefined) cfg.http.token = token;
  const { log, lines } = captureLogger();
  const runtime = new Runtime({ config: cfg, log });
  await runtime.start();
  return {
    base: `http://127.0.0.1:${runtime.port}`,
    runtime,
    lines,
    close: () => runtime.stop(),
  };
}

/** A websocket handshake on `path`: resolves with the status (101 when the upgrade is accepted). */
function upgrade(h: Harness, path: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: h.runtime.port,
      path,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-key': randomBytes(16).toString('base64'),
        'sec-websocket-version': '13',
        ...headers,
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
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
        config: config({}, path.join(tmp.path, 'unsafe'), '0.0.0.0'),
        api: new Runtime({ config: config({}, path.join(tmp.path, 'unsafe')), log }).nodeApi,
        log,
        userDir: path.join(tmp.path, 'unsafe'),
      }),
      (err) => isEdgewardError(err, 'EDGE_NODERED_UNSAFE'),
    );
  });

  it('refuses an editor without adminAuth on loopback when a token is set (it would be the way around the token)', async () => {
    const { log } = captureLogger();
    const withToken = { ...config({}, path.join(tmp.path, 'unsafe-token')), http: { host: '127.0.0.1', port: 0, token: 'x'.repeat(16) } };
    await assert.rejects(
      embedNodeRed({
        app: express(),
        server: http.createServer(),
        config: withToken,
        api: new Runtime({ config: config({}, path.join(tmp.path, 'unsafe-token')), log }).nodeApi,
        log,
        userDir: path.join(tmp.path, 'unsafe-token'),
      }),
      (err) => isEdgewardError(err, 'EDGE_NODERED_UNSAFE') && /with http\.token set/.test(err.message),
    );
  });

  describe('with the editor behind adminAuth', () => {
    let h: Harness;
    let token: string;

    before(async () => {
      h = await start(tmp, { adminAuth: { username: 'tech', passwordHash: PASSWORD_HASH } }, 'auth');
    });
    after(async () => {
      await h?.close();
    });

    it('refuses a second embed in the same process', async () => {
      await assert.rejects(
        embedNodeRed({
          app: express(),
          server: http.createServer(),
          config: config({}, path.join(tmp.path, 'second')),
          api: h.runtime.nodeApi,
          log: h.runtime.nodeApi.log,
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
      const stored = await waitFor(() => h.runtime.outbox.recent(10).find((e) => e.type === 'sensor.reading'), {
        message: 'sensor.reading from the flow stored in the outbox',
      });
      assert.equal(stored.seq, 1);
      assert.equal(h.runtime.outbox.stats().events, 1);
      assert.deepEqual(stored.data, { value: 21.5 });
      assert.equal(stored.source.device, 'flow-sensor');
      assert.equal(stored.severity, 'info');
    });

    it('sends the stored envelope on its output, with the default type and card pseudonymised', async () => {
      const res = await fetch(`${h.base}/test/event`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ data: { door: 1, card: 10045821 } }),
      });
      assert.equal(res.status, 200);
      const env = (await res.json()) as Record<string, any>;
      assert.equal(env.type, 'door.opened');
      assert.equal(env.site, 'test-site');
      assert.equal(env.source.device, 'http-door');
      assert.equal(typeof env.seq, 'number');
      assert.match(env.id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
      assert.match(env.data.card, /^[0-9a-f]{16}$/);
      assert.equal(env.data.door, 1);
      assert.equal(h.runtime.outbox.recent(1)[0].id, env.id);
    });

    it('rejects a bad payload with an error and stores nothing', async () => {
      const before = h.runtime.outbox.stats().lastSeq;
      const res = await fetch(`${h.base}/inject/t.bad`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
      assert.equal(res.status, 200);
      const line = await waitFor(
        () => h.lines.find((l) => l.nodeType === 'edgeward-event' && String(l.msg).includes('event rejected')),
        { message: 'edgeward-event reported the rejected payload' },
      );
      assert.equal(line.level, 50); // pino error
      assert.match(String(line.msg), /event rejected/);
      assert.match(String(line.msg), /type: type must be a contract event type/);
      // The error is reported after ingest rejected, so an append would already show in lastSeq.
      assert.equal(h.runtime.outbox.stats().lastSeq, before);
    });

    it('keeps a ts the flow gives, and refuses an unknown field by name instead of dropping it', async () => {
      const post = (body: unknown) =>
        fetch(`${h.base}/test/event`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(1000),
        });
      const ts = '2025-03-05T08:12:03.120Z';
      const ok = await post({ data: { door: 1 }, ts });
      assert.equal(ok.status, 200);
      assert.equal(((await ok.json()) as { ts: string }).ts, ts);
      const before = h.runtime.outbox.stats().lastSeq;
      await post({ data: { door: 1 }, serverity: 'warning' }).catch(() => undefined); // no answer: the node reports an error
      const line = await waitFor(
        () => h.lines.find((l) => l.nodeType === 'edgeward-event' && String(l.msg).includes('serverity')),
        { message: 'edgeward-event named the unknown field' },
      );
      assert.match(String(line.msg), /event rejected: msg\.payload\.serverity: unknown field/);
      assert.equal(h.runtime.outbox.stats().lastSeq, before);
    });

    it('writes a deploy back to the technician\'s flow file', async () => {
      const flows = [...TEST_FLOW, { id: 't.note', type: 'comment', z: 't.tab', name: 'deployed from the editor', wires: [] }];
      const res = await fetch(`${h.base}/flows`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'node-red-deployment-type': 'full',
        },
        body: JSON.stringify(flows),
      });
      assert.equal(res.status, 204);
      const saved = JSON.parse(await readFile(path.join(tmp.path, 'auth.json'), 'utf8')) as Array<{ id: string }>;
      assert.ok(saved.some((n) => n.id === 't.note'));
    });
  });

  describe('with the editor disabled', () => {
    let h: Harness;

    before(async () => {
      h = await start(tmp, { editor: false }, 'noeditor');
    });
    after(async () => {
      await h?.close();
    });

    it('serves no editor and no admin API, but the runtime API', async () => {
      assert.equal((await fetch(`${h.base}/api/v1/status`)).status, 200);
      assert.equal((await fetch(`${h.base}/flows`)).status, 404);
      assert.equal((await fetch(`${h.base}/auth/login`)).status, 404);
      assert.equal((await fetch(`${h.base}/`)).status, 404);
    });
  });

  describe('with an HTTP token configured', () => {
    let h: Harness;
    const TOKEN = 'flow-endpoint-token-0123';

    before(async () => {
      h = await start(tmp, { editor: false }, 'token', TEST_FLOW, TOKEN);
    });
    after(async () => {
      await h?.close();
    });

    it('protects flow endpoints (http in) with the same bearer token as the API', async () => {
      const post = (headers: Record<string, string>) =>
        fetch(`${h.base}/test/event`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...headers },
          body: JSON.stringify({ data: { door: 0 } }),
        });
      const before = h.runtime.outbox.stats().lastSeq;
      assert.equal((await post({})).status, 401);
      assert.equal((await post({ authorization: 'Bearer wrong-token-wrong-token' })).status, 401);
      assert.equal(h.runtime.outbox.stats().lastSeq, before, 'nothing stored without the token');
      const ok = await post({ authorization: `Bearer ${TOKEN}` });
      assert.equal(ok.status, 200);
      assert.equal(((await ok.json()) as { type: string }).type, 'door.opened');
    });

    it('takes the token off the request before the flow sees it (a debug node would print it)', async () => {
      const res = await fetch(`${h.base}/test/headers`, { headers: { authorization: `Bearer ${TOKEN}`, 'x-kept': 'yes' } });
      assert.equal(res.status, 200);
      const seen = await res.text();
      assert.ok(!seen.includes(TOKEN) && !/authorization/i.test(seen), seen);
      assert.ok(seen.includes('x-kept'), seen);
    });
  });

  describe('with the editor on loopback without adminAuth (the demo), and another site in the browser', () => {
    let h: Harness;

    before(async () => {
      h = await start(tmp, { editor: true }, 'open-editor');
    });
    after(async () => {
      await h?.close();
    });

    it('refuses a cross-site deploy and a cross-site websocket to the editor; the editor itself still works', async () => {
      const deploy = (headers: Record<string, string>) =>
        fetch(`${h.base}/flows`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'node-red-deployment-type': 'full', ...headers },
          body: '[]',
        });
      const evil = await deploy({ origin: 'http://evil.example' });
      assert.equal(evil.status, 403);
      const preflight = await fetch(`${h.base}/flows`, { method: 'OPTIONS', headers: { origin: 'http://evil.example', 'access-control-request-method': 'POST' } });
      assert.equal(preflight.status, 403);
      assert.equal(preflight.headers.get('access-control-allow-origin'), null);
      assert.equal((await fetch(`${h.base}/flows`)).status, 200, 'the flows are still there to read: nothing was deployed');
      assert.ok(((await (await fetch(`${h.base}/flows`)).json()) as unknown[]).length > 0);
      assert.equal(await upgrade(h, '/comms', { origin: 'http://evil.example' }), 403);
      assert.equal(await upgrade(h, '/comms', { origin: h.base }), 101);
      // A link to the editor on another site opens it (the page only); nothing else that way.
      // (node:http, not fetch: fetch sets Sec-Fetch-Mode itself.)
      const get = (path: string, headers: Record<string, string>) =>
        new Promise<number>((resolve, reject) => {
          http
            .get({ host: '127.0.0.1', port: h.runtime.port, path, headers }, (res) => {
              res.resume();
              resolve(res.statusCode ?? 0);
            })
            .on('error', reject);
        });
      const navigate = { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' };
      assert.equal(await get('/', navigate), 200);
      assert.equal(await get('/flows', navigate), 403);
      assert.equal(await get('/', { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty' }), 403);
    });
  });

  describe('with websocket endpoints in the flow and an HTTP token', () => {
    let h: Harness;
    const TOKEN = 'flow-endpoint-token-0123';
    const flow = [
      { id: 'w.tab', type: 'tab', label: 'w' },
      { id: 'w.l', type: 'websocket-listener', path: '/ws/feed', wholemsg: 'false' },
      { id: 'w.in', type: 'websocket in', z: 'w.tab', server: 'w.l', client: '', wires: [] },
    ];

    before(async () => {
      h = await start(tmp, { editor: false }, 'ws-token', flow, TOKEN);
    });
    after(async () => {
      await h?.close();
    });

    it('needs the bearer token on a flow websocket, as on http in routes', async () => {
      assert.equal(await upgrade(h, '/ws/feed', {}), 401);
      assert.equal(await upgrade(h, '/ws/feed', { authorization: 'Bearer wrong-token-wrong-token' }), 401);
      assert.equal(await upgrade(h, '/ws/feed', { authorization: `Bearer ${TOKEN}` }), 101);
      assert.ok(h.lines.some((l) => l.msg === 'websocket refused' && l.path === '/ws/feed'));
    });
  });

  describe('with a node type this box does not have', () => {
    let h: Harness;

    before(async () => {
      const flow = [
        { id: 'm.tab', type: 'tab', label: 'm' },
        { id: 'm.x', type: 'no-such-node', z: 'm.tab', wires: [] },
      ];
      h = await start(tmp, { editor: false }, 'missing', flow);
    });
    after(async () => {
      await h?.close();
    });

    it('still starts the runtime and says loudly that the flows are not running', async () => {
      assert.equal((await fetch(`${h.base}/api/v1/status`)).status, 200);
      const line = h.lines.find((l) => l.msg === 'node-red flows are not running');
      assert.ok(line, 'error logged');
      assert.equal(line.level, 50);
      assert.equal(line.problem, 'missing-types');
      assert.deepEqual(line.types, ['no-such-node']);
      // No device is read: the box is not healthy, whatever else works.
      const health = await fetch(`${h.base}/healthz`);
      assert.equal(health.status, 503);
      const { problems } = (await health.json()) as { problems: string[] };
      assert.ok(problems.includes('node-red flows are not running (missing-types: no-such-node)'), problems.join('; '));
    });
  });
});
