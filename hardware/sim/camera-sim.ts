import { createHash, randomUUID } from 'node:crypto';
import dgram from 'node:dgram';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { child, parseDurationS, parseUntrustedXml, soapBody, text, type XmlNode, xmlEscape } from '../../drivers/onvif/xml.js';

/** WS-Discovery multicast group and port (SOAP-over-UDP). */
export const WS_DISCOVERY_GROUP = '239.255.255.250';
export const WS_DISCOVERY_PORT = 3702;

/** Fault modes of the simulated camera (one rule per fault, like modbus-serial's test port). */
export type CameraFaultKind =
  /** Answer HTTP 401 with a NotAuthorized SOAP fault (no Digest challenge). */
  | 'http-401'
  /** Delay the reply by `delayMs`. */
  | 'slow'
  /** Answer 200 with a body that is not XML at all. */
  | 'malformed'
  /** Answer 200 with well-formed XML that is not what the call returns (e.g. missing elements). */
  | 'wrong-shape'
  /** Answer 200 with a body larger than `bytes` (default 2 MiB). */
  | 'huge'
  /** Answer HTTP 500 with a SOAP fault. */
  | 'http-500';

export interface CameraFault {
  kind: CameraFaultKind;
  /** SOAP action local name to match (`Renew`, `PullMessages`, …); every action when omitted. */
  action?: string;
  /** How many matching requests it applies to (default: until cleared). */
  times?: number;
  delayMs?: number;
  bytes?: number;
}

export interface CameraSimOptions {
  host?: string;
  /** HTTP port (0 = any free port). */
  port?: number;
  username?: string;
  password?: string;
  manufacturer?: string;
  model?: string;
  firmware?: string;
  serial?: string;
  hardwareId?: string;
  /** Device name used in discovery scopes. */
  name?: string;
  /** UDP WS-Discovery: `false` disables it; `port` 0 = any free port (unicast probes); `multicast` joins 239.255.255.250 on 3702. */
  discovery?: false | { port?: number; multicast?: boolean; bindAddress?: string };
  /** Upper bound on granted subscription lifetimes (s). */
  maxTerminationS?: number;
  /** Upper bound on how long a PullMessages is held open (ms); default = the requested Timeout. */
  maxPullHoldMs?: number;
  /** Accept WS-Security `Created` timestamps within this skew (ms). */
  maxClockSkewMs?: number;
  /** How callers authenticate: WS-UsernameToken in the SOAP header (default), or HTTP Digest (RFC 7616, MD5, qop=auth). */
  auth?: 'ws-security' | 'digest';
  /** The camera's clock minus ours, ms (default 0); see {@link CameraSim.setClockOffset}. */
  clockOffsetMs?: number;
  /** Include CurrentTime in RenewResponse (default true; it is optional in WS-BaseNotification). */
  renewCurrentTime?: boolean;
  /** Base URL (`http://host:port`) put in subscription addresses instead of the camera's own (a camera behind NAT, or a hostile one). */
  subscriptionBase?: string;
  /** `user:password` the camera embeds in the stream and snapshot URIs it hands out (some do). */
  uriCredentials?: string;
}

interface Subscription {
  id: string;
  createdAt: number;
  terminationAt: number;
  queue: string[];
  waiter?: () => void;
}

/** Counters the tests read. */
export interface CameraSimStats {
  requests: Record<string, number>;
  authFailures: number;
  /** Authenticated (valid UsernameToken) CreatePullPointSubscription calls. */
  authedCreates: number;
  subscriptions: number;
  reboots: number;
  probes: number;
}

const NS = {
  s: 'http://www.w3.org/2003/05/soap-envelope',
  tds: 'http://www.onvif.org/ver10/device/wsdl',
  trt: 'http://www.onvif.org/ver10/media/wsdl',
  tev: 'http://www.onvif.org/ver10/events/wsdl',
  tt: 'http://www.onvif.org/ver10/schema',
  wsnt: 'http://docs.oasis-open.org/wsn/b-2',
  wsa: 'http://www.w3.org/2005/08/addressing',
  tns1: 'http://www.onvif.org/ver10/topics',
  ter: 'http://www.onvif.org/ver10/error',
};

