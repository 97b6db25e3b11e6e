import { chown, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { accepts, startPeer, systemUser, tail, type PeerProcess } from './process.js';

/**
 * Squid (Debian's squid 5.7) with an ICAP RESPMOD service, for the tests and the HTTP bench section;
 * or, with `icapUrl: null`, the same Squid with no adaptation at all (a plain relaying proxy).
 */
export interface SquidOptions {
  /** Squid's directory (config, pid, logs, cache dir); must exist; made Squid's user's when run as root. */
  dir: string;
  /**
   * The RESPMOD service, e.g. icap://127.0.0.1:1344/avscan (`bypass=0`: an ICAP failure is an error
   * for the client). `null`: no ICAP (`icap_enable off`, no service): every object passes unscanned,
   * for the bench's plain-relay reference only. Never optional: a caller that forgets the service
   * must not get a proxy that does not scan.
   */
  icapUrl: string | null;
  /** ICAP preview (default on); ignored without ICAP. */
  preview?: boolean;
  /** visible_hostname. */
  name?: string;
  /** More squid.conf lines, after the ones here. */
  extra?: readonly string[];
  /**
   * Lines put before the default access rules (loopback clients to loopback servers, nothing
   * else), such as auth_param and an `http_access deny !authenticated`.
   */
  access?: readonly string[];
  startTimeoutMs?: number;
}

export interface Squid extends PeerProcess {
  /** The last part of Squid's own output and cache.log (for failure messages). */
  logTail(chars?: number): string;
}

function icapLines(icapUrl: string, preview: boolean): string[] {
  return [
    'icap_enable on',
    `icap_preview_enable ${preview ? 'on' : 'off'}`,
    'icap_preview_size 1024',
    `icap_service svc respmod_precache bypass=0 ${icapUrl}`,
    // a failed transaction must not mark the service down for the following tests of the file
    'icap_service_failure_limit -1',
    'adaptation_access svc allow all',
  ];
}

function configText(o: SquidOptions, port: number, asRoot: boolean): string {
  const dir = o.dir;
  return [
    `pid_filename ${join(dir, 'squid.pid')}`,
    `cache_log ${join(dir, 'cache.log')}`,
    'access_log none',
    'cache_store_log none',
    'logfile_rotate 0',
    'debug_options ALL,1',
    // as root Squid drops to this user; everything it writes lives in `dir`, owned by it
    ...(asRoot ? ['cache_effective_user proxy', 'cache_effective_group proxy'] : []),
    `coredump_dir ${dir}`,
    'netdb_filename none',
    // no disk cache, nothing kept in memory: every request goes to the origin (and through ICAP, if any)
    'cache deny all',
    'cache_mem 8 MB',
    'maximum_object_size_in_memory 64 KB',
    // loopback only: the listening port, the ICAP service and the origins of the test.
    // No hostname lookups happen (all URLs use IP addresses); DNS is pointed at loopback anyway so
    // that a mistake cannot send a query to the network.
    `http_port 127.0.0.1:${port}`,
    `visible_hostname ${o.name ?? 'avgate-squid'}`,
    'dns_nameservers 127.0.0.1',
    'udp_incoming_address 127.0.0.1',
    'udp_outgoing_address 127.0.0.1',
    'tcp_outgoing_address 127.0.0.1',
    'icp_port 0',
    'htcp_port 0',
    'snmp_port 0',
    'pinger_enable off',
    'acl loopback_dst dst 127.0.0.0/8',
    ...(o.access ?? []),
    'http_access allow localhost loopback_dst',
    'http_access deny all',
    'shutdown_lifetime 0 seconds',
    ...(o.icapUrl === null ? ['icap_enable off'] : icapLines(o.icapUrl, o.preview ?? true)),
    ...(o.extra ?? []),
    '',
  ].join('\n');
}

/**
 * A real Squid in the foreground (`squid -N -f CONF`) with its own config, pid file and logs in
 * `o.dir`, on a free loopback port; resolves once it accepts connections.
 */
export async function startSquid(o: SquidOptions): Promise<Squid> {
  const asRoot = process.getuid?.() === 0;
  const owner = asRoot ? systemUser('proxy') : null;
  if (asRoot && !owner) throw new Error('Squid started as root needs the user "proxy"');
  const confPath = join(o.dir, 'squid.conf');
  const logPath = join(o.dir, 'cache.log');
  const outPath = join(o.dir, 'stdout.log');
  await mkdir(join(o.dir, 'cache'), { recursive: true });
  if (owner) {
    await chown(o.dir, owner.uid, owner.gid);
    await chown(join(o.dir, 'cache'), owner.uid, owner.gid);
  }
  const peer = await startPeer({
    name: 'Squid',
    command: 'squid',
    args: ['-N', '-f', confPath],
    writeConfig: (port) => writeFile(confPath, configText(o, port, asRoot)),
    ready: (port) => accepts(port),
    outPath,
    diagnostics: () => `${tail(outPath, 2000)}\n${tail(logPath, 3000)}`,
    ...(o.startTimeoutMs ? { startTimeoutMs: o.startTimeoutMs } : {}),
  });
  return { ...peer, logTail: (chars = 3000) => tail(logPath, chars) };
}
