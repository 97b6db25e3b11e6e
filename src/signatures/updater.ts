import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, link, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { sourceFileName, type SignatureSource, type SignaturesConfig } from '../config/signatures-schema.js';
import { AvgateError, messageOf } from '../core/errors.js';
import { readJson, writeJson } from '../core/json-file.js';
import type { Logger } from '../core/logging.js';
import { VERSION } from '../core/version.js';
import { fileDigest, isDatabaseFile, UPDATING_MARKER, UPDATING_STALE_MS } from '../engines/clamd/fingerprint.js';
import { ReloadRefused } from '../engines/clamd/local.js';

/**
 * The signature updater: each configured source (one database file at an HTTP(S) URL) is fetched
 * with a conditional GET into a staging directory inside the database directory, checked (size
 * limit, SHA-256 when configured, a test load of the whole new set with clamscan), moved into place
 * with rename, and clamd is told to RELOAD. Files it installed from a source no longer configured
 * are removed. Nothing it did not install is ever touched. What it installed, with ETag and
 * Last-Modified, is kept in <state-dir>/signatures/state.json.
 */

export type SourceOutcome = 'installed' | 'unchanged' | 'failed' | 'removed';

export interface SourceReport {
  name: string;
  url: string;
  outcome: SourceOutcome;
  bytes?: number;
  sha256?: string;
  reason?: string;
}

export interface UpdateReport {
  sources: SourceReport[];
  /** Files were installed or removed. */
  changed: boolean;
  /** clamd loaded the change (false: it was not running, or nothing changed). */
  reloaded: boolean;
  /** Files were installed but clamd did not confirm the reload (counted in failed). */
  reloadError?: string;
  failed: number;
}

export interface InstalledFile {
  url: string;
  etag: string | null;
  lastModified: string | null;
  sha256: string;
  size: number;
  installedAt: string;
}

export interface UpdaterState {
  files: Record<string, InstalledFile>;
  /** The last update that ran to its end: when, and what became of each source. */
  lastRun?: { at: string; changed: boolean; reloaded: boolean; reloadError?: string; sources: SourceReport[] };
}

export interface UpdaterOptions {
  config: SignaturesConfig;
  /** The database directory clamd loads (the project-local clamd's). */
  dbDir: string;
  /** Where state.json lives (<state-dir>/signatures). */
  stateDir: string;
  /** Makes clamd load the directory again; resolves true once it has, false when it is not running. */
  reload: () => Promise<boolean>;
  log: Logger;
}

/** In the database directory: the same file system, so installing is a rename. clamd skips it. */
const STAGING = '.avgate-staging';
const STATE_FILE = 'state.json';

/** Every source with its file name (the schema has checked them: valid and unique). */
export function sourceNames(config: SignaturesConfig): Array<{ src: SignatureSource; name: string }> {
  return config.sources.map((src) => {
    const name = sourceFileName(src);
    if (name === null) throw new AvgateError('AVG_ERR_CONFIG', `signatures.sources: ${src.url}: not a database file name`);
    return { src, name };
  });
}

export async function readUpdaterState(stateDir: string): Promise<UpdaterState> {
  // A damaged file is as good as none: the next run fetches everything again.
  const parsed = await readJson<Partial<UpdaterState>>(join(stateDir, STATE_FILE), {}).catch(() => ({}) as Partial<UpdaterState>);
  const files: Record<string, InstalledFile> = {};
  if (parsed.files && typeof parsed.files === 'object') {
    // Names from the file are joined to the database directory and, for a source no longer
    // configured, deleted there: only a plain database file name (what a source may install as)
    // is taken, never `../x` or `/etc/x` from an edited or damaged file.
    for (const [name, entry] of Object.entries(parsed.files)) if (sourceFileName({ url: '', name }) === name) files[name] = entry;
  }
  return { files, ...(parsed.lastRun ? { lastRun: parsed.lastRun } : {}) };
}

type Candidate = { name: string; path: string; entry: InstalledFile };
type Fetched = { kind: 'unchanged'; entry: InstalledFile | null } | { kind: 'new'; path: string; entry: InstalledFile };

export class SignatureUpdater {
  private running: Promise<UpdateReport> | null = null;

  constructor(private readonly o: UpdaterOptions) {}

