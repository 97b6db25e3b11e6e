import { isIPv6 } from 'node:net';
import type { NextHopConfig } from '../../config/smtp-schema.js';
import { upstreamTls } from '../../config/tls-schema.js';
import type { Logger } from '../../core/logging.js';
import { NextHopFailure, parseNextHop, SmtpClientConnection, type ClientTimeouts, type NextHopTarget, type NextHopTls } from './client.js';
import { encodeXtext, isPositive, isTemporary, reply, replySummary } from './reply.js';
import type { ClientAttributes, DeliveryRequest, DeliveryResult, NextHop, Recipient, SmtpReply } from './types.js';

export interface NextHopOptions {
  /** Name in EHLO/LHLO. */
  helo: string;
  /** Connections at most (busy and idle together). */
  poolSize: number;
  /** Idle connections are closed after this; 0 = no reuse. */
  idleTimeoutMs: number;
  /** Transactions per connection before it is replaced. */
  maxReuse: number;
  /** Send XCLIENT (instead of XFORWARD) when offered. */
  xclient: boolean;
  timeouts: ClientTimeouts;
  /** STARTTLS to the next hop; null = none. */
  tls?: NextHopTls | null;
  log?: Logger;
}

export function nextHopOptions(c: NextHopConfig, helo: string, log?: Logger): NextHopOptions {
  return {
    helo,
    poolSize: c['pool-size'],
    idleTimeoutMs: c['idle-timeout'],
    maxReuse: c['max-reuse'],
    xclient: c.xclient,
    tls: c.tls === 'none' ? null : { mode: c.tls, ...upstreamTls(c, 'smtp.next-hop') },
    timeouts: {
      connectMs: c.timeouts.connect,
      greetingMs: c.timeouts.greeting,
      commandMs: c.timeouts.command,
      dataBlockMs: c.timeouts['data-block'],
      dataDoneMs: c.timeouts['data-done'],
    },
    ...(log ? { log } : {}),
  };
}

export interface NextHopCounters {
  deliveries: number;
  connectionsOpened: number;
  connectionsReused: number;
  /** Deliveries retried on a new connection because a pooled one turned out dead. */
  staleRetries: number;
  failures: number;
}

