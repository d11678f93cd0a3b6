import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger, urlWithoutUserinfo } from '../../edge/log.js';
import { logRecord } from '../../edge/nodered.js';

/** A logger writing into an array of parsed lines. */
function capture(): { log: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(JSON.parse(String(chunk)));
      done();
    },
  });
  return { log: createLogger({ level: 'debug', destination }), lines };
}

describe('Node-RED log records through pino', () => {
  it('censors card numbers and secrets in an object a node logs, at any depth', async () => {
    const { log, lines } = capture();
    logRecord(log, {
      level: 30,
      type: 'function',
      id: 'n1',
      msg: { payload: { data: { card: 10045821, door: 1 } }, rawCard: '4000000000', auth: { token: 'abc123secret' }, ok: 'kept' },
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(lines.length, 1);
    const text = String(lines[0].msg);
    for (const leak of ['10045821', '4000000000', 'abc123secret']) assert.ok(!text.includes(leak), `${leak} in ${text}`);
    assert.ok(text.includes('"ok":"kept"') && text.includes('"door":1'), text);
    assert.equal(lines[0].level, 40, 'warn');
    assert.equal(lines[0].nodeType, 'function');
  });

  it('censors keys that hold a secret name in an object a node logs, and JSON escaped inside a string', async () => {
    const { log, lines } = capture();
    logRecord(log, {
      level: 30,
      type: 'function',
      msg: { mqttPassword: 'obj-camel-s3cr3t', access_token: 'obj-qs-t0ken', headers: { Authorization: 'Basic YWRtaW46b2Jq', 'x-auth-token': 'obj-hdr-t0ken' }, ok: 'kept' },
    });
    logRecord(log, { level: 30, type: 'function', msg: JSON.stringify({ payload: JSON.stringify({ password: 'esc-s3cr3t', card: '5100999988887777', n: 1 }) }) });
    logRecord(log, { level: 30, type: 'function', msg: { payload: JSON.stringify({ token: 'nested-t0ken' }) } });
    await new Promise((r) => setImmediate(r));
    const text = lines.map((l) => String(l.msg)).join('\n');
    for (const leak of ['obj-camel-s3cr3t', 'obj-qs-t0ken', 'YWRtaW46b2Jq', 'obj-hdr-t0ken', 'esc-s3cr3t', '5100999988887777', 'nested-t0ken']) {
      assert.ok(!text.includes(leak), `${leak} in ${text}`);
    }
    assert.ok(text.includes('kept') && text.includes('\\"n\\":1'), text);
  });

  it('censors an Error a node logs, in its message and its stack', async () => {
    const { log, lines } = capture();
    logRecord(log, { level: 40, type: 'function', msg: new Error("login failed: password='err-s3cr3t'") });
    await new Promise((r) => setImmediate(r));
    const line = JSON.stringify(lines[0]);
    assert.ok(!line.includes('err-s3cr3t'), line);
    assert.ok(line.includes('login failed'), line);
  });

  it('logs a cyclic object without throwing', async () => {
    const { log, lines } = capture();
    const o: Record<string, unknown> = { card: 123 };
    o.self = o;
    logRecord(log, { level: 20, msg: o });
    await new Promise((r) => setImmediate(r));
    assert.equal(lines.length, 1);
    assert.ok(!String(lines[0].msg).includes('123'));
  });

  it('censors card numbers and secrets in the text a debug node prints to the console (util.inspect or JSON)', async () => {
    const { log, lines } = capture();
    const inspected =
      "\n{ type: 'access.granted', data: { door: 0, card: '4000123412341234', n: 7 }, req: { headers: { authorization: 'Bearer ApiTokenSecret-0123456789' } },\n  rawCard: 4111, password: \"pw'x\" }";
    logRecord(log, { level: 20, type: 'debug', msg: inspected });
    logRecord(log, { level: 20, type: 'debug', msg: '{"data":{"card":"5100999988887777","door":1},"token":"t0kenSecret"} Bearer abc.def-ghi' });
    // What util.inspect prints for a string with both quotes in it, and for arrays or objects under such a key.
    logRecord(log, { level: 20, type: 'debug', msg: "{ password: `it's a \"quoted\" phrase-s3cr3t`, cards: 1, card: [ '4111222233334444', { card: '5' } ], secret: { k: 'deep-s3cr3t' }, n: 8 }" });
    // Forms a review found still printed: raw HTTP headers, a Map, query strings, prefixed and camelCase keys.
    logRecord(log, {
      level: 20,
      type: 'debug',
      msg: "Authorization: Basic YWRtaW46c2VjcmV0\nAuthorization: Digest username=\"u\", response=\"6629fae49393a05397450978507c4ef1\"\nMap(1) { 'password' => 'map-s3cr3t' } ?access_token=qs-t0ken&client_secret=cs-s3cr3t {\"x-auth-token\":\"hdr-t0ken\"} { mqttPassword: 'camel-s3cr3t' } done",
    });
    await new Promise((r) => setImmediate(r));
    const text = lines.map((l) => String(l.msg)).join('\n');
    for (const leak of ['4000123412341234', 'ApiTokenSecret', '4111', "pw'x", '5100999988887777', 't0kenSecret', 'abc.def-ghi', 'phrase-s3cr3t', '4111222233334444', 'deep-s3cr3t', 'YWRtaW46c2VjcmV0', '6629fae4', 'map-s3cr3t', 'qs-t0ken', 'cs-s3cr3t', 'hdr-t0ken', 'camel-s3cr3t']) {
      assert.ok(!text.includes(leak), `${leak} in ${text}`);
    }
    assert.ok(text.includes('door: 0') && text.includes('n: 7') && text.includes('"door":1') && text.includes('n: 8') && text.includes(' done'), text);
  });

  it('logs a URL without its userinfo, and keeps the host when an @ is in the path or query', () => {
    const cases: Array<[string, string]> = [
      ['mqtt://gate:Tr0ub@dor-S3cret@127.0.0.1:1883', 'mqtt://127.0.0.1:1883'],
      ['mqtts://gate:pa/ss@central.example:8883/x', 'mqtts://central.example:8883/x'],
      ['mqtt://user@127.0.0.1', 'mqtt://127.0.0.1'],
      ['wss://central.example/mqtt?client=gate@north', 'wss://central.example/mqtt?client=gate@north'],
      ['mqtt://central:1883/x?u=a@b', 'mqtt://central:1883/x?u=a@b'],
      ['mqtt://127.0.0.1:1883', 'mqtt://127.0.0.1:1883'],
      ['wss://u:S3cret@central/mqtt?client=gate@north', 'wss://central/mqtt?client=gate@north'],
      ['mqtt://user:p@ss@host:1883/a@b', 'mqtt://host:1883/a@b'],
    ];
    for (const [url, logged] of cases) assert.equal(urlWithoutUserinfo(url), logged, url);
  });
});
