import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer, type SMTPServerAddress } from 'smtp-server';
import { smtpSchema } from '../../src/config/smtp-schema.js';
import { silentLogger, type Logger } from '../../src/core/logging.js';
import { dotStuff } from '../../src/protocols/smtp/client.js';
import { guardXforwardHelo, SmtpFilterServer } from '../../src/protocols/smtp/server.js';
import type { MessageHandler, NextHop, PartitionHook } from '../../src/protocols/smtp/types.js';

export interface TestFilter {
  port: number;
  server: SmtpFilterServer;
  stateDir: string;
  spoolDir: string;
  /** Files left in the spool directory (should be none between transactions). */
  spoolFiles(): Promise<string[]>;
  stop(): Promise<void>;
}

/**
 * avgate's SMTP filter on a free loopback port with a fresh state directory (removed by stop()).
 * `smtp` is YAML-shaped config for the smtp section (`next-hop` merged with the target).
 */
export async function startTestFilter(opts: {
  nextHop: string | NextHop;
  smtp?: Record<string, unknown>;
  handler?: MessageHandler;
  partition?: PartitionHook;
  log?: Logger;
}): Promise<TestFilter> {
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-smtp-'));
  try {
    return await startIn(stateDir, opts);
  } catch (err) {
    // A config the test expects to be refused must not leave its state directory behind.
    await rm(stateDir, { recursive: true, force: true });
    throw err;
  }
}

async function startIn(stateDir: string, opts: Parameters<typeof startTestFilter>[0]): Promise<TestFilter> {
  const raw = opts.smtp ?? {};
  const nextHopRaw = (raw['next-hop'] ?? {}) as Record<string, unknown>;
  const config = smtpSchema.parse({
    listen: '127.0.0.1:0',
    hostname: 'avgate.test',
    ...raw,
    'next-hop': { ...nextHopRaw, ...(typeof opts.nextHop === 'string' ? { target: opts.nextHop } : {}) },
  });
  const server = new SmtpFilterServer(config, {
    stateDir,
    log: opts.log ?? silentLogger(),
    ...(opts.handler ? { handler: opts.handler } : {}),
    ...(opts.partition ? { partition: opts.partition } : {}),
    ...(typeof opts.nextHop === 'string' ? {} : { nextHop: opts.nextHop }),
  });
  const { port } = await server.listen();
  const spoolDir = join(stateDir, config['spool-dir']);
  return {
    port,
    server,
    stateDir,
    spoolDir,
    spoolFiles: async () => readdir(spoolDir).catch(() => []),
    async stop() {
      await server.close(2000);
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

export interface TestReply {
  code: number;
  lines: string[];
  /** The lines joined with a space. */
  text: string;
}

/**
 * A raw SMTP/LMTP client for tests: writes exactly what it is told and reads replies in order,
 * so protocol details (pipelining, parameters, a disconnect in the middle of DATA) are under the
 * test's control.
 */
export class SmtpTestClient {
  private buf = '';
  private lines: string[] = [];
  private replies: TestReply[] = [];
  private waiting: ((r: TestReply | null) => void) | null = null;
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf += d.toString('utf8');
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).replace(/\r$/, '');
        this.buf = this.buf.slice(nl + 1);
        this.lines.push(line.slice(4));
        if (line[3] !== '-') {
          const r = { code: Number(line.slice(0, 3)), lines: this.lines, text: this.lines.join(' ') };
          this.lines = [];
          const w = this.waiting;
          this.waiting = null;
          if (w) w(r);
          else this.replies.push(r);
        }
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      const w = this.waiting;
      this.waiting = null;
      w?.(null);
    });
  }

  /** Connects and reads the greeting. */
  static async connect(port: number): Promise<{ client: SmtpTestClient; greeting: TestReply }> {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('error', reject);
    });
    const client = new SmtpTestClient(socket);
    return { client, greeting: await client.reply() };
  }

  /** The next reply; throws when the server closed the connection or it took too long. */
  async reply(timeoutMs = 15_000): Promise<TestReply> {
    const r = this.replies.shift();
    if (r) return r;
    if (this.closed) throw new Error('connection closed by the server');
    const got = await new Promise<TestReply | null>((resolve) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        resolve(null);
      }, timeoutMs);
      this.waiting = (x) => {
        clearTimeout(timer);
        resolve(x);
      };
    });
    if (!got) throw new Error(this.closed ? 'connection closed by the server' : `no reply within ${timeoutMs} ms`);
    return got;
  }

  send(...lines: string[]): void {
    this.socket.write(lines.map((l) => `${l}\r\n`).join(''));
  }

  async command(line: string): Promise<TestReply> {
    this.send(line);
    return this.reply();
  }

  /** DATA, the message (dot-stuffed here), the final dot; returns `replies` replies (LMTP: one per recipient). */
  async data(message: Buffer, replies = 1): Promise<TestReply[]> {
    const r = await this.command('DATA');
    if (r.code !== 354) return [r];
    const ends = message.length === 0 || message.subarray(-2).equals(Buffer.from('\r\n'));
    this.socket.write(Buffer.concat([dotStuff(message, true), Buffer.from(ends ? '.\r\n' : '\r\n.\r\n')]));
    const out: TestReply[] = [];
    for (let i = 0; i < replies; i++) out.push(await this.reply(60_000));
    return out;
  }

  async quit(): Promise<void> {
    if (!this.closed) {
      this.send('QUIT');
      await this.reply().catch(() => undefined);
    }
    this.socket.destroy();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Runs swaks (async: avgate runs in this process and must keep serving). */
export function swaks(args: readonly string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('swaks', [...args], { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number }).code ?? 1) : 0;
      resolve({ code: typeof code === 'number' ? code : 1, stdout, stderr });
    });
  });
}

