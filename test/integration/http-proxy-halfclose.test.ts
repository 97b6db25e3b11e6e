import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { rawExchange } from '../helpers/http-proxy.js';
import { startTestOrigin, type TestOrigin } from '../helpers/origin.js';
import { waitFor, within } from '../helpers/wait.js';

/**
 * A client that shuts down its sending side after the request (`nc -N`, a script's
 * shutdown(SHUT_WR)) still gets its answer, fetched and scanned, and then the connection is
 * closed; a client that really goes away (a full close or a reset) during a trickled download
 * still stops the upstream fetch and the scan.
 */
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const GIB = 1024 ** 3;
const SLOW_MS = 4000;

interface RawAnswer {
  status: number;
  head: string;
  body: Buffer;
  /** The proxy ended the connection (FIN or reset) within the wait. */
  closed: boolean;
}

/** Splits what came back into head and body (one response; the body is whatever follows the head). */
function parse(all: Buffer): { status: number; head: string; body: Buffer } {
  const end = all.indexOf('\r\n\r\n');
  const head = all.subarray(0, end < 0 ? all.length : end).toString('latin1');
  return { status: Number(/^HTTP\/1\.1 (\d{3}) /.exec(head)?.[1] ?? 0), head, body: end < 0 ? Buffer.alloc(0) : all.subarray(end + 4) };
}

/** Sends `request`, then shuts down the write side at once; reads until the proxy closes (or `waitMs`). */
async function halfClosed(port: number, request: string, waitMs = 20_000): Promise<{ all: Buffer; closed: boolean }> {
  const { bytes, closed } = await rawExchange(port, request, waitMs, { halfClose: true });
  return { all: bytes, closed };
}

async function halfClosedGet(port: number, url: string): Promise<RawAnswer> {
  const { all, closed } = await halfClosed(port, `GET ${url} HTTP/1.1\r\nHost: ${new URL(url).host}\r\n\r\n`);
  return { ...parse(all), closed };
}

