import type { EventBus } from './bus.js';
import { type Clock, systemClock } from './clock.js';
import { type EventInput, pseudonymiseCard } from './envelope.js';
import type { Logger } from './log.js';

/** Options of {@link SyntheticSource}. */
export interface SyntheticSourceOptions {
  bus: EventBus;
  /** Card numbers are pseudonymised with this key, as a real reader's driver would. */
  siteKey: string;
  /** Events per second (default 2). */
  ratePerSec?: number;
  /** Door device names (default `door-1`, `door-2`). */
  doors?: string[];
  /** Seed of the pseudo-random sequence (default 1): the same seed gives the same events. */
  seed?: number;
  /** Probability that a step is a `door.forced` (default 0.02). */
  forcedRate?: number;
  clock?: Clock;
  log?: Logger;
}

/** Twelve residents' cards and two unknown ones; only pseudonyms ever leave this module. */
const RESIDENT_CARDS = [
  10045821, 10045822, 10045907, 10046113, 10046250, 10046302, 10047001, 10047015, 10047230, 10047231, 10048810,
  10049002,
];
const UNKNOWN_CARDS = [99000001, 99000417];

/**
 * A synthetic event source for the demo: doors open and close, cards are
 * granted or denied (pseudonymised with `pseudonymiseCard`), a door is
 * occasionally forced (critical) and a lobby sensor reports readings. Events
 * go to the bus as 'event.input', exactly like a driver's. The demo runs the
 * device simulators through real drivers; this source only adds load beside
 * them on request (`edgeward demo --rate N`).
 */
export class SyntheticSource {
  private readonly clock: Clock;
  private readonly doors: string[];
  private readonly intervalMs: number;
  private readonly forcedRate: number;
  private readonly open = new Set<string>();
  private rand: () => number;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private count = 0;

  constructor(private readonly opts: SyntheticSourceOptions) {
    this.clock = opts.clock ?? systemClock;
    this.doors = opts.doors ?? ['door-1', 'door-2'];
    this.intervalMs = 1000 / (opts.ratePerSec ?? 2);
    this.forcedRate = opts.forcedRate ?? 0.02;
    this.rand = mulberry32(opts.seed ?? 1);
  }

  /** Events emitted so far. */
  get emitted(): number {
    return this.count;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedule();
    this.opts.log?.child({ module: 'edge/synthetic-source' }).info({ doors: this.doors }, 'synthetic source started');
  }

  stop(): void {
    this.running = false;
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Emit the next step's events now (the timer calls this; tests may too). */
  step(): void {
    for (const e of this.next()) {
      this.count++;
      this.opts.bus.emit('event.input', e);
    }
  }

  private schedule(): void {
    this.timer = this.clock.setTimeout(() => {
      if (!this.running) return;
      this.step();
      this.schedule();
    }, this.intervalMs);
  }

  /** One step of the little world: a door that is open closes, otherwise something happens at a door. */
  private next(): EventInput[] {
    const door = this.doors[Math.floor(this.rand() * this.doors.length)];
    const source = { device: door, driver: 'synthetic' };
    if (this.open.has(door)) {
      this.open.delete(door);
      return [{ type: 'door.closed', source, data: { door: 0 } }];
    }
    const r = this.rand();
    if (r < this.forcedRate) {
      this.open.add(door);
      return [{ type: 'door.forced', source, data: { door: 0 } }];
    }
    if (r < 0.55) {
      const card = this.pick(RESIDENT_CARDS);
      this.open.add(door);
      return [
        { type: 'access.granted', source, data: { door: 0, card: this.pseudonym(card) } },
        { type: 'door.opened', source, data: { door: 0 } },
      ];
    }
    if (r < 0.7) {
      return [{ type: 'access.denied', source, data: { door: 0, card: this.pseudonym(this.pick(UNKNOWN_CARDS)), reason: 'unknown card' } }];
    }
    const value = Math.round((18 + this.rand() * 6) * 10) / 10;
    return [
      {
        type: 'sensor.reading',
        source: { device: 'lobby-sensor', driver: 'synthetic' },
        data: { sensor: 'lobby-temp', kind: 'temperature', value, unit: 'degC' },
      },
    ];
  }

  private pick<T>(list: readonly T[]): T {
    return list[Math.floor(this.rand() * list.length)];
  }

  private pseudonym(card: number): string {
    return pseudonymiseCard(card, this.opts.siteKey);
  }
}

/** A small seeded PRNG (mulberry32): deterministic demo runs and tests. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
