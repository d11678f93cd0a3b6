'use strict';

/**
 * edgeward-card-reader: a plain serial card reader (Wiegand-to-RS232
 * converter sending ASCII lines). A thin adapter over the card-reader driver;
 * its events reach the runtime whether or not the output is wired.
 *
 * Output: every stored event of this device, msg.payload = the envelope, msg.topic = its type.
 */
module.exports = function register(RED) {
  function EdgewardCardReaderNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const api = RED.settings.edgeward;
    if (!api) {
      node.status({ fill: 'red', shape: 'ring', text: 'no edgeward runtime' });
      node.error('edgeward-card-reader needs the Edgeward runtime (RED.settings.edgeward is not set)');
      return;
    }
    const name = config.name || 'card-reader';
    let unregister;
    try {
      const driver = api.registry.createDriver(
        'card-reader',
        name,
        { path: config.path, baudRate: config.baudRate, pattern: config.pattern, door: config.door },
        api.driverContext(name),
      );
      unregister = api.registerDriver(driver);
    } catch (err) {
      node.status({ fill: 'red', shape: 'ring', text: 'error: ' + (err.code || 'config') });
      node.error(`edgeward-card-reader ${name}: ${err.message}`);
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

    node.on('close', (_removed, done) => {
      api.bus.removeOwner(node);
      unregister();
      done();
    });
  }

  RED.nodes.registerType('edgeward-card-reader', EdgewardCardReaderNode);
};
