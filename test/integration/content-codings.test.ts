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
import { waitFor } from '../helpers/wait.js';

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
/** Codings whose decoders stop at the end of the compressed stream and drop what follows. */
const TRAILING: Array<[string, Coder[]]> = [
  ['br', [brotliCompressSync]],
  ['deflate', [deflateSync]],
  ['deflate', [deflateRawSync]],
];

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
      if (which === 'trail') {
        // A compressed "hello" and then, after the end of its stream, the body itself as sent.
        const [name, coders] = TRAILING[Number(what)] as [string, Coder[]];
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Encoding': name });
        res.end(Buffer.concat([encode(Buffer.from('hello\n'), coders), eicar]));
        return;
      }
      if (which === 'late') {
        // A deflate stream, then (in a later write) 300 KB and the body after its end.
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'deflate' });
        res.write(deflateSync(Buffer.from('hello\n')));
        setTimeout(() => res.end(Buffer.concat([Buffer.alloc(300_000, 0x41), eicar])), 100);
        return;
      }
      if (which === 'found-trail') {
        // EICAR inside the stream, junk after it: the finding must stand.
        const [name, coders] = TRAILING[Number(what)] as [string, Coder[]];
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Encoding': name });
        res.end(Buffer.concat([encode(eicar, coders), Buffer.from('X')]));
        return;
      }
      if (which === 'corrupt') {
        res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Encoding': 'gzip' });
        res.end('this is not gzip at all');
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
    // The catch-all rule docs/http-proxy.md shows, skipped accepted, for the paths under /lax/.
    avgate = await startAvgatePeer({
      stateDir: join(dir, 'state'),
      clamd,
      httpProxyYaml: ['decode-content-encoding: true', 'doc-acl:', "  - name: lax", "    match: {url: '/\\/lax\\//'}", '    accept-status: [free, skipped]', '  - name: default'].join('\n'),
    });
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
  test('HTTP proxy: bytes after the end of a br or deflate stream (dropped by the decoder, kept by a client that saves the body as sent) are not scanned, so skipped; a corrupt gzip is skipped with its reason, not an engine error', async () => {
    for (const [i, [name]] of TRAILING.entries()) {
      const out = join(dir, `trail-${i}`);
      const r = await curlVia(avgate.httpProxyPort as number, `http://127.0.0.1:${originPort}/trail/${i}`, out, ['-D', `${out}.head`]);
      assert.equal(r.status, 403, `${name} (case ${i})`);
      assert.match(await readFile(`${out}.head`, 'utf8'), new RegExp(`X-Avgate-Verdict: skipped; (not scanned: )?data after the end of the ${name} stream`, 'i'));
    }
    const out = join(dir, 'corrupt');
    const r = await curlVia(avgate.httpProxyPort as number, `http://127.0.0.1:${originPort}/corrupt/x`, out, ['-D', `${out}.head`]);
    assert.equal(r.status, 403);
    assert.match(await readFile(`${out}.head`, 'utf8'), /X-Avgate-Verdict: skipped; (not scanned: )?the body's Content-Encoding gzip could not be decoded/i);
  });

  test('ICAP RESPMOD: trailing bytes after a br stream are skipped; a zstd body past the early-response size gets the page at once (no early head, then an abort); these skipped verdicts reach the statistics', async () => {
    const port = avgate.icapPort;
    const before = Number(/avgate_scans_total\{source="icap",status="skipped"\} (\d+)/.exec((await avgate.stats?.prometheus()) ?? '')?.[1] ?? 0);
    const trailing = Buffer.concat([brotliCompressSync(Buffer.from('hello\n')), eicar]);
    const t = await icapExchange(port, [buildRequest(port, trailing, { allow204: true, resHeaders: ['Content-Encoding: br'] }).first]);
    t.socket.destroy();
    assert.match(t.responses[0]?.sections['res-hdr']?.toString('latin1') ?? '', /^HTTP\/1\.1 403/);
    assert.match(t.responses[0]?.body.toString('latin1') ?? '', /data after the end of the br stream/);
    // 200 KB, no Allow: 204, no preview: past early-response-after (32 KiB) the head would go out early.
    const big = randomBytes(200_000);
    const z = await icapExchange(port, [buildRequest(port, big, { resHeaders: ['Content-Encoding: zstd'] }).first]);
    z.socket.destroy();
    assert.equal(z.responses[0]?.head.status, 200);
    assert.match(z.responses[0]?.sections['res-hdr']?.toString('latin1') ?? '', /^HTTP\/1\.1 403/, 'the page, not the object\'s own head');
    await waitFor('the statistics to count both', async () => {
      const after = Number(/avgate_scans_total\{source="icap",status="skipped"\} (\d+)/.exec((await avgate.stats?.prometheus()) ?? '')?.[1] ?? 0);
      return after - before >= 2 ? true : null;
    }, 10_000);
  });
  test('HTTP proxy: a deflate stream whose trailing bytes come in a later write ends the scan at once (skipped), never held until scan-timeout; EICAR inside a stream with junk after it stays found even where skipped is accepted', async () => {
    const out = join(dir, 'late');
    const r = await curlVia(avgate.httpProxyPort as number, `http://127.0.0.1:${originPort}/late/x`, out, ['-D', `${out}.head`, '-m', '20']);
    assert.equal(r.status, 403, r.stderr);
    assert.match(await readFile(`${out}.head`, 'utf8'), /X-Avgate-Verdict: skipped; (not scanned: )?data after the end of the deflate stream/i);
    for (const [i, [name]] of TRAILING.entries()) {
      const o = join(dir, `found-trail-${i}`);
      const f = await curlVia(avgate.httpProxyPort as number, `http://127.0.0.1:${originPort}/found-trail/${i}/lax/`, o, ['-D', `${o}.head`]);
      assert.equal(f.status, 403, `${name} (case ${i})`);
      assert.match(await readFile(`${o}.head`, 'utf8'), /X-Avgate-Verdict: found/i);
    }
  });
});
