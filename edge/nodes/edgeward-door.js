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
module.exports = function register(RED) {
  function EdgewardDoorNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const api = RED.settings.edgeward;
    if (!api) {
      node.status({ fill: 'red', shape: 'ring', text: 'no edgeward runtime' });
      node.error('edgeward-door needs the Edgeward runtime (RED.settings.edgeward is not set)');
      return;
    }
    const busNode = RED.nodes.getNode(config.bus);
    if (!busNode?.edgewardProps) {
      node.status({ fill: 'red', shape: 'ring', text: 'no modbus bus' });
      node.error('edgeward-door: choose an edgeward-modbus-bus');
      return;
    }
    const name = config.name || `door-${config.unitId}`;
    let driver;
    try {
      driver = api.registry.createDriver(
        'modbus-door',
        name,
        {
          bus: busNode.id,
          busConfig: busNode.edgewardProps,
          unitId: config.unitId,
          profile: config.profile || 'generic-door',
          doors: config.doors,
          pollMs: config.pollMs,
        },
        api.driverContext(name),
      );
    } catch (err) {
      node.status({ fill: 'red', shape: 'ring', text: 'error: ' + (err.code || 'config') });
      node.error(`edgeward-door ${name}: ${err.message}`);
      return;
    }
    let unregister;
    try {
      unregister = api.registerDriver(driver);
    } catch (err) {
      node.status({ fill: 'red', shape: 'ring', text: 'error: ' + (err.code || 'register') });
      node.error(`edgeward-door ${name}: ${err.message}`);
      return;
    }
    node.status({ fill: 'yellow', shape: 'ring', text: 'connecting' });

    api.bus.on('device.state', node, (s) => {
      if (s.name !== name) return;
      node.status(
        s.online
          ? { fill: 'green', shape: 'dot', text: 'online' }
          : { fill: 'red', shape: 'ring', text: 'offline' },
      );
    });
    api.bus.on('event.stored', node, (env) => {
      if (env.source.device === name) node.send({ topic: env.type, payload: env });
    });

    node.on('input', (msg, send, done) => {
      const p = msg.payload || {};
      driver.execute({ id: msg._msgid, action: p.action, target: name, args: p.args || {} }).then(
        (result) => {
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

    node.on('close', (_removed, done) => {
      api.bus.removeOwner(node);
      unregister();
      done();
    });
  }

  RED.nodes.registerType('edgeward-door', EdgewardDoorNode);
};
