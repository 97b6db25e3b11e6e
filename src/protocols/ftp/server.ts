import { createServer, type Server, type Socket } from 'node:net';
import { resolve } from 'node:path';
import type { FtpProxyConfig } from '../../config/ftp-schema.js';
import { listenerContext, upstreamTls } from '../../config/tls-schema.js';
import { sweepSpoolDir, type Spool } from '../../core/spool.js';
import type { Logger } from '../../core/logging.js';
import type { Verdict, VerdictStatus } from '../../core/verdict.js';
import { DocAcl } from '../../proxy/doc-acl.js';
import { keepBlockedObject } from '../../quarantine/blocked.js';
import type { Quarantine } from '../../quarantine/types.js';
import type { ScanService } from '../../scan/types.js';
import { parseListen } from '../icap/server.js';
import { FtpSession, type FtpAccessRecord } from './session.js';
import { formatReply } from './wire.js';
import { AppendLog } from '../../core/append-log.js';
import { SendStallWatch } from '../../core/send-stall.js';
import { listenOn, type Listeners } from '../../core/listen.js';
import { GracefulServer, type Drain } from '../../core/drain.js';

export interface FtpCounters {
  sessions: number;
  /** Sessions refused at max-connections. */
  refused: number;
  transfers: number;
  byCommand: Record<string, number>;
  byStatus: Record<string, number>;
  byVerdict: Record<VerdictStatus, number>;
  /** Bytes of transfers (to the client for downloads, from it for uploads). */
  bytes: number;
  /** Blocked files kept in the quarantine. */
  quarantined: number;
  /** Connections reset because their peer stopped taking bytes (timeouts.send): data and control. */
  sendTimeouts: number;
  /** Transfers aborted because the sending peer kept the proxy waiting (timeouts.data-idle, upload-min-rate). */
  dataTimeouts: number;
}

export interface FtpProxyDeps {
  stateDir: string;
  /** The scanner for a list of engine ids; null = scan.engines. */
  scannerFor(engineIds: readonly string[] | null): { scanner: ScanService };
  log: Logger;
  /** Where blocked files whose status is in ftp-proxy.quarantine are kept; none = nothing is kept. */
  quarantine?: Quarantine;
  /** serve's listening sockets, handed from one generation to the next on a reload. */
  listeners?: Listeners | null;
}

/**
 * The FTP proxy: one listener, one FtpSession per client. close() stops accepting, ends the
 * sessions without a transfer with 421, lets transfers go on until the deadline, then cuts what is
 * left.
 */
export class FtpProxyServer extends GracefulServer {
  private server: Server | null = null;
  private readonly sessions = new Map<Socket, FtpSession>();
  private readonly accessFile: AppendLog | null;
  private readonly docAcl: DocAcl;
  /** One send-stall timer for every connection of every session (timeouts.send). */
  private readonly sends: SendStallWatch;
  readonly counters: FtpCounters = {
    sessions: 0,
    refused: 0,
    transfers: 0,
    byCommand: {},
    byStatus: {},
    byVerdict: { free: 0, found: 0, skipped: 0, unknown: 0, error: 0 },
    bytes: 0,
    quarantined: 0,
    sendTimeouts: 0,
    dataTimeouts: 0,
  };

  constructor(
    private readonly config: FtpProxyConfig,
    private readonly deps: FtpProxyDeps,
  ) {
    super();
    this.docAcl = new DocAcl(config['doc-acl']);
    this.sends = new SendStallWatch(config.timeouts.send);
    this.accessFile = config['access-log'] ? new AppendLog(resolve(deps.stateDir, config['access-log'])) : null;
  }

  private access(r: FtpAccessRecord, accessLog: Logger): void {
    const c = this.counters;
    c.transfers++;
    c.byCommand[r.command] = (c.byCommand[r.command] ?? 0) + 1;
    c.byStatus[String(r.status)] = (c.byStatus[String(r.status)] ?? 0) + 1;
    c.bytes += r.bytes;
    if (this.accessFile) {
      this.accessFile.write(`${new Date().toISOString()} ${r.client} ${r.target} ${r.command} ${JSON.stringify(r.path)} ${r.status} ${r.verdict} ${r.bytes} ${Math.round(r.ms)}\n`);
    } else {
      accessLog.info({ client: r.client, target: r.target, command: r.command, path: r.path, status: r.status, verdict: r.verdict, rule: r.rule, bytes: r.bytes, ms: Math.round(r.ms) }, 'ftp');
    }
  }

