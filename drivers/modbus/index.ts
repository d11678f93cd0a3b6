import type { Registry } from '../../edge/registry.js';
import { propReader } from '../props.js';
import { ModbusBus, type ModbusBusOptions } from './bus.js';

export { ModbusBus, type ModbusBusOptions, type ModbusBusStats, type RequestOptions } from './bus.js';
export { crc16, crcOk, rtuFrame } from './crc.js';

/**
 * Validate `edgeward-modbus-bus` properties (SPEC.md "Node-RED nodes"):
 * `transport` (rtu|tcp), `path`, `baudRate`, `parity`, `stopBits` (1|2, optional), `host`, `port`, `timeoutMs`.
 * Node-RED hands numbers as strings, so numeric strings are accepted.
 */
export function parseBusProps(props: Record<string, unknown>): ModbusBusOptions {
  const { invalid, int } = propReader('modbus', 'bus', props);
  const transport = props.transport ?? 'rtu';
  if (transport !== 'rtu' && transport !== 'tcp') throw invalid('transport', 'must be "rtu" or "tcp"');
  const timeoutMs = int('timeoutMs', 10, 60_000, 200);
  if (transport === 'tcp') {
    const host = props.host;
    if (typeof host !== 'string' || host === '') throw invalid('host', 'is required for tcp');
    return { transport, host, port: int('port', 1, 65535, 502), timeoutMs };
  }
  const path = props.path;
  if (typeof path !== 'string' || path === '') throw invalid('path', 'is required for rtu');
  const parity = props.parity ?? 'none';
  if (parity !== 'none' && parity !== 'even' && parity !== 'odd')
    throw invalid('parity', 'must be none, even or odd');
  const stopBits = int('stopBits', 1, 2, 1) as 1 | 2;
  return { transport, path, baudRate: int('baudRate', 300, 4_000_000, 9600), parity, stopBits, timeoutMs };
}

/**
 * The line a bus config names, whichever config node names it:
 * `tcp://host:port`, or `rtu:` and the serial path as configured. Not its
 * real path: /dev/serial/by-id/… links exist because the ttyUSBn behind them
 * changes across reboots, and keyed by that, one line's unit read the other
 * line's saved counter after a reboot and replayed its old events (seen in a
 * review). Two config nodes naming one port by two names cannot both open it
 * anyway (the port is locked).
 */
export function busEndpoint(opts: ModbusBusOptions): string {
  if (opts.transport === 'tcp') return `tcp://${(opts.host ?? '').toLowerCase()}:${opts.port ?? 502}`;
  return `rtu:${opts.path ?? ''}`;
}

/** Register the shared `modbus-bus` resource: one bus (one transaction queue) per config node. */
export function register(registry: Registry): void {
  registry.registerResource('modbus-bus', (_key, props, ctx) => {
    const bus = new ModbusBus(parseBusProps(props), { clock: ctx.clock, log: ctx.log });
    void bus.start();
    return bus;
  });
}
