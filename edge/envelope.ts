import { createHmac } from 'node:crypto';
import { monotonicUlid } from './ulid.js';

/** Event types of the contract (SPEC.md "Event envelope"). `alert.<rule>` is open-ended. */
export const EVENT_TYPES = [
  'access.granted',
  'access.denied',
  'door.opened',
  'door.closed',
  'door.forced',
  'door.held_open',
  'door.unlocked',
  'door.locked',
  'fire.alarm',
  'fire.fault',
  'fire.cleared',
  'sensor.reading',
  'sensor.summary',
  'camera.motion',
  'camera.tamper',
  'camera.analytics',
  'device.online',
  'device.offline',
  'edge.outbox_overflow',
  'edge.events_lost',
  'security.command_rejected',
] as const;

export type KnownEventType = (typeof EVENT_TYPES)[number];
export type EventType = KnownEventType | `alert.${string}`;

export const SEVERITIES = ['info', 'warning', 'critical'] as const;
export type Severity = (typeof SEVERITIES)[number];

const TYPE_SET = new Set<string>(EVENT_TYPES);
const ALERT_RE = /^alert\.[a-z0-9_][a-z0-9_.-]{0,63}$/;

export function isEventType(t: unknown): t is EventType {
  return typeof t === 'string' && (TYPE_SET.has(t) || ALERT_RE.test(t));
}

export function isSeverity(s: unknown): s is Severity {
  return s === 'info' || s === 'warning' || s === 'critical';
}

/** Alert text in the three languages of the community. Present on every warning and critical event. */
export interface Messages {
  zh: string;
  bo: string;
  en: string;
}

export interface EventSource {
  device: string;
  driver?: string;
}

/** The event envelope of the contract. `seq` is assigned by the outbox when it stores the event. */
export interface Envelope {
  id: string;
  seq?: number;
  ts: string;
  site: string;
  edge: string;
  type: EventType;
  severity: Severity;
  source: EventSource;
  data: Record<string, unknown>;
  msg?: Messages;
  count: number;
}

/** What a driver, a rule or the HTTP API hands to the bus: the runtime fills in the rest. */
export interface EventInput {
  type: EventType;
  source: EventSource;
  data?: Record<string, unknown>;
  severity?: Severity;
  ts?: string;
  msg?: Messages;
  count?: number;
}

/** Default severity per type, used when the emitter gives none. */
export const DEFAULT_SEVERITY: Record<KnownEventType, Severity> = {
  'access.granted': 'info',
  'access.denied': 'warning',
  'door.opened': 'info',
  'door.closed': 'info',
  'door.forced': 'critical',
  'door.held_open': 'warning',
  'door.unlocked': 'info',
  'door.locked': 'info',
  'fire.alarm': 'critical',
  'fire.fault': 'warning',
  'fire.cleared': 'info',
  'sensor.reading': 'info',
  'sensor.summary': 'info',
  'camera.motion': 'info',
  'camera.tamper': 'warning',
  'camera.analytics': 'info',
  'device.online': 'info',
  'device.offline': 'warning',
  'edge.outbox_overflow': 'warning',
  'edge.events_lost': 'warning',
  'security.command_rejected': 'warning',
};

export function defaultSeverity(type: EventType): Severity {
  return (DEFAULT_SEVERITY as Record<string, Severity>)[type] ?? 'warning';
}

/**
 * Trilingual texts (Chinese, Tibetan, English) for the types that are warning
 * or critical by default, and for the alerts drivers raise. `{device}` is
 * replaced by the source device name. Other types get GENERIC_MESSAGES, which
 * shows the type itself: officers reading zh or bo would see a code.
 */
export const MESSAGES: Partial<Record<string, Messages>> = {
  'access.denied': {
    zh: '{device}：门禁拒绝通行',
    bo: '{device}：འཇུག་སྒོའི་ཆོག་མཆན་བཀག་ཡོད།',
    en: '{device}: access denied',
  },
  'door.forced': {
    zh: '{device}：门被强行打开',
    bo: '{device}：སྒོ་བཙན་ཤེད་ཀྱིས་ཕྱེ་བ།',
    en: '{device}: door forced open',
  },
  'door.held_open': {
    zh: '{device}：门长时间未关闭',
    bo: '{device}：སྒོ་དུས་ཡུན་རིང་པོར་ཕྱེ་ནས་བཞག་ཡོད།',
    en: '{device}: door held open',
  },
  // The door driver's tamper switch (an `alert.<rule>` type, critical while active).
  'alert.door_tamper': {
    zh: '{device}：门禁控制器被撬动或打开（防拆报警）',
    bo: '{device}：སྒོའི་ཚོད་འཛིན་སྒྲིག་ཆས་ལ་ལག་འཛུགས་བྱས་ཡོད།',
    en: '{device}: door controller tampered with (tamper switch)',
  },
  'fire.alarm': {
    zh: '{device}：火灾报警！请立即疏散',
    bo: '{device}：མེ་སྐྱོན་ཉེན་བརྡ། མྱུར་དུ་ཕྱིར་ཐོན་རོགས།',
    en: '{device}: FIRE ALARM, evacuate now',
  },
  'fire.fault': {
    zh: '{device}：消防设备故障',
    bo: '{device}：མེ་སྐྱོན་སྒྲིག་ཆས་ལ་སྐྱོན་ཤོར་ཡོད།',
    en: '{device}: fire equipment fault',
  },
  'camera.tamper': {
    zh: '{device}：摄像头被遮挡或移动',
    bo: '{device}：པར་ཆས་བཀབ་པའམ་སྤོས་ཡོད།',
    en: '{device}: camera tampered (covered or moved)',
  },
  'device.offline': {
    zh: '{device}：设备离线',
    bo: '{device}：སྒྲིག་ཆས་དྲ་ཐོག་མེད།',
    en: '{device}: device offline',
  },
  'edge.outbox_overflow': {
    zh: '{device}：本地缓存已满，旧事件被丢弃',
    bo: '{device}：ས་གནས་གསོག་ཉར་ཁང་ཁེངས་ནས་བྱུང་བ་རྙིང་པ་བསུབས་ཡོད།',
    en: '{device}: local buffer full, old events discarded',
  },
  'edge.events_lost': {
    zh: '{device}：设备事件丢失',
    bo: '{device}：སྒྲིག་ཆས་ཀྱི་བྱུང་བ་བརླག་སོང་།',
    en: '{device}: device events lost',
  },
  'security.command_rejected': {
    zh: '{device}：拒绝了一条远程指令',
    bo: '{device}：ཐག་རིང་བཀའ་རྒྱ་ཞིག་ངོས་ལེན་མ་བྱས།',
    en: '{device}: remote command rejected',
  },
};

