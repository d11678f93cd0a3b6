'use strict';

/**
 * edgeward-door: a Modbus door access controller (1–4 doors) on an
 * edgeward-modbus-bus. A thin adapter: the modbus-door driver (drivers/door)
 * does all device I/O; the runtime starts it and publishes its events to the
 * bus (rules, outbox) whether or not this node's output is wired.
 *
 * Output: every stored event of this device, msg.payload = the envelope, msg.topic = its type.
 * Input: msg.payload {action: 'door.unlock'|'door.lock'|'door.hold', args: {door, seconds, hold}} runs a local command.
 */
const { edgewardApi, nameOf, presence, startDeviceNode } = require('./lib/device-node.js');

module.exports = function register(RED) {
  function EdgewardDoorNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    // A node that cannot run still takes its input, to fail each command where a catch node sees
    // it: a command to a node that did not start vanished without a word (found by a review).
    const refuseCommands = (why) =>
      node.on('input', (msg, _send, done) => {
        const action = msg.payload && typeof msg.payload.action === 'string' ? msg.payload.action : 'command';
        done(new Error(`edgeward-door ${nameOf(config)}: ${action} not sent: this node is not running (${why})`));
      });
    const api = edgewardApi(RED, node, 'edgeward-door');
    if (!api) {
      refuseCommands('no Edgeward runtime');
      return;
    }
    const busNode = RED.nodes.getNode(config.bus);
    if (!busNode?.edgewardProps) {
      node.status({ fill: 'red', shape: 'ring', text: 'no modbus bus' });
      node.error('edgeward-door: choose an edgeward-modbus-bus');
      refuseCommands('no modbus bus');
      return;
    }
    const name = nameOf(config);
    const driver = startDeviceNode(node, api, {
      RED,
      type: 'edgeward-door',
      driverType: 'modbus-door',
      name,
      props: {
        bus: busNode.id,
        busConfig: busNode.edgewardProps,
        unitId: config.unitId,
        profile: config.profile || 'generic-door',
        doors: config.doors,
        pollMs: config.pollMs,
      },
    });
    if (!driver) {
      refuseCommands('see its status');
      return;
    }

    node.on('input', (msg, send, done) => {
      const p = msg.payload || {};
      driver.execute({ id: msg._msgid, action: p.action, target: name, args: p.args || {} }).then(
        (result) => {
          // A command that works clears the mark an earlier failed one left.
          const st = driver.state();
          node.status(presence(st.online, st.reason));
          msg.payload = { ok: true, action: p.action, result: result || {} };
          send(msg);
          done();
        },
        (err) => {
          node.status({ fill: 'red', shape: 'ring', text: 'error: ' + (err.code || 'command') });
          done(err);
        },
      );
    });
  }

  RED.nodes.registerType('edgeward-door', EdgewardDoorNode);
};
