import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { ContentHasher } from '../../core/content-hash.js';
import { AvgateError, errorCodeOf, messageOf, type ErrorCode } from '../../core/errors.js';
import { raceAbort } from '../../core/abort.js';
import { connectWithTimeout } from '../../core/net.js';
import { parseDuration, parseSize } from '../../core/units.js';
import type { VerdictResult } from '../../core/verdict.js';
import type { Engine, EngineInfo, EngineOption, EngineScanResult, ScanMeta } from '../types.js';
import {
  buildOptionsRequest,
  buildRespmodHead,
  chunkPrefix,
  CRLF,
  formatIcapUrl,
  headDecides,
  headerValue,
  httpStatusOf,
  isModified,
  LAST_CHUNK,
  LAST_CHUNK_IEOF,
  MAX_PREVIEW_BYTES,
  parseEncapsulated,
  parseIcapUrl,
  parseOptionsHead,
  respmodVerdict,
  ResponseParser,
  transferMode,
  unquote,
  wantsClose,
  type IcapResponseHead,
  type IcapServiceOptions,
  type IcapUrl,
  type ResponseEvent,
} from './protocol.js';

export interface IcapSettings {
  url: IcapUrl | null;
  connectTimeoutMs: number;
  socketTimeoutMs: number;
  /** 'server': what OPTIONS offers; null: never preview; a number: that many bytes. */
  preview: number | null | 'server';
  allow204: boolean;
}

export const ICAP_DEFAULTS: IcapSettings = {
  url: null,
  connectTimeoutMs: 5000,
  socketTimeoutMs: 60_000,
  preview: 'server',
  allow204: true,
};

/** Object bytes per chunk: pieces from the source larger than this are split, so an early answer is seen between chunks. */
const MAX_CHUNK_BYTES = 256 * 1024;

function parseBool(name: string, value: string): boolean {
  if (/^(yes|true|on|1)$/i.test(value)) return true;
  if (/^(no|false|off|0)$/i.test(value)) return false;
  throw new AvgateError('AVG_ERR_CONFIG', `icap option ${name}: expected yes or no, got "${value}"`);
}

function positiveDuration(name: string, value: string): number {
  const ms = parseDuration(value);
  if (ms === null || ms <= 0) throw new AvgateError('AVG_ERR_CONFIG', `icap option ${name}: invalid duration "${value}"`);
  return ms;
}

/** Reads the options; throws AvgateError('AVG_ERR_CONFIG') on a bad value or a missing url. */
export function parseIcapOptions(options: readonly EngineOption[]): IcapSettings & { url: IcapUrl } {
  const s: IcapSettings = { ...ICAP_DEFAULTS };
  for (const { name, value } of options) {
    switch (name) {
      case 'url': {
        const url = parseIcapUrl(value);
        if (!url) throw new AvgateError('AVG_ERR_CONFIG', `icap option url: expected icap://host[:port]/service, got "${value}"`);
        s.url = url;
        break;
      }
      case 'connect-timeout':
        s.connectTimeoutMs = positiveDuration(name, value);
        break;
      case 'socket-timeout':
        s.socketTimeoutMs = positiveDuration(name, value);
        break;
      case 'preview': {
        if (/^(server|auto)$/i.test(value)) {
          s.preview = 'server';
          break;
        }
        if (/^(no|off|none|false)$/i.test(value)) {
          s.preview = null;
          break;
        }
        const n = parseSize(value);
        if (n === null || n > MAX_PREVIEW_BYTES) {
          throw new AvgateError('AVG_ERR_CONFIG', `icap option preview: expected off, server or a size up to 1MiB, got "${value}"`);
        }
        s.preview = n;
        break;
      }
      case 'allow-204':
        s.allow204 = parseBool(name, value);
        break;
      default:
      // unknown options are ignored (plugin API contract)
    }
  }
  if (!s.url) throw new AvgateError('AVG_ERR_CONFIG', 'icap: option "url" is required (icap://host[:port]/service)');
  return s as IcapSettings & { url: IcapUrl };
}

/** A reply that is not ICAP at all: becomes an `unknown` verdict with the raw first line. */
class UnknownReply extends Error {
  constructor(readonly raw: string) {
    super(`not an ICAP reply: ${raw}`);
  }
}

