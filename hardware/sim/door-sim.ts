import { type DoorProfile, loadDoorProfile } from '../../drivers/door/profile.js';
import {
  type FaultMode,
  RtuServer,
  type RtuServerOptions,
  type SimBackend,
  TcpServer,
} from './modbus-server.js';
import { pendingTimers } from './timers.js';

/** One simulated door controller implementing a door profile (generic-door by default) as Modbus tables. */
export class DoorUnit {
  readonly di: boolean[];
  readonly coils: boolean[];
  readonly hr: number[] = new Array(16).fill(0);
  readonly ir: number[] = new Array(256).fill(0);
  fault: FaultMode = 'none';
  private readonly pulseTimers: Array<NodeJS.Timeout | undefined>;
  private readonly heldTimers: Array<NodeJS.Timeout | undefined>;

  constructor(
    readonly unit: number,
    readonly doors: number,
    readonly profile: DoorProfile,
    firmware = 0x0102,
  ) {
    this.di = new Array(profile.doors.stride * doors).fill(false);
    this.coils = new Array(profile.doors.stride * doors).fill(false);
    this.pulseTimers = new Array(doors).fill(undefined);
    this.heldTimers = new Array(doors).fill(undefined);
    this.hr[profile.holdingRegisters.unlockSeconds] = 5;
    this.hr[profile.holdingRegisters.heldOpenSeconds] = 30;
    this.ir[profile.inputRegisters.deviceType] = profile.deviceType;
    this.ir[profile.inputRegisters.firmware] = firmware;
  }

  private bit(door: number, offset: number): number {
    if (!Number.isInteger(door) || door < 0 || door >= this.doors)
      throw new RangeError(`unit ${this.unit} has no door ${door}`);
    return this.profile.doors.stride * door + offset;
  }

  get counter(): number {
    return this.ir[this.profile.inputRegisters.eventCounter];
  }

  /** Append an event to the ring: the counter becomes k and event k sits at slot k mod size. */
  record(code: number, door: number, card = 0): void {
    const ring = this.profile.inputRegisters.ring;
    const k = (this.counter + 1) & 0xffff;
    this.ir[this.profile.inputRegisters.eventCounter] = k;
    const at = ring.base + ring.stride * (k % ring.size);
    this.ir[at + ring.fields.code] = code;
    this.ir[at + ring.fields.door] = door;
    this.ir[at + ring.fields.cardHigh] = Math.floor(card / 0x10000) & 0xffff;
    this.ir[at + ring.fields.cardLow] = card & 0xffff;
  }

  isOpen(door: number): boolean {
    return this.di[this.bit(door, this.profile.discreteInputs.contact)];
  }

  isReleased(door: number): boolean {
    return this.di[this.bit(door, this.profile.discreteInputs.lockReleased)];
  }

  /** Open the door. Opening it while the lock holds is a forced entry (event 5). */
  open(door: number): void {
    if (this.isOpen(door)) return;
    if (!this.isReleased(door)) this.record(5, door);
    this.di[this.bit(door, this.profile.discreteInputs.contact)] = true;
    const limit = this.hr[this.profile.holdingRegisters.heldOpenSeconds];
    if (limit > 0) {
      this.heldTimers[door] = setTimeout(() => {
        this.heldTimers[door] = undefined;
        if (this.isOpen(door)) this.record(6, door);
      }, limit * 1000);
    }
  }

  close(door: number): void {
    this.di[this.bit(door, this.profile.discreteInputs.contact)] = false;
    if (this.heldTimers[door]) clearTimeout(this.heldTimers[door]);
    this.heldTimers[door] = undefined;
  }

  /** Force the door: open it without unlocking. */
  force(door: number): void {
    this.close(door);
    this.setReleased(door, false);
    this.open(door);
  }

  /** Present a card: granted releases the lock for the pulse time; unknown/schedule are denials (codes 2/3). */
  swipe(door: number, card: number, outcome: 'granted' | 'unknown' | 'schedule' = 'granted'): void {
    this.bit(door, 0);
    this.record(outcome === 'granted' ? 1 : outcome === 'unknown' ? 2 : 3, door, card);
    if (outcome === 'granted') this.pulse(door);
  }

  /** Press the exit button: event 4 and an unlock pulse. */
  exit(door: number): void {
    const rte = this.bit(door, this.profile.discreteInputs.requestToExit);
    this.di[rte] = true;
    this.record(4, door);
    this.pulse(door);
    this.di[rte] = false;
  }

