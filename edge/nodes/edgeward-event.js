'use strict';

/**
 * edgeward-event: any msg.payload `{type, data, severity?, ts?}` becomes an event,
 * stored durably by the runtime (then rules, outbox, uplink). A thin adapter:
 * the runtime validates the event; this node only shapes it and reports.
 *
 * Output: the same msg with msg.payload = the stored envelope (with seq).
 */
const { deviceName, edgewardApi, nameOf } = require('./lib/device-node.js');

const PAYLOAD_KEYS = new Set(['type', 'data', 'severity', 'ts']);

module.exports = function register(RED) {
  function EdgewardEventNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    node.eventType = config.eventType || undefined;
    node.severity = config.severity || undefined;
    node.deviceName = deviceName(node, 'edgeward-event', nameOf(config), RED);
    if (node.deviceName === undefined) return; // marked on the node
    const api = edgewardApi(RED, node, 'edgeward-event');
    if (!api) return;
    node.status({});

    node.on('input', (msg, send, done) => {
      const p = msg.payload;
      if (p === null || typeof p !== 'object' || Array.isArray(p)) {
        fail(new Error('msg.payload must be an object {type, data, severity?}'), done);
        return;
      }
      // The fields of POST /api/v1/events that a flow sets (source is this node): anything
      // else is refused by name, not dropped, so a typo (`serverity`) does not go unnoticed.
      const unknown = Object.keys(p).filter((k) => !PAYLOAD_KEYS.has(k));
      if (unknown.length > 0) {
        fail(new Error(`msg.payload.${unknown[0]}: unknown field (an event has type, data, severity, ts)`), done);
        return;
      }
      const type = p.type ?? node.eventType;
      if (type === undefined || type === '') {
        fail(new Error('msg.payload.type is missing and the node has no default event type'), done);
        return;
      }
      const input = {
        type,
        source: { device: node.deviceName },
        data: p.data,
        severity: p.severity ?? node.severity,
      };
      if (p.ts !== undefined) input.ts = p.ts;
      api.ingest([input]).then(
        (stored) => {
          const envelope = stored[0];
          node.status({ fill: 'green', shape: 'dot', text: `stored seq ${envelope.seq}` });
          msg.payload = envelope;
          send(msg);
          done();
        },
        (err) => fail(err, done),
      );
    });

    function fail(err, done) {
      node.status({ fill: 'red', shape: 'ring', text: 'rejected' });
      // done(err) reports through node.error(err, msg): visible in the debug
      // sidebar and catchable by a catch node. Nothing was stored.
      done(new Error(`event rejected: ${err.message}`));
    }
  }

  RED.nodes.registerType('edgeward-event', EdgewardEventNode);
};
