import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { setImmediate } from 'node:timers/promises';
import { PassThrough, pipeline, Readable, Transform, type TransformCallback } from 'node:stream';
import { engineSetKey, type VerdictCache } from '../cache/verdict-cache.js';
import { ContentHasher } from '../core/content-hash.js';
import { raceAbort } from '../core/abort.js';
import { AvgateError, errorCodeOf, messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import { Semaphore } from '../core/semaphore.js';
import { combineVerdicts, type Verdict, type VerdictResult } from '../core/verdict.js';
import { ContextPool } from '../engines/pool.js';
import type { Engine, EngineScanResult } from '../engines/types.js';
import type { ScanOrigin, StatsRecorder } from '../stats/types.js';
import type { ScanRequest, ScanService, ScanSource } from './types.js';

export interface ScannerLimits {
  /** Objects larger than this are skipped without contacting an engine (bytes). */
  maxCheckedSize: number;
  /** One scan (all engines) may take this long before it is an error (ms): clamd's MaxCheckTime idea. */
  scanTimeoutMs: number;
  /** Scans running at once. */
  maxConcurrentScans: number;
  /** Scans waiting for a slot; one more is refused at once (error, AVG_ERR_QUEUE_FULL). */
  maxQueue: number;
  /** Idle engine contexts (connections) are closed after this long (ms). */
  contextIdleTimeoutMs: number;
}

export interface ScannerEngine {
  id: string;
  engine: Engine;
  /** false (`engines.<id>.cache`): verdicts of scanners with this engine are never cached. */
  cache?: boolean;
}

export interface ScannerCounters {
  scans: number;
  bytes: number;
  byStatus: Record<Verdict['status'], number>;
  cacheHits: number;
}

/** Transient failures after which a re-readable object is tried once more on a fresh context. */
const RETRY_CODES = new Set(['AVG_ERR_ENGINE_RESET', 'AVG_ERR_ENGINE_PROTOCOL']);

/** Look-ups the cache hit rate is averaged over (exponential moving average). */
const HIT_WINDOW = 32;

class SizeLimitExceeded extends Error {}

/** Counts bytes, feeds the hash, and stops the flow when the object outgrows max-checked-size. */
class Meter extends Transform {
  bytes = 0;
  constructor(
    private readonly limit: number,
    private readonly hash: ContentHasher | null,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limit) {
      cb(new SizeLimitExceeded(`larger than max-checked-size (${this.limit} bytes)`));
      return;
    }
    this.hash?.update(chunk);
    cb(null, chunk);
  }
}

export interface ScannerOptions {
  /** Told about every verdict (cache hits too). */
  stats?: StatsRecorder | null;
  /** The origin of requests that name none (the CLI's scanner: fs); default api. */
  defaultOrigin?: ScanOrigin;
}

interface EngineSlot extends ScannerEngine {
  pool: ContextPool<unknown>;
}

/**
 * The scanning core every front end calls: limits, verdict cache, engine pools, timeouts and
 * the combination of several engines' verdicts. It never throws for a scan: every failure is a
 * verdict (error, skipped, unknown) that policy can act on.
 */
export class Scanner implements ScanService {
  private readonly engines: EngineSlot[];
  /** The engines' ids joined by '+': the `engine` of every verdict this scanner gives. */
  private readonly engineLabel: string;
  private readonly semaphore: Semaphore;
  /** Share of recent cache look-ups that hit (moving average over about HIT_WINDOW look-ups). */
  private hitRate = 0;
  readonly counters: ScannerCounters = {
    scans: 0,
    bytes: 0,
    byStatus: { free: 0, found: 0, skipped: 0, unknown: 0, error: 0 },
    cacheHits: 0,
  };

  constructor(
    engines: ScannerEngine[],
    private readonly limits: ScannerLimits,
    private readonly cache: VerdictCache | null,
    private readonly log: Logger,
    private readonly options: ScannerOptions = {},
  ) {
    if (engines.length === 0) throw new AvgateError('AVG_ERR_CONFIG', 'a scanner needs at least one engine');
    this.engines = engines.map((e) => ({
      ...e,
      pool: new ContextPool<unknown>(e.engine, {
        maxSize: limits.maxConcurrentScans,
        idleTimeoutMs: limits.contextIdleTimeoutMs,
      }),
    }));
    this.engineLabel = this.engines.map((e) => e.id).join('+');
    this.semaphore = new Semaphore(limits.maxConcurrentScans, limits.maxQueue);
  }

