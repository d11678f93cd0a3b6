import assert from 'node:assert/strict';
import { symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ModbusBus } from '../../drivers/modbus/bus.js';
import { crc16, crcOk, rtuFrame } from '../../drivers/modbus/crc.js';
import { busEndpoint, parseBusProps } from '../../drivers/modbus/index.js';
import { decodeReply, readPdu, rtuReplyLength, writeCoilPdu, writeRegisterPdu, writeRegistersPdu } from '../../drivers/modbus/pdu.js';
import { systemClock } from '../../edge/clock.js';
import { isEdgewardError } from '../../edge/errors.js';
import { silentLogger } from '../../edge/log.js';
import { DoorSim } from '../../hardware/sim/door-sim.js';
import { FakeRtuLine } from '../../hardware/sim/modbus-fake-line.js';
import { tmpDir } from '../helpers/tmp.js';

describe('modbus: CRC and PDUs', () => {
  it('computes the CRC-16/MODBUS of the textbook frame', () => {
    // 01 03 00 00 00 0A → CRC C5 CD on the wire (low byte first)
    const f = rtuFrame(1, readPdu(3, 0, 10));
    assert.deepEqual([...f], [0x01, 0x03, 0x00, 0x00, 0x00, 0x0a, 0xc5, 0xcd]);
    assert.equal(crc16(Buffer.from('123456789')), 0x4b37);
    assert.ok(crcOk(f));
    f[3] ^= 1;
    assert.ok(!crcOk(f));
  });

  it('knows reply lengths and decodes bits, registers and exceptions', () => {
    assert.equal(rtuReplyLength(3, Buffer.from([1, 3, 20])), 25);
    assert.equal(rtuReplyLength(3, Buffer.from([1, 0x83])), 5);
    assert.equal(rtuReplyLength(5, Buffer.from([1, 5])), 8);
    assert.deepEqual(decodeReply(readPdu(2, 0, 10), Buffer.from([2, 2, 0b101, 0b10]), 1), [
      true,
      false,
      true,
      false,
      false,
      false,
      false,
      false,
      false,
      true,
    ]);
    assert.deepEqual(decodeReply(readPdu(4, 0, 2), Buffer.from([4, 4, 0, 1, 0xff, 0xff]), 1), [1, 65535]);
    assert.throws(() => decodeReply(readPdu(4, 0, 2), Buffer.from([0x84, 2]), 7), {
      code: 'EDGE_MODBUS_EXCEPTION',
    });
    assert.throws(() => decodeReply(readPdu(4, 0, 2), Buffer.from([4, 2, 0, 1]), 7), {
      code: 'EDGE_MODBUS_GARBLED',
    });
  });

  it('takes a write echo only if it is the whole request: the late echo of another value is garbled', () => {
    const on = writeCoilPdu(7, true);
    const off = writeCoilPdu(7, false);
    assert.equal(decodeReply(off, Buffer.from(off), 1), undefined);
    assert.throws(() => decodeReply(off, Buffer.from(on), 1), { code: 'EDGE_MODBUS_GARBLED' });
    assert.throws(() => decodeReply(writeRegisterPdu(3, 10), Buffer.from(writeRegisterPdu(3, 11)), 1), { code: 'EDGE_MODBUS_GARBLED' });
    // FC 16 echoes address and quantity.
    const regs = writeRegistersPdu(3, [1, 2]);
    assert.equal(decodeReply(regs, Buffer.from([16, 0, 3, 0, 2]), 1), undefined);
    assert.throws(() => decodeReply(regs, Buffer.from([16, 0, 3, 0, 1]), 1), { code: 'EDGE_MODBUS_GARBLED' });
  });
});

