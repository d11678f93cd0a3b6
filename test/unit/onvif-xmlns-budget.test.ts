import assert from 'node:assert/strict';
import { withoutCredentials, XmlnsScanBudget } from '../../drivers/onvif/client.js';

/** Feed `body` in chunks of `size` bytes (the budget must not depend on where chunks split). */
function accepts(body: string, size = 65536): { ok: boolean; work: number } {
  const budget = new XmlnsScanBudget();
  const buf = Buffer.from(body);
  for (let i = 0; i < buf.length; i += size) {
    if (!budget.feed(buf.subarray(i, i + size))) return { ok: false, work: budget.work };
  }
  return { ok: true, work: budget.work };
}

/**
 * Steps of onvif 0.8.3's `xml.replace(/xmlns([^=]*?)=(".*?")/g, '')`,
 * counted the way a backtracking engine runs it, one per character examined:
 * from each `xmlns`, the lazy `[^=]*?` up to the first `=`, the character
 * after it, and after `="` the `.*?"` up to a quote or a line end; a match
 * resumes after its end, a failure at the next character.
 */
function regexSteps(s: string): number {
  let steps = 0;
  let pos = 0;
  while (pos < s.length) {
    if (!s.startsWith('xmlns', pos)) {
      pos++;
      continue;
    }
    let k = pos + 5;
    let end = -1;
    for (; k < s.length; k++) {
      steps++;
      if (s[k] === '=') {
        if (k + 1 < s.length) steps++;
        if (s[k + 1] === '"') {
          for (let m = k + 2; m < s.length && s[m] !== '\n' && s[m] !== '\r'; m++) {
            steps++;
            if (s[m] === '"') {
              end = m + 1;
              break;
            }
          }
        }
        break;
      }
    }
    pos = end >= 0 ? end : pos + 1;
  }
  return steps;
}

/** Deterministic pseudo-random generator (mulberry32). */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const MiB = 1024 * 1024;

describe('onvif reply budget for the library namespace regex', () => {
  it('refuses the shapes that stall onvif 0.8.3 (measured 97-484 ms per reply on Node 20)', () => {
    const shapes: Array<[string, string]> = [
      ['xmlns repeated, no = (484 ms at 64 KiB)', 'xmlns'.repeat((64 * 1024) / 5)],
      ['204 xmlns before each "=x" (97 ms per MiB)', ('xmlns'.repeat(204) + '=x').repeat(Math.floor(MiB / 1022))],
      ['200 xmlns, =", 1000 quote-free bytes, newline (158 ms per MiB)', ('xmlns'.repeat(200) + '="' + 'a'.repeat(1000) + '\n').repeat(Math.floor(MiB / 2003))],
      ['200 xmlns, =", then 1 MiB without a quote (220 ms)', 'xmlns'.repeat(200) + '="' + 'a'.repeat(MiB)],
    ];
    for (const [what, body] of shapes) {
      assert.equal(accepts(body).ok, false, what);
      assert.equal(accepts(body, 7).ok, false, `${what}, in 7-byte chunks`);
    }
  });

  it('accepts real replies, and a lone xmlns without = (a linear 3 ms scan)', () => {
    const env =
      '<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" ' +
      'xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"><s:Body>';
    const small = `${env}<tt:Uri>rtsp://10.0.0.5/x</tt:Uri></s:Body></s:Envelope>`;
    const r = accepts(small);
    assert.ok(r.ok && r.work < small.length, `work ${r.work} for ${small.length} bytes`);
    // A 1 MiB reply that declares a namespace on every element.
    const dense = env + '<tt:X xmlns:tt="http://www.onvif.org/ver10/schema">v</tt:X>'.repeat(Math.floor(MiB / 60)) + '</s:Body></s:Envelope>';
    assert.equal(accepts(dense).ok, true);
    assert.equal(accepts('xmlns' + 'a'.repeat(MiB)).ok, true);
  });

  it('never counts fewer steps than the regex takes (random inputs, random chunk splits)', () => {
    const rand = rng(42);
    const alphabet = ['xmlns', 'xmlns', 'x', 'ml', 'ns', '=', '="', '"', '\n', 'a', 'abc'];
    for (let round = 0; round < 400; round++) {
      let s = '';
      const parts = 1 + Math.floor(rand() * 200);
      for (let i = 0; i < parts; i++) s += alphabet[Math.floor(rand() * alphabet.length)];
      const budget = new XmlnsScanBudget();
      const buf = Buffer.from(s);
      for (let i = 0; i < buf.length; ) {
        const n = 1 + Math.floor(rand() * 9);
        budget.feed(buf.subarray(i, i + n));
        i += n;
      }
      const steps = regexSteps(s);
      assert.ok(budget.work >= steps, `estimate ${budget.work} < ${steps} regex steps for ${JSON.stringify(s)}`);
    }
  });
});

