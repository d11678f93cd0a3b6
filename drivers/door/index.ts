import type { DriverContext } from '../driver.js';
import type { Registry } from '../../edge/registry.js';
import type { ModbusBus } from '../modbus/bus.js';
import { busEndpoint, parseBusProps, register as registerModbus } from '../modbus/index.js';
import { propReader } from '../props.js';
import { type DoorDriverOptions, ModbusDoorDriver } from './driver.js';
import { loadDoorProfile } from './profile.js';

export { ModbusDoorDriver, type DoorDriverOptions, type BusProvider } from './driver.js';
export { type DoorProfile, loadDoorProfile } from './profile.js';

/** Validate `edgeward-door` properties: `unitId`, `profile` (generic-door), `doors` (1–4), `pollMs`, optional `offlineAfter`, `maxBackoffMs`. */
export function parseDoorProps(name: string, props: Record<string, unknown>): DoorDriverOptions {
  const { invalid, int } = propReader('door', name, props);
  const profileName = props.profile ?? 'generic-door';
  if (typeof profileName !== 'string') throw invalid('profile', 'must be a profile name');
  const profile = loadDoorProfile(profileName);
  return {
    unitId: int('unitId', 1, 247, 1),
    profile,
    doors: int('doors', profile.doors.min, profile.doors.max, 1),
    pollMs: int('pollMs', 10, 3_600_000, 200),
    offlineAfter: int('offlineAfter', 1, 100, 3),
    maxBackoffMs: int('maxBackoffMs', 100, 600_000, 5000),
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
    if (typeof key !== 'string' || key === '')
      throw propReader('door', name, props).invalid('bus', 'is required');
    const busConfig = (props.busConfig ?? {}) as Record<string, unknown>;
    // Checked now, naming the field: a bad bus found only when the first door acquires it left
    // every door on it showing "connecting" for good, the reason in the log alone.
    const endpoint = busEndpoint(parseBusProps(busConfig));
    return new ModbusDoorDriver(
      name,
      { ...opts, busKey: key, endpoint },
      () => reg.acquire<ModbusBus>('modbus-bus', key, busConfig, ctx),
      ctx,
    );
  });
}
