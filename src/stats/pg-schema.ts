import type { PoolClient } from 'pg';
import { AvgateError } from '../core/errors.js';

/**
 * The PostgreSQL statistics schema (docs/stats.md#postgresql). Created at start when missing, under
 * a transaction-level advisory lock, so nodes starting at once do not race on the catalog (two
 * concurrent CREATE TABLE IF NOT EXISTS can still collide on the table's row type). Every table
 * carries the node, and the node is part of every key a node writes: two nodes never update the
 * same row, so their write transactions never wait for each other.
 */
export const STATS_SCHEMA_VERSION = 2;

/** Advisory lock keys (two int4): 'avga' and what the lock guards. */
export const LOCK_SPACE = 0x61766761;
export const SCHEMA_LOCK = 1;
export const PRUNE_LOCK = 2;
export const INDEX_LOCK = 3;

export const T = {
  events: 'avgate_stats_events',
  hour: 'avgate_stats_rollup_hour',
  day: 'avgate_stats_rollup_day',
  totals: 'avgate_stats_totals',
  viruses: 'avgate_stats_virus_totals',
  nodes: 'avgate_stats_nodes',
  batches: 'avgate_stats_batches',
  version: 'avgate_schema_version',
} as const;

const rollup = (table: string) => `
  CREATE TABLE IF NOT EXISTS ${table} (
    t bigint NOT NULL, node text NOT NULL, source text NOT NULL, status text NOT NULL, virus text NOT NULL,
    grp text NOT NULL, engine text NOT NULL, count bigint NOT NULL, bytes bigint NOT NULL, cached bigint NOT NULL,
    dur_sum double precision NOT NULL, dur_max double precision NOT NULL,
    PRIMARY KEY (t, node, source, status, virus, grp, engine));
  CREATE INDEX IF NOT EXISTS ${table}_found ON ${table} (t, virus) INCLUDE (count) WHERE status = 'found';`;

/** Version 1, every statement idempotent. */
const DDL_V1 = `
  CREATE TABLE IF NOT EXISTS ${T.events} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, node text NOT NULL, at bigint NOT NULL, source text NOT NULL,
    status text NOT NULL, virus text, grp text, engine text NOT NULL, bytes bigint NOT NULL,
    duration_ms double precision NOT NULL, cached boolean NOT NULL);
  CREATE INDEX IF NOT EXISTS ${T.events}_at ON ${T.events} (at);
  ${rollup(T.hour)}
  ${rollup(T.day)}
  CREATE TABLE IF NOT EXISTS ${T.totals} (
    node text NOT NULL, source text NOT NULL, status text NOT NULL, count bigint NOT NULL, bytes bigint NOT NULL,
    cached bigint NOT NULL, PRIMARY KEY (node, source, status));
  CREATE TABLE IF NOT EXISTS ${T.viruses} (node text NOT NULL, name text NOT NULL, count bigint NOT NULL, PRIMARY KEY (node, name));
  CREATE TABLE IF NOT EXISTS ${T.nodes} (
    node text PRIMARY KEY, first_seen bigint NOT NULL, last_seen bigint NOT NULL, last_event bigint,
    events bigint NOT NULL DEFAULT 0, dropped bigint NOT NULL DEFAULT 0);
  CREATE TABLE IF NOT EXISTS ${T.batches} (node text NOT NULL, id uuid NOT NULL, at bigint NOT NULL, PRIMARY KEY (node, id));
  CREATE INDEX IF NOT EXISTS ${T.batches}_at ON ${T.batches} (at);`;

/**
 * Version 2: what was scanned (events.subject; a nullable column without default is only a
 * catalog change). Its index for the recent detections is built CONCURRENTLY afterwards
 * (ensureFoundIndex): in the schema transaction it would hold every node's inserts for as long as
 * indexing a large events table takes.
 */
const DDL_V2 = `ALTER TABLE ${T.events} ADD COLUMN IF NOT EXISTS subject text;`;

/** The partial index of found events (recentDetections). */
export const FOUND_INDEX = `${T.events}_found`;

/**
 * Builds the found-events index when it is missing or left invalid by a build that was cut
 * short, CONCURRENTLY (inserts go on), one node at a time (a session advisory lock), without a
 * statement timeout. A node that finds another building it leaves it; failures are the caller's
 * to log, the queries work without it (more slowly).
 */
export async function ensureFoundIndex(client: PoolClient): Promise<'present' | 'built' | 'busy'> {
  const state = async () => (await client.query<{ valid: boolean }>(`SELECT i.indisvalid AS valid FROM pg_index i WHERE i.indexrelid = to_regclass($1)`, [FOUND_INDEX])).rows[0]?.valid ?? null;
  if ((await state()) === true) return 'present';
  const locked = (await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [LOCK_SPACE, INDEX_LOCK])).rows[0]?.ok === true;
  if (!locked) return 'busy';
  try {
    await client.query('SET statement_timeout = 0');
    const valid = await state();
    if (valid === true) return 'present';
    if (valid === false) await client.query(`DROP INDEX CONCURRENTLY IF EXISTS ${FOUND_INDEX}`);
    await client.query(`CREATE INDEX CONCURRENTLY IF NOT EXISTS ${FOUND_INDEX} ON ${T.events} (at) WHERE status = 'found'`);
    return 'built';
  } finally {
    await client.query('RESET statement_timeout').catch(() => undefined);
    await client.query('SELECT pg_advisory_unlock($1, $2)', [LOCK_SPACE, INDEX_LOCK]).catch(() => undefined);
  }
}

/**
 * Creates the schema if missing and checks its version; the version it found. A database whose
 * schema is newer than this avgate's is refused (an older node must not write into tables it does
 * not know).
 */
export async function ensureStatsSchema(client: PoolClient): Promise<number> {
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_SPACE, SCHEMA_LOCK]);
    await client.query(`CREATE TABLE IF NOT EXISTS ${T.version} (component text PRIMARY KEY, version integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`);
    const r = await client.query<{ version: number }>(`SELECT version FROM ${T.version} WHERE component = 'stats'`);
    const found = r.rows[0]?.version ?? null;
    if (found !== null && found > STATS_SCHEMA_VERSION) {
      throw new AvgateError('AVG_ERR_CONFIG', `the statistics schema in the database is version ${found}, newer than this avgate's (${STATS_SCHEMA_VERSION}); upgrade this node`);
    }
    if (found === null || found < STATS_SCHEMA_VERSION) {
      await client.query(DDL_V1);
      await client.query(DDL_V2);
      await client.query(
        `INSERT INTO ${T.version} (component, version) VALUES ('stats', $1) ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_at = now()`,
        [STATS_SCHEMA_VERSION],
      );
    }
    await client.query('COMMIT');
    return found ?? STATS_SCHEMA_VERSION;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
