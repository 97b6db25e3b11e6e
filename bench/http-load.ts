/**
 * The HTTP section's client: one keep-alive HTTP/1.1 connection, one GET at a time, to an origin
 * directly (`GET /path`) or through a proxy (`GET http://host:port/path`). Response bodies are
 * counted and dropped as they stream (100 MB objects at concurrency 32 must not be held in memory);
 * only their first bytes are kept for the content check. Bodies framed by Content-Length, by
 * chunked encoding, or by the end of the connection are all understood, since a proxy may re-frame
 * what the origin sent. Lean on purpose (as bench/http-client.ts): node:http's client would charge
 * the load generator's CPU to the server under test on a two-core machine.
 */
import { connect, type Socket } from 'node:net';

export interface FetchResult {
  status: number;
  /** Body bytes received (decoded from chunked framing). */
  bytes: number;
  /** The first body bytes (up to `keep`). */
  head: Buffer;
  /** The body ended as its framing says (false: the connection broke off, or a timeout). */
  complete: boolean;
  /** Why it is not complete. */
  error: string | null;
}

const MAX_HEAD = 64 * 1024;

type BodyMode = { kind: 'length'; left: number } | { kind: 'chunked' } | { kind: 'close' } | { kind: 'none' };

interface Pending {
  resolve: (r: FetchResult) => void;
  timer: NodeJS.Timeout;
  status: number;
  headText: string | null;
  body: BodyMode;
  bytes: number;
  kept: Buffer[];
  keptBytes: number;
  closeAfter: boolean;
  /** Chunked decoding state. */
  chunk: { state: 'size' | 'data' | 'crlf' | 'trailer'; left: number; line: string };
}

export class HttpLoadClient {
  private socket: Socket | null = null;
  private pending: Pending | null = null;
  private buf: Buffer = Buffer.alloc(0);

  constructor(
    readonly port: number,
    /** Request target form: `origin` (path only) or `proxy` (absolute URL of the origin). */
    readonly via: 'origin' | 'proxy',
    readonly originPort: number,
    readonly opts: { timeoutMs: number; keep: number } = { timeoutMs: 120_000, keep: 64 },
  ) {}

  close(): void {
    this.socket?.destroy();
    this.socket = null;
  }

