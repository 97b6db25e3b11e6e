import { bounceFor } from './dsn.js';
import { Socket } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { domainToASCII } from 'node:url';
import { SMTPServer, type SMTPServerAddress, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import type { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { hostMatcher, type SmtpConfig } from '../../config/smtp-schema.js';
import { listenerCredentials } from '../../config/tls-schema.js';
import { AvgateError, messageOf } from '../../core/errors.js';
import type { Logger } from '../../core/logging.js';
import { splitHostPort } from '../../core/net.js';
import { Spool, sweepSpoolDir } from '../../core/spool.js';
import { NextHopClient, nextHopOptions } from './next-hop.js';
import { passThroughHandler } from './pass-through.js';
import { combineReplies, isPermanent, isPositive, reply, replySummary, replyText } from './reply.js';
import type { ClientAttributes, EsmtpParams, InboundMessage, MailFrom, MessageHandler, NextHop, PartitionHook, SmtpReply } from './types.js';
import { listenOn, type Listeners } from '../../core/listen.js';
import { GracefulServer, type Drain } from '../../core/drain.js';

export interface SmtpServerDeps {
  /** Base of spool-dir. */
  stateDir: string;
  log: Logger;
  /** Decides and delivers; default: passThroughHandler. */
  handler?: MessageHandler;
  /** SMTP mode: recipients with another key than the first get 452 4.5.3 (see types.ts). */
  partition?: PartitionHook;
  /** Default: a NextHopClient for smtp.next-hop (closed with the server). */
  nextHop?: NextHop;
  /** serve's listening sockets, handed from one generation to the next on a reload. */
  listeners?: Listeners | null;
}

export interface SmtpCounters {
  connections: number;
  /** Transactions that reached the end of DATA. */
  messages: number;
  bytes: number;
  /** DATA replies (LMTP: per recipient) by class. */
  accepted: number;
  deferred: number;
  rejected: number;
  oversize: number;
  /** Clients gone in the middle of DATA (nothing delivered). */
  clientAborts: number;
  handlerErrors: number;
  handlerTimeouts: number;
  /** Bounces sent for recipients the next hop refused in a transaction it took (SMTP). */
  bounces: number;
}

interface ConnState {
  peer: { address: string; port: number };
  /** Key of the first accepted recipient of the current transaction (partition hook). */
  partitionKey: string | null;
  xforward: ClientAttributes;
  /** An XFORWARD has been seen: smtp-server's HELO name and host name are the forwarded ones since. */
  forwarded: boolean;
  /** This transaction's XFORWARD said HELO=[UNAVAILABLE] (kept from smtp-server, see guardXforwardHelo). */
  heloUnavailable: boolean;
  /** Inside DATA or waiting for the handler: not to be cut by a graceful stop. */
  busy: boolean;
}

/** The 421 of a stop, and of sessions kept by a reload's old configuration (see closeNow). */
const SHUTTING_DOWN = '4.3.2 Service shutting down';
const RESTARTING = '4.3.2 Service restarting, try again';

/** Why a message's signal aborts once its handler settled (lets pending work go). */
const HANDLER_SETTLED = new Error('message handled');
/** A reply as the error smtp-server turns into a reply line. */
function smtpError(code: number, text: string): Error & { responseCode: number } {
  return Object.assign(new Error(text), { responseCode: code });
}

let queueSeq = 0;
/** 12 characters: milliseconds (base 36) and a sequence number, so ids sort by arrival. */
export function newQueueId(): string {
  queueSeq = (queueSeq + 1) % 36 ** 3;
  return Date.now().toString(36).toUpperCase().padStart(9, '0') + queueSeq.toString(36).toUpperCase().padStart(3, '0');
}

function paramsOf(a: SMTPServerAddress): EsmtpParams {
  return a.args ? { ...a.args } : {};
}

/** MAIL and RCPT parameters the filter announces (SIZE, 8BITMIME, SMTPUTF8, DSN) and relays; RFC 5321 4.1.1.11: others get 555. */
const MAIL_PARAMS = new Set(['SIZE', 'BODY', 'SMTPUTF8', 'RET', 'ENVID']);
const RCPT_PARAMS = new Set(['NOTIFY', 'ORCPT']);

/** The first parameter of a MAIL/RCPT command that is not in `known`, or null. */
function unknownParams(a: SMTPServerAddress, known: ReadonlySet<string>): string | null {
  if (!a.args || typeof a.args !== 'object') return null;
  for (const k of Object.keys(a.args)) if (!known.has(k.toUpperCase())) return k.toUpperCase().replace(/[^\x21-\x7e]/g, '?').slice(0, 40);
  return null;
}

/** smtp-server maps values [UNAVAILABLE] to false and drops nothing else; keys are upper case. */
function attributes(map: Map<string, string | number | false>): ClientAttributes {
  const out: Record<string, string> = {};
  for (const [k, v] of map) {
    if (k.includes(':')) continue; // ADDR:DEFAULT and the like: smtp-server's own bookkeeping
    out[k] = v === false ? '[UNAVAILABLE]' : String(v);
  }
  return out;
}

/**
 * smtp-server turns an IDN domain (xn--...) into Unicode. Without SMTPUTF8 the client can only
 * have sent the ASCII form, so it is restored; the next hop gets the address as it was sent.
 */
function restoreAddress(a: SMTPServerAddress, smtpUtf8: boolean): void {
  if (smtpUtf8) return;
  const at = a.address.lastIndexOf('@');
  // eslint-disable-next-line no-control-regex
  if (at < 0 || !/[^\x00-\x7f]/.test(a.address.slice(at + 1))) return;
  const ascii = domainToASCII(a.address.slice(at + 1));
  if (ascii) a.address = `${a.address.slice(0, at)}@${ascii}`;
}

/**
 * The inbound side of the content filter, on nodemailer's smtp-server: SMTP or LMTP, SIZE,
 * 8BITMIME, PIPELINING, DSN, SMTPUTF8; XFORWARD/XCLIENT from trusted clients only. Each message is
 * spooled (memory, then a 0600 file), handed to the handler, and answered only once the handler has
 * settled — the client keeps responsibility for the message until then.
 */
/** Bytes of a message read for the headers a bounce quotes. */
const BOUNCE_HEADERS_MAX = 64 * 1024;

export class SmtpFilterServer extends GracefulServer {
  readonly nextHop: NextHop;
  readonly counters: SmtpCounters = {
    connections: 0,
    messages: 0,
    bytes: 0,
    accepted: 0,
    deferred: 0,
    rejected: 0,
    oversize: 0,
    clientAborts: 0,
    handlerErrors: 0,
    handlerTimeouts: 0,
    bounces: 0,
  };
  private readonly server: SMTPServer;
  private readonly states = new Map<string, ConnState>();
  private readonly handler: MessageHandler;
  private readonly ownsNextHop: boolean;
  private readonly log: Logger;
  private readonly spoolDir: string;
  private readonly lmtp: boolean;
  /** This gateway's name (greeting, EHLO to the next hop, bounces). */
  private readonly hostname: string;
  /** The controllers of the handlers running now: close() aborts them (a Set, not a listener per message on a shared signal). */
  private readonly running = new Set<AbortController>();
  private closing = false;
  /** The text of the 421 while closing. */
  private goodbye = SHUTTING_DOWN;

  constructor(
    private readonly config: SmtpConfig,
    private readonly deps: SmtpServerDeps,
  ) {
    super();
    this.log = deps.log.child({ component: 'smtp' });
    this.handler = deps.handler ?? passThroughHandler;
    this.lmtp = config.protocol === 'lmtp';
    this.spoolDir = resolve(deps.stateDir, config['spool-dir']);
    const name = config.hostname ?? osHostname();
    this.hostname = name;
    this.ownsNextHop = !deps.nextHop;
    this.nextHop = deps.nextHop ?? new NextHopClient(config['next-hop'].target, nextHopOptions(config['next-hop'], name, this.log));
    const xforwardOk = hostMatcher(config['xforward-hosts']);
    const xclientOk = hostMatcher(config['xclient-hosts']);
    // smtp-server would offer STARTTLS with a certificate of its own: only with the admin's.
    const tls = listenerCredentials(config.tls, 'smtp.tls');
    const off = tls ? ['AUTH'] : ['AUTH', 'STARTTLS'];

    this.server = new SMTPServer({
      lmtp: this.lmtp,
      name,
      banner: config.banner,
      size: config['max-message-size'],
      // Replies relayed from the next hop carry their own enhanced status in the text; smtp-server
      // would put a second one, derived from the code alone, in front of it.
      hideENHANCEDSTATUSCODES: true,
      hideDSN: false,
      hideREQUIRETLS: true,
      disabledCommands: off,
      ...(tls ?? {}),
      authOptional: true,
      disableReverseLookup: true,
      lenientAddressParsing: true,
      maxClients: config['max-connections'],
      socketTimeout: config.timeouts.idle,
      // Trust is decided per connection in onConnect (CIDR blocks), see session.disabledCommands.
      useXForward: true,
      useXClient: true,
      logger: false,
      onConnect: (session, cb) => {
        this.counters.connections++;
        const peer = { address: session.remoteAddress, port: session.remotePort };
        const st: ConnState = { peer, partitionKey: null, xforward: {}, forwarded: false, heloUnavailable: false, busy: false };
        this.states.set(session.id, st);
        for (const c of this.server.connections) {
          if (c.session !== session) continue;
          guardXforwardHelo(c, () => (st.heloUnavailable = true));
          batchReplies(c);
          keepPipelinedTransactions(c);
          scanDataNatively(c);
        }
        session.disabledCommands = [...off, ...(xforwardOk(peer.address) ? [] : ['XFORWARD']), ...(xclientOk(peer.address) ? [] : ['XCLIENT'])];
        if (this.closing) return cb(smtpError(421, this.goodbye));
        cb();
      },
      onMailFrom: (address, session, cb) => {
        const st = this.states.get(session.id);
        if (this.closing || !st) return cb(smtpError(421, this.goodbye));
        if (config.tls.required && !session.secure) return cb(smtpError(530, '5.7.0 Must issue a STARTTLS command first'));
        st.partitionKey = null;
        // XFORWARD attributes belong to the transaction that follows them (as in Postfix).
        st.xforward = attributes(session.xForward);
        if (st.heloUnavailable) st.xforward = { ...st.xforward, HELO: '[UNAVAILABLE]' };
        if (Object.keys(st.xforward).length > 0) st.forwarded = true;
        restoreAddress(address, session.envelope.smtpUtf8 === true);
        const unknown = unknownParams(address, MAIL_PARAMS);
        if (unknown) return cb(smtpError(555, `5.5.4 MAIL parameter ${unknown} not recognized`));
        cb();
      },
      onRcptTo: (address, session, cb) => this.onRcptTo(address, session, cb),
      onData: (stream, session, cb) => {
        void this.onData(stream, session, cb);
      },
      onClose: (session) => {
        this.states.delete(session.id);
      },
    });
    this.server.on('error', (err) => this.log.warn({ err: messageOf(err) }, 'smtp connection error'));
    greetWithoutDelay(this.server);
  }

  private onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const st = this.states.get(session.id);
    const env = session.envelope;
    if (!st || !env.mailFrom) return cb(smtpError(503, '5.5.1 Need MAIL command'));
    restoreAddress(address, env.smtpUtf8 === true);
    const unknown = unknownParams(address, RCPT_PARAMS);
    if (unknown) return cb(smtpError(555, `5.5.4 RCPT parameter ${unknown} not recognized`));
    const repeated = env.rcptTo.some((r) => r.address.toLowerCase() === address.address.toLowerCase());
    if (!repeated && env.rcptTo.length >= this.config['max-recipients']) return cb(smtpError(452, '4.5.3 Too many recipients'));
    if (this.deps.partition && !this.lmtp) {
      const key = this.deps.partition(mailFromOf(env.mailFrom), { address: address.address, params: paramsOf(address) });
      if (st.partitionKey === null || env.rcptTo.length === 0) st.partitionKey = key;
      else if (key !== st.partitionKey) return cb(smtpError(452, '4.5.3 Too many recipients (send this one in another transaction)'));
    }
    cb();
  }

  private async onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string | Array<string | Error>) => void): Promise<void> {
    const st = this.states.get(session.id);
    const env = session.envelope;
    const queueId = newQueueId();
    const log = this.log.child({ cid: session.id, qid: queueId, ...(session.secure ? { tls: true } : {}) });
    const max = this.config['max-message-size'];
    const spool = new Spool(this.spoolDir, this.config['spool-memory'], { hash: false });
    let spoolInUse = false;
    let transactionOver = false;
    if (st) st.busy = true;
    const started = performance.now();
    try {
      let oversize = false;
      let spoolError: unknown = null;
      try {
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          // Past the limit (or after a spool failure) the rest is read and dropped, so the session
          // stays in step (RFC 1870).
          if (oversize || spoolError || stream.sizeExceeded || spool.size + chunk.length > max) {
            oversize ||= !spoolError;
            continue;
          }
          try {
            await spool.write(chunk);
          } catch (err) {
            spoolError = err;
          }
        }
      } catch (err) {
        this.counters.clientAborts++;
        log.info({ bytes: spool.size, err: messageOf(err) }, 'client gone during DATA: nothing delivered');
        cb(err as Error);
        return;
      }
      if (spoolError) {
        this.count(this.lmtp ? env.rcptTo.length : 1, 4);
        log.error({ err: messageOf(spoolError), spoolDir: this.spoolDir }, 'cannot spool the message: 452');
        cb(smtpError(452, '4.3.1 Insufficient system storage'));
        return;
      }
      if (oversize || stream.sizeExceeded) {
        this.counters.oversize++;
        this.count(this.lmtp ? env.rcptTo.length : 1, 5);
        log.info({ bytes: stream.byteLength, max }, 'message over max-message-size: 552');
        cb(smtpError(552, '5.3.4 Message size exceeds fixed maximum message size'));
        return;
      }
      await spool.end();
      if (!env.mailFrom) throw new AvgateError('AVG_ERR_INTERNAL', 'DATA without MAIL');
      this.counters.messages++;
      this.counters.bytes += spool.size;
      const { msg, controller } = this.message(queueId, session, st, spool);
      spoolInUse = true;
      const replies = await this.runHandler(msg, controller, log, () => {
        spoolInUse = false;
        // A handler that outlived its transaction (timeout) frees the spool itself; otherwise the
        // transaction does, after the bounce below has read the headers.
        if (transactionOver) void spool.dispose();
      });
      if (!this.lmtp && !spoolInUse) await this.bounceRefused(msg, replies, log);
      this.answer(replies, env.rcptTo.length, msg, log, started, cb);
    } catch (err) {
      this.counters.handlerErrors++;
      log.error({ err: messageOf(err) }, 'smtp transaction failed');
      cb(smtpError(451, '4.3.0 Local error in processing'));
    } finally {
      transactionOver = true;
      if (st) {
        st.busy = false;
        st.xforward = {};
        st.heloUnavailable = false;
      }
      session.xForward.clear();
      if (!spoolInUse) await spool.dispose();
    }
  }

  /**
   * SMTP: recipients the next hop refused (5xx) while it took others get a bounce to the sender
   * (the client gets one 250 for all of them and would never learn). Only when the DATA reply is
   * that 2xx: with a 4xx among the replies the client gets the 4xx and sends the message to every
   * recipient again, so each deferred attempt would bounce anew (the one answered 2xx bounces).
   * Sent from `<>` through the next hop before the client is answered; a bounce that cannot be
   * sent is logged at error.
   */
  private async bounceRefused(msg: InboundMessage, replies: readonly SmtpReply[], log: Logger): Promise<void> {
    if (msg.mailFrom.address === '' || !replies.some(isPermanent) || !isPositive(combineReplies(replies).reply)) return;
    let headers: Buffer;
    try {
      const head = await msg.spool.readRange(0, Math.min(msg.size, BOUNCE_HEADERS_MAX));
      const end = head.indexOf('\r\n\r\n');
      headers = end >= 0 ? head.subarray(0, end + 2) : head;
    } catch {
      headers = Buffer.alloc(0);
    }
    const envid = msg.mailFrom.params.ENVID;
    const b = bounceFor({
      sender: msg.mailFrom.address,
      rcpts: msg.rcptTo,
      replies,
      headers,
      envid: typeof envid === 'string' ? envid : null,
      smtpUtf8: msg.mailFrom.params.SMTPUTF8 !== undefined,
      hostname: this.hostname,
      queueId: msg.queueId,
      arrival: msg.receivedAt,
    });
    if (!b) return;
    const res = await this.nextHop.deliver({
      mailFrom: { address: '', params: b.params },
      rcpts: [{ address: b.to, params: {} }],
      body: b.message,
      size: b.message.length,
      queueId: msg.queueId,
    });
    const r = res.replies[0];
    if (r && isPositive(r)) {
      this.counters.bounces++;
      log.info({ to: b.to, failed: b.failed, reply: replySummary(r) }, 'bounce sent for recipients the next hop refused');
    } else log.error({ to: b.to, failed: b.failed, reply: r ? replySummary(r) : null }, 'bounce for recipients the next hop refused could not be sent: the sender will not learn of them');
  }

  /**
   * Runs the handler with the handler timeout. On timeout the client is answered 451 at once and
   * the handler's signal aborts; the spool is released (onSettled) only when the handler has
   * really finished with it.
   */
  private async runHandler(msg: InboundMessage, controller: AbortController, log: Logger, onSettled: () => void): Promise<SmtpReply[]> {
    const running = Promise.resolve().then(() => this.handler(msg, this.nextHop));
    const tracked = running.then(
      () => undefined,
      () => undefined,
    );
    this.running.add(controller);
    void tracked.finally(() => {
      this.running.delete(controller);
      // A shared reason: abort() without one builds a DOMException (with a stack) per message.
      controller.abort(HANDLER_SETTLED);
      onSettled();
    });
    const timeoutMs = this.config.timeouts.handler;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((r) => {
      timer = setTimeout(() => r('timeout'), timeoutMs);
    });
    try {
      const outcome = await Promise.race([running.then((v) => ({ v }), (e: unknown) => ({ e })), timedOut]);
      if (outcome === 'timeout') {
        this.counters.handlerTimeouts++;
        controller.abort(new Error('handler timeout'));
        log.error({ timeoutMs }, 'handler did not finish within timeouts.handler: 451');
        return msg.rcptTo.map(() => reply(451, '4.4.7', 'Message processing took too long, try again later'));
      }
      if ('e' in outcome) {
        this.counters.handlerErrors++;
        log.error({ err: messageOf(outcome.e) }, 'handler failed: 451');
        return msg.rcptTo.map(() => reply(451, '4.3.0', 'Local error in processing'));
      }
      const replies = outcome.v;
      if (!Array.isArray(replies) || replies.length !== msg.rcptTo.length || !replies.every(validReply)) {
        this.counters.handlerErrors++;
        log.error({ got: Array.isArray(replies) ? replies.length : typeof replies, want: msg.rcptTo.length }, 'handler returned no valid reply per recipient: 451');
        return msg.rcptTo.map(() => reply(451, '4.3.0', 'Local error in processing'));
      }
      return replies;
    } finally {
      clearTimeout(timer);
    }
  }

  private answer(
    replies: SmtpReply[],
    nrcpt: number,
    msg: InboundMessage,
    log: Logger,
    started: number,
    cb: (err?: Error | null, message?: string | Array<string | Error>) => void,
  ): void {
    // 421 from a handler would make smtp-server close the client's connection: 451 says the same.
    const safe = replies.map((r) => (r.code === 421 ? { ...r, code: 451 } : r));
    const fields = {
      from: msg.mailFrom.address,
      nrcpt,
      size: msg.size,
      client: msg.origin.ADDR ?? msg.client.address,
      ms: Math.round(performance.now() - started),
    };
    if (this.lmtp) {
      for (const r of safe) this.count(1, Math.floor(r.code / 100));
      log.info({ ...fields, replies: safe.map(replySummary) }, 'message');
      cb(null, safe.map((r) => (isPositive(r) ? replyText(r) || 'Ok' : smtpError(r.code, replyText(r)))));
      return;
    }
    const { reply: r, mixed } = combineReplies(safe);
    this.count(1, Math.floor(r.code / 100));
    if (mixed) log.warn({ replies: safe.map(replySummary), answer: replySummary(r) }, 'handler gave recipients of one SMTP transaction different replies (see the partition hook)');
    log.info({ ...fields, reply: replySummary(r) }, 'message');
    if (isPositive(r)) cb(null, replyText(r) || 'Ok');
    else cb(smtpError(r.code, replyText(r)));
  }

  private count(n: number, cls: number): void {
    if (cls === 2) this.counters.accepted += n;
    else if (cls === 4) this.counters.deferred += n;
    else this.counters.rejected += n;
  }

  private message(queueId: string, session: SMTPServerSession, st: ConnState | undefined, spool: Spool): { msg: InboundMessage; controller: AbortController } {
    const env = session.envelope;
    const controller = new AbortController();
    const signal = controller.signal;
    const xclient = attributes(session.xClient);
    const xforward = st?.xforward ?? {};
    const peer = st?.peer ?? { address: session.remoteAddress, port: session.remotePort };
    const opening = String(session.openingCommand || '');
    const proto = this.lmtp ? 'LMTP' : opening === 'EHLO' ? 'ESMTP' : 'SMTP';
    // After XCLIENT the session shows the forwarded client; otherwise the peer (an XFORWARD of an
    // earlier transaction also changed smtp-server's idea of the address).
    const clientAddress = 'ADDR' in xclient ? session.remoteAddress : peer.address;
    const clientPort = 'PORT' in xclient ? Number(session.remotePort) || 0 : peer.port;
    const helo = session.hostNameAppearsAs && !st?.forwarded ? String(session.hostNameAppearsAs) : null;
    const origin: ClientAttributes =
      Object.keys(xforward).length > 0
        ? xforward
        : {
            NAME: xclient.NAME ?? '[UNAVAILABLE]',
            ADDR: clientAddress,
            PORT: String(clientPort),
            PROTO: proto,
            HELO: helo ?? '[UNAVAILABLE]',
            ...(xclient.LOGIN ? { LOGIN: xclient.LOGIN } : {}),
          };
    const msg: InboundMessage = {
      queueId,
      protocol: this.lmtp ? 'lmtp' : 'smtp',
      peer,
      client: { address: clientAddress, port: clientPort, hostname: String(session.clientHostname || ''), helo, proto },
      xforward,
      xclient,
      origin,
      mailFrom: mailFromOf(env.mailFrom as SMTPServerAddress),
      rcptTo: env.rcptTo.map((r) => ({ address: r.address, params: paramsOf(r) })),
      spool,
      size: spool.size,
      receivedAt: new Date(),
      signal,
    };
    return { msg, controller };
  }

  /** Binds the listener; returns the bound port (useful with port 0). */
  async listen(): Promise<{ port: number }> {
    const { host, port } = parseHostPort(this.config.listen);
    // Messages of a process killed while it received them are not left there in plaintext.
    await sweepSpoolDir(this.spoolDir, this.log);
    const bound = await listenOn(this.deps.listeners, this.server.server, host, port, 'smtp');
    this.log.info({ listen: `${host}:${bound}`, protocol: this.config.protocol, nextHop: this.nextHop.target }, 'smtp server listening');
    return { port: bound };
  }

  get openConnections(): number {
    return this.server.connections.size;
  }

  /** Messages whose handler is still running. */
  get inFlight(): number {
    return this.running.size;
  }

  /**
   * Stops accepting; idle sessions get 421 at once; a session with a transaction open (from an
   * accepted MAIL to its DATA reply, or RSET) gets until the deadline to finish it, and its 421
   * once it is idle again. At the deadline a handler still running is aborted (the client gets 451
   * and retries) and what is left is closed. Closes the next hop pool when the server made it.
   */
  protected async closeNow(drain: Drain): Promise<void> {
    this.closing = true;
    // A reload has handed the listening socket to the next generation (Listeners.takeOver): a
    // client that connects again is served at once. A stop, or a stop during that drain, ends
    // the service.
    const handedOver = !this.server.server.listening;
    const listening = new Promise<void>((r) => this.server.server.close(() => r()));

    /** The transaction's MAIL is accepted and its DATA not answered (smtp-server resets the envelope then, as at RSET and EHLO). */
    const inTransaction = (c: SMTPConnection): boolean =>
      this.states.get(c.session.id)?.busy === true || Boolean((c.session.envelope as SMTPServerSession['envelope'] | undefined)?.mailFrom);
    const bye = (c: SMTPConnection) => {
      c.send(421, this.goodbye);
      c.close();
    };
    const cutIdle = () => {
      this.goodbye = handedOver && !drain.hurried ? RESTARTING : SHUTTING_DOWN;
      for (const c of this.server.connections) if (!inTransaction(c)) bye(c);
    };
    await drain.wait(() => this.running.size === 0 && this.server.connections.size === 0, cutIdle);
    if (this.running.size > 0) {
      const reason = new Error('server stopping');
      for (const c of this.running) c.abort(reason);
      const grace = Date.now() + 2000;
      while (this.running.size > 0 && Date.now() < grace) await new Promise((r) => setTimeout(r, 20));
    }
    // A session between commands (a transaction left open) is told; one in DATA is only cut.
    for (const c of this.server.connections) {
      if (this.states.get(c.session.id)?.busy) c.close();
      else bye(c);
    }
    await Promise.race([listening, new Promise((r) => setTimeout(r, 1000))]);
    if (this.ownsNextHop) await this.nextHop.close();
  }
}

