import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { StatsConfig } from '../config/stats-schema.js';
import { messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import { setPageCache } from '../core/sqlite.js';
import { VERDICT_STATUSES, type VerdictStatus } from '../core/verdict.js';
import type { ActivityPoint, Bucket, EventSource, Period, ScanEvent, StatsReader, StatsRecorder } from './types.js';

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
  log?: Logger;
  /** The clock of retention (tests move it); events carry their own time. */
  now?: () => number;
}

export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;
/** Periods up to this long are answered from the hourly rollup, longer ones from the daily one. */
export const HOURLY_UP_TO_MS = 14 * DAY_MS;
/** Events are written together once this many are queued. */
const FLUSH_ROWS = 256;
/** Beyond this many queued events (the disk cannot keep up), new ones are dropped and counted. */
const MAX_PENDING = 100_000;
/** How often retention runs (besides at open). */
const PRUNE_EVERY_MS = HOUR_MS;
/** Only the most frequent names are exported, to bound the metric's cardinality. */
const PROMETHEUS_TOP_VIRUSES = 50;
/** Upper bounds (seconds) of the scan duration histogram. */
export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120] as const;

interface Histogram {
  /** Non-cumulative counts per bucket; the last slot is +Inf. */
  counts: number[];
  sum: number;
  count: number;
}

