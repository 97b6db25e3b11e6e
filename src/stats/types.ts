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
  /**
   * What was scanned, as the front end named it (a URL, `queue-id/part file-name`, a path), at
   * most SUBJECT_MAX characters; kept for verdicts other than free (the recent detections), else
   * null or absent.
   */
  subject?: string | null;
}

/** Characters of an event's subject kept. */
export const SUBJECT_MAX = 400;

/** One found verdict of the recent-detections list (newest first). */
export interface Detection {
  time: number;
  node: string;
  source: EventSource;
  virus: string | null;
  group: string | null;
  subject: string | null;
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

/** One node's share of a period (the dashboard's node table). */
export interface NodeSummary {
  /** `stats.node` of the node (its hostname by default). */
  node: string;
  /** Verdicts of the period, found ones, cache hits, bytes. */
  events: number;
  found: number;
  cacheHits: number;
  bytes: number;
  /** Time of the node's newest event ever stored (epoch ms); null when none is known. */
  lastEvent: number | null;
  /** When the node last wrote to the store (epoch ms; it writes at least once a minute while it runs). */
  lastSeen: number | null;
  /** Events the node lost (queue full, write failed): PostgreSQL since the node first wrote, SQLite since the process started. */
  dropped: number;
}

/** The store as this process sees it: what it holds in memory, what it lost, whether it can write. */
export interface StoreStatus {
  backend: 'sqlite' | 'postgres';
  node: string;
  /** Events waiting in memory to be written. */
  buffered: number;
  /** Events this process lost since it started. */
  dropped: number;
  /** False while writes fail (PostgreSQL unreachable); always true for SQLite. */
  reachable: boolean;
  /** Since when writes fail (epoch ms), and why. */
  unreachableSince: number | null;
  lastError: string | null;
}

/**
 * Queries answer cluster-wide figures: with the PostgreSQL backend every node's events, with SQLite
 * this node's. They return Promises (SQLite answers at once, PostgreSQL over the network within
 * `stats.postgres.query-timeout`) and reject when the database cannot answer.
 */
export interface StatsReader {
  /** Events per bucket and status over the period (empty buckets included, oldest first). */
  activity(p: Period, bucket: Bucket): Promise<ActivityPoint[]>;
  /** Found verdicts by first virus name, most frequent first (ties by name). */
  topViruses(p: Period, limit: number): Promise<Array<{ name: string; count: number }>>;
  statusesBySource(p: Period): Promise<Array<{ source: EventSource; status: VerdictStatus; count: number }>>;
  /** Objects and bytes scanned per hour (the hourly traffic table): every hour of the period, empty ones as 0, oldest first. */
  trafficPerHour(p: Period): Promise<Array<{ t: number; objects: number; bytes: number }>>;
  /** Verdicts from the verdict cache among all verdicts; rate null when there were none. */
  cacheHitRate(p: Period): Promise<{ hits: number; total: number; rate: number | null }>;
  /** Per engine (label as in verdicts, `a+b` for several): scans an engine did, cache hits not counted. */
  engineLatency(p: Period): Promise<Array<{ engine: string; count: number; avgMs: number; maxMs: number }>>;
  /** Per policy group or ICAP service; events without a group (the CLI's) are left out. */
  byGroup(p: Period): Promise<Array<{ group: string; status: VerdictStatus; count: number }>>;
  /** The newest found verdicts (at most `limit`, newest first), from the raw events (kept event-retention). */
  recentDetections(limit: number): Promise<Detection[]>;
  /** Per node, by name: the period's figures, and when each node last wrote. Nodes known to the store without events in the period are listed with zeros. */
  nodes(p: Period): Promise<NodeSummary[]>;
  /** Prometheus text exposition (version 0.0.4): this node's counters (never the cluster's sums), its histogram and the store's health. Never rejects. */
  prometheus(): Promise<string>;
  /** This process's side of the store, at once. */
  status(): StoreStatus;
}

/** A statistics store as `serve` holds it: record, read, and close (which writes what is queued). */
export interface StatsService extends StatsRecorder, StatsReader {
  /** Writes what is queued now (SQLite at once; PostgreSQL resolves true when everything reached the database). */
  flush(): void | Promise<boolean>;
  close(): void | Promise<void>;
}
