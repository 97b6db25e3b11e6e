import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { parseConfigText } from '../../src/config/loader.js';
import { parsePostgresUrl } from '../../src/config/postgres-url.js';
import type { StatsPostgresConfig } from '../../src/config/stats-schema.js';
import type { Logger } from '../../src/core/logging.js';
import type { VerdictStatus } from '../../src/core/verdict.js';
import { checkPgStats } from '../../src/stats/open.js';
import { PgStatsStore, type PgStatsOptions } from '../../src/stats/postgres.js';
import { DAY_MS, HOUR_MS, StatsStore } from '../../src/stats/store.js';
import { SUBJECT_MAX, type EventSource, type Period, type ScanEvent, type StatsReader } from '../../src/stats/types.js';
import { closedPort } from '../helpers/fault-server.js';
import { PG_PASSWORD, startTestPostgres, type TestPostgres } from '../helpers/postgres.js';
import { waitFor, within } from '../helpers/wait.js';
import { rng } from '../../bench/stats-fill.js';

/**
 * The PostgreSQL statistics store against a real PostgreSQL 15 (test/helpers/postgres.ts): the
 * SQLite store is the oracle for every query, two nodes sum up, an outage is survived with a
 * bounded buffer and one warn line, retention prunes, the schema is created once.
 */
const T0 = Date.UTC(2026, 2, 10); // a day start
interface Line {
  level: number;
  msg: string;
  reason?: string;
  [k: string]: unknown;
}

function capture(): { log: Logger; lines: Line[] } {
  const lines: Line[] = [];
  const log = pino({ level: 'debug' }, { write: (l: string) => void lines.push(JSON.parse(l) as Line) }) as unknown as Logger;
  return { log, lines };
}

const SOURCES: EventSource[] = ['icap', 'smtp', 'lmtp', 'http', 'api', 'fs'];
const STATUSES: VerdictStatus[] = ['free', 'free', 'free', 'found', 'found', 'skipped', 'unknown', 'error'];
// Names whose order differs between byte order and a linguistic collation (case, accents, punctuation).
const VIRUSES = ['eicar', 'Eicar', 'EICAR-Test', 'Win.Trojan.A', 'win.trojan.b', 'Ärger', 'Z"quote\\back', '_under', 'a b'];
const GROUPS = [null, 'avscan', 'Sales', 'sales', 'it', 'Ωmega'];
const ENGINES = ['clamav', 'clamav+icap', 'ZEngine', 'a-engine'];

/** Events over 40 days with many on bucket edges (an hour's or a day's first and last millisecond). */
function generate(n: number, seed: number): ScanEvent[] {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)] as T;
  const out: ScanEvent[] = [];
  for (let i = 0; i < n; i++) {
    let time = T0 - 30 * DAY_MS + Math.floor(r() * 40 * DAY_MS);
    const edge = r();
    if (edge < 0.15) time = time - (time % HOUR_MS) - (r() < 0.5 ? 0 : 1);
    else if (edge < 0.25) time = time - (time % DAY_MS) - (r() < 0.5 ? 0 : 1);
    const status = pick(STATUSES);
    const cached = status !== 'error' && r() < 0.3;
    out.push({
      time,
      source: pick(SOURCES),
      status,
      virus: status === 'found' ? pick(VIRUSES) : null,
      group: pick(GROUPS),
      engine: pick(ENGINES),
      // Whole numbers and quarters: sums are exact in any order, so averages compare exactly.
      bytes: r() < 0.02 ? -5 : Math.floor(r() * 100_000),
      durationMs: r() < 0.02 ? Number.NaN : Math.floor(r() * 2000) / 4,
      cached,
      // What was scanned: kept only for verdicts other than free; sometimes none, or odd text.
      subject: r() < 0.2 ? null : pick(['http://h.example/a.exe', 'Q1/2 Ärger.zip', 'x'.repeat(SUBJECT_MAX + 7), "/srv/it's \"q\"", '']),
    });
  }
  return out;
}

