import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import type http from 'node:http';
import path from 'node:path';
import type express from 'express';
import { isLoopbackHost } from './config.js';
import type { SiteConfig } from './config-types.js';
import type { EventInput } from './envelope.js';
import { EdgewardError } from './errors.js';
import { flowBearerAuth, parseEventsBody } from './http.js';
import { type Logger, REDACTED_KEYS } from './log.js';
import type { EdgewardNodeApi } from './node-api.js';

/** Options of {@link embedNodeRed}. */
export interface EmbedNodeRedOptions {
  /** The runtime's express app: the editor/admin API and `http in` routes are mounted on it. */
  app: express.Express;
  /** The runtime's HTTP server (the editor's websocket attaches to it). */
  server: http.Server;
  config: SiteConfig;
  /** Handed to nodes as `RED.settings.edgeward`. */
  api: EdgewardNodeApi;
  log: Logger;
  /** Node-RED's user directory (credentials, context, library), e.g. `<dataDir>/node-red`. */
  userDir: string;
}

/** A running embedded Node-RED. */
export interface EmbeddedNodeRed {
  /** Stop every flow and the editor API. Idempotent. */
  stop(): Promise<void>;
  /** The absolute flow file Node-RED reads and writes deploys back to. */
  readonly flowFile: string;
  /** Why the flows are not running (a node type this box lacks, safe mode), or null while they run. */
  problem(): string | null;
}

/** The part of the `node-red` module's API used to embed it (it ships no types). */
interface NodeRedModule {
  init(server: http.Server, settings: Record<string, unknown>): void;
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly httpAdmin: express.Handler;
  readonly httpNode: express.Handler;
  readonly events: NodeJS.EventEmitter;
}

/** How long `embedNodeRed` waits for the flows to start before it carries on with a warning. */
const FLOWS_START_TIMEOUT_MS = 30_000;

/** Node-RED's log record as handed to a custom logging handler. */
interface NodeRedLogRecord {
  level: number;
  msg: unknown;
  type?: string;
  id?: string;
  name?: string;
}

/**
 * Node-RED keeps its runtime, registry and settings in module-level state:
 * there can be one instance per process. This flag turns a second embed into
 * a clear error instead of two runtimes fighting over the same globals.
 */
let active = false;

/** The default entrance flow shipped with the runtime, seeded when a site names no flow file. */
export const DEFAULT_FLOW_FILE = path.join(repoRoot(), 'flows', 'entrance.json');

/** The demo flow of `edgeward demo` (copied into the demo's data dir before use). */
export const DEMO_FLOW_FILE = path.join(repoRoot(), 'flows', 'demo.json');

/**
 * Embed Node-RED 4 in the runtime's HTTP server and start the flows.
 *
 * - The flow file is the technician's file and the source of truth: Node-RED
 *   reads `config.nodeRed.flowFile` (resolved against the working directory)
 *   and writes every deploy back to it; its credentials go in the user dir
 *   (`<name>_cred.json`, encrypted with the credential secret). When no flow
 *   file is configured, `<userDir>/flows.json` is seeded once from the default
 *   entrance flow.
 * - The editor and admin API are served at `/` behind `adminAuth`; with
 *   `nodeRed.editor: false` neither is mounted, only `http in` routes.
 * - Palette installs, telemetry, update checks and projects are off: a
 *   safety box runs exactly the nodes it shipped with.
 *
 * Mount order: call this after the runtime's own routes and before any
 * catch-all 404 handler.
 */