/** The server replies swaks printed ("<-  250 ..." and "<** 451 ..."), code and text. */
export function swaksReplies(stdout: string): string[] {
  return stdout
    .split('\n')
    .filter((l) => /^<[-*~]{1,2}\s+\d{3}/.test(l))
    .map((l) => l.replace(/^<[-*~]{1,2}\s+/, ''));
}

export interface RecordedMessage {
  connection: string;
  helo: string;
  mailFrom: SMTPServerAddress;
  rcptTo: SMTPServerAddress[];
  xforward: Record<string, string | number | false>;
  xclient: Record<string, string | number | false>;
  body: Buffer;
}

export interface RecordingServer {
  port: number;
  messages: RecordedMessage[];
  /** Transactions per connection id, and connections accepted. */
  connections: number;
  /** Commands seen, per connection (MAIL, RCPT ... with their arguments), for checking what was sent. */
  commands: string[];
  close(): Promise<void>;
}

/**
 * A next hop that records what it receives, for what smtp-sink cannot show (SIZE and SMTPUTF8,
 * XFORWARD/XCLIENT attributes, exact body bytes) and programmable answers: `rcpt(address)` may
 * refuse a recipient, `data(message)` decides the DATA reply (LMTP: one per recipient).
 */
export async function startRecordingServer(
  opts: {
    lmtp?: boolean;
    size?: number;
    hideDSN?: boolean;
    hideSMTPUTF8?: boolean;
    hidePIPELINING?: boolean;
    rcpt?: (address: string) => { code: number; text: string } | null;
    data?: (m: RecordedMessage) => Array<{ code: number; text: string }> | { code: number; text: string } | null;
    /** Close connections idle this long (to exercise the next hop pool's stale connections). */
    idleCloseMs?: number;
  } = {},
): Promise<RecordingServer> {
  const state = { connections: 0 };
  const messages: RecordedMessage[] = [];
  const commands: string[] = [];
  const server = new SMTPServer({
    lmtp: opts.lmtp ?? false,
    name: 'recorder.test',
    ...(opts.size ? { size: opts.size } : {}),
    hideDSN: opts.hideDSN ?? false,
    hideSMTPUTF8: opts.hideSMTPUTF8 ?? false,
    hidePIPELINING: opts.hidePIPELINING ?? false,
    disabledCommands: ['AUTH', 'STARTTLS'],
    authOptional: true,
    disableReverseLookup: true,
    lenientAddressParsing: true,
    useXForward: true,
    useXClient: true,
    logger: false,
    ...(opts.idleCloseMs ? { socketTimeout: opts.idleCloseMs } : {}),
    onConnect(session, cb) {
      state.connections++;
      // Like avgate, survive XFORWARD HELO=[UNAVAILABLE] (see guardXforwardHelo).
      for (const c of server.connections) if (c.session === session) guardXforwardHelo(c, () => undefined);
      cb();
    },
    onMailFrom(address, _session, cb) {
      commands.push(`MAIL ${address.address} ${JSON.stringify(address.args)}`);
      cb();
    },
    onRcptTo(address, _session, cb) {
      commands.push(`RCPT ${address.address} ${JSON.stringify(address.args)}`);
      const refuse = opts.rcpt?.(address.address);
      if (refuse) return cb(Object.assign(new Error(refuse.text), { responseCode: refuse.code }));
      cb();
    },
    onData(stream, session, cb) {
      const parts: Buffer[] = [];
      stream.on('data', (d: Buffer) => parts.push(d));
      stream.on('end', () => {
        const m: RecordedMessage = {
          connection: session.id,
          helo: String(session.hostNameAppearsAs),
          mailFrom: session.envelope.mailFrom as SMTPServerAddress,
          rcptTo: [...session.envelope.rcptTo],
          xforward: Object.fromEntries(session.xForward),
          xclient: Object.fromEntries(session.xClient),
          body: Buffer.concat(parts),
        };
        messages.push(m);
        commands.push('DATA');
        // XFORWARD attributes last one transaction (Postfix); smtp-server keeps them.
        session.xForward.clear();
        const decision = opts.data?.(m) ?? null;
        if (!decision) return cb(null, 'Ok: recorded');
        if (Array.isArray(decision)) {
          return cb(null, decision.map((d) => (d.code < 300 ? d.text : Object.assign(new Error(d.text), { responseCode: d.code }))));
        }
        if (decision.code < 300) return cb(null, decision.text);
        cb(Object.assign(new Error(decision.text), { responseCode: decision.code }));
      });
    },
  });
  server.on('error', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const a = server.server.address();
  if (!a || typeof a !== 'object') throw new Error('no address');
  return {
    port: a.port,
    messages,
    commands,
    get connections() {
      return state.connections;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of server.connections) c.close();
        server.server.close(() => resolve());
        setTimeout(resolve, 1000).unref();
      }),
  };
}

