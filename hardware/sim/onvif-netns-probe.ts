/**
 * Multicast WS-Discovery end to end, meant to run inside a fresh network
 * namespace where loopback multicast works (see the ONVIF discovery test):
 *   unshare -n sh -c 'ip link set lo up; ip link set lo multicast on;
 *     ip route add 224.0.0.0/4 dev lo; exec node --import tsx hardware/sim/onvif-netns-probe.ts'
 * Starts a simulated camera that joins 239.255.255.250:3702, probes by
 * multicast only, and prints one JSON line: { simUrn, deviceUrl, found }.
 */
import { discoverOnvif } from '../../drivers/onvif/discovery.js';
import { CameraSim } from './camera-sim.js';

async function main(): Promise<void> {
  const sim = new CameraSim({ model: 'NetnsCam', discovery: { multicast: true } });
  await sim.start();
  try {
    const found = await discoverOnvif({ multicast: true, timeoutMs: Number(process.env.PROBE_TIMEOUT_MS ?? 1500) });
    process.stdout.write(`${JSON.stringify({ simUrn: sim.urn, deviceUrl: sim.deviceUrl, probes: sim.stats.probes, found })}\n`);
  } finally {
    await sim.stop();
  }
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});
