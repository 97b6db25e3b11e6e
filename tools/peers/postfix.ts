/**
 * Postfix and its test tools as peers: a real Postfix (master in the foreground, its own config,
 * queue and log in a temporary directory, loopback ports only) with avgate as after-queue
 * content_filter, and smtp-sink as the final destination that dumps every message to a file.
 *
 * What it takes to run Postfix as root outside /etc/postfix (Postfix 3.7, Debian 12):
 * - `mail_owner = postfix`, `setgid_group = postdrop`; the queue directory owned by root, its
 *   subdirectories created by `postfix -c DIR check` (post-install create-missing), the data
 *   directory owned by postfix; every parent directory traversable by postfix (mode 0755).
 * - Postfix writes fatal errors to stderr only on a terminal: `maillog_file` (with
 *   `maillog_file_prefixes` naming the directory, and a `postlog` service in master.cf) is where
 *   to look when it does not start.
 * - `postfix start-fg` runs master as a child of a shell unless it is pid 1, so the master is run
 *   directly: `master -d -c DIR` in its own process group (spawned detached), stopped by its pid;
 *   on SIGTERM it terminates its process group, i.e. its own children.
 * - `postqueue -c DIR -p|-j|-f` works for root with any config directory.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { chmod, chown, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freeLoopbackPort } from '../../src/core/net.js';
import { accepts, stopChild, systemUser, tail, waitExit, waitReady } from './process.js';

const run = promisify(execFile);

export const POSTFIX_DAEMON_DIR = '/usr/lib/postfix/sbin';

/** True when a Postfix can be run here: installed, and we are root (Postfix insists on its users). */
export function postfixAvailable(): boolean {
  return existsSync(join(POSTFIX_DAEMON_DIR, 'master')) && process.getuid?.() === 0 && systemUser('postfix') !== null;
}

/**
 * The master.cf lines of the after-queue content filter with avgate, as docs/mail.md shows them:
 * the `avgate` transport (Postfix's smtp client with XFORWARD) and the re-injection smtpd that
 * does not filter again and trusts avgate's XFORWARD.
 */
export function filterMasterCf(opts: { reinjectListen: string; processes?: number }): string {
  const n = String(opts.processes ?? 20);
  return [
    `avgate    unix  -       -       n       -       ${n.padEnd(7)} smtp`,
    '  -o smtp_send_xforward_command=yes',
    '  -o disable_mime_output_conversion=yes',
    '  -o smtp_generic_maps=',
    `${opts.reinjectListen} inet  n       -       n       -       ${n.padEnd(7)} smtpd`,
    '  -o content_filter=',
    '  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters',
    '  -o smtpd_helo_restrictions=',
    '  -o smtpd_client_restrictions=',
    '  -o smtpd_sender_restrictions=',
    '  -o smtpd_recipient_restrictions=permit_mynetworks,reject',
    '  -o smtpd_relay_restrictions=permit_mynetworks,reject',
    '  -o mynetworks=127.0.0.0/8',
    '  -o smtpd_authorized_xforward_hosts=127.0.0.0/8',
    '',
  ].join('\n');
}

/** The main.cf lines that send all received mail through avgate once (docs/mail.md). */
export function filterMainCf(opts: { filterAddress: string }): string {
  return [`content_filter = avgate:${opts.filterAddress}`, 'receive_override_options = no_address_mappings', ''].join('\n');
}

/**
 * The services every Postfix needs (chroot off: nothing is set up inside the queue directory).
 * Local submissions (sendmail, pickup) are not filtered: that is how avgate's `cmd:` next hop
 * (`sendmail -bs`) re-injects without a loop.
 */
