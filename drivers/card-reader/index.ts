import type { Registry } from '../../edge/registry.js';
import { propReader } from '../props.js';
import { CardReaderDriver, type CardReaderOptions, DEFAULT_CARD_PATTERN } from './driver.js';

export { CardReaderDriver, type CardReaderOptions, DEFAULT_CARD_PATTERN } from './driver.js';

/** Validate `edgeward-card-reader` properties: `path`, `baudRate`, `pattern` (regex with a `card` group), `door`, optional `cardBase`, `repeatMs`. */
export function parseCardReaderProps(name: string, props: Record<string, unknown>): CardReaderOptions {
  const { invalid, int } = propReader('card reader', name, props);
  const path = props.path;
  if (typeof path !== 'string' || path === '') throw invalid('path', 'is required');
  const source = props.pattern === undefined || props.pattern === '' ? DEFAULT_CARD_PATTERN : props.pattern;
  if (typeof source !== 'string') throw invalid('pattern', 'must be a regular expression');
  let pattern: RegExp;
  try {
    pattern = new RegExp(source);
  } catch (err) {
    throw invalid('pattern', `is not a valid regular expression: ${(err as Error).message}`);
  }
  if (!source.includes('(?<card>')) throw invalid('pattern', 'must have a named group "card"');
  const cardBase = int('cardBase', 10, 16, 10);
  if (cardBase !== 10 && cardBase !== 16) throw invalid('cardBase', 'must be 10 or 16');
  return {
    path,
    baudRate: int('baudRate', 300, 4_000_000, 9600),
    pattern,
    cardBase,
    door: int('door', 0, 255, 0),
    repeatMs: int('repeatMs', 0, 60_000, 0),
  };
}

/** Register the `card-reader` family. */
export function register(registry: Registry): void {
  registry.registerFamily(
    'card-reader',
    (name, props, ctx) => new CardReaderDriver(name, parseCardReaderProps(name, props), ctx),
  );
}
