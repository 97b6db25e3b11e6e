import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freeLoopbackPort } from '../../src/core/net.js';

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

function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

function accepts(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

function tail(path: string, chars: number): string {
  return existsSync(path) ? readFileSync(path, 'latin1').slice(-chars) : '';
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
  const deadline = Date.now() + (opts.startTimeoutMs ?? 20_000);
  let lastError = 'not started';
  // The free port may be taken between probing and binding: then Squid exits and we retry.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeLoopbackPort();
    await writeFile(confPath, configText(dir, port, opts.icapUrl, opts.preview ?? true, asRoot, opts.extraConfig ?? []));
    const out = openSync(outPath, 'a');
    const child = spawn('squid', ['-N', '-f', confPath], { stdio: ['ignore', out, out] });
    closeSync(out);
    let exited = false;
    child.once('exit', () => {
      exited = true;
    });
    child.once('error', (err) => {
      exited = true;
      lastError = err.message;
    });
    while (!exited && Date.now() < deadline) {
      if (await accepts(port)) {
        const pid = child.pid as number;
        return {
          port,
          proxyUrl: `http://127.0.0.1:${port}`,
          dir,
          pid,
          logTail: (chars = 3000) => tail(logPath, chars),
          async stop() {
            if (child.exitCode === null && child.signalCode === null) {
              process.kill(pid, 'SIGTERM');
              // the grace timer is cancelled once Squid is gone, so it does not hold the test process
              const grace = new AbortController();
              const exitedInTime = await Promise.race([
                waitExit(child).then(() => true),
                sleep(5000, false, { signal: grace.signal }).catch(() => false),
              ]);
              grace.abort();
              if (!exitedInTime) {
                process.kill(pid, 'SIGKILL');
                await waitExit(child);
              }
            }
            await rm(dir, { recursive: true, force: true });
          },
        };
      }
      await sleep(100);
    }
    if (!exited) {
      child.kill('SIGKILL');
      await waitExit(child);
      lastError = 'Squid did not accept connections in time';
      break;
    }
    lastError = `Squid exited with ${child.exitCode ?? child.signalCode}`;
  }
  const log = `${tail(outPath, 2000)}\n${tail(logPath, 3000)}`;
  await rm(dir, { recursive: true, force: true });
  throw new Error(`Squid did not start: ${lastError}\n${log}`);
}
