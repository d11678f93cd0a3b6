import { createHash, timingSafeEqual } from 'node:crypto';
import express from 'express';
import type { Envelope, EventInput } from './envelope.js';
import { isEventType, isIssuedPseudonym, isSeverity, pseudonymiseCard } from './envelope.js';
import { isEdgewardError } from './errors.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import type { OutboxWriteError } from '../sync/outbox-api.js';

/** The body of `GET /api/v1/status` (SPEC.md "Local HTTP API (contract)"). */
export interface RuntimeStatus {
  site: string;
  edge: string;
  version: string;
  uptimeS: number;
  uplink: { connected: boolean; lastAckAt: string | null; configured: boolean };
  /** `writeError` (an extension) only while the store cannot write: see `OutboxStats.writeError`. */
  outbox: { events: number; bytes: number; oldestTs: string | null; writeError?: OutboxWriteError };
  devices: Array<{ name: string; driver: string; online: boolean; lastSeen: string | null }>;
}

/** `GET /healthz`: `ok` false lists what is unhealthy in `problems`. */
export interface Health {
  ok: boolean;
  problems: string[];
  [k: string]: unknown;
}

/** What the HTTP API needs from the runtime. */
export interface HttpApiDeps {
  log: Logger;
  metrics: Metrics;
  /** When set, `/api` and `/metrics` need `Authorization: Bearer <token>`. */
  token?: string;
  privacy: { siteKey: string; rawCards: boolean };
  /** Complete, store durably, resolve with seqs (the runtime's ingest). */
  ingest(inputs: EventInput[]): Promise<Envelope[]>;
  /** The newest stored events as their stored JSON, newest first (Outbox.recentJson). */
  recentJson(limit: number): string[];
  status(): RuntimeStatus;
  health(): Health;
}

/** Request bodies above this are refused with 413 before parsing. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** A rejected field: `field` is the dotted path (`events[3].type`). */
class BadField extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$/;
const INPUT_KEYS = new Set(['type', 'source', 'data', 'severity', 'ts']);
const SOURCE_KEYS = new Set(['device', 'driver']);
// Printable: names come from Node-RED node names. No control
// characters, no lone surrogates (PostgreSQL's jsonb refuses them: the central could not store
// the event) and no bidirectional overrides, which make a name display as another one in logs.
// No space at either end: 'door-1 ' and 'door-1' must not be two devices.
const DEVICE_RE = /^(?!\s)[^\p{Cc}\p{Cs}\u202A-\u202E\u2066-\u2069]{1,128}(?<!\s)$/u;
/** Whether `name` may name a device (an event's source.device, a Node-RED device node). */
export function isDeviceName(name: unknown): name is string {
  return typeof name === 'string' && DEVICE_RE.test(name);
}

/**
 * Event types only the runtime emits (edge.outbox_overflow, edge.events_lost,
 * security.command_rejected): a posted one looked exactly like the runtime's
 * own loss report to a central (seen in a review), and an evicted forgery
 * would even be folded into a real report.
 */
const RESERVED_TYPE_RE = /^(edge\.|security\.)/;

/** `data` nested deeper than this is refused (JSON.stringify would overflow the stack long before a central could use it). */
export const MAX_DATA_DEPTH = 32;
const LONE_SURROGATE_RE = /\p{Cs}/u;

/** NUL or an unpaired surrogate, which PostgreSQL's jsonb (the central's store) refuses in strings and keys. */
function unstorable(s: string): boolean {
  return s.includes('\u0000') || LONE_SURROGATE_RE.test(s);
}

/**
 * Mount the local HTTP API on `app` (Node-RED mounts on the same app later,
 * so nothing here is a catch-all). Routes: /healthz, /metrics, /api/v1/*.
 */
