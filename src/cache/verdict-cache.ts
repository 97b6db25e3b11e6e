import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { setImmediate } from 'node:timers/promises';
import { setPageCache } from '../core/sqlite.js';
import type { VerdictResult } from '../core/verdict.js';
import { HashFilter } from './hash-filter.js';

/** Only these are cached: error, unknown and skipped say nothing lasting about the content. */
export type CacheableResult = Extract<VerdictResult, { status: 'free' } | { status: 'found' }>;

export interface VerdictCacheOptions {
  /** Level 1: entries kept in memory (LRU). 0 turns level 1 off. */
  memoryEntries: number;
  /** Level 2: SQLite file; null turns level 2 off. */
  sqlitePath: string | null;
  /** Level 2 keeps at most this many rows; the oldest go first. */
  sqliteMaxEntries: number;
  /** An entry older than this is not used (ms); 0 = no age limit. */
  maxAgeMs: number;
  /** SQLite page cache of level 2 (bytes); DEFAULT_SQLITE_CACHE_BYTES when absent. */
  sqliteCacheBytes?: number;
  /** Level 3, shared by several nodes (Redis, cache/redis-level.ts); null or absent = off. */
  shared?: SharedLevel | null;
}

/** A verdict from the shared level, with the time it was decided (ms since 1970). */
export interface SharedEntry {
  result: CacheableResult;
  at: number;
}

/** Counters of the shared level. */
export interface SharedStats {
  /** A connection is up (look-ups are sent). */
  up: boolean;
  hits: number;
  /** No entry, or one older than max-age. */
  misses: number;
  /** Values that failed the check (counted as misses by the scanner, never as a verdict). */
  invalid: number;
  /** Look-ups answered with an error (WRONGTYPE, NOAUTH …), or whose connection ended before the answer. */
  errors: number;
  /** Look-ups not answered within the timeout. */
  timeouts: number;
  /** Look-ups not sent: no connection (Redis down or being reconnected), or too many in flight. */
  skipped: number;
  writes: number;
  /** Writes answered with an error (or lost with their connection). */
  writeErrors: number;
  /** Writes not sent: no connection, or max-pending-writes in flight. */
  droppedWrites: number;
}

/**
 * A level every node shares, asked only after a local miss. A look-up may wait (bounded by the
 * level's own timeout); writes never do.
 */
export interface SharedLevel {
  /** For log lines: `redis`. */
  readonly name: string;
  /** null: not asked (down, or too busy) — a miss at once. The promise never rejects. */
  lookup(key: string): Promise<SharedEntry | null> | null;
  /** Fire and forget. */
  store(key: string, result: CacheableResult, at: number): void;
  readonly stats: SharedStats;
  close(): void;
}

export interface CacheStats {
  hits: number;
  misses: number;
  memoryEntries: number;
  /** Look-ups that reached SQLite (the hash filter let the others miss at once). */
  sqliteLookups: number;
  /** The shared level's counters, when there is one (hits and misses above are the local levels'). */
  shared?: SharedStats;
}

interface Entry {
  result: CacheableResult;
  at: number;
}

/**
 * Content hash → verdict, valid only for one engine set at one signature version: the key is
 * `content hash | engines@versions` (core/content-hash.ts), so a database update makes every old entry unreachable (and the
 * next prune removes it from SQLite; Redis lets it expire after max-age).
 * Levels: memory, SQLite (get, synchronous), then the shared level (getShared, awaited by the
 * scanner only after a local miss). set writes to all of them.
 */
