import { promisify } from 'node:util';
import { gunzip, gunzipSync, gzip, gzipSync } from 'node:zlib';
import { type Envelope, isEventType, isSeverity } from '../edge/envelope.js';
import { EdgewardError } from '../edge/errors.js';

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);
/**
 * Batches up to this size (uncompressed) are gzipped on the main thread: all
 * batches of the default `uplink.batch.maxBytes` (256 KiB). zlib's async API
 * does not spare the event loop: measured on a 500-event batch (123 KB JSON,
 * level 1), async cost the main thread 0.11-0.17 ms per batch (a new Gzip
 * stream, its deflate state, the stream's callbacks) and 0.25-0.36 ms of CPU
 * in all, `gzipSync` 0.09-0.15 ms in all. On the bench's 2 cores, which the
 * pipeline keeps busy, the CPU counts. Only batches above this (a site that
 * raised maxBytes) go to the thread pool, so one call never holds the loop
 * for more than ~1 ms.
 */
const INLINE_GZIP_MAX_BYTES = 1024 * 1024;
/**
 * Compressed payloads up to this size are inflated on the main thread. zlib's
 * async API streams through the thread pool 16 KiB of output at a time:
 * measured on a 500-event batch (7.9 KB gzip, 153 KB JSON), 1.3-1.5 µs of CPU
 * per event async against 0.29-0.36 µs inline. Deflate expands at most ~1032x,
 * so the worst case inline is ~33 MB (tens of ms); larger payloads go async.
 */
const INLINE_GUNZIP_MAX_BYTES = 32 * 1024;
/**
 * zlib level of the batches. Level 1 rather than zlib's 6: measured on 500
 * bench envelopes (153 KB of JSON), 0.16 ms instead of 0.55 ms of CPU per
 * batch for 7.9 KB instead of 7.0 KB on the wire (19x instead of 22x); the
 * pipeline went from 88k to 95-97k events/s. An edge box is short of CPU long
 * before a few hundred bytes a second matter on its uplink.
 */
export const DEFAULT_GZIP_LEVEL = 1;

/**
 * Codecs of the MQTT protocol (SPEC.md "MQTT protocol (contract)"): the event
 * batch on `P/events`, the ack on `P/ack` and the status on `P/status`.
 * Shared by the uplink, the reference central receiver and tests.
 *
 * Error codes: `EDGE_BATCH_GZIP` (payload starts 1f 8b but does not inflate,
 * or inflates past the size limit), `EDGE_BATCH_JSON` (not UTF-8 JSON),
 * `EDGE_BATCH_INVALID` (JSON of the wrong shape; `details.path` names the
 * field), `EDGE_ACK_INVALID` (an ack payload that is not JSON or not
 * `{"epoch","seqs":[[from,to],…]}`).
 */

/** Who sent a batch. */
export interface BatchHeader {
  site: string;
  edge: string;
  /** The outbox epoch the seqs of this batch belong to. */
  epoch: string;
}

/** A decoded batch: `{"v":1,"site","edge","epoch","events":[envelope…]}`. */
export interface Batch extends BatchHeader {
  v: 1;
  events: Envelope[];
}

/** A decoded ack: the central stored these seqs (inclusive ranges) of that epoch. */
export interface Ack {
  epoch: string;
  seqs: Array<[number, number]>;
}

/** The retained status payload on `P/status` (also the last will, with state offline). */
export interface StatusPayload {
  state: 'online' | 'offline';
  ts: string;
  version: string;
  /**
   * `writeError` (an optional extension of the contract) only while the edge's
   * outbox cannot write (disk full, I/O error) and refuses events.
   */
  outbox: { events: number; writeError?: { since: string; message: string } };
  /** Optional extension: the outbox epoch acks must name. */
  epoch?: string;
  /** Optional extension, on the last will only: ts and outbox are from when the edge connected. */
  will?: boolean;
}

export type Compression = 'gzip' | 'none';

/** A decompressed batch larger than this is refused (a gzip bomb would otherwise eat the heap). */
export const DEFAULT_MAX_DECODED_BYTES = 64 * 1024 * 1024;

/**
 * The batch JSON built from already-serialized envelopes: each `StoredEvent.json`
 * is spliced in verbatim instead of being parsed and re-serialized.
 */
export function batchJson(header: BatchHeader, eventJsons: readonly string[]): string {
  const head = JSON.stringify({ v: 1, site: header.site, edge: header.edge, epoch: header.epoch });
  return `${head.slice(0, -1)},"events":[${eventJsons.join(',')}]}`;
}

