import { connect, type Socket } from 'node:net';
import { ImapWireParser } from '../../src/protocols/imap/wire.js';
import { attachReader, moveReaderToTls } from './tls.js';

/** One response (or continuation request) as received: its text segments and literals. */
export interface ImapResponse {
  segments: string[];
  literals: Buffer[];
  /** The segments joined with `{LITERAL}` where each literal was. */
  text: string;
}

/**
 * A scripted IMAP client for the tests: sends commands (tags t1, t2 ...), collects responses with
 * their literals exactly as framed by the octet counts. A wrong count shows up as a broken
 * response (or a timeout), never as a silently wrong message.
 */
export class ImapTestClient {
  private readonly parser = new ImapWireParser({ role: 'server', maxLineLength: 1 << 20 });
  private readonly queue: ImapResponse[] = [];
  private waiter: (() => void) | null = null;
  private current: ImapResponse | null = null;
  private literal: Buffer[] = [];
  private seq = 0;
  closed = false;
  /** Every byte received (for assertions on the raw stream). */
  received: Buffer[] = [];

  private constructor(public socket: Socket) {
    attachReader(socket, this.onData, this.onClose);
  }

  private readonly onData = (d: Buffer): void => {
    this.received.push(d);
    this.parser.push(d);
    for (let e = this.parser.next(); e; e = this.parser.next()) {
      if (e.kind === 'text') {
        this.current ??= { segments: [], literals: [], text: '' };
        this.current.segments.push(e.text.toString('latin1'));
        if (!e.literal) {
          const r = this.current;
          r.text = r.segments.join('{LITERAL}');
          this.current = null;
          this.queue.push(r);
        } else this.literal = [];
      } else if (e.kind === 'data') this.literal.push(Buffer.from(e.data));
      else if (e.kind === 'literal-end') this.current?.literals.push(Buffer.concat(this.literal));
    }
    this.wake();
  };

  private readonly onClose = (): void => {
    this.closed = true;
    this.wake();
  };


  /**
   * STARTTLS: sends it (with `behind`, text written in the same packet right after the command)
   * and, on OK, goes on in TLS on the same connection (any certificate accepted). Returns the
   * tagged answer.
   */
  async startTls(behind = ''): Promise<string> {
    const tag = this.nextTag();
    this.send(`${tag} STARTTLS\r\n${behind}`);
    const { tagged } = await this.until(tag);
    if (!new RegExp(`^${tag} OK`).test(tagged)) return tagged;
    this.socket = await moveReaderToTls(this.socket, this.onData, this.onClose);
    return tagged;
  }

  static async connect(port: number): Promise<{ client: ImapTestClient; greeting: ImapResponse }> {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new ImapTestClient(socket);
    return { client, greeting: await client.next() };
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** The next complete response; rejects on close or after timeoutMs. */
  async next(timeoutMs = 20_000): Promise<ImapResponse> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const r = this.queue.shift();
      if (r) return r;
      if (this.closed) throw new Error('connection closed');
      const left = until - Date.now();
      if (left <= 0) throw new Error('timeout waiting for a response');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  nextTag(): string {
    return `t${++this.seq}`;
  }

  /** Responses up to and including the tagged one. */
  async until(tag: string, timeoutMs = 30_000): Promise<{ untagged: ImapResponse[]; tagged: string }> {
    const untagged: ImapResponse[] = [];
    for (;;) {
      const r = await this.next(timeoutMs);
      if (r.text.startsWith(`${tag} `)) return { untagged, tagged: r.text };
      untagged.push(r);
    }
  }

  async command(text: string, timeoutMs?: number): Promise<{ untagged: ImapResponse[]; tagged: string }> {
    const tag = this.nextTag();
    this.send(`${tag} ${text}\r\n`);
    return this.until(tag, timeoutMs);
  }

  /** APPEND with a synchronising literal (waits for "+") or LITERAL+. */
  async append(mailbox: string, message: Buffer, opts: { plus?: boolean } = {}): Promise<{ untagged: ImapResponse[]; tagged: string; continued: boolean }> {
    const tag = this.nextTag();
    if (opts.plus) {
      this.send(Buffer.concat([Buffer.from(`${tag} APPEND ${mailbox} {${message.length}+}\r\n`), message, Buffer.from('\r\n')]));
      return { ...(await this.until(tag)), continued: false };
    }
    this.send(`${tag} APPEND ${mailbox} {${message.length}}\r\n`);
    const first = await this.next();
    if (!first.text.startsWith('+')) {
      // Refused before the literal: the tagged answer came instead of "+".
      if (first.text.startsWith(`${tag} `)) return { untagged: [], tagged: first.text, continued: false };
      const rest = await this.until(tag);
      return { untagged: [first, ...rest.untagged], tagged: rest.tagged, continued: false };
    }
    this.send(Buffer.concat([message, Buffer.from('\r\n')]));
    return { ...(await this.until(tag)), continued: true };
  }

  async login(user: string, password: string): Promise<void> {
    const r = await this.command(`LOGIN ${user} ${password}`);
    if (!/ OK/.test(r.tagged)) throw new Error(`login failed: ${r.tagged}`);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** The literals of untagged FETCH responses, in order, with the item each belongs to. */
export function fetchLiterals(responses: ImapResponse[]): Array<{ seq: number; item: string; data: Buffer }> {
  const out: Array<{ seq: number; item: string; data: Buffer }> = [];
  for (const r of responses) {
    const m = /^\* (\d+) FETCH/.exec(r.segments[0] ?? '');
    if (!m) continue;
    r.literals.forEach((data, i) => {
      const seg = r.segments[i] as string;
      const item = /([^\s(]+(?:\[[^\]]*\])?(?:<\d+>)?) ~?\{\d+\}$/.exec(seg)?.[1] ?? '?';
      out.push({ seq: Number(m[1]), item, data });
    });
  }
  return out;
}
