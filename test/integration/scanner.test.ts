import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { VerdictCache } from '../../src/cache/verdict-cache.js';
import { silentLogger } from '../../src/core/logging.js';
import { ClamdNetEngine } from '../../src/engines/clamd/net.js';
import { addBodySignature, eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Engine, EngineScanResult } from '../../src/engines/types.js';
import { Scanner, type ScannerLimits } from '../../src/scan/scanner.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { closedPort, startFaultServer } from '../helpers/fault-server.js';

const LIMITS: ScannerLimits = {
  maxCheckedSize: 10 * 1024 * 1024,
  scanTimeoutMs: 10_000,
  maxConcurrentScans: 4,
  maxQueue: 16,
  contextIdleTimeoutMs: 5000,
};

/** The engine with each way in counted: a stream, a path, the pieces of an object in memory. */
function byWay(inner: ClamdNetEngine): { engine: ClamdNetEngine; calls: { stream: number; path: number; pieces: number }; scans: () => number } {
  const calls = { stream: 0, path: 0, pieces: 0 };
  const engine = Object.create(inner) as ClamdNetEngine;
  engine.scan = (ctx, stream, meta) => {
    calls.stream++;
    return inner.scan(ctx, stream, meta);
  };
  engine.scanFile = (ctx, path, meta) => {
    calls.path++;
    return inner.scanFile(ctx, path, meta);
  };
  engine.scanChunks = (ctx, chunks, meta) => {
    calls.pieces++;
    return inner.scanChunks(ctx, chunks, meta);
  };
  return { engine, calls, scans: () => calls.stream + calls.path + calls.pieces };
}

function clamdEngine(clamd: TestClamd, extra: Array<[string, string]> = []): ClamdNetEngine {
  const e = new ClamdNetEngine();
  e.configure([
    { name: 'address', value: `unix:${clamd.socketPath}` },
    { name: 'database-dir', value: clamd.dbDir },
    ...extra.map(([name, value]) => ({ name, value })),
  ]);
  return e;
}

