/**
 * Child process of the HTTP section: the origin server (node:http) on a free loopback port,
 * serving bench/http-content.ts objects with a Content-Length and headers that forbid every cache
 * (so Squid, avgate and the direct client all fetch every byte from here every time). Bodies are
 * written piece by piece with backpressure. Prints `READY {"port":N}`; stops when stdin closes.
 * A `COUNT` line on stdin is answered with `COUNT {"requests":N,"bytes":B}` on stdout: the objects
 * served so far, which lets the section check that no proxy answered from a cache of its own.
 *
 *   node dist/bench/http-origin.js
 */
import { createServer, type ServerResponse } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { onParentLine, stopWhenParentSays } from './child.js';
import { objectPieces, parseObjectPath } from './http-content.js';

async function send(res: ServerResponse, pieces: Generator<Buffer>): Promise<void> {
  for (const piece of pieces) {
    if (res.destroyed) return;
    if (!res.write(piece)) await Promise.race([once(res, 'drain'), once(res, 'close')]);
  }
  res.end();
}

async function main(): Promise<void> {
  let requests = 0;
  let bytes = 0;
  const server = createServer({ keepAliveTimeout: 600_000, requestTimeout: 0 }, (req, res) => {
    const spec = req.method === 'GET' ? parseObjectPath(new URL(req.url ?? '/', 'http://origin').pathname) : null;
    if (!spec) {
      res.writeHead(404, { 'Content-Length': '0', 'Cache-Control': 'no-store' }).end();
      return;
    }
    res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Content-Length': String(spec.size),
      // No cache anywhere: every proxy fetches and scans every response.
      'Cache-Control': 'no-store, no-cache, max-age=0, must-revalidate',
      Pragma: 'no-cache',
      Expires: '0',
    });
    requests++;
    bytes += spec.size;
    send(res, objectPieces(spec)).catch(() => res.destroy());
  });
  server.headersTimeout = 60_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  stopWhenParentSays('http-origin', async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  onParentLine((line) => {
    if (line === 'COUNT') process.stdout.write(`COUNT ${JSON.stringify({ requests, bytes })}\n`);
  });
  process.stdout.write(`READY ${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`http-origin: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
