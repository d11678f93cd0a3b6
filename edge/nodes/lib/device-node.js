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

/**
 * What a technician should check, in plain words, for the reasons devices
 * go offline most (the code stays beside it, to find it in the README and
 * the log). Tested against the wrong unit id, a pulled cable, a port held by
 * another bus node, a wrong camera password.
 */
const ADVICE = [
  [/EDGE_MODBUS_TIMEOUT/, 'no reply: check unit id, baud, wiring'],
  [/EDGE_MODBUS_CRC|EDGE_MODBUS_GARBLED|EDGE_MODBUS_SHORT_REPLY/, 'garbled replies: check baud, parity'],
  [/EDGE_MODBUS_NOT_CONNECTED|EDGE_MODBUS_CLOSED|EDGE_MODBUS_DISCONNECTED|EDGE_MODBUS_OPEN_FAILED/, 'line not connected: check cable, adapter, gateway'],
  [/EDGE_MODBUS_EXCEPTION/, 'the unit refused the request: check profile'],
  [/EDGE_ONVIF_AUTH/, 'camera refused user/password'],
  [/EDGE_ONVIF_UNREACHABLE|EDGE_ONVIF_TIMEOUT/, 'camera does not answer: check host, port, network'],
  [/Cannot lock port|EBUSY|Resource temporarily unavailable/i, 'port in use by another node or program'],
  [/No such file|ENOENT|bad file descriptor|EBADF|ENXIO|ENODEV/i, 'port gone: adapter unplugged?'],
  [/Permission denied|EACCES/i, 'no permission: add the runtime user to dialout'],
];

/** The node status for a device's presence: offline says why, in words, with the code or errno it came from. */
function presence(online, reason, note) {
  if (online) return note ? { fill: 'yellow', shape: 'dot', text: `online · ${String(note).slice(0, 60)}` } : { fill: 'green', shape: 'dot', text: 'online' };
  if (!reason) return { fill: 'red', shape: 'ring', text: 'offline' };
  const why = String(reason);
  const advice = ADVICE.find(([re]) => re.test(why));
  const code = /\b(E[A-Z_]{3,})\b/.exec(why)?.[1];
  const text = advice ? `offline: ${advice[1]}${code ? ` (${code})` : ''}` : `offline: ${why.slice(0, 60)}`;
  return { fill: 'red', shape: 'ring', text };
}

function fail(node, type, name, err, what) {
  node.status({ fill: 'red', shape: 'ring', text: 'error: ' + (err.code || what) });
  // Most messages name the device already ("door door-5: doors must be …"): not twice.
  node.error(String(err.message).includes(name) ? `${type}: ${err.message}` : `${type} ${name}: ${err.message}`);
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
function startDeviceNode(node, api, { type, driverType, name: given, props, RED }) {
  // Trailing spaces were accepted until 2026-12-06 and are refused now ('door-1 ' and 'door-1'
  // would be two devices): an existing flow's node is trimmed and warned about, not stopped,
  // unless another node has the trimmed name.
  const name = deviceName(node, type, given, RED);
  if (name === undefined) return undefined;
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
    node.status(presence(s.online, s.reason, s.note));
  });
  api.bus.onStoredFrom(name, node, (env) => {
    node.send({ topic: env.type, payload: env });
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

/** The device name an Edgeward node takes when its Name is empty. */
const DEFAULT_NAMES = {
  'edgeward-door': (c) => `door-${c.unitId}`,
  'edgeward-camera': (c) => `camera-${c.host}`,
  'edgeward-card-reader': () => 'card-reader',
  'edgeward-event': () => 'node-red',
};

/** The device name of an Edgeward node's config: its Name, or its type's default. */
function nameOf(config) {
  return config.name || DEFAULT_NAMES[config.type]?.(config);
}

/**
 * A node's device name without trailing spaces (said once on the node when it
 * had some), or undefined, the node marked, when the trimmed name is another
 * node's.
 */
function deviceName(node, type, given, RED) {
  const name = String(given).replace(/\s+$/u, '');
  if (name === given || name === '') return given;
  // Another Edgeward node named so, by its Name or its default ('door-1' beside 'door-1 ', or a
  // door on unit 1 with no Name), or another spaced name trimming to it: trimmed, this one would
  // take that name if it started first, and a command for it could reach this door.
  let taken = false;
  RED?.nodes?.eachNode?.((n) => {
    if (n.id === node.id || !DEFAULT_NAMES[n.type]) return;
    const other = String(nameOf(n));
    if (other === name || other.replace(/\s+$/u, '') === name) taken = true;
  });
  if (taken) {
    const err = Object.assign(new Error(`device name ${JSON.stringify(given)} ends in spaces, and another node is named ${JSON.stringify(name)}: rename one`), {
      code: 'EDGE_DUPLICATE_DEVICE',
    });
    fail(node, type, String(given), err, 'register');
    return undefined;
  }
  node.warn(`${type}: device name ${JSON.stringify(given)} has trailing spaces: used as ${JSON.stringify(name)}`);
  return name;
}

module.exports = { deviceName, edgewardApi, nameOf, presence, startDeviceNode };
