'use strict';

/**
 * edgeward-camera: an ONVIF camera. A thin adapter: the onvif-camera driver
 * (drivers/onvif) does discovery, SOAP and the PullPoint subscription; the
 * runtime starts it and publishes its events to the bus (rules, outbox)
 * whether or not this node's output is wired.
 *
 * Output: every stored event of this device (camera.motion, camera.tamper,
 * camera.analytics, device.online, device.offline), msg.payload = the envelope,
 * msg.topic = its type.
 * Admin: GET /edgeward/onvif/discover?timeout=S&probe=HOST[:PORT],… lists the
 * cameras that answer WS-Discovery (the editor's "discover" button).
 */
const { edgewardApi, nameOf, startDeviceNode } = require('./lib/device-node.js');

module.exports = function register(RED) {
  function EdgewardCameraNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const api = edgewardApi(RED, node, 'edgeward-camera');
    if (!api) return;
    const creds = node.credentials || {};
    startDeviceNode(node, api, {
      RED,
      type: 'edgeward-camera',
      driverType: 'onvif-camera',
      name: nameOf(config),
      props: { host: config.host, port: config.port, username: config.username, password: creds.password },
    });
  }

  RED.nodes.registerType('edgeward-camera', EdgewardCameraNode, {
    credentials: { password: { type: 'password' } },
  });

  // The editor's "discover" button. Probing is the driver's business: we only reach it through the registry.
  RED.httpAdmin.get('/edgeward/onvif/discover', RED.auth.needsPermission('edgeward.read'), async (req, res) => {
    const api = RED.settings.edgeward;
    if (!api) {
      res.status(503).json({ error: 'no edgeward runtime' });
      return;
    }
    const timeoutS = Math.min(10, Math.max(0.5, Number(req.query.timeout) || 3));
    const probe = String(req.query.probe || '')
      .split(/[\s,]+/)
      .filter(Boolean)
      .slice(0, 64);
    let held;
    try {
      held = api.registry.acquire('onvif-discovery', 'editor', {}, api.driverContext('onvif-discovery'));
      const found = await held.resource.discover({ timeoutMs: timeoutS * 1000, probe });
      res.json({
        cameras: found.map((c) => {
          let host = c.address;
          let port = 80;
          try {
            const u = new URL(c.xaddrs.find((x) => new URL(x).hostname === c.address) || c.xaddrs[0]);
            host = u.hostname;
            port = Number(u.port || 80);
          } catch (_e) {
            // keep the sender address
          }
          return { urn: c.urn, host, port, name: c.name, model: c.hardware, xaddrs: c.xaddrs, via: c.via };
        }),
      });
    } catch (err) {
      res.status(err && err.code === 'EDGE_CONFIG_INVALID' ? 400 : 500).json({ error: err.message, code: err.code });
    } finally {
      if (held) await held.release();
    }
  });
};
