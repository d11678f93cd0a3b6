import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Command, InvalidArgumentError } from 'commander';
import { profilesDir } from '../drivers/door/profile.js';
import { ModbusBus, type ModbusBusOptions } from '../drivers/modbus/bus.js';
import { DoorSim } from '../hardware/sim/door-sim.js';
import { type CliIo, hostPortArg, intArg, stdio, untilStopSignal } from './cli-io.js';
import { systemClock } from './clock.js';
import { EdgewardError, isEdgewardError } from './errors.js';
import { silentLogger } from './log.js';

export type { CliIo };

/** One unit that answered a scan. */
export interface ScannedUnit {
  unit: number;
  /** Input register 200 when the unit has the profile registers. */
  deviceType?: number;
  /** Input register 201. */
  firmware?: number;
  /** The profile whose deviceType matches, if any. */
  profile?: string;
  /** Why the identity registers could not be read although the unit answered (e.g. an exception). */
  note?: string;
}

/** Parse `1-247`, `1,2,5-8` into unit ids 1…247. */
export function parseUnits(spec: string): number[] {
  const out = new Set<number>();
  for (const part of spec.split(',')) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (!m) throw new InvalidArgumentError(`bad unit range "${part}"`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo < 1 || hi > 247 || lo > hi)
      throw new InvalidArgumentError(`unit range "${part}" must be within 1-247`);
    for (let u = lo; u <= hi; u++) out.add(u);
  }
  return [...out].sort((a, b) => a - b);
}

/** deviceType → profile name, from every profile file that declares one. */
function profileTypes(): Map<number, string> {
  const map = new Map<number, string>();
  try {
    for (const f of readdirSync(profilesDir())) {
      if (!f.endsWith('.json')) continue;
      try {
        const p = JSON.parse(readFileSync(join(profilesDir(), f), 'utf8')) as {
          profile?: string;
          deviceType?: number;
        };
        if (typeof p.deviceType === 'number') map.set(p.deviceType, p.profile ?? f.replace(/\.json$/, ''));
      } catch {
        // a broken profile file is not the scan's problem
      }
    }
  } catch {
    // no profiles directory: units are listed without a profile name
  }
  return map;
}

/**
 * List the units that answer on a bus. Each unit is asked for input registers
 * 200–201 (device type, firmware: SPEC.md "Reference device profiles"); a unit
 * that answers with an exception exists but has no such registers. A timeout
 * means no unit at that address; the bus's one queue keeps the scan strictly
 * sequential, so a missing unit costs exactly one timeout.
 */
