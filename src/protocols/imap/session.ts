import { createReadStream } from 'node:fs';
import type { Socket } from 'node:net';
import type { SecureContext, TLSSocket } from 'node:tls';
import type { ImapProxyConfig } from '../../config/imap-schema.js';
import { messageOf } from '../../core/errors.js';
import { acceptTls, type UpstreamTls } from '../../core/net.js';
import type { Logger } from '../../core/logging.js';
import { cutConnection, type SendStallWatch } from '../../core/send-stall.js';
import { Spool } from '../../core/spool.js';
import { loginNameOf, NAMED_USER_MECHANISMS, SaslIdentity } from '../sasl.js';
import type { CompiledPolicy, ReplaceDeps, ReplacementTemplate } from '../../mailproxy/index.js';
import type { MessageInput } from '../../mime/input.js';
import type { MimeLimits } from '../../mime/index.js';
import type { Quarantine } from '../../quarantine/types.js';
import type { ScanService } from '../../scan/types.js';
import { filterMessage, filterPart, reasonOf, unscannedNotice, type FilterOutcome } from './content.js';
import { planFetch, wantedOf, type FetchPlan, type SectionWant } from './partial.js';
import { connectUpstream } from './upstream.js';
import {
  blankStrings,
  capabilitiesOf,
  type CapabilityFilter,
  commandName,
  commandTag,
  contentKindOf,
  FetchItemTracker,
  filterCapabilities,
  ImapWireParser,
  rewriteMarker,
  type LiteralSpec,
  type WireEvent,
} from './wire.js';

export interface ImapCounters {
  connections: number;
  commands: number;
  /** Fetched messages and parts scanned. */
  scanned: number;
  /** Fetched messages and parts sent with something replaced. */
  replaced: number;
  appends: number;
  appendsRefused: number;
  upstreamFailures: number;
  /** Sessions cut because the client stopped reading (timeouts.send). */
  sendTimeouts: number;
}

export interface SessionContext {
  config: ImapProxyConfig;
  scanner: ScanService;
  policy: CompiledPolicy;
  replacement: ReplacementTemplate;
  spoolDir: string;
  log: Logger;
  counters: ImapCounters;
  /** The MIME walker's limits and leniency from the mail section; null = built-in defaults. */
  mime: { limits: MimeLimits; lenientQuotedPrintable: boolean } | null;
  /** The quarantine for whole messages with replaced documents (policy `quarantine`); null = none. */
  quarantine: Quarantine | null;
  /** How the IMAP server's certificate is checked (tls-verify, tls-ca read once at start). */
  upstreamTls: UpstreamTls;
  /** The certificate for STARTTLS towards the clients (imap-proxy.tls), read once at start; null = not offered. */
  tls: SecureContext | null;
  /** timeouts.send: the client's connection is watched for a client that stops reading. */
  sends: SendStallWatch;
}

const CRLF = Buffer.from('\r\n');

/** A FIFO lock: one writer at a time on the client socket (a FETCH response is written in pieces). */
class Lock {
  private tail: Promise<void> = Promise.resolve();
  acquire(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((r) => (release = r));
    const ready = this.tail.then(() => release);
    this.tail = this.tail.then(() => next);
    return ready;
  }
}

/** Bytes buffered on a corked socket before they are pushed out (see pump). */
const CORK_LIMIT = 256 * 1024;

/** Ends every cork() of the socket: what was buffered goes out in one writev. */
function uncorkAll(socket: Socket): void {
  while (socket.writableCorked > 0) socket.uncork();
}

/**
 * Writes with backpressure; resolves false when the socket is gone. On a corked socket the bytes
 * wait (up to CORK_LIMIT) for the uncork; beyond, they are pushed out before waiting for 'drain'.
 */
function writeTo(socket: Socket, data: Buffer): Promise<boolean> {
  if (socket.destroyed || !socket.writable) return Promise.resolve(false);
  if (socket.write(data)) return Promise.resolve(true);
  if (socket.writableCorked > 0) {
    if (socket.writableLength < CORK_LIMIT) return Promise.resolve(true);
    uncorkAll(socket);
    if (!socket.writableNeedDrain) return Promise.resolve(true);
  }
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      socket.off('drain', onDrain);
      socket.off('close', onClose);
      resolve(ok);
    };
    const onDrain = () => done(true);
    const onClose = () => done(false);
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

async function* readInput(input: MessageInput): AsyncGenerator<Buffer> {
  if (Buffer.isBuffer(input)) {
    yield input;
    return;
  }
  // A spool held in memory: its pieces as they are (no stream per message).
  if (input instanceof Spool && !input.onDisk) {
    yield* input.memoryChunks;
    return;
  }
  const stream = typeof input === 'string' ? createReadStream(input) : input.createReadStream();
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) yield chunk;
  } finally {
    stream.destroy();
  }
}

/** Bytes [start, end) of an input, read through (flat memory whatever the range). */
async function* readRange(input: MessageInput, start: number, end: number): AsyncGenerator<Buffer> {
  let pos = 0;
  for await (const chunk of readInput(input)) {
    if (pos >= end) break;
    const from = Math.max(start - pos, 0);
    const to = Math.min(end - pos, chunk.length);
    if (to > from) yield chunk.subarray(from, to);
    pos += chunk.length;
  }
}

/** A literal of a FETCH response being collected for scanning. */
interface Collect {
  text: Buffer;
  spec: LiteralSpec;
  item: string;
  part: boolean;
  partial: boolean;
  binary: boolean;
  /** null: over max-message-size, the bytes are dropped and a notice is sent. */
  spool: Spool | null;
  /** Pieces the client asked for (its partial fetch was sent upstream whole), or null. */
  want: SectionWant | null;
}

/** An APPEND being received from the client (nothing of it has gone upstream yet). */
interface Append {
  tag: string;
  texts: Buffer[];
  literals: Array<{ spec: LiteralSpec; spool: Spool }>;
  textBytes: number;
  literalBytes: number;
  /** Over a limit: the rest is read and dropped, then NO. */
  refused: string | null;
  /** Receiving the current literal into this spool (null while dropping). */
  current: Spool | null;
}

/**
 * A LOGIN or AUTHENTICATE relayed, its tagged answer not yet seen. The login name is taken only
 * from the server's OK: a refused or cancelled login leaves none.
 */