/** Periods with both edges on, just before and just after bucket boundaries, hourly and daily, and random ones. */
function periods(seed: number): Period[] {
  const r = rng(seed);
  const out: Period[] = [
    { from: T0, to: T0 + DAY_MS },
    { from: T0 - 1, to: T0 + HOUR_MS },
    { from: T0 + 1, to: T0 + HOUR_MS + 1 },
    { from: T0 - 14 * DAY_MS, to: T0 }, // exactly 14 days: hourly
    { from: T0 - 14 * DAY_MS - 1, to: T0 }, // one ms longer: daily
    // Mid-day: the hourly and the daily rollup answer differently (the daily one reads the first day whole).
    { from: T0 - 14 * DAY_MS + 5 * HOUR_MS + 7, to: T0 + 5 * HOUR_MS + 7 },
    { from: T0 - 14 * DAY_MS + 5 * HOUR_MS + 6, to: T0 + 5 * HOUR_MS + 7 },
    { from: T0 - 30 * DAY_MS, to: T0 + 10 * DAY_MS },
    { from: T0 - 40 * DAY_MS, to: T0 + 40 * DAY_MS },
    { from: T0 + 20 * DAY_MS, to: T0 + 21 * DAY_MS }, // no events
  ];
  for (let i = 0; i < 16; i++) {
    const from = T0 - 30 * DAY_MS + Math.floor(r() * 40 * DAY_MS);
    const len = r() < 0.5 ? 1 + Math.floor(r() * 3 * DAY_MS) : Math.floor(r() * 30 * DAY_MS) + 1;
    out.push({ from, to: from + len });
  }
  return out;
}

async function answers(s: StatsReader, p: Period): Promise<Record<string, unknown>> {
  const long = p.to - p.from > 20 * DAY_MS;
  return {
    hour: long ? null : await s.activity(p, 'hour'),
    day: await s.activity(p, 'day'),
    top5: await s.topViruses(p, 5),
    top: await s.topViruses(p, 100),
    bySource: await s.statusesBySource(p),
    traffic: long ? null : await s.trafficPerHour(p),
    cache: await s.cacheHitRate(p),
    latency: await s.engineLatency(p),
    groups: await s.byGroup(p),
  };
}

