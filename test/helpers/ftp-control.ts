import { execFile } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { ReplyAssembler, type FtpReply } from '../../src/protocols/ftp/wire.js';
import { attachReader, moveReaderToTls } from './tls.js';

/** A raw FTP control connection for wire-level tests: send a line, read the next whole reply. */
export class FtpControl {
  private buffer = '';
  private readonly replies: FtpReply[] = [];
  private readonly assembler = new ReplyAssembler();
  private wake: (() => void) | null = null;
  closed = false;

  private constructor(public socket: Socket) {
    attachReader(socket, this.onData, this.onClose);
  }

  private readonly onData = (d: Buffer): void => {
    this.buffer += d.toString('latin1');
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).replace(/\r$/, '');
      this.buffer = this.buffer.slice(nl + 1);
      const r = this.assembler.push(line);
      if (r && !('error' in r)) this.replies.push(r);
    }
    this.notify();
  };

  private readonly onClose = (): void => {
    this.closed = true;
    this.notify();
  };


  /**
   * AUTH TLS (with `behind`, text written in the same packet right after it); on 234 the control
   * connection goes on in TLS (any certificate accepted). Returns the reply to AUTH TLS.
   */
  async startTls(behind = ''): Promise<FtpReply> {
    this.send(`AUTH TLS\r\n${behind}`);
    const r = await this.reply();
    if (r.code !== 234) return r;
    this.socket = await moveReaderToTls(this.socket, this.onData, this.onClose);
    return r;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  static open(port: number): Promise<FtpControl> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => resolve(new FtpControl(s)));
      s.once('error', reject);
    });
  }

  /** The next reply; rejects after `timeoutMs` or when the connection closed first. */
  async reply(timeoutMs = 10_000): Promise<FtpReply> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const r = this.replies.shift();
      if (r) return r;
      if (this.closed) throw new Error('control connection closed');
      if (Date.now() > until) throw new Error('no reply in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, until - Date.now()));
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  send(raw: string): void {
    this.socket.write(raw, 'latin1');
  }

  async command(line: string): Promise<FtpReply> {
    this.send(`${line}\r\n`);
    return this.reply();
  }

  /** EPSV, and the data port of the 229 reply (NaN when there is none). */
  async epsvPort(): Promise<number> {
    const p = await this.command('EPSV');
    return Number(/\(\|\|\|(\d+)\|\)/.exec(p.lines[0] as string)?.[1]);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A data connection opened by the test, read to its end. */
export interface DataReceiver {
  socket: Socket;
  /** Everything received so far. */
  received(): Buffer;
  closed: Promise<void>;
}

/** Connects to a passive data port (from `localAddress`) and collects what arrives; errors are ignored. */
export function openData(port: number, localAddress = '127.0.0.1'): Promise<DataReceiver> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress }, () => {
      socket.off('error', reject);
      socket.on('error', () => undefined);
      resolve({ socket, received: () => Buffer.concat(chunks), closed });
    });
    const chunks: Buffer[] = [];
    socket.on('data', (d: Buffer) => chunks.push(d));
    const closed = new Promise<void>((done) => socket.once('close', () => done()));
    socket.once('error', reject);
  });
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a client (curl, lftp) without blocking the event loop (the proxy under test runs in this process). */
export function run(cmd: string, args: readonly string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, [...args], { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, encoding: 'latin1' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
