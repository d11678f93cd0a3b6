import http from 'node:http';
import net from 'node:net';
import { Cam } from 'onvif';
import { EdgewardError } from '../../edge/errors.js';
import { attr, child, children, DEFAULT_MAX_XML_BYTES, parseUntrustedXml, soapBody, text, type XmlNode, xmlEscape } from './xml.js';

/**
 * An HTTP agent dedicated to one camera.
 *
 * Why: onvif 0.8.3 sends subscription requests (PullMessages, Renew,
 * Unsubscribe) with `options.url` and no agent, so they ride Node 20's
 * global keep-alive agent, whose 5 s socket timeout kills a long-held
 * PullMessages ("socket hang up"). Our Cam subclass routes every request
 * through this agent: no keep-alive (one socket per request, so a held pull
 * never shares or times out a pooled socket) and a byte cap per reply
 * (a socket carries exactly one reply), so a camera cannot flood us.
 */
export class CappedAgent extends http.Agent {
  private readonly maxBytes: number;

  constructor(maxBytes: number) {
    super({ keepAlive: false });
    this.maxBytes = maxBytes;
  }

  override createConnection(options: net.NetConnectOpts): net.Socket {
    const socket = net.createConnection(options);
    let seen = 0;
    socket.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > this.maxBytes && !socket.destroyed) {
        socket.destroy(
          new EdgewardError('EDGE_ONVIF_BAD_XML', `camera reply larger than ${this.maxBytes} bytes (refused)`, { details: { maxBytes: this.maxBytes } }),
        );
      }
    });
    return socket;
  }
}

/** One in-flight operation: its library callbacks report faults to it, not to the process. */
interface Op {
  fail(err: Error): void;
}

type Callback = (err: Error | null, data: unknown, xml?: string, status?: number) => void;
type CamRequest = { service?: string; action?: string; body: string; url?: unknown; replyTimeout?: number; headers?: Record<string, string> };

/** The slice of onvif's Cam the client uses (the package types omit the private request method). */
interface CamLike {
  hostname: string;
  port: number;
  agent: unknown;
  timeShift?: number;
  profiles?: Array<Record<string, any>>;
  defaultProfile?: Record<string, any>;
  uri?: Record<string, { href?: string; path?: string } | undefined>;
  connect(cb: (err: Error | null) => void): void;
  getDeviceInformation(cb: (err: Error | null, info: Record<string, unknown>) => void): void;
  getStreamUri(opts: Record<string, string>, cb: (err: Error | null, uri: { uri?: string }) => void): void;
  getSnapshotUri(opts: Record<string, string>, cb: (err: Error | null, uri: { uri?: string }) => void): void;
  _request(options: CamRequest, callback: Callback): void;
  _envelopeHeader(openHeader?: boolean): string;
  _envelopeFooter(): string;
}

const CamBase = Cam as unknown as new (opts: Record<string, unknown>) => CamLike;

/**
 * onvif's Cam with every request guarded: replies are checked with our
 * hardened parser before the library sees them (size, DTD, well-formedness,
 * HTTP status), and anything the library throws inside its own callbacks
 * (it does, on unexpected shapes) is caught here and reported to the
 * operation that made the request instead of reaching the process.
 */
class GuardedCam extends CamBase {
  /** Set around each client call and each callback, so nested library requests inherit it. */
  currentOp: Op | undefined = undefined;
  maxXmlBytes = DEFAULT_MAX_XML_BYTES;

  override _request(options: CamRequest, callback: Callback): void {
    const op = this.currentOp;
    let opts = options;
    if (options.url && typeof options.url === 'object') {
      // Subscription requests carry a parsed URL and no agent: give them ours (the keep-alive trap).
      const u = options.url as { protocol?: string; hostname?: string; port?: string | number; path?: string; pathname?: string };
      opts = { ...options, url: { protocol: u.protocol ?? 'http:', hostname: u.hostname, port: u.port, path: u.path ?? u.pathname, agent: this.agent } };
    }
    const guarded: Callback = (err, data, xml, status) => {
      const checked = checkReply(err, xml, status, this.maxXmlBytes);
      const prev = this.currentOp;
      this.currentOp = op;
      try {
        callback(checked, checked ? null : data, xml, status);
      } catch (thrown) {
        const e = new EdgewardError('EDGE_ONVIF_BAD_REPLY', `camera reply not understood: ${(thrown as Error).message}`, { cause: thrown });
        if (op) op.fail(e);
      } finally {
        this.currentOp = prev;
      }
    };
    try {
      super._request(opts, guarded);
    } catch (thrown) {
      if (op) op.fail(translateError(thrown));
      else throw thrown;
    }
  }
}

