import type { Readable } from 'node:stream';
import type { Verdict } from '../core/verdict.js';
import type { ScanOrigin } from '../stats/types.js';

/**
 * What a front end hands the scanner. A file or a buffer can be read twice, so the scanner can
 * hash it first and answer from the verdict cache without contacting an engine; a stream is
 * hashed while it flows to the engine and its verdict is cached afterwards.
 */
export type ScanSource =
  | { kind: 'file'; path: string; size?: number }
  | { kind: 'buffer'; data: Buffer }
  /** A buffer received in pieces (a spool in memory): no copy into one buffer. */
  | { kind: 'chunks'; chunks: readonly Buffer[] }
  | { kind: 'stream'; stream: Readable; size?: number };

export interface ScanRequest {
  source: ScanSource;
  /** File name or URL for logs and engines. */
  name?: string;
  /** The content hash (core/content-hash.ts) when the caller already computed it (a spool does, on the way). */
  hash?: string;
  /**
   * The content is most likely new (see ScanService.engineLikely) and its hash is not known: the
   * engines start at once and the hash is computed while they work, instead of before them; a
   * cache hit found meanwhile still answers (the engines are stopped). Takes the hash off the
   * object's latency. Ignored for streams and when there is no verdict cache.
   */
  hashWhileScanning?: boolean;
  /**
   * For an object held in memory: writes it to a local file and returns the path. Called at most
   * once, after the cache missed, when the engines prefer files (the caller removes the file).
   */
  toFile?: () => Promise<string>;
  /** The caller gives up (client gone). */
  signal?: AbortSignal;
  /** Where the object came from, for statistics (front end, group or ICAP service). */
  origin?: ScanOrigin;
  /**
   * The caller's last word on the verdict, before it is counted, recorded in the statistics and
   * logged: a decoded body whose decoding failed or left bytes over is `skipped` unless the engines
   * found something in what they saw. The verdict cache keeps the engines' verdict.
   */
  verdictOf?: (v: Verdict) => Verdict;
}

export interface ScanService {
  scan(request: ScanRequest): Promise<Verdict>;
  /** True when a verdict cache is in use: only then is a content hash worth computing. */
  readonly wantsHash: boolean;
  /** True when the next object will most likely need an engine (no cache, or it seldom answers lately). */
  readonly engineLikely: boolean;
  /** True when the engines read local files themselves (clamd SCAN) and that pays for this size: hand them a file. */
  prefersFiles(size?: number): boolean;
  /** Maximum simultaneous scans (max-concurrent-scans): callers size their own parallelism by it. */
  readonly concurrency: number;
  /**
   * The engines and their signature versions as one string (what the verdict cache keys on), or
   * null when some engine cannot tell or there is no cache: a caller that remembers verdicts of its
   * own must key them on it. Optional for services without engines of their own.
   */
  signatureKey?(signal?: AbortSignal): Promise<string | null>;
  /**
   * An error verdict when no engine can be reached now (every liveness check, clamd PING, fails
   * to connect), else null (one answered, one was only slow, or some engine cannot be asked). For front ends about to hand part of an object on
   * before its verdict (an early ICAP response): not while the engine is known to be down.
   */
  unreachable?(signal?: AbortSignal): Promise<Verdict | null>;
  /**
   * A verdict the caller reached without the engines (over a size limit, a coding it cannot
   * decode): counted and recorded in the statistics as a scan's, so the dashboard and /metrics see
   * every object a front end answered.
   */
  note?(verdict: Verdict, request: Pick<ScanRequest, 'name' | 'origin'>): void;
  close(): Promise<void>;
}