export function mountHttpApi(app: express.Express, deps: HttpApiDeps): void {
  const log = deps.log.child({ module: 'edge/http' });
  const auth = bearerAuth(deps.token);

  app.get('/healthz', (_req, res) => {
    const h = deps.health();
    res.status(h.ok ? 200 : 503).json(h);
  });

  app.get('/metrics', auth, async (_req, res, next) => {
    try {
      const text = await deps.metrics.text();
      res.set('Content-Type', deps.metrics.contentType()).send(text);
    } catch (err) {
      next(err);
    }
  });

  const api = express.Router();
  api.use(auth);

  api.get('/status', (_req, res) => {
    res.json(deps.status());
  });

  api.get('/events', (req, res) => {
    const raw = req.query.limit;
    let limit = 100;
    if (raw !== undefined) {
      const n = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
      if (!(n >= 1 && n <= 1000)) {
        res.status(400).json({ error: 'limit must be an integer from 1 to 1000', field: 'limit' });
        return;
      }
      limit = n;
    }
    // The stored JSON as it is: parsing 1,000 events and serializing them again cost 2.2 ms
    // of the event loop a call, 12 times the join (found by a review: scraped during ingest,
    // it cut ingest from 42-52k to 16k events/s).
    res.type('json').send(`{"events":[${deps.recentJson(limit).join(',')}]}`);
  });

  api.post(
    '/events',
    (req, res, next) => {
      // No body at all (type-is then answers null whatever the Content-Type says).
      if (req.headers['transfer-encoding'] === undefined && (req.headers['content-length'] ?? '0') === '0') {
        res.status(400).json({ error: 'the request has no body: send one event or an array of events as JSON', field: 'body' });
        return;
      }
      // Checked before parsing: a form or text body would otherwise arrive as `{}` and be "valid".
      if (!req.is('application/json')) {
        res.status(415).json({ error: 'Content-Type must be application/json', field: 'body' });
        return;
      }
      next();
    },
    express.json({
      limit: MAX_BODY_BYTES,
      strict: false,
      // An empty body that the headers above did not announce as such (`Content-Length: 00`, a
      // chunked body of no chunk) is parsed as `{}`: it was answered as a bad `type`.
      verify: (req, _res, buf) => {
        if (buf.length === 0) (req as express.Request & { emptyBody?: boolean }).emptyBody = true;
      },
    }),
    async (req, res, next) => {
      if ((req as express.Request & { emptyBody?: boolean }).emptyBody) {
        res.status(400).json({ error: 'the request has no body: send one event or an array of events as JSON', field: 'body' });
        return;
      }
      let inputs: EventInput[];
      try {
        inputs = parseEventsBody(req.body, deps.privacy);
      } catch (err) {
        if (err instanceof BadField) {
          res.status(400).json({ error: err.message, field: err.field });
          return;
        }
        next(err);
        return;
      }
      try {
        // 202 only once the outbox append resolved: the events are on disk.
        const stored = await deps.ingest(inputs);
        res.status(202).json({ accepted: stored.map((e) => ({ id: e.id, seq: e.seq })) });
      } catch (err) {
        if (isEdgewardError(err, 'EDGE_OUTBOX_INVALID')) {
          // An event that does not serialize (validation above should have caught it): the request's fault, not the store's.
          res.status(400).json({ error: err.message, field: 'body' });
          return;
        }
        if (isEdgewardError(err, 'EDGE_OUTBOX_EVENT_TOO_LARGE')) {
          // One event the uplink could never send (over its packet limit): nothing of the request is stored.
          const index = (err.details as { index?: number } | undefined)?.index ?? 0;
          res.status(413).json({ error: err.message, field: Array.isArray(req.body) ? `events[${index}]` : 'body' });
          return;
        }
        next(err);
      }
    },
  );

  // The API answers in JSON, also for a method a path does not take or a path it does not have.
  const notAllowed = (allow: string) => (req: express.Request, res: express.Response) => {
    res.set('Allow', allow).status(405).json({ error: `${req.method} is not allowed here; allowed: ${allow}`, field: 'method' });
  };
  api.all('/status', notAllowed('GET, HEAD'));
  api.all('/events', notAllowed('GET, HEAD, POST'));
  api.use((req, res) => {
    res.status(404).json({ error: `no such API path: ${`${req.baseUrl}${req.path}`.slice(0, 200)}` });
  });

  // Errors of the API routes only: body-parser's and storage failures, as JSON.
  api.use((err: unknown, req: express.Request, res: express.Response, _next: express.NextFunction) => {
    const e = err as { type?: string; status?: number; message?: string };
    if (e.type === 'entity.too.large') {
      res.status(413).json({ error: `request body exceeds ${MAX_BODY_BYTES} bytes`, field: 'body' });
    } else if (e.type === 'entity.parse.failed') {
      res.status(400).json({ error: `invalid JSON: ${e.message}`, field: 'body' });
    } else if (e.type === 'encoding.unsupported' || e.type === 'charset.unsupported') {
      res.status(415).json({ error: e.message, field: 'body' });
    } else if (typeof e.status === 'number' && e.status >= 400 && e.status < 500) {
      res.status(e.status).json({ error: e.message ?? 'bad request', field: 'body' });
    } else {
      const code = isEdgewardError(err) ? err.code : 'EDGE_INTERNAL';
      // A store that cannot write logs its spell itself (once, then every 10 s), and a store full
      // of alarms says so once and in /healthz: not a line with a stack per request (a poster
      // retrying against a full outbox wrote 10,247 in 4 minutes).
      if (code === 'EDGE_OUTBOX_WRITE_FAILED') {
        log.debug({ err, code }, 'api request refused: the outbox cannot write');
        // It tries to recover once a second: a poster may try again as often.
        res.set('Retry-After', '1');
      } else if (code === 'EDGE_OUTBOX_FULL') {
        log.debug({ err, code }, 'api request refused: the outbox is full of critical events');
      } else log.error({ err, code }, 'api request failed');
      // Only a POST stores: a read that fails is not "could not be stored".
      res.status(503).json({ error: req.method === 'POST' ? 'events could not be stored' : 'the request could not be served', code });
    }
  });

  app.use('/api/v1', api);
}