/**
 * The batch JSON of `batchJson`, written straight into one buffer of its exact
 * UTF-8 size. `Array.join` plus a template plus `Buffer.from` cost the event
 * loop ~0.35 ms per 500-event batch (the join alone ~0.15 ms: V8 builds it
 * through a generic path, then the template makes a cons string that
 * `Buffer.from` flattens and copies again); writing each already-serialized
 * envelope into place costs ~0.06 ms (measured on 500 envelopes of ~300 B).
 */
export function batchBuffer(header: BatchHeader, eventJsons: readonly string[]): Buffer {
  const head = JSON.stringify({ v: 1, site: header.site, edge: header.edge, epoch: header.epoch });
  const open = `${head.slice(0, -1)},"events":[`;
  let size = Buffer.byteLength(open) + 2 + Math.max(0, eventJsons.length - 1);
  for (const j of eventJsons) size += Buffer.byteLength(j);
  const buf = Buffer.allocUnsafe(size);
  let at = buf.write(open, 0);
  for (let i = 0; i < eventJsons.length; i++) {
    if (i > 0) buf[at++] = 0x2c; // ,
    at += buf.write(eventJsons[i], at);
  }
  buf[at++] = 0x5d; // ]
  buf[at++] = 0x7d; // }
  return buf;
}

/** Encode a batch payload: UTF-8 JSON, gzip-compressed when `compress` is `gzip` (starts 1f 8b). */
export async function encodeBatch(
  header: BatchHeader,
  eventJsons: readonly string[],
  compress: Compression,
  gzipLevel: number = DEFAULT_GZIP_LEVEL,
): Promise<Buffer> {
  const json = batchBuffer(header, eventJsons);
  if (compress !== 'gzip') return json;
  // Inline also keeps an alarm's batch off libuv's thread pool, where it would
  // queue behind LevelDB's fsyncs.
  return json.length <= INLINE_GZIP_MAX_BYTES ? gzipSync(json, { level: gzipLevel }) : gzipAsync(json, { level: gzipLevel });
}

export function isGzip(buf: Uint8Array): boolean {
  return buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b;
}

/**
 * Decode and validate a batch payload (gzip detected by its magic bytes).
 * Throws `EdgewardError` with a code above; never returns a half-valid batch.
 */
