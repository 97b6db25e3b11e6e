import { createServer, type Server, type Socket } from 'node:net';
import { resolve } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import type { IcapConfig } from '../../config/schema.js';
import { AvgateError } from '../../core/errors.js';
import type { Logger } from '../../core/logging.js';
import type { Verdict, VerdictStatus } from '../../core/verdict.js';
import { SendStallWatch } from '../../core/send-stall.js';
import { settleSpools, sweepSpoolDir, type Spool } from '../../core/spool.js';
import type { Engine } from '../../engines/types.js';
import { keepBlockedObject } from '../../quarantine/blocked.js';
import type { Quarantine } from '../../quarantine/types.js';
import type { ScanService } from '../../scan/types.js';
import { IcapConnection, type AccessRecord, type ConnectionContext } from './connection.js';
import { IcapService } from './service.js';
import { formatResponseHead } from './wire.js';
import { fileNameOf } from '../../formats/url-name.js';
import { readPem } from '../../config/tls-schema.js';
import { AppendLog } from '../../core/append-log.js';
import { listenOn, type Listeners } from '../../core/listen.js';
import { GracefulServer, type Drain } from '../../core/drain.js';

export interface IcapCounters {
  requests: number;
  byMethod: Record<string, number>;
  byStatus: Record<string, number>;
  byVerdict: Record<VerdictStatus, number>;
  bytes: number;
  connections: number;
  /** Connections refused with 503 at max-connections. */
  refused: number;
  /** Blocked objects kept in the quarantine. */
  quarantined: number;
  /** Connections reset because the client stopped reading its answer (icap.send-timeout). */
  sendTimeouts: number;
}

export interface IcapServerDeps {
  stateDir: string;
  /** The scanner (and its engines) for a list of engine ids; null = scan.engines. */
  scannerFor(engineIds: readonly string[] | null): { scanner: ScanService; engines: Array<{ id: string; engine: Engine }> };
  log: Logger;
  version: string;
  /** Where services with a `quarantine` list keep blocked objects; none = nothing is kept. */
  quarantine?: Quarantine;
  /** serve's listening sockets, handed from one generation to the next on a reload. */
  listeners?: Listeners | null;
}

export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text.trim());
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new AvgateError('AVG_ERR_CONFIG', `listen address "${text}": expected host:port`);
  return { host: (m[1] ?? m[2]) as string, port };
}

/**
 * The ICAP server: one listener (plus an optional TLS one), services by name and alias, each
 * connection handled by IcapConnection. close() stops accepting, lets running requests finish
 * within the deadline, then cuts what is left.
 */
export class IcapServer extends GracefulServer {
  private readonly services = new Map<string, IcapService>();
  private readonly servers: Server[] = [];
  private readonly sockets = new Map<Socket, IcapConnection>();
  /**
   * TCP connections to the TLS port whose handshake has not finished: not yet in `sockets`, and
   * half-open ones (a client gone mid-handshake) would hold close() until node's 120 s handshake
   * timeout.
   */
  private readonly handshaking = new Set<Socket>();
  private readonly accessFile: AppendLog | null;
  readonly counters: IcapCounters = {
    requests: 0,
    byMethod: {},
    byStatus: {},
    byVerdict: { free: 0, found: 0, skipped: 0, unknown: 0, error: 0 },
    bytes: 0,
    connections: 0,
    refused: 0,
    quarantined: 0,
    sendTimeouts: 0,
  };
  /** When a refusal at max-connections was last logged: at most one line a minute. */
  private refusedLoggedAt = 0;
  private readonly ctx: ConnectionContext;
  private readonly sends: SendStallWatch;

