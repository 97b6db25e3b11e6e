import { Socket } from 'node:net';
import { posix } from 'node:path';
import type { SecureContext } from 'node:tls';
import picomatch from 'picomatch';
import type { FtpProxyConfig } from '../../config/ftp-schema.js';
import type { DocAclRule } from '../../config/proxy-schema.js';
import { messageOf } from '../../core/errors.js';
import type { Logger } from '../../core/logging.js';
import { acceptTls, hostPort, splitHostPort, urlHost, type UpstreamTls } from '../../core/net.js';
import { cutConnection, type SendStallWatch } from '../../core/send-stall.js';
import { drainedOrClosed } from '../../core/streams.js';
import { Spool } from '../../core/spool.js';
import { verdictLabel, type Verdict } from '../../core/verdict.js';
import { decide, verdictReason } from '../../policy/verdict-policy.js';
import type { DocAcl } from '../../proxy/doc-acl.js';
import { SpoolFeed, trickle, type TrickleOutcome } from '../../proxy/trickle.js';
import type { ScanService } from '../../scan/types.js';
import {
  activeAddressAllowed,
  ActiveTarget,
  connectData,
  dataChunks,
  DataError,
  DataTimeout,
  overTcp,
  PassiveListener,
  resetData,
  type ClientDataSetup,
  type DataPace,
} from './data.js';
import { LineReader } from './lines.js';
import { UpstreamControl, UpstreamGone } from './upstream.js';
import {
  formatHostPortNumbers,
  formatReply,
  parseAnnouncedSize,
  parseCommand,
  parseEprt,
  parseEpsvReply,
  parseHostPortNumbers,
  parsePasvReply,
  parsePwdReply,
  parseUserAtHost,
  plainAddress,
  printable,
  textOf,
  type FtpCommand,
  type FtpReply,
} from './wire.js';

/** One transfer, for the access log and the counters. */
export interface FtpAccessRecord {
  client: string;
  /** user@host:port of the session. */
  target: string;
  command: string;
  /** Absolute and normalised, as the doc-ACL saw it (see logPath). */
  path: string;
  /** The final reply code the client got. */
  status: number;
  /** Verdict status, `unscanned` (rule accept / none), `-` when nothing was to be scanned (listings) or no verdict was reached. */
  verdict: string;
  /** The doc-ACL rule applied (null for listings). */
  rule: string | null;
  bytes: number;
  ms: number;
}

export interface FtpSessionContext {
  config: FtpProxyConfig;
  /** The certificate for AUTH TLS (ftp-proxy.tls), read once at start; null = FTPS not offered. */
  tls: SecureContext | null;
  /** How the servers' certificates are checked (tls-verify, tls-ca read at start) when upstream-tls is not none. */
  upstreamTls: UpstreamTls;
  spoolDir: string;
  docAcl: DocAcl;
  scannerFor(engineIds: readonly string[] | null): ScanService;
  log: Logger;
  access(r: FtpAccessRecord): void;
  onVerdict(v: Verdict): void;
  /** The send-stall timer of the proxy (timeouts.send). */
  sends: SendStallWatch;
  /** Counts a connection reset by timeouts.send, or a transfer aborted by data-idle / upload-min-rate. */
  onTimeout(kind: 'send' | 'data'): void;
  /** Keeps a blocked file in the quarantine when the config says so (never throws). */
  quarantine(v: Verdict, spool: Spool, meta: { url: string; rule: string; direction: 'download' | 'upload'; client: string; user: string | null }): Promise<void>;
}

export const DOWNLOADS: ReadonlySet<string> = new Set(['RETR']);
export const LISTINGS: ReadonlySet<string> = new Set(['LIST', 'NLST', 'MLSD']);
export const UPLOADS: ReadonlySet<string> = new Set(['STOR', 'APPE', 'STOU']);

/** An upload that sends a part of the server's file: APPE, or STOR (STOU) after a REST other than 0. */
export function isPartialUpload(verb: string, restart: string | null): boolean {
  return verb === 'APPE' || (restart !== null && Number(restart) > 0);
}
/** Commands a session without a server may still get an answer to. */
const BEFORE_LOGIN = new Set(['USER', 'QUIT', 'NOOP', 'SYST', 'FEAT', 'HELP', 'AUTH', 'OPTS']);
/**
 * Security extensions (RFC 2228/4217): AUTH TLS, PBSZ and PROT with ftp-proxy.tls; never CCC (the
 * proxy must read the control channel) nor the other mechanisms' commands.
 */
const SECURITY = new Set(['AUTH', 'ADAT', 'PBSZ', 'PROT', 'CCC', 'MIC', 'CONF', 'ENC']);
/** What FEAT says of FTPS when ftp-proxy.tls has a certificate. */
const TLS_FEATURES = ['AUTH TLS', 'PBSZ', 'PROT'];
/** Commands that change the working directory: the proxy asks PWD afterwards (doc-ACL paths). */
const CWD_VERBS = new Set(['CWD', 'CDUP', 'XCWD', 'XCUP']);
const FEATURES_DROPPED = /^\s*(AUTH|PBSZ|PROT|CCC|MODE\s+Z|LPSV|LPRT)\b/i;

class TransferLimit extends Error {}

/** The least of a too-large upload read on and dropped so the client can read the 552 (see receiveAll). */
const UPLOAD_DRAIN_MIN = 8 * 1024 * 1024;

let nextSessionId = 1;

/**
 * One client session: reads the client's commands one at a time, relays them to the server and
 * the replies back, and handles everything data-related itself (PASV/EPSV/PORT/EPRT are answered
 * by the proxy; the server is always used in passive mode). Downloads (RETR) are held or trickled
 * until the verdict; uploads (STOR/APPE/STOU) are received whole and scanned before the server
 * hears of them.
 */