const UNAUTHENTICATED = new Set(['GetSystemDateAndTime']);
const DIGEST_REALM = 'edgeward-sim';

/**
 * An ONVIF camera over real HTTP and UDP: WS-Discovery, the device, media and
 * events SOAP calls the driver uses, WS-UsernameToken (PasswordDigest)
 * enforcement, scripted events (each new subscription starting with the
 * Initialized snapshot of every property, as cameras do), a camera clock that
 * can step, and fault modes (reboot losing subscriptions, 401 on a call, slow
 * replies, malformed XML, a subscription address on another host, credentials
 * in the URIs it hands out).
 */
export class CameraSim {
  readonly opts: Required<Omit<CameraSimOptions, 'discovery' | 'subscriptionBase' | 'uriCredentials'>> &
    Pick<CameraSimOptions, 'discovery' | 'subscriptionBase' | 'uriCredentials'>;
  readonly urn = `urn:uuid:${randomUUID()}`;
  readonly stats: CameraSimStats = { requests: {}, authFailures: 0, authedCreates: 0, subscriptions: 0, reboots: 0, probes: 0 };
  private server?: http.Server;
  private udp?: dgram.Socket;
  private readonly sockets = new Set<Socket>();
  private readonly subs = new Map<string, Subscription>();
  private faults: CameraFault[] = [];
  private httpPort = 0;
  private udpPort = 0;
  private down = false;
  private readonly digestNonce = randomUUID().replace(/-/g, '');
  /** PullMessages requests being held open right now, and when the latest one started (ms epoch). */
  pullsHeld = 0;
  lastPullStartedAt = 0;
  /** Current state of each stateful property (see PROPERTIES), sent as an Initialized snapshot to each new subscription. */
  private readonly properties = new Map<string, string>(PROPERTIES.map((p) => [p.key, 'false']));

  constructor(opts: CameraSimOptions = {}) {
    this.opts = {
      host: opts.host ?? '127.0.0.1',
      port: opts.port ?? 0,
      username: opts.username ?? 'admin',
      password: opts.password ?? 'admin',
      manufacturer: opts.manufacturer ?? 'Edgeward',
      model: opts.model ?? 'SimCam-200',
      firmware: opts.firmware ?? '1.4.2',
      serial: opts.serial ?? 'SIM0001',
      hardwareId: opts.hardwareId ?? 'sim-hw-1',
      name: opts.name ?? 'entrance-cam',
      discovery: opts.discovery,
      maxTerminationS: opts.maxTerminationS ?? 3600,
      maxPullHoldMs: opts.maxPullHoldMs ?? Number.POSITIVE_INFINITY,
      maxClockSkewMs: opts.maxClockSkewMs ?? 5 * 60_000,
      auth: opts.auth ?? 'ws-security',
      clockOffsetMs: opts.clockOffsetMs ?? 0,
      renewCurrentTime: opts.renewCurrentTime ?? true,
      subscriptionBase: opts.subscriptionBase,
      uriCredentials: opts.uriCredentials,
    };
  }

  get port(): number {
    return this.httpPort;
  }

  /** UDP port answering WS-Discovery probes (0 when discovery is off). */
  get discoveryPort(): number {
    return this.udpPort;
  }

  get deviceUrl(): string {
    return `http://${this.opts.host}:${this.httpPort}/onvif/device_service`;
  }

  /** The stream URI as a client should report it (without the `uriCredentials` the camera embeds). */
  get streamUri(): string {
    return `rtsp://${this.opts.host}:554/Streaming/Channels/101?transportmode=unicast&profile=Profile_1`;
  }

  /** The snapshot URI as a client should report it (without the `uriCredentials` the camera embeds). */
  get snapshotUri(): string {
    return `http://${this.opts.host}:${this.httpPort}/onvif/snapshot?profile=Profile_1`;
  }

  /** The camera's clock (ms epoch): ours plus `clockOffsetMs`. */
  now(): number {
    return Date.now() + this.opts.clockOffsetMs;
  }

  /** Step the camera's clock (an NTP sync, a power cut): it now reads ours plus `offsetMs`. */
  setClockOffset(offsetMs: number): void {
    this.opts.clockOffsetMs = offsetMs;
  }

