import assert from 'node:assert/strict';
import { createDecipheriv, createHash } from 'node:crypto';
import type { SiteConfig } from '../../edge/config-types.js';
import { encryptedCredentials } from '../../edge/nodered.js';

describe('encryptedCredentials', () => {
  it("writes Node-RED's format: aes-256-ctr under SHA-256 of the secret, iv in hex ahead of the base64; nothing in clear", () => {
    const secret = 'a-secret-for-this-test-only';
    const prior = process.env.EDGEWARD_CREDENTIAL_SECRET;
    process.env.EDGEWARD_CREDENTIAL_SECRET = secret;
    try {
      const config = { privacy: { siteKey: 'unused-here-0123456789' } } as SiteConfig;
      const creds = { 'ew.demo.camera': { password: 'Cam3ra-S3cret' } };
      const out = encryptedCredentials(config, creds);
      assert.deepEqual(Object.keys(out), ['$']);
      assert.ok(!JSON.stringify(out).includes('Cam3ra'));
      // Decrypted the way Node-RED's credentials module does it.
      const key = createHash('sha256').update(secret).digest();
      const iv = Buffer.from(out.$.slice(0, 32), 'hex');
      const decipher = createDecipheriv('aes-256-ctr', key, iv);
      const json = decipher.update(out.$.slice(32), 'base64', 'utf8') + decipher.final('utf8');
      assert.deepEqual(JSON.parse(json), creds);
    } finally {
      if (prior === undefined) delete process.env.EDGEWARD_CREDENTIAL_SECRET;
      else process.env.EDGEWARD_CREDENTIAL_SECRET = prior;
    }
  });
});
