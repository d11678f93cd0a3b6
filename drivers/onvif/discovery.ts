import { randomUUID } from 'node:crypto';
import dgram from 'node:dgram';
import { EdgewardError, isEdgewardError } from '../../edge/errors.js';
import { OnvifClient } from './client.js';
import { child, children, text } from './xml.js';
import { parseUntrustedXml } from './xml.js';

export const WS_DISCOVERY_GROUP = '239.255.255.250';
export const WS_DISCOVERY_PORT = 3702;

/**
 * ProbeMatches taken from one datagram. A camera answers with one; in review
 * a single spoofed datagram carried 250, and each became a camera to connect
 * to at once. The rest of an over-full datagram is reported and dropped.
 */
export const MAX_MATCHES_PER_REPLY = 16;
/** Default cap on the cameras one discovery returns (`maxCameras`). */
export const DEFAULT_MAX_CAMERAS = 256;
/** Cameras described (connected to) at the same time by discoverAndDescribe. */
const DESCRIBE_CONCURRENCY = 8;

/** A camera that answered a WS-Discovery probe. */
export interface DiscoveredCamera {
  /** Endpoint reference (stable device id, `urn:uuid:…`). */
  urn: string;
  /** Device service URLs the camera advertises. */
  xaddrs: string[];
  /** Address the answer came from. */
  address: string;
  scopes: string[];
  /** From the `onvif://www.onvif.org/name/…` and `/hardware/…` scopes, when present. */
  name?: string;
  hardware?: string;
  /** How it was found. */
  via: 'multicast' | 'unicast';
}

export interface DiscoverOptions {
  /** How long to listen for answers, ms (default 3000). */
  timeoutMs?: number;
  /** Send the multicast probe (default true). */
  multicast?: boolean;
  /**
   * Unicast probe targets, `host` or `host:port` (port default 3702), for
   * networks where multicast is filtered.
   */
  probe?: string[];
  /** Local address to bind (default all). */
  bindAddress?: string;
  /** Resolve as soon as every unicast target answered (only when multicast is off). */
  earlyExit?: boolean;
  /** Most cameras returned (default 256); further answers are reported to `onBadReply` and ignored. */
  maxCameras?: number;
  /** Called for each malformed datagram (it is otherwise ignored). */
  onBadReply?: (err: EdgewardError, from: string) => void;
}

/** The WS-Discovery Probe for NetworkVideoTransmitters. */
export function probeMessage(messageId: string): string {
  return (
    '<?xml version="1.0" encoding="UTF-8"?>' +
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" ' +
    'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl">' +
    `<s:Header><a:MessageID>${messageId}</a:MessageID><a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>` +
    '<a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action></s:Header>' +
    '<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body></s:Envelope>'
  );
}

function parseTarget(t: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(t.trim());
  if (!m) throw new EdgewardError('EDGE_CONFIG_INVALID', `bad probe target "${t}"`);
  const port = m[2] === undefined ? WS_DISCOVERY_PORT : Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new EdgewardError('EDGE_CONFIG_INVALID', `bad port in probe target "${t}"`);
  return { host: m[1] as string, port };
}

/** An XAddr as an http(s) URL, or undefined when it is not one (it comes from an untrusted datagram). */
function deviceUrl(xaddr: string): URL | undefined {
  if (!URL.canParse(xaddr)) return undefined;
  const u = new URL(xaddr);
  return u.protocol === 'http:' || u.protocol === 'https:' ? u : undefined;
}

function scopeValue(scopes: string[], kind: string): string | undefined {
  const prefix = `onvif://www.onvif.org/${kind}/`;
  const s = scopes.find((x) => x.startsWith(prefix));
  if (s === undefined) return undefined;
  try {
    return decodeURIComponent(s.slice(prefix.length));
  } catch {
    return s.slice(prefix.length);
  }
}

