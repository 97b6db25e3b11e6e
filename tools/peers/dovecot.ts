/**
 * A real Dovecot (POP3 and IMAP) as a peer for the mail proxies' tests and the benchmark: the master
 * in the foreground (`dovecot -F -c CONF`) with its own config, base_dir, state, log and maildirs in
 * one directory; listeners on free loopback ports only.
 *
 * What it takes to run Dovecot 2.3 as root outside /etc/dovecot (Debian 12):
 * - Dovecot refuses a userdb uid of 0, so mail is owned by the `mail` system user (uid/gid from
 *   /etc/passwd, usually 8) and `first_valid_uid` is lowered to it; `deliver()` chowns what it writes.
 * - `default_internal_user = dovecot`, `default_login_user = dovenull` (the Debian users); the
 *   directory must be traversable by them (0755): login processes chroot into base_dir/login.
 * - Plaintext logins on loopback: `ssl = no`, `disable_plaintext_auth = no`,
 *   `auth_mechanisms = plain login`; users in a passwd-file with `{PLAIN}` passwords.
 * - The pop3s/imaps listeners are disabled with `port = 0`; only the two plain listeners bind.
 * - A master that is still stopping keeps master.pid; a fresh directory per start avoids
 *   "Dovecot is already running".
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { chmod, chown, mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freeLoopbackPort } from '../../src/core/net.js';
import { accepts, stopChild, systemUser, tail, waitExit, waitReady } from './process.js';

export const DOVECOT_BIN = '/usr/sbin/dovecot';

/** True when Dovecot can be run here: installed, root, and its system users exist. */
export function dovecotAvailable(): boolean {
  return existsSync(DOVECOT_BIN) && process.getuid?.() === 0 && systemUser('dovecot') !== null && systemUser('dovenull') !== null && systemUser('mail') !== null;
}

export interface DovecotUser {
  user: string;
  password: string;
}

export interface DovecotOptions {
  /** Directory for config, runtime, state, log and mail (created; made 0755). */
  dir: string;
  /** Mail users (default: one user `alice` with password `secret-alice`). */
  users?: readonly DovecotUser[];
  /** More dovecot.conf lines (appended). */
  extraConfig?: string;
  startTimeoutMs?: number;
}

export interface Dovecot {
  dir: string;
  pop3Port: number;
  imapPort: number;
  /** The first user and its password. */
  user: string;
  password: string;
  users: readonly DovecotUser[];
  pid: number;
  /** The maildir of a user (created at start). */
  maildir(user: string): string;
  /**
   * Puts a raw message (bytes as given; use CRLF line ends for byte-exact comparisons) into the
   * user's maildir `new/` (tmp/ then rename, as a delivery agent does). Returns the file name.
   */
  deliver(user: string, raw: Buffer | string): Promise<string>;
  /** The last part of Dovecot's log. */
  logTail(chars?: number): string;
  stop(): Promise<void>;
}

function dovecotConf(dir: string, pop3Port: number, imapPort: number, mailUid: { uid: number; gid: number }, extra: string): string {
  return `# written by tools/peers/dovecot.ts
base_dir = ${join(dir, 'run')}
state_dir = ${join(dir, 'state')}
log_path = ${join(dir, 'dovecot.log')}
protocols = pop3 imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = ${mailUid.uid}
mail_location = maildir:${join(dir, 'mail')}/%u
pop3_uidl_format = %08Xu%08Xv
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u ${join(dir, 'passwd')}
}
userdb {
  driver = static
  args = uid=${mailUid.uid} gid=${mailUid.gid} home=${join(dir, 'home')}/%u
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = ${pop3Port}
  }
  inet_listener pop3s {
    port = 0
  }
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${imapPort}
  }
  inet_listener imaps {
    port = 0
  }
}
${extra}
`;
}

/** Test user names: plain or with a domain (`bob@corp.test`, a server with virtual domains). */
const USER_NAME = /^[A-Za-z0-9._-]+(?:@[A-Za-z0-9.-]+)?$/;