  /** One update; a call while one runs gets that one's report. */
  update(signal?: AbortSignal): Promise<UpdateReport> {
    this.running ??= this.run(signal).finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async run(signal?: AbortSignal): Promise<UpdateReport> {
    const sources = sourceNames(this.o.config);
    await mkdir(this.o.dbDir, { recursive: true });
    const staging = await this.lockStaging();
    try {
      const state = await readUpdaterState(this.o.stateDir);
      const reports: SourceReport[] = [];
      const candidates: Candidate[] = [];
      for (const { src, name } of sources) {
        try {
          const r = await this.fetchOne(src, name, state.files[name] ?? null, staging, signal);
          if (r.kind === 'new') candidates.push({ name, path: r.path, entry: r.entry });
          else {
            if (r.entry) state.files[name] = r.entry;
            reports.push({ name, url: src.url, outcome: 'unchanged' });
          }
        } catch (err) {
          if (signal?.aborted) throw err;
          reports.push({ name, url: src.url, outcome: 'failed', reason: messageOf(err) });
        }
      }
      const removed = Object.keys(state.files).filter((n) => !sources.some((s) => s.name === n));
      const accepted = await this.loadable(staging, candidates, removed, reports, signal);
      const changed = accepted.length > 0 || removed.length > 0;
      const { reloaded, reloadError } = changed ? await this.install(accepted, removed, state, reports, staging) : { reloaded: false, reloadError: null };
      state.lastRun = { at: new Date().toISOString(), changed, reloaded, sources: reports, ...(reloadError ? { reloadError } : {}) };
      await this.writeState(state);
      const report: UpdateReport = { sources: reports, changed, reloaded, failed: reports.filter((r) => r.outcome === 'failed').length + (reloadError ? 1 : 0), ...(reloadError ? { reloadError } : {}) };
      this.logReport(report);
      return report;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /**
   * The candidates that clamscan can load with the current files (all of them when test-load is
   * off). When the whole set does not load, each is tried alone; a refused one is reported failed.
   */
  private async loadable(staging: string, candidates: Candidate[], removed: string[], reports: SourceReport[], signal?: AbortSignal): Promise<Candidate[]> {
    if (!this.o.config['test-load'] || candidates.length === 0) return candidates;
    if ((await this.testLoad(staging, candidates, removed, signal)) === null) return candidates;
    const accepted: Candidate[] = [];
    for (const c of candidates) {
      const problem = await this.testLoad(staging, [c], removed, signal);
      if (problem === null) accepted.push(c);
      else reports.push({ name: c.name, url: c.entry.url, outcome: 'failed', reason: `clamscan cannot load it: ${problem}` });
    }
    return accepted;
  }

  /**
   * Renames the accepted files into place, deletes those of sources gone, writes the state (before
   * the reload, which takes seconds with large databases: a crash meanwhile leaves a state that
   * matches the files; run() writes it once more with the run's record) and reloads clamd. Meanwhile the directory has no fingerprint, so no verdict is cached under a key
   * that would outlive the old database (engines/clamd/fingerprint.ts). A reload clamd does not
   * confirm is returned, not thrown: the files are in place either way. One clamd refuses (it
   * cannot load them and scans on with the previous ones; test-load off) is undone: the files
   * this run replaced or removed were kept in staging and go back, the new ones go, and their
   * sources are reported failed — a database clamd cannot load must not wait in the directory for
   * clamd's next start, which it would fail.
   */
  private async install(
    accepted: Candidate[],
    removed: string[],
    state: UpdaterState,
    reports: SourceReport[],
    staging: string,
  ): Promise<{ reloaded: boolean; reloadError: string | null }> {
    const { dbDir } = this.o;
    const marker = join(dbDir, UPDATING_MARKER);
    await writeFile(marker, `${process.pid}\n`);
    const before = { files: { ...state.files }, reports: reports.length };
    /** Files of the directory this run replaced or removed, kept in staging until the reload is confirmed. */
    const kept: Array<{ name: string; backup: string | null }> = [];
    // A file to replace keeps its name until the rename over it (a hard link is the backup), so
    // the replacement stays atomic; one to remove is moved out.
    const keep = async (name: string, removing: boolean) => {
      const target = join(dbDir, name);
      const backup = join(staging, `${name}.previous`);
      const saved = await (removing ? rename(target, backup) : link(target, backup).catch(() => rename(target, backup))).then(() => true, () => false);
      kept.push({ name, backup: saved ? backup : null });
    };
    try {
      for (const c of accepted) {
        await keep(c.name, false);
        await rename(c.path, join(dbDir, c.name));
        state.files[c.name] = c.entry;
        reports.push({ name: c.name, url: c.entry.url, outcome: 'installed', bytes: c.entry.size, sha256: c.entry.sha256 });
      }
      for (const name of removed) {
        const url = state.files[name]?.url ?? '';
        await keep(name, true);
        delete state.files[name];
        reports.push({ name, url, outcome: 'removed' });
      }
      await this.writeState(state);
      try {
        return { reloaded: await this.o.reload(), reloadError: null };
      } catch (err) {
        if (!(err instanceof ReloadRefused)) return { reloaded: false, reloadError: messageOf(err) };
        for (const { name, backup } of kept) {
          await rm(join(dbDir, name), { force: true });
          if (backup) await rename(backup, join(dbDir, name));
        }
        state.files = before.files;
        await this.writeState(state);
        const undone = reports.splice(before.reports);
        for (const r of undone) reports.push({ name: r.name, url: r.url, outcome: 'failed', reason: `${err.message}; the previous files are back` });
        return { reloaded: false, reloadError: `${err.message}; this update was undone` };
      }
    } finally {
      await rm(marker, { force: true });
    }
  }

  private logReport(report: UpdateReport): void {
    const { log, dbDir } = this.o;
    for (const r of report.sources) {
      const fields = { source: r.name, url: r.url, ...(r.bytes !== undefined ? { bytes: r.bytes, sha256: r.sha256 } : {}), ...(r.reason ? { reason: r.reason } : {}) };
      if (r.outcome === 'failed') log.error(fields, 'signature update failed: the file in use (if any) stays');
      else if (r.outcome === 'unchanged') log.debug(fields, 'signatures unchanged');
      else log.info(fields, `signatures ${r.outcome}`);
    }
    if (report.reloadError) log.error({ dbDir, err: report.reloadError }, 'signatures installed, but clamd did not confirm the reload');
    else if (report.changed) log.info({ reloaded: report.reloaded, dbDir }, report.reloaded ? 'clamd reloaded the signatures' : 'clamd not running: it loads the new signatures when it starts');
  }

  /** Creates the staging directory, which is also the lock against a second updater. */
  private async lockStaging(): Promise<string> {
    const staging = join(this.o.dbDir, STAGING);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await mkdir(staging);
        return staging;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EEXIST') throw new AvgateError('AVG_ERR_SIGNATURES', `cannot create ${staging}: ${code ?? messageOf(err)}`);
        const st = await stat(staging).catch(() => null);
        if (st && Date.now() - st.mtimeMs < UPDATING_STALE_MS) {
          throw new AvgateError('AVG_ERR_SIGNATURES', `another signature update is running (${staging} exists)`);
        }
        await rm(staging, { recursive: true, force: true }); // left by an updater that died
      }
    }
    throw new AvgateError('AVG_ERR_SIGNATURES', `cannot create ${staging}`);
  }

  /** True when the database directory holds exactly the file `entry` describes. */
  private async intact(name: string, entry: InstalledFile): Promise<boolean> {
    const path = join(this.o.dbDir, name);
    const st = await stat(path).catch(() => null);
    if (!st?.isFile() || st.size !== entry.size) return false;
    return (await fileDigest(path).catch(() => null)) === entry.sha256;
  }

  private async fetchOne(src: SignatureSource, name: string, prev: InstalledFile | null, staging: string, signal?: AbortSignal): Promise<Fetched> {
    const cfg = this.o.config;
    const maxSize = cfg['max-size'];
    // The file in the directory must still be the one installed (a damaged or edited file is
    // fetched again whole, as freshclam does, not kept because the server says 304).
    const installed = prev !== null && prev.url === src.url && (await this.intact(name, prev));
    const headers: Record<string, string> = { 'user-agent': `avgate/${VERSION}` };
    if (installed && prev) {
      if (prev.etag) headers['if-none-match'] = prev.etag;
      if (prev.lastModified) headers['if-modified-since'] = prev.lastModified;
    }
    const timeout = AbortSignal.timeout(cfg.timeout);
    const res = await fetchFollowing(src.url, headers, signal ? AbortSignal.any([signal, timeout]) : timeout).catch((err: unknown) => {
      if (err instanceof RedirectRefused) throw err;
      throw new Error(timeout.aborted ? `no answer within signatures.timeout (${cfg.timeout} ms)` : `cannot fetch: ${messageOf((err as { cause?: unknown }).cause ?? err)}`, { cause: err });
    });
    if (res.status === 304 && installed) {
      await res.body?.cancel();
      return { kind: 'unchanged', entry: null };
    }
    if (res.status !== 200 || !res.body) {
      await res.body?.cancel();
      throw new Error(`HTTP ${res.status} ${res.statusText}`.trim());
    }
    const declared = Number(res.headers.get('content-length') ?? NaN);
    if (Number.isFinite(declared) && declared > maxSize) {
      await res.body.cancel();
      throw new Error(`${declared} bytes, over signatures.max-size (${maxSize})`);
    }
    const path = join(staging, `${name}.part`);
    const hash = createHash('sha256');
    let bytes = 0;
    const count = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        bytes += chunk.length;
        if (bytes > maxSize) cb(new Error(`over signatures.max-size (${maxSize} bytes)`));
        else {
          hash.update(chunk);
          cb(null, chunk);
        }
      },
    });
    try {
      await pipeline(Readable.fromWeb(res.body as WebReadableStream<Uint8Array>), count, createWriteStream(path));
    } catch (err) {
      throw new Error(timeout.aborted ? `not complete within signatures.timeout (${cfg.timeout} ms)` : messageOf(err), { cause: err });
    }
    const sha256 = hash.digest('hex');
    if (bytes === 0) throw new Error('the file is empty');
    if (src.sha256 !== null && sha256 !== src.sha256.toLowerCase()) throw new Error(`SHA-256 ${sha256} is not the configured ${src.sha256.toLowerCase()}`);
    const entry: InstalledFile = {
      url: src.url,
      etag: res.headers.get('etag'),
      lastModified: res.headers.get('last-modified'),
      sha256,
      size: bytes,
      installedAt: new Date().toISOString(),
    };
    // A server without conditional GET: the same bytes again are not a change.
    if (installed && prev?.sha256 === sha256) {
      await rm(path, { force: true });
      return { kind: 'unchanged', entry: { ...entry, installedAt: prev.installedAt } };
    }
    return { kind: 'new', path, entry };
  }

  /**
   * Loads the database directory as it would be after installing `files` (and removing `removed`)
   * with clamscan, scanning nothing. Null when it loads; else clamscan's complaint.
   */
  private async testLoad(staging: string, files: Array<{ name: string; path: string }>, removed: string[], signal?: AbortSignal): Promise<string | null> {
    const dir = join(staging, `test-${process.pid}-${Date.now()}`);
    await mkdir(dir);
    try {
      const replaced = new Set([...files.map((f) => f.name), ...removed]);
      for (const name of await readdir(this.o.dbDir)) {
        if (isDatabaseFile(name) && !replaced.has(name)) await linkOrCopy(join(this.o.dbDir, name), join(dir, name));
      }
      for (const f of files) await linkOrCopy(f.path, join(dir, f.name));
      return await runClamscan(this.o.config.clamscan, dir, this.o.config['test-load-timeout'], signal);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  private writeState(state: UpdaterState): Promise<void> {
    return writeJson(join(this.o.stateDir, STATE_FILE), state);
  }
}

async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch {
    await copyFile(from, to);
  }
}