export class VerdictCache {
  private readonly memory = new Map<string, Entry>();
  /** Level 3 (Redis), asked by getShared after a local miss; null = none. */
  readonly shared: SharedLevel | null;
  private readonly db: Database.Database | null;
  private readonly getStmt: Database.Statement<[string, string], { status: string; names: string; at: number }> | null;
  private readonly putStmt: Database.Statement<[string, string, string, string, number]> | null;
  private hits = 0;
  private misses = 0;
  private sqliteLookups = 0;
  /**
   * Hashes level 2 may hold: once loaded, a miss in memory is a miss for sure unless it says
   * "maybe". Until then (the rows already stored are read in pages, a turn of the event loop
   * between pages, so a full level 2 does not hold up the start) every miss asks SQLite.
   */
  private readonly filter: HashFilter | null;
  private filterReady = false;
  /** Resolves once the filter covers the rows stored at open (tests wait for it). */
  readonly filterLoaded: Promise<void>;
  /** Rows written by other processes (avgate scan on the same file) are added to the filter by this timer. */
  private refreshTimer: NodeJS.Timeout | null = null;
  private dataVersion = 0;
  private refreshedAt = 0;
  private readonly sinceStmt: Database.Statement<[number], string> | null;
  private closed = false;
  private writesSincePrune = 0;
  /** Rows not yet in SQLite: written together in one transaction (one WAL commit, not one per verdict). */
  private pending = new Map<string, { hash: string; engines: string; status: string; names: string; at: number }>();
  private flushTimer: NodeJS.Timeout | null = null;
  /** Engine ids (without versions) → the engine set last seen for them. */
  private readonly lastEngineSet = new Map<string, string>();
  /** The engine set of the previous call to noteEngineSet. */
  private lastNoted: string | null = null;

  constructor(private readonly options: VerdictCacheOptions) {
    this.shared = options.shared ?? null;
    if (options.sqlitePath) {
      if (options.sqlitePath !== ':memory:') mkdirSync(dirname(options.sqlitePath), { recursive: true });
      const db = new Database(options.sqlitePath);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      setPageCache(db, options.sqliteCacheBytes);
      db.exec(`CREATE TABLE IF NOT EXISTS verdict_cache (
        hash TEXT NOT NULL, engines TEXT NOT NULL, status TEXT NOT NULL, names TEXT NOT NULL,
        at INTEGER NOT NULL, PRIMARY KEY (hash, engines)) WITHOUT ROWID`);
      db.exec('CREATE INDEX IF NOT EXISTS verdict_cache_at ON verdict_cache (at)');
      this.db = db;
      this.getStmt = db.prepare('SELECT status, names, at FROM verdict_cache WHERE hash = ? AND engines = ?');
      this.putStmt = db.prepare(
        'INSERT OR REPLACE INTO verdict_cache (hash, engines, status, names, at) VALUES (?, ?, ?, ?, ?)',
      );
      this.sinceStmt = db.prepare<[number], string>('SELECT hash FROM verdict_cache WHERE at > ?').pluck();
      this.filter = new HashFilter(options.sqliteMaxEntries);
      this.filterLoaded = this.loadFilter(db, this.filter);
    } else {
      this.db = null;
      this.getStmt = null;
      this.putStmt = null;
      this.sinceStmt = null;
      this.filter = null;
      this.filterLoaded = Promise.resolve();
    }
  }

  /** Reads every stored hash into the filter, FILTER_LOAD_PAGE at a time, then starts refresh(). */
  private async loadFilter(db: Database.Database, filter: HashFilter): Promise<void> {
    // Rows other processes commit from now on are picked up by refresh().
    this.dataVersion = db.pragma('data_version', { simple: true }) as number;
    this.refreshedAt = Date.now();
    const page = db.prepare<[string, number], string>('SELECT hash FROM verdict_cache WHERE hash > ? ORDER BY hash LIMIT ?').pluck();
    let after = '';
    for (;;) {
      if (this.closed) return;
      const hashes = page.all(after, FILTER_LOAD_PAGE);
      for (const h of hashes) filter.add(h);
      if (hashes.length < FILTER_LOAD_PAGE) break;
      after = hashes[hashes.length - 1] as string;
      await setImmediate();
    }
    this.filterReady = true;
    this.refreshTimer = setInterval(() => this.refresh(), FILTER_REFRESH_MS).unref();
  }

