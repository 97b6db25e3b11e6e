/**
 * The mail section's load generator: SMTP sessions over loopback that send one message per
 * transaction (MAIL, RCPT, DATA, body, final dot; one command at a time, as every server under
 * test gets it alike), and a driver that runs N such sessions until a message count or a deadline,
 * whichever comes first.
 *
 * A session stays open across messages (persistent), unless the mode asks for a new connection per
 * message: amavisd-new serves one SMTP session per child process, so with more sessions than
 * children persistent sessions would starve; an MTA in front of amavisd reconnects (or keeps no
 * more connections than amavisd has children). The latency of a message is then counted from the
 * connect, the wait for a free child included.
 */
import { connect, type Socket } from 'node:net';
import { directInstream } from './direct.js';
import { isStopping } from './harness.js';
import type { BenchMessage, MessageFactory } from './mail-messages.js';

export interface SmtpReply {
  code: number;
  text: string;
}

/** One SMTP client connection: replies are read in order; one command outstanding at a time. */
export class SmtpSession {
  private socket: Socket | null = null;
  private buffered = '';
  private lines: string[] = [];
  private waiter: { resolve: (r: SmtpReply) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** What the outstanding reply answers (for error messages). */
  private awaiting = 'greeting';

  constructor(
    private readonly port: number,
    private readonly helo: string,
    /** For every reply (the greeting too). */
    public timeoutMs: number,
  ) {}

  get open(): boolean {
    return this.socket !== null && this.failure === null;
  }

  async connect(): Promise<void> {
    this.failure = null;
    this.awaiting = 'greeting';
    this.buffered = '';
    this.lines = [];
    const s = connect(this.port, '127.0.0.1');
    s.setNoDelay(true);
    this.socket = s;
    // Events of an earlier connection of this session are ignored.
    s.on('data', (d: Buffer) => {
      if (this.socket === s) this.onData(d.toString('latin1'));
    });
    s.on('error', (err) => {
      if (this.socket === s) this.fail(err);
    });
    s.on('close', () => {
      if (this.socket === s) this.fail(new Error('connection closed by the server'));
    });
    const greeting = await this.reply();
    if (greeting.code !== 220) throw new Error(`greeting: ${greeting.code} ${greeting.text}`);
    const ehlo = await this.command(`EHLO ${this.helo}`);
    if (ehlo.code !== 250) throw new Error(`EHLO: ${ehlo.code} ${ehlo.text}`);
  }

  private onData(text: string): void {
    this.buffered += text;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl).replace(/\r$/, '');
      this.buffered = this.buffered.slice(nl + 1);
      this.lines.push(line);
      // `250-...` continues; `250 ...` (or a bare code) ends the reply.
      if (/^\d{3}(?: |$)/.test(line)) this.deliver();
    }
  }

  private deliver(): void {
    const w = this.waiter;
    if (!w) return; // an unsolicited reply (421 before close): kept for the next read
    const lines = this.lines;
    this.lines = [];
    this.waiter = null;
    if (this.timer) clearTimeout(this.timer);
    const last = lines[lines.length - 1] ?? '';
    w.resolve({ code: Number(last.slice(0, 3)), text: lines.map((l) => l.slice(4)).join(' | ') });
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    if (this.timer) clearTimeout(this.timer);
    const w = this.waiter;
    this.waiter = null;
    w?.reject(err);
    this.socket?.destroy();
  }

  private reply(): Promise<SmtpReply> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.timer = setTimeout(() => this.fail(new Error(`no reply to ${this.awaiting} within ${this.timeoutMs} ms`)), this.timeoutMs);
      // A complete reply may already be waiting.
      const last = this.lines[this.lines.length - 1];
      if (last !== undefined && /^\d{3}(?: |$)/.test(last)) this.deliver();
    });
  }

  private command(line: string): Promise<SmtpReply> {
    this.awaiting = line.startsWith('\r\n') ? '.' : line.split(/[ :]/)[0] ?? line;
    this.socket?.write(`${line}\r\n`);
    return this.reply();
  }

  /** One transaction. Resolves with the reply that decided it (RCPT's or DATA's or the final one). */
  async send(from: string, to: string, wire: Buffer): Promise<SmtpReply & { stage: 'mail' | 'rcpt' | 'data' | 'dot' }> {
    const mail = await this.command(`MAIL FROM:<${from}> SIZE=${wire.length}`);
    if (mail.code !== 250) return { ...mail, stage: 'mail' };
    const rcpt = await this.command(`RCPT TO:<${to}>`);
    if (rcpt.code !== 250 && rcpt.code !== 251) {
      await this.command('RSET');
      return { ...rcpt, stage: 'rcpt' };
    }
    const data = await this.command('DATA');
    if (data.code !== 354) return { ...data, stage: 'data' };
    this.socket?.write(wire);
    const last = wire.length >= 2 && wire[wire.length - 2] === 0x0d && wire[wire.length - 1] === 0x0a;
    const dot = await this.command(last ? '.' : '\r\n.');
    return { ...dot, stage: 'dot' };
  }

  /** QUIT, then close (without waiting long for a server that has gone). */
  async close(): Promise<void> {
    const s = this.socket;
    if (!s) return;
    if (this.open) {
      try {
        await Promise.race([this.command('QUIT'), new Promise((r) => setTimeout(r, 2000))]);
      } catch {
        // closed meanwhile
      }
    }
    this.fail(new Error('closed'));
    this.socket = null;
  }
}

