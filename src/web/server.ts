import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { hostname as osHostname } from 'node:os';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { stringify } from 'yaml';
import type { ConsoleConfig } from '../config/console-schema.js';
import { shownConfig } from '../config/mask.js';
import type { Config } from '../config/schema.js';
import { AvgateError, errorCodeOf, messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import type { EngineHealth } from '../engines/health.js';
import { parseListen } from '../protocols/icap/server.js';
import { NextHopClient, nextHopOptions } from '../protocols/smtp/next-hop.js';
import type { NextHop } from '../protocols/smtp/types.js';
import { exportZip } from '../quarantine/export.js';
import { releaseItem } from '../quarantine/release.js';
import { QUARANTINE_SOURCES, type Quarantine, type QuarantineFilter } from '../quarantine/types.js';
import type { ScannerEngine } from '../scan/scanner.js';
import type { ScanService } from '../scan/types.js';
import type { StatsReader } from '../stats/types.js';
import { MAIL_STATUSES } from '../policy/mail/status.js';
import { bearer, handleScan } from './api.js';
import { LoginLimiter, PasswordStore, safeEqual, SessionTable, TokenStore, type Session } from './auth.js';
import { CONSOLE_CSS, type PageContext } from './html.js';
import {
  BodyStallWatch,
  clientAddress,
  cookie,
  HttpError,
  hostAllowed,
  match,
  parseCookies,
  pathSegments,
  queryOf,
  readForm,
  redirect,
  sameOrigin,
  securityHeaders,
  sendHtml,
  sendJson,
  sendText,
  type Route,
} from './http.js';
import { configPage, errorPage, loginPage, MAIL_SOURCES, overviewPage, quarantineItemPage, quarantineListPage, signaturesPage } from './pages.js';
import { periodName, statsFigures, type StatsFigures } from './stats-view.js';
import { listSignatures } from './signatures.js';
import { readUpdaterState, signatureMetrics, signaturesStateDir } from '../signatures/index.js';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { readPem } from '../config/tls-schema.js';
import { cachePrometheus } from '../cache/metrics.js';
import { buildInfoPrometheus, enginePrometheus, frontEndPrometheus, type FrontEndSnapshot } from './runtime-metrics.js';
import { VERSION } from '../core/version.js';
import { statsNodeName } from '../config/stats-schema.js';
import type { CacheStats } from '../cache/verdict-cache.js';
import { cutConnection, SendStallWatch } from '../core/send-stall.js';
import { metricFamily } from '../core/prometheus-text.js';
import { sweepSpoolDir } from '../core/spool.js';

/**
 * The web console: dashboard, quarantine browser, signatures and configuration pages, the
 * scanning API, /metrics and /healthz on one node:http listener. Everything it shows or changes
 * comes from injected services, so tests run it without the rest of `serve`.
 */
export interface ConsoleDeps {
  config: Readonly<Config>;
  /** Where the config came from, for the configuration page. */
  configSource: string;
  scanner: ScanService;
  engines: readonly ScannerEngine[];
  health: EngineHealth;
  quarantine: Quarantine | null;
  stats: StatsReader | null;
  /** Default: a NextHopClient for smtp.next-hop, created on the first release. */
  nextHop?: NextHop;
  /** Warnings of the config check. */
  configWarnings?: string[];
  /** The verdict cache, whose counters /metrics adds (null or absent: none). */
  cache?: { readonly stats: CacheStats } | null;
  /** serve's configuration reloads, for /metrics (absent: not shown). */
  reloads?: () => ReloadStatus;
  /** serve's running front ends' counters and connections, for /metrics (absent: not shown). */
  frontEnds?: () => FrontEndSnapshot;
  log: Logger;
}

const SESSION_COOKIE = 'avgate_session';
const LOGIN_COOKIE = 'avgate_login';
const ITEM_ID = /^[0-9a-z]{20,64}$/;
const ENGINE_ID = /^[a-z][a-z0-9_-]{0,31}$/;
const PAGE_SIZE = 50;
/** Statuses an item can carry: the mail statuses and the scanner's verdicts (found for ICAP and files). */
const STATUSES = [...new Set<string>([...MAIL_STATUSES.filter((x) => x !== 'clean'), 'found'])];
const SIGNATURE_PAGE = 200;

interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  url: string;
  session: Session | null;
}

export class ConsoleServer {
  private server: Server | null = null;
  private readonly cfg: ConsoleConfig;
  private readonly tls: { cert: Buffer; key: Buffer } | null;
  readonly passwords: PasswordStore;
  readonly tokens: TokenStore;
  readonly sessions: SessionTable;
  private readonly limiter: LoginLimiter;
  private readonly bodies: BodyStallWatch;
  private readonly sends: SendStallWatch;
  /** When a refused connection (console.max-connections) was last logged: at most one line a minute. */
  private dropLoggedAt = 0;
  /** Names accepted in Host besides IP literals (hostAllowed): localhost, listen's host, allowed-hosts. */
  private readonly hostNames: ReadonlySet<string>;
  /** When a request for another Host was last logged: at most one line a minute. */
  private hostLoggedAt = 0;
  /** Set by a stop during its stop-delay: /healthz answers 503 `stopping`. */
  stopping = false;
  private readonly routes: Route<Ctx>[];
  private readonly log: Logger;
  private nextHop: NextHop | null;
  private ownsNextHop = false;
  readonly counters = { requests: 0, logins: 0, loginFailures: 0, apiScans: 0, bodyTimeouts: 0, sendTimeouts: 0, droppedConnections: 0, wrongHost: 0 };

