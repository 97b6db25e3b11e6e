import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { trickleSchema, type TrickleConfig } from '../../src/config/proxy-schema.js';
import { Spool } from '../../src/core/spool.js';
import { CleanHints } from '../../src/proxy/clean-hints.js';
import { SpoolFeed, trickle, trickleCap, type TrickleSink } from '../../src/proxy/trickle.js';

const dir = mkdtempSync(join(tmpdir(), 'avg-trickle-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A sink recording what it got; `slow` makes each write wait (backpressure) and checks writes never overlap. */
function recorder(slow = 0) {
  const got: Buffer[] = [];
  let begins = 0;
  let inFlight = 0;
  let overlap = false;
  const waiters: Array<{ n: number; resolve: () => void }> = [];
  const total = () => got.reduce((n, b) => n + b.length, 0);
  const sink: TrickleSink = {
    begin: () => void begins++,
    write: async (chunk) => {
      if (inFlight++ > 0) overlap = true;
      got.push(Buffer.from(chunk));
      if (slow) await new Promise((r) => setTimeout(r, slow));
      inFlight--;
      for (const w of [...waiters]) {
        if (total() < w.n) continue;
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    },
  };
  return {
    sink,
    body: () => Buffer.concat(got),
    begins: () => begins,
    overlap: () => overlap,
    /** Resolves once at least n bytes arrived. */
    atLeast: (n: number) => new Promise<void>((resolve) => (total() >= n ? resolve() : waiters.push({ n, resolve }))),
  };
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((a, b) => ((resolve = a), (reject = b)));
  return { promise, resolve, reject };
}

async function filledFeed(data: Buffer, memory = 1 << 20): Promise<SpoolFeed> {
  const feed = new SpoolFeed(new Spool(dir, memory, { hash: false }));
  for (let i = 0; i < data.length; i += 1000) await feed.write(data.subarray(i, i + 1000));
  await feed.end();
  return feed;
}

const body = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => i % 251));
const params = (o: Record<string, unknown>): TrickleConfig => trickleSchema.parse(o);

test('trickleCap: limit as bytes or share, keep-back of the announced or received size', () => {
  const p = params({ limit: '50%', 'keep-back': 10 });
  assert.equal(trickleCap(p, 100, 100), 50);
  assert.equal(trickleCap(p, 30, 100), 30, 'never more than arrived');
  assert.equal(trickleCap(p, 100, null), 50, 'share of what arrived when the size is unknown');
  assert.equal(trickleCap(params({ limit: '95%', 'keep-back': 10 }), 100, 100), 90, 'keep-back wins over the limit');
  assert.equal(trickleCap(params({ limit: 20, 'keep-back': 0 }), 100, null), 20);
  assert.equal(trickleCap(params({ limit: '90%', 'keep-back': 1000 }), 100, 100), 0, 'a body under keep-back is never trickled');
});

test('no trickle: a pass sends the whole body once, byte-identical, head first', async () => {
  const data = body(300_000);
  const feed = await filledFeed(data, 64 * 1024); // on disk
  const r = recorder();
  const out = await trickle({ feed, decision: Promise.resolve('pass'), params: null, totalSize: data.length, sink: r.sink });
  assert.deepEqual(out, { kind: 'passed', sent: data.length });
  assert.equal(r.begins(), 1);
  assert.ok(r.body().equals(data));
  await feed.spool.dispose();
});

test('no trickle: a block sends nothing (block page possible); an engine failure (rejection) blocks', async () => {
  for (const decision of [Promise.resolve('block' as const), Promise.reject(new Error('engine down'))]) {
    const feed = await filledFeed(body(5000));
    const r = recorder();
    const out = await trickle({ feed, decision, params: null, totalSize: null, sink: r.sink });
    assert.deepEqual(out, { kind: 'blocked', sent: 0 });
    assert.equal(r.begins(), 0);
    assert.equal(r.body().length, 0);
    await feed.spool.dispose();
  }
});

test('trickle: chunks go out before the verdict, within limit and keep-back; a late block aborts', async () => {
  const data = body(100_000);
  const feed = await filledFeed(data);
  const r = recorder();
  const d = deferred<'pass' | 'block'>();
  const p = params({ interval: '5ms', chunk: 1000, limit: '50%', 'keep-back': 10_000 });
  const run = trickle({ feed, decision: d.promise, params: p, totalSize: data.length, sink: r.sink });
  await r.atLeast(3000); // three chunks at least
  d.resolve('block');
  const out = await run;
  assert.equal(out.kind, 'aborted');
  assert.ok(out.sent >= 3000 && out.sent <= 50_000, `sent ${out.sent}`);
  assert.equal(r.body().length, out.sent);
  assert.ok(r.body().equals(data.subarray(0, out.sent)), 'the sent bytes are the start of the body');
  assert.equal(r.begins(), 1);
  await feed.spool.dispose();
});

test('trickle: the limit is never passed however long the scan takes, then a pass sends the rest', async () => {
  const data = body(20_000);
  const feed = await filledFeed(data);
  const r = recorder();
  const d = deferred<'pass' | 'block'>();
  const p = params({ interval: '1ms', chunk: 4000, limit: 6000, 'keep-back': 1000 });
  const run = trickle({ feed, decision: d.promise, params: p, totalSize: null, sink: r.sink });
  await r.atLeast(6000);
  await new Promise((res) => setTimeout(res, 50)); // many more intervals
  assert.equal(r.body().length, 6000, 'stops at limit');
  d.resolve('pass');
  const out = await run;
  assert.deepEqual(out, { kind: 'passed', sent: data.length });
  assert.ok(r.body().equals(data));
  await feed.spool.dispose();
});

test('trickle: a body within keep-back is never trickled, so a block still gets the page', async () => {
  const feed = await filledFeed(body(800));
  const r = recorder();
  const d = deferred<'pass' | 'block'>();
  const run = trickle({ feed, decision: d.promise, params: params({ interval: '1ms', chunk: 100, 'keep-back': 1000 }), totalSize: 800, sink: r.sink });
  await new Promise((res) => setTimeout(res, 40));
  d.resolve('block');
  assert.deepEqual(await run, { kind: 'blocked', sent: 0 });
  assert.equal(r.begins(), 0);
  await feed.spool.dispose();
});

test('trickle: a pass while the body still arrives streams it on, with backpressure (no overlapping writes)', async () => {
  const data = body(600_000);
  const feed = new SpoolFeed(new Spool(dir, 100_000, { hash: false }));
  const r = recorder(1);
  const run = trickle({ feed, decision: Promise.resolve('pass'), params: params({}), totalSize: null, sink: r.sink });
  for (let i = 0; i < data.length; i += 50_000) {
    await feed.write(data.subarray(i, i + 50_000));
    await new Promise((res) => setImmediate(res));
  }
  await feed.end();
  const out = await run;
  assert.deepEqual(out, { kind: 'passed', sent: data.length });
  assert.ok(r.body().equals(data));
  assert.equal(r.overlap(), false);
  await feed.spool.dispose();
});

test('trickle: receiving failure and an abandoned transfer end as failed', async () => {
  const feed = new SpoolFeed(new Spool(dir, 1000, { hash: false }));
  await feed.write(body(500));
  const r = recorder();
  const run = trickle({ feed, decision: new Promise(() => undefined), params: null, totalSize: null, sink: r.sink });
  feed.fail(new Error('upstream reset'));
  const out = await run;
  assert.equal(out.kind, 'failed');
  assert.match(String((out as { error: unknown }).error), /upstream reset/);

  const feed2 = await filledFeed(body(500));
  const ac = new AbortController();
  const run2 = trickle({ feed: feed2, decision: new Promise(() => undefined), params: null, totalSize: null, sink: r.sink, signal: ac.signal });
  ac.abort();
  assert.equal((await run2).kind, 'failed');
  await feed.spool.dispose();
  await feed2.spool.dispose();
});

test('eager trickle: bytes go out as they arrive, up to the cap and no further, with no interval; a block then aborts', async () => {
  const data = body(200_000);
  // A long interval: an eager trickle must not wait for it.
  const p = params({ interval: '1h', chunk: 1000, limit: '50%', 'keep-back': 10_000 });
  for (const recentWindow of [0, 64 * 1024]) {
    const feed = new SpoolFeed(new Spool(dir, 32 * 1024, { hash: false }), { queue: true, recentWindow });
    const r = recorder();
    const d = deferred<'pass' | 'block'>();
    const run = trickle({ feed, decision: d.promise, params: p, totalSize: data.length, sink: r.sink, eager: true });
    for (let i = 0; i < data.length; i += 7000) await feed.write(data.subarray(i, i + 7000));
    await feed.end();
    await r.atLeast(100_000);
    d.resolve('block');
    const out = await run;
    assert.deepEqual(out, { kind: 'aborted', sent: 100_000 }, `window ${recentWindow}`);
    assert.ok(r.body().equals(data.subarray(0, 100_000)), 'the start of the body, in order');
    await feed.spool.dispose();
  }
});

test('eager trickle: a pass sends the whole body byte-identical; the cap still holds keep-back back', async () => {
  const data = body(300_000);
  const p = params({ interval: '1h', limit: '100%', 'keep-back': 50_000 });
  const feed = new SpoolFeed(new Spool(dir, 16 * 1024, { hash: false }), { queue: true, recentWindow: 80_000 });
  const r = recorder();
  const d = deferred<'pass' | 'block'>();
  const run = trickle({ feed, decision: d.promise, params: p, totalSize: data.length, sink: r.sink, eager: true });
  for (let i = 0; i < data.length; i += 5000) await feed.write(data.subarray(i, i + 5000));
  await feed.end();
  await r.atLeast(250_000);
  assert.equal(r.body().length, 250_000, 'never the last keep-back bytes before the verdict');
  d.resolve('pass');
  const out = await run;
  assert.deepEqual(out, { kind: 'passed', sent: data.length });
  assert.ok(r.body().equals(data));
  await feed.spool.dispose();
});

test('queued feed: a failure stops the spool writes; idle() waits for the one under way', async () => {
  const feed = new SpoolFeed(new Spool(dir, 1000, { hash: false }), { queue: true });
  for (let i = 0; i < 20; i++) await feed.write(body(3000));
  feed.fail(new Error('reset'));
  await feed.idle();
  assert.ok(feed.failed);
  assert.ok(feed.size <= 60_000);
  await feed.spool.dispose();
});

test('clean hints: only objects with an announced size; most recent kept, oldest dropped', () => {
  const key = (url: string, size: number | null) => CleanHints.key({ rule: 'r', url, size, etag: null, lastModified: null, encoding: null });
  assert.equal(key('http://a/x', null), null);
  assert.notEqual(key('http://a/x', 1), key('http://a/x', 2));
  const h = new CleanHints(2);
  h.add(key('http://a/1', 1));
  h.add(key('http://a/2', 1));
  h.add(key('http://a/1', 1)); // refreshed
  h.add(key('http://a/3', 1));
  assert.ok(h.has(key('http://a/1', 1)));
  assert.ok(!h.has(key('http://a/2', 1)));
  assert.ok(h.has(key('http://a/3', 1)));
  h.delete(key('http://a/3', 1));
  assert.ok(!h.has(key('http://a/3', 1)));
  assert.ok(!h.has(null));
});

test('trickle: a sink taking several pieces at once gets them in order, byte-identical', async () => {
  const data = body(3_000_000);
  const feed = await filledFeed(data, 64 * 1024); // on disk: read back in pieces
  const got: Buffer[] = [];
  let batches = 0;
  const sink: TrickleSink = {
    begin: () => undefined,
    write: async (c) => void got.push(Buffer.from(c)),
    writeMany: async (cs) => {
      batches++;
      for (const c of cs) got.push(Buffer.from(c));
    },
  };
  const out = await trickle({ feed, decision: Promise.resolve('pass'), params: null, totalSize: data.length, sink });
  assert.deepEqual(out, { kind: 'passed', sent: data.length });
  assert.ok(batches > 0, 'several pieces went out together');
  assert.ok(Buffer.concat(got).equals(data));
  await feed.spool.dispose();
});

test('trickle with skip: a cap below the skip sends nothing before the verdict; a block is "blocked"', async () => {
  const data = body(100_000);
  const p = params({ interval: '1ms', chunk: 1000, limit: '50%', 'keep-back': 10_000 });
  for (const eager of [false, true]) {
    const feed = await filledFeed(data);
    const r = recorder();
    const d = deferred<'pass' | 'block'>();
    // The client holds the first 60 000 bytes; the cap (50% of the whole) lies below that.
    const run = trickle({ feed, decision: d.promise, params: p, totalSize: data.length, sink: r.sink, skip: 60_000, eager });
    await new Promise((res) => setTimeout(res, 50)); // many intervals
    assert.equal(r.body().length, 0, `nothing past the cap before the verdict (eager ${eager})`);
    assert.equal(r.begins(), 0);
    d.resolve('block');
    assert.deepEqual(await run, { kind: 'blocked', sent: 0 });
    await feed.spool.dispose();
  }
});

test('trickle with skip: a pass sends exactly [skip, size), with end exactly [skip, end)', async () => {
  const data = body(100_000);
  const p = params({ interval: '1ms', chunk: 1000, limit: '50%', 'keep-back': 10_000 });
  for (const [skip, end] of [
    [60_000, undefined],
    [60_000, 70_000],
    [0, 10],
    [99_999, undefined],
    [100_000, undefined],
    [10, 200_000],
  ] as const) {
    const feed = await filledFeed(data, 32 * 1024);
    const r = recorder();
    const d = deferred<'pass' | 'block'>();
    const run = trickle({ feed, decision: d.promise, params: p, totalSize: data.length, sink: r.sink, skip, ...(end === undefined ? {} : { end }) });
    await new Promise((res) => setTimeout(res, 20));
    d.resolve('pass');
    const want = data.subarray(skip, end ?? data.length);
    const out = await run;
    assert.deepEqual(out, { kind: 'passed', sent: want.length }, `skip ${skip} end ${end}`);
    assert.ok(r.body().equals(want), `skip ${skip} end ${end}: the bytes of the range`);
    assert.equal(r.begins(), 1);
    await feed.spool.dispose();
  }
});

test('trickle with skip below the cap: trickles from skip up to the whole-body cap, then a block aborts', async () => {
  const data = body(100_000);
  const feed = await filledFeed(data);
  const r = recorder();
  const d = deferred<'pass' | 'block'>();
  const p = params({ interval: '1ms', chunk: 4000, limit: '50%', 'keep-back': 10_000 });
  const run = trickle({ feed, decision: d.promise, params: p, totalSize: data.length, sink: r.sink, skip: 40_000 });
  await r.atLeast(10_000);
  await new Promise((res) => setTimeout(res, 50));
  assert.equal(r.body().length, 10_000, 'position 50 000 of the whole (50%) is the cap: 10 000 bytes past the skip');
  assert.ok(r.body().equals(data.subarray(40_000, 50_000)));
  d.resolve('block');
  assert.deepEqual(await run, { kind: 'aborted', sent: 10_000 });
  await feed.spool.dispose();
});

test('trickle with end: a pass while the body still arrives ends once the range is out', async () => {
  const data = body(50_000);
  const feed = new SpoolFeed(new Spool(dir, 1 << 20, { hash: false }));
  await feed.write(data.subarray(0, 30_000));
  const r = recorder();
  const out = await trickle({ feed, decision: Promise.resolve('pass'), params: null, totalSize: data.length, sink: r.sink, skip: 5000, end: 25_000 });
  assert.deepEqual(out, { kind: 'passed', sent: 20_000 });
  assert.ok(r.body().equals(data.subarray(5000, 25_000)));
  feed.fail(new Error('no more needed'));
  await feed.spool.dispose();
});

test('trickle with end: a range below the cap is never sent to its end before the verdict (the last byte waits), eager or by interval; a block then aborts', async () => {
  const data = body(1_000_000);
  const p = params({ interval: '1ms', chunk: 64 * 1024, limit: '90%', 'keep-back': 10_000 });
  for (const eager of [false, true]) {
    const feed = await filledFeed(data, 64 * 1024);
    const r = recorder();
    const d = deferred<'pass' | 'block'>();
    // bytes 0-65535, as `curl -r 0-65535` asks: far below the whole body's cap.
    const run = trickle({ feed, decision: d.promise, params: p, totalSize: data.length, sink: r.sink, end: 65_536, eager });
    await r.atLeast(65_535);
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(r.body().length, 65_535, `eager ${eager}: all but the last byte of the range`);
    d.resolve('block');
    assert.deepEqual(await run, { kind: 'aborted', sent: 65_535 });
    await feed.spool.dispose();
  }
  // A pass sends the range whole.
  const feed = await filledFeed(data, 64 * 1024);
  const r = recorder();
  const out = await trickle({ feed, decision: new Promise((res) => setTimeout(() => res('pass'), 30)), params: p, totalSize: data.length, sink: r.sink, end: 65_536 });
  assert.deepEqual(out, { kind: 'passed', sent: 65_536 });
  assert.ok(r.body().equals(data.subarray(0, 65_536)));
  await feed.spool.dispose();
});
