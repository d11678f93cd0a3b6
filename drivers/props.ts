import { EdgewardError } from '../edge/errors.js';

/**
 * Checks for one device's node/config properties, shared by the driver
 * families' parse*Props functions. Errors are EDGE_CONFIG_INVALID with the
 * message `<kind> <name>: <field> <why>` and `details.field`, so the editor
 * and `edgeward check` can name the property.
 */
export interface PropReader {
  /** The error for a bad `field`. */
  invalid(field: string, why: string): EdgewardError;
  /**
   * An optional integer property in min…max: absent, null or '' gives `dflt`;
   * a numeric string (Node-RED stores inputs as strings) is accepted.
   */
  int(field: string, min: number, max: number, dflt: number): number;
}

/** A {@link PropReader} over `props` of the device `name`; `kind` starts the messages ('door', 'card reader'). */
export function propReader(kind: string, name: string, props: Record<string, unknown>): PropReader {
  const invalid = (field: string, why: string) =>
    new EdgewardError('EDGE_CONFIG_INVALID', `${kind} ${name}: ${field} ${why}`, { details: { field } });
  return {
    invalid,
    int(field, min, max, dflt) {
      const raw = props[field];
      if (raw === undefined || raw === null || raw === '') return dflt;
      const v = typeof raw === 'string' ? Number(raw) : raw;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
        throw invalid(field, `must be an integer ${min}…${max}`);
      return v;
    },
  };
}
