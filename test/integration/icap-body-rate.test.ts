import assert from 'node:assert/strict';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { parseConfigText } from '../../src/config/loader.js';
import type { Verdict } from '../../src/core/verdict.js';
import { IcapServer } from '../../src/protocols/icap/server.js';
import type { ScanRequest, ScanService } from '../../src/scan/types.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestIcap, type TestIcap } from '../helpers/avgate-icap.js';
import { buildRequest, chunked, icapExchange, trickle } from '../helpers/icap-client.js';

/**
 * icap.body-timeout and icap.body-min-rate: a body must keep up a minimum rate (mod_reqtimeout's
 * body=…,MinRate=…), counted only while avgate waits for the client, not while it waits for an
 * engine. Against avgate with clamd, and against an IcapServer with a fake engine whose speed the
 * test sets (and whose log the test reads).
 */

const MiB = 1024 * 1024;

/** A scanner whose speed the test sets: how long it takes per stream piece and before its verdict. */
class FakeScanner implements ScanService {
  readonly wantsHash = false;
  readonly engineLikely = false;
  readonly concurrency = 4;
  /** A streamed body's reading stops for `ms` once `afterBytes` were read (an engine busy elsewhere). */
  stall: { afterBytes: number; ms: number; over: boolean } | null = null;
  verdictDelayMs = 0;
  readonly scans: Array<{ kind: string; bytes: number; aborted: boolean }> = [];

  prefersFiles(): boolean {
    return false;
  }

  async scan(request: ScanRequest): Promise<Verdict> {
    const rec = { kind: request.source.kind, bytes: 0, aborted: false };
    this.scans.push(rec);
    request.signal?.addEventListener('abort', () => (rec.aborted = true), { once: true });
    const common = { engine: 'fake', signatureVersion: '1', durationMs: 0, cached: false };
    const src = request.source;
    try {
      if (src.kind === 'stream') {
        for await (const piece of src.stream) {
          rec.bytes += (piece as Buffer).length;
          const stall = this.stall;
          if (stall && !stall.over && rec.bytes >= stall.afterBytes) {
            await sleep(stall.ms);
            stall.over = true;
          }
        }
      } else if (src.kind === 'chunks') {
        for (const c of src.chunks) rec.bytes += c.length;
      }
      await sleep(this.verdictDelayMs);
    } catch (err) {
      return { ...common, bytes: rec.bytes, status: 'error', code: 'AVG_ERR_ABORTED', cause: String(err) };
    }
    return { ...common, bytes: rec.bytes, status: 'free' };
  }

  async close(): Promise<void> {}
}