/** The counter samples of one exposition (not the histogram, which is per process and per store). */
function counters(text: string): string[] {
  return text.split('\n').filter((l) => /^avgate_(scans_total|scanned_bytes_total|cache_hits_total|viruses_total)[ {]/.test(l));
}

/**
 * A TCP relay to PostgreSQL that injects one fault a real server gives only by chance: once
 * armed, the next ReadyForQuery it relays is followed, in the same write, by a FATAL
 * ErrorResponse (57P01, as on an administrator's terminate), and the connection is cut.
 */
async function startCuttingProxy(upstreamPort: number): Promise<{ port: number; injected: number; arm(): void; close(): Promise<void> }> {
  const { createServer, connect } = await import('node:net');
  const field = (code: string, value: string) => Buffer.concat([Buffer.from(code), Buffer.from(value), Buffer.from([0])]);
  const body = Buffer.concat([field('S', 'FATAL'), field('V', 'FATAL'), field('C', '57P01'), field('M', 'terminating connection due to administrator command'), Buffer.from([0])]);
  const head = Buffer.alloc(5);
  head.write('E', 0);
  head.writeInt32BE(body.length + 4, 1);
  const fatal = Buffer.concat([head, body]);
  const state = { port: 0, injected: 0, armed: false };
  const sockets = new Set<import('node:net').Socket>();
  const server = createServer((client) => {
    const upstream = connect(upstreamPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    const cutBoth = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', cutBoth).on('close', cutBoth);
    upstream.on('error', cutBoth).on('close', cutBoth);
    client.pipe(upstream);
    // Server to client, message by message: a type byte and a length that counts itself.
    let pending = Buffer.alloc(0);
    upstream.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      let at = 0;
      while (pending.length - at >= 5) {
        const len = pending.readInt32BE(at + 1);
        if (pending.length - at < 1 + len) break;
        const end = at + 1 + len;
        if (state.armed && pending[at] === 0x5a /* Z */) {
          state.armed = false;
          state.injected++;
          client.write(Buffer.concat([pending.subarray(0, end), fatal]));
          client.end();
          upstream.destroy();
          return;
        }
        at = end;
      }
      if (at > 0) client.write(pending.subarray(0, at));
      pending = pending.subarray(at);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as import('node:net').AddressInfo).port;
  return {
    get port() {
      return state.port;
    },
    get injected() {
      return state.injected;
    },
    arm() {
      state.armed = true;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

describe('statistics in PostgreSQL', () => {
  let pgt: TestPostgres;
  const stores: PgStatsStore[] = [];
  before(async () => {
    pgt = await startTestPostgres();
  });
  after(async () => {
    await Promise.all(stores.map((s) => s.close()));
    await pgt?.destroy();
  });

  function pgStore(url: string, node: string, extra: Partial<PgStatsOptions> = {}): PgStatsStore {
    const parsed = parsePostgresUrl(url);
    assert.ok(parsed.ok);
    const s = new PgStatsStore({
      target: parsed.target,
      node,
      eventRetentionMs: 400 * DAY_MS,
      rollupRetentionMs: 400 * DAY_MS,
      flushIntervalMs: 20,
      batchSize: 1000,
      maxBuffered: 100_000,
      connectTimeoutMs: 2000,
      queryTimeoutMs: 5000,
      retryIntervalMs: 200,
      maxConnections: 4,
      now: () => T0 + 2 * DAY_MS,
      ...extra,
    });
    stores.push(s);
    return s;
  }
  const sqlite = (node = 'oracle') => new StatsStore({ path: ':memory:', eventRetentionMs: 400 * DAY_MS, rollupRetentionMs: 400 * DAY_MS, flushIntervalMs: 20, now: () => T0 + 2 * DAY_MS, node });

  test('two nodes in one database answer every query as the SQLite store does for all their events (hour and day periods, bucket edges)', async () => {
    // A database with a linguistic (ICU) collation: the order of names must still be SQLite's byte order.
    const url = await pgt.createDatabase('diff', { icu: 'en-US' });
    const events = generate(3000, 7);
    const oracle = sqlite();
    const perNode = [sqlite('n1'), sqlite('n2')];
    // Small batches: the events arrive in many transactions, rollup rows are added to again and again.
    const nodes = [pgStore(url, 'n1', { batchSize: 97 }), pgStore(url, 'n2', { batchSize: 89 })];
    events.forEach((e, i) => {
      const k = i % 3 === 0 ? 1 : 0;
      oracle.record(e);
      perNode[k]?.record(e);
      nodes[k]?.record(e);
    });
    for (const n of nodes) assert.equal(await n.flush(), true);
    assert.equal(await nodes[0]?.rowCount('events'), 3000);
    for (const p of periods(11)) {
      const [want, got1, got2] = await Promise.all([answers(oracle, p), answers(nodes[0] as PgStatsStore, p), answers(nodes[1] as PgStatsStore, p)]);
      assert.deepEqual(got1, want, `node n1, period ${JSON.stringify(p)}`);
      assert.deepEqual(got2, want, `node n2, period ${JSON.stringify(p)}`);
      // The node table: each node's own share, as a SQLite store of only its events counts it.
      const table = await (nodes[1] as PgStatsStore).nodes(p);
      for (const [i, name] of ['n1', 'n2'].entries()) {
        const [mine] = await (perNode[i] as StatsStore).nodes(p);
        const row = table.find((r) => r.node === name);
        assert.ok(row, `${name} listed for ${JSON.stringify(p)}`);
        assert.deepEqual([row.events, row.found, row.cacheHits, row.bytes], [mine?.events, mine?.found, mine?.cacheHits, mine?.bytes], `${name} ${JSON.stringify(p)}`);
      }
    }
    // Sanity: the set is not trivial (both nodes hold found verdicts of several names in a day).
    const day = await (nodes[0] as PgStatsStore).topViruses({ from: T0 - 30 * DAY_MS, to: T0 + 10 * DAY_MS }, 100);
    assert.ok(day.length === VIRUSES.length, JSON.stringify(day));
    // Prometheus: each node's own counters, exactly those of a store with only its events.
    for (const [i, n] of nodes.entries()) assert.deepEqual(counters(await n.prometheus()), counters(await (perNode[i] as StatsStore).prometheus()));
    const last = (await (nodes[0] as PgStatsStore).nodes({ from: T0 - 40 * DAY_MS, to: T0 + 40 * DAY_MS })).map((r) => [r.node, r.lastEvent]);
    const newest = (from: (e: ScanEvent, i: number) => boolean) => Math.max(...events.filter(from).map((e) => e.time));
    assert.deepEqual(last, [['n1', newest((_, i) => i % 3 !== 0)], ['n2', newest((_, i) => i % 3 === 0)]]);
    // Recent detections: every found event of both nodes with what was scanned, as SQLite keeps them, newest first.
    const foundCount = events.filter((e) => e.status === 'found').length;
    const recent = await (nodes[1] as PgStatsStore).recentDetections(foundCount + 10);
    const want = await oracle.recentDetections(foundCount + 10);
    assert.equal(recent.length, foundCount);
    const key = (r: { time: number; source: string; virus: string | null; group: string | null; subject: string | null; cached: boolean }) =>
      JSON.stringify([r.time, r.source, r.virus, r.group, r.subject, r.cached]);
    assert.deepEqual(recent.map(key).sort(), want.map(key).sort());
    assert.ok(recent.every((r, i) => i === 0 || (recent[i - 1] as { time: number }).time >= r.time), 'newest first');
    assert.ok(recent.some((r) => r.subject?.length === SUBJECT_MAX) && recent.some((r) => r.subject === null));
    assert.deepEqual([...new Set(recent.map((r) => r.node))].sort(), ['n1', 'n2']);
    for (const s of [oracle, ...perNode]) s.close();
  });

  test('schema: created once when four nodes start at once, with its version; a newer schema is refused', async () => {
    const url = await pgt.createDatabase('schema');
    const logs = capture();
    const four = ['a', 'b', 'c', 'd'].map((n) => pgStore(url, n, { log: logs.log }));
    four.forEach((s, i) => s.record({ time: T0, source: 'icap', status: 'free', virus: null, group: null, engine: 'clamav', bytes: i, durationMs: 1, cached: false }));
    assert.deepEqual(await Promise.all(four.map((s) => s.flush())), [true, true, true, true]);
    assert.deepEqual(logs.lines.filter((l) => l.level >= 40), [], 'no node failed');
    assert.deepEqual(await pgt.query('schema', "SELECT component, version FROM avgate_schema_version"), [{ component: 'stats', version: 2 }]);
    assert.equal((await four[0]?.statusesBySource({ from: T0, to: T0 + HOUR_MS }))?.[0]?.count, 4);
    await pgt.query('schema', "UPDATE avgate_schema_version SET version = 99 WHERE component = 'stats'");
    const newer = capture();
    const old = pgStore(url, 'old', { log: newer.log });
    old.record({ time: T0, source: 'icap', status: 'free', virus: null, group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
    assert.equal(await old.flush(), false);
    const warn = newer.lines.filter((l) => l.level === 40);
    assert.equal(warn.length, 1);
    assert.match(String(warn[0]?.reason), /schema in the database is version 99, newer than this avgate's \(2\)/);
    assert.equal((await pgt.query<{ n: string }>('schema', "SELECT count(*) AS n FROM avgate_stats_events WHERE node = 'old'"))[0]?.n, '0');
    await Promise.all([...four, old].map((s) => s.close()));
  });

  test('schema 1 (before events.subject) is upgraded in place: its events stay and read with no subject', async () => {
    const url = await pgt.createDatabase('upgrade');
    const first = pgStore(url, 'v1');
    first.record({ time: T0, source: 'http', status: 'found', virus: 'Old', group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false, subject: 'gone' });
    assert.equal(await first.flush(), true);
    await first.close();
    // The first store builds the found-events index in the background (not awaited by close()):
    // it must be there before it is taken away again.
    const foundIndexValid = async () =>
      (await pgt.query<{ valid: boolean }>('upgrade', "SELECT indisvalid AS valid FROM pg_index WHERE indexrelid = to_regclass('avgate_stats_events_found')"))[0]?.valid === true ? true : null;
    await waitFor('the first build of the found-events index', foundIndexValid);
    // Back to what version 1 created.
    await pgt.query('upgrade', 'DROP INDEX avgate_stats_events_found');
    await pgt.query('upgrade', 'ALTER TABLE avgate_stats_events DROP COLUMN subject');
    await pgt.query('upgrade', "UPDATE avgate_schema_version SET version = 1 WHERE component = 'stats'");
    const second = pgStore(url, 'v2');
    second.record({ time: T0 + 1, source: 'icap', status: 'found', virus: 'New', group: 'avscan', engine: 'clamav', bytes: 1, durationMs: 1, cached: false, subject: 'http://h.example/n' });
    assert.equal(await second.flush(), true);
    assert.deepEqual(
      (await second.recentDetections(5)).map((r) => [r.node, r.virus, r.subject]),
      [
        ['v2', 'New', 'http://h.example/n'],
        ['v1', 'Old', null],
      ],
    );
    assert.deepEqual(await pgt.query('upgrade', "SELECT version FROM avgate_schema_version WHERE component = 'stats'"), [{ version: 2 }]);
    // The index of found events is built again in the background (CONCURRENTLY), valid.
    await waitFor('the found-events index', foundIndexValid);
    await second.close();
  });

  test('the server ends a connection between two queries of a batch (its end in the same read as the answer to BEGIN): no uncaught error, the batch is written again on a new connection', async () => {
    const url = await pgt.createDatabase('cut');
    const cut = await startCuttingProxy(pgt.port);
    try {
      const via = new URL(url);
      via.port = String(cut.port);
      const logs = capture();
      const s = pgStore(via.toString(), 'cut', { log: logs.log, heartbeatMs: 3_600_000 });
      s.record({ time: T0, source: 'icap', status: 'free', virus: null, group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
      assert.equal(await s.flush(), true);
      // The found-events index is built in the background on a connection of its own, through the
      // same proxy: its answers must be over before the cut is armed, or the cut lands on them.
      await waitFor('the background index build to end', async () => (logs.lines.some((l) => /index of found events/.test(String(l.msg))) ? true : null), 10_000);
      // The next answer to come (BEGIN's, on the pooled connection) is followed by a FATAL and the end.
      cut.arm();
      s.record({ time: T0 + 1, source: 'icap', status: 'found', virus: 'X', group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
      assert.equal(await s.flush(), false, 'the batch failed on the ended connection');
      assert.equal(cut.injected, 1);
      await waitFor('the batch to be written again', async () => (s.status().reachable && s.status().buffered === 0 ? true : null), 10_000);
      const rows = await pgt.query<{ n: string }>('cut', 'SELECT count(*) AS n FROM avgate_stats_events');
      assert.equal(rows[0]?.n, '2', 'both events, each once');
      assert.deepEqual(await s.topViruses({ from: T0, to: T0 + HOUR_MS }, 5), [{ name: 'X', count: 1 }]);
      const warn = logs.lines.filter((l) => l.level === 40);
      assert.equal(warn.length, 1);
      assert.match(String(warn[0]?.reason), /not queryable|terminating connection|Connection terminated/);
      await s.close();
    } finally {
      await cut.close();
    }
  });

  test('TLS: sslmode=verify-full with the server\'s CA writes over TLS; without the CA the certificate is refused with the reason; sslmode=require encrypts', async () => {
    const url = await pgt.createDatabase('tls');
    const ev = { time: T0, source: 'icap' as const, status: 'free' as const, virus: null, group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false };
    const sslOf = async (node: string) =>
      pgt.query<{ ssl: boolean }>('tls', "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1", [`avgate:${node}`]);
    const verified = pgStore(`${url}?sslmode=verify-full&sslrootcert=${encodeURIComponent(pgt.tlsCa)}`, 'verified', { heartbeatMs: 3_600_000 });
    verified.record(ev);
    assert.equal(await verified.flush(), true);
    const rows = await sslOf('verified');
    assert.ok(rows.length > 0 && rows.every((r) => r.ssl === true), JSON.stringify(rows));
    const required = pgStore(`${url}?sslmode=require`, 'required', { heartbeatMs: 3_600_000 });
    required.record(ev);
    assert.equal(await required.flush(), true);
    const req = await sslOf('required');
    assert.ok(req.length > 0 && req.every((r) => r.ssl === true), JSON.stringify(req));
    const plain = pgStore(url, 'plain', { heartbeatMs: 3_600_000 });
    plain.record(ev);
    assert.equal(await plain.flush(), true);
    const pl = await sslOf('plain');
    assert.ok(pl.length > 0 && pl.every((r) => r.ssl === false), 'sslmode=disable (the default) stays plain');
    // The system's CAs do not know this self-signed certificate.
    const logs = capture();
    const untrusted = pgStore(`${url}?sslmode=verify-full`, 'untrusted', { log: logs.log, connectTimeoutMs: 2000 });
    untrusted.record(ev);
    assert.equal(await untrusted.flush(), false);
    assert.match(untrusted.status().lastError ?? '', /self[- ]signed|certificate/i);
    assert.equal((await pgt.query<{ n: string }>('tls', 'SELECT count(*) AS n FROM avgate_stats_events'))[0]?.n, '3');
    await Promise.all([verified, required, plain, untrusted].map((x) => x.close()));
  });

  test('events lost at a stop while the database is unreachable are in the node table after the next start (stats-lost.json)', async () => {
    const url = await pgt.createDatabase('lost');
    const dir = await mkdtemp(join(tmpdir(), 'avgate-stats-lost-'));
    try {
      const lostFile = join(dir, 'stats-lost.json');
      const dead = url.replace(`:${pgt.port}/`, `:${await closedPort()}/`);
      assert.notEqual(dead, url);
      const before = pgStore(dead, 'restarted', { lostFile, connectTimeoutMs: 300, retryIntervalMs: 100 });
      for (let i = 0; i < 7; i++) before.record({ time: T0 + i, source: 'icap', status: 'free', virus: null, group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
      await before.close();
      assert.deepEqual(JSON.parse(await readFile(lostFile, 'utf8')), { dropped: 7 });
      const after = pgStore(url, 'restarted', { lostFile });
      const row = await waitFor('the carried drops in the node table', async () => {
        const r = (await after.nodes({ from: T0, to: T0 + HOUR_MS }).catch(() => [])).find((n) => n.node === 'restarted');
        return r && r.dropped === 7 ? r : null;
      });
      assert.equal(row.dropped, 7);
      await waitFor('the file gone once they are written', async () => (existsSync(lostFile) ? null : true));
      await after.close();
      assert.equal(existsSync(lostFile), false, 'nothing owed after a clean stop');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('database stopped while events keep coming: record() stays fast, the buffer is bounded, one warn line; back: the newest events arrive, one info line', async () => {
    const url = await pgt.createDatabase('outage');
    const logs = capture();
    const s = pgStore(url, 'edge', { log: logs.log, maxBuffered: 500, batchSize: 100, connectTimeoutMs: 500, queryTimeoutMs: 1000 });
    const ev = (i: number): ScanEvent => ({ time: T0 + i, source: 'smtp', status: 'free', virus: null, group: 'g', engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
    for (let i = 0; i < 50; i++) s.record(ev(i));
    assert.equal(await s.flush(), true);

    await pgt.stop();
    for (let i = 1000; i < 3000; i++) {
      // Synchronous, never a promise to wait on, never a throw (a throw fails the test).
      assert.equal(s.record(ev(i)), undefined);
      if (i % 200 === 0) await new Promise((r) => setImmediate(r)); // the writer gets its turns
    }
    await waitFor('the store to notice', async () => (s.status().reachable ? null : true), 10_000);
    const st = s.status();
    assert.equal(st.buffered, 500, 'bounded by max-buffered');
    assert.equal(st.dropped, 1500, 'everything past the bound dropped and counted');
    assert.ok(st.unreachableSince !== null && st.lastError);
    const prom = await s.prometheus();
    assert.match(prom, /^avgate_stats_dropped_events_total 1500$/m);
    assert.match(prom, /^avgate_stats_database_up 0$/m);
    assert.match(prom, /^avgate_stats_buffered_events 500$/m);
    await assert.rejects(s.statusesBySource({ from: T0, to: T0 + HOUR_MS }), /statistics database is unreachable/);
    // Retries keep failing for a while: still one warn line, with the reason.
    await new Promise((r) => setTimeout(r, 700));
    const warns = logs.lines.filter((l) => l.level === 40);
    assert.equal(warns.length, 1, JSON.stringify(warns));
    assert.match(warns[0]?.msg ?? '', /PostgreSQL unreachable/);
    assert.ok(typeof warns[0]?.reason === 'string' && warns[0].reason.length > 0);

    await pgt.start();
    await waitFor('the store to reconnect', async () => (s.status().reachable ? true : null), 10_000);
    assert.equal(await s.flush(), true);
    const infos = logs.lines.filter((l) => l.level === 30 && /reachable again/.test(l.msg));
    assert.equal(infos.length, 1);
    assert.equal(infos[0]?.droppedMeanwhile, 1500);
    assert.equal(logs.lines.filter((l) => l.level === 40).length, 1, 'no further warn line');
    // The newest 500 of the 2000 were kept (the oldest went), plus the 50 from before.
    const rows = await pgt.query<{ n: string; lo: string; hi: string }>('outage', "SELECT count(*) AS n, min(at) AS lo, max(at) AS hi FROM avgate_stats_events WHERE at >= $1", [T0 + 1000]);
    assert.deepEqual(rows[0], { n: '500', lo: String(T0 + 2500), hi: String(T0 + 2999) });
    assert.equal((await s.statusesBySource({ from: T0, to: T0 + HOUR_MS }))[0]?.count, 550);
    assert.deepEqual((await s.nodes({ from: T0, to: T0 + HOUR_MS })).map((n) => [n.node, n.events, n.dropped]), [['edge', 550, 1500]]);
    s.record(ev(5000));
    await waitFor('writes to resume on their own', async () => ((await s.cacheHitRate({ from: T0, to: T0 + HOUR_MS })).total === 551 ? true : null), 5000);
  });

  test('a slow database: reads and writes give up after query-timeout, scanning is not held up, and the store recovers', async () => {
    const url = await pgt.createDatabase('slow');
    const logs = capture();
    const s = pgStore(url, 'slowpoke', { log: logs.log, queryTimeoutMs: 300 });
    s.record({ time: T0, source: 'icap', status: 'free', virus: null, group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
    assert.equal(await s.flush(), true);
    // Another session holds the rollup table: every write and read of it waits on the lock.
    const { default: pg } = await import('pg');
    const locker = new pg.Client({ host: pgt.socketDir, port: pgt.port, user: 'postgres', database: 'slow' });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE avgate_stats_rollup_hour IN ACCESS EXCLUSIVE MODE');
      s.record({ time: T0 + 1, source: 'icap', status: 'found', virus: 'X', group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
      const t0 = performance.now();
      // Without the timeouts this read would wait for the lock as long as it is held.
      await within('a read of a locked table', 5000, assert.rejects(s.statusesBySource({ from: T0, to: T0 + HOUR_MS })));
      const waited = performance.now() - t0;
      assert.ok(waited < 2000, `gave up after ${waited.toFixed(0)} ms`);
      assert.equal(s.status().reachable, false);
      assert.match(s.status().lastError ?? '', /statement timeout|canceling statement/);
    } finally {
      await locker.query('ROLLBACK');
      await locker.end();
    }
    await waitFor('the store to recover', async () => (s.status().reachable ? true : null), 5000);
    assert.deepEqual(await s.topViruses({ from: T0, to: T0 + HOUR_MS }, 5), [{ name: 'X', count: 1 }]);
    assert.equal(logs.lines.filter((l) => l.level === 40).length, 1);
  });

  test('retention on PostgreSQL: raw events after event-retention, rollups after rollup-retention; counters stay; two nodes pruning at once is harmless', async () => {
    const url = await pgt.createDatabase('retention');
    // Retention also runs after a node's first write: nothing is old yet then.
    let now = T0;
    const opts = { eventRetentionMs: DAY_MS, rollupRetentionMs: 10 * DAY_MS, now: () => now };
    const a = pgStore(url, 'a', opts);
    const b = pgStore(url, 'b', opts);
    a.record({ time: T0, source: 'icap', status: 'found', virus: 'Old', group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
    b.record({ time: T0 + 2 * DAY_MS - 1000, source: 'icap', status: 'free', virus: null, group: null, engine: 'clamav', bytes: 1, durationMs: 1, cached: false });
    assert.deepEqual([await a.flush(), await b.flush()], [true, true]);
    assert.equal(await a.rowCount('events'), 2);
    now = T0 + 2 * DAY_MS;
    const results = await Promise.all([a.prune(), b.prune()]);
    assert.ok(results.includes(true), 'one of them pruned');
    assert.equal(await a.rowCount('events'), 1, 'the event older than a day is gone');
    const p = { from: T0, to: T0 + 3 * DAY_MS };
    assert.deepEqual(await a.topViruses(p, 5), [{ name: 'Old', count: 1 }], 'its rollup stays');
    now = T0 + 13 * DAY_MS;
    await Promise.all([a.prune(), b.prune()]);
    await b.prune();
    assert.equal(await a.rowCount('events'), 0);
    assert.equal(await a.rowCount('hour'), 0);
    assert.equal(await a.rowCount('day'), 0);
    assert.deepEqual(await a.topViruses({ from: T0, to: T0 + 20 * DAY_MS }, 5), []);
    assert.match(await a.prometheus(), /^avgate_viruses_total\{name="Old"\} 1$/m, 'counters since the node began are not rollups');
  });

  test('config check: connects as serve would; OK with the server and schema version, FAILED with the reason; no password in either line', async () => {
    const url = await pgt.createDatabase('probe');
    const stats = (u: string) => parseConfigText(`stats:\n  node: edge-1\n  postgres:\n    url: ${JSON.stringify(u)}\n    connect-timeout: 1s\n`, 'avgate.yaml').stats;
    const fresh = await checkPgStats(stats(url), stats(url).postgres as StatsPostgresConfig);
    assert.deepEqual(fresh.ok, true);
    assert.match(fresh.line, /^stats\.postgres avgate@127\.0\.0\.1:\d+\/probe \(node edge-1\): OK \(PostgreSQL 15\.\d+.*; schema not created yet/);
    const s = pgStore(url, 'edge-1');
    assert.equal(await s.flush(), true);
    assert.match((await checkPgStats(stats(url), stats(url).postgres as StatsPostgresConfig)).line, /: OK \(PostgreSQL 15\.\d+.*; schema version 2\)$/);
    const socket = `postgres://avgate@:${pgt.port}/probe?host=${pgt.socketDir}`;
    assert.match((await checkPgStats(stats(socket), stats(socket).postgres as StatsPostgresConfig)).line, /^stats\.postgres avgate@\/.* \(unix socket\)\/probe \(node edge-1\): OK/);
    const missing = url.replace('/probe', '/nope');
    const bad = await checkPgStats(stats(missing), stats(missing).postgres as StatsPostgresConfig);
    assert.equal(bad.ok, false);
    assert.match(bad.line, /FAILED: database "nope" does not exist/);
    const wrongPassword = url.replace(PG_PASSWORD, 'wrong-pw');
    const denied = await checkPgStats(stats(wrongPassword), stats(wrongPassword).postgres as StatsPostgresConfig);
    assert.match(denied.line, /FAILED: password authentication failed for user "avgate"/);
    for (const line of [fresh.line, bad.line, denied.line]) assert.ok(!line.includes(PG_PASSWORD) && !line.includes('wrong-pw'), line);
  });

  test('a batch written again (its COMMIT answer lost) is not counted twice', async () => {
    const url = await pgt.createDatabase('dedupe');
    const s = pgStore(url, 'n');
    assert.equal(await s.flush(), true);
    const batch = { id: '6f1c1a8e-0f65-4c55-9a56-3c1b1f0b3a11', events: [{ time: T0, source: 'icap', status: 'free', virus: null, group: null, engine: 'e', bytes: 1, durationMs: 1, cached: false } as ScanEvent], start: 0, dropped: 0 };
    const write = (s as unknown as { writeBatch(b: typeof batch): Promise<void> }).writeBatch.bind(s);
    await write(batch);
    await write(batch);
    assert.equal((await s.cacheHitRate({ from: T0, to: T0 + HOUR_MS })).total, 1);
    assert.equal(await s.rowCount('events'), 1);
  });
});