/** Wakes whoever waits for "something changed" (a head arrived, the connection died ...). */
class Notifier {
  private waiters = new Set<() => void>();
  wait(): Promise<void> {
    return this.waitCancellable().promise;
  }
  /** A wait that can be withdrawn, for races that another event may win (nothing piles up). */
  waitCancellable(): { promise: Promise<void>; cancel: () => void } {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.waiters.add(resolve);
    return { promise, cancel: () => this.waiters.delete(resolve) };
  }
  fire(): void {
    const w = [...this.waiters];
    this.waiters.clear();
    for (const f of w) f();
  }
}

let connectionIds = 0;

/**
 * One persistent connection to an ICAP server (RFC 3507 4.3.3: persistent by default). One request
 * is in flight at a time. The socket timeout runs only while a request is in flight and only while
 * we wait on the server, not on our own source. Any protocol trouble kills the connection: once
 * framing is in doubt, the next response could be taken for the wrong request.
 */
export class IcapConnection {
  readonly id = ++connectionIds;
  /** Requests (OPTIONS and RESPMOD) answered completely on this connection. */
  completed = 0;
  private readonly parser = new ResponseParser();
  private queue: ResponseEvent[] = [];
  private readonly changed = new Notifier();
  private deadReason: { code: ErrorCode; message: string } | null = null;
  private active = false;
  private timeoutMs = 0;
  /**
   * Inactivity timer: refreshed by received data and by writes the kernel took. Not the socket's
   * own setTimeout, which lets a write stuck on a full send buffer run for twice the limit.
   */
  private timer: NodeJS.Timeout | null = null;
  private timerPaused = false;
  private unlistenAbort: (() => void) | null = null;

  private constructor(
    private readonly socket: Socket,
    readonly url: IcapUrl,
  ) {
    const label = formatIcapUrl(url);
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (err: NodeJS.ErrnoException) => this.kill('AVG_ERR_ENGINE_RESET', `${label}: ${err.code ?? err.message}`));
    socket.on('end', () => this.kill('AVG_ERR_ENGINE_RESET', `${label}: server closed the connection`));
    socket.on('close', () => this.kill('AVG_ERR_ENGINE_RESET', `${label}: connection closed`));
  }

  static open(url: IcapUrl, options: { connectTimeoutMs: number; signal?: AbortSignal }): Promise<IcapConnection> {
    const label = formatIcapUrl(url);
    return connectWithTimeout(
      { host: url.host, port: url.port },
      { timeoutMs: options.connectTimeoutMs, label, ...(options.signal ? { signal: options.signal } : {}) },
    ).then((s) => new IcapConnection(s, url));
  }

  get alive(): boolean {
    return this.deadReason === null;
  }

  get death(): { code: ErrorCode; message: string } | null {
    return this.deadReason;
  }

  get localPort(): number | undefined {
    return this.socket.localPort;
  }

  /** Starts a request: arms the socket timeout and the caller's abort signal. */
  begin(timeoutMs: number, signal?: AbortSignal): void {
    this.active = true;
    this.timeoutMs = timeoutMs;
    this.timerPaused = false;
    this.touch();
    if (signal) {
      const onAbort = () => this.kill('AVG_ERR_ENGINE_TIMEOUT', 'scan timeout');
      signal.addEventListener('abort', onAbort, { once: true });
      this.unlistenAbort = () => signal.removeEventListener('abort', onAbort);
      if (signal.aborted) onAbort();
    }
  }

  /** Ends a request. Anything received beyond the response puts the connection out of step. */
  finish(): void {
    this.active = false;
    this.stopTimer();
    this.unlistenAbort?.();
    this.unlistenAbort = null;
    if (this.alive && (this.queue.length > 0 || !this.parser.idle)) {
      this.kill('AVG_ERR_ENGINE_PROTOCOL', `${formatIcapUrl(this.url)}: data beyond the end of the response`);
    }
  }

  /** Waiting on our own source is not the server's inactivity: the timer pauses meanwhile. */
  pauseTimeout(): void {
    this.timerPaused = true;
    this.stopTimer();
  }

  resumeTimeout(): void {
    this.timerPaused = false;
    this.touch();
  }

  /** Progress on the socket: restart the inactivity timer (if a request is in flight). */
  private touch(): void {
    if (!this.active || this.timerPaused || !this.alive) return;
    if (this.timer) {
      this.timer.refresh();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      this.kill('AVG_ERR_ENGINE_TIMEOUT', `${formatIcapUrl(this.url)}: no traffic for ${this.timeoutMs} ms (socket-timeout)`);
    }, this.timeoutMs);
  }

  private stopTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Writes if the connection is alive; returns false when the caller should wait for drain. */
  write(...parts: Buffer[]): boolean {
    if (!this.alive) return true;
    let ok = true;
    this.socket.cork();
    parts.forEach((p, i) => {
      ok = i === parts.length - 1 ? this.socket.write(p, () => this.touch()) : this.socket.write(p);
    });
    this.socket.uncork();
    return ok;
  }

  /** Resolves on drain or when the connection dies (a dead socket never drains). */
  drained(): Promise<void> {
    if (!this.alive || !this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }

  /** Next response event; rejects with the reason once the connection is dead and nothing is left. */
  async nextEvent(): Promise<ResponseEvent> {
    for (;;) {
      const ev = this.queue.shift();
      if (ev) return ev;
      const d = this.deadReason;
      if (d) throw new AvgateError(d.code, d.message);
      await this.changed.wait();
    }
  }

  kill(code: ErrorCode, message: string): void {
    this.deadReason ??= { code, message };
    this.stopTimer();
    if (!this.socket.destroyed) this.socket.destroy();
    this.changed.fire();
  }

  close(): void {
    this.deadReason ??= { code: 'AVG_ERR_ENGINE_RESET', message: 'closed' };
    this.stopTimer();
    this.socket.destroy();
    this.changed.fire();
  }

  private onData(data: Buffer): void {
    if (!this.alive) return;
    if (!this.active) {
      this.kill('AVG_ERR_ENGINE_PROTOCOL', `${formatIcapUrl(this.url)}: data from the server with no request pending`);
      return;
    }
    this.touch();
    const events = this.parser.push(data);
    if (events.length === 0) return;
    for (const ev of events) this.queue.push(ev);
    this.changed.fire();
  }
}

