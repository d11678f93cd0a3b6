'use strict';

/**
 * What the Edgeward device nodes (edgeward-door, edgeward-card-reader,
 * edgeward-camera) share: find the runtime, build the device's driver through
 * the registry, hand it to the runtime, mirror the device's stored events on
 * the node output, show online/offline in node.status and unregister on close.
 *
 * Kept in edge/nodes/lib/ because Node-RED's nodesDir scan skips folders named
 * `lib` (and any .js without an .html twin): this file is never loaded as a node.
 */

/**
 * The Edgeward node API (RED.settings.edgeward), or undefined after marking
 * the node and reporting why. Reads the getter, not settings.get(): get()
 * deep-clones and the api holds live objects.
 */
function edgewardApi(RED, node, type) {
  const api = RED.settings.edgeward;
  if (!api) {
    node.status({ fill: 'red', shape: 'ring', text: 'no edgeward runtime' });
    node.error(`${type} needs the Edgeward runtime (RED.settings.edgeward is not set)`);
  }
  return api;
}

/** The node status for a device's presence: offline says why (an error code, an errno), as the log does. */
function presence(online, reason) {
  if (online) return { fill: 'green', shape: 'dot', text: 'online' };
  return { fill: 'red', shape: 'ring', text: reason ? `offline: ${String(reason).slice(0, 40)}` : 'offline' };
}

function fail(node, type, name, err, what) {
  node.status({ fill: 'red', shape: 'ring', text: 'error: ' + (err.code || what) });
  node.error(`${type} ${name}: ${err.message}`);
}

/**
 * Create driver `driverType` named `name` from `props` and register it with
 * the runtime, which starts it and publishes its events whether or not the
 * node's output is wired. Returns the driver, or undefined after marking the
 * node when the registry rejects the config or the runtime the registration.
 *
 * @param {object} node the Node-RED node
 * @param {object} api the Edgeward node API (edgewardApi)
 * @param {{ type: string, driverType: string, name: string, props: object }} device
 *   type: the node type, for messages; driverType: the registry's driver name
 */
function startDeviceNode(node, api, { type, driverType, name, props }) {
  let driver;
  try {
    driver = api.registry.createDriver(driverType, name, props, api.driverContext(name));
  } catch (err) {
    fail(node, type, name, err, 'config');
    return undefined;
  }
  let unregister;
  try {
    unregister = api.registerDriver(driver);
  } catch (err) {
    fail(node, type, name, err, 'register');
    return undefined;
  }
  node.status({ fill: 'yellow', shape: 'ring', text: 'connecting' });

  api.bus.on('device.state', node, (s) => {
    if (s.name !== name) return;
    node.status(presence(s.online, s.reason));
  });
  api.bus.on('event.stored', node, (env) => {
    if (env.source.device === name) node.send({ topic: env.type, payload: env });
  });

  node.on('close', (_removed, done) => {
    api.bus.removeOwner(node);
    // Done once the driver has stopped: a redeployed node's successor starts after it.
    unregister().then(
      () => done(),
      () => done(),
    );
  });
  return driver;
}

module.exports = { edgewardApi, presence, startDeviceNode };