const BASE_MASTER_CF = `
pickup    unix  n       -       n       60      1       pickup
  -o content_filter=
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export interface PostfixOptions {
  /**
   * Directory for config, queue, data and log (created, and made traversable; its parents must be
   * traversable by the postfix user too, e.g. a mkdtemp directory needs chmod 0755).
   */
  dir: string;
  /** Where all mail finally goes: `[127.0.0.1]:PORT` (e.g. an smtp-sink). */
  relayhost: string;
  /** avgate's SMTP port for content_filter; null = no filter (plain relay). */
  contentFilterPort: number | null;
  /** More main.cf settings. */
  main?: Record<string, string>;
  startTimeoutMs?: number;
}

export interface PostfixQueueEntry {
  queue_name: string;
  queue_id: string;
  sender: string;
  message_size: number;
  recipients: Array<{ address: string; delay_reason?: string }>;
}

export interface Postfix {
  dir: string;
  configDir: string;
  /** The front smtpd (mail comes in here and goes through the filter). */
  port: number;
  /** The re-injection smtpd (content_filter empty, XFORWARD trusted from 127.0.0.0/8). */
  reinjectPort: number;
  pid: number;
  /** `postqueue -f`: deliver deferred mail now. */
  flush(): Promise<void>;
  /** `postqueue -j`: what is queued. */
  queue(): Promise<PostfixQueueEntry[]>;
  /** The last part of Postfix's maillog. */
  logTail(chars?: number): string;
  stop(): Promise<void>;
}

function mainCf(dir: string, o: PostfixOptions): string {
  const settings: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: join(dir, 'queue'),
    data_directory: join(dir, 'data'),
    command_directory: '/usr/sbin',
    daemon_directory: POSTFIX_DAEMON_DIR,
    meta_directory: '/etc/postfix',
    shlib_directory: '/usr/lib/postfix',
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    myhostname: 'mx.postfix.test',
    mydomain: 'postfix.test',
    myorigin: '$mydomain',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mydestination: '',
    local_recipient_maps: '',
    local_transport: 'error:local delivery is disabled',
    relay_domains: '',
    relayhost: o.relayhost,
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    alias_maps: '',
    alias_database: '',
    biff: 'no',
    smtputf8_enable: 'yes',
    maillog_file: join(dir, 'maillog'),
    maillog_file_prefixes: dir,
    // Retries within seconds, so a test can watch mail wait and then go.
    queue_run_delay: '1s',
    minimal_backoff_time: '1s',
    maximal_backoff_time: '2s',
    smtp_connect_timeout: '5s',
    ...o.main,
  };
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${v}`);
  if (o.contentFilterPort !== null) lines.push(filterMainCf({ filterAddress: `[127.0.0.1]:${o.contentFilterPort}` }).trimEnd());
  return lines.join('\n') + '\n';
}

/**
 * Starts Postfix (see the file comment) on two free loopback ports; resolves when both smtpd
 * listeners accept connections.
 */
export async function startPostfix(o: PostfixOptions): Promise<Postfix> {
  const pf = systemUser('postfix');
  if (!pf || process.getuid?.() !== 0) throw new Error('Postfix needs root and the postfix user');
  const dir = o.dir;
  const configDir = join(dir, 'etc');
  await mkdir(configDir, { recursive: true });
  await chmod(dir, 0o755);
  await mkdir(join(dir, 'queue'), { recursive: true, mode: 0o755 });
  await mkdir(join(dir, 'data'), { recursive: true, mode: 0o700 });
  await chown(join(dir, 'data'), pf.uid, pf.gid);
  const deadline = Date.now() + (o.startTimeoutMs ?? 30_000);
  const maillog = join(dir, 'maillog');
  const outPath = join(dir, 'master.out');
  let lastError = 'not started';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeLoopbackPort();
    let reinjectPort = await freeLoopbackPort();
    while (reinjectPort === port) reinjectPort = await freeLoopbackPort();
    await writeFile(join(configDir, 'main.cf'), mainCf(dir, o));
    await writeFile(
      join(configDir, 'master.cf'),
      [`127.0.0.1:${port} inet  n       -       n       -       -       smtpd`, filterMasterCf({ reinjectListen: `127.0.0.1:${reinjectPort}` }).trimEnd(), BASE_MASTER_CF].join('\n'),
    );
    try {
      // Creates the queue directories with their owners and checks the configuration.
      await run('/usr/sbin/postfix', ['-c', configDir, 'check'], { timeout: 20_000 });
    } catch (err) {
      throw new Error(`postfix check failed: ${(err as Error).message}\n${tail(maillog, 2000)}`, { cause: err });
    }
    const out = openSync(outPath, 'a');
    const child = spawn(join(POSTFIX_DAEMON_DIR, 'master'), ['-d', '-c', configDir], { stdio: ['ignore', out, out], detached: true });
    closeSync(out);
    const r = await waitReady(child, async () => (await accepts(port)) && (await accepts(reinjectPort)), deadline);
    if (r.kind === 'ready') return postfixHandle(dir, configDir, port, reinjectPort, child);
    if (r.kind === 'timeout') {
      await stopMaster(child);
      lastError = 'postfix was not ready in time';
      break;
    }
    lastError = `postfix master ${r.reason}`;
  }
  throw new Error(`postfix did not start: ${lastError}\n${tail(maillog, 3000)}\n${tail(outPath, 1000)}`);
}