export interface IcapContext {
  conn: IcapConnection;
}

/** What the receiving side learnt about one RESPMOD response. */
interface Received {
  /** Fired by the receiver after every change below, so the sender re-checks them. */
  changed: Notifier;
  final: IcapResponseHead | null;
  /** The final response was read to its end. */
  complete: boolean;
  continued: boolean;
  httpStatus?: number | null;
  /** Digest and length of the res-body, when the response had a body entity. */
  body?: { digest: string; bytes: number };
  badStatus?: string;
  protocolError?: string;
  failure?: { code: ErrorCode; message: string };
}

/**
 * An ICAP RESPMOD client for any ICAP antivirus service. The object goes out as the body of a
 * synthetic `HTTP/1.1 200 OK` response; the verdict comes from the ICAP status and the threat
 * headers (see respmodVerdict). OPTIONS is cached for its Options-TTL and gives the preview size,
 * the Transfer-* lists and the ISTag, which serves as the signature version.
 */
export class IcapEngine implements Engine<IcapContext> {
  private settings: IcapSettings = { ...ICAP_DEFAULTS };
  private configError: AvgateError | null = null;
  private cachedOptions: { value: IcapServiceOptions; expiresAt: number } | null = null;
  private optionsInflight: Promise<IcapServiceOptions> | null = null;

  configure(options: readonly EngineOption[]): void {
    // Errors surface from init(), where the caller expects configuration problems.
    try {
      this.settings = parseIcapOptions(options);
      this.configError = null;
    } catch (err) {
      this.settings = { ...ICAP_DEFAULTS };
      this.configError = err instanceof AvgateError ? err : new AvgateError('AVG_ERR_CONFIG', messageOf(err));
    }
    this.cachedOptions = null;
  }

  info(): EngineInfo {
    return {
      name: 'icap',
      description: `ICAP RESPMOD client for ${this.settings.url ? formatIcapUrl(this.settings.url) : '(no url)'}`,
    };
  }

  async init(): Promise<void> {
    if (this.configError) throw this.configError;
    if (!this.settings.url) throw new AvgateError('AVG_ERR_CONFIG', 'icap: option "url" is required (icap://host[:port]/service)');
  }

  async close(): Promise<void> {
    this.cachedOptions = null;
  }