export class FtpSession {
  private readonly id = nextSessionId++;
  private reader: LineReader;
  /** The control connection: the accepted TCP socket, or a TLSSocket over it after AUTH TLS. */
  private client: Socket;
  /** AUTH TLS done: the control connection is in TLS. */
  private secure = false;
  /** PROT P: the client's data connections are TLS too (the proxy is the TLS server on them). */
  private protectData = false;
  private pbsz = false;
  /** USER was given: AUTH TLS comes before it (RFC 4217 §4). */
  private userGiven = false;
  /** The AUTH TLS handshake runs on the control connection: no reply in clear may go out. */
  private upgrading = false;
  private readonly abort = new AbortController();
  private readonly clientAddress: string;
  private readonly localAddress: string;
  private readonly log: Logger;
  private upstream: UpstreamControl | null = null;
  private target = '-';
  /** The login name of the last USER (null before one). */
  private loginName: string | null = null;
  private targetHost = '';
  /** The server's working directory as PWD reported it: doc-ACL URLs are absolute and normalised. */
  private cwd = '/';
  private setup: ClientDataSetup | null = null;
  private restart: string | null = null;
  private epsvAll = false;
  private closed = false;
  /** A 421 went to the client: RFC 959 says the service closes the control connection, so the session ends. */
  private closing = false;
  /** True while a transfer runs (a graceful stop waits for those, and ends idle sessions at once: shutdown). */
  busy = false;
  /** The running transfer: ABOR aborts its signal, which destroys its data connections. */
  private xfer: { abort: AbortController; sockets: Set<Socket> } | null = null;

  constructor(
    private readonly plain: Socket,
    private readonly ctx: FtpSessionContext,
  ) {
    this.client = plain;
    this.clientAddress = plainAddress(plain.remoteAddress ?? '');
    this.localAddress = plain.localAddress ?? '127.0.0.1';
    this.reader = new LineReader(plain, ctx.config['max-line-length']);
    this.log = ctx.log.child({ session: this.id, client: this.clientAddress });
    plain.on('error', () => undefined);
    plain.once('close', () => this.abort.abort());
    plain.setNoDelay(true);
    this.watchControl(plain);
  }

  /**
   * A client that sends commands and never reads the replies: the run loop reads no command while
   * replies wait unsent (repliesDrained), so they cannot pile up in memory, and past timeouts.send
   * without write progress the connection is reset and the session ends.
   */
  private watchControl(socket: Socket): void {
    this.ctx.sends.watch(socket, (unsent) => {
      this.ctx.onTimeout('send');
      this.log.warn({ target: this.target, unsent, timeout: this.t.send }, 'ftp: client stopped reading replies on the control connection (timeouts.send); connection reset');
      // Under TLS the reset goes out on the TCP socket (a TLS socket cannot send one).
      cutConnection(this.plain);
      this.client.destroy();
    });
  }

