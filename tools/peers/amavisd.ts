/**
 * amavisd-new 2.13 (Debian `amavisd-new`) as an anti-virus-only content filter: SMTP in on a free
 * loopback port, every message decoded by amavisd and its parts handed to clamd (`CONTSCAN` of
 * amavisd's temporary directory over clamd's unix socket), clean mail passed on by SMTP to
 * `forwardPort`. Run in the foreground (`amavisd -c CONF foreground`), stopped by its pid.
 *
 * What amavisd insists on (checked here on Debian 12):
 * - It refuses to run when its config file, or the directory holding it, is writable by the user it
 *   runs as: the config is owned by root, mode 0644, in a root-owned 0755 directory.
 * - Started as root it needs `$daemon_user`; it then runs as `amavis`, so its home, temporary,
 *   database and pid/lock directories belong to amavis, and every directory above them must be
 *   traversable by amavis (a mkdtemp directory is 0700: chmod it 0755).
 * - clamd must be able to read amavisd's temporary files: the test clamd runs as root.
 * - Infected mail is discarded (`D_DISCARD`, 250 to the client) and nothing else is sent: no
 *   quarantine, no notices to admin, sender or recipients.
 */
import { chmod, chown, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { greets, startPeer, systemUser, tail, type PeerProcess } from './process.js';

export interface AmavisdOptions {
  /** Base directory (created, made 0755; its parents must be traversable by the amavis user). */
  dir: string;
  /** clamd's unix socket. */
  clamdSocket: string;
  /** Where clean mail goes (SMTP on 127.0.0.1). */
  forwardPort: number;
  /** `$max_servers`: pre-forked children, each serving one SMTP session at a time. */
  maxServers?: number;
  /** `$max_requests`: messages a child handles before it is replaced (amavisd's default is 20). */
  maxRequests?: number;
  /** `$log_level` (0 = one line per message). */
  logLevel?: number;
  /** The system user amavisd runs as. */
  user?: string;
  startTimeoutMs?: number;
}

export interface Amavisd extends PeerProcess {
  confPath: string;
  logTail(chars?: number): string;
}

function userIds(name: string): { uid: number; gid: number } {
  const ids = systemUser(name);
  if (!ids) throw new Error(`amavisd: no system user "${name}" (is amavisd-new installed?)`);
  return ids;
}

/** A Perl single-quoted string literal. */
const perlString = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;

function configText(o: AmavisdOptions, home: string, port: number): string {
  const user = o.user ?? 'amavis';
  const forward = perlString(`smtp:[127.0.0.1]:${o.forwardPort}`);
  return `# amavisd-new config written by avgate's tools/peers/amavisd.ts: anti-virus checks only
use strict;
$daemon_user  = ${perlString(user)};
$daemon_group = ${perlString(user)};
$MYHOME       = ${perlString(home)};
$TEMPBASE     = ${perlString(join(home, 'tmp'))};
$db_home      = ${perlString(join(home, 'db'))};
$helpers_home = ${perlString(join(home, 'var'))};
$pid_file     = ${perlString(join(home, 'var', 'amavisd.pid'))};
$lock_file    = ${perlString(join(home, 'var', 'amavisd.lock'))};
$do_syslog    = 0;
$logfile      = ${perlString(join(home, 'var', 'amavis.log'))};
$log_level    = ${o.logLevel ?? 0};

$mydomain   = 'bench.test';
$myhostname = 'amavis.bench.test';
@mynetworks = qw(127.0.0.0/8);
@local_domains_maps = (1);

# loopback only
$inet_socket_bind = '127.0.0.1';
$inet_socket_port = ${port};
@inet_acl = qw(127.0.0.1);
$forward_method = ${forward};
$notify_method  = ${forward};

$max_servers  = ${o.maxServers ?? 4};
$max_requests = ${o.maxRequests ?? 20};
$child_timeout = 5*60;

# anti-virus only: no spam, banned-name or header checks, no DKIM
@bypass_spam_checks_maps   = (1);
@bypass_banned_checks_maps = (1);
@bypass_header_checks_maps = (1);
@bypass_virus_checks_maps  = (0);
@spam_scanners = ();
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;
$enable_db = 0;
$enable_global_cache = 0;

# infected mail: discarded, not kept, nobody told
$final_virus_destiny = D_DISCARD;
$virus_quarantine_method = undef;
$QUARANTINEDIR = undef;
$virus_admin = undef;
$warnvirussender = 0;
$warnvirusrecip = 0;

@av_scanners = (
  ['ClamAV-clamd',
    \\&ask_daemon, ["CONTSCAN {}\\n", ${perlString(o.clamdSocket)}],
    qr/\\bOK$/m, qr/\\bFOUND$/m,
    qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ],
);
@av_scanners_backup = ();

1;
`;
}

/** Starts amavisd; resolves once it greets on its port (amavisd needs a few seconds to load). */
export async function startAmavisd(o: AmavisdOptions): Promise<Amavisd> {
  const ids = userIds(o.user ?? 'amavis');
  if (process.getuid?.() !== 0) throw new Error('amavisd: the benchmark starts it as root (it then runs as the amavis user)');
  const etc = join(o.dir, 'etc');
  const home = join(o.dir, 'home');
  await mkdir(etc, { recursive: true });
  await chmod(o.dir, 0o755);
  await chmod(etc, 0o755);
  for (const d of [home, join(home, 'tmp'), join(home, 'db'), join(home, 'var')]) {
    await mkdir(d, { recursive: true, mode: 0o750 });
    await chown(d, ids.uid, ids.gid);
  }
  const confPath = join(etc, 'amavisd.conf');
  const outPath = join(o.dir, 'amavisd.out');
  const logTail = (chars = 3000) => `${tail(outPath, chars)}\n${tail(join(home, 'var', 'amavis.log'), chars)}`.trim();
  const peer = await startPeer({
    name: 'amavisd',
    command: 'amavisd',
    args: ['-c', confPath, 'foreground'],
    writeConfig: async (port) => {
      await writeFile(confPath, configText(o, home, port), { mode: 0o644 });
      await chmod(confPath, 0o644);
    },
    ready: (port) => greets(port, 2000),
    outPath,
    diagnostics: () => logTail(),
    startTimeoutMs: o.startTimeoutMs ?? 60_000,
  });
  return { ...peer, confPath, logTail };
}
