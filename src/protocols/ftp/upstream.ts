import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { connectTls, connectWithTimeout, type UpstreamTls } from '../../core/net.js';
import { overTcp } from './data.js';
import { LineReader } from './lines.js';
import { formatCommand, ReplyAssembler, type FtpReply } from './wire.js';

/** The server's control connection is unusable (closed, silent, or not speaking FTP). */
export class UpstreamGone extends Error {}

/**
 * The control connection to the FTP server: commands out, whole replies in (multi-line replies
 * assembled, every line and the number of lines bounded).
 */
export class UpstreamControl {
  private reader: LineReader;
  private readonly assembler: ReplyAssembler;
  /** The control connection in TLS (and so the data connections): how the server is checked. */
  private tls: UpstreamTls | null = null;

  private constructor(
    private socket: Socket,
    readonly host: string,
    readonly port: number,
    private readonly maxLine: number,
    maxLines: number,
  ) {
    this.reader = new LineReader(socket, maxLine);
    this.assembler = new ReplyAssembler(maxLines);
    socket.on('error', () => undefined);
  }

  /** `tls`: implicit FTPS (TLS from the first byte); explicit FTPS is startTls() after the greeting. */
  static async connect(host: string, port: number, o: { timeoutMs: number; signal: AbortSignal; maxLine: number; maxLines: number; tls?: UpstreamTls | null }): Promise<UpstreamControl> {
    const s = o.tls
      ? await connectTls({ host, port }, o.tls, o.timeoutMs)
      : await connectWithTimeout({ host, port }, { timeoutMs: o.timeoutMs, label: `ftp ${host}:${port}`, signal: o.signal });
    s.setNoDelay(true);
    const c = new UpstreamControl(s, host, port, o.maxLine, o.maxLines);
    c.tls = o.tls ?? null;
    return c;
  }

  /**
   * Explicit FTPS (RFC 4217) after the 220: AUTH TLS, the handshake (bytes the server sent behind
   * its 234 end the connection: injection), then, as for implicit FTPS, PBSZ 0 and PROT P so the
   * data connections are TLS too. Throws UpstreamGone with the reason.
   */
  async startTls(tls: UpstreamTls, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const auth = await this.command('AUTH', 'TLS', timeoutMs, signal);
    if (auth.code !== 234) throw new UpstreamGone(`the server refused AUTH TLS: ${auth.lines[0] ?? ''}`);
    if (this.reader.ready) throw new UpstreamGone('the server sent data between its AUTH TLS reply and TLS (injection attempt)');
    this.reader.detach();
    try {
      this.socket = await connectTls({ host: this.host, port: this.port, socket: this.socket }, tls, timeoutMs);
    } catch (err) {
      throw new UpstreamGone(`TLS with the server failed: ${(err as Error).message}`);
    }
    this.socket.on('error', () => undefined);
    this.reader = new LineReader(this.socket, this.maxLine);
    this.tls = tls;
    await this.protectData(timeoutMs, signal);
  }

  /** PBSZ 0 and PROT P: the server's data connections in TLS. */
  async protectData(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    for (const [verb, arg] of [
      ['PBSZ', '0'],
      ['PROT', 'P'],
    ] as const) {
      const r = await this.command(verb, arg, timeoutMs, signal);
      if (r.code < 200 || r.code >= 300) throw new UpstreamGone(`the server refused ${verb} ${arg}: ${r.lines[0] ?? ''}`);
    }
  }

  /**
   * A data connection to the server in TLS when the control connection is (the control
   * connection's session offered for reuse: vsftpd and others require it); else `raw` as it is.
   * The TCP socket under it is remembered, so the connection can be cut with a reset (resetData).
   */
  async secureData(raw: Socket, timeoutMs: number): Promise<Socket> {
    if (!this.tls) return raw;
    const session = (this.socket as TLSSocket).getSession();
    return overTcp(await connectTls({ host: this.host, port: this.port, socket: raw, ...(session ? { session } : {}) }, this.tls, timeoutMs), raw, 'client');
  }

  /** The address data connections go to: the one the control connection reached, never a PASV reply's. */
  get address(): string {
    return this.socket.remoteAddress ?? this.host;
  }

  send(verb: string, arg = ''): void {
    if (!this.socket.destroyed) this.socket.write(formatCommand(verb, arg), 'latin1');
  }

  async reply(timeoutMs: number, signal?: AbortSignal): Promise<FtpReply> {
    for (;;) {
      const ev = await this.reader.next(timeoutMs, signal);
      if (ev.kind === 'eof') throw new UpstreamGone('the server closed the control connection');
      if (ev.kind === 'timeout') throw new UpstreamGone(`the server did not reply within ${timeoutMs} ms`);
      if (ev.kind === 'too-long') throw new UpstreamGone('the server sent a reply line over max-line-length');
      const r = this.assembler.push(ev.line);
      if (r === null) continue;
      if ('error' in r) throw new UpstreamGone(`the server broke the reply format: ${r.error}`);
      return r;
    }
  }

  /** Sends a command and waits for its reply. */
  async command(verb: string, arg: string, timeoutMs: number, signal?: AbortSignal): Promise<FtpReply> {
    this.send(verb, arg);
    return this.reply(timeoutMs, signal);
  }

  close(): void {
    this.socket.destroy();
  }
}