interface PendingLogin {
  tag: string;
  /** LOGIN: the name given (atom, quoted string or literal). */
  user: string | null;
  /** AUTHENTICATE: the name read from the exchange. */
  sasl: SaslIdentity | null;
  /** Continuation requests (`+`) of the server not yet answered by a client line. */
  challenges: number;
  /** The client pump waits for the next `+` or the tagged answer (see saslTurn). */
  wake: (() => void) | null;
  /** The proxy cancelled the exchange (`*` sent for the client's response): what the client gets instead of the server's answer. */
  refusal: string | null;
}

/** A LOGIN user name sent as a literal, collected while it is relayed (bounded). */
const MAX_NAME_LITERAL = 256;

type ClientMode =
  | { kind: 'pass' }
  /** A refused command: the rest of it (LITERAL+ data) is dropped. */
  | { kind: 'drop' }
  | { kind: 'append'; a: Append };

/**
 * One client session: the upstream connection, then two pumps. Client → server: commands are
 * relayed as they are, except APPEND (spooled, scanned, then sent upstream, or refused with NO),
 * STARTTLS (the proxy's own, with imap-proxy.tls; else NO), COMPRESS (NO) and what the
 * command-acl denies.
 * Server → client: responses are relayed as they are, except capability lists (filtered), the
 * message content of untagged FETCH responses (spooled, scanned, rewritten with the new octet count)
 * and preview strings (PREVIEW, SNIPPET: sent as `""`).
 */
export class ImapSession {
  private upstream: Socket | null = null;
  private readonly clientLock = new Lock();
  private clientParser: ImapWireParser;
  private readonly serverParser: ImapWireParser;
  /** The login name the server accepted (the ACLs' `users`); null before login or when none is known. */
  private user: string | null = null;
  /** The server accepted a login (whether or not its name is known). */
  private loggedIn = false;
  /** One login at a time: a second one while this is pending is refused. */
  private login: PendingLogin | null = null;
  /** The name literal of the pending LOGIN, being collected. */
  private loginLiteral: { login: PendingLogin; parts: Buffer[]; size: number } | null = null;
  /** Tags of relayed commands awaiting their tagged response, with the command-acl's use-antivirus. */
  private readonly inflight = new Map<string, boolean>();
  /** The content sections each FETCH in flight asked for (by tag): partial ones went upstream whole (partial.ts). */
  private readonly fetchPlans = new Map<string, FetchPlan>();
  /** A client command waits for the server's `+` for its synchronising literal. */
  private clientSyncTag: string | null = null;
  /** The proxy itself waits for the server's `+` (forwarding an APPEND). */
  private continuation: { tag: string; resolve: (ok: boolean) => void } | null = null;
  private serverLiteralPlus = false;
  private clientMode: ClientMode = { kind: 'pass' };
  private closed = false;
  private readonly log: Logger;
  private readonly abort = new AbortController();
  /** The client's connection: the accepted TCP socket, or a TLSSocket over it after STARTTLS. */
  private client: Socket;
  private secure = false;
  /** The tag of a STARTTLS the proxy answers once the client pump has stopped reading in clear. */
  private startTlsTag: string | null = null;
  /** Between the STARTTLS OK and the end of the handshake: nothing may be written in clear. */
  private upgrading = false;
  /** What is being written to the client, for the send timeout's log line. */
  private sending = 'server responses';

  constructor(
    private readonly plain: Socket,
    private readonly ctx: SessionContext,
    readonly id: string,
  ) {
    this.client = plain;
    const maxLineLength = ctx.config['max-line-length'];
    this.clientParser = new ImapWireParser({ role: 'client', maxLineLength });
    this.serverParser = new ImapWireParser({ role: 'server', maxLineLength });
    this.log = ctx.log.child({ session: id, client: plain.remoteAddress ?? null });
  }

  private deps(label: string): ReplaceDeps {
    const policy = this.ctx.config;
    return {
      scanner: this.ctx.scanner,
      policy,
      replacement: this.ctx.replacement,
      spoolDir: this.ctx.spoolDir,
      log: this.log,
      origin: { source: 'imap', group: null },
      user: this.user,
      label,
      quarantine: this.ctx.quarantine,
      ...(this.ctx.mime ?? {}),
    };
  }

  async run(): Promise<void> {
    const client = this.client;
    client.on('error', () => undefined);
    client.setNoDelay(true);
    this.watchSends(client);
    let up;
    try {
      up = await connectUpstream(this.ctx.config, this.ctx.upstreamTls);
    } catch (err) {
      this.ctx.counters.upstreamFailures++;
      this.log.warn({ upstream: this.ctx.config.upstream, err: messageOf(err) }, 'imap: upstream not available');
      await writeTo(client, Buffer.from('* BYE [UNAVAILABLE] The mail server is not available, try again later\r\n'));
      client.end();
      return;
    }
    const server = up.socket;
    if (this.closed) {
      server.destroy();
      return;
    }
    this.upstream = server;
    server.on('error', () => undefined);
    server.setNoDelay(true);
    server.on('timeout', () => {
      this.log.warn({ readMs: this.ctx.config.timeouts.read }, 'imap: the server stopped in the middle of a response');
      void this.shutdown('[UNAVAILABLE] The mail server stopped answering');
    });
    const greeting = filterCapabilities(up.greeting, { ...this.capabilityFilter(), dropCode: up.staleGreetingCapabilities });
    this.noteCapabilities(up.greeting);
    if (!(await writeTo(client, Buffer.concat([greeting, CRLF])))) return this.close();
    if (/^\* BYE/i.test(up.greeting.toString('latin1'))) {
      client.end();
      return this.close();
    }
    if (up.leftover.length > 0) this.serverParser.push(up.leftover);
    this.watchClient(client);
    await Promise.allSettled([
      this.pump(server, this.serverParser, (e) => this.fromServer(e)).finally(() => this.serverGone()),
      this.clientLoop().finally(() => this.close()),
    ]);
    await this.close();
  }

  /**
   * A client that stops reading (a big FETCH) would hold the session, the server's connection and
   * the spool for ever: writes wait for 'drain' under the client lock, and the idle timer does not
   * run while the server pump waits. Past timeouts.send without write progress the connection is
   * reset and the session closed.
   */
  private watchSends(socket: Socket): void {
    this.ctx.sends.watch(socket, (unsent) => {
      this.ctx.counters.sendTimeouts++;
      this.log.warn(
        { user: this.user, sending: this.sending, unsent, timeout: this.ctx.config.timeouts.send },
        'imap: client stopped reading (timeouts.send); connection reset',
      );
      cutConnection(socket);
      void this.close();
    });
  }

