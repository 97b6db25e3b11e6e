import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { test } from 'node:test';
import { LoginLimiter } from '../../src/web/auth.js';
import { BodyStallWatch } from '../../src/web/http.js';

test('login limiter: checks in flight count, so a burst gets at most max tries', () => {
  let now = 0;
  const l = new LoginLimiter(3, 60_000, () => now);
  const burst = Array.from({ length: 10 }, () => l.begin('10.0.0.1'));
  const taken = burst.filter((a) => a !== null);
  assert.equal(taken.length, 3, 'three tries handed out before any of them ended');
  assert.equal(l.retryAfter('10.0.0.1'), 1, 'over the limit through checks in flight only');
  assert.ok(l.begin('10.0.0.2'), 'per address');
  for (const a of taken) a?.failed();
  now = 2000;
  assert.equal(l.retryAfter('10.0.0.1'), 58, 'three failures, the oldest expires in 58 s');
  assert.equal(l.begin('10.0.0.1'), null);
  now = 60_001;
  assert.ok(l.begin('10.0.0.1'), 'the window passed');
});

test('login limiter: release gives the try back; a success clears the failures; settling twice counts once', () => {
  const l = new LoginLimiter(2, 60_000, () => 0);
  const a = l.begin('ip');
  const b = l.begin('ip');
  assert.ok(a && b);
  assert.equal(l.begin('ip'), null);
  a.release();
  a.failed(); // already settled: ignored
  const c = l.begin('ip');
  assert.ok(c, 'the released try is free again');
  b.failed();
  assert.equal(l.begin('ip'), null, 'one failure and one check in flight');
  c.succeeded();
  const d = l.begin('ip');
  const e = l.begin('ip');
  assert.ok(d && e, 'the success forgot the failure');
  d.release();
  e.release();
  assert.equal(l.retryAfter('ip'), 0);
});

/** Enough of an IncomingMessage for the watch: headers, complete, a buffer length and a socket. */
function fakeRequest(headers: Record<string, string>): { req: IncomingMessage; socket: { bytesRead: number; destroyed: boolean }; state: { complete: boolean; readableLength: number } } {
  const socket = { bytesRead: 0, destroyed: false };
  const state = { complete: false, readableLength: 0 };
  const req = Object.assign(new EventEmitter(), { headers, socket });
  Object.defineProperty(req, 'complete', { get: () => state.complete });
  Object.defineProperty(req, 'readableLength', { get: () => state.readableLength });
  return { req: req as unknown as IncomingMessage, socket, state };
}

test('body stall watch: silence ends the request; arriving bytes or an unread buffer do not', async () => {
  const watch = new BodyStallWatch(200);
  try {
    const stalled: string[] = [];
    const silent = fakeRequest({ 'content-length': '10000' });
    const dripping = fakeRequest({ 'content-length': '10000' });
    const unread = fakeRequest({ 'transfer-encoding': 'chunked' });
    const done = fakeRequest({ 'content-length': '5' });
    const bodiless = fakeRequest({});
    watch.watch(silent.req, () => stalled.push('silent'));
    watch.watch(dripping.req, () => stalled.push('dripping'));
    watch.watch(unread.req, () => stalled.push('unread'));
    watch.watch(done.req, () => stalled.push('done'));
    watch.watch(bodiless.req, () => stalled.push('bodiless'));
    assert.equal(watch.size, 4, 'a request without a body is not watched');
    unread.state.readableLength = 100; // the console has not read what came: its own delay
    done.state.complete = true;
    for (let i = 0; i < 12; i++) {
      await new Promise((r) => setTimeout(r, 50));
      dripping.socket.bytesRead += 1;
    }
    assert.deepEqual(stalled, ['silent']);
    assert.equal(watch.size, 2, 'the stalled and the complete one are no longer watched');
  } finally {
    watch.stop();
  }
});
