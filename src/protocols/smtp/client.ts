import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { AvgateError, messageOf } from '../../core/errors.js';
import { connectTls, connectWithTimeout, type UpstreamTls } from '../../core/net.js';
import { replyFromLines, replySummary } from './reply.js';
import type { SmtpReply } from './types.js';

/** Where the next hop is and which protocol it speaks. */
export type NextHopTarget =
  | { kind: 'tcp'; host: string; port: number; lmtp: boolean }
  | { kind: 'unix'; path: string; lmtp: boolean }
  | { kind: 'cmd'; command: string; args: string[]; lmtp: false };

/** Parses `smtp:HOST:PORT`, `smtp:[V6]:PORT`, `lmtp:HOST:PORT`, `lmtp:unix:/PATH`, `smtp:unix:/PATH`, `cmd:/PATH ARGS`. */
export function parseNextHop(text: string): NextHopTarget {
  const t = text.trim();
  if (t.startsWith('cmd:')) {
    const words = t.slice(4).trim().split(/\s+/).filter((w) => w.length > 0);
    const command = words[0];
    if (!command?.startsWith('/')) throw new AvgateError('AVG_ERR_CONFIG', `next hop "${text}": cmd: needs an absolute path`);
    return { kind: 'cmd', command, args: words.slice(1), lmtp: false };
  }
  const m = /^(smtp|lmtp):(?:unix:(\/.+)|\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s[\]]+):(\d{1,5}))$/.exec(t);
  if (!m) throw new AvgateError('AVG_ERR_CONFIG', `next hop "${text}": expected smtp:HOST:PORT, lmtp:HOST:PORT, lmtp:unix:/PATH or cmd:/PATH ARGS`);
  const lmtp = m[1] === 'lmtp';
  if (m[2]) return { kind: 'unix', path: m[2], lmtp };
  const port = Number(m[4] ?? m[6]);
  if (port < 1 || port > 65535) throw new AvgateError('AVG_ERR_CONFIG', `next hop "${text}": bad port`);
  return { kind: 'tcp', host: (m[3] ?? m[5]) as string, port, lmtp };
}

/** STARTTLS to the next hop (smtp.next-hop.tls): `may` when offered, `encrypt` always. */
export interface NextHopTls extends UpstreamTls {
  mode: 'may' | 'encrypt';
}

export interface ClientTimeouts {
  connectMs: number;
  greetingMs: number;
  commandMs: number;
  dataBlockMs: number;
  dataDoneMs: number;
}

export type FailurePhase = 'connect' | 'greeting' | 'command' | 'data' | 'data-done' | 'abort' | 'local';

/**
 * Trouble with the next hop (or with the local side of a delivery). `reply` is the next hop's own
 * reply when it gave one (a 421, a refusing greeting). Mapped to a 4xx per recipient, never thrown
 * out of NextHop.deliver().
 */
export class NextHopFailure extends Error {
  constructor(
    readonly phase: FailurePhase,
    message: string,
    readonly reply: SmtpReply | null = null,
  ) {
    super(message);
    this.name = 'NextHopFailure';
  }
}

/** Longest reply line accepted from a next hop (RFC 5321 says 512; real servers send more). */
const MAX_LINE = 64 * 1024;
/** Transcript lines kept per transaction (a transaction with 1000 recipients is still readable). */
const MAX_TRANSCRIPT = 400;
const CRLF = Buffer.from('\r\n');
const DOT_CRLF = Buffer.from('.\r\n');
const CRLF_DOT_CRLF = Buffer.from('\r\n.\r\n');

/**
 * One connection to the next hop (socket or child process): reads replies (multi-line, in order,
 * including unsolicited ones such as a 421 before shutdown), writes commands and the dot-stuffed
 * body with backpressure, and keeps a transcript of the current transaction (commands and replies,
 * never the body).
 */
export class SmtpClientConnection {
  private input: Readable;
  private output: Writable;
  private destroyStream: () => void;
  private partial: Buffer[] = [];
  private partialLength = 0;
  private replyLines: string[] = [];
  private replyCode = 0;
  private replies: SmtpReply[] = [];
  private waiter: { resolve: (r: SmtpReply) => void; reject: (e: Error) => void } | null = null;
  private failure: NextHopFailure | null = null;
  private childStderr = '';
  /** Capabilities from EHLO/LHLO: keyword (upper case) → its parameters. */
  readonly capabilities = new Map<string, string>();
  transcript: string[] = [];
  transactions = 0;
  readonly createdAt = Date.now();
  lastUsed = Date.now();
  /** Set when XCLIENT changed the session's identity: not to be reused for another client. */
  personalized = false;
  /** The session went through STARTTLS. */
  secure = false;