const GENERIC_MESSAGES: Messages = {
  zh: '{device}：{type} 告警',
  bo: '{device}：{type} ཉེན་བརྡ།',
  en: '{device}: {type} alert',
};

export function messagesFor(type: EventType, device: string): Messages {
  const m = MESSAGES[type] ?? GENERIC_MESSAGES;
  const fill = (s: string) => s.replaceAll('{device}', device).replaceAll('{type}', type);
  return { zh: fill(m.zh), bo: fill(m.bo), en: fill(m.en) };
}

/** ULIDs, monotonic within this process so ids sort by creation even within one millisecond. */
export const newId: (seedTime?: number) => string = monotonicUlid();

let lastIsoMs = Number.NaN;
let lastIso = '';

/** `new Date(ms).toISOString()`, remembered for the last millisecond: a batch of events shares one. */
function isoTime(ms: number): string {
  if (ms !== lastIsoMs) {
    lastIso = new Date(ms).toISOString();
    lastIsoMs = ms;
  }
  return lastIso;
}

/**
 * Complete an input into an envelope (without `seq`): id, ts, site/edge,
 * default severity, and the trilingual `msg` on every warning and critical event.
 */
export function makeEnvelope(input: EventInput, ids: { site: string; edge: string }, now: number = Date.now()): Envelope {
  const severity = input.severity ?? defaultSeverity(input.type);
  const env: Envelope = {
    id: newId(now),
    ts: input.ts ?? isoTime(now),
    site: ids.site,
    edge: ids.edge,
    type: input.type,
    severity,
    source: input.source,
    data: input.data ?? {},
    count: input.count ?? 1,
  };
  if (input.msg) env.msg = input.msg;
  else if (severity !== 'info') env.msg = messagesFor(input.type, input.source.device);
  return env;
}

/**
 * A copy of `e` carrying the outbox `seq`, keys in the contract's order. A
 * fixed-shape literal rather than a spread: this runs for every stored event,
 * and a spread copy was 5 % of the runtime's CPU under load.
 */
export function withSeq(e: Envelope, seq: number): Envelope {
  return e.msg === undefined
    ? { id: e.id, seq, ts: e.ts, site: e.site, edge: e.edge, type: e.type, severity: e.severity, source: e.source, data: e.data, count: e.count }
    : {
        id: e.id,
        seq,
        ts: e.ts,
        site: e.site,
        edge: e.edge,
        type: e.type,
        severity: e.severity,
        source: e.source,
        data: e.data,
        msg: e.msg,
        count: e.count,
      };
}

/**
 * The card pseudonym of the contract: the first 16 hex characters of
 * HMAC-SHA256(key = siteKey as UTF-8, message = the decimal card number).
 */
export function pseudonymiseCard(card: number | bigint | string, siteKey: string): string {
  const decimal = typeof card === 'string' ? BigInt(card).toString(10) : card.toString(10);
  const pseudonym = createHmac('sha256', Buffer.from(siteKey, 'utf8')).update(decimal, 'utf8').digest('hex').slice(0, 16);
  issued.add(pseudonym);
  if (issued.size > ISSUED_MAX) issued.delete(issued.values().next().value as string);
  return pseudonym;
}

/**
 * Pseudonyms this process made lately (insertion order, the oldest dropped
 * past ISSUED_MAX): a 16-hex `card` nested in posted data is kept as it is
 * only if it is one of them (an event a flow nests in its own alert). Any
 * other 16-hex value may be a raw 8-byte UID printed in hex (ISO 15693,
 * FeliCa), and is pseudonymised (seen in a review).
 */
const issued = new Set<string>();
const ISSUED_MAX = 10_000;

/** Whether `value` is a pseudonym this process made lately (see `issued`). */
export function isIssuedPseudonym(value: string): boolean {
  return issued.has(value);
}
