import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { connect } from 'node:net';
import { gzipSync } from 'node:zlib';

/** What one curl run gave: exit code, HTTP status (0 when none), stderr. */
export interface CurlResult {
  code: number;
  status: number;
  stderr: string;
}

/** curl through the proxy (`-x`), the body to `out`; never through a proxy from the environment. */
export function curlVia(proxyPort: number, url: string, out: string, extra: string[] = []): Promise<CurlResult> {
  return new Promise((resolve) => {
    const child = spawn(
      'curl',
      ['-s', '-S', '--noproxy', '', '-x', `http://127.0.0.1:${proxyPort}`, '-o', out, '-w', '%{http_code}', '-m', '300', ...extra, url],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, http_proxy: '', HTTP_PROXY: '', no_proxy: '', NO_PROXY: '' } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('close', (code) => resolve({ code: code ?? -1, status: Number(stdout.trim()) || 0, stderr }));
  });
}

function headerLines(raw: readonly string[]): string {
  const lines: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) lines.push(`${raw[i]}: ${raw[i + 1]}`);
  return `${lines.join('\n')}\n`;
}

/**
 * An origin for the cases the file origin does not cover: `POST/PUT /echo` answers the SHA-256 and
 * size of the body it got (and remembers it), `/headers` the request head it got (and answers
 * with a header its Connection header names), `/chunked/<n>` sends n bytes without Content-Length,
 * `/gzip-eicar` a gzip-encoded body (Content-Encoding: gzip) holding `gzipPayload`.
 */
export async function startEchoOrigin(gzipPayload: Buffer): Promise<{ port: number; uploads: string[]; stop(): Promise<void> }> {
  const uploads: string[] = [];
  const sockets = new Set<Socket>();
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://o');
    if (url.pathname === '/echo') {
      const h = createHash('sha256');
      let n = 0;
      for await (const c of req) {
        h.update(c as Buffer);
        n += (c as Buffer).length;
      }
      const text = `${n} ${h.digest('hex')}`;
      uploads.push(text);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    if (url.pathname === '/headers') {
      // The request head as received, one `name: value` per line.
      const text = headerLines(req.rawHeaders);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text), 'X-Hop': 'drop-me', Connection: 'X-Hop' });
      res.end(text);
      return;
    }
    const chunked = /^\/chunked\/(\d+)$/.exec(url.pathname);
    if (chunked) {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      const n = Number(chunked[1]);
      const piece = Buffer.alloc(4096, 0x61);
      for (let i = 0; i < n; i += piece.length) res.write(piece.subarray(0, Math.min(piece.length, n - i)));
      res.end();
      return;
    }
    if (url.pathname === '/gzip-eicar') {
      const body = gzipSync(gzipPayload);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Encoding': 'gzip', 'Content-Length': body.length });
      res.end(body);
      return;
    }
    res.writeHead(404, { 'Content-Length': 0 });
    res.end();
  };
  const server = createServer((req, res) => void handle(req, res).catch(() => res.destroy()));
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return {
    port: (server.address() as AddressInfo).port,
    uploads,
    async stop() {
      const closed = new Promise<void>((ok) => server.close(() => ok()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/**
 * Sends raw bytes to the proxy and collects everything it answers until it closes the connection
 * (or `waitMs` passes: then `closed` is false). `halfClose`: the write side is shut down right after
 * the bytes (shutdown(SHUT_WR)), and the proxy's FIN counts as its close.
 */
export function rawExchange(
  port: number,
  data: Buffer | string,
  waitMs = 5000,
  opts: { halfClose?: boolean } = {},
): Promise<{ text: string; bytes: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, allowHalfOpen: opts.halfClose === true });
    const parts: Buffer[] = [];
    let settled = false;
    const finish = (closed: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      const bytes = Buffer.concat(parts);
      resolve({ text: bytes.toString('latin1'), bytes, closed });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    s.on('data', (c: Buffer) => parts.push(c));
    if (opts.halfClose) s.on('end', () => finish(true));
    s.on('error', () => finish(true));
    s.on('close', () => finish(true));
    if (opts.halfClose) s.end(data);
    else s.write(data);
  });
}
