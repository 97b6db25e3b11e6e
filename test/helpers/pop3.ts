import { connect, type Socket } from 'node:net';
import { LineReader, MultilineDecoder } from '../../src/protocols/pop3/wire.js';

/** A scripted POP3 client for tests: one command at a time, multi-line answers un-stuffed. */
export class Pop3TestClient {
  private readonly reader: LineReader;
  greeting = '';
  private constructor(readonly socket: Socket) {
    this.reader = new LineReader(socket);
  }

  static async connect(port: number): Promise<Pop3TestClient> {
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new Pop3TestClient(socket);
    c.greeting = await c.line();
    return c;
  }

  /** One line (without CRLF); '' with `closed` true when the server closed. */
  async line(timeoutMs = 20_000): Promise<string> {
    const l = await this.reader.readLine(1 << 20, timeoutMs);
    if (l === null) throw new Error('server closed the connection');
    return l.toString('latin1');
  }

  /** True when the server closed the connection (reads until EOF, bounded). */
  async closed(timeoutMs = 5000): Promise<boolean> {
    try {
      for (;;) if ((await this.reader.readLine(1 << 20, timeoutMs)) === null) return true;
    } catch {
      return this.socket.destroyed || this.socket.readableEnded;
    }
  }

  send(raw: string | Buffer): void {
    this.socket.write(raw);
  }

  async command(line: string): Promise<string> {
    this.send(`${line}\r\n`);
    return this.line();
  }

  /** A command whose +OK answer is multi-line: the status and the un-stuffed body. */
  async multi(line: string, timeoutMs = 30_000): Promise<{ status: string; body: Buffer }> {
    const status = await this.command(line);
    if (!status.startsWith('+OK')) return { status, body: Buffer.alloc(0) };
    return { status, body: await this.body(timeoutMs) };
  }

  async body(timeoutMs = 30_000): Promise<Buffer> {
    const d = new MultilineDecoder();
    const parts: Buffer[] = [];
    while (!d.done) {
      const r = d.push(await this.reader.readSome(timeoutMs));
      parts.push(...r.data);
      if (r.rest) this.reader.unshift(r.rest);
    }
    return Buffer.concat(parts);
  }

  async login(user: string, password: string): Promise<void> {
    const u = await this.command(`USER ${user}`);
    if (!u.startsWith('+OK')) throw new Error(`USER: ${u}`);
    const p = await this.command(`PASS ${password}`);
    if (!p.startsWith('+OK')) throw new Error(`PASS: ${p}`);
  }

  async quit(): Promise<void> {
    try {
      await this.command('QUIT');
    } catch {
      // already gone
    }
    this.socket.destroy();
  }
}
