import { hostname } from 'node:os';
import { z } from 'zod';
import { parsePostgresUrl, POSTGRES_URL_FORM } from './postgres-url.js';
import { duration, positiveInt, timerDuration } from './units-schema.js';

/**
 * `stats.postgres`: the shared statistics database of a cluster (docs/stats.md, docs/scale-out.md).
 * Every limit that keeps statistics from ever holding up scanning is named here.
 */
const postgresSchema = z.strictObject({
  /** postgres://user:password@host:port/database (host may be a unix-socket directory: ?host=/dir). */
  url: z.string({ error: (iss) => (iss.input === undefined ? `required: ${POSTGRES_URL_FORM}` : `expected a string: ${POSTGRES_URL_FORM}`) }).superRefine((s, ctx) => {
    const r = parsePostgresUrl(s);
    if (!r.ok) ctx.addIssue({ code: 'custom', message: r.error });
  }),
  /** Events held in memory while the database is slow or down; past this the oldest are dropped and counted. */
  'max-buffered': positiveInt.max(10_000_000).default(100_000),
  /** Events per write (one multi-row INSERT and the rollup upserts, in one transaction). */
  'batch-size': positiveInt.max(50_000).default(1000),
  /** A connection to the database must be made within this. */
  'connect-timeout': timerDuration.prefault('5s'),
  /** Each statement (dashboard reads, a batch's writes) must finish within this (server-side statement_timeout, and on the client). */
  'query-timeout': timerDuration.prefault('5s'),
  /** While the database is unreachable, a write is tried again this often. */
  'retry-interval': timerDuration.prefault('5s'),
  /** Connections this node opens at most, shared by the batch writer (one at a time) and the dashboard's queries. */
  'max-connections': z.number().int().min(2).max(100).default(4),
});

/**
 * The `stats` section: the statistics store (docs/stats.md). Every verdict is an event; events are
 * rolled up by hour and day as they are written. Defaults are the ones in
 * config/avgate.example.yaml and docs/config.md.
 */
export const statsSchema = z.strictObject({
  /** Record every verdict with `avgate serve`. */
  enabled: z.boolean().default(true),
  /** SQLite file, relative to state-dir. */
  db: z.string().min(1).default('stats.sqlite'),
  /** Raw events older than this are deleted (the rollups keep their sums). */
  'event-retention': duration.prefault('30d'),
  /** Hourly and daily rollups older than this are deleted. */
  'rollup-retention': duration.prefault('400d'),
  /** Events wait at most this long in memory before they are written (or until a batch is queued). */
  'flush-interval': timerDuration.prefault('100ms'),
  /** This node's name in the statistics (the dashboard's node table); null: the host name. */
  node: z
    .string()
    .regex(/^[\x21-\x7e]{1,64}$/, 'expected 1 to 64 printable ASCII characters without spaces')
    .nullable()
    .default(null),
  /** null: SQLite (`db`); else the shared PostgreSQL database every node writes into. */
  postgres: postgresSchema.nullable().default(null),
});

export type StatsConfig = z.output<typeof statsSchema>;
export type StatsPostgresConfig = NonNullable<StatsConfig['postgres']>;

/** The name this node's events carry. */
export function statsNodeName(stats: Pick<StatsConfig, 'node'>): string {
  return stats.node ?? hostname();
}
