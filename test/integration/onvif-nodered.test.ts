import assert from 'node:assert/strict';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Runtime } from '../../edge/runtime.js';
import { CameraSim } from '../../hardware/sim/camera-sim.js';
import { nodeRedUserDir, type PostSink, startPostSink, startRuntimeWithFlow } from '../helpers/runtime-flow.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

const CRED_SECRET = 'onvif-node-test-secret';

/** Node-RED's credential file format: {"$": hex(iv) + base64(aes-256-ctr(JSON))}, key = sha256(secret). */
function encryptCredentials(creds: Record<string, unknown>): string {
  const key = createHash('sha256').update(CRED_SECRET).digest();
  const iv = randomBytes(16);
  const c = createCipheriv('aes-256-ctr', key, iv);
  const body = c.update(JSON.stringify(creds), 'utf8', 'base64') + c.final('base64');
  return JSON.stringify({ $: iv.toString('hex') + body });
}

/**
 * The edgeward-camera node in a flow run by the embedded Node-RED of a real
 * Runtime, against the camera simulator: the password comes from the flow's
 * encrypted credentials, events reach the outbox and the node's output, and
 * the editor's discover endpoint lists the simulator.
 */
describe('edgeward-camera node in the runtime (integration)', function () {
  this.timeout(40_000);
  let tmp: TmpDir;
  let sim: CameraSim;
  let runtime: Runtime;
  let sink: PostSink<{ type?: string; source?: { device: string } }>;
  const prevSecret = process.env.EDGEWARD_CREDENTIAL_SECRET;

  before(async () => {
    tmp = await tmpDir('onvif-node');
    sim = new CameraSim({ username: 'tech', password: 'cam-pass', model: 'GateCam-9', firmware: '2.0.1', discovery: { port: 0 } });
    await sim.start();
    sink = await startPostSink();
    const flow = [
      { id: 'tab', type: 'tab', label: 'cameras' },
      { id: 'cam1', type: 'edgeward-camera', z: 'tab', name: 'gate-cam', host: '127.0.0.1', port: String(sim.port), username: 'tech', wires: [['post']] },
      { id: 'post', type: 'http request', z: 'tab', method: 'POST', ret: 'txt', paytoqs: 'ignore', url: sink.url, wires: [[]] },
    ];
    // Node-RED keeps `<flow>_cred.json` in its userDir (the runtime's `<dataDir>/node-red`), not beside the flow file.
    const userDir = nodeRedUserDir(tmp.path);
    await mkdir(userDir, { recursive: true });
    await writeFile(path.join(userDir, 'flow_cred.json'), encryptCredentials({ cam1: { password: 'cam-pass' } }));
    process.env.EDGEWARD_CREDENTIAL_SECRET = CRED_SECRET;
    runtime = await startRuntimeWithFlow({ dir: tmp.path, flow, siteKey: 'k', editor: true });
  });

  after(async () => {
    await runtime?.stop();
    await sim?.stop();
    await sink?.close();
    await tmp?.cleanup();
    if (prevSecret === undefined) delete process.env.EDGEWARD_CREDENTIAL_SECRET;
    else process.env.EDGEWARD_CREDENTIAL_SECRET = prevSecret;
  });

  const stored = (type: string) => runtime.outbox.recent(200).find((e) => e.source.device === 'gate-cam' && e.type === type);

  it('connects with the credential password and stores device.online with the stream URI', async () => {
    const ev = await waitFor(() => stored('device.online'), { timeoutMs: 10_000, message: 'device.online stored' });
    assert.equal(ev.data.model, 'GateCam-9');
    assert.equal(ev.data.firmware, '2.0.1');
    assert.equal(ev.data.streamUri, sim.streamUri);
    assert.equal(sim.stats.authFailures, 0);
    await waitFor(() => runtime.status().devices.find((d) => d.name === 'gate-cam')?.online, { message: 'online in status' });
  });

  it('stores motion and tamper events and mirrors them on the node output', async () => {
    await waitFor(() => sim.pullsHeld === 1, { message: 'a held pull' });
    sim.motion(true);
    sim.tamper(true);
    const motion = await waitFor(() => stored('camera.motion'), { message: 'camera.motion stored' });
    assert.equal(motion.data.topic, 'tns1:VideoSource/MotionAlarm');
    assert.equal(motion.source.driver, 'onvif');
    const tamper = await waitFor(() => stored('camera.tamper'), { message: 'camera.tamper stored' });
    assert.equal(tamper.severity, 'warning');
    assert.ok(tamper.msg?.zh && tamper.msg.bo && tamper.msg.en);
    await waitFor(() => sink.posted.some((p) => p.type === 'camera.motion') && sink.posted.some((p) => p.type === 'camera.tamper'), {
      message: 'events on the node output',
    });
    assert.ok(sink.posted.every((p) => p.source?.device === 'gate-cam'));
  });

  it('exports the camera health in /metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${runtime.port}/metrics`)).text();
    for (const metric of ['renewFailures', 'resubscriptions', 'subscriptionAgeS']) {
      assert.match(text, new RegExp(`edgeward_driver_health\\{[^}]*device="gate-cam"[^}]*metric="${metric}"[^}]*\\} `), metric);
    }
  });

  it('loads exactly the edgeward node types from the nodes folder (its lib/ helpers are not nodes)', async () => {
    const res = await fetch(`http://127.0.0.1:${runtime.port}/nodes`, { headers: { accept: 'application/json' } });
    assert.equal(res.status, 200);
    const sets = (await res.json()) as Array<{ id: string; types: string[] }>;
    const ours = sets.filter((s) => s.types.some((t) => t.startsWith('edgeward-')));
    assert.deepEqual(ours.flatMap((s) => s.types).sort(), [
      'edgeward-camera',
      'edgeward-card-reader',
      'edgeward-door',
      'edgeward-event',
      'edgeward-modbus-bus',
    ]);
    assert.ok(!sets.some((s) => s.id.includes('device-node')), 'lib/device-node.js is not a node set');
  });

  it('serves the editor discover endpoint', async () => {
    const res = await fetch(`http://127.0.0.1:${runtime.port}/edgeward/onvif/discover?timeout=1&probe=127.0.0.1:${sim.discoveryPort}`);
    assert.equal(res.status, 200);
    const body = (await res.json()) as { cameras: Array<{ host: string; port: number; model?: string; urn: string }> };
    const cam = body.cameras.find((c) => c.urn === sim.urn);
    assert.ok(cam, JSON.stringify(body));
    assert.equal(cam.host, '127.0.0.1');
    assert.equal(cam.port, sim.port);
    assert.equal(cam.model, 'GateCam-9');
  });
});