/**
 * smtp-server turns `XFORWARD HELO=[UNAVAILABLE]` (Postfix sends it for mail that had no HELO, e.g.
 * local submissions) into an empty HELO name, and then answers MAIL with 503 "send HELO/EHLO
 * first": the content filter would defer such mail forever. The attribute is taken out of the
 * command before smtp-server sees it and reported through onUnavailable instead.
 */
export function guardXforwardHelo(conn: SMTPConnection, onUnavailable: () => void): void {
  const original = conn.handler_XFORWARD.bind(conn);
  conn.handler_XFORWARD = (command: Buffer, callback: () => void) => {
    const [verb, ...parts] = command.toString('latin1').trim().split(/\s+/);
    const kept = parts.filter((p) => !/^HELO=\[(UNAVAILABLE|TEMPUNAVAIL)\]$/i.test(p));
    if (kept.length === parts.length || conn.session.envelope.mailFrom) return original(command, callback);
    onUnavailable();
    if (kept.length === 0) {
      conn.send(250, 'OK');
      return callback();
    }
    original(Buffer.from([verb, ...kept].join(' '), 'latin1'), callback);
  };
}

/**
 * smtp-server writes every reply at once, so a pipelined MAIL/RCPT/DATA group (RFC 2920) costs
 * three writes and wakes the client three times. The socket is corked from the moment a read
 * arrives until the event loop's next turn: the replies to everything in that read leave in one
 * write. A reply that waits for something (the scan, the next hop) is not held back. Left alone
 * if smtp-server's connection has no `_socket` (internals other than the 3.x ones).
 */
