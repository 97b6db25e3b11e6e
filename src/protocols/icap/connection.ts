import type { Socket } from 'node:net';
import { PassThrough, type Readable } from 'node:stream';
import { messageOf } from '../../core/errors.js';
import { codingPlan, contentCodings, decodedStream } from '../../formats/content-coding.js';
import type { Logger } from '../../core/logging.js';
import { cutConnection, type SendStallWatch } from '../../core/send-stall.js';
import { SHARED_SLABS, Spool } from '../../core/spool.js';
import { drainedOrClosed } from '../../core/streams.js';
import { skippedVerdict, verdictLabel, type Verdict } from '../../core/verdict.js';
import type { Decision } from '../../policy/verdict-policy.js';
import { BodyTimeout, LimitExceeded, ReadTimeout, UnexpectedEof, ByteReader } from './reader.js';
import { infectionHeaders, type IcapService } from './service.js';
import {
  chunk,
  formatResponseHead,
  headerSafe,
  IcapProtocolError,
  LAST_CHUNK,
  parseChunkSizeLine,
  parseHttpHead,
  parseRequestHead,
  type EncapsulatedName,
  type HttpHead,
  type IcapRequestHead,
} from './wire.js';

export interface IcapLimits {
  idleTimeoutMs: number;
  readTimeoutMs: number;
  /** The whole request head (ICAP head and encapsulated HTTP headers), from its first byte. */
  headerTimeoutMs: number;
  /**
   * The time a body may keep avgate waiting for it (0 = no bound), extended by 1 s for every
   * `bodyMinRate` bytes received (0 = not extended).
   */
  bodyTimeoutMs: number;
  bodyMinRate: number;
  /** icap.send-timeout (for the log; the watch is the context's `sends`). */
  sendTimeoutMs: number;
  maxHeaderSize: number;
  maxRequestLine: number;
  spoolMemory: number;
  spoolDir: string;
}

export interface AccessRecord {
  client: string;
  service: string;
  method: string;
  status: number;
  verdict: string;
  bytes: number;
  ms: number;
  /** The HTTP URL the request is about (REQMOD/RESPMOD, once its headers were read). */
  url?: string;
  /** What the ICAP client says of its own client: X-Client-IP, X-Authenticated-User (Squid's adaptation_send_client_ip, adaptation_send_username). */
  httpClient?: string;
  user?: string;
}

/** What a connection needs from its server. */
export interface ConnectionContext {
  limits: IcapLimits;
  serviceFor(name: string): IcapService | undefined;
  options(service: IcapService): Promise<Array<[string, string]>>;
  serverHeader: string;
  log: Logger;
  access(record: AccessRecord): void;
  onVerdict(service: IcapService, v: Verdict): void;
  /** Keeps a blocked object (service option `quarantine`); resolves to the item id, null when not kept. */
  /** `who`: the HTTP client and user the ICAP client named (X-Client-IP, X-Authenticated-User). */
  quarantine(service: IcapService, v: Verdict, spool: Spool, url: string, head: HttpHead | null, who?: Pick<AccessRecord, 'httpClient' | 'user'>): Promise<string | null>;
  /** icap.send-timeout: every connection is watched for a client that stops taking its answer. */
  sends: SendStallWatch;
  /** Counts a connection cut by the send timeout. */
  onSendStall(): void;
}

/** Chunk-size lines longer than this are not chunk sizes (16 hex digits plus extensions). */
const MAX_CHUNK_LINE = 4096;
/** Body bytes read from the socket at a time. */
/** How long the engines get to answer PING before an early response (the engine-down check). */
const ENGINE_PROBE_MS = 2000;
const READ_PIECE = 256 * 1024;

const CONTINUE = Buffer.from('ICAP/1.0 100 Continue\r\n\r\n');
/**
 * After the last answer on a connection the server sends its FIN; a client that does not close its
 * side within this long (what it still sends is dropped meanwhile) is disconnected.
 */
export const CLOSE_GRACE_MS = 2000;

/** `aborted`: the verdict came after an early head, and the connection was cut (access log `/aborted`). */
type Outcome = { status: number; verdict: Verdict | null; bytes: number; close: boolean; aborted?: boolean };

/**
 * One ICAP connection: reads requests one after the other (pipelined requests wait in the reader),
 * answers each, and closes on `Connection: close`, on any protocol error (after answering it), or
 * when the client goes. Policy comes from the service; this class only frames.
 */
/** Request headers that ask for a part of an object (Request-Range: the old Netscape name). */
const RANGE_HEADERS: ReadonlySet<string> = new Set(['range', 'if-range', 'request-range']);

/** The raw HTTP head without the lines of these headers (lower case), or null when it has none. */
function withoutHeaders(raw: Buffer, names: ReadonlySet<string>): Buffer | null {
  const lines = raw.toString('latin1').split('\r\n');
  const kept = lines.filter((l, i) => i === 0 || !names.has(l.slice(0, Math.max(0, l.indexOf(':'))).trim().toLowerCase()));
  return kept.length === lines.length ? null : Buffer.from(kept.join('\r\n'), 'latin1');
}