  async openContext(signal?: AbortSignal): Promise<IcapContext> {
    const url = this.requireUrl();
    const conn = await IcapConnection.open(url, { connectTimeoutMs: this.settings.connectTimeoutMs, ...(signal ? { signal } : {}) });
    return { conn };
  }

  async closeContext(ctx: IcapContext): Promise<void> {
    ctx.conn.close();
  }

  contextUsable(ctx: IcapContext): boolean {
    return ctx.conn.alive;
  }

  async signatureVersion(signal?: AbortSignal): Promise<string | null> {
    try {
      const opts = await raceAbort(this.serviceOptions(), signal);
      return opts.istag;
    } catch {
      return null; // server unreachable: no version, so nothing is cached or taken from the cache
    }
  }

  /** The ISTag of the OPTIONS answer held now; null once a RESPMOD answer showed a new one. */
  knownVersion(): string | null {
    return this.currentOptions()?.istag ?? null;
  }

  /** The cached OPTIONS answer, if still within its Options-TTL (for tests and the dashboard). */
  currentOptions(): IcapServiceOptions | null {
    return this.cachedOptions && Date.now() < this.cachedOptions.expiresAt ? this.cachedOptions.value : null;
  }

  async scan(ctx: IcapContext, stream: Readable, meta: ScanMeta): Promise<EngineScanResult> {
    const conn = ctx.conn;
    if (meta.signal.aborted) {
      conn.kill('AVG_ERR_ENGINE_TIMEOUT', 'scan timeout');
      return { verdict: { status: 'error', code: 'AVG_ERR_ENGINE_TIMEOUT', cause: 'scan timeout' }, bytes: 0 };
    }
    const dead = conn.death;
    if (dead) return { verdict: { status: 'error', code: dead.code, cause: dead.message }, bytes: 0 };

    let opts: IcapServiceOptions;
    try {
      opts = await raceAbort(this.serviceOptions(), meta.signal);
    } catch (err) {
      if (meta.signal.aborted) return { verdict: { status: 'error', code: 'AVG_ERR_ENGINE_TIMEOUT', cause: 'scan timeout' }, bytes: 0 };
      if (err instanceof UnknownReply) return { verdict: { status: 'unknown', raw: err.raw }, bytes: 0 };
      return { verdict: { status: 'error', code: errorCodeOf(err), cause: messageOf(err) }, bytes: 0 };
    }
    if (opts.methods.length > 0 && !opts.methods.includes('RESPMOD')) {
      return {
        verdict: {
          status: 'error',
          code: 'AVG_ERR_ENGINE_FAILED',
          cause: `${formatIcapUrl(conn.url)} does not offer RESPMOD (Methods: ${opts.methods.join(', ')})`,
        },
        bytes: 0,
      };
    }
    const mode = transferMode(opts, meta.name);
    if (mode === 'ignore') {
      stream.destroy();
      return { verdict: { status: 'skipped', reason: 'ICAP server does not want this file type (Transfer-Ignore)' }, bytes: 0 };
    }
    let preview = this.settings.preview === 'server' ? opts.preview : this.settings.preview;
    if (mode === 'complete') preview = null;
    if (preview !== null) preview = Math.min(preview, MAX_PREVIEW_BYTES);

    return this.respmod(conn, stream, meta, preview, opts);
  }

  private requireUrl(): IcapUrl {
    if (this.configError) throw this.configError;
    const url = this.settings.url;
    if (!url) throw new AvgateError('AVG_ERR_CONFIG', 'icap: option "url" is required (icap://host[:port]/service)');
    return url;
  }

  /**
   * OPTIONS, cached for its Options-TTL and fetched over a short-lived connection of its own: one
   * fetch serves every context waiting for it, and a server that closes after each response
   * (`Connection: close`) cannot take a scan's connection down with it. Bounded by connect-timeout
   * and socket-timeout; callers wait for it only as long as their own signal allows.
   */
  private serviceOptions(): Promise<IcapServiceOptions> {
    const cached = this.currentOptions();
    if (cached) return Promise.resolve(cached);
    this.optionsInflight ??= (async () => {
      const url = this.requireUrl();
      const temp = await IcapConnection.open(url, { connectTimeoutMs: this.settings.connectTimeoutMs });
      try {
        return this.storeOptions(await this.optionsExchange(temp));
      } finally {
        temp.close();
      }
    })().finally(() => {
      this.optionsInflight = null;
    });
    return this.optionsInflight;
  }

