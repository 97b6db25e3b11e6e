import type { Socket } from 'node:net';

/** What one read of a control connection gives. */
export type LineEvent =
  | { kind: 'line'; line: string }
  /** A line longer than the limit: its bytes were dropped up to the next line end. */
  | { kind: 'too-long' }
  | { kind: 'eof' }
  | { kind: 'timeout' };

/**
 * Lines of an FTP control connection (CRLF, a bare LF tolerated), decoded as latin1 so that file
 * names in any encoding go back out byte for byte. At most `maxLine` bytes are buffered for one
 * line: a peer that never sends a line end cannot fill memory. The socket is paused while more
 * than `maxQueued` complete lines wait unread (a client pipelining commands during a transfer).
 */
export class LineReader {
  private partial = '';
  private dropping = false;
  private readonly queue: LineEvent[] = [];
  private ended = false;
  private wake: (() => void) | null = null;

  constructor(
    private readonly socket: Socket,
    private readonly maxLine: number,
    private readonly maxQueued = 64,
  ) {
    socket.on('data', this.onBytes);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onEnd);
  }

  private readonly onBytes = (d: Buffer): void => this.onData(d.toString('latin1'));

  private readonly onEnd = (): void => {
    this.ended = true;
    this.notify();
  };

  /**
   * Stops reading the socket and drops every line not yet taken (the control connection moves to
   * TLS: what the client sent in clear behind AUTH TLS is never read as a command). The socket is
   * paused; bytes arriving from now on stay in it for the next reader (a TLSSocket takes them).
   */
  detach(): void {
    this.socket.pause();
    this.socket.off('data', this.onBytes);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onEnd);
    this.queue.length = 0;
    this.partial = '';
    this.dropping = false;
  }

  private onData(text: string): void {
    let rest = text;
    for (;;) {
      const nl = rest.indexOf('\n');
      if (nl < 0) {
        if (!this.dropping) {
          this.partial += rest;
          if (this.partial.length > this.maxLine) {
            this.partial = '';
            this.dropping = true;
          }
        }
        break;
      }
      const piece = rest.slice(0, nl);
      rest = rest.slice(nl + 1);
      if (this.dropping) {
        this.dropping = false;
        this.queue.push({ kind: 'too-long' });
        continue;
      }
      let line = this.partial + piece;
      this.partial = '';
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line.length > this.maxLine) this.queue.push({ kind: 'too-long' });
      else this.queue.push({ kind: 'line', line });
    }
    if (this.queue.length > this.maxQueued) this.socket.pause();
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Puts an event back in front (read ahead while a transfer ran, handled after it). */
  unshift(ev: LineEvent): void {
    this.queue.unshift(ev);
  }

  /** True when a line (or the end) is waiting: a read would not block. */
  get ready(): boolean {
    return this.queue.length > 0 || this.ended;
  }

  /** The next line, the end of the connection, or a timeout after `timeoutMs` of silence. */
  async next(timeoutMs: number, signal?: AbortSignal): Promise<LineEvent> {
    for (;;) {
      const ev = this.queue.shift();
      if (ev) {
        if (this.queue.length <= this.maxQueued && this.socket.isPaused()) this.socket.resume();
        return ev;
      }
      if (this.ended) return { kind: 'eof' };
      if (signal?.aborted) return { kind: 'eof' };
      const timedOut = await new Promise<boolean>((resolve) => {
        const onAbort = () => {
          clearTimeout(timer);
          this.wake = null;
          resolve(false);
        };
        const timer = setTimeout(() => {
          this.wake = null;
          signal?.removeEventListener('abort', onAbort);
          resolve(true);
        }, timeoutMs);
        signal?.addEventListener('abort', onAbort, { once: true });
        this.wake = () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          resolve(false);
        };
      });
      if (timedOut) return { kind: 'timeout' };
    }
  }
}
