/**
 * Statistics store under load: fills a fresh store with 1 000 000 events spread over 90 days, then
 * times every StatsReader query over short and long periods, and the set of queries one dashboard
 * page makes. Targets: < 50 ms per query, < 200 ms per page. The fill (openBenchStatsStore,
 * fillStatsStore) also gives the console section of `npm run bench` its 1 000 000 events.
 *
 *   node --import tsx bench/stats-fill.ts [--events N] [--days D] [--db FILE]
 *   node --import tsx bench/stats-fill.ts --postgres postgres://user:pass@host/db [--events N] [--days D]
 *
 * With --postgres the same fill goes through the PostgreSQL store (batches of stats.postgres.batch-size,
 * 1000) into that database, whose statistics tables must be empty, and the same queries are timed
 * over the network; the batch write time is reported too.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { VerdictStatus } from '../src/core/verdict.js';
import { parsePostgresUrl } from '../src/config/postgres-url.js';
import { PgStatsStore } from '../src/stats/postgres.js';
import { DAY_MS, StatsStore } from '../src/stats/store.js';
import type { EventSource, Period, ScanEvent, StatsService } from '../src/stats/types.js';

/** Deterministic (mulberry32): the same store every run. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function weighted<T>(r: () => number, items: ReadonlyArray<readonly [T, number]>): T {
  const total = items.reduce((n, [, w]) => n + w, 0);
  let x = r() * total;
  for (const [v, w] of items) {
    x -= w;
    if (x <= 0) return v;
  }
  return (items[items.length - 1] as readonly [T, number])[0];
}

const SOURCES: ReadonlyArray<readonly [EventSource, number]> = [
  ['icap', 60], ['smtp', 20], ['lmtp', 5], ['http', 4], ['ftp', 1], ['pop3', 2], ['imap', 3], ['fs', 3], ['api', 2],
];
const STATUSES: ReadonlyArray<readonly [VerdictStatus, number]> = [
  ['free', 950], ['found', 25], ['skipped', 15], ['unknown', 3], ['error', 7],
];
const GROUPS: Record<EventSource, string[]> = {
  icap: ['avscan', 'srv_clamav'], smtp: ['default', 'sales', 'staff', 'it'], lmtp: ['default', 'staff'],
  http: ['proxy'], ftp: ['proxy'], pop3: ['default', 'staff'], imap: ['default', 'staff'], fs: [], api: ['api'],
};
/** A long tail of names, the first far more frequent (Zipf-like). */
const VIRUSES = Array.from({ length: 400 }, (_, i) => `Win.Trojan.Agent-${1000 + i}`);

export function makeEvents(count: number, days: number, end: number, seed = 1): Generator<ScanEvent> {
  const r = rng(seed);
  const start = end - days * DAY_MS;
  return (function* () {
    for (let i = 0; i < count; i++) {
      const source = weighted(r, SOURCES);
      const status = weighted(r, STATUSES);
      const groups = GROUPS[source];
      const cached = status !== 'error' && r() < 0.3;
      yield {
        time: Math.floor(start + (i / count) * (end - start)),
        source,
        status,
        virus: status === 'found' ? (VIRUSES[Math.floor(VIRUSES.length * r() ** 3)] as string) : null,
        group: groups.length ? (groups[Math.floor(r() * groups.length)] as string) : null,
        engine: r() < 0.9 ? 'clamav' : 'clamav+icap',
        bytes: Math.floor(r() ** 4 * 5_000_000),
        durationMs: cached ? r() * 0.2 : 1 + r() ** 3 * 400,
        cached,
      };
    }
  })();
}

/** A store as the benchmark fills it: nothing is pruned (the events span up to 90 days). */
export function openBenchStatsStore(path: string): StatsStore {
  return new StatsStore({ path, eventRetentionMs: 400 * DAY_MS, rollupRetentionMs: 400 * DAY_MS, flushIntervalMs: 100 });
}

/**
 * Records `count` events spread over the `days` before `end` through the store's own batches (one
 * transaction per 256 events, as the store does under load); returns the seconds it took.
 */
export function fillStatsStore(store: StatsStore, count: number, days: number, end: number): number {
  const t0 = performance.now();
  let n = 0;
  for (const e of makeEvents(count, days, end)) {
    store.record(e);
    if (++n % 256 === 0) store.flush();
  }
  store.flush();
  return (performance.now() - t0) / 1000;
}

/** Rows per table, for the log: `events N, rollup_hour N, rollup_day N`. */
export function statsRowSummary(store: StatsStore): string {
  return (['events', 'rollup_hour', 'rollup_day'] as const).map((t) => `${t} ${store.rowCount(t)}`).join(', ');
}

async function time(fn: () => unknown): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

async function best(fn: () => unknown): Promise<number> {
  const runs: number[] = [];
  for (let i = 0; i < 3; i++) runs.push(await time(fn));
  return Math.min(...runs);
}

/** A PostgreSQL store as the benchmark fills it; the fill waits for each batch, so nothing is dropped. */
function openBenchPgStore(url: string): PgStatsStore {
  const parsed = parsePostgresUrl(url);
  if (!parsed.ok) throw new Error(parsed.error);
  return new PgStatsStore({
    target: parsed.target, node: 'bench', eventRetentionMs: 400 * DAY_MS, rollupRetentionMs: 400 * DAY_MS, flushIntervalMs: 100,
    batchSize: 1000, maxBuffered: 100_000, connectTimeoutMs: 5000, queryTimeoutMs: 60_000, retryIntervalMs: 1000, maxConnections: 4,
  });
}