export async function embedNodeRed(opts: EmbedNodeRedOptions): Promise<EmbeddedNodeRed> {
  const { app, server, config, api } = opts;
  const log = opts.log.child({ module: 'edge/nodered' });
  const editor = config.nodeRed.editor;
  const adminAuth = config.nodeRed.adminAuth;
  if (editor && !adminAuth && (!isLoopbackHost(config.http.host) || config.http.token !== undefined)) {
    // The config loader refuses this too; this is the second lock on the door,
    // because an open editor off loopback is remote code execution, and with a
    // token it would be the way around the token.
    throw new EdgewardError(
      'EDGE_NODERED_UNSAFE',
      `refusing to serve the Node-RED editor on ${config.http.host}${config.http.token !== undefined ? ' with http.token set' : ''} without nodeRed.adminAuth`,
    );
  }
  if (active) {
    throw new EdgewardError('EDGE_NODERED_RUNNING', 'Node-RED is already embedded in this process');
  }
  active = true;
  try {
    await mkdir(opts.userDir, { recursive: true });
    const flowFile = await resolveFlowFile(config.nodeRed.flowFile, opts.userDir);
    const secret = credentialSecret(config);
    migrateCredentials(config, credentialsFile(opts.userDir, flowFile), secret, log);
    const settings = buildSettings({ config, api, log, userDir: opts.userDir, flowFile, secret });

    // Loaded lazily: a runtime that never embeds Node-RED does not pay its ~60 MB.
    const RED = require('node-red') as NodeRedModule;
    RED.init(server, settings);
    if (editor) app.use('/', RED.httpAdmin);
    app.use('/', RED.httpNode);
    // RED.start() resolves before the flows run (it starts them in the
    // background): wait for them, so `http in` routes and device nodes are
    // live when the runtime reports started.
    const flows = trackFlows(RED.events);
    await RED.start();
    const outcome = await flows.first;
    if (outcome.ok) {
      log.info({ flowFile, editor, adminAuth: Boolean(adminAuth) }, 'node-red started');
    } else {
      // A flow with an unknown node type does not run at all. The runtime keeps
      // running (events over HTTP are still stored) and says so loudly.
      log.error({ flowFile, problem: outcome.problem, types: outcome.types }, 'node-red flows are not running');
    }

    let stopped = false;
    return {
      flowFile,
      problem: flows.problem,
      stop: async () => {
        if (stopped) return;
        stopped = true;
        flows.stop();
        try {
          await RED.stop();
        } finally {
          active = false;
          log.info('node-red stopped');
        }
      },
    };
  } catch (err) {
    active = false;
    if (err instanceof EdgewardError) throw err;
    throw new EdgewardError('EDGE_NODERED_START', `Node-RED failed to start: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * Whether Node-RED's flows run, from its events: `first` resolves with the
 * outcome of the start (or a timeout), `problem()` stays up to date across
 * deploys (a deploy can stop the flows, a missing type, or start them again).
 */
function trackFlows(events: NodeJS.EventEmitter): {
  first: Promise<{ ok: boolean; problem?: string; types?: unknown }>;
  problem(): string | null;
  stop(): void;
} {
  let problem: string | null = null;
  let settle: (outcome: { ok: boolean; problem?: string; types?: unknown }) => void = () => undefined;
  const first = new Promise<{ ok: boolean; problem?: string; types?: unknown }>((resolve) => {
    settle = (outcome) => {
      clearTimeout(timer);
      settle = () => undefined;
      resolve(outcome);
    };
  });
  const onStarted = () => {
    problem = null;
    settle({ ok: true });
  };
  const onRuntimeEvent = (ev: { id?: string; payload?: { error?: string; types?: unknown } }) => {
    // e.g. error 'missing-types' with the list of unknown node types, or 'safe-mode'.
    if (ev?.id !== 'runtime-state' || !ev.payload?.error) return;
    const types = Array.isArray(ev.payload.types) ? `: ${ev.payload.types.join(', ')}` : '';
    problem = `node-red flows are not running (${ev.payload.error}${types})`;
    settle({ ok: false, problem: ev.payload.error, types: ev.payload.types });
  };
  const timer = setTimeout(() => {
    problem ??= 'node-red flows are not running (flows did not start in time)';
    settle({ ok: false, problem: 'flows did not start in time' });
  }, FLOWS_START_TIMEOUT_MS);
  timer.unref();
  events.on('flows:started', onStarted);
  events.on('runtime-event', onRuntimeEvent);
  return {
    first,
    problem: () => problem,
    stop: () => {
      clearTimeout(timer);
      events.off('flows:started', onStarted);
      events.off('runtime-event', onRuntimeEvent);
    },
  };
}

/**
 * The Node-RED settings object. Exported for tests and for `edgeward check`,
 * which shows what the editor will run with.
 */
export function buildSettings(opts: {
  config: SiteConfig;
  api: EdgewardNodeApi;
  log: Logger;
  userDir: string;
  flowFile: string;
  /** The credential secret (credentialSecret). */
  secret: string;
}): Record<string, unknown> {
  const { config, api, log } = opts;
  const adminAuth = config.nodeRed.adminAuth;
  return {
    userDir: opts.userDir,
    flowFile: opts.flowFile,
    // Pretty-printed so a technician's flow file diffs cleanly in version control.
    flowFilePretty: true,
    credentialSecret: opts.secret,
    httpAdminRoot: config.nodeRed.editor ? '/' : false,
    httpNodeRoot: '/',
    // Flow endpoints (`http in`) are as exposed as the API: with a token configured they need it too.
    ...(config.http.token !== undefined && { httpNodeMiddleware: flowBearerAuth(config.http.token) }),
    // Absent (not undefined) without auth: Node-RED tests the key's presence in places.
    ...(adminAuth && {
      adminAuth: {
        type: 'credentials',
        users: [{ username: adminAuth.username, password: adminAuth.passwordHash, permissions: '*' }],
      },
    }),
    nodesDir: [nodesDir()],
    edgeward: validatingApi(api, config.privacy),
    logging: {
      // Only this handler: Node-RED's console logger would bypass pino's redaction.
      edgeward: {
        level: nodeRedLevel(config.log.level),
        metrics: false,
        audit: false,
        handler: () => (record: NodeRedLogRecord) => logRecord(log, record),
      },
    },
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: false, ui: false },
    // No palette or function-node module installs on a safety box: what runs is what shipped.
    externalModules: {
      autoInstall: false,
      palette: { allowInstall: false, allowUpload: false },
      modules: { allowInstall: false },
    },
    functionExternalModules: false,
    editorTheme: {
      projects: { enabled: false },
      tours: false,
      page: { title: `Edgeward ${config.site}/${config.edge}` },
      header: { title: `Edgeward ${config.site}/${config.edge}` },
    },
  };
}

/**
 * The api as nodes get it: `ingest` first checks each input exactly as
 * `POST /api/v1/events` does (type, source.device, data, severity, ts) and
 * pseudonymises a raw `data.card`, so a flow can neither store a malformed
 * event nor leak a card number. Errors are `EDGE_EVENT_INVALID` naming the field.
 */
export function validatingApi(api: EdgewardNodeApi, privacy: SiteConfig['privacy']): EdgewardNodeApi {
  return {
    ...api,
    ingest: async (inputs: EventInput[]) => {
      let checked: EventInput[];
      try {
        checked = parseEventsBody(inputs.length === 1 ? inputs[0] : inputs, privacy);
      } catch (err) {
        const field = (err as { field?: unknown }).field;
        const where = typeof field === 'string' ? `${field}: ` : '';
        throw new EdgewardError('EDGE_EVENT_INVALID', `${where}${(err as Error).message}`, {
          cause: err,
          details: typeof field === 'string' ? { field } : undefined,
        });
      }
      return api.ingest(checked);
    },
  };
}

/** The folder holding the `edgeward-*` node pairs. Plain JS, so the same folder serves tsx sources and `dist`. */
export function nodesDir(): string {
  return path.join(repoRoot(), 'edge', 'nodes');
}

/**
 * The package root: this file lives in `<root>/edge` (sources under tsx) or
 * `<root>/dist/edge` (the build). The build does not copy `edge/nodes` or
 * `flows`, so both layouts point back at the source tree.
 */
function repoRoot(): string {
  const up = path.resolve(__dirname, '..');
  return path.basename(up) === 'dist' && !existsSync(path.join(up, 'edge', 'nodes')) ? path.dirname(up) : up;
}

async function resolveFlowFile(configured: string | undefined, userDir: string): Promise<string> {
  if (configured !== undefined) return path.resolve(configured);
  const seeded = path.join(userDir, 'flows.json');
  if (!existsSync(seeded)) await copyFile(DEFAULT_FLOW_FILE, seeded);
  return seeded;
}

/** The box's own credential secret, in the data dir (generated once, 0600). */
export const CREDENTIAL_SECRET_FILE = 'credential-secret';

/**
 * Credentials in the flow's `_cred.json` are encrypted with this: from
 * EDGEWARD_CREDENTIAL_SECRET when set, else the box's own random secret in
 * `<dataDir>/credential-secret`, generated at the first start. Until
 * 2026-12-06 it was derived from privacy.siteKey, which central engineers
 * hold to compute pseudonyms: with the key and the file, anyone could read
 * the camera passwords. `migrateCredentials` moves such a file over.
 */
export function credentialSecret(config: SiteConfig): string {
  const fromEnv = process.env.EDGEWARD_CREDENTIAL_SECRET;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  const file = path.join(config.dataDir, CREDENTIAL_SECRET_FILE);
  if (existsSync(file)) {
    // Whatever it holds (an operator may have put a secret of their own there), it is used:
    // replacing a non-empty one would make every stored credential unreadable.
    const kept = readFileSync(file, 'utf8').trim();
    if (kept !== '') return kept;
  }
  const secret = randomBytes(32).toString('hex');
  mkdirSync(config.dataDir, { recursive: true });
  writeSynced(file, `${secret}\n`);
  return secret;
}

/** The secret of boxes before 2026-12-06: derived from privacy.siteKey. */
function legacyCredentialSecret(config: SiteConfig): string {
  return createHmac('sha256', Buffer.from(config.privacy.siteKey, 'utf8')).update('edgeward/node-red-credentials', 'utf8').digest('hex');
}

/**
 * Node credentials as Node-RED stores them under `secret` (its format:
 * aes-256-ctr under SHA-256 of the secret, `{"$": iv hex + base64}`), for a
 * file written before Node-RED runs (the demo's camera password, a migrated
 * file) so that it is never on disk in clear.
 */
export function encryptedCredentials(secret: string, credentials: Record<string, unknown>): { $: string } {
  const iv = randomBytes(16);
  const cipher = createCipheriv('aes-256-ctr', credentialKey(secret), iv);
  return { $: iv.toString('hex') + cipher.update(JSON.stringify(credentials), 'utf8', 'base64') + cipher.final('base64') };
}

/** Node-RED's credentials key: SHA-256 of the secret. */
function credentialKey(secret: string): Buffer {
  return createHash('sha256').update(secret).digest();
}

/** The credentials a Node-RED `_cred.json` holds under `secret`, or undefined when that is not its secret. */
function decryptedCredentials(stored: unknown, secret: string): Record<string, unknown> | undefined {
  const blob = (stored as { $?: unknown } | null)?.$;
  if (typeof blob !== 'string' || blob.length < 32) return undefined;
  try {
    const decipher = createDecipheriv('aes-256-ctr', credentialKey(secret), Buffer.from(blob.slice(0, 32), 'hex'));
    const v: unknown = JSON.parse(decipher.update(blob.slice(32), 'base64', 'utf8') + decipher.final('utf8'));
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Where Node-RED keeps the credentials of `flowFile` (its localfilesystem rule). */
export function credentialsFile(userDir: string, flowFile: string): string {
  const ext = path.extname(flowFile);
  return path.join(userDir, `${path.basename(flowFile, ext)}_cred${ext}`);
}

/**
 * A `_cred.json` still encrypted under the site-key-derived secret of older
 * versions is re-encrypted under `secret` before Node-RED reads it. Checked
 * at every start (idempotent): a crash between writing the box's secret and
 * this leaves a file that is migrated at the next start.
 */
export function migrateCredentials(config: SiteConfig, file: string, secret: string, log: Logger): void {
  // Node-RED keeps the previous file as .<name>.backup beside it, and restores an empty file from it:
  // left under the old key, the backup still opened with the site key (seen in a review).
  for (const f of [file, path.join(path.dirname(file), `.${path.basename(file)}.backup`)]) {
    if (migrateOne(config, f, secret)) {
      log.info({ file: f }, "node credentials re-encrypted under the box's own secret (they were under a key derived from privacy.siteKey)");
    }
  }
}

function migrateOne(config: SiteConfig, file: string, secret: string): boolean {
  if (!existsSync(file)) return false;
  let stored: unknown;
  try {
    stored = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return false; // not ours to judge: Node-RED reports it
  }
  if (decryptedCredentials(stored, secret) !== undefined) return false;
  const legacy = decryptedCredentials(stored, legacyCredentialSecret(config));
  if (legacy === undefined) return false;
  writeSynced(file, JSON.stringify(encryptedCredentials(secret, legacy)));
  return true;
}

/** Replace `file` with `text` (0600): written and synced under a temporary name, then renamed over it. */
function writeSynced(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600 });
  const fd = openSync(tmp, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

/** Node-RED is chatty at info (one line per node type loaded): warn unless the site asked for debug. */
function nodeRedLevel(level: SiteConfig['log']['level']): string {
  return level === 'debug' || level === 'trace' ? level : 'warn';
}

const PINO_LEVELS: Record<number, 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'> = {
  10: 'fatal',
  20: 'error',
  30: 'warn',
  40: 'info',
  50: 'debug',
  60: 'trace',
};

/**
 * Warnings Node-RED gives about states we chose on purpose (projects off) or
 * that are normal on a first start (no credentials file yet): logged at info
 * so a warning in an Edgeward log always means something.
 */
const EXPECTED_WARNINGS = [/^Projects disabled/, /^Encrypted credentials not found/];

/** Node-RED's log records (node.warn/error/log from any node) as pino lines. Exported for tests. */
export function logRecord(log: Logger, record: NodeRedLogRecord): void {
  let level = PINO_LEVELS[record.level];
  if (!level) return; // audit and metric records are off
  const m = record.msg;
  const text = m instanceof Error ? redactText(m.message) : typeof m === 'string' ? redactText(m) : safeJson(m);
  if (level === 'warn' && EXPECTED_WARNINGS.some((re) => re.test(text))) level = 'info';
  const fields: Record<string, unknown> = {};
  if (record.type !== undefined) fields.nodeType = record.type;
  if (record.id !== undefined) fields.nodeId = record.id;
  if (record.name !== undefined) fields.nodeName = record.name;
  // A copy with the text censored too: pino's err serializer prints message and stack as they are.
  if (m instanceof Error) fields.err = { type: m.name, message: text, ...(m.stack ? { stack: redactText(m.stack) } : {}) };
  log[level](fields, text);
}

/** A key naming a secret or a card: any identifier holding one of REDACTED_KEYS (`mqttPassword`, `access_token`, `x-auth-token`). */
const SECRET_NAME_RE = new RegExp([...REDACTED_KEYS].join('|'), 'i');
const QUOTES = new Set(['"', "'", '`']);
const CLOSING: Record<string, string> = { '[': ']', '{': '}' };

/** A character of an identifier as logs print keys: letters, digits, `_`, `-`, `$`. */
function isIdentChar(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 45 || c === 36;
}

/**
 * Where the value starting at `i` ends: a quoted string (', " or `, with
 * backslash escapes) to its closing quote, an array or object to its matching
 * bracket (quotes inside skipped), anything else to the next delimiter. Text
 * that never closes runs to the end: redacted whole rather than in part.
 */
function valueEnd(text: string, i: number): number {
  const c = text[i];
  if (QUOTES.has(c)) {
    for (let j = i + 1; j < text.length; j++) {
      if (text[j] === '\\') j++;
      else if (text[j] === c) return j + 1;
    }
    return text.length;
  }
  if (CLOSING[c]) {
    const stack: string[] = [];
    for (let j = i; j < text.length; j++) {
      const d = text[j];
      if (QUOTES.has(d)) {
        j = valueEnd(text, j) - 1;
      } else if (CLOSING[d]) {
        stack.push(CLOSING[d]);
      } else if (d === stack[stack.length - 1]) {
        stack.pop();
        if (stack.length === 0) return j + 1;
      }
    }
    return text.length;
  }
  let j = i;
  while (j < text.length && !/[\s,;}\])]/.test(text[j])) j++;
  return j;
}

