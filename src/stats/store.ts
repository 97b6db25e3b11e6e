import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, resolve } from 'node:path';
import { statsNodeName, type StatsConfig } from '../config/stats-schema.js';
import { messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import { setPageCache } from '../core/sqlite.js';
import type { VerdictStatus } from '../core/verdict.js';
import { DurationHistograms, PROMETHEUS_TOP_VIRUSES, renderPrometheus } from './prometheus.js';
import { activitySeries, bucketRange, DAY_MS, HOUR_MS, rollupFor, summarize, trafficSeries } from './rollup.js';
import type { ActivityPoint, Bucket, Detection, EventSource, NodeSummary, Period, ScanEvent, StatsService, StoreStatus } from './types.js';

export { DURATION_BUCKETS, escapeLabel } from './prometheus.js';
export { DAY_MS, HOUR_MS, HOURLY_UP_TO_MS } from './rollup.js';

export interface StatsStoreOptions {
  /** SQLite file (its directory is created), or ':memory:'. */
  path: string;
  /** Raw events older than this are deleted (ms). */
  eventRetentionMs: number;
  /** Hourly and daily rollups older than this are deleted (ms). */
  rollupRetentionMs: number;
  /** Queued events are written at most this long after the first of them (ms). */
  flushIntervalMs: number;
  /** SQLite page cache (bytes); DEFAULT_SQLITE_CACHE_BYTES when absent. */
  sqliteCacheBytes?: number;
  /** This node's name in the node table (`stats.node`); the hostname when absent. */
  node?: string;
  log?: Logger;
  /** The clock of retention (tests move it); events carry their own time. */
  now?: () => number;
}

/** Events are written together once this many are queued. */
const FLUSH_ROWS = 256;
/** Beyond this many queued events (the disk cannot keep up), new ones are dropped and counted. */
const MAX_PENDING = 100_000;
/** How often retention runs (besides at open). */
export const PRUNE_EVERY_MS = HOUR_MS;

type Row = Record<string, number | string>;

/**
 * The statistics store: one SQLite file with the raw events (append-only, kept event-retention)
 * and two rollups (hour, day) keyed by (bucket start, source, status, virus, group, engine), kept
 * rollup-retention. Rollups are updated when events are written, so every query reads at most a
 * few thousand rollup rows per day of the period however many events there were.
 *
 * Duration sums and maxima count engine scans only (not cache hits): a cache hit's duration is a
 * lookup and would hide the engine's latency. Null virus and group are stored as '' (a NULL in a
 * key would make every row distinct for the upsert).
 */
export class StatsStore implements StatsService {
  private readonly db: Database.Database;
  private pending: ScanEvent[] = [];
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private readonly pruneTimer: NodeJS.Timeout;
  private closed = false;
  private readonly histograms = new DurationHistograms();
  private readonly node: string;
  private readonly now: () => number;
  private readonly log: Logger | null;
  private readonly insertEvent: Database.Statement;
  private readonly upsertHour: Database.Statement;
  private readonly upsertDay: Database.Statement;
  private readonly upsertTotal: Database.Statement;
  private readonly upsertVirus: Database.Statement;
  /** Events lost: the queue was full, or a write failed. */
  dropped = 0;
  /** When the store was created (epoch ms): the start of the Prometheus counters. */
  readonly createdAt: number;

  constructor(private readonly options: StatsStoreOptions) {
    this.now = options.now ?? Date.now;
    this.log = options.log ?? null;
    this.node = options.node ?? hostname();
    if (options.path !== ':memory:') mkdirSync(dirname(options.path), { recursive: true });
    const db = new Database(options.path);
    this.db = db;
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    setPageCache(db, options.sqliteCacheBytes);
    db.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY, time INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
        virus TEXT, grp TEXT, engine TEXT NOT NULL, bytes INTEGER NOT NULL, duration_ms REAL NOT NULL,
        cached INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS events_time ON events (time);
      CREATE TABLE IF NOT EXISTS totals (
        source TEXT NOT NULL, status TEXT NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL,
        cached INTEGER NOT NULL, PRIMARY KEY (source, status)) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS virus_totals (name TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
    `);
    for (const table of ['rollup_hour', 'rollup_day']) {
      // The key starts with the bucket: a period is one contiguous range of the table.
      db.exec(`CREATE TABLE IF NOT EXISTS ${table} (
        t INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL, virus TEXT NOT NULL, grp TEXT NOT NULL,
        engine TEXT NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL, cached INTEGER NOT NULL,
        dur_sum REAL NOT NULL, dur_max REAL NOT NULL,
        PRIMARY KEY (t, source, status, virus, grp, engine)) WITHOUT ROWID`);
      // Top viruses read only the found rows of a period.
      db.exec(`CREATE INDEX IF NOT EXISTS ${table}_found ON ${table} (t, virus, count) WHERE status = 'found'`);
    }
    // Files from before the recent detections have no subject column: added (NULL in old rows).
    if (!(db.prepare('PRAGMA table_info(events)').all() as Array<{ name: string }>).some((c) => c.name === 'subject')) {
      db.exec('ALTER TABLE events ADD COLUMN subject TEXT');
    }
    // The recent detections: the newest found events without reading the free ones.
    db.exec("CREATE INDEX IF NOT EXISTS events_found ON events (time) WHERE status = 'found'");
    // Activity and traffic per hour over long periods: an index-only scan of narrow rows.
    db.exec('CREATE INDEX IF NOT EXISTS rollup_hour_traffic ON rollup_hour (t, status, count, bytes)');
    db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)").run(String(Date.now()));
    this.createdAt = Number((db.prepare("SELECT value FROM meta WHERE key = 'created'").get() as { value: string }).value);
    this.insertEvent = db.prepare(
      'INSERT INTO events (time, source, status, virus, grp, engine, bytes, duration_ms, cached, subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    const upsert = (table: string) =>
      db.prepare(`INSERT INTO ${table} (t, source, status, virus, grp, engine, count, bytes, cached, dur_sum, dur_max)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (t, source, status, virus, grp, engine) DO UPDATE SET
          count = count + excluded.count, bytes = bytes + excluded.bytes, cached = cached + excluded.cached,
          dur_sum = dur_sum + excluded.dur_sum, dur_max = max(dur_max, excluded.dur_max)`);
    this.upsertHour = upsert('rollup_hour');
    this.upsertDay = upsert('rollup_day');
    this.upsertTotal = db.prepare(`INSERT INTO totals (source, status, count, bytes, cached) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT (source, status) DO UPDATE SET count = count + excluded.count, bytes = bytes + excluded.bytes, cached = cached + excluded.cached`);
    this.upsertVirus = db.prepare(
      'INSERT INTO virus_totals (name, count) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET count = count + excluded.count',
    );
    this.prune();
    this.pruneTimer = setInterval(() => this.prune(), PRUNE_EVERY_MS).unref();
  }

  record(event: ScanEvent): void {
    if (this.closed) return;
    try {
      if (this.pending.length >= MAX_PENDING) {
        this.dropped++;
        return;
      }
      this.pending.push(event);
      if (!event.cached) this.histograms.observe(event.engine, event.durationMs / 1000);
      if (this.pending.length >= FLUSH_ROWS) this.immediate ??= setImmediate(() => this.flush());
      else this.timer ??= setTimeout(() => this.flush(), this.options.flushIntervalMs).unref();
    } catch {
      this.dropped++; // never the caller's problem
    }
  }

  /** Writes the queued events and their rollups in one transaction (also done by the timers and close()). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    this.timer = null;
    this.immediate = null;
    if (this.pending.length === 0 || !this.db.open) return;
    const events = this.pending;
    this.pending = [];
    try {
      this.write(events);
    } catch (err) {
      this.dropped += events.length;
      this.log?.warn({ err: messageOf(err), events: events.length }, 'statistics: writing events failed; they are lost');
    }
  }

  /** Deletes raw events past event-retention and rollups past rollup-retention. */
  prune(now = this.now()): void {
    if (!this.db.open) return;
    try {
      this.db.prepare('DELETE FROM events WHERE time < ?').run(now - this.options.eventRetentionMs);
      const keep = now - this.options.rollupRetentionMs;
      // A bucket goes when its end is past the limit: a partly kept day stays whole.
      this.db.prepare('DELETE FROM rollup_hour WHERE t < ?').run(keep - HOUR_MS);
      this.db.prepare('DELETE FROM rollup_day WHERE t < ?').run(keep - DAY_MS);
    } catch (err) {
      this.log?.warn({ err: messageOf(err) }, 'statistics: retention failed');
    }
  }

  /** Flushes and closes; record() afterwards does nothing. */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    clearInterval(this.pruneTimer);
    this.db.close();
  }

  /** Rows of one of the store's tables (for tests and the benchmark). */
  rowCount(table: 'events' | 'rollup_hour' | 'rollup_day'): number {
    this.flush();
    return (this.db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
  }

  async activity(p: Period, bucket: Bucket): Promise<ActivityPoint[]> {
    const size = bucket === 'hour' ? HOUR_MS : DAY_MS;
    const table = bucket === 'hour' ? 'rollup_hour' : 'rollup_day';
    const [from, to] = this.range(p, size);
    const rows = this.rows(`SELECT t, status, sum(count) AS n FROM ${table} WHERE t >= ? AND t < ? GROUP BY t, status`, from, to);
    return activitySeries(from, to, size, rows.map((r) => ({ t: r.t as number, status: r.status as string, n: r.n as number })));
  }

  async topViruses(p: Period, limit: number): Promise<Array<{ name: string; count: number }>> {
    const { table, from, to } = this.source(p);
    return this.rows(
      `SELECT virus, sum(count) AS n FROM ${table} INDEXED BY ${table}_found
       WHERE status = 'found' AND t >= ? AND t < ? GROUP BY virus ORDER BY n DESC, virus ASC LIMIT ?`,
      from,
      to,
      Math.max(0, Math.floor(limit)),
    ).map((r) => ({ name: r.virus as string, count: r.n as number }));
  }

  async statusesBySource(p: Period): Promise<Array<{ source: EventSource; status: VerdictStatus; count: number }>> {
    const { table, from, to } = this.source(p);
    return this.rows(
      `SELECT source, status, sum(count) AS n FROM ${table} WHERE t >= ? AND t < ? GROUP BY source, status ORDER BY source, status`,
      from,
      to,
    ).map((r) => ({ source: r.source as EventSource, status: r.status as VerdictStatus, count: r.n as number }));
  }

  async trafficPerHour(p: Period): Promise<Array<{ t: number; objects: number; bytes: number }>> {
    const [from, to] = this.range(p, HOUR_MS);
    const rows = this.rows('SELECT t, sum(count) AS n, sum(bytes) AS b FROM rollup_hour WHERE t >= ? AND t < ? GROUP BY t', from, to);
    return trafficSeries(from, to, rows.map((r) => ({ t: r.t as number, n: r.n as number, b: r.b as number })));
  }

  async cacheHitRate(p: Period): Promise<{ hits: number; total: number; rate: number | null }> {
    const { table, from, to } = this.source(p);
    const r = this.rows(`SELECT coalesce(sum(cached), 0) AS hits, coalesce(sum(count), 0) AS total FROM ${table} WHERE t >= ? AND t < ?`, from, to)[0];
    const hits = (r?.hits as number | undefined) ?? 0;
    const total = (r?.total as number | undefined) ?? 0;
    return { hits, total, rate: total > 0 ? hits / total : null };
  }

  async engineLatency(p: Period): Promise<Array<{ engine: string; count: number; avgMs: number; maxMs: number }>> {
    const { table, from, to } = this.source(p);
    return this.rows(
      `SELECT engine, sum(count - cached) AS n, sum(dur_sum) AS s, max(dur_max) AS m FROM ${table}
       WHERE t >= ? AND t < ? GROUP BY engine HAVING n > 0 ORDER BY engine`,
      from,
      to,
    ).map((r) => ({ engine: r.engine as string, count: r.n as number, avgMs: (r.s as number) / (r.n as number), maxMs: r.m as number }));
  }

  async byGroup(p: Period): Promise<Array<{ group: string; status: VerdictStatus; count: number }>> {
    const { table, from, to } = this.source(p);
    return this.rows(
      `SELECT grp, status, sum(count) AS n FROM ${table} WHERE t >= ? AND t < ? AND grp <> '' GROUP BY grp, status ORDER BY grp, status`,
      from,
      to,
    ).map((r) => ({ group: r.grp as string, status: r.status as VerdictStatus, count: r.n as number }));
  }

  async recentDetections(limit: number): Promise<Detection[]> {
    this.flush();
    return this.rows(
      `SELECT time, source, virus, grp, subject, cached FROM events INDEXED BY events_found WHERE status = 'found' ORDER BY time DESC, id DESC LIMIT ?`,
      Math.max(0, Math.floor(limit)),
    ).map((r) => ({
      time: r.time as number,
      node: this.node,
      source: r.source as EventSource,
      virus: (r.virus as string | null) ?? null,
      group: (r.grp as string | null) ?? null,
      subject: (r.subject as string | null) ?? null,
      cached: r.cached === 1,
    }));
  }

  /** One node, this one: a SQLite file is one node's. */
  async nodes(p: Period): Promise<NodeSummary[]> {
    const { table, from, to } = this.source(p);
    const r = this.rows(
      `SELECT coalesce(sum(count), 0) AS n, coalesce(sum(CASE WHEN status = 'found' THEN count ELSE 0 END), 0) AS f,
         coalesce(sum(cached), 0) AS c, coalesce(sum(bytes), 0) AS b FROM ${table} WHERE t >= ? AND t < ?`,
      from,
      to,
    )[0];
    const last = this.rows('SELECT max(time) AS m FROM events')[0]?.m;
    return [
      {
        node: this.node,
        events: (r?.n as number | undefined) ?? 0,
        found: (r?.f as number | undefined) ?? 0,
        cacheHits: (r?.c as number | undefined) ?? 0,
        bytes: (r?.b as number | undefined) ?? 0,
        lastEvent: typeof last === 'number' ? last : null,
        lastSeen: Date.now(),
        dropped: this.dropped,
      },
    ];
  }

  status(): StoreStatus {
    return { backend: 'sqlite', node: this.node, buffered: this.pending.length, dropped: this.dropped, reachable: true, unreachableSince: null, lastError: null };
  }

  async prometheus(): Promise<string> {
    this.flush();
    const totals = this.db.open ? this.rows('SELECT source, status, count, bytes, cached FROM totals ORDER BY source, status') : [];
    const viruses = this.db.open ? this.rows('SELECT name, count FROM virus_totals ORDER BY count DESC, name ASC LIMIT ?', PROMETHEUS_TOP_VIRUSES) : [];
    return renderPrometheus({
      totals: totals.map((r) => ({ source: r.source as string, status: r.status as string, count: r.count as number, bytes: r.bytes as number, cached: r.cached as number })),
      viruses: viruses.map((r) => ({ name: r.name as string, count: r.count as number })),
      histograms: this.histograms,
      dropped: this.dropped,
      buffered: this.pending.length,
    });
  }

  private write(events: ScanEvent[]): void {
    const b = summarize(events);
    this.db.transaction(() => {
      for (const e of b.events) this.insertEvent.run(e.time, e.source, e.status, e.virus, e.group, e.engine, e.bytes, e.durationMs, e.cached ? 1 : 0, e.subject ?? null);
      for (const [stmt, deltas] of [[this.upsertHour, b.hours], [this.upsertDay, b.days]] as const) {
        for (const d of deltas) stmt.run(d.t, d.source, d.status, d.virus, d.grp, d.engine, d.count, d.bytes, d.cached, d.durSum, d.durMax);
      }
      for (const t of b.totals) this.upsertTotal.run(t.source, t.status, t.count, t.bytes, t.cached);
      for (const v of b.viruses) this.upsertVirus.run(v.name, v.count);
    })();
  }

  /** Buckets overlapping the period: `from` rounded down to its bucket's start, buckets starting before `to`. */
  private range(p: Period, size: number): [number, number] {
    this.flush();
    return bucketRange(p, size);
  }

  private source(p: Period): { table: string; from: number; to: number } {
    this.flush();
    const { daily, from, to } = rollupFor(p);
    return { table: daily ? 'rollup_day' : 'rollup_hour', from, to };
  }

  /** A reader's query; after close() it answers nothing rather than throwing. */
  private rows(sql: string, ...params: number[]): Row[] {
    if (!this.db.open) return [];
    return this.db.prepare(sql).all(...params) as Row[];
  }
}

/** Opens the store of a config's `stats` section (`db` relative to state-dir). */
export function openStatsStore(stats: StatsConfig, stateDir: string, log?: Logger, sqliteCacheBytes?: number): StatsStore {
  return new StatsStore({
    path: stats.db === ':memory:' ? stats.db : resolve(stateDir, stats.db),
    eventRetentionMs: stats['event-retention'],
    rollupRetentionMs: stats['rollup-retention'],
    flushIntervalMs: stats['flush-interval'],
    node: statsNodeName(stats),
    ...(log ? { log } : {}),
    ...(sqliteCacheBytes !== undefined ? { sqliteCacheBytes } : {}),
  });
}