/** A body the engines are not given (a coding not decoded here, a 206 part): skipped, and recorded through the scanner's note(). */
function notScanned(reason: string, bytes: number, startedAt: number): Verdict {
  const v = skippedVerdict(reason, bytes, performance.now() - startedAt);
  MADE_HERE.add(v);
  return v;
}

export class IcapConnection {
  private readonly reader: ByteReader;
  private readonly client: string;
  /** Set once any byte of the current response has been written. */
  private responding = false;
  /** Waiting for the next request with nothing of it received: safe to close on shutdown. */
  idle = true;
  /** The request being handled, for the access log when it ends in an abort. */
  private current: { service: string; method: string; started: number; bytes?: number; who?: Pick<AccessRecord, 'url' | 'httpClient' | 'user'> } | null = null;
  /** What the answer being written is, for the send timeout's log line. */
  private sending = 'a response head';
  /** Cut by the send timeout: the access log says so instead of client-gone. */
  private sendStalled = false;

  constructor(
    private readonly socket: Socket,
    private readonly ctx: ConnectionContext,
  ) {
    socket.setNoDelay(true);
    this.reader = new ByteReader(socket);
    this.client = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    // One signal for the connection's life: a scan under way stops when the client goes away.
    socket.once('close', () => this.gone.abort(new Error('client gone')));
    // A client that stops reading its answer (a 200 echo, a body after an early response) would
    // hold the connection, the spool and the scan's result for ever: write() waits for 'drain'.
    ctx.sends.watch(socket, (unsent) => this.stalled(unsent));
  }

  /**
   * icap.send-timeout passed without write progress: the connection is reset. The write waiting
   * for 'drain' then fails (client gone), which releases the spool and stops a scan under way.
   */
  private stalled(unsent: number): void {
    this.sendStalled = true;
    this.ctx.onSendStall();
    const c = this.current;
    this.ctx.log.warn(
      { client: this.client, service: c?.service, method: c?.method, sending: this.sending, unsent, timeout: this.ctx.limits.sendTimeoutMs },
      'icap: client stopped reading the answer (send-timeout); connection reset',
    );
    cutConnection(this.socket);
  }

  private readonly gone = new AbortController();

  async run(): Promise<void> {
    const { limits } = this.ctx;
    try {
      for (;;) {
        this.responding = false;
        this.idle = this.reader.buffered === 0;
        let block: Buffer | null;
        try {
          // The whole head, not only each read, has a deadline: a client trickling its head byte
          // by byte must not hold a connection slot for longer than header-timeout.
          this.reader.bound(limits.headerTimeoutMs, 'request head');
          block = await this.reader.readHead(limits.maxHeaderSize, limits.readTimeoutMs, limits.idleTimeoutMs);
          this.idle = false;
        } catch (err) {
          if (err instanceof ReadTimeout && this.reader.buffered === 0) break; // idle connection: just close
          throw err;
        }
        if (block === null) break;
        const keepGoing = await this.handle(block);
        if (!keepGoing) break;
      }
      this.close();
    } catch (err) {
      this.fail(err);
    }
  }

