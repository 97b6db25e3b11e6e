import type { Socket } from 'node:net';
import type { SecureContext, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { Pop3ProxyConfig } from '../../config/mail-proxy-schema.js';
import { messageOf } from '../../core/errors.js';
import { acceptTls, connectTls, connectWithTimeout, type UpstreamTls } from '../../core/net.js';
import { cutConnection, type SendStallWatch } from '../../core/send-stall.js';
import { Spool } from '../../core/spool.js';
import { NAMED_USER_MECHANISMS, SaslIdentity } from '../sasl.js';
import type { CompiledPolicy, ReplaceDeps, ReplaceResult } from '../../mailproxy/index.js';
import { renderReplacement, scanAndReplace } from '../../mailproxy/index.js';
import { readMessage, type MessageInput } from '../../mime/input.js';
import { DotStuffer, LineReader, LineTooLong, MultilineDecoder, MultilineScanner, parseCommand, PeerClosed, ReadTimeout, responseKind } from './wire.js';

/**
 * One POP3 client session through the proxy: commands relayed one at a time (so responses stay in
 * step), multi-line responses framed, RETR and TOP answers spooled, scanned and rewritten before
 * the client gets a byte of them (src/mailproxy decides what is replaced). Policy comes in through
 * `ctx`; nothing here decides what is infected.
 */
export interface Pop3Counters {
  connections: number;
  active: number;
  /** RETR/TOP answers scanned. */
  scanned: number;
  /** Of those, rewritten (documents replaced). */
  replaced: number;
  /** Of those, with an engine error on a document. */
  engineErrors: number;
  /** Commands refused (command-acl, unknown, malformed, too long). */
  refused: number;
  /** Sessions ended because the upstream server failed (connect, timeout, close, garbage). */
  upstreamFailures: number;
  /** Sessions cut because the client stopped reading an answer (timeouts.send). */
  sendTimeouts: number;
}

export interface Pop3Context {
  config: Pop3ProxyConfig;
  policy: CompiledPolicy;
  /** The replacer's dependencies; `user` and `label` are set per message. */
  replace: ReplaceDeps;
  /** Is host:port (lower case) one a client may name with USER user@host? */
  allowedUpstream(hostPort: string): boolean;
  log: Logger;
  counters: Pop3Counters;
  /** For STLS; null = not offered. */
  tls: SecureContext | null;
  /** How the upstream's certificate is checked (tls-verify, tls-ca read at start). */
  upstreamTls: UpstreamTls;
  /** timeouts.send: the client's connection is watched for a client that stops reading. */
  sends: SendStallWatch;
}

/** The upstream server failed: the session ends with -ERR. */
class UpstreamError extends Error {}
/** The session cannot go on safely (a login whose name the proxy could not read): -ERR and close. */
class FailClosed extends Error {}

/** Capabilities relayed from the server's CAPA; the rest (PIPELINING, STLS, UTF8, LANG ...) are things the proxy does not do. */
const RELAYED_CAPABILITIES = new Set(['TOP', 'USER', 'SASL', 'RESP-CODES', 'AUTH-RESP-CODE', 'LOGIN-DELAY', 'EXPIRE', 'UIDL', 'IMPLEMENTATION']);
/** Bounds of a CAPA answer kept to be filtered. */
const MAX_CAPA_BYTES = 64 * 1024;
/** Header fields the rewriter may change (a replaced body): never sent early by the keep-alive. */
const CHANGEABLE_FIELD = /^(content-|mime-version\s*:)/i;

const CRLF = Buffer.from('\r\n');
/** Bytes of a corked answer buffered before they are pushed out (views of the spool, no copies). */
const CORK_LIMIT = 256 * 1024;

/** `host:port` / `[v6]:port` / `host` (default port). */
export function parseHostPort(text: string, defaultPort: number): { host: string; port: number } | null {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+))(?::(\d{1,5}))?$/.exec(text);
  if (!m) return null;
  const port = m[3] === undefined ? defaultPort : Number(m[3]);
  if (port < 1 || port > 65535) return null;
  return { host: (m[1] ?? m[2]) as string, port };
}

/** Padding of `n` bytes: lines of blanks (each at most 78 bytes with CRLF); none when n < 2. */
export function paddingLines(n: number): Buffer {
  if (n < 2) return Buffer.alloc(0);
  // Filled in place (one allocation): an infected attachment's padding can be megabytes.
  const out = Buffer.alloc(n, 0x20);
  let pos = 0;
  while (pos < n) {
    let take = Math.min(78, n - pos);
    if (n - pos - take === 1) take -= 1; // never leave a single byte: a line needs two
    out[pos + take - 2] = 0x0d;
    out[pos + take - 1] = 0x0a;
    pos += take;
  }
  return out;
}

