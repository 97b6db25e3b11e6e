import type { Readable } from 'node:stream';
import type { VerdictResult } from '../core/verdict.js';

/**
 * The engine plugin API. A plugin module's default export is an `EngineFactory`; avgate's own
 * engines (clamd-net, clamd-file, icap) are written against exactly the same interface.
 *
 * Life cycle: configure() → init() → [openContext() → scan()* → closeContext()]* → close().
 * A context is what one worker needs to scan (for clamd: a connection in an IDSESSION). Contexts
 * are pooled by the scanner, reused, and closed after an idle timeout.
 */
export interface EngineOption {
  name: string;
  value: string;
}

export interface EngineInfo {
  name: string;
  description: string;
}

export interface ScanMeta {
  /** File name or URL, for logs and for engines that take it into account. */
  name?: string;
  /** Size in bytes when known in advance. */
  size?: number;
  /** Aborted on the per-scan timeout or when the caller gives up: stop and release the context. */
  signal: AbortSignal;
}

export interface EngineScanResult {
  verdict: VerdictResult;
  /** Bytes of the object that reached the engine. */
  bytes: number;
}

export interface Engine<Ctx = unknown> {
  /** Options from the config. Unknown names are ignored so a newer config works with an older engine. */
  configure(options: readonly EngineOption[]): void;
  info(): EngineInfo;
  /** Checks the configuration against the world (comm-dir exists ...); throws AvgateError. */
  init(): Promise<void>;
  close(): Promise<void>;
  openContext(signal?: AbortSignal): Promise<Ctx>;
  closeContext(ctx: Ctx): Promise<void>;
  /** False when a context must not go back to the pool (its connection broke). */
  contextUsable(ctx: Ctx): boolean;
  /**
   * Scans the stream. Engine failures are answered as a verdict (error/unknown), not thrown:
   * the engine knows best whether a failure is "could not talk" or "did not understand".
   */
  scan(ctx: Ctx, stream: Readable, meta: ScanMeta): Promise<EngineScanResult>;
  /**
   * Optional: scans an object that is a file on this host by its path (clamd's SCAN: the engine
   * reads the file itself, no copy through a socket). Returns null to decline this time; the
   * scanner then streams the file through scan().
   */
  scanFile?(ctx: Ctx, path: string, meta: ScanMeta): Promise<EngineScanResult | null>;
  /**
   * Optional: scans an object held in memory, given as its pieces in order. Same answers as
   * scan(); spares the engine a stream's machinery for the small objects most traffic is made of.
   */
  scanChunks?(ctx: Ctx, chunks: readonly Buffer[], meta: ScanMeta): Promise<EngineScanResult>;
  /**
   * Optional: true when scanFile() is cheaper than a stream for an object of this size (any size
   * when omitted), so front ends hand over files.
   */
  prefersFiles?(size?: number): boolean;
  /**
   * Optional: true when every scan method settles promptly once `meta.signal` aborts (a scan
   * timeout, the client gone). The scanner then does not race each call against the signal.
   */
  readonly settlesOnAbort?: boolean;
  /** Signature version for the verdict cache; null when the engine cannot tell. */
  signatureVersion(signal?: AbortSignal): Promise<string | null>;
  /** Optional: forget a cached signature version now (the signature updater reloaded the engine). */
  invalidateVersion?(): void;
  /**
   * Optional (clamd): the engine runs on the project-local clamd, which has no SelfCheck of its
   * own; the database files count for the signature version only once `loader` says clamd loaded
   * them, and when they changed the engine has `loader` RELOAD clamd. `onError`: a reload that failed.
   */
  useDatabaseLoader?(loader: DatabaseLoader, onError: (err: unknown) => void): void;
  /**
   * Optional: the signature version as the engine knows it now, without any I/O (null: it was
   * forgotten or cannot tell). The scanner compares it after a scan with the version it read
   * before, and caches nothing when they differ (an ICAP service changed its ISTag meanwhile).
   */
  knownVersion?(): string | null;
  /** Optional: a cheap liveness check (clamd PING, ICAP OPTIONS) for health logging; throws when down. */
  ping?(signal?: AbortSignal): Promise<string>;
  /** Optional: the engine's own version text (clamd VERSION), for the dashboard. */
  version?(signal?: AbortSignal): Promise<string>;
  /** Optional: the local directory of the engine's signature databases (clamd), for the dashboard. */
  databaseDir?(): string | null;
  /** Optional: list of signature names the engine can detect (for the dashboard). */
  listSignatures?(): AsyncIterable<string>;
}

export type EngineFactory = () => Engine;

/** What knows which signature files a clamd scans with, and makes it load the current ones (LocalClamd). */
export interface DatabaseLoader {
  /** The fingerprint of the files clamd last loaded (engines/clamd/fingerprint.ts), as any process that started or reloaded it recorded; null when unknown. */
  loadedFingerprint(): Promise<string | null>;
  /** RELOAD and wait until clamd confirms (throws when it does not, or refuses the files). */
  reload(): Promise<void>;
}

/** Helper for engines: reads the last value of an option, or undefined. */
export function optionValue(options: readonly EngineOption[], name: string): string | undefined {
  let v: string | undefined;
  for (const o of options) if (o.name === name) v = o.value;
  return v;
}
