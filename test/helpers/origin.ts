import { createCipheriv, createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { resolve, sep } from 'node:path';
import { Readable } from 'node:stream';

/** Piece size of generated objects: big enough to be cheap, small enough to keep memory flat. */
const GEN_PIECE = 64 * 1024;
/** Upper bound of /gen objects, so a typo in a test cannot ask for terabytes. */
const GEN_MAX_BYTES = 4 * 1024 ** 3;

/**
 * Deterministic pseudo-random bytes: AES-128-CTR over zeros, keyed by the seed. Produced piece by
 * piece on demand (with backpressure), so a 200 MB object never exists in memory.
 */
export function generatedStream(bytes: number, seed: string): Readable {
  const key = createHash('sha256').update(`avgate-origin:${seed}`).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  const zeros = Buffer.alloc(GEN_PIECE);
  let left = bytes;
  return new Readable({
    read() {
      while (left > 0) {
        const n = Math.min(GEN_PIECE, left);
        left -= n;
        if (!this.push(cipher.update(zeros.subarray(0, n)))) return;
      }
      this.push(null);
    },
  });
}

/** SHA-256 (hex) of what /gen/<bytes>/<seed> serves, computed without the server. */
export async function generatedSha256(bytes: number, seed: string): Promise<string> {
  const h = createHash('sha256');
  for await (const piece of generatedStream(bytes, seed)) h.update(piece as Buffer);
  return h.digest('hex');
}

export interface TestOrigin {
  port: number;
  /** http://127.0.0.1:PORT/<path> (path without the leading slash). */
  url(path: string): string;
  /** URL of a generated object of `bytes` bytes. */
  genUrl(bytes: number, seed: string): string;
  /** Requests answered so far (method path status). */
  readonly log: readonly string[];
  stop(): Promise<void>;
}

function send(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * A plain HTTP/1.1 origin on 127.0.0.1 (port 0): `/<name>` serves the file `dir/<name>` and
 * `/gen/<bytes>/<seed>` a generated object (see generatedStream), both as
 * application/octet-stream with Content-Length and keep-alive.
 */
export async function startTestOrigin(opts: { dir: string }): Promise<TestOrigin> {
  const root = resolve(opts.dir);
  const log: string[] = [];
  const sockets = new Set<Socket>();

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://origin').pathname);
    res.on('finish', () => log.push(`${req.method} ${path} ${res.statusCode}`));
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'method not allowed\n');
    const headers = { 'Content-Type': 'application/octet-stream', 'Cache-Control': 'no-store', Connection: 'keep-alive' };

    const gen = /^\/gen\/(\d+)\/([\w.-]+)$/.exec(path);
    if (gen) {
      const bytes = Number(gen[1]);
      if (!Number.isSafeInteger(bytes) || bytes > GEN_MAX_BYTES) return send(res, 400, 'size out of range\n');
      res.writeHead(200, { ...headers, 'Content-Length': bytes });
      if (req.method === 'HEAD') return void res.end();
      generatedStream(bytes, gen[2] as string).pipe(res);
      return;
    }

    const file = resolve(root, `.${path}`);
    // a path that resolves outside the served directory is not served (../ in the URL)
    if (!file.startsWith(root + sep)) return send(res, 404, 'not found\n');
    let size: number;
    try {
      const st = await stat(file);
      if (!st.isFile()) return send(res, 404, 'not found\n');
      size = st.size;
    } catch {
      return send(res, 404, 'not found\n');
    }
    res.writeHead(200, { ...headers, 'Content-Length': size });
    if (req.method === 'HEAD') return void res.end();
    const rs = createReadStream(file);
    rs.on('error', () => res.destroy());
    rs.pipe(res);
  }

  const server = createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => ok());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: (path) => `http://127.0.0.1:${port}/${path}`,
    genUrl: (bytes, seed) => `http://127.0.0.1:${port}/gen/${bytes}/${seed}`,
    log,
    async stop() {
      const closed = new Promise<void>((ok) => server.close(() => ok()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