export function batchReplies(conn: SMTPConnection): void {
  const socket = (conn as unknown as { _socket?: unknown })._socket;
  if (!(socket instanceof Socket)) return;
  let corked = false;
  socket.prependListener('data', () => {
    if (corked) return;
    corked = true;
    socket.cork();
    setImmediate(() => {
      corked = false;
      if (socket.writableCorked > 0) socket.uncork();
    });
  });
}

/**
 * smtp-server 3.21's parser loses the third of several transactions a client sends in one go
 * (message data without waiting for 354): `continue()` runs the saved continuation, which may
 * parse the next whole transaction at once and save that one's continuation, and then clears the
 * slot, dropping it; the session then hangs until the idle timeout. The patched `continue()`
 * clears the slot before running it. Applied once to the parser class; left alone when its shape
 * is not the one this was written against.
 */
export function keepPipelinedTransactions(conn: SMTPConnection): void {
  type Stream = { continue?: () => void; _continueCallback?: unknown };
  const parser = (conn as unknown as { _parser?: Stream })._parser;
  const proto = parser ? (Object.getPrototypeOf(parser) as Stream & { [PATCHED]?: boolean }) : null;
  if (!proto || proto[PATCHED] || typeof proto.continue !== 'function' || !('_continueCallback' in (parser as object))) return;
  proto[PATCHED] = true;
  proto.continue = function (this: Stream): void {
    const next = this._continueCallback;
    if (typeof next === 'function') {
      this._continueCallback = false;
      (next as () => void)();
    } else {
      this._continueCallback = true;
    }
  };
}
const PATCHED = Symbol('avgate.keepPipelinedTransactions');

