import { VERDICT_STATUSES, type VerdictStatus } from '../core/verdict.js';
import { SUBJECT_MAX, type ActivityPoint, type Period, type ScanEvent } from './types.js';

/**
 * What both statistics stores (SQLite, PostgreSQL) share: bucket arithmetic, the choice between
 * the hourly and the daily rollup, and a batch of events summed per rollup key in memory, so a
 * write is one upsert per key and batch, not one per event. The two stores answer the same
 * questions the same way because they take these from one place.
 */
export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;
/** Periods up to this long are answered from the hourly rollup, longer ones from the daily one. */
export const HOURLY_UP_TO_MS = 14 * DAY_MS;

/** One rollup row's increment: the key (bucket start and dimensions) and the sums to add. */
export interface RollupDelta {
  t: number;
  source: string;
  status: string;
  virus: string;
  grp: string;
  engine: string;
  count: number;
  bytes: number;
  cached: number;
  durSum: number;
  durMax: number;
}

export interface TotalDelta {
  source: string;
  status: string;
  count: number;
  bytes: number;
  cached: number;
}

/** A batch of events, cleaned and summed for the rollups and the counters since creation. */
export interface SummedBatch {
  /** The events as they are stored: time and bytes whole, odd values as 0. */
  events: ScanEvent[];
  hours: RollupDelta[];
  days: RollupDelta[];
  totals: TotalDelta[];
  viruses: Array<{ name: string; count: number }>;
  /** Time of the newest event (epoch ms), null for an empty batch. */
  newest: number | null;
}

/** Modulo that stays positive for times before 1970 (bucket starts are floors). */
export function mod(n: number, m: number): number {
  return ((n % m) + m) % m;
}

/** Buckets overlapping the period: `from` rounded down to its bucket's start, buckets starting before `to`. */
export function bucketRange(p: Period, size: number): [number, number] {
  return [p.from - mod(p.from, size), p.to];
}

/** Which rollup answers a period (hourly up to 14 days, else daily) and its bucket range. */
export function rollupFor(p: Period): { daily: boolean; from: number; to: number } {
  const daily = p.to - p.from > HOURLY_UP_TO_MS;
  const [from, to] = bucketRange(p, daily ? DAY_MS : HOUR_MS);
  return { daily, from, to };
}

export function emptyByStatus(): Record<VerdictStatus, number> {
  return Object.fromEntries(VERDICT_STATUSES.map((s) => [s, 0])) as Record<VerdictStatus, number>;
}

/** Every bucket of [from, to) with zeros, then the rows' counts added: empty buckets included, oldest first. */
export function activitySeries(from: number, to: number, size: number, rows: Iterable<{ t: number; status: string; n: number }>): ActivityPoint[] {
  const points = new Map<number, ActivityPoint>();
  for (let t = from; t < to; t += size) points.set(t, { t, byStatus: emptyByStatus() });
  for (const r of rows) {
    const point = points.get(r.t);
    if (point && Object.hasOwn(point.byStatus, r.status)) point.byStatus[r.status as VerdictStatus] += r.n;
  }
  return [...points.values()];
}

/** Every hour of [from, to) with zeros, then the rows' sums: the hourly traffic table. */
export function trafficSeries(from: number, to: number, rows: Iterable<{ t: number; n: number; b: number }>): Array<{ t: number; objects: number; bytes: number }> {
  const out = new Map<number, { t: number; objects: number; bytes: number }>();
  for (let t = from; t < to; t += HOUR_MS) out.set(t, { t, objects: 0, bytes: 0 });
  for (const r of rows) {
    const row = out.get(r.t);
    if (row) {
      row.objects = r.n;
      row.bytes = r.b;
    }
  }
  return [...out.values()];
}

/**
 * Cleans and sums a batch. Duration sums and maxima count engine scans only (a cache hit's
 * duration is a lookup and would hide the engine's latency); null virus and group become '' in the
 * rollups (a NULL in a key would make every row distinct for the upsert).
 */
export function summarize(batch: readonly ScanEvent[]): SummedBatch {
  const hours = new Map<string, RollupDelta>();
  const days = new Map<string, RollupDelta>();
  const totals = new Map<string, TotalDelta>();
  const viruses = new Map<string, number>();
  const events: ScanEvent[] = [];
  let newest: number | null = null;
  const add = (into: Map<string, RollupDelta>, t: number, e: ScanEvent, virus: string, grp: string) => {
    const key = `${t}\0${e.source}\0${e.status}\0${virus}\0${grp}\0${e.engine}`;
    let d = into.get(key);
    if (!d) {
      d = { t, source: e.source, status: e.status, virus, grp, engine: e.engine, count: 0, bytes: 0, cached: 0, durSum: 0, durMax: 0 };
      into.set(key, d);
    }
    d.count++;
    d.bytes += e.bytes;
    if (e.cached) d.cached++;
    else {
      d.durSum += e.durationMs;
      d.durMax = Math.max(d.durMax, e.durationMs);
    }
  };
  for (const raw of batch) {
    const e: ScanEvent = {
      ...raw,
      time: Math.floor(raw.time),
      bytes: Number.isFinite(raw.bytes) && raw.bytes > 0 ? Math.floor(raw.bytes) : 0,
      durationMs: Number.isFinite(raw.durationMs) && raw.durationMs > 0 ? raw.durationMs : 0,
      subject: raw.status === 'free' || typeof raw.subject !== 'string' || raw.subject === '' ? null : storedSubject(raw.subject),
    };
    events.push(e);
    newest = newest === null ? e.time : Math.max(newest, e.time);
    const virus = e.virus ?? '';
    const grp = e.group ?? '';
    add(hours, e.time - mod(e.time, HOUR_MS), e, virus, grp);
    add(days, e.time - mod(e.time, DAY_MS), e, virus, grp);
    const tk = `${e.source}\0${e.status}`;
    let tot = totals.get(tk);
    if (!tot) {
      tot = { source: e.source, status: e.status, count: 0, bytes: 0, cached: 0 };
      totals.set(tk, tot);
    }
    tot.count++;
    tot.bytes += e.bytes;
    if (e.cached) tot.cached++;
    if (e.status === 'found' && e.virus) viruses.set(e.virus, (viruses.get(e.virus) ?? 0) + 1);
  }
  return {
    events,
    hours: [...hours.values()],
    days: [...days.values()],
    totals: [...totals.values()],
    viruses: [...viruses].map(([name, count]) => ({ name, count })),
    newest,
  };
}

/**
 * An event's subject as it is kept (for 30 days, in a database a cluster shares): a URL without
 * its query (which may carry session tokens or personal data), at most SUBJECT_MAX characters.
 */
function storedSubject(subject: string): string {
  const q = /^[a-z][a-z0-9+.-]*:\/\//i.test(subject) ? subject.indexOf('?') : -1;
  return (q >= 0 ? `${subject.slice(0, q)}?…` : subject).slice(0, SUBJECT_MAX);
}