  /** Live subscriptions (the tests check that reboots drop them). */
  get subscriptionCount(): number {
    return this.subs.size;
  }

  async start(): Promise<void> {
    await this.listenHttp(this.opts.port);
    if (this.opts.discovery !== false && this.opts.discovery !== undefined) await this.listenUdp(this.opts.discovery);
  }

  async stop(): Promise<void> {
    for (const sub of this.subs.values()) sub.waiter?.();
    this.subs.clear();
    await this.closeHttp();
    if (this.udp) {
      const udp = this.udp;
      this.udp = undefined;
      await new Promise<void>((r) => udp.close(() => r()));
    }
  }

  /** Add a fault rule (see {@link CameraFault}). */
  setFault(fault: CameraFault): void {
    this.faults.push({ ...fault });
  }

  clearFaults(): void {
    this.faults = [];
  }

  /**
   * Simulate a reboot: every subscription is lost, open connections are cut,
   * and the HTTP port refuses connections for `downMs`, then comes back on the same port.
   */
  async reboot(downMs = 0): Promise<void> {
    this.stats.reboots++;
    for (const sub of this.subs.values()) sub.waiter?.();
    this.subs.clear();
    this.down = true;
    await this.closeHttp();
    if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
    await this.listenHttp(this.httpPort);
    this.down = false;
  }

  /**
   * Queue a notification on every live subscription. Items are SimpleItem
   * name/value pairs; `utcTime` overrides the camera-clock timestamp (many
   * cameras send whole seconds).
   */
  emitEvent(
    topic: string,
    opts: {
      source?: Record<string, string>;
      data?: Record<string, string>;
      operation?: 'Initialized' | 'Changed' | 'Deleted';
      utcTime?: string;
    } = {},
  ): void {
    const msg = notificationXml(topic, opts.operation ?? 'Changed', opts.utcTime ?? new Date(this.now()).toISOString(), opts.source, opts.data);
    const prop = PROPERTIES.find((p) => p.topic === topic && JSON.stringify(p.source) === JSON.stringify(opts.source ?? {}));
    const state = prop ? opts.data?.[prop.item] : undefined;
    if (prop && state !== undefined && opts.operation !== 'Initialized') this.properties.set(prop.key, state);
    for (const sub of this.subs.values()) {
      sub.queue.push(msg);
      sub.waiter?.();
    }
  }

  motion(on: boolean): void {
    this.emitEvent('tns1:VideoSource/MotionAlarm', { source: { Source: 'VideoSource_1' }, data: { State: String(on) } });
  }

  cellMotion(on: boolean): void {
    this.emitEvent('tns1:RuleEngine/CellMotionDetector/Motion', { source: CELL_SOURCE, data: { IsMotion: String(on) } });
  }

  tamper(on: boolean): void {
    this.emitEvent('tns1:VideoSource/GlobalSceneChange/ImagingService', { source: { Source: 'VideoSource_1' }, data: { State: String(on) } });
  }

  lineCrossed(objectId = '1'): void {
    this.emitEvent('tns1:RuleEngine/LineDetector/Crossed', {
      source: { VideoSourceConfigurationToken: 'VSC_1', VideoAnalyticsConfigurationToken: 'VAC_1', Rule: 'EntranceLine' },
      data: { ObjectId: objectId },
    });
  }

  fieldInside(inside: boolean): void {
    this.emitEvent('tns1:RuleEngine/FieldDetector/ObjectsInside', { source: FIELD_SOURCE, data: { IsInside: String(inside) } });
  }

  // ---- HTTP -----------------------------------------------------------------