  constructor(
    private readonly config: IcapConfig,
    private readonly deps: IcapServerDeps,
  ) {
    super();
    for (const [name, sc] of Object.entries(config.services)) {
      const { scanner, engines } = deps.scannerFor(sc.engines);
      const service = new IcapService(name, sc, scanner, engines);
      for (const n of [name, ...sc.aliases]) {
        if (this.services.has(n)) throw new AvgateError('AVG_ERR_CONFIG', `icap service name "${n}" is used twice`);
        this.services.set(n, service);
      }
    }
    this.sends = new SendStallWatch(config['send-timeout']);
    const log = deps.log.child({ component: 'icap' });
    this.accessFile = config['access-log'] ? new AppendLog(resolve(deps.stateDir, config['access-log'])) : null;
    const accessLog = deps.log.child({ component: 'icap-access' });
    this.ctx = {
      limits: {
        idleTimeoutMs: config['idle-timeout'],
        readTimeoutMs: config['read-timeout'],
        headerTimeoutMs: config['header-timeout'],
        bodyTimeoutMs: config['body-timeout'],
        bodyMinRate: config['body-min-rate'],
        sendTimeoutMs: config['send-timeout'],
        maxHeaderSize: config['max-header-size'],
        maxRequestLine: config['max-request-line'],
        spoolMemory: config['spool-memory'],
        spoolDir: resolve(deps.stateDir, config['spool-dir']),
      },
      serviceFor: (name) => this.services.get(name),
      options: (service) => this.optionsHeaders(service),
      serverHeader: `avgate/${deps.version}`,
      log,
      access: (r) => {
        this.counters.requests++;
        this.counters.byMethod[r.method] = (this.counters.byMethod[r.method] ?? 0) + 1;
        this.counters.byStatus[String(r.status)] = (this.counters.byStatus[String(r.status)] ?? 0) + 1;
        this.counters.bytes += r.bytes;
        this.writeAccess(r, accessLog);
      },
      onVerdict: (_s, v: Verdict) => {
        this.counters.byVerdict[v.status]++;
      },
      quarantine: (service, v, spool, url, _head, who) => this.keep(service, v, spool, url, log, who),
      sends: this.sends,
      onSendStall: () => void this.counters.sendTimeouts++,
    };
  }

  /** A blocked object into the quarantine; a failure is logged and never changes the answer. */
  private async keep(service: IcapService, v: Verdict, spool: Spool, url: string, log: Logger, who?: Pick<AccessRecord, 'httpClient' | 'user'>): Promise<string | null> {
    const q = this.deps.quarantine;
    if (!q) return null;
    const id = await keepBlockedObject(q, spool, v, { source: 'icap', group: service.name, url, fileName: fileNameOf(url), action: 'block', client: who?.httpClient ?? null, user: who?.user ?? null }, log, { service: service.name });
    if (id !== null) this.counters.quarantined++;
    return id;
  }

