import type { Socket } from 'node:net';
import { connectTls, connectWithTimeout } from '../core/net.js';
import { messageOf } from '../core/errors.js';
import type { RedisTarget } from '../config/redis-url.js';

/**
 * A small client for RESP2, the protocol Redis speaks (redis.io/docs/latest/develop/reference/protocol-spec):
 * a command is an array of bulk strings, and replies come back one per command, in order.
 *
 * Written here rather than taken from npm (ioredis, redis) because the shared verdict cache needs
 * every bound to be its own: no offline queue that grows while Redis is away (commands are refused
 * unless connected), no reply larger than the caller's limit held in memory (the parser drops the
 * connection first), no hidden reconnect or retry (the caller decides when), and only the five
 * commands it sends (AUTH, SELECT, PING, GETRANGE, SET) whose replies are never arrays.
 */
export class RespError extends Error {}

/** A reply: simple string, integer, bulk string (null: nil), or the server's error. */
export type RespReply = string | number | Buffer | null | RespError;

type Callback = (reply: RespReply) => void;

/** A line (`+OK`, `-ERR …`, `$n`) longer than this is a protocol violation. */
const MAX_LINE = 4096;
const CRLF = Buffer.from('\r\n');

export class RespConnection {
  /** Callbacks of the commands sent, oldest first (a ring would save little: the queue is bounded by the caller). */
  private waiting: Callback[] = [];
  private head = 0;
  private buffered: Buffer | null = null;
  private corked = false;
  private closedReason: string | null = null;
  private readonly closeListeners: Array<(reason: string) => void> = [];

  /** `maxBulk`: the longest bulk reply accepted; a longer one closes the connection. */
  constructor(
    private readonly socket: Socket,
    private readonly maxBulk: number,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => this.fail(err.code ?? messageOf(err)));
    socket.on('close', () => this.fail('connection closed'));
    socket.on('end', () => this.fail('connection closed by the server'));
  }

  /** Commands sent and not yet answered. */
  get inFlight(): number {
    return this.waiting.length - this.head;
  }

  get closed(): boolean {
    return this.closedReason !== null;
  }

  /** Told once, with the reason, when the connection ends for any cause. */
  onClose(listener: (reason: string) => void): void {
    if (this.closedReason !== null) listener(this.closedReason);
    else this.closeListeners.push(listener);
  }

  /**
   * Sends a command; `cb` gets its reply, or a RespError when the connection ends first. Commands
   * sent in one turn of the event loop leave in one write (pipelining).
   */
  send(args: readonly string[], cb: Callback): void {
    if (this.closedReason !== null) {
      cb(new RespError(this.closedReason));
      return;
    }
    this.waiting.push(cb);
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(encodeCommand(args));
  }

  /** Resolves with the reply (a RespError too). */
  call(args: readonly string[]): Promise<RespReply> {
    return new Promise((resolve) => this.send(args, resolve));
  }

  /** Ends the connection after what was written (pending replies are still delivered until it closes). */
  end(): void {
    if (this.closedReason === null) this.socket.end();
  }

  destroy(reason: string): void {
    this.fail(reason);
  }

  private fail(reason: string): void {
    if (this.closedReason !== null) return;
    this.closedReason = reason;
    this.socket.destroy();
    this.buffered = null;
    const waiting = this.waiting.slice(this.head);
    this.waiting = [];
    this.head = 0;
    const err = new RespError(reason);
    for (const cb of waiting) cb(err);
    for (const l of this.closeListeners.splice(0)) l(reason);
  }

  private onData(chunk: Buffer): void {
    if (this.closedReason !== null) return;
    let buf = this.buffered ? Buffer.concat([this.buffered, chunk]) : chunk;
    let off = 0;
    while (off < buf.length) {
      const r = parseReply(buf, off, this.maxBulk);
      if (r === null) break;
      if ('violation' in r) {
        this.fail(`protocol error: ${r.violation}`);
        return;
      }
      off = r.next;
      const cb = this.waiting[this.head];
      if (cb === undefined) {
        this.fail('protocol error: a reply nobody asked for');
        return;
      }
      this.waiting[this.head++] = noop;
      if (this.head > 1024 && this.head * 2 > this.waiting.length) {
        this.waiting = this.waiting.slice(this.head);
        this.head = 0;
      }
      cb(r.value);
      if (this.closedReason !== null) return; // the callback closed it
    }
    buf = off === 0 ? buf : buf.subarray(off);
    this.buffered = buf.length > 0 ? buf : null;
  }
}

