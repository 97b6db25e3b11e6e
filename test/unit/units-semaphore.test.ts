import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Semaphore } from '../../src/core/semaphore.js';
import { formatBytes, parseDuration, parseSize } from '../../src/core/units.js';

test('parseSize', () => {
  const table: Array<[string | number, number | null]> = [
    ['512', 512], [512, 512], ['64KiB', 65536], ['64k', 65536], ['1kb', 1000], ['100MiB', 104857600],
    ['2G', 2 * 1024 ** 3], ['1.5M', 1572864], ['', null], ['12XB', null], ['-1', null], [-1, null], ['1e3', null],
  ];
  for (const [input, expected] of table) assert.equal(parseSize(input), expected, String(input));
});

test('parseDuration', () => {
  const table: Array<[string | number, number | null]> = [
    ['250ms', 250], ['30s', 30000], ['5m', 300000], ['1h', 3600000], ['7d', 604800000], ['100', 100], [100, 100],
    ['1.5s', 1500], ['s', null], ['5 weeks', null], [-5, null],
  ];
  for (const [input, expected] of table) assert.equal(parseDuration(input), expected, String(input));
});

test('formatBytes', () => {
  assert.equal(formatBytes(100), '100 B');
  assert.equal(formatBytes(1536), '1.50 KiB');
  assert.equal(formatBytes(3 * 1024 ** 3), '3.00 GiB');
});

test('semaphore: bounded slots, bounded queue, overflow refused at once', async () => {
  const s = new Semaphore(2, 1);
  const r1 = await s.acquire();
  const r2 = await s.acquire();
  assert.equal(s.inUse, 2);
  let third = false;
  const p3 = s.acquire().then((r) => {
    third = true;
    return r;
  });
  assert.equal(s.queued, 1);
  await assert.rejects(s.acquire(), { code: 'AVG_ERR_QUEUE_FULL' });
  r1();
  r1(); // a second release of the same slot is ignored
  const r3 = await p3;
  assert.equal(third, true);
  assert.equal(s.inUse, 2);
  r2();
  r3();
  assert.equal(s.inUse, 0);
});

test('semaphore: a waiter that gives up leaves the queue', async () => {
  const s = new Semaphore(1, 5);
  const r = await s.acquire();
  const ac = new AbortController();
  const p = s.acquire(ac.signal);
  ac.abort(new Error('client gone'));
  await assert.rejects(p, /client gone/);
  assert.equal(s.queued, 0);
  r();
  assert.equal(s.inUse, 0);
});
