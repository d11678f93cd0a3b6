import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { isLoopbackHost, loadConfig, parseConfig } from '../../edge/config.js';
import { isEdgewardError } from '../../edge/errors.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';

const KEY = 'k'.repeat(32);
const PUBKEY = Buffer.alloc(32, 7).toString('base64');
const BASE = `site: pengqu-qumei
edge: gate-07
dataDir: ./data
privacy: { siteKey: ${KEY} }
`;

/** The list of errors a bad config produces (asserts it is EDGE_CONFIG_INVALID). */
function errorsOf(yamlText: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(yamlText, env, { baseDir: '/srv/edge' });
  } catch (err) {
    assert.ok(isEdgewardError(err, 'EDGE_CONFIG_INVALID'), `unexpected error ${String(err)}`);
    const errors = err.details?.errors as string[];
    assert.ok(Array.isArray(errors) && errors.length > 0);
    return errors;
  }
  assert.fail('config was accepted');
}

function assertError(yamlText: string, expected: string | RegExp, env: NodeJS.ProcessEnv = {}): void {
  const errors = errorsOf(yamlText, env);
  const hit = errors.some((e) => (typeof expected === 'string' ? e === expected : expected.test(e)));
  assert.ok(hit, `expected ${String(expected)} among:\n  ${errors.join('\n  ')}`);
}

