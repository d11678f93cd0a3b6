import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DRIVER_STATE_SAVE_MS, DriverStateStore } from '../../edge/driver-state.js';
import { silentLogger } from '../../edge/log.js';
import { ManualClock } from '../helpers/clock.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';

describe('DriverStateStore', () => {
  let dir: TmpDir;
  beforeEach(async () => {
    dir = await tmpDir('driver-state');
  });
  afterEach(async () => {
    await dir.cleanup();
  });

  it('keeps each device its values across a restart: written within the save delay, and at flush', async () => {
    const file = join(dir.path, 'driver-state.json');
    const clock = new ManualClock();
    const store = new DriverStateStore(file, silentLogger(), clock);
    store.load();
    store.scope('door-1').set('eventCounter@unit1', 41);
    store.scope('door-2').set('eventCounter@unit2', 7);
    assert.equal(existsSync(file), false, 'not before the save delay');
    clock.advance(DRIVER_STATE_SAVE_MS);
    await waitFor(() => existsSync(file), { message: 'written after the save delay' });
    store.scope('door-1').set('eventCounter@unit1', 42);
    await store.flush();
    const again = new DriverStateStore(file, silentLogger(), clock);
    again.load();
    assert.equal(again.scope('door-1').get('eventCounter@unit1'), 42);
    assert.equal(again.scope('door-2').get('eventCounter@unit2'), 7);
    assert.equal(again.scope('door-3').get('eventCounter@unit3'), undefined);
    assert.equal(existsSync(`${file}.tmp`), false, 'no temporary file left');
  });

  it('waits to write while reported events are not stored yet (the outbox cannot write)', async () => {
    const file = join(dir.path, 'driver-state.json');
    const clock = new ManualClock();
    let stored = false;
    const store = new DriverStateStore(file, silentLogger(), clock, () => stored);
    store.scope('door-1').set('eventCounter@bus#unit1', 15);
    clock.advance(DRIVER_STATE_SAVE_MS * 3);
    await store.flush();
    assert.equal(existsSync(file), false, 'a counter past events held in memory only would skip them after a crash');
    stored = true;
    store.scope('door-1').set('eventCounter@bus#unit1', 16);
    clock.advance(DRIVER_STATE_SAVE_MS);
    await waitFor(() => existsSync(file), { message: 'written once the events are stored' });
    await store.flush();
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { 'door-1': { 'eventCounter@bus#unit1': 16 } });
  });

  it('starts empty from a file that does not parse, and replaces it at the next write', async () => {
    const file = join(dir.path, 'driver-state.json');
    writeFileSync(file, '{"door-1": {"eventCounter@un');
    const store = new DriverStateStore(file, silentLogger(), new ManualClock());
    store.load();
    assert.equal(store.scope('door-1').get('eventCounter@unit1'), undefined);
    store.scope('door-1').set('eventCounter@unit1', 3);
    await store.flush();
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { 'door-1': { 'eventCounter@unit1': 3 } });
  });

  it('persist() writes now, waiting a moment while saving is held back; says false when it could not write', async () => {
    const file = join(dir.path, 'driver-state.json');
    let allowed = false;
    const store = new DriverStateStore(file, silentLogger(), new ManualClock(), () => allowed);
    const state = store.scope('door-1');
    state.set('pulseRestore@bus#unit1', 5);
    // Held back for a moment (events of this tick not stored yet): written once allowed.
    const p = state.persist!();
    setTimeout(() => {
      allowed = true;
    }, 50);
    assert.equal(await p, true);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { 'door-1': { 'pulseRestore@bus#unit1': 5 } });
    // Held back for good (the outbox cannot write): false, nothing written.
    allowed = false;
    state.set('pulseRestore@bus#unit1', 6);
    assert.equal(await state.persist!(), false);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { 'door-1': { 'pulseRestore@bus#unit1': 5 } });
  });

  it('persist() is true once its value is on disk, whatever another device sets meanwhile', async () => {
    const file = join(dir.path, 'driver-state.json');
    const store = new DriverStateStore(file, silentLogger(), new ManualClock());
    const a = store.scope('door-1');
    const b = store.scope('door-2');
    a.set('pulseRestore@x', 5);
    const p = a.persist!();
    setImmediate(() => b.set('eventCounter@y', { counter: 1 })); // another door's poll, mid-fsync
    assert.equal(await p, true);
    assert.equal(JSON.parse(readFileSync(file, 'utf8'))['door-1']['pulseRestore@x'], 5);
  });
});