/**
 * smtp-server 3.21's `_feedDataStream` looks for a dot at the start of a line (the end of DATA,
 * or a dot-stuffing escape) with a JavaScript loop over every byte of the message: 8.5% of
 * avgate's CPU on the mail filter's 2 MB messages, 3% on 100 KB ones. The replacement finds the
 * same candidates ("\n." at offsets 2 to length - 3) with the native `Buffer#indexOf` and is
 * otherwise the original step for step: the same carried tail (`_lastBytes`), the same start of
 * DATA rules (a lone "." line that reached us dot-stuffed and in a chunk of its own is content,
 * not the end: the command-smuggling guard), the same pieces written, counted and ended, the same
 * remainder handed to `_endDataMode`. One difference, in timing only: the original writes what
 * precedes each escape dot and re-enters itself on the next turn of the event loop for the rest
 * (a turn per dot-stuffed line); here the pieces of one chunk (one socket read) are written in
 * the same order without those turns, so the reader does not run between them and the chunk's
 * callback may wait for 'drain' where the original's would not. Applied once to the parser
 * class; left alone when its shape is not the one this was written against (the test
 * test/unit/smtp-data-stream.test.ts holds it to the original).
 */
export function scanDataNatively(conn: SMTPConnection): void {
  const parser = (conn as unknown as { _parser?: object })._parser;
  const proto = parser ? (Object.getPrototypeOf(parser) as Partial<DataParser> & { [SCAN_PATCHED]?: boolean }) : null;
  if (!parser || !proto || proto[SCAN_PATCHED]) return;
  const methods = [proto._feedDataStream, proto._endDataMode, proto._countDataBytes];
  if (methods.some((m) => typeof m !== 'function') || proto._feedDataStream?.length !== 2 || proto._endDataMode?.length !== 3) return;
  if (!['_dataStream', '_lastBytes', '_atDataStart'].every((k) => k in parser)) return;
  proto[SCAN_PATCHED] = true;
  proto._feedDataStream = feedDataStream;
}
const SCAN_PATCHED = Symbol('avgate.scanDataNatively');
const LF_DOT = Buffer.from('\n.');