/**
 * WS-Discovery: one UDP socket sends the multicast probe and a unicast probe
 * to each configured target, then collects ProbeMatches until the timeout.
 * Answers are untrusted XML (size-capped, no DTD, parsed by our parser only,
 * never by onvif's) and must carry a RelatesTo equal to our MessageID; at
 * most {@link MAX_MATCHES_PER_REPLY} matches per datagram and `maxCameras`
 * in all are kept; garbage is reported to `onBadReply` and ignored.
 * Note: like onvif's Discovery.probe, a multicast probe that cannot leave
 * the host finds nothing rather than failing: use `probe` targets there.
 */
export function discoverOnvif(opts: DiscoverOptions = {}): Promise<DiscoveredCamera[]> {
  const timeoutMs = opts.timeoutMs ?? 3000;
  const maxCameras = opts.maxCameras ?? DEFAULT_MAX_CAMERAS;
  const multicast = opts.multicast ?? true;
  const targets = (opts.probe ?? []).map(parseTarget);
  const messageId = `urn:uuid:${randomUUID()}`;
  const msg = Buffer.from(probeMessage(messageId));
  const found = new Map<string, DiscoveredCamera>();
  const answered = new Set<string>();

  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      sock.close();
      if (err) reject(err);
      else resolve([...found.values()]);
    };
    sock.on('error', (err) => finish(new EdgewardError('EDGE_ONVIF_DISCOVERY', `discovery socket error: ${err.message}`, { cause: err })));
    sock.on('message', (data, rinfo) => {
      const from = `${rinfo.address}:${rinfo.port}`;
      try {
        const doc = parseUntrustedXml(data, { maxBytes: 64 * 1024, what: `WS-Discovery reply from ${from}` });
        const env = doc.Envelope;
        const relates = text(child(env, 'Header'), 'RelatesTo');
        // WS-Discovery requires RelatesTo in ProbeMatches; without it any host could push cameras into our list unasked.
        if (relates === undefined) throw new EdgewardError('EDGE_ONVIF_BAD_XML', `WS-Discovery reply from ${from} has no RelatesTo (ignored)`);
        if (relates.trim() !== messageId) return; // an answer to someone else's probe
        const matches = children(child(child(env, 'Body'), 'ProbeMatches'), 'ProbeMatch');
        if (matches.length === 0) throw new EdgewardError('EDGE_ONVIF_BAD_XML', `WS-Discovery reply from ${from} has no ProbeMatch`);
        if (matches.length > MAX_MATCHES_PER_REPLY) {
          const err = `WS-Discovery reply from ${from} has ${matches.length} ProbeMatches: only the first ${MAX_MATCHES_PER_REPLY} kept`;
          opts.onBadReply?.(new EdgewardError('EDGE_ONVIF_BAD_XML', err), from);
        }
        for (const m of matches.slice(0, MAX_MATCHES_PER_REPLY)) {
          const urn = text(child(m, 'EndpointReference'), 'Address')?.trim();
          const advertised = (text(m, 'XAddrs') ?? '').split(/\s+/).filter(Boolean);
          // Any LAN host can answer: keep only XAddrs that really parse as http(s) URLs, so one bad reply cannot break the others later.
          const xaddrs = advertised.filter((x) => deviceUrl(x) !== undefined);
          if (xaddrs.length < advertised.length) {
            opts.onBadReply?.(new EdgewardError('EDGE_ONVIF_BAD_XML', `WS-Discovery reply from ${from} has unusable XAddrs (dropped)`), from);
          }
          if (!urn || xaddrs.length === 0) continue;
          const scopes = (text(m, 'Scopes') ?? '').split(/\s+/).filter(Boolean);
          const via = targets.some((t) => t.host === rinfo.address && t.port === rinfo.port) ? 'unicast' : 'multicast';
          answered.add(from);
          if (!found.has(urn) && found.size >= maxCameras) {
            opts.onBadReply?.(new EdgewardError('EDGE_ONVIF_DISCOVERY', `more than ${maxCameras} cameras answered: ${urn} from ${from} ignored`), from);
            continue;
          }
          if (!found.has(urn)) {
            found.set(urn, { urn, xaddrs, address: rinfo.address, scopes, name: scopeValue(scopes, 'name'), hardware: scopeValue(scopes, 'hardware'), via });
          }
        }
        if (opts.earlyExit && !multicast && targets.every((t) => answered.has(`${t.host}:${t.port}`))) finish();
      } catch (err) {
        opts.onBadReply?.(err as EdgewardError, from);
      }
    });
    sock.bind(0, opts.bindAddress, () => {
      timer = setTimeout(() => finish(), timeoutMs);
      const sendErr = (err: Error | null) => {
        // A multicast probe that cannot be routed is not fatal: unicast targets may still answer.
        if (err) opts.onBadReply?.(new EdgewardError('EDGE_ONVIF_DISCOVERY', `probe not sent: ${err.message}`, { cause: err }), '');
      };
      if (multicast) sock.send(msg, WS_DISCOVERY_PORT, WS_DISCOVERY_GROUP, sendErr);
      for (const t of targets) sock.send(msg, t.port, t.host, sendErr);
    });
  });
}