  get wantsHash(): boolean {
    return this.cache !== null;
  }

  /**
   * True when an object about to arrive will most likely need an engine: there is no verdict
   * cache, or fewer than half of its recent look-ups hit. Front ends use it to prepare the
   * engine's input while the object is still arriving (Spool.startScanCopy) — work that a cache
   * hit would waste.
   */
  get engineLikely(): boolean {
    return this.cache === null || this.hitRate < 0.5;
  }

  get concurrency(): number {
    return this.limits.maxConcurrentScans;
  }

  async unreachable(signal?: AbortSignal): Promise<Verdict | null> {
    const started = performance.now();
    const engines = this.engines.map((e) => e.engine);
    if (engines.length === 0 || engines.some((e) => e.ping === undefined)) return null;
    try {
      await Promise.any(engines.map((e) => raceAbort((e.ping as NonNullable<typeof e.ping>).call(e, signal), signal)));
      return null;
    } catch (err) {
      const errors: unknown[] = err instanceof AggregateError ? err.errors : [err];
      // Only an engine that cannot be reached at all counts as down: a slow answer under load is
      // no reason to refuse an object its scan may still pass.
      if (!errors.every((e) => errorCodeOf(e) === 'AVG_ERR_ENGINE_CONNECT')) return null;
      const causes = errors.map(messageOf);
      return {
        status: 'error',
        code: 'AVG_ERR_ENGINE_CONNECT',
        cause: `no engine answers: ${causes.join('; ')}`,
        engine: this.engines.map((e) => e.id).join('+'),
        signatureVersion: null,
        durationMs: performance.now() - started,
        bytes: 0,
        cached: false,
      };
    }
  }

  /**
   * True when every engine reads local files itself (clamd SCAN) and, for an object of `size`
   * bytes, that beats a stream: worth writing the object to a file.
   */
  prefersFiles(size?: number): boolean {
    return this.engines.every((e) => e.engine.prefersFiles?.(size) === true);
  }

  get engineIds(): string[] {
    return this.engines.map((e) => e.id);
  }

  async scan(request: ScanRequest): Promise<Verdict> {
    this.inFlight++;
    try {
      return await this.scanCounted(request);
    } finally {
      if (--this.inFlight === 0) this.drained?.();
    }
  }

  /** Scans running now; close() waits for them (each is bounded by scan-timeout). */
  private inFlight = 0;
  private drained: (() => void) | null = null;

  private async scanCounted(request: ScanRequest): Promise<Verdict> {
    const started = performance.now();
    const engines = await this.scanInner(request, started);
    const verdict = request.verdictOf ? request.verdictOf(engines) : engines;
    this.count(request, verdict);
    return verdict;
  }

  note(verdict: Verdict, request: Pick<ScanRequest, 'name' | 'origin'>): void {
    this.count(request, verdict);
  }

  /** Counters, the statistics event and the scan log line of one verdict. */
  private count(request: Pick<ScanRequest, 'name' | 'origin'>, verdict: Verdict): void {
    this.counters.scans++;
    this.counters.bytes += verdict.bytes;
    this.counters.byStatus[verdict.status]++;
    if (verdict.cached) this.counters.cacheHits++;
    // A scan its caller gave up answers nobody: no statistics event, no warning.
    const abandoned = verdict.status === 'error' && verdict.code === 'AVG_ERR_ABORTED';
    if (this.options.stats && !abandoned) this.report(this.options.stats, request, verdict);
    const level = (verdict.status === 'error' && !abandoned) || verdict.status === 'unknown' ? 'warn' : 'debug';
    // The line's object is built only when it is written (debug is off in production).
    if (!this.log.isLevelEnabled(level)) return;
    this.log[level](
      {
        name: request.name,
        status: verdict.status,
        engine: verdict.engine,
        ms: Math.round(verdict.durationMs),
        bytes: verdict.bytes,
        cached: verdict.cached,
        ...(verdict.status === 'found' ? { names: verdict.names } : {}),
        ...(verdict.status === 'error' ? { code: verdict.code, cause: verdict.cause } : {}),
        ...(verdict.status === 'unknown' ? { raw: verdict.raw.slice(0, 200) } : {}),
        ...(verdict.status === 'skipped' ? { reason: verdict.reason } : {}),
      },
      'scan',
    );
  }