  private constructor(
    readonly label: string,
    readonly lmtp: boolean,
    io: { input: Readable; output: Writable; destroy: () => void; child?: ChildProcess },
  ) {
    this.input = io.input;
    this.output = io.output;
    this.destroyStream = io.destroy;
    this.attach();
    const child = io.child;
    if (child) {
      child.stderr?.on('data', (d: Buffer) => {
        this.childStderr = (this.childStderr + d.toString('utf8')).slice(-1000);
      });
      child.once('exit', (code, signal) => {
        const why = this.childStderr.trim().split('\n').pop() ?? '';
        this.fail(new NextHopFailure('command', `${label}: command exited with ${code ?? signal}${why ? `: ${why}` : ''}`));
      });
    }
  }

  /**
   * Connects (or starts the command), reads the greeting and says EHLO/LHLO (HELO when EHLO is
   * refused). Throws NextHopFailure.
   */
  static async open(target: NextHopTarget, label: string, opts: { helo: string; timeouts: ClientTimeouts; tls?: NextHopTls | null; signal?: AbortSignal }): Promise<SmtpClientConnection> {
    let conn: SmtpClientConnection;
    if (target.kind === 'cmd') {
      const child = spawn(target.command, target.args, { stdio: ['pipe', 'pipe', 'pipe'] });
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', () => resolve());
        child.once('error', (err) => reject(new NextHopFailure('connect', `${label}: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
      });
      child.on('error', () => undefined);
      conn = new SmtpClientConnection(label, false, {
        input: child.stdout as Readable,
        output: child.stdin as Writable,
        destroy: () => {
          child.stdin?.destroy();
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        },
        child,
      });
    } else {
      let socket;
      try {
        socket = await connectWithTimeout(target.kind === 'unix' ? { path: target.path } : { host: target.host, port: target.port }, {
          timeoutMs: opts.timeouts.connectMs,
          label,
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
      } catch (err) {
        throw new NextHopFailure('connect', messageOf(err));
      }
      socket.setNoDelay(true);
      conn = new SmtpClientConnection(label, target.lmtp, { input: socket, output: socket, destroy: () => socket.destroy() });
    }
    try {
      await conn.hello(opts.helo, opts.timeouts.greetingMs);
      // STARTTLS only where there is TCP (not to a local socket or command).
      if (opts.tls && target.kind === 'tcp') await conn.startTls(target, opts.tls, opts.helo, opts.timeouts.greetingMs);
    } catch (err) {
      conn.destroy();
      throw err;
    }
    return conn;
  }

  private readonly onInput = (d: Buffer): void => this.onData(d);
  private readonly onStreamError = (err: Error): void => this.fail(new NextHopFailure('command', `${this.label}: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
  private readonly onInputEnd = (): void => this.fail(new NextHopFailure('command', `${this.label}: connection closed by the next hop`));

  private attach(): void {
    this.input.on('data', this.onInput);
    this.input.on('error', this.onStreamError);
    this.output.on('error', this.onStreamError);
    this.input.on('close', this.onInputEnd);
    this.input.on('end', this.onInputEnd);
  }

  private detach(): void {
    this.input.pause();
    this.input.off('data', this.onInput);
    this.input.off('error', this.onStreamError);
    this.output.off('error', this.onStreamError);
    this.input.off('close', this.onInputEnd);
    this.input.off('end', this.onInputEnd);
  }

  /**
   * STARTTLS (RFC 3207) after EHLO, then EHLO again over TLS. `may`: only when offered, and a
   * refusal leaves the session in clear; `encrypt`: not offered or refused is a failure. A failed
   * handshake is a failure either way (the connection is unusable).
   */
  private async startTls(target: { host: string; port: number }, tls: NextHopTls, helo: string, timeoutMs: number): Promise<void> {
    if (!this.capabilities.has('STARTTLS')) {
      if (tls.mode === 'encrypt') throw new NextHopFailure('greeting', `${this.label}: does not offer STARTTLS (next-hop tls: encrypt)`);
      return;
    }
    this.send('STARTTLS');
    const r = await this.readReply(timeoutMs, 'greeting');
    if (r.code !== 220) {
      if (tls.mode === 'encrypt') throw new NextHopFailure('greeting', `${this.label}: refused STARTTLS: ${replySummary(r)}`, r);
      return;
    }
    // Bytes after the 220 but before the handshake would be plaintext injected into the session.
    if (!this.usable) throw new NextHopFailure('greeting', `${this.label}: sent data between its STARTTLS reply and TLS (injection attempt)`);
    this.detach();
    let secure: Socket;
    try {
      secure = await connectTls({ host: target.host, port: target.port, socket: this.input as Socket }, tls, timeoutMs);
    } catch (err) {
      throw new NextHopFailure('greeting', `${this.label}: TLS failed: ${messageOf(err)}`);
    }
    secure.setNoDelay(true);
    this.input = secure;
    this.output = secure;
    this.destroyStream = () => secure.destroy();
    this.attach();
    this.secure = true;
    this.record('(TLS started)');
    await this.greet(helo, timeoutMs);
  }

  private async hello(helo: string, timeoutMs: number): Promise<void> {
    const greeting = await this.readReply(timeoutMs, 'greeting');
    if (greeting.code !== 220) throw new NextHopFailure('greeting', `${this.label}: refused the connection: ${replySummary(greeting)}`, greeting);
    await this.greet(helo, timeoutMs);
  }

  /** EHLO/LHLO (again after XCLIENT); reads the capabilities. */
  async greet(helo: string, timeoutMs: number): Promise<void> {
    this.capabilities.clear();
    this.send(`${this.lmtp ? 'LHLO' : 'EHLO'} ${helo}`);
    let r = await this.readReply(timeoutMs, 'greeting');
    if (r.code >= 500 && !this.lmtp) {
      this.send(`HELO ${helo}`);
      r = await this.readReply(timeoutMs, 'greeting');
      if (r.code === 250) return;
    }
    if (r.code !== 250) throw new NextHopFailure('greeting', `${this.label}: refused ${this.lmtp ? 'LHLO' : 'EHLO'}: ${replySummary(r)}`, r);
    for (const line of r.lines.slice(1)) {
      const [keyword, ...rest] = line.trim().split(/\s+/);
      if (keyword) this.capabilities.set(keyword.toUpperCase(), rest.join(' '));
    }
  }

  get usable(): boolean {
    return this.failure === null && this.replies.length === 0 && this.replyLines.length === 0 && this.partialLength === 0;
  }

  get broken(): NextHopFailure | null {
    return this.failure;
  }

  private onData(d: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = d.indexOf(0x0a, start);
      if (nl < 0) break;
      let line: Buffer = d.subarray(start, nl);
      if (this.partialLength > 0) {
        line = Buffer.concat([...this.partial, line]);
        this.partial = [];
        this.partialLength = 0;
      }
      start = nl + 1;
      this.onLine(line.toString('utf8').replace(/\r$/, ''));
      if (this.failure) return;
    }
    if (start < d.length) {
      this.partial.push(d.subarray(start));
      this.partialLength += d.length - start;
      if (this.partialLength > MAX_LINE) this.protocolError(`reply line longer than ${MAX_LINE} bytes`);
    }
  }

  private onLine(line: string): void {
    const m = /^(\d{3})([ -]?)(.*)$/.exec(line);
    const code = Number(m?.[1]);
    if (!m || code < 200 || code > 599 || (this.replyLines.length > 0 && code !== this.replyCode)) {
      this.protocolError(`unexpected reply line "${line.slice(0, 80)}"`);
      return;
    }
    this.replyCode = code;
    this.replyLines.push(m[3] as string);
    if (m[2] === '-') {
      if (this.replyLines.length > 1000) this.protocolError('reply of more than 1000 lines');
      return;
    }
    const r = replyFromLines(code, this.replyLines);
    this.replyLines = [];
    this.record(`S: ${replySummary({ ...r, lines: r.lines.slice(0, 1) })}${r.lines.length > 1 ? ` (+${r.lines.length - 1} lines)` : ''}`);
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w.resolve(r);
    } else {
      this.replies.push(r);
    }
  }

  private protocolError(message: string): void {
    this.fail(new NextHopFailure('command', `${this.label}: ${message}`));
    this.destroy();
  }

  private fail(f: NextHopFailure): void {
    if (this.failure) return;
    this.failure = f;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(f);
  }

  private record(line: string): void {
    if (this.transcript.length < MAX_TRANSCRIPT) this.transcript.push(line);
    else if (this.transcript.length === MAX_TRANSCRIPT) this.transcript.push('(transcript cut)');
  }

  /** The next reply, within timeoutMs; a timeout or a lost connection throws (and ends the connection). */
  readReply(timeoutMs: number, phase: FailurePhase): Promise<SmtpReply> {
    const queued = this.replies.shift();
    if (queued) return Promise.resolve(queued);
    if (this.failure) return Promise.reject(this.phaseOf(this.failure, phase));
    return new Promise<SmtpReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        const f = new NextHopFailure(phase, `${this.label}: no reply within ${timeoutMs} ms (${phase})`);
        this.fail(f);
        this.destroy();
        reject(f);
      }, timeoutMs);
      this.waiter = {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e instanceof NextHopFailure ? this.phaseOf(e, phase) : e);
        },
      };
    });
  }

  private phaseOf(f: NextHopFailure, phase: FailurePhase): NextHopFailure {
    return f.phase === phase ? f : new NextHopFailure(phase, f.message, f.reply);
  }

  /** Writes command lines (one write: a pipelined group goes out in one segment). */
  send(...lines: string[]): void {
    for (const l of lines) this.record(`C: ${l}`);
    if (this.failure) return;
    this.output.write(lines.join('\r\n') + '\r\n');
  }

  /**
   * Streams the body dot-stuffed (RFC 5321 4.5.2) and ends it with CRLF.CRLF. Waits for 'drain'
   * whenever the next hop is slower than the source (at most dataBlockMs each time), so memory
   * stays at one chunk whatever the message size.
   */
  async sendBody(body: Readable | Buffer, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    let atLineStart = true;
    let last: Buffer = Buffer.alloc(0);
    let total = 0;
    const source: AsyncIterable<Buffer> | Buffer[] = Buffer.isBuffer(body) ? [body] : (body as AsyncIterable<Buffer>);
    // Corked until 64 KiB are queued: a small message and its final dot leave in one segment.
    const out = this.output;
    const flush = () => {
      while (out.writableCorked > 0) out.uncork();
    };
    out.cork();
    try {
      for await (const raw of source) {
        const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw as string);
        if (chunk.length === 0) continue;
        if (signal?.aborted) throw new NextHopFailure('abort', `${this.label}: delivery aborted while sending the message`);
        if (this.failure) throw this.phaseOf(this.failure, 'data');
        const stuffed = dotStuff(chunk, atLineStart);
        atLineStart = chunk[chunk.length - 1] === 0x0a;
        last = chunk.length >= 2 ? chunk.subarray(chunk.length - 2) : Buffer.concat([last, chunk]).subarray(-2);
        total += chunk.length;
        // Backpressure before the next piece, not after the last: the final dot leaves with it.
        if (out.writableNeedDrain) {
          await this.drain(timeoutMs);
          out.cork();
        }
        out.write(stuffed);
        if (out.writableNeedDrain || out.writableLength >= 64 * 1024) {
          flush();
          if (!out.writableNeedDrain) out.cork();
        }
      }
    } catch (err) {
      // The final dot was not sent: the next hop discards what it got when the connection ends.
      flush();
      this.destroy();
      if (err instanceof NextHopFailure) throw err;
      throw new NextHopFailure('local', `cannot read the message: ${messageOf(err)}`);
    }
    if (this.failure) {
      flush();
      throw this.phaseOf(this.failure, 'data');
    }
    this.record(`C: (${total} bytes)`);
    this.record('C: .');
    out.write(total === 0 || last.equals(CRLF) ? DOT_CRLF : CRLF_DOT_CRLF);
    flush();
  }

  private drain(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = (err?: NextHopFailure) => {
        clearTimeout(timer);
        this.output.off('drain', onDrain);
        this.input.off('close', onClose);
        if (err) reject(err);
        else resolve();
      };
      const onDrain = () => done();
      const onClose = () => done(new NextHopFailure('data', `${this.label}: connection closed while sending the message`));
      const timer = setTimeout(() => done(new NextHopFailure('data', `${this.label}: message not taken within ${timeoutMs} ms`)), timeoutMs);
      this.output.on('drain', onDrain);
      this.input.on('close', onClose);
      if (this.failure) done(this.phaseOf(this.failure, 'data'));
    });
  }

  /** QUIT politely (bounded), then close. */
  async quit(timeoutMs = 2000): Promise<void> {
    if (!this.failure) {
      try {
        this.send('QUIT');
        await this.readReply(timeoutMs, 'command');
      } catch {
        // closing anyway
      }
    }
    this.destroy();
  }

  destroy(): void {
    this.fail(new NextHopFailure('command', `${this.label}: connection closed`));
    this.destroyStream();
  }
}

/**
 * Doubles every dot at the start of a line. Returns the chunk itself when nothing needs stuffing
 * (the common case: no copy).
 */
export function dotStuff(chunk: Buffer, atLineStart: boolean): Buffer {
  const parts: Buffer[] = [];
  let from = 0;
  if (atLineStart && chunk[0] === 0x2e) {
    parts.push(Buffer.from('.'));
  }
  let i = chunk.indexOf('\n.');
  while (i >= 0) {
    parts.push(chunk.subarray(from, i + 1), Buffer.from('.'));
    from = i + 1;
    i = chunk.indexOf('\n.', i + 1);
  }
  if (parts.length === 0) return chunk;
  parts.push(chunk.subarray(from));
  return Buffer.concat(parts);
}