/** Map a reply to a clear error (or null when it is a good SOAP reply). */
function checkReply(err: Error | null, xml: string | undefined, status: number | undefined, maxBytes: number): Error | null {
  if (err instanceof EdgewardError) return err;
  if (xml !== undefined && xml !== '') {
    try {
      soapBody(parseUntrustedXml(xml, { maxBytes, what: 'camera reply' }));
    } catch (bad) {
      return bad as EdgewardError;
    }
  }
  if (err) return translateError(err, status, xml);
  if (status !== undefined && status >= 400) return translateError(new Error(`HTTP ${status}`), status, xml);
  return null;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ECONNABORTED', 'EAI_AGAIN', 'ENOTFOUND']);

/** Translate an onvif/Node error into an EdgewardError with a stable code. */
export function translateError(err: unknown, status?: number, xml?: string): EdgewardError {
  if (err instanceof EdgewardError) return err;
  const e = err as NodeJS.ErrnoException;
  const msg = e?.message ?? String(err);
  const details: Record<string, unknown> = {};
  if (status !== undefined) details.status = status;
  if ((e?.code && NETWORK_CODES.has(e.code)) || /socket hang up|Network timeout/i.test(msg)) {
    return new EdgewardError('EDGE_ONVIF_UNREACHABLE', `camera unreachable: ${msg}`, { cause: err, details: { ...details, network: true } });
  }
  if (status === 401 || /NotAuthorized|not authorized|Digest authentication/i.test(msg) || (xml !== undefined && /NotAuthorized/.test(xml))) {
    return new EdgewardError('EDGE_ONVIF_AUTH', `camera refused credentials: ${msg}`, { cause: err, details });
  }
  if (/Wrong ONVIF SOAP response/.test(msg)) return new EdgewardError('EDGE_ONVIF_BAD_XML', `camera reply is not SOAP: ${msg}`, { cause: err, details });
  if (/SOAP Fault/.test(msg) || (status !== undefined && status >= 400)) {
    return new EdgewardError('EDGE_ONVIF_FAULT', `camera fault: ${msg}`, { cause: err, details });
  }
  return new EdgewardError('EDGE_ONVIF_ERROR', `camera error: ${msg}`, { cause: err, details });
}

/** Connection settings for one camera. */
export interface OnvifClientOptions {
  host: string;
  /** HTTP port of the device service (default 80). */
  port?: number;
  /** Device service path (default /onvif/device_service). */
  path?: string;
  username?: string;
  password?: string;
  /** Per-request timeout in ms (default 10 000; onvif's own default of 120 s is far too long). */
  timeoutMs?: number;
  /** Largest reply accepted, bytes (default 1 MiB). */
  maxXmlBytes?: number;
}

/** A media profile, summarised for device.online. */
export interface ProfileSummary {
  token: string;
  name?: string;
  encoding?: string;
  width?: number;
  height?: number;
  fps?: number;
}

/** What device.online reports about a camera. */
export interface CameraInfo {
  manufacturer?: string;
  model?: string;
  firmware?: string;
  serial?: string;
  hardwareId?: string;
  profiles: ProfileSummary[];
  streamUri?: string;
  snapshotUri?: string;
}

/** A PullPoint subscription as granted by the camera. */
export interface PullPoint {
  address: string;
  /** Lifetime the camera granted, in seconds (termination − current time, so clock offsets cancel). */
  grantedS: number;
}

/** One notification, topic and simple items flattened. */
export interface Notification {
  topic: string;
  utcTime?: string;
  operation?: string;
  source: Record<string, string>;
  data: Record<string, string>;
}

/**
 * Promise API over onvif's Cam for one camera: connect and describe,
 * PullPoint create/pull/renew/unsubscribe. Every call has a deadline and
 * rejects with an EdgewardError (`EDGE_ONVIF_*`); none can crash the process.
 */
export class OnvifClient {
  private readonly opts: OnvifClientOptions;
  private cam?: GuardedCam;
  private agent?: CappedAgent;

  constructor(opts: OnvifClientOptions) {
    this.opts = opts;
  }

  private get timeoutMs(): number {
    return this.opts.timeoutMs ?? 10_000;
  }

  /** Connect (time sync, services, profiles) and read device information, stream and snapshot URIs. */
  async connect(): Promise<CameraInfo> {
    this.close();
    const maxBytes = this.opts.maxXmlBytes ?? DEFAULT_MAX_XML_BYTES;
    this.agent = new CappedAgent(maxBytes);
    const cam = new GuardedCam({
      hostname: this.opts.host,
      port: this.opts.port ?? 80,
      path: this.opts.path ?? '/onvif/device_service',
      username: this.opts.username,
      password: this.opts.password,
      timeout: this.timeoutMs,
      agent: this.agent,
      autoconnect: false,
    });
    cam.maxXmlBytes = maxBytes;
    this.cam = cam;
    // connect() chains four requests; give the whole chain one deadline.
    await this.call('connect', this.timeoutMs * 4, (done) => cam.connect((err) => done(err, undefined)));
    const info = await this.call<Record<string, unknown>>('GetDeviceInformation', this.timeoutMs, (done) =>
      cam.getDeviceInformation((err, data) => done(err, data)),
    );
    const profiles = (cam.profiles ?? []).map(summariseProfile).filter((p) => p.token !== '');
    const token = (cam.defaultProfile?.$?.token as string | undefined) ?? profiles[0]?.token;
    let streamUri: string | undefined;
    let snapshotUri: string | undefined;
    if (token !== undefined) {
      const s = await this.call<{ uri?: string }>('GetStreamUri', this.timeoutMs, (done) =>
        cam.getStreamUri({ protocol: 'RTSP', profileToken: token }, (err, uri) => done(err, uri)),
      );
      streamUri = typeof s?.uri === 'string' ? s.uri : undefined;
      // Not every camera has snapshots; a fault here is not a failed connect.
      snapshotUri = await this.call<{ uri?: string }>('GetSnapshotUri', this.timeoutMs, (done) =>
        cam.getSnapshotUri({ profileToken: token }, (err, uri) => done(err, uri)),
      ).then(
        (u) => (typeof u?.uri === 'string' ? u.uri : undefined),
        (err: EdgewardError) => {
          if (err.code === 'EDGE_ONVIF_UNREACHABLE') throw err;
          return undefined;
        },
      );
    }
    return {
      manufacturer: str(info?.manufacturer),
      model: str(info?.model),
      firmware: str(info?.firmwareVersion),
      serial: str(info?.serialNumber),
      hardwareId: str(info?.hardwareId),
      profiles,
      streamUri,
      snapshotUri,
    };
  }

  /** Create a PullPoint subscription asking for `lifetimeS` seconds. */
  async createPullPoint(lifetimeS: number): Promise<PullPoint> {
    const body = await this.soap(
      'CreatePullPointSubscription',
      { service: 'events', action: 'http://www.onvif.org/ver10/events/wsdl/EventPortType/CreatePullPointSubscriptionRequest' },
      `<CreatePullPointSubscription xmlns="http://www.onvif.org/ver10/events/wsdl"><InitialTerminationTime>PT${Math.round(lifetimeS)}S</InitialTerminationTime></CreatePullPointSubscription>`,
      this.timeoutMs,
    );
    const resp = child(body, 'CreatePullPointSubscriptionResponse');
    const address = text(child(resp, 'SubscriptionReference'), 'Address')?.trim();
    if (!address) throw new EdgewardError('EDGE_ONVIF_BAD_REPLY', 'CreatePullPointSubscription reply has no subscription address');
    let parsed: URL;
    try {
      parsed = new URL(address);
    } catch (cause) {
      throw new EdgewardError('EDGE_ONVIF_BAD_REPLY', `subscription address is not a URL: ${address.slice(0, 100)}`, { cause });
    }
    return { address: parsed.href, grantedS: grantedSeconds(resp, lifetimeS) };
  }

  /** Hold a PullMessages for up to `timeoutS` seconds; returns the notifications (possibly none). */
  async pull(pp: PullPoint, timeoutS: number, limit = 32): Promise<Notification[]> {
    const body = await this.soap(
      'PullMessages',
      { url: pp.address, action: 'http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesRequest' },
      `<PullMessages xmlns="http://www.onvif.org/ver10/events/wsdl"><Timeout>PT${Math.round(timeoutS)}S</Timeout><MessageLimit>${limit}</MessageLimit></PullMessages>`,
      timeoutS * 1000 + this.timeoutMs,
    );
    const resp = child(body, 'PullMessagesResponse');
    if (!resp && !(body && 'PullMessagesResponse' in body)) {
      throw new EdgewardError('EDGE_ONVIF_BAD_REPLY', 'PullMessages reply has no PullMessagesResponse');
    }
    return children(resp, 'NotificationMessage').map(parseNotification);
  }

  /** Renew the subscription for `lifetimeS` seconds; returns the lifetime granted. */
  async renew(pp: PullPoint, lifetimeS: number): Promise<number> {
    const body = await this.soap(
      'Renew',
      { url: pp.address, action: 'http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewRequest' },
      `<Renew xmlns="http://docs.oasis-open.org/wsn/b-2"><TerminationTime>PT${Math.round(lifetimeS)}S</TerminationTime></Renew>`,
      this.timeoutMs,
    );
    const resp = child(body, 'RenewResponse');
    if (!resp) throw new EdgewardError('EDGE_ONVIF_BAD_REPLY', 'Renew reply has no RenewResponse');
    return grantedSeconds(resp, lifetimeS);
  }

  /** Best-effort unsubscribe. */
  async unsubscribe(pp: PullPoint): Promise<void> {
    await this.soap(
      'Unsubscribe',
      { url: pp.address, action: 'http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeRequest' },
      '<Unsubscribe xmlns="http://docs.oasis-open.org/wsn/b-2"/>',
      this.timeoutMs,
    );
  }

  /** Drop the camera object and its agent (open sockets are destroyed). */
  close(): void {
    this.agent?.destroy();
    this.agent = undefined;
    this.cam = undefined;
  }

  private async soap(name: string, target: { service?: string; url?: string; action: string }, inner: string, deadlineMs: number): Promise<XmlNode> {
    const cam = this.cam;
    if (!cam) throw new EdgewardError('EDGE_ONVIF_NOT_CONNECTED', `${name}: camera not connected`);
    let to = '';
    let url: unknown;
    if (target.url !== undefined) {
      const u = new URL(target.url);
      url = { protocol: u.protocol, hostname: u.hostname, port: u.port || 80, path: `${u.pathname}${u.search}` };
      to = `<a:To>${xmlEscape(target.url)}</a:To>`;
    }
    const envelope = `${cam._envelopeHeader(true)}${to}</s:Header><s:Body>${inner}${cam._envelopeFooter()}`;
    const xml = await this.call<string>(name, deadlineMs, (done) =>
      cam._request(
        { service: target.service, url, action: target.action, body: envelope, replyTimeout: deadlineMs },
        (err, _data, rawXml) => done(err, rawXml ?? ''),
      ),
    );
    return soapBody(parseUntrustedXml(xml, { maxBytes: cam.maxXmlBytes, what: `${name} reply` }));
  }

  /**
   * Run one library call as a promise with a deadline. Faults thrown inside
   * the library's callbacks arrive through `op.fail` (see GuardedCam).
   */
  private call<T>(name: string, deadlineMs: number, run: (done: (err: Error | null, value: T) => void) => void): Promise<T> {
    const cam = this.cam;
    if (!cam) return Promise.reject(new EdgewardError('EDGE_ONVIF_NOT_CONNECTED', `${name}: camera not connected`));
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => finish(new EdgewardError('EDGE_ONVIF_TIMEOUT', `${name}: no reply within ${deadlineMs} ms`)), deadlineMs + 1000);
      const finish = (err: Error | null, value?: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(translateError(err));
        else resolve(value as T);
      };
      const op: Op = { fail: (err) => finish(err) };
      const prev = cam.currentOp;
      cam.currentOp = op;
      try {
        run((err, value) => finish(err, value));
      } catch (thrown) {
        finish(translateError(thrown));
      } finally {
        cam.currentOp = prev;
      }
    });
  }
}

