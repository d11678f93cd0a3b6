import assert from 'node:assert/strict';
import { type AddressInfo, connect, createServer } from 'node:net';
import { Command } from 'commander';
import { ModbusBus } from '../../drivers/modbus/bus.js';
import { modbusCommands, parseUnits } from '../../edge/cli-modbus.js';
import { systemClock } from '../../edge/clock.js';
import { silentLogger } from '../../edge/log.js';
import { captureLogger } from '../helpers/log.js';
import { DoorSim } from '../../hardware/sim/door-sim.js';
import { openPtyPair, type PtyPair } from '../helpers/pty.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

describe('edgeward scan modbus over a PTY pair (integration)', function () {
  this.timeout(20_000);
  let tmp: TmpDir;
  let pty: PtyPair;
  let sim: DoorSim;

  before(async () => {
    tmp = await tmpDir('scan');
    pty = await openPtyPair(tmp.path);
    sim = new DoorSim({ units: [3, 5, 9] });
    sim.setFault(5, 'exception');
    await sim.serveRtu(pty.b);
  });
  after(async () => {
    await sim?.stop();
    await pty?.kill();
    await tmp?.cleanup();
  });

  it('lists the answering units with device type, firmware and profile', async () => {
    const out: string[] = [];
    const program = new Command('edgeward').exitOverride();
    for (const c of modbusCommands({ out: (l) => out.push(l), err: (l) => out.push(l) }))
      program.addCommand(c);
    await program.parseAsync(
      ['scan', 'modbus', '--serial', pty.a, '--baud', '19200', '--units', '1-10', '--timeout', '50'],
      { from: 'user' },
    );
    const rows = out.filter((l) => /^\d+ {2,}/.test(l));
    assert.equal(rows.length, 3, out.join('\n'));
    assert.match(rows[0], /^3\s+0x0D01\s+1\.2\s+generic-door$/);
    assert.match(rows[1], /^5\s+.*answers, no identity registers/);
    assert.match(rows[2], /^9\s+0x0D01/);
    assert.equal(out.at(-1), '3 unit(s) answered');
  });

  it('parses unit ranges and rejects bad ones', () => {
    assert.deepEqual(parseUnits('1-3,7,2'), [1, 2, 3, 7]);
    assert.throws(() => parseUnits('0-4'));
    assert.throws(() => parseUnits('a'));
  });
});

describe('Modbus TCP bus (integration)', function () {
  this.timeout(20_000);
  let sim: DoorSim;
  let bus: ModbusBus;
  let server: Awaited<ReturnType<DoorSim['serveTcp']>>['server'];

  before(async () => {
    sim = new DoorSim({ units: [1, 2] });
    const served = await sim.serveTcp(0);
    server = served.server;
    bus = new ModbusBus(
      { transport: 'tcp', host: '127.0.0.1', port: served.port, timeoutMs: 100, reconnectMinMs: 50 },
      { clock: systemClock, log: silentLogger() },
    );
    await bus.start();
  });
  after(async () => {
    await bus?.close();
    await sim?.stop();
  });

  it('reads and writes with the unit id in the MBAP header', async () => {
    sim.unit(2).swipe(0, 70000, 'unknown');
    assert.deepEqual(await bus.readInputRegisters(2, 0, 1), [1]);
    assert.deepEqual(await bus.readInputRegisters(1, 0, 1), [0]);
    await bus.writeRegister(1, 1, 12);
    assert.equal(sim.unit(1).hr[1], 12);
  });

  it('a silent unit times out alone and a late reply never answers the next request', async () => {
    sim.setFault(1, 'silent');
    await assert.rejects(bus.readInputRegisters(1, 200, 2), { code: 'EDGE_MODBUS_TIMEOUT' });
    assert.deepEqual(await bus.readInputRegisters(2, 200, 2), [0x0d01, 0x0102]);
    sim.setFault(1, 'exception');
    await assert.rejects(bus.readInputRegisters(1, 200, 2), { code: 'EDGE_MODBUS_EXCEPTION' });
    sim.setFault(1, 'none');
  });

  it('reconnects after the server drops the connection', async () => {
    server.dropClients();
    await waitFor(() => !bus.isConnected, { message: 'drop noticed' });
    await waitFor(
      async () => (await bus.readInputRegisters(1, 200, 1).catch(() => undefined))?.[0] === 0x0d01,
      { message: 'reads again after reconnect' },
    );
    assert.ok(bus.stats.reconnects >= 1);
  });
});

