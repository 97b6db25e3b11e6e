import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { AvgateError, errorCodeOf, messageOf } from '../../core/errors.js';
import { raceAbort } from '../../core/abort.js';
import { parseDuration, parseSize } from '../../core/units.js';
import type { DatabaseLoader, Engine, EngineOption, EngineScanResult, ScanMeta } from '../types.js';
import { ClamdConnection, clamdRequest } from './connection.js';
import { databaseFingerprint } from './fingerprint.js';
import { formatAddress, parseAddress, parseScanReply, parseVersion, pathReplyVerdict, type ClamdAddress } from './protocol.js';

export interface ClamdNetSettings {
  addresses: ClamdAddress[];
  session: boolean;
  connectTimeoutMs: number;
  chunkSizeBytes: number;
  versionCheckIntervalMs: number;
  databaseDir: string | null;
  /**
   * clamd not started by avgate: after its database files changed while VERSION stayed the same
   * (unofficial databases), nothing is cached for this long or until VERSION changes, because
   * clamd may still scan with the old files (its SelfCheck, or an updater's RELOAD, loads them).
   */
  reloadGraceMs: number;
  encryptedAsSkipped: boolean;
  /** clamd's StreamMaxLength when known: larger objects are skipped without a race with clamd. */
  streamMaxLength: number | null;
  /**
   * Objects that are files here go to clamd by path (SCAN) instead of INSTREAM: 'auto' when every
   * address is a unix socket or a loopback TCP address (clamd on this host).
   */
  scanFiles: 'auto' | 'yes' | 'no';
  /** Below this size a stream is cheaper than a file (its creation costs more than the copy). */
  scanFilesMinSize: number;
}

export const CLAMD_NET_DEFAULTS: ClamdNetSettings = {
  addresses: [],
  session: true,
  connectTimeoutMs: 5000,
  chunkSizeBytes: 256 * 1024,
  versionCheckIntervalMs: 60_000,
  databaseDir: null,
  reloadGraceMs: 720_000,
  encryptedAsSkipped: false,
  streamMaxLength: null,
  scanFiles: 'auto',
  scanFilesMinSize: 64 * 1024,
};

function parseBool(name: string, value: string): boolean {
  if (/^(yes|true|on|1)$/i.test(value)) return true;
  if (/^(no|false|off|0)$/i.test(value)) return false;
  throw new AvgateError('AVG_ERR_CONFIG', `option ${name}: expected yes or no, got "${value}"`);
}

function need<T>(name: string, value: string, parsed: T | null): T {
  if (parsed === null) throw new AvgateError('AVG_ERR_CONFIG', `option ${name}: invalid value "${value}"`);
  return parsed;
}

/** Options shared by clamd-net and clamd-file (both talk to clamd over a socket). */
export function parseClamdOptions(options: readonly EngineOption[], base: ClamdNetSettings): ClamdNetSettings {
  const s = { ...base, addresses: [...base.addresses] };
  let addressesGiven = false;
  for (const { name, value } of options) {
    switch (name) {
      case 'address': {
        if (!addressesGiven) s.addresses = [];
        addressesGiven = true;
        s.addresses.push(need(name, value, parseAddress(value)));
        break;
      }
      case 'session':
        s.session = parseBool(name, value);
        break;
      case 'connect-timeout':
        s.connectTimeoutMs = need(name, value, parseDuration(value));
        break;
      case 'chunk-size': {
        const n = need(name, value, parseSize(value));
        if (n < 1024 || n > 64 * 1024 * 1024) throw new AvgateError('AVG_ERR_CONFIG', `option chunk-size: ${value} is outside 1KiB..64MiB`);
        s.chunkSizeBytes = n;
        break;
      }
      case 'version-check-interval':
        s.versionCheckIntervalMs = need(name, value, parseDuration(value));
        break;
      case 'database-dir':
        s.databaseDir = value.length > 0 ? value : null;
        break;
      case 'reload-grace':
        s.reloadGraceMs = need(name, value, parseDuration(value));
        break;
      case 'stream-max-length':
        s.streamMaxLength = need(name, value, parseSize(value));
        break;
      case 'encrypted-as-skipped':
        s.encryptedAsSkipped = parseBool(name, value);
        break;
      case 'scan-files-min-size':
        s.scanFilesMinSize = need(name, value, parseSize(value));
        break;
      case 'scan-files':
        s.scanFiles = /^auto$/i.test(value) ? 'auto' : parseBool(name, value) ? 'yes' : 'no';
        break;
      default:
      // unknown options are ignored (plugin API contract)
    }
  }
  return s;
}

/** How soon a version read while the signature updater works is read again. */
const UPDATE_RECHECK_MS = 1000;

