import type { TrickleConfig } from '../config/proxy-schema.js';
import type { Spool } from '../core/spool.js';

/**
 * Trickling, protocol-neutral (HTTP responses, the FTP data channel). A body is received into a
 * Spool while it is scanned; the client would otherwise wait in silence for the whole transfer and
 * scan, and give up. So, once the scan has taken `interval`, a `chunk` of the body is sent every
 * `interval`, never more than `limit` in all and never the last `keep-back` bytes (Kernun's
 * interval/chunk/limit, HAVP's keep-back). When the verdict blocks after bytes went out the caller
 * aborts the connection: the client holds an incomplete object, never the whole infected file.
 */

/** How much is sent per write while passing a body on (after a pass verdict). */
const PIECE = 256 * 1024;

/** Bytes gathered for one writeMany() of the sink (one system call instead of one per piece). */
const BATCH = 1024 * 1024;

/** Received bytes that may wait for the spool (its file) before the receiver waits too. */
const QUEUE_MAX = 1024 * 1024;

/**
 * A Spool being filled, with notice of progress: the receiving side writes, ends or fails it; the
 * trickle reads from it while it grows.
 */
export class SpoolFeed {
  private waiters: Array<() => void> = [];
  private _size = 0;
  private _complete = false;
  private _error: unknown = null;
  private _failed = false;
  /** Settles (never rejects) when the body is complete or failed. */
  readonly settled: Promise<void>;
  private settle!: () => void;
  /**
   * The last pieces received, as they came (see `recentWindow`): a reader close behind the writer
   * takes them from here instead of reading back what the spool just wrote to its file.
   */
  private recent: Buffer[] = [];
  private recentStart = 0;
  private recentBytes = 0;
  /**
   * Pieces received but not yet in the spool: the receiver goes on reading the socket while the
   * spool writes what came meanwhile in one go (a file write per piece would pace the transfer).
   */
  private queue: Buffer[] = [];
  private queued = 0;
  private flushing: Promise<void> | null = null;
  private writeError: unknown = null;

  private readonly recentWindow: number;
  private readonly queueing: boolean;

  /**
   * `recentWindow`: bytes of the latest pieces kept for read() (0 = none). Only worth it when the
   * body is sent on while it arrives (an eager trickle); bounded, so a slow reader costs no more.
   * `queue`: write() returns before the spool has the piece (up to QUEUE_MAX); the receiver must
   * then await idle() after fail() before disposing of the spool.
   */
  constructor(
    readonly spool: Spool,
    options: { recentWindow?: number; queue?: boolean } = {},
  ) {
    this.recentWindow = options.recentWindow ?? 0;
    this.queueing = options.queue ?? false;
    this.settled = new Promise((resolve) => (this.settle = resolve));
  }

  /** Resolves once no spool write is under way (after fail(), nothing more is written). */
  async idle(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  /** Bytes received and readable from the spool (writes completed). */
  get size(): number {
    return this._size;
  }

  get complete(): boolean {
    return this._complete;
  }

  get failed(): boolean {
    return this._failed;
  }

  get error(): unknown {
    return this._error;
  }

  /** Queues a piece for the spool; waits only when too much is queued. Throws a failed spool write. */
  async write(chunk: Buffer): Promise<void> {
    if (this.writeError !== null) throw this.writeError;
    this.queue.push(chunk);
    this.queued += chunk.length;
    this.flushing ??= this.flush();
    if (!this.queueing || this.queued > QUEUE_MAX) await this.flushing;
    if (this.writeError !== null) throw this.writeError;
  }

  private async flush(): Promise<void> {
    // Starts after the caller stored this promise (an await first), so the finally below clears it.
    await Promise.resolve();
    try {
      while (this.queue.length > 0 && !this._failed) {
        const batch = this.queue;
        this.queue = [];
        await this.spool.writeMany(batch);
        // Counted only now: while a write moves the spool from memory to its file, the bytes are
        // in neither place a reader could see.
        for (const chunk of batch) {
          this.queued -= chunk.length;
          this._size += chunk.length;
          if (this.recentWindow > 0) {
            this.recent.push(chunk);
            this.recentBytes += chunk.length;
          }
        }
        if (this.recentWindow > 0) this.trimRecent(this.recentStart);
        this.wake();
      }
    } catch (err) {
      this.writeError = err;
      this.queue = [];
    } finally {
      this.flushing = null;
    }
  }

  /** Drops pieces wholly before `keepFrom`, and the oldest ones beyond the window. */
  private trimRecent(keepFrom: number): void {
    for (;;) {
      const first = this.recent[0];
      if (!first) return;
      const before = this.recentStart + first.length <= keepFrom;
      if (!before && this.recentBytes <= this.recentWindow) return;
      this.recent.shift();
      this.recentStart += first.length;
      this.recentBytes -= first.length;
    }
  }

  /**
   * Up to `max` bytes from `start` (of what was written): from the recent pieces without a copy
   * when they still hold `start`, else from the spool. Empty when nothing is readable yet.
   */
  async read(start: number, max: number): Promise<Buffer> {
    if (this.recentWindow > 0) {
      this.trimRecent(start);
      if (start >= this.recentStart) {
        let pos = this.recentStart;
        for (const c of this.recent) {
          if (start < pos + c.length) return c.subarray(start - pos, Math.min(c.length, start - pos + max));
          pos += c.length;
        }
      }
    }
    return this.spool.readRange(start, start + max);
  }

  /** The whole body is in the spool. */
  async end(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.writeError !== null) throw this.writeError;
    await this.spool.end();
    this._complete = true;
    this.settle();
    this.wake();
  }