  private writeAccess(r: AccessRecord, accessLog: Logger): void {
    if (this.accessFile) {
      // One field each, `-` when unknown; `%`, spaces, control and non-ASCII characters percent-encoded (UTF-8).
      // The header values hold the bytes as received (latin1): each byte outside printable ASCII
      // is one %XX, so a UTF-8 name reads as its UTF-8 octets.
      const field = (v: string | undefined) =>
        v ? [...Buffer.from(v, 'latin1')].map((b) => (b > 0x20 && b < 0x7f && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('') : '-';
      this.accessFile.write(
        `${new Date().toISOString()} ${r.client} ${r.service} ${r.method} ${r.status} ${r.verdict} ${r.bytes} ${Math.round(r.ms)} ${field(r.url)} ${field(r.httpClient)} ${field(r.user)}\n`,
      );
    } else {
      accessLog.info(
        { client: r.client, service: r.service, method: r.method, status: r.status, verdict: r.verdict, bytes: r.bytes, ms: Math.round(r.ms), url: r.url, httpClient: r.httpClient, user: r.user },
        'icap',
      );
    }
  }

  async optionsHeaders(service: IcapService): Promise<Array<[string, string]>> {
    const c = service.config;
    const h: Array<[string, string]> = [
      ['Methods', c.methods.join(', ')],
      ['Service', `avgate/${this.deps.version} antivirus (${service.name})`],
      ['Service-ID', service.name],
      ['ISTag', await service.istag()],
      ['Options-TTL', String(Math.round(c['options-ttl'] / 1000))],
      ['Max-Connections', String(this.config['max-connections'])],
      ['Allow', '204'],
      ['Date', new Date().toUTCString()],
      ['Server', `avgate/${this.deps.version}`],
    ];
    if (c.preview > 0) h.push(['Preview', String(c.preview)]);
    if (c['transfer-preview'].length > 0) h.push(['Transfer-Preview', c['transfer-preview'].join(', ')]);
    if (c['transfer-ignore'].length > 0) h.push(['Transfer-Ignore', c['transfer-ignore'].join(', ')]);
    if (c['transfer-complete'].length > 0) h.push(['Transfer-Complete', c['transfer-complete'].join(', ')]);
    return h;
  }

  /** Binds the listeners; returns the bound ports (useful with port 0). */
  async listen(): Promise<{ port: number; tlsPort: number | null }> {
    // Bodies of a process killed while it scanned them are not left there in plaintext.
    await sweepSpoolDir(this.ctx.limits.spoolDir, this.ctx.log);
    // Half-open: a client may shut down its sending side after a complete request and still read
    // the answer (the connection ends it after answering); a FIN in the middle of a request is
    // still a client that went away.
    const plain = createServer({ allowHalfOpen: true }, (s) => this.accept(s));
    const { host, port } = parseListen(this.config.listen);
    const bound = await this.bind(plain, host, port, 'icap');
    let tlsPort: number | null = null;
    if (this.config.tls) {
      const t = this.config.tls;
      const tlsServer = createTlsServer({ allowHalfOpen: true, cert: readPem(t.cert, 'icap.tls.cert'), key: readPem(t.key, 'icap.tls.key') }, (s) => this.accept(s));
      tlsServer.on('connection', (raw: Socket) => {
        this.handshaking.add(raw);
        raw.once('close', () => this.handshaking.delete(raw));
      });
      tlsServer.on('secureConnection', (s: Socket) => {
        const raw = (s as Socket & { _parent?: Socket })._parent;
        if (raw) this.handshaking.delete(raw);
      });
      const l = parseListen(t.listen);
      tlsPort = await this.bind(tlsServer, l.host, l.port, 'icap tls');
    }
    this.deps.log.info({ listen: `${host}:${bound}`, tlsPort, services: [...new Set(this.services.values())].map((s) => s.name) }, 'icap server listening');
    return { port: bound, tlsPort };
  }

  private bind(server: Server, host: string, port: number, what: string): Promise<number> {
    // accept() answers 503 past max-connections; node itself drops connections only past twice
    // that (refused ones still closing), so a flood cannot take file descriptors without bound.
    server.maxConnections = 2 * this.config['max-connections'];
    this.servers.push(server);
    return listenOn(this.deps.listeners, server, host, port, what);
  }

  private accept(socket: Socket): void {
    socket.on('error', () => undefined); // reported through the reader; never crash on a reset
    if (this.sockets.size >= this.config['max-connections']) {
      this.refuse(socket);
      return;
    }
    const conn = new IcapConnection(socket, this.ctx);
    this.sockets.set(socket, conn);
    this.counters.connections++;
    socket.once('close', () => this.sockets.delete(socket));
    void conn.run();
  }

  /**
   * One connection over max-connections: an ICAP 503 and close, rather than a reset the client
   * cannot tell from a crash. What it sends is dropped; it gets a second to read the answer.
   */
  private refuse(socket: Socket): void {
    this.counters.refused++;
    socket.on('data', () => undefined);
    socket.end(
      formatResponseHead({
        status: 503,
        headers: [
          ['Server', this.ctx.serverHeader],
          ['Date', new Date().toUTCString()],
          ['Connection', 'close'],
          ['Encapsulated', 'null-body=0'],
        ],
      }),
    );
    setTimeout(() => socket.destroy(), 1000).unref();
    const now = Date.now();
    if (now - this.refusedLoggedAt >= 60_000) {
      this.refusedLoggedAt = now;
      this.deps.log.warn({ client: socket.remoteAddress, max: this.config['max-connections'], refused: this.counters.refused }, 'icap at max-connections: new connections get 503');
    }
  }

  get openConnections(): number {
    return this.sockets.size;
  }

  protected async closeNow(drain: Drain): Promise<void> {
    // Stop accepting now; a server's close callback only comes once its connections are gone, so
    // it is awaited last: waiting first would let a client's idle persistent connections (Squid
    // keeps them) hold the stop, or a reload's old generation, for as long as the client likes.
    const closed = Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    // Idle keep-alive connections (and TLS handshakes not done) end now; busy ones get until the deadline.
    for (const raw of this.handshaking) raw.destroy();
    await drain.wait(
      () => this.sockets.size === 0,
      () => {
        for (const [s, c] of this.sockets) if (c.idle) s.destroy();
      },
    );
    for (const s of this.sockets.keys()) s.destroy();
    await closed;
    this.sends.stop();
    await settleSpools(); // spool files of ended requests, removed after their answers
    await this.accessFile?.close();
  }
}