export class Pop3Session {
  /** The client's connection: replaced by its TLS layer after STLS, as is the reader. */
  private client: Socket;
  private cr: LineReader;
  private secure = false;
  private up: Socket | null = null;
  private ur: LineReader | null = null;
  /** The login name the server accepted (the ACLs' `users`); null before login or when none is known. */
  private user: string | null = null;
  /** The server accepted a login (whether or not its name is known). */
  private loggedIn = false;
  /** The name of USER, waiting for PASS: taken as the user only on PASS's +OK. */
  private claimed: string | null = null;
  private readonly abort = new AbortController();
  private readonly clientAddress: string | null;
  private readonly log: Logger;
  /** The command being answered, for the send timeout's log line (never a password). */
  private sending = 'the greeting';
  /** What the session did, for its end line: the server, messages fetched, scanned and replaced. */
  private readonly summary = { upstream: null as string | null, started: Date.now(), commands: 0, fetched: 0, replaced: 0, failedLogins: 0, end: 'connection closed' };

  constructor(
    client: Socket,
    private readonly ctx: Pop3Context,
    id: number,
  ) {
    this.client = client;
    // Answers go out in several writes (status, body pieces, terminator): without NODELAY each
    // small write after the first waits for the client's delayed ACK (~40 ms).
    client.setNoDelay(true);
    this.cr = new LineReader(client);
    this.clientAddress = client.remoteAddress ?? null;
    this.log = ctx.log.child({ session: id, client: this.clientAddress });
    client.once('close', () => this.abort.abort(new PeerClosed('client closed the connection')));
    this.watchSends(client);
  }

  /**
   * A client that stops reading a big answer (RETR) would hold the session, its upstream and the
   * spool for ever: send() waits for 'drain'. Past timeouts.send without write progress the
   * connection is reset; the waiting send() then fails (client gone) and the session ends.
   */
  private watchSends(socket: Socket): void {
    this.ctx.sends.watch(socket, (unsent) => {
      this.ctx.counters.sendTimeouts++;
      this.log.warn(
        { user: this.user, sending: this.sending, unsent, timeout: this.cfg.timeouts.send },
        'pop3: client stopped reading the answer (timeouts.send); connection reset',
      );
      this.summary.end = 'send timeout (the client stopped reading)';
      cutConnection(socket);
    });
  }

  private get cfg(): Pop3ProxyConfig {
    return this.ctx.config;
  }

  async run(): Promise<void> {
    try {
      if (this.cfg.upstream !== null) {
        const target = parseHostPort(this.cfg.upstream, 110) as { host: string; port: number };
        const greeting = await this.connectUpstream(target.host, target.port);
        // The server's own greeting: its APOP timestamp must reach the client.
        await this.send(Buffer.concat([greeting, CRLF]));
      } else {
        await this.sendLine('+OK avgate POP3 proxy ready (log in as USER name@server)');
      }
      for (;;) {
        let line: Buffer | null;
        try {
          line = await this.cr.readLine(this.cfg['max-line-length'], this.cfg.timeouts.idle);
        } catch (err) {
          if (err instanceof LineTooLong) {
            this.ctx.counters.refused++;
            await this.sendLine('-ERR command line too long');
            continue;
          }
          throw err;
        }
        if (line === null) break;
        const cmd = parseCommand(line);
        if (!cmd) {
          this.ctx.counters.refused++;
          await this.sendLine('-ERR malformed command');
          continue;
        }
        this.summary.commands++;
        if (!(await this.command(cmd))) {
          this.summary.end = 'QUIT';
          break;
        }
      }
    } catch (err) {
      // PeerClosed: the client's connection ended (the client, or the proxy cutting it: the send
      // timeout says so above, a stop's deadline does not).
      if (this.summary.end === 'connection closed') this.summary.end = err instanceof ReadTimeout ? 'idle timeout' : err instanceof PeerClosed ? 'connection closed' : messageOf(err);
      if (err instanceof UpstreamError) {
        this.ctx.counters.upstreamFailures++;
        this.log.warn({ err: err.message }, 'pop3: upstream failed');
        await this.sendLine(`-ERR ${err.message}`).catch(() => undefined);
      } else if (err instanceof FailClosed) {
        this.log.warn({ err: err.message }, 'pop3: session closed (fail closed)');
        await this.sendLine(`-ERR ${err.message}`).catch(() => undefined);
      } else if (err instanceof ReadTimeout) {
        this.log.info('pop3: client idle, closing');
        await this.sendLine('-ERR idle timeout, closing').catch(() => undefined);
      } else if (!(err instanceof PeerClosed) && !this.client.destroyed) {
        this.log.warn({ err: messageOf(err) }, 'pop3: session failed');
        await this.sendLine('-ERR proxy error, closing').catch(() => undefined);
      }
    } finally {
      this.up?.destroy();
      this.client.end();
      setTimeout(() => this.client.destroy(), 1000).unref();
      // One line per session, as p3scan and Kernun's pop3-proxy keep: who, which server, what was fetched.
      const m = this.summary;
      this.log.info(
        { user: this.user, upstream: m.upstream, commands: m.commands, fetched: m.fetched, replaced: m.replaced, failedLogins: m.failedLogins, end: m.end, ms: Date.now() - m.started },
        'pop3: session ended',
      );
    }
  }