function str(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  return typeof v === 'object' ? undefined : String(v);
}

function num(v: unknown): number | undefined {
  const n = typeof v === 'number' ? v : Number(v);
  return Number.isFinite(n) ? n : undefined;
}

function summariseProfile(p: Record<string, any>): ProfileSummary {
  const enc = p?.videoEncoderConfiguration;
  return {
    token: String(p?.$?.token ?? ''),
    name: str(p?.name),
    encoding: str(enc?.encoding),
    width: num(enc?.resolution?.width),
    height: num(enc?.resolution?.height),
    fps: num(enc?.rateControl?.frameRateLimit),
  };
}

/** Granted lifetime = TerminationTime − CurrentTime (camera clock on both sides); falls back to what we asked for. */
function grantedSeconds(resp: XmlNode | undefined, askedS: number): number {
  const cur = Date.parse(text(resp, 'CurrentTime') ?? '');
  const term = Date.parse(text(resp, 'TerminationTime') ?? '');
  if (Number.isFinite(cur) && Number.isFinite(term) && term > cur) return (term - cur) / 1000;
  return askedS;
}

function items(node: XmlNode | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const it of children(node, 'SimpleItem')) {
    const name = attr(it, 'Name');
    if (name !== undefined) out[name] = attr(it, 'Value') ?? '';
  }
  return out;
}

function parseNotification(n: XmlNode): Notification {
  const msg = child(child(n, 'Message'), 'Message');
  return {
    topic: (text(n, 'Topic') ?? '').trim(),
    utcTime: attr(msg, 'UtcTime'),
    operation: attr(msg, 'PropertyOperation'),
    source: items(child(msg, 'Source')),
    data: items(child(msg, 'Data')),
  };
}
