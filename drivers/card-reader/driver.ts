import { StringDecoder } from 'node:string_decoder';
import type { CommandRequest, Driver, DriverContext } from '../driver.js';
import type { EventInput } from '../../edge/envelope.js';
import { pseudonymiseCard } from '../../edge/envelope.js';
import { EdgewardError } from '../../edge/errors.js';
import type { Logger } from '../../edge/log.js';
import { type ByteLink, SerialLink } from '../modbus/link.js';

/** Settings of one serial card reader (the `edgeward-card-reader` node). */
export interface CardReaderOptions {
  path: string;
  baudRate: number;
  /** Extracts the card from one ASCII line; must have a named group `card`. */
  pattern: RegExp;
  /** Base of the `card` group: 10 (default) or 16. */
  cardBase: 10 | 16;
  /** The door this reader stands at (event data.door). */
  door: number;
  /** Ignore the same card again within this window (readers repeat a held card); default 0 (off). */
  repeatMs?: number;
  /**
   * A partial line older than this when more bytes come is noise, not the
   * start of the next card (default LINE_GAP_MS): a reader sends a line in
   * one go, a few ms at 9600 baud.
   */
  lineGapMs?: number;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
}

/** Default pattern: the last run of digits on the line (`W26:0012345`, `12345`, `Card 12345`). */
export const DEFAULT_CARD_PATTERN = '(?<card>\\d{1,20})\\s*$';

const MAX_LINE = 256;
/** See `CardReaderOptions.lineGapMs`. */
export const LINE_GAP_MS = 300;

/**
 * A plain serial card reader (a Wiegand-to-RS232 converter) sending one ASCII
 * line per card. Each matching line becomes a `sensor.reading` event with
 * `data: { kind: 'card', door, card }` where `card` is the site pseudonym: the
 * reader reports a presented card, it does not decide access. The raw line
 * never reaches a log. The port is reopened with backoff after an unplug.
 */
export class CardReaderDriver implements Driver {
  readonly driver = 'card-reader';
  readonly actions: readonly string[] = [];
  private link?: ByteLink;
  private running = false;
  private online?: boolean;
  private lastSeen?: string;
  private buf = '';
  private decoder = new StringDecoder('utf8');
  /** When the last bytes came (the clock's ms): a partial line older than lineGapMs is dropped. */
  private lastDataAt = 0;
  /** After an overlong line: drop bytes up to the next line end (its tail is not a card line). */
  private skipping = false;
  private timer?: NodeJS.Timeout;
  private attempt = 0;
  private lastCard?: { card: string; at: number };
  /** Why the port is unavailable (an errno when there is one). */
  private reason?: string;
  /** Lines that did not match the pattern since the last card read. */
  private unreadable = 0;
  private readonly log: Logger;

  constructor(
    readonly name: string,
    private readonly opts: CardReaderOptions,
    private readonly ctx: DriverContext,
    private readonly makeLink: () => ByteLink = () =>
      new SerialLink({ path: opts.path, baudRate: opts.baudRate, parity: 'none' }),
  ) {
    this.log = ctx.log.child({ module: 'drivers/card-reader', device: name });
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    await this.open();
  }

  async stop(): Promise<void> {
    this.running = false;
    // Forget the cleared timer too: retry() treats a set `timer` as "already scheduled", so a stale one would stop every reconnect after a restart.
    if (this.timer) this.ctx.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.attempt = 0;
    const link = this.link;
    this.link = undefined;
    await link?.close();
  }

  state(): { online: boolean; lastSeen?: string; reason?: string; note?: string } {
    const note =
      this.online === true && this.unreadable > 0
        ? `${this.unreadable} unreadable line${this.unreadable === 1 ? '' : 's'}: check baud, pattern`
        : undefined;
    return {
      online: this.online === true,
      lastSeen: this.lastSeen,
      ...(this.online === false && this.reason ? { reason: this.reason } : {}),
      ...(note ? { note } : {}),
    };
  }

  async execute(cmd: CommandRequest): Promise<Record<string, unknown> | undefined> {
    throw new EdgewardError('EDGE_COMMAND_UNSUPPORTED', `${this.name} does not execute ${cmd.action}`);
  }

  private async open(): Promise<void> {
    if (!this.running) return;
    const link = this.makeLink();
    link.onData = (chunk) => this.onData(chunk);
    link.onLost = (err) => {
      if (this.link !== link) return;
      this.link = undefined;
      this.setOnline(false, err.message);
      this.attempt = 0;
      this.retry();
    };
    try {
      await link.open();
    } catch (err) {
      this.setOnline(false, (err as Error).message);
      this.retry();
      return;
    }
    if (!this.running) {
      await link.close();
      return;
    }
    this.link = link;
    this.attempt = 0;
    this.buf = '';
    this.skipping = false;
    this.decoder = new StringDecoder('utf8');
    this.setOnline(true);
  }

