import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createServer as createHttpServer } from 'node:http';
import { httpProxySchema } from '../../src/config/proxy-schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { HttpProxyServer } from '../../src/protocols/http-proxy/server.js';
import type { ScanService } from '../../src/scan/types.js';
import { rawExchange } from '../helpers/http-proxy.js';
import { waitFor } from '../helpers/wait.js';

/** Tunnels are never scanned: a scanner that fails the test when asked. */
const NEVER: ScanService = {
  scan: () => Promise.reject(new Error('a tunnel must not be scanned')),
  wantsHash: false,
  engineLikely: true,
  prefersFiles: () => false,
  concurrency: 1,
  close: async () => undefined,
};

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A TCP origin whose behaviour per connection the test sets. */
async function tcpOrigin(onConn: (s: Socket) => void): Promise<{ port: number; server: Server }> {
  const server = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => undefined);
    onConn(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as { port: number }).port, server };
}

/** Opens a tunnel through the proxy; resolves with the socket (allowHalfOpen) once the 200 head was read, plus any bytes after it. */
function openTunnel(proxyPort: number, authority: string): Promise<{ s: Socket; rest: Buffer }> {
  return new Promise((ok, fail) => {
    const s = connect({ port: proxyPort, host: '127.0.0.1', allowHalfOpen: true });
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onData);
      s.pause();
      const head = buf.toString('latin1', 0, end);
      if (!/^HTTP\/1\.1 200 /.test(head)) return fail(new Error(head));
      ok({ s, rest: buf.subarray(end + 4) });
    };
    s.on('data', onData);
    s.once('error', fail);
    s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  });
}

/** Everything the socket still sends until its end (or close). */
function readAll(s: Socket, first: Buffer): Promise<Buffer> {
  return new Promise((ok) => {
    const parts = [first];
    s.on('data', (c: Buffer) => parts.push(c));
    s.once('end', () => ok(Buffer.concat(parts)));
    s.once('close', () => ok(Buffer.concat(parts)));
    s.resume();
  });
}

