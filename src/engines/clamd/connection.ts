import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { AvgateError, type ErrorCode } from '../../core/errors.js';
import { connectWithTimeout } from '../../core/net.js';
import { chunkHeader, commandBytes, END_OF_STREAM, splitSessionReply, type ClamdAddress, formatAddress } from './protocol.js';

/** Replies longer than this are not clamd talking: refuse to buffer more (a garbage peer). */
const MAX_REPLY_BYTES = 64 * 1024;

interface Pending {
  id: number | null;
  resolve: (reply: string) => void;
  reject: (err: AvgateError) => void;
}

/**
 * One connection to clamd, optionally inside an IDSESSION. One command is in flight at a time
 * (the pool gives each scan its own connection), so the session only saves the connect and the
 * thread hand-off per scan; the reply id is still checked so a stray reply is never taken for ours.
 */
export class ClamdConnection {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private pending: Pending | null = null;
  private nextId = 1;
  private deadReason: { code: ErrorCode; message: string } | null = null;
  /** Set when a reply arrived while we were still sending (size limit): stop sending. */
  private earlyReply = false;

  private constructor(
    private readonly socket: Socket,
    readonly address: ClamdAddress,
    readonly session: boolean,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (err: NodeJS.ErrnoException) =>
      this.kill('AVG_ERR_ENGINE_RESET', `${formatAddress(address)}: ${err.code ?? err.message}`),
    );
    socket.on('close', () => this.kill('AVG_ERR_ENGINE_RESET', `${formatAddress(address)} closed the connection`));
    socket.on('end', () => this.kill('AVG_ERR_ENGINE_RESET', `${formatAddress(address)} closed the connection`));
  }

  static async open(
    address: ClamdAddress,
    options: { connectTimeoutMs: number; session: boolean; signal?: AbortSignal },
  ): Promise<ClamdConnection> {
    const socket = await connectWithTimeout(address.kind === 'unix' ? { path: address.path } : address, {
      timeoutMs: options.connectTimeoutMs,
      label: formatAddress(address),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const conn = new ClamdConnection(socket, address, options.session);
    if (options.session) socket.write(commandBytes('IDSESSION'));
    return conn;
  }

  get alive(): boolean {
    return this.deadReason === null;
  }

  /** Sends a short command (PING, VERSION, RELOAD) and returns its reply. */
  async command(name: string, signal?: AbortSignal): Promise<string> {
    const reply = this.expectReply(signal);
    this.socket.write(commandBytes(name));
    return reply;
  }

  /**
   * INSTREAM: the object (a stream, or the pieces of one held in memory) as length-prefixed
   * chunks, then a zero-length chunk. Honours backpressure (write() false → wait for drain) so a
   * 2 GB object costs a few chunks of memory. If clamd answers before we are done (its
   * StreamMaxLength), we stop sending at once.
   */
  async instream(
    source: Readable | readonly Buffer[],
    options: { chunkSize: number; signal: AbortSignal; maxBytes?: number | null },
  ): Promise<{ reply: string; bytes: number } | { reply: null; bytes: number; overLimit: true }> {
    const reply = this.expectReply(options.signal);
    reply.catch(() => undefined); // observed below; avoid an unhandled rejection while sending
    this.earlyReply = false;
    let bytes = 0;
    const socket = this.socket;
    // Corked until a chunk's worth is queued: a small object goes out as one segment
    // (command, chunk, end of stream) instead of three writes.
    socket.cork();
    socket.write(commandBytes('INSTREAM'));
    const flush = () => {
      while (socket.writableCorked > 0) socket.uncork();
    };
    try {
      for await (const piece of source) {
        const buf: Buffer = typeof piece === 'string' ? Buffer.from(piece) : (piece as Buffer);
        for (let off = 0; off < buf.length; off += options.chunkSize) {
          if (!this.alive || this.earlyReply) break;
          const part = off === 0 && buf.length <= options.chunkSize ? buf : buf.subarray(off, off + options.chunkSize);
          if (options.maxBytes !== undefined && options.maxBytes !== null && bytes + part.length > options.maxBytes) {
            // Past clamd's StreamMaxLength clamd answers and closes while we may still be writing,
            // and the write error can win over its reply; stopping here is deterministic.
            this.kill('AVG_ERR_ENGINE_RESET', 'object larger than the stream-max-length');
            await reply.catch(() => undefined);
            return { reply: null, bytes, overLimit: true };
          }
          // Backpressure is honoured before the next chunk, not after this one: the last chunk's
          // end-of-stream marker goes out with it instead of one drain event later.
          if (socket.writableNeedDrain) {
            await this.drained();
            if (!this.alive || this.earlyReply) break;
            socket.cork();
          }
          socket.write(chunkHeader(part.length));
          socket.write(part);
          bytes += part.length;
          if (socket.writableNeedDrain || socket.writableLength >= options.chunkSize) {
            flush();
            if (!socket.writableNeedDrain) socket.cork();
          }
        }
        if (!this.alive || this.earlyReply) break;
      }
    } catch (err) {
      if (!this.alive || this.earlyReply || options.signal.aborted) {
        // the connection's own failure is what the reply promise reports
      } else {
        this.kill('AVG_ERR_SOURCE', `reading the object failed: ${(err as Error).message}`);
        throw new AvgateError('AVG_ERR_SOURCE', `reading the object failed: ${(err as Error).message}`, { cause: err });
      }
    }
    if (this.earlyReply) {
      // we stopped mid-frame: the session is out of step, never reuse it
      this.kill('AVG_ERR_ENGINE_RESET', 'clamd answered before the end of the stream');
    } else if (this.alive) {
      socket.write(END_OF_STREAM);
    }
    flush();
    return { reply: await reply, bytes };
  }

  close(): void {
    if (this.alive && this.session) {
      try {
        this.socket.end(commandBytes('END'));
      } catch {
        // already closing
      }
    } else {
      this.socket.end();
    }
    this.deadReason ??= { code: 'AVG_ERR_ENGINE_RESET', message: 'closed' };
    this.socket.destroy();
  }

  /** Ends the connection with a reason; a pending command fails with it. */
  kill(code: ErrorCode, message: string): void {
    if (this.deadReason === null) this.deadReason = { code, message };
    const p = this.pending;
    if (p) {
      this.pending = null;
      // A reply received complete but for a connection closing right after is still a reply.
      p.reject(new AvgateError(this.deadReason.code, this.deadReason.message));
    }
    if (!this.socket.destroyed) this.socket.destroy();
  }

  private drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        this.wakeSender = null;
        resolve();
      };
      this.wakeSender = done;
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }

  private wakeSender: (() => void) | null = null;

  private expectReply(signal?: AbortSignal): Promise<string> {
    if (!this.alive) {
      const r = this.deadReason as { code: ErrorCode; message: string };
      return Promise.reject(new AvgateError(r.code, r.message));
    }
    if (this.pending) return Promise.reject(new AvgateError('AVG_ERR_INTERNAL', 'clamd connection already busy'));
    const id = this.session ? this.nextId++ : null;
    return new Promise<string>((resolve, reject) => {
      const onAbort = () => this.kill('AVG_ERR_ENGINE_TIMEOUT', 'scan timeout: clamd did not answer in time');
      signal?.addEventListener('abort', onAbort); // removed by unlisten in every outcome
      const unlisten = () => signal?.removeEventListener('abort', onAbort);
      this.pending = {
        id,
        resolve: (r) => {
          unlisten();
          resolve(r);
        },
        reject: (e) => {
          unlisten();
          reject(e);
        },
      };
      if (signal?.aborted) onAbort();
    });
  }

  private onData(data: Buffer): void {
    let start = 0;
    let nul = data.indexOf(0, start);
    while (nul >= 0) {
      this.buffered.push(data.subarray(start, nul));
      const raw = Buffer.concat(this.buffered).toString('latin1');
      this.buffered = [];
      this.bufferedBytes = 0;
      this.deliver(raw);
      start = nul + 1;
      nul = data.indexOf(0, start);
    }
    if (start < data.length) {
      this.buffered.push(data.subarray(start));
      this.bufferedBytes += data.length - start;
      if (this.bufferedBytes > MAX_REPLY_BYTES) {
        this.kill('AVG_ERR_ENGINE_PROTOCOL', `reply longer than ${MAX_REPLY_BYTES} bytes without a terminator`);
      }
    }
  }

  private deliver(raw: string): void {
    const p = this.pending;
    if (!p) {
      this.kill('AVG_ERR_ENGINE_PROTOCOL', `unexpected reply from clamd: ${raw.slice(0, 200)}`);
      return;
    }
    let reply = raw;
    if (p.id !== null) {
      const split = splitSessionReply(raw);
      if (split.id !== p.id) {
        // Outside the protocol (or a session clamd already ended): hand the raw text up as the
        // reply so the verdict is "unknown" with the text, then drop the connection.
        this.pending = null;
        this.earlyReply = true;
        this.kill('AVG_ERR_ENGINE_PROTOCOL', 'reply id out of step');
        p.resolve(raw);
        this.wakeSender?.();
        return;
      }
      reply = split.reply;
    }
    this.pending = null;
    this.earlyReply = true;
    p.resolve(reply);
    this.wakeSender?.();
  }
}

/** Opens a connection, sends one command, returns the reply and closes: PING, VERSION, RELOAD. */
export async function clamdRequest(
  address: ClamdAddress,
  command: string,
  options: { timeoutMs: number; signal?: AbortSignal },
): Promise<string> {
  const signal = options.signal
    ? AbortSignal.any([options.signal, AbortSignal.timeout(options.timeoutMs)])
    : AbortSignal.timeout(options.timeoutMs);
  const conn = await ClamdConnection.open(address, { connectTimeoutMs: options.timeoutMs, session: false, signal });
  try {
    return await conn.command(command, signal);
  } finally {
    conn.close();
  }
}