  private storeOptions(value: IcapServiceOptions): IcapServiceOptions {
    this.cachedOptions = { value, expiresAt: Date.now() + value.ttlSeconds * 1000 };
    return value;
  }

  private async optionsExchange(conn: IcapConnection): Promise<IcapServiceOptions> {
    const label = formatIcapUrl(conn.url);
    const limitMs = this.settings.socketTimeoutMs;
    conn.begin(limitMs);
    // socket-timeout only counts silence: a server trickling 100 Continues or an endless body
    // would keep the (shared) OPTIONS fetch, and every scan waiting for it, going forever.
    // The whole exchange gets socket-timeout at most; an OPTIONS answer is a few hundred bytes.
    const deadline = setTimeout(() => conn.kill('AVG_ERR_ENGINE_TIMEOUT', `${label}: OPTIONS not answered within ${limitMs} ms`), limitMs);
    let head: IcapResponseHead;
    try {
      conn.write(buildOptionsRequest(conn.url));
      head = await readFinalResponse(conn, label);
    } finally {
      clearTimeout(deadline);
      conn.finish();
    }
    conn.completed++;
    if (wantsClose(head)) conn.close();
    if (head.status !== 200) throw new AvgateError('AVG_ERR_ENGINE_FAILED', `${label}: OPTIONS answered ${head.statusLine}`);
    return parseOptionsHead(head);
  }

  private async respmod(
    conn: IcapConnection,
    stream: Readable,
    meta: ScanMeta,
    preview: number | null,
    opts: IcapServiceOptions,
  ): Promise<EngineScanResult> {
    const label = formatIcapUrl(conn.url);
    const sentHash = new ContentHasher();
    let sentBytes = 0;
    const rx: Received = { changed: new Notifier(), final: null, complete: false, continued: false };
    const progress = { whole: false };
    let sourceError: unknown = null;

    conn.begin(this.settings.socketTimeoutMs, meta.signal);
    const receiving = this.receive(conn, rx);
    let sendOutcome: 'complete' | 'stopped' = 'stopped';
    try {
      sendOutcome = await this.send(conn, stream, rx, {
        head: buildRespmodHead({
          url: conn.url,
          preview,
          allow204: this.settings.allow204,
          ...(meta.size !== undefined ? { size: meta.size } : {}),
        }),
        preview,
        progress,
        onObjectBytes: (b) => {
          sentHash.update(b);
          sentBytes += b.length;
        },
      });
    } catch (err) {
      sourceError = err;
      conn.kill('AVG_ERR_SOURCE', `reading the object failed: ${messageOf(err)}`);
    }
    if (sendOutcome === 'stopped' && conn.alive) {
      // We stopped mid-body: the server still expects chunks, the connection is out of step.
      // When the head already decided, do not wait for a body the server may never finish.
      if (rx.final && headDecides(rx.final) && !rx.complete) conn.kill('AVG_ERR_ENGINE_PROTOCOL', `${label}: request body cut short`);
    }
    await receiving;
    conn.finish();
    if (sendOutcome === 'stopped') conn.kill('AVG_ERR_ENGINE_PROTOCOL', `${label}: request body cut short`);
    if (rx.complete) conn.completed++;
    if (rx.final && rx.complete && wantsClose(rx.final)) conn.close();

    const istag = rx.final ? headerValue(rx.final, 'istag') : undefined;
    if (istag !== undefined && opts.istag !== null && unquote(istag) !== opts.istag) {
      this.cachedOptions = null; // the service changed (4.7): fetch OPTIONS (and the ISTag) again
    }

    let verdict: VerdictResult;
    if (meta.signal.aborted) verdict = { status: 'error', code: 'AVG_ERR_ENGINE_TIMEOUT', cause: 'scan timeout' };
    else if (sourceError !== null) {
      verdict = { status: 'error', code: 'AVG_ERR_SOURCE', cause: `reading the object failed: ${messageOf(sourceError)}` };
    } else {
      verdict = verdictOf(rx, { digest: sentHash.digest(), bytes: sentBytes, whole: progress.whole });
      // RFC 3507 4.6: without `Allow: 204` a server must echo the object; a 204 is only allowed
      // as the answer to a preview (before any 100 Continue). Anything else is out of protocol.
      const may204 = this.settings.allow204 || (preview !== null && !rx.continued);
      if (verdict.status === 'free' && rx.final?.status === 204 && !may204) {
        verdict = {
          status: 'error',
          code: 'AVG_ERR_ENGINE_PROTOCOL',
          cause: `${label}: 204 No Content although the request did not allow it (no Allow: 204, not a preview answer)`,
        };
      }
    }
    return { verdict, bytes: sentBytes };
  }