describe('onvif URIs without credentials', () => {
  it('drops user:password@ (also with a raw @ in the password) and keeps the rest', () => {
    assert.equal(withoutCredentials('rtsp://admin:Cam3ra-S3cret@10.0.0.5:554/Streaming/101?a=1&b=2'), 'rtsp://10.0.0.5:554/Streaming/101?a=1&b=2');
    assert.equal(withoutCredentials('rtsp://admin:p@ss@10.0.0.5/live'), 'rtsp://10.0.0.5/live');
    assert.equal(withoutCredentials('rtsp://user@corp:pw@10.0.0.5/live'), 'rtsp://10.0.0.5/live');
    assert.equal(withoutCredentials('rtsp://10.0.0.5/live'), 'rtsp://10.0.0.5/live');
    assert.equal(withoutCredentials('rtsp://[fe80::1]:554/live?a=1'), 'rtsp://[fe80::1]:554/live?a=1');
  });

  it('drops a password with a raw /, ?, # or : in it, and surrounding whitespace', () => {
    assert.equal(withoutCredentials('rtsp://admin:Cam/Pa55@127.0.0.1:554/Streaming/101'), 'rtsp://127.0.0.1:554/Streaming/101');
    assert.equal(withoutCredentials('rtsp://admin:Hash#Pw9@127.0.0.1/live'), 'rtsp://127.0.0.1/live');
    assert.equal(withoutCredentials('rtsp://admin:Q?uery@127.0.0.1/live?x=1'), 'rtsp://127.0.0.1/live?x=1');
    assert.equal(withoutCredentials('rtsp://admin:a:b@[fe80::1]:554/live'), 'rtsp://[fe80::1]:554/live');
    assert.equal(withoutCredentials('\n   rtsp://admin:WsPw1@10.0.0.5/live  '), 'rtsp://10.0.0.5/live');
  });

  it('keeps a host:port whose query has an @ in it (no userinfo there)', () => {
    assert.equal(withoutCredentials('http://10.0.0.5:80/snap?note=a@b'), 'http://10.0.0.5:80/snap?note=a@b');
    assert.equal(withoutCredentials('http://10.0.0.5/snap?note=a@b'), 'http://10.0.0.5/snap?note=a@b');
  });

  it('drops query parameters named like credentials', () => {
    assert.equal(
      withoutCredentials('http://10.0.0.5/onvif/snapshot?profile=Profile_1&user=admin&pwd=QueryPw77#f'),
      'http://10.0.0.5/onvif/snapshot?profile=Profile_1#f',
    );
    assert.equal(withoutCredentials('http://10.0.0.5/cgi?loginuse=admin&loginpas=x&PASSWORD=y'), 'http://10.0.0.5/cgi');
    assert.equal(withoutCredentials('http://10.0.0.5/snap?user=a@b'), 'http://10.0.0.5/snap');
    // XMEye-style: as path parameters.
    assert.equal(
      withoutCredentials('rtsp://10.0.0.5:554/user=admin&password=147&channel=1&stream=0.sdp?real_stream'),
      'rtsp://10.0.0.5:554/channel=1&stream=0.sdp?real_stream',
    );
  });

  it('replaces the camera\'s own password wherever else it is (raw or percent-encoded)', () => {
    assert.equal(withoutCredentials('rtsp://10.0.0.5/live/S3cret!/x', ['S3cret!']), 'rtsp://10.0.0.5/live/***/x');
    assert.equal(withoutCredentials(`rtsp://10.0.0.5/live?k=${encodeURIComponent('岗亭密码')}`, ['岗亭密码']), 'rtsp://10.0.0.5/live?k=***');
    assert.equal(withoutCredentials('rtsp://10.0.0.5/live/ab', ['ab', undefined]), 'rtsp://10.0.0.5/live/ab', 'too short to replace safely');
  });
});