  /** One event per verdict; a recorder's trouble never reaches the scan. */
  private report(stats: StatsRecorder, request: Pick<ScanRequest, 'name' | 'origin'>, verdict: Verdict): void {
    const origin = request.origin ?? this.options.defaultOrigin ?? { source: 'api' };
    try {
      stats.record({
        time: Date.now(),
        source: origin.source,
        status: verdict.status,
        virus: verdict.status === 'found' ? (verdict.names[0] ?? null) : null,
        group: origin.group ?? null,
        engine: verdict.engine,
        bytes: verdict.bytes,
        durationMs: verdict.durationMs,
        cached: verdict.cached,
        subject: verdict.status === 'free' ? null : (request.name ?? null),
      });
    } catch (err) {
      this.log.debug({ err: messageOf(err) }, 'statistics recorder failed');
    }
  }

  private async scanInner(request: ScanRequest, started: number): Promise<Verdict> {
    const { source } = request;
    const finish = (result: VerdictResult, bytes: number, version: string | null, cached = false): Verdict => ({
      ...result,
      engine: this.engineLabel,
      signatureVersion: version,
      durationMs: performance.now() - started,
      bytes,
      cached,
    });

    let size: number | null;
    try {
      size = source.kind === 'chunks' || source.kind === 'buffer' ? memorySize(source) : await sourceSize(source);
    } catch (err) {
      return finish({ status: 'error', code: 'AVG_ERR_SOURCE', cause: messageOf(err) }, 0, null);
    }
    if (size !== null && size > this.limits.maxCheckedSize) {
      return finish({ status: 'skipped', reason: `larger than max-checked-size (${this.limits.maxCheckedSize} bytes)` }, 0, null);
    }

    // Cache look-up needs the hash first: possible for what can be read twice.
    let versions: Array<string | null> = [];
    let hash: string | null = null;
    if (this.cache) {
      versions = await this.versionsWithin(request.signal, started);
      if (source.kind !== 'stream' && request.hashWhileScanning && request.hash === undefined) {
        return this.scanWhileHashing(this.cache, { ...request, source }, versions, size, finish, started);
      }
      if (source.kind !== 'stream') {
        try {
          hash = request.hash ?? (await hashSource(source));
        } catch (err) {
          return finish({ status: 'error', code: 'AVG_ERR_SOURCE', cause: messageOf(err) }, 0, null);
        }
        const key = this.cacheKey(versions);
        if (key) {
          let hit = this.cache.get(hash, key);
          // Only a local miss with a shared level (Redis) waits, at most its timeout.
          const shared = hit ? null : this.cache.getShared(hash, key);
          if (shared) hit = await shared;
          this.hitRate += ((hit ? 1 : 0) - this.hitRate) / HIT_WINDOW;
          if (hit) return finish(hit, size ?? 0, versionLabel(versions), true);
        }
      }
    }

    return this.engineScan(request, versions, hash, size, finish, started);
  }

  /**
   * The engines start at once; the hash is computed meanwhile (in slices, so the engines' I/O goes
   * on) and looked up (the shared level too, raced against the engines): a hit answers and stops
   * the engines, a miss waits for them and caches their verdict under the hash.
   */
  private async scanWhileHashing(
    cache: VerdictCache,
    request: ScanRequest & { source: Exclude<ScanSource, { kind: 'stream' }> },
    versions: Array<string | null>,
    size: number | null,
    finish: (result: VerdictResult, bytes: number, version: string | null, cached?: boolean) => Verdict,
    started: number,
  ): Promise<Verdict> {
    const stop = new AbortController();
    const onCallerAbort = () => stop.abort(request.signal?.reason);
    if (request.signal?.aborted) onCallerAbort();
    request.signal?.addEventListener('abort', onCallerAbort, { once: true });
    try {
      const hashing = hashSource(request.source, true);
      const engines = this.engineScan({ ...request, signal: stop.signal }, versions, hashing, size, finish, started);
      let hash: string;
      try {
        hash = await hashing;
      } catch {
        return await engines; // unreadable for the hash: the engines say what they can
      }
      const key = this.cacheKey(versions);
      let hit = key ? cache.get(hash, key) : null;
      const shared = hit || !key ? null : cache.getShared(hash, key);
      // The engines are already at work: whichever answers first, the shared level or they, wins.
      if (shared) hit = await Promise.race([shared, engines.then(() => null, () => null)]);
      if (key) this.hitRate += ((hit ? 1 : 0) - this.hitRate) / HIT_WINDOW;
      if (!hit) return await engines;
      stop.abort(new Error('answered from the verdict cache'));
      await engines; // settles at once: nothing of the object is in use when the caller frees it
      return finish(hit, size ?? 0, versionLabel(versions), true);
    } finally {
      request.signal?.removeEventListener('abort', onCallerAbort);
    }
  }

