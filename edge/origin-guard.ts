import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type express from 'express';
import { isLoopbackHost } from './config.js';

/**
 * Browsers are the one client of this box that another site can drive. A page
 * the technician opens elsewhere could otherwise POST to the editor's admin
 * API on 127.0.0.1 (measured: a cross-site deploy of an exec node ran as the
 * runtime's user; a cross-site POST to an inject node unlocked a door in the
 * demo), or, through DNS rebinding, read /api/v1/events under its own name.
 *
 * Refused, on every route and websocket of the listener:
 * - a request whose `Origin` is not this box as the request names it (`Host`);
 * - a request a browser marks cross-site (`Sec-Fetch-Site` other than
 *   `same-origin` or `none`);
 * - on a loopback listener, a `Host` that is not a loopback name: a rebound
 *   DNS name pointing at 127.0.0.1.
 * Clients that are not browsers (curl, Prometheus, scripts) send neither
 * header and are unaffected; the editor's own requests are same-origin.
 */
export interface OriginPolicy {
  /** The listener is bound to a loopback address: Host must name one. */
  loopbackOnly: boolean;
  /**
   * The editor's page (`/` when the editor is on): a browser may open it from
   * a link on another site (a ticket, a wiki, a dashboard). Only that top-level
   * page load: it changes nothing, and the editor's own requests that follow
   * are same-origin.
   */
  editorPage?: string;
}

/** Why `req` is refused, or null when it may go on. */
export function refusal(req: IncomingMessage, policy: OriginPolicy): string | null {
  const host = req.headers.host ?? '';
  if (policy.loopbackOnly && !isLoopbackHost(hostOf(host))) {
    return `Host "${host.slice(0, 100)}" is not a loopback name on a loopback listener`;
  }
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none' && !opensEditor(req, policy))
    return `a ${site} request from a browser`;
  const origin = req.headers.origin;
  if (origin !== undefined) {
    let from: string | null = null;
    try {
      from = new URL(origin).host;
    } catch {
      // "null" (a sandboxed page, a file) or garbage
    }
    if (from === null || from.toLowerCase() !== host.toLowerCase())
      return `Origin "${origin.slice(0, 100)}" is not this box`;
  }
  return null;
}

/** A top-level load of the editor's page (measured: a link to it from another site, and every reload after, got the 403). */
function opensEditor(req: IncomingMessage, policy: OriginPolicy): boolean {
  return (
    policy.editorPage !== undefined &&
    (req.method === 'GET' || req.method === 'HEAD') &&
    req.headers['sec-fetch-mode'] === 'navigate' &&
    req.headers['sec-fetch-dest'] === 'document' &&
    (req.url ?? '').split('?')[0] === policy.editorPage
  );
}

/** `host[:port]` → host, without IPv6 brackets. */
function hostOf(host: string): string {
  const m = /^\[([^\]]+)\](?::\d+)?$/.exec(host);
  if (m) return m[1];
  const i = host.lastIndexOf(':');
  return i > 0 && host.indexOf(':') === i ? host.slice(0, i) : host;
}

/** The guard for every HTTP route: 403 in JSON, before anything else runs. */
export function originGuard(policy: OriginPolicy): express.RequestHandler {
  return (req, res, next) => {
    const why = refusal(req, policy);
    if (why === null) {
      next();
      return;
    }
    res.status(403).json({ error: `refused: ${why}` });
  };
}

/**
 * The same guard for websocket upgrades, which never reach Express (Node-RED's
 * editor comms and the flows' `websocket in/out` nodes), plus the bearer
 * token for the flows' websockets when one is configured, as `http in` routes
 * need it (`adminPath` is the editor's own comms, which adminAuth guards).
 * Installed on the server before Node-RED adds its upgrade handlers.
 */
export function guardUpgrades(
  server: Server,
  policy: OriginPolicy,
  opts: {
    tokenOk?: (req: IncomingMessage) => boolean;
    adminPath?: string;
    onRefused?: (why: string, url: string) => void;
  },
): void {
  const emit = server.emit.bind(server);
  server.emit = ((event: string, ...args: unknown[]) => {
    if (event === 'upgrade') {
      const req = args[0] as IncomingMessage;
      const socket = args[1] as Duplex;
      const path = (req.url ?? '').split('?')[0];
      let why = refusal(req, policy);
      if (why === null && opts.tokenOk && path !== opts.adminPath && !opts.tokenOk(req))
        why = 'no bearer token';
      if (why !== null) {
        opts.onRefused?.(why, path);
        socket.end(
          `HTTP/1.1 ${why === 'no bearer token' ? '401 Unauthorized' : '403 Forbidden'}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`,
        );
        socket.destroy();
        return true;
      }
    }
    return emit(event, ...args);
  }) as typeof server.emit;
}