/** The fields and methods of smtp-server's SMTPStream that feedDataStream uses. */
interface DataParser {
  _dataStream: SMTPServerDataStream;
  _lastBytes: Buffer | false;
  _atDataStart: boolean;
  _feedDataStream(chunk: Buffer, done: (err?: Error | null) => void): void;
  _endDataMode(chunk: Buffer | false, remainder: Buffer, done: (err?: Error | null) => void): void;
  _countDataBytes(len: number): void;
}

/** smtp-server 3.21's SMTPStream#_feedDataStream with the scan done by indexOf; see scanDataNatively. */
function feedDataStream(this: DataParser, chunk: Buffer, done: (err?: Error | null) => void): void {
  // only called in data mode, which always has a stream
  const dataStream = this._dataStream;
  if (this._lastBytes && this._lastBytes.length) {
    chunk = Buffer.concat([this._lastBytes, chunk], this._lastBytes.length + chunk.length);
    this._lastBytes = false;
  }
  let len = chunk.length;
  // A terminator first only while nothing of the message was consumed: a first line "." sent as
  // ".." in a chunk of its own lost its escape dot in the previous call, and the "." left is
  // content. Taking it for the end would let a client that controls TCP segmentation end DATA
  // early and smuggle commands.
  if (this._atDataStart && len >= 3 && chunk[0] === 0x2e && chunk[1] === 0x0d && chunk[2] === 0x0a) {
    this._endDataMode(false, chunk.subarray(3), done);
    return;
  }
  if (this._atDataStart && len >= 2 && chunk[0] === 0x2e && chunk[1] === 0x2e) {
    chunk = chunk.subarray(1);
    len--;
    this._atDataStart = false;
  }
  // chunk[start..] is what the original would have had after its re-entries past escape dots.
  // Its candidates are the dots at i = 2 .. len - 3 that follow "\n"; after an escape dot at i
  // the next is at i + 3 or later (i + 1 is the dot kept), where the original's loop over the
  // rest starts.
  let start = 0;
  for (let lf = chunk.indexOf(LF_DOT, 1); lf !== -1 && lf < len - 3; lf = chunk.indexOf(LF_DOT, lf + 2)) {
    const i = lf + 1;
    if (chunk[i - 2] === 0x0d && chunk[i + 1] === 0x0d && chunk[i + 2] === 0x0a) {
      // everything before "\r\n.\r\n" is content, its own CRLF included
      const buf = chunk.subarray(start, i);
      this._countDataBytes(buf.length);
      this._endDataMode(buf, chunk.subarray(i + 3), done);
      return;
    }
    if (chunk[i + 1] === 0x2e) {
      const buf = chunk.subarray(start, i);
      this._lastBytes = false;
      this._countDataBytes(buf.length);
      if (dataStream.writable) dataStream.write(buf);
      start = i + 1;
    }
  }
  const rest = start === 0 ? chunk : chunk.subarray(start);
  // the last 4 bytes wait for the next chunk: they may start a terminator or an escape
  this._lastBytes = rest.length < 4 ? rest : rest.subarray(rest.length - 4);
  if (this._lastBytes.length >= rest.length) return done();
  const buf = rest.subarray(0, rest.length - this._lastBytes.length);
  this._countDataBytes(buf.length);
  if (!dataStream.writable) return done();
  if (dataStream.write(buf) || dataStream.destroyed) return done();
  // a stream that the application destroys never drains, it only closes
  const onDrain = (): void => {
    dataStream.removeListener('drain', onDrain);
    dataStream.removeListener('close', onDrain);
    done();
  };
  dataStream.once('drain', onDrain);
  dataStream.once('close', onDrain);
}

