import { request as httpRequest, type Agent, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import type { DocAclRule, HttpProxyConfig } from '../../config/proxy-schema.js';
import { messageOf } from '../../core/errors.js';
import type { Logger } from '../../core/logging.js';
import { splitHostPort } from '../../core/net.js';
import { cutConnection, type SendStallWatch } from '../../core/send-stall.js';
import { SHARED_SLABS, Spool } from '../../core/spool.js';
import { skippedVerdict, verdictLabel, type Verdict } from '../../core/verdict.js';
import { renderPage } from '../../policy/block-page.js';
import { decide, verdictReason, type Decision } from '../../policy/verdict-policy.js';
import { CleanHints } from '../../proxy/clean-hints.js';
import { codingPlan, contentCodings, DECODED_CODINGS, ENGINE_CODINGS, decodedStream } from '../../formats/content-coding.js';
import type { DocAcl, DocAclMatch, DocFacts } from '../../proxy/doc-acl.js';
import { SpoolFeed, trickle, type TrickleOutcome, type TrickleSink } from '../../proxy/trickle.js';
import type { ScanService } from '../../scan/types.js';
import {
  forwardHeaders,
  headerPairs,
  headerSafe,
  headerValue,
  ifRangeHolds,
  parseProxyTarget,
  proxyTargetProblem,
  parseRange,
  rangeWithin,
  requestHeadProblem,
  responseHasNoBody,
  scannableAcceptEncoding,
  viaLoops,
  type ByteRange,
  type ProxyTarget,
} from './headers.js';

/** One line of the access log. */
export interface AccessRecord {
  client: string;
  method: string;
  url: string;
  status: number;
  /** Verdict status, `-` when nothing was scanned, `aborted` when a trickled body was cut. */
  verdict: string;
  rule: string;
  /** Body bytes sent to the client. */
  bytes: number;
  ms: number;
}

/** What one exchange needs from the server; built once per server. */
export interface ExchangeContext {
  config: HttpProxyConfig;
  /** http-proxy.allowed-clients. */
  clientAllowed(address: string): boolean;
  acl: DocAcl;
  scannerFor(ids: readonly string[] | null): ScanService;
  /** scan.max-checked-size: longer bodies are `skipped` at once, without waiting for the end. */
  maxCheckedSize: number;
  spoolDir: string;
  template: string;
  agent: Agent;
  log: Logger;
  access(r: AccessRecord): void;
  onVerdict(v: Verdict): void;
  /** A blocked object into the quarantine (when its status is listed); never throws. */
  keep(v: Verdict, spool: Spool, meta: { url: string; rule: string; client: string; upload: boolean }): Promise<void>;
  counters: { aborted: number; trickled: number; uploadsBlocked: number; sendTimeouts: number };
  /** http-proxy.timeouts.send: every response is watched for a client that stops taking it. */
  sends: SendStallWatch;
  /** Downloads that passed recently: the same object again goes out as it arrives (within the trickle limits). */
  hints: CleanHints;
}

/** Received bytes kept in memory past keep-back for an eager trickle (see SpoolFeed). */
const EAGER_WINDOW = 2 * 1024 * 1024;

const BLOCK_STATUS = { found: 403, skipped: 403, unknown: 403, error: 503 } as const;

/** A page of our own (400, 403, 502 ...): small, HTML-escaped, never cached. */
function sendPage(res: ServerResponse, status: number, title: string, reason: string, url: string, extra: Record<string, string> = {}, ctx?: ExchangeContext, v?: Verdict, client = '-'): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const html = renderPage(ctx?.template ?? '<!DOCTYPE html><title>{{TITLE}}</title><h1>{{TITLE}}</h1><p>{{REASON}}</p>\n', {
    TITLE: title,
    STATUS: v?.status ?? '-',
    REASON: reason,
    VIRUS_NAMES: v?.status === 'found' ? v.names.join(', ') : '-',
    URL: url,
    SERVICE: 'avgate http-proxy',
    ENGINE: v?.engine ?? '-',
    SIGNATURE_VERSION: v?.signatureVersion ?? 'unknown',
    TIME: new Date().toISOString(),
    CLIENT: client,
    USER: '-',
  });
  const body = Buffer.from(html, 'utf8');
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': String(body.length),
    'Cache-Control': 'no-store',
    ...extra,
  });
  res.end(body);
}

/**
 * Writes with backpressure: resolves when the response can take more, rejects when it is gone.
 * Several pieces go out corked: one system call for all of them.
 */