  /** Resolves once the replies written so far are taken down to the socket's high-water mark (or it is gone). */
  private repliesDrained(): Promise<void> {
    return drainedOrClosed(this.client);
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** For data connections and scans: ends with the session, or with the transfer on ABOR. */
  private get dataSignal(): AbortSignal {
    return this.xfer?.abort.signal ?? this.signal;
  }

  /** A data connection of the running transfer (destroyed when it is aborted). */
  private track(s: Socket): Socket {
    const x = this.xfer;
    if (x) {
      if (x.abort.signal.aborted) s.destroy();
      else x.sockets.add(s);
    }
    return s;
  }

  /**
   * Reads the client's control connection while a transfer runs: ABOR aborts the transfer (RFC 959:
   * 426 for the transfer, then 226 for the ABOR); any other command is put back and handled after
   * the transfer, in order.
   */
  private async watchForAbort(stop: AbortSignal, onAbort: () => void): Promise<void> {
    for (;;) {
      const ev = await this.reader.next(this.t['control-idle'], stop);
      if (stop.aborted) {
        if (ev.kind !== 'eof') this.reader.unshift(ev);
        return;
      }
      if (ev.kind === 'timeout') continue;
      if (ev.kind === 'line' && parseCommand(ev.line)?.verb === 'ABOR') {
        onAbort();
        return;
      }
      if (ev.kind !== 'eof') this.reader.unshift(ev);
      return;
    }
  }

  /** Nothing goes out once the session is closed (a reload or stop closed it from outside: shutdown). */
  private reply(code: number, text: string | readonly string[]): void {
    if (code === 421) this.closing = true;
    if (!this.closed && !this.client.destroyed) this.client.write(formatReply(code, text), 'latin1');
  }

  /** A server reply passed on as received (multi-line replies keep their lines). */
  private relay(r: FtpReply): void {
    if (r.code === 421) this.closing = true;
    if (!this.closed && !this.client.destroyed) this.client.write(`${r.lines.join('\r\n')}\r\n`, 'latin1');
  }

  private get t(): FtpProxyConfig['timeouts'] {
    return this.ctx.config.timeouts;
  }

  async run(): Promise<void> {
    try {
      if (this.ctx.config.upstream) {
        const { host, port } = splitHostPort(this.ctx.config.upstream);
        const greeting = await this.connectUpstream(host, port, null);
        if (!greeting) return;
        this.relay(greeting);
      } else {
        this.reply(220, 'avgate FTP proxy ready; log in as USER user@host[:port]');
      }
      for (;;) {
        await this.repliesDrained();
        const ev = await this.reader.next(this.t['control-idle'], this.signal);
        if (ev.kind === 'eof') return;
        if (ev.kind === 'timeout') {
          this.reply(421, 'Idle timeout; closing the control connection');
          return;
        }
        if (ev.kind === 'too-long') {
          this.reply(500, 'Command line too long');
          continue;
        }
        const cmd = parseCommand(ev.line);
        if (!cmd) {
          this.reply(500, 'Syntax error, command unrecognized');
          continue;
        }
        // After a 421 (its own, or the server's relayed) the reply is flushed and the connection closed (close()).
        if (!(await this.handle(cmd)) || this.closing) return;
      }
    } catch (err) {
      // Closed from outside (shutdown): a command under way failed because of it.
      if (this.closed) return;
      if (err instanceof UpstreamGone) {
        this.log.warn({ target: this.target, err: err.message }, 'ftp: server connection lost');
        this.reply(421, 'Service not available: the FTP server connection was lost');
      } else {
        this.log.error({ err: messageOf(err) }, 'ftp: session failed');
        this.reply(421, 'Service not available: internal error');
      }
    } finally {
      this.close();
    }
  }

  /**
   * A reload or stop ends a session that runs no transfer: 421 first (RFC 959: the service is
   * closing the control connection), as after the idle timeout, unless one went out already; none
   * into an AUTH TLS handshake. A command under way gets it as its reply.
   */
  shutdown(text: string): void {
    if (this.closed) return;
    if (!this.closing && !this.upgrading) this.reply(421, text);
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.setup?.close();
    this.setup = null;
    this.upstream?.close();
    this.abort.abort();
    if (!this.client.destroyed) this.client.end();
    setTimeout(() => {
      this.client.destroy();
      this.plain.destroy();
    }, 2000).unref();
  }

  /** Connects to the server and reads its greeting; null (the client told why) when it fails. */
  private async connectUpstream(host: string, port: number, user: string | null): Promise<FtpReply | null> {
    const c = this.ctx.config;
    const mode = c['upstream-tls'];
    try {
      this.upstream = await UpstreamControl.connect(host, port, {
        timeoutMs: this.t.connect,
        signal: this.signal,
        maxLine: c['max-line-length'],
        maxLines: c['max-reply-lines'],
        tls: mode === 'tls' ? this.ctx.upstreamTls : null,
      });
    } catch (err) {
      this.log.warn({ host, port, err: messageOf(err) }, 'ftp: cannot connect to the server');
      this.reply(421, `Cannot connect to ${hostPort(host, port)}`);
      return null;
    }
    this.targetHost = host;
    this.target = `${user ?? ''}${user ? '@' : ''}${host}:${port}`;
    let greeting: FtpReply;
    // A server may send 120 (ready in n minutes) before its 220.
    do greeting = await this.upstream.reply(this.t.reply, this.signal);
    while (greeting.code < 200);
    if (greeting.code !== 220) {
      this.relay(greeting);
      this.upstream.close();
      this.upstream = null;
      return null;
    }
    if (mode !== 'none') {
      try {
        if (mode === 'starttls') await this.upstream.startTls(this.ctx.upstreamTls, this.t.reply, this.signal);
        else await this.upstream.protectData(this.t.reply, this.signal);
      } catch (err) {
        this.log.warn({ host, port, err: messageOf(err) }, 'ftp: FTPS with the server failed');
        this.reply(421, `Cannot connect to ${hostPort(host, port)} over TLS`);
        this.upstream.close();
        this.upstream = null;
        return null;
      }
    }
    this.log.debug({ target: this.target }, 'ftp: connected to the server');
    return greeting;
  }

  /** One command; false = the session ends. */
  private async handle(cmd: FtpCommand): Promise<boolean> {
    const { verb, arg } = cmd;
    this.log.trace({ verb, arg: verb === 'PASS' || verb === 'ACCT' ? '***' : printable(textOf(arg)) }, 'ftp: command');
    if (verb === 'USER') {
      if (this.ctx.config.tls.required && !this.secure) {
        this.reply(530, 'TLS required: use AUTH TLS first');
        return true;
      }
      this.userGiven = true;
      return this.user(arg);
    }
    if (verb === 'QUIT') {
      if (this.upstream) this.relay(await this.upstream.command('QUIT', '', this.t.reply, this.signal).catch(() => ({ code: 221, lines: ['221 Goodbye'] })));
      else this.reply(221, 'Goodbye');
      return false;
    }
    if (SECURITY.has(verb)) return this.security(verb, arg);
    if (!this.upstream) {
      if (verb === 'NOOP') this.reply(200, 'NOOP ok');
      else if (verb === 'SYST') this.reply(215, 'UNIX Type: L8');
      else if (verb === 'FEAT') this.reply(211, ['Features:', 'EPSV', 'EPRT', 'PASV', 'REST STREAM', ...this.tlsFeatures(), 'End']);
      else if (BEFORE_LOGIN.has(verb)) this.reply(530, 'Log in with USER user@host[:port] first');
      else this.reply(530, 'Not logged in: USER user@host[:port] first');
      return true;
    }
    const up = this.upstream;
    switch (verb) {
      case 'PASV':
      case 'EPSV':
        await this.passive(verb, arg);
        return true;
      case 'PORT':
      case 'EPRT':
        this.active(verb, arg);
        return true;
      case 'LPRT':
      case 'LPSV':
        this.reply(502, `${verb} is not supported; use EPRT/EPSV`);
        return true;
      case 'REST':
        if (!/^\d{1,18}$/.test(arg.trim())) {
          this.reply(501, 'REST needs a byte offset');
          return true;
        }
        // Kept here and sent just before the transfer: REST must immediately precede it upstream,
        // and the proxy's own EPSV/PASV come in between.
        this.restart = arg.trim();
        this.reply(350, `Restarting at ${this.restart}; send RETR or STOR`);
        return true;
      case 'MODE':
        if (arg.trim().toUpperCase() !== 'S') {
          this.reply(504, 'Only stream mode is supported');
          return true;
        }
        break;
      case 'FEAT': {
        const r = await up.command('FEAT', arg, this.t.reply, this.signal);
        const lines = r.lines.filter((l, i) => i === 0 || i === r.lines.length - 1 || !FEATURES_DROPPED.test(l));
        // The proxy's own FTPS goes in before the closing line of a multi-line 211.
        if (r.code === 211 && lines.length > 1) lines.splice(lines.length - 1, 0, ...this.tlsFeatures().map((f) => ` ${f}`));
        this.relay({ code: r.code, lines });
        return true;
      }
      default:
        if (DOWNLOADS.has(verb) || LISTINGS.has(verb) || UPLOADS.has(verb)) {
          await this.transfer(cmd);
          return true;
        }
    }
    const r = await up.command(verb, arg, this.t.reply, this.signal);
    this.relay(r);
    await this.afterReply(verb, r);
    return true;
  }

  private tlsFeatures(): string[] {
    return this.ctx.tls ? TLS_FEATURES : [];
  }

  /**
   * RFC 2228/4217 commands. With ftp-proxy.tls: AUTH TLS (before USER) moves the control
   * connection to TLS, PBSZ 0 and PROT P/C set the data connections' protection. Everything else
   * (CCC, ADAT, MIC ...) is refused: the proxy must read every command.
   */
  private async security(verb: string, arg: string): Promise<boolean> {
    const a = arg.trim().toUpperCase();
    if (!this.ctx.tls) {
      this.reply(verb === 'AUTH' ? 502 : 503, 'TLS is not supported through this proxy');
      return true;
    }
    switch (verb) {
      case 'AUTH':
        if (a !== 'TLS' && a !== 'TLS-C' && a !== 'SSL') this.reply(504, 'Only AUTH TLS is supported');
        else if (this.secure) this.reply(503, 'Already in TLS');
        else if (this.userGiven) this.reply(503, 'AUTH TLS must come before USER');
        else return this.startTls();
        return true;
      case 'PBSZ':
        if (!this.secure) this.reply(503, 'AUTH TLS first');
        else {
          this.pbsz = true;
          this.reply(200, 'PBSZ=0');
        }
        return true;
      case 'PROT':
        if (!this.secure || !this.pbsz) this.reply(503, this.secure ? 'PBSZ first' : 'AUTH TLS first');
        else if (a === 'P') {
          this.protectData = true;
          this.reply(200, 'Protection level set to Private');
        } else if (a === 'C') {
          if (this.ctx.config.tls.required) this.reply(534, 'Data connections must be protected here (PROT P)');
          else {
            this.protectData = false;
            this.reply(200, 'Protection level set to Clear');
          }
        } else this.reply(a === 'S' || a === 'E' ? 536 : 504, `PROT ${a} is not supported`);
        return true;
      default:
        this.reply(502, `${verb} is not supported through this proxy`);
        return true;
    }
  }

  /**
   * AUTH TLS (RFC 4217 §4): the line reader lets go before the 234 (lines the client sent behind
   * the command in clear are dropped, never taken inside TLS), then the handshake on the same
   * connection. A failed handshake ends the session.
   */
  private async startTls(): Promise<boolean> {
    const plain = this.client;
    this.reader.detach();
    this.reply(234, 'AUTH TLS ok; start the TLS handshake');
    this.upgrading = true;
    try {
      const secure = await acceptTls(plain, this.ctx.tls as SecureContext, this.t['control-idle']);
      this.client = secure;
      this.reader = new LineReader(secure, this.ctx.config['max-line-length']);
      this.secure = true;
      secure.once('close', () => this.abort.abort());
      this.watchControl(secure);
      this.log.debug({ protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'ftp: control connection in TLS');
      return true;
    } catch (err) {
      this.log.info({ err: messageOf(err) }, 'ftp: AUTH TLS failed');
      return false;
    } finally {
      this.upgrading = false;
    }
  }

  /** After a login (230) or a directory change, learn the working directory (PWD). */
  private async afterReply(verb: string, r: FtpReply): Promise<void> {
    if (!this.upstream || !(r.code === 230 || (CWD_VERBS.has(verb) && r.code >= 200 && r.code < 300))) return;
    const pwd = await this.upstream.command('PWD', '', this.t.reply, this.signal);
    this.cwd = (pwd.code === 257 ? parsePwdReply(pwd.lines[0] as string) : null) ?? '/';
  }

  private async user(arg: string): Promise<boolean> {
    // The name the server was given (a user@host's user part), for the log lines of blocked
    // transfers and the quarantine: decoded as the paths are, printable, at most 64 characters.
    const named = (name: string) => {
      this.loginName = printable(textOf(name), 64);
    };
    if (this.ctx.config.upstream) {
      named(arg);
      const r = await (this.upstream as UpstreamControl).command('USER', arg, this.t.reply, this.signal);
      this.relay(r);
      await this.afterReply('USER', r);
      return true;
    }
    const u = parseUserAtHost(arg);
    if (!u) {
      if (this.upstream) {
        named(arg);
        this.relay(await this.upstream.command('USER', arg, this.t.reply, this.signal));
      } else this.reply(501, 'Log in as USER user@host[:port]');
      return true;
    }
    const port = u.port ?? 21;
    if (this.upstream) {
      // One server per session: a second USER may only name the same one.
      if (u.host.toLowerCase() !== this.targetHost.toLowerCase() || port !== this.upstream.port) {
        this.reply(530, 'Already connected to another server; reconnect to change servers');
        return true;
      }
      named(u.user);
      const r = await this.upstream.command('USER', u.user, this.t.reply, this.signal);
      this.relay(r);
      await this.afterReply('USER', r);
      return true;
    }
    if (!upstreamAllowed(this.ctx.config['allowed-upstreams'], u.host, port)) {
      this.log.warn({ host: u.host, port }, 'ftp: server not in allowed-upstreams');
      this.reply(530, `Server ${u.host}:${port} is not allowed through this proxy`);
      return true;
    }
    const greeting = await this.connectUpstream(u.host, port, u.user);
    if (!greeting) return true;
    named(u.user);
    const r = await (this.upstream as unknown as UpstreamControl).command('USER', u.user, this.t.reply, this.signal);
    this.relay(r);
    await this.afterReply('USER', r);
    return true;
  }

  private replaceSetup(s: ClientDataSetup | null): void {
    this.setup?.close();
    this.setup = s;
  }

  private async passive(verb: 'PASV' | 'EPSV', arg: string): Promise<void> {
    const a = arg.trim().toUpperCase();
    if (verb === 'EPSV' && a === 'ALL') {
      this.epsvAll = true;
      this.reply(200, 'EPSV ALL ok');
      return;
    }
    if (verb === 'EPSV' && a !== '' && a !== '1' && a !== '2') {
      this.reply(501, 'EPSV: unknown argument');
      return;
    }
    const v4 = plainAddress(this.localAddress).includes('.');
    if (verb === 'EPSV' && a !== '' && (a === '1') !== v4) {
      this.reply(522, `Network protocol not supported, use (${v4 ? 1 : 2})`);
      return;
    }
    if (verb === 'PASV' && !v4) {
      this.reply(502, 'PASV needs IPv4; use EPSV');
      return;
    }
    this.replaceSetup(null);
    let l: PassiveListener;
    try {
      l = await PassiveListener.open(plainAddress(this.localAddress), this.clientAddress, this.ctx.config['data-ports']);
    } catch (err) {
      this.log.warn({ err: messageOf(err) }, 'ftp: no passive data port');
      this.reply(425, 'Cannot open a passive data connection');
      return;
    }
    this.setup = l;
    if (verb === 'PASV') this.reply(227, `Entering Passive Mode (${formatHostPortNumbers({ host: plainAddress(this.localAddress), port: l.port })})`);
    else this.reply(229, `Entering Extended Passive Mode (|||${l.port}|)`);
  }

  private active(verb: 'PORT' | 'EPRT', arg: string): void {
    if (this.epsvAll) {
      this.reply(501, `${verb} refused after EPSV ALL`);
      return;
    }
    const hp = verb === 'PORT' ? parseHostPortNumbers(arg) : parseEprt(arg);
    if (!hp) {
      this.reply(501, `${verb}: syntax error in the address`);
      return;
    }
    const refused = activeAddressAllowed(hp, this.clientAddress);
    if (refused) {
      this.log.warn({ verb, host: hp.host, port: hp.port }, 'ftp: bounce attempt refused');
      this.reply(501, `${verb} refused: ${refused}`);
      return;
    }
    this.replaceSetup(new ActiveTarget(hp.host, hp.port, this.localAddress));
    this.reply(200, `${verb} command successful`);
  }

  /** A data connection to the server (EPSV, else PASV); always to the control connection's address. */
  private async upstreamData(up: UpstreamControl): Promise<Socket | FtpReply> {
    let port: number | null;
    const epsv = await up.command('EPSV', '', this.t.reply, this.signal);
    if (epsv.code === 229) port = parseEpsvReply(epsv.lines.at(-1) as string);
    else if (up.address.includes('.')) {
      const pasv = await up.command('PASV', '', this.t.reply, this.signal);
      if (pasv.code !== 227) return pasv;
      port = parsePasvReply(pasv.lines.join(' '))?.port ?? null;
    } else return epsv;
    if (port === null) return { code: 425, lines: ['425 The server gave no usable passive address'] };
    try {
      return this.track(await connectData(up.address, port, this.t.connect, this.dataSignal));
    } catch (err) {
      this.log.warn({ target: this.target, err: messageOf(err) }, 'ftp: server data connection failed');
      return { code: 425, lines: ['425 Cannot open the data connection to the server'] };
    }
  }

  /** Sends REST (if one is pending) and the transfer command (then calls `sent`); the server's first reply. */
  private async startUpstream(up: UpstreamControl, cmd: FtpCommand, restart: string | null, sent: () => void): Promise<FtpReply> {
    if (restart !== null) {
      const r = await up.command('REST', restart, this.t.reply, this.signal);
      if (r.code !== 350) return r;
    }
    up.send(cmd.verb, cmd.arg);
    sent();
    return up.reply(this.t.reply, this.signal);
  }

  /**
   * A command's path, absolute and normalised: `CWD secret` + `RETR x` and `RETR /ok/../secret/x`
   * are both /secret/x. Joined as octets (the working directory is too), then decoded once (UTF-8
   * when valid) for rules and records.
   */
  private absolute(arg: string): string {
    return textOf(posix.normalize(arg.startsWith('/') ? arg : posix.join(this.cwd, arg)));
  }

  private facts(cmd: FtpCommand, direction: 'download' | 'upload'): Parameters<DocAcl['match']>[0] {
    const host = this.targetHost;
    return { client: this.clientAddress, host, url: `ftp://${urlHost(host)}${this.absolute(cmd.arg)}`, method: cmd.verb, contentType: null, size: null, direction };
  }

  /**
   * The path of a transfer in the access log and the log lines: the one the doc-ACL matched, so the
   * directory shows. A listing without an argument is of the working directory; one whose argument
   * is ls options (`LIST -la`) keeps it as sent.
   */
  private logPath(cmd: FtpCommand): string {
    return printable(LISTINGS.has(cmd.verb) && cmd.arg.startsWith('-') ? textOf(cmd.arg) : this.absolute(cmd.arg));
  }

  private async transfer(cmd: FtpCommand): Promise<void> {
    const setup = this.setup;
    this.setup = null;
    const restart = this.restart;
    this.restart = null;
    if (!setup) {
      this.reply(425, 'Use PORT, EPRT, PASV or EPSV first');
      return;
    }
    if (this.ctx.config.tls.required && !this.protectData) {
      setup.close();
      this.reply(521, 'Data connections must be protected here: PBSZ 0 and PROT P first');
      return;
    }
    this.busy = true;
    const xfer = { abort: new AbortController(), sockets: new Set<Socket>() };
    this.xfer = xfer;
    const onSessionEnd = () => xfer.abort.abort();
    this.signal.addEventListener('abort', onSessionEnd, { once: true });
    xfer.abort.signal.addEventListener('abort', () => {
      for (const s of xfer.sockets) s.destroy();
    });
    let aborted = false;
    const stopWatch = new AbortController();
    const watching = this.watchForAbort(stopWatch.signal, () => {
      aborted = true;
      this.log.info({ verb: cmd.verb }, 'ftp: transfer aborted by the client (ABOR)');
      xfer.abort.abort();
    });
    const started = performance.now();
    const rec: FtpAccessRecord = { client: this.clientAddress, target: this.target, command: cmd.verb, path: this.logPath(cmd), status: 0, verdict: '-', rule: null, bytes: 0, ms: 0 };
    const x: Transfer = {
      cmd,
      setup,
      restart,
      rec,
      finalReply: (code, text) => {
        rec.status = code;
        this.reply(code, text);
      },
      finalRelay: (r) => {
        rec.status = r.code;
        this.relay(r);
      },
    };
    try {
      if (LISTINGS.has(cmd.verb)) {
        await this.downloadUnscanned(x);
        return;
      }
      const direction = UPLOADS.has(cmd.verb) ? 'upload' : 'download';
      const m = this.ctx.docAcl.match(this.facts(cmd, direction));
      rec.rule = m.name;
      if (m.rule.action === 'deny') {
        rec.verdict = 'denied';
        x.finalReply(550, `${cmd.verb} denied by policy (${m.name})`);
        return;
      }
      const scan = m.rule.action === 'scan' && m.rule.antivirus !== 'none' ? { rule: m.rule, name: m.name } : null;
      if (!scan) rec.verdict = 'unscanned';
      if (scan && direction === 'upload' && this.ctx.config['partial-uploads'] === 'refuse' && isPartialUpload(cmd.verb, restart)) {
        rec.verdict = 'denied';
        this.log.info({ verb: cmd.verb, restart, path: rec.path }, 'ftp: partial upload refused (ftp-proxy.partial-uploads)');
        x.finalReply(550, `${cmd.verb === 'APPE' ? 'APPE' : `STOR after REST ${restart ?? ''}`} refused: only whole files can be scanned here`);
        return;
      }
      if (direction === 'upload') await (scan ? this.uploadScanned(x, scan) : this.uploadUnscanned(x));
      else await (scan ? this.downloadScanned(x, scan) : this.downloadUnscanned(x));
    } finally {
      stopWatch.abort();
      await watching;
      this.signal.removeEventListener('abort', onSessionEnd);
      this.xfer = null;
      this.busy = false;
      setup.close();
      rec.ms = performance.now() - started;
      this.ctx.access(rec);
      if (aborted) this.reply(226, 'ABOR command successful');
    }
  }

  private scannerOf(rule: DocAclRule): ScanService {
    return this.ctx.scannerFor(rule.antivirus === 'none' ? null : rule.antivirus);
  }

  private newSpool(scan: ScanRule): Spool {
    return new Spool(this.ctx.spoolDir, this.ctx.config['spool-memory'], { hash: this.scannerOf(scan.rule).wantsHash });
  }

  private async scanSpool(spool: Spool, cmd: FtpCommand, scan: ScanRule): Promise<Verdict> {
    const path = spool.filePath();
    const source = path ? ({ kind: 'file', path, size: spool.size } as const) : ({ kind: 'chunks', chunks: spool.memoryChunks } as const);
    const v = await this.scannerOf(scan.rule).scan({
      source,
      name: this.facts(cmd, 'download').url,
      hash: spool.contentHash ?? undefined,
      signal: this.dataSignal,
      origin: { source: 'ftp', group: scan.name },
      ...(path ? {} : { toFile: () => spool.fileForScan() }),
    });
    this.ctx.onVerdict(v);
    return v;
  }

  /** 550 for what is blocked for good (found, skipped, unknown); 451 when the engine failed (try again). */
  private static blockCode(v: Verdict | null): number {
    return v?.status === 'error' ? 451 : 550;
  }

  /** Listings and downloads the doc-ACL lets through unscanned: relayed as they arrive. */
  private async downloadUnscanned(x: Transfer): Promise<void> {
    const upData = await this.startServer(x, true);
    if (!upData) return;
    const clientData = await this.connectClient(x, upData);
    if (!clientData) return;
    this.watchSend(x, clientData, 'client');
    await this.pipe(x, upData, clientData, this.pace(false));
  }

  /**
   * Downloads: spooled and scanned while the client gets a held or trickled share (src/proxy/trickle.ts).
   * A REST offset is not passed on: the server sends the whole file, which is scanned whole, and the
   * client gets it from the offset on. Its first bytes count as held by the client for the trickle
   * cap, so a resumed download never gets past the cap of a download of the whole before the verdict.
   */
  private async downloadScanned(x: Transfer, scan: ScanRule): Promise<void> {
    const skip = x.restart === null ? 0 : Number(x.restart);
    x.restart = null;
    const upData = await this.startServer(x, true, this.ctx.config['max-object-size']);
    if (!upData) return;
    const clientData = await this.connectClient(x, upData);
    if (!clientData) return;
    this.watchSend(x, clientData, 'client');
    const { cmd, rec } = x;
    const spool = this.newSpool(scan);
    const feed = new SpoolFeed(spool);
    let verdict: Verdict | null = null;
    try {
      const receiving = receiveAll(upData, feed, this.ctx.config['max-object-size'], this.pace(false)).catch((err: unknown) => {
        upData.destroy();
        feed.fail(err);
      });
      const decision = feed.settled.then(async () => {
        if (!feed.complete) throw feed.error ?? new Error('download failed');
        verdict = await this.scanSpool(spool, cmd, scan);
        return decideFor(scan, verdict).action;
      });
      decision.catch(() => undefined);
      const outcome: TrickleOutcome = await trickle({
        feed,
        decision,
        params: scan.rule.trickle,
        totalSize: null,
        skip,
        sink: { begin: () => undefined, write: (c) => writeChunk(clientData, c) },
        signal: this.dataSignal,
      });
      // The client's side failed (it stopped reading, reset, ABOR): the server's side ends too.
      if (outcome.kind === 'failed') upData.destroy();
      await receiving;
      rec.bytes = outcome.sent;
      const v = verdict as Verdict | null;
      rec.verdict = verdictLabel(v);
      switch (outcome.kind) {
        case 'passed':
          await endSocket(clientData);
          await this.relayFinal(x);
          return;
        case 'blocked':
        case 'aborted': {
          if (outcome.kind === 'aborted') this.reset(clientData);
          else await endSocket(clientData).catch(() => undefined);
          const reason = v ? verdictReason(v) : 'not scanned';
          if (v) await this.ctx.quarantine(v, spool, { url: this.facts(cmd, 'download').url, rule: scan.name, direction: 'download', client: this.clientAddress, user: this.loginName });
          this.log.info({ user: this.loginName, target: this.target, path: rec.path, verdict: v?.status, reason, sent: outcome.sent, rule: scan.name }, 'ftp: download blocked');
          await this.cutShort(x, FtpSession.blockCode(v), `${outcome.kind === 'aborted' ? 'Transfer aborted' : 'Transfer refused'}: ${reason}`);
          return;
        }
        case 'failed': {
          this.reset(clientData);
          this.dataFailed(x, feed.error instanceof DataTimeout ? feed.error : outcome.error, 'ftp: download failed');
          if (feed.error instanceof TransferLimit) await this.cutShort(x, 552, `Transfer aborted: ${messageOf(feed.error)}`);
          else await this.cutShort(x, 426, 'Connection closed; transfer aborted');
          return;
        }
      }
    } finally {
      upData.destroy();
      await spool.dispose();
    }
  }

  /** Uploads the doc-ACL lets through unscanned: relayed as they arrive. */
  private async uploadUnscanned(x: Transfer): Promise<void> {
    const upData = await this.startServer(x, true);
    if (!upData) return;
    try {
      const clientData = await this.connectClient(x, upData);
      if (!clientData) return;
      this.watchSend(x, upData, 'server');
      upData.resume();
      await this.pipe(x, clientData, upData, this.pace(true));
    } finally {
      upData.destroy();
    }
  }

  /**
   * Uploads: received whole and scanned before the server hears of them, so nothing of an infected
   * file is ever written on the server.
   */
  private async uploadScanned(x: Transfer, scan: ScanRule): Promise<void> {
    this.reply(150, 'Ok to send data; the file is scanned before it goes to the server');
    const clientData = await this.connectClient(x, null);
    if (!clientData) return;
    const spool = this.newSpool(scan);
    try {
      try {
        const max = this.ctx.config['max-object-size'];
        await receiveAll(clientData, spool, max, this.pace(true), Math.max(max, UPLOAD_DRAIN_MIN));
      } catch (err) {
        clientData.destroy();
        this.dataFailed(x, err, 'ftp: upload aborted');
        if (err instanceof TransferLimit) x.finalReply(552, `Upload refused: ${err.message}`);
        else x.finalReply(426, 'Connection closed; transfer aborted');
        return;
      }
      clientData.destroy();
      x.rec.bytes = spool.size;
      const v = await this.scanSpool(spool, x.cmd, scan);
      x.rec.verdict = verdictLabel(v);
      const d = decideFor(scan, v);
      if (d.action === 'block') {
        this.log.info({ user: this.loginName, target: this.target, path: x.rec.path, verdict: v.status, reason: d.reason, rule: scan.name }, 'ftp: upload blocked');
        await this.ctx.quarantine(v, spool, { url: this.facts(x.cmd, 'upload').url, rule: scan.name, direction: 'upload', client: this.clientAddress, user: this.loginName });
        x.finalReply(FtpSession.blockCode(v), `Upload refused: ${d.reason}`);
        return;
      }
      await this.sendSpool(x, spool);
    } finally {
      await spool.dispose();
    }
  }

  /** A scanned upload that passed: only now is the transfer started on the server. */
  private async sendSpool(x: Transfer, spool: Spool): Promise<void> {
    const upData = await this.startServer(x, false);
    if (!upData) return;
    try {
      this.watchSend(x, upData, 'server');
      upData.resume();
      try {
        await copyData(spool.createReadStream() as AsyncIterable<Buffer>, upData);
      } catch (err) {
        upData.destroy();
        this.log.info({ err: messageOf(err) }, 'ftp: upload to the server failed');
        await this.cutShort(x, 426, 'The server data connection failed; transfer aborted');
        return;
      }
      await this.relayFinal(x);
    } finally {
      upData.destroy();
    }
  }

  /**
   * Opens the server's data connection and starts the transfer there (REST, then the command).
   * Null when the server refused (its reply was the final one) or announced a size over `maxSize`
   * (the client got 552). `announce` passes the server's 1xx on (false when the proxy has already
   * said 150 itself).
   */
  private async startServer(x: Transfer, announce: boolean, maxSize = Infinity): Promise<Socket | null> {
    const up = this.upstream as UpstreamControl;
    const raw = await this.upstreamData(up);
    if (!(raw instanceof Socket)) {
      x.finalRelay(raw);
      return null;
    }
    // FTPS: the data connection's handshake starts once the command is out (servers accept it
    // only then), alongside the wait for the first reply.
    let securing: Promise<Socket> | null = null;
    const first = await this.startUpstream(up, x.cmd, x.restart, () => {
      securing = up.secureData(raw, this.t.connect);
      securing.catch(() => undefined);
    }).catch((err: unknown) => {
      raw.destroy();
      throw err;
    });
    if (first.code >= 200) {
      raw.destroy();
      x.finalRelay(first);
      return null;
    }
    // Refused before a byte is read: the client gets 552 in place of the 150. Sizes the server does
    // not announce (or understates) are bounded as the file arrives (receiveAll).
    const size = parseAnnouncedSize(first);
    if (size !== null && size > maxSize) {
      raw.destroy();
      this.log.info({ target: this.target, path: x.rec.path, size, max: maxSize }, 'ftp: download refused: the server announced a size over max-object-size');
      await this.cutShort(x, 552, `Transfer refused: larger than max-object-size (${maxSize} bytes; the server announced ${size})`);
      return null;
    }
    let upData: Socket;
    try {
      upData = securing ? this.track(await (securing as Promise<Socket>)) : raw;
    } catch (err) {
      raw.destroy();
      this.log.warn({ target: this.target, err: messageOf(err) }, 'ftp: TLS on the server data connection failed');
      await this.cutShort(x, 425, 'Cannot open the data connection to the server');
      return null;
    }
    if (announce) this.relay(first);
    return upData;
  }

  /**
   * The client's data connection. Null when it cannot be opened: the client got 425, and a transfer
   * the server already started (`upData`) was cut short.
   */
  private async connectClient(x: Transfer, upData: Socket | null): Promise<Socket | null> {
    try {
      const raw = this.track(await x.setup.connect(this.t['data-connect'], this.dataSignal));
      if (!this.protectData) return raw;
      // PROT P: the proxy is the TLS server on the client's data connection, whoever connected.
      const secure = this.track(await acceptTls(raw, this.ctx.tls as SecureContext, this.t['data-connect']));
      return overTcp(secure, raw, 'server');
    } catch (err) {
      this.log.info({ err: messageOf(err) }, 'ftp: client data connection failed');
      if (!upData) {
        x.finalReply(425, 'Cannot open the data connection');
        return null;
      }
      upData.destroy();
      await this.cutShort(x, 425, 'Cannot open the data connection');
      return null;
    }
  }

  /** Cuts a data connection with a TCP reset (under TLS too): the peer sees the transfer fail, never a clean end. */
  private reset(s: Socket): void {
    resetData(s);
  }

  /**
   * What the sending peer of a transfer must keep up while the proxy waits for its data (see
   * dataChunks): timeouts.data-idle, and for uploads upload-min-rate. Only the proxy's waits count:
   * a receiver that reads slowly holds the sender back without cutting it.
   */
  private pace(upload: boolean): DataPace {
    return { idleMs: this.t['data-idle'], minRate: upload ? this.ctx.config['upload-min-rate'] : 0 };
  }

  /**
   * The receiving end of a transfer (`peer`'s data connection): past timeouts.send with bytes it
   * does not take, it is reset; the write waiting on it then fails and the transfer ends with 426.
   * Time with nothing to send (a held download waiting for its verdict) never counts.
   */
  private watchSend(x: Transfer, s: Socket, peer: 'client' | 'server'): void {
    this.ctx.sends.watch(s, (unsent) => {
      this.ctx.onTimeout('send');
      this.log.warn(
        { target: this.target, command: x.cmd.verb, path: x.rec.path, peer, unsent, timeout: this.t.send },
        `ftp: the ${peer} stopped reading the data connection (timeouts.send); transfer aborted`,
      );
      resetData(s);
    });
  }

  /** A transfer whose data broke: a sender that kept the proxy waiting is a warning (and counted), the rest is info. */
  private dataFailed(x: Transfer, err: unknown, message: string): void {
    if (!(err instanceof DataTimeout)) {
      this.log.info({ err: messageOf(err) }, message);
      return;
    }
    this.ctx.onTimeout('data');
    const upload = UPLOADS.has(x.cmd.verb);
    this.log.warn(
      { target: this.target, command: x.cmd.verb, path: x.rec.path, peer: upload ? 'client' : 'server', err: err.message, dataIdle: this.t['data-idle'], ...(upload ? { minRate: this.ctx.config['upload-min-rate'] } : {}) },
      `ftp: the ${upload ? 'client' : 'server'} kept the transfer waiting (timeouts.data-idle${upload ? ', upload-min-rate' : ''}); transfer aborted`,
    );
  }

  /**
   * Unscanned: `from` is copied to `to` as it arrives; either side breaking (a reset of `from`
   * included) ends the transfer with 426, and `to` is reset, so its peer never takes it as complete.
   */
  private async pipe(x: Transfer, from: Socket, to: Socket, pace: DataPace): Promise<void> {
    try {
      await copyData(dataChunks(from, pace), to, x.rec);
    } catch (err) {
      from.destroy();
      this.reset(to);
      this.dataFailed(x, err, 'ftp: transfer aborted');
      await this.cutShort(x, 426, 'Connection closed; transfer aborted');
      return;
    }
    await this.relayFinal(x);
  }

  /** The server's final reply of the transfer goes to the client. */
  private async relayFinal(x: Transfer): Promise<void> {
    x.finalRelay(await (this.upstream as UpstreamControl).reply(this.t.reply, this.signal));
  }

  /** A transfer the proxy cut short: the server's final reply is read and dropped, the client gets `code`. */
  private async cutShort(x: Transfer, code: number, text: string): Promise<void> {
    // The outcome is decided: it is recorded even when the client leaves while the server's reply is awaited.
    x.rec.status = code;
    let r: FtpReply;
    try {
      r = await (this.upstream as UpstreamControl).reply(this.t.reply, this.signal);
    } catch (err) {
      // A server that stopped (the transfer was cut because it did): the client hears of the
      // transfer in FTP's terms first; the session then ends with 421.
      x.finalReply(code, text);
      throw err;
    }
    this.log.debug({ code: r.code }, 'ftp: final reply of an aborted transfer dropped');
    x.finalReply(code, text);
  }
}

/** One transfer: what the client asked, and the final reply (recorded for the access log). */
interface Transfer {
  cmd: FtpCommand;
  setup: ClientDataSetup;
  /** REST offset to send just before the command (a scanned download clears it and skips the bytes itself). */
  restart: string | null;
  rec: FtpAccessRecord;
  finalReply(code: number, text: string | readonly string[]): void;
  finalRelay(r: FtpReply): void;
}

/** The doc-ACL rule (and its name) that asks for a scan. */
interface ScanRule {
  rule: DocAclRule;
  name: string;
}

/** Block statuses for decide(): FTP answers with its own codes (blockCode), these are not used. */
const BLOCK_STATUS = { found: 550, skipped: 550, unknown: 550, error: 451 } as const;

function decideFor(scan: ScanRule, v: Verdict): ReturnType<typeof decide> {
  return decide(v, { acceptStatus: scan.rule['accept-status'], blockStatus: BLOCK_STATUS });
}

/** Writes everything `from` yields to `to` with backpressure, then ends `to`; counts into `rec` if given. */
async function copyData(from: AsyncIterable<Buffer>, to: Socket, rec?: FtpAccessRecord): Promise<void> {
  for await (const chunk of from) {
    if (rec) rec.bytes += chunk.length;
    await writeChunk(to, chunk);
  }
  await endSocket(to);
}

/**
 * Reads a data connection to its end into `into`; DataReset when the peer reset it (what arrived
 * may be cut short, so it is never taken as complete), TransferLimit once it would pass `max`
 * bytes. With `drain` (uploads) up to that many bytes more are read on and dropped before that, so
 * the client finishes sending and reads the 552 instead of meeting a reset in the middle of its
 * send. A download drains nothing: reading on would only make the server send more of a file that
 * is refused anyway, and keep the client waiting for its 552.
 */
async function receiveAll(from: Socket, into: { readonly size: number; write(c: Buffer): Promise<void>; end(): Promise<void> }, max: number, pace: DataPace, drain = 0): Promise<void> {
  let over = -1;
  for await (const chunk of dataChunks(from, pace)) {
    if (over < 0 && into.size + chunk.length <= max) {
      await into.write(chunk);
      continue;
    }
    over = Math.max(over, 0) + chunk.length;
    if (over > drain) break;
  }
  if (over >= 0) throw new TransferLimit(`larger than max-object-size (${max} bytes)`);
  await into.end();
}

/** `host:port` against globs like `*:21`, `ftp.example.com:*`, `127.0.0.1:*` (case-insensitive). */
export function upstreamAllowed(patterns: readonly string[], host: string, port: number): boolean {
  const subject = `${host.toLowerCase()}:${port}`;
  return patterns.some((p) => picomatch.isMatch(subject, p.toLowerCase(), { dot: true, bash: false }));
}

/** Writes with backpressure: resolves when the socket can take more; rejects when it is gone. */
export function writeChunk(s: Socket, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    if (s.destroyed || s.writableEnded) {
      reject(new DataError('data connection closed'));
      return;
    }
    if (s.write(chunk)) {
      resolve();
      return;
    }
    const onDrain = () => {
      cleanup();
      resolve();
    };
    const onClose = () => {
      cleanup();
      reject(new DataError('data connection closed'));
    };
    const cleanup = () => {
      s.off('drain', onDrain);
      s.off('close', onClose);
    };
    s.once('drain', onDrain);
    s.once('close', onClose);
  });
}

/** Ends the socket and waits until everything written has been handed to the kernel. */
export function endSocket(s: Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    if (s.destroyed) {
      reject(new DataError('data connection closed'));
      return;
    }
    const onFinish = () => {
      cleanup();
      resolve();
    };
    const onClose = () => {
      cleanup();
      if (s.writableFinished) resolve();
      else reject(new DataError('data connection closed'));
    };
    const cleanup = () => {
      s.off('finish', onFinish);
      s.off('close', onClose);
    };
    s.once('finish', onFinish);
    s.once('close', onClose);
    s.end();
  });
}
