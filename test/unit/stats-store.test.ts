import Database from 'better-sqlite3';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { DAY_MS, DURATION_BUCKETS, escapeLabel, HOUR_MS, StatsStore, type StatsStoreOptions } from '../../src/stats/store.js';
import { SUBJECT_MAX, type ScanEvent } from '../../src/stats/types.js';

const dir = mkdtempSync(join(tmpdir(), 'avgate-stats-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** 2026-03-10 00:00 UTC: a day start, so bucket edges are easy to name. */
const T0 = Date.UTC(2026, 2, 10);
let n = 0;

function store(extra: Partial<StatsStoreOptions> = {}): StatsStore {
  return new StatsStore({
    path: join(dir, `s${n++}.sqlite`),
    eventRetentionMs: 30 * DAY_MS,
    rollupRetentionMs: 400 * DAY_MS,
    flushIntervalMs: 100,
    now: () => T0 + 2 * DAY_MS,
    node: 'n1',
    ...extra,
  });
}

function ev(time: number, over: Partial<ScanEvent> = {}): ScanEvent {
  return { time, source: 'icap', status: 'free', virus: null, group: 'avscan', engine: 'clamav', bytes: 100, durationMs: 10, cached: false, ...over };
}

const found = (time: number, virus: string, over: Partial<ScanEvent> = {}) => ev(time, { status: 'found', virus, ...over });

test('events become hourly and daily rollups, split at the bucket edges', async () => {
  const s = store();
  // 00:59:59.999 and 01:00:00.000 fall in different hours; 23:59:59.999 and the next 00:00 in different days.
  s.record(ev(T0 + HOUR_MS - 1));
  s.record(ev(T0 + HOUR_MS));
  s.record(ev(T0 + HOUR_MS + 1, { status: 'error' }));
  s.record(ev(T0 + DAY_MS - 1));
  s.record(ev(T0 + DAY_MS));
  const hours = await s.activity({ from: T0, to: T0 + 2 * HOUR_MS }, 'hour');
  assert.deepEqual(
    hours.map((p) => [p.t, p.byStatus.free, p.byStatus.error]),
    [
      [T0, 1, 0],
      [T0 + HOUR_MS, 1, 1],
    ],
  );
  const days = await s.activity({ from: T0, to: T0 + 2 * DAY_MS }, 'day');
  assert.deepEqual(
    days.map((p) => [p.t, p.byStatus.free + p.byStatus.error]),
    [
      [T0, 4],
      [T0 + DAY_MS, 1],
    ],
  );
  assert.equal(s.rowCount('events'), 5);
  s.close();
});

test('activity: empty buckets included, oldest first, every status present', async () => {
  const s = store();
  s.record(ev(T0 + 30 * 60_000, { status: 'skipped' }));
  s.record(ev(T0 + 3 * HOUR_MS + 5));
  const a = await s.activity({ from: T0, to: T0 + 4 * HOUR_MS }, 'hour');
  assert.equal(a.length, 4);
  assert.deepEqual(
    a.map((p) => p.t),
    [0, 1, 2, 3].map((h) => T0 + h * HOUR_MS),
  );
  assert.deepEqual(a[0]?.byStatus, { free: 0, found: 0, skipped: 1, unknown: 0, error: 0 });
  assert.deepEqual(a[1]?.byStatus, { free: 0, found: 0, skipped: 0, unknown: 0, error: 0 });
  assert.equal(a[3]?.byStatus.free, 1);
  assert.deepEqual((await s.activity({ from: T0 + 10 * DAY_MS, to: T0 + 10 * DAY_MS + 2 * HOUR_MS }, 'hour')).map((p) => p.byStatus.free), [0, 0]);
  s.close();
});

test('period boundaries: from is rounded down to its bucket, to is exclusive', async () => {
  const s = store();
  s.record(ev(T0 + HOUR_MS + 10)); // 01:00
  s.record(ev(T0 + 2 * HOUR_MS)); // 02:00
  s.record(ev(T0 + 3 * HOUR_MS)); // 03:00
  const total = async (from: number, to: number) => (await s.statusesBySource({ from, to })).reduce((k, r) => k + r.count, 0);
  // 01:30 → 03:00: the bucket of 01:00 (holds 01:30) and 02:00; 03:00 starts at `to`, excluded.
  assert.equal(await total(T0 + 90 * 60_000, T0 + 3 * HOUR_MS), 2);
  assert.equal(await total(T0 + 2 * HOUR_MS, T0 + 3 * HOUR_MS), 1);
  assert.equal(await total(T0 + 2 * HOUR_MS, T0 + 3 * HOUR_MS + 1), 2);
  assert.equal((await s.activity({ from: T0 + 90 * 60_000, to: T0 + 3 * HOUR_MS }, 'hour')).length, 2);
  // Longer than 14 days: the daily rollup, the period's first day whole.
  assert.equal(await total(T0 + 5 * HOUR_MS - 20 * DAY_MS, T0 + 5 * HOUR_MS), 3);
  assert.equal(await total(T0 + DAY_MS - 20 * DAY_MS, T0 + DAY_MS), 3);
  assert.equal(await total(T0 - 20 * DAY_MS, T0), 0);
  s.close();
});

test('top viruses: by count, then by name; limited; the period respected', async () => {
  const s = store();
  for (let i = 0; i < 3; i++) s.record(found(T0 + i, 'Win.Worm.B'));
  for (let i = 0; i < 5; i++) s.record(found(T0 + HOUR_MS + i, 'Eicar-Test', { source: 'smtp', group: 'sales' }));
  for (let i = 0; i < 3; i++) s.record(found(T0 + 2 * HOUR_MS + i, 'Win.Worm.A', { cached: true }));
  s.record(found(T0 + 3 * HOUR_MS, 'Doc.Macro'));
  s.record(ev(T0 + 3 * HOUR_MS)); // free: not a virus
  const p = { from: T0, to: T0 + DAY_MS };
  assert.deepEqual(await s.topViruses(p, 10), [
    { name: 'Eicar-Test', count: 5 },
    { name: 'Win.Worm.A', count: 3 },
    { name: 'Win.Worm.B', count: 3 },
    { name: 'Doc.Macro', count: 1 },
  ]);
  assert.deepEqual((await s.topViruses(p, 2)).map((v) => v.name), ['Eicar-Test', 'Win.Worm.A']);
  assert.deepEqual(await s.topViruses({ from: T0 + HOUR_MS, to: T0 + 2 * HOUR_MS }, 10), [{ name: 'Eicar-Test', count: 5 }]);
  // The same answer from the daily rollup (a 30-day period).
  assert.deepEqual(await s.topViruses({ from: T0 - 29 * DAY_MS, to: T0 + DAY_MS }, 1), [{ name: 'Eicar-Test', count: 5 }]);
  s.close();
});

test('statuses by source, groups, traffic per hour', async () => {
  const s = store();
  s.record(ev(T0, { bytes: 1000 }));
  s.record(ev(T0 + 1, { status: 'error', bytes: 0 }));
  s.record(found(T0 + 2, 'X', { source: 'smtp', group: 'sales', bytes: 50 }));
  s.record(ev(T0 + HOUR_MS + 2, { source: 'fs', group: null, bytes: 7 }));
  const p = { from: T0, to: T0 + 3 * HOUR_MS };
  assert.deepEqual(await s.statusesBySource(p), [
    { source: 'fs', status: 'free', count: 1 },
    { source: 'icap', status: 'error', count: 1 },
    { source: 'icap', status: 'free', count: 1 },
    { source: 'smtp', status: 'found', count: 1 },
  ]);
  assert.deepEqual(await s.byGroup(p), [
    { group: 'avscan', status: 'error', count: 1 },
    { group: 'avscan', status: 'free', count: 1 },
    { group: 'sales', status: 'found', count: 1 },
  ]);
  assert.deepEqual(await s.trafficPerHour(p), [
    { t: T0, objects: 3, bytes: 1050 },
    { t: T0 + HOUR_MS, objects: 1, bytes: 7 },
    { t: T0 + 2 * HOUR_MS, objects: 0, bytes: 0 },
  ]);
  s.close();
});

test('cache hit rate, engine latency (avg and max over engine scans, not cache hits)', async () => {
  const s = store();
  assert.deepEqual(await s.cacheHitRate({ from: T0, to: T0 + DAY_MS }), { hits: 0, total: 0, rate: null });
  s.record(ev(T0, { durationMs: 10 }));
  s.record(ev(T0 + HOUR_MS, { durationMs: 30 }));
  s.record(ev(T0 + HOUR_MS + 1, { durationMs: 0.1, cached: true }));
  s.record(ev(T0 + HOUR_MS + 2, { durationMs: 0.1, cached: true }));
  s.record(ev(T0 + 2, { engine: 'clamav+icap', durationMs: 200 }));
  const p = { from: T0, to: T0 + DAY_MS };
  assert.deepEqual(await s.cacheHitRate(p), { hits: 2, total: 5, rate: 0.4 });
  assert.deepEqual(await s.engineLatency(p), [
    { engine: 'clamav', count: 2, avgMs: 20, maxMs: 30 },
    { engine: 'clamav+icap', count: 1, avgMs: 200, maxMs: 200 },
  ]);
  // From the daily rollup: the same figures.
  assert.deepEqual(await s.engineLatency({ from: T0 - 20 * DAY_MS, to: T0 + DAY_MS }), await s.engineLatency(p));
  s.close();
});

test('retention deletes raw events, keeps rollups; old rollups go after rollup-retention', async () => {
  let now = T0 + 2 * DAY_MS;
  const s = store({ eventRetentionMs: DAY_MS, rollupRetentionMs: 10 * DAY_MS, now: () => now });
  s.record(found(T0, 'Old'));
  s.record(ev(T0 + 2 * DAY_MS - 1000));
  s.flush();
  s.prune();
  assert.equal(s.rowCount('events'), 1, 'the event older than a day is gone');
  const p = { from: T0, to: T0 + 3 * DAY_MS };
  assert.deepEqual(await s.topViruses(p, 5), [{ name: 'Old', count: 1 }], 'its rollup stays');
  assert.equal((await s.statusesBySource(p)).reduce((k, r) => k + r.count, 0), 2);
  now = T0 + 13 * DAY_MS; // every bucket ended more than 10 days ago
  s.prune();
  assert.equal(s.rowCount('events'), 0);
  assert.deepEqual(await s.topViruses({ from: T0, to: T0 + 20 * DAY_MS }, 5), [], 'rollups past rollup-retention are gone');
  assert.equal(s.rowCount('rollup_hour'), 0);
  assert.equal(s.rowCount('rollup_day'), 0);
  // Counters since creation are not rollups: they stay.
  assert.match(await s.prometheus(), /^avgate_viruses_total\{name="Old"\} 1$/m);
  s.close();
});

test('batches: written by the timer (flush-interval) or at 256 events, and by close', async () => {
  const path = join(dir, 'batch.sqlite');
  const s = new StatsStore({ path, eventRetentionMs: DAY_MS, rollupRetentionMs: DAY_MS, flushIntervalMs: 20, now: () => T0 });
  const peek = () => {
    const other = new StatsStore({ path, eventRetentionMs: 400 * DAY_MS, rollupRetentionMs: 400 * DAY_MS, flushIntervalMs: 20, now: () => T0 });
    const k = other.rowCount('events');
    other.close();
    return k;
  };
  s.record(ev(T0));
  assert.equal(peek(), 0, 'not written at once');
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(peek(), 1, 'written after flush-interval');
  for (let i = 0; i < 256; i++) s.record(ev(T0 + i));
  await new Promise((r) => setImmediate(r));
  assert.equal(peek(), 257, 'a full batch is written without waiting for the timer');
  s.record(ev(T0));
  s.close();
  assert.equal(peek(), 258, 'close flushes');
});

test('recent detections: found events newest first, with what was scanned (cut to SUBJECT_MAX), free ones keep none', async () => {
  const path = join(dir, 'recent.sqlite');
  const s = store({ path });
  s.record(found(T0 + 1, 'A', { subject: 'http://a.example/x.exe?session=secret&user=bob' }));
  s.record(ev(T0 + 2, { subject: 'http://free.example/' }));
  s.record(found(T0 + 3, 'B', { source: 'smtp', group: 'sales', subject: `Q9/1 ${'n'.repeat(1000)}`, cached: true }));
  s.record(found(T0 + 3, 'C'));
  const d = await s.recentDetections(10);
  assert.deepEqual(
    d.map((r) => [r.time, r.virus, r.source, r.group, r.cached]),
    [
      [T0 + 3, 'C', 'icap', 'avscan', false],
      [T0 + 3, 'B', 'smtp', 'sales', true],
      [T0 + 1, 'A', 'icap', 'avscan', false],
    ],
    'newest first; equal times in the order written, newest first',
  );
  assert.equal(d[0]?.subject, null);
  assert.equal(d[1]?.subject, `Q9/1 ${'n'.repeat(SUBJECT_MAX - 5)}`);
  assert.equal(d[2]?.subject, 'http://a.example/x.exe?…', 'a URL is kept without its query');
  assert.ok(d.every((r) => r.node === 'n1'));
  assert.equal((await s.recentDetections(1)).length, 1);
  assert.equal(s.rowCount('events'), 4);
  s.close();
  // The free event's subject is not stored.
  const db = new Database(path, { readonly: true });
  try {
    assert.deepEqual(db.prepare("SELECT subject FROM events WHERE status = 'free'").all(), [{ subject: null }]);
  } finally {
    db.close();
  }
});

test('a statistics file from before the subject column gets it, and its old events still read', async () => {
  const path = join(dir, 'old.sqlite');
  const db = new Database(path);
  db.exec(`CREATE TABLE events (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
    virus TEXT, grp TEXT, engine TEXT NOT NULL, bytes INTEGER NOT NULL, duration_ms REAL NOT NULL, cached INTEGER NOT NULL)`);
  db.prepare("INSERT INTO events (time, source, status, virus, grp, engine, bytes, duration_ms, cached) VALUES (?, 'http', 'found', 'Old', NULL, 'clamav', 1, 1, 0)").run(T0);
  db.close();
  const s = store({ path });
  s.record(found(T0 + 5, 'New', { subject: '/srv/x' }));
  assert.deepEqual(
    (await s.recentDetections(5)).map((r) => [r.virus, r.subject, r.group]),
    [
      ['New', '/srv/x', 'avscan'],
      ['Old', null, null],
    ],
  );
  s.close();
});

test('record() after close, and odd values, never throw', async () => {
  const s = store();
  s.record(ev(T0, { durationMs: Number.NaN, bytes: -5 }));
  s.close();
  assert.doesNotThrow(() => s.record(ev(T0)));
  assert.doesNotThrow(() => s.close());
  assert.deepEqual(await s.topViruses({ from: T0, to: T0 + DAY_MS }, 5), []);
});

/** One sample line of the text exposition format (0.0.4): name, optional labels, a value. */
const SAMPLE = /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*")(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*")*\})? (-?[0-9.e+-]+|\+Inf|NaN)$/;
const META = /^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped))$/;

