import { createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { createSecureContext } from 'node:tls';
import { dirname, resolve } from 'node:path';
import Ajv, { type ErrorObject } from 'ajv';
import { parseDocument } from 'yaml';
import type { SiteConfig } from './config-types.js';
import { EdgewardError } from './errors.js';
import { urlWithoutUserinfo } from './log.js';
import { siteConfigSchema } from './schema.js';

export type { SiteConfig, UplinkConfig } from './config-types.js';

/**
 * Site config loading (SPEC.md "Site config (contract)").
 *
 * Order of work: YAML → `env:NAME` secrets resolved (a missing variable is an
 * error naming the path and the variable) → JSON schema with defaults →
 * cross-field rules → paths made absolute. Every error is collected, named by
 * its dotted path, and thrown together as one `EDGE_CONFIG_INVALID` with
 * `details.errors: string[]`, so an operator fixes a file in one pass.
 *
 * `privacy.siteKey` is required and has no default: a key shipped with the
 * software, or generated silently, would make card pseudonyms guessable or
 * change them on a reinstall. `edgeward check` therefore never writes.
 *
 * Relative paths (`dataDir`, `nodeRed.flowFile`, `uplink.ca|cert|key`) are
 * resolved against the folder of the config file (or `opts.baseDir`).
 */

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: true });
const validate = ajv.compile(siteConfigSchema);

const ENV_RE = /^env:(.*)$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Read and validate a site config file. Throws EdgewardError('EDGE_CONFIG_INVALID') with every error. */
export function loadConfig(
  path: string,
  env: NodeJS.ProcessEnv = process.env,
  opts: { warnings?: string[]; storageOnly?: boolean } = {},
): SiteConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const msg = `cannot read config file ${path}: ${(err as Error).message}`;
    throw new EdgewardError('EDGE_CONFIG_INVALID', msg, { cause: err, details: { errors: [msg] } });
  }
  const config = parseConfig(text, env, { baseDir: dirname(resolve(path)), warnings: opts.warnings, storageOnly: opts.storageOnly });
  if (opts.storageOnly) return config;
  const missing = unusableTlsFiles(config);
  if (missing.length > 0) fail(missing);
  const flowFile = config.nodeRed.flowFile;
  if (opts.warnings && flowFile !== undefined && !existsSync(flowFile)) {
    opts.warnings.push(
      `nodeRed.flowFile: ${flowFile} does not exist: Node-RED starts with no flows and reads no device until a flow is deployed (a deploy creates the file)`,
    );
  }
  return config;
}

/**
 * The TLS files a valid config names (`uplink.ca|cert|key`) that cannot be
 * read or are not what they must be (PEM certificates, a PEM private key
 * that matches the certificate): caught by `check` and before `start`
 * touches the data dir, not when the uplink first connects (a garbage key
 * made mqtt.js throw out of the runtime after "runtime started"). They are
 * read again before every connection, so a renewed certificate needs no
 * restart.
 */