/** clamscan with only `dir` as its database, reading an empty stdin: exit 0 when it loads. */
function runClamscan(clamscan: string, dir: string, timeoutMs: number, signal?: AbortSignal): Promise<string | null> {
  return new Promise((resolve) => {
    const child = spawn(clamscan, ['--no-summary', `--database=${dir}`, '-'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    const keep = (d: Buffer) => {
      out = (out + d.toString()).slice(-2000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.stdin.on('error', () => undefined);
    child.stdin.end();
    let why: string | null = null;
    const stop = (reason: string) => {
      why ??= reason;
      child.kill('SIGKILL');
    };
    const timer = setTimeout(() => stop(`no result within signatures.test-load-timeout (${timeoutMs} ms)`), timeoutMs);
    const onAbort = () => stop('update aborted');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.once('error', (err) => {
      why ??= `cannot run ${clamscan}: ${err.message}`;
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (why !== null) resolve(why);
      else if (code === 0) resolve(null);
      else {
        const lines = out
          .split(dir + '/')
          .join('')
          .split('\n')
          .map((l) => l.replace(/^(LibClamAV )?Error: /i, '').trim())
          .filter((l) => l.length > 0 && !/^stdin: /.test(l));
        resolve(lines.slice(-3).join(' | ') || `clamscan exit code ${code}`);
      }
    });
  });
}

/** Redirects followed per download; more is a loop. */
const MAX_REDIRECTS = 5;

class RedirectRefused extends Error {}

/**
 * Whether a source at `from` may send the updater on to `to`: https only to https (a downgrade
 * would let anyone on the path hand clamd a database of their own), http to http or https.
 */
export function redirectAllowed(from: URL, to: URL): boolean {
  if (to.protocol === 'https:') return true;
  return to.protocol === 'http:' && from.protocol === 'http:';
}

/** GET with redirects followed by hand (redirectAllowed, MAX_REDIRECTS); the final response. */
async function fetchFollowing(start: string, headers: Record<string, string>, signal: AbortSignal): Promise<Response> {
  let url = new URL(start);
  for (let hop = 0; ; hop++) {
    const res = await fetch(url, { headers, redirect: 'manual', signal });
    const location = res.status >= 300 && res.status < 400 && res.status !== 304 ? res.headers.get('location') : null;
    if (location === null) return res;
    await res.body?.cancel();
    if (hop >= MAX_REDIRECTS) throw new RedirectRefused(`more than ${MAX_REDIRECTS} redirects`);
    const next = new URL(location, url);
    if (!redirectAllowed(url, next)) throw new RedirectRefused(`redirect from ${url.protocol} to ${next.protocol} refused`);
    url = next;
  }
}
