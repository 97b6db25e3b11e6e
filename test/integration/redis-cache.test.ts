import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino, type Logger } from 'pino';
import { probeRedis } from '../../src/cache/redis-level.js';
import { parseRedisUrl, type RedisTarget } from '../../src/config/redis-url.js';
import { parseConfigText } from '../../src/config/loader.js';
import { contentHashOf } from '../../src/core/content-hash.js';
import { ClamdNetEngine } from '../../src/engines/clamd/net.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Engine } from '../../src/engines/types.js';
import { serve, type Serving } from '../../src/main.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { VerdictCache } from '../../src/cache/verdict-cache.js';
import { RedisLevel } from '../../src/cache/redis-level.js';
import { Scanner } from '../../src/scan/scanner.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';
import { startTestRedis, type TestRedis } from '../helpers/redis.js';
import { selfSignedCert } from '../helpers/tls.js';
import { waitFor, within } from '../helpers/wait.js';
import { externalClamdYaml } from '../../tools/peers/avgate.js';

const ROOT = new URL('../..', import.meta.url).pathname;
/** requirepass of the test Redis: every node AUTHs, and the URL needs percent-encoding. */
const PASSWORD = 'p4ss:w@rd/x';
const EICAR_NAME = /^Avgate\.Test\.EICAR\./;

type Line = Record<string, unknown>;

/** A logger whose lines are kept, for the warn/info lines of the shared level. */
function captured(level = 'info'): { log: Logger; lines: Line[]; count: (msg: RegExp, lvl?: number) => number } {
  const lines: Line[] = [];
  const log = pino({ level }, { write: (l: string) => void lines.push(JSON.parse(l) as Line) });
  return { log, lines, count: (msg, lvl) => lines.filter((l) => msg.test(String(l.msg)) && (lvl === undefined || l.level === lvl)).length };
}

const WARN = 40;
const INFO = 30;
const UNAVAILABLE = /^shared verdict cache \(Redis\) unavailable/;
const BACK = /^shared verdict cache \(Redis\) available again/;

