import type { Socket } from 'node:net';

export class ReadTimeout extends Error {}
export class LimitExceeded extends Error {}
/** The peer closed the connection in the middle of a message. */
export class UnexpectedEof extends Error {}

const CRLF = Buffer.from('\r\n');
const CRLFCRLF = Buffer.from('\r\n\r\n');

/**
 * Pull-style reader over a socket: the connection asks for a line, a header block or some body
 * bytes and waits for them. Unread bytes stay here for the next (pipelined) request. The socket is
 * paused whenever more than `highWater` bytes wait unread, so a slow engine or disk slows the
 * client down instead of filling memory.
 */
export class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private ended = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;

  constructor(
    private readonly socket: Socket,
    private readonly highWater = 256 * 1024,
  ) {
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      if (this.buf.length > this.highWater) socket.pause();
      this.notify();
    });
    socket.on('end', () => {
      this.ended = true;
      this.notify();
    });
    socket.on('close', () => {
      this.ended = true;
      this.notify();
    });
    socket.on('error', (err) => {
      this.failure ??= err;
      this.notify();
    });
  }

  get buffered(): number {
    return this.buf.length;
  }

  /** True when the peer has closed its side and nothing is left to read. */
  get exhausted(): boolean {
    return this.ended && this.buf.length === 0;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private consume(n: number): Buffer {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    if (this.buf.length <= this.highWater && this.socket.isPaused()) this.socket.resume();
    return out;
  }

  /** Waits for more bytes; false when the peer has closed. */
  private async more(timeoutMs: number): Promise<boolean> {
    if (this.failure) throw this.failure;
    if (this.ended) return false;
    if (this.socket.isPaused()) this.socket.resume();
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.wake = null;
        reject(new ReadTimeout(`no data for ${timeoutMs} ms`));
      }, timeoutMs);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    if (this.failure) throw this.failure;
    return true;
  }

  /**
   * Reads through `delim` (included in the result). Null when the peer closed before sending a
   * byte (a clean end between requests). Over `max` bytes without the delimiter: LimitExceeded.
   */
  async readUntil(delim: Buffer, max: number, timeoutMs: number, firstByteTimeoutMs = timeoutMs): Promise<Buffer | null> {
    let searchFrom = 0;
    for (;;) {
      const i = this.buf.indexOf(delim, searchFrom);
      if (i >= 0) {
        if (i + delim.length > max) throw new LimitExceeded(`more than ${max} bytes`);
        return this.consume(i + delim.length);
      }
      if (this.buf.length > max) throw new LimitExceeded(`more than ${max} bytes`);
      searchFrom = Math.max(0, this.buf.length - delim.length + 1);
      const hadData = this.buf.length > 0;
      if (!(await this.more(hadData ? timeoutMs : firstByteTimeoutMs))) {
        if (this.buf.length === 0) return null;
        throw new UnexpectedEof('connection closed in the middle of a message');
      }
    }
  }

  /** A header block ending with an empty line. */
  readHead(max: number, timeoutMs: number, firstByteTimeoutMs: number): Promise<Buffer | null> {
    return this.readUntil(CRLFCRLF, max, timeoutMs, firstByteTimeoutMs);
  }

  /** One CRLF-terminated line, without the CRLF. */
  async readLine(max: number, timeoutMs: number): Promise<Buffer> {
    const line = await this.readUntil(CRLF, max + 2, timeoutMs);
    if (line === null) throw new UnexpectedEof('connection closed in the middle of a message');
    return line.subarray(0, line.length - 2);
  }

  async readExactly(n: number, timeoutMs: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (!(await this.more(timeoutMs))) throw new UnexpectedEof('connection closed in the middle of a message');
    }
    return this.consume(n);
  }

  /** Between 1 and `max` bytes, as soon as any are there. */
  async readSome(max: number, timeoutMs: number): Promise<Buffer> {
    while (this.buf.length === 0) {
      if (!(await this.more(timeoutMs))) throw new UnexpectedEof('connection closed in the middle of a message');
    }
    return this.consume(Math.min(max, this.buf.length));
  }
}