const XFORWARD_ATTRS = ['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'IDENT', 'SOURCE'];
const XCLIENT_ATTRS = ['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'LOGIN', 'DESTADDR', 'DESTPORT'];
/** XFORWARD/XCLIENT lines stay well below the 512-byte command limit of RFC 5321. */
const MAX_ATTR_LINE = 480;

/**
 * The client side of the filter: delivers a message to the next hop over a bounded pool of
 * connections (RSET before reuse, closed after idle-timeout). Per recipient it answers with the
 * next hop's own reply; trouble with the next hop (down, refusing, timeouts, lost connection)
 * becomes a 4xx reply naming the next hop and the cause. deliver() never throws.
 */
export class NextHopClient implements NextHop {
  readonly counters: NextHopCounters = { deliveries: 0, connectionsOpened: 0, connectionsReused: 0, staleRetries: 0, failures: 0 };
  private readonly parsed: NextHopTarget;
  private readonly label: string;
  private readonly idle: SmtpClientConnection[] = [];
  private readonly idleTimers = new Map<SmtpClientConnection, NodeJS.Timeout>();
  private readonly waiters: Array<{ grant: (c: SmtpClientConnection | null) => void }> = [];
  private total = 0;
  private closing = false;

  constructor(
    readonly target: string,
    private readonly opts: NextHopOptions,
  ) {
    this.parsed = parseNextHop(target);
    this.label = `next hop ${target}`;
  }

  /** Connections open now (busy and idle). */
  get openConnections(): number {
    return this.total;
  }

  get idleConnections(): number {
    return this.idle.length;
  }

  async deliver(req: DeliveryRequest): Promise<DeliveryResult> {
    this.counters.deliveries++;
    const n = req.rcpts.length;
    if (n === 0) return { replies: [], transcript: [], dropped: [] };
    for (let attempt = 0; ; attempt++) {
      if (req.signal?.aborted) return this.failed(new NextHopFailure('abort', `${this.label}: delivery aborted`), n, [], []);
      let lease: { conn: SmtpClientConnection; reused: boolean };
      try {
        lease = await this.acquire(req.signal);
      } catch (err) {
        const f = asFailure(err, this.label);
        // Not reached at all (refused, no answer, TLS): as much a failure to alert on as one mid-way.
        if (f.phase !== 'abort') this.opts.log?.warn({ qid: req.queueId, nextHop: this.target, phase: f.phase, err: f.message }, 'next hop delivery failed');
        return this.failed(f, n, [], []);
      }
      const { conn, reused } = lease;
      const tx = new Transaction(conn, req, this.opts, this.label);
      try {
        const result = await tx.run(reused);
        conn.transactions++;
        this.release(conn, !conn.personalized && conn.transactions < this.opts.maxReuse);
        this.opts.log?.debug({ qid: req.queueId, nextHop: this.target, replies: result.replies.map(replySummary), dropped: result.dropped }, 'next hop delivery');
        return result;
      } catch (err) {
        const f = asFailure(err, this.label);
        this.release(conn, false);
        if (reused && attempt === 0 && !tx.bodyStarted && f.phase !== 'abort' && f.phase !== 'local') {
          // A pooled connection the next hop had closed meanwhile: nothing was committed, try a
          // fresh one once.
          this.counters.staleRetries++;
          continue;
        }
        this.opts.log?.warn({ qid: req.queueId, nextHop: this.target, phase: f.phase, err: f.message }, 'next hop delivery failed');
        return this.failed(f, n, tx.finals, conn.transcript);
      }
    }
  }

  private failed(f: NextHopFailure, n: number, finals: ReadonlyArray<SmtpReply | undefined>, transcript: string[]): DeliveryResult {
    this.counters.failures++;
    const temp = failureReply(f);
    // Recipients that already have a definitive answer (an RCPT refusal, an LMTP reply before the
    // connection broke) keep it: an LMTP 250 means delivered, retrying it would duplicate.
    return { replies: Array.from({ length: n }, (_, i) => finals[i] ?? temp), transcript: [...transcript, `!: ${f.message}`], dropped: [] };
  }

  private async acquire(signal?: AbortSignal): Promise<{ conn: SmtpClientConnection; reused: boolean }> {
    if (this.closing) throw new NextHopFailure('connect', `${this.label}: shutting down`);
    while (this.idle.length > 0) {
      const c = this.idle.pop() as SmtpClientConnection;
      this.clearIdle(c);
      if (c.usable) {
        this.counters.connectionsReused++;
        return { conn: c, reused: true };
      }
      c.destroy();
      this.total--;
    }
    if (this.total >= this.opts.poolSize) {
      const granted = await new Promise<SmtpClientConnection | null>((resolve, reject) => {
        const waiter = {
          grant: (c: SmtpClientConnection | null) => {
            signal?.removeEventListener('abort', onAbort);
            resolve(c);
          },
        };
        const onAbort = () => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new NextHopFailure('abort', `${this.label}: aborted while waiting for a connection`));
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        this.waiters.push(waiter);
      });
      if (granted) {
        this.counters.connectionsReused++;
        return { conn: granted, reused: true };
      }
      // granted null: a slot was handed over (total already counts it)
      if (this.closing) {
        this.total--;
        throw new NextHopFailure('connect', `${this.label}: shutting down`);
      }
    } else {
      this.total++;
    }
    try {
      const conn = await SmtpClientConnection.open(this.parsed, this.label, { helo: this.opts.helo, timeouts: this.opts.timeouts, tls: this.opts.tls ?? null, ...(signal ? { signal } : {}) });
      this.counters.connectionsOpened++;
      return { conn, reused: false };
    } catch (err) {
      this.freeSlot();
      throw err;
    }
  }

  private release(conn: SmtpClientConnection, reusable: boolean): void {
    conn.transcript = [];
    conn.lastUsed = Date.now();
    if (reusable && conn.usable && !this.closing && this.opts.idleTimeoutMs > 0) {
      const w = this.waiters.shift();
      if (w) {
        w.grant(conn);
        return;
      }
      this.idle.push(conn);
      const timer = setTimeout(() => {
        const i = this.idle.indexOf(conn);
        if (i >= 0) this.idle.splice(i, 1);
        this.idleTimers.delete(conn);
        this.total--;
        void conn.quit();
        this.wakeForSlot();
      }, this.opts.idleTimeoutMs);
      timer.unref();
      this.idleTimers.set(conn, timer);
      return;
    }
    if (conn.broken) conn.destroy();
    else void conn.quit();
    this.freeSlot();
  }

  /** A connection went away: its slot goes to a waiter (who opens a new one) or is freed. */
  private freeSlot(): void {
    const w = this.waiters.shift();
    if (w) w.grant(null);
    else this.total--;
  }

  private wakeForSlot(): void {
    if (this.total < this.opts.poolSize) {
      const w = this.waiters.shift();
      if (w) {
        this.total++;
        w.grant(null);
      }
    }
  }

  private clearIdle(c: SmtpClientConnection): void {
    const t = this.idleTimers.get(c);
    if (t) clearTimeout(t);
    this.idleTimers.delete(c);
  }

  /** Closes idle connections (QUIT); busy ones are closed when their delivery ends. */
  async close(): Promise<void> {
    this.closing = true;
    // Waiting deliveries give up (a 4xx for their recipients): their slots are released.
    for (const w of this.waiters.splice(0)) {
      this.total++;
      w.grant(null);
    }
    const idle = this.idle.splice(0);
    for (const c of idle) this.clearIdle(c);
    this.total -= idle.length;
    await Promise.all(idle.map((c) => c.quit()));
  }
}

function asFailure(err: unknown, label: string): NextHopFailure {
  if (err instanceof NextHopFailure) return err;
  return new NextHopFailure('local', `${label}: ${err instanceof Error ? err.message : String(err)}`);
}

/** The temporary reply every unanswered recipient gets for a failure. */
export function failureReply(f: NextHopFailure): SmtpReply {
  const status =
    f.reply && isTemporary(f.reply) && f.reply.status
      ? f.reply.status
      : f.phase === 'connect' || f.phase === 'greeting'
        ? '4.4.1'
        : f.phase === 'abort'
          ? '4.4.7'
          : f.phase === 'local'
            ? '4.3.0'
            : '4.4.2';
  // 421 would make our own server close the client's connection: a plain 451 says the same.
  return reply(451, status, f.message);
}

/** xtext-encoded attribute commands, split so no line grows past MAX_ATTR_LINE. */
export function attributeCommands(verb: 'XFORWARD' | 'XCLIENT', offered: string, attrs: ClientAttributes): string[] {
  const known = verb === 'XFORWARD' ? XFORWARD_ATTRS : XCLIENT_ATTRS;
  const names = new Set(offered.toUpperCase().split(/\s+/).filter((a) => known.includes(a)));
  const lines: string[] = [];
  let line = verb;
  for (const [k, v] of Object.entries(attrs)) {
    const key = k.toUpperCase();
    if (!names.has(key)) continue;
    // XFORWARD_README/XCLIENT_README: IPv6 addresses carry an "IPV6:" prefix.
    const raw = key === 'ADDR' && isIPv6(v) ? `IPV6:${v}` : v;
    const value = /^\[(UNAVAILABLE|TEMPUNAVAIL)\]$/i.test(raw) ? raw.toUpperCase() : encodeXtext(raw);
    const item = ` ${key}=${value}`;
    if (line.length + item.length > MAX_ATTR_LINE && line !== verb) {
      lines.push(line);
      line = verb;
    }
    line += item;
  }
  if (line !== verb) lines.push(line);
  return lines;
}

/** Addresses that cannot be written without SMTPUTF8. */
function needsUtf8(req: DeliveryRequest): boolean {
  // eslint-disable-next-line no-control-regex
  const nonAscii = /[^\x00-\x7f]/;
  return nonAscii.test(req.mailFrom.address) || req.rcpts.some((r) => nonAscii.test(r.address));
}

/**
 * One mail transaction on one connection: (RSET) (XCLIENT + EHLO | XFORWARD) MAIL RCPT... DATA,
 * pipelined when the next hop offers PIPELINING (RFC 2920: DATA ends the group), then the body and
 * the final reply (SMTP) or one reply per accepted recipient (LMTP).
 */
class Transaction {
  /** Definitive per-recipient replies known so far (RCPT refusals, LMTP replies). */
  readonly finals: Array<SmtpReply | undefined>;
  bodyStarted = false;
  private readonly dropped: string[] = [];

  constructor(
    private readonly conn: SmtpClientConnection,
    private readonly req: DeliveryRequest,
    private readonly opts: NextHopOptions,
    private readonly label: string,
  ) {
    this.finals = new Array<SmtpReply | undefined>(req.rcpts.length);
  }

  private checkAbort(): void {
    if (this.req.signal?.aborted) throw new NextHopFailure('abort', `${this.label}: delivery aborted`);
  }

  private async expect(phase: 'command' | 'greeting'): Promise<SmtpReply> {
    const r = await this.conn.readReply(phase === 'greeting' ? this.opts.timeouts.greetingMs : this.opts.timeouts.commandMs, phase);
    // 421: the next hop is closing the session; every recipient not yet answered is deferred.
    if (r.code === 421) throw new NextHopFailure(phase, `${this.label}: ${replySummary(r)}`, r);
    return r;
  }

  async run(reused: boolean): Promise<DeliveryResult> {
    const { conn, req } = this;
    const caps = conn.capabilities;
    const t = this.opts.timeouts;
    conn.transcript = [];
    this.checkAbort();

    const mailLine = this.mailCommand();
    if (mailLine === null) {
      const r = reply(550, '5.6.7', `${this.label} does not support SMTPUTF8, which the addresses of this message need`);
      return { replies: req.rcpts.map(() => r), transcript: conn.transcript, dropped: [] };
    }

    let needRset = reused;
    let forwarded = false;
    if (this.opts.xclient && caps.has('XCLIENT') && (req.xclient ?? req.xforward)) {
      const lines = attributeCommands('XCLIENT', caps.get('XCLIENT') ?? '', (req.xclient ?? req.xforward) as ClientAttributes);
      if (lines.length > 0) {
        if (needRset) {
          conn.send('RSET');
          const r = await this.expect('command');
          if (!isPositive(r)) throw new NextHopFailure('command', `${this.label}: RSET: ${replySummary(r)}`, r);
          needRset = false;
        }
        for (const l of lines) {
          conn.send(l);
          const r = await this.expect('greeting');
          if (r.code !== 220 && !isPositive(r)) throw new NextHopFailure('greeting', `${this.label}: XCLIENT: ${replySummary(r)}`, r);
        }
        // The session now belongs to the original client; the next hop greets it anew.
        conn.personalized = true;
        await conn.greet(this.opts.helo, t.greetingMs);
        forwarded = true;
      }
    }

    type Step = { line: string; kind: 'RSET' | 'XFORWARD' | 'MAIL' | 'RCPT' | 'DATA'; index?: number };
    const steps: Step[] = [];
    if (needRset) steps.push({ line: 'RSET', kind: 'RSET' });
    if (!forwarded && req.xforward && caps.has('XFORWARD')) {
      for (const l of attributeCommands('XFORWARD', caps.get('XFORWARD') ?? '', req.xforward)) steps.push({ line: l, kind: 'XFORWARD' });
    }
    steps.push({ line: mailLine, kind: 'MAIL' });
    req.rcpts.forEach((r, index) => steps.push({ line: this.rcptCommand(r), kind: 'RCPT', index }));
    steps.push({ line: 'DATA', kind: 'DATA' });

    const pipelining = caps.has('PIPELINING');
    if (pipelining) conn.send(...steps.map((s) => s.line));
    let mailReply: SmtpReply | null = null;
    const accepted: number[] = [];
    let dataReply: SmtpReply | null = null;
    for (const s of steps) {
      if (!pipelining) {
        // Without pipelining, nothing is sent that cannot succeed.
        if ((s.kind === 'RCPT' || s.kind === 'DATA') && mailReply && !isPositive(mailReply)) break;
        if (s.kind === 'DATA' && accepted.length === 0) break;
        this.checkAbort();
        conn.send(s.line);
      }
      const r = await this.expect('command');
      switch (s.kind) {
        case 'RSET':
          if (!isPositive(r)) throw new NextHopFailure('command', `${this.label}: RSET: ${replySummary(r)}`, r);
          break;
        case 'XFORWARD':
          break; // a refused XFORWARD only loses the client attributes
        case 'MAIL':
          mailReply = r;
          break;
        case 'RCPT':
          if (mailReply && !isPositive(mailReply)) this.finals[s.index as number] = mailReply;
          else if (isPositive(r)) accepted.push(s.index as number);
          else this.finals[s.index as number] = r;
          break;
        case 'DATA':
          dataReply = r;
          break;
      }
    }
    if (!mailReply || !isPositive(mailReply)) {
      const r = mailReply ?? reply(451, '4.3.0', 'no reply to MAIL');
      if (dataReply?.code === 354) await this.emptyData();
      return this.result(req.rcpts.map(() => r));
    }
    if (accepted.length === 0) {
      if (dataReply?.code === 354) await this.emptyData();
      return this.result(this.finals as SmtpReply[]);
    }
    if (!dataReply || dataReply.code !== 354) {
      const r = dataReply ?? reply(451, '4.3.0', 'no reply to DATA');
      for (const i of accepted) this.finals[i] = r;
      return this.result(this.finals as SmtpReply[]);
    }

    this.checkAbort();
    this.bodyStarted = true;
    await conn.sendBody(req.body, t.dataBlockMs, req.signal);
    if (conn.lmtp) {
      for (const i of accepted) this.finals[i] = await conn.readReply(t.dataDoneMs, 'data-done');
    } else {
      const r = await conn.readReply(t.dataDoneMs, 'data-done');
      for (const i of accepted) this.finals[i] = r;
    }
    return this.result(this.finals as SmtpReply[]);
  }

  /** A 354 nobody can use (no valid recipient): end it at once so the session stays in step. */
  private async emptyData(): Promise<void> {
    this.bodyStarted = true;
    await this.conn.sendBody(Buffer.alloc(0), this.opts.timeouts.dataBlockMs);
    await this.conn.readReply(this.opts.timeouts.dataDoneMs, 'data-done');
  }

  private result(replies: SmtpReply[]): DeliveryResult {
    return { replies, transcript: this.conn.transcript, dropped: [...new Set(this.dropped)] };
  }

  /** MAIL FROM with the parameters the next hop understands; null when SMTPUTF8 is needed but missing. */
  private mailCommand(): string | null {
    const caps = this.conn.capabilities;
    const p = this.req.mailFrom.params;
    const out: string[] = [];
    // Only the size of what is sent: never the client's own figure (a rewritten message is longer
    // or shorter, and a client may declare anything). Unknown → no SIZE, which is allowed.
    const size = this.req.size;
    if (size !== undefined && Number.isSafeInteger(size)) {
      if (caps.has('SIZE')) out.push(`SIZE=${size}`);
    }
    for (const [k, v] of Object.entries(p)) {
      const key = k.toUpperCase();
      const value = typeof v === 'string' ? v : '';
      switch (key) {
        case 'SIZE':
          break;
        case 'BODY':
          if (caps.has('8BITMIME') && /^(7BIT|8BITMIME)$/i.test(value)) out.push(`BODY=${value.toUpperCase()}`);
          else this.dropped.push(`BODY=${value.toUpperCase()}`);
          break;
        case 'SMTPUTF8':
          if (caps.has('SMTPUTF8')) out.push('SMTPUTF8');
          else if (needsUtf8(this.req)) return null;
          else this.dropped.push('SMTPUTF8');
          break;
        case 'RET':
          if (caps.has('DSN')) out.push(`RET=${value.toUpperCase()}`);
          else this.dropped.push('RET');
          break;
        case 'ENVID':
          if (caps.has('DSN')) out.push(`ENVID=${encodeXtext(value)}`);
          else this.dropped.push('ENVID');
          break;
        default:
          // AUTH=, REQUIRETLS, MT-PRIORITY ...: extensions this filter does not relay.
          this.dropped.push(key);
      }
    }
    return `MAIL FROM:<${this.req.mailFrom.address}>${out.map((o) => ` ${o}`).join('')}`;
  }

  private rcptCommand(r: Recipient): string {
    const caps = this.conn.capabilities;
    const out: string[] = [];
    for (const [k, v] of Object.entries(r.params)) {
      const key = k.toUpperCase();
      const value = typeof v === 'string' ? v : '';
      if (key === 'NOTIFY' || key === 'ORCPT') {
        if (caps.has('DSN')) out.push(`${key}=${key === 'NOTIFY' ? value.toUpperCase() : encodeXtext(value)}`);
        else this.dropped.push(key);
      } else {
        this.dropped.push(key);
      }
    }
    return `RCPT TO:<${r.address}>${out.map((o) => ` ${o}`).join('')}`;
  }
}