/**
 * Text a node logs (a debug node set to "system console" prints the message
 * with util.inspect, or JSON) with the values of keys naming a secret or a
 * card censored (`card: '4000…'`, `"token":"…"`, `'password' => '…'` of a
 * Map, `access_token=…`, a backtick string, an array of cards; after
 * `Authorization:` the rest of the line), and any `Bearer <token>`: pino's
 * redaction cannot reach into a string. One pass over the text: each
 * identifier is read once, so no input costs more than linear time.
 */
function redactText(text: string): string {
  let out = '';
  let from = 0;
  const n = text.length;
  let i = 0;
  while (i < n) {
    if (!isIdentChar(text.charCodeAt(i))) {
      i++;
      continue;
    }
    const start = i;
    while (i < n && isIdentChar(text.charCodeAt(i))) i++;
    if (!SECRET_NAME_RE.test(text.slice(start, i))) continue;
    let j = i;
    if (j < n && QUOTES.has(text[j]) && start > 0 && text[start - 1] === text[j]) j++; // 'password' =>
    // JSON inside a JSON string: \"password\":\"…\"
    else if (text[j] === '\\' && QUOTES.has(text[j + 1]) && start > 1 && text[start - 1] === text[j + 1] && text[start - 2] === '\\') j += 2;
    while (j < n && (text[j] === ' ' || text[j] === '\t')) j++;
    if (text[j] === '=' && text[j + 1] === '>') j += 2;
    else if (text[j] === ':' || text[j] === '=') j++;
    else continue;
    while (j < n && (text[j] === ' ' || text[j] === '\t')) j++;
    if (j >= n) continue;
    if (text[j] === '\\' && QUOTES.has(text[j + 1])) {
      // An escaped string value: to the next escaped quote of its kind.
      const close = text.indexOf(`\\${text[j + 1]}`, j + 2);
      const end = close < 0 ? text.length : close + 2;
      out += `${text.slice(from, j)}\\${text[j + 1]}[redacted]\\${text[j + 1]}`;
      from = end;
      i = end;
      continue;
    }
    const c = text[j];
    const bare = !QUOTES.has(c) && !CLOSING[c];
    // Authorization: Basic …, Digest … response="…": the scheme is a word, the secret follows it.
    const end = bare && /authorization/i.test(text.slice(start, i)) ? lineEnd(text, j) : valueEnd(text, j);
    out += text.slice(from, j) + (QUOTES.has(c) ? `${c}[redacted]${c}` : '[redacted]');
    from = end;
    i = end;
  }
  out += text.slice(from);
  return out.replace(/\bBearer\s+[A-Za-z0-9._~+/=-]+/g, 'Bearer [redacted]');
}

function lineEnd(text: string, i: number): number {
  const nl = text.indexOf('\n', i);
  return nl < 0 ? text.length : nl;
}

/**
 * An object a node logs (`node.warn(msg.payload)`) becomes the line's text,
 * where pino's redaction paths cannot reach: censor the same keys here, at any
 * depth, so a card number or a token in a flow's message stays out of the log.
 */
function safeJson(v: unknown): string {
  try {
    // The text scanner's rule: any key holding a secret's name (mqttPassword, access_token,
    // x-auth-token, Authorization); exact names only let those through (seen in a review).
    const json = JSON.stringify(v, (key, value) => (key !== '' && SECRET_NAME_RE.test(key) ? '[redacted]' : value));
    // A JSON string inside (node.warn(JSON.stringify(msg)) of a msg with a JSON payload) is escaped JSON: the scanner takes that too.
    return json === undefined ? String(v) : redactText(json);
  } catch {
    return '[unserializable object]';
  }
}