/** Whether a request carries `Authorization: Bearer <token>`, compared in constant time. */
export function bearerOk(token: string): (req: { headers: { authorization?: string } }) => boolean {
  // Compare digests: equal lengths for timingSafeEqual, and no length leak.
  const want = createHash('sha256').update(token, 'utf8').digest();
  return (req) => {
    const m = /^Bearer (.+)$/i.exec(req.headers.authorization ?? '');
    const got = createHash('sha256')
      .update(m ? m[1] : '', 'utf8')
      .digest();
    return m !== null && timingSafeEqual(want, got);
  };
}

/** Constant-time bearer check; without a configured token every request passes. */
export function bearerAuth(token: string | undefined): express.RequestHandler {
  if (token === undefined) return (_req, _res, next) => next();
  const ok = bearerOk(token);
  return (req, res, next) => {
    if (ok(req)) {
      next();
      return;
    }
    res.set('WWW-Authenticate', 'Bearer realm="edgeward"').status(401).json({ error: 'missing or wrong bearer token' });
  };
}

/**
 * bearerAuth for the flows' own endpoints (`http in` nodes): once checked,
 * the token is taken off the request, so no flow sees it (a debug node set
 * to "system console" printed msg.req with `authorization: 'Bearer …'`).
 */
export function flowBearerAuth(token: string): express.RequestHandler {
  const check = bearerAuth(token);
  return (req, res, next) =>
    check(req, res, () => {
      delete req.headers.authorization;
      const raw = req.rawHeaders;
      for (let i = raw.length - 2; i >= 0; i -= 2) if (raw[i].toLowerCase() === 'authorization') raw.splice(i, 2);
      next();
    });
}

/**
 * Validate the whole body before anything is stored: one bad event rejects
 * the request. A single object names fields plainly (`source.device`), an
 * array by index (`events[3].type`).
 */
export function parseEventsBody(body: unknown, privacy: { siteKey: string; rawCards: boolean }): EventInput[] {
  if (Array.isArray(body)) {
    if (body.length === 0) throw new BadField('events', 'no events: the array is empty');
    return body.map((item, i) => parseEventInput(item, `events[${i}]`, privacy));
  }
  return [parseEventInput(body, '', privacy)];
}

