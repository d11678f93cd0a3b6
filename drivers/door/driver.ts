import type { CommandRequest, Driver, DriverContext } from '../driver.js';
import type { DriverState } from '../../edge/driver-state.js';
import type { EventInput } from '../../edge/envelope.js';
import { pseudonymiseCard } from '../../edge/envelope.js';
import { EdgewardError } from '../../edge/errors.js';
import type { Logger } from '../../edge/log.js';
import { PacedCount } from '../../edge/paced.js';
import type { ModbusBus } from '../modbus/bus.js';
import type { DoorProfile } from './profile.js';

/** How a door driver gets its bus: acquired in start(), released in stop() (the bus is shared by every unit on the line). */
export type BusProvider = () => { resource: ModbusBus; release(): Promise<void> };

/** Settings of one door controller (the `edgeward-door` node). */
export interface DoorDriverOptions {
  unitId: number;
  profile: DoorProfile;
  /** Doors on this controller, 1…profile.doors.max. */
  doors: number;
  /** Poll interval while online (ms). */
  pollMs: number;
  /** Consecutive failed polls before device.offline (default 3). */
  offlineAfter?: number;
  /** Longest pause between polls of a failing unit (default 5000 ms). */
  maxBackoffMs?: number;
  /** The bus's key (its config node id). */
  busKey?: string;
  /** How long stop() waits for the command in progress (default 5000 ms; tests). */
  stopCommandWaitMs?: number;
  /**
   * The line the bus config names, whichever config node names it
   * (`tcp://host:port`, `rtu:/dev/…`): with the unit id, what no other door
   * driver may claim, and the key of what is kept about the unit.
   */
  endpoint?: string;
}

/** How long stop() waits for the command in progress (see stop). */
const STOP_COMMAND_WAIT_MS = 5000;

/** Unchanged door state is saved again this often, to keep its time fresh for the restart check. */
const KEEP_REFRESH_MS = 60_000;

interface DoorState {
  contact: boolean;
  released: boolean;
  tamper: boolean;
}

/** The door states a driver saved, if they are that (one per door, three booleans each). */
function savedDoors(v: unknown, doors: number): DoorState[] | undefined {
  if (!Array.isArray(v) || v.length !== doors) return undefined;
  const ok = v.every(
    (d) => d !== null && typeof d === 'object' && ['contact', 'released', 'tamper'].every((k) => typeof (d as Record<string, unknown>)[k] === 'boolean'),
  );
  return ok ? v.map((d: DoorState) => ({ contact: d.contact, released: d.released, tamper: d.tamper })) : undefined;
}

const ACTIONS = ['door.unlock', 'door.lock', 'door.hold'] as const;
/** More events a second than a door controller logs, sustained (for `implausible`): a flood of 40 while a quick restart took 2 s is still read. */
const MAX_EVENTS_PER_S = 50;
/**
 * While the driver runs, a counter that moved further than this since the
 * last read is no burst of events: with MAX_EVENTS_PER_S alone, 100 events
 * logged between two polls (a simulator flood) would read as a restart.
 */
const MAX_BURST_EVENTS = 1000;

/**
 * A Modbus door access controller (1–4 doors) read through its profile's
 * register map. Each poll reads the discrete inputs (door contact, lock,
 * tamper) and the event counter, then the new entries of the event ring.
 * A unit that stops answering is polled with exponential backoff, so it
 * costs its bus at most one timeout per backoff period.
 */
