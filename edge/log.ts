import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * Paths pino censors in every record. Secrets (tokens, passwords, keys) and
 * raw card numbers must never reach a log line; drivers log pseudonyms only,
 * and these paths are a second net for anything that slips through.
 */
export const REDACT_PATHS = [
  'password',
  '*.password',
  'token',
  '*.token',
  'siteKey',
  '*.siteKey',
  'secret',
  '*.secret',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
  'rawCard',
  '*.rawCard',
  'card',
  '*.card',
  'data.card',
  '*.data.card',
  'passwordHash',
  '*.passwordHash',
  'uplink.password',
  'privacy.siteKey',
  'http.token',
];

/** The key names of REDACT_PATHS: censored at any depth where a path cannot reach (text built from objects). */
export const REDACTED_KEYS: ReadonlySet<string> = new Set(REDACT_PATHS.map((p) => p.split('.').pop()!));

export function createLogger(opts: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    },
    opts.destination,
  );
}

/**
 * A URL without its userinfo (`mqtt://user:password@host` → `mqtt://host`),
 * for logs and `edgeward check`. A URL that parses is split where the WHATWG
 * rules split it (userinfo to the last @ before the first /), so
 * `wss://u:pw@central/mqtt?client=gate@north` keeps its host; one that does
 * not (a raw `/` in the password) goes through `withoutUserinfo`. `mark`
 * stands in for what was removed.
 */
export function urlWithoutUserinfo(url: string, mark = ''): string {
  try {
    const u = new URL(url);
    if (!u.username && !u.password) return url.trim();
    return `${u.protocol}//${mark}${u.host}${u.pathname}${u.search}${u.hash}`;
  } catch {
    return withoutUserinfo(url, mark);
  }
}

/**
 * `scheme://user:password@host…` without its userinfo, as written (no
 * parsing, no normalising: for logs and for the URIs cameras hand out). The
 * userinfo of `user:password@` runs to the last `@` that a host, a port and a
 * path, query or end follow, so a raw `@`, `/`, `?` or `#` in a password is
 * taken along, not half printed; `host:port/…?x=a@b` (a port, then a path
 * with an @ in it) is left alone.
 */
export function withoutUserinfo(url: string, mark = ''): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^:/?#@]*:.*)@((?:\[[0-9a-f:.]+\]|[a-z0-9._~%-]+)(?::\d{1,5})?(?:[/?#]|$))/is.exec(url);
  if (m && !/^[^:]*:\d{1,5}(?:[/?#]|$)/.test(m[2])) return `${m[1]}${mark}${url.slice(m[0].length - m[3].length)}`;
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*@/i, `$1${mark}`);
}

/** A logger that writes nothing: for unit tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
