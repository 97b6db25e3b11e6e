import { metricFamily } from '../core/prometheus-text.js';
import type { CacheStats } from './verdict-cache.js';

/**
 * The verdict cache's counters in Prometheus text format, for /metrics. Since this process
 * started (counters reset with it); the statistics store's avgate_cache_hits_total counts the
 * verdicts answered from any level over its whole history.
 */
export function cachePrometheus(s: CacheStats): string {
  const out: string[] = [];
  const family = (name: string, type: 'counter' | 'gauge', help: string, samples: Array<[string, number]>) => metricFamily(out, name, type, help, samples);
  family('avgate_verdict_cache_local_lookups_total', 'counter', 'Look-ups of the local levels (memory, SQLite) since start, by result.', [
    ['{result="hit"}', s.hits],
    ['{result="miss"}', s.misses],
  ]);
  family('avgate_verdict_cache_sqlite_lookups_total', 'counter', 'Look-ups that reached SQLite since start.', [['', s.sqliteLookups]]);
  family('avgate_verdict_cache_memory_entries', 'gauge', 'Entries in the memory level.', [['', s.memoryEntries]]);
  const r = s.shared;
  if (r) {
    family('avgate_verdict_cache_shared_up', 'gauge', '1 while a connection to the shared level (Redis) is up.', [['', r.up ? 1 : 0]]);
    family('avgate_verdict_cache_shared_lookups_total', 'counter', 'Look-ups of the shared level (Redis) since start, by result; all but hit are misses for the scan.', [
      ['{result="hit"}', r.hits],
      ['{result="miss"}', r.misses],
      ['{result="invalid"}', r.invalid],
      ['{result="timeout"}', r.timeouts],
      ['{result="error"}', r.errors],
      ['{result="skipped"}', r.skipped],
    ]);
    family('avgate_verdict_cache_shared_writes_total', 'counter', 'Verdicts sent to the shared level since start.', [['', r.writes]]);
    family('avgate_verdict_cache_shared_writes_failed_total', 'counter', 'Writes sent and answered with an error or lost with their connection.', [['', r.writeErrors]]);
    family('avgate_verdict_cache_shared_writes_dropped_total', 'counter', 'Writes not sent: Redis down or max-pending-writes in flight.', [['', r.droppedWrites]]);
  }
  return `${out.join('\n')}\n`;
}
