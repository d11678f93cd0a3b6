import assert from 'node:assert/strict';
import type { DriverContext } from '../../drivers/driver.js';
import { OnvifCameraDriver, type OnvifCameraProps } from '../../drivers/onvif/driver.js';
import { EventBus } from '../../edge/bus.js';
import type { EventInput } from '../../edge/envelope.js';
import { silentLogger } from '../../edge/log.js';
import { CameraSim, type CameraSimOptions } from '../../hardware/sim/camera-sim.js';
import { ManualClock } from '../helpers/clock.js';
import { waitFor } from '../helpers/wait.js';

/**
 * The driver's timing decisions (when to renew, when to pull again) run on
 * a ManualClock: the camera is real (the simulator over HTTP), but the
 * delays the driver chooses are read from the clock's pending timers and
 * fire only when the test advances it.
 */
describe('onvif driver timing against the camera simulator (manual clock, real HTTP)', function () {
  this.timeout(20_000);
  let sim: CameraSim;
  let clock: ManualClock;
  let driver: OnvifCameraDriver;

  async function start(simOpts: CameraSimOptions, props: Partial<OnvifCameraProps> = {}): Promise<void> {
    sim = new CameraSim({ username: 'u', password: 'p', ...simOpts });
    await sim.start();
    clock = new ManualClock();
    const events: EventInput[] = [];
    const ctx: DriverContext = { bus: new EventBus(), clock, log: silentLogger(), privacy: { siteKey: 'k', rawCards: false }, emit: (e) => events.push(e) };
    driver = new OnvifCameraDriver('cam', { host: '127.0.0.1', port: sim.port, username: 'u', password: 'p', timeoutMs: 3000, ...props }, ctx);
    await driver.start();
  }

  afterEach(async () => {
    await driver?.stop();
    await sim?.stop();
  });

  it('renews at most every 10 min when a camera grants years (setTimeout would overflow to 1 ms)', async () => {
    const tenYearsS = 10 * 365 * 86400;
    await start({ maxTerminationS: tenYearsS }, { subscriptionS: tenYearsS, pullTimeoutS: 10 });
    await waitFor(() => sim.pullsHeld === 1 && clock.pending().length === 1, { message: () => `a held pull and the renew timer (${clock.pending()})` });
    assert.deepEqual(clock.pending(), [600_000], 'the renew is due in 10 min, not at 0.8 × 10 years');
    clock.advance(600_000);
    await waitFor(() => driver.health().renewals === 1 && clock.pending().length === 1, { message: 'one renew' });
    assert.deepEqual(clock.pending(), [600_000]);
    assert.equal(sim.stats.requests.Renew, 1);
  });

  it('waits 1 s between pulls that a camera answers at once with nothing', async () => {
    // The camera ignores the pull Timeout (answers every PullMessages at once): the driver used to pull 280 times a second.
    await start({ maxPullHoldMs: 0 }, { subscriptionS: 60 });
    const gapPending = () => clock.pending().includes(1000);
    await waitFor(gapPending, { message: () => `the gap timer (pending ${clock.pending()})` });
    for (let i = 0; i < 3; i++) {
      const pulls = sim.stats.requests.PullMessages ?? 0;
      clock.advance(1000);
      await waitFor(() => (sim.stats.requests.PullMessages ?? 0) > pulls && gapPending(), { message: 'the next pull, then the gap again' });
      assert.equal(sim.stats.requests.PullMessages, pulls + 1, 'exactly one pull per second');
    }
  });

  it('estimates the granted lifetime from the camera clock when a RenewResponse has no CurrentTime', async () => {
    // The camera grants 10 s of the 60 asked for; without CurrentTime the driver used to assume 60 and let it expire.
    await start({ maxTerminationS: 10, renewCurrentTime: false }, { subscriptionS: 60, pullTimeoutS: 10 });
    await waitFor(() => sim.pullsHeld === 1 && clock.pending().length === 1, { message: 'a held pull and the renew timer' });
    assert.deepEqual(clock.pending(), [8000], '0.8 × 10 s from the create reply (it has CurrentTime)');
    clock.advance(8000);
    await waitFor(() => driver.health().renewals === 1 && clock.pending().length === 1, { message: 'one renew' });
    // TerminationTime − camera clock estimate (read to the second, so 0-1 s slow) − 1 s: 9-10 s granted (plus the
    // few ms of a round trip), renew after 7.2-8 s; it was 48 s.
    const [next] = clock.pending() as [number];
    assert.ok(next >= 7000 && next <= 8200, `next renew after ${next} ms`);
  });
});
