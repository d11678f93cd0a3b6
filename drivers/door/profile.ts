import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EventType } from '../../edge/envelope.js';
import { EdgewardError } from '../../edge/errors.js';

/** What a ring event code means: its event type, whether it carries a card, and extra data fields. */
export interface DoorEventCode {
  type: EventType;
  card?: boolean;
  reason?: string;
  via?: string;
}

/**
 * A door controller's register map (a JSON file in hardware/profiles/).
 * A second vendor is another file with the same shape, not new code.
 */
export interface DoorProfile {
  profile: string;
  family: string;
  deviceType: number;
  doors: { min: number; max: number; stride: number };
  discreteInputs: { contact: number; requestToExit: number; lockReleased: number; tamper: number };
  coils: { unlockPulse: number; holdUnlocked: number };
  holdingRegisters: { unlockSeconds: number; heldOpenSeconds: number };
  inputRegisters: {
    eventCounter: number;
    ring: {
      base: number;
      size: number;
      stride: number;
      fields: { code: number; door: number; cardHigh: number; cardLow: number };
    };
    deviceType: number;
    firmware: number;
  };
  eventCodes: Record<string, DoorEventCode>;
}

/** hardware/profiles, found from this file whether run from source or from dist/. */
export function profilesDir(): string {
  const fromSource = join(__dirname, '..', '..', 'hardware', 'profiles');
  return __dirname.includes(`${join('dist', 'drivers')}`)
    ? join(__dirname, '..', '..', '..', 'hardware', 'profiles')
    : fromSource;
}

const NAME_RE = /^[a-z0-9][a-z0-9-]{0,63}$/;

/** Load and check a door profile by name (`generic-door`) or from an explicit directory. */
export function loadDoorProfile(name: string, dir: string = profilesDir()): DoorProfile {
  // A technician's typo (generic_door) is told which profiles there are.
  const known = () => {
    try {
      const names = readdirSync(dir)
        .filter((f) => f.endsWith('.json'))
        .map((f) => f.slice(0, -5));
      return names.length > 0 ? ` (profiles here: ${names.join(', ')})` : '';
    } catch {
      return '';
    }
  };
  if (!NAME_RE.test(name)) {
    throw new EdgewardError('EDGE_PROFILE_INVALID', `bad profile name "${name}": lowercase letters, digits and -${known()}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, `${name}.json`), 'utf8'));
  } catch (err) {
    throw new EdgewardError(
      'EDGE_PROFILE_NOT_FOUND',
      `cannot read profile "${name}": ${(err as Error).message}${known()}`,
      { cause: err },
    );
  }
  const p = raw as DoorProfile;
  const num = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 0;
  const ok =
    p &&
    num(p.deviceType) &&
    num(p.doors?.max) &&
    num(p.doors?.stride) &&
    num(p.discreteInputs?.contact) &&
    num(p.coils?.unlockPulse) &&
    num(p.holdingRegisters?.unlockSeconds) &&
    num(p.inputRegisters?.eventCounter) &&
    num(p.inputRegisters?.ring?.base) &&
    num(p.inputRegisters?.ring?.size) &&
    p.inputRegisters.ring.size > 0 &&
    typeof p.eventCodes === 'object';
  if (!ok)
    throw new EdgewardError('EDGE_PROFILE_INVALID', `profile "${name}" lacks required register map fields`);
  return p;
}
