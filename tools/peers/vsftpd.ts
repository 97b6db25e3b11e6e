/**
 * vsftpd 3.0 (Debian `vsftpd`) in the foreground (`background=NO`) with its own config file, on a
 * free loopback port, serving anonymous FTP from a directory of its own: `root` (read-only, for
 * downloads) with a writable `upload` folder (anonymous uploads, overwrite, append, REST). Used by
 * the FTP proxy tests.
 */
import { chown, chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { accepts, greets, startPeer, systemUser, tail, type PeerProcess } from './process.js';

export interface VsftpdOptions {
  /** Working directory (must exist): config, logs, the FTP root below it. */
  dir: string;
  startTimeoutMs?: number;
  /**
   * FTPS only (anonymous logins and data must be in TLS): explicit (AUTH TLS) on the port, or
   * `implicit` (TLS from the first byte). PEM files; vsftpd requires TLS session reuse on data.
   */
  tls?: { cert: string; key: string; implicit?: boolean };
}

export interface Vsftpd extends PeerProcess {
  /** The anonymous FTP root (chmod 0755, owned by root: vsftpd refuses a writable anonymous root). */
  root: string;
  /** `root/upload`, owned by the ftp user: anonymous uploads land here. */
  uploadDir: string;
  logTail(): string;
}

function tlsLines(tls: VsftpdOptions['tls']): string[] {
  if (!tls) return ['ssl_enable=NO'];
  return [
    'ssl_enable=YES',
    `rsa_cert_file=${tls.cert}`,
    `rsa_private_key_file=${tls.key}`,
    'allow_anon_ssl=YES',
    'force_anon_logins_ssl=YES',
    'force_anon_data_ssl=YES',
    'require_ssl_reuse=YES',
    // vsftpd's default cipher list (DES-CBC3-SHA) is gone from OpenSSL 3.
    'ssl_ciphers=HIGH',
    `implicit_ssl=${tls.implicit ? 'YES' : 'NO'}`,
  ];
}

function configText(dir: string, root: string, port: number, tls: VsftpdOptions['tls']): string {
  // Passive ports right above the control port: free at the time with high probability, and the
  // proxy only ever uses the server in passive mode.
  const pasvMin = port < 60000 ? port + 1 : port - 200;
  return [
    'listen=YES',
    'listen_ipv6=NO',
    'listen_address=127.0.0.1',
    `listen_port=${port}`,
    'background=NO',
    // Containers without the syscalls vsftpd's sandbox and network isolation need.
    'seccomp_sandbox=NO',
    'isolate_network=NO',
    'isolate=NO',
    `secure_chroot_dir=${join(dir, 'empty')}`,
    'anonymous_enable=YES',
    'local_enable=NO',
    'no_anon_password=YES',
    `anon_root=${root}`,
    'write_enable=YES',
    'anon_upload_enable=YES',
    'anon_mkdir_write_enable=YES',
    'anon_other_write_enable=YES',
    'anon_umask=022',
    // TYPE A converts line ends both ways (vsftpd's default is to ignore TYPE A).
    'ascii_download_enable=YES',
    'ascii_upload_enable=YES',
    'pasv_enable=YES',
    `pasv_min_port=${pasvMin}`,
    `pasv_max_port=${pasvMin + 100}`,
    'pasv_address=127.0.0.1',
    'port_enable=YES',
    'connect_from_port_20=NO',
    'max_clients=50',
    'idle_session_timeout=120',
    'data_connection_timeout=60',
    'xferlog_enable=YES',
    `vsftpd_log_file=${join(dir, 'vsftpd.log')}`,
    'log_ftp_protocol=YES',
    'dual_log_enable=NO',
    'use_localtime=NO',
    'hide_ids=YES',
    ...tlsLines(tls),
    '',
  ].join('\n');
}

/** Starts vsftpd in `dir` (which must exist); resolves once it greets with 220. */
export async function startVsftpd(o: VsftpdOptions): Promise<Vsftpd> {
  const root = join(o.dir, 'root');
  const uploadDir = join(root, 'upload');
  await mkdir(join(o.dir, 'empty'), { recursive: true, mode: 0o755 });
  await mkdir(uploadDir, { recursive: true });
  await chmod(o.dir, 0o755);
  await chmod(root, 0o755);
  await chmod(uploadDir, 0o755);
  // Anonymous sessions run as Debian's `ftp` user.
  const ftp = systemUser('ftp');
  if (ftp) await chown(uploadDir, ftp.uid, ftp.gid);
  const confPath = join(o.dir, 'vsftpd.conf');
  const outPath = join(o.dir, 'stdout.log');
  const logTail = () => `${tail(outPath, 1500)}\n${tail(join(o.dir, 'vsftpd.log'), 1500)}`.trim();
  const peer = await startPeer({
    name: 'vsftpd',
    command: 'vsftpd',
    args: [confPath],
    writeConfig: (port) => writeFile(confPath, configText(o.dir, root, port, o.tls), { mode: 0o600 }),
    // Implicit FTPS does not greet in clear.
    ready: (port) => (o.tls?.implicit ? accepts(port) : greets(port)),
    outPath,
    diagnostics: logTail,
    ...(o.startTimeoutMs ? { startTimeoutMs: o.startTimeoutMs } : {}),
  });
  return { ...peer, root, uploadDir, logTail };
}