describe('modbus: one transaction queue per bus', () => {
  let sim: DoorSim;
  let line: FakeRtuLine;
  let bus: ModbusBus;

  beforeEach(async () => {
    sim = new DoorSim({ units: [1, 2, 3, 4, 5, 6], doors: 2 });
    line = new FakeRtuLine(sim);
    bus = new ModbusBus(
      { transport: 'rtu', path: 'fake', baudRate: 115200, timeoutMs: 50, frameGapMs: 5 },
      { clock: systemClock, log: silentLogger(), link: line },
    );
    await bus.start();
  });
  afterEach(async () => {
    await bus.close();
    await sim.stop();
  });

  it('fails only the faulty unit’s request, whatever the fault, and the next unit is still polled', async () => {
    sim.setFault(2, 'silent');
    sim.setFault(3, 'bad-crc');
    sim.setFault(4, 'exception');
    sim.setFault(5, 'short');
    sim.setFault(6, 'wrong-unit');
    // (the last request reads another table of unit 1, so it is not merged into the first)
    const requests = [1, 2, 3, 4, 5, 6].map((u) => bus.readInputRegisters(u, 200, 1));
    const results = await Promise.allSettled([...requests, bus.readHoldingRegisters(1, 0, 1)]);
    const codes = results.map((r) =>
      r.status === 'fulfilled' ? r.value : (r.reason as { code: string }).code,
    );
    assert.deepEqual(codes, [
      [0x0d01],
      'EDGE_MODBUS_TIMEOUT',
      'EDGE_MODBUS_CRC',
      'EDGE_MODBUS_EXCEPTION',
      'EDGE_MODBUS_SHORT_REPLY',
      'EDGE_MODBUS_GARBLED',
      [5],
    ]);
    // every request went out, each with its own unit id, in order
    assert.deepEqual(
      line.requests.map((r) => r.unit),
      [1, 2, 3, 4, 5, 6, 1],
    );
  });

  it('finds its reply past line noise and past a complete frame of another unit (a slow unit answering late)', async () => {
    sim.unit(1).swipe(0, 1, 'unknown');
    line.prefix = Buffer.from([0x00]);
    assert.deepEqual(await bus.readInputRegisters(1, 0, 1), [1]);
    // Unit 2's late answer to an earlier read (a good CRC, another unit) lands first.
    line.prefix = rtuFrame(2, Buffer.from([4, 2, 0x0d, 0x01]));
    assert.deepEqual(await bus.readInputRegisters(1, 0, 1), [1]);
    line.dribble = true;
    line.prefix = Buffer.concat([Buffer.from([0x01, 0x99]), rtuFrame(3, Buffer.from([4, 2, 0, 7]))]);
    assert.deepEqual(await bus.readInputRegisters(1, 0, 1), [1]);
    // The late frame trickling in over several reads, ours after it: no timer of the skipped frame fails us.
    line.dribble = false;
    line.prefixSlow = true;
    line.prefix = rtuFrame(2, Buffer.from([4, 2, 0x0d, 0x01]));
    assert.deepEqual(await bus.readInputRegisters(1, 0, 1), [1]);
  });

  it('reassembles a reply that arrives byte by byte', async () => {
    line.dribble = true;
    sim.unit(1).swipe(0, 1, 'unknown');
    assert.deepEqual(await bus.readInputRegisters(1, 0, 1), [1]);
  });

  it('coalesces adjacent and nearby reads of one unit and table queued together, and splits the result', async () => {
    for (let k = 0; k < 4; k++) sim.unit(1).swipe(0, 100 + k, 'unknown');
    const [a, b, c, other, bits] = await Promise.all([
      bus.readInputRegisters(1, 20, 4),
      bus.readInputRegisters(1, 24, 4),
      bus.readInputRegisters(1, 32, 4),
      bus.readInputRegisters(2, 20, 4),
      bus.readDiscreteInputs(1, 0, 4),
    ]);
    assert.deepEqual(a, [2, 0, 0, 100]);
    assert.deepEqual(b, [2, 0, 0, 101]);
    assert.deepEqual(c, [2, 0, 0, 103]);
    assert.deepEqual(other, [0, 0, 0, 0]);
    assert.deepEqual(bits, [false, false, false, false]);
    const irReads = line.requests.filter((r) => r.pdu[0] === 4);
    assert.deepEqual(
      irReads.map((r) => [r.unit, r.pdu.readUInt16BE(1), r.pdu.readUInt16BE(3)]),
      [
        [1, 20, 16],
        [2, 20, 4],
      ],
    );
    assert.equal(bus.stats.coalesced, 2);
  });

  it('never coalesces beyond the 125-register limit', async () => {
    await Promise.all([bus.readInputRegisters(1, 0, 100), bus.readInputRegisters(1, 100, 100)]);
    assert.equal(line.requests.length, 2);
  });

  it('sends writes (commands) before queued polls', async () => {
    const polls = [1, 2, 3].map((u) => bus.readInputRegisters(u, 0, 1));
    const write = bus.writeCoil(4, 1, true);
    await Promise.all([...polls, write]);
    assert.deepEqual(
      line.requests.map((r) => r.pdu[0]),
      [5, 4, 4, 4],
    );
    assert.ok(sim.unit(4).isReleased(0));
  });

  it('sends probes (polls of offline units) after the live polls: one per gap while polls wait', async () => {
    for (const u of [2, 3, 4]) sim.setFault(u, 'silent');
    const probes = [2, 3, 4].map((u) => bus.readInputRegisters(u, 200, 1, { priority: 'probe' }).catch((e) => e.code));
    // Reads of other tables: none merged with another.
    const live = [
      bus.readInputRegisters(1, 200, 1),
      bus.readHoldingRegisters(1, 0, 1),
      bus.readDiscreteInputs(1, 0, 4),
      bus.readInputRegisters(5, 200, 1),
    ];
    await Promise.all(live);
    const whenLiveDone = line.requests.map((r) => r.unit);
    assert.deepEqual(await Promise.all(probes), ['EDGE_MODBUS_TIMEOUT', 'EDGE_MODBUS_TIMEOUT', 'EDGE_MODBUS_TIMEOUT']);
    // One probe may go first (none went for a gap); the others wait for the live polls, and their gap.
    assert.deepEqual(whenLiveDone, [2, 1, 1, 1, 5]);
    assert.deepEqual(
      line.requests.map((r) => r.unit),
      [2, 1, 1, 1, 5, 3, 4],
    );
  });

  it('rejects bad ranges and unit ids without touching the line', async () => {
    await assert.rejects(bus.readInputRegisters(1, 0, 126), { code: 'EDGE_MODBUS_BAD_REQUEST' });
    await assert.rejects(bus.readInputRegisters(0, 0, 1), { code: 'EDGE_MODBUS_BAD_REQUEST' });
    await assert.rejects(bus.writeRegister(1, -1, 5), { code: 'EDGE_MODBUS_BAD_REQUEST' });
    await assert.rejects(bus.writeCoil(256, 0, true), { code: 'EDGE_MODBUS_BAD_REQUEST' });
    assert.equal(line.requests.length, 0);
  });

  it('fails queued requests fast while the link is down, then recovers', async () => {
    line.onLost(new Error('unplugged'));
    assert.ok(!bus.isConnected);
    await assert.rejects(bus.readInputRegisters(1, 0, 1), { code: 'EDGE_MODBUS_NOT_CONNECTED' });
    const deadline = Date.now() + 2000;
    while (!bus.isConnected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(await bus.readInputRegisters(1, 200, 1), [0x0d01]);
  });
});

describe('modbus: RTU inter-frame gap', () => {
  it('sends the next request only after 3.5 characters of silence since the last byte received, stray bytes included', async () => {
    const sim = new DoorSim({ units: [1, 2] });
    const line = new FakeRtuLine(sim);
    // 1200 baud: 3.5 characters of 11 bits are 32 ms, far above timer and scheduling noise.
    const gapMs = (3.5 * 11 * 1000) / 1200;
    const bus = new ModbusBus(
      { transport: 'rtu', path: 'fake', baudRate: 1200, timeoutMs: 500 },
      { clock: systemClock, log: silentLogger(), link: line },
    );
    await bus.start();
    let lastRx = 0;
    const deliver = line.onData;
    line.onData = (chunk) => {
      lastRx = performance.now();
      deliver(chunk);
    };
    try {
      await bus.readInputRegisters(1, 0, 1);
      const replyAt = lastRx;
      await bus.readInputRegisters(2, 0, 1);
      assert.ok(line.requests[1].at - replyAt >= gapMs, `gap ${line.requests[1].at - replyAt} ms`);
      // Line noise between transactions is dropped, but it restarts the silence the next request waits for.
      const third = bus.readInputRegisters(1, 0, 1);
      line.onData(Buffer.from([0x55]));
      const strayAt = lastRx;
      await third;
      assert.ok(
        line.requests[2].at - strayAt >= gapMs,
        `gap after stray ${line.requests[2].at - strayAt} ms`,
      );
    } finally {
      await bus.close();
      await sim.stop();
    }
  });
});

describe('modbus: bus properties (edgeward-modbus-bus)', () => {
  it('fills defaults and accepts the numeric strings Node-RED stores', () => {
    assert.deepEqual(parseBusProps({ transport: 'tcp', host: '10.0.0.5' }), {
      transport: 'tcp',
      host: '10.0.0.5',
      port: 502,
      timeoutMs: 200,
    });
    assert.deepEqual(parseBusProps({ path: '/dev/ttyUSB0', baudRate: '19200', parity: 'even', timeoutMs: '150' }), {
      transport: 'rtu',
      path: '/dev/ttyUSB0',
      baudRate: 19200,
      parity: 'even',
      stopBits: 1,
      timeoutMs: 150,
    });
    assert.equal(parseBusProps({ path: '/dev/ttyUSB0', stopBits: '2' }).stopBits, 2);
  });

  it('names a line by its path as written, not where a by-id link points today (ttyUSBn changes across reboots)', async () => {
    const dir = await tmpDir('bus-endpoint');
    try {
      const target = join(dir.path, 'ttyUSB0');
      const link = join(dir.path, 'usb-FTDI_east-if00');
      writeFileSync(target, '');
      symlinkSync(target, link);
      assert.equal(busEndpoint(parseBusProps({ path: link })), `rtu:${link}`);
      assert.equal(busEndpoint(parseBusProps({ transport: 'tcp', host: 'GW-1.local' })), 'tcp://gw-1.local:502');
    } finally {
      await dir.cleanup();
    }
  });

  it('names the bad property in an EDGE_CONFIG_INVALID error', () => {
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ transport: 'udp' }, 'transport'],
      [{ transport: 'tcp' }, 'host'],
      [{ transport: 'tcp', host: 'h', port: 70000 }, 'port'],
      [{ path: '' }, 'path'],
      [{ path: '/dev/x', parity: 'mark' }, 'parity'],
      [{ path: '/dev/x', baudRate: '96OO' }, 'baudRate'],
      [{ path: '/dev/x', timeoutMs: 0 }, 'timeoutMs'],
      [{ path: '/dev/x', stopBits: 1.5 }, 'stopBits'],
    ];
    for (const [props, field] of bad) {
      assert.throws(
        () => parseBusProps(props),
        (err: unknown) =>
          isEdgewardError(err, 'EDGE_CONFIG_INVALID') &&
          err.details?.field === field &&
          err.message.startsWith(`modbus bus: ${field} `),
        `${JSON.stringify(props)} → ${field}`,
      );
    }
  });
});
