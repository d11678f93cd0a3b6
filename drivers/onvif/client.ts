import { createHash, randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import http from 'node:http';
import net from 'node:net';
import { Cam } from 'onvif';
import { EdgewardError } from '../../edge/errors.js';
import { withoutUserinfo } from '../../edge/log.js';
import { attr, child, children, DEFAULT_MAX_XML_BYTES, parseUntrustedXml, soapBody, text, type XmlNode, xmlEscape } from './xml.js';

/**
 * Upper bound, computed as a reply streams in, of the work onvif 0.8.3's
 * namespace filter will do on it.
 *
 * Why: the library's parseSOAPString (lib/utils.js) runs
 * `xml.replace(/xmlns([^=]*?)=(".*?")/g, '')` on every reply before
 * anything of ours sees the parsed result. For each `xmlns` the lazy
 * `[^=]*?` scans to the next `=`, and after `="` the `.*?"` scans to the
 * next quote or line end; a failed scan is redone from the next `xmlns`.
 * A body of repeated `xmlns` with no `=` is therefore quadratic: measured
 * 484 ms of blocked event loop at 64 KiB and 1.97 s at 128 KiB (Node 20),
 * so about 2 min at the 1 MiB cap, freezing every other device of the
 * runtime. A limit per `xmlns` (say 1 KiB to its `=`) is not enough: 200
 * `xmlns` before each `="` that is followed by 1 000 quote-free bytes passes
 * it and still costs 158 ms per 1 MiB reply, so the budget is on the total.
 *
 * Model: every body byte costs one step for each `xmlns` whose scan is
 * still open (an over-estimate: a successful match skips the `xmlns` inside
 * it). A reply over 4 steps a byte (+65 536) is refused; real replies cost
 * about one step per byte of their namespace declarations, and the costliest
 * 1 MiB reply under the budget took the regex 6 ms.
 */
export class XmlnsScanBudget {
  /** Steps counted so far. */
  work = 0;
  private bytes = 0;
  /** Bytes of "xmlns" matched at the end of the previous chunk. */
  private matched = 0;
  /** `xmlns` whose `[^=]*?` is still looking for `=`. */
  private seekingEq = 0;
  /** `xmlns` whose `=` was the previous byte (the regex wants a quote next). */
  private atEq = 0;
  /** `xmlns` past `="`, looking for the closing quote or a line end. */
  private seekingQuote = 0;

  /** Account for the next body chunk; false once the reply is over budget. */
  feed(chunk: Uint8Array): boolean {
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i] as number;
      this.work += this.seekingEq + this.atEq + this.seekingQuote;
      // The byte after `=`: a quote starts the `.*?"` scan, anything else ends those matches.
      const opened = this.atEq > 0 && b === QUOTE ? this.atEq : 0;
      this.atEq = 0;
      if (b === QUOTE || b === LF || b === CR) this.seekingQuote = 0;
      this.seekingQuote += opened;
      if (b === EQ) {
        this.atEq = this.seekingEq;
        this.seekingEq = 0;
      }
      if (b === XMLNS[this.matched]) {
        this.matched++;
        if (this.matched === XMLNS.length) {
          this.seekingEq++;
          this.matched = 0;
        }
      } else {
        this.matched = b === XMLNS[0] ? 1 : 0;
      }
    }
    this.bytes += chunk.length;
    return this.work <= 4 * this.bytes + 65536;
  }
}

const XMLNS = Buffer.from('xmlns');
const QUOTE = 0x22;
const EQ = 0x3d;
const LF = 0x0a;
const CR = 0x0d;

/** Node's Agent.addRequest, called for every request made through the agent (not in @types/node). */
type AddRequest = (req: http.ClientRequest, ...rest: unknown[]) => void;