describe('HTTP proxy: half-closed client connections', () => {
  let clamd: TestClamd;
  let origin: TestOrigin;
  let avgate: Serving;
  let dir: string;
  let stateDir: string;
  let port: number;
  const clean = randomBytes(3 * 1024 * 1024 + 17);
  const eicarText = Buffer.concat([Buffer.from('some text before\n'), eicarBytes(), Buffer.from('\nand after\n')]);
  const accessLog = () => readFile(join(stateDir, 'http-access.log'), 'utf8').catch(() => '');

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-httpp-half-'));
    stateDir = await mkdtemp(join(tmpdir(), 'avgate-httpp-half-state-'));
    await mkdir(join(dir, 'www'), { recursive: true });
    await writeFile(join(dir, 'www', 'clean.bin'), clean);
    await writeFile(join(dir, 'www', 'eicar.txt'), eicarText);
    clamd = await startTestClamd();
    origin = await startTestOrigin({ dir: join(dir, 'www') });
    const slowModule = new URL('../fixtures/http-proxy-slow-engine.ts', import.meta.url).pathname;
    avgate = await startAvgatePeer({
      stateDir,
      clamd,
      extraEngines: ['slow:', '  type: plugin', `  module: ${slowModule}`, `  options: {delay-ms: ${SLOW_MS}}`].join('\n'),
      yaml: ['scan:', '  max-checked-size: 2GiB', 'cache:', '  enabled: false'].join('\n'),
      httpProxyYaml: [
        'access-log: http-access.log',
        'doc-acl:',
        `  - {name: slow-big, match: {url: "*/gen/${GIB}/*"}, antivirus: [slow], trickle: {interval: 250ms, chunk: 64KiB, limit: 90%, keep-back: 1MiB}}`,
        '  - {name: default}',
      ].join('\n'),
    });
    port = avgate.httpProxyPort as number;
  });

  after(async () => {
    await avgate?.stop();
    await origin?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });

  test('GET, then shutdown(SHUT_WR): a clean object is fetched, scanned and sent whole, then the proxy closes', async () => {
    const r = await halfClosedGet(port, origin.url('clean.bin'));
    assert.equal(r.status, 200, r.head);
    assert.match(r.head, new RegExp(`\\r\\nContent-Length: ${clean.length}(\\r|$)`, 'i'));
    assert.equal(r.body.length, clean.length);
    assert.equal(sha256(r.body), sha256(clean));
    assert.ok(r.closed, 'the proxy closed the connection after the answer');
    await waitFor('the access line', async () => (new RegExp(`GET ${origin.url('clean.bin')} 200 free(/cached)? default ${clean.length} `).test(await accessLog()) ? true : null), 10_000);
  });

  test('GET, then shutdown(SHUT_WR): an infected object gets the 403 block page', async () => {
    const r = await halfClosedGet(port, origin.url('eicar.txt'));
    assert.equal(r.status, 403, r.head);
    const page = r.body.toString('utf8');
    assert.match(page, /Virus found/);
    assert.ok(!page.includes('EICAR-STANDARD'), 'the page does not carry the object');
    assert.ok(r.closed);
  });

  test('two pipelined GETs, then shutdown(SHUT_WR): both answered in order, then the proxy closes', async () => {
    const host = new URL(origin.url('x')).host;
    const req = (path: string) => `GET ${origin.url(path)} HTTP/1.1\r\nHost: ${host}\r\n\r\n`;
    const { all, closed } = await halfClosed(port, req('clean.bin') + req('eicar.txt'));
    const first = parse(all);
    assert.equal(first.status, 200, first.head);
    assert.equal(sha256(first.body.subarray(0, clean.length)), sha256(clean));
    const second = parse(first.body.subarray(clean.length));
    assert.equal(second.status, 403, second.head);
    assert.match(second.body.toString('utf8'), /Virus found/);
    assert.ok(closed);
  });

  /**
   * A trickled 1 GiB download whose verdict takes SLOW_MS: the client takes the first bytes, then
   * leaves with `leave`. The proxy must notice at its next trickled write, well before the verdict:
   * the exchange ends (its access line) with no verdict, and the client connection is let go.
   */
  async function leaveMidTrickle(seed: string, leave: (s: Socket) => void): Promise<void> {
    const url = origin.genUrl(GIB, seed);
    const s = connect({ host: '127.0.0.1', port });
    s.on('error', () => undefined);
    let got = 0;
    s.on('data', (c: Buffer) => (got += c.length));
    s.write(`GET ${url} HTTP/1.1\r\nHost: ${new URL(url).host}\r\n\r\n`);
    await waitFor('the first trickled bytes', async () => (got > 64 * 1024 ? true : null), 10_000);
    const left = Date.now();
    leave(s);
    const line = new RegExp(`GET ${url.replace(/[.?*+^$[\]\\(){}|-]/g, '\\$&')} 200 (\\S+) slow-big (\\d+) `);
    const m = await waitFor('the access line', async () => line.exec(await accessLog()), 10_000);
    const ms = Date.now() - left;
    assert.ok(ms < SLOW_MS - 1000, `the exchange ended ${ms} ms after the client left, before the verdict could come`);
    assert.equal(m[1], 'failed', 'no verdict: the scan was given up, not waited for');
    await waitFor('the proxy to let go of the client', async () => ((avgate.httpProxy?.openConnections ?? -1) === 0 ? true : null), 10_000);
    // The origin never finished sending: the upstream fetch was cut.
    assert.ok(!origin.log.some((l) => l.startsWith(`GET /gen/${GIB}/${seed} `)), origin.log.join('\n'));
  }

  test('a client that closes fully while a download is trickled: upstream fetch and scan are given up', async () => {
    await leaveMidTrickle('half-full-close', (s) => s.destroy());
  });

  test('a client that resets while a download is trickled: upstream fetch and scan are given up', async () => {
    await leaveMidTrickle('half-reset', (s) => s.resetAndDestroy());
  });

  test('the proxy still serves normally afterwards, nothing left open', async () => {
    const r = await within('a half-closed GET', 20_000, halfClosedGet(port, origin.url('clean.bin')));
    assert.equal(r.status, 200);
    await waitFor('no client connection left', async () => ((avgate.httpProxy?.openConnections ?? -1) === 0 ? true : null), 10_000);
  });
});
