import assert from 'node:assert/strict';
import { EventBus } from '../../edge/bus.js';
import { type Envelope, makeEnvelope } from '../../edge/envelope.js';

const ids = { site: 'test-site', edge: 'gate-01' };

function stored(device: string): Envelope {
  return makeEnvelope({ type: 'door.opened', source: { device, driver: 'modbus-door' }, data: { door: 0 } }, ids);
}

describe('EventBus', () => {
  it('onStoredFrom: a device listener gets its own device\'s stored events only, after the plain listeners', () => {
    const bus = new EventBus();
    const seen: string[] = [];
    const owners = Array.from({ length: 200 }, () => ({}));
    owners.forEach((owner, i) => {
      bus.onStoredFrom(`door-${i}`, owner, (env) => seen.push(`door-${i}:${env.source.device}`));
    });
    bus.on('event.stored', {}, (env) => seen.push(`all:${env.source.device}`));
    bus.emit('event.stored', stored('door-7'));
    bus.emit('event.stored', stored('camera-1'));
    bus.emit('event.stored', stored('door-199'));
    assert.deepEqual(seen, ['all:door-7', 'door-7:door-7', 'all:camera-1', 'all:door-199', 'door-199:door-199']);
    assert.equal(bus.listenerCount('event.stored'), 201);
  });

  it('onStoredFrom: two listeners of one device both get it; removeOwner takes only that owner\'s', () => {
    const bus = new EventBus();
    const a = {};
    const b = {};
    const got: string[] = [];
    bus.onStoredFrom('door-1', a, () => got.push('a'));
    bus.onStoredFrom('door-1', b, () => got.push('b'));
    bus.on('device.state', a, () => got.push('a-state'));
    bus.emit('event.stored', stored('door-1'));
    assert.deepEqual(got, ['a', 'b']);
    bus.removeOwner(a);
    got.length = 0;
    bus.emit('event.stored', stored('door-1'));
    bus.emit('device.state', { name: 'door-1', driver: 'modbus-door', online: true });
    assert.deepEqual(got, ['b'], 'a is gone from both kinds of listener');
    bus.removeOwner(b);
    assert.equal(bus.listenerCount('event.stored'), 0);
  });

  it('onStoredFrom: one function under two owners runs twice and goes once per owner; an emit keeps the listeners it started with', () => {
    const bus = new EventBus();
    const a = {};
    const b = {};
    let calls = 0;
    const f = () => calls++;
    bus.onStoredFrom('door-1', a, f);
    bus.onStoredFrom('door-1', b, f);
    bus.emit('event.stored', stored('door-1'));
    assert.equal(calls, 2);
    bus.removeOwner(a);
    calls = 0;
    bus.emit('event.stored', stored('door-1'));
    assert.equal(calls, 1, "b's is still there");

    const got: string[] = [];
    const c = {};
    bus.onStoredFrom('door-2', c, () => {
      got.push('first');
      bus.onStoredFrom('door-2', c, () => got.push('added'));
    });
    bus.emit('event.stored', stored('door-2'));
    assert.deepEqual(got, ['first'], 'one added during the emit waits for the next');
  });
});
