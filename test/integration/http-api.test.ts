import assert from 'node:assert/strict';
import { connect } from 'node:net';
import http from 'node:http';
import type { Driver } from '../../drivers/driver.js';
import { systemClock } from '../../edge/clock.js';
import { parseConfig } from '../../edge/config.js';
import { captureLogger } from '../helpers/log.js';
import { type Envelope, pseudonymiseCard } from '../../edge/envelope.js';
import { silentLogger } from '../../edge/log.js';
import { MAX_DATA_DEPTH, parseEventsBody } from '../../edge/http.js';
import { Runtime } from '../../edge/runtime.js';
import { readOutboxStats, outboxPath } from '../../sync/outbox.js';
import { freePort } from '../helpers/mosquitto.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

const TOKEN = 'test-token-0123456789';
const SITE_KEY = 'site-key-for-tests-0123456789';

function configFor(dir: string, extra = '', more = '') {
  return parseConfig(
    `site: test-site\nedge: gate-01\ndataDir: ${dir}\nhttp: { host: 127.0.0.1, port: 0${extra} }\nprivacy: { siteKey: ${SITE_KEY} }\nlog: { level: silent }${more}\n`,
    {},
  );
}

/** A request written as is on a fresh connection (framings fetch cannot send); resolves with the whole answer. */
function rawRequest(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1', () => sock.write(request));
    let out = '';
    sock.setEncoding('utf8');
    sock.on('data', (d) => {
      out += d;
    });
    sock.on('end', () => resolve(out));
    sock.on('error', reject);
  });
}