function writeTo(res: ServerResponse, chunk: Buffer | Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    if (res.destroyed || res.writableEnded) {
      reject(new Error('client gone'));
      return;
    }
    let ok = true;
    if (Array.isArray(chunk)) {
      res.cork();
      for (const c of chunk) ok = res.write(c);
      res.uncork();
    } else {
      ok = res.write(chunk);
    }
    if (ok) {
      resolve();
      return;
    }
    const done = (err?: Error) => {
      res.off('drain', onDrain);
      res.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(new Error('client gone'));
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
}

/**
 * Reads a message body into a feed, failing it when bytes stop coming for `stallMs`. Bytes past
 * `keepUpTo` are read and dropped (the feed then ends short). Resolves to the bytes read.
 */
async function receive(body: Readable, feed: SpoolFeed, stallMs: number, onProgress: (received: number) => void, keepUpTo = Infinity): Promise<number> {
  let total = 0;
  // One timer per body, pushed back per chunk (refresh() is far cheaper than a new timer per read).
  const timer = setTimeout(() => body.destroy(new Error(`no body bytes for ${stallMs} ms`)), stallMs);
  try {
    for await (const chunk of body) {
      timer.refresh();
      const c = chunk as Buffer;
      total += c.length;
      if (total - c.length < keepUpTo) await feed.write(total > keepUpTo ? c.subarray(0, c.length - (total - keepUpTo)) : c);
      onProgress(total);
    }
    await feed.end();
  } catch (err) {
    feed.fail(err);
    // A spool write may still be under way: the caller disposes of the spool once we return.
    await feed.idle();
  } finally {
    clearTimeout(timer);
  }
  return total;
}

/** Methods a server may get twice with the same effect (RFC 9110 §9.2.2): sent again after a kept-alive connection closed unanswered. */
const IDEMPOTENT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

/** Every Content-Encoding value of a head, joined (a coding per line counts as a list), or null. */
function contentEncodingOf(pairs: ReadonlyArray<readonly [string, string]>): string | null {
  const values = pairs.filter(([k]) => k.toLowerCase() === 'content-encoding').map(([, v]) => v);
  return values.length === 0 ? null : values.join(', ');
}

/** Access-log verdict of an object a rule lets through unscanned. */
function unscannedLabel(m: DocAclMatch): string {
  return m.rule.action === 'accept' ? 'accepted' : 'not-scanned';
}


/**
 * One request through the proxy: head checks, the doc-ACL per direction, the upload held and
 * scanned when its rule says so, the upstream request, and the response body spooled, scanned and
 * trickled (or passed / refused) per its rule.
 */
export class Exchange {
  private readonly started = performance.now();
  private readonly rec: AccessRecord;
  private readonly ac = new AbortController();
  private upstreamReq: ClientRequest | null = null;
  /**
   * `range-requests: whole`: the Range (and If-Range) of a GET, kept back from the origin; the
   * proxy answers the range itself from the whole object once that is scanned.
   */
  private rangeAsk: { range: string; ifRange: string | null; several: boolean } | null = null;
  /** Cut by the send timeout: the access log says so. */
  private stalled = false;

  constructor(
    private readonly ctx: ExchangeContext,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
  ) {
    this.rec = { client: req.socket.remoteAddress ?? '-', method: req.method ?? '-', url: req.url ?? '-', status: 0, verdict: '-', rule: '-', bytes: 0, ms: 0 };
    res.on('close', () => {
      if (!res.writableFinished) this.ac.abort();
    });
    // A client that stops reading (a big download) would hold the connection, the spool and the
    // upstream for ever: a write waits for 'drain', and neither node's timeouts nor body-timeout
    // (which watches the upstream) see it.
    ctx.sends.watch(res, (unsent) => this.sendStalled(unsent));
  }

  /**
   * http-proxy.timeouts.send passed without write progress: the connection is reset. The response
   * closes, which aborts the scan; the write waiting for 'drain' fails, the upstream response is
   * destroyed, the spool disposed of, and run() destroys the upstream request.
   */
  private sendStalled(unsent: number): void {
    this.ctx.counters.sendTimeouts++;
    this.ctx.log.warn(
      { client: this.rec.client, method: this.rec.method, url: this.rec.url, unsent, timeout: this.ctx.config.timeouts.send },
      'http-proxy: client stopped reading the response (timeouts.send); connection reset',
    );
    this.stalled = true;
    cutConnection(this.res.socket);
    this.res.destroy();
  }

  async run(): Promise<void> {
    try {
      await this.handle();
    } catch (err) {
      this.ctx.log.error({ url: this.rec.url, err: messageOf(err) }, 'http-proxy: request failed');
      this.res.destroy();
    } finally {
      this.upstreamReq?.destroy();
      if (this.stalled) this.rec.verdict = `${this.rec.verdict}/send-timeout`;
      this.rec.status = this.res.statusCode;
      this.rec.ms = performance.now() - this.started;
      this.ctx.access(this.rec);
    }
  }

  private refuse(status: number, title: string, reason: string): void {
    // The request body (if any) is not read: the connection cannot be reused.
    this.res.shouldKeepAlive = false;
    sendPage(this.res, status, title, reason, this.rec.url, { Connection: 'close' });
  }

  private facts(target: ProxyTarget, direction: 'download' | 'upload', type: string | null, size: number | null): DocFacts {
    return { client: this.rec.client, host: target.host, url: target.url, method: this.rec.method, contentType: type, size, direction };
  }

  private async handle(): Promise<void> {
    const { req, ctx } = this;
    if (!ctx.clientAllowed(this.rec.client)) return this.refuse(403, 'Forbidden', 'this client may not use the proxy');
    const pairs = headerPairs(req.rawHeaders);
    const problem = requestHeadProblem(pairs);
    if (problem) return this.refuse(400, 'Bad request', problem);
    const target = parseProxyTarget(req.url ?? '');
    if (!target) return this.refuse(400, 'Bad request', proxyTargetProblem(req.url ?? ''));
    this.rec.url = target.url;
    if (viaLoops(pairs, ctx.config.via)) return this.refuse(508, 'Loop detected', 'this request already went through this proxy');

    const cl = headerValue(pairs, 'content-length');
    const chunked = headerValue(pairs, 'transfer-encoding') !== null;
    const requestSize = cl === null ? null : Number(cl);
    const hasBody = chunked || (requestSize !== null && requestSize > 0);

    // Uploads: a body the rule wants scanned is held whole; nothing goes upstream before its verdict.
    let upload: Spool | null = null;
    try {
      if (hasBody) {
        const uploadRule = ctx.acl.match(this.facts(target, 'upload', headerValue(pairs, 'content-type'), requestSize));
        this.rec.rule = uploadRule.name;
        if (uploadRule.rule.action === 'deny') {
          // Read (and drop) the body first: see holdUpload on answering under unread bytes.
          await receive(req, new SpoolFeed(new Spool(ctx.spoolDir, 0, { hash: false })), ctx.config.timeouts.body, () => undefined, 0);
          return this.refuse(403, 'Upload refused', `the upload is refused by rule ${uploadRule.name}`);
        }
        if (uploadRule.rule.action === 'scan' && uploadRule.rule.antivirus !== 'none') {
          upload = await this.holdUpload(target, uploadRule);
          if (!upload) return;
        }
      }
      await this.forward(target, pairs, hasBody, requestSize, upload);
    } finally {
      await upload?.dispose();
    }
  }

  /** Receives and scans a request body; returns the spool when it may go upstream, null when answered here. */
  private async holdUpload(target: ProxyTarget, m: DocAclMatch): Promise<Spool | null> {
    const { ctx, req } = this;
    const max = ctx.maxCheckedSize;
    const policy = { acceptStatus: m.rule['accept-status'], blockStatus: BLOCK_STATUS };
    const tooBig = (bytes: number) => skippedVerdict(`larger than max-checked-size (${max} bytes)`, bytes);
    const scanner = ctx.scannerFor(m.rule.antivirus === 'none' ? null : m.rule.antivirus);
    const spool = new Spool(ctx.spoolDir, ctx.config['spool-memory'], { hash: scanner.wantsHash, slabs: SHARED_SLABS });
    const feed = new SpoolFeed(spool, { queue: true });
    // Past max-checked-size the body is kept only when "skipped" passes (it must go upstream
    // whole); otherwise it is read to its end and dropped: answering while the client still sends
    // would close the connection under unread bytes, a reset that can lose the 403.
    const keepOversize = decide(tooBig(max + 1), policy).action === 'pass';
    const received = await receive(req, feed, ctx.config.timeouts.body, () => undefined, keepOversize ? Infinity : max);
    if (feed.failed) {
      await spool.dispose();
      if (!this.res.headersSent) this.refuse(400, 'Bad request', `the request body could not be read: ${messageOf(feed.error)}`);
      return null;
    }
    const verdict = received > max ? tooBig(received) : await this.scan(scanner, spool, target.url, m.name, contentEncodingOf(headerPairs(req.rawHeaders)));
    this.rec.verdict = verdictLabel(verdict);
    ctx.onVerdict(verdict);
    const d = decide(verdict, policy);
    if (d.action === 'pass') return spool;
    ctx.counters.uploadsBlocked++;
    if (received <= max) await ctx.keep(verdict, spool, { url: target.url, rule: m.name, client: this.rec.client, upload: true });
    await spool.dispose();
    this.blockPage(verdict, d, target.url, m.name);
    return null;
  }

  private async scan(scanner: ScanService, spool: Spool, url: string, rule: string, encoding: string | null): Promise<Verdict> {
    const plan = codingPlan(contentCodings(encoding === null ? [] : [encoding]), this.ctx.config['decode-content-encoding']);
    const base = { name: url, signal: this.ac.signal, origin: { source: 'http' as const, group: rule } };
    if (plan.kind === 'undecodable') {
      const v = skippedVerdict(plan.reason, spool.size);
      scanner.note?.(v, base);
      return v;
    }
    if (plan.kind === 'decode') {
      // The client gets the encoded bytes; the engines see what the client will see after decoding.
      const raw = spool.createReadStream();
      const size = spool.size;
      const decoded = decodedStream(raw, plan.codings, this.ctx.config['max-decompression-ratio'], () => size);
      return scanner.scan({ ...base, source: { kind: 'stream', stream: decoded.stream }, verdictOf: decoded.verdictOf }).finally(() => raw.destroy());
    }
    const path = spool.filePath();
    return scanner.scan({
      ...base,
      source: path ? { kind: 'file', path, size: spool.size } : { kind: 'chunks', chunks: spool.memoryChunks },
      hash: spool.contentHash ?? undefined,
      hashWhileScanning: spool.contentHash === null,
      ...(path ? {} : { toFile: () => spool.fileForScan() }),
    });
  }

  private blockPage(v: Verdict, d: Extract<Decision, { action: 'block' }>, url: string, rule: string): void {
    const title = v.status === 'found' ? 'Virus found: access denied' : v.status === 'error' ? 'Antivirus unavailable' : 'Content could not be checked';
    const forwarded = headerValue(headerPairs(this.req.rawHeaders), 'x-forwarded-for');
    this.ctx.log.info({ client: this.rec.client, ...(forwarded ? { forwardedFor: headerSafe(forwarded).slice(0, 200) } : {}), url, rule, status: v.status, reason: d.reason }, 'http-proxy: blocked');
    this.res.shouldKeepAlive = false;
    sendPage(this.res, d.httpStatus, title, d.reason, url, { 'X-Avgate-Verdict': headerSafe(`${v.status}; ${verdictReason(v)}`), Connection: 'close' }, this.ctx, v, this.rec.client);
  }

  /** Sends the request upstream and handles the response. */
  private async forward(target: ProxyTarget, pairs: Array<[string, string]>, hasBody: boolean, size: number | null, upload: Spool | null): Promise<void> {
    const { ctx, req, res } = this;
    const cfg = ctx.config;
    const drop = ['host', 'content-length', 'expect', 'accept-encoding'];
    const range = headerValue(pairs, 'range');
    if (range !== null && cfg['range-requests'] === 'whole' && req.method === 'GET') {
      // The origin sends the whole object, so the scan sees all of it (a resumed download of an
      // infected file must not pass as a harmless tail).
      const several = pairs.filter(([k]) => k.toLowerCase() === 'range').length > 1;
      this.rangeAsk = { range, ifRange: headerValue(pairs, 'if-range'), several };
      drop.push('range', 'if-range');
    }
    const forwardedFor = cfg['forwarded-for'];
    if (forwardedFor !== 'keep') drop.push('x-forwarded-for');
    const headers = forwardHeaders(pairs, cfg.via, req.httpVersion, drop);
    if (forwardedFor === 'add') {
      const seen = pairs.filter(([k]) => k.toLowerCase() === 'x-forwarded-for').map(([, v]) => v.trim()).filter((v) => v !== '');
      headers.push(['X-Forwarded-For', [...seen, this.rec.client].join(', ')]);
    }
    // Only codings whose bodies get scanned unpacked may come back: the proxy's decoders, or
    // without them gzip alone (clamd unpacks it by itself).
    const ae = headerValue(pairs, 'accept-encoding');
    const accepted = ae === null ? null : scannableAcceptEncoding(ae, cfg['decode-content-encoding'] ? DECODED_CODINGS : ENGINE_CODINGS);
    if (accepted !== null) headers.push(['Accept-Encoding', accepted]);
    const flat: string[] = ['Host', target.authority];
    for (const [k, v] of headers) flat.push(k, v);
    if (upload) flat.push('Content-Length', String(upload.size));
    else if (hasBody && size !== null) flat.push('Content-Length', String(size));
    else if (hasBody) flat.push('Transfer-Encoding', 'chunked');
    const parent = parentProxy(cfg);
    if (parent?.authorization) flat.push('Proxy-Authorization', parent.authorization);
    // A kept-alive connection the server closed just as the request went out (its idle timeout)
    // fails before any answer: an idempotent request whose body can be sent again is sent again
    // once on a new connection (RFC 9112 §9.3.1), as browsers and Squid do.
    const resendable = !hasBody || upload !== null;
    let upRes: IncomingMessage;
    for (let attempt = 1; ; attempt++) {
      const { upReq, response } = this.openUpstream(target, flat, parent, hasBody, upload);
      try {
        upRes = await response;
        break;
      } catch (err) {
        if (attempt === 1 && resendable && upReq.reusedSocket && IDEMPOTENT.has(req.method ?? '') && (err as NodeJS.ErrnoException).code === 'ECONNRESET') {
          ctx.log.debug({ url: target.url, err: messageOf(err) }, 'http-proxy: a reused connection to the server closed without an answer; sent again on a new one');
          continue;
        }
        const msg = messageOf(err);
        const timeout = /no response head/.test(msg);
        ctx.log.warn({ client: this.rec.client, url: target.url, err: msg }, 'http-proxy: upstream failed');
        if (!res.headersSent) this.refuse(timeout ? 504 : 502, timeout ? 'Gateway timeout' : 'Bad gateway', upstreamProblem(err, target.host, ctx.config['parent-proxy']));
        else res.destroy();
        return;
      }
    }
    if (parent && upRes.statusCode === 407) {
      // The parent wants (other) credentials: the client cannot give them (its own never reach
      // the parent), so a 407 relayed would only ask it for a password in vain.
      upRes.destroy();
      const why = parentAuthProblem(cfg);
      ctx.log.warn({ client: this.rec.client, url: target.url, err: why }, 'http-proxy: upstream failed');
      if (!res.headersSent) this.refuse(502, 'Bad gateway', why);
      return;
    }
    await this.respond(target, upRes);
  }

  /** One request to the server (or the parent proxy): its response head, or the error before one. */
  private openUpstream(
    target: ProxyTarget,
    flat: string[],
    parent: ReturnType<typeof parentProxy>,
    hasBody: boolean,
    upload: Spool | null,
  ): { upReq: ClientRequest; response: Promise<IncomingMessage> } {
    const { ctx, req } = this;
    const cfg = ctx.config;
      const upReq = httpRequest({
        host: parent ? parent.host : target.host,
        port: parent ? parent.port : target.port,
        method: req.method,
        path: parent ? target.url : target.path,
        headers: flat as unknown as Record<string, string>,
        agent: ctx.agent,
        maxHeaderSize: cfg['max-header-size'],
        setHost: false,
      });
      this.upstreamReq = upReq;
      // Small requests and heads must not wait for an ACK (Nagle against delayed ACK).
      upReq.once('socket', (s) => s.setNoDelay(true));
      // Errors after the response head (a reset mid-body) surface through the body stream; this
      // keeps any later one from being an unhandled 'error' event.
      upReq.on('error', () => undefined);
      const response = new Promise<IncomingMessage>((resolve, reject) => {
        const timer = setTimeout(() => upReq.destroy(new Error(`no response head within ${cfg.timeouts.upstream} ms`)), cfg.timeouts.upstream);
        upReq.once('response', (r) => (clearTimeout(timer), resolve(r)));
        upReq.once('error', (e) => (clearTimeout(timer), reject(e)));
        // 101 Switching Protocols: node:http gives neither a response nor an error unless someone
        // listens for 'upgrade'. The proxy relays no other protocol: 502, never a hang.
        upReq.once('upgrade', (_r, socket: Socket) => {
          socket.destroy();
          clearTimeout(timer);
          reject(new Error('the server switched protocols (101 Switching Protocols), which this proxy does not relay'));
        });
      });
      response.catch(() => undefined);
      // The request body: the scanned spool, or the client's bytes as they come (accept rules).
      const sending = (async () => {
        if (upload) {
          const rs = upload.createReadStream();
          for await (const c of rs) if (!upReq.write(c as Buffer)) await new Promise((r) => upReq.once('drain', r));
        } else if (hasBody) {
          for await (const c of req) if (!upReq.write(c as Buffer)) await new Promise((r) => upReq.once('drain', r));
        }
        upReq.end();
      })().catch((err: unknown) => upReq.destroy(err as Error));
    void sending;
    return { upReq, response };
  }

  private responseHead(upRes: IncomingMessage): () => void {
    return () => {
      const headers = forwardHeaders(headerPairs(upRes.rawHeaders), this.ctx.config.via, upRes.httpVersion);
      const flat: string[] = [];
      for (const [k, v] of headers) flat.push(k, v);
      this.res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, flat);
    };
  }

  /** The head of a 206 built from the origin's 200: its headers with our Content-Length and Content-Range. */
  private partialHead(upRes: IncomingMessage, start: number, end: number, total: number): () => void {
    return () => {
      const headers = forwardHeaders(headerPairs(upRes.rawHeaders), this.ctx.config.via, upRes.httpVersion, ['content-length', 'content-range']);
      const flat: string[] = [];
      for (const [k, v] of headers) flat.push(k, v);
      flat.push('Content-Length', String(end - start), 'Content-Range', `bytes ${start}-${end - 1}/${total}`);
      this.res.writeHead(206, 'Partial Content', flat);
    };
  }

  /** 416 for a range that lies outside the object (nothing of the object is sent). */
  private unsatisfiable(total: number): void {
    sendPage(this.res, 416, 'Range not satisfiable', `the requested range lies outside the object (${total} bytes)`, this.rec.url, { 'Content-Range': `bytes */${total}` }, this.ctx);
  }

  /**
   * The one range the client gets from this 200 (kept back by `range-requests: whole`), or null
   * when it gets the whole object: no Range, an unreadable one, several ranges, or an If-Range
   * that does not match the response's validators.
   */
  private wantedRange(pairs: ReadonlyArray<readonly [string, string]>): ByteRange | null {
    const ask = this.rangeAsk;
    if (!ask || ask.several) return null;
    const r = parseRange(ask.range);
    if (r === null || r === 'several') return null;
    return ifRangeHolds(ask.ifRange, headerValue(pairs, 'etag'), headerValue(pairs, 'last-modified')) ? r : null;
  }

  private async respond(target: ProxyTarget, upRes: IncomingMessage): Promise<void> {
    const { ctx, res } = this;
    // A reset of a body nobody reads any more must not be an unhandled 'error' event.
    upRes.on('error', () => undefined);
    const status = upRes.statusCode ?? 502;
    const head = this.responseHead(upRes);
    const pairs = headerPairs(upRes.rawHeaders);
    if (responseHasNoBody(this.rec.method, status)) {
      upRes.resume();
      head();
      res.end();
      return;
    }
    const clText = headerValue(pairs, 'content-length');
    const size = clText !== null && /^\d{1,15}$/.test(clText.trim()) ? Number(clText) : null;
    const m = ctx.acl.match(this.facts(target, 'download', headerValue(pairs, 'content-type'), size));
    this.rec.rule = m.name;
    if (m.rule.action === 'deny') {
      upRes.destroy();
      return this.refuse(403, 'Download refused', `the object is refused by rule ${m.name}`);
    }
    if (m.rule.action === 'accept' || m.rule.antivirus === 'none') {
      this.rec.verdict = unscannedLabel(m);
      head();
      await this.passThrough(upRes);
      return;
    }
    const range = status === 200 ? this.wantedRange(pairs) : null;
    if (range && size !== null && rangeWithin(range, size) === null) {
      // Nothing of the object goes out, so nothing needs scanning.
      upRes.destroy();
      this.unsatisfiable(size);
      return;
    }
    const encoding = contentEncodingOf(pairs);
    const hint = CleanHints.key({ rule: m.name, url: target.url, size, etag: headerValue(pairs, 'etag'), lastModified: headerValue(pairs, 'last-modified'), encoding });
    await this.scanDownload(target, upRes, m, size, head, encoding, hint, range);
  }

  /** An object the rule does not scan: streamed with backpressure. */
  private async passThrough(upRes: IncomingMessage): Promise<void> {
    const stall = this.ctx.config.timeouts.body;
    const timer = setTimeout(() => upRes.destroy(new Error('stalled')), stall);
    try {
      for await (const c of upRes) {
        timer.refresh();
        this.rec.bytes += (c as Buffer).length;
        await writeTo(this.res, c as Buffer);
      }
      this.res.end();
    } catch {
      this.res.destroy();
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * A scanned download. With `range` (a Range kept back from the origin) only that part of the
   * whole object goes out, as a 206; the trickle cap stays on positions of the whole object.
   */
  private async scanDownload(
    target: ProxyTarget,
    upRes: IncomingMessage,
    m: DocAclMatch,
    size: number | null,
    head: () => void,
    encoding: string | null,
    hint: string | null,
    range: ByteRange | null,
  ): Promise<void> {
    const { ctx, res } = this;
    const rule: DocAclRule = m.rule;
    const scanner = ctx.scannerFor(rule.antivirus === 'none' ? null : rule.antivirus);
    const spool = new Spool(ctx.spoolDir, ctx.config['spool-memory'], { hash: scanner.wantsHash, slabs: SHARED_SLABS });
    const eager = rule.trickle !== null && ctx.hints.has(hint);
    // A new object clamd will read from a file: the file is written as the body arrives, not after
    // (skipped when the cache has lately been answering, or the URL scanned clean before).
    if (!eager && size !== null && size <= ctx.config['spool-memory'] && scanner.engineLikely && scanner.prefersFiles(size)) {
      // The same bet: the hash is computed while the engine works (hashWhileScanning), not on the way in.
      await spool.startScanCopy({ hashLater: true }).catch(() => undefined);
    }
    // Sent on while arriving: from the received pieces, not read back from the spool's file.
    const feed = new SpoolFeed(spool, { queue: true, recentWindow: eager && rule.trickle ? rule.trickle['keep-back'] + EAGER_WINDOW : 0 });
    let tooBig: (v: Verdict) => void = () => undefined;
    const overLimit = new Promise<Verdict>((resolve) => (tooBig = resolve));
    const maxChecked = ctx.maxCheckedSize;
    const receiving = receive(upRes, feed, ctx.config.timeouts.body, (received) => {
      if (received > maxChecked) tooBig(skippedVerdict(`larger than max-checked-size (${maxChecked} bytes)`, received));
    });
    let verdict: Verdict | null = null;
    let decision: Decision | null = null;
    /** The engines are done (or were never asked): nothing left for the abort signal to stop. */
    let scanDone = false;
    const verdictP: Promise<Verdict> =
      size !== null && size > maxChecked
        ? Promise.resolve(skippedVerdict(`larger than max-checked-size (${maxChecked} bytes)`, size))
        : Promise.race([
            overLimit,
            feed.settled.then(() =>
              feed.failed
                ? new Promise<Verdict>(() => undefined)
                : this.scan(scanner, spool, target.url, m.name, encoding).finally(() => void (scanDone = true)),
            ),
          ]);
    const decided = verdictP.then((v) => {
      verdict = v;
      ctx.onVerdict(v);
      decision = decide(v, { acceptStatus: rule['accept-status'], blockStatus: BLOCK_STATUS });
      return decision.action;
    });
    let outcome: TrickleOutcome;
    try {
      let begin = head;
      let part: { start: number; end: number } | null = null;
      let params = rule.trickle;
      if (range) {
        if (size === null) {
          // No Content-Length: where the range lies is known only at the end. Nothing goes out
          // before the verdict, and the 206 head is built once the body is complete (or the
          // verdict blocked early, the body failed, the client left: handled as without range).
          params = null;
          const aborted = new Promise<void>((resolve) => (this.ac.signal.aborted ? resolve() : this.ac.signal.addEventListener('abort', () => resolve(), { once: true })));
          const blockedEarly = decided.then(
            (a) => (a === 'block' ? undefined : new Promise<void>(() => undefined)),
            () => undefined,
          );
          await Promise.race([feed.settled, blockedEarly, aborted]);
          if (feed.complete) {
            part = rangeWithin(range, feed.size);
            if (part === null) {
              // Nothing of the object goes out; the verdict is still awaited for the log.
              await decided.catch(() => undefined);
              this.rec.verdict = verdictLabel(verdict as Verdict | null);
              this.unsatisfiable(feed.size);
              return;
            }
          }
        } else part = rangeWithin(range, size);
        if (part) begin = this.partialHead(upRes, part.start, part.end, size ?? feed.size);
      }
      const sink: TrickleSink = { begin, write: (c) => writeTo(res, c), writeMany: (cs) => writeTo(res, cs) };
      outcome = await trickle({
        feed,
        decision: decided,
        params,
        totalSize: size,
        sink,
        signal: this.ac.signal,
        eager,
        ...(part ? { skip: part.start, end: part.end } : {}),
      });
      this.rec.bytes = outcome.sent;
      const v = verdict as Verdict | null;
      this.rec.verdict = verdictLabel(v);
      if (outcome.sent > 0 && outcome.kind !== 'passed') ctx.counters.trickled++;
      if (v && decision !== null && (decision as Decision).action === 'pass' && v.status === 'free' && feed.complete) ctx.hints.add(hint);
      else if (outcome.kind === 'blocked' || outcome.kind === 'aborted') ctx.hints.delete(hint);
      switch (outcome.kind) {
        case 'passed':
          // A range the body turned out too short for (cannot happen with a Content-Length node
          // enforces): the 206's length would be a lie, so the connection is cut.
          if (part && outcome.sent !== part.end - part.start) res.destroy();
          else res.end();
          break;
        case 'blocked':
        case 'aborted': {
          // Stop receiving what will never be sent; keep a complete object when asked to.
          if (!feed.complete) upRes.destroy();
          await receiving;
          if (v && feed.complete) await ctx.keep(v, spool, { url: target.url, rule: m.name, client: this.rec.client, upload: false });
          if (outcome.kind === 'blocked') {
            this.blockPage(v as Verdict, decision as unknown as Extract<Decision, { action: 'block' }>, target.url, m.name);
          } else {
            // Bytes already went out: cut the connection so the client never has the whole object.
            ctx.counters.aborted++;
            this.rec.verdict = `${verdictLabel(v)}/aborted`;
            ctx.log.info({ client: this.rec.client, url: target.url, rule: m.name, status: v?.status, reason: v ? verdictReason(v) : null, sent: outcome.sent }, 'http-proxy: blocked after trickling: connection aborted');
            // A reset, not a FIN: a body without a length (HTTP/1.0, close-delimited) would look
            // complete to the client after a plain close.
            cutConnection(res.socket);
            res.destroy();
          }
          break;
        }
        case 'failed':
          this.rec.verdict = v === null ? 'failed' : verdictLabel(v);
          ctx.log.warn({ url: target.url, err: messageOf(outcome.error), sent: outcome.sent }, 'http-proxy: transfer failed');
          upRes.destroy();
          if (outcome.sent === 0 && !res.headersSent) this.refuse(502, 'Bad gateway', `the transfer from the server failed: ${messageOf(outcome.error)}`);
          else res.destroy();
          break;
      }
    } finally {
      // Aborting builds a DOMException (a stack trace): only when a scan may still be running.
      if (!scanDone) this.ac.abort();
      if (!feed.complete) upRes.destroy();
      await receiving;
      // Not recycled: views of the slabs may still wait in the socket's write buffer.
      await spool.dispose();
    }
  }
}

/** The parent proxy to go through (`http-proxy.parent-proxy`), with its Proxy-Authorization value; null = none. */
export function parentProxy(cfg: HttpProxyConfig): { host: string; port: number; authorization: string | null } | null {
  if (cfg['parent-proxy'] === null) return null;
  const user = cfg['parent-proxy-user'];
  const authorization = user === null ? null : `Basic ${Buffer.from(`${user}:${cfg['parent-proxy-password'] ?? ''}`, 'utf8').toString('base64')}`;
  return { ...splitHostPort(cfg['parent-proxy']), authorization };
}

/** The 502 page's words for a parent proxy answering 407 (credentials missing or refused). */
export function parentAuthProblem(cfg: HttpProxyConfig): string {
  return cfg['parent-proxy-user'] === null
    ? `the parent proxy ${cfg['parent-proxy']} asks for credentials (407); set http-proxy.parent-proxy-user and parent-proxy-password`
    : `the parent proxy ${cfg['parent-proxy']} refused the credentials of http-proxy.parent-proxy-user (407)`;
}

/** The parent proxy answered CONNECT with 407: the message is the page's words as they are. */
export class ParentAuthError extends Error {}

/** What went wrong with the origin (or the parent proxy), in words for the 502/504 page. */
export function upstreamProblem(err: unknown, host: string, parent: string | null): string {
  const msg = messageOf(err);
  if (err instanceof ParentAuthError) return msg;
  const code = (err as NodeJS.ErrnoException | null)?.code ?? '';
  const who = parent === null ? 'the server' : `the parent proxy ${parent}`;
  if (/no response head/.test(msg)) return `${who} accepted the request but sent no answer in time (${msg})`;
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || /getaddrinfo/.test(msg)) return `the host name ${host} could not be resolved (${code || msg})`;
  if (code === 'ECONNREFUSED') return `${who} refused the connection (ECONNREFUSED)`;
  if (code === 'ETIMEDOUT' || /connect timeout/.test(msg)) return `${who} could not be reached in time (${code || msg})`;
  if (code.startsWith('HPE_') || /Parse Error/.test(msg)) return `${who} sent an answer the proxy does not take (${msg}): a malformed or too large response head`;
  if (code === 'ECONNRESET' || /socket hang up/.test(msg)) return `${who} closed the connection without an answer (${code || msg})`;
  return `${who} could not be reached: ${msg}`;
}
