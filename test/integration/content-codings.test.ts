import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { brotliCompressSync, deflateRawSync, deflateSync, gzipSync } from 'node:zlib';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { curlVia } from '../helpers/http-proxy.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';

type Coder = (b: Buffer) => Buffer;
/** Content-Encoding values and how to make such a body (applied left to right, as the header lists them). */
const CODINGS: Array<[string, Coder[]]> = [
  ['deflate', [deflateSync]],
  ['deflate', [deflateRawSync]], // raw deflate, as some servers send and browsers accept
  ['br', [brotliCompressSync]],
  ['gzip, br', [gzipSync, brotliCompressSync]],
  ['br, gzip', [brotliCompressSync, gzipSync]],
  ['gzip, gzip', [gzipSync, gzipSync]],
];
const encode = (body: Buffer, coders: Coder[]) => coders.reduce((b, c) => c(b), body);

/**
 * Bodies with content codings other than one gzip layer (which clamd opens itself): a browser
 * decodes them all, so the engines must see them decoded. Origin: a small node server, since no
 * real server sends chained codings on demand.
 */
describe('content codings: the HTTP proxy and the ICAP server scan what the browser will decode', () => {
  let clamd: TestClamd;
  let avgate: Serving & { icapPort: number };
  let origin: Server;
  let originPort: number;
  let dir: string;
  const eicar = Buffer.concat([Buffer.from('before\n'), eicarBytes(), Buffer.from('\nafter\n')]);
  const clean = randomBytes(50_000);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-codings-'));
    clamd = await startTestClamd();
    // /<n>/<eicar|clean>: CODINGS[n]; /two-lines: gzip then br as two header lines; /zstd: a coding avgate cannot decode.
    origin = createServer((req, res) => {
      const [, which, what] = (req.url ?? '').split('/');
      const body = what === 'eicar' ? eicar : clean;
      if (which === 'two-lines') {
        res.writeHead(200, [['Content-Type', 'application/octet-stream'], ['Content-Encoding', 'gzip'], ['Content-Encoding', 'br']]);
        res.end(brotliCompressSync(gzipSync(body)));
        return;
      }
      if (which === 'zstd') {
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'zstd' });
        res.end(body);
        return;
      }
      const [name, coders] = CODINGS[Number(which)] as [string, Coder[]];
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Encoding': name });
      res.end(encode(body, coders));
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    originPort = (origin.address() as AddressInfo).port;
    avgate = await startAvgatePeer({ stateDir: join(dir, 'state'), clamd, httpProxyYaml: 'decode-content-encoding: true' });
  });

  after(async () => {
    await avgate?.stop();
    await new Promise((r) => origin?.close(r));
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const proxied = async (path: string) => {
    const out = join(dir, `out-${path.replace(/\W/g, '_')}`);
    const r = await curlVia(avgate.httpProxyPort as number, `http://127.0.0.1:${originPort}${path}`, out, ['--compressed', '-H', 'Accept-Encoding: gzip, deflate, br']);
    return { status: r.status, body: await readFile(out).catch(() => Buffer.alloc(0)) };
  };

  test('HTTP proxy: EICAR under deflate (zlib and raw), br and chains of codings is blocked; clean bodies arrive decoded by curl as sent', async () => {
    for (const [i, [name]] of CODINGS.entries()) {
      const bad = await proxied(`/${i}/eicar`);
      assert.equal(bad.status, 403, `EICAR with Content-Encoding: ${name} (case ${i})`);
      const ok = await proxied(`/${i}/clean`);
      assert.equal(ok.status, 200, `clean with Content-Encoding: ${name}`);
      assert.ok(ok.body.equals(clean), `curl decodes the clean body (${name})`);
    }
    assert.equal((await proxied('/two-lines/eicar')).status, 403, 'two Content-Encoding lines are one list');
  });

  test('HTTP proxy: a coding avgate cannot decode (zstd) is not scanned, so blocked as skipped', async () => {
    const out = join(dir, 'zstd');
    const r = await curlVia(avgate.httpProxyPort as number, `http://127.0.0.1:${originPort}/zstd/clean`, out, ['-D', `${out}.head`]);
    assert.equal(r.status, 403);
    assert.match(await readFile(`${out}.head`, 'utf8'), /X-Avgate-Verdict: skipped; (not scanned: )?Content-Encoding zstd cannot be decoded/i);
  });

  test('ICAP RESPMOD: the encapsulated response\'s Content-Encoding is decoded for the engines; zstd is skipped', async () => {
    const port = avgate.icapPort;
    const ask = async (coding: string, body: Buffer) => {
      const r = await icapExchange(port, [buildRequest(port, body, { allow204: true, resHeaders: [`Content-Encoding: ${coding}`] }).first]);
      r.socket.destroy();
      const res = r.responses[0];
      assert.ok(res, `an answer for ${coding}`);
      const http = /^HTTP\/1\.\d (\d{3})/.exec(res.sections['res-hdr']?.toString('latin1') ?? '')?.[1];
      return { icap: res.head.status, http: http === undefined ? null : Number(http), text: res.body.toString('latin1') };
    };
    for (const [name, coders] of CODINGS) {
      const bad = await ask(name, encode(eicar, coders));
      assert.deepEqual([bad.icap, bad.http], [200, 403], `EICAR with Content-Encoding: ${name}`);
      const ok = await ask(name, encode(clean, coders));
      assert.equal(ok.icap, 204, `clean with Content-Encoding: ${name}`);
    }
    const zstd = await ask('zstd', clean);
    assert.deepEqual([zstd.icap, zstd.http], [200, 403]);
    assert.match(zstd.text, /zstd cannot be decoded/);
  });
});