export async function scanModbus(
  opts: ModbusBusOptions & { units: number[] },
  onFound?: (u: ScannedUnit) => void,
  onOpen?: () => void,
): Promise<ScannedUnit[]> {
  const bus = new ModbusBus({ ...opts, reconnectMaxMs: 1000 }, { clock: systemClock, log: silentLogger() });
  await bus.start();
  const types = profileTypes();
  const found: ScannedUnit[] = [];
  try {
    const deadline = Date.now() + 3000;
    while (!bus.isConnected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (!bus.isConnected) {
      // The link's own message names the bus already ("cannot connect to host:port: …"): said once.
      const why = bus.openError?.replace(/^cannot (?:open|connect to) \S+: /, '') ?? 'no connection within 3 s';
      throw new EdgewardError('EDGE_MODBUS_OPEN', `cannot open ${bus.label}: ${why}`);
    }
    onOpen?.();
    for (const unit of opts.units) {
      let u: ScannedUnit | undefined;
      try {
        const [deviceType, firmware] = await bus.readInputRegisters(unit, 200, 2);
        u = { unit, deviceType, firmware, profile: types.get(deviceType) };
      } catch (err) {
        // The link itself went away: no unit answered anything; say so rather than list every id as present.
        if (isEdgewardError(err) && LINK_DOWN.has(err.code))
          throw new EdgewardError('EDGE_MODBUS_OPEN', `${bus.label}: the link dropped during the scan at unit ${unit} (${err.message})`, { cause: err });
        if (isEdgewardError(err, 'EDGE_MODBUS_EXCEPTION'))
          u = { unit, note: `answers, no identity registers (${err.message.replace(/^unit \d+: /, '')})` };
        else if (isEdgewardError(err) && err.code !== 'EDGE_MODBUS_TIMEOUT')
          u = { unit, note: `answers, but ${err.code}` };
      }
      if (u) {
        found.push(u);
        onFound?.(u);
      }
    }
  } finally {
    await bus.close();
  }
  return found;
}

/** Errors that mean the bus's link is down, not that a unit answered oddly. */
const LINK_DOWN = new Set(['EDGE_MODBUS_DISCONNECTED', 'EDGE_MODBUS_NOT_CONNECTED', 'EDGE_MODBUS_CLOSED']);

function hex(n: number | undefined): string {
  return n === undefined ? '-' : `0x${n.toString(16).padStart(4, '0').toUpperCase()}`;
}

/** `scan modbus (--serial DEV --baud N | --tcp HOST:PORT) [--units 1-247] [--timeout MS]` */
export function scanModbusCommand(io: CliIo = stdio): Command {
  return new Command('modbus')
    .description('list the Modbus units that answer on a bus, with device type and firmware')
    .option('--serial <dev>', 'serial device (Modbus RTU)')
    .option('--baud <n>', 'baud rate', intArg(50, 4_000_000), 9600)
    .option('--parity <p>', 'none | even | odd', 'none')
    .option('--tcp <host:port>', 'Modbus TCP server (port 502 if left out)', hostPortArg(502))
    .option('--units <ranges>', 'unit ids to try, e.g. 1-247 or 1,5-8', '1-247')
    .option('--timeout <ms>', 'reply timeout per unit', intArg(1, 60_000), 100)
    .action(async (o: { serial?: string; baud: number; parity: string; tcp?: { host: string; port: number }; units: string; timeout: number }) => {
      if (!o.serial === !o.tcp)
        throw new InvalidArgumentError('give exactly one of --serial DEV or --tcp HOST:PORT');
      const units = parseUnits(String(o.units));
      const timeoutMs = o.timeout;
      let bus: ModbusBusOptions;
      if (o.tcp) {
        bus = { transport: 'tcp', host: o.tcp.host, port: o.tcp.port, timeoutMs };
      } else {
        if (o.parity !== 'none' && o.parity !== 'even' && o.parity !== 'odd')
          throw new InvalidArgumentError('--parity must be none, even or odd');
        bus = { transport: 'rtu', path: o.serial, baudRate: o.baud, parity: o.parity, timeoutMs };
      }
      io.out(
        `scanning ${units.length} unit id(s) on ${o.tcp ? `${o.tcp.host}:${o.tcp.port}` : `${o.serial} @ ${o.baud}`} (timeout ${timeoutMs} ms)`,
      );
      const found = await scanModbus(
        { ...bus, units },
        (u) => {
          const fw = u.firmware === undefined ? '-' : `${u.firmware >> 8}.${u.firmware & 0xff}`;
          io.out(
            `${String(u.unit).padEnd(4)}  ${hex(u.deviceType).padEnd(11)}  ${fw.padEnd(8)}  ${u.profile ?? u.note ?? 'unknown'}`,
          );
        },
        // The table's header once the bus is open: a bus that does not open prints only why.
        () => io.out('unit  device type  firmware  profile'),
      );
      io.out(`${found.length} unit(s) answered`);
    });
}

/** `sim door (--serial PATH | --tcp PORT) [--units 1-8] [--doors N] [--baud N] [--pace]`: run simulated door controllers; script lines on stdin. */
export function simDoorCommand(io: CliIo = stdio): Command {
  return new Command('door')
    .description(
      'run simulated generic-door controllers as a Modbus RTU slave on a serial path or a Modbus TCP server, until Ctrl-C',
    )
    .option('--serial <path>', 'serial device to serve on (e.g. one end of a socat PTY pair)')
    .option('--tcp <port>', 'serve Modbus TCP on this port (0 = any)', intArg(0, 65535))
    .option('--host <addr>', 'TCP address to listen on', '127.0.0.1')
    .option('--units <ranges>', 'unit ids to simulate', '1-8')
    .option('--doors <n>', 'doors per controller (1-4)', intArg(1, 4), 1)
    .option('--baud <n>', 'baud rate (and wire pacing with --pace)', intArg(50, 4_000_000), 9600)
    .option('--pace', 'delay replies by their wire time at --baud')
    .option('--profile <name>', 'device profile', 'generic-door')
    .option(
      '--autoplay <ms>',
      'lifelike activity (cards, doors, an occasional forced entry) every MS (0 = off)',
      intArg(0, 3_600_000),
      0,
    )
    .action(async (o: Record<string, string | number | boolean | undefined>) => {
      if (!o.serial === (o.tcp === undefined))
        throw new InvalidArgumentError('give exactly one of --serial PATH or --tcp PORT');
      const sim = new DoorSim({
        units: parseUnits(String(o.units)),
        doors: Number(o.doors),
        profile: String(o.profile),
      });
      if (o.serial) {
        await sim.serveRtu(String(o.serial), { baudRate: Number(o.baud), pace: o.pace === true });
        io.out(`simulating units ${o.units} (Modbus RTU) on ${o.serial}`);
      } else {
        const { port } = await sim.serveTcp(Number(o.tcp), String(o.host));
        io.out(`simulating units ${o.units} (Modbus TCP) on ${o.host}:${port}`);
      }
      if (Number(o.autoplay) > 0) sim.autoplay(Number(o.autoplay));
      io.out(
        'commands: open U D | close U D | swipe U D CARD [granted|unknown|schedule] | force U D | exit U D | tamper U D on|off | held U D | flood U N | fault U none|silent|bad-crc|exception|short|wrong-unit',
      );
      const rl = createInterface({ input: process.stdin, terminal: false });
      rl.on('line', (line) => {
        try {
          const r = sim.command(line);
          if (r) io.out(r);
        } catch (err) {
          io.err((err as Error).message);
        }
      });
      await untilStopSignal();
      rl.close();
      await sim.stop();
    });
}

/**
 * The Modbus commands for edge/cli.ts: `scan modbus …` and `sim door …`,
 * each under its parent (`scan`, `sim`). If the CLI already has a parent of
 * that name, add the parent's subcommands to it instead:
 * `for (const sub of cmd.commands) existing.addCommand(sub)`.
 */
export function modbusCommands(io: CliIo = stdio): Command[] {
  const scan = new Command('scan').description('scan buses for devices');
  scan.addCommand(scanModbusCommand(io));
  const sim = new Command('sim').description('run device simulators');
  sim.addCommand(simDoorCommand(io));
  return [scan, sim];
}