function at(prefix: string, key: string): string {
  return prefix === '' ? key : `${prefix}.${key}`;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function parseEventInput(
  item: unknown,
  prefix: string,
  privacy: { siteKey: string; rawCards: boolean },
): EventInput {
  if (!isPlainObject(item)) throw new BadField(prefix || 'body', 'an event must be a JSON object');
  for (const k of Object.keys(item)) {
    if (!INPUT_KEYS.has(k)) throw new BadField(at(prefix, k), `unknown field "${k}"`);
  }
  const { type, source, data, severity, ts } = item;
  if (typeof type === 'string' && RESERVED_TYPE_RE.test(type)) {
    // The edge's own reports: a central counts loss from them, so nothing outside may forge one.
    throw new BadField(at(prefix, 'type'), `type ${type} is the edge's own report and cannot be posted`);
  }
  if (!isEventType(type)) {
    throw new BadField(
      at(prefix, 'type'),
      'type must be a contract event type or alert.<rule> (rule: up to 64 of a-z 0-9 _ . -, not starting with . or -)',
    );
  }
  if (!isPlainObject(source)) throw new BadField(at(prefix, 'source'), 'source must be an object with device');
  for (const k of Object.keys(source)) {
    if (!SOURCE_KEYS.has(k)) throw new BadField(at(prefix, `source.${k}`), `unknown field "${k}"`);
  }
  if (typeof source.device !== 'string' || !DEVICE_RE.test(source.device)) {
    throw new BadField(at(prefix, 'source.device'), 'source.device must be a device name (1-128 characters)');
  }
  if (source.driver !== undefined && (typeof source.driver !== 'string' || !DEVICE_RE.test(source.driver))) {
    throw new BadField(at(prefix, 'source.driver'), 'source.driver must be a string');
  }
  if (data !== undefined && !isPlainObject(data)) throw new BadField(at(prefix, 'data'), 'data must be an object');
  if (data !== undefined) checkStorable(data, at(prefix, 'data'), 1);
  if (severity !== undefined && !isSeverity(severity)) {
    throw new BadField(at(prefix, 'severity'), 'severity must be info, warning or critical');
  }
  let when: string | undefined;
  if (ts !== undefined) {
    const t = typeof ts === 'string' && ISO_RE.test(ts) && calendarValid(ts) ? Date.parse(ts) : Number.NaN;
    if (!Number.isFinite(t)) throw new BadField(at(prefix, 'ts'), 'ts must be an ISO 8601 date-time');
    when = new Date(t).toISOString();
    // In UTC, within years 0001-9999: '0000-01-01T00:00:00+23:59' was stored as '-000001-12-31T…'
    // (found by a review), and PostgreSQL refuses year 0 ('date/time field value out of range').
    if (when.length !== 24 || when < '0001-01-01T00:00:00.000Z') {
      throw new BadField(at(prefix, 'ts'), 'ts must be an ISO 8601 date-time from year 0001 to 9999 (in UTC)');
    }
  }
  const input: EventInput = {
    type,
    source: source.driver === undefined ? { device: source.device } : { device: source.device, driver: source.driver as string },
  };
  if (data !== undefined) input.data = protectCard(data, prefix, privacy);
  if (severity !== undefined) input.severity = severity;
  if (when !== undefined) input.ts = when;
  return input;
}

/**
 * Whether the date and time fields of an ISO_RE-shaped string exist: Date.parse
 * rolls 2025-02-30 over to March 2 and 24:00 to the next day, so an event
 * would be stored with a date its sender never wrote.
 */
function calendarValid(ts: string): boolean {
  const [y, mo, d, h, mi, s] = [ts.slice(0, 4), ts.slice(5, 7), ts.slice(8, 10), ts.slice(11, 13), ts.slice(14, 16), ts.slice(17, 19)].map(Number);
  if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59) return false;
  const leap = (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1];
  if (d > days) return false;
  const off = /([+-])(\d{2}):?(\d{2})$/.exec(ts);
  return !off || (Number(off[2]) <= 23 && Number(off[3]) <= 59);
}

/**
 * Refuse what the outbox or the central could not store, naming the field:
 * `data` nested deeper than MAX_DATA_DEPTH (measured: 10,000 levels in a 60 KB
 * body overflowed JSON.stringify's stack, and the poster got a 503 it would
 * retry for ever), and NUL or lone surrogates in a string or key.
 */
function checkStorable(v: unknown, path: string, depth: number): void {
  if (typeof v === 'string') {
    if (unstorable(v)) throw new BadField(path, 'strings must not hold NUL (\\u0000) or unpaired surrogates');
    return;
  }
  if (v === null || typeof v !== 'object') return;
  if (depth > MAX_DATA_DEPTH) throw new BadField(path, `data must not be nested deeper than ${MAX_DATA_DEPTH} levels`);
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) checkStorable(v[i], `${path}[${i}]`, depth + 1);
    return;
  }
  for (const [k, x] of Object.entries(v)) {
    if (unstorable(k)) throw new BadField(path, 'keys must not hold NUL (\\u0000) or unpaired surrogates');
    checkStorable(x, `${path}.${k}`, depth + 1);
  }
}

