import type { Socket } from 'node:net';

/**
 * POP3 wire format (RFC 1939, RFC 2449): lines, multi-line responses with dot-stuffing, and a
 * pull reader over a socket. No policy here.
 */

export class ReadTimeout extends Error {}
/** The peer closed the connection (in the middle of something). */
export class PeerClosed extends Error {}
/** A line longer than allowed. */
export class LineTooLong extends Error {}

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;

/**
 * Pull reader: the session asks for a line or some bytes and waits for them. Unread bytes stay
 * for the next read; bytes read too far (past a multi-line terminator) can be put back. The socket
 * is paused while more than `highWater` bytes wait, so a slow scan slows the peer down.
 */
export class LineReader {
  private chunks: Buffer[] = [];
  private length = 0;
  private ended = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;

  constructor(
    private readonly socket: Socket,
    private readonly highWater = 256 * 1024,
  ) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  private readonly onData = (d: Buffer): void => {
    this.chunks.push(d);
    this.length += d.length;
    if (this.length > this.highWater) this.socket.pause();
    this.notify();
  };

  private readonly onEnd = (): void => {
    this.ended = true;
    this.notify();
  };

  private readonly onError = (err: Error): void => {
    this.failure ??= err;
    this.notify();
  };

  /**
   * Stops reading the socket and drops what is buffered (the connection moves to TLS). The socket
   * is paused: bytes that arrive from now on stay in it for the next reader (a TLSSocket takes them).
   */
  detach(): void {
    this.socket.pause();
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    this.chunks = [];
    this.length = 0;
  }

  get buffered(): number {
    return this.length;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Waits for more bytes; false when the peer has closed. */
  private async more(timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    if (this.failure) throw this.failure;
    if (this.ended) return false;
    if (this.socket.isPaused()) this.socket.resume();
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        clearTimeout(timer);
        this.wake = null;
        reject(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
      };
      const timer = setTimeout(() => {
        this.wake = null;
        signal?.removeEventListener('abort', onAbort);
        reject(new ReadTimeout(`no data for ${timeoutMs} ms`));
      }, timeoutMs);
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.wake = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
    });
    if (this.failure) throw this.failure;
    return true;
  }

  private take(n: number): Buffer {
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const first = this.chunks[0] as Buffer;
      if (first.length <= left) {
        out.push(first);
        this.chunks.shift();
        left -= first.length;
      } else {
        out.push(first.subarray(0, left));
        this.chunks[0] = first.subarray(left);
        left = 0;
      }
    }
    this.length -= n;
    if (this.length <= this.highWater && this.socket.isPaused()) this.socket.resume();
    return out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out, n);
  }

  /** Index of the first LF in the buffered bytes from `from`, or -1. */
  private indexOfLf(from: number): number {
    let base = 0;
    for (const c of this.chunks) {
      if (from < base + c.length) {
        const i = c.indexOf(LF, Math.max(0, from - base));
        if (i >= 0) return base + i;
      }
      base += c.length;
    }
    return -1;
  }

  /**
   * One line without its line end (CRLF, or a bare LF from a sloppy peer). Null when the peer
   * closed before sending a byte. A line longer than `max` bytes (line end included) is read to its
   * end and dropped, then LineTooLong is thrown, so the session stays in step.
   */
  async readLine(max: number, timeoutMs: number, signal?: AbortSignal): Promise<Buffer | null> {
    let searched = 0;
    let dropping = false;
    for (;;) {
      const i = this.indexOfLf(searched);
      if (i >= 0) {
        const line = this.take(i + 1);
        if (dropping || line.length > max) throw new LineTooLong(`line longer than ${max} bytes`);
        const end = line.length >= 2 && line[line.length - 2] === CR ? line.length - 2 : line.length - 1;
        return line.subarray(0, end);
      }
      if (this.length > max) {
        // Too long already: drop what is here and keep reading to the line end.
        this.take(this.length);
        dropping = true;
      }
      searched = this.length;
      if (!(await this.more(timeoutMs, signal))) {
        if (this.length === 0 && !dropping) return null;
        throw new PeerClosed('connection closed in the middle of a line');
      }
    }
  }

  /** Whatever bytes are there (at least one); PeerClosed when the peer has closed. */
  async readSome(timeoutMs: number, signal?: AbortSignal): Promise<Buffer> {
    while (this.length === 0) {
      if (!(await this.more(timeoutMs, signal))) throw new PeerClosed('connection closed in the middle of a response');
    }
    return this.take(this.chunks[0]?.length ?? 0);
  }

  /** Puts bytes back in front (read past the end of a multi-line response). */
  unshift(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.unshift(b);
    this.length += b.length;
  }
}

/**
 * The body of a multi-line response as it arrives: un-stuffs leading dots and finds the
 * terminating ".CRLF" wherever the chunks are split. `push` returns the payload bytes of the chunk
 * and, once the terminator is seen, `done` with the bytes after it (not part of this response).
 */