describe('scanner with a real clamd', () => {
  let clamd: TestClamd;
  let dir: string;
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-scanner-'));
  });
  after(async () => {
    await clamd.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('verdicts carry engine id, signature version, duration and bytes', async () => {
    const scanner = new Scanner([{ id: 'clamav', engine: clamdEngine(clamd) }], LIMITS, null, silentLogger());
    const v = await scanner.scan({ source: { kind: 'buffer', data: eicarBytes() } });
    assert.equal(v.status, 'found');
    assert.equal(v.engine, 'clamav');
    assert.match(v.signatureVersion ?? '', /^ClamAV .*\/db:/);
    assert.equal(v.bytes, eicarBytes().length);
    assert.ok(v.durationMs > 0);
    assert.equal(v.cached, false);
    await scanner.close();
  });

  test('cache: a second scan of the same content is a hit that does not reach the engine', async () => {
    const { engine, scans } = byWay(clamdEngine(clamd));
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: join(dir, 'c1.sqlite'), sqliteMaxEntries: 1000, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'clamav', engine }], LIMITS, cache, silentLogger());
    const file = join(dir, 'eicar.bin');
    await writeFile(file, Buffer.concat([Buffer.from('junk '), eicarBytes()]));
    const first = await scanner.scan({ source: { kind: 'file', path: file } });
    assert.equal(first.status, 'found');
    assert.equal(first.cached, false);
    assert.equal(scans(), 1);
    const second = await scanner.scan({ source: { kind: 'file', path: file } });
    assert.equal(second.status, 'found');
    assert.equal(second.cached, true);
    assert.deepEqual(second.status === 'found' ? second.names : [], first.status === 'found' ? first.names : ['x']);
    assert.equal(scans(), 1, 'the engine was not asked again');
    // Same content as a buffer hits too; a stream is hashed on the way and fills the cache.
    assert.equal((await scanner.scan({ source: { kind: 'buffer', data: Buffer.concat([Buffer.from('junk '), eicarBytes()]) } })).cached, true);
    const clean = randomBytes(5000);
    assert.equal((await scanner.scan({ source: { kind: 'stream', stream: Readable.from([clean]) } })).cached, false);
    assert.equal((await scanner.scan({ source: { kind: 'buffer', data: clean } })).cached, true);
    assert.equal(scans(), 2);
    assert.equal(scanner.counters.cacheHits, 3);
    await scanner.close();
    cache.close();
  });

  test('files by path: an in-memory object is written to a file for clamd only after the cache missed, and scanned by SCAN', async () => {
    const { engine, calls } = byWay(clamdEngine(clamd));
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: join(dir, 'c-files.sqlite'), sqliteMaxEntries: 1000, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'clamav', engine }], LIMITS, cache, silentLogger());
    assert.equal(scanner.prefersFiles(), true);
    assert.equal(scanner.prefersFiles(1000), false, 'below scan-files-min-size a stream is cheaper');
    const data = Buffer.concat([randomBytes(100_000), eicarBytes()]);
    const written: string[] = [];
    const toFile = async () => {
      const p = join(dir, `copy-${written.length}`);
      await writeFile(p, data);
      written.push(p);
      return p;
    };
    const first = await scanner.scan({ source: { kind: 'chunks', chunks: [data] }, toFile });
    assert.equal(first.status, 'found');
    assert.equal(written.length, 1);
    assert.deepEqual(calls, { path: 1, stream: 0, pieces: 0 });
    assert.equal(scanner.engineLikely, true, 'no look-up hit yet: the next object will need the engine');
    const second = await scanner.scan({ source: { kind: 'chunks', chunks: [data] }, toFile });
    assert.equal(second.cached, true);
    assert.equal(written.length, 1, 'a cache hit writes no file');
    // The recent hit rate decides whether front ends prepare the engine's input early.
    for (let i = 0; i < 40; i++) await scanner.scan({ source: { kind: 'chunks', chunks: [data] } });
    assert.equal(scanner.engineLikely, false, 'after a run of hits the cache is expected to answer');
    for (let i = 0; i < 40; i++) await scanner.scan({ source: { kind: 'buffer', data: randomBytes(100) } });
    assert.equal(scanner.engineLikely, true, 'after a run of misses the engine is expected again');
    // Without toFile, memory objects go to clamd as they are (INSTREAM of their pieces); so do small ones with it.
    const third = await scanner.scan({ source: { kind: 'buffer', data: randomBytes(2000) } });
    assert.equal(third.status, 'free');
    const small = await scanner.scan({ source: { kind: 'chunks', chunks: [randomBytes(2000)] }, toFile });
    assert.equal(small.status, 'free');
    assert.equal(written.length, 1);
    assert.deepEqual(calls, { path: 1, stream: 0, pieces: 42 });
    await scanner.close();
    cache.close();
  });

  test('hashWhileScanning: the engine starts before the hash; a hit found meanwhile answers and stops it, a miss is cached under the same hash', async () => {
    const inner = clamdEngine(clamd);
    let started = 0;
    let stopped = 0;
    const engine = Object.create(inner) as ClamdNetEngine;
    // Slow engine: answers after 400 ms unless the scan is stopped first (objects in memory reach it by scanChunks).
    engine.scanChunks = async (ctx, pieces, meta) => {
      started++;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 400);
        meta.signal?.addEventListener('abort', () => {
          stopped++;
          clearTimeout(t);
          resolve();
        });
      });
      return inner.scanChunks(ctx, pieces, meta);
    };
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: join(dir, 'c-while.sqlite'), sqliteMaxEntries: 1000, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'clamav', engine }], LIMITS, cache, silentLogger());
    // Several pieces, one larger than the hash slice (256 KiB), EICAR at the end of the last one.
    const chunks = [randomBytes(1000), randomBytes(700_000), Buffer.concat([randomBytes(3000), eicarBytes()])];
    const first = await scanner.scan({ source: { kind: 'chunks', chunks }, hashWhileScanning: true });
    assert.equal(first.status, 'found');
    assert.equal(first.cached, false);
    assert.equal(started, 1);
    // Cached under the content's SHA-256: the ordinary path (hash first) finds it.
    const plain = await scanner.scan({ source: { kind: 'buffer', data: Buffer.concat(chunks) } });
    assert.equal(plain.cached, true);
    assert.equal(plain.status, 'found');
    assert.equal(started, 1);
    // Again while scanning: the engine is started, the cache answers first, the engine is stopped.
    const t0 = performance.now();
    const again = await scanner.scan({ source: { kind: 'chunks', chunks }, hashWhileScanning: true });
    assert.equal(again.cached, true);
    assert.equal(again.status, 'found');
    assert.deepEqual(again.status === 'found' ? again.names : [], first.status === 'found' ? first.names : ['?']);
    assert.equal(started, 2);
    assert.equal(stopped, 1);
    assert.ok(performance.now() - t0 < 400, 'answered before the slow engine would have');
    // A clean new object: the engine's verdict, then cached.
    const clean = [randomBytes(300_000)];
    assert.equal((await scanner.scan({ source: { kind: 'chunks', chunks: clean }, hashWhileScanning: true })).status, 'free');
    assert.equal((await scanner.scan({ source: { kind: 'chunks', chunks: clean } })).cached, true);
    // The caller giving up stops the scan too (error verdict, nothing cached).
    const gone = new AbortController();
    const fresh = [randomBytes(5000)];
    const p = scanner.scan({ source: { kind: 'chunks', chunks: fresh }, hashWhileScanning: true, signal: gone.signal });
    setTimeout(() => gone.abort(new Error('client gone')), 50);
    const abandoned = await p;
    assert.equal(abandoned.status, 'error');
    // Not an engine fault: its own code, not scan-timeout.
    assert.equal(abandoned.status === 'error' ? abandoned.code : null, 'AVG_ERR_ABORTED');
    assert.equal((await scanner.scan({ source: { kind: 'chunks', chunks: fresh } })).cached, false);
    await scanner.close();
    cache.close();
  });

  test('cache: after a signature database change (RELOAD with one more signature) the old entry is not used', async () => {
    const { engine, scans } = byWay(clamdEngine(clamd, [['version-check-interval', '0']]));
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: join(dir, 'c2.sqlite'), sqliteMaxEntries: 1000, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'clamav', engine }], LIMITS, cache, silentLogger());
    const marker = Buffer.from(`avgate-cache-invalidation-${randomBytes(8).toString('hex')}`);
    const data = Buffer.concat([randomBytes(1000), marker, randomBytes(1000)]);
    assert.equal((await scanner.scan({ source: { kind: 'buffer', data } })).status, 'free');
    assert.equal((await scanner.scan({ source: { kind: 'buffer', data } })).cached, true);
    await addBodySignature(clamd.dbDir, 'Avgate.Test.Marker', marker);
    await clamd.reload();
    const after = await scanner.scan({ source: { kind: 'buffer', data } });
    assert.equal(after.cached, false, 'the entry of the old signature version is not used');
    assert.equal(after.status, 'found');
    assert.match(after.status === 'found' ? (after.names[0] ?? '') : '', /^Avgate\.Test\.Marker/);
    assert.equal(scans(), 2);
    await rm(join(clamd.dbDir, 'Avgate.Test.Marker.ndb'));
    await clamd.reload();
    await scanner.close();
    cache.close();
  });

  test('max-checked-size: known size → skipped without contacting the engine; a stream is cut when it outgrows it', async () => {
    const { engine, scans } = byWay(clamdEngine(clamd));
    const scanner = new Scanner([{ id: 'clamav', engine }], { ...LIMITS, maxCheckedSize: 1000 }, null, silentLogger());
    const v = await scanner.scan({ source: { kind: 'buffer', data: randomBytes(1001) } });
    assert.equal(v.status, 'skipped');
    assert.match(v.status === 'skipped' ? v.reason : '', /max-checked-size/);
    assert.equal(scans(), 0);
    const s = await scanner.scan({ source: { kind: 'stream', stream: Readable.from([randomBytes(600), randomBytes(600)]) } });
    assert.equal(s.status, 'skipped');
    assert.equal((await scanner.scan({ source: { kind: 'buffer', data: randomBytes(1000) } })).status, 'free');
    await scanner.close();
  });

  test('contexts are pooled: sequential scans reuse one clamd session', async () => {
    const engine = clamdEngine(clamd);
    let opened = 0;
    const open = engine.openContext.bind(engine);
    engine.openContext = (signal) => {
      opened++;
      return open(signal);
    };
    const scanner = new Scanner([{ id: 'clamav', engine }], LIMITS, null, silentLogger());
    for (let i = 0; i < 5; i++) assert.equal((await scanner.scan({ source: { kind: 'buffer', data: randomBytes(100) } })).status, 'free');
    assert.equal(opened, 1);
    await Promise.all(Array.from({ length: 8 }, () => scanner.scan({ source: { kind: 'buffer', data: randomBytes(100_000) } })));
    assert.ok(opened <= LIMITS.maxConcurrentScans, `opened ${opened}`);
    await scanner.close();
  });

  test('objects in memory go to clamd as their pieces (scanChunks): same verdicts as a stream, StreamMaxLength still skips', async () => {
    const { engine, calls } = byWay(clamdEngine(clamd, [['stream-max-length', '1M']]));
    const scanner = new Scanner([{ id: 'clamav', engine }], LIMITS, null, silentLogger());
    // EICAR split over two pieces; a piece under and one over the INSTREAM chunk size (256 KiB).
    const eicar = eicarBytes();
    const split = [randomBytes(300_000), Buffer.concat([Buffer.from('x '), eicar.subarray(0, 30)]), eicar.subarray(30)];
    const found = await scanner.scan({ source: { kind: 'chunks', chunks: split } });
    assert.equal(found.status, 'found');
    assert.equal(found.bytes, split.reduce((n, c) => n + c.length, 0));
    const viaStream = await scanner.scan({ source: { kind: 'stream', stream: Readable.from(split.map((c) => Buffer.from(c))) } });
    assert.deepEqual(found.status === 'found' ? found.names : [], viaStream.status === 'found' ? viaStream.names : ['?'], 'the same names as by a stream');
    assert.equal((await scanner.scan({ source: { kind: 'buffer', data: randomBytes(3000) } })).status, 'free');
    const big = await scanner.scan({ source: { kind: 'chunks', chunks: [randomBytes(700_000), randomBytes(700_000)] } });
    assert.equal(big.status, 'skipped', 'over stream-max-length: skipped, as INSTREAM from a stream');
    assert.deepEqual(calls, { path: 0, stream: 1, pieces: 3 });
    await scanner.close();
  });

  test('a broken session is re-opened and the scan retried (re-readable source)', async () => {
    const engine = clamdEngine(clamd);
    const scanner = new Scanner([{ id: 'clamav', engine }], LIMITS, null, silentLogger());
    assert.equal((await scanner.scan({ source: { kind: 'buffer', data: randomBytes(10) } })).status, 'free');
    // Restart clamd: the pooled session is dead; the next scan must still succeed.
    await clamd.clamd.stop();
    await clamd.clamd.start();
    const v = await scanner.scan({ source: { kind: 'buffer', data: eicarBytes() } });
    assert.equal(v.status, 'found');
    await scanner.close();
  });

  test('several engines: found wins over error; free wins over error', async () => {
    const dead = new ClamdNetEngine();
    dead.configure([{ name: 'address', value: `127.0.0.1:${await closedPort()}` }]);
    const scanner = new Scanner(
      [
        { id: 'dead', engine: dead },
        { id: 'clamav', engine: clamdEngine(clamd) },
      ],
      LIMITS,
      null,
      silentLogger(),
    );
    const found = await scanner.scan({ source: { kind: 'stream', stream: Readable.from([Buffer.from('x '), eicarBytes()]) } });
    assert.equal(found.status, 'found');
    assert.equal(found.engine, 'dead+clamav');
    const free = await scanner.scan({ source: { kind: 'stream', stream: Readable.from([randomBytes(300_000)]) } });
    assert.equal(free.status, 'free');
    assert.equal(free.bytes, 300_000);
    await scanner.close();
  });
});

