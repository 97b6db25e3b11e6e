/**
 * c-icap 0.5.10 (Debian `c-icap` + `libc-icap-mod-virus-scan`) for the benchmark: virus_scan with
 * clamd_mod pointed at the benchmark's clamd unix socket, in the foreground with its own config,
 * logs and temporary files, on a free loopback port. The same launch logic as the tests' helper
 * (test/helpers/cicap.ts, which is not compiled into dist), with settings for a fair benchmark:
 *
 * - ScanFileTypes lists every group of c-icap's magic file (TEXT DATA EXECUTABLE ARCHIVE DOCUMENT
 *   GRAPHICS STREAM): with the packaged list, a type the preview identifies and that is not listed
 *   (PDF, most media) is answered 204 without a scan, and the figures would measure skipping.
 * - MaxObjectSize 500M: the package's 5M would let the 1-5 MB part of the corpus through unscanned.
 * - One server process with enough threads for concurrency 16 on persistent connections, so no
 *   process is started or stopped mid-measurement.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freeLoopbackPort } from '../src/core/net.js';

/** Debian's c-icap (and libc-icap-mod-virus-scan) module folder; see `dpkg -L c-icap`. */
export const CICAP_LIB_DIR = '/usr/lib/x86_64-linux-gnu/c_icap';
export const CICAP_MAGIC_FILE = '/etc/c-icap/c-icap.magic';
export const CICAP_TEMPLATE_DIR = '/usr/share/c_icap/templates/';
/** Every group named in c-icap.magic plus the built-in TEXT and DATA: scan everything. */
export const ALL_FILE_TYPES = 'TEXT DATA EXECUTABLE ARCHIVE DOCUMENT GRAPHICS STREAM';

export interface BenchCicap {
  port: number;
  /** Service path for request lines: `/avscan`. */
  service: string;
  pid: number;
  /** Server log tail (for error reports). */
  logTail(): string;
  stop(): Promise<void>;
}

/** One raw OPTIONS round trip; resolves to the response head text, or null if nothing answers. */
export function rawOptions(port: number, service = '/avscan', timeoutMs = 1000): Promise<string | null> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    const done = (v: string | null) => {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(null), timeoutMs);
    s.on('error', () => done(null));
    s.on('connect', () =>
      s.write(`OPTIONS icap://127.0.0.1:${port}${service} ICAP/1.0\r\nHost: 127.0.0.1:${port}\r\nEncapsulated: null-body=0\r\n\r\n`),
    );
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      const end = got.indexOf('\r\n\r\n');
      if (end >= 0) done(got.slice(0, end));
    });
    s.on('close', () => done(got.length > 0 ? got : null));
  });
}

function configText(dir: string, port: number, clamdSocket: string, threads: number): string {
  return [
    `PidFile ${join(dir, 'c-icap.pid')}`,
    `CommandsSocket ${join(dir, 'c-icap.ctl')}`,
    'Timeout 300',
    'MaxKeepAliveRequests 0',
    'KeepAliveTimeout 600',
    'StartServers 1',
    'MaxServers 1',
    `ThreadsPerChild ${threads}`,
    'MinSpareThreads 1',
    `MaxSpareThreads ${threads}`,
    `Port 127.0.0.1:${port}`,
    `TmpDir ${join(dir, 'tmp')}`,
    'MaxMemObject 131072',
    'DebugLevel 0',
    'Pipelining on',
    `ModulesDir ${CICAP_LIB_DIR}`,
    `ServicesDir ${CICAP_LIB_DIR}`,
    `TemplateDir ${CICAP_TEMPLATE_DIR}`,
    'TemplateDefaultLanguage en',
    `LoadMagicFile ${CICAP_MAGIC_FILE}`,
    `ServerLog ${join(dir, 'server.log')}`,
    // An access log line per request is part of what c-icap does in production; avgate writes one too.
    `AccessLog ${join(dir, 'access.log')}`,
    'Module common clamd_mod.so',
    `clamd_mod.ClamdSocket ${clamdSocket}`,
    'Service antivirus_module virus_scan.so',
    'ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple',
    'virus_scan.DefaultEngine clamd',
    `virus_scan.ScanFileTypes ${ALL_FILE_TYPES}`,
    'virus_scan.MaxObjectSize 500M',
    '',
  ].join('\n');
}

function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

/** Starts c-icap in `dir` (created); resolves once OPTIONS answers 200. */
export async function startBenchCicap(opts: { dir: string; clamdSocket: string; threads?: number; startTimeoutMs?: number }): Promise<BenchCicap> {
  const { dir } = opts;
  await mkdir(join(dir, 'tmp'), { recursive: true });
  const confPath = join(dir, 'c-icap.conf');
  const logPath = join(dir, 'stdout.log');
  const deadline = Date.now() + (opts.startTimeoutMs ?? 20_000);
  const logTail = () =>
    [logPath, join(dir, 'server.log')]
      .filter((p) => existsSync(p))
      .map((p) => readFileSync(p, 'latin1').slice(-1500))
      .join('\n')
      .trim();
  let lastError = 'not started';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeLoopbackPort();
    await writeFile(confPath, configText(dir, port, opts.clamdSocket, opts.threads ?? 40));
    const out = openSync(logPath, 'a');
    const child = spawn('c-icap', ['-f', confPath, '-N', '-D'], { stdio: ['ignore', out, out] });
    closeSync(out);
    let exited = false;
    child.once('exit', () => (exited = true));
    child.once('error', (err) => {
      exited = true;
      lastError = err.message;
    });
    while (!exited && Date.now() < deadline) {
      const head = await rawOptions(port);
      if (head?.startsWith('ICAP/1.0 200') && child.pid !== undefined) {
        const pid = child.pid;
        return {
          port,
          service: '/avscan',
          pid,
          logTail,
          async stop() {
            if (child.exitCode !== null || child.signalCode !== null) return;
            child.kill('SIGTERM');
            const grace = new AbortController();
            const gone = await Promise.race([waitExit(child).then(() => true), sleep(5000, false, { signal: grace.signal }).catch(() => false)]);
            grace.abort();
            if (!gone) {
              child.kill('SIGKILL');
              await waitExit(child);
            }
          },
        };
      }
      await sleep(100);
    }
    if (!exited) {
      child.kill('SIGKILL');
      await waitExit(child);
      lastError = 'c-icap did not answer OPTIONS in time';
      break;
    }
    lastError = `c-icap exited with ${child.exitCode ?? child.signalCode}`;
  }
  throw new Error(`c-icap did not start: ${lastError}\n${logTail()}`);
}

/** Removes c-icap's directory (config, logs, temporary files). */
export async function removeCicapDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 5 });
}