  /** The idle/read timer of the client's connection (the plain one, then the TLS one). */
  private watchClient(socket: Socket): void {
    const { idle, read } = this.ctx.config.timeouts;
    socket.setTimeout(idle);
    socket.on('timeout', () => {
      this.log.info({ idleMs: this.clientParser.atMessageStart ? idle : read }, 'imap: client timeout');
      void this.shutdown('Autologout; idle for too long');
    });
  }

  /** Reads the client: in clear, then, after a STARTTLS, in TLS on the same connection. */
  private async clientLoop(): Promise<void> {
    for (;;) {
      const socket = this.client;
      await this.pump(socket, this.clientParser, (e) => this.fromClient(e));
      const tag = this.startTlsTag;
      this.startTlsTag = null;
      if (tag === null || this.closed) return;
      if (!(await this.upgradeClient(socket, tag))) return;
    }
  }

  /** What the proxy's capability lists say of itself: STARTTLS while the client may still upgrade. */
  private capabilityFilter(): CapabilityFilter {
    // Not while a login is pending either: a server sends its post-login `* CAPABILITY` before the
    // tagged OK of the LOGIN or AUTHENTICATE (Dovecot does, for a client that asked CAPABILITY
    // before), and STARTTLS is refused from then on.
    const offered = this.ctx.tls !== null && !this.secure && !this.loggedIn && this.login === null;
    const mustUpgrade = this.ctx.config.tls.required && !this.secure;
    return {
      appendLimit: this.ctx.config['max-literal-size'],
      add: [...(offered ? ['STARTTLS'] : []), ...(mustUpgrade ? ['LOGINDISABLED'] : [])],
      dropAuth: mustUpgrade,
      // With `users` rules only mechanisms that show the login name are offered (others get NO).
      ...(this.ctx.policy.userRules ? { authMechanisms: NAMED_USER_MECHANISMS } : {}),
    };
  }

  /**
   * STARTTLS (RFC 3501 §6.2.1): the client pump has stopped reading in clear. What the client sent
   * behind the command before it could see the answer is dropped (the parser's rest and the
   * socket's buffer: never taken as commands inside TLS); the OK goes out under the client lock
   * (no server response is cut), then the TLS handshake on the same connection. A failed
   * handshake ends the session.
   */
  private async upgradeClient(plain: Socket, tag: string): Promise<boolean> {
    const release = await this.clientLock.acquire();
    try {
      this.upgrading = true;
      plain.pause();
      while (plain.read() !== null);
      this.clientParser = new ImapWireParser({ role: 'client', maxLineLength: this.ctx.config['max-line-length'] });
      // Server responses written before this one (corked by the server pump) go first.
      uncorkAll(plain);
      const written = await new Promise<boolean>((resolve) => {
        if (plain.destroyed || !plain.writable) return resolve(false);
        plain.write(`${tag} OK Begin TLS negotiation now\r\n`, (err) => resolve(!err));
      });
      if (!written) return false;
      let secure: TLSSocket;
      try {
        secure = await acceptTls(plain, this.ctx.tls as SecureContext, this.ctx.config.timeouts.read);
      } catch (err) {
        this.log.info({ err: messageOf(err) }, 'imap: STARTTLS failed');
        return false;
      }
      this.client = secure;
      this.secure = true;
      this.watchClient(secure);
      this.watchSends(secure);
      this.log.debug({ protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'imap: client in TLS');
      return true;
    } finally {
      this.upgrading = false;
      release();
    }
  }

  private async pump(socket: Socket, parser: ImapWireParser, handle: (e: WireEvent) => Promise<void>): Promise<void> {
    try {
      // Async iteration reads the next chunk only after every event of this one was handled:
      // a slow scan or a slow peer pauses the other side (backpressure), memory stays bounded.
      // The client's socket outlives a stop for STARTTLS (the TLS socket takes it over).
      const chunks: AsyncIterable<Buffer> = socket === this.plain && !this.secure ? socket.iterator({ destroyOnReturn: false }) : socket;
      for await (const chunk of chunks) {
        if (this.closed) return;
        // The timers measure the peer, not the proxy's own work (a long scan, a slow other side):
        // off while this chunk is handled, armed again while waiting for the next one.
        socket.setTimeout(0);
        parser.push(chunk);
        // What one chunk of the server makes the proxy send (a FETCH response: its line, the
        // literal, the closing parenthesis, the tagged OK) goes out in one writev, not one
        // segment each; uncorked before anything slow (a scan) and at the end of the chunk.
        const corked = socket !== this.client;
        if (corked) this.client.cork();
        try {
          for (let e = parser.next(); e; e = parser.next()) {
            await handle(e);
            if (this.ending !== null) await this.endIfQuiet();
            if (this.closed) return;
            // STARTTLS: nothing after it is read in clear (see upgradeClient).
            if (this.startTlsTag !== null && socket === this.client) return;
          }
        } finally {
          if (corked) uncorkAll(this.client);
        }
        if (socket === this.client) this.client.setTimeout(parser.atMessageStart ? this.ctx.config.timeouts.idle : this.ctx.config.timeouts.read);
        // A server may stay silent between responses (IDLE), never in the middle of one.
        else socket.setTimeout(parser.atMessageStart ? 0 : this.ctx.config.timeouts.read);
      }
    } catch (err) {
      if (!this.closed) this.log.warn({ side: socket === this.client ? 'client' : 'server', err: messageOf(err) }, 'imap: session ended by an error');
    }
  }

  private async serverGone(): Promise<void> {
    if (this.closed) return;
    // Whatever the server said last (a BYE) has been relayed; the session ends with it.
    this.client.end();
    await this.close();
  }

  private async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // One line per session, as Kernun's imap4-proxy keeps: who, what was fetched and replaced.
    const m = this.summary;
    this.log.info(
      { user: this.user, upstream: this.ctx.config.upstream, commands: m.commands, scanned: m.scanned, replaced: m.replaced, appends: m.appends, failedLogins: m.failedLogins, end: this.ending ?? m.end, ms: Date.now() - m.started },
      'imap: session ended',
    );
    this.abort.abort();
    this.continuation?.resolve(false);
    this.continuation = null;
    // A client pump waiting for the server's next AUTHENTICATE step stops waiting.
    this.login?.wake?.();
    this.upstream?.destroy();
    if (!this.client.destroyed) this.client.end();
    setTimeout(() => {
      this.client.destroy();
      this.plain.destroy();
    }, 1000).unref();
    if (this.clientMode.kind === 'append') await this.disposeAppend(this.clientMode.a);
    const c = this.collect;
    this.collect = null;
    await c?.spool?.dispose();
  }