test('prometheus: valid exposition lines, HELP/TYPE per family, escaped labels, histogram per engine', async () => {
  const s = store();
  const nasty = 'Evil "quoted" \\ back\nslash';
  s.record(found(T0, nasty, { bytes: 10 }));
  s.record(found(T0, 'Eicar', { source: 'smtp', bytes: 20, cached: true, durationMs: 0.1 }));
  s.record(ev(T0, { bytes: 30, durationMs: 3 }));
  s.record(ev(T0, { engine: 'e"2', durationMs: 200_000 }));
  const text = await s.prometheus();
  assert.ok(text.endsWith('\n'));
  const lines = text.trimEnd().split('\n');
  for (const line of lines) assert.match(line, line.startsWith('#') ? META : SAMPLE, `bad line: ${line}`);
  for (const name of ['avgate_scans_total', 'avgate_scanned_bytes_total', 'avgate_cache_hits_total', 'avgate_viruses_total']) {
    assert.ok(lines.includes(`# TYPE ${name} counter`), name);
    assert.ok(lines.some((l) => l.startsWith(`# HELP ${name} `)), name);
  }
  assert.ok(lines.includes('# TYPE avgate_scan_duration_seconds histogram'));
  assert.ok(lines.includes('avgate_scans_total{source="icap",status="found"} 1'));
  assert.ok(lines.includes('avgate_scans_total{source="icap",status="free"} 2'));
  assert.ok(lines.includes('avgate_scanned_bytes_total{source="icap"} 140'));
  assert.ok(lines.includes('avgate_scanned_bytes_total{source="smtp"} 20'));
  assert.ok(lines.includes('avgate_cache_hits_total 1'));
  assert.ok(lines.includes(`avgate_viruses_total{name="Evil \\"quoted\\" \\\\ back\\nslash"} 1`));
  assert.equal(escapeLabel('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  // clamav: two engine scans (10 ms and 3 ms); the cache hit is not in the histogram.
  assert.ok(lines.includes('avgate_scan_duration_seconds_count{engine="clamav"} 2'));
  assert.ok(lines.includes('avgate_scan_duration_seconds_bucket{engine="clamav",le="0.005"} 1'));
  assert.ok(lines.includes('avgate_scan_duration_seconds_bucket{engine="clamav",le="0.01"} 2'));
  assert.ok(lines.includes('avgate_scan_duration_seconds_bucket{engine="clamav",le="+Inf"} 2'));
  assert.ok(lines.includes(`avgate_scan_duration_seconds_bucket{engine="e\\"2",le="${DURATION_BUCKETS.at(-1)}"} 0`));
  assert.ok(lines.includes('avgate_scan_duration_seconds_bucket{engine="e\\"2",le="+Inf"} 1'));
  const sum = lines.find((l) => l.startsWith('avgate_scan_duration_seconds_sum{engine="clamav"}'));
  assert.ok(sum && Math.abs(Number(sum.split(' ')[1]) - 0.013) < 1e-9);
  s.close();
});

test('prometheus: counters survive a restart; only the 50 most frequent virus names', async () => {
  const path = join(dir, 'restart.sqlite');
  const opts = { path, eventRetentionMs: DAY_MS, rollupRetentionMs: DAY_MS, flushIntervalMs: 100, now: () => T0 };
  const a = new StatsStore(opts);
  for (let i = 0; i < 60; i++) for (let k = 0; k <= i; k++) a.record(found(T0, `V${String(i).padStart(2, '0')}`));
  const created = a.createdAt;
  a.close();
  const b = new StatsStore(opts);
  assert.equal(b.createdAt, created);
  const names = (await b.prometheus()).split('\n').filter((l) => l.startsWith('avgate_viruses_total{'));
  assert.equal(names.length, 50);
  assert.equal(names[0], 'avgate_viruses_total{name="V59"} 60');
  assert.ok(!names.some((l) => l.includes('"V09"')));
  assert.ok((await b.prometheus()).includes(`avgate_scans_total{source="icap",status="found"} ${(60 * 61) / 2}`));
  b.close();
});