  /** Runs the engines under the concurrency limit and caches what they say (free or found). */
  private async engineScan(
    request: ScanRequest,
    versions: Array<string | null>,
    known: string | null | Promise<string>,
    size: number | null,
    finish: (result: VerdictResult, bytes: number, version: string | null, cached?: boolean) => Verdict,
    started: number,
  ): Promise<Verdict> {
    const { source } = request;
    let release: () => void;
    const queued = performance.now();
    try {
      release = await this.semaphore.acquire(request.signal);
    } catch (err) {
      return finish({ status: 'error', code: errorCodeOf(err), cause: messageOf(err) }, 0, null);
    }
    // scan-timeout runs from the scan's start (the signature versions included), the wait for a
    // free slot (max-concurrent-scans) excepted.
    const spentMs = queued - started;
    try {
      const hasher = this.cache && source.kind === 'stream' ? new ContentHasher() : null;
      if (request.toFile && source.kind !== 'stream' && source.kind !== 'file' && this.prefersFiles(size ?? undefined)) {
        try {
          const path = await request.toFile();
          request = { ...request, source: { kind: 'file', path, ...(size !== null ? { size } : {}) } };
        } catch (err) {
          this.log.warn({ err: messageOf(err) }, 'could not write the object to a file for the engine; streaming it');
        }
      }
      const run = await this.runEngines(request, hasher, versions, spentMs);
      const combined = combineVerdicts(run.verdicts);
      if (run.sizeExceeded) {
        return finish({ status: 'skipped', reason: `larger than max-checked-size (${this.limits.maxCheckedSize} bytes)` }, run.bytes, null);
      }
      // Cache only when the versions did not move during the scan.
      if (this.cache && (combined.status === 'free' || combined.status === 'found')) {
        const key = this.cacheKey(versions);
        const h = (await Promise.resolve(known).catch(() => null)) ?? (hasher && run.complete ? hasher.digest() : null);
        if (key && h && !request.signal?.aborted && this.versionsHeld(versions)) this.cache.set(h, key, combined);
      }
      return { ...combined, durationMs: performance.now() - started, bytes: run.bytes };
    } finally {
      release();
    }
  }

  async signatureKey(signal?: AbortSignal): Promise<string | null> {
    if (!this.cache) return null;
    const versions = await Promise.all(this.engines.map((e) => e.engine.signatureVersion(signal)));
    return this.cacheKey(versions);
  }

  private cacheKey(versions: Array<string | null>): string | null {
    if (versions.some((v) => v === null)) return null; // engine cannot tell: never cache
    if (this.engines.some((e) => e.cache === false)) return null;
    const last = this.lastKey;
    if (last && last.versions.length === versions.length && last.versions.every((v, i) => v === versions[i])) return last.key;
    const key = engineSetKey(this.engines.map((e, i) => ({ id: e.id, version: versions[i] as string })));
    this.lastKey = { versions: [...versions], key };
    return key;
  }

  /** The key of the last versions seen: they change only with a signature update. */
  private lastKey: { versions: Array<string | null>; key: string } | null = null;

  /**
   * The engines' signature versions within scan-timeout from `started`: one that does not come in
   * time (an engine that accepts connections but does not answer) is null, so nothing is cached,
   * and the scan itself then runs out of time at once.
   */
  private versionsWithin(caller: AbortSignal | undefined, started: number): Promise<Array<string | null>> {
    return withDeadline(caller, this.limits.scanTimeoutMs - (performance.now() - started), (signal) =>
      Promise.all(this.engines.map((e) => raceAbort(e.engine.signatureVersion(signal), signal).catch(() => null))),
    );
  }

