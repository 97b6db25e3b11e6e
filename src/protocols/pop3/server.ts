import { createServer, type Server, type Socket } from 'node:net';
import type { SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { Pop3ProxyConfig } from '../../config/mail-proxy-schema.js';
import { listenerContext, upstreamTls } from '../../config/tls-schema.js';
import { SendStallWatch } from '../../core/send-stall.js';
import { sweepSpoolDir } from '../../core/spool.js';
import type { UpstreamTls } from '../../core/net.js';
import { compilePolicy, globRegExp, type ReplaceDeps } from '../../mailproxy/index.js';
import { parseListen } from '../icap/server.js';
import { Pop3Session, type Pop3Counters } from './session.js';
import { listenOn, type Listeners } from '../../core/listen.js';
import { GracefulServer, type Drain } from '../../core/drain.js';

export interface Pop3ServerDeps {
  /** The replacer's dependencies (scanner, policy, replacement, spool dir, limits, origin). */
  replace: ReplaceDeps;
  log: Logger;
  /** serve's listening sockets, handed from one generation to the next on a reload. */
  listeners?: Listeners | null;
}

/**
 * The POP3 proxy's listener: one Pop3Session per client, at most max-connections at once (one
 * more gets -ERR and is closed). close() stops accepting, lets sessions end within the deadline,
 * then cuts what is left.
 */
export class Pop3ProxyServer extends GracefulServer {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private nextId = 1;
  private readonly allowed: RegExp[];
  /** The certificate for STLS (pop3-proxy.tls), read once at start; null = STLS not offered. */
  private readonly tls: SecureContext | null;
  /** tls-verify and tls-ca (read once at start) for TLS towards the POP3 servers. */
  private readonly upstreamTls: UpstreamTls;
  /** pop3-proxy.timeouts.send over every session's client connection. */
  private readonly sends: SendStallWatch;
  readonly counters: Pop3Counters = { connections: 0, active: 0, scanned: 0, replaced: 0, engineErrors: 0, refused: 0, upstreamFailures: 0, sendTimeouts: 0 };

  constructor(
    private readonly config: Pop3ProxyConfig,
    private readonly deps: Pop3ServerDeps,
  ) {
    super();
    this.allowed = config['allowed-upstreams'].map((g) => globRegExp(g.toLowerCase()));
    this.tls = listenerContext(config.tls, 'pop3-proxy.tls');
    this.upstreamTls = upstreamTls(config, 'pop3-proxy');
    this.sends = new SendStallWatch(config.timeouts.send);
  }

  async listen(): Promise<{ port: number }> {
    const { host, port } = parseListen(this.config.listen);
    // Messages of a process killed while it scanned them are not left there in plaintext.
    await sweepSpoolDir(this.deps.replace.spoolDir, this.deps.log);
    const server = createServer((s) => this.accept(s));
    this.server = server;
    const bound = await listenOn(this.deps.listeners, server, host, port, 'pop3-proxy');
    this.deps.log.info({ listen: `${host}:${bound}`, upstream: this.config.upstream, upstreamTls: this.config['upstream-tls'], stls: this.tls !== null }, 'pop3 proxy listening');
    return { port: bound };
  }

  private accept(socket: Socket): void {
    socket.on('error', () => undefined); // reported through the reader; never crash on a reset
    this.counters.connections++;
    if (this.sockets.size >= this.config['max-connections']) {
      this.counters.refused++;
      socket.end('-ERR too many connections, try again later\r\n');
      setTimeout(() => socket.destroy(), 1000).unref();
      return;
    }
    this.sockets.add(socket);
    this.counters.active = this.sockets.size;
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.counters.active = this.sockets.size;
    });
    const session = new Pop3Session(
      socket,
      {
        config: this.config,
        policy: compilePolicy(this.deps.replace.policy),
        replace: this.deps.replace,
        allowedUpstream: (hp) => this.allowed.some((re) => re.test(hp)),
        log: this.deps.log,
        counters: this.counters,
        tls: this.tls,
        upstreamTls: this.upstreamTls,
        sends: this.sends,
      },
      this.nextId++,
    );
    void session.run();
  }

  get openConnections(): number {
    return this.sockets.size;
  }

  /** Stops accepting; sessions still open after the deadline are cut. */
  protected async closeNow(drain: Drain): Promise<void> {
    const server = this.server;
    this.server = null;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    await drain.wait(() => this.sockets.size === 0);
    for (const s of this.sockets) s.destroy();
    this.sends.stop();
    await closed;
  }
}