  private listenHttp(port: number): Promise<void> {
    const server = http.createServer((req, res) => {
      this.onRequest(req, res).catch((err) => {
        if (!res.headersSent) res.writeHead(500);
        res.end(String(err));
      });
    });
    // Pulls are held open for long; Node's server timeouts must not cut them.
    server.requestTimeout = 0;
    server.headersTimeout = 0;
    server.keepAliveTimeout = 5000;
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, this.opts.host, () => {
        server.off('error', reject);
        this.httpPort = (server.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  private async closeHttp(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await new Promise<void>((r) => server.close(() => r()));
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > 256 * 1024) {
        res.writeHead(413).end();
        return;
      }
      chunks.push(c as Buffer);
    }
    if (req.url?.startsWith('/onvif/snapshot')) {
      res.writeHead(200, { 'Content-Type': 'image/jpeg' }).end(Buffer.from([0xff, 0xd8, 0xff, 0xd9]));
      return;
    }
    let doc: XmlNode;
    let body: XmlNode;
    try {
      doc = parseUntrustedXml(Buffer.concat(chunks), { what: 'SOAP request' });
      body = soapBody(doc);
    } catch (err) {
      this.send(res, 400, fault('s:Sender', 'ter:WellFormed', (err as Error).message));
      return;
    }
    const action = Object.keys(body).find((k) => !k.startsWith('@') && k !== '#text') ?? '';
    this.stats.requests[action] = (this.stats.requests[action] ?? 0) + 1;
    const req0 = child(body, action) ?? {};

    const f = this.takeFault(action);
    if (f?.kind === 'slow') await new Promise((r) => setTimeout(r, f.delayMs ?? 2000));
    if (this.down || !this.server) return; // rebooted while we waited: the socket is gone
    if (f && f.kind !== 'slow') {
      this.sendFault(res, f);
      return;
    }

    const digest = this.opts.auth === 'digest';
    const authed = digest ? this.checkDigest(req) : this.checkAuth(child(doc.Envelope, 'Header'));
    if (!UNAUTHENTICATED.has(action) && !authed) {
      if (digest) {
        // A missing or stale Authorization header is a challenge, not a failure.
        if (req.headers.authorization !== undefined) this.stats.authFailures++;
        res.writeHead(401, { 'WWW-Authenticate': `Digest realm="${DIGEST_REALM}", qop="auth", nonce="${this.digestNonce}", algorithm=MD5` });
        res.end();
        return;
      }
      this.stats.authFailures++;
      this.send(res, 400, fault('s:Sender', 'ter:NotAuthorized', 'Sender not authorized'));
      return;
    }
    const reply = await this.handle(action, req0, req.url ?? '/', authed);
    if (reply === undefined) return;
    this.send(res, reply.status ?? 200, reply.body);
  }

  private takeFault(action: string): CameraFault | undefined {
    const i = this.faults.findIndex((f) => f.action === undefined || f.action === action);
    if (i < 0) return undefined;
    const f = this.faults[i] as CameraFault;
    if (f.times !== undefined) {
      f.times--;
      if (f.times <= 0) this.faults.splice(i, 1);
    }
    return f;
  }

  private sendFault(res: http.ServerResponse, f: CameraFault): void {
    switch (f.kind) {
      case 'http-401':
        this.send(res, 401, fault('s:Sender', 'ter:NotAuthorized', 'Sender not authorized'));
        return;
      case 'http-500':
        this.send(res, 500, fault('s:Receiver', 'ter:Action', 'Internal error'));
        return;
      case 'malformed':
        res.writeHead(200, { 'Content-Type': 'application/soap+xml' }).end('<s:Envelope><s:Body><oops</s:Body>\u0000garbage');
        return;
      case 'wrong-shape':
        this.send(res, 200, envelope('<tds:Unexpected><tt:Nothing/></tds:Unexpected>'));
        return;
      case 'huge': {
        const bytes = f.bytes ?? 2 * 1024 * 1024;
        res.writeHead(200, { 'Content-Type': 'application/soap+xml' });
        res.end(envelope(`<tds:Padding>${'x'.repeat(bytes)}</tds:Padding>`));
        return;
      }
      default:
        return;
    }
  }

  private send(res: http.ServerResponse, status: number, body: string): void {
    if (res.destroyed) return;
    res.writeHead(status, { 'Content-Type': 'application/soap+xml; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }

  /** WS-UsernameToken PasswordDigest: Base64(SHA1(nonce + created + password)). */
  private checkAuth(header: XmlNode | undefined): boolean {
    const token = child(child(header, 'Security'), 'UsernameToken');
    if (!token) return false;
    const user = text(token, 'Username');
    const digest = text(token, 'Password');
    const nonce = text(token, 'Nonce');
    const created = text(token, 'Created');
    if (user !== this.opts.username || !digest || !nonce || !created) return false;
    const createdAt = Date.parse(created);
    if (!Number.isFinite(createdAt) || Math.abs(createdAt - this.now()) > this.opts.maxClockSkewMs) return false;
    // The UsernameToken profile hashes the UTF-8 bytes of the password (not 'ascii', which drops the high bits).
    const expect = createHash('sha1')
      .update(Buffer.concat([Buffer.from(nonce, 'base64'), Buffer.from(created, 'utf8'), Buffer.from(this.opts.password, 'utf8')]))
      .digest('base64');
    return expect === digest;
  }

  /** HTTP Digest with qop=auth: MD5(HA1:nonce:nc:cnonce:qop:HA2). */
  private checkDigest(req: http.IncomingMessage): boolean {
    const h = req.headers.authorization;
    if (!h?.startsWith('Digest ')) return false;
    const p: Record<string, string> = {};
    for (const m of h.slice(7).matchAll(/(\w+)=(?:"([^"]*)"|([^,\s]*))/g)) p[m[1] as string] = m[2] ?? m[3] ?? '';
    if (p.username !== this.opts.username || p.realm !== DIGEST_REALM || p.nonce !== this.digestNonce || p.uri !== req.url) return false;
    const md5 = (x: string) => createHash('md5').update(x).digest('hex');
    const ha1 = md5(`${this.opts.username}:${DIGEST_REALM}:${this.opts.password}`);
    const ha2 = md5(`${req.method}:${p.uri}`);
    const expect = p.qop ? md5(`${ha1}:${p.nonce}:${p.nc}:${p.cnonce}:${p.qop}:${ha2}`) : md5(`${ha1}:${p.nonce}:${ha2}`);
    return expect === p.response;
  }

  private xaddr(path: string): string {
    return `http://${this.opts.host}:${this.httpPort}${path}`;
  }

  private async handle(action: string, req: XmlNode, url: string, authed: boolean): Promise<{ status?: number; body: string } | undefined> {
    const o = this.opts;
    switch (action) {
      case 'GetSystemDateAndTime': {
        const d = new Date(this.now());
        return {
          body: envelope(
            `<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>` +
              `<tt:UTCDateTime><tt:Time><tt:Hour>${d.getUTCHours()}</tt:Hour><tt:Minute>${d.getUTCMinutes()}</tt:Minute><tt:Second>${d.getUTCSeconds()}</tt:Second></tt:Time>` +
              `<tt:Date><tt:Year>${d.getUTCFullYear()}</tt:Year><tt:Month>${d.getUTCMonth() + 1}</tt:Month><tt:Day>${d.getUTCDate()}</tt:Day></tt:Date></tt:UTCDateTime>` +
              `</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>`,
          ),
        };
      }
      case 'GetServices': {
        const svc = (ns: string, path: string) =>
          `<tds:Service><tds:Namespace>${ns}</tds:Namespace><tds:XAddr>${this.xaddr(path)}</tds:XAddr><tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>`;
        return {
          body: envelope(
            `<tds:GetServicesResponse>${svc(NS.tds, '/onvif/device_service')}${svc(NS.trt, '/onvif/media_service')}${svc(NS.tev, '/onvif/events_service')}</tds:GetServicesResponse>`,
          ),
        };
      }
      case 'GetDeviceInformation':
        return {
          body: envelope(
            `<tds:GetDeviceInformationResponse><tds:Manufacturer>${xmlEscape(o.manufacturer)}</tds:Manufacturer><tds:Model>${xmlEscape(o.model)}</tds:Model>` +
              `<tds:FirmwareVersion>${xmlEscape(o.firmware)}</tds:FirmwareVersion><tds:SerialNumber>${xmlEscape(o.serial)}</tds:SerialNumber>` +
              `<tds:HardwareId>${xmlEscape(o.hardwareId)}</tds:HardwareId></tds:GetDeviceInformationResponse>`,
          ),
        };
      case 'GetProfiles':
        return {
          body: envelope(
            `<trt:GetProfilesResponse>${profileXml('Profile_1', 'mainStream', 1920, 1080)}${profileXml('Profile_2', 'subStream', 640, 360)}</trt:GetProfilesResponse>`,
          ),
        };
      case 'GetVideoSources':
        return {
          body: envelope(
            `<trt:GetVideoSourcesResponse><trt:VideoSources token="VideoSource_1"><tt:Framerate>25</tt:Framerate>` +
              `<tt:Resolution><tt:Width>1920</tt:Width><tt:Height>1080</tt:Height></tt:Resolution></trt:VideoSources></trt:GetVideoSourcesResponse>`,
          ),
        };
      case 'GetStreamUri':
        return {
          body: envelope(
            `<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>${xmlEscape(this.withCredentials(this.streamUri))}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>` +
              `<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetStreamUriResponse>`,
          ),
        };
      case 'GetSnapshotUri':
        return {
          body: envelope(
            `<trt:GetSnapshotUriResponse><trt:MediaUri><tt:Uri>${xmlEscape(this.withCredentials(this.snapshotUri))}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>` +
              `<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetSnapshotUriResponse>`,
          ),
        };
      case 'CreatePullPointSubscription': {
        if (authed) this.stats.authedCreates++;
        this.stats.subscriptions++;
        const now = Date.now();
        const lifeS = Math.min(parseDurationS(text(req, 'InitialTerminationTime')) ?? 60, o.maxTerminationS);
        // As cameras do, a new subscription starts with an Initialized snapshot of every property's current state.
        const snapshot = PROPERTIES.map((p) =>
          notificationXml(p.topic, 'Initialized', this.cameraTime(now), p.source, { [p.item]: this.properties.get(p.key) ?? 'false' }),
        );
        const sub: Subscription = { id: randomUUID(), createdAt: now, terminationAt: now + lifeS * 1000, queue: snapshot };
        this.subs.set(sub.id, sub);
        const address = `${o.subscriptionBase ?? this.xaddr('')}/onvif/subscription/${sub.id}`;
        return {
          body: envelope(
            `<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference><wsa:Address>${xmlEscape(address)}</wsa:Address></tev:SubscriptionReference>` +
              `<wsnt:CurrentTime>${this.cameraTime(now)}</wsnt:CurrentTime><wsnt:TerminationTime>${this.cameraTime(sub.terminationAt)}</wsnt:TerminationTime>` +
              `</tev:CreatePullPointSubscriptionResponse>`,
          ),
        };
      }
      case 'PullMessages':
      case 'Renew':
      case 'Unsubscribe':
        return this.handleSubscription(action, req, url);
      default:
        return { status: 400, body: fault('s:Receiver', 'ter:ActionNotSupported', `${action} not supported by the simulator`) };
    }
  }

  private async handleSubscription(action: string, req: XmlNode, url: string): Promise<{ status?: number; body: string } | undefined> {
    const id = /\/onvif\/subscription\/([^/?]+)/.exec(url)?.[1];
    const sub = id ? this.subs.get(id) : undefined;
    if (!sub || Date.now() > sub.terminationAt) {
      if (sub) this.subs.delete(sub.id);
      return { status: 400, body: fault('s:Sender', 'wsrf-rw:ResourceUnknownFault', 'Unknown or expired subscription') };
    }
    if (action === 'Unsubscribe') {
      this.subs.delete(sub.id);
      return { body: envelope('<wsnt:UnsubscribeResponse/>') };
    }
    if (action === 'Renew') {
      const lifeS = Math.min(parseDurationS(text(req, 'TerminationTime')) ?? 60, this.opts.maxTerminationS);
      const now = Date.now();
      sub.terminationAt = now + lifeS * 1000;
      const current = this.opts.renewCurrentTime ? `<wsnt:CurrentTime>${this.cameraTime(now)}</wsnt:CurrentTime>` : '';
      return {
        body: envelope(`<wsnt:RenewResponse><wsnt:TerminationTime>${this.cameraTime(sub.terminationAt)}</wsnt:TerminationTime>${current}</wsnt:RenewResponse>`),
      };
    }
    // PullMessages: answer at once when messages are queued, else hold until one arrives or the timeout ends.
    const timeoutMs = Math.min((parseDurationS(text(req, 'Timeout')) ?? 10) * 1000, this.opts.maxPullHoldMs);
    const limit = Number(text(req, 'MessageLimit') ?? 10) || 10;
    this.lastPullStartedAt = Date.now();
    if (sub.queue.length === 0 && timeoutMs > 0) {
      this.pullsHeld++;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, timeoutMs);
        function done() {
          clearTimeout(t);
          resolve();
        }
        sub.waiter = done;
      });
      sub.waiter = undefined;
      this.pullsHeld--;
    }
    if (!this.subs.has(sub.id)) return undefined; // lost in a reboot while held: the connection is already cut
    const msgs = sub.queue.splice(0, limit);
    const now = Date.now();
    return {
      body: envelope(
        `<tev:PullMessagesResponse><tev:CurrentTime>${this.cameraTime(now)}</tev:CurrentTime><tev:TerminationTime>${this.cameraTime(sub.terminationAt)}</tev:TerminationTime>${msgs.join('')}</tev:PullMessagesResponse>`,
      ),
    };
  }

  /** A time of ours (subscriptions expire on our clock) as the camera's clock reads it. */
  private cameraTime(ms: number): string {
    return new Date(ms + this.opts.clockOffsetMs).toISOString();
  }

  private withCredentials(uri: string): string {
    return this.opts.uriCredentials === undefined ? uri : uri.replace('://', `://${this.opts.uriCredentials}@`);
  }

  // ---- WS-Discovery -----------------------------------------------------------

  private listenUdp(cfg: { port?: number; multicast?: boolean; bindAddress?: string }): Promise<void> {
    const multicast = cfg.multicast ?? false;
    const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    this.udp = sock;
    sock.on('message', (msg, rinfo) => this.onProbe(msg, rinfo));
    sock.on('error', () => undefined);
    return new Promise((resolve, reject) => {
      sock.once('error', reject);
      const port = cfg.port ?? (multicast ? WS_DISCOVERY_PORT : 0);
      // A multicast listener binds the wildcard address, or group traffic never reaches it.
      sock.bind(port, multicast ? undefined : (cfg.bindAddress ?? this.opts.host), () => {
        sock.off('error', reject);
        if (multicast) sock.addMembership(WS_DISCOVERY_GROUP);
        this.udpPort = sock.address().port;
        resolve();
      });
    });
  }

  private onProbe(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    let doc: XmlNode;
    try {
      doc = parseUntrustedXml(msg, { maxBytes: 64 * 1024, what: 'WS-Discovery probe' });
    } catch {
      return; // garbage on the discovery port is ignored, as cameras do
    }
    const body = child(doc.Envelope, 'Body');
    if (!child(body, 'Probe') && !(body && 'Probe' in body)) return;
    this.stats.probes++;
    const messageId = text(child(doc.Envelope, 'Header'), 'MessageID') ?? '';
    const o = this.opts;
    const scopes = [
      'onvif://www.onvif.org/type/video_encoder',
      'onvif://www.onvif.org/Profile/Streaming',
      `onvif://www.onvif.org/hardware/${encodeURIComponent(o.model)}`,
      `onvif://www.onvif.org/name/${encodeURIComponent(o.name)}`,
    ].join(' ');
    const reply =
      `<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="${NS.s}" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" ` +
      `xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl">` +
      `<s:Header><a:MessageID>urn:uuid:${randomUUID()}</a:MessageID><a:RelatesTo>${xmlEscape(messageId)}</a:RelatesTo>` +
      `<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>` +
      `<a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</a:Action></s:Header>` +
      `<s:Body><d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address>${this.urn}</a:Address></a:EndpointReference>` +
      `<d:Types>dn:NetworkVideoTransmitter</d:Types><d:Scopes>${xmlEscape(scopes)}</d:Scopes>` +
      `<d:XAddrs>${xmlEscape(this.deviceUrl)}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>`;
    this.udp?.send(reply, rinfo.port, rinfo.address);
  }
}

const CELL_SOURCE = { VideoSourceConfigurationToken: 'VSC_1', VideoAnalyticsConfigurationToken: 'VAC_1', Rule: 'MyMotionDetectorRule' };
const FIELD_SOURCE = { VideoSourceConfigurationToken: 'VSC_1', VideoAnalyticsConfigurationToken: 'VAC_1', Rule: 'Courtyard' };

/** The stateful properties the simulator reports (topic, source, the data item carrying the state). */
const PROPERTIES = [
  { topic: 'tns1:VideoSource/MotionAlarm', source: { Source: 'VideoSource_1' }, item: 'State' },
  { topic: 'tns1:RuleEngine/CellMotionDetector/Motion', source: CELL_SOURCE, item: 'IsMotion' },
  { topic: 'tns1:VideoSource/GlobalSceneChange/ImagingService', source: { Source: 'VideoSource_1' }, item: 'State' },
  { topic: 'tns1:RuleEngine/FieldDetector/ObjectsInside', source: FIELD_SOURCE, item: 'IsInside' },
].map((p) => ({ ...p, key: `${p.topic}|${JSON.stringify(p.source)}` }));

function notificationXml(topic: string, operation: string, utcTime: string, source?: Record<string, string>, data?: Record<string, string>): string {
  const items = (o: Record<string, string> | undefined) =>
    Object.entries(o ?? {})
      .map(([k, v]) => `<tt:SimpleItem Name="${xmlEscape(k)}" Value="${xmlEscape(v)}"/>`)
      .join('');
  return (
    `<wsnt:NotificationMessage><wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">${xmlEscape(topic)}</wsnt:Topic>` +
    `<wsnt:Message><tt:Message UtcTime="${xmlEscape(utcTime)}" PropertyOperation="${operation}">` +
    `<tt:Source>${items(source)}</tt:Source><tt:Data>${items(data)}</tt:Data></tt:Message></wsnt:Message></wsnt:NotificationMessage>`
  );
}

function envelope(body: string): string {
  return (
    `<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="${NS.s}" xmlns:tds="${NS.tds}" xmlns:trt="${NS.trt}" xmlns:tev="${NS.tev}" ` +
    `xmlns:tt="${NS.tt}" xmlns:wsnt="${NS.wsnt}" xmlns:wsa="${NS.wsa}" xmlns:tns1="${NS.tns1}" xmlns:ter="${NS.ter}" ` +
    `xmlns:wsrf-rw="http://docs.oasis-open.org/wsrf/rw-2"><s:Body>${body}</s:Body></s:Envelope>`
  );
}

function fault(code: string, subcode: string, reason: string): string {
  return envelope(
    `<s:Fault><s:Code><s:Value>${code}</s:Value><s:Subcode><s:Value>${subcode}</s:Value></s:Subcode></s:Code>` +
      `<s:Reason><s:Text xml:lang="en">${xmlEscape(reason)}</s:Text></s:Reason></s:Fault>`,
  );
}

function profileXml(token: string, name: string, width: number, height: number): string {
  return (
    `<trt:Profiles token="${token}" fixed="true"><tt:Name>${name}</tt:Name>` +
    `<tt:VideoSourceConfiguration token="VSC_1"><tt:Name>VideoSourceConfig</tt:Name><tt:UseCount>2</tt:UseCount><tt:SourceToken>VideoSource_1</tt:SourceToken>` +
    `<tt:Bounds x="0" y="0" width="1920" height="1080"/></tt:VideoSourceConfiguration>` +
    `<tt:VideoEncoderConfiguration token="VEC_${token}"><tt:Name>${name}</tt:Name><tt:UseCount>1</tt:UseCount><tt:Encoding>H264</tt:Encoding>` +
    `<tt:Resolution><tt:Width>${width}</tt:Width><tt:Height>${height}</tt:Height></tt:Resolution><tt:Quality>4</tt:Quality>` +
    `<tt:RateControl><tt:FrameRateLimit>25</tt:FrameRateLimit><tt:EncodingInterval>1</tt:EncodingInterval><tt:BitrateLimit>4096</tt:BitrateLimit></tt:RateControl>` +
    `</tt:VideoEncoderConfiguration></trt:Profiles>`
  );
}
