import { readFileSync } from 'node:fs';
import { chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { accepts, startPeer, tail } from '../../tools/peers/process.js';

export interface TestSquid {
  port: number;
  /** http://127.0.0.1:PORT — for `curl -x`. */
  proxyUrl: string;
  dir: string;
  pid: number;
  /** The last part of Squid's cache.log (for failure messages). */
  logTail(chars?: number): string;
  stop(): Promise<void>;
}

/** uid/gid of Debian's `proxy` user, the user Squid drops to when started as root. */
function proxyUser(): { uid: number; gid: number } | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === 'proxy') return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    // no /etc/passwd: not a Debian-like system, keep the current user
  }
  return null;
}

function configText(dir: string, port: number, icapUrl: string, preview: boolean, asRoot: boolean, extra: readonly string[]): string {
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
    // no disk cache, nothing kept in memory: every request goes to the origin and through ICAP
    'cache deny all',
    'cache_mem 8 MB',
    'maximum_object_size_in_memory 64 KB',
    'memory_pools off',
    // loopback only: the listening port, the ICAP service and the origins of the test.
    // No hostname lookups happen (all URLs use IP addresses); DNS is pointed at loopback anyway so
    // that a mistake cannot send a query to the network.
    `http_port 127.0.0.1:${port}`,
    'visible_hostname avgate-test-squid',
    'dns_nameservers 127.0.0.1',
    'udp_incoming_address 127.0.0.1',
    'udp_outgoing_address 127.0.0.1',
    'tcp_outgoing_address 127.0.0.1',
    'icp_port 0',
    'htcp_port 0',
    'snmp_port 0',
    'pinger_enable off',
    'acl loopback_dst dst 127.0.0.0/8',
    'http_access allow localhost loopback_dst',
    'http_access deny all',
    'shutdown_lifetime 0 seconds',
    'icap_enable on',
    `icap_preview_enable ${preview ? 'on' : 'off'}`,
    'icap_preview_size 1024',
    `icap_service svc respmod_precache bypass=0 ${icapUrl}`,
    // a failed transaction must not mark the service down for the following tests of the file
    'icap_service_failure_limit -1',
    'adaptation_access svc allow all',
    ...extra,
    '',
  ].join('\n');
}

/**
 * A real Squid in the foreground (`squid -N -f CONF`) with its own config, pid file and log in a
 * fresh directory, listening on a free loopback port, using `icapUrl` as its RESPMOD service
 * (`bypass=0`: an ICAP failure is an error for the client, never an unscanned object).
 * Resolves once Squid accepts connections.
 */
export async function startTestSquid(opts: {
  icapUrl: string;
  preview?: boolean;
  /** More squid.conf lines, after the ones above. */
  extraConfig?: readonly string[];
  startTimeoutMs?: number;
}): Promise<TestSquid> {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-squid-'));
  const asRoot = process.getuid?.() === 0;
  const owner = asRoot ? proxyUser() : null;
  if (asRoot && !owner) throw new Error('Squid started as root needs the user "proxy"');
  const confPath = join(dir, 'squid.conf');
  const logPath = join(dir, 'cache.log');
  const outPath = join(dir, 'stdout.log');
  await mkdir(join(dir, 'cache'));
  if (owner) {
    await chown(dir, owner.uid, owner.gid);
    await chown(join(dir, 'cache'), owner.uid, owner.gid);
  }
  try {
    const peer = await startPeer({
      name: 'Squid',
      command: 'squid',
      args: ['-N', '-f', confPath],
      writeConfig: (port) => writeFile(confPath, configText(dir, port, opts.icapUrl, opts.preview ?? true, asRoot, opts.extraConfig ?? [])),
      ready: (port) => accepts(port),
      outPath,
      diagnostics: () => `${tail(outPath, 2000)}\n${tail(logPath, 3000)}`,
      ...(opts.startTimeoutMs ? { startTimeoutMs: opts.startTimeoutMs } : {}),
    });
    return {
      ...peer,
      proxyUrl: `http://127.0.0.1:${peer.port}`,
      dir,
      logTail: (chars = 3000) => tail(logPath, chars),
      async stop() {
        await peer.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
