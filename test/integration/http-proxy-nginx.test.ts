import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startNginx, type Nginx } from '../../tools/peers/nginx.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { curlVia } from '../helpers/http-proxy.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('HTTP proxy against nginx (nginx-light, curl, real clamd)', () => {
  let clamd: TestClamd;
  let nginx: Nginx;
  let avgate: Serving;
  let dir: string;
  let out: string;
  let port: number;
  const clean = randomBytes(5 * 1024 * 1024 + 3);
  const eicarText = Buffer.concat([Buffer.from('text before\n'), eicarBytes(), Buffer.from('\ntext after\n')]);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-httpp-nginx-'));
    out = join(dir, 'out');
    const root = join(dir, 'www');
    await mkdir(root, { recursive: true });
    await writeFile(join(root, 'clean.bin'), clean);
    await writeFile(join(root, 'eicar.txt'), eicarText);
    // 20 MiB of zeros: gzip makes ~20 KiB of it, a ratio of ~1000.
    await writeFile(join(root, 'zeros.bin'), Buffer.alloc(20 * 1024 * 1024));
    await copyFile('/usr/share/clamav-testfiles/clam.zip', join(root, 'clam.zip'));
    clamd = await startTestClamd();
    nginx = await startNginx({ dir: join(dir, 'nginx'), root });
    avgate = await startAvgatePeer({
      stateDir: join(dir, 'state'),
      clamd,
      httpProxyYaml: 'decode-content-encoding: true\nmax-decompression-ratio: 100',
    });
    port = avgate.httpProxyPort as number;
  });

  after(async () => {
    await avgate?.stop();
    await nginx?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('a clean file from nginx is byte-identical', async () => {
    const r = await curlVia(port, nginx.url('clean.bin'), out);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.status, 200);
    assert.equal(sha256(await readFile(out)), sha256(clean));
  });

  test('EICAR and clam.zip from nginx: 403', async () => {
    for (const name of ['eicar.txt', 'clam.zip']) {
      const r = await curlVia(port, nginx.url(name), out);
      assert.equal(r.status, 403, name);
      assert.match(await readFile(out, 'utf8'), /Virus found/);
    }
  });

  test('gzip: passed through encoded (the client decodes), scanned decoded', async () => {
    const raw = await curlVia(port, nginx.url('gzip/clean.bin'), out, ['-H', 'Accept-Encoding: gzip', '-D', `${out}.head`]);
    assert.equal(raw.status, 200, raw.stderr);
    assert.match(await readFile(`${out}.head`, 'utf8'), /^Content-Encoding: gzip\r?$/im, 'the encoding is passed through');
    assert.equal(sha256(gunzipSync(await readFile(out))), sha256(clean));
    const bad = await curlVia(port, nginx.url('gzip/eicar.txt'), out, ['--compressed']);
    assert.equal(bad.status, 403);
    assert.match(await readFile(out, 'utf8'), /Virus found/);
  });

  test('gzip: a body that decodes past max-decompression-ratio is not scanned, so blocked (skipped)', async () => {
    const r = await curlVia(port, nginx.url('gzip/zeros.bin'), out, ['--compressed']);
    assert.equal(r.status, 403);
    const page = await readFile(out, 'utf8');
    assert.match(page, /max-decompression-ratio/);
    // The same object unencoded is an ordinary clean file.
    const plain = await curlVia(port, nginx.url('zeros.bin'), out);
    assert.equal(plain.status, 200);
  });

  test('304 and 404 keep their status; a 304 has no body', async () => {
    const nm = await curlVia(port, nginx.url('clean.bin'), `${out}.304`, ['-H', `If-Modified-Since: ${new Date(Date.now() + 86_400_000).toUTCString()}`]);
    assert.equal(nm.status, 304, nm.stderr);
    assert.equal(nm.code, 0, 'the 304 is a complete response (no body expected, none sent)');
    // curl writes no file for an empty body.
    assert.equal(existsSync(`${out}.304`) ? (await readFile(`${out}.304`)).length : 0, 0);
    const missing = await curlVia(port, nginx.url('nope.bin'), out);
    assert.equal(missing.status, 404);
  });
});
