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
module.exports = function register(RED) {
  function EdgewardCameraNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const api = RED.settings.edgeward;
    if (!api) {
      node.status({ fill: 'red', shape: 'ring', text: 'no edgeward runtime' });
      node.error('edgeward-camera needs the Edgeward runtime (RED.settings.edgeward is not set)');
      return;
    }
    const name = config.name || `camera-${config.host}`;
    const creds = node.credentials || {};
    let driver;
    try {
      driver = api.registry.createDriver(
        'onvif-camera',
        name,
        { host: config.host, port: config.port, username: config.username, password: creds.password },
        api.driverContext(name),
      );
    } catch (err) {
      node.status({ fill: 'red', shape: 'ring', text: 'error: ' + (err.code || 'config') });
      node.error(`edgeward-camera ${name}: ${err.message}`);
      return;
    }
    let unregister;
    try {
      unregister = api.registerDriver(driver);
    } catch (err) {
      node.status({ fill: 'red', shape: 'ring', text: 'error: ' + (err.code || 'register') });
      node.error(`edgeward-camera ${name}: ${err.message}`);
      return;
    }
    node.status({ fill: 'yellow', shape: 'ring', text: 'connecting' });

    api.bus.on('device.state', node, (s) => {
      if (s.name !== name) return;
      node.status(s.online ? { fill: 'green', shape: 'dot', text: 'online' } : { fill: 'red', shape: 'ring', text: 'offline' });
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
