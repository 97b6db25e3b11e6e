import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stringify } from 'yaml';
import { cachePrometheus } from '../../src/cache/metrics.js';
import { createServer, type Socket } from 'node:net';
import pino from 'pino';
import { decodeSharedValue, encodeSharedValue, MAX_NAME_LENGTH, MAX_NAMES, RedisLevel } from '../../src/cache/redis-level.js';
import { parseRedisUrl } from '../../src/config/redis-url.js';
import { encodeCommand, parseReply, RespError } from '../../src/cache/resp.js';
import { VerdictCache, type SharedEntry, type SharedLevel, type SharedStats } from '../../src/cache/verdict-cache.js';
import { configWarnings } from '../../src/config/check.js';
import { parseConfigText } from '../../src/config/loader.js';
import { masked, maskUrlPassword } from '../../src/config/mask.js';
import { configError } from '../helpers/config.js';

test('cache.redis: off by default; an object gets every limit with its documented default', () => {
  assert.equal(parseConfigText('', 'x').cache.redis, null);
  const r = parseConfigText('cache:\n  redis:\n    url: redis://10.0.0.5:6380/2\n', 'x').cache.redis;
  assert.deepEqual(r, {
    url: 'redis://10.0.0.5:6380/2',
    'key-prefix': 'avgate:vc:',
    timeout: 50,
    'connect-timeout': 1000,
    'down-after-timeouts': 5,
    'reconnect-delay': 100,
    'reconnect-max-delay': 5000,
    'max-pending-writes': 1000,
    'max-pending-lookups': 1000,
    'max-value-size': 16 * 1024,
    'tls-ca': null,
  });
  const t = parseConfigText('cache:\n  redis: {url: "rediss://h", timeout: 5ms, max-pending-writes: 0, tls-ca: /etc/ca.pem}\n', 'x').cache.redis;
  assert.equal(t?.timeout, 5);
  assert.equal(t?.['max-pending-writes'], 0);
});

test('cache.redis: a bad URL or limit is refused with file:line and key, and the message never repeats the password', () => {
  const cases: Array<[string, RegExp]> = [
    ['cache:\n  redis:\n    url: http://u:hunter2@h/\n', /^avgate\.yaml:3: cache\.redis\.url: not a usable Redis URL: unknown scheme "http:"/m],
    ['cache:\n  redis:\n    url: "redis://:hunter2@h:99999"\n', /^avgate\.yaml:3: cache\.redis\.url: not a usable Redis URL: /m],
    ['cache:\n  redis:\n    url: redis://:hunter2@h/x\n', /^avgate\.yaml:3: cache\.redis\.url: .*database number/m],
    ['cache:\n  redis:\n    url: redis://h?db=2\n', /^avgate\.yaml:3: cache\.redis\.url: .*take no query/m],
    ['cache:\n  redis:\n    url: redis://someone@h\n', /^avgate\.yaml:3: cache\.redis\.url: .*a user needs a password/m],
    ['cache:\n  redis:\n    url: unix:///run/r.sock?dbx=1&password=hunter2\n', /^avgate\.yaml:3: cache\.redis\.url: .*unknown query parameter "dbx"/m],
    ['cache:\n  redis:\n    url: not a url hunter2\n', /^avgate\.yaml:3: cache\.redis\.url: not a usable Redis URL: not a URL/m],
    ['cache:\n  redis:\n    url: redis://h\n    timeout: 0ms\n', /^avgate\.yaml:4: cache\.redis\.timeout: at least 1ms/m],
    ['cache:\n  redis:\n    url: redis://h\n    max-value-size: 1GiB\n', /^avgate\.yaml:4: cache\.redis\.max-value-size: from 64 bytes to 1MiB/m],
    ['cache:\n  redis:\n    url: redis://h\n    tls-ca: /etc/ca.pem\n', /^avgate\.yaml:4: cache\.redis\.tls-ca: only used with a rediss:\/\/ URL/m],
    ['cache:\n  redis:\n    url: redis://h\n    timout: 1s\n', /^avgate\.yaml:4: cache\.redis\.timout: unknown key/m],
    ['cache:\n  redis:\n    key-prefix: x\n', /^avgate\.yaml:\d+: cache\.redis\.url: .*expected string/m],
  ];
  for (const [text, re] of cases) {
    const msg = configError(text);
    assert.match(msg, re, text);
    assert.doesNotMatch(msg, /hunter2/, 'the password is not repeated');
  }
});