describe('Modbus TCP bus against a hostile peer (integration)', function () {
  this.timeout(20_000);

  it('skips 64 KiB of foreign frames in one read without running out of stack, then takes its reply', async () => {
    // Answers each request with 9,363 short frames of another transaction, then the real reply, in one write.
    const server = createServer((sock) => {
      sock.on('data', (req) => {
        const txId = req.readUInt16BE(0);
        const foreign = Buffer.alloc(7 * 9363);
        for (let i = 0; i < 9363; i++) {
          foreign.writeUInt16BE((txId + 1 + i) & 0xffff, 7 * i);
          foreign.writeUInt16BE(1, 4 + 7 * i);
        }
        // FC 4, one register, value 0x0d01.
        const reply = Buffer.from([txId >> 8, txId & 0xff, 0, 0, 0, 5, req[6], 4, 2, 0x0d, 0x01]);
        sock.write(Buffer.concat([foreign, reply]));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as AddressInfo).port;
    const bus = new ModbusBus({ transport: 'tcp', host: '127.0.0.1', port, timeoutMs: 2000, reconnectMinMs: 50 }, { clock: systemClock, log: silentLogger() });
    try {
      await bus.start();
      assert.deepEqual(await bus.readInputRegisters(1, 200, 1), [0x0d01]);
    } finally {
      await bus.close();
      server.close();
    }
  });

  it('a gateway that accepts each connection and closes it at once: reconnects back off, one log line', async () => {
    let connections = 0;
    const server = createServer((sock) => {
      connections++;
      sock.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as AddressInfo).port;
    const { log, lines } = captureLogger('info');
    const bus = new ModbusBus({ transport: 'tcp', host: '127.0.0.1', port, timeoutMs: 200, reconnectMinMs: 50, reconnectMaxMs: 800 }, { clock: systemClock, log });
    try {
      await bus.start();
      const t0 = performance.now();
      await waitFor(() => connections >= 6, { timeoutMs: 10_000, message: 'six connections' });
      // 50, 100, 200, 400, 800 ms between them (at least 1.5 s); every ~50 ms before (measured: 10 a second).
      assert.ok(performance.now() - t0 >= 1_000, `six connections in ${Math.round(performance.now() - t0)} ms`);
      const lost = lines.filter((l) => String(l.msg).startsWith('modbus link lost'));
      assert.equal(lost.length, 1, JSON.stringify(lost.map((l) => l.msg)));
      assert.equal(lines.filter((l) => l.msg === 'modbus link open').length, 1, 'reopens at debug');
    } finally {
      await bus.close();
      server.close();
    }
  });

  it('a TCP session that wedges (requests taken, never answered) is reopened after 5 timeouts and a silence', async () => {
    const sim = new DoorSim({ units: [1] });
    const served = await sim.serveTcp(0, '127.0.0.1');
    // The first connection is swallowed (a wedged gateway session); later ones reach the simulator.
    let sessions = 0;
    const server = createServer((sock) => {
      if (sessions++ === 0) {
        sock.on('data', () => undefined);
        return;
      }
      const up = connect(served.port, '127.0.0.1');
      sock.pipe(up).pipe(sock);
      sock.on('error', () => up.destroy());
      up.on('error', () => sock.destroy());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as AddressInfo).port;
    // Reopened after 5 timeouts and 300 ms without any reply (default: 30 s).
    const bus = new ModbusBus({ transport: 'tcp', host: '127.0.0.1', port, timeoutMs: 50, reconnectMinMs: 20, wedgedAfterMs: 300 }, { clock: systemClock, log: silentLogger() });
    try {
      await bus.start();
      for (let i = 0; i < 5; i++) await assert.rejects(bus.readInputRegisters(1, 200, 1), { code: 'EDGE_MODBUS_TIMEOUT' });
      await waitFor(async () => (await bus.readInputRegisters(1, 200, 1).catch(() => undefined))?.[0] === 0x0d01, {
        message: 'reads again over a new connection',
      });
      assert.equal(sessions, 2);
    } finally {
      await bus.close();
      server.close();
      await sim.stop();
    }
  });

  it('five dead units among healthy ones on one gateway: timeouts in a row do not reopen a connection that answers', async () => {
    const sim = new DoorSim({ units: [1, 2, 3, 4, 5, 6, 7, 8] });
    for (const u of [1, 2, 3, 4, 5]) sim.setFault(u, 'silent');
    const served = await sim.serveTcp(0, '127.0.0.1');
    const bus = new ModbusBus(
      { transport: 'tcp', host: '127.0.0.1', port: served.port, timeoutMs: 50, reconnectMinMs: 20, wedgedAfterMs: 2_000 },
      { clock: systemClock, log: silentLogger() },
    );
    try {
      await bus.start();
      for (let round = 0; round < 3; round++) {
        // The dead units first, in a row (as door drivers poll them all after a reconnect), then the healthy.
        const dead = [1, 2, 3, 4, 5].map((u) => bus.readInputRegisters(u, 200, 1).then(() => 'ok', (e) => e.code));
        const healthy = [6, 7, 8].map((u) => bus.readInputRegisters(u, 200, 1));
        assert.deepEqual(await Promise.all(dead), Array(5).fill('EDGE_MODBUS_TIMEOUT'));
        assert.deepEqual(await Promise.all(healthy), [[0x0d01], [0x0d01], [0x0d01]]);
      }
      assert.equal(bus.stats.reconnects, 0);
    } finally {
      await bus.close();
      await sim.stop();
    }
  });
});