describe('scanner limits without a clamd', () => {
  test('scan timeout → error AVG_ERR_ENGINE_TIMEOUT, never a hang', async () => {
    const srv = await startFaultServer((s) => s.resume());
    const e = new ClamdNetEngine();
    e.configure([{ name: 'address', value: srv.address }]);
    const scanner = new Scanner([{ id: 'stall', engine: e }], { ...LIMITS, scanTimeoutMs: 200 }, null, silentLogger());
    const v = await scanner.scan({ source: { kind: 'buffer', data: Buffer.from('abc') } });
    assert.equal(v.status, 'error');
    assert.equal(v.status === 'error' ? v.code : '', 'AVG_ERR_ENGINE_TIMEOUT');
    // A stream that never ends is cut by the timeout as well.
    const never = new Readable({ read() {} });
    const v2 = await scanner.scan({ source: { kind: 'stream', stream: never } });
    assert.equal(v2.status, 'error');
    await scanner.close();
    await srv.close();
  });

  test('an engine that ignores the abort signal (a plugin, no settlesOnAbort) is still cut off by the scan timeout', async () => {
    let calls = 0;
    const deaf: Engine<null> = {
      configure: () => undefined,
      info: () => ({ name: 'deaf', description: 'never answers, ignores its signal' }),
      init: async () => undefined,
      close: async () => undefined,
      openContext: async () => null,
      closeContext: async () => undefined,
      contextUsable: () => true,
      signatureVersion: async () => 'v1',
      scan: () => {
        calls++;
        return new Promise<EngineScanResult>(() => undefined);
      },
      scanChunks: () => {
        calls++;
        return new Promise<EngineScanResult>(() => undefined);
      },
    };
    const scanner = new Scanner([{ id: 'deaf', engine: deaf as Engine }], { ...LIMITS, scanTimeoutMs: 150 }, null, silentLogger());
    for (const source of [
      { kind: 'buffer', data: Buffer.from('abc') },
      { kind: 'stream', stream: Readable.from([Buffer.from('abc')]) },
    ] as const) {
      const v = await scanner.scan({ source });
      assert.equal(v.status, 'error');
      assert.equal(v.status === 'error' ? v.code : '', 'AVG_ERR_ENGINE_TIMEOUT');
    }
    assert.equal(calls, 2);
  });

  test('queue overflow → error AVG_ERR_QUEUE_FULL at once', async () => {
    const srv = await startFaultServer((s) => s.resume());
    const e = new ClamdNetEngine();
    e.configure([{ name: 'address', value: srv.address }]);
    const scanner = new Scanner([{ id: 'stall', engine: e }], { ...LIMITS, scanTimeoutMs: 500, maxConcurrentScans: 1, maxQueue: 1 }, null, silentLogger());
    const scans = [1, 2, 3].map(() => scanner.scan({ source: { kind: 'buffer', data: Buffer.from('abc') } }));
    const results = await Promise.all(scans);
    const codes = results.map((r) => (r.status === 'error' ? r.code : r.status));
    assert.equal(codes.filter((c) => c === 'AVG_ERR_QUEUE_FULL').length, 1, codes.join());
    assert.equal(codes.filter((c) => c === 'AVG_ERR_ENGINE_TIMEOUT').length, 2, codes.join());
    await scanner.close();
    await srv.close();
  });

  test('engine down → error verdict (fail closed), with the cause', async () => {
    const e = new ClamdNetEngine();
    e.configure([{ name: 'address', value: `127.0.0.1:${await closedPort()}` }]);
    const cache = new VerdictCache({ memoryEntries: 10, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'down', engine: e }], LIMITS, cache, silentLogger());
    const v = await scanner.scan({ source: { kind: 'buffer', data: Buffer.from('abc') } });
    assert.equal(v.status, 'error');
    assert.equal(v.status === 'error' ? v.code : '', 'AVG_ERR_ENGINE_CONNECT');
    assert.equal(cache.stats.hits + cache.stats.memoryEntries, 0, 'nothing cached for an error');
    await scanner.close();
  });

  test('a file that cannot be read → error AVG_ERR_SOURCE', async () => {
    const e = new ClamdNetEngine();
    e.configure([{ name: 'address', value: '127.0.0.1:1' }]);
    const scanner = new Scanner([{ id: 'x', engine: e }], LIMITS, null, silentLogger());
    const v = await scanner.scan({ source: { kind: 'file', path: '/nonexistent/file' } });
    assert.equal(v.status === 'error' ? v.code : v.status, 'AVG_ERR_SOURCE');
    await scanner.close();
  });
});