describe('the shared verdict cache level on a real redis-server', () => {
  let clamd: TestClamd;
  let redis: TestRedis;
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-redis-cache-'));
    [clamd, redis] = await Promise.all([startTestClamd(), startTestRedis({ password: PASSWORD })]);
  });
  after(async () => {
    await Promise.allSettled([clamd?.stop(), redis?.stop()]);
    await rm(dir, { recursive: true, force: true });
  });

  /** A copy of the test database with other modification times: another node's own download of the same files. */
  async function databaseCopy(name: string, extraSignature?: string): Promise<string> {
    const copy = join(dir, name);
    await cp(clamd.dbDir, copy, { recursive: true });
    const past = new Date(Date.now() - 3_600_000);
    for (const f of await readdir(copy)) await utimes(join(copy, f), past, past);
    if (extraSignature) await writeFile(join(copy, 'extra.ndb'), `${extraSignature}:0:*:${Buffer.from(extraSignature).toString('hex')}\n`);
    return copy;
  }

  /** Config of one node: the test clamd through `dbDir`, Redis database `db`, quick reconnects. */
  function nodeConfig(o: { stateDir: string; dbDir: string; db: number; cache?: string[]; redis?: string[]; console?: boolean }): string {
    return [
      `state-dir: ${o.stateDir}`,
      'gc-tuning: false',
      ...externalClamdYaml({ socketPath: clamd.socketPath, dbDir: o.dbDir }),
      'cache:',
      ...(o.cache ?? []).map((l) => `  ${l}`),
      '  redis:',
      `    url: "${redis.url(o.db)}"`,
      '    reconnect-delay: 50ms',
      '    reconnect-max-delay: 200ms',
      ...(o.redis ?? []).map((l) => `    ${l}`),
      'icap:',
      '  listen: 127.0.0.1:0',
      'stats:',
      '  enabled: false',
      ...(o.console ? ['console:', '  listen: 127.0.0.1:0'] : ['console:', '  enabled: false']),
      ...['smtp', 'ftp-proxy', 'http-proxy', 'pop3-proxy', 'imap-proxy'].flatMap((s) => [`${s}:`, '  enabled: false']),
      '',
    ].join('\n');
  }

  const sharedUp = (r: Runtime) => waitFor('the Redis level to connect', async () => (r.cache?.stats.shared?.up ? true : null), 5000);

  async function icapScan(port: number, body: Buffer): Promise<{ status: number; virus: string | null }> {
    const r = await icapExchange(port, [buildRequest(port, body, { allow204: true }).first]);
    r.socket.destroy();
    const head = r.responses[0]?.head;
    assert.ok(head, 'an ICAP answer');
    return { status: head.status, virus: head.headers.get('x-virus-id')?.[0] ?? null };
  }

  test('two nodes: what node A scanned through ICAP, node B answers from Redis (its own memory and SQLite empty, its database its own copy); EICAR with the same name', async () => {
    const nodes: Array<{ serving: Serving; logs: ReturnType<typeof captured> }> = [];
    try {
      for (const [name, dbDir] of [['a', clamd.dbDir], ['b', await databaseCopy('db-b')]] as const) {
        const logs = captured('debug');
        const yaml = nodeConfig({ stateDir: join(dir, `node-${name}`), dbDir, db: 0, console: name === 'b' });
        const serving = await serve({ config: parseConfigText(yaml, `${name}.yaml`), path: `${name}.yaml` }, { logger: logs.log });
        nodes.push({ serving, logs });
      }
      const [a, b] = nodes as [(typeof nodes)[0], (typeof nodes)[0]];
      for (const n of nodes) {
        const ready = n.logs.lines.find((l) => l.msg === 'avgate ready');
        assert.deepEqual(ready?.cacheLevels, ['memory', 'sqlite', 'redis'], 'the ready line says the Redis level is on');
        await sharedUp(n.serving.runtime);
      }
      const portA = a.serving.icapPort as number;
      const portB = b.serving.icapPort as number;

      const clean = randomBytes(5000);
      assert.equal((await icapScan(portA, clean)).status, 204);
      const eicarA = await icapScan(portA, eicarBytes());
      assert.match(eicarA.virus ?? '', EICAR_NAME);
      assert.equal(a.serving.runtime.scanner.counters.cacheHits, 0, 'node A asked clamd');
      // Writes are fire-and-forget: they reach Redis within moments.
      await waitFor('both verdicts in Redis', async () => (Number(redis.cli('-n', '0', 'DBSIZE')) >= 2 ? true : null), 2000);
      for (const key of redis.cli('-n', '0', '--scan', '--pattern', 'avgate:vc:*').split('\n')) {
        const ttl = Number(redis.cli('-n', '0', 'PTTL', key));
        assert.ok(ttl > 7 * 86_400_000 - 60_000 && ttl <= 7 * 86_400_000, `${key} expires after cache.max-age (PTTL ${ttl})`);
      }

      assert.equal((await icapScan(portB, clean)).status, 204);
      const eicarB = await icapScan(portB, eicarBytes());
      assert.equal(eicarB.status, eicarA.status);
      assert.equal(eicarB.virus, eicarA.virus, 'the same signature name');
      const bStats = b.serving.runtime.cache?.stats;
      assert.equal(b.serving.runtime.scanner.counters.cacheHits, 2, 'both answered from the cache');
      assert.equal(bStats?.hits, 0, "nothing came from node B's own levels");
      assert.equal(bStats?.shared?.hits, 2);
      const scansB = b.logs.lines.filter((l) => l.msg === 'scan');
      assert.deepEqual(scansB.map((l) => [l.status, l.cached]), [['free', true], ['found', true]]);

      const metrics = await (await fetch(`http://127.0.0.1:${b.serving.consolePort}/metrics`)).text();
      assert.match(metrics, /^avgate_verdict_cache_shared_lookups_total\{result="hit"\} 2$/m);
      assert.match(metrics, /^avgate_verdict_cache_shared_up 1$/m);

      // Remembered in B's memory: the next look-up does not reach Redis.
      assert.equal((await icapScan(portB, clean)).status, 204);
      assert.equal(b.serving.runtime.cache?.stats.shared?.hits, 2);
      assert.equal(b.serving.runtime.cache?.stats.hits, 1);
    } finally {
      for (const n of nodes) await n.serving.stop();
    }
  });

  /** A node built by openRuntime (the real wiring), no local levels: every look-up goes to Redis. */
  async function redisOnlyNode(db: number, opts: { dbDir?: string; redis?: string[]; logs?: ReturnType<typeof captured> } = {}): Promise<{ runtime: Runtime; logs: ReturnType<typeof captured> }> {
    const logs = opts.logs ?? captured();
    const text = nodeConfig({ stateDir: join(dir, `state-${db}-${randomBytes(3).toString('hex')}`), dbDir: opts.dbDir ?? clamd.dbDir, db, cache: ['memory-entries: 0', 'sqlite: null'], ...(opts.redis ? { redis: opts.redis } : {}) });
    const runtime = await openRuntime(parseConfigText(text, 'node.yaml'), { logger: logs.log, localClamd: 'never' });
    await sharedUp(runtime);
    return { runtime, logs };
  }

  test('a malformed value planted under the right key is a miss (engine verdict, counted), never a pass; a well-formed one is believed', async () => {
    const { runtime, logs } = await redisOnlyNode(2);
    try {
      const eicar = eicarBytes();
      const engineSet = await runtime.scanner.signatureKey();
      assert.ok(engineSet);
      const key = `avgate:vc:${contentHashOf([eicar])}|${engineSet}`;
      const now = Date.now();
      const planted: Array<[string, string[]]> = [
        ['a status avgate never caches', ['SET', key, JSON.stringify({ status: 'clean', at: now })]],
        ['free with names', ['SET', key, JSON.stringify({ status: 'free', names: [], at: now })]],
        ['not JSON', ['SET', key, 'free']],
        ['a name with CR LF', ['SET', key, JSON.stringify({ status: 'found', names: ['X\r\nX-Injected: 1'], at: now })]],
        ['over max-value-size', ['SET', key, JSON.stringify({ status: 'free', at: now, pad: 'x'.repeat(20_000) })]],
        ['another type under the key', ['RPUSH', key, 'free']],
      ];
      let invalid = 0;
      for (const [what, command] of planted) {
        // The engine's verdict of the scan before is written to Redis after it (fire and forget): it lands first.
        if (invalid > 0) await waitFor('the last verdict written', async () => (/"names":\["Avgate\.Test\.EICAR/.test(redis.cli('-n', '2', 'GET', key)) ? true : null), 2000);
        redis.cli('-n', '2', 'DEL', key);
        redis.cli('-n', '2', ...command);
        const before = runtime.cache?.stats.shared;
        const v = await runtime.scanner.scan({ source: { kind: 'buffer', data: eicar } });
        assert.equal(v.status, 'found', what);
        assert.equal(v.cached, false, what);
        const afterStats = runtime.cache?.stats.shared;
        const counted = (afterStats?.invalid ?? 0) - (before?.invalid ?? 0) + (afterStats?.errors ?? 0) - (before?.errors ?? 0);
        assert.equal(counted, 1, `${what}: counted as invalid or error`);
        invalid += (afterStats?.invalid ?? 0) - (before?.invalid ?? 0);
      }
      assert.equal(invalid, 5, 'all but the list are invalid values; the list is an error reply (WRONGTYPE)');
      assert.match(String(logs.lines.find((l) => /refuses a command/.test(String(l.msg)))?.reply), /^WRONGTYPE/, 'a refusal is logged once');
      assert.equal(runtime.cache?.stats.shared?.hits, 0);
      // The control: the same key with a well-formed entry is taken — the key is right, and this is
      // why whoever can write to that Redis must be trusted like the SQLite file.
      await waitFor('the last verdict written', async () => (/"names":\["Avgate\.Test\.EICAR/.test(redis.cli('-n', '2', 'GET', key)) ? true : null), 2000);
      redis.cli('-n', '2', 'SET', key, JSON.stringify({ status: 'free', at: Date.now() }));
      const believed = await runtime.scanner.scan({ source: { kind: 'buffer', data: eicar } });
      assert.deepEqual([believed.status, believed.cached], ['free', true]);
    } finally {
      await runtime.close();
    }
  });

  test('another signature version (engine-set key) never reads the first one\'s entry; the same database elsewhere does', async () => {
    const a = await redisOnlyNode(3);
    const same = await redisOnlyNode(3, { dbDir: await databaseCopy('db-same') });
    const other = await redisOnlyNode(3, { dbDir: await databaseCopy('db-other', 'Avgate.Test.Extra') });
    try {
      const keys = await Promise.all([a, same, other].map((n) => n.runtime.scanner.signatureKey()));
      assert.equal(keys[1], keys[0], 'same files, other mtimes: the same key (the fingerprint is of contents)');
      assert.notEqual(keys[2], keys[0], 'an added signature file: another key');
      const data = randomBytes(3000);
      assert.equal((await a.runtime.scanner.scan({ source: { kind: 'buffer', data } })).cached, false);
      await waitFor('the verdict in Redis', async () => (Number(redis.cli('-n', '3', 'DBSIZE')) >= 1 ? true : null), 2000);
      const v = await other.runtime.scanner.scan({ source: { kind: 'buffer', data } });
      assert.deepEqual([v.status, v.cached], ['free', false], 'the other version asked clamd');
      assert.equal(other.runtime.cache?.stats.shared?.misses, 1);
      assert.equal(other.runtime.cache?.stats.shared?.hits, 0);
      const s = await same.runtime.scanner.scan({ source: { kind: 'buffer', data } });
      assert.deepEqual([s.status, s.cached], ['free', true]);
    } finally {
      for (const n of [a, same, other]) await n.runtime.close();
    }
  });

  test('scanning while hashing: a Redis hit stops the engines already at work', async () => {
    const { runtime } = await redisOnlyNode(4);
    const slow = new SlowEngine(clamd, 3000);
    await slow.init();
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0, shared: levelOn(4) });
    const scanner = new Scanner([{ id: 'clamav', engine: slow }], { maxCheckedSize: 1 << 20, scanTimeoutMs: 10_000, maxConcurrentScans: 4, maxQueue: 10, contextIdleTimeoutMs: 5000 }, cache, pino({ level: 'silent' }));
    try {
      await waitFor('the level to connect', async () => (cache.stats.shared?.up ? true : null), 5000);
      assert.equal(await scanner.signatureKey(), await runtime.scanner.signatureKey(), 'the same engine set and version');
      const data = randomBytes(4000);
      await runtime.scanner.scan({ source: { kind: 'buffer', data } });
      await waitFor('the verdict in Redis', async () => (Number(redis.cli('-n', '4', 'DBSIZE')) >= 1 ? true : null), 2000);
      const v = await scanner.scan({ source: { kind: 'buffer', data }, hashWhileScanning: true });
      assert.deepEqual([v.status, v.cached], ['free', true]);
      assert.equal(slow.started, 1, 'the engine had started');
      assert.ok(v.durationMs < 1000, `answered before the slow engine (${Math.round(v.durationMs)} ms)`);
    } finally {
      await scanner.close();
      cache.close();
      await slow.close();
      await runtime.close();
    }
  });

  /** A RedisLevel on the test Redis, built directly (for a Scanner with an engine of the test's own). */
  function levelOn(db: number): RedisLevel {
    return new RedisLevel({
      target: parseRedisUrl(redis.url(db)) as RedisTarget,
      label: 'test',
      keyPrefix: 'avgate:vc:',
      timeoutMs: 50,
      connectTimeoutMs: 1000,
      maxPendingWrites: 100,
      maxPendingLookups: 100,
      downAfterTimeouts: 5,
      reconnectDelayMs: 50,
      reconnectMaxDelayMs: 200,
      maxValueSize: 16384,
      maxAgeMs: 0,
      tlsCa: null,
      log: pino({ level: 'silent' }),
    });
  }

  test('config check: the Redis line is OK and its password masked; a wrong password fails with Redis\'s reason', async () => {
    const configPath = join(dir, 'check.yaml');
    await writeFile(configPath, nodeConfig({ stateDir: join(dir, 'check-state'), dbDir: clamd.dbDir, db: 0 }));
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'test/helpers/cli.ts'), '--config', configPath, 'config', 'check'], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`^cache\\.redis redis://:\\*{8}@127\\.0\\.0\\.1:${redis.port}/0: OK \\(PONG in [\\d.]+ ms\\)$`, 'm'));
    assert.doesNotMatch(r.stdout + r.stderr, /p4ss/);
    const wrong = parseRedisUrl(`redis://:nope@127.0.0.1:${redis.port}/0`) as RedisTarget;
    await assert.rejects(probeRedis({ target: wrong, connectTimeoutMs: 2000, maxValueSize: 1024, tlsCa: null }), /AUTH: WRONGPASS/);
  });

  test('unix:// socket with its password and database in the query: shares with a node on TCP', async () => {
    const tcp = await redisOnlyNode(7);
    const unixUrl = `unix://${redis.socketPath}?db=7&password=${encodeURIComponent(PASSWORD)}`;
    const text = nodeConfig({ stateDir: join(dir, 'state-unix'), dbDir: clamd.dbDir, db: 7, cache: ['memory-entries: 0', 'sqlite: null'] }).replace(redis.url(7), unixUrl);
    const viaSocket = await openRuntime(parseConfigText(text, 'unix.yaml'), { logger: captured().log, localClamd: 'never' });
    try {
      await sharedUp(viaSocket);
      const data = randomBytes(1500);
      assert.equal((await tcp.runtime.scanner.scan({ source: { kind: 'buffer', data } })).cached, false);
      await waitFor('the verdict in Redis', async () => (Number(redis.cli('-n', '7', 'DBSIZE')) >= 1 ? true : null), 2000);
      const v = await viaSocket.scanner.scan({ source: { kind: 'buffer', data } });
      assert.deepEqual([v.status, v.cached], ['free', true], 'read through the socket');
    } finally {
      await viaSocket.close();
      await tcp.runtime.close();
    }
  });

  test('rediss://: TLS with the private CA of tls-ca; without it the certificate is refused', async () => {
    const { cert, key } = await selfSignedCert(dir, 'localhost');
    const tlsRedis = await startTestRedis({ tls: { cert, key } });
    const logs = captured();
    let runtime: Runtime | null = null;
    try {
      const text = nodeConfig({ stateDir: join(dir, 'state-tls'), dbDir: clamd.dbDir, db: 0, cache: ['memory-entries: 0', 'sqlite: null'], redis: [`tls-ca: ${cert}`] }).replace(redis.url(0), tlsRedis.url(0));
      runtime = await openRuntime(parseConfigText(text, 'tls.yaml'), { logger: logs.log, localClamd: 'never' });
      await sharedUp(runtime);
      await expectSharing(runtime);
      assert.equal(Number(tlsRedis.cli('DBSIZE')), 1, 'the verdict went to the TLS Redis');
      const untrusted = parseRedisUrl(tlsRedis.url(0)) as RedisTarget;
      await assert.rejects(probeRedis({ target: untrusted, connectTimeoutMs: 2000, maxValueSize: 1024, tlsCa: null }), /self[- ]signed/);
    } finally {
      await runtime?.close();
      await tlsRedis.stop();
    }
  });

  test('Redis that stops answering (SIGSTOP): look-ups miss within the timeout, then Redis is skipped without waiting; one warn line; back (SIGCONT): one info line and sharing resumes', async () => {
    const { runtime, logs } = await redisOnlyNode(5, { redis: ['connect-timeout: 300ms'] });
    try {
      redis.signal('SIGSTOP');
      const durations: number[] = [];
      for (let i = 0; i < 20; i++) {
        const v = await within('a scan while Redis is away', 5000, runtime.scanner.scan({ source: { kind: 'buffer', data: randomBytes(1000) } }));
        assert.equal(v.status, 'free', 'the engine answers');
        durations.push(v.durationMs);
      }
      const s = runtime.cache?.stats.shared;
      assert.equal(s?.timeouts, 5, 'down-after-timeouts look-ups waited their 50 ms …');
      assert.ok((s?.skipped ?? 0) >= 15, `… the others did not wait at all (${s?.skipped} skipped)`);
      assert.ok(Math.max(...durations) < 50 + 250, `no scan waited much longer than the timeout (max ${Math.round(Math.max(...durations))} ms)`);
      const afterDown = durations.slice(5).reduce((a, b) => a + b, 0);
      assert.ok(afterDown < (15 * 50) / 2, `the 15 scans after it was found down did not wait for Redis (${Math.round(afterDown)} ms in all)`);
      assert.equal(logs.count(UNAVAILABLE, WARN), 1);
      assert.match(String(logs.lines.find((l) => UNAVAILABLE.test(String(l.msg)))?.reason), /5 look-ups in a row not answered within 50 ms/);
      await new Promise((r) => setTimeout(r, 700)); // reconnect attempts time out meanwhile: still one line
      assert.equal(logs.count(UNAVAILABLE), 1);
      redis.signal('SIGCONT');
      await waitFor('the info line', async () => (logs.count(BACK, INFO) > 0 ? true : null), 5000);
      await expectSharing(runtime);
      assert.equal(logs.count(BACK), 1);
      assert.equal(logs.count(UNAVAILABLE), 1);
    } finally {
      redis.signal('SIGCONT');
      await runtime.close();
    }
  });

  test('Redis killed mid-run: engine verdicts without waiting, one warn line with the reason; started again on the same port: one info line, sharing resumes', async () => {
    const { runtime, logs } = await redisOnlyNode(6);
    try {
      await expectSharing(runtime);
      await redis.kill();
      const durations: number[] = [];
      for (let i = 0; i < 20; i++) {
        const v = await within('a scan while Redis is away', 5000, runtime.scanner.scan({ source: { kind: 'buffer', data: randomBytes(1000) } }));
        assert.deepEqual([v.status, v.cached], ['free', false]);
        durations.push(v.durationMs);
        await new Promise((r) => setTimeout(r, 25)); // over half a second down: several reconnects fail
      }
      const total = durations.reduce((a, b) => a + b, 0);
      assert.ok(total < (20 * 50) / 2, `no scan waited on the dead Redis (${Math.round(total)} ms for 20, max ${Math.round(Math.max(...durations))} ms)`);
      const s = runtime.cache?.stats.shared;
      assert.equal(s?.up, false);
      assert.equal(s?.timeouts, 0, 'nothing waited for a timeout');
      assert.ok((s?.skipped ?? 0) >= 20 && (s?.droppedWrites ?? 0) >= 20, 'look-ups skipped, writes dropped (not queued)');
      assert.equal(logs.count(UNAVAILABLE, WARN), 1, 'one warn line, not one per request or reconnect');
      assert.match(String(logs.lines.find((l) => UNAVAILABLE.test(String(l.msg)))?.reason), /closed/);
      assert.doesNotMatch(JSON.stringify(logs.lines), /p4ss/, 'no password in the log');
      await redis.restart();
      await waitFor('the info line', async () => (logs.count(BACK, INFO) > 0 ? true : null), 5000);
      await expectSharing(runtime);
      assert.equal(logs.count(BACK), 1);
      assert.equal(logs.count(UNAVAILABLE), 1);
    } finally {
      if (!redis.running) await redis.restart();
      await runtime.close();
    }
  });

  /** A new object scanned twice by a node without local levels: the second answer comes from Redis. */
  async function expectSharing(runtime: Runtime): Promise<void> {
    const data = randomBytes(2000);
    assert.equal((await runtime.scanner.scan({ source: { kind: 'buffer', data } })).cached, false);
    const again = await waitFor('the verdict from Redis', async () => {
      const v = await runtime.scanner.scan({ source: { kind: 'buffer', data } });
      return v.cached ? v : null;
    }, 2000);
    assert.equal(again.status, 'free');
  }
});

/** clamd-net whose scans of objects in memory answer `delayMs` late (and stop on the signal): to see a cache hit overtake it. */
class SlowEngine extends ClamdNetEngine implements Engine {
  started = 0;
  constructor(clamd: TestClamd, private readonly delayMs: number) {
    super();
    this.configure([
      { name: 'address', value: `unix:${clamd.socketPath}` },
      { name: 'database-dir', value: clamd.dbDir },
    ]);
  }
  override async scanChunks(...args: Parameters<ClamdNetEngine['scanChunks']>): ReturnType<ClamdNetEngine['scanChunks']> {
    this.started++;
    const meta = args[2];
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, this.delayMs);
      meta.signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
    });
    return super.scanChunks(...args);
  }
}