  /** A blocked file into the quarantine (when its status is listed); a failure is logged and never changes the answer. */
  private async keep(v: Verdict, spool: Spool, meta: { url: string; rule: string; direction: 'download' | 'upload'; client: string; user: string | null }, log: Logger): Promise<void> {
    const q = this.deps.quarantine;
    if (!q || !this.config.quarantine.includes(v.status)) return;
    // By characters, not UTF-16 units: a UTF-8 name's astral characters are never cut in half.
    const fileName = [...(meta.url.split('/').pop() ?? '')].slice(0, 255).join('') || null;
    const action = meta.direction === 'upload' ? 'block-upload' : 'block';
    const id = await keepBlockedObject(q, spool, v, { source: 'ftp', group: meta.rule, url: meta.url, fileName, action, client: meta.client, user: meta.user }, log, { rule: meta.rule });
    if (id !== null) this.counters.quarantined++;
  }

  /** Binds the listener; returns the bound port (useful with port 0). */
  async listen(): Promise<{ port: number }> {
    const log = this.deps.log.child({ component: 'ftp-proxy' });
    const accessLog = this.deps.log.child({ component: 'ftp-access' });
    const ctx = {
      config: this.config,
      tls: listenerContext(this.config.tls, 'ftp-proxy.tls'),
      upstreamTls: upstreamTls(this.config, 'ftp-proxy'),
      spoolDir: resolve(this.deps.stateDir, this.config['spool-dir']),
      docAcl: this.docAcl,
      scannerFor: (ids: readonly string[] | null) => this.deps.scannerFor(ids).scanner,
      log,
      access: (r: FtpAccessRecord) => this.access(r, accessLog),
      onVerdict: (v: Verdict) => void this.counters.byVerdict[v.status]++,
      sends: this.sends,
      onTimeout: (kind: 'send' | 'data') => void (kind === 'send' ? this.counters.sendTimeouts++ : this.counters.dataTimeouts++),
      quarantine: (v: Verdict, spool: Spool, meta: { url: string; rule: string; direction: 'download' | 'upload'; client: string; user: string | null }) => this.keep(v, spool, meta, log),
    };
    // Transfers of a process killed while it scanned them are not left there in plaintext.
    await sweepSpoolDir(ctx.spoolDir, log);
    const server = createServer((socket) => {
      socket.on('error', () => undefined);
      if (this.sessions.size >= this.config['max-connections']) {
        this.counters.refused++;
        socket.end(formatReply(421, 'Too many connections; try again later'));
        setTimeout(() => socket.destroy(), 1000).unref();
        return;
      }
      const session = new FtpSession(socket, ctx);
      this.sessions.set(socket, session);
      this.counters.sessions++;
      socket.once('close', () => this.sessions.delete(socket));
      void session.run();
    });
    this.server = server;
    const { host, port } = parseListen(this.config.listen);
    const bound = await listenOn(this.deps.listeners, server, host, port, 'ftp-proxy');
    log.info({ listen: `${host}:${bound}`, upstream: this.config.upstream }, 'ftp proxy listening');
    return { port: bound };
  }

  get openSessions(): number {
    return this.sessions.size;
  }

  protected async closeNow(drain: Drain): Promise<void> {
    const server = this.server;
    // Stop accepting now; the callback only comes once every session is gone (awaited last).
    const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
    // Sessions without a transfer end now, with a 421 the client reads before the close (the
    // socket goes once the client closed, or after close()'s grace); those in a transfer get until
    // the deadline.
    const cutIdle = () => {
      for (const session of this.sessions.values()) {
        if (!session.busy) session.shutdown('Service closing control connection: the proxy is reloading or stopping');
      }
    };
    await drain.wait(() => this.sessions.size === 0, cutIdle);
    for (const [s, session] of this.sessions) {
      session.close();
      s.destroy();
    }
    await closed;
    this.sends.stop();
    await this.accessFile?.close();
  }
}