test('config check warns about a Redis level that is not used or never expires', () => {
  const warn = (yaml: string) => configWarnings(parseConfigText(yaml, 'x.yaml')).filter((w) => w.includes('redis') || w.includes('Redis'));
  assert.deepEqual(warn('cache:\n  redis: {url: "redis://h"}\n'), []);
  assert.match(warn('cache:\n  enabled: false\n  redis: {url: "redis://h"}\n')[0] ?? '', /cache\.redis is not used/);
  assert.match(warn('cache:\n  max-age: 0s\n  redis: {url: "redis://h"}\n')[0] ?? '', /never expire/);
});

test('Redis URLs: TCP, TLS, IPv6, ACL user, percent-encoded password, database; unix socket with its query', () => {
  assert.deepEqual(parseRedisUrl('redis://h'), { address: { host: 'h', port: 6379 }, tls: false, username: null, password: null, db: 0 });
  assert.deepEqual(parseRedisUrl('rediss://avgate:p%40ss%2Fw@[::1]:6380/3'), {
    address: { host: '::1', port: 6380 },
    tls: true,
    username: 'avgate',
    password: 'p@ss/w',
    db: 3,
  });
  assert.deepEqual(parseRedisUrl('redis://:only@h/'), { address: { host: 'h', port: 6379 }, tls: false, username: null, password: 'only', db: 0 });
  assert.deepEqual(parseRedisUrl('unix:///run/redis/redis.sock?db=2&user=avgate&password=s3'), {
    address: { path: '/run/redis/redis.sock' },
    tls: false,
    username: 'avgate',
    password: 's3',
    db: 2,
  });
  for (const bad of ['redis://', 'redis://h/-1', 'redis://h/99999999999', 'unix://host/run/r.sock', 'unix:relative.sock', 'redis://h#x', 'rediss://h:0']) {
    assert.ok('error' in parseRedisUrl(bad), bad);
  }
});

test('passwords in URLs are masked wherever the config is printed (config show, the console page, log lines)', () => {
  const config = parseConfigText('cache:\n  redis:\n    url: redis://avgate:hunter2@10.0.0.5:6379/1\n', 'x');
  const shown = stringify(masked(config));
  assert.doesNotMatch(shown, /hunter2/);
  assert.match(shown, /url: redis:\/\/avgate:\*{8}@10\.0\.0\.5:6379\/1/);
  assert.equal(maskUrlPassword('unix:///run/r.sock?db=1&password=hunter2'), 'unix:///run/r.sock?db=1&password=********');
  assert.equal(maskUrlPassword('rediss://:hunter2@h'), 'rediss://:********@h');
  assert.equal(maskUrlPassword('redis://h:6379/0'), 'redis://h:6379/0', 'no password: untouched');
  assert.equal(maskUrlPassword('postmaster@example.org'), 'postmaster@example.org', 'an address is no URL');
  assert.doesNotMatch(maskUrlPassword('redis://u:hun@ter2@h'), /hun|ter2/, 'an unencoded @ in the password');
});