describe('HTTP proxy CONNECT tunnels (hostile and edge cases)', () => {
  let dir: string;
  let proxy: HttpProxyServer;
  let port: number;
  const payload = randomBytes(32 * 1024 * 1024);
  let origins: Server[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-connect-'));
    proxy = new HttpProxyServer(httpProxySchema.parse({ listen: '127.0.0.1:0', 'connect-ports': [], 'doc-acl': [{ action: 'accept' }] }), {
      stateDir: dir,
      scannerFor: () => ({ scanner: NEVER }),
      maxCheckedSize: 1 << 30,
      log: silentLogger(),
    });
    port = (await proxy.listen()).port;
  });

  after(async () => {
    await proxy?.close(100);
    for (const o of origins) o.close();
    origins = [];
    await rm(dir, { recursive: true, force: true });
  });

  test('an origin that sends a large answer and closes at once: a slow client still gets every byte', async () => {
    const o = await tcpOrigin((s) => s.end(payload));
    origins.push(o.server);
    const { s, rest } = await openTunnel(port, `127.0.0.1:${o.port}`);
    // The client does not read for a while: the proxy holds bytes it has not written out yet.
    await new Promise((r) => setTimeout(r, 500));
    const got = await readAll(s, rest);
    s.destroy();
    assert.equal(got.length, payload.length, 'all bytes arrived');
    assert.equal(sha256(got), sha256(payload));
  });

  test('half-close: the client ends its side after the request, the answer still comes back whole', async () => {
    const o = await tcpOrigin((s) => {
      const parts: Buffer[] = [];
      s.on('data', (c: Buffer) => parts.push(c));
      // Answers only once the client's side has ended (like a request read to EOF).
      s.once('end', () => s.end(Buffer.concat([Buffer.from('got '), Buffer.concat(parts)])));
    });
    origins.push(o.server);
    const { s, rest } = await openTunnel(port, `127.0.0.1:${o.port}`);
    s.end('ping');
    const got = await readAll(s, rest);
    s.destroy();
    assert.equal(got.toString(), 'got ping');
  });

  test('bytes sent right behind the CONNECT head, before the 200, reach the origin first and in order', async () => {
    const o = await tcpOrigin((s) => {
      const parts: Buffer[] = [];
      s.on('data', (c: Buffer) => parts.push(c));
      s.once('end', () => s.end(Buffer.concat(parts)));
    });
    origins.push(o.server);
    const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    s.write(`CONNECT 127.0.0.1:${o.port} HTTP/1.1\r\nHost: x\r\n\r\nearly-`);
    s.write('bytes');
    s.end();
    const got = (await readAll(s, Buffer.alloc(0))).toString('latin1');
    s.destroy();
    assert.match(got, /^HTTP\/1\.1 200 [^]*\r\n\r\nearly-bytes$/);
  });

  test('connect-ports (default [443]): other ports are refused, however written; malformed ports are 400', async () => {
    const lines: string[] = [];
    const o = await tcpOrigin(() => undefined);
    origins.push(o.server);
    const p = new HttpProxyServer(httpProxySchema.parse({ listen: '127.0.0.1:0', 'access-log': 'access.log' }), {
      stateDir: dir,
      scannerFor: () => ({ scanner: NEVER }),
      maxCheckedSize: 1 << 30,
      log: silentLogger(),
    });
    const pp = (await p.listen()).port;
    try {
      // connect-ports defaults to [443]: another port, with leading zeros or not, is refused.
      for (const target of [`127.0.0.1:${o.port}`, '127.0.0.1:0080', '[::1]:80', '127.0.0.1:000443', '127.0.0.1:0']) {
        const r = await rawExchange(pp, `CONNECT ${target} HTTP/1.1\r\nHost: x\r\n\r\n`, 3000);
        lines.push(r.text.split('\r\n')[0] ?? '');
      }
      assert.deepEqual(lines, ['HTTP/1.1 403 Forbidden', 'HTTP/1.1 403 Forbidden', 'HTTP/1.1 403 Forbidden', 'HTTP/1.1 400 Bad Request', 'HTTP/1.1 400 Bad Request']);
      assert.equal(p.counters.tunnels, 0);
    } finally {
      await p.close(100);
    }
  });
});