/** One discovered camera with what it told us (or why it did not). */
export interface DescribedCamera extends DiscoveredCamera {
  host: string;
  port: number;
  manufacturer?: string;
  model?: string;
  firmware?: string;
  serial?: string;
  streamUri?: string;
  snapshotUri?: string;
  error?: string;
}

/**
 * Probe, then ask each camera for device information and its stream URI,
 * with credentials, at most 8 at a time. Only an XAddr on the address the
 * answer came from is contacted: the datagram is unauthenticated, and an
 * XAddr naming another host would make us send the UsernameToken (and a
 * connection) wherever any LAN host says. Such a camera is listed with
 * `error` EDGE_ONVIF_NOT_CONTACTED and its advertised address, never contacted.
 */
export async function discoverAndDescribe(opts: {
  timeoutMs: number;
  probe?: string[];
  multicast?: boolean;
  username?: string;
  password?: string;
}): Promise<DescribedCamera[]> {
  const found = await discoverOnvif({ timeoutMs: opts.timeoutMs, probe: opts.probe, multicast: opts.multicast });
  const describe = async (cam: DiscoveredCamera): Promise<DescribedCamera> => {
    // An unparsable entry is skipped, never thrown (it would reject every camera).
    const urls = cam.xaddrs.map(deviceUrl).filter((u): u is URL => u !== undefined);
    const url = urls.find((u) => bareHost(u.hostname) === cam.address);
    if (!url) {
      const claimed = urls[0];
      if (!claimed) return { ...cam, host: cam.address, port: 80, model: cam.hardware, error: 'EDGE_ONVIF_BAD_XML: no usable XAddr' };
      const error =
        `EDGE_ONVIF_NOT_CONTACTED: its device address is on ${claimed.hostname}, not on ${cam.address} that answered; ` +
        'not contacted, no credentials sent (add it by its address if it is yours)';
      return { ...cam, host: bareHost(claimed.hostname), port: Number(claimed.port || 80), model: cam.hardware, error };
    }
    const host = bareHost(url.hostname);
    const port = Number(url.port || 80);
    const client = new OnvifClient({ host, port, path: url.pathname, username: opts.username, password: opts.password, timeoutMs: 5000 });
    try {
      const info = await client.connect();
      return { ...cam, host, port, ...info };
    } catch (err) {
      return { ...cam, host, port, model: cam.hardware, error: isEdgewardError(err) ? `${err.code}: ${err.message}` : String(err) };
    } finally {
      client.close();
    }
  };
  const out: DescribedCamera[] = new Array(found.length);
  let next = 0;
  const worker = async () => {
    while (next < found.length) {
      const i = next++;
      out[i] = await describe(found[i] as DiscoveredCamera);
    }
  };
  await Promise.all(Array.from({ length: Math.min(DESCRIBE_CONCURRENCY, found.length) }, worker));
  return out;
}

/** A URL hostname without IPv6 brackets, comparable with a datagram's source address. */
function bareHost(hostname: string): string {
  return hostname.replace(/^\[|\]$/g, '');
}