test('shared values: only exactly what avgate writes is taken; anything else is a miss', () => {
  const now = Date.now();
  const ok = (text: string) => decodeSharedValue(Buffer.from(text), 16384, now);
  assert.deepEqual(ok(encodeSharedValue({ status: 'free' }, now - 5)), { result: { status: 'free' }, at: now - 5 });
  assert.deepEqual(ok(encodeSharedValue({ status: 'found', names: ['Win.Test.EICAR_HDB-1'] }, now)), {
    result: { status: 'found', names: ['Win.Test.EICAR_HDB-1'] },
    at: now,
  });
  const long = 'N'.repeat(MAX_NAME_LENGTH);
  assert.ok(ok(JSON.stringify({ status: 'found', names: Array(MAX_NAMES).fill(long), at: now })), 'the bounds themselves are fine');
  const invalid = [
    '',
    'free',
    'null',
    '[]',
    '{"status":"free"}',
    '{"status":"clean","at":1}',
    '{"status":"skipped","at":1}',
    '{"status":"error","at":1}',
    '{"status":"FREE","at":1}',
    '{"status":"free","at":"1"}',
    '{"status":"free","at":0}',
    `{"status":"free","at":${now + 3_600_000}}`,
    '{"status":"free","at":1,"names":[]}',
    '{"status":"free","at":1,"extra":true}',
    '{"status":"found","at":1}',
    '{"status":"found","names":"Eicar","at":1}',
    '{"status":"found","names":[1],"at":1}',
    '{"status":"found","names":[""],"at":1}',
    '{"status":"found","names":["a\\r\\nX-Injected: 1"],"at":1}',
    JSON.stringify({ status: 'found', names: [`${long}x`], at: 1 }),
    JSON.stringify({ status: 'found', names: Array(MAX_NAMES + 1).fill('a'), at: 1 }),
    '{"status":"free","at":1',
    '\u0000\u0001binary',
  ];
  for (const text of invalid) assert.equal(ok(text), null, text);
  assert.equal(decodeSharedValue(Buffer.from(encodeSharedValue({ status: 'free' }, now)), 10, now), null, 'over max-value-size');
  // A clock a little ahead on another node is fine; the entry ages from now.
  assert.equal(ok(`{"status":"free","at":${now + 30_000}}`)?.at, now);
});

test('RESP: commands are arrays of bulk strings; replies parse at every split point; violations are refused', () => {
  assert.equal(encodeCommand(['SET', 'k', 'vé']).toString('utf8'), '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nvé\r\n');
  const stream = Buffer.from('+OK\r\n-WRONGTYPE Operation\r\n:42\r\n$-1\r\n$0\r\n\r\n$5\r\nhe\r\no\r\n');
  const expected = ['OK', new RespError('WRONGTYPE Operation'), 42, null, Buffer.alloc(0), Buffer.from('he\r\no')];
  for (let cut = 0; cut <= stream.length; cut++) {
    // The first `cut` bytes, then the whole: what parses from the prefix is a prefix of the replies.
    const got: unknown[] = [];
    let off = 0;
    const part = stream.subarray(0, cut);
    for (;;) {
      const r = parseReply(part, off, 100);
      if (r === null || off >= part.length) break;
      assert.ok(!('violation' in r), `cut ${cut}`);
      got.push(r.value);
      off = r.next;
    }
    assert.deepEqual(got, expected.slice(0, got.length), `cut ${cut}`);
  }
  const violations = ['*1\r\n$1\r\na\r\n', '$101\r\n', '$5\r\nhelloXX', ':x\r\n', '%1\r\n', `+${'a'.repeat(5000)}`];
  for (const v of violations) {
    const r = parseReply(Buffer.from(v), 0, 100);
    assert.ok(r !== null && 'violation' in r, JSON.stringify(v.slice(0, 20)));
  }
});

/** A shared level in memory: what VerdictCache asks of it, and when. */
class FakeShared implements SharedLevel {
  readonly name = 'fake';
  readonly entries = new Map<string, SharedEntry>();
  lookups = 0;
  down = false;
  lookup(key: string): Promise<SharedEntry | null> | null {
    if (this.down) return null;
    this.lookups++;
    return Promise.resolve(this.entries.get(key) ?? null);
  }
  store(key: string, result: SharedEntry['result'], at: number): void {
    this.entries.set(key, { result, at });
  }
  get stats(): SharedStats {
    return { up: !this.down, hits: 0, misses: 0, invalid: 0, errors: 0, timeouts: 0, skipped: 0, writes: this.entries.size, writeErrors: 0, droppedWrites: 0 };
  }
  close(): void {}
}

