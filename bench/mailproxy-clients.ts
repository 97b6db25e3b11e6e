/**
 * Lean POP3 and IMAP4 clients for the mail-proxy section: one session reads a whole mailbox, one
 * message at a time (POP3 `RETR n`, IMAP `FETCH n BODY.PEEK[]`, so the second pass finds the
 * mailbox unchanged), and hands every message to a callback. Written for loopback peers that
 * behave; every wait is bounded by the session's deadline.
 */
import { connect, type Socket } from 'node:net';

/** A pull reader over a socket: lines (CRLF) and byte counts, with a deadline. */
class Reader {
  private chunks: Buffer[] = [];
  private size = 0;
  private wake: (() => void) | null = null;
  private ended: Error | null = null;

  constructor(
    private readonly socket: Socket,
    private readonly deadline: number,
  ) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.size += d.length;
      this.wake?.();
    });
    const end = (err?: Error) => {
      this.ended ??= err ?? new Error('connection closed');
      this.wake?.();
    };
    socket.on('error', end);
    socket.on('close', () => end());
  }

  private async more(): Promise<void> {
    if (this.ended) throw this.ended;
    const left = this.deadline - Date.now();
    if (left <= 0) throw new Error('session deadline passed');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, left);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
    });
  }

  private flat(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  private take(n: number): Buffer {
    const b = this.flat();
    const out = b.subarray(0, n);
    const rest = b.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.size = rest.length;
    return out;
  }

  async line(): Promise<string> {
    for (;;) {
      const i = this.size > 0 ? this.flat().indexOf('\r\n') : -1;
      if (i >= 0) return this.take(i + 2).subarray(0, i).toString('latin1');
      if (this.size > 1024 * 1024) throw new Error('line too long');
      await this.more();
    }
  }

  async bytes(n: number): Promise<Buffer> {
    while (this.size < n) await this.more();
    return Buffer.from(this.take(n));
  }

  /** Bytes up to and including `marker`; returns them without the marker. */
  async until(marker: Buffer, max: number): Promise<Buffer> {
    let from = 0;
    for (;;) {
      const b = this.flat();
      const i = b.indexOf(marker, from);
      if (i >= 0) return Buffer.from(this.take(i + marker.length).subarray(0, i));
      if (b.length > max) throw new Error(`answer over ${max} bytes`);
      from = Math.max(0, b.length - marker.length);
      await this.more();
    }
  }
}

function open(port: number): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    s.setNoDelay(true);
    s.once('error', reject);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
  });
}

export interface SessionParams {
  port: number;
  user: string;
  password: string;
  /** Epoch ms after which the session gives up. */
  deadline: number;
  /** Called with each message as read (dot-unstuffed for POP3) and the time its fetch took. */
  onMessage(raw: Buffer, ms: number): void;
  /** Largest message accepted. */
  maxBytes: number;
}

const END_OF_MULTILINE = Buffer.from('\r\n.\r\n');

/** One POP3 session: USER/PASS, STAT, RETR 1..n, QUIT. Returns the number of messages read. */
export async function pop3ReadAll(p: SessionParams): Promise<number> {
  const s = await open(p.port);
  const r = new Reader(s, p.deadline);
  const ok = async (what: string) => {
    const l = await r.line();
    if (!l.startsWith('+OK')) throw new Error(`POP3 ${what}: ${l.slice(0, 120)}`);
    return l;
  };
  try {
    await ok('greeting');
    s.write(`USER ${p.user}\r\n`);
    await ok('USER');
    s.write(`PASS ${p.password}\r\n`);
    await ok('PASS');
    s.write('STAT\r\n');
    const count = Number(/^\+OK (\d+)/.exec(await ok('STAT'))?.[1] ?? Number.NaN);
    if (!Number.isInteger(count)) throw new Error('POP3 STAT: no count');
    for (let i = 1; i <= count; i++) {
      const t0 = performance.now();
      s.write(`RETR ${i}\r\n`);
      await ok(`RETR ${i}`);
      // the multi-line answer ends with CRLF . CRLF; the message's own last CRLF is part of the end
      const body = await r.until(END_OF_MULTILINE, p.maxBytes);
      const text = Buffer.concat([body, Buffer.from('\r\n')]);
      // dot-unstuffing: a line that starts with ".." started with "." (RFC 1939)
      const raw = text.includes('\r\n..') || text.subarray(0, 2).toString() === '..' ? Buffer.from(text.toString('latin1').replace(/(^|\r\n)\.\./g, '$1.'), 'latin1') : text;
      p.onMessage(raw, performance.now() - t0);
    }
    s.write('QUIT\r\n');
    await ok('QUIT').catch(() => undefined);
    return count;
  } finally {
    s.destroy();
  }
}

function quoted(s: string): string {
  return `"${s.replace(/(["\\])/g, '\\$1')}"`;
}

/** One IMAP4 session: LOGIN, SELECT INBOX, FETCH n BODY.PEEK[] for 1..n, LOGOUT. */
export async function imapReadAll(p: SessionParams): Promise<number> {
  const s = await open(p.port);
  const r = new Reader(s, p.deadline);
  let tagSeq = 0;
  /** Sends a command and reads to its tagged answer; literals of the untagged answers are collected. */
  const command = async (cmd: string): Promise<{ untagged: string[]; literals: Buffer[] }> => {
    const tag = `b${++tagSeq}`;
    s.write(`${tag} ${cmd}\r\n`);
    const untagged: string[] = [];
    const literals: Buffer[] = [];
    for (;;) {
      let line = await r.line();
      // a line ending in {N} continues after N bytes of literal
      for (let m = /\{(\d+)\+?\}$/.exec(line); m; m = /\{(\d+)\+?\}$/.exec(line)) {
        const n = Number(m[1]);
        if (n > p.maxBytes) throw new Error(`IMAP literal of ${n} bytes`);
        literals.push(await r.bytes(n));
        line = `${line.slice(0, m.index)}<literal>${await r.line()}`;
      }
      if (line.startsWith(`${tag} `)) {
        if (!line.startsWith(`${tag} OK`)) throw new Error(`IMAP ${cmd.split(' ')[0]}: ${line.slice(0, 160)}`);
        return { untagged, literals };
      }
      untagged.push(line);
    }
  };
  try {
    const greeting = await r.line();
    if (!greeting.startsWith('* OK')) throw new Error(`IMAP greeting: ${greeting.slice(0, 120)}`);
    await command(`LOGIN ${quoted(p.user)} ${quoted(p.password)}`);
    const sel = await command('SELECT INBOX');
    const exists = sel.untagged.map((l) => /^\* (\d+) EXISTS/i.exec(l)?.[1]).find((x) => x !== undefined);
    const count = Number(exists ?? Number.NaN);
    if (!Number.isInteger(count)) throw new Error('IMAP SELECT: no EXISTS');
    for (let i = 1; i <= count; i++) {
      const t0 = performance.now();
      const f = await command(`FETCH ${i} BODY.PEEK[]`);
      const body = f.literals[0];
      if (!body) throw new Error(`IMAP FETCH ${i}: no literal`);
      p.onMessage(body, performance.now() - t0);
    }
    await command('LOGOUT').catch(() => undefined);
    return count;
  } finally {
    s.destroy();
  }
}