export function unusableTlsFiles(config: SiteConfig): string[] {
  const errors: string[] = [];
  const pem: TlsPem = {};
  for (const k of ['ca', 'cert', 'key'] as const) {
    const file = config.uplink?.[k];
    if (file === undefined) continue;
    try {
      if (!statSync(file).isFile()) errors.push(`uplink.${k}: ${file} is not a file`);
      else pem[k] = readFileSync(file);
    } catch (err) {
      errors.push(`uplink.${k}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
  return errors.length > 0 ? errors : tlsPemProblems(pem, config.uplink ?? {});
}

export type TlsPem = Partial<Record<'ca' | 'cert' | 'key', Buffer>>;

/** What is wrong with TLS file contents (each message names the field and the file), or nothing. */
export function tlsPemProblems(pem: TlsPem, files: Partial<Record<'ca' | 'cert' | 'key', string>>): string[] {
  const errors: string[] = [];
  const certs = (buf: Buffer): number => {
    let n = 0;
    for (const block of buf.toString('latin1').match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []) {
      new X509Certificate(block); // throws on a damaged one
      n++;
    }
    return n;
  };
  const check = (k: 'ca' | 'cert' | 'key', what: string, ok: (buf: Buffer) => boolean) => {
    const buf = pem[k];
    if (buf === undefined) return;
    let why = `no ${what} in it`;
    try {
      if (ok(buf)) return;
    } catch (err) {
      why = `not a usable ${what} (${(err as Error).message})`;
    }
    errors.push(`uplink.${k}: ${files[k]}: ${why}`);
  };
  check('ca', 'PEM certificate', (buf) => certs(buf) > 0);
  check('cert', 'PEM certificate', (buf) => certs(buf) > 0);
  check('key', 'PEM private key', (buf) => createPrivateKey(buf) !== undefined);
  if (errors.length === 0 && pem.cert !== undefined && pem.key !== undefined) {
    try {
      createSecureContext({ cert: pem.cert, key: pem.key });
    } catch (err) {
      errors.push(`uplink.key: ${files.key} does not go with uplink.cert ${files.cert} (${(err as Error).message})`);
    }
  }
  return errors;
}

/**
 * Validate config text. `baseDir` (default: the working directory) anchors
 * relative paths; `warnings`, when given, receives what is valid but unwise
 * (a secret written in the file instead of `env:NAME`). `storageOnly`: the
 * caller reads only the data dir and names (`edgeward outbox stats`), so an
 * `env:NAME` whose variable is not set is no error; the field keeps its
 * `env:NAME` text.
 */
export function parseConfig(
  yamlText: string,
  env: NodeJS.ProcessEnv = process.env,
  opts: { baseDir?: string; warnings?: string[]; storageOnly?: boolean } = {},
): SiteConfig {
  const baseDir = opts.baseDir ?? process.cwd();
  const doc = parseDocument(yamlText, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    fail(doc.errors.map((e) => `yaml: ${e.message.split('\n')[0]}`));
  }
  let raw: unknown;
  try {
    // Alias problems (an undefined *alias, an alias bomb) only surface here, not in doc.errors.
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    fail([`yaml: ${(err as Error).message.split('\n')[0]}`]);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    fail(['config must be a YAML mapping (site, edge, dataDir, …)']);
  }

  if (opts.warnings) opts.warnings.push(...literalSecrets(raw as Record<string, unknown>));

  const errors: string[] = [];
  const unresolved = new Set<string>();
  const envErrors: string[] = [];
  const resolved = resolveEnv(raw, '', env, envErrors, unresolved);
  // With storageOnly only the data dir is read: it must resolve, the rest may stay env:NAME.
  errors.push(...(opts.storageOnly ? envErrors.filter((e) => e.startsWith('dataDir:')) : envErrors));
  if (!validate(resolved)) {
    // A field whose variable is missing already has its error; its `env:` text would only add noise.
    let schemaErrors = (validate.errors ?? []).filter((e) => !unresolved.has(dottedPath(e.instancePath)));
    // With storageOnly, only what names the store counts: a short site key or a bad token in the
    // environment of a stopped box must not keep `outbox stats` from reading its store.
    if (opts.storageOnly) schemaErrors = schemaErrors.filter(namesTheStore);
    errors.push(...schemaErrors.map(formatAjvError));
  }
  // Cross-field rules run even on a config with schema errors, so one pass shows everything.
  if (!opts.storageOnly) crossFieldRules(resolved as Partial<SiteConfig>, errors, unresolved);
  if (errors.length > 0) fail(dedupe(errors));
  const config = resolved as SiteConfig;

  config.dataDir = resolve(baseDir, config.dataDir);
  if (config.nodeRed.flowFile !== undefined) config.nodeRed.flowFile = resolve(baseDir, config.nodeRed.flowFile);
  if (config.uplink) {
    for (const k of ['ca', 'cert', 'key'] as const) {
      const v = config.uplink[k];
      if (v !== undefined) config.uplink[k] = resolve(baseDir, v);
    }
  }
  return config;
}

/** True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  return isIPv4(h) && h.startsWith('127.');
}

/** A short, secret-free summary for logs and `edgeward check`. */
export function describeConfig(c: SiteConfig): string {
  const up = c.uplink ? `uplink ${urlWithoutUserinfo(c.uplink.url, '[redacted]@')} (ack ${c.uplink.ack})` : 'no uplink (events stay local)';
  return `${c.site}/${c.edge}: http ${c.http.host}:${c.http.port}${c.http.token ? ' (token)' : ''}, ${up}, dataDir ${c.dataDir}`;
}

/** Secrets written in the file itself: valid, but they end up in backups, tickets and git. */
function literalSecrets(raw: Record<string, unknown>): string[] {
  const at = (obj: unknown, key: string): unknown =>
    obj !== null && typeof obj === 'object' && !Array.isArray(obj) ? (obj as Record<string, unknown>)[key] : undefined;
  const out: string[] = [];
  const secrets: Array<[string, unknown]> = [
    ['http.token', at(raw.http, 'token')],
    ['uplink.password', at(raw.uplink, 'password')],
    ['privacy.siteKey', at(raw.privacy, 'siteKey')],
  ];
  for (const [path, v] of secrets) {
    if (typeof v === 'string' && !ENV_RE.test(v)) out.push(`${path}: a secret written in the file; prefer env:NAME (the value then stays out of the file)`);
  }
  const url = at(raw.uplink, 'url');
  if (typeof url === 'string' && /^[a-z]+:\/\/[^/@]*:[^/@]*@/i.test(url)) {
    out.push('uplink.url: a password in the URL; use uplink.username and uplink.password: env:NAME');
  }
  return out;
}

function fail(all: string[]): never {
  const errors = dedupe(all);
  const head = errors.length === 1 ? errors[0] : `${errors.length} errors: ${errors.join('; ')}`;
  throw new EdgewardError('EDGE_CONFIG_INVALID', `invalid site config: ${head}`, { details: { errors } });
}

function dedupe(list: string[]): string[] {
  return [...new Set(list)];
}

function joinPath(base: string, key: string | number): string {
  if (typeof key === 'number') return `${base}[${key}]`;
  return base === '' ? key : `${base}.${key}`;
}

/** Replace every `env:NAME` string (any field, any depth) by the variable's value. */
function resolveEnv(
  value: unknown,
  path: string,
  env: NodeJS.ProcessEnv,
  errors: string[],
  unresolved: Set<string>,
): unknown {
  if (typeof value === 'string') {
    const m = ENV_RE.exec(value);
    if (!m) return value;
    const name = m[1];
    if (!ENV_NAME_RE.test(name)) {
      errors.push(`${path}: "env:${name}" is not a valid environment variable reference`);
      unresolved.add(path);
      return value;
    }
    const v = env[name];
    if (v === undefined || v === '') {
      errors.push(`${path}: environment variable ${name} is not set`);
      unresolved.add(path);
      return value;
    }
    return v;
  }
  if (Array.isArray(value)) return value.map((v, i) => resolveEnv(v, joinPath(path, i), env, errors, unresolved));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = resolveEnv(v, joinPath(path, k), env, errors, unresolved);
    return out;
  }
  return value;
}

/** `/uplink/batch/maxEvents` → `uplink.batch.maxEvents`, `/commands/publicKeys/0` → `commands.publicKeys[0]`. */
function dottedPath(instancePath: string): string {
  let out = '';
  for (const seg of instancePath.split('/').slice(1)) {
    const key = seg.replaceAll('~1', '/').replaceAll('~0', '~');
    out = /^\d+$/.test(key) ? joinPath(out, Number(key)) : joinPath(out, key);
  }
  return out;
}

function formatAjvError(e: ErrorObject): string {
  const at = dottedPath(e.instancePath);
  const p = e.params as Record<string, unknown>;
  const name = (s: string) => (at === '' ? s : joinPath(at, s));
  switch (e.keyword) {
    case 'required':
      return `${name(String(p.missingProperty))} is required`;
    case 'additionalProperties':
      return `${name(String(p.additionalProperty))} is not a known setting (typo?)`;
    case 'pattern':
      if (at === 'uplink.url') return 'uplink.url must be an mqtt:// or mqtts:// URL';
      if (at === 'nodeRed.adminAuth.passwordHash') return `${at} must be a bcrypt hash ($2a$/$2b$/$2y$…)`;
      return `${at} must match pattern ${String(p.pattern)}`;
    case 'enum':
      return `${at} must be one of ${(p.allowedValues as unknown[]).join(', ')}`;
    case 'type':
      // `edge: 07` reads as the number 7 in YAML: say how to keep it as written.
      return `${at || 'config'} must be ${String(p.type)}${p.type === 'string' ? ' (quote it if YAML read it as a number or true/false: "07")' : ''}`;
    default:
      return `${at || 'config'} ${e.message ?? 'is invalid'}`;
  }
}

/** A schema error about what `outbox stats` reads: the data dir and the names the store is kept under. */
function namesTheStore(e: ErrorObject): boolean {
  const STORE = ['dataDir', 'site', 'edge', 'outbox'];
  const path = dottedPath(e.instancePath);
  if (path === '') {
    const missing = (e.params as { missingProperty?: string }).missingProperty;
    return missing === undefined || STORE.includes(missing);
  }
  return STORE.some((k) => path === k || path.startsWith(`${k}.`));
}

/** Rules across fields. Written defensively: it also runs on configs that failed the schema. */
function crossFieldRules(c: Partial<SiteConfig>, errors: string[], unresolved: ReadonlySet<string>): void {
  // A host whose variable is missing has its own error already; judged as `env:NAME` it would add a wrong one.
  if (!unresolved.has('http.host')) {
    const host = typeof c.http?.host === 'string' ? c.http.host : '127.0.0.1';
    const loopback = isLoopbackHost(host);
    if (!loopback && c.http?.token === undefined) {
      errors.push(`http.token is required when http.host (${host}) is not a loopback address`);
    }
    if (c.nodeRed?.editor === true && c.nodeRed.adminAuth === undefined && !loopback) {
      errors.push('nodeRed.adminAuth is required when nodeRed.editor is true and http.host is not a loopback address');
    }
  }
  // A token says local clients are not all trusted: the editor, which deploys code, must not be the way around it.
  if (c.nodeRed?.editor === true && c.nodeRed.adminAuth === undefined && c.http?.token !== undefined) {
    errors.push('nodeRed.adminAuth is required when nodeRed.editor is true and http.token is set (the editor would need no login while the API needs the token)');
  }
  const keys = c.commands?.publicKeys;
  if (Array.isArray(keys)) {
    keys.forEach((k: unknown, i) => {
      if (typeof k !== 'string') return; // the schema reports the type
      const bytes = /^[A-Za-z0-9+/]+={0,2}$/.test(k) ? Buffer.from(k, 'base64') : Buffer.alloc(0);
      if (bytes.length !== 32 || bytes.toString('base64') !== k) {
        errors.push(`commands.publicKeys[${i}] must be the base64 of a 32-byte Ed25519 public key`);
      }
    });
  }
  const up = c.uplink;
  if (up && typeof up === 'object' && typeof up.url === 'string') {
    if ((up.cert === undefined) !== (up.key === undefined)) {
      errors.push('uplink.cert and uplink.key must be given together (mutual TLS)');
    }
    if (!up.url.startsWith('mqtts://') && (up.ca !== undefined || up.cert !== undefined || up.key !== undefined)) {
      errors.push('uplink.ca/cert/key need an mqtts:// uplink.url');
    }
    if (/^mqtts?:\/\//.test(up.url)) {
      try {
        if (new URL(up.url).hostname === '') errors.push('uplink.url has no host');
      } catch {
        errors.push('uplink.url is not a valid URL');
      }
    }
  }
}
