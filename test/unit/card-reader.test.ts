import assert from 'node:assert/strict';
import { SerialPort } from 'serialport';
import type { Driver } from '../../drivers/driver.js';
import { CardReaderDriver, DEFAULT_CARD_PATTERN, LINE_GAP_MS } from '../../drivers/card-reader/driver.js';
import { register as registerCardReader } from '../../drivers/card-reader/index.js';
import type { ByteLink } from '../../drivers/modbus/link.js';
import { EventBus } from '../../edge/bus.js';
import { systemClock } from '../../edge/clock.js';
import { type EventInput, pseudonymiseCard } from '../../edge/envelope.js';
import { createLogger } from '../../edge/log.js';
import { Registry } from '../../edge/registry.js';
import { ManualClock } from '../helpers/clock.js';
import { openPtyPair, type PtyPair } from '../helpers/pty.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

/** A serial card reader on one end of a socat PTY pair; the test writes reader lines on the other end. */
describe('card reader over a serial PTY', function () {
  this.timeout(20_000);
  let tmp: TmpDir;
  let pty: PtyPair;
  let reader: SerialPort;
  let driver: Driver;
  let registry: Registry;
  const events: EventInput[] = [];
  const logs: string[] = [];
  const errors: string[] = [];

  async function openReaderEnd(): Promise<SerialPort> {
    const p = new SerialPort({ path: pty.b, baudRate: 9600, autoOpen: false });
    await new Promise<void>((res, rej) => p.open((e) => (e ? rej(e) : res())));
    p.on('error', () => undefined);
    return p;
  }

  /** Pull the reader out: close its end, kill the PTY pair, and wait for the driver's offline event. */
  async function unplug(message = 'offline'): Promise<void> {
    events.length = 0;
    await new Promise<void>((r) => reader.close(() => r()));
    await pty.kill();
    await waitFor(() => events.some((e) => e.type === 'device.offline'), { message });
  }

  /** Plug it back: the PTY pair at the same paths, the reader's end reopened. */
  async function replug(): Promise<void> {
    await pty.restart();
    reader = await openReaderEnd();
  }

  before(async () => {
    tmp = await tmpDir('card');
    pty = await openPtyPair(tmp.path);
    reader = await openReaderEnd();
    registry = new Registry();
    registerCardReader(registry);
    const ctx = {
      bus: new EventBus(),
      clock: systemClock,
      log: createLogger({ level: 'debug', destination: { write: (s: string) => void logs.push(s) } }),
      emit: (e: EventInput) => void events.push(e),
      error: (code: string) => void errors.push(code),
      privacy: { siteKey: 'site', rawCards: false },
    };
    driver = registry.createDriver(
      'card-reader',
      'reader-1',
      { path: pty.a, baudRate: '9600', pattern: '^W26:(?<card>\\d+)$', door: 2 },
      ctx,
    );
    await driver.start();
    await waitFor(() => driver.state().online, { message: 'reader online' });
  });

  after(async () => {
    await driver?.stop();
    if (reader?.isOpen) await new Promise<void>((r) => reader.close(() => r()));
    await pty?.kill();
    await tmp?.cleanup();
  });

  it('turns matching lines into pseudonymised card events, split across chunks, ignoring other lines', async () => {
    events.length = 0;
    reader.write('W26:0012');
    reader.write('3456\r\nnoise 999888\r\nW26:77\n');
    await waitFor(() => events.length >= 2, { message: 'two card events' });
    assert.deepEqual(
      events.map((e) => [e.type, e.data]),
      [
        ['sensor.reading', { kind: 'card', door: 2, card: pseudonymiseCard(123456, 'site') }],
        ['sensor.reading', { kind: 'card', door: 2, card: pseudonymiseCard(77, 'site') }],
      ],
    );
    const all = logs.join('');
    assert.ok(!all.includes('123456') && !all.includes('999888'), 'raw card or line in logs');
  });

  it('says on the node when lines do not read (a wrong baud rate or pattern), until a card reads again', async () => {
    events.length = 0;
    errors.length = 0;
    reader.write('\u00f8\u0080x\r\n');
    reader.write('W27:123\r\n');
    await waitFor(() => driver.state().note === '2 unreadable lines: check baud, pattern', { message: () => `note: ${driver.state().note}` });
    assert.equal(driver.state().online, true);
    // And in edgeward_driver_errors_total, where monitoring sees it.
    assert.deepEqual(errors.splice(0), ['EDGE_CARD_UNREADABLE', 'EDGE_CARD_UNREADABLE']);
    reader.write('W26:4242\r\n');
    await waitFor(() => events.length === 1, { message: 'the card read' });
    assert.equal(driver.state().note, undefined);
  });

  it('reports offline on unplug and comes back with the port', async () => {
    await unplug();
    await replug();
    await waitFor(() => events.some((e) => e.type === 'device.online'), {
      message: 'online again',
      timeoutMs: 8000,
    });
    reader.write('W26:5\n');
    await waitFor(() => events.some((e) => e.type === 'sensor.reading'), { message: 'card after replug' });
  });

  it('reconnects after a stop and start made while a reconnect was pending', async () => {
    await unplug();
    // A reconnect timer is pending now: stop() cancels it, start() (port still gone) must schedule its own.
    await driver.stop();
    await driver.start();
    await replug();
    await waitFor(() => driver.state().online, { message: 'online again after stop/start', timeoutMs: 8000 });
    // And the restarted driver still follows the port through another unplug.
    await unplug('offline after the second unplug');
    await replug();
    await waitFor(() => events.some((e) => e.type === 'device.online'), { message: 'online after the second replug', timeoutMs: 8000 });
    reader.write('W26:6\n');
    await waitFor(() => events.some((e) => e.type === 'sensor.reading'), { message: 'card after stop/start and replug' });
  });

  it('rejects a pattern without a card group, naming the field', () => {
    assert.throws(
      () => registry.createDriver('card-reader', 'r', { path: '/dev/null', pattern: '\\d+' }, {} as never),
      /pattern/,
    );
  });
});

