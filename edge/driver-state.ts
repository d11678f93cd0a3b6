import { readFileSync } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import type { Clock } from './clock.js';
import type { Logger } from './log.js';

/** A driver's own small persisted values (see `DriverContext.state`). */
export interface DriverState {
  get(key: string): unknown;
  /** Remembered now, on disk within `DRIVER_STATE_SAVE_MS` (and at a clean stop). */
  set(key: string, value: unknown): void;
  /**
   * On disk now (synced), for a value that must survive a crash in the next
   * moments (a pulse length a command is about to change). Resolves true once
   * written; false when it could not be (the disk failing, or events held
   * unstored for longer than PERSIST_WAIT_MS; see DriverStateStore's canSave).
   */
  persist?(): Promise<boolean>;
}

/**
 * How long a value may wait in memory before it is written. It must stay
 * short: what a driver records here (a door controller's event counter) says
 * which device events were read, and those events are stored by then (one
 * event-loop turn and one fsync), so a crash replays at most this much as
 * duplicates rather than losing any.
 */
export const DRIVER_STATE_SAVE_MS = 1000;
/** How long persist() waits for saving to be allowed again before it gives up. */
const PERSIST_WAIT_MS = 2000;

/**
 * Values drivers keep across restarts and Node-RED redeploys, in one JSON
 * file (`<dataDir>/driver-state.json`), keyed by device. Written whole to a
 * temporary file, synced and renamed over the old one: a crash leaves either
 * the old file or the new one. A file that does not parse counts as empty
 * (drivers then start from what the device says, as on a first start) and is
 * replaced at the next write.
 */
export class DriverStateStore {
  private values: Record<string, Record<string, unknown>> = {};
  private timer: NodeJS.Timeout | null = null;
  /** Changes made (set), and how many of them the file on disk holds. */
  private version = 0;
  private savedVersion = 0;
  private saving: Promise<void> = Promise.resolve();
  private dirty = false;

  /**
   * `canSave`: whether what drivers reported is stored by now. While the
   * outbox cannot write, their events wait in memory: a counter saved then
   * would, after a crash, skip events the controller still holds (measured
   * with a file-size limit: 10 door events gone, nothing reported). Saving
   * waits until it is true again.
   */
  constructor(
    private readonly file: string,
    private readonly log: Logger,
    private readonly clock: Clock,
    private readonly canSave: () => boolean = () => true,
  ) {}

  load(): void {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch {
      return; // none yet
    }
    try {
      const parsed: unknown = JSON.parse(text);
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed))
        this.values = parsed as typeof this.values;
    } catch (err) {
      this.log.warn(
        { err, file: this.file },
        'driver state unreadable: drivers start from what their devices say',
      );
    }
  }

  /** The state of one device. */
  scope(device: string): DriverState {
    return {
      get: (key) => this.values[device]?.[key],
      set: (key, value) => {
        if (this.values[device]?.[key] === value) return;
        this.values[device] = { ...this.values[device], [key]: value };
        this.dirty = true;
        this.version++;
        this.schedule();
      },
      persist: () => this.persist(),
    };
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      if (this.canSave()) void this.save();
      else this.schedule();
    }, DRIVER_STATE_SAVE_MS);
    this.timer.unref?.();
  }

  /** Write what changed now (at stop), unless reported events are still not stored. */
  async flush(): Promise<void> {
    if (this.timer) this.clock.clearTimeout(this.timer);
    this.timer = null;
    if (this.canSave()) await this.save();
    else if (this.dirty) this.schedule();
  }

  /**
   * Write now, waiting (up to PERSIST_WAIT_MS) while saving is held back: it
   * usually is for a moment only (events emitted in this tick, stored at the
   * next one). True once on disk.
   */
  private async persist(): Promise<boolean> {
    for (let waited = 0; !this.canSave() && waited < PERSIST_WAIT_MS; waited += 20) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (!this.canSave()) return false;
    // What was set up to now: a set() by another device meanwhile (a poll) must not make a
    // written value read as unwritten (a timed unlock was refused at random; seen in a review).
    const want = this.version;
    await this.flush();
    return this.savedVersion >= want;
  }

  private save(): Promise<void> {
    this.saving = this.saving.then(async () => {
      if (!this.dirty) return;
      this.dirty = false;
      const version = this.version;
      const tmp = `${this.file}.tmp`;
      try {
        const fh = await open(tmp, 'w');
        try {
          await fh.writeFile(JSON.stringify(this.values));
          await fh.sync();
        } finally {
          await fh.close();
        }
        await rename(tmp, this.file);
        this.savedVersion = Math.max(this.savedVersion, version);
      } catch (err) {
        // A full disk: kept in memory, tried again shortly, with the next change, or at stop.
        this.dirty = true;
        this.log.warn({ err, file: this.file }, 'driver state not written');
        this.schedule();
      }
    });
    return this.saving;
  }
}