// ---------------------------------------------------------------- driver

/** How a mode delivers one message: through an SMTP front end, or straight to clamd (INSTREAM). */
export type MailTarget =
  | { kind: 'smtp'; port: number; reconnectEachMessage: boolean }
  | { kind: 'instream'; socketPath: string; chunk: number };

export interface MailCounts {
  /** Messages sent (transactions completed with a reply, or INSTREAM scans with a reply). */
  sent: number;
  /** Final 2xx (for INSTREAM: a reply that names the right verdict). */
  accepted: number;
  acceptedInfected: number;
  /** 4xx/5xx at any stage. */
  refused: number;
  refusedInfected: number;
  /** Connection failures, timeouts, exceptions (not in `sent`). */
  errors: number;
  /** Replies that contradict the message (infected not flagged where the mode says so, clean flagged). */
  wrong: number;
  samples: string[];
  latencies: number[];
}

export function emptyCounts(): MailCounts {
  return { sent: 0, accepted: 0, acceptedInfected: 0, refused: 0, refusedInfected: 0, errors: 0, wrong: 0, samples: [], latencies: [] };
}

export function addCounts(into: MailCounts, c: MailCounts): void {
  into.sent += c.sent;
  into.accepted += c.accepted;
  into.acceptedInfected += c.acceptedInfected;
  into.refused += c.refused;
  into.refusedInfected += c.refusedInfected;
  into.errors += c.errors;
  into.wrong += c.wrong;
  for (const s of c.samples) if (into.samples.length < 5) into.samples.push(s);
  for (const l of c.latencies) into.latencies.push(l);
}

export interface DriveOptions {
  sessions: number;
  /** Stop starting messages after this many (over all sessions) ... */
  maxMessages: number;
  /** ... or after this many ms, whichever comes first; messages under way complete. */
  maxMs: number;
  /** Every n-th message carries EICAR (20 = 5%), at a random place in each run of n. */
  infectedEvery: number;
  factory: MessageFactory;
  target: MailTarget;
  /**
   * Reads the verdict out of a front end's final reply, when the front end says it there:
   * true = infected, false = clean, null = the reply does not tell.
   */
  verdictOfReply?: (r: SmtpReply) => boolean | null;
  /** Open SMTP sessions, kept between calls (one per worker index). */
  pool: SmtpSession[];
  from: string;
  to: string;
  timeoutMs?: number;
}

/** Infected flags for messages 0..n: exactly one in every `every`, at a random place. */
function infectedPattern(every: number): () => boolean {
  let i = 0;
  let hit = Math.floor(Math.random() * every);
  return () => {
    const infected = i % every === hit;
    i++;
    if (i % every === 0) hit = Math.floor(Math.random() * every);
    return infected;
  };
}

