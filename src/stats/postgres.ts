import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import pg from 'pg';
import { describePostgres, type PostgresTarget } from '../config/postgres-url.js';
import { AvgateError, messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import type { VerdictStatus } from '../core/verdict.js';
import { ensureFoundIndex, ensureStatsSchema, FOUND_INDEX, LOCK_SPACE, PRUNE_LOCK, T } from './pg-schema.js';
import { DurationHistograms, PROMETHEUS_TOP_VIRUSES, renderPrometheus } from './prometheus.js';
import { RingQueue } from './queue.js';
import { activitySeries, bucketRange, DAY_MS, HOUR_MS, rollupFor, summarize, trafficSeries, type RollupDelta } from './rollup.js';
import type { ActivityPoint, Bucket, Detection, EventSource, NodeSummary, Period, ScanEvent, StatsService, StoreStatus } from './types.js';

export interface PgStatsOptions {
  target: PostgresTarget;
  /** This node's name: every event and counter it writes carries it. */
  node: string;
  eventRetentionMs: number;
  rollupRetentionMs: number;
  /** Queued events are written at most this long after the first of them (ms). */
  flushIntervalMs: number;
  /** Events per write transaction. */
  batchSize: number;
  /** Events held in memory at most (queued and being written); past it the oldest are dropped. */
  maxBuffered: number;
  connectTimeoutMs: number;
  /** Every statement: statement_timeout on the server, and the client gives up shortly after. */
  queryTimeoutMs: number;
  /** While the database is unreachable, a write is tried this often (ms). */
  retryIntervalMs: number;
  maxConnections: number;
  log?: Logger;
  /** The clock of retention (tests move it); events carry their own time. Outages and heartbeats go by the wall clock. */
  now?: () => number;
  /** How often the node writes when it has nothing to write, so its last-seen time stays fresh (ms). */
  heartbeatMs?: number;
  /**
   * Where drops not yet in the node's row wait across a restart (events lost at a stop with the
   * database down): read at start, reported with the first batch written, removed once it landed.
   */
  lostFile?: string;
}

/** A batch taken from the queue: written whole, retried as it is (same id) until it lands. */
interface Batch {
  id: string;
  events: ScanEvent[];
  /** Events before this index were dropped (the buffer was full) while the batch waited for a retry. */
  start: number;
  /** Drops this batch reports to the node's row. */
  dropped: number;
}

type Row = Record<string, unknown>;

/** How often retention runs: after the first write, then with the first write an hour later (a node writes at least every heartbeat). */
const PRUNE_EVERY_MS = HOUR_MS;
/** Rows one retention statement deletes at most, so a large backlog never meets the statement timeout. */
const PRUNE_CHUNK = 10_000;
/** Batch ids are kept this long to recognise a batch retried after its COMMIT was lost. */
const BATCH_ID_KEEP_MS = DAY_MS;
const HEARTBEAT_MS = 60_000;
/** The client gives up this long after the server's statement_timeout should have ended a statement. */
const CLIENT_TIMEOUT_SLACK_MS = 500;

/** Drops a previous process left in lostFile (0 when there is none or it cannot be read). */
function readLost(path: string | undefined): number {
  if (!path) return 0;
  try {
    const n = (JSON.parse(readFileSync(path, 'utf8')) as { dropped?: unknown }).dropped;
    return typeof n === 'number' && Number.isSafeInteger(n) && n > 0 ? n : 0;
  } catch {
    return 0;
  }
}

/** The database's clock in epoch ms: one clock for every node's last-seen time. */
const DB_NOW_MS = '(extract(epoch from clock_timestamp()) * 1000)::bigint';

/** At stop, no batch is begun after this long (serve gives the whole stop 10 s). */
const CLOSE_FLUSH_MS = 2_000;

/**
 * The statistics store in a PostgreSQL database shared by the nodes of a cluster: the same events,
 * rollups and counters as the SQLite store (src/stats/store.ts), each row with the node that
 * wrote it. Queries sum over nodes, so each node's dashboard shows the cluster; Prometheus
 * counters stay this node's own.
 *
 * `record()` only queues (a ring of `maxBuffered` events, the oldest dropped and counted when it
 * is full). Batches are written by one writer at a time, each in one transaction: the batch id
 * (so a batch retried after a lost COMMIT is not counted twice), one multi-row INSERT of the
 * events, one upsert per rollup table, totals, virus names and the node's row. A batch that cannot
 * be written stays in memory and is retried every `retryIntervalMs`; the first failure logs one
 * warn line, the first success after it one info line.
 */
export class PgStatsStore implements StatsService {
  private readonly pool: pg.Pool;
  private readonly queue: RingQueue<ScanEvent>;
  private batch: Batch | null = null;
  private writing: Promise<boolean> | null = null;
  private flushTimer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly heartbeatTimer: NodeJS.Timeout;
  /** Wall-clock times (Date.now): when the last write landed, when retention last ran. */
  private lastWriteAt = 0;
  private lastPruneAt = 0;
  private closing = false;
  private closed = false;
  private schemaReady = false;
  private connectedOnce = false;
  private down = false;
  private downSince: number | null = null;
  private lastError: string | null = null;
  private droppedAtDown = 0;
  private dropWarned = false;
  /** Drops not yet reported to the node's row. */
  private unreported = 0;
  /** Of those, the ones read from lostFile at start (the file goes once they are written). */
  private carried = 0;
  private readonly histograms = new DurationHistograms();
  private readonly now: () => number;
  private readonly log: Logger | null;
  private readonly where: string;
  /** Events this process lost: the buffer was full, or the database refused a batch. */
  dropped = 0;

  constructor(private readonly o: PgStatsOptions) {
    this.now = o.now ?? Date.now;
    this.log = o.log ?? null;
    this.where = describePostgres(o.target);
    this.queue = new RingQueue(o.maxBuffered);
    this.pool = new pg.Pool({
      ...pgClientConfig(o.target, o),
      max: o.maxConnections,
      idleTimeoutMillis: 30_000,
      allowExitOnIdle: true,
    });
    // A connection the server ends (restart, failover, an administrator's terminate) must not
    // become an uncaught error. The pool listens only while a connection is idle; one taken out
    // can be told between two queries (the end arrives in the same read as the last answer), so
    // every connection gets a listener of its own for its whole life. A connection that failed
    // is no longer queryable, and the pool drops it when it comes back.
    this.pool.on('error', (err) => this.log?.debug({ err: messageOf(err) }, 'statistics: an idle PostgreSQL connection failed'));
    this.pool.on('connect', (client) => {
      client.on('error', (err) => this.log?.debug({ err: messageOf(err) }, 'statistics: a PostgreSQL connection failed'));
    });
    this.heartbeatTimer = setInterval(() => this.heartbeat(), o.heartbeatMs ?? HEARTBEAT_MS).unref();
    this.carried = readLost(o.lostFile);
    if (this.carried > 0) {
      this.unreported += this.carried;
      this.log?.info({ events: this.carried }, 'statistics: events lost before the last stop are reported with the first write');
      // Written now, not after the first event: the node's row shows them even on a quiet node.
      setImmediate(() => void this.kick(true));
    }
    // Connect, create the schema, register the node; an unreachable database is logged and retried.
    void this.kick(true);
  }

  record(event: ScanEvent): void {
    if (this.closing) return;
    try {
      if (this.queue.size + this.pinned() >= this.o.maxBuffered && !this.dropOldest()) {
        this.lose(1); // nothing older can go: the new event does
        return;
      }
      this.queue.push(event);
      if (!event.cached) this.histograms.observe(event.engine, event.durationMs / 1000);
      this.schedule();
    } catch {
      this.lose(1); // never the caller's problem
    }
  }

  /**
   * Writes until nothing is queued or a write fails; true when everything queued was written.
   * No new batch is begun after `deadline` (performance.now() ms): the one in flight finishes
   * within its timeouts, the rest stays queued and the answer is false.
   */
  async flush(deadline = Number.POSITIVE_INFINITY): Promise<boolean> {
    this.clearFlushTimers();
    for (;;) {
      if (!this.batch && this.queue.size === 0 && !this.writing) return true;
      if (performance.now() > deadline && !this.writing) return false;
      if (!(await this.writeOne(false))) return false;
    }
  }

  /** Deletes raw events past event-retention and rollups past rollup-retention; false when another node was pruning or it failed. */
  async prune(now = this.now()): Promise<boolean> {
    if (this.closed || this.down || !this.schemaReady) return false;
    const keep = now - this.o.rollupRetentionMs;
    // A bucket goes when its end is past the limit: a partly kept day stays whole.
    const work: Array<[string, string, number]> = [
      [T.events, 'at', now - this.o.eventRetentionMs],
      [T.hour, 't', keep - HOUR_MS],
      [T.day, 't', keep - DAY_MS],
      [T.batches, 'at', now - BATCH_ID_KEEP_MS],
    ];
    try {
      for (const [table, column, before] of work) {
        for (;;) {
          if (this.closing) return false;
          const deleted = await this.inTransaction(async (c) => {
            // One node prunes at a time; the others skip (deleting twice would be harmless, only wasted).
            const lock = await c.query<{ got: boolean }>('SELECT pg_try_advisory_xact_lock($1, $2) AS got', [LOCK_SPACE, PRUNE_LOCK]);
            if (!lock.rows[0]?.got) return -1;
            const r = await c.query(`DELETE FROM ${table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM ${table} WHERE ${column} < $1 LIMIT ${PRUNE_CHUNK}))`, [before]);
            return r.rowCount ?? 0;
          });
          if (deleted === -1) return false;
          if (deleted < PRUNE_CHUNK) break;
        }
      }
      return true;
    } catch (err) {
      this.log?.warn({ err: messageOf(err) }, 'statistics: retention failed');
      return false;
    }
  }

  /**
   * Writes what is queued (batches begun within CLOSE_FLUSH_MS, each bounded by the connect and
   * query timeouts, so serve's stop deadline holds with a slow database), then closes the
   * connections; record() afterwards does nothing.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.clearFlushTimers();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    clearInterval(this.heartbeatTimer);
    const written = await this.flush(performance.now() + CLOSE_FLUSH_MS);
    if (!written) {
      const lost = this.queue.size + this.pinned();
      this.dropped += lost;
      this.log?.warn({ events: lost, reason: this.lastError }, 'statistics: events still buffered at stop could not be written to PostgreSQL; they are lost (counted in the node table after the next start)');
    }
    // Drops the node's row does not show yet (those of a pending batch included) wait for the next start.
    const owed = this.unreported + (this.batch ? this.batch.dropped : 0) + (written ? 0 : this.queue.size + this.pinned());
    if (this.o.lostFile) {
      if (owed > 0) await writeFile(this.o.lostFile, `${JSON.stringify({ dropped: owed })}\n`).catch(() => undefined);
      else if (this.carried === 0) await rm(this.o.lostFile, { force: true }).catch(() => undefined);
    }
    this.closed = true;
    await this.pool.end().catch(() => undefined);
  }

  status(): StoreStatus {
    return {
      backend: 'postgres',
      node: this.o.node,
      buffered: this.queue.size + this.pinned(),
      dropped: this.dropped,
      reachable: !this.down,
      unreachableSince: this.downSince,
      lastError: this.down ? this.lastError : null,
    };
  }

  // ------------------------------------------------------------------ queries (every node's rows)

  async activity(p: Period, bucket: Bucket): Promise<ActivityPoint[]> {
    const size = bucket === 'hour' ? HOUR_MS : DAY_MS;
    const [from, to] = bucketRange(p, size);
    const rows = await this.read(`SELECT t, status, sum(count)::float8 AS n FROM ${bucket === 'hour' ? T.hour : T.day} WHERE t >= $1 AND t < $2 GROUP BY t, status`, [from, to]);
    return activitySeries(from, to, size, rows.map((r) => ({ t: Number(r.t), status: r.status as string, n: r.n as number })));
  }

  // ORDER BY ... COLLATE "C": byte order, as SQLite sorts, whatever the database's collation.
  async topViruses(p: Period, limit: number): Promise<Array<{ name: string; count: number }>> {
    const { table, from, to } = this.source(p);
    const rows = await this.read(
      `SELECT virus, sum(count)::float8 AS n FROM ${table} WHERE status = 'found' AND t >= $1 AND t < $2
       GROUP BY virus ORDER BY n DESC, virus COLLATE "C" ASC LIMIT $3`,
      [from, to, Math.max(0, Math.floor(limit))],
    );
    return rows.map((r) => ({ name: r.virus as string, count: r.n as number }));
  }

  async statusesBySource(p: Period): Promise<Array<{ source: EventSource; status: VerdictStatus; count: number }>> {
    const { table, from, to } = this.source(p);
    const rows = await this.read(
      `SELECT source, status, sum(count)::float8 AS n FROM ${table} WHERE t >= $1 AND t < $2
       GROUP BY source, status ORDER BY source COLLATE "C", status COLLATE "C"`,
      [from, to],
    );
    return rows.map((r) => ({ source: r.source as EventSource, status: r.status as VerdictStatus, count: r.n as number }));
  }

  async trafficPerHour(p: Period): Promise<Array<{ t: number; objects: number; bytes: number }>> {
    const [from, to] = bucketRange(p, HOUR_MS);
    const rows = await this.read(`SELECT t, sum(count)::float8 AS n, sum(bytes)::float8 AS b FROM ${T.hour} WHERE t >= $1 AND t < $2 GROUP BY t`, [from, to]);
    return trafficSeries(from, to, rows.map((r) => ({ t: Number(r.t), n: r.n as number, b: r.b as number })));
  }

  async cacheHitRate(p: Period): Promise<{ hits: number; total: number; rate: number | null }> {
    const { table, from, to } = this.source(p);
    const [r] = await this.read(`SELECT coalesce(sum(cached), 0)::float8 AS hits, coalesce(sum(count), 0)::float8 AS total FROM ${table} WHERE t >= $1 AND t < $2`, [from, to]);
    const hits = (r?.hits as number | undefined) ?? 0;
    const total = (r?.total as number | undefined) ?? 0;
    return { hits, total, rate: total > 0 ? hits / total : null };
  }

  async engineLatency(p: Period): Promise<Array<{ engine: string; count: number; avgMs: number; maxMs: number }>> {
    const { table, from, to } = this.source(p);
    const rows = await this.read(
      `SELECT engine, sum(count - cached)::float8 AS n, sum(dur_sum) AS s, max(dur_max) AS m FROM ${table}
       WHERE t >= $1 AND t < $2 GROUP BY engine HAVING sum(count - cached) > 0 ORDER BY engine COLLATE "C"`,
      [from, to],
    );
    return rows.map((r) => ({ engine: r.engine as string, count: r.n as number, avgMs: (r.s as number) / (r.n as number), maxMs: r.m as number }));
  }

  async byGroup(p: Period): Promise<Array<{ group: string; status: VerdictStatus; count: number }>> {
    const { table, from, to } = this.source(p);
    const rows = await this.read(
      `SELECT grp, status, sum(count)::float8 AS n FROM ${table} WHERE t >= $1 AND t < $2 AND grp <> ''
       GROUP BY grp, status ORDER BY grp COLLATE "C", status COLLATE "C"`,
      [from, to],
    );
    return rows.map((r) => ({ group: r.grp as string, status: r.status as VerdictStatus, count: r.n as number }));
  }

  async recentDetections(limit: number): Promise<Detection[]> {
    const rows = await this.read(
      `SELECT at, node, source, virus, grp, subject, cached FROM ${T.events} WHERE status = 'found' ORDER BY at DESC, id DESC LIMIT $1`,
      [Math.max(0, Math.floor(limit))],
    );
    return rows.map((r) => ({
      time: Number(r.at),
      node: r.node as string,
      source: r.source as EventSource,
      virus: (r.virus as string | null) ?? null,
      group: (r.grp as string | null) ?? null,
      subject: (r.subject as string | null) ?? null,
      cached: r.cached === true,
    }));
  }

  /** Nodes with events in the period or seen since its start, by name. */
  async nodes(p: Period): Promise<NodeSummary[]> {
    const { table, from, to } = this.source(p);
    const rows = await this.read(
      `SELECT n.node, coalesce(r.events, 0) AS events, coalesce(r.found, 0) AS found, coalesce(r.cached, 0) AS cached,
         coalesce(r.bytes, 0) AS bytes, n.last_event, n.last_seen, n.dropped
       FROM ${T.nodes} n LEFT JOIN (
         SELECT node, sum(count)::float8 AS events, coalesce(sum(count) FILTER (WHERE status = 'found'), 0)::float8 AS found,
           sum(cached)::float8 AS cached, sum(bytes)::float8 AS bytes
         FROM ${table} WHERE t >= $1 AND t < $2 GROUP BY node) r ON r.node = n.node
       WHERE r.node IS NOT NULL OR n.last_seen >= $1
       ORDER BY n.node COLLATE "C"`,
      [from, to],
    );
    return rows.map((r) => ({
      node: r.node as string,
      events: r.events as number,
      found: r.found as number,
      cacheHits: r.cached as number,
      bytes: r.bytes as number,
      lastEvent: r.last_event === null ? null : Number(r.last_event),
      lastSeen: r.last_seen === null ? null : Number(r.last_seen),
      dropped: Number(r.dropped),
    }));
  }

  /** This node's counters (Prometheus sums the nodes itself); without the database, only what this process knows. */
  async prometheus(): Promise<string> {
    let totals: Array<{ source: string; status: string; count: number; bytes: number; cached: number }> | null = null;
    let viruses: Array<{ name: string; count: number }> | null = null;
    let unreadable: string | undefined;
    try {
      const [t, v] = await Promise.all([
        this.read(`SELECT source, status, count::float8 AS count, bytes::float8 AS bytes, cached::float8 AS cached FROM ${T.totals} WHERE node = $1 ORDER BY source COLLATE "C", status COLLATE "C"`, [this.o.node]),
        this.read(`SELECT name, count::float8 AS count FROM ${T.viruses} WHERE node = $1 ORDER BY count DESC, name COLLATE "C" ASC LIMIT $2`, [this.o.node, PROMETHEUS_TOP_VIRUSES]),
      ]);
      totals = t.map((r) => ({ source: r.source as string, status: r.status as string, count: r.count as number, bytes: r.bytes as number, cached: r.cached as number }));
      viruses = v.map((r) => ({ name: r.name as string, count: r.count as number }));
    } catch (err) {
      unreadable = messageOf(err);
    }
    return renderPrometheus({
      totals,
      viruses,
      ...(unreadable !== undefined ? { unreadable } : {}),
      histograms: this.histograms,
      dropped: this.dropped,
      buffered: this.queue.size + this.pinned(),
      databaseUp: !this.down,
    });
  }

  /** Rows of one of the store's tables, every node's (for tests and the benchmark). */
  async rowCount(table: keyof typeof T): Promise<number> {
    await this.flush();
    const [r] = await this.read(`SELECT count(*)::float8 AS n FROM ${T[table]}`, []);
    return (r?.n as number | undefined) ?? 0;
  }

  // ------------------------------------------------------------------ writing

  private pinned(): number {
    return this.batch ? this.batch.events.length - this.batch.start : 0;
  }

  /**
   * Makes room for one event by dropping the oldest held: first from a batch waiting for its retry
   * (it was never written, or its id tells the retry so), else from the queue. A batch being
   * written right now is left alone: it may already be in the database.
   */
  private dropOldest(): boolean {
    const b = this.batch;
    if (b && !this.writing && b.start < b.events.length) {
      b.events[b.start] = undefined as unknown as ScanEvent; // let it be collected
      b.start++;
    } else if (!this.queue.dropOldest()) {
      return false;
    }
    this.lose(1);
    return true;
  }

  private lose(n: number): void {
    this.dropped += n;
    this.unreported += n;
    if (!this.dropWarned) {
      this.dropWarned = true;
      // During an outage the drops follow from it (already warned; counted in the line when it is back).
      const line = 'statistics: event buffer full (max-buffered); the oldest events are dropped and counted';
      if (this.down) this.log?.info({ maxBuffered: this.o.maxBuffered }, line);
      else this.log?.warn({ maxBuffered: this.o.maxBuffered }, line);
    }
  }

  private clearFlushTimers(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    if (this.immediate) clearImmediate(this.immediate);
    this.flushTimer = null;
    this.immediate = null;
  }

  /** Arms the next write: at once for a full batch, else after the flush interval. Not while unreachable (the retry timer writes then). */
  private schedule(): void {
    if (this.closing || this.down || this.writing) return;
    const waiting = this.queue.size + this.pinned();
    if (waiting === 0) return;
    if (waiting >= this.o.batchSize) this.immediate ??= setImmediate(() => void this.kick(false));
    else this.flushTimer ??= setTimeout(() => void this.kick(false), this.o.flushIntervalMs).unref();
  }

  private async kick(force: boolean): Promise<boolean> {
    this.clearFlushTimers();
    const ok = await this.writeOne(force);
    if (ok) this.schedule();
    return ok;
  }

  private heartbeat(): void {
    if (this.closing || this.down || this.writing) return;
    if (Date.now() - this.lastWriteAt >= (this.o.heartbeatMs ?? HEARTBEAT_MS) / 2) void this.kick(true);
  }

  /**
   * Writes the pending batch, or takes the next one from the queue (`force`: an empty one too, for
   * the node's row). One write at a time: a caller arriving meanwhile shares it. False when it failed.
   */
  private writeOne(force: boolean): Promise<boolean> {
    if (this.writing) return this.writing;
    if (!this.batch) {
      if (this.queue.size === 0 && !force) return Promise.resolve(true);
      this.batch = { id: randomUUID(), events: this.queue.take(this.o.batchSize), start: 0, dropped: this.unreported };
      this.unreported = 0;
    }
    const batch = this.batch;
    const attempt = (async () => {
      try {
        await this.ensureSchema();
        await this.writeBatch(batch);
        this.batch = null;
        if (this.carried > 0 && batch.dropped >= this.carried && this.o.lostFile) {
          this.carried = 0;
          await rm(this.o.lostFile, { force: true }).catch(() => undefined);
        }
        this.lastWriteAt = Date.now();
        this.reachable();
        if (this.lastWriteAt - this.lastPruneAt >= PRUNE_EVERY_MS) {
          this.lastPruneAt = this.lastWriteAt;
          void this.prune();
        }
        return true;
      } catch (err) {
        return this.failed(err, batch);
      }
    })();
    this.writing = attempt.finally(() => {
      this.writing = null;
    });
    return this.writing;
  }

  private async ensureSchema(): Promise<void> {
    if (this.schemaReady) return;
    await this.withClient(async (client) => {
      const version = await ensureStatsSchema(client);
      this.schemaReady = true;
      if (!this.connectedOnce) {
        this.connectedOnce = true;
        this.log?.info({ database: this.where, node: this.o.node, schemaVersion: version }, 'statistics: writing to PostgreSQL');
        // Not awaited, and not at stop either: a build cut short leaves an invalid index, which the
        // next start drops and builds again.
        void this.buildFoundIndex();
      }
    });
  }

  /** In the background, on a connection of its own: the found-events index (schema 2), if missing. */
  private async buildFoundIndex(): Promise<void> {
    const client = new pg.Client(pgClientConfig(this.o.target, this.o));
    client.on('error', () => undefined);
    try {
      await client.connect();
      const started = Date.now();
      const r = await ensureFoundIndex(client as unknown as pg.PoolClient);
      if (r === 'built') this.log?.info({ index: FOUND_INDEX, ms: Date.now() - started }, 'statistics: index of found events built');
    } catch (err) {
      // Info, not warn: the queries work without it, and a database going away meanwhile is
      // warned about by the writes.
      this.log?.info({ index: FOUND_INDEX, err: messageOf(err) }, 'statistics: the index of found events could not be built now (recent detections read more slowly); tried again at the next start');
    } finally {
      await client.end().catch(() => undefined);
    }
  }


  /** A connection taken out of the pool for `work`; one that failed goes back destroyed. */
  private async withClient<R>(work: (c: pg.PoolClient) => Promise<R>): Promise<R> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      return await work(client);
    } catch (err) {
      broken = err instanceof Error ? err : new Error(String(err));
      throw err;
    } finally {
      client.release(broken);
    }
  }

  private async writeBatch(batch: Batch): Promise<void> {
    const node = this.o.node;
    const b = summarize(batch.events.slice(batch.start).map(pgEvent));
    await this.inTransaction(async (c) => {
      const fresh = await c.query(`INSERT INTO ${T.batches} (node, id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, [node, batch.id, this.now()]);
      // Already there: this batch was committed before and only the answer was lost.
      if (fresh.rowCount !== 1) return;
      if (b.events.length > 0) {
        const e = b.events;
        await c.query(
          `INSERT INTO ${T.events} (node, at, source, status, virus, grp, engine, bytes, duration_ms, cached, subject)
           SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::float8[], $10::boolean[], $11::text[])`,
          [
            node,
            e.map((x) => x.time),
            e.map((x) => x.source),
            e.map((x) => x.status),
            e.map((x) => x.virus),
            e.map((x) => x.group),
            e.map((x) => x.engine),
            e.map((x) => x.bytes),
            e.map((x) => x.durationMs),
            e.map((x) => x.cached),
            e.map((x) => x.subject ?? null),
          ],
        );
      }
      for (const [table, deltas] of [[T.hour, b.hours], [T.day, b.days]] as const) {
        if (deltas.length > 0) await c.query(upsertRollup(table), [node, ...rollupColumns(deltas)]);
      }
      if (b.totals.length > 0) {
        await c.query(
          `INSERT INTO ${T.totals} (node, source, status, count, bytes, cached)
           SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
           ON CONFLICT (node, source, status) DO UPDATE SET count = ${T.totals}.count + excluded.count,
             bytes = ${T.totals}.bytes + excluded.bytes, cached = ${T.totals}.cached + excluded.cached`,
          [node, b.totals.map((x) => x.source), b.totals.map((x) => x.status), b.totals.map((x) => x.count), b.totals.map((x) => x.bytes), b.totals.map((x) => x.cached)],
        );
      }
      if (b.viruses.length > 0) {
        await c.query(
          `INSERT INTO ${T.viruses} (node, name, count) SELECT $1, * FROM unnest($2::text[], $3::bigint[])
           ON CONFLICT (node, name) DO UPDATE SET count = ${T.viruses}.count + excluded.count`,
          [node, b.viruses.map((x) => x.name), b.viruses.map((x) => x.count)],
        );
      }
      await c.query(
        `INSERT INTO ${T.nodes} (node, first_seen, last_seen, last_event, events, dropped) VALUES ($1, ${DB_NOW_MS}, ${DB_NOW_MS}, $2, $3, $4)
         ON CONFLICT (node) DO UPDATE SET last_seen = excluded.last_seen,
           last_event = greatest(${T.nodes}.last_event, excluded.last_event),
           events = ${T.nodes}.events + excluded.events, dropped = ${T.nodes}.dropped + excluded.dropped`,
        [node, b.newest, b.events.length, batch.dropped],
      );
    });
  }

  /**
   * A write failed. Bad data (SQLSTATE class 22/23: a retry cannot help) drops the batch. Anything
   * else (connection refused or lost, timeouts, the server shutting down, a missing table) keeps
   * it for the retry timer, and the first failure of an outage is logged.
   */
  private failed(err: unknown, batch: Batch): boolean {
    const reason = messageOf(err);
    const code = (err as { code?: unknown } | null)?.code;
    if (code === '42P01') this.schemaReady = false; // a table was dropped: create it again on the next try
    if (typeof code === 'string' && /^2[23]/.test(code)) {
      const n = batch.events.length - batch.start;
      this.batch = null;
      this.unreported += batch.dropped;
      this.dropped += n;
      this.unreported += n;
      this.log?.warn({ err: reason, code, events: n }, 'statistics: PostgreSQL refused a batch; its events are lost');
      return true;
    }
    this.lastError = reason;
    if (!this.down) {
      this.down = true;
      this.downSince = Date.now();
      this.droppedAtDown = this.dropped;
      this.log?.warn(
        { database: this.where, reason, buffered: this.queue.size + this.pinned(), maxBuffered: this.o.maxBuffered, retryEvery: this.o.retryIntervalMs },
        'statistics: PostgreSQL unreachable; events are kept in memory and written when it is back',
      );
    }
    if (!this.closing) this.retryTimer ??= setTimeout(() => this.retry(), this.o.retryIntervalMs).unref();
    return false;
  }

  private retry(): void {
    this.retryTimer = null;
    if (!this.closing) void this.kick(true);
  }

  private reachable(): void {
    if (this.queue.size < this.o.maxBuffered / 2) this.dropWarned = false;
    if (!this.down) return;
    const since = this.downSince ?? Date.now();
    this.down = false;
    this.downSince = null;
    this.lastError = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.log?.info(
      { database: this.where, unreachableMs: Date.now() - since, buffered: this.queue.size, droppedMeanwhile: this.dropped - this.droppedAtDown },
      'statistics: PostgreSQL reachable again; writing the buffered events',
    );
  }

  private async inTransaction<R>(work: (c: pg.PoolClient) => Promise<R>): Promise<R> {
    return this.withClient(async (client) => {
      try {
        await client.query('BEGIN');
        const r = await work(client);
        await client.query('COMMIT');
        return r;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
  }

  // ------------------------------------------------------------------ reading

  private source(p: Period): { table: string; from: number; to: number } {
    const { daily, from, to } = rollupFor(p);
    return { table: daily ? T.day : T.hour, from, to };
  }

  /**
   * A dashboard query. This node's queued events are written first (one batch), so a page shows
   * what this node just scanned. While writes fail it answers at once with the reason instead of
   * waiting for the connect timeout on every query; after close() it answers nothing.
   */
  private async read(sql: string, params: unknown[]): Promise<Row[]> {
    if (this.closed) return [];
    if (!this.down && !this.closing) {
      if (this.writing) await this.writing; // the write in flight, then what is queued
      if (!this.down) await this.kick(false);
    }
    if (this.down) throw new Error(`the statistics database is unreachable (since ${new Date(this.downSince ?? 0).toISOString()}): ${this.lastError ?? ''}`);
    const r = await this.pool.query<Row>(sql, params);
    return r.rows;
  }
}

/** Connection settings of a target: TLS per sslmode, the connect and statement timeouts, the node in application_name. */
export function pgClientConfig(t: PostgresTarget, o: { node: string; connectTimeoutMs: number; queryTimeoutMs: number }): pg.ClientConfig {
  let ssl: pg.ClientConfig['ssl'] = false;
  if (t.sslMode === 'require') ssl = { rejectUnauthorized: false };
  if (t.sslMode === 'verify-full') {
    try {
      ssl = { rejectUnauthorized: true, ...(t.sslRootCert ? { ca: readFileSync(t.sslRootCert, 'utf8') } : {}) };
    } catch (err) {
      throw new AvgateError('AVG_ERR_CONFIG', `stats.postgres.url: sslrootcert ${t.sslRootCert}: ${messageOf(err)}`);
    }
  }
  return {
    host: t.host,
    port: t.port,
    database: t.database,
    ...(t.user !== null ? { user: t.user } : {}),
    ...(t.password !== null ? { password: t.password } : {}),
    ssl,
    connectionTimeoutMillis: o.connectTimeoutMs,
    keepAlive: true,
    statement_timeout: o.queryTimeoutMs,
    query_timeout: o.queryTimeoutMs + CLIENT_TIMEOUT_SLACK_MS,
    application_name: `avgate:${o.node}`.slice(0, 63),
  };
}

/** `config check`: connects once and reads the server version and the statistics schema version (null: not created yet). */
export async function probePostgres(t: PostgresTarget, o: { node: string; connectTimeoutMs: number; queryTimeoutMs: number }): Promise<{ server: string; schemaVersion: number | null }> {
  const client = new pg.Client(pgClientConfig(t, o));
  client.on('error', () => undefined); // a connection lost after the answer is not this check's concern
  try {
    await client.connect();
    const v = await client.query<{ v: string }>("SELECT current_setting('server_version') AS v");
    const table = await client.query<{ t: string | null }>(`SELECT to_regclass('${T.version}')::text AS t`);
    let schemaVersion: number | null = null;
    if (table.rows[0]?.t) schemaVersion = (await client.query<{ version: number }>(`SELECT version FROM ${T.version} WHERE component = 'stats'`)).rows[0]?.version ?? null;
    return { server: v.rows[0]?.v ?? '?', schemaVersion };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** PostgreSQL text cannot hold NUL: taken out before the batch is summed, so keys stay distinct as written. */
function pgEvent(e: ScanEvent): ScanEvent {
  const text = (s: string) => (s.includes('\0') ? s.replace(/\0/g, '') : s);
  const t = (s: string | null) => (s === null ? null : text(s));
  return { ...e, source: text(e.source) as EventSource, status: text(e.status) as VerdictStatus, virus: t(e.virus), group: t(e.group), engine: text(e.engine), subject: t(e.subject ?? null) };
}

function upsertRollup(table: string): string {
  return `INSERT INTO ${table} (node, t, source, status, virus, grp, engine, count, bytes, cached, dur_sum, dur_max)
    SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
      $8::bigint[], $9::bigint[], $10::bigint[], $11::float8[], $12::float8[])
    ON CONFLICT (t, node, source, status, virus, grp, engine) DO UPDATE SET
      count = ${table}.count + excluded.count, bytes = ${table}.bytes + excluded.bytes, cached = ${table}.cached + excluded.cached,
      dur_sum = ${table}.dur_sum + excluded.dur_sum, dur_max = greatest(${table}.dur_max, excluded.dur_max)`;
}

function rollupColumns(d: readonly RollupDelta[]): unknown[] {
  return [
    d.map((x) => x.t),
    d.map((x) => x.source),
    d.map((x) => x.status),
    d.map((x) => x.virus),
    d.map((x) => x.grp),
    d.map((x) => x.engine),
    d.map((x) => x.count),
    d.map((x) => x.bytes),
    d.map((x) => x.cached),
    d.map((x) => x.durSum),
    d.map((x) => x.durMax),
  ];
}
