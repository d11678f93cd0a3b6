import assert from 'node:assert/strict';
import http from 'node:http';
import type { DriverContext } from '../../drivers/driver.js';
import { OnvifCameraDriver, type OnvifCameraProps } from '../../drivers/onvif/driver.js';
import { EventBus } from '../../edge/bus.js';
import { systemClock } from '../../edge/clock.js';
import type { EventInput } from '../../edge/envelope.js';
import { createLogger, silentLogger } from '../../edge/log.js';
import { CameraSim } from '../../hardware/sim/camera-sim.js';
import { waitFor } from '../helpers/wait.js';

/** A driver context that records what the driver emits. */
function recordingContext(): DriverContext & { events: EventInput[]; errors: string[] } {
  const events: EventInput[] = [];
  const errors: string[] = [];
  const bus = new EventBus();
  return {
    bus,
    clock: systemClock,
    log: process.env.ONVIF_DEBUG ? createLogger({ level: 'debug' }) : silentLogger(),
    privacy: { siteKey: 'k', rawCards: false },
    events,
    errors,
    error: (code) => void errors.push(code),
    emit: (e) => {
      events.push(e);
      bus.emit('event.input', e);
    },
  };
}

const USER = 'officer';
const PASS = 's3cret-pw';
// Short lifetimes so renewals happen within the test: granted 3 s ⇒ renew every 2.4 s.
const FAST: Partial<OnvifCameraProps> = { subscriptionS: 3, pullTimeoutS: 8, timeoutMs: 3000, backoffMinMs: 100, backoffMaxMs: 1000 };

