import type { Socket } from 'node:net';
import { RateAllowance } from '../../core/rate-allowance.js';

export class ReadTimeout extends Error {}
/** The body did not keep up the minimum rate (see ByteReader.meter()); `bytes` were taken while metered. */
export class BodyTimeout extends ReadTimeout {
  constructor(
    message: string,
    readonly bytes: number,
  ) {
    super(message);
  }
}
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
  /** Unread bytes as received: no copying on arrival; body reads hand out views of them. */
  private chunks: Buffer[] = [];
  private length = 0;
  private ended = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;
  /**
   * A bound on a whole stretch of reads (see bound()): its length (0 = none), what it covers (for
   * the message), and its deadline (performance.now() based; NaN until the stretch's first wait).
   */
  private stretchMs = 0;
  private stretchWhat = '';
  private stretchUntil = Number.NaN;
  /** A minimum rate over a body (see meter()); null = not metered. */
  private rate: RateAllowance | null = null;

  private readonly onData = (d: Buffer): void => {
    this.chunks.push(d);
    this.length += d.length;
    if (this.length > this.highWater) this.socket.pause();
    this.notify();
  };

  constructor(
    private readonly socket: Socket,
    private readonly highWater = 256 * 1024,
  ) {
    socket.on('data', this.onData);
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
    return this.length;
  }

  /** True when the peer has closed its side and nothing is left to read. */
  get exhausted(): boolean {
    return this.ended && this.length === 0;
  }

  /** True once the peer has closed its side (what it sent before may still be unread). */
  get peerEnded(): boolean {
    return this.ended;
  }

  /**
   * Bounds the reads from now until unbound() as a whole, not only each wait: once the stretch has
   * waited for bytes for the first time, it must be over within `ms`, or the waiting read fails
   * with ReadTimeout. The per-read timeouts still apply inside it. Reads served from buffered
   * bytes cost nothing; the clock is only looked at when a read has to wait.
   */
  bound(ms: number, what: string): void {
    this.stretchMs = ms;
    this.stretchWhat = what;
    this.stretchUntil = Number.NaN;
  }

  unbound(): void {
    this.stretchMs = 0;
  }

  /**
   * Meters the reads from now until unmeter() (a body), in the manner of mod_reqtimeout's
   * `body=…,MinRate=…`: the time spent waiting for bytes may add up to `ms`, plus 1 s for every
   * `minRate` bytes taken (0 = no extension). Only waits count, not the time between reads: while
   * the connection is busy elsewhere (an engine that holds the stream back, a response being
   * written) the client is held up by backpressure, which is not its fault. Past the allowance the
   * waiting read fails with BodyTimeout. `ms` 0: no meter.
   */
  meter(ms: number, minRate: number): void {
    this.rate = ms > 0 ? new RateAllowance(ms, minRate) : null;
  }

  unmeter(): void {
    this.rate = null;
  }

  /**
   * Nothing more will be read: what is buffered and what still arrives is dropped, and the socket
   * keeps flowing, so that closing it later does not reset the connection over unread bytes.
   */
  discard(): void {
    this.socket.off('data', this.onData);
    this.socket.on('data', dropData);
    this.chunks = [];
    this.length = 0;
    this.stretchMs = 0;
    this.rate = null;
    this.socket.resume();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Takes n bytes (n <= first chunk's length) off the front. */
  private take(n: number): Buffer {
    const first = this.chunks[0] as Buffer;
    let out: Buffer;
    if (n === first.length) {
      out = first;
      this.chunks.shift();
    } else {
      out = first.subarray(0, n);
      this.chunks[0] = first.subarray(n);
    }
    this.length -= n;
    this.rate?.took(n);
    if (this.length <= this.highWater && this.socket.isPaused()) this.socket.resume();
    return out;
  }

  /** Joins the first two chunks (only for a head or line that straddles them). */
  private joinFirstTwo(): void {
    const [a, b] = this.chunks as [Buffer, Buffer];
    this.chunks.splice(0, 2, Buffer.concat([a, b]));
  }

  /**
   * Waits for more bytes; false when the peer has closed. `bounded` false: a wait outside the
   * bounded stretch (the wait for the first byte of a request, which idle-timeout covers).
   */
  private async more(timeoutMs: number, bounded = true): Promise<boolean> {
    if (this.failure) throw this.failure;
    if (this.ended) return false;
    if (this.socket.isPaused()) this.socket.resume();
    let waitMs = timeoutMs;
    let ends: 'read' | 'stretch' | 'meter' = 'read';
    if (bounded && this.stretchMs > 0) {
      const now = performance.now();
      if (Number.isNaN(this.stretchUntil)) this.stretchUntil = now + this.stretchMs;
      const left = this.stretchUntil - now;
      if (left <= waitMs) {
        waitMs = Math.max(0, left);
        ends = 'stretch';
      }
    }
    const rate = bounded ? this.rate : null;
    if (rate) {
      const left = rate.leftMs();
      if (left <= waitMs) {
        waitMs = Math.max(0, left);
        ends = 'meter';
      }
    }
    const waitStarted = rate ? performance.now() : 0;
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.wake = null;
          reject(
            ends === 'meter' && rate
              ? new BodyTimeout(rate.describe('body'), rate.bytes)
              : new ReadTimeout(ends === 'stretch' ? `${this.stretchWhat} not complete within ${this.stretchMs} ms` : `no data for ${timeoutMs} ms`),
          );
        }, waitMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    } finally {
      rate?.waited(performance.now() - waitStarted);
    }
    if (this.failure) throw this.failure;
    return true;
  }

  /**
   * Reads through `delim` (included in the result). Null when the peer closed before sending a
   * byte (a clean end between requests). Over `max` bytes without the delimiter: LimitExceeded.
   */
  async readUntil(delim: Buffer, max: number, timeoutMs: number, firstByteTimeoutMs?: number): Promise<Buffer | null> {
    let searchFrom = 0;
    for (;;) {
      const first = this.chunks[0];
      if (first) {
        const i = first.indexOf(delim, searchFrom);
        if (i >= 0) {
          if (i + delim.length > max) throw new LimitExceeded(`more than ${max} bytes`);
          return this.take(i + delim.length);
        }
        if (first.length > max) throw new LimitExceeded(`more than ${max} bytes`);
        searchFrom = Math.max(0, first.length - delim.length + 1);
        if (this.chunks.length > 1) {
          this.joinFirstTwo();
          continue;
        }
      }
      // The wait for a request's first byte (readHead) is idle time, outside any bounded stretch.
      const idle = this.length === 0 && firstByteTimeoutMs !== undefined;
      if (!(await (idle ? this.more(firstByteTimeoutMs, false) : this.more(timeoutMs)))) {
        if (this.length === 0) return null;
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
    while (this.length < n) {
      if (!(await this.more(timeoutMs))) throw new UnexpectedEof('connection closed in the middle of a message');
    }
    while ((this.chunks[0] as Buffer).length < n) this.joinFirstTwo();
    return this.take(n);
  }

  /** Between 1 and `max` bytes, as soon as any are there (a view, never a copy). */
  async readSome(max: number, timeoutMs: number): Promise<Buffer> {
    while (this.length === 0) {
      if (!(await this.more(timeoutMs))) throw new UnexpectedEof('connection closed in the middle of a message');
    }
    const first = this.chunks[0] as Buffer;
    return this.take(Math.min(max, first.length));
  }
}

function dropData(): void {
  // bytes after the last answer: nobody reads them
}