  /** What the session did, for its end line. */
  private readonly summary = { started: Date.now(), commands: 0, scanned: 0, replaced: 0, appends: 0, failedLogins: 0, end: 'closed' };

  /** Set by finish(): the BYE text, sent once no command is being answered. */
  private ending: string | null = null;
  /** The tag of an IDLE in flight: a session that only waits in IDLE may be ended at once. */
  private idleTag: string | null = null;
  /** An APPEND is being scanned or sent upstream (its tag is in flight only once it is sent). */
  private appending = false;

  /**
   * The graceful end of a reload's drain or a stop: a session with nothing under way (or only an
   * IDLE) gets its BYE at once; one answering a command (a FETCH being relayed or scanned, an
   * APPEND being spooled or scanned, a login) gets it once that command's tagged response is out.
   * Commands the client sends meanwhile are not relayed. The server's close() bounds the wait.
   */
  async finish(text: string): Promise<void> {
    if (this.closed) return;
    this.ending ??= text;
    await this.endIfQuiet();
  }

  private async endIfQuiet(): Promise<void> {
    if (this.ending === null || this.closed || !this.quiet()) return;
    this.log.debug({ reason: this.ending }, 'imap: session ended between commands');
    await this.shutdown(this.ending);
  }

  /** Nothing half done either way: no response being relayed, no client command being read or answered (IDLE aside). */
  private quiet(): boolean {
    if (this.serverMessage !== null || this.collect !== null || this.appending || this.upgrading || this.startTlsTag !== null || this.login !== null) return false;
    if (this.clientMode.kind !== 'pass' || !this.clientParser.atMessageStart) return false;
    for (const tag of this.inflight.keys()) if (tag !== this.idleTag) return false;
    return true;
  }

  /**
   * Ends the session with a BYE when one can be sent: not through the lock (a client that stopped
   * reading would keep it forever), and only between server responses, so it never lands inside
   * a literal (nor into a client's TLS handshake).
   */
  async shutdown(text: string): Promise<void> {
    if (this.summary.end === 'closed') this.summary.end = text;
    if (!this.serverMessage && !this.upgrading && !this.client.destroyed && this.client.writable) this.client.write(`* BYE ${text}\r\n`);
    await this.close();
  }

  private async bye(text: string): Promise<void> {
    const release = await this.clientLock.acquire();
    try {
      await writeTo(this.client, Buffer.from(`* BYE ${text}\r\n`));
    } finally {
      release();
    }
  }

  /** A complete response line of the proxy's own (never inside a relayed response). */
  private async reply(line: string): Promise<void> {
    const release = await this.clientLock.acquire();
    try {
      await writeTo(this.client, Buffer.from(`${line}\r\n`, 'latin1'));
    } finally {
      release();
    }
  }

  private noteCapabilities(text: Buffer): void {
    const caps = capabilitiesOf(text);
    if (caps) this.serverLiteralPlus = caps.has('LITERAL+');
  }

  private scanningOn(): boolean {
    // Unsolicited or pipelined FETCH responses cannot be tied to one command: content is scanned
    // unless every command in flight was let through unscanned by the command-acl.
    if (this.inflight.size === 0) return true;
    for (const v of this.inflight.values()) if (v) return true;
    return false;
  }

  // ---------------------------------------------------------------- server → client

  /** `dropLiteral`: the literal being received is a preview's string (blanked, see FetchItemTracker). */
  private serverMessage: { release: (() => void) | null; tracker: FetchItemTracker | null; swallow: boolean; dropLiteral: boolean } | null = null;
  private collect: Collect | null = null;

  private async fromServer(e: WireEvent): Promise<void> {
    switch (e.kind) {
      case 'overflow':
        this.log.warn({ head: e.head.subarray(0, 40).toString('latin1') }, 'imap: server line over max-line-length');
        await this.endServerMessage();
        await this.bye('[ALERT] The mail server sent a line longer than the proxy accepts');
        return this.close();
      case 'data':
        if (this.collect) {
          if (this.collect.spool) await this.collect.spool.write(e.data);
        } else if (!this.serverMessage?.swallow && !this.serverMessage?.dropLiteral) await writeTo(this.client, e.data);
        return;
      case 'literal-end':
        if (this.serverMessage) this.serverMessage.dropLiteral = false;
        if (this.collect) {
          const c = this.collect;
          this.collect = null;
          await this.emitScanned(c);
        }
        return;
      case 'text':
        return this.serverText(e.text, e.raw, e.first, e.literal);
    }
  }

