import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { makeEnvelope } from '../../edge/envelope.js';
import { isEdgewardError } from '../../edge/errors.js';
import {
  batchBuffer,
  batchJson,
  DEFAULT_GZIP_LEVEL,
  decodeAck,
  decodeBatch,
  decodeStatus,
  encodeAck,
  encodeBatch,
  encodeStatus,
  toRanges,
} from '../../sync/batch-codec.js';

const header = { site: 'pengqu-qumei', edge: 'gate-07', epoch: '01JNH6Y3Q4X5Z7V8W9A0B1C2D3' };

function envJson(seq: number, severity: 'info' | 'critical' = 'info'): string {
  const e = makeEnvelope(
    {
      type: severity === 'critical' ? 'door.forced' : 'door.opened',
      source: { device: 'door-3' },
      data: { door: 0 },
    },
    header,
  );
  return JSON.stringify({ ...e, seq });
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => isEdgewardError(err, code));
}

describe('batch codec', () => {
  it('splices stored JSON into the batch verbatim and round-trips', async () => {
    const jsons = [envJson(1), envJson(2, 'critical')];
    const json = batchJson(header, jsons);
    assert.ok(
      json.startsWith(
        '{"v":1,"site":"pengqu-qumei","edge":"gate-07","epoch":"01JNH6Y3Q4X5Z7V8W9A0B1C2D3","events":[',
      ),
    );
    assert.ok(json.includes(jsons[0]) && json.includes(jsons[1]));
    const plain = await encodeBatch(header, jsons, 'none');
    const b = await decodeBatch(plain);
    assert.equal(b.v, 1);
    assert.equal(b.epoch, header.epoch);
    assert.deepEqual(
      b.events.map((e) => e.seq),
      [1, 2],
    );
    assert.equal(b.events[1].severity, 'critical');
  });

  it('writes the batch into a buffer byte for byte as Buffer.from(batchJson), multi-byte text included', () => {
    // Criticals carry Chinese and Tibetan (3-byte UTF-8), a site name may too; and a surrogate pair.
    const msg = { zh: '门被强行打开', bo: 'སྒོ་བཙན་ཤེད་ཀྱིས་ཕྱེ་སོང་།', en: 'door forced 🚪' };
    const crit = JSON.stringify({ ...JSON.parse(envJson(7, 'critical')), msg });
    const cases: Array<[typeof header, string[]]> = [
      [header, []],
      [header, [envJson(1)]],
      [header, [envJson(1), crit, envJson(3)]],
      [{ ...header, site: '彭曲-qumei' }, [crit]],
    ];
    for (const [h, jsons] of cases) {
      const buf = batchBuffer(h, jsons);
      assert.deepEqual(buf, Buffer.from(batchJson(h, jsons), 'utf8'), `${jsons.length} events, site ${h.site}`);
      assert.deepEqual(JSON.parse(buf.toString('utf8')).events.length, jsons.length);
    }
  });

  it('gzips when asked (payload starts 1f 8b) and decodes it back', async () => {
    const jsons = Array.from({ length: 100 }, (_, i) => envJson(i + 1));
    const gz = await encodeBatch(header, jsons, 'gzip');
    assert.equal(gz[0], 0x1f);
    assert.equal(gz[1], 0x8b);
    assert.ok(
      gz.length < Buffer.byteLength(batchJson(header, jsons)) / 3,
      'gzip should shrink repetitive JSON',
    );
    const b = await decodeBatch(gz);
    assert.equal(b.events.length, 100);
  });

  it('gzips at level 1 by default, at the configured level otherwise; both inflate the same (inline, and over 1 MiB on the thread pool)', async () => {
    for (const n of [3, 400, 6000]) {
      const jsons = Array.from({ length: n }, (_, i) => envJson(i + 1));
      const raw = Buffer.from(batchJson(header, jsons), 'utf8');
      if (n === 6000) assert.ok(raw.length > 1024 * 1024, `the largest batch (${raw.length} B) takes the thread-pool path`);
      const dflt = await encodeBatch(header, jsons, 'gzip');
      assert.equal(DEFAULT_GZIP_LEVEL, 1);
      assert.deepEqual(dflt, gzipSync(raw, { level: 1 }), `${n} events: level 1 by default`);
      const nine = await encodeBatch(header, jsons, 'gzip', 9);
      assert.deepEqual(nine, gzipSync(raw, { level: 9 }), `${n} events: level 9 when configured`);
      assert.deepEqual((await decodeBatch(nine)).events, (await decodeBatch(dflt)).events);
    }
  });

  it('an empty batch is valid', async () => {
    const b = await decodeBatch(await encodeBatch(header, [], 'gzip'));
    assert.deepEqual(b.events, []);
  });

  it('rejects garbage with clear codes', async () => {
    await rejectsWith(decodeBatch(Buffer.from([0x1f, 0x8b, 1, 2, 3])), 'EDGE_BATCH_GZIP');
    await rejectsWith(decodeBatch(Buffer.from('{"v":1,')), 'EDGE_BATCH_JSON');
    await rejectsWith(decodeBatch(Buffer.from([0xff, 0xfe, 0x7b])), 'EDGE_BATCH_JSON');
    await rejectsWith(decodeBatch(Buffer.from('[]')), 'EDGE_BATCH_INVALID');
    await rejectsWith(
      decodeBatch(Buffer.from('{"v":2,"site":"a","edge":"b","epoch":"e","events":[]}')),
      'EDGE_BATCH_INVALID',
    );
    await rejectsWith(
      decodeBatch(Buffer.from('{"v":1,"site":"a","edge":"b","epoch":"e"}')),
      'EDGE_BATCH_INVALID',
    );
    await rejectsWith(decodeBatch(gzipSync(Buffer.from('not json'))), 'EDGE_BATCH_JSON');
  });

  it('validates every envelope and names the bad field', async () => {
    const good = JSON.parse(envJson(5));
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...good, seq: 0 }, 'events[0].seq'],
      [{ ...good, seq: undefined }, 'events[0].seq'],
      [{ ...good, type: 'door.exploded' }, 'events[0].type'],
      [{ ...good, severity: 'huge' }, 'events[0].severity'],
      [{ ...good, site: 'other' }, 'events[0].site'],
      [{ ...good, source: {} }, 'events[0].source.device'],
      [{ ...good, data: [] }, 'events[0].data'],
      [{ ...good, count: 0 }, 'events[0].count'],
      [{ ...good, ts: 'yesterday' }, 'events[0].ts'],
      [{ ...good, msg: { zh: 'x' } }, 'events[0].msg'],
    ];
    for (const [event, path] of cases) {
      const buf = Buffer.from(batchJson(header, [JSON.stringify(event)]));
      await assert.rejects(
        decodeBatch(buf),
        (err: unknown) => {
          return isEdgewardError(err, 'EDGE_BATCH_INVALID') && err.details?.path === path;
        },
        path,
      );
    }
  });

  it('refuses a gzip bomb past the size limit, inflated inline (small payload) or on the thread pool (large)', async () => {
    const small = gzipSync(Buffer.alloc(2 * 1024 * 1024, 0x20));
    assert.ok(small.length < 32 * 1024);
    await rejectsWith(decodeBatch(small, { maxBytes: 1024 * 1024 }), 'EDGE_BATCH_GZIP');
    // Incompressible bytes first make the payload larger than what is inflated inline.
    const large = gzipSync(Buffer.concat([randomBytes(64 * 1024), Buffer.alloc(2 * 1024 * 1024, 0x20)]));
    assert.ok(large.length > 32 * 1024);
    await rejectsWith(decodeBatch(large, { maxBytes: 1024 * 1024 }), 'EDGE_BATCH_GZIP');
    // Under the limit, both paths decode.
    const jsons = Array.from({ length: 300 }, (_, i) => envJson(i + 1));
    const padded = gzipSync(Buffer.from(batchJson(header, jsons)), { level: 0 });
    assert.ok(padded.length > 32 * 1024);
    assert.equal((await decodeBatch(padded)).events.length, 300);
  });

  it('acks: round trip and strict validation', () => {
    const ack = {
      epoch: 'E',
      seqs: [
        [1, 3],
        [7, 7],
      ] as Array<[number, number]>,
    };
    assert.deepEqual(decodeAck(encodeAck(ack)), ack);
    const bad = [
      'nope',
      '[]',
      '{"seqs":[[1,2]]}',
      '{"epoch":"","seqs":[[1,2]]}',
      '{"epoch":"E"}',
      '{"epoch":"E","seqs":[1,2]}',
      '{"epoch":"E","seqs":[[2,1]]}',
      '{"epoch":"E","seqs":[[0,1]]}',
      '{"epoch":"E","seqs":[[1.5,2]]}',
      '{"epoch":"E","seqs":[[1,2,3]]}',
      '{"epoch":"E","seqs":[["1","2"]]}',
    ];
    for (const b of bad)
      assert.throws(
        () => decodeAck(b),
        (err: unknown) => isEdgewardError(err, 'EDGE_ACK_INVALID'),
        b,
      );
  });

  it('toRanges collapses seqs', () => {
    assert.deepEqual(toRanges([7, 1, 2, 3, 9, 8, 2]), [
      [1, 3],
      [7, 9],
    ]);
    assert.deepEqual(toRanges([]), []);
  });

  it('status payload round trip and validation', () => {
    const s = {
      state: 'online' as const,
      ts: new Date().toISOString(),
      version: '0.1.0',
      outbox: { events: 3 },
    };
    assert.deepEqual(decodeStatus(encodeStatus(s)), s);
    assert.throws(
      () => decodeStatus('{"state":"maybe"}'),
      (err: unknown) => isEdgewardError(err, 'EDGE_STATUS_INVALID'),
    );
  });
});