  /**
   * Connects to the POP3 server (upstream-tls: plain, STLS, or implicit TLS) and returns its
   * greeting. With STLS the greeting is the one from before TLS (its APOP timestamp stays valid:
   * it is the same session); bytes the server sends between its +OK and the handshake end the
   * connection (injection).
   */
  private async connectUpstream(host: string, port: number): Promise<Buffer> {
    this.summary.upstream = `${host}:${port}`;
    const label = `pop3 upstream ${host}:${port}`;
    const mode = this.cfg['upstream-tls'];
    const deadline = Date.now() + this.cfg.timeouts.connect;
    let sock: Socket;
    try {
      sock =
        mode === 'tls'
          ? await connectTls({ host, port }, this.ctx.upstreamTls, this.cfg.timeouts.connect)
          : await connectWithTimeout({ host, port }, { timeoutMs: this.cfg.timeouts.connect, label, signal: this.abort.signal });
    } catch (err) {
      throw new UpstreamError(`cannot connect to the POP3 server: ${messageOf(err)}`);
    }
    sock.on('error', () => undefined); // reported through the reader
    sock.setNoDelay(true);
    this.up = sock;
    this.ur = new LineReader(sock);
    const greeting = await this.upLine();
    if (responseKind(greeting) !== 'ok') throw new UpstreamError('the POP3 server did not greet with +OK');
    if (mode !== 'starttls') return greeting;
    this.upWrite('STLS');
    const answer = await this.upLine();
    if (responseKind(answer) !== 'ok') throw new UpstreamError(`the POP3 server refused STLS: ${answer.subarray(0, 120).toString('latin1')}`);
    const reader = this.ur;
    const injected = reader.buffered > 0;
    reader.detach();
    if (injected) throw new UpstreamError('the POP3 server sent data between its STLS answer and TLS (injection attempt)');
    try {
      sock = await connectTls({ host, port, socket: sock }, this.ctx.upstreamTls, deadline - Date.now());
    } catch (err) {
      throw new UpstreamError(`TLS with the POP3 server failed: ${messageOf(err)}`);
    }
    sock.on('error', () => undefined);
    this.up = sock;
    this.ur = new LineReader(sock);
    return greeting;
  }

  /** One line of the server; its trouble becomes UpstreamError. */
  private async upLine(): Promise<Buffer> {
    try {
      const line = await (this.ur as LineReader).readLine(this.cfg['max-line-length'], this.cfg.timeouts.upstream, this.abort.signal);
      if (line === null) throw new UpstreamError('the POP3 server closed the connection');
      return line;
    } catch (err) {
      if (err instanceof UpstreamError || this.abort.signal.aborted) throw err;
      throw new UpstreamError(`POP3 server: ${err instanceof ReadTimeout ? 'no answer in time' : err instanceof LineTooLong ? 'response line too long' : messageOf(err)}`);
    }
  }

  private async upSome(): Promise<Buffer> {
    try {
      return await (this.ur as LineReader).readSome(this.cfg.timeouts.upstream, this.abort.signal);
    } catch (err) {
      if (this.abort.signal.aborted) throw err;
      throw new UpstreamError(`POP3 server: ${err instanceof ReadTimeout ? 'no data in time' : messageOf(err)}`);
    }
  }

  /**
   * Writes to the client, waiting for the socket to drain (backpressure). While an answer is
   * corked (see fetchScanned) a full buffer first uncorks: the wait for 'drain' needs the bytes out.
   */
  private async send(b: Buffer): Promise<void> {
    if (this.client.destroyed) throw new PeerClosed('client gone');
    if (!this.client.write(b)) {
      if (this.client.writableCorked > 0 && this.client.writableLength < CORK_LIMIT) return;
      uncorkAll(this.client);
      if (!this.client.writableNeedDrain) return;
      await new Promise<void>((resolve, reject) => {
        const done = () => {
          this.client.off('drain', done);
          this.client.off('close', gone);
          resolve();
        };
        const gone = () => {
          this.client.off('drain', done);
          reject(new PeerClosed('client gone'));
        };
        this.client.once('drain', done);
        this.client.once('close', gone);
      });
    }
  }

  private sendLine(text: string): Promise<void> {
    return this.send(Buffer.from(`${text}\r\n`, 'latin1'));
  }

  private upWrite(text: string): void {
    (this.up as Socket).write(`${text}\r\n`, 'latin1');
  }

  /** Sends a command upstream and relays its one-line answer; returns the answer's kind. */
  private async relaySingle(raw: string): Promise<'ok' | 'err'> {
    this.upWrite(raw);
    const line = await this.upLine();
    const kind = responseKind(line);
    if (kind !== 'ok' && kind !== 'err') throw new UpstreamError('malformed response from the POP3 server');
    await this.send(Buffer.concat([line, CRLF]));
    return kind;
  }

  /** Sends a command upstream and reads its status line: the line when +OK; an -ERR is relayed to the client (null). */
  private async upStatus(raw: string): Promise<Buffer | null> {
    this.upWrite(raw);
    const line = await this.upLine();
    const kind = responseKind(line);
    if (kind !== 'ok' && kind !== 'err') throw new UpstreamError('malformed response from the POP3 server');
    if (kind === 'ok') return line;
    await this.send(Buffer.concat([line, CRLF]));
    return null;
  }

