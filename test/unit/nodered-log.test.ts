import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger } from '../../edge/log.js';
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

  it('logs a cyclic object without throwing', async () => {
    const { log, lines } = capture();
    const o: Record<string, unknown> = { card: 123 };
    o.self = o;
    logRecord(log, { level: 20, msg: o });
    await new Promise((r) => setImmediate(r));
    assert.equal(lines.length, 1);
    assert.ok(!String(lines[0].msg).includes('123'));
  });
});
