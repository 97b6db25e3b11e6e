/**
 * c-icap 0.5.10 (Debian `c-icap` + `libc-icap-mod-virus-scan`) with virus_scan and clamd_mod in
 * front of a clamd unix socket, in the foreground (`-N -D`) with its config, logs and temporary
 * files in `dir`, on a free loopback port. Used by the ICAP engine tests and the benchmark.
 */
import { writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { startPeer, tail, type PeerProcess } from './process.js';

/** Debian's c-icap (and libc-icap-mod-virus-scan) module folder; see `dpkg -L c-icap`. */
export const CICAP_LIB_DIR = '/usr/lib/x86_64-linux-gnu/c_icap';
export const CICAP_MAGIC_FILE = '/etc/c-icap/c-icap.magic';
export const CICAP_TEMPLATE_DIR = '/usr/share/c_icap/templates/';
/** The groups Debian's virus_scan config scans: other types are answered 204 unscanned once the preview shows them. */
export const PACKAGE_FILE_TYPES = 'TEXT DATA EXECUTABLE ARCHIVE DOCUMENT';
/** Every group named in c-icap.magic plus the built-in TEXT and DATA: scan everything. */
export const ALL_FILE_TYPES = 'TEXT DATA EXECUTABLE ARCHIVE DOCUMENT GRAPHICS STREAM';

export interface CicapOptions {
  dir: string;
  clamdSocket: string;
  /** virus_scan.ScanFileTypes. */
  fileTypes?: string;
  /** virus_scan.MaxObjectSize, c-icap's syntax. */
  maxObjectSize?: string;
  threads?: number;
  startTimeoutMs?: number;
  /** virus_scan's mode: `simple` (the whole body held for the verdict, the default) or `streamed`. */
  mode?: 'simple' | 'streamed';
  /** More lines at the end of c-icap.conf (e.g. virus_scan.SendPercentData for streamed mode). */
  extra?: readonly string[];
}

export interface Cicap extends PeerProcess {
  /** Service path for request lines: `/avscan`. */
  service: string;
  url: string;
  logTail(): string;
  /** The ISTag c-icap announces now, without quotes. */
  istag(): Promise<string | null>;
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

function configText(o: CicapOptions, port: number): string {
  const threads = o.threads ?? 10;
  return [
    `PidFile ${join(o.dir, 'c-icap.pid')}`,
    `CommandsSocket ${join(o.dir, 'c-icap.ctl')}`,
    'Timeout 300',
    'MaxKeepAliveRequests 0',
    'KeepAliveTimeout 600',
    // one server process: none is started or stopped in the middle of a measurement
    'StartServers 1',
    'MaxServers 1',
    `ThreadsPerChild ${threads}`,
    'MinSpareThreads 1',
    `MaxSpareThreads ${threads}`,
    // loopback only
    `Port 127.0.0.1:${port}`,
    // As root c-icap keeps running as root without a User line (checked on Debian 12, c-icap 0.5.10).
    `TmpDir ${o.dir}`,
    'MaxMemObject 131072',
    'DebugLevel 0',
    'Pipelining on',
    `ModulesDir ${CICAP_LIB_DIR}`,
    `ServicesDir ${CICAP_LIB_DIR}`,
    `TemplateDir ${CICAP_TEMPLATE_DIR}`,
    'TemplateDefaultLanguage en',
    `LoadMagicFile ${CICAP_MAGIC_FILE}`,
    `ServerLog ${join(o.dir, 'server.log')}`,
    `AccessLog ${join(o.dir, 'access.log')}`,
    'Module common clamd_mod.so',
    `clamd_mod.ClamdSocket ${o.clamdSocket}`,
    'Service antivirus_module virus_scan.so',
    `ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=${o.mode ?? 'simple'}`,
    'virus_scan.DefaultEngine clamd',
    `virus_scan.ScanFileTypes ${o.fileTypes ?? PACKAGE_FILE_TYPES}`,
    `virus_scan.MaxObjectSize ${o.maxObjectSize ?? '100M'}`,
    ...(o.extra ?? []),
    '',
  ].join('\n');
}

/** Starts c-icap in `dir` (which must exist); resolves once OPTIONS answers 200. */
export async function startCicap(o: CicapOptions): Promise<Cicap> {
  const confPath = join(o.dir, 'c-icap.conf');
  const outPath = join(o.dir, 'stdout.log');
  const logTail = () => `${tail(outPath, 1500)}\n${tail(join(o.dir, 'server.log'), 1500)}`.trim();
  const peer = await startPeer({
    name: 'c-icap',
    command: 'c-icap',
    args: ['-f', confPath, '-N', '-D'],
    writeConfig: (port) => writeFile(confPath, configText(o, port)),
    ready: async (port) => (await rawOptions(port))?.startsWith('ICAP/1.0 200') ?? false,
    outPath,
    diagnostics: logTail,
    ...(o.startTimeoutMs ? { startTimeoutMs: o.startTimeoutMs } : {}),
  });
  return {
    ...peer,
    service: '/avscan',
    url: `icap://127.0.0.1:${peer.port}/avscan`,
    logTail,
    async istag() {
      const h = await rawOptions(peer.port);
      const m = h ? /^ISTag:\s*"?([^"\r\n]*)"?\s*$/im.exec(h) : null;
      return m ? (m[1] as string) : null;
    },
  };
}