/** Runs the sessions; resolves with the counts when all have finished their last message. */
export async function driveMail(o: DriveOptions): Promise<MailCounts & { seconds: number }> {
  const counts = emptyCounts();
  const deadline = performance.now() + o.maxMs;
  const nextInfected = infectedPattern(o.infectedEvery);
  let started = 0;
  const note = (text: string) => {
    if (counts.samples.length < 5) counts.samples.push(text);
  };
  const sessionFor = (w: number, port: number): SmtpSession => {
    let s = o.pool[w];
    if (!s) {
      s = new SmtpSession(port, 'loadgen.bench.test', o.timeoutMs ?? 30_000);
      o.pool[w] = s;
    }
    return s;
  };

  const one = async (w: number, msg: BenchMessage): Promise<void> => {
    const t = o.target;
    const t0 = performance.now();
    if (t.kind === 'instream') {
      const reply = (await directInstream(t.socketPath, [msg.wire], t.chunk)).trim();
      const ms = performance.now() - t0;
      counts.sent++;
      counts.latencies.push(ms);
      const found = reply.endsWith(' FOUND');
      if (!found && !reply.endsWith(': OK')) {
        counts.refused++;
        if (msg.infected) counts.refusedInfected++;
        note(`clamd: ${reply}`);
        return;
      }
      counts.accepted++;
      if (msg.infected) counts.acceptedInfected++;
      if (found !== msg.infected) {
        counts.wrong++;
        note(`${msg.infected ? 'infected' : 'clean'} message: clamd said ${reply}`);
      }
      return;
    }
    const s = sessionFor(w, t.port);
    if (!s.open) await s.connect();
    const r = await s.send(o.from, o.to, msg.wire);
    if (t.reconnectEachMessage) await s.close();
    const ms = performance.now() - t0;
    counts.sent++;
    counts.latencies.push(ms);
    if (r.stage === 'dot' && r.code >= 200 && r.code < 300) {
      counts.accepted++;
      if (msg.infected) counts.acceptedInfected++;
      const v = o.verdictOfReply?.(r) ?? null;
      if (v !== null && v !== msg.infected) {
        counts.wrong++;
        note(`${msg.infected ? 'infected' : 'clean'} message: ${r.code} ${r.text}`);
      }
    } else {
      counts.refused++;
      if (msg.infected) counts.refusedInfected++;
      note(`${msg.infected ? 'infected' : 'clean'} message refused at ${r.stage}: ${r.code} ${r.text}`);
    }
  };

  const worker = async (w: number) => {
    for (;;) {
      if (started >= o.maxMessages || performance.now() >= deadline || isStopping()) return;
      started++;
      // Made before the clock starts: the same work in every mode.
      const msg = o.factory.make(nextInfected());
      try {
        await one(w, msg);
      } catch (err) {
        counts.errors++;
        note(`error: ${err instanceof Error ? err.message : String(err)}`);
        await o.pool[w]?.close();
      }
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: o.sessions }, (_, w) => worker(w)));
  return { ...counts, seconds: (performance.now() - t0) / 1000 };
}

/**
 * Opens the sessions of a pool one after the other, before any message is sent, trying each up to
 * `tries` times. ClamSMTP 1.10 now and then loses its connection to the next hop when sessions are
 * opened at the same time (seen with 50 at once, with and without mail under way): such a session
 * never gets its greeting. Every mode gets its sessions this way. Returns the failed attempts.
 */
export async function openPool(pool: SmtpSession[], port: number, sessions: number, o: { greetingMs?: number; tries?: number; timeoutMs?: number } = {}): Promise<string[]> {
  const failures: string[] = [];
  for (let w = 0; w < sessions; w++) {
    const existing = pool[w];
    if (existing?.open) continue;
    for (let attempt = 0; attempt < (o.tries ?? 3); attempt++) {
      const probe = new SmtpSession(port, 'loadgen.bench.test', o.greetingMs ?? 5000);
      try {
        await probe.connect();
        probe.timeoutMs = o.timeoutMs ?? 30_000;
        pool[w] = probe;
        break;
      } catch (err) {
        failures.push(err instanceof Error ? err.message : String(err));
        await probe.close();
      }
    }
  }
  return failures;
}

/** Closes every session of a pool (QUIT). */
export async function closePool(pool: SmtpSession[]): Promise<void> {
  await Promise.all(pool.map((s) => s.close()));
  pool.length = 0;
}
