import { join, resolve } from 'node:path';
import { describePostgres, parsePostgresUrl } from '../config/postgres-url.js';
import { statsNodeName, type StatsConfig, type StatsPostgresConfig } from '../config/stats-schema.js';
import { AvgateError, messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import { STATS_SCHEMA_VERSION } from './pg-schema.js';
import { PgStatsStore, probePostgres } from './postgres.js';
import { openStatsStore } from './store.js';
import type { StatsService } from './types.js';

/**
 * The statistics store a config's `stats` section asks for: the shared PostgreSQL database with
 * `stats.postgres`, else the SQLite file `stats.db`. Opening never waits for the database: an
 * unreachable one is logged and retried while events are buffered.
 */
export function openStats(stats: StatsConfig, stateDir: string, log?: Logger, sqliteCacheBytes?: number): StatsService {
  if (stats.postgres) return openPgStats(stats, stats.postgres, log, join(resolve(stateDir), 'stats-lost.json'));
  return openStatsStore(stats, stateDir, log, sqliteCacheBytes);
}

export function openPgStats(stats: StatsConfig, pgc: StatsPostgresConfig, log?: Logger, lostFile?: string): PgStatsStore {
  const parsed = parsePostgresUrl(pgc.url);
  if (!parsed.ok) throw new AvgateError('AVG_ERR_CONFIG', `stats.postgres.url: ${parsed.error}`);
  return new PgStatsStore({
    target: parsed.target,
    node: statsNodeName(stats),
    eventRetentionMs: stats['event-retention'],
    rollupRetentionMs: stats['rollup-retention'],
    flushIntervalMs: stats['flush-interval'],
    batchSize: pgc['batch-size'],
    maxBuffered: pgc['max-buffered'],
    connectTimeoutMs: pgc['connect-timeout'],
    queryTimeoutMs: pgc['query-timeout'],
    retryIntervalMs: pgc['retry-interval'],
    maxConnections: pgc['max-connections'],
    ...(log ? { log } : {}),
    ...(lostFile ? { lostFile } : {}),
  });
}

/** `config check`'s line for the statistics database: reachable, server version, schema version. */
export async function checkPgStats(stats: StatsConfig, pgc: StatsPostgresConfig): Promise<{ ok: boolean; line: string }> {
  const parsed = parsePostgresUrl(pgc.url);
  if (!parsed.ok) return { ok: false, line: `stats.postgres: FAILED: ${parsed.error}` };
  const label = `stats.postgres ${describePostgres(parsed.target)} (node ${statsNodeName(stats)})`;
  try {
    const r = await probePostgres(parsed.target, { node: statsNodeName(stats), connectTimeoutMs: pgc['connect-timeout'], queryTimeoutMs: pgc['query-timeout'] });
    if (r.schemaVersion !== null && r.schemaVersion > STATS_SCHEMA_VERSION) {
      return { ok: false, line: `${label}: FAILED: the schema is version ${r.schemaVersion}, newer than this avgate's (${STATS_SCHEMA_VERSION})` };
    }
    const schema = r.schemaVersion === null ? 'schema not created yet (serve creates it)' : `schema version ${r.schemaVersion}`;
    return { ok: true, line: `${label}: OK (PostgreSQL ${r.server}; ${schema})` };
  } catch (err) {
    return { ok: false, line: `${label}: FAILED: ${messageOf(err)} (serve keeps scanning and buffers statistics until it answers)` };
  }
}