describe('HTTP proxy CONNECT: an idle tunnel is closed after timeouts.body', () => {
  test('neither side sends: the tunnel is closed, and logged', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'avgate-connect-idle-'));
    const o = await tcpOrigin(() => undefined);
    const p = new HttpProxyServer(httpProxySchema.parse({ listen: '127.0.0.1:0', 'connect-ports': [], timeouts: { body: '300ms' } }), {
      stateDir: dir,
      scannerFor: () => ({ scanner: NEVER }),
      maxCheckedSize: 1 << 30,
      log: silentLogger(),
    });
    const pp = (await p.listen()).port;
    try {
      const { s, rest } = await openTunnel(pp, `127.0.0.1:${o.port}`);
      const t0 = Date.now();
      await readAll(s, rest);
      const ms = Date.now() - t0;
      s.destroy();
      assert.ok(ms >= 250 && ms < 5000, `closed after ${ms} ms`);
      assert.equal(p.counters.tunnels, 1);
      await waitFor('the access record of the tunnel', async () => (p.counters.byStatus['200'] === 1 ? true : null), 5000);
    } finally {
      await p.close(100);
      o.server.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('HTTP proxy CONNECT: shutdown', () => {
  test('an open tunnel is counted, cut by close(), and gets its access line', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'avgate-connect-stop-'));
    const o = await tcpOrigin(() => undefined);
    const p = new HttpProxyServer(httpProxySchema.parse({ listen: '127.0.0.1:0', 'connect-ports': [] }), {
      stateDir: dir,
      scannerFor: () => ({ scanner: NEVER }),
      maxCheckedSize: 1 << 30,
      log: silentLogger(),
    });
    const pp = (await p.listen()).port;
    try {
      const { s, rest } = await openTunnel(pp, `127.0.0.1:${o.port}`);
      assert.equal(p.counters.tunnels, 1);
      const ended = readAll(s, rest);
      const t0 = Date.now();
      await p.close(2000);
      await ended;
      s.destroy();
      assert.ok(Date.now() - t0 < 1500, 'close() did not wait for the idle tunnel');
      await waitFor('the access record of the tunnel', async () => (p.counters.byStatus['200'] === 1 ? true : null), 5000);
    } finally {
      await p.close(100);
      o.server.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('refusals say why: smuggling shapes, https:// and path requests, a closed port, a refused tunnel', async () => {
    const closed = await tcpOrigin((sock) => sock.destroy());
    const closedPort = closed.port;
    await new Promise<void>((r) => closed.server.close(() => r()));
    const p = new HttpProxyServer(httpProxySchema.parse({ listen: '127.0.0.1:0', 'connect-ports': [443] }), {
      stateDir: tmpdir(),
      scannerFor: () => ({ scanner: NEVER }),
      maxCheckedSize: 1 << 30,
      log: silentLogger(),
    });
    const pp = (await p.listen()).port;
    const ask = async (raw: string) => {
      const r = await rawExchange(pp, raw, 8000);
      return { status: r.text.split('\r\n')[0] ?? '', body: r.text.slice(r.text.indexOf('\r\n\r\n') + 4) };
    };
    try {
      const clte = await ask('POST http://127.0.0.1:1/x HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
      assert.match(clte.status, / 400 /);
      assert.match(clte.body, /Content-Length and Transfer-Encoding|ambiguous framing|smuggling/);
      const https = await ask('GET https://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n');
      assert.match(https.status, / 400 /);
      assert.match(https.body, /https:\/\/ URLs go through a CONNECT tunnel/);
      const path = await ask('GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      assert.match(path.body, /this is a proxy: a request needs an absolute http:\/\/ URL/);
      const refused = await ask(`GET http://127.0.0.1:${closedPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${closedPort}\r\n\r\n`);
      assert.match(refused.status, / 502 /);
      assert.match(refused.body, /the server refused the connection \(ECONNREFUSED\)/);
      const port = await ask('CONNECT 127.0.0.1:8443 HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.match(port.status, / 403 /);
      assert.match(port.body, /tunnels go only to the ports in connect-ports \(443\)/);
    } finally {
      await p.close(100);
    }
  });

  test('forwarded-for: keep passes the client\'s X-Forwarded-For on as it is, add appends the client, delete removes it', async () => {
    const origin = createHttpServer((req, res) => res.end(`xff=${req.headers['x-forwarded-for'] ?? '(none)'}`));
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    const originPort = (origin.address() as { port: number }).port;
    const seen: string[] = [];
    try {
      for (const mode of ['keep', 'add', 'delete'] as const) {
        const p = new HttpProxyServer(httpProxySchema.parse({ listen: '127.0.0.1:0', 'forwarded-for': mode, 'doc-acl': [{ name: 'all', action: 'accept' }] }), {
          stateDir: tmpdir(),
          scannerFor: () => ({ scanner: NEVER }),
          maxCheckedSize: 1 << 30,
          log: silentLogger(),
        });
        const pp = (await p.listen()).port;
        try {
          for (const xff of ['', 'X-Forwarded-For: 192.0.2.1\r\n']) {
            const r = await rawExchange(pp, `GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n${xff}Connection: close\r\n\r\n`, 5000);
            seen.push(`${mode}: ${r.text.slice(r.text.indexOf('\r\n\r\n') + 4)}`);
          }
        } finally {
          await p.close(100);
        }
      }
    } finally {
      origin.close();
    }
    assert.deepEqual(seen, [
      'keep: xff=(none)',
      'keep: xff=192.0.2.1',
      'add: xff=127.0.0.1',
      'add: xff=192.0.2.1, 127.0.0.1',
      'delete: xff=(none)',
      'delete: xff=(none)',
    ]);
  });
});
