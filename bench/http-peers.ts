/**
 * The HTTP section's reference: Squid 5.7 in front of c-icap 0.5.10 (virus_scan + clamd_mod on
 * the benchmark's clamd) as its `respmod_precache` service, each in the foreground under its own
 * config in the section's temporary directory, on free loopback ports, stopped by pid
 * (tools/peers/process.ts). Squid's config follows test/helpers/squid.ts (which the compiled bench
 * cannot import): no cache at all (`cache deny all`), so every download goes to the origin and
 * through ICAP, as avgate's do.
 *
 * c-icap's settings for a fair and working comparison:
 * - every file type scanned and MaxObjectSize over the largest object (as bench/cicap.ts);
 * - `mode=streamed` with `SendPercentData 99` from the first byte: c-icap sends 99% of the body on
 *   as it arrives and holds the last 1% for the verdict (an infected object is cut off before its
 *   end). Checked here: c-icap's usual `mode=simple` holds the whole body back, and Squid 5.7 then
 *   stops sending a body over 64 KB to it (Squid bug 5352, docs/icap.md), so every download of
 *   100 KB and more hangs; `mode=streamed` alone still hangs from about 5 MB (0 body bytes reach
 *   the client). This is the one configuration of c-icap under which Squid 5.7 delivers 1 KB to
 *   100 MB; it does less work per download than holding the whole body back would.
 */
import { chown, mkdir, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ALL_FILE_TYPES, CICAP_LIB_DIR, CICAP_MAGIC_FILE, CICAP_TEMPLATE_DIR, rawOptions } from '../tools/peers/cicap.js';
import { accepts, startPeer, tail, type PeerProcess } from '../tools/peers/process.js';

export type CicapMode = 'simple' | 'streamed';

export interface BenchPeer extends PeerProcess {
  logTail(): string;
}

function cicapConfig(dir: string, port: number, clamdSocket: string, mode: CicapMode, threads: number, extra: readonly string[]): string {
  return [
    `PidFile ${join(dir, 'c-icap.pid')}`,
    `CommandsSocket ${join(dir, 'c-icap.ctl')}`,
    'Timeout 300',
    'MaxKeepAliveRequests 0',
    'KeepAliveTimeout 600',
    // one server process with enough threads for Squid's connections at concurrency 32
    'StartServers 1',
    'MaxServers 1',
    `ThreadsPerChild ${threads}`,
    'MinSpareThreads 1',
    `MaxSpareThreads ${threads}`,
    `Port 127.0.0.1:${port}`,
    `TmpDir ${dir}`,
    'MaxMemObject 131072',
    'DebugLevel 0',
    'Pipelining on',
    `ModulesDir ${CICAP_LIB_DIR}`,
    `ServicesDir ${CICAP_LIB_DIR}`,
    `TemplateDir ${CICAP_TEMPLATE_DIR}`,
    'TemplateDefaultLanguage en',
    `LoadMagicFile ${CICAP_MAGIC_FILE}`,
    `ServerLog ${join(dir, 'server.log')}`,
    `AccessLog ${join(dir, 'access.log')}`,
    'Module common clamd_mod.so',
    `clamd_mod.ClamdSocket ${clamdSocket}`,
    'Service antivirus_module virus_scan.so',
    `ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=${mode}`,
    'virus_scan.DefaultEngine clamd',
    `virus_scan.ScanFileTypes ${ALL_FILE_TYPES}`,
    'virus_scan.MaxObjectSize 500M',
    'virus_scan.SendPercentData 99',
    'virus_scan.StartSendPercentDataAfter 0',
    ...extra,
    '',
  ].join('\n');
}

/**
 * c-icap for the HTTP section (service `/avscan`). `mode` defaults to streamed (see above; `simple`
 * reproduces the hang); `extra` lines are appended to c-icap.conf, for trying
 * other virus_scan settings by hand.
 */
export async function startHttpCicap(o: { dir: string; clamdSocket: string; mode?: CicapMode; threads?: number; extra?: readonly string[] }): Promise<BenchPeer> {
  await mkdir(o.dir, { recursive: true });
  const confPath = join(o.dir, 'c-icap.conf');
  const outPath = join(o.dir, 'stdout.log');
  const logTail = () => `${tail(outPath, 1500)}\n${tail(join(o.dir, 'server.log'), 1500)}`.trim();
  const peer = await startPeer({
    name: 'c-icap',
    command: 'c-icap',
    args: ['-f', confPath, '-N', '-D'],
    writeConfig: (port) => writeFile(confPath, cicapConfig(o.dir, port, o.clamdSocket, o.mode ?? 'streamed', o.threads ?? 48, o.extra ?? [])),
    ready: async (port) => (await rawOptions(port))?.startsWith('ICAP/1.0 200') ?? false,
    outPath,
    diagnostics: logTail,
  });
  return { ...peer, logTail };
}

/** uid/gid of Debian's `proxy` user, the user Squid drops to when started as root. */
function proxyUser(): { uid: number; gid: number } | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === 'proxy') return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    // no /etc/passwd
  }
  return null;
}

function squidConfig(dir: string, port: number, icapPort: number, asRoot: boolean): string {
  return [
    `pid_filename ${join(dir, 'squid.pid')}`,
    `cache_log ${join(dir, 'cache.log')}`,
    'access_log none',
    'cache_store_log none',
    'logfile_rotate 0',
    'debug_options ALL,1',
    ...(asRoot ? ['cache_effective_user proxy', 'cache_effective_group proxy'] : []),
    `coredump_dir ${dir}`,
    'netdb_filename none',
    // nothing served from a cache: every download goes to the origin and through c-icap
    'cache deny all',
    'cache_mem 8 MB',
    'maximum_object_size_in_memory 64 KB',
    `http_port 127.0.0.1:${port}`,
    'visible_hostname avgate-bench-squid',
    // loopback only; no name lookups happen (IP URLs), DNS pointed at loopback anyway
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
    'client_persistent_connections on',
    'server_persistent_connections on',
    'icap_enable on',
    'icap_preview_enable on',
    'icap_preview_size 1024',
    'icap_persistent_connections on',
    `icap_service svc respmod_precache bypass=0 icap://127.0.0.1:${icapPort}/avscan`,
    'icap_service_failure_limit -1',
    'adaptation_access svc allow all',
    '',
  ].join('\n');
}

/** Squid in `o.dir` (made Squid's user's when run as root) with c-icap's `/avscan` as its RESPMOD service. */
export async function startHttpSquid(o: { dir: string; icapPort: number }): Promise<BenchPeer> {
  const dir = o.dir;
  await mkdir(join(dir, 'cache'), { recursive: true });
  const asRoot = process.getuid?.() === 0;
  const owner = asRoot ? proxyUser() : null;
  if (asRoot && !owner) throw new Error('Squid started as root needs the user "proxy"');
  if (owner) {
    await chown(dir, owner.uid, owner.gid);
    await chown(join(dir, 'cache'), owner.uid, owner.gid);
  }
  const confPath = join(dir, 'squid.conf');
  const outPath = join(dir, 'stdout.log');
  const logTail = () => `${tail(outPath, 1500)}\n${tail(join(dir, 'cache.log'), 2500)}`.trim();
  const peer = await startPeer({
    name: 'Squid',
    command: 'squid',
    args: ['-N', '-f', confPath],
    writeConfig: (port) => writeFile(confPath, squidConfig(dir, port, o.icapPort, asRoot)),
    ready: (port) => accepts(port),
    outPath,
    diagnostics: logTail,
  });
  return { ...peer, logTail };
}
