import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Command } from 'commander';
import { discoverAndDescribe, discoverOnvif, MAX_MATCHES_PER_REPLY } from '../../drivers/onvif/discovery.js';
import type { EdgewardError } from '../../edge/errors.js';
import { onvifCommands } from '../../edge/cli-onvif.js';
import { CameraSim } from '../../hardware/sim/camera-sim.js';

const ROOT = join(__dirname, '..', '..');

/**
 * A WS-Discovery responder on 127.0.0.1 (port 0) answering each probe with
 * `matches` ProbeMatches whose XAddrs are `xaddr(i)`; RelatesTo our MessageID
 * unless `relatesTo` is false.
 */
async function responder(opts: { matches?: number; xaddr: (i: number) => string; relatesTo?: boolean }): Promise<dgram.Socket> {
  const sock = dgram.createSocket('udp4');
  sock.on('message', (m, r) => {
    const messageId = /<a:MessageID>([^<]*)<\/a:MessageID>/.exec(m.toString())?.[1] ?? '';
    let body = '';
    for (let i = 0; i < (opts.matches ?? 1); i++) {
      body += `<d:ProbeMatch><a:EndpointReference><a:Address>urn:uuid:00000000-0000-4000-8000-${String(i).padStart(12, '0')}</a:Address></a:EndpointReference>`;
      body += `<d:XAddrs>${opts.xaddr(i)}</d:XAddrs></d:ProbeMatch>`;
    }
    const header = opts.relatesTo === false ? '' : `<s:Header><a:RelatesTo>${messageId}</a:RelatesTo></s:Header>`;
    sock.send(
      '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" ' +
        `xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery">${header}<s:Body><d:ProbeMatches>${body}</d:ProbeMatches></s:Body></s:Envelope>`,
      r.port,
      r.address,
    );
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  return sock;
}

describe('ONVIF WS-Discovery over real UDP', function () {
  this.timeout(20_000);
  let sim: CameraSim;

  beforeEach(async () => {
    sim = new CameraSim({ username: 'admin', password: 'pw', model: 'DS-2CD2143', firmware: 'V5.7.3', name: 'gate 7', discovery: { port: 0 } });
    await sim.start();
  });
  afterEach(async () => {
    await sim.stop();
  });

  it('finds a camera by unicast probe (networks that filter multicast)', async () => {
    const found = await discoverOnvif({ multicast: false, probe: [`127.0.0.1:${sim.discoveryPort}`], timeoutMs: 3000, earlyExit: true });
    assert.equal(found.length, 1);
    const cam = found[0];
    assert.equal(cam?.urn, sim.urn);
    assert.deepEqual(cam?.xaddrs, [sim.deviceUrl]);
    assert.equal(cam?.hardware, 'DS-2CD2143');
    assert.equal(cam?.name, 'gate 7');
    assert.equal(cam?.via, 'unicast');
    assert.equal(sim.stats.probes, 1);
  });

  it('reports garbage answers as clear errors and keeps listening', async () => {
    const liar = dgram.createSocket('udp4');
    liar.on('message', (_m, r) => liar.send('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', r.port, r.address));
    await new Promise<void>((r) => liar.bind(0, '127.0.0.1', () => r()));
    const bad: EdgewardError[] = [];
    try {
      const found = await discoverOnvif({
        multicast: false,
        probe: [`127.0.0.1:${liar.address().port}`, `127.0.0.1:${sim.discoveryPort}`],
        timeoutMs: 1000,
        onBadReply: (e) => bad.push(e),
      });
      assert.equal(found.length, 1, 'the real camera is still found');
      assert.equal(bad.length, 1);
      assert.equal(bad[0]?.code, 'EDGE_ONVIF_BAD_XML');
      assert.match(bad[0]?.message ?? '', /DTD or entity/);
    } finally {
      liar.close();
    }
  });

  it('drops unparsable XAddrs from a rogue responder and still finds and describes the real camera', async () => {
    // Any LAN host can answer a probe: this one answers ours with a well-formed ProbeMatch whose XAddr is not a URL.
    const rogueUrn = 'urn:uuid:00000000-0000-4000-8000-00000000bad0';
    const rogue = dgram.createSocket('udp4');
    rogue.on('message', (m, r) => {
      const relatesTo = /<a:MessageID>([^<]*)<\/a:MessageID>/.exec(m.toString())?.[1] ?? '';
      rogue.send(
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" ' +
          'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery">' +
          `<s:Header><a:RelatesTo>${relatesTo}</a:RelatesTo></s:Header><s:Body><d:ProbeMatches><d:ProbeMatch>` +
          `<a:EndpointReference><a:Address>${rogueUrn}</a:Address></a:EndpointReference><d:XAddrs>http://[bad</d:XAddrs>` +
          '</d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>',
        r.port,
        r.address,
      );
    });
    await new Promise<void>((r) => rogue.bind(0, '127.0.0.1', () => r()));
    const probe = [`127.0.0.1:${rogue.address().port}`, `127.0.0.1:${sim.discoveryPort}`];
    try {
      const bad: EdgewardError[] = [];
      const found = await discoverOnvif({ multicast: false, probe, timeoutMs: 1000, onBadReply: (e) => bad.push(e) });
      assert.deepEqual(
        found.map((c) => c.urn),
        [sim.urn],
        'the rogue answer has no usable XAddr, the camera is found',
      );
      assert.ok(
        bad.some((e) => e.code === 'EDGE_ONVIF_BAD_XML' && /XAddrs/.test(e.message)),
        `the dropped XAddr is reported: ${bad.map((e) => e.message).join('; ')}`,
      );
      // The describe step (what `edgeward discover onvif` runs) must not lose the good camera to the bad reply.
      const described = await discoverAndDescribe({ multicast: false, probe, timeoutMs: 1000, username: 'admin', password: 'pw' });
      assert.equal(described.length, 1);
      assert.equal(described[0]?.urn, sim.urn);
      assert.equal(described[0]?.error, undefined);
      assert.equal(described[0]?.model, 'DS-2CD2143');
      assert.equal(described[0]?.streamUri, sim.streamUri);
    } finally {
      rogue.close();
    }
  });

  it('sends credentials only to an XAddr on the host that answered; a camera naming another host is listed, not contacted', async () => {
    // The "other host" records what reaches it: with the old rule it got GetServices with our UsernameToken.
    const seen: string[] = [];
    const victim = http.createServer((req, res) => {
      seen.push(req.url ?? '');
      req.resume();
      res.writeHead(500).end();
    });
    await new Promise<void>((r) => victim.listen(0, '127.0.0.3', () => r()));
    const spoofer = await responder({ xaddr: () => `http://127.0.0.3:${(victim.address() as AddressInfo).port}/onvif/device_service` });
    try {
      const probe = [`127.0.0.1:${spoofer.address().port}`, `127.0.0.1:${sim.discoveryPort}`];
      const described = await discoverAndDescribe({ multicast: false, probe, timeoutMs: 1000, username: 'admin', password: 'pw' });
      assert.equal(described.length, 2);
      const real = described.find((c) => c.urn === sim.urn);
      assert.equal(real?.error, undefined);
      assert.equal(real?.model, 'DS-2CD2143');
      const spoofed = described.find((c) => c.urn !== sim.urn);
      assert.equal(spoofed?.host, '127.0.0.3');
      assert.match(spoofed?.error ?? '', /^EDGE_ONVIF_NOT_CONTACTED: .*127\.0\.0\.3.*127\.0\.0\.1/);
      assert.deepEqual(seen, [], 'nothing was sent to 127.0.0.3');
    } finally {
      spoofer.close();
      victim.close();
    }
  });

  it('ignores an answer without RelatesTo (any host could push cameras into the list unasked)', async () => {
    const pusher = await responder({ relatesTo: false, xaddr: () => 'http://127.0.0.1:1/onvif/device_service' });
    try {
      const bad: EdgewardError[] = [];
      const probe = [`127.0.0.1:${pusher.address().port}`, `127.0.0.1:${sim.discoveryPort}`];
      const found = await discoverOnvif({ multicast: false, probe, timeoutMs: 1000, onBadReply: (e) => bad.push(e) });
      assert.deepEqual(
        found.map((c) => c.urn),
        [sim.urn],
      );
      assert.ok(
        bad.some((e) => /no RelatesTo/.test(e.message)),
        bad.map((e) => e.message).join('; '),
      );
    } finally {
      pusher.close();
    }
  });

  it('takes at most 16 ProbeMatches from one datagram and maxCameras in all', async () => {
    // One datagram with 250 matches used to become 250 cameras, each connected to at once by discoverAndDescribe.
    const flood = await responder({ matches: 250, xaddr: (i) => `http://127.0.0.1:${1000 + i}/onvif/device_service` });
    try {
      const probe = [`127.0.0.1:${flood.address().port}`];
      const bad: EdgewardError[] = [];
      const found = await discoverOnvif({ multicast: false, probe, timeoutMs: 500, onBadReply: (e) => bad.push(e) });
      assert.equal(found.length, MAX_MATCHES_PER_REPLY);
      assert.ok(bad.some((e) => /250 ProbeMatches/.test(e.message)));
      const capped = await discoverOnvif({ multicast: false, probe, timeoutMs: 500, maxCameras: 5 });
      assert.equal(capped.length, 5);
    } finally {
      flood.close();
    }
  });

  it('finds a camera by multicast inside a network namespace (needs `unshare -n` and `ip`)', () => {
    // Loopback multicast needs a private network namespace; without one this test fails, it never falls back or skips.
    const probe = spawnSync('unshare', ['-n', 'true'], { encoding: 'utf8' });
    if (probe.status !== 0) {
      throw new Error(
        'multicast discovery test cannot run: `unshare -n true` failed ' +
          `(${probe.error?.message ?? `exit ${probe.status}: ${String(probe.stderr).trim()}`}). ` +
          'It needs util-linux `unshare` and the right to create a network namespace (root, CAP_SYS_ADMIN, or unprivileged user namespaces).',
      );
    }
    const script = join(ROOT, 'hardware', 'sim', 'onvif-netns-probe.ts');
    const setup = 'ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo';
    const res = spawnSync('unshare', ['-n', 'sh', '-c', `${setup} && exec "${process.execPath}" --import tsx "${script}"`], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 15_000,
    });
    assert.equal(res.status, 0, `netns probe failed: ${res.stderr}`);
    const out = JSON.parse(res.stdout.trim().split('\n').pop() as string);
    assert.equal(out.probes, 1, 'the simulator received the multicast probe');
    assert.equal(out.found.length, 1);
    assert.equal(out.found[0].urn, out.simUrn);
    assert.deepEqual(out.found[0].xaddrs, [out.deviceUrl]);
    assert.equal(out.found[0].via, 'multicast');
    assert.equal(out.found[0].hardware, 'NetnsCam');
  });

  it('`edgeward discover onvif --probe` prints model, firmware and stream URI', async () => {
    const lines: string[] = [];
    const program = new Command('edgeward').exitOverride();
    for (const c of onvifCommands({ out: (l) => lines.push(l), err: (l) => lines.push(`ERR ${l}`) })) program.addCommand(c);
    await program.parseAsync(
      ['discover', 'onvif', '--no-multicast', '--probe', `127.0.0.1:${sim.discoveryPort}`, '--timeout', '1', '-u', 'admin', '-p', 'pw'],
      { from: 'user' },
    );
    const text = lines.join('\n');
    assert.match(text, /1 camera\(s\)/);
    assert.match(text, /DS-2CD2143/);
    assert.match(text, /firmware V5\.7\.3/);
    assert.ok(text.includes(sim.streamUri), text);
    assert.ok(!text.includes('error'), text);
  });
});