export class ModbusDoorDriver implements Driver {
  readonly driver = 'modbus-door';
  readonly actions = ACTIONS;
  /** One driver per unit and bus: two would each report every event (see Driver.exclusive). */
  readonly exclusive: string;
  private bus?: ModbusBus;
  private release?: () => Promise<void>;
  private unsubscribe?: () => void;
  private timer?: NodeJS.Timeout;
  private running = false;
  private polling = false;
  private online?: boolean;
  private lastSeen?: string;
  private failures = 0;
  private doorsState?: DoorState[];
  private counter?: number;
  /** The code of the last failed poll: why the unit is offline. */
  private lastError?: string;
  /** Commands one at a time: an unlock's pulse-length write, pulse and restore must not interleave with another's. */
  private commands: Promise<unknown> = Promise.resolve();
  /**
   * The unit's own pulse length (holding register 0) to write back, when an
   * unlock with `args.seconds` could not restore it: retried before each poll,
   * or every later card swipe would hold the door for the command's seconds.
   */
  private pulseRestore?: number;
  /** Bumped by every timed unlock: a restore that began before one does not clear its record. */
  private pulseGen = 0;
  /** When the restored counter was saved (the clock's ms), until the first poll has judged it. */
  private savedAt?: number;
  /** When the counter was last read (a poll that got it), while running. */
  private lastReadAt?: number;
  private readonly glitchLog = new PacedCount(60_000);
  /** Whether anything was saved about this unit before this driver started (see start). */
  private knownBefore = false;
  /** What keep() saved last, and when. */
  private keptCounter?: number;
  private keptDoors?: string;
  private keptAt = Number.NEGATIVE_INFINITY;
  private commandRunning = false;
  /** Settles when the poll in progress (if any) ends. */
  private polled: Promise<void> = Promise.resolve();
  private readonly log: Logger;
  private readonly counterKey: string;
  private readonly legacyCounterKey?: string;
  private readonly unitState?: DriverState;
  /** Driver-state key of a pulse length a timed unlock must still put back (see pulseFor). */
  private readonly pulseKey: string;

