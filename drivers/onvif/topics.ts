import type { Severity } from '../../edge/envelope.js';
import type { Notification } from './client.js';

/** A camera notification translated to a contracted event. */
export interface MappedEvent {
  type: 'camera.motion' | 'camera.tamper' | 'camera.analytics';
  severity?: Severity;
  data: Record<string, unknown>;
}

/** `tns1:RuleEngine/CellMotionDetector/Motion` → `RuleEngine/CellMotionDetector/Motion` (prefixes vary by vendor). */
export function normaliseTopic(topic: string): string {
  return topic
    .trim()
    .split('/')
    .map((seg) => seg.replace(/^[^:]*:/, ''))
    .join('/');
}

function bool(v: string | undefined): boolean | undefined {
  if (v === undefined) return undefined;
  const s = v.trim().toLowerCase();
  if (s === 'true' || s === '1') return true;
  if (s === 'false' || s === '0') return false;
  return undefined;
}

interface Rule {
  match: (t: string) => boolean;
  type: MappedEvent['type'];
  /** SimpleItem of Data that carries the on/off state, if any. */
  stateItem?: string;
  analytic?: string;
}

const RULES: Rule[] = [
  { match: (t) => t === 'VideoSource/MotionAlarm', type: 'camera.motion', stateItem: 'State' },
  { match: (t) => t === 'RuleEngine/CellMotionDetector/Motion', type: 'camera.motion', stateItem: 'IsMotion' },
  // GlobalSceneChange is published under ImagingService, AnalyticsService or RecordingService by different vendors.
  { match: (t) => t === 'VideoSource/GlobalSceneChange' || t.startsWith('VideoSource/GlobalSceneChange/'), type: 'camera.tamper', stateItem: 'State' },
  { match: (t) => t === 'RuleEngine/TamperDetector/Tamper', type: 'camera.tamper', stateItem: 'IsTamper' },
  { match: (t) => t === 'RuleEngine/LineDetector/Crossed', type: 'camera.analytics', analytic: 'line-crossed' },
  { match: (t) => t === 'RuleEngine/FieldDetector/ObjectsInside', type: 'camera.analytics', stateItem: 'IsInside', analytic: 'objects-inside' },
];

/**
 * Map a notification to camera.motion / camera.tamper / camera.analytics, the
 * raw topic kept in `data.topic`. Returns undefined for topics we do not map
 * and for the "Initialized" snapshot of an inactive state (sent on every new
 * subscription, it is not an event). Stateless: the driver uses
 * {@link mapAnyNotification} and judges a snapshot against the state it last knew.
 */
export function mapNotification(n: Notification): MappedEvent | undefined {
  const ev = mapAnyNotification(n);
  if (ev && n.operation === 'Initialized' && ev.data.state !== true) return undefined;
  return ev;
}

/** Like {@link mapNotification}, but an Initialized snapshot is mapped whatever its state. */
export function mapAnyNotification(n: Notification): MappedEvent | undefined {
  const rule = RULES.find((r) => r.match(normaliseTopic(n.topic)));
  if (!rule) return undefined;
  const state = rule.stateItem ? bool(n.data[rule.stateItem]) : undefined;
  const data: Record<string, unknown> = { topic: n.topic, source: n.source, items: n.data };
  if (state !== undefined) data.state = state;
  if (rule.analytic) data.analytic = rule.analytic;
  if (n.source.Rule !== undefined) data.rule = n.source.Rule;
  if (n.data.ObjectId !== undefined) data.objectId = n.data.ObjectId;
  if (n.utcTime !== undefined) data.utcTime = n.utcTime;
  if (n.operation !== undefined) data.operation = n.operation;
  const ev: MappedEvent = { type: rule.type, data };
  // A tamper that clears is good news, not a warning.
  if (rule.type === 'camera.tamper' && state === false) ev.severity = 'info';
  return ev;
}