  tamper(door: number, on: boolean): void {
    this.di[this.bit(door, this.profile.discreteInputs.tamper)] = on;
  }

  /** Record a held-open alarm now (the controller also does it after the held-open threshold). */
  heldOpen(door: number): void {
    this.record(6, door);
  }

  /** Write `n` events at once (cards n..1), to overrun the ring. */
  flood(n: number, door = 0): void {
    for (let i = 0; i < n; i++) this.record(2, door, 1_000_000 + i);
  }

  /** Every unlock pulse started, with the length it took from holding register 0 (tests read it). */
  readonly pulses: Array<{ door: number; seconds: number }> = [];

  private pulse(door: number): void {
    const seconds = this.hr[this.profile.holdingRegisters.unlockSeconds];
    this.pulses.push({ door, seconds });
    const coil = this.bit(door, this.profile.coils.unlockPulse);
    this.coils[coil] = true;
    this.setReleased(door, true);
    if (this.pulseTimers[door]) clearTimeout(this.pulseTimers[door]);
    this.pulseTimers[door] = setTimeout(() => {
      this.pulseTimers[door] = undefined;
      this.coils[coil] = false;
      this.setReleased(door, this.coils[this.bit(door, this.profile.coils.holdUnlocked)]);
    }, seconds * 1000);
  }

  /** Writing 0 to the pulse coil ends a running pulse (door.lock). */
  private endPulse(door: number): void {
    if (this.pulseTimers[door]) clearTimeout(this.pulseTimers[door]);
    this.pulseTimers[door] = undefined;
    this.coils[this.bit(door, this.profile.coils.unlockPulse)] = false;
    this.setReleased(door, this.coils[this.bit(door, this.profile.coils.holdUnlocked)]);
  }

  private setReleased(door: number, v: boolean): void {
    this.di[this.bit(door, this.profile.discreteInputs.lockReleased)] = v;
  }

  writeCoil(address: number, value: boolean): number | undefined {
    if (address >= this.coils.length) return 2;
    const door = Math.floor(address / this.profile.doors.stride);
    const off = address % this.profile.doors.stride;
    if (off === this.profile.coils.unlockPulse) {
      if (value) this.pulse(door);
      else this.endPulse(door);
      return undefined;
    }
    if (off === this.profile.coils.holdUnlocked) {
      this.coils[address] = value;
      this.setReleased(door, value || this.pulseTimers[door] !== undefined);
      return undefined;
    }
    return 2;
  }

  stop(): void {
    for (const t of [...this.pulseTimers, ...this.heldTimers]) if (t) clearTimeout(t);
  }
}

export interface DoorSimOptions {
  /** Unit ids to simulate (default 1..8). */
  units?: number[];
  doors?: number;
  profile?: string;
}

/**
 * A bus of simulated door controllers, served over RTU on a serial path
 * (a socat PTY in tests and the demo) or over Modbus TCP. Scriptable through
 * `unit(id)` (open, swipe, force, flood…) and `setFault(id, mode)`.
 */
export class DoorSim implements SimBackend {
  readonly units = new Map<number, DoorUnit>();
  private readonly servers: Array<RtuServer | TcpServer> = [];
  private readonly stopAutoplay = new Set<() => void>();

  constructor(opts: DoorSimOptions = {}) {
    const profile = loadDoorProfile(opts.profile ?? 'generic-door');
    for (const id of opts.units ?? [1, 2, 3, 4, 5, 6, 7, 8])
      this.units.set(id, new DoorUnit(id, opts.doors ?? 1, profile));
  }

  unit(id: number): DoorUnit {
    const u = this.units.get(id);
    if (!u) throw new RangeError(`no simulated unit ${id}`);
    return u;
  }

  setFault(id: number, mode: FaultMode): void {
    this.unit(id).fault = mode;
  }

  hasUnit(unit: number): boolean {
    return this.units.has(unit);
  }

  fault(unit: number): FaultMode {
    return this.units.get(unit)?.fault ?? 'silent';
  }

  readBits(unit: number, fc: 1 | 2, address: number, count: number): boolean[] | number {
    const table = fc === 1 ? this.unit(unit).coils : this.unit(unit).di;
    if (address + count > table.length) return 2;
    return table.slice(address, address + count);
  }

  readRegisters(unit: number, fc: 3 | 4, address: number, count: number): number[] | number {
    const table = fc === 3 ? this.unit(unit).hr : this.unit(unit).ir;
    if (address + count > table.length) return 2;
    return table.slice(address, address + count);
  }