  constructor(private deps: ConsoleDeps) {
    this.cfg = deps.config.console;
    const stateDir = resolve(deps.config['state-dir']);
    this.passwords = new PasswordStore(resolve(stateDir, this.cfg['password-file']));
    this.tokens = new TokenStore(resolve(stateDir, this.cfg['tokens-file']));
    this.sessions = new SessionTable(this.cfg['session-idle-timeout'], this.cfg['session-max-age']);
    this.limiter = new LoginLimiter(this.cfg['login-max-failures'], this.cfg['login-window']);
    this.bodies = new BodyStallWatch(this.cfg.timeouts.body);
    this.sends = new SendStallWatch(this.cfg.timeouts.send);
    this.tls = this.cfg.tls ? { cert: readPem(this.cfg.tls.cert, 'console.tls.cert'), key: readPem(this.cfg.tls.key, 'console.tls.key') } : null;
    this.log = deps.log.child({ component: 'console' });
    this.nextHop = deps.nextHop ?? null;
    this.hostNames = new Set(['localhost', parseListen(this.cfg.listen).host, ...this.cfg['allowed-hosts']].map((h) => h.toLowerCase()));
    const id = { id: ITEM_ID };
    this.routes = [
      { method: 'GET', path: '/healthz', handler: (c) => this.healthz(c) },
      { method: 'GET', path: '/metrics', handler: (c) => this.metrics(c) },
      { method: 'GET', path: '/static/console.css', handler: (c) => this.css(c) },
      { method: 'POST', path: '/api/v1/scan', handler: (c) => this.apiScan(c) },
      { method: 'GET', path: '/api/v1/stats', handler: (c) => this.apiStats(c) },
      { method: 'GET', path: '/api/v1/quarantine', handler: (c) => this.apiQuarantineList(c) },
      { method: 'GET', path: '/api/v1/quarantine/:id', params: id, handler: (c, p) => this.apiQuarantineItem(c, p.id as string) },
      { method: 'POST', path: '/api/v1/quarantine/:id/release', params: id, handler: (c, p) => this.apiQuarantineRelease(c, p.id as string) },
      { method: 'DELETE', path: '/api/v1/quarantine/:id', params: id, handler: (c, p) => this.apiQuarantineDelete(c, p.id as string) },
      { method: 'GET', path: '/login', handler: (c) => this.loginForm(c) },
      { method: 'POST', path: '/login', handler: (c) => this.login(c) },
      { method: 'POST', path: '/logout', handler: (c) => this.logout(c) },
      { method: 'GET', path: '/', handler: (c) => this.overview(c) },
      { method: 'GET', path: '/quarantine', handler: (c) => this.quarantineList(c) },
      { method: 'GET', path: '/quarantine/:id', params: id, handler: (c, p) => this.quarantineItem(c, p.id as string) },
      { method: 'GET', path: '/quarantine/:id/export.zip', params: id, handler: (c, p) => this.quarantineExport(c, p.id as string) },
      { method: 'POST', path: '/quarantine/:id/release', params: id, handler: (c, p) => this.quarantineRelease(c, p.id as string) },
      { method: 'POST', path: '/quarantine/:id/delete', params: id, handler: (c, p) => this.quarantineDelete(c, p.id as string) },
      { method: 'GET', path: '/signatures', handler: (c) => this.signatures(c) },
      { method: 'GET', path: '/config', handler: (c) => this.configShow(c) },
    ];
  }

  get secure(): boolean {
    return this.tls !== null;
  }

