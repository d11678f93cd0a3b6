import { register as registerCardReader } from '../drivers/card-reader/index.js';
import { register as registerDoor } from '../drivers/door/index.js';
import { register as registerOnvif } from '../drivers/onvif/index.js';
import type { Registry } from './registry.js';

/**
 * Every device family the runtime knows. Each driver folder exports a
 * `register(registry)`; add one line here per family.
 */
export function registerFamilies(registry: Registry): void {
  // drivers register here, e.g. registerModbus(registry); registerDoor(registry);
  registerDoor(registry); // modbus-bus resource + modbus-door family
  registerCardReader(registry);
  registerOnvif(registry); // onvif-camera family (node edgeward-camera)
}