  writeCoils(unit: number, address: number, values: boolean[]): number | undefined {
    for (let i = 0; i < values.length; i++) {
      const ex = this.unit(unit).writeCoil(address + i, values[i]);
      if (ex !== undefined) return ex;
    }
    return undefined;
  }

  writeRegisters(unit: number, address: number, values: number[]): number | undefined {
    const hr = this.unit(unit).hr;
    if (address + values.length > hr.length) return 2;
    values.forEach((v, i) => {
      hr[address + i] = v;
    });
    return undefined;
  }

  /** Serve RTU on a serial path; `pace` delays replies by their wire time at `baudRate`. */
  async serveRtu(path: string, opts: Omit<RtuServerOptions, 'path'> = {}): Promise<RtuServer> {
    const server = new RtuServer(this, { path, ...opts });
    await server.start();
    this.servers.push(server);
    return server;
  }

  /** Serve Modbus TCP; resolves with the bound port. */
  async serveTcp(port = 0, host = '127.0.0.1'): Promise<{ server: TcpServer; port: number }> {
    const server = new TcpServer(this, { host, port });
    const bound = await server.start();
    this.servers.push(server);
    return { server, port: bound };
  }

  /**
   * Lifelike activity for the demo: every `everyMs` one random door sees a
   * granted card then opens and closes (most often), an unknown card, the exit
   * button, a forced entry or a door held open. Returns a function that stops it.
   */
  autoplay(everyMs = 3000, random: () => number = Math.random): () => void {
    const { later, clear } = pendingTimers();
    const units = [...this.units.values()];
    const tick = setInterval(() => {
      const u = units[Math.floor(random() * units.length)];
      const door = Math.floor(random() * u.doors);
      if (u.isOpen(door)) return;
      const r = random();
      const card = 10_000_000 + Math.floor(random() * 900);
      if (r < 0.6) {
        u.swipe(door, card, 'granted');
        later(800, () => u.open(door));
        later(3000, () => u.close(door));
      } else if (r < 0.8) {
        u.swipe(door, card, r < 0.75 ? 'unknown' : 'schedule');
      } else if (r < 0.9) {
        u.exit(door);
        later(600, () => u.open(door));
        later(2500, () => u.close(door));
      } else if (r < 0.95) {
        u.force(door);
        later(4000, () => u.close(door));
      } else {
        u.swipe(door, card, 'granted');
        later(500, () => u.open(door));
        later(1500, () => u.heldOpen(door));
        later(6000, () => u.close(door));
      }
    }, everyMs);
    const stop = () => {
      clearInterval(tick);
      clear();
      this.stopAutoplay.delete(stop);
    };
    this.stopAutoplay.add(stop);
    return stop;
  }

  async stop(): Promise<void> {
    for (const s of [...this.stopAutoplay]) s();
    for (const s of this.servers.splice(0)) await s.stop();
    for (const u of this.units.values()) u.stop();
  }

  /**
   * Run one script line (the `edgeward sim door` console):
   * `open U D` `close U D` `swipe U D CARD [granted|unknown|schedule]` `force U D`
   * `exit U D` `tamper U D on|off` `held U D` `flood U N` `fault U none|silent|bad-crc|exception|short|wrong-unit`.
   */
  command(line: string): string {
    const [cmd, ...a] = line.trim().split(/\s+/);
    if (!cmd) return '';
    const n = (i: number) => {
      const v = Number(a[i]);
      if (!Number.isInteger(v)) throw new Error(`argument ${i + 1} must be an integer`);
      return v;
    };
    const u = () => this.unit(n(0));
    switch (cmd) {
      case 'open':
        u().open(n(1));
        break;
      case 'close':
        u().close(n(1));
        break;
      case 'swipe':
        u().swipe(n(1), n(2), (a[3] as 'granted' | 'unknown' | 'schedule') ?? 'granted');
        break;
      case 'force':
        u().force(n(1));
        break;
      case 'exit':
        u().exit(n(1));
        break;
      case 'tamper':
        u().tamper(n(1), a[2] !== 'off');
        break;
      case 'held':
        u().heldOpen(n(1));
        break;
      case 'flood':
        u().flood(n(1));
        break;
      case 'fault':
        this.setFault(n(0), (a[1] ?? 'none') as FaultMode);
        break;
      default:
        throw new Error(`unknown command "${cmd}"`);
    }
    return 'ok';
  }
}
