import { EdgewardError } from '../../edge/errors.js';
import type { Registry } from '../../edge/registry.js';
import { CardReaderDriver, type CardReaderOptions, DEFAULT_CARD_PATTERN } from './driver.js';

export { CardReaderDriver, type CardReaderOptions, DEFAULT_CARD_PATTERN } from './driver.js';

function invalid(name: string, field: string, why: string): EdgewardError {
  return new EdgewardError('EDGE_CONFIG_INVALID', `card reader ${name}: ${field} ${why}`, {
    details: { field },
  });
}

function int(
  name: string,
  props: Record<string, unknown>,
  field: string,
  min: number,
  max: number,
  dflt: number,
): number {
  const raw = props[field];
  if (raw === undefined || raw === null || raw === '') return dflt;
  const v = typeof raw === 'string' ? Number(raw) : raw;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw invalid(name, field, `must be an integer ${min}…${max}`);
  return v;
}

/** Validate `edgeward-card-reader` properties: `path`, `baudRate`, `pattern` (regex with a `card` group), `door`, optional `cardBase`, `repeatMs`. */
export function parseCardReaderProps(name: string, props: Record<string, unknown>): CardReaderOptions {
  const path = props.path;
  if (typeof path !== 'string' || path === '') throw invalid(name, 'path', 'is required');
  const source = props.pattern === undefined || props.pattern === '' ? DEFAULT_CARD_PATTERN : props.pattern;
  if (typeof source !== 'string') throw invalid(name, 'pattern', 'must be a regular expression');
  let pattern: RegExp;
  try {
    pattern = new RegExp(source);
  } catch (err) {
    throw invalid(name, 'pattern', `is not a valid regular expression: ${(err as Error).message}`);
  }
  if (!source.includes('(?<card>')) throw invalid(name, 'pattern', 'must have a named group "card"');
  const cardBase = int(name, props, 'cardBase', 10, 16, 10);
  if (cardBase !== 10 && cardBase !== 16) throw invalid(name, 'cardBase', 'must be 10 or 16');
  return {
    path,
    baudRate: int(name, props, 'baudRate', 300, 4_000_000, 9600),
    pattern,
    cardBase,
    door: int(name, props, 'door', 0, 255, 0),
    repeatMs: int(name, props, 'repeatMs', 0, 60_000, 0),
  };
}

/** Register the `card-reader` family. */
export function register(registry: Registry): void {
  registry.registerFamily(
    'card-reader',
    (name, props, ctx) => new CardReaderDriver(name, parseCardReaderProps(name, props), ctx),
  );
}