  /**
   * Adds to the hash filter the rows another connection wrote since the last call (every second
   * by a timer). SQLite's data_version changes only for other connections' commits, so this costs
   * one pragma when nobody else writes.
   */
  refresh(): void {
    if (!this.db || !this.filter || !this.sinceStmt || !this.filterReady || this.closed) return;
    const version = this.db.pragma('data_version', { simple: true }) as number;
    if (version === this.dataVersion) return;
    this.dataVersion = version;
    // Another process stamps a row when it decides and commits it within its flush delay (100 ms):
    // looking 5 s back covers that, and re-adds only a few seconds of our own rows.
    const since = this.refreshedAt - FILTER_REFRESH_OVERLAP_MS;
    this.refreshedAt = Date.now();
    for (const hash of this.sinceStmt.iterate(since)) this.filter.add(hash);
  }

  /** The levels in look-up order: memory, sqlite, then the shared level's name (serve's ready line). */
  get levels(): string[] {
    return [...(this.options.memoryEntries > 0 ? ['memory'] : []), ...(this.db ? ['sqlite'] : []), ...(this.shared ? [this.shared.name] : [])];
  }

  get stats(): CacheStats {
    const local = { hits: this.hits, misses: this.misses, memoryEntries: this.memory.size, sqliteLookups: this.sqliteLookups };
    return this.shared ? { ...local, shared: this.shared.stats } : local;
  }

  get(hash: string, engineSet: string): CacheableResult | null {
    this.noteEngineSet(engineSet);
    const key = `${hash}|${engineSet}`;
    const now = Date.now();
    const m = this.memory.get(key);
    if (m && this.fresh(m.at, now)) {
      this.memory.delete(key); // re-insert: most recently used goes last
      this.memory.set(key, m);
      this.hits++;
      return m.result;
    }
    const queued = this.pending.get(key);
    const row = queued ?? this.lookUp(hash, engineSet);
    if (row && this.fresh(row.at, now)) {
      const result: CacheableResult =
        row.status === 'found' ? { status: 'found', names: JSON.parse(row.names) as string[] } : { status: 'free' };
      this.remember(key, { result, at: row.at });
      this.hits++;
      return result;
    }
    this.misses++;
    return null;
  }

  /**
   * After a miss of get(): asks the shared level, or returns null at once when there is none or it
   * is down. A hit is remembered in memory (it came with the time it was decided, so it ages as
   * it would have on the node that scanned).
   */
  getShared(hash: string, engineSet: string): Promise<CacheableResult | null> | null {
    if (this.shared === null) return null;
    const key = `${hash}|${engineSet}`;
    const pending = this.shared.lookup(key);
    if (pending === null) return null;
    return pending.then((entry) => {
      if (entry === null || this.closed) return null;
      // The engines may have answered first (scanWhileHashing) and set a newer entry: keep it.
      if (!this.memory.has(key)) this.remember(key, entry);
      return entry.result;
    });
  }

  private lookUp(hash: string, engineSet: string): { status: string; names: string; at: number } | undefined {
    if (!this.getStmt || (this.filterReady && this.filter && !this.filter.mayHave(hash))) return undefined;
    this.sqliteLookups++;
    return this.getStmt.get(hash, engineSet);
  }

  set(hash: string, engineSet: string, verdict: VerdictResult): void {
    if (verdict.status !== 'free' && verdict.status !== 'found') return;
    this.noteEngineSet(engineSet);
    const result: CacheableResult = verdict.status === 'found' ? { status: 'found', names: [...verdict.names] } : { status: 'free' };
    // Sub-millisecond time, so "oldest first" pruning has an order even for a burst of writes.
    const at = performance.timeOrigin + performance.now();
    this.remember(`${hash}|${engineSet}`, { result, at });
    this.shared?.store(`${hash}|${engineSet}`, result, at);
    if (this.putStmt) {
      this.pending.set(`${hash}|${engineSet}`, { hash, engines: engineSet, status: result.status, names: JSON.stringify(result.status === 'found' ? result.names : []), at });
      this.filter?.add(hash);
      if (this.pending.size >= FLUSH_ROWS) this.flush();
      else this.flushTimer ??= setTimeout(() => this.flush(), FLUSH_DELAY_MS).unref();
    }
  }