async function stopMaster(child: ChildProcess): Promise<void> {
  const pid = child.pid as number;
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    const gone = await Promise.race([waitExit(child).then(() => true), sleep(5000, false)]);
    if (!gone) {
      killGroup(pid, 'SIGKILL');
      await waitExit(child);
    }
  }
  // Daemons of this Postfix that outlive the master (they notice its exit within a moment).
  for (let i = 0; i < 20 && groupAlive(pid); i++) await sleep(50);
  if (groupAlive(pid)) killGroup(pid, 'SIGKILL');
}

/** The master's own process group (it was spawned detached, so the group id is its pid). */
function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // already gone
  }
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

function postfixHandle(dir: string, configDir: string, port: number, reinjectPort: number, child: ChildProcess): Postfix {
  return {
    dir,
    configDir,
    port,
    reinjectPort,
    pid: child.pid as number,
    async flush() {
      await run('/usr/sbin/postqueue', ['-c', configDir, '-f'], { timeout: 10_000 });
    },
    async queue() {
      const { stdout } = await run('/usr/sbin/postqueue', ['-c', configDir, '-j'], { timeout: 10_000 });
      return stdout
        .split('\n')
        .filter((l) => l.trim().length > 0)
        .map((l) => JSON.parse(l) as PostfixQueueEntry);
    },
    logTail: (chars = 4000) => tail(join(dir, 'maillog'), chars),
    stop: () => stopMaster(child),
  };
}

// ---------------------------------------------------------------------------------------------
// smtp-sink

/** One transaction as smtp-sink dumped it (`-d`): its own headers, then the message. */
export interface SinkMessage {
  file: string;
  clientAddr: string;
  proto: string;
  helo: string | null;
  /** Arguments of MAIL FROM: `<a@example.com> SIZE=123 BODY=8BITMIME`. */
  mailArgs: string;
  /** Arguments of every RCPT TO, in order. */
  rcptArgs: string[];
  /**
   * The message as smtp-sink wrote it: lines end in LF (CRLF became LF, dot-stuffing undone), and
   * the empty line smtp-sink adds after each message is removed.
   */
  content: Buffer;
}

export interface SmtpSink {
  port: number;
  pid: number;
  dumpDir: string;
  lmtp: boolean;
  /** Every dumped message so far, oldest first. */
  messages(): Promise<SinkMessage[]>;
  /** Waits until at least n messages are there (or the timeout, then returns what is there). */
  waitForMessages(n: number, timeoutMs?: number): Promise<SinkMessage[]>;
  stop(): Promise<void>;
}

/** A dump file smtp-sink touched this recently may still be being written (see messages()). */
const SINK_DUMP_SETTLE_MS = 2000;