/**
 * Card numbers never leave the box (SPEC.md "Event envelope"): `data.card` is
 * replaced by its pseudonym, as a driver does, and so is a `card` field at any
 * depth of `data` (`data.credential.card`, `data.reads[0].card`): the logs
 * already treat the name as a card number wherever it is, and a card number
 * one level down must not leave the box raw either. Accepted as a card
 * number: a non-negative safe integer, a decimal string, or `0x`-prefixed hex
 * (a reader printing the UID in hex), which is pseudonymised by its decimal
 * value like the others. Anything else (bare hex, which cannot be told from a
 * pseudonym or a decimal, a float, an object…) is refused, since storing it
 * could leak a card number; `null` or `undefined` means "no card" and is
 * kept. With `privacy.rawCards` the value is kept as given. The error never
 * echoes the value. Returns `data` itself when nothing changed.
 */
function protectCard(data: Record<string, unknown>, prefix: string, privacy: { siteKey: string; rawCards: boolean }) {
  if (privacy.rawCards) return data;
  return protectCards(data, at(prefix, 'data'), privacy.siteKey, true) as Record<string, unknown>;
}

/** `top`: v is data itself, whose own `card` keeps the strict rule. */
function protectCards(v: unknown, path: string, siteKey: string, top = false): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) {
    let out = v;
    for (let i = 0; i < v.length; i++) {
      const x = protectCards(v[i], `${path}[${i}]`, siteKey);
      if (x === v[i]) continue;
      if (out === v) out = v.slice();
      out[i] = x;
    }
    return out;
  }
  let out = v as Record<string, unknown>;
  const o = v as Record<string, unknown>;
  // for…in, not Object.entries: no [key, value] pair per field on the HTTP hot path (JSON.parse makes own, enumerable, plain keys).
  for (const k in o) {
    const x = o[k];
    // Most values are not objects: no path string built for them.
    if (k !== 'card' && (x === null || typeof x !== 'object')) continue;
    const y = k === 'card' ? cardPseudonym(x, `${path}.card`, siteKey, !top) : protectCards(x, `${path}.${k}`, siteKey);
    if (y === x) continue;
    if (out === v) out = { ...(v as Record<string, unknown>) };
    out[k] = y;
  }
  return out;
}

/**
 * The shape of a card pseudonym (first 16 hex of the HMAC), with a letter in
 * it: sixteen digits are a card number (5100999988887777), taken as one.
 */
const PSEUDONYM_RE = /^(?=.*[a-f])[0-9a-f]{16}$/;

function cardPseudonym(card: unknown, path: string, siteKey: string, nested: boolean): unknown {
  // null (JSON) or undefined (a Node-RED flow's `card: msg.card` without a card): no card.
  if (card === null || card === undefined) return card;
  // Below data.card: an event a flow nests in another (data.trigger = a door node's envelope)
  // carries its pseudonym already, and refusing it lost the alert (seen in a review). Only one
  // this process made is kept; any other 16-hex value may be a raw 8-byte UID in hex, and is
  // pseudonymised as hex (a pseudonym from before a restart then gets a second one: no leak,
  // and the alert still goes).
  if (nested && typeof card === 'string' && PSEUDONYM_RE.test(card)) {
    return isIssuedPseudonym(card) ? card : pseudonymiseCard(BigInt(`0x${card}`), siteKey);
  }
  let decimal: string | null = null;
  if (typeof card === 'number' && Number.isSafeInteger(card) && card >= 0) decimal = String(card);
  else if (typeof card === 'string' && /^\d{1,40}$/.test(card)) decimal = card;
  else if (typeof card === 'string' && /^0[xX][0-9a-fA-F]{1,32}$/.test(card)) decimal = BigInt(card).toString(10);
  if (decimal === null) {
    throw new BadField(
      path,
      `${path} must be a card number: a non-negative integer, a decimal string or 0x-prefixed hex (it is pseudonymised before it is stored)`,
    );
  }
  return pseudonymiseCard(decimal, siteKey);
}