test('VerdictCache with a shared level: writes go to it, get() stays local, getShared() asks it after a miss and remembers a hit in memory', async () => {
  const shared = new FakeShared();
  const a = new VerdictCache({ memoryEntries: 10, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0, shared });
  a.set('h1', 'clamav@1', { status: 'found', names: ['X'] });
  assert.deepEqual(shared.entries.get('h1|clamav@1')?.result, { status: 'found', names: ['X'] });
  const b = new VerdictCache({ memoryEntries: 10, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0, shared });
  assert.equal(b.get('h1', 'clamav@1'), null, 'get() never waits on the shared level');
  assert.equal(shared.lookups, 0);
  assert.deepEqual(await b.getShared('h1', 'clamav@1'), { status: 'found', names: ['X'] });
  assert.deepEqual(b.get('h1', 'clamav@1'), { status: 'found', names: ['X'] }, 'remembered in memory');
  assert.equal(await b.getShared('h1', 'clamav@2'), null, 'another signature version is another key');
  shared.down = true;
  assert.equal(b.getShared('h2', 'clamav@1'), null, 'down: a miss at once, nothing to wait for');
  assert.deepEqual(b.levels, ['memory', 'fake']);
  assert.equal(b.stats.shared?.up, false);
  const none = new VerdictCache({ memoryEntries: 10, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
  assert.equal(none.getShared('h1', 'clamav@1'), null);
  assert.equal('shared' in none.stats, false);
  assert.doesNotMatch(cachePrometheus(none.stats), /shared/);
  assert.match(cachePrometheus(a.stats), /^avgate_verdict_cache_shared_writes_total 1$/m);
});

test('a shared answer arriving after the engines answered does not replace their newer entry in memory', async () => {
  const shared = new FakeShared();
  shared.entries.set('h1|clamav@1', { result: { status: 'free' }, at: Date.now() - 60_000 });
  const c = new VerdictCache({ memoryEntries: 10, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0, shared });
  const late = c.getShared('h1', 'clamav@1');
  // The engines win the race (scanWhileHashing) and their verdict is set before the shared reply is read.
  c.set('h1', 'clamav@1', { status: 'found', names: ['Y'] });
  assert.deepEqual(await late, { status: 'free' });
  assert.deepEqual(c.get('h1', 'clamav@1'), { status: 'found', names: ['Y'] });
});

test('max-pending-lookups and max-pending-writes: past them a look-up skips Redis at once and a write is dropped, never queued', async () => {
  // A Redis that answers the connection's PING and then nothing: a fault a real one gives only while stopped.
  const sockets: Socket[] = [];
  const server = createServer((sock) => {
    sockets.push(sock);
    let answered = false;
    sock.on('data', () => {
      if (!answered) sock.write('+PONG\r\n');
      answered = true;
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  const target = parseRedisUrl(`redis://127.0.0.1:${port}`);
  assert.ok(!('error' in target));
  const level = new RedisLevel({
    target,
    label: 'silent',
    keyPrefix: 'p:',
    timeoutMs: 60_000,
    connectTimeoutMs: 2000,
    maxPendingWrites: 1,
    maxPendingLookups: 2,
    downAfterTimeouts: 5,
    reconnectDelayMs: 1000,
    reconnectMaxDelayMs: 1000,
    maxValueSize: 1024,
    maxAgeMs: 0,
    tlsCa: null,
    log: pino({ level: 'silent' }),
  });
  try {
    for (let i = 0; i < 100 && !level.stats.up; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(level.stats.up, true);
    assert.ok(level.lookup('k1') instanceof Promise);
    assert.ok(level.lookup('k2') instanceof Promise);
    assert.equal(level.lookup('k3'), null, 'a third look-up in flight is not sent');
    level.store('k1', { status: 'free' }, Date.now());
    level.store('k2', { status: 'free' }, Date.now());
    const s = level.stats;
    assert.equal(s.skipped, 1);
    assert.equal(s.writes, 1);
    assert.equal(s.droppedWrites, 1);
  } finally {
    level.close();
    for (const sock of sockets) sock.destroy();
    await new Promise((r) => server.close(r));
  }
});
