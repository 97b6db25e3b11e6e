/**
 * ClamSMTP 1.10 (Debian `clamsmtp`) as a peer: an SMTP proxy that hands each message to clamd as a
 * file and passes clean mail on to `OutAddress`. Run in the foreground (`clamsmtpd -d 1 -f CONF`)
 * with its config, temporary files and output in `dir`, on a free loopback port, stopped by its pid.
 *
 * Facts this relies on (clamsmtp 1.10, Debian 12):
 * - `-d LEVEL` keeps it in the foreground and logs to stderr; `-f` names the config file.
 * - Without a `User:` line it keeps running as whoever started it. With `User: root` it tries to
 *   drop privileges, fails, and then refuses every message — so the line is left out.
 * - It writes each message to `TempDirectory` and asks clamd to scan that file (clamd must be able
 *   to read it: the test clamd runs as root).
 * - It is a proxy: every client connection gets its own connection to `OutAddress`, and the
 *   greeting the client sees comes from there.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { greets, startPeer, tail, type PeerProcess } from './process.js';

export interface ClamsmtpOptions {
  /** Config, temporary files and output go here (created). */
  dir: string;
  /** clamd's unix socket. */
  clamdSocket: string;
  /** Where scanned mail goes: a loopback port (an smtp-sink, Postfix's re-injection smtpd ...). */
  outPort: number;
  /** What to do with infected mail: drop (the package's default and advice), bounce or pass. */
  action?: 'drop' | 'bounce' | 'pass';
  /** `MaxConnections` (clamd must accept as many). */
  maxConnections?: number;
  /** `TimeOut` in seconds for network reads. */
  timeoutSeconds?: number;
  startTimeoutMs?: number;
}

export interface Clamsmtp extends PeerProcess {
  confPath: string;
  /** The last part of its output (stderr with `-d 1`). */
  logTail(chars?: number): string;
}

function configText(o: ClamsmtpOptions, port: number): string {
  return [
    `Listen: 127.0.0.1:${port}`,
    `OutAddress: 127.0.0.1:${o.outPort}`,
    `ClamAddress: ${o.clamdSocket}`,
    `TempDirectory: ${join(o.dir, 'tmp')}`,
    `PidFile: ${join(o.dir, 'clamsmtpd.pid')}`,
    `Action: ${o.action ?? 'drop'}`,
    `MaxConnections: ${o.maxConnections ?? 64}`,
    `TimeOut: ${o.timeoutSeconds ?? 180}`,
    '',
  ].join('\n');
}

/** Starts clamsmtpd; resolves once a connection to it gets a greeting (which needs `outPort` up). */
export async function startClamsmtp(o: ClamsmtpOptions): Promise<Clamsmtp> {
  await mkdir(join(o.dir, 'tmp'), { recursive: true });
  const confPath = join(o.dir, 'clamsmtpd.conf');
  const outPath = join(o.dir, 'clamsmtpd.out');
  const logTail = (chars = 2000) => tail(outPath, chars);
  const peer = await startPeer({
    name: 'clamsmtpd',
    command: 'clamsmtpd',
    args: ['-d', '1', '-f', confPath],
    writeConfig: (port) => writeFile(confPath, configText(o, port)),
    ready: (port) => greets(port),
    outPath,
    diagnostics: () => logTail(),
    ...(o.startTimeoutMs ? { startTimeoutMs: o.startTimeoutMs } : {}),
  });
  return { ...peer, confPath, logTail };
}