  /**
   * Sends head, preview and body. Returns 'complete' when the request was sent to its last chunk
   * (or the server answered during the preview, after our `0\r\n\r\n`), 'stopped' when we gave up
   * mid-body because the server answered early or the connection died. Throws on a source error.
   */
  private async send(
    conn: IcapConnection,
    stream: Readable,
    rx: Received,
    p: { head: Buffer; preview: number | null; progress: { whole: boolean }; onObjectBytes: (b: Buffer) => void },
  ): Promise<'complete' | 'stopped'> {
    const it = stream[Symbol.asyncIterator]() as AsyncIterator<unknown>;
    let exhausted = false;
    const nextPiece = async (): Promise<Buffer | null> => {
      conn.pauseTimeout();
      try {
        for (;;) {
          const r = await it.next();
          if (r.done) {
            exhausted = true;
            return null;
          }
          const v = r.value;
          const b = Buffer.isBuffer(v)
            ? v
            : typeof v === 'string'
              ? Buffer.from(v)
              : Buffer.from((v as Uint8Array).buffer, (v as Uint8Array).byteOffset, (v as Uint8Array).byteLength);
          if (b.length > 0) return b;
        }
      } finally {
        conn.resumeTimeout();
      }
    };
    /** Stop sending when the head already decided, or the response is complete, or we are dead. */
    const mustStop = () => !conn.alive || rx.complete || (rx.final !== null && headDecides(rx.final));
    const writeObject = async (data: Buffer): Promise<boolean> => {
      for (let off = 0; off < data.length; off += MAX_CHUNK_BYTES) {
        if (mustStop()) return false;
        const part = data.length <= MAX_CHUNK_BYTES ? data : data.subarray(off, off + MAX_CHUNK_BYTES);
        p.onObjectBytes(part);
        if (!conn.write(chunkPrefix(part.length), part, CRLF)) {
          // backpressure: wait for drain, but wake up for an early answer from the server
          let drained = false;
          const drain = conn.drained().then(() => {
            drained = true;
          });
          while (!drained && !mustStop()) {
            const change = rx.changed.waitCancellable();
            await Promise.race([drain, change.promise]);
            change.cancel();
          }
        }
      }
      return !mustStop();
    };

    try {
      conn.write(p.head);
      const leftover: Buffer[] = [];
      if (p.preview !== null) {
        // Read until the preview is full and one byte more is known to exist (or the source ends):
        // only then can we tell whether the preview holds the whole object (`ieof`, 4.5).
        const pieces: Buffer[] = [];
        let total = 0;
        while (total <= p.preview) {
          const piece = await nextPiece();
          if (piece === null) break;
          pieces.push(piece);
          total += piece.length;
        }
        const head: Buffer[] = [];
        let need = p.preview;
        for (const piece of pieces) {
          if (need >= piece.length) {
            head.push(piece);
            need -= piece.length;
          } else {
            if (need > 0) head.push(piece.subarray(0, need));
            leftover.push(piece.subarray(need));
            need = 0;
          }
        }
        const previewData = Buffer.concat(head);
        if (previewData.length > 0) {
          p.onObjectBytes(previewData);
          conn.write(chunkPrefix(previewData.length), previewData, CRLF);
        }
        if (exhausted && leftover.length === 0) {
          conn.write(LAST_CHUNK_IEOF);
          p.progress.whole = true;
          return 'complete';
        }
        conn.write(LAST_CHUNK);
        // 100 Continue → send the rest; a final answer (or a dead connection) → the request is
        // complete as it stands, the server has what it wants.
        while (!rx.continued && rx.final === null && conn.alive) await rx.changed.wait();
        if (!rx.continued || rx.final !== null || !conn.alive) return 'complete';
      }
      for (const piece of leftover) if (!(await writeObject(piece))) return 'stopped';
      for (;;) {
        if (mustStop()) return 'stopped';
        const piece = await nextPiece();
        if (piece === null) break;
        if (!(await writeObject(piece))) return 'stopped';
      }
      if (mustStop()) return 'stopped';
      conn.write(LAST_CHUNK);
      p.progress.whole = true;
      return 'complete';
    } finally {
      // stopped early: release the source, as a for-await break would
      if (!exhausted) it.return?.()?.catch(() => undefined);
    }
  }