  /** Feeds the object to every engine at once (a stream is split with backpressure). */
  private async runEngines(
    request: ScanRequest,
    hasher: ContentHasher | null,
    versions: ReadonlyArray<string | null>,
    spentMs: number,
  ): Promise<{ verdicts: Verdict[]; bytes: number; sizeExceeded: boolean; complete: boolean }> {
    return withDeadline(request.signal, this.limits.scanTimeoutMs - spentMs, (signal) => this.runEnginesWith(request, hasher, signal, versions));
  }

  private async runEnginesWith(
    request: ScanRequest,
    hasher: ContentHasher | null,
    signal: AbortSignal,
    versions: ReadonlyArray<string | null>,
  ): Promise<{ verdicts: Verdict[]; bytes: number; sizeExceeded: boolean; complete: boolean }> {
    const { source } = request;
    let meter: Meter | null = null;
    let branches: Array<() => Readable>;
    if (source.kind === 'stream') {
      meter = new Meter(this.limits.maxCheckedSize, hasher);
      // Errors (the source failing, the size limit) reach the engine through its read of `meter`.
      const metered = pipeline(source.stream, meter, () => undefined);
      if (this.engines.length === 1) {
        branches = [() => metered];
      } else {
        const outs = this.engines.map(() => new PassThrough());
        tee(metered, outs);
        branches = outs.map((o) => () => o);
      }
    } else {
      branches = this.engines.map(() => () => openSource(source));
    }
    const file = source.kind === 'file' ? source : null;
    const memory = source.kind === 'chunks' ? source.chunks : source.kind === 'buffer' ? [source.data] : null;
    const rereadable = source.kind !== 'stream';
    const verdicts = await Promise.all(
      this.engines.map((slot, i) =>
        this.runOne(slot, request, signal, { open: branches[i] as () => Readable, rereadable, file, memory, version: versions[i] }),
      ),
    );
    const sizeExceeded = meter !== null && meter.bytes > this.limits.maxCheckedSize;
    const bytes = meter ? meter.bytes : Math.max(...verdicts.map((v) => v.bytes));
    return { verdicts, bytes, sizeExceeded, complete: meter !== null && meter.writableFinished && !sizeExceeded };
  }

  /** True unless an engine now knows another signature version than the one read before the scan. */
  private versionsHeld(versions: ReadonlyArray<string | null>): boolean {
    for (let i = 0; i < this.engines.length; i++) {
      const known = (this.engines[i] as EngineSlot).engine.knownVersion?.();
      if (known !== undefined && known !== versions[i]) return false;
    }
    return true;
  }

  /** Why the scan's signal fired: the caller gave up (AVG_ERR_ABORTED), else scan-timeout. */
  private abortedVerdict(request: ScanRequest): VerdictResult {
    if (request.signal?.aborted) return { status: 'error', code: 'AVG_ERR_ABORTED', cause: 'the caller gave up the scan (client gone or session closed)' };
    return { status: 'error', code: 'AVG_ERR_ENGINE_TIMEOUT', cause: `scan timeout (${this.limits.scanTimeoutMs} ms)` };
  }

