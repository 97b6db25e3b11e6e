import { messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import { openResp, RespError, type RespConnection, type RespReply } from './resp.js';
import type { RedisTarget } from '../config/redis-url.js';
import type { CacheableResult, SharedEntry, SharedLevel, SharedStats } from './verdict-cache.js';

export interface RedisLevelOptions {
  target: RedisTarget;
  /** The URL with its password masked, for log lines. */
  label: string;
  keyPrefix: string;
  /** A look-up not answered within this is a miss (ms). */
  timeoutMs: number;
  /** Connecting, TLS, AUTH, SELECT and PING together (ms). */
  connectTimeoutMs: number;
  /** SETs sent and not yet answered; one more is dropped. */
  maxPendingWrites: number;
  /** Look-ups sent and not yet answered (timed-out ones too, until Redis answers); one more skips Redis. */
  maxPendingLookups: number;
  /** This many look-ups in a row without an answer in time: the connection is dropped, Redis counts as down. */
  downAfterTimeouts: number;
  /** First reconnect delay (ms), doubled per failed attempt up to reconnectMaxDelayMs. */
  reconnectDelayMs: number;
  reconnectMaxDelayMs: number;
  /** Longest value read; a longer one is invalid (bytes). */
  maxValueSize: number;
  /** Entries expire this long after they were written (SET … PX); 0 = never. */
  maxAgeMs: number;
  /** PEM of the CAs trusted for rediss://; null = the system's. */
  tlsCa: Buffer | null;
  log: Logger;
}

/** A found verdict read from Redis may name at most this many signatures, each at most MAX_NAME_LENGTH characters. */
export const MAX_NAMES = 32;
export const MAX_NAME_LENGTH = 256;
/** An entry stamped this far in the future (another node's clock) is still taken; further is invalid. */
const CLOCK_SKEW_MS = 60_000;

/**
 * The shared level of the verdict cache (docs/scale-out.md): Redis, asked after a local miss, so
 * that nodes behind one load balancer scan an object once between them.
 *
 * A cache is an optimisation, so Redis never holds up or decides a scan by failing: a look-up is a
 * miss after `timeoutMs`; while no connection is up (refused, dropped, or `downAfterTimeouts`
 * look-ups in a row unanswered) look-ups miss at once without waiting, and a connection is tried
 * again in the background with a doubling delay. What is in flight is bounded (no offline queue).
 * Values are checked before use: whoever can write to this Redis can make an object pass, and what
 * fails the check is a miss.
 */
export class RedisLevel implements SharedLevel {
  readonly name = 'redis';
  private conn: RespConnection | null = null;
  private connecting = false;
  /** Logged as available (info) and not since logged as unavailable (warn). */
  private available = false;
  /** The warn line went out and no info line since: further failures are logged at debug. */
  private downLogged = false;
  private downSince = 0;
  private failures = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private pendingLookups = 0;
  private pendingWrites = 0;
  private timeoutsInARow = 0;
  /** An error reply (NOPERM, READONLY, OOM …) was logged on this connection: later ones are only counted. */
  private errorLogged = false;
  private closed = false;
  private readonly counters = { hits: 0, misses: 0, invalid: 0, errors: 0, timeouts: 0, skipped: 0, writes: 0, writeErrors: 0, droppedWrites: 0 };
  private readonly setArgs: string[];

  constructor(private readonly options: RedisLevelOptions) {
    this.setArgs = options.maxAgeMs > 0 ? ['PX', String(options.maxAgeMs)] : [];
    this.connect();
  }

  get stats(): SharedStats {
    return { up: this.conn !== null, ...this.counters };
  }

  lookup(key: string): Promise<SharedEntry | null> | null {
    const conn = this.conn;
    if (conn === null || this.pendingLookups >= this.options.maxPendingLookups) {
      this.counters.skipped++;
      return null;
    }
    this.pendingLookups++;
    const sent = performance.now();
    return new Promise((resolve) => {
      let settled = false;
      const timer = setTimeout(() => {
        settled = true;
        this.counters.timeouts++;
        resolve(null);
        if (++this.timeoutsInARow >= this.options.downAfterTimeouts) {
          this.drop(conn, `${this.timeoutsInARow} look-ups in a row not answered within ${this.options.timeoutMs} ms`);
        }
      }, this.options.timeoutMs);
      // GETRANGE, not GET: Redis itself sends at most maxValueSize + 1 bytes of a planted large value.
      conn.send(['GETRANGE', this.options.keyPrefix + key, '0', String(this.options.maxValueSize)], (reply) => {
        this.pendingLookups--;
        if (settled) return; // too late: already a miss
        settled = true;
        clearTimeout(timer);
        if (!(reply instanceof RespError)) this.answeredInTime(performance.now() - sent);
        resolve(this.entryOf(conn, reply));
      });
    });
  }

  store(key: string, result: CacheableResult, at: number): void {
    const conn = this.conn;
    if (conn === null || this.pendingWrites >= this.options.maxPendingWrites) {
      this.counters.droppedWrites++;
      return;
    }
    this.pendingWrites++;
    this.counters.writes++;
    conn.send(['SET', this.options.keyPrefix + key, encodeSharedValue(result, at), ...this.setArgs], (reply) => {
      this.pendingWrites--;
      if (reply instanceof RespError) {
        this.counters.writeErrors++;
        this.errorReply(conn, 'SET', reply);
      }
    });
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const conn = this.conn;
    this.conn = null;
    if (!conn) return;
    // Writes already sent are answered before Redis closes; a Redis that does not close is cut.
    conn.end();
    setTimeout(() => conn.destroy('closed'), this.options.connectTimeoutMs).unref();
  }

  private entryOf(conn: RespConnection, reply: RespReply): SharedEntry | null {
    if (reply instanceof RespError) {
      this.counters.errors++;
      this.errorReply(conn, 'GETRANGE', reply);
      return null;
    }
    // GETRANGE of a missing key is the empty string.
    if (Buffer.isBuffer(reply) && reply.length === 0) {
      this.counters.misses++;
      return null;
    }
    const entry = Buffer.isBuffer(reply) ? decodeSharedValue(reply, this.options.maxValueSize, Date.now()) : null;
    if (entry === null) {
      this.counters.invalid++;
      return null;
    }
    if (this.options.maxAgeMs > 0 && Date.now() - entry.at > this.options.maxAgeMs) {
      this.counters.misses++;
      return null;
    }
    this.counters.hits++;
    return entry;
  }

  /** Redis refusing a command (an ACL without it, a read-only replica, maxmemory without eviction): one warn line per connection. */
  private errorReply(conn: RespConnection, command: string, reply: RespError): void {
    // A lost connection is reported by drop(); only the server's own refusals are logged here.
    if (conn.closed || this.errorLogged) return;
    this.errorLogged = true;
    this.options.log.warn({ url: this.options.label, command, reply: reply.message.slice(0, 200) }, 'shared verdict cache (Redis) refuses a command: counted as a miss or a lost write; further refusals are only counted');
  }

  private answeredInTime(ms: number): void {
    this.timeoutsInARow = 0;
    if (ms <= this.options.timeoutMs) this.markAvailable();
  }

  private connect(): void {
    if (this.closed || this.connecting || this.conn) return;
    this.connecting = true;
    const o = this.options;
    openResp(o.target, { timeoutMs: o.connectTimeoutMs, maxBulk: o.maxValueSize + 1, tlsCa: o.tlsCa }).then(
      ({ conn, pingMs }) => {
        this.connecting = false;
        if (this.closed) {
          conn.destroy('closed');
          return;
        }
        this.conn = conn;
        this.timeoutsInARow = 0;
        this.errorLogged = false;
        conn.onClose((reason) => this.drop(conn, reason));
        // Back only once it answers in time: a Redis that accepts but is slow stays announced down.
        // A slow first PING may be a Redis just resumed with a backlog: one more PING decides.
        if (pingMs <= o.timeoutMs) this.markAvailable();
        else this.probe(conn, pingMs);
      },
      (err: unknown) => {
        this.connecting = false;
        this.markDown(messageOf(err));
        this.scheduleReconnect();
      },
    );
  }

  private probe(conn: RespConnection, firstMs: number): void {
    const sent = performance.now();
    conn.send(['PING'], (reply) => {
      const ms = performance.now() - sent;
      if (reply === 'PONG' && this.conn === conn && ms <= this.options.timeoutMs) this.markAvailable();
      else this.options.log.debug({ url: this.options.label, pingMs: Math.round(firstMs), againMs: Math.round(ms) }, 'shared verdict cache (Redis) connected but slow; look-ups decide');
    });
  }

  /** The connection is not to be used any more: closed, then tried again later. */
  private drop(conn: RespConnection, reason: string): void {
    conn.destroy(reason);
    if (this.conn !== conn) return;
    this.conn = null;
    if (this.closed) return;
    this.markDown(reason);
    this.scheduleReconnect();
  }

  private markDown(reason: string): void {
    this.failures++;
    if (!this.downLogged) {
      this.downLogged = true;
      this.available = false;
      this.downSince = Date.now();
      this.options.log.warn({ url: this.options.label, reason }, 'shared verdict cache (Redis) unavailable: scans go on without it until it is back');
    } else {
      this.options.log.debug({ url: this.options.label, reason, failures: this.failures }, 'shared verdict cache (Redis) still unavailable');
    }
  }

  private markAvailable(): void {
    this.failures = 0;
    if (this.available) return;
    this.available = true;
    if (this.downLogged) {
      this.options.log.info({ url: this.options.label, downMs: Date.now() - this.downSince }, 'shared verdict cache (Redis) available again');
    } else {
      this.options.log.info({ url: this.options.label }, 'shared verdict cache (Redis) connected');
    }
    this.downLogged = false;
  }

  private scheduleReconnect(): void {
    if (this.closed || this.retryTimer) return;
    const o = this.options;
    const base = Math.min(o.reconnectMaxDelayMs, o.reconnectDelayMs * 2 ** Math.min(this.failures - 1, 20));
    // ±20 %: nodes that lost the same Redis do not all come back in the same millisecond.
    const delay = Math.min(o.reconnectMaxDelayMs, Math.max(1, Math.round(base * (0.8 + Math.random() * 0.4))));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
    this.retryTimer.unref();
  }
}

/** `config check`: connects as the level would (AUTH, SELECT), PINGs and closes; resolves with PING's round trip (ms). */
export async function probeRedis(o: Pick<RedisLevelOptions, 'target' | 'connectTimeoutMs' | 'maxValueSize' | 'tlsCa'>): Promise<number> {
  const { conn, pingMs } = await openResp(o.target, { timeoutMs: o.connectTimeoutMs, maxBulk: o.maxValueSize + 1, tlsCa: o.tlsCa });
  conn.destroy('probe done');
  return pingMs;
}

/** The stored form: `{"status":"found","names":[…],"at":<ms since 1970>}` or `{"status":"free","at":…}`. */
export function encodeSharedValue(result: CacheableResult, at: number): string {
  const stamp = Math.round(at);
  return JSON.stringify(result.status === 'found' ? { status: 'found', names: result.names, at: stamp } : { status: 'free', at: stamp });
}

/**
 * A value read from Redis, or null when it is not exactly what encodeSharedValue writes: only
 * status free or found, found with an array of at most MAX_NAMES names of 1 to MAX_NAME_LENGTH
 * characters without control characters (they reach logs, mail headers and block pages), a time
 * not in the future, nothing else, at most maxBytes.
 */
export function decodeSharedValue(raw: Buffer, maxBytes: number, now: number): SharedEntry | null {
  if (raw.length === 0 || raw.length > maxBytes) return null;
  let v: unknown;
  try {
    v = JSON.parse(raw.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  const at = o.at;
  if (typeof at !== 'number' || !Number.isFinite(at) || at <= 0 || at > now + CLOCK_SKEW_MS) return null;
  const keys = Object.keys(o).length;
  if (o.status === 'free' && keys === 2) return { result: { status: 'free' }, at: Math.min(at, now) };
  if (o.status !== 'found' || keys !== 3 || !Array.isArray(o.names) || o.names.length > MAX_NAMES) return null;
  const names: string[] = [];
  for (const n of o.names) {
    if (typeof n !== 'string' || n.length === 0 || n.length > MAX_NAME_LENGTH || CONTROL.test(n)) return null;
    names.push(n);
  }
  return { result: { status: 'found', names }, at: Math.min(at, now) };
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
