import { connect, type Socket } from 'node:net';

/**
 * A lean HTTP/1.1 keep-alive client for the benchmark (one request at a time per connection), as
 * lean as the raw ICAP client it is compared with: head and body in one write, answers with a
 * Content-Length only. node:http's client costs the load generator more CPU per request than the
 * server under test spends, which on a small machine would be measured as the server's slowness.
 */
export interface HttpBenchAnswer {
  status: number;
  body: Buffer;
}

export class HttpBenchClient {
  private socket: Socket | null = null;
  private buf: Buffer = Buffer.alloc(0);
  private waiting: { resolve: (a: HttpBenchAnswer) => void; reject: (e: Error) => void } | null = null;

  constructor(
    readonly port: number,
    readonly host = '127.0.0.1',
  ) {}

  close(): void {
    this.socket?.destroy();
    this.socket = null;
  }

  private open(): Promise<Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    return new Promise<Socket>((resolve, reject) => {
      const s = connect(this.port, this.host);
      s.setNoDelay(true);
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        this.socket = s;
        this.buf = Buffer.alloc(0);
        s.on('data', (d: Buffer) => this.onData(d));
        s.on('error', (err) => this.fail(err));
        s.on('close', () => this.fail(new Error('connection closed')));
        resolve(s);
      });
    });
  }

  private fail(err: Error): void {
    this.socket = null;
    const w = this.waiting;
    this.waiting = null;
    w?.reject(err);
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0 || !this.waiting) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0);
    const m = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head);
    if (!m) {
      this.socket?.destroy();
      this.fail(new Error(`answer without Content-Length: ${head.split('\r\n')[0] ?? ''}`));
      return;
    }
    const len = Number(m[1]);
    if (this.buf.length < end + 4 + len) return;
    const body = this.buf.subarray(end + 4, end + 4 + len);
    this.buf = this.buf.subarray(end + 4 + len);
    if (/\r\nconnection:[ \t]*close/i.test(head)) {
      this.socket?.end();
      this.socket = null;
    }
    const w = this.waiting;
    this.waiting = null;
    w.resolve({ status, body });
  }

  /** One request; `head` without the final CRLF CRLF (Host and Content-Length are added). */
  async request(method: string, path: string, headers: string[], body: Buffer): Promise<HttpBenchAnswer> {
    const s = await this.open();
    const head = `${method} ${path} HTTP/1.1\r\nHost: ${this.host}:${this.port}\r\n${headers.map((h) => `${h}\r\n`).join('')}Content-Length: ${body.length}\r\n\r\n`;
    return new Promise<HttpBenchAnswer>((resolve, reject) => {
      this.waiting = { resolve, reject };
      s.cork();
      s.write(head);
      s.write(body);
      s.uncork();
    });
  }
}