  /** Relays the rest of a multi-line answer as it is (the status line is already sent). */
  private async relayMultilineBody(): Promise<void> {
    const scanner = new MultilineScanner();
    while (!scanner.done) {
      const chunk = await this.upSome();
      const n = scanner.push(chunk);
      await this.send(chunk.subarray(0, n));
      if (n < chunk.length) (this.ur as LineReader).unshift(chunk.subarray(n));
    }
  }

  /** Sends a command whose +OK answer is multi-line and relays all of it. */
  private async relayMultiline(raw: string): Promise<void> {
    const status = await this.upStatus(raw);
    if (!status) return;
    await this.send(Buffer.concat([status, CRLF]));
    await this.relayMultilineBody();
  }

  /** Handles one command; false when the session ends (QUIT). */
  private async command(cmd: { verb: string; args: string[]; raw: string }): Promise<boolean> {
    const { verb, args } = cmd;
    this.sending = verb === 'RETR' || verb === 'TOP' || verb === 'LIST' || verb === 'UIDL' ? [verb, ...args].join(' ') : verb;
    // PASS is judged with the name USER gave (a rule may refuse a user's login); every other
    // command with the name the server accepted.
    const decision = this.ctx.policy.command({ client: this.clientAddress, user: this.user ?? (verb === 'PASS' ? this.claimed : null), command: verb });
    if (decision.action === 'deny' && verb !== 'QUIT') {
      this.ctx.counters.refused++;
      this.log.info({ command: verb, user: this.user, rule: decision.rule }, 'pop3: command refused by command-acl');
      await this.sendLine('-ERR command refused by policy');
      return true;
    }
    switch (verb) {
      case 'QUIT':
        if (this.up) await this.relaySingle('QUIT').catch(() => this.sendLine('+OK bye'));
        else await this.sendLine('+OK bye');
        return false;
      case 'CAPA':
        await this.capa();
        return true;
      case 'STLS':
        await this.startTls();
        return true;
      default:
        break;
    }
    // pop3-proxy.tls.required: no name or password crosses in clear (QUIT, CAPA and STLS are above).
    if (this.cfg.tls.required && !this.secure && verb !== 'NOOP') return this.refuse('-ERR TLS required: STLS first');
    switch (verb) {
      case 'USER':
        await this.userCommand(args);
        return true;
      case 'APOP':
      case 'AUTH':
        if (!this.up) {
          await this.sendLine(`-ERR ${verb} needs a fixed upstream server; log in with USER name@server`);
          return true;
        }
        if (verb === 'APOP') {
          if (args.length !== 2) return this.refuse('-ERR APOP takes a name and a digest');
          this.upWrite(`APOP ${args.join(' ')}`);
          await this.loginAnswer(await this.upLine(), args[0] as string);
        } else {
          await this.auth(args);
        }
        return true;
      case 'RETR':
      case 'TOP':
        if (!this.up) return this.refuse('-ERR log in first (USER name@server)');
        if (!validMessageArgs(verb, args)) return this.refuse(`-ERR ${verb} ${verb === 'TOP' ? 'msg n' : 'msg'}: bad arguments`);
        this.summary.fetched++;
        if (decision.useAntivirus) await this.fetchScanned(verb, args);
        else await this.relayMultiline(`${verb} ${args.join(' ')}`);
        return true;
      case 'LIST':
      case 'UIDL':
        if (!this.up) return this.refuse('-ERR log in first (USER name@server)');
        if (args.length > 1 || (args.length === 1 && !/^\d{1,10}$/.test(args[0] as string))) return this.refuse(`-ERR ${verb}: bad arguments`);
        if (args.length === 0) await this.relayMultiline(verb);
        else await this.relaySingle(`${verb} ${args[0]}`);
        return true;
      case 'PASS':
        if (!this.up) return this.refuse('-ERR USER first');
        // The password may hold blanks: relayed as typed.
        this.upWrite(cmd.raw.replace(/^\S+/, 'PASS'));
        await this.loginAnswer(await this.upLine(), this.claimed);
        return true;
      case 'STAT':
      case 'NOOP':
      case 'RSET':
      case 'LAST':
      case 'DELE':
        if (!this.up) return this.refuse('-ERR log in first (USER name@server)');
        if (verb === 'DELE' ? !(args.length === 1 && /^\d{1,10}$/.test(args[0] as string)) : args.length > 0) return this.refuse(`-ERR ${verb}: bad arguments`);
        await this.relaySingle([verb, ...args].join(' '));
        return true;
      default:
        // Unknown commands are not relayed: whether their answer is multi-line is unknown, and a
        // wrong guess would put the session out of step.
        return this.refuse('-ERR command not supported by the proxy');
    }
  }

  private async refuse(text: string): Promise<true> {
    this.ctx.counters.refused++;
    await this.sendLine(text);
    return true;
  }