/** Records through the PostgreSQL store's batches of 1000; seconds, and the median ms of one batch write. */
async function fillPgStore(store: PgStatsStore, count: number, days: number, end: number): Promise<{ seconds: number; batchMs: number }> {
  const t0 = performance.now();
  const batches: number[] = [];
  let n = 0;
  for (const e of makeEvents(count, days, end)) {
    store.record(e);
    if (++n % 1000 === 0) {
      const b0 = performance.now();
      if (!(await store.flush())) throw new Error('a batch could not be written');
      batches.push(performance.now() - b0);
    }
  }
  await store.flush();
  batches.sort((a, b) => a - b);
  return { seconds: (performance.now() - t0) / 1000, batchMs: batches[Math.floor(batches.length / 2)] ?? 0 };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { events: { type: 'string', default: '1000000' }, days: { type: 'string', default: '90' }, db: { type: 'string' }, postgres: { type: 'string' } } });
  const count = Number(values.events);
  const days = Number(values.days);
  const dir = values.db || values.postgres ? null : mkdtempSync(join(tmpdir(), 'avgate-stats-bench-'));
  const path = values.db ?? join(dir ?? '', 'stats.sqlite');
  const now = Date.now();
  const pgStore = values.postgres ? openBenchPgStore(values.postgres) : null;
  const store: StatsService = pgStore ?? openBenchStatsStore(path);
  try {
    if (pgStore) {
      const { seconds, batchMs } = await fillPgStore(pgStore, count, days, now);
      console.log(`filled ${count} events over ${days} days in ${seconds.toFixed(1)} s (${Math.round(count / seconds)} events/s); one batch of 1000: ${batchMs.toFixed(1)} ms (median)`);
      console.log(`rows: ${(await Promise.all((['events', 'hour', 'day'] as const).map(async (t) => `${t} ${await pgStore.rowCount(t)}`))).join(', ')}`);
    } else {
      const sqlite = store as StatsStore;
      const fillS = fillStatsStore(sqlite, count, days, now);
      console.log(`filled ${count} events over ${days} days in ${fillS.toFixed(1)} s (${Math.round(count / fillS)} events/s)`);
      console.log(`rows: ${statsRowSummary(sqlite)}`);
    }

    const last = (ms: number): Period => ({ from: now - ms, to: now });
    const periods: Array<[string, Period]> = [
      ['24h', last(DAY_MS)], ['7d', last(7 * DAY_MS)], ['14d', last(14 * DAY_MS)], ['30d', last(30 * DAY_MS)], ['90d', last(90 * DAY_MS)],
    ];
    const queries: Array<[string, (p: Period) => Promise<unknown>]> = [
      ['activity(hour)', (p) => store.activity(p, 'hour')],
      ['activity(day)', (p) => store.activity(p, 'day')],
      ['topViruses(10)', (p) => store.topViruses(p, 10)],
      ['statusesBySource', (p) => store.statusesBySource(p)],
      ['trafficPerHour', (p) => store.trafficPerHour(p)],
      ['cacheHitRate', (p) => store.cacheHitRate(p)],
      ['engineLatency', (p) => store.engineLatency(p)],
      ['byGroup', (p) => store.byGroup(p)],
      ['nodes', (p) => store.nodes(p)],
    ];
    // One warm-up pass (statement preparation, page cache), then the timed pass: best of three.
    for (const [, q] of queries) await q(last(DAY_MS));
    let worst = 0;
    console.log(`\n${'query'.padEnd(20)}${periods.map(([name]) => name.padStart(10)).join('')}   (ms, best of 3)`);
    for (const [name, q] of queries) {
      const cells: string[] = [];
      for (const [, p] of periods) {
        const ms = await best(() => q(p));
        worst = Math.max(worst, ms);
        cells.push(ms.toFixed(2).padStart(10));
      }
      console.log(`${name.padEnd(20)}${cells.join('')}`);
    }
    const prom = await best(() => store.prometheus());
    worst = Math.max(worst, prom);
    console.log(`${'prometheus()'.padEnd(20)}${prom.toFixed(2).padStart(10)}`);

    // What the dashboard page asks for: the last 24 hours in detail, the last 30 days in outline.
    const page = (p: Period, long: Period) =>
      Promise.all([
        store.activity(p, 'hour'),
        store.activity(long, 'day'),
        store.topViruses(long, 10),
        store.statusesBySource(p),
        store.trafficPerHour(p),
        store.cacheHitRate(p),
        store.engineLatency(p),
        store.byGroup(p),
        store.nodes(p),
        store.prometheus(),
      ]);
    const pageMs = await best(() => page(last(DAY_MS), last(30 * DAY_MS)));
    const pageLongMs = await best(() => page(last(14 * DAY_MS), last(90 * DAY_MS)));
    console.log(`\ndashboard page (24h + 30d): ${pageMs.toFixed(1)} ms; (14d + 90d): ${pageLongMs.toFixed(1)} ms  (target < 200 ms)`);
    console.log(`slowest query: ${worst.toFixed(2)} ms (target < 50 ms) ${worst < 50 && Math.max(pageMs, pageLongMs) < 200 ? 'OK' : 'OVER TARGET'}`);
  } finally {
    await store.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
