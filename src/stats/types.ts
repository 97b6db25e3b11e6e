import type { VerdictStatus } from '../core/verdict.js';

/**
 * Statistics: every verdict becomes an event (append-only), rolled up by hour and by day at write
 * time so the dashboard's queries read rollups, never the raw events. Front ends say where a scan
 * came from with `ScanRequest.origin`; the scanner reports each verdict to a `StatsRecorder`.
 */
export const EVENT_SOURCES = ['icap', 'smtp', 'lmtp', 'http', 'ftp', 'pop3', 'imap', 'fs', 'api'] as const;
export type EventSource = (typeof EVENT_SOURCES)[number];

/** Where a scan request came from (front end, policy group or ICAP service). */
export interface ScanOrigin {
  source: EventSource;
  group?: string | null;
}

export interface ScanEvent {
  /** Epoch milliseconds. */
  time: number;
  source: EventSource;
  status: VerdictStatus;
  /** First virus name for found, else null. */
  virus: string | null;
  group: string | null;
  engine: string;
  bytes: number;
  durationMs: number;
  cached: boolean;
}

export interface StatsRecorder {
  /** Never throws, never blocks on I/O: events are written in batches. */
  record(event: ScanEvent): void;
}

/**
 * A period: epoch milliseconds, `from` inclusive, `to` exclusive. Queries read whole buckets: the
 * bucket holding `from` counts whole (its start is `from` rounded down), buckets starting at or
 * after `to` do not. Periods up to 14 days are read from hourly buckets, longer ones from daily
 * buckets (UTC days).
 */
export interface Period {
  from: number;
  to: number;
}

export type Bucket = 'hour' | 'day';

export interface ActivityPoint {
  /** Start of the bucket, epoch ms (UTC). */
  t: number;
  /** Events per verdict status in the bucket. */
  byStatus: Record<VerdictStatus, number>;
}

export interface StatsReader {
  /** Events per bucket and status over the period (empty buckets included, oldest first). */
  activity(p: Period, bucket: Bucket): ActivityPoint[];
  /** Found verdicts by first virus name, most frequent first (ties by name). */
  topViruses(p: Period, limit: number): Array<{ name: string; count: number }>;
  statusesBySource(p: Period): Array<{ source: EventSource; status: VerdictStatus; count: number }>;
  /** Objects and bytes scanned per hour (the hourly traffic table): every hour of the period, empty ones as 0, oldest first. */
  trafficPerHour(p: Period): Array<{ t: number; objects: number; bytes: number }>;
  /** Verdicts from the verdict cache among all verdicts; rate null when there were none. */
  cacheHitRate(p: Period): { hits: number; total: number; rate: number | null };
  /** Per engine (label as in verdicts, `a+b` for several): scans an engine did, cache hits not counted. */
  engineLatency(p: Period): Array<{ engine: string; count: number; avgMs: number; maxMs: number }>;
  /** Per policy group or ICAP service; events without a group (the CLI's) are left out. */
  byGroup(p: Period): Array<{ group: string; status: VerdictStatus; count: number }>;
  /** Prometheus text exposition (version 0.0.4) of the counters since the store was created. */
  prometheus(): string;
}