  async listen(): Promise<{ port: number }> {
    await sweepSpoolDir(join(resolve(this.deps.config['state-dir']), 'spool', 'api'), this.log);
    const { host, port } = parseListen(this.cfg.listen);
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.handle(req, res);
    const t = this.cfg.timeouts;
    const options = {
      // A head that does not arrive in time gets node's own 408 and the connection is closed.
      headersTimeout: t.header,
      // How often node looks at that timeout (its default, 30 s, is coarser than a short timeout).
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(t.header / 4))),
      // Uploads to the scanning API may take long as a whole; a body that stalls is caught by
      // BodyStallWatch (timeouts.body), and the scan has its own timeout.
      requestTimeout: 0,
      keepAliveTimeout: t.idle,
    };
    const server = this.tls ? createHttpsServer({ ...options, cert: this.tls.cert, key: this.tls.key }, handler) : createHttpServer(options, handler);
    server.maxHeadersCount = 100;
    // Past this node closes each new connection at once; requests in flight keep theirs.
    server.maxConnections = this.cfg['max-connections'];
    server.on('drop', (info?: { remoteAddress?: string }) => this.dropped(info?.remoteAddress));
    this.server = server;
    await new Promise<void>((ok, fail) => {
      server.once('error', (err) => fail(new AvgateError('AVG_ERR_CONFIG', `console listen ${host}:${port}: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
      server.listen(port, host, () => ok());
    });
    const a = server.address();
    const bound = a && typeof a === 'object' ? a.port : port;
    this.log.info({ listen: `${host}:${bound}`, tls: this.secure }, 'console listening');
    return { port: bound };
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    this.bodies.stop();
    this.sends.stop();
    if (s) {
      await new Promise<void>((ok) => {
        s.close(() => ok());
        s.closeIdleConnections();
        setTimeout(() => s.closeAllConnections(), 2000).unref();
      });
    }
    if (this.ownsNextHop && this.nextHop) await (this.nextHop as NextHopClient).close();
  }

  private dropped(client: string | undefined): void {
    this.counters.droppedConnections++;
    const t = Date.now();
    if (t - this.dropLoggedAt < 60_000) return;
    this.dropLoggedAt = t;
    this.log.warn({ client, max: this.cfg['max-connections'], dropped: this.counters.droppedConnections }, 'console at max-connections: new connections are closed');
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.counters.requests++;
    const url = req.url ?? '/';
    const ctx: Ctx = { req, res, url, session: null };
    this.bodies.watch(req, () => this.bodyStalled(ctx));
    // Every response, pages as well as downloads: one larger than the socket buffers is held by a
    // client that stops reading.
    this.sends.watch(res, () => this.sendStalled(ctx));
    // Before anything else, /healthz and /metrics too: a page that rebound its name to our
    // address must not read a byte or try a login.
    if (!hostAllowed(req.headers.host, this.hostNames)) return this.wrongHost(ctx);
    try {
      const segments = pathSegments(url);
      const found = segments === null ? null : match(this.routes, req.method ?? 'GET', segments);
      if (found === null) throw new HttpError(404, 'not found');
      if (found === 'method') throw new HttpError(405, 'method not allowed');
      ctx.session = await this.currentSession(req);
      await found.route.handler(ctx, found.params);
    } catch (err) {
      this.fail(ctx, err);
    }
  }

  /**
   * A Host that is not ours (DNS rebinding, or a reverse proxy's name missing from
   * console.allowed-hosts): 421 with no content, and the connection is closed.
   */
  private wrongHost(ctx: Ctx): void {
    this.counters.wrongHost++;
    const t = Date.now();
    if (t - this.hostLoggedAt >= 60_000) {
      this.hostLoggedAt = t;
      this.log.warn({ client: clientAddress(ctx.req), host: String(ctx.req.headers.host).slice(0, 100), refused: this.counters.wrongHost }, 'console: a request for a Host not in console.allowed-hosts refused (421)');
    }
    const socket = connectionOf(ctx);
    // The body is not read: close, so it is not taken for the next request.
    if (!ctx.req.complete) ctx.res.once('finish', () => setTimeout(() => socket?.destroy(), 1000).unref());
    securityHeaders(ctx.res, { page: true });
    ctx.res.writeHead(421, { 'Content-Length': 0, Connection: 'close' });
    ctx.res.end();
  }

  /**
   * The request's live session, or null. A session whose user's password changed or who was
   * removed since the login (`avgate admin passwd`) ends here, at once.
   */
  private async currentSession(req: IncomingMessage): Promise<Session | null> {
    const s = this.sessions.get(parseCookies(req.headers.cookie).get(SESSION_COOKIE));
    if (!s) return null;
    if ((await this.passwords.version(s.user)) === s.passwordVersion) return s;
    this.sessions.destroy(s.id);
    this.log.info({ user: s.user }, 'console session ended: the password changed or the user was removed');
    return null;
  }

  /**
   * The body stopped arriving (console.timeouts.body): 408 and close when nothing was answered yet,
   * else the connection is cut. The handler still waiting for the body then sees the connection end.
   */
  private bodyStalled(ctx: Ctx): void {
    this.counters.bodyTimeouts++;
    this.log.info({ client: clientAddress(ctx.req), url: ctx.url, timeout: this.cfg.timeouts.body }, 'console request body stalled; closing');
    if (ctx.res.headersSent) connectionOf(ctx)?.destroy();
    else this.fail(ctx, new HttpError(408, 'the request body stopped arriving'));
  }

  /**
   * The client stopped taking the response (console.timeouts.send): the connection is cut, which
   * frees what was buffered for it; a handler still streaming (an export) sees the connection end.
   */
  private sendStalled(ctx: Ctx): void {
    this.counters.sendTimeouts++;
    const socket = connectionOf(ctx);
    this.log.warn(
      { client: (ctx.req.socket as Socket | null) ? clientAddress(ctx.req) : socket?.remoteAddress, path: ctx.url.split('?')[0], timeout: this.cfg.timeouts.send, unsent: ctx.res.writableLength },
      'console client stopped reading the response; closing',
    );
    cutConnection(socket);
    ctx.res.destroy();
  }

  private fail(ctx: Ctx, err: unknown): void {
    const { req, res } = ctx;
    const status = err instanceof HttpError ? err.status : 500;
    const message = err instanceof HttpError ? err.message : 'internal error';
    // A request whose body read was given up (its iterator left early) no longer points at its
    // socket; the response does until it is done.
    const socket = connectionOf(ctx);
    if (!(err instanceof HttpError)) {
      // A client that closes or resets its connection mid-request is normal traffic, not a fault.
      if (clientWentAway(socket, err)) this.log.debug({ err: messageOf(err), url: ctx.url }, 'console client went away');
      else this.log.error({ err: messageOf(err), url: ctx.url }, 'console request failed');
    }
    if (res.headersSent || socket?.destroyed === true) {
      res.destroy();
      return;
    }
    const headers = err instanceof HttpError ? { ...err.headers } : {};
    if (status === 413 || !req.complete) {
      // The rest of the body is not read: say so and close, so it is not taken for the next request.
      headers.Connection = 'close';
      res.once('finish', () => setTimeout(() => socket?.destroy(), 1000).unref());
    }
    const wantsJson = ctx.url.startsWith('/api/') || ctx.url.startsWith('/metrics') || ctx.url.startsWith('/healthz');
    if (wantsJson) sendJson(res, status, { status: 'error', reason: message }, headers);
    else sendHtml(res, status, errorPage(this.page(ctx, `${status}`), status, message), headers);
  }

  private page(ctx: Ctx, title: string): PageContext {
    return { title, user: ctx.session?.user ?? null, csrf: ctx.session?.csrf ?? null };
  }

  /** Pages need a session; without one the browser goes to the login form. */
  private requireSession(ctx: Ctx): Session | null {
    if (ctx.session) return ctx.session;
    redirect(ctx.res, '/login');
    return null;
  }

  /** Every state-changing request: same origin, and the session's CSRF token in the form. */
  private async checkedForm(ctx: Ctx, expectedCsrf: string | undefined): Promise<URLSearchParams> {
    if (!sameOrigin(ctx.req, this.secure)) throw new HttpError(403, 'cross-origin request refused');
    const form = await readForm(ctx.req);
    const sent = form.get('_csrf') ?? '';
    if (!expectedCsrf || !safeEqual(sent, expectedCsrf)) throw new HttpError(403, 'missing or wrong CSRF token');
    return form;
  }

  private engineInfo = (id: string): string => this.deps.engines.find((e) => e.id === id)?.engine.info().name ?? '';

  // --- unauthenticated -------------------------------------------------------------------------

  private async css(ctx: Ctx): Promise<void> {
    securityHeaders(ctx.res, { page: false });
    ctx.res.writeHead(200, { 'Content-Type': 'text/css; charset=utf-8', 'Cache-Control': 'max-age=3600' });
    ctx.res.end(CONSOLE_CSS);
  }

  private async healthz(ctx: Ctx): Promise<void> {
    const engines = this.deps.health.snapshot().map((h) => ({ id: h.id, healthy: h.healthy }));
    const down = engines.some((e) => e.healthy === false);
    const status = this.stopping ? 'stopping' : down ? 'degraded' : 'ok';
    sendJson(ctx.res, status === 'ok' ? 200 : 503, { status, engines });
  }

  private async metrics(ctx: Ctx): Promise<void> {
    if (this.cfg['metrics-token-required']) await bearer(ctx.req, this.tokens, 'read');
    const stats = this.deps.stats;
    const text = (stats ? await stats.prometheus() : '# avgate: statistics are not collected\n') + (await signatureMetrics(this.deps.config));
    const cache = this.deps.cache ? cachePrometheus(this.deps.cache.stats) : '';
    const reloads = this.deps.reloads ? reloadPrometheus(this.deps.reloads()) : '';
    const frontEnds = this.deps.frontEnds ? frontEndPrometheus(this.deps.frontEnds()) : '';
    const engines = enginePrometheus(this.deps.health.snapshot());
    const build = buildInfoPrometheus(VERSION, statsNodeName(this.deps.config.stats));
    sendText(ctx.res, 200, text + cache + reloads + frontEnds + engines + build, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
  }

  private async apiScan(ctx: Ctx): Promise<void> {
    this.counters.apiScans++;
    await handleScan(ctx.req, ctx.res, {
      scanner: this.deps.scanner,
      tokens: this.tokens,
      maxUploadSize: this.cfg['max-upload-size'],
      spoolDir: join(resolve(this.deps.config['state-dir']), 'spool', 'api'),
      spoolMemory: 8 * 1024 * 1024,
      log: this.log,
    });
  }

  private async loginForm(ctx: Ctx, status = 200, error?: string, user?: string): Promise<void> {
    if (ctx.session && status === 200) return redirect(ctx.res, '/');
    // Login CSRF: the form carries a token that must match a cookie set with it.
    const token = randomBytes(24).toString('base64url');
    sendHtml(ctx.res, status, loginPage({ csrf: token, ...(error ? { error } : {}), ...(user ? { user } : {}) }), {
      'Set-Cookie': cookie(LOGIN_COOKIE, token, { secure: this.secure, maxAgeSec: 3600 }),
    });
  }

  private tooManyLogins(ip: string): HttpError {
    return new HttpError(429, 'too many failed logins; try again later', { 'Retry-After': String(this.limiter.retryAfter(ip)) });
  }

  private async login(ctx: Ctx): Promise<void> {
    const ip = clientAddress(ctx.req);
    // Already over the limit: refused before the body is read.
    if (this.limiter.retryAfter(ip) > 0) throw this.tooManyLogins(ip);
    const form = await this.checkedForm(ctx, parseCookies(ctx.req.headers.cookie).get(LOGIN_COOKIE));
    const user = (form.get('user') ?? '').slice(0, 64);
    const password = (form.get('password') ?? '').slice(0, 1024);
    // The limit is checked again and a try taken with no await in between, so parallel logins
    // cannot all pass the check while the first scrypt runs: checks in flight count as failures.
    const attempt = this.limiter.begin(ip);
    if (!attempt) throw this.tooManyLogins(ip);
    let version: string | null;
    try {
      version = await this.passwords.authenticate(user, password);
    } catch (err) {
      attempt.release(); // the password file could not be read: not the client's failure
      throw err;
    }
    if (version === null) {
      attempt.failed();
      this.counters.loginFailures++;
      this.log.warn({ client: ip }, 'console login failed');
      // One message for an unknown user and a wrong password.
      return this.loginForm(ctx, 401, 'wrong user name or password', user);
    }
    attempt.succeeded();
    this.counters.logins++;
    const old = parseCookies(ctx.req.headers.cookie).get(SESSION_COOKIE);
    if (old) this.sessions.destroy(old); // a fresh id at login (session fixation)
    const s = this.sessions.create(user, version);
    this.log.info({ client: ip, user }, 'console login');
    redirect(ctx.res, '/', {
      'Set-Cookie': [
        cookie(SESSION_COOKIE, s.id, { secure: this.secure }),
        cookie(LOGIN_COOKIE, '', { secure: this.secure, maxAgeSec: 0 }),
      ],
    });
  }

  private async logout(ctx: Ctx): Promise<void> {
    await this.checkedForm(ctx, ctx.session?.csrf);
    if (ctx.session) this.sessions.destroy(ctx.session.id);
    redirect(ctx.res, '/login', { 'Set-Cookie': cookie(SESSION_COOKIE, '', { secure: this.secure, maxAgeSec: 0 }) });
  }

  // --- pages -----------------------------------------------------------------------------------

  private async overview(ctx: Ctx): Promise<void> {
    if (!this.requireSession(ctx)) return;
    const period = periodName(queryOf(ctx.url).get('period'));
    const q = this.deps.quarantine ? await this.deps.quarantine.usage() : null;
    let stats: StatsFigures | null = null;
    let statsError: string | undefined;
    try {
      stats = this.deps.stats ? await statsFigures(this.deps.stats, period, Date.now()) : null;
    } catch (err) {
      // The statistics database is down or too slow: the rest of the page still answers.
      statsError = messageOf(err);
      this.log.debug({ err: statsError }, 'console: statistics could not be read');
    }
    sendHtml(
      ctx.res,
      200,
      overviewPage(this.page(ctx, 'Overview'), {
        period,
        stats,
        ...(statsError !== undefined ? { statsError } : {}),
        health: this.deps.health.snapshot(),
        engineInfo: this.engineInfo,
        quarantine: q ? { items: q.items, bytes: q.bytes } : null,
      }),
    );
  }

  private requireQuarantine(): Quarantine {
    if (!this.deps.quarantine) throw new HttpError(404, 'no quarantine is configured');
    return this.deps.quarantine;
  }

  private async quarantineList(ctx: Ctx): Promise<void> {
    if (!this.requireSession(ctx)) return;
    const q = this.requireQuarantine();
    const query = queryOf(ctx.url);
    const { filter, error, form } = quarantineFilterOf(query);
    const { status, source, text, since: sinceText } = form;
    const page = Math.min(100_000, Math.max(1, Number.parseInt(query.get('page') ?? '1', 10) || 1));
    const [records, total] = error ? [[], 0] : await Promise.all([q.list({ ...filter, limit: PAGE_SIZE, offset: (page - 1) * PAGE_SIZE }), q.count(filter)]);
    sendHtml(
      ctx.res,
      200,
      quarantineListPage(this.page(ctx, 'Quarantine'), {
        records,
        total,
        page,
        pageSize: PAGE_SIZE,
        filter: { status, source, text, since: sinceText },
        statuses: STATUSES,
        sources: QUARANTINE_SOURCES,
        ...(error ? { error } : {}),
      }),
    );
  }

  private async itemPage(ctx: Ctx, id: string, notice?: { ok: boolean; text: string }, status = 200): Promise<void> {
    const q = this.requireQuarantine();
    const item = await q.get(id);
    if (!item) throw new HttpError(404, 'no such quarantine item');
    const isMail = MAIL_SOURCES.has(item.record.source);
    const headers = isMail ? await headerBlock(item.open()) : null;
    sendHtml(
      ctx.res,
      status,
      quarantineItemPage(this.page(ctx, 'Quarantine item'), { record: item.record, headers, audit: await q.auditTrail(id), canRelease: isMail, ...(notice ? { notice } : {}) }),
    );
  }

  private async quarantineItem(ctx: Ctx, id: string): Promise<void> {
    if (!this.requireSession(ctx)) return;
    await this.itemPage(ctx, id);
  }

  private async quarantineExport(ctx: Ctx, id: string): Promise<void> {
    const s = this.requireSession(ctx);
    if (!s) return;
    const q = this.requireQuarantine();
    const item = await q.get(id);
    if (!item) throw new HttpError(404, 'no such quarantine item');
    await q.audit({ itemId: id, action: 'export', actor: `web:${s.user}`, detail: { format: 'zip' } });
    securityHeaders(ctx.res, { page: true });
    ctx.res.writeHead(200, { 'Content-Type': 'application/zip', 'Content-Disposition': `attachment; filename="${id}.zip"` });
    await pipeline(exportZip(item, this.deps.config.quarantine['export-password']), ctx.res);
  }

  // ------------------------------------------------------------ JSON API (bearer token; no cookies, so no CSRF)

  /** The overview's figures as JSON: `?period=24h|7d|30d`; cluster-wide with PostgreSQL, with the node table. */
  private async apiStats(ctx: Ctx): Promise<void> {
    await bearer(ctx.req, this.tokens, 'read');
    if (!this.deps.stats) throw new HttpError(404, 'statistics are not collected');
    const p = queryOf(ctx.url).get('period');
    if (p !== null && periodName(p) !== p) throw new HttpError(400, 'period must be 24h, 7d or 30d');
    let figures: StatsFigures;
    try {
      figures = await statsFigures(this.deps.stats, periodName(p), Date.now());
    } catch (err) {
      throw new HttpError(503, `statistics are unavailable: ${messageOf(err)}`);
    }
    sendJson(ctx.res, 200, figures);
  }

  private async apiQuarantineList(ctx: Ctx): Promise<void> {
    await bearer(ctx.req, this.tokens, 'read');
    const q = this.requireQuarantine();
    const query = queryOf(ctx.url);
    const { filter, error } = quarantineFilterOf(query);
    if (error) throw new HttpError(400, error);
    const limit = Math.min(1000, Math.max(1, Number.parseInt(query.get('limit') ?? '100', 10) || 100));
    const offset = Math.min(10_000_000, Math.max(0, Number.parseInt(query.get('offset') ?? '0', 10) || 0));
    const [items, total] = await Promise.all([q.list({ ...filter, limit, offset }), q.count(filter)]);
    sendJson(ctx.res, 200, { total, limit, offset, items });
  }

  private async apiQuarantineItem(ctx: Ctx, id: string): Promise<void> {
    await bearer(ctx.req, this.tokens, 'read');
    const q = this.requireQuarantine();
    const item = await q.get(id);
    if (!item) throw new HttpError(404, 'no such quarantine item');
    const headers = MAIL_SOURCES.has(item.record.source) ? await headerBlock(item.open()) : null;
    sendJson(ctx.res, 200, { record: item.record, headers, audit: await q.auditTrail(id) });
  }

  /** Body: nothing, or JSON `{"to": ["addr", ...]}` (at most 64 KiB); the original recipients otherwise. */
  private async apiQuarantineRelease(ctx: Ctx, id: string): Promise<void> {
    const who = await bearer(ctx.req, this.tokens, 'quarantine');
    const q = this.requireQuarantine();
    const body = await readBody(ctx.req, 64 * 1024);
    let to: string[] | undefined;
    if (body.length > 0) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch {
        throw new HttpError(400, 'the body is not JSON');
      }
      const list = (parsed as { to?: unknown } | null)?.to;
      if (list !== undefined && (!Array.isArray(list) || list.length > 100 || !list.every((a) => typeof a === 'string'))) {
        throw new HttpError(400, '"to" must be a list of at most 100 addresses');
      }
      to = list as string[] | undefined;
    }
    if (!(await q.get(id))) throw new HttpError(404, 'no such quarantine item');
    try {
      const r = await releaseItem(q, id, { ...(to ? { to } : {}), nextHop: this.releaseHop(), actor: `api:${who}` });
      this.log.info({ item: id, token: who, recipients: r.recipients, ok: r.ok }, 'quarantine item released');
      sendJson(ctx.res, r.ok ? 200 : 502, { ok: r.ok, recipients: r.recipients, replies: r.replies });
    } catch (err) {
      if (errorCodeOf(err) === 'AVG_ERR_BAD_ADDRESS' || errorCodeOf(err) === 'AVG_ERR_QUARANTINE') throw new HttpError(400, messageOf(err));
      throw err;
    }
  }

  private async apiQuarantineDelete(ctx: Ctx, id: string): Promise<void> {
    const who = await bearer(ctx.req, this.tokens, 'quarantine');
    if (!(await this.requireQuarantine().remove(id, `api:${who}`))) throw new HttpError(404, 'no such quarantine item');
    this.log.info({ item: id, token: who }, 'quarantine item deleted');
    sendJson(ctx.res, 200, { deleted: id });
  }

  private async quarantineRelease(ctx: Ctx, id: string): Promise<void> {
    const form = await this.checkedForm(ctx, ctx.session?.csrf);
    const s = ctx.session as Session;
    const q = this.requireQuarantine();
    const toText = (form.get('to') ?? '').trim();
    const to = toText ? toText.split(/[,\s]+/).filter((a) => a.length > 0) : undefined;
    if (!(await q.get(id))) throw new HttpError(404, 'no such quarantine item');
    let notice: { ok: boolean; text: string };
    try {
      const r = await releaseItem(q, id, { ...(to ? { to } : {}), nextHop: this.releaseHop(), actor: `web:${s.user}` });
      const replies = r.replies.map((x) => `${x.code} ${x.lines.join(' ')}`).join('; ');
      notice = r.ok ? { ok: true, text: `released to ${r.recipients.join(', ')}: ${replies}` } : { ok: false, text: `release failed for some recipients: ${replies}` };
      this.log.info({ item: id, user: s.user, recipients: r.recipients, ok: r.ok }, 'quarantine item released');
    } catch (err) {
      // Refusals the admin can act on (a bad address, an item that is not a mail message): 400
      // with the reason on the item's page, as the API answers them.
      const code = errorCodeOf(err);
      if (code !== 'AVG_ERR_BAD_ADDRESS' && code !== 'AVG_ERR_QUARANTINE') throw err;
      this.log.info({ item: id, user: s.user, code, reason: messageOf(err) }, 'quarantine release refused');
      return this.itemPage(ctx, id, { ok: false, text: messageOf(err) }, 400);
    }
    await this.itemPage(ctx, id, notice, notice.ok ? 200 : 502);
  }

  private async quarantineDelete(ctx: Ctx, id: string): Promise<void> {
    await this.checkedForm(ctx, ctx.session?.csrf);
    const s = ctx.session as Session;
    const removed = await this.requireQuarantine().remove(id, `web:${s.user}`);
    if (!removed) throw new HttpError(404, 'no such quarantine item');
    this.log.info({ item: id, user: s.user }, 'quarantine item deleted');
    redirect(ctx.res, '/quarantine');
  }

  /**
   * A configuration reload: pages, the scanning API and /metrics follow the new generation's
   * scanner, engines and config. The console's own settings (listen, TLS, users) keep their
   * running values until a restart. When smtp.next-hop changed, the release next hop made for
   * the old one is closed (a delivery under way finishes; one still waiting for a connection
   * fails with its reason and can be released again) and the next release uses the new one.
   */
  update(next: Pick<ConsoleDeps, 'config' | 'configSource' | 'scanner' | 'engines' | 'health' | 'configWarnings' | 'cache'>): void {
    const hopChanged = JSON.stringify(next.config.smtp['next-hop']) !== JSON.stringify(this.deps.config.smtp['next-hop']) || next.config.smtp.hostname !== this.deps.config.smtp.hostname;
    this.deps = { ...this.deps, ...next };
    if (hopChanged && this.ownsNextHop && this.nextHop) {
      const old = this.nextHop as NextHopClient;
      this.nextHop = null;
      this.ownsNextHop = false;
      void old.close().catch(() => undefined);
    }
  }

  private releaseHop(): NextHop {
    if (!this.nextHop) {
      const c = this.deps.config.smtp;
      this.nextHop = new NextHopClient(c['next-hop'].target, nextHopOptions(c['next-hop'], c.hostname ?? osHostname(), this.log));
      this.ownsNextHop = true;
    }
    return this.nextHop;
  }

  private async signatures(ctx: Ctx): Promise<void> {
    if (!this.requireSession(ctx)) return;
    const query = queryOf(ctx.url);
    const only = query.get('engine');
    const q = (query.get('q') ?? '').slice(0, 200);
    const page = Math.min(100_000, Math.max(1, Number.parseInt(query.get('page') ?? '1', 10) || 1));
    if (only !== null && !ENGINE_ID.test(only)) throw new HttpError(404, 'no such engine');
    const listings = [];
    for (const e of this.deps.engines) {
      listings.push({ engine: e.id, listing: await listSignatures(e.engine, { page: e.id === only ? page : 1, pageSize: SIGNATURE_PAGE, q }) });
    }
    const updater = this.deps.config.signatures.sources.length > 0 ? await readUpdaterState(signaturesStateDir(this.deps.config)) : null;
    sendHtml(ctx.res, 200, signaturesPage(this.page(ctx, 'Signatures'), listings, q, updater));
  }

  private async configShow(ctx: Ctx): Promise<void> {
    if (!this.requireSession(ctx)) return;
    sendHtml(
      ctx.res,
      200,
      configPage(this.page(ctx, 'Configuration'), {
        yaml: stringify(shownConfig(this.deps.config)),
        source: this.deps.configSource,
        warnings: this.deps.configWarnings ?? [],
        health: this.deps.health.snapshot(),
        engineInfo: this.engineInfo,
      }),
    );
  }
}

/** The message's header block (up to the first empty line, at most 64 KiB) as text. */
export async function headerBlock(stream: NodeJS.ReadableStream & { destroy(): void }, max = 64 * 1024): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      parts.push(chunk);
      n += chunk.length;
      const all = Buffer.concat(parts);
      const end = all.indexOf('\r\n\r\n') >= 0 ? all.indexOf('\r\n\r\n') : all.indexOf('\n\n');
      if (end >= 0 || n >= max) return all.subarray(0, end >= 0 ? end : max).toString('utf8');
    }
    return Buffer.concat(parts).subarray(0, max).toString('utf8');
  } finally {
    stream.destroy();
  }
}

/** The quarantine filter of a list request (page and API alike), with what the form shows. */
function quarantineFilterOf(query: URLSearchParams): { filter: QuarantineFilter; error: string | undefined; form: { status: string; source: string; text: string; since: string } } {
  const status = (query.get('status') ?? '').slice(0, 40);
  const source = query.get('source') ?? '';
  const text = (query.get('text') ?? '').slice(0, 200);
  const since = (query.get('since') ?? '').slice(0, 40);
  const filter: QuarantineFilter = {};
  let error: string | undefined;
  if (status) filter.status = status;
  if (source) {
    if ((QUARANTINE_SOURCES as readonly string[]).includes(source)) filter.source = source as QuarantineFilter['source'];
    else error = `unknown source "${source.slice(0, 40)}"`;
  }
  if (text) filter.text = text;
  if (since) {
    const d = new Date(since);
    if (Number.isNaN(d.getTime())) error = `"since" is not a date: ${since}`;
    else filter.since = d;
  }
  return { filter, error, form: { status, source, text, since } };
}

/** Errors that only say the client closed or reset its connection mid-request. */
const CLIENT_GONE = new Set(['ECONNRESET', 'EPIPE', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED']);

function clientWentAway(socket: Socket | null, err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  // The socket check keeps a reset from elsewhere (the next hop of a release) at error level.
  return code !== undefined && CLIENT_GONE.has(code) && (socket === null || socket.destroyed);
}

/** The request's connection, or null once neither the request nor the response holds it. */
function connectionOf(ctx: Ctx): Socket | null {
  return (ctx.res.socket as Socket | null) ?? (ctx.req.socket as Socket | null) ?? null;
}

/** A small request body, 413 past `max`. */
async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  if (Number(req.headers['content-length'] ?? 0) > max) throw new HttpError(413, `the body is larger than ${max} bytes`);
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    n += chunk.length;
    if (n > max) throw new HttpError(413, `the body is larger than ${max} bytes`);
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}

/** serve's configuration reloads as /metrics shows them. */
export interface ReloadStatus {
  /** The last reload's outcome; true before any (the configuration at start is in use). */
  lastOk: boolean;
  /** When the configuration in use was loaded (start or the last successful reload), ms. */
  lastSuccessAt: number;
  /** Reloads by outcome: applied, unchanged (nothing rebuilt), failed. */
  counts: { applied: number; unchanged: number; failed: number };
}

/** Like Prometheus's own prometheus_config_last_reload_successful: alert on a failed SIGHUP. */
function reloadPrometheus(r: ReloadStatus): string {
  const lines: string[] = [];
  metricFamily(lines, 'avgate_config_last_reload_successful', 'gauge', 'Whether the last configuration reload (SIGHUP) was applied; 1 before any.', [['', r.lastOk ? 1 : 0]]);
  metricFamily(lines, 'avgate_config_last_reload_success_timestamp_seconds', 'gauge', 'When the configuration file was last read successfully (at start or by a reload, also one that found nothing changed).', [['', Math.floor(r.lastSuccessAt / 1000)]]);
  metricFamily(lines, 'avgate_config_reloads_total', 'counter', 'Configuration reloads by result: applied, unchanged (nothing rebuilt), failed.', [
    ['{result="applied"}', r.counts.applied],
    ['{result="unchanged"}', r.counts.unchanged],
    ['{result="failed"}', r.counts.failed],
  ]);
  return `${lines.join('\n')}\n`;
}
