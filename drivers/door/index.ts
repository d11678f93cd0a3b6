import type { DriverContext } from '../driver.js';
import { EdgewardError } from '../../edge/errors.js';
import type { Registry } from '../../edge/registry.js';
import type { ModbusBus } from '../modbus/bus.js';
import { register as registerModbus } from '../modbus/index.js';
import { type DoorDriverOptions, ModbusDoorDriver } from './driver.js';
import { loadDoorProfile } from './profile.js';

export { ModbusDoorDriver, type DoorDriverOptions, type BusProvider } from './driver.js';
export { type DoorProfile, loadDoorProfile } from './profile.js';

function invalid(name: string, field: string, why: string): EdgewardError {
  return new EdgewardError('EDGE_CONFIG_INVALID', `door ${name}: ${field} ${why}`, { details: { field } });
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

/** Validate `edgeward-door` properties: `unitId`, `profile` (generic-door), `doors` (1–4), `pollMs`, optional `offlineAfter`, `maxBackoffMs`. */
export function parseDoorProps(name: string, props: Record<string, unknown>): DoorDriverOptions {
  const profileName = props.profile ?? 'generic-door';
  if (typeof profileName !== 'string') throw invalid(name, 'profile', 'must be a profile name');
  const profile = loadDoorProfile(profileName);
  return {
    unitId: int(name, props, 'unitId', 1, 247, 1),
    profile,
    doors: int(name, props, 'doors', profile.doors.min, profile.doors.max, 1),
    pollMs: int(name, props, 'pollMs', 10, 3_600_000, 200),
    offlineAfter: int(name, props, 'offlineAfter', 1, 100, 3),
    maxBackoffMs: int(name, props, 'maxBackoffMs', 100, 600_000, 5000),
  };
}

/**
 * Register the `modbus-door` family. Props: the door's own (see parseDoorProps),
 * `bus` (the key of the shared bus, the config node id) and `busConfig` (that
 * bus's properties, used by whichever door acquires the bus first).
 */
export function register(registry: Registry): void {
  registerModbus(registry);
  registry.registerFamily('modbus-door', (name, props, ctx: DriverContext, reg) => {
    const opts = parseDoorProps(name, props);
    const key = props.bus;
    if (typeof key !== 'string' || key === '') throw invalid(name, 'bus', 'is required');
    const busConfig = (props.busConfig ?? {}) as Record<string, unknown>;
    return new ModbusDoorDriver(
      name,
      opts,
      () => reg.acquire<ModbusBus>('modbus-bus', key, busConfig, ctx),
      ctx,
    );
  });
}