  private async userCommand(args: string[]): Promise<void> {
    if (args.length !== 1) {
      await this.refuse('-ERR USER takes one name');
      return;
    }
    const arg = args[0] as string;
    if (this.up) {
      const kind = await this.relaySingle(`USER ${arg}`);
      // The name as the server got it: `bob@corp.example` is not `bob` (a server with domains).
      this.claimed = kind === 'ok' ? arg : null;
      return;
    }
    const at = arg.lastIndexOf('@');
    const target = at > 0 ? parseHostPort(arg.slice(at + 1), this.cfg['upstream-port'] ?? (this.cfg['upstream-tls'] === 'tls' ? 995 : 110)) : null;
    if (!target) {
      await this.refuse('-ERR log in as USER name@server[:port]');
      return;
    }
    const hostPort = `${target.host.toLowerCase()}:${target.port}`;
    if (!this.ctx.allowedUpstream(hostPort)) {
      this.log.info({ upstream: hostPort }, 'pop3: upstream not allowed');
      await this.refuse(`-ERR server ${hostPort} is not allowed`);
      return;
    }
    const name = arg.slice(0, at);
    try {
      await this.connectUpstream(target.host, target.port);
    } catch (err) {
      // The client may try another server: this session goes on.
      (this.up as Socket | null)?.destroy();
      this.up = null;
      this.ur = null;
      this.ctx.counters.upstreamFailures++;
      this.log.warn({ upstream: hostPort, err: messageOf(err) }, 'pop3: upstream failed');
      await this.sendLine(`-ERR ${messageOf(err)}`);
      return;
    }
    const kind = await this.relaySingle(`USER ${name}`);
    this.claimed = kind === 'ok' ? name : null;
  }

  /**
   * The server's answer to a login (PASS, APOP, AUTH): the login name is taken only with its
   * +OK, and a failed login leaves none. A login the server accepts while the proxy could not read
   * its name, with `users` rules configured, ends the session: the rules cannot be applied.
   */
  private async loginAnswer(line: Buffer, user: string | null): Promise<void> {
    const kind = responseKind(line);
    if (kind !== 'ok' && kind !== 'err') throw new UpstreamError('malformed response from the POP3 server');
    this.claimed = null;
    if (kind === 'err') {
      this.summary.failedLogins++;
      this.log.info({ user, upstream: this.summary.upstream }, 'pop3: login refused by the server');
    }
    if (kind === 'ok') {
      if (user === null && this.ctx.policy.userRules) throw new FailClosed('the login name could not be read by the proxy, closing');
      this.user = user;
      this.loggedIn = true;
      this.log.debug({ user }, 'pop3: logged in');
    }
    await this.send(Buffer.concat([line, CRLF]));
  }

  /**
   * SASL (RFC 5034): continuation lines relayed both ways until +OK or -ERR. The login name is
   * read from the exchange where the mechanism shows it (PLAIN, LOGIN, CRAM-MD5); with `users`
   * rules other mechanisms are refused, and a response that shows no usable name is not relayed
   * (`*` cancels the exchange). A response that is not base64 is never relayed.
   */
  private async auth(args: string[]): Promise<void> {
    if (args.length === 0) {
      // Some servers list their mechanisms as a multi-line answer.
      const status = await this.upStatus('AUTH');
      if (!status) return;
      const lines = (await this.multilineLines()).filter((l) => l !== '' && this.mechanismOffered(l));
      await this.send(Buffer.from([status.toString('latin1'), ...lines, '.', ''].join('\r\n'), 'latin1'));
      return;
    }
    if (args.length > 2 || !/^[A-Za-z0-9_-]{1,20}$/.test(args[0] as string)) return void (await this.refuse('-ERR AUTH takes a mechanism and an initial response'));
    const sasl = new SaslIdentity(args[0] as string);
    if (args[1] !== undefined && !sasl.initial(args[1])) return void (await this.refuse('-ERR invalid base64 in the initial response'));
    if (sasl.problem !== null && this.ctx.policy.userRules) {
      this.log.info({ mechanism: sasl.mechanism, reason: sasl.problem }, 'pop3: AUTH refused: the login name cannot be read and users rules are configured');
      return void (await this.refuse(`-ERR authentication refused by the proxy: ${sasl.problem}`));
    }
    this.upWrite(`AUTH ${args.join(' ')}`);
    for (let round = 0; round < 20; round++) {
      const line = await this.upLine();
      const kind = responseKind(line);
      if (kind === null) throw new UpstreamError('malformed response from the POP3 server');
      if (kind !== 'cont') return this.loginAnswer(line, sasl.identified);
      await this.send(Buffer.concat([line, CRLF]));
      const answer = await this.cr.readLine(this.cfg['max-line-length'], this.cfg.timeouts.idle);
      if (answer === null) throw new PeerClosed('client closed during AUTH');
      const text = answer.toString('latin1');
      const step = sasl.response(text);
      const refusal =
        step === 'invalid' ? 'response not base64' : step === 'relay' && sasl.problem !== null && this.ctx.policy.userRules ? `authentication refused by the proxy: ${sasl.problem}` : null;
      if (refusal === null) {
        this.upWrite(text);
        continue;
      }
      // Not relayed: the exchange is cancelled, the server's answer to that is not the client's.
      this.log.info({ mechanism: sasl.mechanism, reason: refusal }, 'pop3: AUTH cancelled by the proxy');
      this.upWrite('*');
      const end = await this.upLine();
      if (responseKind(end) !== 'err') throw new FailClosed('the server did not cancel the authentication, closing');
      return void (await this.refuse(`-ERR ${refusal}`));
    }
    throw new UpstreamError('too many AUTH rounds');
  }

