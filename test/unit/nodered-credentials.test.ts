import assert from 'node:assert/strict';
import { createDecipheriv, createHash, createHmac } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { SiteConfig } from '../../edge/config-types.js';
import { silentLogger } from '../../edge/log.js';
import { CREDENTIAL_SECRET_FILE, credentialSecret, credentialsFile, encryptedCredentials, migrateCredentials } from '../../edge/nodered.js';
import { type TmpDir, tmpDir } from '../helpers/tmp.js';

/** Decrypted the way Node-RED's credentials module does it. */
function decrypt(stored: { $: string }, secret: string): unknown {
  const key = createHash('sha256').update(secret).digest();
  const decipher = createDecipheriv('aes-256-ctr', key, Buffer.from(stored.$.slice(0, 32), 'hex'));
  const text = decipher.update(stored.$.slice(32), 'base64', 'utf8') + decipher.final('utf8');
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

describe('Node-RED credentials', () => {
  const SITE_KEY = 'site-key-aaaaaaaaaaaa';
  let dir: TmpDir;
  let prior: string | undefined;
  beforeEach(async () => {
    dir = await tmpDir('nr-creds');
    prior = process.env.EDGEWARD_CREDENTIAL_SECRET;
    delete process.env.EDGEWARD_CREDENTIAL_SECRET;
  });
  afterEach(async () => {
    if (prior === undefined) delete process.env.EDGEWARD_CREDENTIAL_SECRET;
    else process.env.EDGEWARD_CREDENTIAL_SECRET = prior;
    await dir.cleanup();
  });
  const config = (sub: string) => ({ dataDir: path.join(dir.path, sub), privacy: { siteKey: SITE_KEY } }) as SiteConfig;

  it("writes Node-RED's format: aes-256-ctr under SHA-256 of the secret, iv in hex ahead of the base64; nothing in clear", () => {
    const creds = { 'ew.demo.camera': { password: 'Cam3ra-S3cret' } };
    const out = encryptedCredentials('a-secret-for-this-test-only', creds);
    assert.deepEqual(Object.keys(out), ['$']);
    assert.ok(!JSON.stringify(out).includes('Cam3ra'));
    assert.deepEqual(decrypt(out, 'a-secret-for-this-test-only'), creds);
  });

  it('uses a random secret of the box, kept in the data dir (0600), not one derived from the site key the central holds', () => {
    const a = credentialSecret(config('a'));
    assert.equal(credentialSecret(config('a')), a, 'kept across starts');
    const file = path.join(dir.path, 'a', CREDENTIAL_SECRET_FILE);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(readFileSync(file, 'utf8').trim(), a);
    assert.notEqual(credentialSecret(config('b')), a, 'two boxes with one site key have two secrets');
    // An operator's own secret in the file, however short, is used, not replaced.
    writeFileSync(path.join(dir.path, 'b', CREDENTIAL_SECRET_FILE), 'short\n');
    assert.equal(credentialSecret(config('b')), 'short');
    const legacy = createHmac('sha256', SITE_KEY).update('edgeward/node-red-credentials').digest('hex');
    assert.notEqual(a, legacy);
    process.env.EDGEWARD_CREDENTIAL_SECRET = 'from-the-environment';
    assert.equal(credentialSecret(config('a')), 'from-the-environment');
  });

  it('re-encrypts a credentials file of an older version (under the site-key-derived secret) once, and leaves others alone', () => {
    const creds = { cam: { password: 'Cam/Pa55' } };
    const legacy = createHmac('sha256', SITE_KEY).update('edgeward/node-red-credentials').digest('hex');
    const file = credentialsFile(path.join(dir.path, 'a', 'node-red'), '/srv/flows/entrance.json');
    assert.equal(file, path.join(dir.path, 'a', 'node-red', 'entrance_cred.json'));
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, JSON.stringify(encryptedCredentials(legacy, creds)));
    // Node-RED's backup of the previous file, under the old key too.
    const backup = path.join(path.dirname(file), '.entrance_cred.json.backup');
    writeFileSync(backup, JSON.stringify(encryptedCredentials(legacy, { cam: { password: 'older-pass' } })));
    const secret = credentialSecret(config('a'));
    migrateCredentials(config('a'), file, secret, silentLogger());
    const backupNow = JSON.parse(readFileSync(backup, 'utf8'));
    assert.equal(decrypt(backupNow, legacy), undefined, 'the backup no longer opens with the site key');
    assert.deepEqual(decrypt(backupNow, secret), { cam: { password: 'older-pass' } });
    const migrated = JSON.parse(readFileSync(file, 'utf8'));
    assert.deepEqual(decrypt(migrated, secret), creds);
    assert.equal(decrypt(migrated, legacy), undefined, 'the site key no longer opens it');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    // Idempotent, and a file under some other secret is not touched.
    migrateCredentials(config('a'), file, secret, silentLogger());
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), migrated);
    const foreign = JSON.stringify(encryptedCredentials('someone-else', creds));
    writeFileSync(file, foreign);
    migrateCredentials(config('a'), file, secret, silentLogger());
    assert.equal(readFileSync(file, 'utf8'), foreign);
  });
});
