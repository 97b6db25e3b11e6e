import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startNginx, type Nginx } from '../../tools/peers/nginx.js';
import { startTestClamd, type TestClamd, delayEngineYaml } from '../helpers/clamd.js';
import { curlVia, startEchoOrigin } from '../helpers/http-proxy.js';

/**
 * Range requests through the HTTP proxy (nginx honours Range; the echo origin shows the request
 * head it got and serves bodies without Content-Length): with `range-requests: whole` the origin
 * sends the whole object, which is scanned whole, and the proxy answers the range itself.
 */
describe('HTTP proxy: Range requests (nginx, curl, real clamd)', () => {
  let clamd: TestClamd;
  let nginx: Nginx;
  let echo: Awaited<ReturnType<typeof startEchoOrigin>>;
  let whole: Serving;
  let pass: Serving;
  let dir: string;
  let out: string;
  let port: number;
  const clean = randomBytes(300_000 + 7);
  // EICAR at 6 MiB of an 8 MiB file: trickled, its start goes out before the verdict.
  const bigInfected = Buffer.concat([randomBytes(6 * 1024 * 1024), eicarBytes(), randomBytes(2 * 1024 * 1024)]);
  const keepBack = 1024 * 1024;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-httpp-range-'));
    out = join(dir, 'out');
    const root = join(dir, 'www');
    await mkdir(join(root, 'trusted'), { recursive: true });
    await writeFile(join(root, 'clean.bin'), clean);
    // Just the EICAR string: from byte 5 on it is no longer EICAR, so only a scan of the whole finds it.
    await writeFile(join(root, 'eicar.com'), eicarBytes());
    await writeFile(join(root, 'trusted', 'clean.bin'), clean);
    await writeFile(join(root, 'big-infected.bin'), bigInfected);
    clamd = await startTestClamd();
    nginx = await startNginx({ dir: join(dir, 'nginx'), root });
    echo = await startEchoOrigin(Buffer.from('unused'));
    const delayEngine = delayEngineYaml(clamd);
    const docAcl = [
      'doc-acl:',
      "  - {name: trusted, match: {url: '*/trusted/*'}, action: accept}",
      "  - {name: trickled, match: {url: '*/big-*'}, antivirus: [delay], trickle: {interval: 100ms, chunk: 256KiB, limit: 90%, keep-back: 1MiB}}",
      '  - {name: default}',
    ];
    whole = await startAvgatePeer({ stateDir: join(dir, 'state-whole'), clamd, extraEngines: delayEngine, httpProxyYaml: docAcl.join('\n') });
    pass = await startAvgatePeer({ stateDir: join(dir, 'state-pass'), clamd, httpProxyYaml: 'range-requests: pass' });
    port = whole.httpProxyPort as number;
  });

  after(async () => {
    await whole?.stop();
    await pass?.stop();
    await echo?.stop();
    await nginx?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const head = async () => readFile(`${out}.head`, 'utf8');

  test('an infected file asked from byte 5 on (curl -r 5-): the whole is scanned, 403 page, no byte of it', async () => {
    const r = await curlVia(port, nginx.url('eicar.com'), out, ['-r', '5-', '-D', `${out}.head`]);
    assert.equal(r.status, 403, r.stderr);
    const body = await readFile(out);
    assert.match(body.toString('utf8'), /Virus found/);
    assert.ok(!body.includes(eicarBytes().subarray(5)), 'nothing of the object in the page');
    assert.doesNotMatch(await head(), /^Content-Range:/im);
  });

  test('a clean file, -r 10-19: 206, Content-Range bytes 10-19/size, exactly those 10 bytes', async () => {
    const r = await curlVia(port, nginx.url('clean.bin'), out, ['-r', '10-19', '-D', `${out}.head`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.status, 206);
    const h = await head();
    assert.match(h, new RegExp(`^Content-Range: bytes 10-19/${clean.length}\\r?$`, 'im'));
    assert.match(h, /^Content-Length: 10\r?$/im);
    assert.deepEqual(await readFile(out), clean.subarray(10, 20));
  });

  test('bytes=-5 gives the last 5 bytes; bytes=a- the rest from a', async () => {
    const r = await curlVia(port, nginx.url('clean.bin'), out, ['-r', '-5', '-D', `${out}.head`]);
    assert.equal(r.status, 206, r.stderr);
    assert.match(await head(), new RegExp(`^Content-Range: bytes ${clean.length - 5}-${clean.length - 1}/${clean.length}\\r?$`, 'im'));
    assert.deepEqual(await readFile(out), clean.subarray(clean.length - 5));
    const tail = await curlVia(port, nginx.url('clean.bin'), out, ['-r', '123456-']);
    assert.equal(tail.status, 206, tail.stderr);
    assert.deepEqual(await readFile(out), clean.subarray(123_456));
  });

  test('a range past the end: 416 with Content-Range bytes */size', async () => {
    const r = await curlVia(port, nginx.url('clean.bin'), out, ['-r', `${clean.length}-`, '-D', `${out}.head`]);
    assert.equal(r.status, 416, r.stderr);
    assert.match(await head(), new RegExp(`^Content-Range: bytes \\*/${clean.length}\\r?$`, 'im'));
  });

  test('several ranges, or an If-Range that does not match: the whole object as 200; a matching If-Range: 206', async () => {
    const multi = await curlVia(port, nginx.url('clean.bin'), out, ['-r', '0-1,5-6']);
    assert.equal(multi.status, 200, multi.stderr);
    assert.deepEqual(await readFile(out), clean);
    const probe = await curlVia(port, nginx.url('clean.bin'), out, ['-I', '-D', `${out}.head`]);
    assert.equal(probe.status, 200, probe.stderr);
    const etag = /^ETag: (.*?)\r?$/im.exec(await head())?.[1];
    assert.ok(etag, 'nginx sends an ETag');
    const stale = await curlVia(port, nginx.url('clean.bin'), out, ['-r', '10-19', '-H', 'If-Range: "not-the-etag"']);
    assert.equal(stale.status, 200, stale.stderr);
    assert.deepEqual(await readFile(out), clean);
    const fresh = await curlVia(port, nginx.url('clean.bin'), out, ['-r', '10-19', '-H', `If-Range: ${etag}`]);
    assert.equal(fresh.status, 206, fresh.stderr);
    assert.deepEqual(await readFile(out), clean.subarray(10, 20));
  });

  test('range-requests whole: Range and If-Range never reach the origin; a rule that does not scan relays the 200 as it came', async () => {
    const r = await curlVia(port, `http://127.0.0.1:${echo.port}/headers`, out, ['-r', '0-1,3-4', '-H', 'If-Range: "x"']);
    assert.equal(r.status, 200, r.stderr);
    const seen = await readFile(out, 'utf8');
    assert.match(seen, /^Host: /im);
    assert.doesNotMatch(seen, /^(Range|If-Range):/im);
    const trusted = await curlVia(port, nginx.url('trusted/clean.bin'), out, ['-r', '10-19']);
    assert.equal(trusted.status, 200, trusted.stderr);
    assert.deepEqual(await readFile(out), clean);
  });

  test('no Content-Length from the origin: the range is held until the end, then 206 with the size found; past the end 416', async () => {
    const n = 50_000;
    const url = `http://127.0.0.1:${echo.port}/chunked/${n}`;
    const r = await curlVia(port, url, out, ['-r', '10-19', '-D', `${out}.head`]);
    assert.equal(r.status, 206, r.stderr);
    assert.match(await head(), new RegExp(`^Content-Range: bytes 10-19/${n}\\r?$`, 'im'));
    assert.deepEqual(await readFile(out), Buffer.alloc(10, 0x61));
    const last = await curlVia(port, url, out, ['-r', '-5', '-D', `${out}.head`]);
    assert.equal(last.status, 206, last.stderr);
    assert.match(await head(), new RegExp(`^Content-Range: bytes ${n - 5}-${n - 1}/${n}\\r?$`, 'im'));
    assert.equal((await readFile(out)).length, 5);
    const beyond = await curlVia(port, url, out, ['-r', `${n}-`, '-D', `${out}.head`]);
    assert.equal(beyond.status, 416, beyond.stderr);
    assert.match(await head(), new RegExp(`^Content-Range: bytes \\*/${n}\\r?$`, 'im'));
  });

  test('trickled: resuming a download cut off after trickling gets nothing past the cap of the whole file; a range beyond it gets the page', async () => {
    const first = await curlVia(port, nginx.url('big-infected.bin'), out);
    assert.notEqual(first.code, 0, 'the trickled download is cut off');
    const held = (await readFile(out)).length;
    assert.ok(held > 0 && held <= bigInfected.length - keepBack, `trickled ${held}`);
    const resumed = await curlVia(port, nginx.url('big-infected.bin'), `${out}.rest`, ['-r', `${held}-`]);
    const rest = await readFile(`${out}.rest`).catch(() => Buffer.alloc(0));
    if (resumed.status === 403) assert.match(rest.toString('latin1'), /Virus found/);
    else {
      assert.notEqual(resumed.code, 0, 'either the page or a cut-off transfer');
      assert.ok(held + rest.length <= bigInfected.length - keepBack, `never past keep-back of the whole (${held} + ${rest.length})`);
      assert.deepEqual(rest, bigInfected.subarray(held, held + rest.length));
    }
    // A range starting beyond the cap (a new object, so no cached verdict): nothing before the verdict.
    const other = Buffer.concat([randomBytes(6 * 1024 * 1024), eicarBytes(), randomBytes(2 * 1024 * 1024)]);
    await writeFile(join(dir, 'www', 'big-other.bin'), other);
    const beyond = await curlVia(port, nginx.url('big-other.bin'), out, ['-r', `${other.length - keepBack + 10}-`]);
    assert.equal(beyond.status, 403, beyond.stderr);
    assert.match(await readFile(out, 'utf8'), /Virus found/);
  });

  test('range-requests pass: the Range header reaches the origin', async () => {
    const r = await curlVia(pass.httpProxyPort as number, `http://127.0.0.1:${echo.port}/headers`, out, ['-r', '0-4']);
    assert.equal(r.status, 200, r.stderr);
    assert.match(await readFile(out, 'utf8'), /^Range: bytes=0-4$/im);
  });
});
