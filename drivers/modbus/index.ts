import { EdgewardError } from '../../edge/errors.js';
import type { Registry } from '../../edge/registry.js';
import { ModbusBus, type ModbusBusOptions } from './bus.js';

export { ModbusBus, type ModbusBusOptions, type ModbusBusStats, type RequestOptions } from './bus.js';
export { crc16, crcOk, rtuFrame } from './crc.js';

function invalid(field: string, why: string): EdgewardError {
  return new EdgewardError('EDGE_CONFIG_INVALID', `modbus bus: ${field} ${why}`, { details: { field } });
}

function intProp(
  props: Record<string, unknown>,
  field: string,
  min: number,
  max: number,
  dflt?: number,
): number | undefined {
  const raw = props[field];
  if (raw === undefined || raw === null || raw === '') return dflt;
  const v = typeof raw === 'string' ? Number(raw) : raw;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw invalid(field, `must be an integer ${min}…${max}`);
  return v;
}

/**
 * Validate `edgeward-modbus-bus` properties (SPEC.md "Node-RED nodes"):
 * `transport` (rtu|tcp), `path`, `baudRate`, `parity`, `host`, `port`, `timeoutMs`.
 * Node-RED hands numbers as strings, so numeric strings are accepted.
 */
export function parseBusProps(props: Record<string, unknown>): ModbusBusOptions {
  const transport = props.transport ?? 'rtu';
  if (transport !== 'rtu' && transport !== 'tcp') throw invalid('transport', 'must be "rtu" or "tcp"');
  const timeoutMs = intProp(props, 'timeoutMs', 10, 60_000, 200);
  if (transport === 'tcp') {
    const host = props.host;
    if (typeof host !== 'string' || host === '') throw invalid('host', 'is required for tcp');
    return { transport, host, port: intProp(props, 'port', 1, 65535, 502), timeoutMs };
  }
  const path = props.path;
  if (typeof path !== 'string' || path === '') throw invalid('path', 'is required for rtu');
  const parity = props.parity ?? 'none';
  if (parity !== 'none' && parity !== 'even' && parity !== 'odd')
    throw invalid('parity', 'must be none, even or odd');
  return { transport, path, baudRate: intProp(props, 'baudRate', 300, 4_000_000, 9600), parity, timeoutMs };
}

/** Register the shared `modbus-bus` resource: one bus (one transaction queue) per config node. */
export function register(registry: Registry): void {
  registry.registerResource('modbus-bus', (_key, props, ctx) => {
    const bus = new ModbusBus(parseBusProps(props), { clock: ctx.clock, log: ctx.log });
    void bus.start();
    return bus;
  });
}