/**
 * Signature version of a clamd: the database part of VERSION (`27432/Sat Nov 21 ...`; clamd
 * prints only `ClamAV 1.4.6` when it has no official database). When the database directory is
 * known (the project-local clamd, or `database-dir`), a fingerprint of its files is added, so that
 * adding a signature file (unofficial databases change no VERSION) still invalidates cached
 * verdicts.
 *
 * The files can change before clamd loads them: a version naming the new files while clamd still
 * scans with the old ones would store old verdicts under the new key (a clean answer for what the
 * new signatures detect, served until cache max-age). So a changed fingerprint becomes the version
 * only once clamd has loaded it: for the project-local clamd (no SelfCheck of its own) when it is
 * the fingerprint `loader` recorded for the files clamd last loaded — otherwise the tracker has
 * the loader RELOAD clamd, which records the new one when clamd confirms; for another clamd, when
 * its VERSION changes or after `reload-grace`. Until then there is no version: nothing is cached
 * or taken from the cache.
 */
export class ClamdVersionTracker {
  private cached: { value: string | null; at: number; ttl: number } | null = null;
  private inflight: Promise<string | null> | null = null;
  /** Another clamd: the fingerprint last seen (null: take the next one read, at start or after invalidate()). */
  private loaded: string | null = null;
  /** Another clamd: a fingerprint seen changed, and the VERSION database part it came with. */
  private pending: { fp: string; base: string; since: number } | null = null;
  private reloading: Promise<void> | null = null;
  private retryAt = 0;
  /** The project-local clamd: what it loaded, and RELOAD (LocalClamd). */
  loader: DatabaseLoader | null = null;
  /** Told when a RELOAD the tracker asked for failed (the version stays unknown; tried again a check interval later). */
  onReloadError: ((err: unknown) => void) | null = null;

  constructor(private readonly settings: () => ClamdNetSettings) {}

  async get(signal?: AbortSignal): Promise<string | null> {
    const s = this.settings();
    if (this.cached && Date.now() - this.cached.at < Math.min(this.cached.ttl, s.versionCheckIntervalMs)) return this.cached.value;
    // Shared by every scan asking meanwhile: not tied to the first one's signal (its client going
    // would leave everyone without a version); each caller stops waiting on its own signal.
    this.inflight ??= this.fetch().finally(() => {
      this.inflight = null;
    });
    return raceAbort(this.inflight, signal);
  }

  /** The version last read, without asking clamd (null when none is held). */
  known(): string | null {
    return this.cached === null ? null : this.cached.value;
  }

  /**
   * Read the version again at the next scan (the updater reloaded clamd). What clamd loaded
   * comes from the loader's record; another clamd's grace after a change goes on.
   */
  invalidate(): void {
    this.cached = null;
  }

  private async fetch(): Promise<string | null> {
    const s = this.settings();
    let value: string | null;
    let ttl = Number.POSITIVE_INFINITY;
    try {
      const raw = await requestFirst(s, 'VERSION');
      const v = parseVersion(raw);
      if (s.databaseDir) {
        // With the directory known its files count too: an unofficial database added beside the
        // official ones changes no VERSION line. No fingerprint (an update under way): no version.
        const fp = await databaseFingerprint(s.databaseDir);
        const base = v.signatures ?? v.engine;
        value = fp === null ? null : await this.loadedVersion(s, base, fp);
        // An update under way, or clamd still loading: look again soon, not after the whole interval.
        if (value === null) ttl = UPDATE_RECHECK_MS;
      } else {
        value = v.signatures;
      }
    } catch {
      // Engine down: no version, so nothing is cached or taken from the cache; asked again soon,
      // so caching resumes within a second of clamd answering again.
      value = null;
      ttl = UPDATE_RECHECK_MS;
    }
    this.cached = { value, at: Date.now(), ttl };
    return value;
  }

  /** `base/db:fp` once clamd scans with the files of `fp`, else null (see the class comment). */
  private async loadedVersion(s: ClamdNetSettings, base: string, fp: string): Promise<string | null> {
    if (this.loader) {
      // What clamd loaded is recorded by whoever started or reloaded it (serve, a command, another
      // generation of engines after a config reload), so no tracker takes files on trust.
      if ((await this.loader.loadedFingerprint()) === fp) return `${base}/db:${fp}`;
      this.reload(this.loader);
      return null;
    }
    if (this.loaded === null) this.loaded = fp;
    if (fp !== this.loaded) {
      this.pending = { fp, base, since: Date.now() };
      this.loaded = fp;
    }
    const p = this.pending;
    if (p !== null && p.fp === fp && base === p.base && Date.now() - p.since < s.reloadGraceMs) return null;
    this.pending = null;
    return `${base}/db:${fp}`;
  }

