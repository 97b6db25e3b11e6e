import { z } from 'zod';
import { duration, timerDuration } from './units-schema.js';

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
  /** Events wait at most this long in memory before they are written (or until 256 are queued). */
  'flush-interval': timerDuration.prefault('100ms'),
});

export type StatsConfig = z.output<typeof statsSchema>;
