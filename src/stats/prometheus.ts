/**
 * The Prometheus text exposition (version 0.0.4) both statistics stores give: counters read from
 * their tables, the scan duration histogram kept in memory, and the store's own health.
 */

import { escapeLabel, metricFamily } from '../core/prometheus-text.js';

export { escapeLabel };

/** Upper bounds (seconds) of the scan duration histogram. */
export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120] as const;
/** Only the most frequent names are exported, to bound the metric's cardinality. */
export const PROMETHEUS_TOP_VIRUSES = 50;

interface Histogram {
  /** Non-cumulative counts per bucket; the last slot is +Inf. */
  counts: number[];
  sum: number;
  count: number;
}

/** Scan durations per engine since the process started (engine scans only, not cache hits). */
export class DurationHistograms {
  private readonly byEngine = new Map<string, Histogram>();

  observe(engine: string, seconds: number): void {
    let h = this.byEngine.get(engine);
    if (!h) {
      h = { counts: new Array<number>(DURATION_BUCKETS.length + 1).fill(0), sum: 0, count: 0 };
      this.byEngine.set(engine, h);
    }
    const s = Number.isFinite(seconds) && seconds > 0 ? seconds : 0;
    const i = DURATION_BUCKETS.findIndex((le) => s <= le);
    const slot = i === -1 ? DURATION_BUCKETS.length : i;
    h.counts[slot] = (h.counts[slot] ?? 0) + 1;
    h.sum += s;
    h.count++;
  }

  lines(): string[] {
    const out: string[] = [];
    for (const [engine, h] of [...this.byEngine].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const e = escapeLabel(engine);
      let cumulative = 0;
      DURATION_BUCKETS.forEach((le, i) => {
        cumulative += h.counts[i] as number;
        out.push(`avgate_scan_duration_seconds_bucket{engine="${e}",le="${le}"} ${cumulative}`);
      });
      out.push(`avgate_scan_duration_seconds_bucket{engine="${e}",le="+Inf"} ${h.count}`);
      out.push(`avgate_scan_duration_seconds_sum{engine="${e}"} ${h.sum}`);
      out.push(`avgate_scan_duration_seconds_count{engine="${e}"} ${h.count}`);
    }
    return out;
  }
}

export interface PrometheusInput {
  /** Counters since the store (SQLite) or the node (PostgreSQL) began; null when they could not be read. */
  totals: Array<{ source: string; status: string; count: number; bytes: number; cached: number }> | null;
  /** The most frequent virus names, most frequent first; null when they could not be read. */
  viruses: Array<{ name: string; count: number }> | null;
  /** Why the counters are missing (a comment line), when they are. */
  unreadable?: string;
  histograms: DurationHistograms;
  /** Events this process lost (queue full, write failed). */
  dropped: number;
  /** Events waiting in memory to be written. */
  buffered: number;
  /** PostgreSQL only: 1 while writes reach the database. */
  databaseUp?: boolean;
}

export function renderPrometheus(d: PrometheusInput): string {
  const lines: string[] = [];
  const family = (name: string, type: 'counter' | 'gauge' | 'histogram', help: string) => metricFamily(lines, name, type, help);
  if (d.unreadable !== undefined) lines.push(`# avgate: the counters could not be read: ${d.unreadable.replace(/\n/g, ' ')}`);
  const totals = d.totals ?? [];
  family('avgate_scans_total', 'counter', 'Verdicts recorded since the statistics store was created, by front end and status.');
  for (const r of totals) lines.push(`avgate_scans_total{source="${escapeLabel(r.source)}",status="${escapeLabel(r.status)}"} ${r.count}`);
  family('avgate_scanned_bytes_total', 'counter', 'Bytes of content scanned (cache hits included), by front end.');
  const bytes = new Map<string, number>();
  for (const r of totals) bytes.set(r.source, (bytes.get(r.source) ?? 0) + r.bytes);
  for (const [source, n] of bytes) lines.push(`avgate_scanned_bytes_total{source="${escapeLabel(source)}"} ${n}`);
  family('avgate_cache_hits_total', 'counter', 'Verdicts answered from the verdict cache.');
  if (d.totals) lines.push(`avgate_cache_hits_total ${totals.reduce((n, r) => n + r.cached, 0)}`);
  family('avgate_viruses_total', 'counter', `Found verdicts by first virus name (the ${PROMETHEUS_TOP_VIRUSES} most frequent names).`);
  for (const r of d.viruses ?? []) lines.push(`avgate_viruses_total{name="${escapeLabel(r.name)}"} ${r.count}`);
  family('avgate_scan_duration_seconds', 'histogram', 'Duration of scans an engine did (cache hits excluded), since the process started.');
  lines.push(...d.histograms.lines());
  family('avgate_stats_dropped_events_total', 'counter', 'Statistics events this process lost (queue full, write failed), since it started.');
  lines.push(`avgate_stats_dropped_events_total ${d.dropped}`);
  family('avgate_stats_buffered_events', 'gauge', 'Statistics events waiting in memory to be written.');
  lines.push(`avgate_stats_buffered_events ${d.buffered}`);
  if (d.databaseUp !== undefined) {
    family('avgate_stats_database_up', 'gauge', '1 while statistics writes reach the PostgreSQL database, 0 while it is unreachable.');
    lines.push(`avgate_stats_database_up ${d.databaseUp ? 1 : 0}`);
  }
  return `${lines.join('\n')}\n`;
}