  /** Writes queued rows to SQLite now (also done by a short timer, by close() and before pruning). */
  flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (!this.db || !this.putStmt || this.pending.size === 0) return;
    const rows = [...this.pending.values()];
    this.pending.clear();
    const put = this.putStmt;
    this.db.transaction(() => {
      for (const r of rows) put.run(r.hash, r.engines, r.status, r.names, r.at);
    })();
    this.writesSincePrune += rows.length;
    if (this.writesSincePrune >= 1000) this.prune();
  }

  /** Drops SQLite rows beyond sqliteMaxEntries (oldest first) and rows past maxAge. */
  prune(): void {
    if (this.pending.size > 0) this.flush();
    this.writesSincePrune = 0;
    if (!this.db) return;
    if (this.options.maxAgeMs > 0) {
      this.db.prepare('DELETE FROM verdict_cache WHERE at < ?').run(Date.now() - this.options.maxAgeMs);
    }
    const { n } = this.db.prepare('SELECT count(*) AS n FROM verdict_cache').get() as { n: number };
    const excess = n - this.options.sqliteMaxEntries;
    if (excess > 0) {
      this.db
        .prepare('DELETE FROM verdict_cache WHERE (hash, engines) IN (SELECT hash, engines FROM verdict_cache ORDER BY at ASC LIMIT ?)')
        .run(excess);
    }
  }

  close(): void {
    this.closed = true;
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    this.flush();
    this.db?.close();
    this.shared?.close();
  }

  private fresh(at: number, now: number): boolean {
    return this.options.maxAgeMs <= 0 || now - at <= this.options.maxAgeMs;
  }

  private remember(key: string, entry: Entry): void {
    if (this.options.memoryEntries <= 0) return;
    this.memory.delete(key);
    this.memory.set(key, entry);
    while (this.memory.size > this.options.memoryEntries) {
      const oldest = this.memory.keys().next();
      if (oldest.done) break;
      this.memory.delete(oldest.value);
    }
  }

  /**
   * A new version for the same engines (signature update): entries of the old version can never
   * hit again, so they are dropped now rather than left to age out. Other engine sets (another
   * service with other engines) are not touched.
   */
  private noteEngineSet(engineSet: string): void {
    if (engineSet === this.lastNoted) return; // the usual case: the same set as last time
    this.lastNoted = engineSet;
    const ids = engineIds(engineSet);
    const previous = this.lastEngineSet.get(ids);
    if (previous === engineSet) return;
    this.lastEngineSet.set(ids, engineSet);
    if (previous === undefined) return;
    for (const key of this.memory.keys()) if (key.endsWith(`|${previous}`)) this.memory.delete(key);
    for (const key of this.pending.keys()) if (key.endsWith(`|${previous}`)) this.pending.delete(key);
    this.db?.prepare('DELETE FROM verdict_cache WHERE engines = ?').run(previous);
  }
}

/** Queued cache rows are written at this count, or this long after the first one at the latest. */
const FLUSH_ROWS = 256;
const FLUSH_DELAY_MS = 100;
/** How often rows of other processes are looked for (see refresh), and how far back. */
const FILTER_REFRESH_MS = 1000;
const FILTER_REFRESH_OVERLAP_MS = 5000;
/** Stored hashes read into the filter per turn of the event loop at open. */
const FILTER_LOAD_PAGE = 5000;

/** Builds the engine-set part of the key: `clamav@27432/...,icap@"5f3e"` (sorted by id). */
export function engineSetKey(parts: ReadonlyArray<{ id: string; version: string }>): string {
  return [...parts]
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((p) => `${p.id}@${encodeURIComponent(p.version)}`)
    .join(',');
}

function engineIds(engineSet: string): string {
  return engineSet
    .split(',')
    .map((p) => p.slice(0, p.indexOf('@')))
    .join(',');
}