  private async runOne(slot: EngineSlot, request: ScanRequest, signal: AbortSignal, input: EngineInput): Promise<Verdict> {
    const { open, rereadable, file, memory } = input;
    const started = performance.now();
    // Read just before by the caller when the verdict cache is on.
    const version = input.version !== undefined ? input.version : await slot.engine.signatureVersion(signal).catch(() => null);
    const done = (r: EngineScanResult): Verdict => ({
      ...r.verdict,
      engine: slot.id,
      signatureVersion: version,
      durationMs: performance.now() - started,
      bytes: r.bytes,
      cached: false,
    });
    // An engine that stops on the signal by itself needs no race (one listener fewer per call).
    const settle = <T>(p: Promise<T>): Promise<T> => (slot.engine.settlesOnAbort === true ? p : raceAbort(p, signal));
    for (let attempt = 1; ; attempt++) {
      let ctx: unknown;
      try {
        ctx = await slot.pool.acquire(signal);
      } catch (err) {
        if (!rereadable) open().destroy(); // release this engine's share of the stream
        if (signal.aborted) return done({ verdict: this.abortedVerdict(request), bytes: 0 });
        return done({ verdict: { status: 'error', code: errorCodeOf(err), cause: messageOf(err) }, bytes: 0 });
      }
      const meta = { ...(request.name ? { name: request.name } : {}), ...(file?.size !== undefined ? { size: file.size } : {}), signal };
      // A local file goes by path to engines that read files themselves (no stream is opened).
      let byPath: EngineScanResult | null = null;
      if (file && slot.engine.scanFile) {
        try {
          byPath = await settle(slot.engine.scanFile(ctx, file.path, meta));
        } catch (err) {
          byPath = { verdict: { status: 'error', code: errorCodeOf(err), cause: messageOf(err) }, bytes: 0 };
        }
      }
      // An object in memory goes to engines that take its pieces without a stream.
      const pieces = !byPath && memory && slot.engine.scanChunks ? memory : null;
      const stream = byPath || pieces ? null : open();
      const onAbort = () => stream?.destroy();
      if (stream) signal.addEventListener('abort', onAbort, { once: true });
      let result: EngineScanResult;
      try {
        result =
          byPath ??
          (await settle(pieces && slot.engine.scanChunks ? slot.engine.scanChunks(ctx, pieces, meta) : slot.engine.scan(ctx, stream as Readable, meta)));
      } catch (err) {
        result = { verdict: { status: 'error', code: errorCodeOf(err), cause: messageOf(err) }, bytes: 0 };
      } finally {
        if (stream) signal.removeEventListener('abort', onAbort);
      }
      // A plugin's answer is not trusted to have the shape the rest relies on (a malformed one
      // would break the front end, or be cached).
      result = checkedResult(result, slot.id);
      if (signal.aborted && result.verdict.status === 'error') result = { verdict: this.abortedVerdict(request), bytes: result.bytes };
      if (signal.aborted || !slot.engine.contextUsable(ctx)) void slot.pool.discard(ctx);
      else slot.pool.release(ctx);
      // Whatever the engine left unread is not wanted any more (for a tee branch: lets the others go on).
      if (stream && !stream.destroyed) stream.destroy();
      const v = result.verdict;
      if (v.status === 'error' && RETRY_CODES.has(v.code) && rereadable && attempt === 1 && !signal.aborted) {
        this.log.info({ engine: slot.id, code: v.code, cause: v.cause }, 'engine connection failed, retrying on a new one');
        continue;
      }
      return done(result);
    }
  }

  /**
   * Closes the engines' connection pools; with `waitForScans` once the scans in flight are done
   * (a reload: a scanning-API request may still hold the old generation's scanner). A stop does
   * not wait: its front ends have ended their connections.
   */
  async close(opts: { waitForScans?: boolean } = {}): Promise<void> {
    if (opts.waitForScans && this.inFlight > 0) await new Promise<void>((r) => (this.drained = r));
    await Promise.all(this.engines.map((e) => e.pool.close()));
  }
}

/** What one engine is given to scan (see runOne). */
interface EngineInput {
  /** Opens the object as a stream (a tee branch for a streamed object). */
  open: () => Readable;
  /** The object can be read again (a retry on a new connection is possible). */
  rereadable: boolean;
  /** A local file: engines that read files take its path. */
  file: { path: string; size?: number } | null;
  /** An object in memory: engines with scanChunks take its pieces. */
  memory: readonly Buffer[] | null;
  /** The engine's signature version when already known (undefined: ask the engine). */
  version: string | null | undefined;
}

function versionLabel(versions: Array<string | null>): string | null {
  return versions.length === 1 ? (versions[0] ?? null) : versions.map((v) => v ?? '-').join('+');
}

/** Size of an object in memory (no await needed). */
function memorySize(source: Extract<ScanSource, { kind: 'buffer' | 'chunks' }>): number {
  if (source.kind === 'buffer') return source.data.length;
  let n = 0;
  for (const c of source.chunks) n += c.length;
  return n;
}

async function sourceSize(source: ScanSource): Promise<number | null> {
  switch (source.kind) {
    case 'buffer':
    case 'chunks':
      return memorySize(source);
    case 'file':
      return source.size ?? (await stat(source.path)).size;
    case 'stream':
      return source.size ?? null;
  }
}

function openSource(source: Exclude<ScanSource, { kind: 'stream' }>): Readable {
  if (source.kind === 'file') return createReadStream(source.path, { highWaterMark: 256 * 1024 });
  return Readable.from(source.kind === 'chunks' ? source.chunks : [source.data]);
}

