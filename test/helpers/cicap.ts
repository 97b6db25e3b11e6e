import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { freeLoopbackPort } from '../../src/core/net.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Debian's c-icap (and libc-icap-mod-virus-scan) module folder; see `dpkg -L c-icap`. */
export const CICAP_LIB_DIR = '/usr/lib/x86_64-linux-gnu/c_icap';
export const CICAP_MAGIC_FILE = '/etc/c-icap/c-icap.magic';
export const CICAP_TEMPLATE_DIR = '/usr/share/c_icap/templates/';

export interface TestCicap {
  port: number;
  /** icap://127.0.0.1:PORT/avscan — virus_scan with allow204=on, sizelimit=off, mode=simple. */
  url: string;
  dir: string;
  pid: number;
  /** The ISTag c-icap announces right now, without quotes (a raw OPTIONS request). */
  istag(): Promise<string | null>;
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

function configText(dir: string, port: number, clamdSocket: string): string {
  return [
    `PidFile ${join(dir, 'c-icap.pid')}`,
    `CommandsSocket ${join(dir, 'c-icap.ctl')}`,
    'Timeout 60',
    'MaxKeepAliveRequests 1000',
    'KeepAliveTimeout 600',
    'StartServers 1',
    'MaxServers 2',
    'MinSpareThreads 5',
    'MaxSpareThreads 10',
    'ThreadsPerChild 10',
    // loopback only: the test must not open a port to the network
    `Port 127.0.0.1:${port}`,
    // As root c-icap keeps running as root without a User line (checked on Debian 12, c-icap 0.5.10).
    `TmpDir ${dir}`,
    'MaxMemObject 131072',
    'DebugLevel 1',
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
    'ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple',
    'virus_scan.DefaultEngine clamd',
    // types not listed here are answered 204 without a scan once the preview shows their type
    'virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE DOCUMENT',
    'virus_scan.MaxObjectSize 100M',
    '',
  ].join('\n');
}

function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

/**
 * A real c-icap with the virus_scan service in front of the given clamd socket, in the foreground
 * (`-N -D`), with its own config, logs and temporary files in a fresh directory, on a free
 * loopback port. Resolves once the service answers OPTIONS.
 */
export async function startTestCicap(opts: { clamdSocket: string; startTimeoutMs?: number }): Promise<TestCicap> {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-cicap-'));
  const confPath = join(dir, 'c-icap.conf');
  const logPath = join(dir, 'stdout.log');
  const deadline = Date.now() + (opts.startTimeoutMs ?? 20_000);
  let lastError = 'not started';
  // The free port may be taken between probing and binding: then c-icap exits and we retry.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeLoopbackPort();
    await writeFile(confPath, configText(dir, port, opts.clamdSocket));
    const out = openSync(logPath, 'a');
    const child = spawn('c-icap', ['-f', confPath, '-N', '-D'], { stdio: ['ignore', out, out] });
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
      const head = await rawOptions(port);
      if (head?.startsWith('ICAP/1.0 200')) {
        const pid = child.pid as number;
        return {
          port,
          url: `icap://127.0.0.1:${port}/avscan`,
          dir,
          pid,
          async istag() {
            const h = await rawOptions(port);
            const m = h ? /^ISTag:\s*"?([^"\r\n]*)"?\s*$/im.exec(h) : null;
            return m ? (m[1] as string) : null;
          },
          async stop() {
            if (child.exitCode === null && child.signalCode === null) {
              process.kill(pid, 'SIGTERM');
              // the grace timer is cancelled once c-icap is gone, so it does not hold the test process
              const grace = new AbortController();
              const killed = await Promise.race([
                waitExit(child).then(() => true),
                sleep(5000, false, { signal: grace.signal }).catch(() => false),
              ]);
              grace.abort();
              if (!killed) {
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
      lastError = 'c-icap did not answer OPTIONS in time';
      break;
    }
    lastError = `c-icap exited with ${child.exitCode ?? child.signalCode}`;
  }
  const log = existsSync(logPath) ? readFileSync(logPath, 'latin1').slice(-2000) : '';
  const serverLog = existsSync(join(dir, 'server.log')) ? readFileSync(join(dir, 'server.log'), 'latin1').slice(-2000) : '';
  await rm(dir, { recursive: true, force: true });
  throw new Error(`c-icap did not start: ${lastError}\n${log}\n${serverLog}`);
}
