import { Command, InvalidArgumentError, Option } from 'commander';
import { discoverAndDescribe } from '../drivers/onvif/discovery.js';
import { CAMERA_USERNAME_RULE, isCameraUsername } from '../drivers/onvif/index.js';
import { CameraSim } from '../hardware/sim/camera-sim.js';
import { type CliIo, intArg, secondsArg, stdio, untilStopSignal } from './cli-io.js';

export type { CliIo };

/** --username: the rule of the camera node's property, checked before anything is sent. */
function cameraUsername(v: string): string {
  if (!isCameraUsername(v)) throw new InvalidArgumentError(CAMERA_USERNAME_RULE);
  return v;
}

/** `discover onvif [--timeout S] [--probe HOST[:PORT]...]` */
export function discoverOnvifCommand(io: CliIo = stdio): Command {
  return new Command('onvif')
    .description('find ONVIF cameras (WS-Discovery multicast, plus unicast probes) and print model, firmware and stream URI')
    .option('--timeout <s>', 'seconds to wait for answers', secondsArg(600), 3)
    .option('--probe <host...>', 'also probe these addresses by unicast (host or host:port, default port 3702), for LANs that filter multicast')
    .option('--no-multicast', 'send unicast probes only')
    .option('-u, --username <user>', 'camera user for device information', cameraUsername, process.env.EDGEWARD_ONVIF_USERNAME)
    .addOption(new Option('-p, --password <password>', 'camera password (or EDGEWARD_ONVIF_PASSWORD)').env('EDGEWARD_ONVIF_PASSWORD'))
    .option('--json', 'print JSON')
    .action(async (o: { timeout: number; probe?: string[]; multicast: boolean; username?: string; password?: string; json?: boolean }) => {
      const timeoutS = o.timeout;
      const cams = await discoverAndDescribe({
        timeoutMs: timeoutS * 1000,
        probe: o.probe,
        multicast: o.multicast,
        username: o.username,
        password: o.password,
      });
      if (o.json) {
        io.out(JSON.stringify(cams, null, 2));
        return;
      }
      if (cams.length === 0) {
        io.out('no ONVIF cameras found (multicast may be filtered on this LAN: try --probe HOST)');
        return;
      }
      io.out(`${cams.length} camera(s):`);
      for (const c of cams) {
        io.out(`${c.host}:${c.port}  ${c.manufacturer ?? ''} ${c.model ?? '?'}  firmware ${c.firmware ?? '?'}  serial ${c.serial ?? '?'}`.replace(/ {3,}/g, '  '));
        io.out(`  stream   ${c.streamUri ?? '-'}`);
        io.out(`  snapshot ${c.snapshotUri ?? '-'}`);
        io.out(`  id       ${c.urn}  (${c.via})`);
        if (c.error) io.out(`  error    ${c.error}`);
      }
    });
}

/** `sim camera [--port N] [--discovery-port N] [--multicast] …`: run a simulated ONVIF camera until interrupted. */
export function simCameraCommand(io: CliIo = stdio): Command {
  return new Command('camera')
    .description('run a simulated ONVIF camera (HTTP SOAP + WS-Discovery) until Ctrl-C')
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'HTTP port (0 = any)', intArg(0, 65535), 8899)
    .option('--discovery-port <n>', 'UDP port answering unicast WS-Discovery probes (0 = any)', intArg(0, 65535), 0)
    .option('--multicast', 'answer multicast probes on 239.255.255.250:3702 instead of unicast ones on --discovery-port')
    .option('--username <user>', 'camera user', 'admin')
    .option('--password <password>', 'camera password', 'admin')
    .option('--model <model>', 'model', 'SimCam-200')
    .option('--firmware <v>', 'firmware version', '1.4.2')
    .option('--name <name>', 'name in discovery scopes', 'entrance-cam')
    .option('--motion-every <s>', 'emit motion on/off every S seconds (0 = never)', intArg(0, 86400), 0)
    .action(async (o: Record<string, string | boolean | undefined>, cmd: Command) => {
      if (o.multicast && cmd.getOptionValueSource('discoveryPort') === 'cli')
        throw new InvalidArgumentError('give --multicast or --discovery-port, not both: a multicast camera answers on 3702');
      const sim = new CameraSim({
        host: String(o.host),
        port: Number(o.port),
        username: String(o.username),
        password: String(o.password),
        model: String(o.model),
        firmware: String(o.firmware),
        name: String(o.name),
        discovery: o.multicast ? { multicast: true } : { port: Number(o.discoveryPort) },
      });
      await sim.start();
      io.out(`simulated camera ${sim.opts.model} at ${sim.deviceUrl}`);
      io.out(`WS-Discovery on udp ${o.multicast ? `239.255.255.250:${sim.discoveryPort}` : `${sim.opts.host}:${sim.discoveryPort}`}`);
      io.out(`stream ${sim.streamUri}`);
      const every = Number(o.motionEvery ?? 0);
      let on = false;
      const timer =
        every > 0
          ? setInterval(() => {
              on = !on;
              sim.motion(on);
            }, every * 1000)
          : undefined;
      await untilStopSignal();
      if (timer) clearInterval(timer);
      await sim.stop();
    });
}

/**
 * The ONVIF commands for edge/cli.ts: `discover onvif …` and `sim camera …`.
 * Each is returned under its parent (`discover`, `sim`); if the CLI already
 * has a parent of that name, add the parent's subcommands to it instead:
 * `for (const sub of cmd.commands) existing.addCommand(sub)`.
 */
export function onvifCommands(io: CliIo = stdio): Command[] {
  const discover = new Command('discover').description('discover devices on the LAN');
  discover.addCommand(discoverOnvifCommand(io));
  const sim = new Command('sim').description('run device simulators');
  sim.addCommand(simCameraCommand(io));
  return [discover, sim];
}