  /** Receiving broke (upstream reset, timeout, limit). */
  fail(err: unknown): void {
    if (this._complete || this._failed) return;
    this._failed = true;
    this._error = err;
    this.queue = [];
    this.settle();
    this.wake();
  }

  /** Resolves at the next write, end or failure. */
  changed(): Promise<void> {
    if (this._complete || this._failed) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

/** Where the body goes (an HTTP response, an FTP data connection). */
export interface TrickleSink {
  /** Called once, before the first body byte (or at a pass with an empty body): send the head. */
  begin(): void | Promise<void>;
  /** Writes a piece; resolves when the receiver can take more (backpressure); rejects when it is gone. */
  write(chunk: Buffer): Promise<void>;
  /** Optional: several pieces in order, as one write where the sink can (same promise as write). */
  writeMany?(chunks: Buffer[]): Promise<void>;
}

export interface TrickleOptions {
  feed: SpoolFeed;
  /** The policy's answer for the whole body; a rejection counts as block (fail closed). */
  decision: Promise<'pass' | 'block'>;
  /** null = hold everything until the verdict. */
  params: TrickleConfig | null;
  /** The body's final size when announced (Content-Length), for `limit: N%` and keep-back. */
  totalSize: number | null;
  sink: TrickleSink;
  /** The client went away or the transfer is given up. */
  signal?: AbortSignal;
  /**
   * The same object passed its scan before (see the HTTP proxy's clean hints): with `params` set,
   * bytes go out as they arrive instead of by `interval` and `chunk`, still within `limit` and
   * never the last `keep-back` bytes, so a changed object that blocks is cut off as in trickling.
   */
  eager?: boolean;
  /**
   * A resumed or partial transfer: the client already holds (or does not want) the bytes before
   * this position of the body; they are never sent, yet count as sent for the cap, which stays on
   * positions of the whole body (so a client that resumes after a cut-off trickle gets nothing
   * more before the verdict). Default 0.
   */
  skip?: number;
  /** Exclusive end position of what the client wants (a byte range); default the end of the body. */
  end?: number;
}

export type TrickleOutcome =
  /**
   * The verdict passed and the whole body (or the part from `skip` to `end`) was sent: the caller
   * ends the response. `sent` is always the bytes written to the sink, never the skipped ones.
   */
  | { kind: 'passed'; sent: number }
  /** The verdict blocked before any byte was sent: the client can get the block page. */
  | { kind: 'blocked'; sent: 0 }
  /** The verdict blocked after bytes were sent: the caller must abort the connection. */
  | { kind: 'aborted'; sent: number }
  /** Receiving or sending failed, or the signal fired; `sent` bytes went out. */
  | { kind: 'failed'; sent: number; error: unknown };

/**
 * Most bytes that may have been sent before the verdict, given what has arrived: at most
 * `limit` (a size, or a share of the announced size, else of what arrived), and never the
 * last `keep-back` bytes (of the announced size, else of what arrived, which is always safe).
 */
export function trickleCap(p: TrickleConfig, received: number, totalSize: number | null): number {
  const base = totalSize ?? received;
  const limit = p.limit.kind === 'bytes' ? p.limit.value : Math.floor((base * p.limit.value) / 100);
  return Math.max(0, Math.min(received, base - p['keep-back'], limit));
}

/** Sends the body per the trickle parameters and the verdict; see TrickleOutcome. */
export async function trickle(o: TrickleOptions): Promise<TrickleOutcome> {
  const { feed, sink, params } = o;
  const skip = Math.max(0, o.skip ?? 0);
  const stop = o.end === undefined ? Infinity : Math.max(skip, o.end);
  // Before the verdict a wanted range is never sent to its end: a client must not hold a complete,
  // successful 206 of an object that then blocks (the whole body's keep-back covers only its tail).
  const beforeVerdict = stop === Infinity ? Infinity : stop - 1;
  /** Position in the whole body up to which the client holds it: the skipped part plus what was sent. */
  let pos = skip;
  /** Bytes written to the sink. */
  let sent = 0;
  let begun = false;
  let verdict: 'pass' | 'block' | null = null;
  const verdictKnown = o.decision.then(
    (v) => void (verdict = v),
    () => void (verdict = 'block'),
  );
  let aborted = false;
  const onAbort = () => void (aborted = true);
  const abortedP = new Promise<void>((resolve) => {
    if (!o.signal) return;
    if (o.signal.aborted) {
      onAbort();
      resolve();
      return;
    }
    o.signal.addEventListener('abort', () => (onAbort(), resolve()), { once: true });
  });
  /** Sends the body from `pos` up to the whole-body position `to` (clipped to `end`). */
  const send = async (to: number): Promise<void> => {
    const upTo = Math.min(to, stop);
    if (upTo <= pos) return;
    if (!begun) {
      begun = true;
      await sink.begin();
    }
    while (pos < upTo) {
      if (aborted) return;
      const pieces: Buffer[] = [];
      let n = 0;
      do {
        const piece = await feed.read(pos + n, Math.min(upTo - pos - n, PIECE));
        if (piece.length === 0) break;
        pieces.push(piece);
        n += piece.length;
      } while (sink.writeMany && pos + n < upTo && n < BATCH);
      if (n === 0) {
        // Not readable yet (the spool is moving to its file): let that I/O run, then retry. An
        // await on a promise alone would loop in microtasks and starve the very I/O awaited.
        await new Promise((resolve) => setImmediate(resolve));
        continue;
      }
      // Count before writing: a block verdict during this write must abort, not page.
      pos += n;
      sent += n;
      if (pieces.length > 1 && sink.writeMany) await sink.writeMany(pieces);
      else await sink.write(pieces[0] as Buffer);
    }
  };
  /** Whole-body position the client may hold before the verdict (limit and keep-back, see trickleCap). */
  const cap = (p: TrickleConfig) => trickleCap(p, feed.size, feed.complete ? feed.size : o.totalSize);
  const interval = params ? Math.max(1, params.interval) : 0;
  let nextTick = Date.now() + interval;
  try {
    for (;;) {
      if (aborted) return { kind: 'failed', sent, error: new Error('transfer abandoned') };
      if (verdict === 'block') return sent === 0 ? { kind: 'blocked', sent: 0 } : { kind: 'aborted', sent };
      if (feed.failed) return { kind: 'failed', sent, error: feed.error };
      if (verdict === 'pass') {
        if (pos < Math.min(feed.size, stop)) {
          await send(feed.size);
          continue;
        }
        // Done once the body is complete, or once the asked-for range is out.
        if (feed.complete || pos >= stop) {
          if (!begun) {
            begun = true;
            await sink.begin();
          }
          return { kind: 'passed', sent };
        }
        await Promise.race([feed.changed(), abortedP]);
        continue;
      }
      // No verdict yet.
      if (params && o.eager) {
        const upTo = Math.min(cap(params), beforeVerdict);
        if (upTo > pos) {
          await send(upTo);
          continue;
        }
        // A complete body changes no more, nor does one whose wanted part is out: only the verdict
        // (or the client leaving) is awaited.
        await Promise.race(feed.complete || pos >= stop ? [verdictKnown, abortedP] : [verdictKnown, feed.changed(), abortedP]);
        continue;
      }
      if (params && Date.now() >= nextTick) {
        await send(Math.min(cap(params), pos + params.chunk, beforeVerdict));
        nextTick = Math.max(nextTick + interval, Date.now() + 1);
        continue;
      }
      let timer: NodeJS.Timeout | undefined;
      // A complete body needs no watching; a receiving one may still fail.
      const waits: Array<Promise<unknown>> = feed.complete ? [verdictKnown, abortedP] : [verdictKnown, feed.settled, abortedP];
      if (params) waits.push(new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, nextTick - Date.now())))));
      try {
        await Promise.race(waits);
      } finally {
        if (timer) clearTimeout(timer);
      }
    }
  } catch (err) {
    return { kind: 'failed', sent, error: err };
  }
}