  private open(): Promise<Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    return new Promise<Socket>((resolve, reject) => {
      const s = connect(this.port, '127.0.0.1');
      s.setNoDelay(true);
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        this.socket = s;
        this.buf = Buffer.alloc(0);
        s.on('data', (d: Buffer) => this.onData(d));
        s.on('error', () => undefined);
        s.on('close', () => {
          // A socket this client already let go of (after a timeout) must not end the next request.
          if (this.socket !== s) return;
          this.socket = null;
          const p = this.pending;
          if (p) this.finish(p, p.body.kind === 'close' && p.headText !== null, p.headText === null ? 'connection closed before the response head' : 'connection closed in the body');
        });
        resolve(s);
      });
    });
  }

  private finish(p: Pending, complete: boolean, error: string | null): void {
    if (this.pending !== p) return;
    this.pending = null;
    clearTimeout(p.timer);
    if (!complete || p.closeAfter) {
      this.socket?.destroy();
      this.socket = null;
    }
    p.resolve({ status: p.status, bytes: p.bytes, head: Buffer.concat(p.kept), complete, error: complete ? null : error });
  }

  private body(p: Pending, d: Buffer): void {
    p.bytes += d.length;
    if (p.keptBytes < this.opts.keep) {
      const k = d.subarray(0, this.opts.keep - p.keptBytes);
      p.kept.push(Buffer.from(k));
      p.keptBytes += k.length;
    }
  }

  private onData(d: Buffer): void {
    const p = this.pending;
    if (!p) return; // nothing asked: an unexpected byte on an idle connection is dropped
    let data = d;
    if (p.headText === null) {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (this.buf.length > MAX_HEAD) this.finish(p, false, 'response head too large');
        return;
      }
      const head = this.buf.subarray(0, end).toString('latin1');
      data = this.buf.subarray(end + 4);
      this.buf = Buffer.alloc(0);
      p.status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0);
      if (p.status >= 100 && p.status < 200) {
        // an interim answer (100 Continue ...): the real one follows
        if (data.length > 0) this.onData(Buffer.from(data));
        return;
      }
      p.headText = head;
      const http10 = head.startsWith('HTTP/1.0');
      const conn = /\r\nconnection:[ \t]*([^\r\n]*)/i.exec(head)?.[1]?.toLowerCase() ?? '';
      p.closeAfter = conn.includes('close') || (http10 && !conn.includes('keep-alive'));
      const te = /\r\ntransfer-encoding:[ \t]*([^\r\n]*)/i.exec(head)?.[1]?.toLowerCase() ?? '';
      const cl = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head)?.[1];
      if (p.status === 204 || p.status === 304) p.body = { kind: 'none' };
      else if (te.includes('chunked')) p.body = { kind: 'chunked' };
      else if (cl !== undefined) p.body = { kind: 'length', left: Number(cl) };
      else p.body = { kind: 'close' };
      if (p.body.kind === 'none' || (p.body.kind === 'length' && p.body.left === 0)) {
        this.finish(p, true, null);
        return;
      }
    }
    const b = p.body;
    if (b.kind === 'length') {
      const take = data.subarray(0, b.left);
      this.body(p, take);
      b.left -= take.length;
      if (b.left === 0) this.finish(p, true, null);
    } else if (b.kind === 'close') {
      this.body(p, data);
    } else if (b.kind === 'chunked') {
      this.chunked(p, data);
    }
  }

  /** Chunked decoding, any split of the input: size line, data, CRLF, ... last chunk, trailer. */
  private chunked(p: Pending, data: Buffer): void {
    const c = p.chunk;
    let i = 0;
    while (i < data.length && this.pending === p) {
      if (c.state === 'data') {
        const n = Math.min(c.left, data.length - i);
        this.body(p, data.subarray(i, i + n));
        i += n;
        c.left -= n;
        if (c.left === 0) c.state = 'crlf';
        continue;
      }
      const nl = data.indexOf(10, i);
      const part = data.subarray(i, nl < 0 ? data.length : nl).toString('latin1');
      c.line += part;
      if (c.line.length > 4096) return this.finish(p, false, 'chunk line too long');
      if (nl < 0) return;
      i = nl + 1;
      const line = c.line.replace(/\r$/, '');
      c.line = '';
      if (c.state === 'crlf') {
        if (line !== '') return this.finish(p, false, 'bad chunk end');
        c.state = 'size';
      } else if (c.state === 'size') {
        const size = Number.parseInt(line.split(';')[0] ?? '', 16);
        if (!Number.isFinite(size) || size < 0) return this.finish(p, false, `bad chunk size "${line.slice(0, 40)}"`);
        if (size === 0) c.state = 'trailer';
        else {
          c.state = 'data';
          c.left = size;
        }
      } else if (line === '') {
        return this.finish(p, true, null); // end of the trailer
      }
    }
  }

  /** One GET of `path` on the origin; never rejects (a failure is an incomplete result). */
  async get(path: string): Promise<FetchResult> {
    let s: Socket;
    try {
      s = await this.open();
    } catch (err) {
      return { status: 0, bytes: 0, head: Buffer.alloc(0), complete: false, error: `connect: ${err instanceof Error ? err.message : String(err)}` };
    }
    const host = `127.0.0.1:${this.originPort}`;
    const target = this.via === 'proxy' ? `http://${host}${path}` : path;
    return new Promise<FetchResult>((resolve) => {
      const p: Pending = {
        resolve,
        timer: setTimeout(() => this.finish(p, false, `no complete answer within ${this.opts.timeoutMs} ms (stall)`), this.opts.timeoutMs),
        status: 0,
        headText: null,
        body: { kind: 'none' },
        bytes: 0,
        kept: [],
        keptBytes: 0,
        closeAfter: false,
        chunk: { state: 'size', left: 0, line: '' },
      };
      this.pending = p;
      s.write(`GET ${target} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: avgate-bench\r\nAccept: */*\r\n\r\n`);
    });
  }
}