  private reload(loader: DatabaseLoader): void {
    // After a RELOAD that failed (clamd refused the files), the next try waits a check interval.
    if (this.reloading || Date.now() < this.retryAt) return;
    this.reloading = loader
      .reload()
      .then(
        () => {
          this.cached = null; // read again at once: the recorded fingerprint is the files clamd took
        },
        (err: unknown) => {
          this.retryAt = Date.now() + this.settings().versionCheckIntervalMs;
          this.onReloadError?.(err);
        },
      )
      .finally(() => {
        this.reloading = null;
      });
  }
}

/** Tries each configured address in order (failover) for a one-shot command. */
export function requestFirst(s: ClamdNetSettings, command: string, signal?: AbortSignal): Promise<string> {
  return firstAnswering(s, (address) => clamdRequest(address, command, { timeoutMs: s.connectTimeoutMs, ...(signal ? { signal } : {}) }));
}

export function openFirst(s: ClamdNetSettings, session: boolean, signal?: AbortSignal): Promise<ClamdConnection> {
  return firstAnswering(s, (address) => ClamdConnection.open(address, { connectTimeoutMs: s.connectTimeoutMs, session, ...(signal ? { signal } : {}) }));
}

/**
 * The first address that answers (failover in the configured order). When none does, the error
 * names every address's failure, not only the last one's (with the last one's code).
 */
async function firstAnswering<T>(s: ClamdNetSettings, attempt: (address: ClamdAddress) => Promise<T>): Promise<T> {
  if (s.addresses.length === 0) throw new AvgateError('AVG_ERR_CONFIG', 'no clamd address configured');
  const failures: unknown[] = [];
  for (const address of s.addresses) {
    try {
      return await attempt(address);
    } catch (err) {
      failures.push(err);
    }
  }
  const last = failures.at(-1);
  if (failures.length === 1) throw last;
  throw new AvgateError(errorCodeOf(last), failures.map(messageOf).join('; '), { cause: last });
}

export function errorResult(err: unknown, bytes: number): EngineScanResult {
  return { verdict: { status: 'error', code: errorCodeOf(err), cause: messageOf(err) }, bytes };
}

/** What both clamd engines share: settings with addresses, the version tracker, PING. */
export abstract class ClamdEngineBase<S extends ClamdNetSettings> {
  protected readonly versions = new ClamdVersionTracker(() => this.settings);
  /** Connecting, sending and waiting for the reply all stop on the signal (the socket is destroyed). */
  readonly settlesOnAbort = true;
  constructor(protected settings: S) {}

  signatureVersion(signal?: AbortSignal): Promise<string | null> {
    return this.versions.get(signal);
  }

  /** For tests and the signature updater: forget the cached version now. */
  invalidateVersion(): void {
    this.versions.invalidate();
  }

  /** The project-local clamd: database files make the version only once `loader` says clamd loaded them. */
  useDatabaseLoader(loader: DatabaseLoader, onError: (err: unknown) => void): void {
    this.versions.loader = loader;
    this.versions.onReloadError = onError;
  }

  knownVersion(): string | null {
    return this.versions.known();
  }

  ping(signal?: AbortSignal): Promise<string> {
    return requestFirst(this.settings, 'PING', signal);
  }

  /** clamd's own VERSION line (`ClamAV 1.4.6/27432/Sat Nov 21 ...`), for the dashboard's engine health. */
  async version(signal?: AbortSignal): Promise<string> {
    return (await requestFirst(this.settings, 'VERSION', signal)).replace(/\0/g, '').trim();
  }

  /** The database directory when known (database-dir, or the project-local clamd's). */
  databaseDir(): string | null {
    return this.settings.databaseDir;
  }
}

/**
 * clamd-net: streams the object to clamd with INSTREAM over TCP or a unix socket. A context is a
 * connection held open in an IDSESSION (or, with `session no`, nothing: one connection per scan).
 */
export class ClamdNetEngine extends ClamdEngineBase<ClamdNetSettings> implements Engine<ClamdNetContext> {
  /** Set when clamd could not open one of our files (another user, another host): stream from then on. */
  private filesRefused: string | null = null;

  constructor() {
    super({ ...CLAMD_NET_DEFAULTS });
  }

  configure(options: readonly EngineOption[]): void {
    this.settings = parseClamdOptions(options, CLAMD_NET_DEFAULTS);
    this.filesRefused = null;
  }

  prefersFiles(size?: number): boolean {
    if (this.filesRefused !== null) return false;
    if (size !== undefined && size < this.settings.scanFilesMinSize) return false;
    const mode = this.settings.scanFiles;
    if (mode !== 'auto') return mode === 'yes';
    return this.settings.addresses.length > 0 && this.settings.addresses.every((a) => a.kind === 'unix' || isLoopbackHost(a.host));
  }