  private async serverText(text: Buffer, raw: Buffer, first: boolean, literal: LiteralSpec | null): Promise<void> {
    if (first) {
      const release = await this.clientLock.acquire();
      this.serverMessage = { release, tracker: null, swallow: false, dropLiteral: false };
      const s = text.toString('latin1');
      if (s.startsWith('+')) {
        if (this.continuation) {
          const c = this.continuation;
          this.continuation = null;
          c.resolve(true);
          this.serverMessage.swallow = true;
        } else if (this.clientSyncTag === null && this.login?.sasl) {
          // A SASL challenge: the client's next line is its response.
          this.login.challenges++;
          this.login.wake?.();
        } else this.clientSyncTag = null;
      } else if (!s.startsWith('*')) {
        const tag = commandTag(text);
        const instead = tag !== null ? this.taggedResponse(tag, s) : null;
        if (instead !== null) raw = Buffer.from(`${instead}\r\n`, 'latin1');
      }
      if (/^\* \d+ FETCH \(/i.test(s)) {
        const tracker = new FetchItemTracker();
        tracker.start(literal ? text.subarray(0, literal.markerStart) : text);
        this.serverMessage.tracker = tracker;
      } else {
        this.noteCapabilities(text);
        const filtered = filterCapabilities(text, this.capabilityFilter());
        if (filtered !== text) raw = Buffer.concat([filtered, CRLF]);
      }
    } else if (this.serverMessage?.tracker) {
      this.serverMessage.tracker.continue(literal ? text.subarray(0, literal.markerStart) : text);
    }
    const msg = this.serverMessage;
    if (msg?.tracker && msg.tracker.hidden.length > 0) {
      // A preview's text (PREVIEW, SNIPPET: not offered, asked anyway) is not scanned: the client
      // gets an empty one, RFC 8970's answer for a message without a preview.
      const blanked = blankStrings(text, msg.tracker.hidden);
      if (literal) literal = { ...literal, markerStart: literal.markerStart + blanked.length - text.length };
      raw = Buffer.concat([blanked, raw.subarray(text.length)]);
      text = blanked;
      this.log.debug({}, 'imap: a preview string was blanked');
    }
    if (literal && msg?.tracker?.literalHidden()) {
      // The same for one sent as a literal (Dovecot does for 8-bit text): `""` in its place, its
      // bytes dropped; the response goes on with the next segment.
      msg.tracker.literalItem();
      msg.dropLiteral = true;
      this.log.debug({ size: literal.size }, 'imap: a preview literal was blanked');
      await writeTo(this.client, Buffer.concat([text.subarray(0, literal.markerStart), Buffer.from('""')]));
      return;
    }
    if (literal && msg?.tracker) {
      const item = msg.tracker.literalItem();
      const kind = item ? contentKindOf(item) : { kind: 'other' as const };
      if (item && kind.kind !== 'other' && this.scanningOn()) {
        const tooBig = literal.size > this.ctx.config['max-message-size'];
        this.collect = {
          text,
          spec: literal,
          item,
          part: kind.kind === 'part' || kind.partial,
          partial: kind.partial,
          binary: kind.binary,
          want: kind.partial ? null : wantedOf(this.fetchPlans.values(), item),
          // Hashed while it arrives: the whole-message prescan can then be answered by the verdict cache.
          spool: tooBig ? null : new Spool(this.ctx.spoolDir, this.ctx.config['spool-memory'], { hash: this.ctx.scanner.wantsHash && !(kind.kind === 'part' || kind.partial) }),
        };
        return;
      }
    }
    if (!msg?.swallow) await writeTo(this.client, raw);
    if (!literal) await this.endServerMessage();
    if (this.endAfterResponse) {
      uncorkAll(this.client);
      await this.close();
    }
  }

  /** Bookkeeping of a tagged response; returns a line the client gets instead of it, or null. */
  private taggedResponse(tag: string, s: string): string | null {
    this.inflight.delete(tag);
    this.fetchPlans.delete(tag);
    if (this.idleTag === tag) this.idleTag = null;
    if (this.clientSyncTag === tag) {
      // The server refused a synchronising literal: the client will not send it.
      this.clientSyncTag = null;
      this.clientParser.cancelLiteral();
    }
    if (this.continuation?.tag === tag) {
      const c = this.continuation;
      this.continuation = null;
      c.resolve(false);
    }
    const login = this.login;
    if (login?.tag !== tag) return null;
    this.login = null;
    if (this.loginLiteral?.login === login) this.loginLiteral = null;
    login.wake?.();
    if (!/^\S+ OK\b/i.test(s)) {
      this.summary.failedLogins++;
      this.log.info({ user: login.sasl ? login.sasl.identified : login.user, mechanism: login.sasl?.mechanism ?? 'LOGIN' }, 'imap: login refused by the server');
      return login.refusal === null ? null : `${tag} ${login.refusal}`;
    }
    const user = login.sasl ? login.sasl.identified : login.user;
    this.loggedIn = true;
    this.user = user;
    if (login.refusal !== null || (user === null && this.ctx.policy.userRules)) {
      // The server let in a login the proxy refused or whose name it could not read: the `users`
      // rules cannot be applied, so the session ends (fail closed) instead of going on unchecked.
      this.log.warn({ tag, mechanism: login.sasl?.mechanism ?? 'LOGIN' }, 'imap: logged in without a login name the proxy could read (users rules configured); closing');
      this.endAfterResponse = true;
      return `${tag} NO [CANNOT] The login name could not be read by the proxy`;
    }
    this.log.debug({ user, mechanism: login.sasl?.mechanism ?? 'LOGIN' }, 'imap: logged in');
    return null;
  }

  /** Set by a login the session cannot go on with: the session ends once the response is out. */
  private endAfterResponse = false;

  private async endServerMessage(): Promise<void> {
    const m = this.serverMessage;
    this.serverMessage = null;
    m?.release?.();
  }

  /** The scanned literal (or its replacement) with its new octet count. */
  private async emitScanned(c: Collect): Promise<void> {
    let outcome: FilterOutcome | null = null;
    let output: MessageInput;
    let size: number;
    const label = `imap ${this.user ?? '-'} ${c.item}`;
    try {
      if (!c.spool) {
        output = unscannedNotice(this.deps(label), `it is larger than max-message-size (${c.spec.size} bytes) and was not scanned`);
        size = output.length;
        this.log.warn({ item: c.item, size: c.spec.size }, 'imap: fetched content over max-message-size replaced unscanned');
      } else {
        await c.spool.end();
        // Responses before this one are not held back while it is scanned.
        uncorkAll(this.client);
        this.ctx.counters.scanned++;
        this.summary.scanned++;
        this.log.debug({ item: c.item, size: c.spec.size }, 'imap: scanning fetched content');
        try {
          const deps = this.deps(label);
          // Asked for in pieces only: kept in quarantine when fetched whole, not once per piece.
          // BINARY[] is the server's decoded copy (transfer encodings undone, raw bytes), not the
          // message it holds: a release would send binary content over SMTP; BODY[] keeps it.
          if ((c.want && !c.want.whole) || c.binary) deps.quarantine = null;
          outcome = c.part
            ? await filterPart(c.spool, c.binary, deps, this.abort.signal, { partial: c.partial })
            : await filterMessage(c.spool, deps, this.abort.signal);
          output = outcome.output;
          size = outcome.size;
          if (outcome.changed) {
            this.ctx.counters.replaced++;
            this.summary.replaced++;
            this.log.info({ item: c.item, user: this.user, replaced: outcome.replaced }, 'imap: fetched content replaced');
          }
        } catch (err) {
          if (this.closed) return;
          // Fail closed: content that could not be checked is not delivered.
          this.log.error({ item: c.item, err: messageOf(err) }, 'imap: scanning fetched content failed; replaced by a notice');
          output = unscannedNotice(this.deps(label), 'it could not be scanned (internal error)');
          size = output.length;
        }
      }
      this.log.debug({ item: c.item, size, changed: outcome?.changed ?? true }, 'imap: sending fetched content');
      this.client.cork();
      this.sending = `FETCH ${c.item} (${size} bytes)`;
      if (c.want) {
        await this.emitPieces(c, c.want, output, size);
        return;
      }
      if (!(await writeTo(this.client, rewriteMarker(c.text, c.spec, size)))) return;
      for await (const chunk of readInput(output)) if (!(await writeTo(this.client, chunk))) return;
    } finally {
      this.sending = 'server responses';
      await outcome?.dispose();
      await c.spool?.dispose();
    }
  }

  /**
   * A section the client asked for in pieces (fetched whole, partial.ts): the whole item when a
   * command asked for it too, then `ITEM<origin> {n}` per piece, cut from what a whole fetch
   * delivers. The server's text before the item (`* 5 FETCH (UID 9 `) goes first, its text after
   * the literal follows as it comes.
   */
  private async emitPieces(c: Collect, want: SectionWant, output: MessageInput, size: number): Promise<void> {
    const at = c.text.toString('latin1').lastIndexOf(c.item, c.spec.markerStart);
    const item = c.item.replace(/\.PEEK\[/i, '[');
    const marker = (n: number) => `${c.spec.binary ? '~' : ''}{${n}}\r\n`;
    if (!(await writeTo(this.client, c.text.subarray(0, at < 0 ? c.spec.markerStart : at)))) return;
    let sep = '';
    if (want.whole) {
      if (!(await writeTo(this.client, Buffer.from(`${item} ${marker(size)}`, 'latin1')))) return;
      for await (const chunk of readInput(output)) if (!(await writeTo(this.client, chunk))) return;
      sep = ' ';
    }
    for (const r of want.ranges) {
      const start = Math.min(r.origin, size);
      const end = Math.min(size, r.origin + r.length);
      if (!(await writeTo(this.client, Buffer.from(`${sep}${item}<${r.origin}> ${marker(end - start)}`, 'latin1')))) return;
      for await (const chunk of readRange(output, start, end)) if (!(await writeTo(this.client, chunk))) return;
      sep = ' ';
    }
  }

  // ---------------------------------------------------------------- client → server

  private async toServer(data: Buffer): Promise<void> {
    const s = this.upstream;
    if (s) await writeTo(s, data);
  }

  private async fromClient(e: WireEvent): Promise<void> {
    const mode = this.clientMode;
    switch (e.kind) {
      case 'overflow': {
        const login = this.login;
        if (e.first && login?.sasl && (await this.saslTurn(login))) {
          // An overlong SASL response: the exchange is cancelled, the client gets BAD.
          return this.cancelSasl(login, 'BAD [TOOBIG] Authentication response too long', 'response over max-line-length');
        }
        if (this.closed) return;
        if (mode.kind === 'pass' && !e.first) {
          // Part of this command already went upstream; the stream cannot be resynchronised.
          await this.bye('Command line too long');
          return this.close();
        }
        if (mode.kind === 'append') await this.disposeAppend(mode.a);
        this.clientMode = { kind: 'pass' };
        const tag = (e.first ? commandTag(e.head) : mode.kind === 'append' ? mode.a.tag : null) ?? '*';
        this.log.info({ tag }, 'imap: client line over max-line-length');
        return this.reply(`${tag} BAD [TOOBIG] Command line too long`);
      }
      case 'data':
        if (this.loginLiteral) {
          const n = this.loginLiteral;
          n.size += e.data.length;
          if (n.size <= MAX_NAME_LITERAL) n.parts.push(Buffer.from(e.data));
        }
        if (mode.kind === 'pass') return this.toServer(e.data);
        if (mode.kind === 'append' && mode.a.current) await mode.a.current.write(e.data);
        return;
      case 'literal-end':
        if (this.loginLiteral) {
          const n = this.loginLiteral;
          this.loginLiteral = null;
          n.login.user = n.size <= MAX_NAME_LITERAL ? loginNameOf(Buffer.concat(n.parts)) : null;
        }
        if (mode.kind === 'append' && mode.a.current) {
          await mode.a.current.end();
          mode.a.current = null;
        }
        return;
      case 'text':
        if (e.first && this.login?.sasl) {
          const login = this.login;
          if (await this.saslTurn(login)) return this.saslResponse(login, e.text, e.raw, e.literal);
          if (this.closed) return;
        }
        if (e.first) return this.clientCommand(e.text, e.raw, e.literal);
        if (mode.kind === 'pass') {
          await this.toServer(e.raw);
          if (e.literal && !e.literal.plus) this.clientSyncTag = this.currentTag;
          return;
        }
        if (mode.kind === 'append') return this.appendText(mode.a, e.text, e.literal);
        // drop: the rest of a refused command
        if (e.literal && !e.literal.plus) this.clientParser.cancelLiteral();
        if (!e.literal) this.clientMode = { kind: 'pass' };
        return;
    }
  }

  private currentTag: string | null = null;

  /**
   * During an AUTHENTICATE exchange: is the client's next line a SASL response? It is when the
   * server has asked for one (`+`) it has not had yet; once the tagged answer is in, lines are
   * commands again. A client that sends ahead waits here for the server, so its line is read as
   * the server will read it: a response is never examined as a command (it would be relayed
   * unexamined if the proxy took it for one the server does not) and a command is never relayed
   * as a response (past tls.required and the command-acl).
   */
  private async saslTurn(login: PendingLogin): Promise<boolean> {
    while (this.login === login && login.challenges === 0 && !this.closed) {
      let timer: NodeJS.Timeout | undefined;
      const woke = await new Promise<boolean>((resolve) => {
        login.wake = () => resolve(true);
        timer = setTimeout(() => resolve(false), this.ctx.config.timeouts.read);
      });
      clearTimeout(timer);
      login.wake = null;
      if (!woke) {
        this.log.warn({ tag: login.tag }, 'imap: the server did not answer an AUTHENTICATE step');
        await this.shutdown('[UNAVAILABLE] The mail server stopped answering');
        return false;
      }
    }
    if (this.login !== login || this.closed) return false;
    login.challenges--;
    return true;
  }

  /**
   * A client's SASL response (one line, base64 or `*`): the login name is read from it; one that
   * is not base64, or one that shows no usable name while `users` rules exist, is not relayed:
   * `*` cancels the exchange and the client gets the proxy's answer instead of the server's.
   */
  private async saslResponse(login: PendingLogin, text: Buffer, raw: Buffer, literal: LiteralSpec | null): Promise<void> {
    const sasl = login.sasl as SaslIdentity;
    // A response is one line to the server (RFC 3501 §6.2.2): a literal marker at its end is text,
    // and the bytes after it are the next command, never literal data relayed unexamined.
    if (literal) this.clientParser.cancelLiteral();
    this.clientMode = { kind: 'pass' };
    const step = sasl.response(text.toString('latin1'));
    if (step === 'invalid') return this.cancelSasl(login, 'BAD Invalid base64 in the authentication response', 'response not base64');
    if (step === 'relay' && sasl.problem !== null && this.ctx.policy.userRules) {
      return this.cancelSasl(login, `NO [CANNOT] Authentication refused by the proxy: ${sasl.problem}`, sasl.problem);
    }
    await this.toServer(step === 'cancel' ? Buffer.from('*\r\n') : raw);
  }

  private async cancelSasl(login: PendingLogin, refusal: string, why: string): Promise<void> {
    this.log.info({ tag: login.tag, mechanism: login.sasl?.mechanism, reason: why }, 'imap: AUTHENTICATE cancelled by the proxy');
    login.refusal = refusal;
    await this.toServer(Buffer.from('*\r\n'));
  }

  private async clientCommand(text: Buffer, raw: Buffer, literal: LiteralSpec | null): Promise<void> {
    if (this.ending !== null) {
      // The session ends once what is under way is answered: nothing new goes to the server (the
      // client gets the BYE instead of an answer, and sends it again after reconnecting).
      if (literal && !literal.plus) this.clientParser.cancelLiteral();
      this.clientMode = literal && literal.plus ? { kind: 'drop' } : { kind: 'pass' };
      return;
    }
    this.ctx.counters.commands++;
    this.summary.commands++;
    const cmd = commandName(text);
    this.currentTag = cmd?.tag ?? null;
    if (!cmd) {
      if (this.ctx.config.tls.required && !this.secure) {
        // Before TLS nothing but commands the proxy has examined reaches the server: a line it
        // cannot read could be a login in a form it does not know (credentials in clear).
        const tag = commandTag(text) ?? '*';
        this.log.info({ tag }, 'imap: unreadable line refused before STARTTLS (tls.required)');
        await this.reply(`${tag} BAD Command not understood (use STARTTLS first)`);
        if (literal && !literal.plus) this.clientParser.cancelLiteral();
        this.clientMode = literal && literal.plus ? { kind: 'drop' } : { kind: 'pass' };
        return;
      }
      // Not a command: IDLE's DONE, or garbage the server answers itself.
      this.clientMode = { kind: 'pass' };
      await this.toServer(raw);
      if (literal && !literal.plus) this.clientSyncTag = null;
      return;
    }
    const base = cmd.name.startsWith('UID ') ? cmd.name.slice(4) : cmd.name;
    const refuse = async (line: string) => {
      await this.reply(`${cmd.tag} ${line}`);
      if (literal && !literal.plus) this.clientParser.cancelLiteral();
      this.clientMode = literal && literal.plus ? { kind: 'drop' } : { kind: 'pass' };
    };
    if (base === 'STARTTLS' && this.ctx.tls !== null) {
      if (this.secure) return refuse('BAD TLS is already active');
      if (this.loggedIn || this.login !== null) return refuse('BAD STARTTLS is only valid before logging in');
      if (literal) return refuse('BAD STARTTLS takes no arguments');
      this.clientMode = { kind: 'pass' };
      this.startTlsTag = cmd.tag;
      return;
    }
    if (base === 'STARTTLS' || base === 'COMPRESS') return refuse(`NO [CANNOT] ${base} is not available through this proxy`);
    if ((base === 'LOGIN' || base === 'AUTHENTICATE') && this.ctx.config.tls.required && !this.secure) {
      this.log.info({ command: base }, 'imap: login refused before STARTTLS (tls.required)');
      return refuse('NO [PRIVACYREQUIRED] Use STARTTLS first');
    }
    const decision = this.ctx.policy.command({ client: this.plain.remoteAddress ?? null, user: this.user, command: base });
    if (decision.action === 'deny') {
      this.log.info({ command: base, rule: decision.rule, user: this.user }, 'imap: command denied by command-acl');
      return refuse(`NO [NOPERM] ${base} is not allowed here`);
    }
    if (base === 'LOGIN' || base === 'AUTHENTICATE') {
      // The login name for the ACLs' `users`, taken when the server says OK (taggedResponse).
      if (this.login !== null) return refuse('NO [CANNOT] One login at a time');
      const login: PendingLogin = { tag: cmd.tag, user: null, sasl: null, challenges: 0, wake: null, refusal: null };
      if (base === 'LOGIN') {
        const name = loginUser(cmd.rest);
        login.user = name === null ? null : loginNameOf(Buffer.from(name, 'latin1'));
        // `LOGIN {n}`: the name is the literal that follows.
        if (literal && /^ ~?\{\d+\+?\}$/.test(cmd.rest)) this.loginLiteral = { login, parts: [], size: 0 };
      } else {
        // AUTHENTICATE mechanism [initial-response] (RFC 3501 §6.2.2, RFC 4959).
        const m = /^ ([A-Za-z0-9_-]{1,20})(?: (\S+))?$/.exec(cmd.rest);
        if (!m || literal) return refuse('BAD Invalid AUTHENTICATE arguments');
        const sasl = new SaslIdentity(m[1] as string);
        if (m[2] !== undefined && !sasl.initial(m[2])) return refuse('BAD Invalid base64 in the initial response');
        if (sasl.problem !== null && this.ctx.policy.userRules) {
          this.log.info({ mechanism: sasl.mechanism, reason: sasl.problem }, 'imap: AUTHENTICATE refused: the login name cannot be read and users rules are configured');
          return refuse(`NO [CANNOT] Authentication refused by the proxy: ${sasl.problem}`);
        }
        login.sasl = sasl;
      }
      this.login = login;
    }
    if (base === 'APPEND' && decision.useAntivirus && literal) {
      this.ctx.counters.appends++;
      this.summary.appends++;
      const a: Append = { tag: cmd.tag, texts: [], literals: [], textBytes: 0, literalBytes: 0, refused: null, current: null };
      this.clientMode = { kind: 'append', a };
      return this.appendText(a, text, literal);
    }
    this.clientMode = { kind: 'pass' };
    this.inflight.set(cmd.tag, decision.useAntivirus);
    if (base === 'IDLE') this.idleTag = cmd.tag;
    if (base === 'FETCH' && decision.useAntivirus && !literal) raw = this.fetchLine(cmd.tag, text, raw, cmd.rest);
    await this.toServer(raw);
    this.clientSyncTag = literal && !literal.plus ? cmd.tag : null;
  }

  /** Notes what a FETCH asks of content; its partial items go upstream as whole ones (partial.ts). The line to send. */
  private fetchLine(tag: string, text: Buffer, raw: Buffer, rest: string): Buffer {
    const p = planFetch(rest);
    if (p.plan.size > 0) this.fetchPlans.set(tag, p.plan);
    if (p.rest === rest) return raw;
    this.log.debug({ tag, asked: rest.trim(), sent: p.rest.trim() }, 'imap: partial fetch asked upstream whole, to be scanned whole');
    return Buffer.concat([text.subarray(0, text.length - Buffer.byteLength(rest, 'latin1')), Buffer.from(p.rest, 'latin1'), raw.subarray(text.length)]);
  }

  private async appendText(a: Append, text: Buffer, literal: LiteralSpec | null): Promise<void> {
    a.texts.push(text);
    a.textBytes += text.length;
    const maxLiteral = this.ctx.config['max-literal-size'];
    if (a.refused === null && a.textBytes > this.ctx.config['max-line-length']) a.refused = 'BAD [TOOBIG] Command too long';
    if (literal) {
      a.literalBytes += literal.size;
      if (a.refused === null && a.literalBytes > maxLiteral) a.refused = `NO [TOOBIG] Message larger than ${maxLiteral} bytes`;
      if (a.refused !== null) {
        if (!literal.plus) {
          // Refused before the client sends a byte (RFC 3501 §7.5: a tagged NO instead of "+").
          this.clientParser.cancelLiteral();
          await this.finishAppend(a);
        }
        return; // LITERAL+: its bytes are read and dropped (a.current stays null)
      }
      const spool = new Spool(this.ctx.spoolDir, this.ctx.config['spool-memory'], { hash: this.ctx.scanner.wantsHash });
      a.literals.push({ spec: literal, spool });
      a.current = spool;
      if (!literal.plus) await this.reply('+ Ready for literal data');
      return;
    }
    await this.finishAppend(a);
  }

  private async disposeAppend(a: Append): Promise<void> {
    for (const l of a.literals) await l.spool.dispose();
    a.literals = [];
  }

  private async finishAppend(a: Append): Promise<void> {
    this.clientMode = { kind: 'pass' };
    // From the scan to the tagged answer the APPEND is under way: a graceful end waits for it.
    this.appending = true;
    try {
      if (a.refused !== null) {
        this.ctx.counters.appendsRefused++;
        this.log.info({ tag: a.tag, reason: a.refused }, 'imap: APPEND refused');
        return await this.reply(`${a.tag} ${a.refused}`);
      }
      for (const [i, l] of a.literals.entries()) {
        const label = `imap ${this.user ?? '-'} APPEND #${i + 1}`;
        let outcome: FilterOutcome;
        try {
          outcome = await filterMessage(l.spool, this.deps(label), this.abort.signal);
        } catch (err) {
          if (this.closed) return;
          this.log.error({ err: messageOf(err) }, 'imap: scanning an APPEND failed');
          this.ctx.counters.appendsRefused++;
          return await this.reply(`${a.tag} NO [UNAVAILABLE] The message could not be scanned, try again later`);
        }
        await outcome.dispose();
        if (outcome.changed) {
          this.ctx.counters.appendsRefused++;
          const first = outcome.replaced[0];
          const reason = reasonOf(first?.status ?? 'refused', first?.names ?? []).replace(/[\r\n[\]]/g, ' ');
          this.log.info({ tag: a.tag, user: this.user, replaced: outcome.replaced }, 'imap: APPEND refused');
          return await this.reply(`${a.tag} NO [CANNOT] Message refused by the virus filter: ${reason}`);
        }
      }
      await this.forwardAppend(a);
    } finally {
      this.appending = false;
      await this.disposeAppend(a);
    }
  }

  /** Sends a scanned APPEND upstream: LITERAL+ when the server has it, else waits for each `+`. */
  private async forwardAppend(a: Append): Promise<void> {
    this.inflight.set(a.tag, true);
    for (const [i, text] of a.texts.entries()) {
      const lit = a.literals[i];
      if (!lit) {
        await this.toServer(Buffer.concat([text, CRLF]));
        return;
      }
      const plus = this.serverLiteralPlus && !lit.spec.binary;
      if (plus) {
        await this.toServer(rewriteMarker(text, lit.spec, lit.spool.size, { plus: true }));
      } else {
        this.log.debug({ tag: a.tag, size: lit.spool.size }, 'imap: APPEND forwarded with a synchronising literal');
        const go = new Promise<boolean>((resolve) => (this.continuation = { tag: a.tag, resolve }));
        await this.toServer(rewriteMarker(text, lit.spec, lit.spool.size));
        // The server's tagged NO instead of "+" goes to the client as it is; nothing more is sent.
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), this.ctx.config.timeouts.read)));
        const answer = await Promise.race([go, timedOut]);
        clearTimeout(timer);
        if (answer === 'timeout') {
          this.log.warn({ tag: a.tag }, 'imap: the server did not ask for the APPEND literal');
          return this.shutdown('[UNAVAILABLE] The mail server stopped answering');
        }
        if (!answer) return;
      }
      for await (const chunk of readInput(lit.spool)) await this.toServer(chunk);
    }
  }
}

/** The user name of `LOGIN user pass` (atom or quoted string; null for a literal). */
export function loginUser(rest: string): string | null {
  const s = rest.trimStart();
  const q = /^"((?:[^"\\]|\\.)*)"/.exec(s);
  if (q) return (q[1] as string).replace(/\\(.)/g, '$1');
  const a = /^([^\s{"]+)/.exec(s);
  return a ? (a[1] as string) : null;
}

/** The login name of a SASL PLAIN response (base64 of authzid NUL authcid NUL password); null when it shows none. */
export function plainAuthUser(b64: string): string | null {
  const sasl = new SaslIdentity('PLAIN');
  return sasl.response(b64.trim()) === 'relay' ? sasl.identified : null;
}
