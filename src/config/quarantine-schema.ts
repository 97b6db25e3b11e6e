import { z } from 'zod';
import { duration, timerDuration, size } from './units-schema.js';

/**
 * `quarantine:` — the encrypted store every front end puts originals in (docs/quarantine.md).
 * Paths are relative to state-dir.
 */
export const quarantineSchema = z.strictObject({
  /** The store's directory (0700): SQLite facts and encrypted objects. */
  dir: z.string().min(1).default('quarantine'),
  /** 32 random bytes, 0600; created on first use; refused when group/other may read it. Back it up: without it nothing can be read. */
  'key-file': z.string().min(1).default('quarantine.key'),
  /** Items older than this are purged (0 = never by age). */
  'max-age': duration.prefault('30d'),
  /** When the stored objects exceed this, the oldest items are purged (0 = no limit). */
  'max-total-size': size.prefault('10GiB'),
  /** How often `avgate serve` purges. */
  'purge-interval': timerDuration.prefault('1h'),
  /** Password of `quarantine export --zip` archives (traditional ZIP encryption). */
  'export-password': z.string().min(1).default('infected'),
});

export type QuarantineConfig = z.output<typeof quarantineSchema>;