export class MultilineDecoder {
  private atLineStart = true;
  /** A "." or ".CR" at a line start whose meaning depends on the next chunk. */
  private pending: Buffer | null = null;
  done = false;

  push(input: Buffer): { data: Buffer[]; rest: Buffer | null } {
    if (this.done) return { data: [], rest: input };
    let chunk = input;
    if (this.pending) {
      chunk = Buffer.concat([this.pending, input]);
      this.pending = null;
    }
    // Payload bytes are handed out as few views as possible: a cut only where a dot is dropped.
    const data: Buffer[] = [];
    let segStart = 0;
    const flush = (end: number) => {
      if (end > segStart) data.push(chunk.subarray(segStart, end));
    };
    let i = 0;
    const len = chunk.length;
    while (i < len) {
      if (this.atLineStart) {
        this.atLineStart = false;
        if (chunk[i] === DOT) {
          if (i + 1 >= len || (chunk[i + 1] === CR && i + 2 >= len)) {
            // Undecided until the next chunk: kept back.
            flush(i);
            this.pending = chunk.subarray(i);
            this.atLineStart = true;
            return { data, rest: null };
          }
          if (chunk[i + 1] === CR && chunk[i + 2] === LF) {
            flush(i);
            this.done = true;
            return { data, rest: chunk.subarray(i + 3) };
          }
          // A stuffed dot (or a lone dot a sloppy server did not double): drop one dot.
          flush(i);
          segStart = i + 1;
          i++;
        }
      }
      const j = chunk.indexOf(LF, i);
      if (j < 0) break;
      i = j + 1;
      this.atLineStart = true;
    }
    flush(len);
    return { data, rest: null };
  }
}

/**
 * Dot-stuffing for a multi-line response sent to the client: a dot at a line start is doubled.
 * `end()` gives the terminator, with a CRLF first when the payload did not end with a line end.
 */
export class DotStuffer {
  private atLineStart = true;
  private last = -1;

  push(chunk: Buffer): Buffer[] {
    if (chunk.length === 0) return [];
    const out: Buffer[] = [];
    let start = 0;
    let i = 0;
    while (i < chunk.length) {
      if (this.atLineStart && chunk[i] === DOT) {
        out.push(chunk.subarray(start, i), DOT_BUF);
        start = i;
      }
      const j = chunk.indexOf(LF, i);
      if (j < 0) {
        this.atLineStart = false;
        break;
      }
      i = j + 1;
      this.atLineStart = true;
    }
    out.push(chunk.subarray(start));
    this.last = chunk[chunk.length - 1] as number;
    return out.filter((b) => b.length > 0);
  }

  /** The terminator (and a line end first if the payload lacked one). */
  end(): Buffer {
    return this.last === -1 || this.last === LF ? TERMINATOR : CRLF_TERMINATOR;
  }
}

const DOT_BUF = Buffer.from('.');
const TERMINATOR = Buffer.from('.\r\n');
const CRLF_TERMINATOR = Buffer.from('\r\n.\r\n');

/** Finds the end of a multi-line response without changing it (for responses relayed as they are). */
export class MultilineScanner {
  private readonly decoder = new MultilineDecoder();
  get done(): boolean {
    return this.decoder.done;
  }
  /** How many bytes of `chunk` belong to the response (all of it unless the terminator is inside). */
  push(chunk: Buffer): number {
    const { rest } = this.decoder.push(chunk);
    return rest === null ? chunk.length : chunk.length - rest.length;
  }
}

/** A command line split into its keyword (upper case) and arguments. */
export function parseCommand(line: Buffer): { verb: string; args: string[]; raw: string } | null {
  const raw = line.toString('latin1');
  // RFC 1939: keywords are 3-4 printable characters, arguments up to 40; extensions are longer.
  if (!/^[\x20-\x7e]*$/.test(raw)) return null;
  const parts = raw.split(' ').filter((p, i) => p.length > 0 || i === 0);
  const verb = (parts[0] ?? '').toUpperCase();
  if (!/^[A-Z][A-Z0-9-]{0,19}$/.test(verb)) return null;
  return { verb, args: parts.slice(1), raw };
}

/** Status line of a server response: +OK / -ERR / + (SASL continuation). */
export function responseKind(line: Buffer): 'ok' | 'err' | 'cont' | null {
  if (line.length >= 3 && line.subarray(0, 3).toString('latin1').toUpperCase() === '+OK') return 'ok';
  if (line.length >= 4 && line.subarray(0, 4).toString('latin1').toUpperCase() === '-ERR') return 'err';
  if (line.length >= 1 && line[0] === 0x2b && (line.length === 1 || line[1] === 0x20)) return 'cont';
  return null;
}