/** The line splitting alone, on a link the test feeds and a clock it moves. */
describe('card reader lines (fed bytes, manual clock)', () => {
  const siteKey = 'site';
  let clock: ManualClock;
  let link: ByteLink;
  let events: EventInput[];
  let driver: CardReaderDriver;

  beforeEach(async () => {
    clock = new ManualClock();
    events = [];
    link = { open: async () => undefined, write: () => undefined, close: async () => undefined, onData: () => undefined, onLost: () => undefined };
    driver = new CardReaderDriver(
      'reader',
      { path: 'fake', baudRate: 9600, pattern: new RegExp(DEFAULT_CARD_PATTERN), cardBase: 10, door: 0 },
      { bus: new EventBus(), clock, log: createLogger({ level: 'silent' }), emit: (e) => void events.push(e), privacy: { siteKey, rawCards: false } },
      () => link,
    );
    await driver.start();
  });
  afterEach(() => driver.stop());

  const feed = (s: string | Buffer) => link.onData(Buffer.isBuffer(s) ? s : Buffer.from(s, 'utf8'));
  const cards = () => events.filter((e) => e.type === 'sensor.reading').map((e) => (e.data as { card: string }).card);

  it('drops a stale partial line instead of gluing it to the next card', () => {
    feed('7');
    clock.advance(LINE_GAP_MS + 1);
    feed('12345678\r\n');
    assert.deepEqual(cards(), [pseudonymiseCard(12345678, siteKey)]);
    // Within the gap the chunks are one line.
    feed('1234');
    clock.advance(10);
    feed('5\r\n');
    assert.deepEqual(cards().at(-1), pseudonymiseCard(12345, siteKey));
  });

  it('drops an overlong line up to its end: its tail is not a card', () => {
    feed('A'.repeat(300));
    feed('99\r\n');
    feed('4242\r\n');
    assert.deepEqual(cards(), [pseudonymiseCard(4242, siteKey)]);
    // Its end in the same chunk as its 257th byte.
    feed('N'.repeat(250));
    feed('NNNNNNNNNN77\r\n');
    assert.deepEqual(cards().length, 1);
    // Noise without an end, then quiet: the next swipe is a line of its own.
    feed('A'.repeat(300));
    clock.advance(LINE_GAP_MS + 1);
    feed('5151\r\n');
    assert.deepEqual(cards(), [pseudonymiseCard(4242, siteKey), pseudonymiseCard(5151, siteKey)]);
  });

  it('reads UTF-8 lines, a character split across chunks included', async () => {
    await driver.stop();
    driver = new CardReaderDriver(
      'reader',
      { path: 'fake', baudRate: 9600, pattern: /^卡号:(?<card>\d+)$/u, cardBase: 10, door: 0 },
      { bus: new EventBus(), clock, log: createLogger({ level: 'silent' }), emit: (e) => void events.push(e), privacy: { siteKey, rawCards: false } },
      () => link,
    );
    await driver.start();
    const bytes = Buffer.from('卡号:5150\n', 'utf8');
    feed(bytes.subarray(0, 2));
    feed(bytes.subarray(2));
    assert.deepEqual(cards(), [pseudonymiseCard(5150, siteKey)]);
  });
});
