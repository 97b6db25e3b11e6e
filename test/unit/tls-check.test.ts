import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { configSchema } from '../../src/config/schema.js';
import { checkTlsFiles } from '../../src/config/tls-schema.js';
import { selfSignedCert } from '../helpers/tls.js';

const DAY = 86_400_000;

describe('config check: the TLS files the config names (checkTlsFiles)', () => {
  let dir: string;
  let a: { cert: string; key: string };
  let b: { cert: string; key: string };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-tlscheck-'));
    a = await selfSignedCert(dir, 'a.test');
    b = await selfSignedCert(dir, 'b.test');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a matching pair is OK with its subject and end date; a 2-day certificate is reported as due soon', () => {
    const r = checkTlsFiles(configSchema.parse({ smtp: { tls: a, 'next-hop': { 'tls-ca': b.cert } }, 'imap-proxy': { 'tls-ca': a.cert } }));
    assert.deepEqual(r.errors, []);
    assert.ok(r.ok.includes('smtp.next-hop.tls-ca: CN=b.test'), r.ok.join('|'));
    assert.ok(r.ok.some((l) => /^smtp\.tls: CN=a\.test, valid until \d{4}-\d\d-\d\d$/.test(l)), r.ok.join('|'));
    assert.ok(r.ok.some((l) => /^imap-proxy\.tls-ca: CN=a\.test$/.test(l)), r.ok.join('|'));
    assert.ok(r.warnings.some((w) => /^smtp\.tls: the certificate \(CN=a\.test\) expires on /.test(w)), r.warnings.join('|'));
  });

  test('a key of another certificate, a missing file, a file that is not PEM: errors naming the key', async () => {
    const notPem = join(dir, 'not.pem');
    await writeFile(notPem, 'hello\n');
    const r = checkTlsFiles(
      configSchema.parse({
        'pop3-proxy': { tls: { cert: a.cert, key: b.key } },
        'ftp-proxy': { tls: { cert: join(dir, 'missing.pem'), key: a.key }, 'tls-ca': notPem },
        icap: { tls: { cert: a.cert, key: a.key } },
      }),
    );
    assert.ok(r.errors.some((e) => /^pop3-proxy\.tls: .* do not make a TLS context/.test(e)), r.errors.join('|'));
    assert.ok(r.errors.some((e) => /^ftp-proxy\.tls\.cert: cannot read .*missing\.pem: ENOENT/.test(e)), r.errors.join('|'));
    assert.ok(r.errors.some((e) => /^ftp-proxy\.tls-ca: .*not\.pem is not a PEM certificate/.test(e)), r.errors.join('|'));
    assert.ok(r.ok.some((l) => l.startsWith('icap.tls: CN=a.test')), 'the good pair is still reported OK');
    assert.equal(r.errors.length, 3);
  });

  test('an expired certificate is an error; a disabled front end is not checked', () => {
    const later = Date.now() + 10 * DAY;
    const r = checkTlsFiles(configSchema.parse({ 'imap-proxy': { tls: b }, console: { enabled: false, tls: { cert: join(dir, 'missing.pem'), key: b.key } } }), later);
    assert.deepEqual(r.ok, []);
    assert.equal(r.errors.length, 1, r.errors.join('|'));
    assert.match(r.errors[0] as string, /^imap-proxy\.tls: the certificate \(CN=b\.test\) expired on \d{4}-\d\d-\d\d$/);
  });
});