  private retry(): void {
    if (!this.running || this.timer) return;
    const delay = Math.min(
      this.opts.reconnectMaxMs ?? 5000,
      (this.opts.reconnectMinMs ?? 100) * 2 ** this.attempt++,
    );
    this.timer = this.ctx.clock.setTimeout(() => {
      this.timer = undefined;
      void this.open();
    }, delay);
  }

  /**
   * Split the bytes into lines. Leftovers never become part of a card: a
   * partial line older than lineGapMs is dropped when more bytes come (seen:
   * a stray '7' and then 12345678 read as card 712345678), and after an
   * overlong line everything up to the next line end is dropped (seen: 300
   * bytes of noise ending in 99 read as card 99).
   */
  private onData(chunk: Buffer): void {
    const now = this.ctx.clock.now();
    if (now - this.lastDataAt > (this.opts.lineGapMs ?? LINE_GAP_MS)) {
      // A quiet line ends whatever was pending: a stale partial line, the rest of an overlong
      // one, half a character (a swipe after quiet is a new line, not the tail of noise).
      if (this.buf !== '') this.log.debug({ length: this.buf.length }, 'card reader: a partial line went stale; dropped');
      this.buf = '';
      this.skipping = false;
      this.decoder = new StringDecoder('utf8');
    }
    this.lastDataAt = now;
    // UTF-8 (ASCII for most readers), split multi-byte characters kept whole across chunks.
    this.buf += this.decoder.write(chunk);
    let nl = this.buf.search(/[\r\n]/);
    while (nl >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (this.skipping) this.skipping = false;
      // A line over the limit whose end came in the same chunk: noise all the same.
      else if (line.length > MAX_LINE) this.log.debug({ length: line.length }, 'card reader: an overlong line dropped');
      else if (line) this.onLine(line);
      nl = this.buf.search(/[\r\n]/);
    }
    // A reader spewing noise without line ends must not grow the buffer forever.
    if (this.buf.length > MAX_LINE) {
      this.buf = '';
      this.skipping = true;
    }
  }

  private onLine(line: string): void {
    this.lastSeen = new Date(this.ctx.clock.now()).toISOString();
    const raw = this.opts.pattern.exec(line)?.groups?.card;
    let value: bigint | undefined;
    try {
      if (raw !== undefined) value = BigInt(this.opts.cardBase === 16 ? `0x${raw}` : raw);
    } catch {
      value = undefined;
    }
    if (value === undefined) {
      // Never the line itself: it may hold a card number.
      this.log.debug({ length: line.length }, 'card reader line did not match the pattern');
      // A reader at the wrong baud rate sends lines that never match: the node said "online"
      // and nothing else (seen in a technician review). Counted until a card reads, on the node.
      this.unreadable++;
      this.ctx.error?.('EDGE_CARD_UNREADABLE');
      if (this.unreadable === 1 || this.unreadable % 10 === 0) this.publishState();
      return;
    }
    if (this.unreadable > 0) {
      this.unreadable = 0;
      this.publishState();
    }
    const card = this.ctx.privacy.rawCards
      ? value.toString(10)
      : pseudonymiseCard(value, this.ctx.privacy.siteKey);
    const now = this.ctx.clock.now();
    if (this.opts.repeatMs && this.lastCard?.card === card && now - this.lastCard.at < this.opts.repeatMs)
      return;
    this.lastCard = { card, at: now };
    this.emit({ type: 'sensor.reading', data: { kind: 'card', door: this.opts.door, card } });
  }

  private setOnline(online: boolean, reason?: string): void {
    // An errno (ENOENT: no such port, EACCES: not in dialout) says more in a node's status than a message.
    this.reason = online ? undefined : (/\b(E[A-Z]{3,})\b/.exec(reason ?? '')?.[1] ?? /No such file/i.exec(reason ?? '')?.[0] ?? reason);
    // Every failed open counts, not only the first: a port that keeps dropping shows in the metric.
    if (!online) this.ctx.error?.('EDGE_SERIAL_UNAVAILABLE');
    if (this.online === online) return;
    // At start a missing port is reported offline once; afterwards only changes are.
    this.online = online;
    if (online) this.log.info('card reader port open');
    else this.log.warn({ reason }, 'card reader port unavailable');
    this.emit({
      type: online ? 'device.online' : 'device.offline',
      data: online ? {} : { error: 'EDGE_SERIAL_UNAVAILABLE' },
    });
    this.publishState();
  }

  private publishState(): void {
    this.ctx.bus.emit('device.state', { name: this.name, driver: this.driver, ...this.state() });
  }

  private emit(e: Omit<EventInput, 'source'>): void {
    this.ctx.emit({ ...e, source: { device: this.name, driver: this.driver } });
  }
}