/** Starts Dovecot in `opts.dir`; resolves when both the POP3 and the IMAP listener accept. */
export async function startDovecot(opts: DovecotOptions): Promise<Dovecot> {
  const mailUid = systemUser('mail');
  if (!mailUid) throw new Error('dovecot: no `mail` system user');
  const users = opts.users && opts.users.length > 0 ? opts.users : [{ user: 'alice', password: 'secret-alice' }];
  for (const u of users) {
    if (!USER_NAME.test(u.user) || /[:\r\n]/.test(u.password)) throw new Error(`dovecot: bad test user ${JSON.stringify(u.user)}`);
  }
  const dir = opts.dir;
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o755);
  await writeFile(join(dir, 'passwd'), users.map((u) => `${u.user}:{PLAIN}${u.password}\n`).join(''), { mode: 0o644 });
  const maildir = (user: string) => join(dir, 'mail', user);
  for (const u of users) {
    for (const sub of ['new', 'cur', 'tmp']) {
      await mkdir(join(maildir(u.user), sub), { recursive: true });
    }
    await chown(join(dir, 'mail'), mailUid.uid, mailUid.gid);
    await chown(maildir(u.user), mailUid.uid, mailUid.gid);
    for (const sub of ['new', 'cur', 'tmp']) await chown(join(maildir(u.user), sub), mailUid.uid, mailUid.gid);
  }
  await mkdir(join(dir, 'home'), { recursive: true });
  await chown(join(dir, 'home'), mailUid.uid, mailUid.gid);
  const logPath = join(dir, 'dovecot.log');
  const outPath = join(dir, 'dovecot.out');
  const diagnostics = () => `--- dovecot.log ---\n${tail(logPath, 3000)}\n--- stdout/stderr ---\n${tail(outPath, 2000)}`;

  const deadline = Date.now() + (opts.startTimeoutMs ?? 20_000);
  let lastError = 'not started';
  for (let attempt = 0; attempt < 3; attempt++) {
    // A fresh runtime directory per attempt: a master that failed may leave master.pid behind.
    const runDir = join(dir, 'run');
    await mkdir(runDir, { recursive: true });
    await mkdir(join(dir, 'state'), { recursive: true });
    const pop3Port = await freeLoopbackPort();
    let imapPort = await freeLoopbackPort();
    while (imapPort === pop3Port) imapPort = await freeLoopbackPort();
    const confPath = join(dir, 'dovecot.conf');
    await writeFile(confPath, dovecotConf(dir, pop3Port, imapPort, mailUid, opts.extraConfig ?? ''));
    const out = openSync(outPath, 'a');
    const child: ChildProcess = spawn(DOVECOT_BIN, ['-F', '-c', confPath], { stdio: ['ignore', out, out] });
    closeSync(out);
    const r = await waitReady(child, async () => (await accepts(pop3Port)) && (await accepts(imapPort)), deadline);
    if (r.kind === 'ready') {
      let seq = 0;
      return {
        dir,
        pop3Port,
        imapPort,
        user: (users[0] as DovecotUser).user,
        password: (users[0] as DovecotUser).password,
        users,
        pid: child.pid as number,
        maildir,
        async deliver(user, raw) {
          const md = maildir(user);
          if (!users.some((u) => u.user === user)) throw new Error(`dovecot: no user ${user}`);
          const name = `${Date.now()}.M${++seq}P${process.pid}.avgate-test`;
          const tmpPath = join(md, 'tmp', name);
          await writeFile(tmpPath, raw, { mode: 0o600 });
          await chown(tmpPath, mailUid.uid, mailUid.gid);
          await rename(tmpPath, join(md, 'new', name));
          return name;
        },
        logTail: (chars = 3000) => tail(logPath, chars),
        stop: () => stopChild(child),
      };
    }
    if (r.kind === 'timeout') {
      child.kill('SIGKILL');
      await waitExit(child);
      lastError = 'dovecot was not ready in time';
      break;
    }
    lastError = `dovecot ${r.reason}`;
  }
  throw new Error(`dovecot did not start: ${lastError}\n${diagnostics()}`);
}
