import type Database from 'better-sqlite3';

/**
 * Page cache of each of avgate's SQLite databases when the config does not say (`sqlite-cache-size`).
 * better-sqlite3 builds SQLite with a 16 MB default; the verdict cache and the statistics grow by
 * hundreds of thousands of rows a day, so each connection's cache filled towards that bound and RSS
 * climbed by ~15 MB over the first 40 000 mail messages. Pages not cached are read from the
 * kernel's page cache (a pread of a few microseconds).
 */
export const DEFAULT_SQLITE_CACHE_BYTES = 2 * 1024 * 1024;

/** Sets the connection's page cache to `bytes` (at least 64 KiB). */
export function setPageCache(db: Database.Database, bytes: number = DEFAULT_SQLITE_CACHE_BYTES): void {
  db.pragma(`cache_size = -${Math.max(64, Math.ceil(bytes / 1024))}`);
}