const noop: Callback = () => undefined;

export function encodeCommand(args: readonly string[]): Buffer {
  let head = `*${args.length}\r\n`;
  const parts: Buffer[] = [];
  for (const a of args) {
    const b = Buffer.from(a, 'utf8');
    parts.push(Buffer.from(`${head}$${b.length}\r\n`, 'latin1'), b);
    head = '\r\n';
  }
  parts.push(CRLF);
  return Buffer.concat(parts);
}

/**
 * One reply at `off`: null when incomplete, else the value and where the next begins. Arrays and
 * RESP3 types are violations (never asked for); so is a bulk longer than maxBulk, refused before
 * its bytes are held.
 */
export function parseReply(buf: Buffer, off: number, maxBulk: number): { value: RespReply; next: number } | { violation: string } | null {
  const end = buf.indexOf(CRLF, off + 1);
  if (end === -1) return buf.length - off > MAX_LINE ? { violation: 'line too long' } : null;
  if (end - off > MAX_LINE) return { violation: 'line too long' };
  const type = buf[off];
  const line = buf.toString('latin1', off + 1, end);
  switch (type) {
    case 0x2b: // +
      return { value: line, next: end + 2 };
    case 0x2d: // -
      return { value: new RespError(line), next: end + 2 };
    case 0x3a: {
      // :
      if (!/^-?\d{1,19}$/.test(line)) return { violation: 'bad integer' };
      return { value: Number(line), next: end + 2 };
    }
    case 0x24: {
      // $
      if (line === '-1') return { value: null, next: end + 2 };
      if (!/^\d{1,12}$/.test(line)) return { violation: 'bad bulk length' };
      const n = Number(line);
      if (n > maxBulk) return { violation: `bulk reply of ${n} bytes (at most ${maxBulk})` };
      const start = end + 2;
      if (buf.length < start + n + 2) return null;
      if (buf[start + n] !== 0x0d || buf[start + n + 1] !== 0x0a) return { violation: 'bulk reply not ended by CRLF' };
      return { value: Buffer.from(buf.subarray(start, start + n)), next: start + n + 2 };
    }
    default:
      return { violation: `unexpected reply type 0x${(type ?? 0).toString(16)}` };
  }
}

/**
 * Connects (TCP, TLS or a unix socket), then AUTH, SELECT and PING pipelined; resolves once PING
 * is answered, all within `timeoutMs`. Rejects with the reason (ECONNREFUSED, the server's
 * WRONGPASS / NOAUTH / LOADING line, a timeout); the socket is closed then.
 */
export async function openResp(
  target: RedisTarget,
  options: { timeoutMs: number; maxBulk: number; tlsCa: Buffer | null },
): Promise<{ conn: RespConnection; pingMs: number }> {
  const deadline = performance.now() + options.timeoutMs;
  const left = () => Math.max(1, deadline - performance.now());
  const address = target.address;
  let socket: Socket;
  if ('path' in address) {
    socket = await connectWithTimeout({ path: address.path }, { timeoutMs: options.timeoutMs, label: address.path });
  } else if (target.tls) {
    socket = await connectTls({ host: address.host, port: address.port }, { verify: true, ca: options.tlsCa }, options.timeoutMs);
  } else {
    socket = await connectWithTimeout(address, { timeoutMs: options.timeoutMs, label: `${address.host}:${address.port}` });
  }
  const conn = new RespConnection(socket, options.maxBulk);
  let timer: NodeJS.Timeout | undefined;
  try {
    const steps: Array<[string, Promise<RespReply>]> = [];
    if (target.password !== null) {
      steps.push(['AUTH', conn.call(target.username === null ? ['AUTH', target.password] : ['AUTH', target.username, target.password])]);
    }
    if (target.db !== 0) steps.push(['SELECT', conn.call(['SELECT', String(target.db)])]);
    const pingSent = performance.now();
    steps.push(['PING', conn.call(['PING'])]);
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${options.timeoutMs} ms`)), left());
    });
    const replies = await Promise.race([Promise.all(steps.map(([, p]) => p)), timeout]);
    const pingMs = performance.now() - pingSent;
    replies.forEach((r, i) => {
      if (r instanceof RespError) throw new Error(`${steps[i]?.[0]}: ${r.message}`);
    });
    if (replies[replies.length - 1] !== 'PONG') throw new Error('PING: not answered PONG');
    return { conn, pingMs };
  } catch (err) {
    conn.destroy(messageOf(err));
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
