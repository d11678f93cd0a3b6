import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ModbusDoorDriver } from '../../drivers/door/driver.js';
import { loadDoorProfile } from '../../drivers/door/profile.js';
import { ModbusBus } from '../../drivers/modbus/bus.js';
import { EventBus } from '../../edge/bus.js';
import { systemClock } from '../../edge/clock.js';
import { type EventInput, pseudonymiseCard } from '../../edge/envelope.js';
import { silentLogger } from '../../edge/log.js';
import { openPtyPair, type PtyPair } from '../helpers/pty.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

/**
 * A generic-door unit served by an independent Modbus implementation:
 * Debian's pymodbus 3.0 RTU server on the other end of a socat PTY pair.
 * Lines on its stdin script the device (`swipe` records a granted card and opens the door).
 */
const SERVER = String.raw`
import asyncio, sys
from pymodbus.server import StartAsyncSerialServer
from pymodbus.datastore import ModbusSlaveContext, ModbusServerContext, ModbusSequentialDataBlock
from pymodbus.transaction import ModbusRtuFramer

UNIT = 17
ir = [0] * 256
ir[200] = 0x0D01
ir[201] = 0x0203
slave = ModbusSlaveContext(
    di=ModbusSequentialDataBlock(0, [0] * 32), co=ModbusSequentialDataBlock(0, [0] * 32),
    hr=ModbusSequentialDataBlock(0, [5, 30] + [0] * 14), ir=ModbusSequentialDataBlock(0, ir), zero_mode=True)
context = ModbusServerContext(slaves={UNIT: slave}, single=False)

def on_line():
    line = sys.stdin.readline().strip()
    if line == 'swipe':
        k = slave.getValues(4, 0, 1)[0] + 1
        card = 123456789
        slave.setValues(4, 16 + 4 * (k % 32), [1, 0, card >> 16, card & 0xFFFF])
        slave.setValues(4, 0, [k])
        slave.setValues(2, 0, [1])
    elif line == 'coils':
        print('coils', slave.getValues(1, 0, 2), flush=True)

async def main():
    asyncio.get_running_loop().add_reader(sys.stdin, on_line)
    print('starting', flush=True)
    await StartAsyncSerialServer(context=context, framer=ModbusRtuFramer, port=sys.argv[1], baudrate=19200, timeout=0.005)

asyncio.run(main())
`;

describe('door driver against pymodbus (independent Modbus RTU server, integration)', function () {
  this.timeout(30_000);
  let tmp: TmpDir;
  let pty: PtyPair;
  let py: ChildProcess;
  let out = '';
  let bus: ModbusBus;

  before(async () => {
    tmp = await tmpDir('pymodbus');
    pty = await openPtyPair(tmp.path);
    const script = join(tmp.path, 'server.py');
    await writeFile(script, SERVER);
    py = spawn('/usr/bin/python3', [script, pty.b], { stdio: ['pipe', 'pipe', 'pipe'] });
    py.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    py.stderr?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    // 'close' comes after the exit and the last of its output, so the error below can show the traceback.
    let ended: string | undefined;
    py.once('close', (code, signal) => {
      ended = `exit ${code ?? signal}`;
    });
    py.once('error', (err) => {
      ended = err.message;
    });
    bus = new ModbusBus(
      { transport: 'rtu', path: pty.a, baudRate: 19200, timeoutMs: 300 },
      { clock: systemClock, log: silentLogger() },
    );
    await bus.start();
    // pymodbus must be installed (Debian python3-pymodbus). A Python that exited (import error, bad
    // port) fails the wait at once with its output; one that runs but never answers fails at the deadline.
    await waitFor(
      async () => {
        if (ended !== undefined) throw new Error(`pymodbus ended (${ended})`);
        return (await bus.readInputRegisters(17, 200, 2).catch(() => undefined)) ?? false;
      },
      {
        timeoutMs: 15_000,
        failFast: true,
        message: () => `pymodbus server answering (output: ${out.trim()})`,
      },
    );
  });

  after(async () => {
    await bus?.close();
    py?.kill('SIGTERM');
    await pty?.kill();
    await tmp?.cleanup();
  });

  it('reads device type and firmware from the profile registers', async () => {
    assert.deepEqual(await bus.readInputRegisters(17, 200, 2), [0x0d01, 0x0203]);
  });

  it('turns a ring entry and a door contact into access.granted and door.opened, and writes coils', async () => {
    const events: EventInput[] = [];
    const ctx = {
      bus: new EventBus(),
      clock: systemClock,
      log: silentLogger(),
      emit: (e: EventInput) => void events.push(e),
      privacy: { siteKey: 'k', rawCards: false },
    };
    const driver = new ModbusDoorDriver(
      'door-py',
      { unitId: 17, profile: loadDoorProfile('generic-door'), doors: 1, pollMs: 50 },
      () => ({ resource: bus, release: async () => undefined }),
      ctx,
    );
    await driver.start();
    try {
      await waitFor(() => driver.state().online, { message: 'door-py online' });
      py.stdin?.write('swipe\n');
      await waitFor(() => events.length >= 3, {
        message: () =>
          `3 events from pymodbus unit, got ${JSON.stringify(events.map((e) => [e.type, e.data]))}`,
      });
      assert.deepEqual(
        events.map((e) => [e.type, e.data]),
        [
          ['device.online', { unit: 17 }],
          ['access.granted', { door: 0, card: pseudonymiseCard(123456789, 'k') }],
          ['door.opened', { door: 0 }],
        ],
      );
      await driver.execute({ id: 'c', action: 'door.hold', target: 'door-py', args: {} });
      assert.deepEqual(await bus.readCoils(17, 0, 2), [false, true]);
    } finally {
      await driver.stop();
    }
  });
});
