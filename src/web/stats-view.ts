import type { VerdictStatus } from '../core/verdict.js';
import type { ActivityPoint, Bucket, Detection, EventSource, NodeSummary, Period, StatsReader, StoreStatus } from '../stats/types.js';

/** The dashboard's periods: each ends with the current bucket, so there are exactly 24, 168 or 30 buckets. */
export const PERIODS = { '24h': { ms: 24 * 3_600_000, bucket: 'hour' }, '7d': { ms: 7 * 86_400_000, bucket: 'hour' }, '30d': { ms: 30 * 86_400_000, bucket: 'day' } } as const;
export type PeriodName = keyof typeof PERIODS;

export function periodName(text: string | null): PeriodName {
  return text !== null && Object.hasOwn(PERIODS, text) ? (text as PeriodName) : '24h';
}

/** Everything the overview page and `GET /api/v1/stats` show for one period (cluster-wide with PostgreSQL). */
export interface StatsFigures {
  period: PeriodName;
  from: number;
  to: number;
  bucket: Bucket;
  activity: ActivityPoint[];
  topViruses: Array<{ name: string; count: number }>;
  statusesBySource: Array<{ source: EventSource; status: VerdictStatus; count: number }>;
  trafficPerHour: Array<{ t: number; objects: number; bytes: number }>;
  cacheHitRate: { hits: number; total: number; rate: number | null };
  engineLatency: Array<{ engine: string; count: number; avgMs: number; maxMs: number }>;
  byGroup: Array<{ group: string; status: VerdictStatus; count: number }>;
  nodes: NodeSummary[];
  /** The newest found verdicts, whatever the period (RECENT_DETECTIONS at most). */
  recentDetections: Detection[];
  store: StoreStatus;
}

/** Rows of the overview's recent-detections table. */
export const RECENT_DETECTIONS = 25;

/** The queries of one period, in parallel (a network round trip each with PostgreSQL). Rejects when the store cannot answer. */
export async function statsFigures(s: StatsReader, period: PeriodName, now: number): Promise<StatsFigures> {
  const { ms, bucket } = PERIODS[period];
  const unit = bucket === 'hour' ? 3_600_000 : 86_400_000;
  const to = now - (now % unit) + unit;
  const p: Period = { from: to - ms, to };
  const [activity, topViruses, statusesBySource, trafficPerHour, cacheHitRate, engineLatency, byGroup, nodes, recentDetections] = await Promise.all([
    s.activity(p, bucket),
    s.topViruses(p, 10),
    s.statusesBySource(p),
    s.trafficPerHour(p),
    s.cacheHitRate(p),
    s.engineLatency(p),
    s.byGroup(p),
    s.nodes(p),
    s.recentDetections(RECENT_DETECTIONS),
  ]);
  return { period, from: p.from, to: p.to, bucket, activity, topViruses, statusesBySource, trafficPerHour, cacheHitRate, engineLatency, byGroup, nodes, recentDetections, store: s.status() };
}
