import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freeLoopbackPort } from '../../src/core/net.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startFaultServer } from '../helpers/fault-server.js';
import { curlVia, startEchoOrigin } from '../helpers/http-proxy.js';
import { waitFor } from '../helpers/wait.js';
import { generatedStream, startTestOrigin, type TestOrigin } from '../helpers/origin.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const CLAM_ZIP = '/usr/share/clamav-testfiles/clam.zip';
const GIB = 1024 ** 3;

async function fileSha256(path: string, limit = Infinity): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path, limit === Infinity ? {} : { end: limit - 1 })) h.update(c as Buffer);
  return h.digest('hex');
}

/** SHA-256 of the first n bytes of a generated object. */
async function generatedPrefixSha256(n: number, seed: string): Promise<string> {
  const h = createHash('sha256');
  let left = n;
  for await (const c of generatedStream(n, seed)) {
    const b = (c as Buffer).subarray(0, left);
    h.update(b);
    left -= b.length;
  }
  return h.digest('hex');
}

describe('HTTP proxy against a Node origin (curl, real clamd)', () => {
  let clamd: TestClamd;
  let origin: TestOrigin;
  let echo: Awaited<ReturnType<typeof startEchoOrigin>>;
  let avgate: Serving;
  let dir: string;
  let stateDir: string;
  let out: string;
  let port: number;
  const clean = randomBytes(3 * 1024 * 1024 + 17);
  const eicarText = Buffer.concat([Buffer.from('some text before\n'), eicarBytes(), Buffer.from('\nand after\n')]);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-httpp-'));
    stateDir = await mkdtemp(join(tmpdir(), 'avgate-httpp-state-'));
    out = join(dir, 'out');
    await mkdir(join(dir, 'www', 'dead'), { recursive: true });
    await mkdir(join(dir, 'www', 'trusted'), { recursive: true });
    await writeFile(join(dir, 'www', 'trusted', 'eicar.txt'), eicarText);
    await writeFile(join(dir, 'www', 'setup.EXE'), clean.subarray(0, 1000));
    await writeFile(join(dir, 'www', 'clean.bin'), clean);
    await writeFile(join(dir, 'www', 'dead', 'clean.bin'), clean);
    await writeFile(join(dir, 'www', 'eicar.txt'), eicarText);
    await writeFile(join(dir, 'www', 'upload-eicar.txt'), eicarText);
    await copyFile(CLAM_ZIP, join(dir, 'www', 'clam.zip'));
    clamd = await startTestClamd();
    origin = await startTestOrigin({ dir: join(dir, 'www') });
    echo = await startEchoOrigin(eicarText);
    const deadPort = await freeLoopbackPort();
    const slowModule = new URL('../fixtures/http-proxy-slow-engine.ts', import.meta.url).pathname;
    avgate = await startAvgatePeer({
      stateDir,
      clamd,
      extraEngines: [
        'slow:',
        '  type: plugin',
        `  module: ${slowModule}`,
        '  options: {delay-ms: 4000}',
        'dead:',
        '  type: clamd-net',
        `  options: {address: "127.0.0.1:${deadPort}"}`,
      ].join('\n'),
      // One GiB must be scanned (by the slow engine), not skipped for its size.
      yaml: ['scan:', '  max-checked-size: 2GiB', 'cache:', '  enabled: false'].join('\n'),
      httpProxyYaml: [
        'connect-ports: []',
        'access-log: http-access.log',
        'timeouts: {upstream: 2s}',
        'quarantine: [found]',
        'doc-acl:',
        `  - {name: slow-big, match: {url: "*/gen/${GIB}/*"}, antivirus: [slow], trickle: {interval: 250ms, chunk: 64KiB, limit: 90%, keep-back: 1MiB}}`,
        '  - {name: dead, match: {url: "*/dead/*"}, antivirus: [dead]}',
        '  - {name: no-exe, match: {url: "/\\\\.exe$/i", direction: download}, action: deny}',
        '  - {name: trusted, match: {url: "*/trusted/*"}, action: accept}',
        '  - {name: default}',
      ].join('\n'),
    });
    port = avgate.httpProxyPort as number;
  });

  after(async () => {
    await avgate?.stop();
    await origin?.stop();
    await echo?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });

  test('serve reports the bound port of http-proxy.listen 127.0.0.1:0', () => {
    assert.ok(typeof port === 'number' && port > 0);
  });

  test('GET of a clean file: 200, byte-identical (SHA-256), Via added', async () => {
    const r = await curlVia(port, origin.url('clean.bin'), out, ['-D', `${out}.head`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.status, 200);
    assert.equal(await fileSha256(out), sha256(clean));
    assert.match(await readFile(`${out}.head`, 'utf8'), /^Via: 1\.1 avgate$/im);
  });

  test('EICAR and clam.zip are blocked with 403 and the virus name on the page', async () => {
    for (const name of ['eicar.txt', 'clam.zip']) {
      const r = await curlVia(port, origin.url(name), out);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.status, 403, name);
      const page = await readFile(out, 'utf8');
      assert.match(page, /Virus found/);
      assert.match(page, /\.UNOFFICIAL/);
      assert.ok(!page.includes('EICAR-STANDARD'), 'the page does not carry the object');
    }
  });

  test('a blocked object is kept in the quarantine (quarantine: [found])', async () => {
    const items = await avgate.quarantine.list({});
    const urls = items.map((i) => i.url);
    assert.ok(urls.includes(origin.url('eicar.txt')), JSON.stringify(urls));
    assert.ok(items.every((i) => i.source === 'http'));
    // The client it was fetched for, so an item leads to a workstation.
    const item = items.find((i) => i.url === origin.url('eicar.txt'));
    assert.match(item?.note ?? '', /^client 127\.0\.0\.1$/m);
    assert.equal(item?.action, 'block');
  });

  test('HEAD passes the head without a body; keep-alive: one connection for two requests', async () => {
    const h = await curlVia(port, origin.url('clean.bin'), out, ['-I']);
    assert.equal(h.status, 200);
    assert.match(await readFile(out, 'utf8'), new RegExp(`^Content-Length: ${clean.length}\\r?$`, 'im'));
    const two = await curlVia(port, origin.url('clean.bin'), out, ['-v', '-o', `${out}.2`, origin.url('clean.bin')]);
    assert.equal(two.code, 0, two.stderr);
    assert.match(two.stderr, /Re-using existing connection|Reusing existing connection/i);
    assert.equal(await fileSha256(`${out}.2`), sha256(clean));
  });

  test('a chunked response (no Content-Length) is scanned and passed byte-identical', async () => {
    const n = 2 * 1024 * 1024 + 5;
    const r = await curlVia(port, `http://127.0.0.1:${echo.port}/chunked/${n}`, out);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.status, 200);
    assert.equal((await stat(out)).size, n);
    assert.equal(await fileSha256(out), sha256(Buffer.alloc(n, 0x61)));
  });

  test('uploads: a clean POST reaches the origin intact; an infected one gets 403 and nothing goes upstream', async () => {
    const before = echo.uploads.length;
    const ok = await curlVia(port, `http://127.0.0.1:${echo.port}/echo`, out, ['--data-binary', `@${join(dir, 'www', 'clean.bin')}`]);
    assert.equal(ok.status, 200, ok.stderr);
    assert.equal(await readFile(out, 'utf8'), `${clean.length} ${sha256(clean)}`);
    const chunkedPut = await curlVia(port, `http://127.0.0.1:${echo.port}/echo`, out, ['-T', join(dir, 'www', 'clean.bin'), '-H', 'Transfer-Encoding: chunked']);
    assert.equal(chunkedPut.status, 200, chunkedPut.stderr);
    assert.equal(await readFile(out, 'utf8'), `${clean.length} ${sha256(clean)}`);
    assert.equal(echo.uploads.length, before + 2);
    const bad = await curlVia(port, `http://127.0.0.1:${echo.port}/echo`, out, ['--data-binary', `@${join(dir, 'www', 'upload-eicar.txt')}`]);
    assert.equal(bad.status, 403);
    assert.match(await readFile(out, 'utf8'), /Virus found/);
    assert.equal(echo.uploads.length, before + 2, 'the infected upload never reached the origin');
  });

  test('doc-acl: a deny rule refuses (403), an accept rule passes unscanned (even EICAR)', async () => {
    const denied = await curlVia(port, origin.url('setup.EXE'), out);
    assert.equal(denied.status, 403);
    assert.match(await readFile(out, 'utf8'), /refused by rule no-exe/);
    const trusted = await curlVia(port, origin.url('trusted/eicar.txt'), out);
    assert.equal(trusted.status, 200, trusted.stderr);
    assert.equal(await fileSha256(out), sha256(eicarText));
  });

  test('hop-by-hop headers are removed both ways, Host set from the URL, Via added', async () => {
    const r = await curlVia(port, `http://127.0.0.1:${echo.port}/headers`, out, [
      '-D', `${out}.head`,
      '-H', 'Connection: keep-alive, X-Secret',
      '-H', 'X-Secret: s3cret',
      '-H', 'Proxy-Authorization: Basic eDp5',
      '-H', 'Keep-Alive: timeout=5',
      '-H', 'X-End-To-End: kept',
    ]);
    assert.equal(r.status, 200, r.stderr);
    const seen = await readFile(out, 'utf8');
    assert.doesNotMatch(seen, /^(X-Secret|Proxy-Authorization|Keep-Alive|Proxy-Connection):/im);
    assert.match(seen, /^X-End-To-End: kept$/im);
    assert.match(seen, new RegExp(`^Host: 127\\.0\\.0\\.1:${echo.port}$`, 'im'));
    assert.match(seen, /^Via: 1\.1 avgate$/im);
    const head = await readFile(`${out}.head`, 'utf8');
    assert.doesNotMatch(head, /^X-Hop:/im, 'a response header its Connection names is dropped');
  });

  test('engine down: 503 (fail closed), the object is not passed', async () => {
    const r = await curlVia(port, origin.url('dead/clean.bin'), out);
    assert.equal(r.status, 503);
    assert.match(await readFile(out, 'utf8'), /Antivirus unavailable/);
  });

  test('origin not reachable: 502', async () => {
    const closed = await freeLoopbackPort();
    const r = await curlVia(port, `http://127.0.0.1:${closed}/x`, out);
    assert.equal(r.status, 502);
  });

  test('an origin that closes early (short of its Content-Length): 502 before any byte, the connection is not reused', async () => {
    const fault = await startFaultServer((sock) => {
      sock.once('data', () => sock.end('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\nonly a little'));
    });
    try {
      const r = await curlVia(port, `http://127.0.0.1:${fault.port}/short`, out);
      assert.equal(r.status, 502, r.stderr);
      assert.match(await readFile(out, 'utf8'), /Bad gateway/);
    } finally {
      await fault.close();
    }
  });

  test('an origin that never answers: 504 after timeouts.upstream', async () => {
    const fault = await startFaultServer(() => undefined);
    try {
      const r = await curlVia(port, `http://127.0.0.1:${fault.port}/silent`, out);
      assert.equal(r.status, 504, r.stderr);
    } finally {
      await fault.close();
    }
  });

  test('a client that goes away mid-download: the transfer is dropped, nothing left behind', async () => {
    // 1 GiB for the slow engine; curl gives up after 1 s, while the body still arrives.
    const r = await curlVia(port, origin.genUrl(GIB, 'gone'), out, ['-m', '1']);
    assert.equal(r.code, 28, 'curl timed out');
    await waitFor('the proxy to let go of the client', async () => ((avgate.httpProxy?.openConnections ?? -1) === 0 ? true : null), 20_000);
  });

  test('CONNECT is tunnelled without scanning (documented): EICAR passes through a tunnel', async () => {
    const r = await curlVia(port, origin.url('eicar.txt'), out, ['-p']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.status, 200);
    assert.equal(await fileSha256(out), sha256(eicarText));
  });

  test('1 GiB with a slow engine: bytes trickle before the verdict, the late "found" aborts the connection', async () => {
    const seed = 'trickle-abort';
    const r = await curlVia(port, origin.genUrl(GIB, seed), out);
    assert.notEqual(r.code, 0, 'curl reports an incomplete transfer');
    assert.equal(r.status, 200, 'the head went out with the first trickled bytes');
    const got = (await stat(out)).size;
    assert.ok(got >= 64 * 1024, `some bytes were trickled (${got})`);
    assert.ok(got < GIB - 1024 * 1024, `the client never got the whole object (${got})`);
    assert.equal(await fileSha256(out), await generatedPrefixSha256(got, seed), 'the trickled bytes are the start of the object');
    // The access line is written once the proxy has cleaned up, a moment after curl saw the cut.
    const line = new RegExp(`GET http://127\\.0\\.0\\.1:${origin.port}/gen/${GIB}/${seed} 200 found:\\S+/aborted slow-big ${got} `);
    await waitFor('the access log line', async () => (line.test(await readFile(join(stateDir, 'http-access.log'), 'utf8')) ? true : null), 20_000);
    assert.ok((avgate.httpProxy?.counters.aborted ?? 0) >= 1);
  });

  test('an object seen clean goes out as it arrives next time, within keep-back: changed to EICAR (same URL and size), it is cut off', async () => {
    const path = join(dir, 'www', 'swap.bin');
    await writeFile(path, clean);
    const first = await curlVia(port, origin.url('swap.bin'), out);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(await fileSha256(out), sha256(clean));
    const again = await curlVia(port, origin.url('swap.bin'), out);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await fileSha256(out), sha256(clean), 'the repeated object whole and byte-identical');
    const infected = Buffer.concat([eicarText, clean.subarray(eicarText.length)]);
    await writeFile(path, infected);
    const r = await curlVia(port, origin.url('swap.bin'), out);
    const got = existsSync(out) ? (await stat(out)).size : 0;
    if (r.status === 200) {
      assert.notEqual(r.code, 0, 'curl reports an incomplete transfer');
      assert.ok(got <= clean.length - 1024 * 1024, `never past keep-back before the verdict (${got})`);
      assert.equal(await fileSha256(out), sha256(infected.subarray(0, got)), 'the bytes sent are the start of the object');
    } else {
      assert.equal(r.status, 403, 'blocked before any byte went out');
    }
    const line = new RegExp(`GET ${origin.url('swap.bin').replace(/[.?*+^$[\]\\(){}|-]/g, '\\$&')} (200 found:\\S+/aborted|403 found:\\S+) default `);
    await waitFor('the access log line', async () => (line.test(await readFile(join(stateDir, 'http-access.log'), 'utf8')) ? true : null), 20_000);
  });

  test('every spool file is gone once the transfers ended (blocked, aborted, abandoned ones too)', async () => {
    const spoolDir = join(stateDir, 'spool');
    const left = async () => (existsSync(spoolDir) ? (await readdir(spoolDir)).length : 0);
    await waitFor('spool files removed', async () => ((await left()) === 0 ? true : null), 20_000);
  });
});