  /**
   * Ends the connection after its last answer: FIN after what is queued, later bytes from the
   * client dropped, and the socket destroyed if the client has not closed its side in
   * CLOSE_GRACE_MS (its slot must not stay taken by a client that never closes).
   */
  private close(last?: Buffer): void {
    const peerDone = this.reader.peerEnded;
    this.reader.discard();
    if (last) this.socket.end(last);
    else this.socket.end();
    if (!peerDone) setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS).unref();
  }

  private fail(err: unknown): void {
    if (err instanceof UnexpectedEof || this.socket.destroyed) {
      this.socket.destroy();
      this.logAbort(this.sendStalled ? 'send-timeout' : 'client-gone');
      return;
    }
    const status =
      err instanceof IcapProtocolError ? err.status : err instanceof ReadTimeout ? 408 : err instanceof LimitExceeded ? 400 : 500;
    if (status === 500) this.ctx.log.error({ client: this.client, err: messageOf(err) }, 'icap internal error');
    else if (!(err instanceof BodyTimeout)) this.ctx.log.info({ client: this.client, status, err: messageOf(err) }, 'icap request refused'); // a body timeout was logged where it happened
    if (!this.responding) {
      const head = formatResponseHead({
        status,
        headers: [
          ['Server', this.ctx.serverHeader],
          ['Date', new Date().toUTCString()],
          ['Connection', 'close'],
          ['Encapsulated', 'null-body=0'],
        ],
      });
      this.close(head);
      const c = this.current;
      this.current = null;
      this.ctx.access({ client: this.client, service: c?.service ?? '-', method: c?.method ?? '-', status, verdict: '-', bytes: c?.bytes ?? 0, ms: c ? performance.now() - c.started : 0, ...c?.who });
    } else {
      this.socket.destroy();
      this.logAbort(String(status));
    }
  }

  private logAbort(why: string): void {
    const c = this.current;
    this.current = null;
    if (c) {
      this.ctx.access({ client: this.client, service: c.service, method: c.method, status: 0, verdict: `aborted:${why}`, bytes: c.bytes ?? 0, ms: performance.now() - c.started, ...c.who });
    }
  }

  /** Handles one request; false = close the connection afterwards. */
  private async handle(block: Buffer): Promise<boolean> {
    const started = performance.now();
    this.sending = 'a response head';
    const head = parseRequestHead(block, { maxRequestLine: this.ctx.limits.maxRequestLine });
    const service = this.ctx.serviceFor(head.service);
    if (!service) throw new IcapProtocolError(404, `no service "${head.service}"`);
    if (head.method === 'OPTIONS') {
      this.reader.unbound(); // the head is complete: an opt-body has the body's timeouts
      this.reader.meter(this.ctx.limits.bodyTimeoutMs, this.ctx.limits.bodyMinRate);
      try {
        await this.skipOptionsBody(head);
      } catch (err) {
        if (err instanceof BodyTimeout) this.bodyTimedOut(service, 'OPTIONS', err.bytes, err, false);
        throw err;
      } finally {
        this.reader.unmeter();
      }
      const headers = await this.ctx.options(service);
      await this.write(formatResponseHead({ status: 200, headers: [...headers, ['Encapsulated', 'null-body=0']] }));
      this.ctx.access({ client: this.client, service: service.name, method: 'OPTIONS', status: 200, verdict: '-', bytes: 0, ms: performance.now() - started });
      return !head.connectionClose;
    }
    if (!service.allows(head.method)) throw new IcapProtocolError(405, `${head.method} is not allowed for service ${service.name}`);
    const current: NonNullable<IcapConnection['current']> = { service: service.name, method: head.method, started, who: clientOf(head) };
    this.current = current;
    const outcome = await this.adapt(head, service);
    this.current = null;
    this.ctx.access({
      client: this.client,
      service: service.name,
      method: head.method,
      status: outcome.status,
      verdict: outcome.verdict ? `${verdictLabel(outcome.verdict)}${outcome.aborted ? '/aborted' : ''}` : '-',
      bytes: outcome.bytes,
      ms: performance.now() - started,
      ...current.who,
    });
    return !head.connectionClose && !outcome.close;
  }

  /**
   * A body that did not keep up body-min-rate (the reader's meter): a client that holds a
   * connection slot by trickling. The connection is closed after this (fail(): 408 when nothing
   * of the answer went out yet).
   */
  private bodyTimedOut(service: IcapService, method: string, bytes: number, err: BodyTimeout, answered: boolean): void {
    if (this.current) this.current.bytes = bytes;
    this.ctx.log.warn(
      { client: this.client, service: service.name, method, bytes, answered, err: err.message },
      'icap: body too slow (body-timeout, body-min-rate), connection closed',
    );
  }

  private async skipOptionsBody(head: IcapRequestHead): Promise<void> {
    const last = head.encapsulated?.[head.encapsulated.length - 1];
    if (last?.name === 'opt-body') {
      for await (const piece of this.chunks()) void piece; // opt-body has no meaning for us
    }
  }

  /** Reads the encapsulated header blocks by the lengths the Encapsulated offsets give. */
  private async readEncapsulatedHeads(head: IcapRequestHead): Promise<{ req: HttpHead | null; res: HttpHead | null }> {
    const parts = head.encapsulated ?? [];
    let req: HttpHead | null = null;
    let res: HttpHead | null = null;
    let total = 0;
    for (let i = 0; i < parts.length - 1; i++) {
      const part = parts[i] as { name: EncapsulatedName; offset: number };
      const length = (parts[i + 1] as { offset: number }).offset - part.offset;
      total += length;
      if (total > this.ctx.limits.maxHeaderSize) throw new IcapProtocolError(400, 'encapsulated headers too large');
      const raw = await this.reader.readExactly(length, this.ctx.limits.readTimeoutMs);
      if (part.name === 'req-hdr') req = parseHttpHead(raw, 'request');
      else res = parseHttpHead(raw, 'response');
    }
    this.reader.unbound(); // the request head is complete; body bytes have the per-read timeout
    return { req, res };
  }

  /**
   * The chunked body: yields data pieces as they arrive and returns whether the last chunk said
   * `ieof` (the whole object fitted in the preview).
   */
  private async *chunks(): AsyncGenerator<Buffer, { ieof: boolean }> {
    const t = this.ctx.limits.readTimeoutMs;
    for (;;) {
      const line = (await this.reader.readLine(MAX_CHUNK_LINE, t)).toString('latin1');
      const { size, ieof } = parseChunkSizeLine(line);
      if (size === 0) {
        // Trailer lines (none expected) up to the empty line.
        let trailerBytes = 0;
        for (;;) {
          const trailer = await this.reader.readLine(MAX_CHUNK_LINE, t);
          if (trailer.length === 0) break;
          trailerBytes += trailer.length;
          if (trailerBytes > this.ctx.limits.maxHeaderSize) throw new IcapProtocolError(400, 'chunk trailer too large');
        }
        return { ieof };
      }
      if (ieof) throw new IcapProtocolError(400, 'ieof on a chunk that is not the last one');
      let left = size;
      while (left > 0) {
        const piece = await this.reader.readSome(Math.min(left, READ_PIECE), t);
        left -= piece.length;
        yield piece;
      }
      const crlf = await this.reader.readExactly(2, t);
      if (crlf[0] !== 13 || crlf[1] !== 10) throw new IcapProtocolError(400, 'chunk data longer than its size');
    }
  }

  private write(...buffers: Buffer[]): Promise<void> {
    this.responding = true;
    const s = this.socket;
    if (s.destroyed) return Promise.reject(new UnexpectedEof('client gone'));
    let ok: boolean;
    if (buffers.length === 1) {
      ok = s.write(buffers[0] as Buffer); // one buffer: a plain write, without the writev of cork/uncork
    } else {
      s.cork();
      ok = true;
      for (const b of buffers) ok = s.write(b);
      s.uncork();
    }
    if (ok) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const done = () => {
        s.off('drain', done);
        s.off('close', gone);
        resolve();
      };
      const gone = () => {
        s.off('drain', done);
        reject(new UnexpectedEof('client gone'));
      };
      s.once('drain', done);
      s.once('close', gone);
    });
  }

  /** REQMOD/RESPMOD: receive, scan, decide, answer. */
  private async adapt(head: IcapRequestHead, service: IcapService): Promise<Outcome> {
    const { req, res } = await this.readEncapsulatedHeads(head);
    const parts = head.encapsulated ?? [];
    const bodyName = (parts[parts.length - 1] as { name: EncapsulatedName }).name;
    const url = urlOf(req);
    if (this.current?.who) this.current.who.url = url;
    const istag = await service.istag();
    const base: Array<[string, string]> = [
      ['ISTag', istag],
      ['Server', this.ctx.serverHeader],
      ['Date', new Date().toUTCString()],
    ];
    // The message to echo: the HTTP response for RESPMOD, the HTTP request for REQMOD.
    const echoHead = head.method === 'RESPMOD' ? res : req;
    const echoHeadName: EncapsulatedName = head.method === 'RESPMOD' ? 'res-hdr' : 'req-hdr';
    const echoBodyName: EncapsulatedName = head.method === 'RESPMOD' ? 'res-body' : 'req-body';

    if (bodyName === 'null-body') {
      // range-requests: whole: the server is asked for the whole object, which RESPMOD then scans
      // (the client may get a 200 for its range, as from any server without ranges).
      const ranged = head.method === 'REQMOD' && service.config['range-requests'] === 'whole' && req && /^GET /i.test(req.startLine) ? withoutHeaders(req.raw, RANGE_HEADERS) : null;
      if (ranged) {
        this.ctx.log.debug({ client: this.client, url }, 'icap: Range taken out of a GET (range-requests: whole)');
        await this.write(formatResponseHead({ status: 200, headers: base, encapsulated: { headers: [{ name: 'req-hdr', block: ranged }], body: 'null-body' } }));
        return { status: 200, verdict: null, bytes: 0, close: false };
      }
      // Nothing to scan: no body, nothing that could carry a virus.
      if (head.allow204 || head.preview !== null) {
        await this.write(formatResponseHead({ status: 204, headers: base }));
        return { status: 204, verdict: null, bytes: 0, close: false };
      }
      await this.write(
        formatResponseHead({
          status: 200,
          headers: base,
          encapsulated: { headers: echoHead ? [{ name: echoHeadName, block: echoHead.raw }] : [], body: 'null-body' },
        }),
      );
      return { status: 200, verdict: null, bytes: 0, close: false };
    }

    const limits = this.ctx.limits;
    const maxObject = service.config['max-object-size'];
    // early-response-after: 0 turns early responses off for uploads too.
    const earlyAfter = head.method === 'RESPMOD' || service.config['early-response-after'] === 0 ? service.config['early-response-after'] : service.config['early-response-after-reqmod'];
    const keepBack = service.config['early-response-keep-back'];
    /** Body bytes already sent on after an early head. */
    let forwarded = 0;
    const spool = new Spool(limits.spoolDir, limits.spoolMemory, { hash: service.scanner.wantsHash, slabs: SHARED_SLABS });
    // Stops a scan under way when the client goes, or when the request ends without its verdict
    // (body too slow, malformed): the scanner then records no statistics event for it.
    const scanAbort = new AbortController();
    const stopScan = (): void => scanAbort.abort(this.gone.signal.reason);
    if (this.gone.signal.aborted) stopScan();
    else this.gone.signal.addEventListener('abort', stopScan, { once: true });
    let scanStream: PassThrough | null = null;
    let scanPromise: Promise<Verdict> | null = null;
    let overLimit = false;
    let early = false;
    let inPreview = head.preview !== null;
    let ieofInPreview = false;
    /** Over max-object-size with nothing that needs the rest (keepsOverLimit): pieces are dropped, never stored. */
    let dropping = false;
    let dropped = 0;
    /** The answer, when it went out before the body was over; the rest of the body is then read and dropped. */
    let answered: Outcome | null = null;
    const startedAt = performance.now();
    const declaredLength = Number(echoHead?.headers.get('content-length'));
    // The engines see the body as the browser will (decoded); a coding avgate cannot decode is not
    // scanned at all (content-coding.ts).
    const coding = codingPlan(contentCodings(echoHead?.headers.all('content-encoding') ?? []), service.config['decode-content-encoding']);
    // Never scanned, whatever the body: a coding avgate cannot decode, or (range-requests: whole) a
    // part of an object, which scanned alone passes what only the whole shows.
    const partial = head.method === 'RESPMOD' && service.config['range-requests'] === 'whole' && /^HTTP\/\d(?:\.\d)? 206\b/.test(res?.startLine ?? '');
    const unscannable: string | null =
      coding.kind === 'undecodable' ? coding.reason : partial ? 'a part of an object (206 Partial Content) is not scanned alone: REQMOD to this service takes Range out so the whole is fetched (range-requests)' : null;
    const ratio = service.config['max-decompression-ratio'];
    /** The scan of the body decoded: what the engines read, and the verdict as the decoding leaves it (content-coding.ts). */
    const decodedScan = (raw: Readable, codings: readonly string[]) => decodedStream(raw, codings, ratio, () => spool.size);
    /** Answers before the body is over (over max-object-size, the engine down); the rest gets at most read-timeout. */
    const answerNow = async (verdict: Verdict, rest: string): Promise<Outcome> => {
      const outcome = await this.finish(head, service, base, spool, verdict, url, echoHead, echoHeadName, echoBodyName, true, false);
      this.reader.bound(limits.readTimeoutMs, rest);
      spool.disposeSoon(true); // nothing reads it any more, and no view of it was written to the socket
      return outcome;
    };
    const answerOverLimit = (): Promise<Outcome> => answerNow(this.skippedVerdict(service, spool.size + dropped, startedAt), 'the rest of a body over max-object-size');
    try {
      // From here the body: it must keep up body-min-rate (time avgate waits for it, not time it
      // spends on the engine or on writing, counts), the rest after a 100 Continue included.
      this.reader.meter(limits.bodyTimeoutMs, limits.bodyMinRate);
      // An object known to be too big is decided at once; in a preview we need not read the rest.
      if (Number.isFinite(declaredLength) && declaredLength > maxObject) {
        overLimit = true;
        if (!keepsOverLimit(service, head, inPreview)) {
          dropping = true;
          // No body is needed for the answer: it goes out now, not after the whole body was stored.
          // A preview is answered at its end (below), without the rest.
          if (!inPreview) answered = await answerOverLimit();
        }
      }
      // A coding that cannot be decoded is never scanned: when that blocks, the answer goes out now
      // (at the end of a preview), never an early head and then an abort at the end.
      const refuseUnread = !overLimit && unscannable !== null && service.decide(skippedVerdict(unscannable, 0)).action === 'block';
      if (refuseUnread) {
        dropping = true;
        if (!inPreview) answered = await answerNow(notScanned(unscannable, 0, startedAt), 'the rest of a body that will not be scanned');
      }
      const expectedSize = Number.isFinite(declaredLength) && declaredLength <= limits.spoolMemory ? declaredLength : 0;
      let eagerCopy = service.scanner.engineLikely;

      const sendEarlyHead = async () => {
        early = true;
        await this.write(
          formatResponseHead({
            status: 200,
            headers: base,
            encapsulated: { headers: echoHead ? [{ name: echoHeadName, block: echoHead.raw }] : [], body: echoBodyName },
          }),
        );
      };

      // An object the engine will read from a file (and the cache will likely not answer): its
      // file is written while the rest arrives, not after. The same bet: the engine, not the
      // cache, will answer — so the hash is computed while the engine works (hashWhileScanning),
      // not while the object arrives.
      const startCopyIfWorth = async () => {
        if (!eagerCopy || overLimit || scanStream || spool.onDisk || spool.copyingForScan) return;
        if (!service.scanner.prefersFiles(Math.max(spool.size, expectedSize))) return;
        eagerCopy = false;
        await spool.startScanCopy({ hashLater: true }).catch((err: unknown) => this.ctx.log.debug({ err: messageOf(err) }, 'scan copy not started'));
      };

      let bodyDone = false;
      while (!bodyDone) {
        const it = this.chunks();
        for (;;) {
          const next = await it.next();
          if (next.done) {
            if (inPreview) {
              ieofInPreview = next.value.ieof;
              inPreview = false;
              if (!next.value.ieof) {
                if (overLimit || refuseUnread) {
                  // Decided without the rest: the client must not send it (RFC 3507 4.5).
                  await spool.end();
                  const v = overLimit ? this.skippedVerdict(service, spool.size + dropped, startedAt) : notScanned(unscannable as string, spool.size + dropped, startedAt);
                  return await this.finish(head, service, base, spool, v, url, echoHead, echoHeadName, echoBodyName, true, false);
                }
                await this.write(CONTINUE);
                this.responding = false; // 100 Continue is not the final response
                // The file is opened while the client wakes up to send the rest, not before.
                await startCopyIfWorth();
                break; // read the rest as a new chunk sequence
              }
            }
            bodyDone = true;
            break;
          }
          const piece = next.value;
          if (dropping) {
            dropped += piece.length;
            continue;
          }
          if (!overLimit && spool.size + piece.length > maxObject) {
            overLimit = true;
            scanStream?.destroy();
            if (early && service.decide(this.skippedVerdict(service, spool.size, startedAt)).action === 'block') {
              // The head is out and the object will not pass: cut it off now, not after receiving it all.
              return await this.finish(head, service, base, spool, this.skippedVerdict(service, spool.size, startedAt), url, echoHead, echoHeadName, echoBodyName, false, true);
            }
            if (!keepsOverLimit(service, head, inPreview)) {
              // What is held stays (at most max-object-size); the rest is not written anywhere.
              dropping = true;
              dropped += piece.length;
              if (!inPreview) answered = await answerOverLimit();
              continue;
            }
          }
          if (coding.kind !== 'undecodable' && !overLimit && !scanStream && (coding.kind === 'decode' || !service.scanner.prefersFiles(spool.size + piece.length)) && spool.size + piece.length > limits.spoolMemory) {
            // Too big to assemble first: stream to the engine from here on, while spooling for the echo.
            spool.stopHashing(); // the scanner hashes the stream for the cache: once is enough
            scanStream = new PassThrough({ highWaterMark: READ_PIECE });
            const source = coding.kind === 'decode' ? decodedScan(scanStream, coding.codings) : { stream: scanStream, verdictOf: undefined };
            scanPromise = service.scanner.scan({ source: { kind: 'stream', stream: source.stream }, verdictOf: source.verdictOf, name: url, signal: scanAbort.signal, origin: { source: 'icap', group: service.name } });
            for (const held of spool.memoryChunks) await feed(scanStream, held);
          }
          await spool.write(piece);
          if (scanStream && !overLimit) await feed(scanStream, piece);
          if (!inPreview) await startCopyIfWorth();
          // Only for clients that did not offer 204: Squid offers it only for bodies it can hold (< 64 KB).
          if (!early && earlyAfter > 0 && !head.allow204 && spool.size > earlyAfter && !inPreview) {
            // The body is about to flow to the client before its verdict: not while no engine
            // answers (fail closed with the page now, instead of a prefix and a broken transfer).
            const down = (await service.scanner.unreachable?.(AbortSignal.timeout(ENGINE_PROBE_MS))) ?? null;
            if (down && service.decide(down).action === 'block') {
              this.ctx.log.warn({ client: this.client, url, code: down.status === 'error' ? down.code : '', cause: down.status === 'error' ? down.cause : '' }, 'icap: engine down before the early response; answered at once');
              scanAbort.abort();
              scanStream?.destroy();
              dropping = true;
              answered = await answerNow(down, 'the rest of a body refused while the engine is down');
              continue;
            }
            await sendEarlyHead();
          }
          // Squid 5.7 also stops sending once about 2.7 MB wait unanswered: after the early head,
          // everything but the last keep-back bytes goes on as it arrives (never the whole object).
          if (early && spool.size - keepBack - forwarded >= READ_PIECE) forwarded = await this.forward(spool, forwarded, spool.size - keepBack);
        }
      }
      this.reader.unmeter(); // the body is complete
      // Answered before the end: the rest has been read and dropped, the connection can go on.
      if (answered) return { ...answered, bytes: answered.bytes + dropped };
      scanStream?.end();
      await spool.end();

      let verdict: Verdict;
      if (overLimit) {
        verdict = this.skippedVerdict(service, spool.size + dropped, startedAt);
      } else if (unscannable !== null) {
        verdict = notScanned(unscannable, spool.size, startedAt);
      } else if (scanPromise) {
        verdict = await scanPromise;
      } else if (coding.kind === 'decode') {
        const raw = spool.createReadStream();
        const decoded = decodedScan(raw, coding.codings);
        verdict = await service.scanner
          .scan({ source: { kind: 'stream', stream: decoded.stream }, verdictOf: decoded.verdictOf, name: url, signal: scanAbort.signal, origin: { source: 'icap', group: service.name } })
          .finally(() => raw.destroy());
      } else {
        const path = spool.filePath();
        const source = path ? ({ kind: 'file', path } as const) : ({ kind: 'chunks', chunks: spool.memoryChunks } as const);
        verdict = await service.scanner.scan({
          source,
          name: url,
          hash: spool.contentHash ?? undefined,
          hashWhileScanning: spool.contentHash === null,
          signal: scanAbort.signal,
          origin: { source: 'icap', group: service.name },
          ...(path ? {} : { toFile: () => spool.fileForScan() }),
        });
      }
      return await this.finish(head, service, base, spool, verdict, url, echoHead, echoHeadName, echoBodyName, ieofInPreview, early, forwarded);
    } catch (err) {
      scanAbort.abort(err);
      if (err instanceof BodyTimeout) this.bodyTimedOut(service, head.method, spool.size + dropped, err, answered !== null || this.responding);
      if (answered === null) throw err;
      // The answer is out; the rest of the body did not come in time, ended early or was malformed.
      // Nothing of it is needed: the connection is closed instead of answering again.
      this.ctx.log.debug({ client: this.client, err: messageOf(err) }, 'icap: rest of a body over max-object-size not read; connection closed');
      return { ...answered, bytes: answered.bytes + dropped, close: true };
    } finally {
      this.reader.unmeter();
      this.gone.signal.removeEventListener('abort', stopScan);
      scanStream?.destroy();
      if (answered) {
        this.reader.unbound(); // answerOverLimit disposed of the spool already
      } else {
        // Slabs go back to the pool only when no view of them waits in the socket's write buffer.
        // Not awaited: the next request on this connection need not wait for the unlink (the server's
        // close() waits for it).
        spool.disposeSoon(this.socket.writableLength === 0);
      }
    }
  }

  private skippedVerdict(service: IcapService, bytes: number, startedAt: number): Verdict {
    const v = skippedVerdict(`larger than max-object-size (${service.config['max-object-size']} bytes)`, bytes, performance.now() - startedAt);
    OVER_LIMIT.add(v);
    return v;
  }

  /** Answers after the verdict: 204, 200 echo, the block page, or (after an early head) the body or an abort. */
  private async finish(
    head: IcapRequestHead,
    service: IcapService,
    base: Array<[string, string]>,
    spool: Spool,
    verdict: Verdict,
    url: string,
    echoHead: HttpHead | null,
    echoHeadName: EncapsulatedName,
    echoBodyName: EncapsulatedName,
    /** A passing object gets 204 even with a note, even without Allow: 204 (an answer to a preview, or a body not kept). */
    any204: boolean,
    early: boolean,
    forwarded = 0,
  ): Promise<Outcome & { verdict: Verdict }> {
    this.ctx.onVerdict(service, verdict);
    // Decided here without the engines: the statistics count it too.
    if (OVER_LIMIT.has(verdict) || MADE_HERE.has(verdict)) service.scanner.note?.(verdict, { name: url, origin: { source: 'icap', group: service.name } });
    const decision: Decision = service.decide(verdict);
    const bytes = spool.size;
    if (decision.action === 'block') {
      // Before the answer, while the spool is whole: the client learns nothing from the delay.
      if (service.config.quarantine.includes(verdict.status)) {
        if (OVER_LIMIT.has(verdict)) {
          // Its bytes were never kept whole (at most max-object-size of them, often none): storing
          // an object the service would not even scan would defeat that limit.
          this.ctx.log.info(
            { client: this.client, service: service.name, url, received: verdict.bytes, maxObjectSize: service.config['max-object-size'] },
            'icap: blocked object not quarantined: larger than max-object-size',
          );
        } else {
          await this.ctx.quarantine(service, verdict, spool, url, echoHead, this.current?.who);
        }
      }
      if (!early && verdict.status === 'error' && service.config['engine-error'] === 'icap-error') {
        // The ICAP client's own failure handling decides (Squid's bypass), as with c-icap.
        this.ctx.log.warn({ client: this.client, url, verdict: verdictLabel(verdict), cause: verdict.cause }, 'icap: engine error answered with ICAP 500 (engine-error: icap-error)');
        this.sending = 'an ICAP error';
        await this.write(formatResponseHead({ status: 500, headers: [...base, ['Encapsulated', 'null-body=0']] }));
        return { status: 500, verdict, bytes, close: false };
      }
      if (early) {
        // Headers are out; the body must never arrive complete: abort the connection.
        this.ctx.log.warn({ client: this.client, url, verdict: verdictLabel(verdict), ...this.current?.who }, 'icap: verdict after the early response, connection aborted');
        this.socket.destroy();
        return { status: 200, verdict, bytes, close: true, aborted: true };
      }
      const page = service.blockPage(verdict, decision, url, this.current?.who);
      this.sending = 'a block page';
      await this.write(
        formatResponseHead({
          status: 200,
          headers: [...base, ...infectionHeaders(verdict, url)],
          encapsulated: { headers: [{ name: 'res-hdr', block: page.head }], body: 'res-body' },
        }),
        ...chunk(page.body),
        LAST_CHUNK,
      );
      // A preview answered without reading the rest leaves nothing unread; otherwise all was read.
      return { status: 200, verdict, bytes, close: false };
    }
    if (early) {
      await this.forward(spool, forwarded, spool.size);
      await this.write(LAST_CHUNK);
      return { status: 200, verdict, bytes, close: false };
    }
    // 204 is always allowed in answer to a preview (RFC 3507 4.5), otherwise only with Allow: 204;
    // a note then goes on the ICAP head, else into the echoed HTTP head. A body over max-object-size
    // that was not kept is answered 204 (with Allow: 204, see keepsOverLimit).
    if ((decision.note === null && head.allow204) || any204) {
      const note: Array<[string, string]> = decision.note === null ? [] : [['X-Avgate-Verdict', headerSafe(decision.note)]];
      await this.write(formatResponseHead({ status: 204, headers: [...base, ...note] }));
      return { status: 204, verdict, bytes, close: false };
    }
    const headers = [...base];
    let block = echoHead?.raw ?? null;
    if (decision.note !== null && block) block = withHeader(block, 'X-Avgate-Verdict', decision.note);
    await this.write(
      formatResponseHead({
        status: 200,
        headers,
        encapsulated: { headers: block ? [{ name: echoHeadName, block }] : [], body: echoBodyName },
      }),
    );
    await this.streamBody(spool);
    return { status: 200, verdict, bytes, close: false };
  }

  /** Sends spooled bytes [from, to) as chunks; returns the new send position. */
  private async forward(spool: Spool, from: number, to: number): Promise<number> {
    this.sending = 'the body after an early response';
    let pos = from;
    while (pos < to) {
      const piece = await spool.readRange(pos, Math.min(to, pos + READ_PIECE));
      if (piece.length === 0) break;
      await this.write(...chunk(piece));
      pos += piece.length;
    }
    return pos;
  }

  private async streamBody(spool: Spool): Promise<void> {
    this.sending = 'the echoed body';
    for await (const piece of spool.createReadStream()) {
      const b = piece as Buffer;
      if (b.length > 0) await this.write(...chunk(b));
    }
    await this.write(LAST_CHUNK);
  }
}

