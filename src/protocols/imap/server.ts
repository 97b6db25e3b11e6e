import { createServer, type Server, type Socket } from 'node:net';
import { resolve } from 'node:path';
import type { ImapProxyConfig } from '../../config/imap-schema.js';
import { listenerContext, upstreamTls } from '../../config/tls-schema.js';
import { SendStallWatch } from '../../core/send-stall.js';
import { sweepSpoolDir } from '../../core/spool.js';
import type { Logger } from '../../core/logging.js';
import { compilePolicy, loadReplacement, type ReplacementTemplate } from '../../mailproxy/index.js';
import type { MimeLimits } from '../../mime/index.js';
import type { Quarantine } from '../../quarantine/types.js';
import type { ScanService } from '../../scan/types.js';
import { ImapSession, type ImapCounters, type SessionContext } from './session.js';
import { parseHostPort } from './upstream.js';
import { listenOn, type Listeners } from '../../core/listen.js';
import { GracefulServer, type Drain } from '../../core/drain.js';

export interface ImapProxyDeps {
  stateDir: string;
  /** The scanner for a list of engine ids; null = scan.engines. */
  scannerFor(engineIds: readonly string[] | null): { scanner: ScanService };
  log: Logger;
  /** The MIME walker's limits and leniency (`mail.max-depth` ..., `mail.lenient-quoted-printable`); default the built-in ones. */
  mime?: { limits: MimeLimits; lenientQuotedPrintable: boolean };
  /** Where whole messages with replaced documents of the `quarantine` statuses are kept; absent = nowhere. */
  quarantine?: Quarantine | null;
  /** serve's listening sockets, handed from one generation to the next on a reload. */
  listeners?: Listeners | null;
}

/**
 * The IMAP4 proxy's listener: one ImapSession per client, at most max-connections (one more gets
 * `* BYE` at once). close() stops accepting and ends the sessions within a deadline.
 */
export class ImapProxyServer extends GracefulServer {
  private server: Server | null = null;
  private readonly sessions = new Map<Socket, ImapSession>();
  private seq = 0;
  readonly counters: ImapCounters = { connections: 0, commands: 0, scanned: 0, replaced: 0, appends: 0, appendsRefused: 0, upstreamFailures: 0, sendTimeouts: 0 };
  private ctx: SessionContext | null = null;
  private readonly log: Logger;
  /** imap-proxy.timeouts.send over every session's client connection. */
  private readonly sends: SendStallWatch;

  constructor(
    private readonly config: ImapProxyConfig,
    private readonly deps: ImapProxyDeps,
  ) {
    super();
    this.log = deps.log.child({ component: 'imap-proxy' });
    this.sends = new SendStallWatch(config.timeouts.send);
  }

  /** Loads the replacement notice (a missing file stops startup) and binds; returns the port. */
  async listen(): Promise<{ port: number }> {
    const replacement: ReplacementTemplate = await loadReplacement(this.config.replacement, 'imap-proxy.replacement');
    parseHostPort(this.config.upstream);
    this.ctx = {
      config: this.config,
      scanner: this.deps.scannerFor(this.config.antivirus).scanner,
      policy: compilePolicy(this.config),
      replacement,
      spoolDir: resolve(this.deps.stateDir, this.config['spool-dir']),
      log: this.log,
      counters: this.counters,
      mime: this.deps.mime ?? null,
      quarantine: this.deps.quarantine ?? null,
      upstreamTls: upstreamTls(this.config, 'imap-proxy'),
      tls: listenerContext(this.config.tls, 'imap-proxy.tls'),
      sends: this.sends,
    };
    const { host, port } = parseHostPort(this.config.listen);
    // Messages of a process killed while it scanned them are not left there in plaintext.
    await sweepSpoolDir(this.ctx.spoolDir, this.log);
    const server = createServer((s) => this.accept(s));
    this.server = server;
    const bound = await listenOn(this.deps.listeners, server, host, port, 'imap-proxy');
    this.log.info({ listen: `${host}:${bound}`, upstream: this.config.upstream, upstreamTls: this.config['upstream-tls'], starttls: this.ctx.tls !== null }, 'imap proxy listening');
    return { port: bound };
  }

  private accept(socket: Socket): void {
    socket.on('error', () => undefined);
    if (this.sessions.size >= this.config['max-connections'] || !this.ctx) {
      socket.end('* BYE [UNAVAILABLE] Too many connections, try again later\r\n');
      setTimeout(() => socket.destroy(), 1000).unref();
      return;
    }
    this.counters.connections++;
    const session = new ImapSession(socket, this.ctx, `i${(++this.seq).toString(36)}`);
    this.sessions.set(socket, session);
    socket.once('close', () => this.sessions.delete(socket));
    session.run().catch((err: unknown) => {
      this.log.error({ err: (err as Error).message }, 'imap: session failed');
      socket.destroy();
    });
  }

  get openConnections(): number {
    return this.sessions.size;
  }

  protected async closeNow(drain: Drain): Promise<void> {
    const server = this.server;
    // A reload has handed the listening socket to the next generation (Listeners.takeOver): a
    // client that reconnects is served at once, and the BYE says so. A stop ends the service.
    const bye = server !== null && !server.listening ? '[UNAVAILABLE] The proxy is reloading, reconnect now' : '[UNAVAILABLE] Server shutting down';
    // Stop accepting now; the callback only comes once every connection is gone.
    const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
    // Each session says BYE once the command it is answering is done (never inside a literal
    // being relayed), at once when it has none or only IDLE; the drain's deadline cuts the rest.
    await Promise.all([...this.sessions.values()].map((s) => s.finish(bye)));
    await drain.wait(() => this.sessions.size === 0);
    for (const s of this.sessions.keys()) s.destroy();
    this.sends.stop();
    await closed;
  }
}
