import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { objectPath, objectPieces, objectPrefix, parseObjectPath } from '../../bench/http-content.js';
import { HttpLoadClient } from '../../bench/http-load.js';
import { splitAt } from '../helpers/split.js';

// The HTTP benchmark's origin content (bench/http-content.ts) and its client (bench/http-load.ts):
// the figures are only worth something if every download is counted right whatever framing the
// proxy chose, so the client is checked against node:http (Content-Length and chunked) and against
// responses split at arbitrary points.

const body = (path: string) => Buffer.concat([...objectPieces(parseObjectPath(path) ?? assert.fail(path))]);

describe('bench http content', () => {
  test('a path always gives the same bytes, of exactly its size', () => {
    for (const size of [1, 31, 32, 33, 1000, 65_536 + 7, 5 * 1024 * 1024 + 3]) {
      const p = objectPath(size, 'same');
      const a = body(p);
      assert.equal(a.length, size);
      assert.ok(a.equals(body(p)), `size ${size}: not deterministic`);
    }
  });

  test('every id gives new content from the first bytes on; eicar paths start with EICAR', () => {
    const a = body(objectPath(100_000, 'a'));
    const b = body(objectPath(100_000, 'b'));
    assert.ok(!a.subarray(0, 32).equals(b.subarray(0, 32)));
    const e = body(objectPath(100_000, 'a', true));
    assert.ok(e.subarray(0, eicarBytes().length).equals(eicarBytes()));
    assert.equal(e.length, 100_000);
    assert.ok(objectPrefix(parseObjectPath(objectPath(100_000, 'a')) ?? assert.fail()).equals(a.subarray(0, 32)));
  });

  test('paths other than /obj|eicar/SIZE/ID are refused', () => {
    for (const p of ['/', '/obj/10', '/obj/x/1', '/obj/10/a b', '/other/10/a', '/obj/10/a/../b']) assert.equal(parseObjectPath(p), null, p);
  });
});

describe('bench http client against node:http', () => {
  let server: HttpServer;
  let port: number;
  const seen: string[] = [];
  before(async () => {
    server = createHttpServer((req, res) => {
      seen.push(req.url ?? '');
      const url = new URL(req.url ?? '/', 'http://x');
      const spec = parseObjectPath(url.pathname);
      if (!spec) return void res.writeHead(404, { 'Content-Length': '0' }).end();
      // ?chunked: no Content-Length, so node:http frames the body in chunks
      res.writeHead(200, url.searchParams.has('chunked') ? {} : { 'Content-Length': String(spec.size) });
      for (const piece of objectPieces(spec)) res.write(piece);
      res.end();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))));

  test('Content-Length and chunked bodies are counted whole, on one kept-alive connection', async () => {
    const c = new HttpLoadClient(port, 'origin', port, { timeoutMs: 30_000, keep: 64 });
    for (const size of [1000, 200_000, 3_000_000]) {
      for (const chunked of [false, true]) {
        const path = objectPath(size, `k${size}`);
        const r = await c.get(chunked ? `${path}?chunked` : path);
        assert.equal(r.status, 200);
        assert.equal(r.complete, true, r.error ?? '');
        assert.equal(r.bytes, size);
        assert.ok(r.head.equals(body(path).subarray(0, 64)), 'first bytes');
      }
    }
    const missing = await c.get('/nothing');
    assert.equal(missing.status, 404);
    assert.equal(missing.complete, true);
    c.close();
  });

  test('through a proxy the request names the origin in absolute form', async () => {
    seen.length = 0;
    const c = new HttpLoadClient(port, 'proxy', 4321, { timeoutMs: 30_000, keep: 64 });
    const r = await c.get(objectPath(10, 'abs'));
    c.close();
    assert.equal(r.status, 200);
    assert.deepEqual(seen, [`http://127.0.0.1:4321${objectPath(10, 'abs')}`]);
  });
});

describe('bench http client: framings split anywhere, and stalls', () => {
  let server: NetServer;
  let port: number;
  /** What the raw server answers to the next request, as pieces written with pauses. */
  let script: Buffer[] = [];
  let closeAfter = false;
  const sockets = new Set<Socket>();
  before(async () => {
    server = createNetServer((s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      let got = '';
      s.on('data', async (d: Buffer) => {
        got += d.toString('latin1');
        if (!got.includes('\r\n\r\n')) return;
        got = '';
        for (const piece of script) {
          s.write(piece);
          await new Promise((r) => setImmediate(r));
        }
        if (closeAfter) s.end();
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });
  after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const cut = (buf: Buffer, cuts: number[]) => splitAt(buf, cuts).filter((b) => b.length > 0);

  test('chunked (with extensions and a trailer), close-delimited and after-100-Continue bodies, split at random points', async () => {
    const payload = Buffer.from('0123456789abcdefghij'.repeat(50));
    const chunked = Buffer.concat([
      Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'),
      Buffer.from('64;ext=1\r\n'),
      payload.subarray(0, 100),
      Buffer.from('\r\n384\r\n'),
      payload.subarray(100),
      Buffer.from('\r\n0\r\nX-Trailer: yes\r\n\r\n'),
    ]);
    const closing = Buffer.concat([Buffer.from('HTTP/1.0 200 OK\r\nContent-Type: x/y\r\n\r\n'), payload]);
    const continued = Buffer.concat([Buffer.from(`HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: ${payload.length}\r\n\r\n`), payload]);
    const framings = { chunked, closing, continued };
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat(), { maxLength: 12 }), fc.constantFrom('chunked', 'closing', 'continued') as fc.Arbitrary<keyof typeof framings>, async (cuts, framing) => {
        script = cut(framings[framing], cuts);
        closeAfter = framing === 'closing';
        const c = new HttpLoadClient(port, 'origin', port, { timeoutMs: 10_000, keep: 16 });
        const r = await c.get('/x');
        c.close();
        assert.equal(r.complete, true, r.error ?? '');
        assert.equal(r.status, 200);
        assert.equal(r.bytes, payload.length);
        assert.ok(r.head.equals(payload.subarray(0, 16)));
      }),
      { numRuns: 60 },
    );
  });

  test('a body that stops coming is reported as a stall, and the client goes on with a new connection', async () => {
    closeAfter = false;
    script = [Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this')];
    const c = new HttpLoadClient(port, 'origin', port, { timeoutMs: 300, keep: 16 });
    const r = await c.get('/stall');
    assert.equal(r.complete, false);
    assert.equal(r.bytes, 9);
    assert.match(r.error ?? '', /stall/);
    script = [Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')];
    const next = await c.get('/next');
    c.close();
    assert.equal(next.complete, true, next.error ?? '');
    assert.equal(next.bytes, 2);
  });
});
