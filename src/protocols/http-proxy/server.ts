import { Agent, createServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { resolve } from 'node:path';
import type { HttpProxyConfig } from '../../config/proxy-schema.js';
import { hostMatcher } from '../../config/smtp-schema.js';
import { messageOf } from '../../core/errors.js';
import type { Logger } from '../../core/logging.js';
import { connectWithTimeout } from '../../core/net.js';
import { SendStallWatch } from '../../core/send-stall.js';
import { sweepSpoolDir, type Spool } from '../../core/spool.js';
import type { Verdict, VerdictStatus } from '../../core/verdict.js';
import { loadTemplate } from '../../policy/block-page.js';
import { CleanHints } from '../../proxy/clean-hints.js';
import { DocAcl } from '../../proxy/doc-acl.js';
import { keepBlockedObject } from '../../quarantine/blocked.js';
import type { Quarantine } from '../../quarantine/types.js';
import type { ScanService } from '../../scan/types.js';
import { parseListen } from '../icap/server.js';
import { Exchange, ParentAuthError, parentAuthProblem, parentProxy, upstreamProblem, type AccessRecord, type ExchangeContext } from './exchange.js';
import { headerPairs, parseConnectTarget, requestHeadProblem } from './headers.js';
import { fileNameOf } from '../../formats/url-name.js';
import { AppendLog } from '../../core/append-log.js';
import { listenOn, type Listeners } from '../../core/listen.js';
import { CloseOnce, type Drain } from '../../core/drain.js';

export interface HttpProxyCounters {
  requests: number;
  byStatus: Record<string, number>;
  byVerdict: Record<VerdictStatus, number>;
  /** Body bytes sent to clients. */
  bytes: number;
  connections: number;
  tunnels: number;
  /** Malformed requests refused by the parser (400/408/431) before any handler. */
  badRequests: number;
  /** Trickled objects cut off because their verdict blocked. */
  aborted: number;
  /** Objects that had bytes trickled before their verdict. */
  trickled: number;
  uploadsBlocked: number;
  quarantined: number;
  /** Responses cut because the client stopped reading them (timeouts.send). */
  sendTimeouts: number;
}

export interface HttpProxyDeps {
  stateDir: string;
  scannerFor(engineIds: readonly string[] | null): { scanner: ScanService };
  /** scan.max-checked-size. */
  maxCheckedSize: number;
  log: Logger;
  quarantine?: Quarantine;
  /** serve's listening sockets, handed from one generation to the next on a reload. */
  listeners?: Listeners | null;
}

/** Reason phrases of the answers written on a raw socket. */
const RAW_REASON: Record<number, string> = { 400: 'Bad Request', 403: 'Forbidden', 408: 'Request Timeout', 431: 'Request Header Fields Too Large', 502: 'Bad Gateway', 504: 'Gateway Timeout' };

/** An answer written on the raw socket: the status and, as a text/plain body, why. */
function rawAnswer(status: number, why: string): string {
  const body = `${status} ${RAW_REASON[status] ?? 'Error'}: ${why.replace(/[^\x20-\x7e]/g, '?')}\n`;
  return `HTTP/1.1 ${status} ${RAW_REASON[status] ?? 'Error'}\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`;
}

/** Why node's parser refused a request, in words (the codes of llhttp and node:http). */
function parseProblem(code: string): string {
  if (code === 'HPE_HEADER_OVERFLOW') return 'the request head is larger than the proxy takes (max-header-size)';
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return 'the request head did not arrive in time (timeouts.header)';
  if (code === 'HPE_UNEXPECTED_CONTENT_LENGTH' || code === 'HPE_INVALID_TRANSFER_ENCODING') {
    return 'the request has Content-Length and Transfer-Encoding, or a Transfer-Encoding other than chunked: ambiguous framing is refused (request smuggling)';
  }
  if (code === 'HPE_INVALID_CONTENT_LENGTH') return 'the request has a malformed or repeated Content-Length: ambiguous framing is refused (request smuggling)';
  if (code === 'HPE_INVALID_CHUNK_SIZE') return 'a chunk size of the request body is malformed';
  return `the request could not be parsed (${code || 'malformed'}): malformed or ambiguous requests are refused`;
}

/**
 * The HTTP forward proxy: node:http parses (strict parser; our own checks on top, see headers.ts),
 * every request is an Exchange; CONNECT is tunnelled unscanned to the allowed ports. close() stops
 * accepting, lets running exchanges finish within the deadline, then cuts what is left.
 */
export class HttpProxyServer {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private readonly busy = new Set<Socket>();
  /** Per connection: the last exchange, resolving to whether the connection goes on after it. */
  private readonly pipeline = new WeakMap<Socket, Promise<boolean>>();
  private readonly tunnels = new Set<Duplex>();
  /** Connections already answered by clientError. */
  private readonly refused = new WeakSet<Duplex>();
  private readonly accessFile: AppendLog | null;
  private readonly agent: Agent;
  private readonly ctx: ExchangeContext;
  private readonly log: Logger;
  private readonly sends: SendStallWatch;
  readonly counters: HttpProxyCounters = {
    requests: 0,
    byStatus: {},
    byVerdict: { free: 0, found: 0, skipped: 0, unknown: 0, error: 0 },
    bytes: 0,
    connections: 0,
    tunnels: 0,
    badRequests: 0,
    aborted: 0,
    trickled: 0,
    uploadsBlocked: 0,
    quarantined: 0,
    sendTimeouts: 0,
  };

  constructor(
    private readonly config: HttpProxyConfig,
    private readonly deps: HttpProxyDeps,
  ) {
    this.log = deps.log.child({ component: 'http-proxy' });
    this.sends = new SendStallWatch(config.timeouts.send);
    const accessLog = deps.log.child({ component: 'http-access' });
    this.accessFile = config['access-log'] ? new AppendLog(resolve(deps.stateDir, config['access-log'])) : null;
    this.agent = new Agent({ keepAlive: true, maxSockets: config['max-connections'], maxFreeSockets: 64, timeout: config.timeouts.idle });
    const scanners = new Map<string, ScanService>();
    this.ctx = {
      config,
      clientAllowed: hostMatcher(config['allowed-clients']),
      acl: new DocAcl(config['doc-acl']),
      scannerFor: (ids) => {
        const key = ids === null ? '' : ids.join(',');
        let s = scanners.get(key);
        if (!s) scanners.set(key, (s = deps.scannerFor(ids).scanner));
        return s;
      },
      maxCheckedSize: deps.maxCheckedSize,
      spoolDir: resolve(deps.stateDir, config['spool-dir']),
      template: loadTemplate(config['block-page']),
      agent: this.agent,
      log: this.log,
      access: (r) => {
        this.counters.requests++;
        this.counters.byStatus[String(r.status)] = (this.counters.byStatus[String(r.status)] ?? 0) + 1;
        this.counters.bytes += r.bytes;
        this.writeAccess(r, accessLog);
      },
      onVerdict: (v) => void this.counters.byVerdict[v.status]++,
      keep: (v, spool, meta) => this.keep(v, spool, meta),
      counters: this.counters,
      hints: new CleanHints(),
      sends: this.sends,
    };
    // Every engine id a rule names must exist now, not at the first request.
    for (const r of config['doc-acl']) if (r.antivirus !== 'none') this.ctx.scannerFor(r.antivirus);
  }

  private writeAccess(r: AccessRecord, accessLog: Logger): void {
    const ms = Math.round(r.ms);
    if (this.accessFile) {
      this.accessFile.write(`${new Date().toISOString()} ${r.client} ${r.method} ${r.url.replace(/\s/g, '%20')} ${r.status} ${r.verdict} ${r.rule} ${r.bytes} ${ms}\n`);
    } else {
      accessLog.info({ client: r.client, method: r.method, url: r.url, status: r.status, verdict: r.verdict, rule: r.rule, bytes: r.bytes, ms }, 'http');
    }
  }

  /** A blocked object into the quarantine when its status is listed; a failure is logged, never changes the answer. */
  private async keep(v: Verdict, spool: Spool, meta: { url: string; rule: string; client: string; upload: boolean }): Promise<void> {
    const q = this.deps.quarantine;
    if (!q || !this.config.quarantine.includes(v.status)) return;
    const { url, rule, client } = meta;
    const action = meta.upload ? 'block-upload' : 'block';
    const id = await keepBlockedObject(q, spool, v, { source: 'http', group: rule, url, fileName: fileNameOf(url), action, client }, this.log, { rule });
    if (id !== null) this.counters.quarantined++;
  }

  /** Binds the listener; returns the bound port (useful with port 0). */
  async listen(): Promise<{ port: number }> {
    await sweepSpoolDir(this.ctx.spoolDir, this.log);
    const t = this.config.timeouts;
    const server = createServer(
      {
        maxHeaderSize: this.config['max-header-size'],
        headersTimeout: t.header,
        // How often node checks that timeout (default 30 s, far too coarse for a short header timeout).
        connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(t.header / 4))),
        // Whole requests may take long (large uploads); stalls are caught per body read instead.
        requestTimeout: 0,
        keepAliveTimeout: t.idle,
        insecureHTTPParser: false,
      },
      (req, res) => {
        const socket = req.socket;
        this.busy.add(socket);
        res.once('close', () => this.busy.delete(socket));
        // Pipelined requests run one after the other: one behind a request answered with
        // Connection: close (a block page, a 400) is never sent upstream, its answer would be lost.
        const before = this.pipeline.get(socket);
        const run = async (): Promise<boolean> => {
          if ((before !== undefined && !(await before)) || socket.destroyed) {
            res.destroy();
            return false;
          }
          await new Exchange(this.ctx, req, res).run();
          return res.shouldKeepAlive;
        };
        this.pipeline.set(socket, run().catch(() => false));
      },
    );
    // A client that shuts down its sending side after the request (`nc -N`, a script's
    // shutdown(SHUT_WR)) still waits for the answer. Without this node answers the client's FIN by
    // ending the connection's write side at once, so the exchange's answer could never be written:
    // its response closed and the fetch and scan were given up. With it the answer (and any
    // pipelined before it) goes out, then the connection is closed. A client that really left is
    // noticed at the next write (a trickled chunk, the answer): the reset makes the response close,
    // which aborts the upstream request and the scan; a reset the client sends is seen at once.
    (server as Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
    server.maxConnections = this.config['max-connections'];
    server.on('connection', (s: Socket) => {
      // A response head and a small body must not wait for the client's ACK (Nagle vs delayed ACK).
      s.setNoDelay(true);
      this.sockets.add(s);
      this.counters.connections++;
      s.on('error', () => undefined);
      s.once('close', () => this.sockets.delete(s));
    });
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.clientError(err, socket));
    server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => void this.tunnel(req, socket, head));
    this.server = server;
    const { host, port } = parseListen(this.config.listen);
    const bound = await listenOn(this.deps.listeners, server, host, port, 'http-proxy');
    this.log.info({ listen: `${host}:${bound}`, rules: this.config['doc-acl'].length }, 'http proxy listening');
    return { port: bound };
  }

  /**
   * A request the parser refused (smuggling shapes, bad syntax, oversized head, slow head): a bare
   * 400/431/408 and the connection closed. Never written into a response already under way.
   */
  private clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    // node may report more errors for the same connection (the rest of the bytes): answer once.
    if (this.refused.has(socket)) return;
    this.refused.add(socket);
    this.counters.badRequests++;
    const code = err.code ?? '';
    this.log.debug({ code, err: err.message }, 'http-proxy: malformed request');
    // The response of the request whose body failed to parse (bad chunk): answered here while
    // nothing of it went out yet, since node ends that request before its handler could.
    const inResponse = (socket as unknown as { _httpMessage?: { headersSent: boolean } | null })._httpMessage;
    if (code === 'ECONNRESET' || !socket.writable || inResponse?.headersSent === true) {
      socket.destroy();
      return;
    }
    const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    socket.end(rawAnswer(status, parseProblem(code)));
    // Lingering close: read and drop what the client still sends, so closing with unread bytes
    // does not turn into a reset that makes the client lose the answer.
    socket.on('data', () => undefined);
    socket.resume();
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  /** CONNECT: a byte tunnel to an allowed port (through the parent proxy when there is one). Not scanned. */
  private async tunnel(req: IncomingMessage, client: Duplex, head: Buffer): Promise<void> {
    const started = performance.now();
    const rec: AccessRecord = { client: req.socket.remoteAddress ?? '-', method: 'CONNECT', url: req.url ?? '-', status: 200, verdict: 'tunnel', rule: '-', bytes: 0, ms: 0 };
    const done = () => {
      rec.ms = performance.now() - started;
      this.ctx.access(rec);
    };
    client.on('error', () => undefined);
    const target = parseConnectTarget(req.url ?? '');
    const ports = this.config['connect-ports'];
    const refuse = (status: number, why: string) => {
      rec.status = status;
      rec.verdict = '-'; // no tunnel was made
      client.end(rawAnswer(status, why));
      done();
    };
    if (!this.ctx.clientAllowed(rec.client)) return refuse(403, 'this client may not use the proxy');
    if (!target) return refuse(400, 'a CONNECT target is host:port');
    const headProblem = requestHeadProblem(headerPairs(req.rawHeaders));
    if (headProblem) return refuse(400, headProblem);
    if (ports.length > 0 && !ports.includes(target.port)) return refuse(403, `tunnels go only to the ports in connect-ports (${ports.join(', ')})`);
    const parent = parentProxy(this.config);
    let upstream: Duplex;
    try {
      upstream = await connectWithTimeout(parent ? { host: parent.host, port: parent.port } : target, {
        timeoutMs: this.config.timeouts.upstream,
        label: `${target.host}:${target.port}`,
      });
      if (parent) await this.parentConnect(upstream, `${req.url}`, parent.authorization);
    } catch (err) {
      this.log.warn({ client: rec.client, target: req.url, err: messageOf(err) }, 'http-proxy: tunnel target not reachable');
      return refuse(502, upstreamProblem(err, target.host, this.config['parent-proxy']));
    }
    if (client.destroyed) {
      upstream.destroy();
      return done();
    }
    this.counters.tunnels++;
    this.tunnels.add(client);
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    const idle = this.config.timeouts.body;
    (upstream as Socket).setTimeout(idle, () => (upstream.destroy(), client.destroy()));
    client.write(`HTTP/1.1 200 Connection established\r\nVia: 1.1 ${this.config.via}\r\n\r\n`);
    if (head.length > 0) upstream.write(head);
    let bytes = 0;
    upstream.on('data', (c: Buffer) => void (bytes += c.length));
    upstream.pipe(client);
    client.pipe(upstream);
    await new Promise<void>((ok) => {
      let closed = 0;
      const one = () => {
        if (++closed === 2) ok();
      };
      client.once('close', () => (upstream.destroy(), one()));
      upstream.once('close', () => (client.destroy(), one()));
    });
    this.tunnels.delete(client);
    rec.bytes = bytes;
    done();
  }

  /** Asks the parent proxy for a tunnel; resolves once it answered 2xx. */
  private parentConnect(s: Duplex, authority: string, authorization: string | null): Promise<void> {
    return new Promise((ok, fail) => {
      let buf = Buffer.alloc(0);
      const max = this.config['max-header-size'];
      const timer = setTimeout(() => finish(new Error('parent proxy did not answer CONNECT')), this.config.timeouts.upstream);
      const finish = (err: Error | null) => {
        clearTimeout(timer);
        s.off('data', onData);
        s.off('error', onErr);
        if (err) {
          s.destroy();
          fail(err);
        } else ok();
      };
      const onErr = (e: Error) => finish(e);
      const onData = (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (buf.length > max) finish(new Error('parent proxy head too large'));
          return;
        }
        const status = /^HTTP\/1\.[01] (\d{3})/.exec(buf.toString('latin1', 0, end));
        if (status?.[1] === '407') return finish(new ParentAuthError(parentAuthProblem(this.config)));
        if (!status || !(status[1] as string).startsWith('2')) return finish(new Error(`parent proxy refused CONNECT: ${buf.toString('latin1', 0, Math.min(end, 80))}`));
        const rest = buf.subarray(end + 4);
        finish(null);
        if (rest.length > 0) s.unshift(rest);
      };
      s.on('data', onData);
      s.on('error', onErr);
      const auth = authorization === null ? '' : `Proxy-Authorization: ${authorization}\r\n`;
      s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${auth}Via: 1.1 ${this.config.via}\r\n\r\n`);
    });
  }

  get openConnections(): number {
    return this.sockets.size;
  }

  /**
   * Graceful close within `deadlineMs`; called again, it hurries the running close (Drain).
   * CONNECT tunnels are cut at once (a stop), or with `keepTunnels` (a reload's old generation)
   * go on like requests under way until the deadline.
   */
  close(deadlineMs = 5000, opts: { keepTunnels?: boolean } = {}): Promise<void> {
    return this.closeOnce.close(deadlineMs, (drain) => this.closeNow(drain, opts.keepTunnels === true));
  }

  private readonly closeOnce = new CloseOnce();

  private async closeNow(drain: Drain, keepTunnels: boolean): Promise<void> {
    const server = this.server;
    // close() resolves once every connection ended; idle keep-alive ones end now, busy ones get until the deadline.
    const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
    const cutTunnels = () => {
      for (const t of this.tunnels) t.destroy();
    };
    if (!keepTunnels) cutTunnels();
    await drain.wait(
      () => this.busy.size === 0 && (!keepTunnels || this.tunnels.size === 0),
      () => {
        // A stop during the drain: tunnels are cut at once, as at any stop.
        if (keepTunnels && drain.hurried) cutTunnels();
        server?.closeIdleConnections();
      },
    );
    for (const s of this.sockets) s.destroy();
    await closed;
    this.sends.stop();
    this.agent.destroy();
    await this.accessFile?.close();
  }
}