  /** With `users` rules only SASL mechanisms that show the login name are offered (others are refused). */
  private mechanismOffered(name: string): boolean {
    return !this.ctx.policy.userRules || NAMED_USER_MECHANISMS.has(name.trim().toUpperCase());
  }

  /** The lines of a multi-line answer whose status was read (bounded, MAX_CAPA_BYTES). */
  private async multilineLines(): Promise<string[]> {
    const decoder = new MultilineDecoder();
    const body: Buffer[] = [];
    let size = 0;
    while (!decoder.done) {
      const { data, rest } = decoder.push(await this.upSome());
      for (const d of data) {
        size += d.length;
        if (size <= MAX_CAPA_BYTES) body.push(d);
      }
      if (rest) (this.ur as LineReader).unshift(rest);
    }
    return Buffer.concat(body).toString('latin1').split(/\r?\n/);
  }

  /** STLS while the client may still upgrade (RFC 2595): a certificate configured, not yet in TLS, not logged in. */
  private get stlsOffered(): boolean {
    return this.ctx.tls !== null && !this.secure && !this.loggedIn && this.claimed === null;
  }

  /**
   * STLS (RFC 2595): +OK, then the TLS handshake on the same connection; the session goes on in
   * TLS from where it was (not logged in). Whatever the client sent after STLS in clear is dropped
   * with the old reader (no command injection into the TLS session).
   */
  private async startTls(): Promise<void> {
    if (!this.ctx.tls) return void (await this.sendLine('-ERR STLS is not available through this proxy'));
    if (this.secure) return void (await this.refuse('-ERR already in TLS'));
    if (this.loggedIn || this.claimed !== null) return void (await this.refuse('-ERR STLS only before logging in'));
    // The reader lets go before the +OK: what it holds was sent in clear before the client could
    // see the answer (dropped); what comes after (the ClientHello) waits in the paused socket for TLS.
    this.cr.detach();
    await this.sendLine('+OK begin TLS negotiation');
    let secure: TLSSocket;
    try {
      secure = await acceptTls(this.client, this.ctx.tls, this.cfg.timeouts.idle);
    } catch (err) {
      this.log.info({ err: messageOf(err) }, 'pop3: STLS failed');
      throw new PeerClosed(messageOf(err));
    }
    this.client = secure;
    this.cr = new LineReader(secure);
    this.secure = true;
    secure.once('close', () => this.abort.abort(new PeerClosed('client closed the connection')));
    this.watchSends(secure);
    this.log.debug({ protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'pop3: client in TLS');
  }

  private async capa(): Promise<void> {
    const stls = this.stlsOffered ? ['STLS'] : [];
    if (!this.up) {
      await this.send(Buffer.from(['+OK capability list follows', 'USER', 'TOP', 'UIDL', 'RESP-CODES', ...stls, 'IMPLEMENTATION avgate', '.', ''].join('\r\n'), 'latin1'));
      return;
    }
    const status = await this.upStatus('CAPA');
    if (!status) return;
    const lines = (await this.multilineLines())
      .filter((l) => RELAYED_CAPABILITIES.has((l.split(' ')[0] ?? '').toUpperCase()))
      .map((l) => (/^SASL /i.test(l) ? ['SASL', ...l.split(' ').slice(1).filter((m) => m !== '' && this.mechanismOffered(m))].join(' ') : l))
      .filter((l) => l.toUpperCase() !== 'SASL');
    await this.send(Buffer.from([status.toString('latin1'), ...lines, ...stls, '.', ''].join('\r\n'), 'latin1'));
  }

  /**
   * RETR / TOP with antivirus: the answer is spooled (un-stuffed), scanned and rewritten, then
   * sent re-stuffed. Nothing of it reaches the client before the verdict, except what the
   * keep-alive sends (the status line and top header fields the rewrite never changes).
   */
  private async fetchScanned(verb: string, args: string[]): Promise<void> {
    const status = await this.upStatus(`${verb} ${args.join(' ')}`);
    if (!status) return;
    const deps = this.ctx.replace;
    // Hashed while it arrives: the whole-message prescan can then be answered by the verdict cache.
    const spool = new Spool(deps.spoolDir, deps.policy['spool-memory'], { hash: deps.scanner.wantsHash });
    let result: ReplaceResult | null = null;
    const stuffer = new DotStuffer();
    let early: KeepAlive | null = null;
    try {
      const { total, tooLarge } = await this.spoolBody(spool);
      const label = `pop3 ${this.user ?? '-'} ${args[0]}`;
      let output: MessageInput;
      let size: number;
      if (tooLarge) {
        this.log.warn({ message: label, size: total, limit: deps.policy['max-message-size'] }, 'pop3: message over max-message-size, replaced unscanned');
        output = await this.tooLargeNotice(spool, total);
        size = output.length;
        this.ctx.counters.scanned++;
        this.ctx.counters.replaced++;
        this.summary.replaced++;
      } else {
        early = this.keepAlive(spool, stuffer);
        // This session's log (session id, client): the replacement line joins its "session ended".
        result = await scanAndReplace(spool, { ...deps, log: this.log, user: this.user, label, ...(verb === 'TOP' ? { partial: true } : {}) }, this.abort.signal);
        await early.stop();
        this.ctx.counters.scanned++;
        if (result.changed) {
          this.ctx.counters.replaced++;
          this.summary.replaced++;
        }
        if (result.status === 'error') this.ctx.counters.engineErrors++;
        output = result.output;
        size = result.size;
      }
      // A message too large to scan is not padded: its notice stands for the whole of it.
      const pad = verb === 'RETR' && !tooLarge && this.cfg['pad-to-listed-size'] && size < total ? paddingLines(total - size) : Buffer.alloc(0);
      let skip = 0;
      // The status line, the message's pieces (cut at every stuffed dot) and the terminator go
      // out in one writev (up to CORK_LIMIT) instead of one segment each: fewer system calls.
      this.client.cork();
      if (early && early.sentBytes >= 0) {
        // The keep-alive already sent the status and some header lines: they must be the output's first bytes.
        skip = early.sentBytes;
        const head = early.sent();
        const outHead = await headBytes(output, skip);
        if (!outHead.equals(head)) {
          this.log.error({ message: label }, 'pop3: early header lines differ from the rewritten message; closing');
          this.client.destroy();
          throw new PeerClosed('closed: early lines differ');
        }
      } else {
        await this.send(Buffer.from(`${statusLine(status, size + pad.length)}\r\n`, 'latin1'));
      }
      let offset = 0;
      // A spool held in memory is sent from its pieces (no stream per message).
      const pieces = output instanceof Spool && !output.onDisk ? output.memoryChunks : readMessage(output);
      for await (const chunk of pieces) {
        let piece = chunk;
        if (offset < skip) {
          const drop = Math.min(skip - offset, piece.length);
          offset += drop;
          piece = piece.subarray(drop);
          if (piece.length === 0) continue;
        }
        offset += piece.length;
        for (const b of stuffer.push(piece)) await this.send(b);
      }
      if (pad.length > 0) for (const b of stuffer.push(pad)) await this.send(b);
      await this.send(stuffer.end());
      uncorkAll(this.client);
    } catch (err) {
      uncorkAll(this.client);
      await early?.stop();
      if (err instanceof UpstreamError || err instanceof PeerClosed || this.abort.signal.aborted) throw err;
      this.log.error({ err: messageOf(err) }, 'pop3: scanning a message failed');
      if (early && early.sentBytes >= 0) {
        // Part of an answer is out: the only safe end is to cut the connection.
        this.client.destroy();
        throw new PeerClosed('closed after a failed scan');
      }
      await this.sendLine('-ERR the message could not be scanned');
    } finally {
      await result?.dispose();
      await spool.dispose();
    }
  }

  /** Reads the multi-line body into the spool (un-stuffed); past max-message-size the rest is read and dropped. */
  private async spoolBody(spool: Spool): Promise<{ total: number; tooLarge: boolean }> {
    const max = this.ctx.replace.policy['max-message-size'];
    const decoder = new MultilineDecoder();
    let total = 0;
    let tooLarge = false;
    while (!decoder.done) {
      const { data, rest } = decoder.push(await this.upSome());
      for (const d of data) {
        const room = max - total;
        total += d.length;
        if (total > max) tooLarge = true;
        // Up to the limit the bytes are kept (the header of a message too large to scan is reused).
        if (room > 0) await spool.write(room >= d.length ? d : d.subarray(0, room));
      }
      if (rest) (this.ur as LineReader).unshift(rest);
    }
    await spool.end();
    return { total, tooLarge };
  }

  /** The message in place of one over max-message-size: its top header fields and the notice. */
  private async tooLargeNotice(spool: Spool, total: number): Promise<Buffer> {
    const deps = this.ctx.replace;
    const maxHead = deps.limits?.maxHeaderSize ?? 64 * 1024;
    const head = (await spool.readRange(0, Math.min(spool.size, maxHead))).toString('latin1');
    const end = head.search(/\r?\n\r?\n/);
    const fields: string[] = [];
    if (end >= 0) {
      let keep = false;
      for (const line of head.slice(0, end).split(/\r?\n/)) {
        if (/^[ \t]/.test(line)) {
          if (keep) fields.push(line);
          continue;
        }
        keep = !CHANGEABLE_FIELD.test(line) && /^[!-9;-~]+[ \t]*:/.test(line);
        if (keep) fields.push(line);
      }
    }
    const text = renderReplacement(deps.replacement, {
      virusNames: [],
      filename: null,
      status: 'skipped',
      reason: `the message (${total} bytes) is larger than the scanning limit (${deps.policy['max-message-size']} bytes) and was not scanned`,
      contentType: 'message/rfc822',
      part: '',
    });
    return Buffer.from(
      [...fields, 'MIME-Version: 1.0', 'Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: 8bit', '', ...text.split(/\r?\n/)].join('\r\n').replace(/(\r\n)*$/, '\r\n'),
      'utf8',
    );
  }

  /**
   * p3scan's keep-alive: once a scan has taken `after`, the status line and then one top header
   * line every `interval` go out, so the client does not time out. Only fields the rewriter never
   * changes are sent (none after the first Content-* or MIME-Version field), never body bytes.
   */
  private keepAlive(spool: Spool, stuffer: DotStuffer): KeepAlive {
    const ka = this.cfg['keep-alive'];
    const state: KeepAlive = { sentBytes: -1, sent: () => Buffer.alloc(0), stop: async () => undefined };
    if (ka.after <= 0) return state;
    const sentParts: Buffer[] = [];
    let lines: Buffer[] | null = null;
    let stopped = false;
    let timer: NodeJS.Timeout | null = null;
    const tick = async () => {
      if (stopped) return;
      if (lines === null) {
        lines = await earlyLines(spool, ka['max-lines'], this.ctx.replace.limits?.maxHeaderSize ?? 64 * 1024);
        if (stopped) return;
        state.sentBytes = 0;
        await this.send(Buffer.from('+OK message follows (scanned by avgate)\r\n', 'latin1'));
      } else {
        const next = lines.shift();
        if (next) {
          sentParts.push(next);
          state.sentBytes += next.length;
          for (const b of stuffer.push(next)) await this.send(b);
        }
      }
      if (!stopped) schedule(ka.interval);
    };
    let running: Promise<void> = Promise.resolve();
    const schedule = (ms: number) => {
      timer = setTimeout(() => {
        running = tick().catch(() => undefined);
      }, ms);
    };
    schedule(ka.after);
    state.stop = async () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      // A line being written finishes first: the answer goes on after it, never through it.
      await running;
    };
    state.sent = () => Buffer.concat(sentParts);
    return state;
  }
}