interface Direct {
  port: number;
  server: IcapServer;
  scanner: FakeScanner;
  logs: Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** An IcapServer on a free port with the fake scanner and a logger the test reads. */
async function startDirect(icapYaml: string[]): Promise<Direct> {
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-body-rate-'));
  const config = parseConfigText([`state-dir: ${stateDir}`, 'icap:', '  listen: 127.0.0.1:0', ...icapYaml.map((l) => `  ${l}`)].join('\n'), 'test.yaml');
  const logs: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const scanner = new FakeScanner();
  const server = new IcapServer(config.icap, { stateDir, scannerFor: () => ({ scanner, engines: [] }), log, version: 'test' });
  const { port } = await server.listen();
  return {
    port,
    server,
    scanner,
    logs,
    async stop() {
      await server.close(1000);
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

async function open(port: number): Promise<Socket> {
  const s = connect(port, '127.0.0.1');
  s.setNoDelay(true);
  s.on('error', () => undefined);
  await once(s, 'connect');
  return s;
}

/** Splits a built request where its body starts (the chunked body is its tail). */
function splitAtBody(req: Buffer, body: Buffer): [Buffer, Buffer] {
  const at = req.length - chunked(body).length;
  return [req.subarray(0, at), req.subarray(at)];
}

const verdictsCounted = (server: IcapServer): number => Object.values(server.counters.byVerdict).reduce((a, b) => a + b, 0);

describe('ICAP body-timeout / body-min-rate (fake engine)', () => {
  let d: Direct;
  before(async () => {
    d = await startDirect(['read-timeout: 5s', 'body-timeout: 300ms', 'body-min-rate: 100', 'spool-memory: 64KiB']);
  });
  after(async () => {
    await d?.stop();
  });

  test('a body trickled below body-min-rate → 408 well before read-timeout, logged as a warning, no scan', async () => {
    const s = await open(d.port);
    const body = randomBytes(2000);
    const [head, rest] = splitAtBody(buildRequest(d.port, body, { allow204: true }).first, body);
    s.write(head);
    const started = performance.now();
    let done = false;
    // 1 byte every 50 ms: 20 bytes/s, below 100 bytes/s; each pause far below read-timeout (5 s).
    const sending = trickle(s, rest, 1, 50, () => done);
    const r = await icapExchange(d.port, [], { socket: s, timeoutMs: 10_000, keepOpen: true });
    done = true;
    const sent = await sending;
    const ms = performance.now() - started;
    s.destroy();
    assert.equal(r.responses[0]?.head.status, 408, JSON.stringify(r.responses[0]?.head));
    assert.equal(r.closed, true, 'connection closed after the 408');
    assert.ok(sent < rest.length, 'answered before the body was complete');
    assert.ok(ms > 250 && ms < 3000, `408 after ${Math.round(ms)} ms (body-timeout 300 ms, read-timeout 5 s)`);
    const warn = d.logs.find((l) => typeof l.msg === 'string' && l.msg.includes('body too slow'));
    assert.ok(warn, 'a warning in the log');
    assert.equal(warn.level, 40);
    assert.equal(warn.service, 'avscan');
    assert.match(String(warn.client), /^127\.0\.0\.1:\d+$/);
    assert.ok(typeof warn.bytes === 'number' && warn.bytes > 0 && warn.bytes < 50, `bytes ${String(warn.bytes)}`);
    assert.equal(d.scanner.scans.length, 0, 'nothing scanned');
    assert.equal(verdictsCounted(d.server), 0, 'no verdict counted');
    assert.equal(d.server.counters.byStatus['408'], 1);
  });

  test('after a preview\'s 100 Continue the client\'s wait counts: the rest not coming → 408', async () => {
    const body = randomBytes(3000);
    // A short preview: its bytes earn little time (100 bytes/s).
    const req = buildRequest(d.port, body, { preview: 10, allow204: true });
    const s = await open(d.port);
    const r = await icapExchange(d.port, [req.first], { socket: s, timeoutMs: 3000, keepOpen: true });
    s.destroy();
    assert.equal(r.responses[0]?.head.status, 100);
    assert.equal(r.responses[1]?.head.status, 408, 'read-timeout is 5 s: the body deadline answered');
    assert.equal(r.closed, true);
  });

  test('a body above body-min-rate may take longer than body-timeout', async () => {
    const s = await open(d.port);
    const body = randomBytes(600);
    const [head, rest] = splitAtBody(buildRequest(d.port, body, { allow204: true }).first, body);
    s.write(head);
    const answer = icapExchange(d.port, [], { socket: s, timeoutMs: 10_000 });
    // 40 bytes every 100 ms (400 bytes/s) for about 1.6 s.
    await trickle(s, rest, 40, 100);
    const r = await answer;
    s.destroy();
    assert.equal(r.responses[0]?.head.status, 204);
  });

  test('a slow verdict after the body is not the client\'s fault, and the next request on the connection has a fresh allowance', async () => {
    d.scanner.verdictDelayMs = 1000;
    try {
      const s = await open(d.port);
      const r = await icapExchange(d.port, [buildRequest(d.port, randomBytes(10_000), { allow204: true }).first], { socket: s, timeoutMs: 5000 });
      assert.equal(r.responses[0]?.head.status, 204);
      const next = await icapExchange(d.port, [buildRequest(d.port, randomBytes(100), { allow204: true }).first], { socket: s, timeoutMs: 5000 });
      s.destroy();
      assert.equal(next.responses[0]?.head.status, 204);
    } finally {
      d.scanner.verdictDelayMs = 0;
    }
  });
});

describe('ICAP body-timeout: time spent on the engine does not count (fake engine)', () => {
  let d: Direct;
  before(async () => {
    // No rate: the body must arrive within 500 ms of waiting, however big it is.
    d = await startDirect(['read-timeout: 5s', 'body-timeout: 500ms', 'body-min-rate: 0', 'spool-memory: 64KiB']);
  });
  after(async () => {
    await d?.stop();
  });

  test('an engine slower than the client: the time the client is held back does not count', async () => {
    // 1 MiB at once; the engine stops reading for 1.2 s after 64 KiB, so avgate stops reading too
    // (backpressure) and the client waits. Once the engine goes on, avgate reads the rest of that
    // MiB and then waits for the last 64 KiB, which comes 150 ms later: well under body-timeout
    // (0.5 s) of waiting, though the body took 1.4 s. A clock running from the body's start would
    // cut it at that last wait.
    const stall = { afterBytes: 64 * 1024, ms: 1200, over: false };
    d.scanner.stall = stall;
    try {
      const s = await open(d.port);
      const body = randomBytes(MiB + 64 * 1024);
      const [head, rest] = splitAtBody(buildRequest(d.port, body, { allow204: true }).first, body);
      const cut = rest.length - chunked(body.subarray(MiB)).length; // where the chunk of the last 64 KiB starts
      const started = performance.now();
      s.write(Buffer.concat([head, rest.subarray(0, cut)]));
      const answer = icapExchange(d.port, [], { socket: s, timeoutMs: 10_000 });
      while (!stall.over && !s.destroyed) await sleep(10);
      await sleep(150);
      s.write(rest.subarray(cut));
      const r = await answer;
      const ms = performance.now() - started;
      s.destroy();
      assert.equal(r.responses[0]?.head.status, 204, JSON.stringify(r.responses[0]?.head));
      assert.ok(ms > 1200, `the body took ${Math.round(ms)} ms`);
      const scan = d.scanner.scans.at(-1);
      assert.equal(scan?.kind, 'stream');
      assert.equal(scan?.bytes, body.length);
      assert.ok(!d.logs.some((l) => String(l.msg).includes('body too slow')));
    } finally {
      d.scanner.stall = null;
    }
  });

  test('a streamed scan under way when the body stops: 408, the scan is given up', async () => {
    const s = await open(d.port);
    const body = randomBytes(200_000);
    const [head, rest] = splitAtBody(buildRequest(d.port, body, { allow204: true }).first, body);
    // More than spool-memory at once (the scan streams from there), then it stops.
    const before = d.scanner.scans.length;
    const started = performance.now();
    s.write(Buffer.concat([head, rest.subarray(0, 150_000)]));
    const r = await icapExchange(d.port, [], { socket: s, timeoutMs: 10_000, keepOpen: true });
    const ms = performance.now() - started;
    s.destroy();
    assert.equal(r.responses[0]?.head.status, 408);
    assert.ok(ms < 3000, `408 after ${Math.round(ms)} ms (body-timeout 500 ms, read-timeout 5 s)`);
    const scan = d.scanner.scans[before];
    assert.equal(scan?.kind, 'stream');
    assert.equal(scan?.aborted, true, 'the scan was told the caller gave up');
  });

  test('body-min-rate 0: the whole body within body-timeout of waiting', async () => {
    const s = await open(d.port);
    const body = randomBytes(100);
    const [head, rest] = splitAtBody(buildRequest(d.port, body, { allow204: true }).first, body);
    s.write(head);
    let done = false;
    const sending = trickle(s, rest, 10, 100, () => done);
    const r = await icapExchange(d.port, [], { socket: s, timeoutMs: 5000, keepOpen: true });
    done = true;
    await sending;
    s.destroy();
    assert.equal(r.responses[0]?.head.status, 408);
  });
});

describe('ICAP body-timeout / body-min-rate (avgate with clamd)', () => {
  let clamd: TestClamd;
  let icap: TestIcap;
  before(async () => {
    clamd = await startTestClamd();
    // A high rate, so that neither the trickle nor a stop after 100 KB earns much time.
    icap = await startTestIcap({ clamd, icapYaml: ['read-timeout: 5s', 'body-timeout: 300ms', 'body-min-rate: 1MiB'].join('\n') });
  });
  after(async () => {
    await icap?.stop();
    await clamd?.stop();
  });

  test('one byte every 50 ms (a slot held for ever before) → 408 and close', async () => {
    const s = await open(icap.port);
    const body = randomBytes(1000);
    const [head, rest] = splitAtBody(buildRequest(icap.port, body, { allow204: true }).first, body);
    s.write(head);
    let done = false;
    const sending = trickle(s, rest, 1, 50, () => done);
    const r = await icapExchange(icap.port, [], { socket: s, timeoutMs: 10_000, keepOpen: true });
    done = true;
    await sending;
    s.destroy();
    assert.equal(r.responses[0]?.head.status, 408);
    assert.equal(r.closed, true);
    assert.equal(icap.server.counters.byVerdict.free + icap.server.counters.byVerdict.error, 0, 'not counted as a scan');
  });

  test('a fast client with big bodies is not cut: 12 MB (streamed to clamd) answered 204, 6 MB echoed whole', async () => {
    const big = randomBytes(12 * MiB);
    const r = await icapExchange(icap.port, [buildRequest(icap.port, big, { allow204: true }).first], { timeoutMs: 30_000 });
    r.socket.destroy();
    assert.equal(r.responses[0]?.head.status, 204);
    const echo = randomBytes(6 * MiB);
    const e = await icapExchange(icap.port, [buildRequest(icap.port, echo).first], { timeoutMs: 30_000 });
    e.socket.destroy();
    assert.equal(e.responses[0]?.head.status, 200);
    assert.ok(e.responses[0]?.body.equals(echo), 'echo complete and identical');
  });

  test('after an early response head a body that stops is cut off: no 408 after a 200 has begun', async () => {
    const s = await open(icap.port);
    const body = randomBytes(200_000);
    const [head, rest] = splitAtBody(buildRequest(icap.port, body).first, body);
    const started = performance.now();
    s.write(Buffer.concat([head, rest.subarray(0, 100_000)])); // past early-response-after (32 KiB)
    const r = await icapExchange(icap.port, [], { socket: s, timeoutMs: 10_000, keepOpen: true });
    const ms = performance.now() - started;
    s.destroy();
    assert.equal(r.closed, true);
    assert.ok(ms < 3000, `cut after ${Math.round(ms)} ms (body-timeout 300 ms, read-timeout 5 s)`);
    assert.equal(r.partial?.head.status, 200, 'the early head, never completed');
    assert.ok(!r.responses.some((x) => x.head.status === 408));
  });
});