describe('local HTTP API (integration)', function () {
  this.timeout(30_000);
  let dir: TmpDir;
  let runtime: Runtime;
  let base: string;

  const post = (body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${base}/api/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });

  before(async () => {
    dir = await tmpDir('http');
    runtime = new Runtime({ config: configFor(dir.path), log: silentLogger(), version: '9.9.9' });
    await runtime.start();
    base = `http://127.0.0.1:${runtime.port}`;
  });

  after(async () => {
    await runtime?.stop();
    await dir?.cleanup();
  });

  it('stores one event durably and answers 202 with its id and seq', async () => {
    const before = runtime.outbox.stats();
    const res = await post({ type: 'door.opened', source: { device: 'door-1' }, data: { door: 0 } });
    assert.equal(res.status, 202);
    const body = (await res.json()) as { accepted: Array<{ id: string; seq: number }> };
    assert.equal(body.accepted.length, 1);
    assert.match(body.accepted[0].id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
    assert.equal(body.accepted[0].seq, before.lastSeq + 1);
    // Durable: the 202 came after the append resolved, so the outbox already counts it.
    assert.equal(runtime.outbox.stats().events, before.events + 1);
    const [latest] = runtime.outbox.recent(1);
    assert.equal(latest.id, body.accepted[0].id);
    assert.equal(latest.site, 'test-site');
    assert.equal(latest.edge, 'gate-01');
    assert.equal(latest.severity, 'info');
    assert.deepEqual(latest.data, { door: 0 });
  });

  it('stores an array in order, with increasing seqs, severity and ts as given', async () => {
    const ts = '2025-03-05T08:12:03.120Z';
    const res = await post([
      { type: 'door.forced', source: { device: 'door-2', driver: 'modbus-door' } },
      { type: 'sensor.reading', source: { device: 's-1' }, data: { v: 1 }, severity: 'warning', ts },
      { type: 'alert.after_hours', source: { device: 'door-2' } },
    ]);
    assert.equal(res.status, 202);
    const { accepted } = (await res.json()) as { accepted: Array<{ id: string; seq: number }> };
    assert.equal(accepted.length, 3);
    assert.ok(accepted[0].seq < accepted[1].seq && accepted[1].seq < accepted[2].seq);
    const recent = runtime.outbox.recent(3);
    const byId = new Map(recent.map((e) => [e.id, e]));
    const forced = byId.get(accepted[0].id)!;
    assert.equal(forced.severity, 'critical');
    assert.ok(forced.msg?.zh && forced.msg.bo && forced.msg.en, 'critical events carry msg in three languages');
    assert.deepEqual(forced.source, { device: 'door-2', driver: 'modbus-door' });
    const reading = byId.get(accepted[1].id)!;
    assert.equal(reading.severity, 'warning');
    assert.equal(reading.ts, ts);
    assert.equal(byId.get(accepted[2].id)!.type, 'alert.after_hours');
  });

  it('pseudonymises a raw card number posted in data.card', async () => {
    const res = await post({ type: 'access.granted', source: { device: 'door-1' }, data: { card: 12345678 } });
    assert.equal(res.status, 202);
    const [e] = runtime.outbox.recent(1);
    assert.match(String(e.data.card), /^[0-9a-f]{16}$/);
    assert.equal(e.data.card, pseudonymiseCard(12345678, SITE_KEY));
  });

  it('pseudonymises a card given as a decimal string or 0x hex by its decimal value; keeps a null card', async () => {
    const want = pseudonymiseCard(3735928559, SITE_KEY);
    for (const card of ['3735928559', '0003735928559', '0xDEADBEEF', '0xdeadbeef']) {
      const res = await post({ type: 'access.granted', source: { device: 'door-1' }, data: { card } });
      assert.equal(res.status, 202, card);
      assert.equal(runtime.outbox.recent(1)[0].data.card, want, card);
    }
    const res = await post({ type: 'access.denied', source: { device: 'door-1' }, data: { card: null, door: 0 } });
    assert.equal(res.status, 202);
    assert.deepEqual(runtime.outbox.recent(1)[0].data, { card: null, door: 0 });
    // What a Node-RED flow builds with `card: msg.card` when there is none (edgeward-event uses this parser).
    const [input] = parseEventsBody({ type: 'door.opened', source: { device: 'door-1' }, data: { door: 0, card: undefined } }, {
      siteKey: SITE_KEY,
      rawCards: false,
    });
    assert.equal(input.data?.card, undefined);
  });

  it('refuses a data.card that is not a card number (it could leak one), without echoing it, storing nothing', async () => {
    const before = runtime.outbox.stats();
    const cards: unknown[] = ['04A224B2C85E80', 'DEADBEEF', 'card-12', 2 ** 60, -5, 12.5, { id: 1 }, true, '', '0x'];
    for (const card of cards) {
      const res = await post([
        { type: 'door.opened', source: { device: 'door-1' } },
        { type: 'access.granted', source: { device: 'door-1' }, data: { card } },
      ]);
      const text = await res.text();
      assert.equal(res.status, 400, `${JSON.stringify(card)} → ${res.status} ${text}`);
      assert.equal(JSON.parse(text).field, 'events[1].data.card');
      if (typeof card === 'string' && card.length > 3) assert.ok(!text.includes(card), `error echoes ${card}`);
    }
    const after = runtime.outbox.stats();
    assert.equal(after.lastSeq, before.lastSeq);
  });

  it('pseudonymises a card field at any depth of data, and refuses a nested one that is not a card number', async () => {
    const data = { door: 0, credential: { card: '5100999988887777' }, reads: [{ card: 6011000011112222 }, { other: 1 }], note: 'card' };
    const res = await post({ type: 'access.granted', source: { device: 'door-1' }, data });
    assert.equal(res.status, 202);
    const stored = runtime.outbox.recent(1)[0].data as typeof data;
    assert.equal(stored.credential.card, pseudonymiseCard('5100999988887777', SITE_KEY));
    assert.equal(stored.reads[0].card, pseudonymiseCard(6011000011112222, SITE_KEY));
    assert.deepEqual(stored.reads[1], { other: 1 });
    assert.equal(stored.note, 'card');
    assert.ok(!JSON.stringify(runtime.outbox.recent(1)).includes('5100999988887777'), 'the raw number is not stored');
    // An event a flow nests in another carries its pseudonym: kept as it is (refusing it lost the alert).
    const door = { type: 'access.granted', data: { door: 0, card: pseudonymiseCard(4242, SITE_KEY) } };
    const nested = await post({ type: 'alert.card_at_night', source: { device: 'rule-1' }, data: { trigger: door } });
    assert.equal(nested.status, 202);
    assert.deepEqual((runtime.outbox.recent(1)[0].data as { trigger: unknown }).trigger, door);
    // A 16-hex value this box did not make may be a raw 8-byte UID in lowercase hex (ISO 15693, FeliCa): pseudonymised.
    const uid = await post({ type: 'access.granted', source: { device: 'reader-9' }, data: { reader: { card: 'e004015012345678' } } });
    assert.equal(uid.status, 202);
    const uidStored = (runtime.outbox.recent(1)[0].data as { reader: { card: string } }).reader.card;
    assert.equal(uidStored, pseudonymiseCard(BigInt('0xe004015012345678'), SITE_KEY));
    // At the top level a 16-hex string is still refused: it cannot be told from a raw card in hex.
    const top = await post({ type: 'access.granted', source: { device: 'door-1' }, data: { card: pseudonymiseCard(4242, SITE_KEY) } });
    assert.equal(top.status, 400);
    const before = runtime.outbox.stats();
    const bad = await post({ type: 'access.granted', source: { device: 'door-1' }, data: { reads: [{ card: '04A224B2C85E80' }] } });
    const text = await bad.text();
    assert.equal(bad.status, 400, text);
    assert.equal(JSON.parse(text).field, 'data.reads[0].card');
    assert.ok(!text.includes('04A224B2C85E80'), 'the error does not echo it');
    assert.equal(runtime.outbox.stats().lastSeq, before.lastSeq);
  });

  it('rejects every bad body with 400 naming the field, and stores nothing of the request', async () => {
    const good = { type: 'door.opened', source: { device: 'door-1' } };
    const cases: Array<[unknown, string]> = [
      [{ source: { device: 'd' } }, 'type'],
      [{ type: 'door.exploded', source: { device: 'd' } }, 'type'],
      [{ type: 'alert.', source: { device: 'd' } }, 'type'],
      [{ type: 42, source: { device: 'd' } }, 'type'],
      [{ type: 'door.opened' }, 'source'],
      [{ type: 'door.opened', source: 'door-1' }, 'source'],
      [{ type: 'door.opened', source: {} }, 'source.device'],
      [{ type: 'door.opened', source: { device: '' } }, 'source.device'],
      [{ type: 'door.opened', source: { device: 7 } }, 'source.device'],
      [{ type: 'door.opened', source: { device: 'd', port: 1 } }, 'source.port'],
      [{ type: 'door.opened', source: { device: 'd' }, data: [1] }, 'data'],
      [{ type: 'door.opened', source: { device: 'd' }, data: 'x' }, 'data'],
      [{ type: 'door.opened', source: { device: 'd' }, severity: 'fatal' }, 'severity'],
      [{ type: 'door.opened', source: { device: 'd' }, ts: 'yesterday' }, 'ts'],
      [{ type: 'door.opened', source: { device: 'd' }, ts: '2025-13-45T99:00:00Z' }, 'ts'],
      // Dates Date.parse would roll over into another day (stored as a date nobody wrote).
      [{ type: 'door.opened', source: { device: 'd' }, ts: '2025-02-30T00:00:00Z' }, 'ts'],
      [{ type: 'door.opened', source: { device: 'd' }, ts: '2025-04-31T10:00:00Z' }, 'ts'],
      [{ type: 'door.opened', source: { device: 'd' }, ts: '2025-02-28T24:00:00Z' }, 'ts'],
      [{ type: 'door.opened', source: { device: 'd' }, ts: '2023-02-29T00:00:00Z' }, 'ts'],
      [{ type: 'door.opened', source: { device: 'd' }, ts: '2025-01-01T00:00:00+25:00' }, 'ts'],
      // Outside years 0001-9999 once in UTC (stored as '-000001-12-31T…'), or year 0 (PostgreSQL refuses it).
      [{ type: 'door.opened', source: { device: 'd' }, ts: '0000-01-01T00:00:00+23:59' }, 'ts'],
      [{ type: 'door.opened', source: { device: 'd' }, ts: '9999-12-31T23:59:59-23:59' }, 'ts'],
      [{ type: 'door.opened', source: { device: 'd' }, ts: '0000-01-01T00:00:00Z' }, 'ts'],
      // What the central's jsonb could not store, and names that display as other names.
      [{ type: 'door.opened', source: { device: 'a\ud800b' } }, 'source.device'],
      [{ type: 'door.opened', source: { device: 'door\u202e1-roodkcab' } }, 'source.device'],
      [{ type: 'edge.outbox_overflow', source: { device: 'gate-07', driver: 'outbox' }, data: { evicted: 99999 } }, 'type'],
      [{ type: 'edge.events_lost', source: { device: 'door-1', driver: 'runtime' } }, 'type'],
      [{ type: 'security.command_rejected', source: { device: 'gate-07' } }, 'type'],
      [{ type: 'door.opened', source: { device: ' door-1' } }, 'source.device'],
      [{ type: 'door.opened', source: { device: 'door-1 ' } }, 'source.device'],
      [{ type: 'door.opened', source: { device: 'door-1\u3000' } }, 'source.device'],
      [{ type: 'door.opened', source: { device: 'd' }, data: { note: 'a\u0000b' } }, 'data.note'],
      [{ type: 'door.opened', source: { device: 'd' }, data: { list: ['ok', 'x\udc00'] } }, 'data.list[1]'],
      [{ type: 'door.opened', source: { device: 'd' }, data: { 'k\u0000': 1 } }, 'data'],
      [{ type: 'door.opened', source: { device: 'd' }, seq: 5 }, 'seq'],
      [{ type: 'door.opened', source: { device: 'd' }, id: '01JNH6Y3Q4X5Z7V8W9A0B1C2D3' }, 'id'],
      [[good, good, good, { ...good, type: 'nope' }], 'events[3].type'],
      [[good, { type: 'door.opened', source: { device: 'x' }, severity: 'loud' }], 'events[1].severity'],
      [[good, null], 'events[1]'],
      [[], 'events'],
      [null, 'body'],
      ['"a string"', 'body'],
      [42, 'body'],
    ];
    const before = runtime.outbox.stats();
    for (const [body, field] of cases) {
      const res = await post(body === null ? 'null' : body);
      const text = await res.text();
      assert.equal(res.status, 400, `${JSON.stringify(body)} → ${res.status} ${text}`);
      const json = JSON.parse(text) as { error: string; field: string };
      assert.equal(json.field, field, `${JSON.stringify(body)} → ${text}`);
      assert.ok(json.error.length > 0);
    }
    const after = runtime.outbox.stats();
    assert.equal(after.events, before.events);
    assert.equal(after.lastSeq, before.lastSeq);
  });

  it('accepts real leap days, offsets and nesting up to the limit; refuses deeper data with 400, not a 503 to retry', async () => {
    const ok = await post([
      { type: 'door.opened', source: { device: 'd' }, ts: '2024-02-29T23:59:59+08:00' },
      { type: 'door.opened', source: { device: '门-1 སྒོ་' }, data: { emoji: '🚪', zh: '东门' } },
    ]);
    assert.equal(ok.status, 202, await ok.text());
    // Written as text: JSON.stringify itself overflows long before 10,000 levels.
    const nest = (depth: number) => `${'{"a":'.repeat(depth - 1)}{"leaf":1}${'}'.repeat(depth - 1)}`;
    const event = (depth: number) => `{"type":"door.opened","source":{"device":"d"},"data":${nest(depth)}}`;
    const fits = await post(event(MAX_DATA_DEPTH));
    assert.equal(fits.status, 202, await fits.text());
    const before = runtime.outbox.stats();
    for (const depth of [MAX_DATA_DEPTH + 1, 10_000]) {
      const res = await post(event(depth));
      const body = (await res.json()) as { error: string; field: string };
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.match(body.field, /^data(\.a)+$/);
      assert.match(body.error, /nested deeper than 32/);
    }
    assert.equal(runtime.outbox.stats().lastSeq, before.lastSeq);
  });

  it('answers in JSON: 400 for a POST without a body, 405 with Allow for a method a path does not take, 404 for no such path', async () => {
    const before = runtime.outbox.stats();
    const empty = await fetch(`${base}/api/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    assert.equal(empty.status, 400);
    assert.equal(((await empty.json()) as { field: string }).field, 'body');
    // Empty bodies the headers do not announce as such: they were answered as a bad `type`.
    for (const framing of ['Content-Length: 00\r\n\r\n', 'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n']) {
      const raw = await rawRequest(runtime.port, `POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n${framing}`);
      assert.match(raw, /^HTTP\/1\.1 400 /, framing);
      assert.equal((JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as { field: string }).field, 'body', framing);
    }
    for (const [method, path, allow] of [
      ['PUT', '/api/v1/events', 'GET, HEAD, POST'],
      ['DELETE', '/api/v1/events', 'GET, HEAD, POST'],
      ['POST', '/api/v1/status', 'GET, HEAD'],
    ]) {
      const res = await fetch(`${base}${path}`, { method });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.headers.get('allow'), allow);
      assert.match(((await res.json()) as { error: string }).error, new RegExp(`${method} is not allowed`));
    }
    const none = await fetch(`${base}/api/v1/nope`);
    assert.equal(none.status, 404);
    assert.match(((await none.json()) as { error: string }).error, /no such API path: \/api\/v1\/nope/);
    assert.equal(runtime.outbox.stats().lastSeq, before.lastSeq);
  });

  it('refuses what another site makes a browser send (Origin, Sec-Fetch-Site, a rebound Host): 403, nothing stored', async () => {
    const raw = (method: string, path: string, headers: Record<string, string>, body?: string) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: runtime.port, method, path, headers }, (res) => {
          let text = '';
          res.on('data', (d) => {
            text += d;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        });
        req.on('error', reject);
        req.end(body);
      });
    const before = runtime.outbox.stats();
    const event = JSON.stringify({ type: 'door.opened', source: { device: 'd' } });
    const json = { 'content-type': 'application/json' };
    const refused: Array<[string, string, Record<string, string>, string?]> = [
      ['POST', '/api/v1/events', { ...json, origin: 'http://evil.example' }, event],
      ['POST', '/api/v1/events', { ...json, origin: 'null' }, event],
      ['POST', '/api/v1/events', { ...json, 'sec-fetch-site': 'cross-site' }, event],
      ['GET', '/api/v1/events', { 'sec-fetch-site': 'same-site' }],
      // DNS rebinding: evil.example resolved to 127.0.0.1, the page reads under its own name.
      ['GET', '/api/v1/events', { host: `evil.example:${runtime.port}` }],
      ['GET', '/metrics', { host: 'evil.example' }],
    ];
    for (const [method, path, headers, body] of refused) {
      const r = await raw(method, path, headers, body);
      assert.equal(r.status, 403, `${method} ${path} ${JSON.stringify(headers)} → ${r.status} ${r.text}`);
      assert.match(r.text, /refused/);
    }
    assert.equal(runtime.outbox.stats().lastSeq, before.lastSeq, 'nothing stored');
    // The box's own pages, and clients that are not browsers.
    const own = `http://127.0.0.1:${runtime.port}`;
    assert.equal((await raw('POST', '/api/v1/events', { ...json, origin: own, 'sec-fetch-site': 'same-origin' }, event)).status, 202);
    assert.equal((await raw('GET', '/api/v1/events', { host: `localhost:${runtime.port}` })).status, 200);
    assert.equal((await raw('GET', '/healthz', {})).status, 200);
  });

  it('rejects invalid JSON (400) and a wrong content type (415), storing nothing', async () => {
    const before = runtime.outbox.stats();
    const bad = await post('{"type": "door.opened", ');
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { field: string }).field, 'body');
    const text = await fetch(`${base}/api/v1/events`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: JSON.stringify({ type: 'door.opened', source: { device: 'd' } }),
    });
    assert.equal(text.status, 415);
    assert.match(((await text.json()) as { error: string }).error, /application\/json/);
    assert.equal(runtime.outbox.stats().lastSeq, before.lastSeq);
  });

  it('answers 413 over 1 MiB and stores nothing', async () => {
    const before = runtime.outbox.stats();
    const big = Array.from({ length: 12_000 }, (_, i) => ({
      type: 'sensor.reading',
      source: { device: 'bulk' },
      data: { i, pad: 'x'.repeat(80) },
    }));
    const body = JSON.stringify(big);
    assert.ok(Buffer.byteLength(body) > 1024 * 1024);
    const res = await post(body);
    assert.equal(res.status, 413);
    await res.text();
    assert.equal(runtime.outbox.stats().lastSeq, before.lastSeq);
    // Just under the limit is fine.
    const fits = JSON.stringify(big.slice(0, 5000));
    assert.ok(Buffer.byteLength(fits) < 1024 * 1024);
    const ok = await post(fits);
    assert.equal(ok.status, 202);
    assert.equal(((await ok.json()) as { accepted: unknown[] }).accepted.length, 5000);
  });

  it('lists the newest local events first, limit 1..1000 (default 100)', async () => {
    const res = await post([1, 2, 3].map((n) => ({ type: 'sensor.reading', source: { device: 'order' }, data: { n } })));
    const { accepted } = (await res.json()) as { accepted: Array<{ id: string; seq: number }> };
    const list = await fetch(`${base}/api/v1/events?limit=3`);
    assert.equal(list.status, 200);
    assert.equal(list.headers.get('content-type'), 'application/json; charset=utf-8');
    const text = await list.text();
    // The stored JSON as it is (not parsed and serialized again), each event as the outbox holds it.
    assert.equal(text, `{"events":[${runtime.outbox.recentJson(3).join(',')}]}`);
    assert.equal(text, JSON.stringify({ events: runtime.outbox.recent(3) }), 'the same bytes as before');
    const { events } = JSON.parse(text) as { events: Envelope[] };
    assert.deepEqual(
      events.map((e) => e.id),
      accepted.map((a) => a.id).reverse(),
    );
    assert.deepEqual(
      events.map((e) => e.seq),
      accepted.map((a) => a.seq).reverse(),
    );
    const dflt = (await (await fetch(`${base}/api/v1/events`)).json()) as { events: Envelope[] };
    assert.equal(dflt.events.length, 100);
    for (const bad of ['0', '1001', 'abc', '-1', '1.5']) {
      const r = await fetch(`${base}/api/v1/events?limit=${bad}`);
      assert.equal(r.status, 400, bad);
      assert.equal(((await r.json()) as { field: string }).field, 'limit');
    }
  });

  it('keeps the list of newest events within ~1 MiB of JSON whatever their size (it was the 1,000 newest of up to 1 MiB each)', async () => {
    const big = 'x'.repeat(200_000);
    for (let i = 0; i < 12; i++) {
      const res = await post({ type: 'sensor.reading', source: { device: 'big' }, data: { i, big } });
      assert.equal(res.status, 202);
    }
    const res = await fetch(`${base}/api/v1/events?limit=1000`);
    assert.equal(res.status, 200);
    const text = await res.text();
    const { events } = JSON.parse(text) as { events: Envelope[] };
    assert.ok(text.length < 1.3 * 1024 * 1024, `${text.length} characters`);
    assert.deepEqual(
      events.map((e) => e.data.i),
      [11, 10, 9, 8, 7],
      'the newest that fit, newest first',
    );
    // The small events after them are listed as usual, the big ones leave as they come.
    await post({ type: 'sensor.reading', source: { device: 'small' }, data: { n: 1 } });
    const after = (await (await fetch(`${base}/api/v1/events?limit=2`)).json()) as { events: Envelope[] };
    assert.deepEqual(
      after.events.map((e) => e.source.device),
      ['small', 'big'],
    );
  });

  it('reports health, status and metrics', async () => {
    const h = await fetch(`${base}/healthz`);
    assert.equal(h.status, 200);
    const health = (await h.json()) as { ok: boolean };
    assert.equal(health.ok, true);

    const s = await fetch(`${base}/api/v1/status`);
    assert.equal(s.status, 200);
    const status = (await s.json()) as Record<string, any>;
    assert.equal(status.site, 'test-site');
    assert.equal(status.edge, 'gate-01');
    assert.equal(status.version, '9.9.9');
    assert.equal(typeof status.uptimeS, 'number');
    assert.equal(status.uplink.connected, false);
    assert.equal(status.uplink.lastAckAt, null);
    assert.equal(status.outbox.events, runtime.outbox.stats().events);
    assert.equal(typeof status.outbox.bytes, 'number');
    assert.match(status.outbox.oldestTs, /^\d{4}-\d{2}-\d{2}T/);
    assert.ok(Array.isArray(status.devices));

    const m = await fetch(`${base}/metrics`);
    assert.equal(m.status, 200);
    assert.match(m.headers.get('content-type') ?? '', /text\/plain/);
    const text = await m.text();
    for (const name of [
      'edgeward_events_in_total{type="door.opened"}',
      'edgeward_events_out_total',
      'edgeward_outbox_events',
      'edgeward_outbox_bytes',
      'edgeward_uplink_connected 0',
      'edgeward_ack_lag_seconds',
      'edgeward_device_online',
      'edgeward_driver_errors_total',
      'edgeward_rule_firings_total',
    ]) {
      assert.ok(text.includes(name), `metrics lack ${name}`);
    }
    const depth = /^edgeward_outbox_events (\d+)$/m.exec(text);
    assert.equal(Number(depth?.[1]), runtime.outbox.stats().events);
  });

  it('stores events emitted on the bus through the same ingest path', async () => {
    const before = runtime.outbox.stats().lastSeq;
    runtime.bus.emit('event.input', { type: 'device.online', source: { device: 'bus-dev', driver: 'test' } });
    runtime.bus.emit('event.input', { type: 'device.online', source: { device: 'bus-dev-2', driver: 'test' } });
    await waitFor(() => runtime.outbox.stats().lastSeq >= before + 2, { message: 'bus events stored' });
    const devices = runtime.outbox.recent(2).map((e) => e.source.device);
    assert.deepEqual(devices.sort(), ['bus-dev', 'bus-dev-2']);
  });

  it('one bad bus event does not take the others of its tick with it', async () => {
    const before = runtime.outbox.stats().lastSeq;
    const cyclic: Record<string, unknown> = { door: 0 };
    cyclic.self = cyclic;
    // All in one tick, so they would go to the store as one append.
    runtime.bus.emit('event.input', { type: 'door.opened', source: { device: 'tick-a' } });
    runtime.bus.emit('event.input', { type: 'door.opened', source: { device: 'tick-bad-sev' }, severity: 'fatal' as never });
    runtime.bus.emit('event.input', { type: 'door.opened', source: { device: 'tick-bigint' }, data: { v: 10n } });
    runtime.bus.emit('event.input', { type: 'door.opened', source: { device: 'tick-cycle' }, data: cyclic });
    runtime.bus.emit('event.input', { type: 'fire.alarm', source: { device: 'tick-b' } });
    await waitFor(() => runtime.outbox.recent(5).some((e) => e.source.device === 'tick-b'), { message: 'the alarm of the tick stored' });
    await waitFor(() => runtime.outbox.recent(5).some((e) => e.source.device === 'tick-a'), { message: 'the good event of the tick stored' });
    const stored = runtime.outbox.recent(10).filter((e) => e.seq! > before).map((e) => e.source.device);
    assert.deepEqual(stored.sort(), ['tick-a', 'tick-b']);
  });

  it('starts registered drivers, survives a broken one, shows them in status and routes commands', async () => {
    const executed: string[] = [];
    const healthy: Driver = {
      name: 'door-ok',
      driver: 'fake',
      actions: ['door.unlock'],
      start: async () => undefined,
      stop: async () => undefined,
      execute: async (cmd) => {
        executed.push(`${cmd.action}:${cmd.target}`);
        return { ok: 1 };
      },
      state: () => ({ online: true, lastSeen: '2025-03-05T08:12:03.120Z' }),
    };
    Object.assign(healthy, { health: () => ({ renewFailures: 2, online: true, lastError: 'x' }) });
    const broken: Driver = {
      ...healthy,
      name: 'door-broken',
      start: async () => {
        throw new Error('serial port vanished');
      },
      state: () => ({ online: false }),
    };
    const unregisterOk = runtime.registerDriver(healthy);
    const unregisterBroken = runtime.registerDriver(broken);
    assert.throws(() => runtime.registerDriver(healthy), /already registered/);
    const status = (await (await fetch(`${base}/api/v1/status`)).json()) as { devices: Array<Record<string, unknown>> };
    const byName = new Map(status.devices.map((d) => [d.name, d]));
    assert.deepEqual(byName.get('door-ok'), {
      name: 'door-ok',
      driver: 'fake',
      online: true,
      lastSeen: '2025-03-05T08:12:03.120Z',
    });
    assert.equal(byName.get('door-broken')?.online, false);
    assert.equal((await fetch(`${base}/healthz`)).status, 200, 'a broken device does not make the runtime unhealthy');
    await waitFor(async () => (await runtime.metrics.text()).includes('edgeward_driver_errors_total{device="door-broken"'), {
      message: 'driver start error counted',
    });

    const text = await runtime.metrics.text();
    assert.match(text, /edgeward_driver_health\{device="door-ok",driver="fake",metric="renewFailures"\} 2/);
    assert.match(text, /edgeward_driver_health\{device="door-ok",driver="fake",metric="online"\} 1/);
    assert.doesNotMatch(text, /metric="lastError"/);

    assert.deepEqual(await runtime.executeCommand({ id: 'c1', action: 'door.unlock', target: 'door-ok', args: {} }), { ok: 1 });
    await assert.rejects(runtime.executeCommand({ id: 'c2', action: 'door.unlock', target: 'nope', args: {} }), /no device/);
    await assert.rejects(runtime.executeCommand({ id: 'c3', action: 'fire.silence', target: 'door-ok', args: {} }), /does not accept/);
    runtime.bus.emit('command', { id: 'c4', action: 'door.unlock', target: 'door-ok', args: {} });
    await waitFor(() => executed.length === 2, { message: 'bus command routed to the driver' });

    unregisterOk();
    unregisterBroken();
    assert.deepEqual(runtime.deviceNames(), []);
  });

  describe('with a token', () => {
    let dir2: TmpDir;
    let rt: Runtime;
    let url: string;

    before(async () => {
      dir2 = await tmpDir('http-token');
      rt = new Runtime({ config: configFor(dir2.path, `, token: ${TOKEN}`), log: silentLogger() });
      await rt.start();
      url = `http://127.0.0.1:${rt.port}`;
    });

    after(async () => {
      await rt?.stop();
      await dir2?.cleanup();
    });

    it('answers 401 without the bearer token on /api and /metrics, 200 with it; /healthz stays open', async () => {
      const event = JSON.stringify({ type: 'door.opened', source: { device: 'd' } });
      const json = { 'content-type': 'application/json' };
      for (const auth of [undefined, 'Bearer wrong-token-0123456789', `Basic ${TOKEN}`, TOKEN, 'Bearer ']) {
        const headers: Record<string, string> = auth === undefined ? {} : { authorization: auth };
        assert.equal((await fetch(`${url}/api/v1/status`, { headers })).status, 401, String(auth));
        assert.equal((await fetch(`${url}/metrics`, { headers })).status, 401, String(auth));
        const p = await fetch(`${url}/api/v1/events`, { method: 'POST', headers: { ...json, ...headers }, body: event });
        assert.equal(p.status, 401, String(auth));
      }
      assert.equal(rt.outbox.stats().lastSeq, 0, 'nothing stored without the token');
      const authz = { authorization: `Bearer ${TOKEN}` };
      assert.equal((await fetch(`${url}/api/v1/status`, { headers: authz })).status, 200);
      assert.equal((await fetch(`${url}/metrics`, { headers: authz })).status, 200);
      const p = await fetch(`${url}/api/v1/events`, { method: 'POST', headers: { ...json, ...authz }, body: event });
      assert.equal(p.status, 202);
      assert.equal((await fetch(`${url}/healthz`)).status, 200);
    });
  });

  describe('with an uplink that cannot connect', () => {
    let dir3: TmpDir;
    let rt: Runtime;
    let offset = 0;

    before(async () => {
      dir3 = await tmpDir('http-uplink');
      const deadPort = await freePort(); // nothing listens there
      const config = configFor(dir3.path);
      config.uplink = parseConfig(
        `site: a\nedge: b\ndataDir: d\nprivacy: { siteKey: ${SITE_KEY} }\nuplink: { url: "mqtt://127.0.0.1:${deadPort}" }\n`,
        {},
      ).uplink;
      // Time is driven by the test: only now() is shifted, timers run for real.
      const clock = { ...systemClock, now: () => Date.now() + offset };
      rt = new Runtime({ config, log: silentLogger(), clock });
      await rt.start();
    });

    after(async () => {
      await rt?.stop();
      await dir3?.cleanup();
    });

    it('says 503 on /healthz once the uplink has been down for over 60 s', async () => {
      const url = `http://127.0.0.1:${rt.port}`;
      const early = await fetch(`${url}/healthz`);
      assert.equal(early.status, 200, 'a short outage is normal on a cellular link');
      offset = 61_000;
      const late = await fetch(`${url}/healthz`);
      assert.equal(late.status, 503);
      const body = (await late.json()) as { ok: boolean; problems: string[] };
      assert.equal(body.ok, false);
      assert.ok(body.problems.some((p) => /^uplink disconnected for 6\d s$/.test(p)), body.problems.join('; '));
      const status = (await (await fetch(`${url}/api/v1/status`)).json()) as { uplink: Record<string, unknown> };
      assert.deepEqual(status.uplink, { connected: false, lastAckAt: null, configured: true });
    });
  });

  it('keeps what it acknowledged across a restart on the same dataDir', async () => {
    const res = await post({ type: 'door.closed', source: { device: 'door-9' } });
    const { accepted } = (await res.json()) as { accepted: Array<{ id: string; seq: number }> };
    const events = runtime.outbox.stats().events;
    await runtime.stop();
    const stats = await readOutboxStats(outboxPath(dir.path));
    assert.equal(stats.events, events);
    assert.equal(stats.lastSeq, accepted[0].seq);
    runtime = new Runtime({ config: configFor(dir.path), log: silentLogger() });
    await runtime.start();
    assert.equal(runtime.outbox.stats().events, events);
  });

  it('a store full of critical events (under its bound too): 503 EDGE_OUTBOX_FULL for the rest, said in /healthz, logged once', async () => {
    const full = await tmpDir('http-full');
    const { log, lines } = captureLogger('info');
    const rt = new Runtime({ config: configFor(full.path, '', '\noutbox: { maxBytes: 1048576 }'), log, version: '9.9.9' });
    await rt.start();
    try {
      const url = `http://127.0.0.1:${rt.port}`;
      const alarm = { type: 'door.forced', source: { device: 'door-1' }, data: { door: 0, pad: 'x'.repeat(400) } };
      // No uplink: nothing is acked. Alarms up to just under the bound: a batch of door events
      // no longer fits, and nothing is evictable (refused under the bound too).
      while (rt.outbox.stats().bytes <= 1048576 - 60_000) {
        const r = await fetch(`${url}/api/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(Array.from({ length: 100 }, () => alarm)) });
        assert.equal(r.status, 202);
      }
      for (let i = 0; i < 20; i++) {
        const r = await fetch(`${url}/api/v1/events`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(Array.from({ length: 1 }, () => ({ type: 'door.opened', source: { device: 'door-1' }, data: { door: 0, pad: 'y'.repeat(80_000) } }))),
        });
        assert.equal(r.status, 503);
        assert.equal(((await r.json()) as { code: string }).code, 'EDGE_OUTBOX_FULL');
      }
      const h = await fetch(`${url}/healthz`);
      assert.equal(h.status, 503);
      assert.match(JSON.stringify(await h.json()), /outbox full of critical events since [^:]+:\d\d:\d\d\.\d+Z: 20 other events refused \(EDGE_OUTBOX_FULL\)/);
      const errors = lines.filter((l) => (l.level as number) >= 50);
      assert.equal(errors.length, 0, JSON.stringify(errors.slice(0, 2)));
      // Said once by the store, not once per request.
      assert.equal(lines.filter((l) => /outbox full of critical events/.test(String(l.msg))).length, 1);
    } finally {
      await rt.stop();
      await full.cleanup();
    }
  });
});
