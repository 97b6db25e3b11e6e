import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { engineSetKey, VerdictCache } from '../../src/cache/verdict-cache.js';
import { setPageCache } from '../../src/core/sqlite.js';

const dir = mkdtempSync(join(tmpdir(), 'avgate-cache-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const V1 = engineSetKey([{ id: 'clamav', version: '1.4.6/100' }]);
const V2 = engineSetKey([{ id: 'clamav', version: '1.4.6/101' }]);

test('only free and found are cached', () => {
  const c = new VerdictCache({ memoryEntries: 10, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
  c.set('h1', V1, { status: 'error', code: 'AVG_ERR_ENGINE_CONNECT', cause: 'x' });
  c.set('h2', V1, { status: 'skipped', reason: 'x' });
  c.set('h3', V1, { status: 'unknown', raw: 'x' });
  c.set('h4', V1, { status: 'found', names: ['Eicar'] });
  c.set('h5', V1, { status: 'free' });
  assert.equal(c.get('h1', V1), null);
  assert.equal(c.get('h2', V1), null);
  assert.equal(c.get('h3', V1), null);
  assert.deepEqual(c.get('h4', V1), { status: 'found', names: ['Eicar'] });
  assert.deepEqual(c.get('h5', V1), { status: 'free' });
  assert.deepEqual(c.stats, { hits: 2, misses: 3, memoryEntries: 2, sqliteLookups: 0 });
});

test('level 1 is a bounded LRU', () => {
  const c = new VerdictCache({ memoryEntries: 2, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
  c.set('a', V1, { status: 'free' });
  c.set('b', V1, { status: 'free' });
  assert.ok(c.get('a', V1)); // a is now the most recent
  c.set('c', V1, { status: 'free' });
  assert.equal(c.stats.memoryEntries, 2);
  assert.ok(c.get('a', V1));
  assert.equal(c.get('b', V1), null, 'the least recently used entry went');
});

test('level 2 (SQLite) survives a restart; a new signature version never hits old entries', () => {
  const path = join(dir, 'c.sqlite');
  const c1 = new VerdictCache({ memoryEntries: 0, sqlitePath: path, sqliteMaxEntries: 100, maxAgeMs: 0 });
  c1.set('h', V1, { status: 'found', names: ['A', 'B'] });
  c1.close();
  const c2 = new VerdictCache({ memoryEntries: 10, sqlitePath: path, sqliteMaxEntries: 100, maxAgeMs: 0 });
  assert.deepEqual(c2.get('h', V1), { status: 'found', names: ['A', 'B'] });
  assert.equal(c2.get('h', V2), null, 'other signature version');
  // Having seen V2, the V1 rows are gone for good.
  assert.equal(c2.get('h', V1), null);
  c2.close();
});

test('level 2 hash filter: a hash never stored misses without a SQLite look-up; rows another process wrote are found after refresh(); the newest sqlite-max-entries rows stay covered when the filter changes generation', async () => {
  const path = join(dir, 'filter.sqlite');
  const hex = (i: number) => createHash('sha256').update(`object ${i}`).digest('hex');
  const options = { memoryEntries: 0, sqlitePath: path, sqliteMaxEntries: 100, maxAgeMs: 0 };
  const a = new VerdictCache(options);
  await a.filterLoaded;
  a.set(hex(1), V1, { status: 'free' });
  a.flush();
  for (let i = 1000; i < 1200; i++) assert.equal(a.get(hex(i), V1), null);
  assert.ok(a.stats.sqliteLookups <= 10, `${a.stats.sqliteLookups} of 200 misses went to SQLite`);
  const before = a.stats.sqliteLookups;
  assert.deepEqual(a.get(hex(1), V1), { status: 'free' });
  assert.equal(a.stats.sqliteLookups, before + 1, 'a stored hash is looked up');

  // Another process on the same file: it sees what is there when it opens; its rows reach `a` on refresh.
  const b = new VerdictCache(options);
  await b.filterLoaded;
  assert.equal(b.get(hex(3), V1), null);
  assert.deepEqual(b.get(hex(1), V1), { status: 'free' });
  assert.equal(b.stats.sqliteLookups, 1, 'loaded at open: only the stored hash went to SQLite');
  b.set(hex(2), V1, { status: 'found', names: ['Eicar'] });
  b.close();
  assert.equal(a.get(hex(2), V1), null, 'not known to the filter yet');
  a.refresh();
  assert.deepEqual(a.get(hex(2), V1), { status: 'found', names: ['Eicar'] });

  for (let i = 10; i < 260; i++) a.set(hex(i), V1, { status: 'free' });
  a.flush();
  for (let i = 160; i < 260; i++) assert.deepEqual(a.get(hex(i), V1), { status: 'free' }, `row ${i}`);
  a.close();
});

test('entries past max-age are not used; the SQLite level is pruned to its bound', () => {
  const c = new VerdictCache({ memoryEntries: 10, sqlitePath: join(dir, 'd.sqlite'), sqliteMaxEntries: 5, maxAgeMs: 1 });
  c.set('old', V1, { status: 'free' });
  const until = Date.now() + 5;
  while (Date.now() < until) {
    // wait past max-age
  }
  assert.equal(c.get('old', V1), null);
  const big = new VerdictCache({ memoryEntries: 0, sqlitePath: join(dir, 'e.sqlite'), sqliteMaxEntries: 5, maxAgeMs: 0 });
  for (let i = 0; i < 20; i++) big.set(`k${i}`, V1, { status: 'free' });
  big.prune();
  let kept = 0;
  for (let i = 0; i < 20; i++) if (big.get(`k${i}`, V1)) kept++;
  assert.equal(kept, 5);
  assert.ok(big.get('k19', V1), 'the newest stays');
});

test('engine set keys are order-independent and escape separators', () => {
  assert.equal(
    engineSetKey([{ id: 'b', version: '2' }, { id: 'a', version: '1,x@y' }]),
    engineSetKey([{ id: 'a', version: '1,x@y' }, { id: 'b', version: '2' }]),
  );
  assert.equal(engineSetKey([{ id: 'a', version: '1,x@y' }]), 'a@1%2Cx%40y');
});

test('SQLite page cache: 2 MiB unless configured (better-sqlite3 would allow 16 MB per connection), never under 64 KiB', () => {
  const db = new Database(':memory:');
  try {
    const kib = () => -Number(db.pragma('cache_size', { simple: true }));
    assert.equal(kib(), 16000, "better-sqlite3's build default, the reason for the setting");
    setPageCache(db);
    assert.equal(kib(), 2048);
    setPageCache(db, 512 * 1024);
    assert.equal(kib(), 512);
    setPageCache(db, 1000);
    assert.equal(kib(), 64);
  } finally {
    db.close();
  }
});
