import type { Socket } from 'node:net';
import { connectWithTimeout } from '../../core/net.js';
import { LineReader } from './lines.js';
import { formatCommand, ReplyAssembler, type FtpReply } from './wire.js';

/** The server's control connection is unusable (closed, silent, or not speaking FTP). */
export class UpstreamGone extends Error {}

/**
 * The control connection to the FTP server: commands out, whole replies in (multi-line replies
 * assembled, every line and the number of lines bounded).
 */
export class UpstreamControl {
  private readonly reader: LineReader;
  private readonly assembler: ReplyAssembler;

  private constructor(
    readonly socket: Socket,
    readonly host: string,
    readonly port: number,
    maxLine: number,
    maxLines: number,
  ) {
    this.reader = new LineReader(socket, maxLine);
    this.assembler = new ReplyAssembler(maxLines);
    socket.on('error', () => undefined);
  }

  static async connect(host: string, port: number, o: { timeoutMs: number; signal: AbortSignal; maxLine: number; maxLines: number }): Promise<UpstreamControl> {
    const s = await connectWithTimeout({ host, port }, { timeoutMs: o.timeoutMs, label: `ftp ${host}:${port}`, signal: o.signal });
    s.setNoDelay(true);
    return new UpstreamControl(s, host, port, o.maxLine, o.maxLines);
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