/**
 * smtp-server waits 100 ms before its greeting (to catch clients that talk first). A content
 * filter's clients are MTAs; for one that opens a connection per message the wait caps a session
 * at 10 messages/s (measured: 97 msg/s with 10 sessions of smtp-source, 5 KB each). Each new
 * connection's init() is replaced by the same steps without the wait; the client still may not
 * talk before the greeting (smtp-server answers 421 "You talk too soon"). Left alone if
 * smtp-server's internals are not the ones this was written against (3.21).
 */
export function greetWithoutDelay(server: SMTPServer): void {
  type Internals = { _setListeners?: (cb: () => void) => void; connectionReady?: () => void; init: () => void; send: SMTPConnection['send']; name: string };
  const maxClients = server.options.maxClients;
  class Connections extends Set<SMTPConnection> {
    override add(c: SMTPConnection): this {
      const conn = c as unknown as Internals;
      const setListeners = conn._setListeners;
      const ready = conn.connectionReady;
      if (typeof setListeners === 'function' && typeof ready === 'function') {
        conn.init = () => {
          setListeners.call(conn, () => {
            if (maxClients && server.connections.size > maxClients) {
              conn.send(421, `${conn.name} Too many connected clients, try again in a moment`, false);
              return;
            }
            setImmediate(() => ready.call(conn));
          });
        };
      }
      return super.add(c);
    }
  }
  const connections = new Connections();
  for (const c of server.connections) connections.add(c);
  server.connections = connections;
}

function mailFromOf(a: SMTPServerAddress | false): MailFrom {
  return a ? { address: a.address, params: paramsOf(a) } : { address: '', params: {} };
}

function validReply(r: unknown): r is SmtpReply {
  const x = r as SmtpReply | null;
  return !!x && Number.isInteger(x.code) && x.code >= 200 && x.code <= 599 && Array.isArray(x.lines);
}

/** host:port or [v6]:port. */
export function parseHostPort(text: string): { host: string; port: number } {
  try {
    return splitHostPort(text);
  } catch {
    throw new AvgateError('AVG_ERR_CONFIG', `listen address "${text}": expected host:port`);
  }
}