  /** Reads the response: interim 100s, the final head, its sections and body (hashed, not kept). */
  private async receive(conn: IcapConnection, rx: Received): Promise<void> {
    let bodyHash: ContentHasher | null = null;
    let bodyBytes = 0;
    try {
      for (;;) {
        const ev = await conn.nextEvent();
        rx.changed.fire();
        switch (ev.type) {
          case 'head': {
            if (ev.head.status === 100) {
              if (rx.final === null) rx.continued = true;
              break;
            }
            rx.final = ev.head;
            const enc = parseEncapsulated(headerValue(ev.head, 'encapsulated') ?? '');
            const bodyEntity = enc?.[enc.length - 1];
            if (bodyEntity && bodyEntity.name !== 'null-body') bodyHash = new ContentHasher();
            break;
          }
          case 'section':
            if (ev.name === 'res-hdr') rx.httpStatus = httpStatusOf(ev.data.toString('latin1'));
            break;
          case 'body':
            bodyHash?.update(ev.data);
            bodyBytes += ev.data.length;
            break;
          case 'end':
            if (rx.final) {
              if (bodyHash) rx.body = { digest: bodyHash.digest(), bytes: bodyBytes };
              rx.complete = true;
              return;
            }
            break;
          case 'error':
            if (ev.kind === 'bad-status') rx.badStatus = ev.raw;
            else rx.protocolError = ev.message;
            conn.kill('AVG_ERR_ENGINE_PROTOCOL', `${formatIcapUrl(conn.url)}: ${ev.message}`);
            return;
        }
      }
    } catch (err) {
      rx.failure = { code: errorCodeOf(err), message: messageOf(err) };
    } finally {
      rx.changed.fire();
    }
  }
}


/** Reads one whole response (skipping interim 100s); its body, if any, is discarded. */
async function readFinalResponse(conn: IcapConnection, label: string): Promise<IcapResponseHead> {
  let head: IcapResponseHead | null = null;
  for (;;) {
    const ev = await conn.nextEvent();
    if (ev.type === 'error') {
      conn.kill('AVG_ERR_ENGINE_PROTOCOL', `${label}: ${ev.message}`);
      if (ev.kind === 'bad-status') throw new UnknownReply(ev.raw);
      throw new AvgateError('AVG_ERR_ENGINE_PROTOCOL', `${label}: ${ev.message}`);
    }
    if (ev.type === 'head' && ev.head.status !== 100) head = ev.head;
    if (ev.type === 'end' && head) return head;
  }
}

/** The verdict from what was received, in order of what is known for sure. */
function verdictOf(rx: Received, sent: { digest: string; bytes: number; whole: boolean }): VerdictResult {
  if (rx.badStatus !== undefined) return { status: 'unknown', raw: rx.badStatus };
  if (rx.final) {
    if (rx.complete) {
      // A 200 that came back before the whole object went out (an answer to a preview that did
      // not hold everything, or mid-body) cannot be an unchanged echo of it: what was sent so far
      // is only a prefix, and echoing a prefix truncates the object.
      if (!sent.whole) return respmodVerdict(rx.final, true);
      const bodySame = rx.body ? rx.body.bytes === sent.bytes && rx.body.digest === sent.digest : undefined;
      return respmodVerdict(rx.final, isModified({ httpStatus: rx.httpStatus, ...(bodySame !== undefined ? { bodySame } : {}) }));
    }
    // The head decided before the body was through (a threat header, 204, an error status).
    if (headDecides(rx.final)) return respmodVerdict(rx.final, false);
  }
  if (rx.protocolError !== undefined) return { status: 'error', code: 'AVG_ERR_ENGINE_PROTOCOL', cause: rx.protocolError };
  if (rx.failure) return { status: 'error', code: rx.failure.code, cause: rx.failure.message };
  return { status: 'error', code: 'AVG_ERR_ENGINE_RESET', cause: 'connection ended before a full response' };
}

export function createIcapEngine(): Engine<IcapContext> {
  return new IcapEngine();
}