/**
 * An HTTP agent dedicated to one camera.
 *
 * Why: onvif 0.8.3 sends subscription requests (PullMessages, Renew,
 * Unsubscribe) with `options.url` and no agent, so they ride Node 20's
 * global keep-alive agent, whose 5 s socket timeout kills a long-held
 * PullMessages ("socket hang up"). Our Cam subclass routes every request
 * through this agent: no keep-alive (one socket per request, so a held pull
 * never shares or times out a pooled socket), a byte cap per reply (a
 * socket carries exactly one reply), so a camera cannot flood us, and the
 * {@link XmlnsScanBudget} on each reply body, checked before the library
 * parses it.
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

  /**
   * The budget is checked on the decoded body (the response's data events),
   * not on the socket: chunked transfer coding could split every `xmlns` of
   * the raw stream. Our data listener runs before the library's; destroying
   * the response with an error means its 'end' (where onvif parses) never
   * comes, and the socket error reaches the library's request callback.
   */
  addRequest(req: http.ClientRequest, ...rest: unknown[]): void {
    req.prependListener('response', (res: http.IncomingMessage) => {
      const budget = new XmlnsScanBudget();
      res.prependListener('data', (chunk: Buffer) => {
        if (res.destroyed || budget.feed(chunk)) return;
        res.destroy(
          new EdgewardError('EDGE_ONVIF_BAD_XML', 'camera reply refused before parsing: its xmlns pattern would stall the onvif library (quadratic regex)', {
            details: { steps: budget.work },
          }),
        );
      });
    });
    (http.Agent.prototype as unknown as { addRequest: AddRequest }).addRequest.call(this, req, ...rest);
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
  username?: string;
  password?: string;
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
 * onvif's Cam with every request guarded. Before the library parses a reply,
 * CappedAgent caps its size and the cost of the library's namespace regex;
 * after the library has parsed it (onvif parses inside its own request code,
 * before any callback of ours), each reply is checked again with our
 * hardened parser (DTD, well-formedness, HTTP status) before the library's
 * result is used. Anything the library throws inside its own callbacks (it
 * does, on unexpected shapes) is caught here and reported to the operation
 * that made the request instead of reaching the process.
 */
class GuardedCam extends CamBase {
  /** Set around each client call and each callback, so nested library requests inherit it. */
  currentOp: Op | undefined = undefined;
  maxXmlBytes = DEFAULT_MAX_XML_BYTES;

  /**
   * WS-UsernameToken PasswordDigest = Base64(SHA-1(nonce + created + password)).
   * onvif 0.8.3 (lib/cam.js _passwordDigest) encodes the password as 'ascii',
   * which keeps only the low 8 bits of each UTF-16 unit, so a password such as
   * "岗亭密码2025" never authenticates; the UsernameToken profile hashes the
   * UTF-8 bytes. Same timestamp as the library (its camera clock estimate).
   */
  _passwordDigest(): { passdigest: string; nonce: string; timestamp: string } {
    const timestamp = new Date(this.cameraNowMs()).toISOString();
    const nonce = randomBytes(16);
    const passdigest = createHash('sha1')
      .update(Buffer.concat([nonce, Buffer.from(timestamp, 'utf8'), Buffer.from(this.password ?? '', 'utf8')]))
      .digest('base64');
    return { passdigest, nonce: nonce.toString('base64'), timestamp };
  }

  /**
   * onvif 0.8.3 (lib/cam.js _envelopeHeader) splices the username into the
   * WS-Security header as it is: "ops&<gate>" made every request malformed
   * XML. Escaped for the header only (synchronously swapped and restored):
   * HTTP Digest hashes and quotes the plain name.
   */
  override _envelopeHeader(openHeader?: boolean): string {
    const plain = this.username;
    if (plain === undefined) return super._envelopeHeader(openHeader);
    this.username = xmlEscape(plain);
    try {
      return super._envelopeHeader(openHeader);
    } finally {
      this.username = plain;
    }
  }

  /**
   * The camera's clock as the library estimates it: it reads the camera's
   * time once per connect and keeps `timeShift` = camera time − process
   * uptime; before that, our own clock.
   */
  cameraNowMs(): number {
    return this.timeShift ? process.uptime() * 1000 + this.timeShift : Date.now();
  }

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
      streamUri = typeof s?.uri === 'string' ? withoutCredentials(s.uri, [this.opts.password]) : undefined;
      // Not every camera has snapshots; a fault here is not a failed connect.
      snapshotUri = await this.call<{ uri?: string }>('GetSnapshotUri', this.timeoutMs, (done) =>
        cam.getSnapshotUri({ profileToken: token }, (err, uri) => done(err, uri)),
      ).then(
        (u) => (typeof u?.uri === 'string' ? withoutCredentials(u.uri, [this.opts.password]) : undefined),
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
    // Every pull, renew and unsubscribe goes to this address with our UsernameToken: a camera must not be able to
    // send them (and us) to another host. The port may differ (some cameras serve events on their own port).
    if (!(await this.isCameraHost(parsed.hostname))) {
      throw new EdgewardError(
        'EDGE_ONVIF_BAD_REPLY',
        `subscription address is on host ${parsed.hostname}, not the camera's ${this.opts.host}: refused (credentials go to that address)`,
        { details: { host: parsed.hostname } },
      );
    }
    return { address: parsed.href, grantedS: grantedSeconds(resp, lifetimeS, this.cam?.cameraNowMs()) };
  }

  /** Whether `hostname` (from a URL the camera gave us) is the configured camera: the same address, or one its name resolves to. */
  private async isCameraHost(hostname: string): Promise<boolean> {
    const bare = (h: string) => h.replace(/^\[|\]$/g, '').toLowerCase();
    const want = bare(this.opts.host);
    const got = bare(hostname);
    if (got === want) return true;
    if (net.isIP(want) !== 0 || net.isIP(got) === 0) return false;
    const addrs = await lookup(want, { all: true }).catch(() => []);
    return addrs.some((a) => a.address.toLowerCase() === got);
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
    return grantedSeconds(resp, lifetimeS, this.cam?.cameraNowMs());
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

/**
 * Granted lifetime = TerminationTime − CurrentTime (camera clock on both
 * sides). CurrentTime is optional in a RenewResponse: then TerminationTime −
 * our estimate of the camera's clock, less 1 s because that estimate comes
 * from a time read to the second (it may run up to 1 s slow, which would
 * make the lifetime look longer than it is). Otherwise (no usable times),
 * what we asked for.
 */
function grantedSeconds(resp: XmlNode | undefined, askedS: number, cameraNowMs?: number): number {
  const cur = Date.parse(text(resp, 'CurrentTime') ?? '');
  const term = Date.parse(text(resp, 'TerminationTime') ?? '');
  if (Number.isFinite(cur) && Number.isFinite(term) && term > cur) return (term - cur) / 1000;
  if (!Number.isFinite(cur) && Number.isFinite(term) && cameraNowMs !== undefined) {
    return Math.max(1, (term - cameraNowMs) / 1000 - 1);
  }
  return askedS;
}

/** Query parameters that carry credentials in the URIs cameras hand out (`…&user=admin&pwd=…`). */
const CREDENTIAL_PARAMS = new Set(['user', 'username', 'usr', 'pwd', 'pass', 'passwd', 'password', 'loginuse', 'loginpas']);

/** Whether `name=value` names a credential (`pwd=…`, `User=…`, percent-encoded or not). */
function isCredentialParam(pair: string): boolean {
  const name = pair.split('=', 1)[0] ?? '';
  let decoded = name;
  try {
    decoded = decodeURIComponent(name);
  } catch {
    // not percent-encoded properly: compare as it is
  }
  return CREDENTIAL_PARAMS.has(decoded.toLowerCase());
}

/**
 * A camera's URI without the credentials some cameras put in it, for events
 * and CLI output (they leave the box in device.online):
 * - userinfo: `rtsp://user:password@host/…`, also when the password holds a
 *   raw `@`, `/`, `?` or `#` (invalid, but cameras do it): see
 *   `withoutUserinfo`, the rule logged URLs follow too;
 * - query parameters named like credentials (`user=`, `pwd=`, `password=`…);
 * - any of `secrets` (the camera's own password, raw or percent-encoded,
 *   4 characters or more) still in it, replaced by `***`.
 * Surrounding whitespace is dropped.
 */
export function withoutCredentials(uri: string, secrets: readonly (string | undefined)[] = []): string {
  let u = withoutUserinfo(uri.trim());
  // Credentials as path parameters (XMEye-style rtsp://h:554/user=admin&password=147&channel=1…).
  const pathStart = u.indexOf('/', u.indexOf('://') + 3);
  if (pathStart >= 0) {
    const pathEnd = u.slice(pathStart).search(/[?#]/);
    const end = pathEnd >= 0 ? pathStart + pathEnd : u.length;
    const segments = u
      .slice(pathStart, end)
      .split('/')
      .map((seg) => (seg.includes('=') ? seg.split('&').filter((pair) => !isCredentialParam(pair)).join('&') : seg));
    u = u.slice(0, pathStart) + segments.join('/') + u.slice(end);
  }
  const q = u.indexOf('?');
  if (q >= 0) {
    const hash = u.indexOf('#', q);
    const end = hash >= 0 ? hash : u.length;
    const kept = u
      .slice(q + 1, end)
      .split('&')
      .filter((pair) => pair !== '' && !isCredentialParam(pair));
    u = u.slice(0, q) + (kept.length > 0 ? `?${kept.join('&')}` : '') + u.slice(end);
  }
  for (const secret of secrets) {
    if (secret === undefined || secret.length < 4) continue;
    for (const form of new Set([secret, encodeURIComponent(secret)])) u = u.split(form).join('***');
  }
  return u;
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
