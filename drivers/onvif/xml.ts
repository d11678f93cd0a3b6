import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { EdgewardError } from '../../edge/errors.js';

/** Largest SOAP document accepted from a camera (or a WS-Discovery datagram). */
export const DEFAULT_MAX_XML_BYTES = 1024 * 1024;

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  removeNSPrefix: true,
  // Untrusted input: never expand entities (no billion laughs, no external entities).
  processEntities: false,
  htmlEntities: false,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  isArray: (name) => ARRAY_TAGS.has(name),
});

/** Elements that may repeat; always parsed as arrays so callers need no shape checks. */
const ARRAY_TAGS = new Set([
  'Service',
  'Profiles',
  'VideoSources',
  'NotificationMessage',
  'SimpleItem',
  'ElementItem',
  'ProbeMatch',
]);

/** A parsed XML element: attributes as `@name`, text as `#text`, children by local name. */
export type XmlNode = Record<string, unknown>;

/**
 * Parse an untrusted XML document (a camera's SOAP reply, a discovery
 * datagram). Rejects oversized input, any DTD (entity declarations are the
 * usual attack), and malformed XML, each with a clear EdgewardError
 * (`EDGE_ONVIF_BAD_XML`), never a crash.
 */
export function parseUntrustedXml(xml: string | Buffer, opts: { maxBytes?: number; what?: string } = {}): XmlNode {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_XML_BYTES;
  const what = opts.what ?? 'XML document';
  const size = typeof xml === 'string' ? Buffer.byteLength(xml, 'utf8') : xml.length;
  if (size > maxBytes) {
    throw new EdgewardError('EDGE_ONVIF_BAD_XML', `${what} too large: ${size} bytes > ${maxBytes}`, { details: { size, maxBytes } });
  }
  const text = typeof xml === 'string' ? xml : xml.toString('utf8');
  if (/<!DOCTYPE|<!ENTITY/i.test(text)) {
    throw new EdgewardError('EDGE_ONVIF_BAD_XML', `${what} contains a DTD or entity declaration (refused)`);
  }
  if (text.trim() === '') throw new EdgewardError('EDGE_ONVIF_BAD_XML', `${what} is empty`);
  const valid = XMLValidator.validate(text);
  if (valid !== true) {
    const e = valid.err;
    throw new EdgewardError('EDGE_ONVIF_BAD_XML', `${what} is not well-formed XML: ${e.msg} (line ${e.line}, col ${e.col})`, {
      details: { line: e.line, col: e.col, sample: text.slice(0, 120) },
    });
  }
  try {
    return parser.parse(text) as XmlNode;
  } catch (cause) {
    throw new EdgewardError('EDGE_ONVIF_BAD_XML', `${what} could not be parsed: ${(cause as Error).message}`, { cause });
  }
}

/** The SOAP Body of a parsed envelope, or an EDGE_ONVIF_BAD_XML error when it is not SOAP. */
export function soapBody(doc: XmlNode, what = 'SOAP reply'): XmlNode {
  const env = doc.Envelope as XmlNode | undefined;
  const body = env?.Body as XmlNode | undefined;
  if (!body || typeof body !== 'object') throw new EdgewardError('EDGE_ONVIF_BAD_XML', `${what} is not a SOAP envelope`);
  return body;
}

/** Child element `name` of `node` as an object (undefined when absent or text-only). */
export function child(node: unknown, name: string): XmlNode | undefined {
  if (!node || typeof node !== 'object') return undefined;
  const v = (node as XmlNode)[name];
  if (Array.isArray(v)) return typeof v[0] === 'object' ? (v[0] as XmlNode) : undefined;
  return v && typeof v === 'object' ? (v as XmlNode) : undefined;
}

/** Text content of child `name` (or of the node itself when `name` is omitted). */
export function text(node: unknown, name?: string): string | undefined {
  let v: unknown = node;
  if (name !== undefined) {
    if (!node || typeof node !== 'object') return undefined;
    v = (node as XmlNode)[name];
    if (Array.isArray(v)) v = v[0];
  }
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return decodeXmlText(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (typeof v === 'object' && '#text' in (v as XmlNode)) return decodeXmlText(String((v as XmlNode)['#text']));
  return undefined;
}

/** Attribute `name` of `node`, with the predefined entities decoded. */
export function attr(node: unknown, name: string): string | undefined {
  if (!node || typeof node !== 'object') return undefined;
  const v = (node as XmlNode)[`@${name}`];
  return v === undefined || v === null ? undefined : decodeXmlText(String(v));
}

/**
 * Decode the five predefined entities and numeric character references only.
 * Entity expansion is off in the parser; this is the safe subset (stream URIs
 * carry `&amp;` in their query strings).
 */
export function decodeXmlText(s: string): string {
  if (!s.includes('&')) return s;
  return s.replace(/&(lt|gt|amp|apos|quot|#\d{1,7}|#x[0-9a-fA-F]{1,6});/g, (_m, e: string) => {
    switch (e) {
      case 'lt':
        return '<';
      case 'gt':
        return '>';
      case 'amp':
        return '&';
      case 'apos':
        return "'";
      case 'quot':
        return '"';
      default: {
        const cp = e[1] === 'x' ? Number.parseInt(e.slice(2), 16) : Number.parseInt(e.slice(1), 10);
        return cp <= 0x10ffff ? String.fromCodePoint(cp) : '';
      }
    }
  });
}

/** Children named `name` as an array (empty when absent). */
export function children(node: unknown, name: string): XmlNode[] {
  if (!node || typeof node !== 'object') return [];
  const v = (node as XmlNode)[name];
  if (v === undefined) return [];
  const list = Array.isArray(v) ? v : [v];
  return list.filter((x): x is XmlNode => !!x && typeof x === 'object');
}

/** Escape text for inclusion in an XML element or attribute. */
export function xmlEscape(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c] as string);
}

/** Parse an xs:duration of the simple forms cameras use (PT60S, PT1M, PT1H2M3.5S) into seconds. */
export function parseDurationS(d: string | undefined): number | undefined {
  if (!d) return undefined;
  const m = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(d.trim());
  if (!m) return undefined;
  return Number(m[1] ?? 0) * 86400 + Number(m[2] ?? 0) * 3600 + Number(m[3] ?? 0) * 60 + Number(m[4] ?? 0);
}