interface RollupDelta {
  t: number;
  source: string;
  status: string;
  virus: string;
  grp: string;
  engine: string;
  count: number;
  bytes: number;
  cached: number;
  durSum: number;
  durMax: number;
}

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
export class StatsStore implements StatsRecorder, StatsReader {
  private readonly db: Database.Database;
  private pending: ScanEvent[] = [];
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private readonly pruneTimer: NodeJS.Timeout;
  private closed = false;
  private readonly histograms = new Map<string, Histogram>();
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
    // Activity and traffic per hour over long periods: an index-only scan of narrow rows.
    db.exec('CREATE INDEX IF NOT EXISTS rollup_hour_traffic ON rollup_hour (t, status, count, bytes)');
    db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)").run(String(Date.now()));
    this.createdAt = Number((db.prepare("SELECT value FROM meta WHERE key = 'created'").get() as { value: string }).value);
    this.insertEvent = db.prepare(
      'INSERT INTO events (time, source, status, virus, grp, engine, bytes, duration_ms, cached) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
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
      if (!event.cached) this.observe(event.engine, event.durationMs / 1000);
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

  activity(p: Period, bucket: Bucket): ActivityPoint[] {
    const size = bucket === 'hour' ? HOUR_MS : DAY_MS;
    const table = bucket === 'hour' ? 'rollup_hour' : 'rollup_day';
    const [from, to] = this.range(p, size);
    const points = new Map<number, ActivityPoint>();
    for (let t = from; t < to; t += size) points.set(t, { t, byStatus: emptyByStatus() });
    for (const r of this.rows(`SELECT t, status, sum(count) AS n FROM ${table} WHERE t >= ? AND t < ? GROUP BY t, status`, from, to)) {
      const point = points.get(r.t as number);
      if (point) point.byStatus[r.status as VerdictStatus] += r.n as number;
    }
    return [...points.values()];
  }

  topViruses(p: Period, limit: number): Array<{ name: string; count: number }> {
    const { table, from, to } = this.source(p);
    return this.rows(
      `SELECT virus, sum(count) AS n FROM ${table} INDEXED BY ${table}_found
       WHERE status = 'found' AND t >= ? AND t < ? GROUP BY virus ORDER BY n DESC, virus ASC LIMIT ?`,
      from,
      to,
      Math.max(0, Math.floor(limit)),
    ).map((r) => ({ name: r.virus as string, count: r.n as number }));
  }

  statusesBySource(p: Period): Array<{ source: EventSource; status: VerdictStatus; count: number }> {
    const { table, from, to } = this.source(p);
    return this.rows(
      `SELECT source, status, sum(count) AS n FROM ${table} WHERE t >= ? AND t < ? GROUP BY source, status ORDER BY source, status`,
      from,
      to,
    ).map((r) => ({ source: r.source as EventSource, status: r.status as VerdictStatus, count: r.n as number }));
  }

  trafficPerHour(p: Period): Array<{ t: number; objects: number; bytes: number }> {
    const [from, to] = this.range(p, HOUR_MS);
    const out = new Map<number, { t: number; objects: number; bytes: number }>();
    for (let t = from; t < to; t += HOUR_MS) out.set(t, { t, objects: 0, bytes: 0 });
    for (const r of this.rows('SELECT t, sum(count) AS n, sum(bytes) AS b FROM rollup_hour WHERE t >= ? AND t < ? GROUP BY t', from, to)) {
      const row = out.get(r.t as number);
      if (row) {
        row.objects = r.n as number;
        row.bytes = r.b as number;
      }
    }
    return [...out.values()];
  }

  cacheHitRate(p: Period): { hits: number; total: number; rate: number | null } {
    const { table, from, to } = this.source(p);
    const r = this.rows(`SELECT coalesce(sum(cached), 0) AS hits, coalesce(sum(count), 0) AS total FROM ${table} WHERE t >= ? AND t < ?`, from, to)[0];
    const hits = (r?.hits as number | undefined) ?? 0;
    const total = (r?.total as number | undefined) ?? 0;
    return { hits, total, rate: total > 0 ? hits / total : null };
  }

  engineLatency(p: Period): Array<{ engine: string; count: number; avgMs: number; maxMs: number }> {
    const { table, from, to } = this.source(p);
    return this.rows(
      `SELECT engine, sum(count - cached) AS n, sum(dur_sum) AS s, max(dur_max) AS m FROM ${table}
       WHERE t >= ? AND t < ? GROUP BY engine HAVING n > 0 ORDER BY engine`,
      from,
      to,
    ).map((r) => ({ engine: r.engine as string, count: r.n as number, avgMs: (r.s as number) / (r.n as number), maxMs: r.m as number }));
  }

  byGroup(p: Period): Array<{ group: string; status: VerdictStatus; count: number }> {
    const { table, from, to } = this.source(p);
    return this.rows(
      `SELECT grp, status, sum(count) AS n FROM ${table} WHERE t >= ? AND t < ? AND grp <> '' GROUP BY grp, status ORDER BY grp, status`,
      from,
      to,
    ).map((r) => ({ group: r.grp as string, status: r.status as VerdictStatus, count: r.n as number }));
  }

  prometheus(): string {
    this.flush();
    const lines: string[] = [];
    const family = (name: string, type: string, help: string) => lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    const totals = this.db.open ? this.rows('SELECT source, status, count, bytes, cached FROM totals ORDER BY source, status') : [];
    family('avgate_scans_total', 'counter', 'Verdicts recorded since the statistics store was created, by front end and status.');
    for (const r of totals) lines.push(`avgate_scans_total{source="${escapeLabel(r.source as string)}",status="${escapeLabel(r.status as string)}"} ${r.count}`);
    family('avgate_scanned_bytes_total', 'counter', 'Bytes of content scanned (cache hits included), by front end.');
    const bytes = new Map<string, number>();
    for (const r of totals) bytes.set(r.source as string, (bytes.get(r.source as string) ?? 0) + (r.bytes as number));
    for (const [source, n] of bytes) lines.push(`avgate_scanned_bytes_total{source="${escapeLabel(source)}"} ${n}`);
    family('avgate_cache_hits_total', 'counter', 'Verdicts answered from the verdict cache.');
    lines.push(`avgate_cache_hits_total ${totals.reduce((n, r) => n + (r.cached as number), 0)}`);
    family('avgate_viruses_total', 'counter', `Found verdicts by first virus name (the ${PROMETHEUS_TOP_VIRUSES} most frequent names).`);
    const viruses = this.db.open ? this.rows('SELECT name, count FROM virus_totals ORDER BY count DESC, name ASC LIMIT ?', PROMETHEUS_TOP_VIRUSES) : [];
    for (const r of viruses) lines.push(`avgate_viruses_total{name="${escapeLabel(r.name as string)}"} ${r.count}`);
    family('avgate_scan_duration_seconds', 'histogram', 'Duration of scans an engine did (cache hits excluded), since the process started.');
    for (const [engine, h] of [...this.histograms].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const e = escapeLabel(engine);
      let cumulative = 0;
      DURATION_BUCKETS.forEach((le, i) => {
        cumulative += h.counts[i] as number;
        lines.push(`avgate_scan_duration_seconds_bucket{engine="${e}",le="${le}"} ${cumulative}`);
      });
      lines.push(`avgate_scan_duration_seconds_bucket{engine="${e}",le="+Inf"} ${h.count}`);
      lines.push(`avgate_scan_duration_seconds_sum{engine="${e}"} ${h.sum}`);
      lines.push(`avgate_scan_duration_seconds_count{engine="${e}"} ${h.count}`);
    }
    return `${lines.join('\n')}\n`;
  }

  private observe(engine: string, seconds: number): void {
    let h = this.histograms.get(engine);
    if (!h) {
      h = { counts: new Array<number>(DURATION_BUCKETS.length + 1).fill(0), sum: 0, count: 0 };
      this.histograms.set(engine, h);
    }
    const s = Number.isFinite(seconds) && seconds > 0 ? seconds : 0;
    const i = DURATION_BUCKETS.findIndex((le) => s <= le);
    const slot = i === -1 ? DURATION_BUCKETS.length : i;
    h.counts[slot] = (h.counts[slot] ?? 0) + 1;
    h.sum += s;
    h.count++;
  }

  /** Events summed per rollup key in memory first: one upsert per key and batch, not per event. */
  private write(events: ScanEvent[]): void {
    const hours = new Map<string, RollupDelta>();
    const days = new Map<string, RollupDelta>();
    const totals = new Map<string, { source: string; status: string; count: number; bytes: number; cached: number }>();
    const viruses = new Map<string, number>();
    const add = (into: Map<string, RollupDelta>, t: number, e: ScanEvent, virus: string, grp: string) => {
      const key = `${t}\0${e.source}\0${e.status}\0${virus}\0${grp}\0${e.engine}`;
      let d = into.get(key);
      if (!d) {
        d = { t, source: e.source, status: e.status, virus, grp, engine: e.engine, count: 0, bytes: 0, cached: 0, durSum: 0, durMax: 0 };
        into.set(key, d);
      }
      d.count++;
      d.bytes += e.bytes;
      if (e.cached) d.cached++;
      else {
        d.durSum += e.durationMs;
        d.durMax = Math.max(d.durMax, e.durationMs);
      }
    };
    this.db.transaction(() => {
      for (const e of events) {
        const time = Math.floor(e.time);
        const durationMs = Number.isFinite(e.durationMs) && e.durationMs > 0 ? e.durationMs : 0;
        const bytes = Number.isFinite(e.bytes) && e.bytes > 0 ? Math.floor(e.bytes) : 0;
        const ev = { ...e, durationMs, bytes };
        this.insertEvent.run(time, e.source, e.status, e.virus, e.group, e.engine, bytes, durationMs, e.cached ? 1 : 0);
        const virus = e.virus ?? '';
        const grp = e.group ?? '';
        add(hours, time - mod(time, HOUR_MS), ev, virus, grp);
        add(days, time - mod(time, DAY_MS), ev, virus, grp);
        const tk = `${e.source}\0${e.status}`;
        const tot = totals.get(tk) ?? { source: e.source, status: e.status, count: 0, bytes: 0, cached: 0 };
        tot.count++;
        tot.bytes += bytes;
        if (e.cached) tot.cached++;
        totals.set(tk, tot);
        if (e.status === 'found' && e.virus) viruses.set(e.virus, (viruses.get(e.virus) ?? 0) + 1);
      }
      for (const [stmt, deltas] of [[this.upsertHour, hours], [this.upsertDay, days]] as const) {
        for (const d of deltas.values()) stmt.run(d.t, d.source, d.status, d.virus, d.grp, d.engine, d.count, d.bytes, d.cached, d.durSum, d.durMax);
      }
      for (const t of totals.values()) this.upsertTotal.run(t.source, t.status, t.count, t.bytes, t.cached);
      for (const [name, n] of viruses) this.upsertVirus.run(name, n);
    })();
  }

  /** Buckets overlapping the period: `from` rounded down to its bucket's start, buckets starting before `to`. */
  private range(p: Period, size: number): [number, number] {
    this.flush();
    return [p.from - mod(p.from, size), p.to];
  }

  private source(p: Period): { table: string; from: number; to: number } {
    const daily = p.to - p.from > HOURLY_UP_TO_MS;
    const [from, to] = this.range(p, daily ? DAY_MS : HOUR_MS);
    return { table: daily ? 'rollup_day' : 'rollup_hour', from, to };
  }

  /** A reader's query; after close() it answers nothing rather than throwing. */
  private rows(sql: string, ...params: number[]): Row[] {
    if (!this.db.open) return [];
    return this.db.prepare(sql).all(...params) as Row[];
  }
}

function emptyByStatus(): Record<VerdictStatus, number> {
  return Object.fromEntries(VERDICT_STATUSES.map((s) => [s, 0])) as Record<VerdictStatus, number>;
}

/** Modulo that stays positive for times before 1970 (bucket starts are floors). */
function mod(n: number, m: number): number {
  return ((n % m) + m) % m;
}

/** Label values per the text exposition format: backslash, double quote and line feed escaped. */
export function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Opens the store of a config's `stats` section (`db` relative to state-dir). */
export function openStatsStore(stats: StatsConfig, stateDir: string, log?: Logger, sqliteCacheBytes?: number): StatsStore {
  return new StatsStore({
    path: stats.db === ':memory:' ? stats.db : resolve(stateDir, stats.db),
    eventRetentionMs: stats['event-retention'],
    rollupRetentionMs: stats['rollup-retention'],
    flushIntervalMs: stats['flush-interval'],
    ...(log ? { log } : {}),
    ...(sqliteCacheBytes !== undefined ? { sqliteCacheBytes } : {}),
  });
}