/** Parses one smtp-sink dump file (see `man smtp-sink`, DUMP FILE FORMAT). */
export function parseSinkDump(file: string, data: Buffer): SinkMessage {
  const m: SinkMessage = { file, clientAddr: '', proto: '', helo: null, mailArgs: '', rcptArgs: [], content: Buffer.alloc(0) };
  let pos = 0;
  for (;;) {
    const nl = data.indexOf(0x0a, pos);
    if (nl < 0) throw new Error(`${file}: no end of the smtp-sink headers`);
    const line = data.subarray(pos, nl).toString('latin1');
    pos = nl + 1;
    const h = /^([A-Za-z-]+): ?(.*)$/.exec(line);
    if (!h) throw new Error(`${file}: unexpected dump line "${line}"`);
    const value = h[2] as string;
    switch (h[1]) {
      case 'X-Client-Addr':
        m.clientAddr = value;
        break;
      case 'X-Client-Proto':
        m.proto = value;
        break;
      case 'X-Helo-Args':
        m.helo = value;
        break;
      case 'X-Mail-Args':
        m.mailArgs = value;
        break;
      case 'X-Rcpt-Args':
        m.rcptArgs.push(value);
        break;
      case 'Received': {
        // smtp-sink's Received header has two continuation lines.
        for (let i = 0; i < 2; i++) pos = data.indexOf(0x0a, pos) + 1;
        const end = data.length > pos && data[data.length - 1] === 0x0a && data[data.length - 2] === 0x0a ? data.length - 1 : data.length;
        m.content = data.subarray(pos, end);
        return m;
      }
      default:
        break;
    }
  }
}

/**
 * smtp-sink on a free loopback port, dumping every transaction to its own file in `dir/dump`
 * (`-d`). `args` adds options: `-f .` (refuse the final dot), `-N` (no DSN), `-r RCPT` ...
 */
export async function startSmtpSink(opts: { dir: string; lmtp?: boolean; args?: readonly string[]; name?: string }): Promise<SmtpSink> {
  const dumpDir = join(opts.dir, 'dump');
  await mkdir(dumpDir, { recursive: true });
  const asRoot = process.getuid?.() === 0 ? ['-u', 'root'] : [];
  const outPath = join(opts.dir, 'smtp-sink.out');
  const name = opts.name ?? 'smtp-sink';
  let peer: { port: number; pid: number; stop(): Promise<void> } | null = null;
  let lastError = 'not started';
  // As in startPeer (process.ts), but the port is an argument, not a config file.
  for (let attempt = 0; attempt < 3 && !peer; attempt++) {
    const port = await freeLoopbackPort();
    const out = openSync(outPath, 'a');
    const args = [...asRoot, ...(opts.lmtp ? ['-L'] : []), '-d', `${dumpDir}/%Y%m%d%H%M%S.`, ...(opts.args ?? []), `127.0.0.1:${port}`, '256'];
    const child = spawn('/usr/sbin/smtp-sink', args, { stdio: ['ignore', out, out] });
    closeSync(out);
    const r = await waitReady(child, () => accepts(port), Date.now() + 10_000, 50);
    if (r.kind === 'ready') peer = { port, pid: child.pid as number, stop: () => stopChild(child) };
    else if (r.kind === 'timeout') {
      await stopChild(child, 1000);
      lastError = `${name} was not ready in time`;
    } else {
      lastError = `${name} ${r.reason}`;
    }
  }
  if (!peer) throw new Error(`${name} did not start: ${lastError}\n${tail(outPath, 1000)}`);
  const sink = peer;
  const messages = async (): Promise<SinkMessage[]> => {
    const files = await Promise.all((await readdir(dumpDir)).map(async (f) => ({ f, t: (await stat(join(dumpDir, f))).mtimeMs })));
    files.sort((a, b) => a.t - b.t || a.f.localeCompare(b.f));
    const out: SinkMessage[] = [];
    for (const { f, t } of files) {
      try {
        out.push(parseSinkDump(f, await readFile(join(dumpDir, f))));
      } catch (err) {
        // smtp-sink writes a dump as the transaction goes: one that is still fresh may be half
        // written and is left for the next look; an old one that does not parse is an error.
        if (Date.now() - t > SINK_DUMP_SETTLE_MS) throw err;
      }
    }
    return out;
  };
  return {
    port: sink.port,
    pid: sink.pid,
    dumpDir,
    lmtp: opts.lmtp ?? false,
    messages,
    async waitForMessages(n, timeoutMs = 10_000) {
      const until = Date.now() + timeoutMs;
      let got = await messages();
      while (got.length < n && Date.now() < until) {
        await sleep(50);
        got = await messages();
      }
      return got;
    },
    stop: () => sink.stop(),
  };
}