export async function decodeBatch(buf: Uint8Array, opts: { maxBytes?: number } = {}): Promise<Batch> {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_DECODED_BYTES;
  let raw: Buffer = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (isGzip(raw)) {
    try {
      raw =
        raw.length <= INLINE_GUNZIP_MAX_BYTES
          ? gunzipSync(raw, { maxOutputLength: maxBytes })
          : await gunzipAsync(raw, { maxOutputLength: maxBytes });
    } catch (err) {
      throw new EdgewardError(
        'EDGE_BATCH_GZIP',
        `batch payload is not valid gzip: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
  } else if (raw.length > maxBytes) {
    throw new EdgewardError(
      'EDGE_BATCH_INVALID',
      `batch payload of ${raw.length} bytes exceeds ${maxBytes}`,
      {
        details: { path: '' },
      },
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw));
  } catch (err) {
    throw new EdgewardError('EDGE_BATCH_JSON', `batch payload is not UTF-8 JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return validateBatch(value);
}

function invalid(path: string, why: string): EdgewardError {
  return new EdgewardError('EDGE_BATCH_INVALID', `batch ${path} ${why}`, { details: { path } });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0;
}

/** Check the shape of a parsed batch and of every envelope in it. */
export function validateBatch(value: unknown): Batch {
  if (!isObject(value)) throw invalid('(root)', 'must be an object');
  if (value.v !== 1) throw invalid('v', 'must be 1');
  for (const k of ['site', 'edge', 'epoch'] as const) {
    if (!isNonEmptyString(value[k])) throw invalid(k, 'must be a non-empty string');
  }
  if (!Array.isArray(value.events)) throw invalid('events', 'must be an array');
  const events = value.events as unknown[];
  for (let i = 0; i < events.length; i++) validateEnvelope(events[i], `events[${i}]`, value);
  return value as unknown as Batch;
}

function validateEnvelope(e: unknown, path: string, batch: Record<string, unknown>): void {
  if (!isObject(e)) throw invalid(path, 'must be an object');
  if (!isNonEmptyString(e.id)) throw invalid(`${path}.id`, 'must be a non-empty string');
  if (!Number.isSafeInteger(e.seq) || (e.seq as number) < 1)
    throw invalid(`${path}.seq`, 'must be an integer >= 1');
  if (typeof e.ts !== 'string' || Number.isNaN(Date.parse(e.ts)))
    throw invalid(`${path}.ts`, 'must be an ISO date');
  if (e.site !== batch.site) throw invalid(`${path}.site`, 'must equal the batch site');
  if (e.edge !== batch.edge) throw invalid(`${path}.edge`, 'must equal the batch edge');
  if (!isEventType(e.type)) throw invalid(`${path}.type`, 'is not a known event type');
  if (!isSeverity(e.severity)) throw invalid(`${path}.severity`, 'must be info, warning or critical');
  if (!isObject(e.source) || !isNonEmptyString(e.source.device)) {
    throw invalid(`${path}.source.device`, 'must be a non-empty string');
  }
  if (!isObject(e.data)) throw invalid(`${path}.data`, 'must be an object');
  if (!Number.isSafeInteger(e.count) || (e.count as number) < 1)
    throw invalid(`${path}.count`, 'must be an integer >= 1');
  if (e.msg !== undefined) {
    const m = e.msg;
    if (!isObject(m) || typeof m.zh !== 'string' || typeof m.bo !== 'string' || typeof m.en !== 'string') {
      throw invalid(`${path}.msg`, 'must have zh, bo and en strings');
    }
  }
}

/** Encode an ack payload for `P/ack`. */
export function encodeAck(ack: Ack): Buffer {
  return Buffer.from(JSON.stringify({ epoch: ack.epoch, seqs: ack.seqs }), 'utf8');
}

/**
 * Parse and strictly validate an ack payload. Ranges must be integer pairs
 * `[from, to]` with 1 <= from <= to; anything else throws `EDGE_ACK_INVALID`,
 * so a malformed ack never deletes anything.
 */
export function decodeAck(buf: Uint8Array | string): Ack {
  const text =
    typeof buf === 'string' ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new EdgewardError('EDGE_ACK_INVALID', `ack payload is not JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const bad = (why: string) => new EdgewardError('EDGE_ACK_INVALID', `ack ${why}`);
  if (!isObject(value)) throw bad('must be an object');
  if (!isNonEmptyString(value.epoch)) throw bad('epoch must be a non-empty string');
  if (!Array.isArray(value.seqs)) throw bad('seqs must be an array of [from, to] ranges');
  const seqs: Array<[number, number]> = [];
  for (let i = 0; i < value.seqs.length; i++) {
    const r: unknown = value.seqs[i];
    if (
      !Array.isArray(r) ||
      r.length !== 2 ||
      !Number.isSafeInteger(r[0]) ||
      !Number.isSafeInteger(r[1]) ||
      r[0] < 1 ||
      r[0] > r[1]
    ) {
      throw bad(`seqs[${i}] must be [from, to] with integers 1 <= from <= to`);
    }
    seqs.push([r[0], r[1]]);
  }
  return { epoch: value.epoch, seqs };
}

/** Collapse sorted-or-not seqs into inclusive ranges: [1,2,3,7] → [[1,3],[7,7]]. */
export function toRanges(seqs: Iterable<number>): Array<[number, number]> {
  const sorted = [...seqs].sort((a, b) => a - b);
  const out: Array<[number, number]> = [];
  for (const s of sorted) {
    const last = out[out.length - 1];
    if (last && s <= last[1] + 1) last[1] = Math.max(last[1], s);
    else out.push([s, s]);
  }
  return out;
}

/** Encode the status payload (retained on `P/status`). */
export function encodeStatus(status: StatusPayload): Buffer {
  return Buffer.from(JSON.stringify(status), 'utf8');
}

/** Parse a status payload; throws `EDGE_STATUS_INVALID` on anything else. */
export function decodeStatus(buf: Uint8Array | string): StatusPayload {
  const text =
    typeof buf === 'string' ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).toString('utf8');
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new EdgewardError('EDGE_STATUS_INVALID', 'status payload is not JSON', { cause: err });
  }
  if (
    !isObject(v) ||
    (v.state !== 'online' && v.state !== 'offline') ||
    typeof v.ts !== 'string' ||
    typeof v.version !== 'string' ||
    !isObject(v.outbox) ||
    !Number.isSafeInteger(v.outbox.events) ||
    (v.outbox.writeError !== undefined &&
      (!isObject(v.outbox.writeError) ||
        typeof v.outbox.writeError.since !== 'string' ||
        typeof v.outbox.writeError.message !== 'string'))
  ) {
    throw new EdgewardError(
      'EDGE_STATUS_INVALID',
      'status payload must be {state, ts, version, outbox: {events, writeError?: {since, message}}}',
    );
  }
  return v as unknown as StatusPayload;
}
