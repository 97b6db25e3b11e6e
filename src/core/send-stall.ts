import type { ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

/**
 * The send timeout of every front end (`console.timeouts.send`, `icap.send-timeout`,
 * `http-proxy.timeouts.send`, `pop3-proxy.timeouts.send`, `imap-proxy.timeouts.send`): a client
 * that asks for something larger than the socket buffers (a download, a big message, an echoed
 * object) and stops reading would otherwise hold its connection slot, the spool and everything
 * buffered for it for ever, since a write only waits for 'drain'.
 *
 * What is watched is a connection (ICAP, POP3, IMAP: the socket for its whole life) or an HTTP
 * response on one (console, HTTP proxy). It stalls when it has bytes not yet taken by the kernel
 * and its connection makes no write progress for `stallMs`. Progress is what the socket hands on:
 * a write finished (`bytesWritten - writableLength` grows) or libuv's queue shrank
 * (`writeQueueSize`, which moves as the kernel takes part of a large write; for TLS the queue of
 * the TCP handle below, as the TLS one moves only when a whole write is done), so a
 * slow reader that keeps reading is never cut. Nothing unsent (the server still working: a scan,
 * an upstream, a slow disk) never counts. One timer for every target watched, running only while
 * there are some.
 */
export type SendTarget = Socket | ServerResponse;

/**
 * One timer over many targets (requests, responses, connections), running only while there are
 * some: a target whose progress mark has not moved for `stallMs` while it waits on its peer is
 * dropped and handed to its `onStall`. `probe` says whether the target is done (no longer
 * watched), whether it waits on the peer (only then does time count) and its progress mark.
 */
export class StallWatch<T extends object> {
  private readonly watched = new Map<T, { mark: string; since: number; onStall: (probe: StallProbe) => void }>();
  private timer: NodeJS.Timeout | null = null;
  private readonly everyMs: number;

  constructor(
    protected readonly stallMs: number,
    private readonly probe: (target: T) => StallProbe,
    private readonly now: () => number = Date.now,
  ) {
    this.everyMs = Math.max(20, Math.min(1000, Math.floor(stallMs / 4)));
  }

  /** Watches `target` until the probe says it is done, or `unwatch`; a stallMs of 0 watches nothing. */
  protected add(target: T, onStall: (probe: StallProbe) => void): void {
    if (this.stallMs <= 0) return;
    this.watched.set(target, { mark: this.probe(target).mark, since: this.now(), onStall });
    this.timer ??= setInterval(() => this.check(), this.everyMs).unref();
  }

  protected unwatch(target: T): void {
    this.watched.delete(target);
  }

  get size(): number {
    return this.watched.size;
  }

  private check(): void {
    const t = this.now();
    for (const [target, w] of this.watched) {
      const p = this.probe(target);
      if (p.done) {
        this.watched.delete(target);
      } else if (!p.waiting || p.mark !== w.mark) {
        w.mark = p.mark;
        w.since = t;
      } else if (t - w.since >= this.stallMs) {
        this.watched.delete(target);
        w.onStall(p);
      }
    }
    if (this.watched.size === 0) this.stop();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.watched.clear();
  }
}

export interface StallProbe {
  done: boolean;
  /** Waiting on the peer: only then does time without progress count. */
  waiting: boolean;
  mark: string;
  /** Bytes not yet taken (sends). */
  unsent?: number;
}

/** Sends (see above): progress is what the socket hands on; waiting = bytes not taken by the kernel. */
function sendProbe(target: SendTarget): StallProbe {
  const socket = socketOf(target);
  if (target.writableFinished || target.destroyed || (socket?.destroyed ?? false)) return { done: true, waiting: false, mark: '' };
  // No socket yet: a pipelined response waiting for the one before it, which is watched itself.
  if (!socket) return { done: false, waiting: false, mark: '' };
  const unsent = target.writableLength;
  return { done: false, waiting: unsent > 0, mark: sendMark(socket), unsent };
}

export class SendStallWatch extends StallWatch<SendTarget> {
  constructor(stallMs: number, now: () => number = Date.now) {
    super(stallMs, sendProbe, now);
  }

  /**
   * Watches until the target has finished or its connection ends; `onStall` gets the bytes still
   * unsent and must cut the connection (see `cutConnection`). 0 turns the watch off.
   */
  watch(target: SendTarget, onStall: (unsent: number) => void): void {
    if (this.stallMs <= 0 || target.writableFinished || target.destroyed) return;
    this.add(target, (p) => onStall(p.unsent ?? 0));
    const done = () => this.unwatch(target);
    target.once('finish', done);
    target.once('close', done);
  }
}

function socketOf(target: SendTarget): Socket | null {
  return target instanceof Socket ? target : target.socket;
}

interface StreamHandle {
  writeQueueSize?: number;
  /** Of a TLS handle: the TCP handle below it. */
  _parent?: StreamHandle | null;
}

/**
 * What the socket has handed on so far: finished writes and libuv's queue. A TLS handle's own
 * queue does not move while one large write (a corked 256 KiB answer) is taken piece by piece:
 * it stays at the whole record size until the write ends, so a slow reader that keeps reading
 * would look stalled; the queue of the TCP handle below it moves as the kernel takes bytes.
 */
function sendMark(socket: Socket): string {
  const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle;
  return `${(socket.bytesWritten ?? 0) - socket.writableLength}/${handle?.writeQueueSize ?? 0}/${handle?._parent?.writeQueueSize ?? 0}`;
}

/**
 * Ends a stalled connection with a reset, not a FIN: a FIN would queue behind the unsent bytes the
 * kernel still holds for a client that is not reading, keeping them (and the orphaned socket)
 * until the kernel gives up. TLS sockets cannot be reset from node; they are destroyed.
 */
export function cutConnection(socket: Socket | null | undefined): void {
  if (!socket || socket.destroyed) return;
  if (socket instanceof TLSSocket) socket.destroy();
  else socket.resetAndDestroy();
}
