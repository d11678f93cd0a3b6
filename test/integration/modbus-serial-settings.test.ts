import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { ModbusBus } from '../../drivers/modbus/bus.js';
import { parseBusProps } from '../../drivers/modbus/index.js';
import { systemClock } from '../../edge/clock.js';
import { silentLogger } from '../../edge/log.js';
import { openPtyPair, type PtyPair } from '../helpers/pty.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

/** The line settings the serial port really has, as the kernel reports them (stty). */
function stty(path: string): string {
  return execFileSync('stty', ['-F', path, '-a'], { encoding: 'utf8' });
}

describe('modbus RTU line settings on a real PTY (integration)', function () {
  this.timeout(20_000);
  let tmp: TmpDir;
  let pty: PtyPair;
  before(async () => {
    tmp = await tmpDir('modbus-serial-settings');
    pty = await openPtyPair(tmp.path);
  });
  after(async () => {
    await pty?.kill();
    await tmp?.cleanup();
  });

  for (const [props, expect] of [
    [{}, ['speed 9600 baud', '-parenb', '-cstopb', 'cs8']],
    // Parity cannot be seen here: the kernel keeps a PTY at 8 bits, no parity, whatever is asked.
    [{ baudRate: '19200', stopBits: '2' }, ['speed 19200 baud', 'cstopb', 'cs8']],
  ] as const) {
    it(`opens the port as configured: ${JSON.stringify(props)}`, async () => {
      const bus = new ModbusBus(parseBusProps({ path: pty.a, ...props }), { clock: systemClock, log: silentLogger() });
      await bus.start();
      try {
        await waitFor(() => bus.isConnected, { message: 'port open' });
        const text = stty(pty.a);
        const words = text.split(/[\s;]+/);
        for (const w of expect) assert.ok(w.includes(' ') ? text.includes(w) : words.includes(w), `${w} in ${text}`);
      } finally {
        await bus.close();
      }
    });
  }
});