/**
 * Whether the bytes of an object over max-object-size are still needed: only for an echo (the
 * skipped verdict passes, the client did not offer 204, and it is not a preview, which may always
 * be answered 204). Otherwise what is over the limit is read and dropped, never stored — the
 * quarantine does not keep such objects either (`quarantine: [skipped]` keeps only objects the
 * scanner skipped, which are within max-object-size).
 */
function keepsOverLimit(service: IcapService, head: IcapRequestHead, inPreview: boolean): boolean {
  return service.config['accept-status'].includes('skipped') && !head.allow204 && !inPreview;
}

/** Skipped verdicts of bodies over max-object-size (see skippedVerdict): never quarantined. */
const OVER_LIMIT = new WeakSet<Verdict>();
/** Other verdicts made here (notScanned): recorded through the scanner's note(). */
const MADE_HERE = new WeakSet<Verdict>();

/** Writes to the scan stream with backpressure; a stream the scanner dropped is skipped. */
async function feed(stream: PassThrough, piece: Buffer): Promise<void> {
  if (stream.destroyed || stream.writableEnded) return;
  if (stream.write(piece)) return;
  await drainedOrClosed(stream);
}

/** The ICAP client's word on who asked (Squid: adaptation_send_client_ip, adaptation_send_username); at most 256 characters each. */
function clientOf(head: IcapRequestHead): Pick<AccessRecord, 'url' | 'httpClient' | 'user'> {
  const one = (name: string) => {
    const v = head.headers.get(name)?.trim();
    return v ? v.slice(0, 256) : undefined;
  };
  const httpClient = one('x-client-ip');
  const user = one('x-authenticated-user');
  return { ...(httpClient ? { httpClient } : {}), ...(user ? { user } : {}) };
}

function urlOf(req: HttpHead | null): string {
  if (!req) return '';
  const target = req.startLine.split(' ')[1] ?? '';
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(target)) return target;
  const host = req.headers.get('host');
  return host ? `http://${host}${target}` : target;
}

/** Adds a header line to an HTTP header block (before its empty line). */
function withHeader(block: Buffer, name: string, value: string): Buffer {
  const text = block.toString('latin1');
  return Buffer.from(`${text.slice(0, -2)}${name}: ${value.replace(/[\r\n]/g, ' ')}\r\n\r\n`, 'latin1');
}
