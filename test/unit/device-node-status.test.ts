import assert from 'node:assert/strict';

// The shared helper of the device nodes (plain JavaScript, loaded by Node-RED).
const { presence } = require('../../edge/nodes/lib/device-node.js') as {
  presence: (online: boolean, reason?: string) => { fill: string; text: string };
};

describe('device node status', () => {
  it('says in plain words what to check when a device is offline, with the code it came from', () => {
    const cases: Array<[string, string]> = [
      ['EDGE_MODBUS_TIMEOUT', 'offline: no reply: check unit id, baud, wiring (EDGE_MODBUS_TIMEOUT)'],
      ['EDGE_MODBUS_CRC', 'offline: garbled replies: check baud, parity (EDGE_MODBUS_CRC)'],
      ['EDGE_MODBUS_NOT_CONNECTED', 'offline: line not connected: check cable, adapter, gateway (EDGE_MODBUS_NOT_CONNECTED)'],
      ['EDGE_ONVIF_AUTH', 'offline: camera refused user/password (EDGE_ONVIF_AUTH)'],
      ['EDGE_ONVIF_UNREACHABLE', 'offline: camera does not answer: check host, port, network (EDGE_ONVIF_UNREACHABLE)'],
      ['bad file descriptor', 'offline: port gone: adapter unplugged?'],
      ['No such file', 'offline: port gone: adapter unplugged?'],
      ['Error: Cannot lock port', 'offline: port in use by another node or program'],
      ['EACCES', 'offline: no permission: add the runtime user to dialout (EACCES)'],
      ['something new', 'offline: something new'],
    ];
    for (const [reason, text] of cases) assert.equal(presence(false, reason).text, text, reason);
    assert.equal(presence(false).text, 'offline');
    assert.deepEqual(presence(true), { fill: 'green', shape: 'dot', text: 'online' });
    assert.deepEqual((presence as (o: boolean, r?: string, n?: string) => unknown)(true, undefined, '3 unreadable lines: check baud, pattern'), {
      fill: 'yellow',
      shape: 'dot',
      text: 'online · 3 unreadable lines: check baud, pattern',
    });
  });
});