  /** Why files are streamed although scan-files allowed paths (for health output and tests). */
  get fileScanRefusal(): string | null {
    return this.filesRefused;
  }

  /**
   * SCAN of a local file in the session: clamd maps the file itself, sparing the copy through the
   * socket and its own temp file (what c-icap does with FILDES). If clamd cannot open the file
   * (it runs as another user), the file is streamed instead, now and from then on.
   */
  async scanFile(ctx: ClamdNetContext, given: string, meta: ScanMeta): Promise<EngineScanResult | null> {
    // clamd opens the path from its own working directory: always an absolute one.
    const path = resolve(given);
    if (!this.prefersFiles() || /[\n\r\0]/.test(path)) return null;
    const max = this.settings.streamMaxLength;
    const size = meta.size ?? (await stat(path)).size;
    // Same answer as INSTREAM would give: objects over StreamMaxLength are skipped, not cut.
    if (max !== null && size > max) {
      return { verdict: { status: 'skipped', reason: `engine: larger than clamd's StreamMaxLength (${max} bytes)` }, bytes: 0 };
    }
    let conn = ctx.conn;
    try {
      conn ??= await openFirst(this.settings, false, meta.signal);
      // clamd takes the path as bytes: its UTF-8 bytes go over the wire one per character.
      const wirePath = Buffer.from(path, 'utf8').toString('latin1');
      const reply = await conn.command(`SCAN ${wirePath}`, meta.signal);
      if (FILE_ACCESS_ERROR.test(reply)) {
        this.filesRefused = reply.trim();
        return null;
      }
      // The reply must name that file (a proxy or a confused clamd answering about another is unknown).
      return { verdict: pathReplyVerdict(reply, wirePath, { encryptedAsSkipped: this.settings.encryptedAsSkipped }), bytes: size };
    } catch (err) {
      return errorResult(err, 0);
    } finally {
      if (ctx.conn === null) conn?.close();
    }
  }

  info() {
    return {
      name: 'clamd-net',
      description: `ClamAV clamd by INSTREAM over ${this.settings.addresses.map(formatAddress).join(', ') || '(no address)'}`,
    };
  }

  async init(): Promise<void> {
    if (this.settings.addresses.length === 0) {
      throw new AvgateError('AVG_ERR_CONFIG', `${this.info().name}: option "address" is required`);
    }
  }

  async close(): Promise<void> {}

  async openContext(signal?: AbortSignal): Promise<ClamdNetContext> {
    if (!this.settings.session) return { conn: null };
    return { conn: await openFirst(this.settings, true, signal) };
  }

  async closeContext(ctx: ClamdNetContext): Promise<void> {
    ctx.conn?.close();
  }

  contextUsable(ctx: ClamdNetContext): boolean {
    return ctx.conn === null || ctx.conn.alive;
  }

  scan(ctx: ClamdNetContext, stream: Readable, meta: ScanMeta): Promise<EngineScanResult> {
    return this.send(ctx, stream, meta);
  }

  /** An object in memory goes out in one corked write, without a stream in between. */
  scanChunks(ctx: ClamdNetContext, chunks: readonly Buffer[], meta: ScanMeta): Promise<EngineScanResult> {
    return this.send(ctx, chunks, meta);
  }

  private async send(ctx: ClamdNetContext, source: Readable | readonly Buffer[], meta: ScanMeta): Promise<EngineScanResult> {
    const max = this.settings.streamMaxLength;
    const overLimit = (bytes: number): EngineScanResult => ({
      verdict: { status: 'skipped', reason: `engine: larger than clamd's StreamMaxLength (${max} bytes)` },
      bytes,
    });
    if (max !== null && meta.size !== undefined && meta.size > max) return overLimit(0);
    let conn = ctx.conn;
    let bytes = 0;
    try {
      conn ??= await openFirst(this.settings, false, meta.signal);
      const r = await conn.instream(source, { chunkSize: this.settings.chunkSizeBytes, signal: meta.signal, maxBytes: max });
      bytes = r.bytes;
      if (r.reply === null) return overLimit(bytes);
      return { verdict: parseScanReply(r.reply, { encryptedAsSkipped: this.settings.encryptedAsSkipped }), bytes };
    } catch (err) {
      return errorResult(err, bytes);
    } finally {
      if (ctx.conn === null) conn?.close();
    }
  }
}

/** clamd's replies when it cannot open the path it was given (not a verdict on the content). */
const FILE_ACCESS_ERROR = /(lstat\(\) failed|Access denied|Permission denied|No such file|File path check failure|Not supported file type).*ERROR\s*$/;

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

export interface ClamdNetContext {
  conn: ClamdConnection | null;
}

export function createClamdNetEngine(): Engine {
  return new ClamdNetEngine() as Engine;
}