interface KeepAlive {
  /** Message bytes sent early (-1 = not even the status line). */
  sentBytes: number;
  sent(): Buffer;
  /** Stops it; resolves once a line being written is out. */
  stop(): Promise<void>;
}

/**
 * Top header lines (with their line ends) before the first field the rewriter may change. Every
 * line taken is a field or a field's continuation: the MIME parser starts the body at the first
 * line that is neither (a line without a colon, a stray CR ...), so nothing from there on is
 * header, and sending it early would hand out body bytes before the verdict.
 */
async function earlyLines(spool: Spool, max: number, maxHead: number): Promise<Buffer[]> {
  const head = await spool.readRange(0, Math.min(spool.size, maxHead));
  const out: Buffer[] = [];
  let pos = 0;
  while (out.length < max) {
    const lf = head.indexOf(0x0a, pos);
    if (lf < 0) break;
    const line = head.subarray(pos, lf + 1);
    const text = line.toString('latin1');
    if (/^\r?\n$/.test(text)) break; // end of the header
    if (CHANGEABLE_FIELD.test(text)) break;
    const continuation = pos > 0 && /^[ \t]/.test(text);
    if (!continuation && !/^[!-9;-~]+[ \t]*:/.test(text)) break; // not a header field: the body starts here
    out.push(line);
    pos = lf + 1;
  }
  // A field's continuation lines may follow the last one taken: drop back to a field start.
  while (out.length > 0) {
    const nextStart = out.reduce((n, b) => n + b.length, 0);
    const following = head[nextStart];
    if (following === 0x20 || following === 0x09) out.pop();
    else break;
  }
  return out;
}

