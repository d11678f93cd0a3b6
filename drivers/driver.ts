import type { EventBus } from '../edge/bus.js';
import type { Clock } from '../edge/clock.js';
import type { EventInput } from '../edge/envelope.js';
import type { DriverState } from '../edge/driver-state.js';
import type { Logger } from '../edge/log.js';

/**
 * What the runtime hands every driver: I/O, clock, logger and the bus come in
 * through this one door, so tests pass fakes or real peers the same way.
 */
export interface DriverContext {
  bus: EventBus;
  clock: Clock;
  log: Logger;
  /** Emit an event (goes to the bus, then rules and the outbox). */
  emit(event: EventInput): void;
  /**
   * Count one error this device met (a failed poll, a camera fault, a line
   * that did not read, a port that did not open) in
   * `edgeward_driver_errors_total{device, code}`: an operator sees a flaky
   * line before the device goes offline. `code` is an error code or errno.
   * The runtime's context has it; tests that do not count may leave it out.
   */
  error?(code: string): void;
  /** Site key for card pseudonyms (`privacy.siteKey`), and whether raw cards are allowed. */
  privacy: { siteKey: string; rawCards: boolean };
  /**
   * Small values of this device kept across restarts and redeploys (a door
   * controller's event counter, so events logged while the edge was down are
   * read, not skipped). Absent in tests that do not need it.
   */
  state?: DriverState;
  /**
   * Small values about physical units, shared by every device and kept
   * across restarts and redeploys: keyed by the unit (its line and address),
   * so a renamed node, or one imported under another name, finds what its
   * predecessor on that unit left. Absent in tests that do not need it.
   */
  unitState?: DriverState;
}

export interface CommandRequest {
  id: string;
  action: string;
  target: string;
  args: Record<string, unknown>;
}

/**
 * A device family's driver. Constructors only assign; `start()` opens I/O and
 * must not throw for a device fault (report it as `device.offline` instead);
 * `stop()` releases everything within 15 s.
 */
export interface Driver {
  /** Device name: the `source.device` of its events and the `target` of commands. */
  readonly name: string;
  /** Driver id, the `source.driver` of its events (`modbus-door`, `onvif`, …). */
  readonly driver: string;
  /** Actions this driver executes (`door.unlock`, …). */
  readonly actions: readonly string[];
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Execute a verified command. Rejects with an EdgewardError on failure. */
  execute(cmd: CommandRequest): Promise<Record<string, unknown> | undefined>;
  /** Online and last seen, for status and metrics; `reason`: why it is offline (an error code or errno); `note`: online, but something to check. */
  state(): { online: boolean; lastSeen?: string; reason?: string; note?: string };
  /**
   * What this driver must be alone to drive (a Modbus unit on a bus): the
   * runtime refuses a second driver with the same claim.
   */
  readonly exclusive?: string;
}