/** Bytes hashed between two turns of the event loop when hashing alongside a scan. */
const HASH_SLICE = 256 * 1024;

/** The content hash (core/content-hash.ts) of a re-readable source; `yielding`: memory is hashed in slices, a turn of the event loop before each. */
async function hashSource(source: Exclude<ScanSource, { kind: 'stream' }>, yielding = false): Promise<string> {
  const h = new ContentHasher();
  if (source.kind === 'buffer' || source.kind === 'chunks') {
    const chunks = source.kind === 'buffer' ? [source.data] : source.chunks;
    for (const c of chunks) {
      if (!yielding) h.update(c);
      else
        for (let off = 0; off < c.length; off += HASH_SLICE) {
          await setImmediate();
          h.update(c.subarray(off, off + HASH_SLICE));
        }
    }
    return h.digest();
  }
  for await (const chunk of createReadStream(source.path, { highWaterMark: 256 * 1024 })) h.update(chunk as Buffer);
  return h.digest();
}


/**
 * Copies one stream into several, pausing the source until every live branch has drained.
 * A branch that is destroyed (its engine finished or failed early) no longer holds the others back.
 */
function tee(source: Readable, outs: PassThrough[]): void {
  let waiting = 0;
  source.on('data', (chunk: Buffer) => {
    for (const o of outs) {
      if (o.destroyed) continue;
      if (!o.write(chunk)) {
        waiting++;
        const done = () => {
          o.off('drain', done);
          o.off('close', done);
          if (--waiting === 0) source.resume();
        };
        o.on('drain', done);
        o.on('close', done);
      }
    }
    if (waiting > 0) source.pause();
  });
  source.once('end', () => outs.forEach((o) => o.destroyed || o.end()));
  source.once('error', (err) => outs.forEach((o) => o.destroy(err)));
}

/**
 * The engine's result if it is one of the five verdicts with its fields of the right types, else
 * an error verdict naming the engine and what was wrong (AVG_ERR_ENGINE_FAILED: never cached).
 */
export function checkedResult(r: unknown, engine: string): EngineScanResult {
  const why = resultProblem(r);
  if (why === null) return r as EngineScanResult;
  return { verdict: { status: 'error', code: 'AVG_ERR_ENGINE_FAILED', cause: `engine ${engine} returned an invalid result: ${why}` }, bytes: 0 };
}

function resultProblem(r: unknown): string | null {
  if (typeof r !== 'object' || r === null) return `${r === null ? 'null' : typeof r} instead of { verdict, bytes }`;
  const { verdict: v, bytes } = r as { verdict?: unknown; bytes?: unknown };
  if (typeof bytes !== 'number' || !Number.isFinite(bytes) || bytes < 0) return 'bytes is not a number of bytes';
  if (typeof v !== 'object' || v === null) return 'no verdict object';
  const o = v as Record<string, unknown>;
  const text = (k: string) => typeof o[k] === 'string';
  switch (o['status']) {
    case 'free':
      return null;
    case 'found':
      return Array.isArray(o['names']) && o['names'].length > 0 && o['names'].every((n) => typeof n === 'string' && n !== '') ? null : 'found without names (a non-empty array of strings)';
    case 'skipped':
      return text('reason') ? null : 'skipped without a reason string';
    case 'unknown':
      return text('raw') ? null : 'unknown without a raw string';
    case 'error':
      return text('code') && text('cause') ? null : 'error without code and cause strings';
    default:
      return `status ${JSON.stringify(o['status'])?.slice(0, 40) ?? 'undefined'} is not free, found, skipped, unknown or error`;
  }
}

/**
 * Runs `work` with a signal that aborts when `caller` does or after `ms` (the rest of
 * scan-timeout). One controller and one timer per call: AbortSignal.timeout + any cost more.
 */
async function withDeadline<T>(caller: AbortSignal | undefined, ms: number, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error('scan timeout')), Math.max(0, ms));
  const onCallerAbort = () => controller.abort(caller?.reason);
  if (caller?.aborted) onCallerAbort();
  caller?.addEventListener('abort', onCallerAbort, { once: true });
  try {
    return await work(controller.signal);
  } finally {
    clearTimeout(timer);
    caller?.removeEventListener('abort', onCallerAbort);
  }
}