describe('onvif driver against the camera simulator (real HTTP)', function () {
  this.timeout(30_000);
  let sim: CameraSim;
  let ctx: ReturnType<typeof recordingContext>;
  let driver: OnvifCameraDriver;

  async function startDriver(props: Partial<OnvifCameraProps> = {}): Promise<void> {
    ctx = recordingContext();
    driver = new OnvifCameraDriver('gate-cam-1', { host: '127.0.0.1', port: sim.port, username: USER, password: PASS, ...FAST, ...props }, ctx);
    await driver.start();
  }

  const ofType = (t: string) => ctx.events.filter((e) => e.type === t);

  beforeEach(async () => {
    sim = new CameraSim({ username: USER, password: PASS, model: 'DS-2CD2143', firmware: 'V5.7.3' });
    await sim.start();
  });

  afterEach(async () => {
    await driver?.stop();
    await sim.stop();
  });

  it('reports model, firmware, profiles, stream and snapshot URIs in device.online', async () => {
    await startDriver();
    const online = await waitFor(() => ofType('device.online')[0], { message: 'device.online' });
    assert.deepEqual(online.source, { device: 'gate-cam-1', driver: 'onvif' });
    const d = online.data as Record<string, any>;
    assert.equal(d.model, 'DS-2CD2143');
    assert.equal(d.firmware, 'V5.7.3');
    assert.equal(d.serial, 'SIM0001');
    assert.equal(d.streamUri, sim.streamUri);
    assert.ok(d.streamUri.includes('&profile='), 'entities in the URI are decoded');
    assert.equal(d.snapshotUri, sim.snapshotUri);
    assert.deepEqual(
      d.profiles.map((p: any) => [p.token, p.width, p.height]),
      [
        ['Profile_1', 1920, 1080],
        ['Profile_2', 640, 360],
      ],
    );
    assert.equal(driver.state().online, true);
  });

  it('subscribes with credentials and turns motion, tamper and analytics into contracted events', async () => {
    await startDriver();
    await waitFor(() => sim.subscriptionCount === 1 && sim.pullsHeld === 1, { message: 'subscription and a held pull' });
    assert.equal(sim.stats.authedCreates, 1);
    sim.motion(true);
    sim.tamper(true);
    sim.cellMotion(false);
    sim.lineCrossed('42');
    sim.fieldInside(true);
    sim.emitEvent('tns1:Monitoring/ProcessorUsage', { data: { Value: '12' } }); // unmapped: ignored
    await waitFor(() => ctx.events.filter((e) => e.type.startsWith('camera.')).length >= 5, { message: 'five camera events' });
    const cams = ctx.events.filter((e) => e.type.startsWith('camera.'));
    assert.equal(cams.length, 5);
    for (const e of cams) assert.deepEqual(e.source, { device: 'gate-cam-1', driver: 'onvif' });
    const [motion, tamper, cell, line, field] = cams as EventInput[];
    assert.equal(motion?.type, 'camera.motion');
    assert.equal(motion?.data?.topic, 'tns1:VideoSource/MotionAlarm');
    assert.equal(motion?.data?.state, true);
    assert.equal(tamper?.type, 'camera.tamper');
    assert.equal(tamper?.data?.topic, 'tns1:VideoSource/GlobalSceneChange/ImagingService');
    assert.equal(tamper?.data?.state, true);
    assert.equal(tamper?.severity, undefined, 'default (warning) severity for an active tamper');
    assert.equal(cell?.type, 'camera.motion');
    assert.equal(cell?.data?.state, false);
    assert.equal(cell?.data?.rule, 'MyMotionDetectorRule');
    assert.equal(line?.type, 'camera.analytics');
    assert.equal(line?.data?.analytic, 'line-crossed');
    assert.equal(line?.data?.objectId, '42');
    assert.equal(field?.type, 'camera.analytics');
    assert.equal(field?.data?.analytic, 'objects-inside');
    assert.equal(field?.data?.state, true);
    assert.ok(driver.health().lastEventAt);
  });

  it('holds a PullMessages open longer than 5 s on its own agent and still receives the event', async () => {
    await startDriver();
    await waitFor(() => sim.pullsHeld === 1, { message: 'a held pull' });
    const heldSince = sim.lastPullStartedAt;
    // The pull must not ride Node's global keep-alive agent (5 s socket timeout).
    const key = Object.keys(http.globalAgent.sockets).find((k) => k.includes(`:${sim.port}`));
    assert.equal(key, undefined, 'no socket of the global agent goes to the camera');
    await waitFor(() => Date.now() - heldSince > 6000, { timeoutMs: 8000, intervalMs: 100, message: 'pull held for 6 s' });
    assert.equal(sim.lastPullStartedAt, heldSince, 'still the same pull');
    assert.equal(sim.pullsHeld, 1);
    sim.motion(true);
    await waitFor(() => ofType('camera.motion').length === 1, { message: 'motion over the long-held pull' });
    const h = driver.health();
    assert.equal(h.consecutiveFailures, 0);
    assert.equal(h.lastError, null);
    assert.ok(h.renewals >= 2, `renewed while the pull was held (renewals=${h.renewals})`);
    assert.equal(h.resubscriptions, 0);
  });

  it('recovers from a camera reboot that loses the subscription without waiting for a renew', async () => {
    // A long lifetime (first renew after 24 s): recovery must come from the cut pull, not from a failed renew.
    await startDriver({ subscriptionS: 30 });
    await waitFor(() => sim.pullsHeld === 1, { message: 'a held pull' });
    await sim.reboot();
    await waitFor(() => sim.stats.subscriptions === 2 && sim.subscriptionCount === 1 && sim.pullsHeld === 1, {
      timeoutMs: 15_000,
      message: 'a second subscription, live and pulling',
    });
    sim.motion(true);
    await waitFor(() => ofType('camera.motion').length === 1, { timeoutMs: 10_000, message: 'motion after reboot' });
    const h = driver.health();
    assert.equal(h.resubscriptions, 1, 'one new subscription replaced the lost one');
    assert.equal(sim.stats.requests.Renew ?? 0, 0, 'recovered before any renew was due');
    assert.equal(h.renewFailures, 0, 'no renew had to fail to notice the reboot');
    assert.equal(ofType('device.offline').length, 0, 'a quick reboot is not an outage');
  });

  it('recovers from a reboot with downtime, and reports device.offline while the camera is gone', async () => {
    await startDriver({ offlineAfter: 2 });
    await waitFor(() => sim.pullsHeld === 1, { message: 'a held pull' });
    const rebooting = sim.reboot(1500);
    await waitFor(() => ofType('device.offline').length === 1, { message: 'device.offline during downtime' });
    assert.equal(ofType('device.offline')[0]?.data?.error, 'EDGE_ONVIF_UNREACHABLE');
    await rebooting;
    await waitFor(() => ofType('device.online').length === 2 && sim.pullsHeld === 1, { timeoutMs: 5000, message: 'back online' });
    sim.tamper(true);
    await waitFor(() => ofType('camera.tamper').length === 1, { message: 'tamper after reboot' });
  });

  it('re-subscribes with credentials after a 401 on renew', async () => {
    await startDriver();
    await waitFor(() => sim.pullsHeld === 1, { message: 'a held pull' });
    const creates = sim.stats.authedCreates;
    sim.setFault({ kind: 'http-401', action: 'Renew', times: 1 });
    await waitFor(() => driver.health().renewFailures === 1, { timeoutMs: 4000, message: 'renew failure' });
    await waitFor(() => sim.stats.authedCreates === creates + 1 && driver.health().resubscriptions === 1, { message: 'authenticated re-subscription' });
    assert.equal(sim.stats.authFailures, 0, 'the new subscription carried valid WS-UsernameToken credentials');
    // The abandoned subscription's pull is still held by the camera: both get the next event.
    await waitFor(() => sim.pullsHeld === 2, { message: 'old and new pulls held' });
    sim.motion(true);
    await waitFor(() => ofType('camera.motion').length === 1 && sim.pullsHeld === 1, { message: 'motion after re-subscription' });
    await waitFor(() => sim.pullsHeld === 1 && (sim.stats.requests.PullMessages ?? 0) >= 3, { message: 'pulling again' });
    assert.equal(ofType('camera.motion').length, 1, 'the same notification from two subscriptions is emitted once');
  });

  it('turns malformed, oversized and unexpected XML into clear errors and keeps going', async () => {
    await startDriver({ maxXmlBytes: 64 * 1024 });
    await waitFor(() => sim.pullsHeld === 1, { message: 'a held pull' });
    const errors: string[] = [];
    const seenErr = () => {
      const e = driver.health().lastError;
      if (e && !errors.includes(e)) errors.push(e);
    };
    const timer = setInterval(seenErr, 5);
    try {
      sim.setFault({ kind: 'malformed', action: 'PullMessages', times: 1 });
      sim.motion(true); // wakes the held pull; the next pull gets garbage
      await waitFor(() => errors.some((e) => e.startsWith('EDGE_ONVIF_BAD_XML') && e.includes('not well-formed')), { message: 'bad XML error' });
      sim.setFault({ kind: 'huge', action: 'PullMessages', times: 1, bytes: 200 * 1024 });
      sim.motion(false);
      await waitFor(() => errors.some((e) => e.startsWith('EDGE_ONVIF_BAD_XML') && e.includes('larger than')), { message: 'oversize error' });
      await waitFor(() => sim.pullsHeld === 1, { message: 'pulling again' });
      sim.tamper(true);
      await waitFor(() => ofType('camera.tamper').length === 1, { message: 'events flow after garbage' });
    } finally {
      clearInterval(timer);
    }
    assert.equal(driver.state().online, true);
  });

  it('times out a slow camera with a clear error and recovers when it answers again', async () => {
    sim.setFault({ kind: 'slow', action: 'GetDeviceInformation', delayMs: 2500, times: 1 });
    await startDriver({ timeoutMs: 500 });
    await waitFor(() => driver.health().lastError?.startsWith('EDGE_ONVIF_'), { message: 'timeout error' });
    assert.match(String(driver.health().lastError), /EDGE_ONVIF_(UNREACHABLE|TIMEOUT).*(timeout|no reply)/i);
    await waitFor(() => ofType('device.online').length === 1, { timeoutMs: 5000, message: 'online after the slow reply' });
  });

  it('authenticates with HTTP Digest when the camera asks for it', async () => {
    await sim.stop();
    sim = new CameraSim({ username: USER, password: PASS, auth: 'digest' });
    await sim.start();
    await startDriver();
    await waitFor(() => ofType('device.online').length === 1 && sim.pullsHeld === 1, { message: 'online and pulling with digest' });
    assert.equal(sim.stats.authFailures, 0);
    sim.motion(true);
    await waitFor(() => ofType('camera.motion').length === 1, { message: 'motion with digest' });
  });

  it('reconnects at once when a camera clock step makes it refuse our UsernameToken (no false device.offline)', async () => {
    // The library reads the camera's time only on connect; a camera that steps its clock by 2 h (an NTP sync after a
    // power cut) refuses every later UsernameToken. It took three failures (= device.offline) before a reconnect.
    await sim.stop();
    sim = new CameraSim({ username: USER, password: PASS, clockOffsetMs: -2 * 3600_000, maxClockSkewMs: 60_000 });
    await sim.start();
    await startDriver({ subscriptionS: 60 });
    await waitFor(() => ofType('device.online').length === 1 && sim.pullsHeld === 1, { message: 'online with the camera 2 h behind' });
    sim.setClockOffset(0);
    sim.motion(true); // ends the held pull; the next request carries a Created 2 h off the camera's new clock
    await waitFor(() => sim.stats.authFailures >= 1, { message: 'a refused UsernameToken' });
    await waitFor(() => sim.stats.subscriptions === 2 && sim.pullsHeld === 1, { message: 'subscribed again after re-reading the camera time' });
    assert.equal(sim.stats.requests.GetSystemDateAndTime, 2, 'reconnected (camera time read again)');
    assert.equal(sim.stats.authFailures, 1, 'one refusal, not three');
    assert.equal(ofType('device.offline').length, 0);
    sim.motion(false);
    await waitFor(() => ofType('camera.motion').length === 2, { message: 'events flow after the clock step' });
  });

  it('emits every notification of one subscription, even identical ones within a second (1-second timestamps)', async () => {
    await startDriver();
    await waitFor(() => sim.pullsHeld === 1, { message: 'a held pull' });
    const utcTime = '2026-03-05T08:00:00Z';
    for (const on of [true, false, true]) sim.emitEvent('tns1:VideoSource/MotionAlarm', { source: { Source: 'VideoSource_1' }, data: { State: String(on) }, utcTime });
    await waitFor(() => ofType('camera.motion').length === 3, { message: () => `three motion events (got ${ofType('camera.motion').length})` });
    assert.deepEqual(
      ofType('camera.motion').map((e) => e.data?.state),
      [true, false, true],
    );
  });

  it('authenticates with a non-ASCII password (UTF-8, as WS-Security says)', async () => {
    await sim.stop();
    sim = new CameraSim({ username: USER, password: '岗亭密码2025' });
    await sim.start();
    await startDriver({ password: '岗亭密码2025' });
    await waitFor(() => ofType('device.online').length === 1 && sim.pullsHeld === 1, {
      message: () => `online and pulling (authFailures ${sim.stats.authFailures}, lastError ${driver.health().lastError})`,
    });
    assert.equal(sim.stats.authFailures, 0);
  });

  it('authenticates with a username that has XML markup characters in it (escaped in the WS-Security header)', async () => {
    await sim.stop();
    const user = 'ops&<gate>';
    sim = new CameraSim({ username: user, password: PASS });
    await sim.start();
    await startDriver({ username: user });
    await waitFor(() => ofType('device.online').length === 1 && sim.pullsHeld === 1, {
      message: () => `online and pulling (authFailures ${sim.stats.authFailures}, lastError ${driver.health().lastError})`,
    });
    assert.equal(sim.stats.authFailures, 0);
  });

  it('says why it is offline when the camera refuses the password (what its node shows)', async () => {
    await startDriver({ password: 'wrong', offlineAfter: 1, backoffMinMs: 50, backoffMaxMs: 200 });
    await waitFor(() => ofType('device.offline').length === 1, { message: 'device.offline' });
    assert.deepEqual(driver.state().online, false);
    assert.equal(driver.state().reason, 'EDGE_ONVIF_AUTH');
    assert.equal(ctx.errors[0], 'EDGE_ONVIF_AUTH', 'counted for edgeward_driver_errors_total');
  });

  it('reports a state from a new subscription\'s Initialized snapshot only when it differs from the last known one', async () => {
    sim.tamper(true); // active before we subscribe: the first snapshot reports it
    await startDriver({ subscriptionS: 60 });
    await waitFor(() => ofType('camera.tamper').length === 1 && sim.pullsHeld === 1, { message: 'the active tamper from the first snapshot' });
    assert.equal(ofType('camera.tamper')[0]?.data?.operation, 'Initialized');
    // Still active after a reboot: the new subscription's snapshot repeats it, which is not a new tamper.
    await sim.reboot();
    await waitFor(() => sim.stats.subscriptions === 2 && sim.pullsHeld === 1, { message: 'second subscription, snapshot pulled' });
    assert.equal(ofType('camera.tamper').length, 1, 'no second warning for the same tamper');
    // Cleared while the camera was down: the next snapshot is news.
    const rebooting = sim.reboot(300);
    sim.tamper(false);
    await rebooting;
    await waitFor(() => ofType('camera.tamper').length === 2, { message: 'the cleared tamper from the third snapshot' });
    const cleared = ofType('camera.tamper')[1];
    assert.equal(cleared?.data?.state, false);
    assert.equal(cleared?.severity, 'info');
    assert.equal(ofType('camera.motion').length, 0, 'inactive motion in the snapshots is not an event');
  });

  it('survives a camera whose replies make the onvif library throw, and backs off', async () => {
    // GetVideoSources with the wrong shape makes onvif throw inside its own callback ("Unrecognized configuration").
    sim.setFault({ kind: 'wrong-shape', action: 'GetVideoSources' });
    await startDriver({ offlineAfter: 3 });
    await waitFor(() => ofType('device.offline').length === 1, { message: 'device.offline after repeated failures' });
    const err = String(ofType('device.offline')[0]?.data?.error);
    assert.equal(err, 'EDGE_ONVIF_BAD_REPLY', 'the throw inside onvif became a clear error');
    assert.match(String(ofType('device.offline')[0]?.data?.reason), /not understood/);
    const connectsAtOffline = sim.stats.requests.GetSystemDateAndTime ?? 0;
    // Back-off (100, 200, 400… ms capped at 1 s) keeps the retry rate low.
    await new Promise((r) => setTimeout(r, 1500));
    const retries = (sim.stats.requests.GetSystemDateAndTime ?? 0) - connectsAtOffline;
    assert.ok(retries <= 4, `backed off (${retries} retries in 1.5 s)`);
    sim.clearFaults();
    await waitFor(() => ofType('device.online').length === 1, { timeoutMs: 5000, message: 'online once the camera behaves' });
  });
});
