'use strict';

/**
 * edgeward-card-reader: a plain serial card reader (Wiegand-to-RS232
 * converter sending ASCII lines). A thin adapter over the card-reader driver;
 * its events reach the runtime whether or not the output is wired.
 *
 * Output: every stored event of this device, msg.payload = the envelope, msg.topic = its type.
 */
const { edgewardApi, nameOf, startDeviceNode } = require('./lib/device-node.js');

module.exports = function register(RED) {
  function EdgewardCardReaderNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const api = edgewardApi(RED, node, 'edgeward-card-reader');
    if (!api) return;
    startDeviceNode(node, api, {
      RED,
      type: 'edgeward-card-reader',
      driverType: 'card-reader',
      name: nameOf(config),
      props: { path: config.path, baudRate: config.baudRate, pattern: config.pattern, door: config.door },
    });
  }

  RED.nodes.registerType('edgeward-card-reader', EdgewardCardReaderNode);
};