describe('site config', () => {
  it('fills every default of the contract', () => {
    const c = parseConfig(BASE, {}, { baseDir: '/srv/edge' });
    assert.equal(c.site, 'pengqu-qumei');
    assert.equal(c.edge, 'gate-07');
    assert.equal(c.dataDir, '/srv/edge/data');
    assert.deepEqual(c.http, { host: '127.0.0.1', port: 1880 });
    assert.equal(c.uplink, undefined);
    assert.deepEqual(c.outbox, { maxBytes: 1024 ** 3 });
    assert.deepEqual(c.privacy, { siteKey: KEY, rawCards: false });
    assert.deepEqual(c.commands, {
      publicKeys: [],
      allow: ['door.unlock', 'door.lock', 'door.hold', 'fire.silence', 'edge.ping'],
    });
    assert.deepEqual(c.nodeRed, { editor: false });
    assert.deepEqual(c.log, { level: 'info' });
  });

  it('fills uplink defaults: ack central, batch 500/262144/250, gzip', () => {
    const c = parseConfig(`${BASE}uplink: { url: mqtt://broker:1883 }\n`, {});
    assert.deepEqual(c.uplink, {
      url: 'mqtt://broker:1883',
      ack: 'central',
      batch: { maxEvents: 500, maxBytes: 262144, lingerMs: 250 },
      compress: 'gzip',
    });
  });

  it('does not share default arrays between loads', () => {
    const a = parseConfig(BASE, {});
    a.commands.allow.push('x.y');
    assert.equal(parseConfig(BASE, {}).commands.allow.length, 5);
  });

  it('accepts the documented example (examples/site.yaml) with its secrets set', () => {
    const env = {
      EDGEWARD_TOKEN: 't'.repeat(24),
      EDGEWARD_MQTT_PASSWORD: 'pw',
      EDGEWARD_SITE_KEY: KEY,
      EDGEWARD_EDITOR_HASH: `$2b$08$${'a'.repeat(53)}`,
    };
    const path = resolve(__dirname, '../../examples/site.yaml');
    const c = loadConfig(path, env);
    assert.equal(c.http.token, env.EDGEWARD_TOKEN);
    assert.equal(c.uplink?.password, 'pw');
    assert.equal(c.privacy.siteKey, KEY);
    // dataDir is relative to the config file's folder, not the working directory.
    assert.equal(c.dataDir, resolve(__dirname, '../../examples/data'));
    assert.equal(c.nodeRed.flowFile, resolve(__dirname, '../../flows/entrance.json'));
  });

  it('resolves env: secrets in any string field', () => {
    const c = parseConfig(
      `${BASE.replace(`siteKey: ${KEY}`, 'siteKey: env:SK')}http: { token: env:TOK }\nuplink: { url: env:URL, username: env:U }\n`,
      { SK: KEY, TOK: 'x'.repeat(20), URL: 'mqtts://central.example:8883', U: 'gate-07' },
    );
    assert.equal(c.privacy.siteKey, KEY);
    assert.equal(c.http.token, 'x'.repeat(20));
    assert.equal(c.uplink?.url, 'mqtts://central.example:8883');
    assert.equal(c.uplink?.username, 'gate-07');
  });

  it('names the path and the variable when an env: secret is missing, and never prints a value', () => {
    const errors = errorsOf(`${BASE}http: { token: env:EDGEWARD_TOKEN }\nuplink: { url: mqtt://b, password: env:PW }\n`, {
      PW: '',
    });
    assert.deepEqual(errors, [
      'http.token: environment variable EDGEWARD_TOKEN is not set',
      'uplink.password: environment variable PW is not set',
    ]);
  });

  it('rejects a malformed env: reference', () => {
    assertError(`${BASE}http: { token: "env:NOT-A-NAME" }\n`, /^http\.token: "env:NOT-A-NAME" is not a valid/);
  });

  it('names the path of every bad value', () => {
    const cases: Array<[string, string | RegExp]> = [
      [BASE.replace('pengqu-qumei', 'Pengqu Qumei'), 'site must match pattern ^[a-z0-9-]{1,64}$'],
      [BASE.replace('gate-07', 'x'.repeat(65)), 'edge must match pattern ^[a-z0-9-]{1,64}$'],
      [`${BASE}uplink: { url: mqtt://b, batch: { maxEvents: 0 } }\n`, 'uplink.batch.maxEvents must be >= 1'],
      [`${BASE}uplink: { url: mqtt://b, batch: { lingerMs: -1 } }\n`, 'uplink.batch.lingerMs must be >= 0'],
      [`${BASE}uplink: { url: mqtt://b, batch: { maxBytes: 1.5 } }\n`, 'uplink.batch.maxBytes must be integer'],
      [`${BASE}uplink: { url: http://b }\n`, 'uplink.url must be an mqtt:// or mqtts:// URL'],
      [`${BASE}uplink: { url: mqtt://b, ack: always }\n`, 'uplink.ack must be one of central, broker'],
      [`${BASE}uplink: { url: mqtt://b, compress: zstd }\n`, 'uplink.compress must be one of gzip, none'],
      [`${BASE}uplink: { username: u }\n`, 'uplink.url is required'],
      [`${BASE}http: { port: 70000 }\n`, 'http.port must be <= 65535'],
      [`${BASE}http: { port: "1880" }\n`, 'http.port must be integer'],
      [`${BASE}http: { token: short }\n`, 'http.token must NOT have fewer than 16 characters'],
      [`${BASE}outbox: { maxBytes: 10 }\n`, 'outbox.maxBytes must be >= 1048576'],
      [`${BASE}log: { level: loud }\n`, /^log\.level must be one of fatal, error, warn, info/],
      [BASE.replace(`privacy: { siteKey: ${KEY} }`, `privacy: { siteKey: ${KEY}, rawCards: 1 }`), 'privacy.rawCards must be boolean'],
      [`${BASE}nodeRed: { editor: "yes" }\n`, 'nodeRed.editor must be boolean'],
      [`${BASE}commands: { allow: [Door-Unlock] }\n`, /^commands\.allow\[0\] must match pattern/],
      [`${BASE}commands: { publicKeys: [abc] }\n`, 'commands.publicKeys[0] must be the base64 of a 32-byte Ed25519 public key'],
      [
        `${BASE}commands: { publicKeys: ["${PUBKEY}", "${Buffer.alloc(31).toString('base64')}"] }\n`,
        'commands.publicKeys[1] must be the base64 of a 32-byte Ed25519 public key',
      ],
      [`${BASE}nodeRed: { editor: true, adminAuth: { username: tech, passwordHash: plain } }\n`, /^nodeRed\.adminAuth\.passwordHash must be a bcrypt hash/],
      [`${BASE}uplink: { url: mqtt://b, cert: a.pem }\n`, 'uplink.cert and uplink.key must be given together (mutual TLS)'],
      [`${BASE}uplink: { url: mqtt://b, ca: ca.pem }\n`, 'uplink.ca/cert/key need an mqtts:// uplink.url'],
    ];
    for (const [text, expected] of cases) assertError(text, expected);
  });

  it('requires site, edge, dataDir and privacy.siteKey (no default key)', () => {
    const errors = errorsOf('log: { level: info }\n');
    for (const e of ['site is required', 'edge is required', 'dataDir is required', 'privacy is required']) {
      assert.ok(errors.includes(e), `missing "${e}" in ${errors.join('; ')}`);
    }
    assertError(BASE.replace(`privacy: { siteKey: ${KEY} }`, 'privacy: { rawCards: false }'), 'privacy.siteKey is required');
    assertError(BASE.replace(KEY, 'short'), 'privacy.siteKey must NOT have fewer than 16 characters');
  });

  it('rejects a typo in a key at every level', () => {
    assertError(`${BASE}sitee: x\n`, 'sitee is not a known setting (typo?)');
    assertError(`${BASE}http: { prot: 1880 }\n`, 'http.prot is not a known setting (typo?)');
    assertError(`${BASE}uplink: { url: mqtt://b, batch: { maxEvent: 5 } }\n`, 'uplink.batch.maxEvent is not a known setting (typo?)');
    assertError(`${BASE}nodeRed: { adminAuth: { username: a, passwordHash: x, pass: y } }\n`, /^nodeRed\.adminAuth\.pass is not a known/);
  });

  it('reports every error at once', () => {
    const errors = errorsOf(`site: BAD\nedge: gate-07\ndataDir: d\nprivacy: { siteKey: ${KEY} }\nhttp: { port: -1, x: 1 }\n`);
    assert.ok(errors.length >= 3, errors.join('; '));
  });

  it('requires http.token off loopback', () => {
    assertError(`${BASE}http: { host: 0.0.0.0 }\n`, 'http.token is required when http.host (0.0.0.0) is not a loopback address');
    assertError(`${BASE}http: { host: 192.168.1.20 }\n`, /^http\.token is required/);
    for (const host of ['127.0.0.1', '127.8.9.10', 'localhost', '::1']) {
      assert.equal(parseConfig(`${BASE}http: { host: "${host}" }\n`, {}).http.host, host);
    }
    const c = parseConfig(`${BASE}http: { host: 0.0.0.0, token: env:T }\n`, { T: 'y'.repeat(16) });
    assert.equal(c.http.token, 'y'.repeat(16));
  });

  it('refuses the editor without adminAuth off loopback, allows it on loopback', () => {
    const tok = 'z'.repeat(16);
    assertError(
      `${BASE}http: { host: 0.0.0.0, token: ${tok} }\nnodeRed: { editor: true }\n`,
      'nodeRed.adminAuth is required when nodeRed.editor is true and http.host is not a loopback address',
    );
    assert.equal(parseConfig(`${BASE}nodeRed: { editor: true }\n`, {}).nodeRed.editor, true);
    const hash = `$2b$08$${'a'.repeat(53)}`;
    const c = parseConfig(
      `${BASE}http: { host: 0.0.0.0, token: ${tok} }\nnodeRed: { editor: true, adminAuth: { username: tech, passwordHash: "${hash}" } }\n`,
      {},
    );
    assert.deepEqual(c.nodeRed.adminAuth, { username: 'tech', passwordHash: hash });
  });

  it('refuses the editor without adminAuth when a token is set, on loopback too (it would be the way around the token)', () => {
    assertError(
      `${BASE}http: { token: ${'z'.repeat(16)} }\nnodeRed: { editor: true }\n`,
      /^nodeRed\.adminAuth is required when nodeRed\.editor is true and http\.token is set/,
    );
  });

  it('judges a host whose env: variable is missing by that error alone', () => {
    assert.deepEqual(errorsOf(`${BASE}http: { host: env:NO_HOST }\nnodeRed: { editor: true }\n`), [
      'http.host: environment variable NO_HOST is not set',
    ]);
  });

  it('says to quote a value YAML read as a number where a string is wanted', () => {
    assertError(`site: s\nedge: 07\ndataDir: ./d\nprivacy: { siteKey: ${KEY} }\n`, /^edge must be string \(quote it/);
  });

  it('lists each YAML error once', () => {
    const errors = errorsOf('{{{');
    assert.equal(new Set(errors).size, errors.length, errors.join('\n'));
  });

  it('accepts 32-byte base64 public keys', () => {
    const c = parseConfig(`${BASE}commands: { publicKeys: ["${PUBKEY}"] }\n`, {});
    assert.deepEqual(c.commands.publicKeys, [PUBKEY]);
  });

  it('accepts uplink.gzipLevel 1-9 (optional) and names it when out of range', () => {
    const c = parseConfig(`${BASE}uplink: { url: mqtt://central, gzipLevel: 9 }\n`, {});
    assert.equal(c.uplink?.gzipLevel, 9);
    assert.equal(parseConfig(`${BASE}uplink: { url: mqtt://central }\n`, {}).uplink?.gzipLevel, undefined);
    for (const bad of ['0', '10', '2.5', 'fast']) {
      const errors = errorsOf(`${BASE}uplink: { url: mqtt://central, gzipLevel: ${bad} }\n`);
      assert.ok(errors.some((e) => e.startsWith('uplink.gzipLevel')), errors.join('; '));
    }
  });

  it('rejects YAML syntax errors, duplicate keys and a non-mapping', () => {
    assertError('site: [unclosed\n', /^yaml: /);
    assertError(`${BASE}site: again\n`, /^yaml: /);
    assertError('- a\n- b\n', 'config must be a YAML mapping (site, edge, dataDir, …)');
  });

  it('reports secrets written in the file (token, password, site key, password in the URL) as warnings', () => {
    const warnings: string[] = [];
    parseConfig(
      `${BASE}http: { host: 0.0.0.0, token: ${'t'.repeat(20)} }\nuplink: { url: "mqtts://u:p4ss@central:8883", password: hunter2hunter2 }\n`,
      {},
      { baseDir: '/srv/edge', warnings },
    );
    assert.deepEqual(
      warnings.map((w) => w.split(':')[0]),
      ['http.token', 'uplink.password', 'privacy.siteKey', 'uplink.url'],
    );
    assert.ok(!warnings.join(' ').includes('hunter2') && !warnings.join(' ').includes('p4ss'), 'values never in warnings');
    const none: string[] = [];
    parseConfig(
      `site: s\nedge: e\ndataDir: d\nprivacy: { siteKey: env:K }\nhttp: { host: 0.0.0.0, token: env:T }\nuplink: { url: "mqtt://central", username: u, password: env:P }\n`,
      { K: KEY, T: 't'.repeat(20), P: 'x' },
      { warnings: none },
    );
    assert.deepEqual(none, []);
  });

  it('rejects an undefined alias and an alias bomb with a yaml: error, not a crash', () => {
    assertError(`${BASE}log: *nope\n`, /^yaml: .*alias/i);
    // A "billion laughs": each level doubles; a few lines would expand to millions of nodes.
    const levels = ['a: &a [x, x]'];
    for (let i = 1; i < 12; i++) levels.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [*${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}, *${String.fromCharCode(96 + i)}]`);
    assertError(`${BASE}x-bomb:\n  ${levels.join('\n  ')}\n`, /^yaml: /);
  });

  it('isLoopbackHost knows 127.0.0.0/8, ::1 and localhost only', () => {
    for (const h of ['127.0.0.1', '127.255.0.1', 'localhost', 'LOCALHOST', '::1', '[::1]']) assert.ok(isLoopbackHost(h), h);
    for (const h of ['0.0.0.0', '10.0.0.1', '::', '128.0.0.1', 'localhost.evil.com', '127.0.0.1.nip.io']) {
      assert.ok(!isLoopbackHost(h), h);
    }
  });

  describe('edgeward check (child process)', function () {
    this.timeout(30_000);
    let dir: TmpDir;
    const cli = resolve(__dirname, '../../edge/cli.ts');
    const repo = resolve(__dirname, '../..');

    before(async () => {
      dir = await tmpDir('config');
    });
    after(async () => {
      await dir.cleanup();
    });

    function check(file: string, env: NodeJS.ProcessEnv = {}) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', cli, 'check', '-c', file], {
        cwd: repo,
        env: { PATH: process.env.PATH, ...env },
        encoding: 'utf8',
        timeout: 20_000,
      });
      assert.equal(r.error, undefined);
      return r;
    }

    it('prints every error with its path, exits 2 and touches no data', () => {
      const file = join(dir.path, 'bad.yaml');
      writeFileSync(file, `${BASE}http: { host: 0.0.0.0 }\nuplink: { url: mqtt://b, batch: { maxEvents: 0 } }\n`);
      const r = check(file);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /uplink\.batch\.maxEvents must be >= 1/);
      assert.match(r.stderr, /http\.token is required/);
      assert.equal(existsSync(join(dir.path, 'data')), false);
      assert.deepEqual(readdirSync(dir.path), ['bad.yaml']);
    });

    it('names a missing environment variable', () => {
      const file = join(dir.path, 'env.yaml');
      writeFileSync(file, BASE.replace(KEY, 'env:EDGEWARD_SITE_KEY'));
      const r = check(file);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /privacy\.siteKey: environment variable EDGEWARD_SITE_KEY is not set/);
      const ok = check(file, { EDGEWARD_SITE_KEY: KEY });
      assert.equal(ok.status, 0, ok.stderr);
      assert.match(ok.stdout, /^ok: pengqu-qumei\/gate-07/);
      assert.ok(!ok.stdout.includes(KEY), 'the secret must not be printed');
    });

    it('prints the uplink URL without its userinfo, also with a raw @ in the password', () => {
      const file = join(dir.path, 'url-at.yaml');
      writeFileSync(file, `${BASE}uplink: { url: env:UPLINK_URL }\n`);
      const r = check(file, { UPLINK_URL: 'mqtt://gate:Tr0ub@dor-S3cret@127.0.0.1:1883' });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /uplink mqtt:\/\/\[redacted\]@127\.0\.0\.1:1883 /);
      assert.ok(!`${r.stdout}${r.stderr}`.includes('dor-S3cret') && !`${r.stdout}${r.stderr}`.includes('Tr0ub'), 'no part of the password is printed');
    });

    it('warns (exit 0) about a secret written in the file, without printing it', () => {
      const file = join(dir.path, 'literal.yaml');
      writeFileSync(file, BASE); // privacy.siteKey is a literal here
      const r = check(file);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /^warning: privacy\.siteKey: a secret written in the file; prefer env:NAME/m);
      assert.ok(!r.stderr.includes(KEY) && !r.stdout.includes(KEY), 'the secret must not be printed');
      const viaEnv = join(dir.path, 'via-env.yaml');
      writeFileSync(viaEnv, BASE.replace(KEY, 'env:EDGEWARD_SITE_KEY'));
      const ok = check(viaEnv, { EDGEWARD_SITE_KEY: KEY });
      assert.equal(ok.status, 0, ok.stderr);
      assert.equal(ok.stderr, '', 'no warning when the secret comes from the environment');
    });

    it('exits 2 naming a TLS file that cannot be read or is not PEM; accepts one that is', () => {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=t', '-keyout', 'ca.key', '-out', 'ca.pem'], {
        cwd: dir.path,
        stdio: 'pipe',
      });
      writeFileSync(join(dir.path, 'garbage.pem'), 'not a certificate');
      writeFileSync(join(dir.path, 'tls-bad.yaml'), `${BASE}uplink: { url: mqtts://central:8883, ca: ./garbage.pem, cert: ./ca.pem, key: ./garbage.pem }\n`);
      const bad = check(join(dir.path, 'tls-bad.yaml'));
      assert.equal(bad.status, 2, bad.stderr);
      assert.match(bad.stderr, /uplink\.ca: .*garbage\.pem: no PEM certificate in it/);
      assert.match(bad.stderr, /uplink\.key: .*garbage\.pem: not a usable PEM private key/);
      writeFileSync(join(dir.path, 'tls-pair.yaml'), `${BASE}uplink: { url: mqtts://central:8883, cert: ./ca.pem, key: ./ca.key }\n`);
      assert.equal(check(join(dir.path, 'tls-pair.yaml')).status, 0);
      execFileSync('openssl', ['genrsa', '-out', 'other.key', '2048'], { cwd: dir.path, stdio: 'pipe' });
      writeFileSync(join(dir.path, 'tls-mismatch.yaml'), `${BASE}uplink: { url: mqtts://central:8883, cert: ./ca.pem, key: ./other.key }\n`);
      const mismatch = check(join(dir.path, 'tls-mismatch.yaml'));
      assert.equal(mismatch.status, 2, mismatch.stderr);
      assert.match(mismatch.stderr, /uplink\.key: .*other\.key does not go with uplink\.cert/);
      const tls = (ca: string) => `${BASE}uplink: { url: mqtts://central:8883, ca: ${ca} }\n`;
      writeFileSync(join(dir.path, 'tls.yaml'), tls('./missing.pem'));
      let r = check(join(dir.path, 'tls.yaml'));
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /uplink\.ca: cannot read .*missing\.pem \(ENOENT\)/);
      writeFileSync(join(dir.path, 'tls.yaml'), tls('.'));
      r = check(join(dir.path, 'tls.yaml'));
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /uplink\.ca: .* is not a file/);
      writeFileSync(join(dir.path, 'tls.yaml'), tls('./ca.pem'));
      r = check(join(dir.path, 'tls.yaml'));
      assert.equal(r.status, 0, r.stderr);
      assert.equal(existsSync(join(dir.path, 'data')), false);
    });

    it('warns (exit 0) when nodeRed.flowFile does not exist: Node-RED would start with no flows', () => {
      writeFileSync(join(dir.path, 'flow.yaml'), `${BASE}nodeRed: { flowFile: ./entrance.json }\n`);
      let r = check(join(dir.path, 'flow.yaml'));
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /warning: nodeRed\.flowFile: .*entrance\.json does not exist: Node-RED starts with no flows/);
      writeFileSync(join(dir.path, 'entrance.json'), '[]');
      r = check(join(dir.path, 'flow.yaml'));
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /flowFile/);
    });

    it('exits 2 on a missing file', () => {
      const r = check(join(dir.path, 'nope.yaml'));
      assert.equal(r.status, 2);
      assert.match(r.stderr, /cannot read config file/);
    });
  });
});