/** A message with CRLF line ends from lines. */
export function crlf(lines: readonly string[]): Buffer {
  return Buffer.from(lines.map((l) => `${l}\r\n`).join(''), 'utf8');
}

/** What smtp-sink's dump holds for a message sent with CRLF line ends. */
export function asSinkContent(message: Buffer): Buffer {
  return Buffer.from(message.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
}

/** Line `i` of the generated large message (CRLF-terminated; every 1000th line starts with a dot). */
function generatedLine(i: number): string {
  return `${i % 1000 === 0 ? '.' : ''}${String(i).padStart(9, '0')} abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789\r\n`;
}

/**
 * Sends one generated message of about `bytes` bytes over SMTP, streamed with backpressure (run
 * it in a child process, see sendGeneratedInChild, so its memory is not the server's). Returns
 * the DATA reply and the SHA-256 of the message with LF line ends (what smtp-sink dumps).
 */
export async function sendGenerated(port: number, bytes: number): Promise<{ code: number; text: string; sent: number; sha256Lf: string }> {
  const { createHash } = await import('node:crypto');
  const { client } = await SmtpTestClient.connect(port);
  try {
    await client.command('EHLO big.test');
    const mail = await client.command(`MAIL FROM:<big@example.com> SIZE=${bytes}`);
    if (mail.code !== 250) return { code: mail.code, text: mail.text, sent: 0, sha256Lf: '' };
    await client.command('RCPT TO:<b@example.com>');
    const go = await client.command('DATA');
    if (go.code !== 354) return { code: go.code, text: go.text, sent: 0, sha256Lf: '' };
    const lf = createHash('sha256');
    const head = 'Subject: big\r\nMessage-ID: <big@example.com>\r\n\r\n';
    lf.update(head.replace(/\r\n/g, '\n'));
    let sent = head.length;
    client.socket.write(head);
    for (let i = 0; sent < bytes; ) {
      const lines: string[] = [];
      for (let n = 0; n < 512 && sent < bytes; n++, i++) {
        const l = generatedLine(i);
        lines.push(l);
        sent += l.length;
      }
      const text = lines.join('');
      lf.update(text.replace(/\r\n/g, '\n'));
      const ok = client.socket.write(dotStuff(Buffer.from(text, 'latin1'), true));
      if (!ok) await new Promise<void>((r) => client.socket.once('drain', () => r()));
    }
    client.socket.write('.\r\n');
    const r = await client.reply(300_000);
    return { code: r.code, text: r.text, sent, sha256Lf: lf.digest('hex') };
  } finally {
    await client.quit();
  }
}

/** sendGenerated in a child process (node with tsx), so the sender's memory is its own. */
export function sendGeneratedInChild(port: number, bytes: number): Promise<{ code: number; text: string; sent: number; sha256Lf: string }> {
  const self = new URL(import.meta.url).pathname;
  const code = `import(${JSON.stringify(self)}).then((m) => m.sendGenerated(${port}, ${bytes})).then((r) => process.stdout.write(JSON.stringify(r)), (e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });`;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', 'tsx', '-e', code], { timeout: 600_000, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`sender failed: ${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout) as { code: number; text: string; sent: number; sha256Lf: string });
    });
  });
}