  constructor(
    readonly name: string,
    private readonly opts: DoorDriverOptions,
    private readonly getBus: BusProvider,
    private readonly ctx: DriverContext,
  ) {
    this.log = ctx.log.child({ module: 'drivers/door', device: name, unit: opts.unitId });
    // Per line and unit, whatever the node is called: a node moved to another bus or unit
    // starts from that controller's counter, a renamed one keeps it. Without an endpoint
    // (tests) or the shared store, per device as before.
    const byUnit = opts.endpoint !== undefined && ctx.unitState !== undefined;
    this.unitState = byUnit ? ctx.unitState : ctx.state;
    const where = byUnit ? `${opts.endpoint}#unit${opts.unitId}` : `${opts.busKey ?? 'bus'}#unit${opts.unitId}`;
    this.counterKey = `eventCounter@${where}`;
    this.pulseKey = `pulseRestore@${where}`;
    // Where the counter was kept before it was kept per unit (a device's own state).
    this.legacyCounterKey = byUnit ? `eventCounter@${opts.busKey ?? 'bus'}#unit${opts.unitId}` : undefined;
    // Two config nodes for one line (an imported flow) must not drive one unit twice: every
    // alarm came twice, under two names.
    this.exclusive = `modbus unit ${opts.unitId} on ${opts.endpoint ?? `bus ${opts.busKey ?? '?'}`}`;
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    // Where this unit's event log was read up to before a restart or redeploy: what it
    // logged meanwhile is read at the first poll (seen: a forced door while the edge
    // restarted was never reported). Kept per unit, so a device rewired to another unit
    // starts from what that unit says.
    const saved = (this.unitState?.get(this.counterKey) ??
      (this.legacyCounterKey !== undefined ? this.ctx.state?.get(this.legacyCounterKey) : undefined)) as
      | { counter?: unknown; at?: unknown; doors?: unknown }
      | undefined;
    const c = saved?.counter;
    if (typeof c === 'number' && Number.isInteger(c) && c >= 0 && c <= 0xffff) {
      this.counter = c;
      this.savedAt = typeof saved?.at === 'number' ? saved.at : undefined;
    }
    // The inputs as last reported: what changed while no driver polled (a deploy, a
    // restart) is reported at the first poll (seen: a tamper tripped during a deploy
    // never raised, and its clearing later reported a tamper nobody had heard of).
    this.doorsState = savedDoors(saved?.doors, this.opts.doors);
    // Something was saved, but no door states fit (a record from before they were kept, a
    // changed door count): the first poll is a plain baseline, as it was then. Only a unit
    // nothing was ever saved about raises a tamper found active (an upgrade re-raised
    // tampers reported weeks before; seen in a review).
    this.knownBefore = saved !== undefined;
    // A predecessor's timed unlock whose pulse length never got back (its bus closed, the
    // process died): put back at the first poll, and never mistaken for the unit's own.
    const pending = this.unitState?.get(this.pulseKey);
    if (typeof pending === 'number' && Number.isInteger(pending) && pending >= 0 && pending <= 0xffff) this.pulseRestore = pending;
    const { resource, release } = this.getBus();
    this.bus = resource;
    this.release = release;
    // A replugged bus is probed at once instead of waiting out each unit's backoff.
    this.unsubscribe = resource.onConnection((up) => {
      if (up && this.failures > 0) this.schedule(0);
    });
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) this.ctx.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.unsubscribe?.();
    // A poll on its way finishes first (it emits and saves nothing once stopped), so the
    // counter saved is the one whose events were reported: a successor starts from there.
    await this.polled;
    // So does a command: a timed unlock cut off by the bus closing under it left the
    // command's pulse length in the unit for every later card (seen: 30 s after a deploy).
    // Bounded: a silent unit can take a few timeouts per write, and Node-RED gives a closing node 15 s.
    let waited: NodeJS.Timeout | undefined;
    await Promise.race([this.commands, new Promise<void>((resolve) => (waited = setTimeout(resolve, this.opts.stopCommandWaitMs ?? STOP_COMMAND_WAIT_MS)))]);
    clearTimeout(waited);
    // Not while a command still runs (stuck past the wait): clearing its record now would leave
    // the unit with the command's length and nothing saved to put it back.
    if (this.pulseRestore !== undefined && this.bus && !this.commandRunning) await this.restorePulse(this.bus);
    const release = this.release;
    this.release = undefined;
    this.bus = undefined;
    await release?.();
  }

  state(): { online: boolean; lastSeen?: string; reason?: string } {
    return { online: this.online === true, lastSeen: this.lastSeen, ...(this.online === false && this.lastError ? { reason: this.lastError } : {}) };
  }

  execute(cmd: CommandRequest): Promise<Record<string, unknown> | undefined> {
    const run = this.commands.then(() => this.executeNow(cmd));
    this.commands = run.catch(() => undefined);
    return run;
  }

  private stopping(): EdgewardError {
    return new EdgewardError('EDGE_DRIVER_STOPPED', `${this.name} is stopping: command not run`);
  }

  private async executeNow(cmd: CommandRequest): Promise<Record<string, unknown> | undefined> {
    // Queued behind a command when the driver was told to stop (a deploy): not started then.
    if (!this.running) throw this.stopping();
    this.commandRunning = true;
    try {
      return await this.executeCommand(cmd);
    } finally {
      this.commandRunning = false;
    }
  }

  private async executeCommand(cmd: CommandRequest): Promise<Record<string, unknown> | undefined> {
    const bus = this.bus;
    if (!bus) throw new EdgewardError('EDGE_DRIVER_STOPPED', `${this.name} is not running`);
    const door = cmd.args.door ?? 0;
    if (typeof door !== 'number' || !Number.isInteger(door) || door < 0 || door >= this.opts.doors) {
      throw new EdgewardError(
        'EDGE_COMMAND_INVALID',
        `${this.name}: args.door must be 0…${this.opts.doors - 1}`,
      );
    }
    const p = this.opts.profile;
    const unit = this.opts.unitId;
    const base = p.doors.stride * door;
    const high = { priority: 'high' as const };
    switch (cmd.action) {
      case 'door.unlock': {
        const seconds = cmd.args.seconds;
        if (seconds !== undefined) {
          if (typeof seconds !== 'number' || !Number.isInteger(seconds) || seconds < 1 || seconds > 3600) {
            throw new EdgewardError(
              'EDGE_COMMAND_INVALID',
              `${this.name}: args.seconds must be an integer 1…3600`,
            );
          }
          await this.pulseFor(bus, seconds, base + p.coils.unlockPulse);
        } else {
          // Strict: a pulse with a timed unlock's length still in the unit (3600 s) is no plain
          // unlock. A failed restore used to be logged and the coil written anyway: ok reported,
          // the door open an hour (found by a review on a lossy line).
          await this.restorePulse(bus, this.pulseRestore, true);
          await bus.writeCoil(unit, base + p.coils.unlockPulse, true, high);
        }
        this.log.info({ door, seconds, command: cmd.id }, 'door unlocked by command');
        return { door, ...(seconds === undefined ? {} : { seconds }) };
      }
      case 'door.lock':
        await bus.writeCoil(unit, base + p.coils.holdUnlocked, false, high);
        await bus.writeCoil(unit, base + p.coils.unlockPulse, false, high);
        this.log.info({ door, command: cmd.id }, 'door locked by command');
        return { door };
      case 'door.hold': {
        // args.hold (default true) holds the door unlocked; hold:false or release:true returns it to normal.
        // Booleans only: "false", 0 or null from a flow must not leave a door held open.
        const { hold: h, release: r } = cmd.args as { hold?: unknown; release?: unknown };
        if ((h !== undefined && typeof h !== 'boolean') || (r !== undefined && typeof r !== 'boolean')) {
          throw new EdgewardError('EDGE_COMMAND_INVALID', `${this.name}: args.hold and args.release must be true or false`);
        }
        const hold = r === true ? false : h !== false;
        await bus.writeCoil(unit, base + p.coils.holdUnlocked, hold, high);
        this.log.info(
          { door, hold, command: cmd.id },
          hold ? 'door held unlocked by command' : 'door hold released by command',
        );
        return { door, hold };
      }
      default:
        throw new EdgewardError('EDGE_COMMAND_UNSUPPORTED', `${this.name} does not execute ${cmd.action}`);
    }
  }

  /**
   * One unlock pulse of `seconds` (SPEC: args.seconds is the pulse): the pulse
   * length is the unit's holding register 0, which card swipes use too, so it
   * is set for this pulse and put back right after the coil write (the unit
   * takes the length when the pulse starts). Measured before this: an unlock
   * of 3600 s left every later granted card holding its door open for an hour.
   */
  private async pulseFor(bus: ModbusBus, seconds: number, coil: number): Promise<void> {
    const unit = this.opts.unitId;
    const reg = this.opts.profile.holdingRegisters.unlockSeconds;
    const high = { priority: 'high' as const };
    const [own] = this.pulseRestore !== undefined ? [this.pulseRestore] : await bus.readHoldingRegisters(unit, reg, 1, high);
    this.pulseRestore = own;
    this.pulseGen++;
    // Written ahead, and on disk before the command's length goes out: if the length is not
    // put back by this driver (its bus closed, the process killed), its successor does it.
    // Left to the state's 1 s save, a kill -9 mid-command left nothing (seen in a review).
    this.unitState?.set(this.pulseKey, own);
    if (this.unitState?.persist && !(await this.unitState.persist())) {
      throw new EdgewardError(
        'EDGE_STATE_NOT_WRITTEN',
        `${this.name}: a timed unlock needs the unit's own pulse length on disk first, and the data dir cannot be written now (a plain unlock works)`,
      );
    }
    // Stopped while the length was being written (a slow SD card, a deploy): not now, or the
    // unit kept the command's length with nobody left to put it back (seen in a review).
    if (!this.running) throw this.stopping();
    await bus.writeRegister(unit, reg, seconds, high);
    await bus.writeCoil(unit, coil, true, high);
    await this.restorePulse(bus, own);
  }

  /**
   * Write the unit's own pulse length back if a command left another there
   * (`own`: the command's own record of it); a failure is retried later, or
   * thrown when `strict` (the caller must not pulse with the length left there).
   */
  private async restorePulse(bus: ModbusBus, own = this.pulseRestore, strict = false): Promise<void> {
    if (own === undefined) return;
    // A timed unlock that began while this write was on the wire has its own length out
    // there: this restore must not clear its record (same number, another command; seen in
    // a review: the unit kept 3600 with nothing left to put it back).
    const gen = this.pulseGen;
    try {
      await bus.writeRegister(this.opts.unitId, this.opts.profile.holdingRegisters.unlockSeconds, own, { priority: 'high' });
      if (this.pulseRestore !== own || this.pulseGen !== gen) return;
      this.pulseRestore = undefined;
      this.unitState?.set(this.pulseKey, undefined);
    } catch (err) {
      this.log.warn({ err, seconds: own }, 'unlock pulse length not restored yet; retrying before the next poll');
      if (strict) throw err;
    }
  }

  private schedule(delayMs: number): void {
    if (!this.running) return;
    if (this.timer) this.ctx.clock.clearTimeout(this.timer);
    this.timer = this.ctx.clock.setTimeout(() => {
      this.timer = undefined;
      void this.poll();
    }, delayMs);
  }

  private async poll(): Promise<void> {
    if (!this.running || this.polling || !this.bus) return;
    this.polling = true;
    const started = this.ctx.clock.now();
    let next: number;
    let failed = false;
    let done: () => void = () => undefined;
    this.polled = new Promise<void>((resolve) => {
      done = resolve;
    });
    try {
      await this.pollOnce(this.bus);
      this.succeeded();
      next = this.opts.pollMs;
    } catch (err) {
      next = this.failed(err as Error);
      failed = true;
    } finally {
      this.polling = false;
      done();
    }
    // Fixed rate: the poll's own duration counts against the interval. Not after a failure:
    // the time a dead unit's poll waited on a busy bus and its timeout came off its backoff,
    // and it was polled again at once (1.47 timeouts/s where 5 dead units should cost 1.0).
    this.schedule(failed ? next : Math.max(0, next - (this.ctx.clock.now() - started)));
  }

  private async pollOnce(bus: ModbusBus): Promise<void> {
    const p = this.opts.profile;
    const unit = this.opts.unitId;
    const di = p.discreteInputs;
    const width =
      p.doors.stride * (this.opts.doors - 1) +
      Math.max(di.contact, di.requestToExit, di.lockReleased, di.tamper) +
      1;
    // One after the other: a unit that does not answer costs one timeout per poll, not two.
    // The poll of a unit that did not answer the last one is a probe: after the live units'
    // polls, one per gap (see ModbusBus.nextJob). From the first failure: ten units dead at
    // start took 30 timeouts (15 s of the line) to be marked offline as normal polls.
    const [counter] = await bus.readInputRegisters(unit, p.inputRegisters.eventCounter, 1, {
      priority: this.failures > 0 ? 'probe' : 'normal',
    });
    // Not while a command runs: its restore would land between the command's length write and
    // its pulse (measured: 13 of 20 timed unlocks pulsed for the unit's own length).
    if (this.pulseRestore !== undefined && !this.commandRunning) await this.restorePulse(bus);
    const bits = await bus.readDiscreteInputs(unit, 0, width);
    const savedAt = this.savedAt;
    this.savedAt = undefined;
    const readAt = this.lastReadAt;
    this.lastReadAt = this.ctx.clock.now();
    let from = this.counter;
    if (from !== undefined && counter !== from) {
      const back = ((counter - from) & 0xffff) >= 0x8000;
      const jumped = this.movedTooFar(counter, from, savedAt, readAt);
      if (back || jumped) {
        // A restarted controller counts again from 0: its counter is what it logged since, which
        // the time since the last read must allow. A counter read 2 below the last (a caching
        // gateway, a torn read) is no restart: reading the ring from 0 re-emitted old events,
        // door.forced among them, as new (found by a review). That reading is ignored.
        if (savedAt === undefined && readAt !== undefined && this.implausible(counter, readAt, 0, 0)) {
          const readings = this.glitchLog.hit(this.ctx.clock.now());
          if (readings !== undefined) {
            this.log.warn({ last: from, counter, readings }, 'device event counter read neither as new events nor as a restart: this reading ignored');
          }
          if (this.running) this.applyInputs(bits);
          return;
        }
        // A controller that restarted counts again from 0: what it logged since is entries 1…counter
        // (seen: 5 events after a restart lost, a warning in the log the only trace).
        this.log.warn({ saved: from, counter }, 'device event counter went back: controller restarted; reading its ring from 0');
        from = 0;
      }
    }
    const to = from !== undefined && counter !== from ? await this.readRing(bus, from, counter) : counter;
    // Stopped meanwhile (a redeploy): nothing reported, nothing saved; the successor reads it.
    if (!this.running) return;
    this.counter = to;
    this.applyInputs(bits);
    this.keep();
  }

  /**
   * Save the counter and the door states when they changed, else refresh the
   * time they were saved at once a minute (what `implausible` measures from).
   * Saved at every poll, a quiet door rewrote driver-state.json once a second
   * with an fsync: 86,400 writes a day to an SD card.
   */
  private keep(): void {
    const now = this.ctx.clock.now();
    const doors = JSON.stringify(this.doorsState);
    if (this.counter === this.keptCounter && doors === this.keptDoors && now - this.keptAt < KEEP_REFRESH_MS) return;
    this.unitState?.set(this.counterKey, { counter: this.counter, at: now, doors: this.doorsState });
    this.keptCounter = this.counter;
    this.keptDoors = doors;
    this.keptAt = now;
  }

  /**
   * Whether the unit's counter moved further since the edge saved it than a
   * door controller can log in the time that passed: a controller restarted
   * with the edge (a power cut) counts again from 0, and a saved 40,000
   * against a new 3 would read as 25,539 events, the ring's 32 stale entries
   * among them as new (measured). Then its counter is taken as it is.
   */
  private implausible(counter: number, savedAt: number, floor = 0, from = this.counter ?? counter): boolean {
    const n = (counter - from) & 0xffff;
    const seconds = Math.max(0, (this.ctx.clock.now() - savedAt) / 1000);
    return n > this.opts.profile.inputRegisters.ring.size && n > floor && n > seconds * MAX_EVENTS_PER_S;
  }

  /**
   * Whether the counter moved forward further than a controller logs in the
   * time since it was last known, so the controller restarted. At start,
   * against what was saved (the controller may have restarted with the
   * edge); while running, against the last read: the controller alone
   * restarted. Before, only a counter that went back was taken as a restart
   * while running, so one at 40,000 restarting to 3 read as 25,539 new
   * events, the ring's stale door.forced among them (found by a review).
   */
  private movedTooFar(counter: number, from: number, savedAt: number | undefined, readAt: number | undefined): boolean {
    if (savedAt === undefined) return readAt !== undefined && this.implausible(counter, readAt, MAX_BURST_EVENTS);
    if (this.ctx.clock.now() >= savedAt) return this.implausible(counter, savedAt);
    // The box booted with its clock behind the save (no RTC, before NTP): how long it was off is
    // unknown, so a move is a restart only if the counter is one a restarted controller has (what
    // the ring holds). It read as 0 s: 40 new events were a restart, 5,008 counted lost (found by
    // a review).
    const ring = this.opts.profile.inputRegisters.ring.size;
    return ((counter - from) & 0xffff) > ring && counter <= ring;
  }

  /**
   * Read ring events after `from` up to `to` (u16 counters, wrapping); report
   * what the ring overwrote. The counter is read again after the entries: an
   * event logged meanwhile may have overwritten the oldest entry read (seen:
   * card 0 gone and card 777 emitted twice). Those entries are dropped and
   * counted as lost; the new events are read at the next poll. Resolves with
   * the counter the events were read up to.
   */
  private async readRing(bus: ModbusBus, from: number, to: number): Promise<number> {
    const ring = this.opts.profile.inputRegisters.ring;
    const n = (to - from) & 0xffff;
    let lost = Math.max(0, n - ring.size);
    const ks: number[] = [];
    for (let i = lost + 1; i <= n; i++) ks.push((from + i) & 0xffff);
    // One request per entry: the bus merges adjacent entries into as few transactions as the limits allow.
    const entries = await Promise.all(
      ks.map((k) =>
        bus.readInputRegisters(this.opts.unitId, ring.base + ring.stride * (k % ring.size), ring.stride),
      ),
    );
    const [after] = await bus.readInputRegisters(this.opts.unitId, this.opts.profile.inputRegisters.eventCounter, 1);
    // Entries k whose slot events up to `after` have reused: k <= after - size.
    const overwritten = Math.min(ks.length, Math.max(0, ((after - to) & 0xffff) - (ring.size - ks.length)));
    lost += overwritten;
    if (!this.running) return to; // stopped meanwhile: the successor reads these
    if (lost > 0) {
      this.log.warn({ lost }, 'device event ring overran between polls');
      this.emit({ type: 'edge.events_lost', data: { count: lost, unit: this.opts.unitId } });
    }
    for (const e of entries.slice(overwritten)) this.ringEvent(e);
    return to;
  }

  private ringEvent(e: number[]): void {
    const f = this.opts.profile.inputRegisters.ring.fields;
    const code = e[f.code];
    const meaning = this.opts.profile.eventCodes[String(code)];
    if (!meaning) {
      this.log.warn({ code }, 'unknown event code in device ring');
      return;
    }
    const data: Record<string, unknown> = { door: e[f.door] };
    if (meaning.card) data.card = this.card(e[f.cardHigh] * 0x10000 + e[f.cardLow]);
    if (meaning.reason) data.reason = meaning.reason;
    if (meaning.via) data.via = meaning.via;
    this.emit({ type: meaning.type, data });
  }

  /** The card as events may carry it: the site pseudonym, or the raw number only when privacy.rawCards allows. */
  private card(raw: number): string {
    return this.ctx.privacy.rawCards ? String(raw) : pseudonymiseCard(raw, this.ctx.privacy.siteKey);
  }

  private applyInputs(bits: boolean[]): void {
    const p = this.opts.profile;
    const now: DoorState[] = [];
    for (let d = 0; d < this.opts.doors; d++) {
      const b = p.doors.stride * d;
      now.push({
        contact: bits[b + p.discreteInputs.contact],
        released: bits[b + p.discreteInputs.lockReleased],
        tamper: bits[b + p.discreteInputs.tamper],
      });
    }
    // With nothing saved (a first start, a renamed node) the first poll is the baseline: only
    // a tamper already active is news, an alarm nobody has heard of.
    const before = this.doorsState ?? (this.knownBefore ? now : now.map((s) => ({ ...s, tamper: false })));
    this.doorsState = now;
    now.forEach((s, door) => {
      const was = before[door];
      if (s.released !== was.released)
        this.emit({ type: s.released ? 'door.unlocked' : 'door.locked', data: { door } });
      if (s.contact !== was.contact)
        this.emit({ type: s.contact ? 'door.opened' : 'door.closed', data: { door } });
      if (s.tamper !== was.tamper) {
        this.emit({
          type: 'alert.door_tamper',
          data: { door, active: s.tamper },
          severity: s.tamper ? 'critical' : 'info',
        });
      }
    });
  }

  private succeeded(): void {
    this.failures = 0;
    this.lastSeen = new Date(this.ctx.clock.now()).toISOString();
    if (this.online !== true) {
      this.online = true;
      this.log.info('door controller online');
      this.emit({ type: 'device.online', data: { unit: this.opts.unitId } });
      this.presence();
    }
  }

  /** Count a failed poll; returns the delay before the next one (exponential backoff, capped). */
  private failed(err: Error): number {
    this.failures++;
    const code = (err as EdgewardError).code ?? 'EDGE_DRIVER_ERROR';
    this.lastError = code;
    this.ctx.error?.(code);
    if (this.failures >= (this.opts.offlineAfter ?? 3) && this.online !== false) {
      this.online = false;
      this.log.warn({ code, failures: this.failures }, 'door controller offline');
      this.emit({ type: 'device.offline', data: { unit: this.opts.unitId, error: code } });
      this.presence();
    } else {
      this.log.debug({ code, failures: this.failures }, 'door poll failed');
    }
    return Math.min(this.opts.maxBackoffMs ?? 5000, this.opts.pollMs * 2 ** (this.failures - 1));
  }

  private presence(): void {
    this.ctx.bus.emit('device.state', { name: this.name, driver: this.driver, ...this.state() });
  }

  private emit(e: Omit<EventInput, 'source'>): void {
    this.ctx.emit({ ...e, source: { device: this.name, driver: this.driver } });
  }
}