async function headBytes(input: MessageInput, n: number): Promise<Buffer> {
  if (n === 0) return Buffer.alloc(0);
  if (Buffer.isBuffer(input)) return input.subarray(0, n);
  if (input instanceof Spool) return input.readRange(0, n);
  const parts: Buffer[] = [];
  let got = 0;
  for await (const c of readMessage(input)) {
    parts.push(c);
    got += c.length;
    if (got >= n) break;
  }
  return Buffer.concat(parts).subarray(0, n);
}

/** Ends every cork() of the socket: what was buffered goes out in one writev. */
function uncorkAll(socket: Socket): void {
  while (socket.writableCorked > 0) socket.uncork();
}

/** `+OK 1234 octets` gets the size actually sent; other status texts are kept. */
function statusLine(status: Buffer, size: number): string {
  const text = status.toString('latin1');
  return /^\+OK \d+ octets\b/i.test(text) ? text.replace(/^\+OK \d+/i, `+OK ${size}`) : text;
}

function validMessageArgs(verb: string, args: string[]): boolean {
  const n = (s: string | undefined) => s !== undefined && /^\d{1,10}$/.test(s);
  return verb === 'TOP' ? args.length === 2 && n(args[0]) && n(args[1]) : args.length === 1 && n(args[0]);
}
