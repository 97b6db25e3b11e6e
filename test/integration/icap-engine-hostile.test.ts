import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { after, describe, test } from 'node:test';
import { createIcapEngine, type IcapEngine } from '../../src/engines/icap/engine.js';
import type { EngineScanResult } from '../../src/engines/types.js';
import { VerdictCache } from '../../src/cache/verdict-cache.js';
import { silentLogger } from '../../src/core/logging.js';
import { Scanner, type ScannerLimits } from '../../src/scan/scanner.js';
import { startFaultServer, type FaultServer } from '../helpers/fault-server.js';
import { IcapPeer } from '../helpers/icap-peer.js';

const LIMITS: ScannerLimits = { maxCheckedSize: 10 * 1024 * 1024, scanTimeoutMs: 10_000, maxConcurrentScans: 4, maxQueue: 16, contextIdleTimeoutMs: 5000 };

const OPTIONS_OK =
  'ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\nISTag: "h-1"\r\nPreview: 16\r\nAllow: 204\r\nOptions-TTL: 60\r\nEncapsulated: null-body=0\r\n\r\n';

/** Answers OPTIONS with `options`; every RESPMOD goes to `respmod` (after its head and HTTP header). */
function icapPeer(respmod: (w: IcapPeer, req: { lines: string[]; http: string }) => Promise<void>, options = OPTIONS_OK) {
  return (sock: Socket) => {
    const w = new IcapPeer(sock);
    void (async () => {
      for (;;) {
        const req = await w.request();
        if (req.method === 'OPTIONS') sock.write(options);
        else await respmod(w, req);
      }
    })().catch(() => sock.destroy());
  };
}

function echo200(http: string, body: Buffer): Buffer {
  const chunk = body.length > 0 ? `${body.length.toString(16)}\r\n${body.toString('latin1')}\r\n` : '';
  const text = `ICAP/1.0 200 OK\r\nISTag: "h-1"\r\nEncapsulated: res-hdr=0, res-body=${Buffer.byteLength(http)}\r\n\r\n${http}${chunk}0\r\n\r\n`;
  return Buffer.from(text, 'latin1');
}

function engine(port: number, options: Record<string, string> = {}): IcapEngine {
  const e = createIcapEngine() as IcapEngine;
  e.configure([{ name: 'url', value: `icap://127.0.0.1:${port}/av` }, ...Object.entries(options).map(([name, value]) => ({ name, value }))]);
  return e;
}

async function scanOnce(e: IcapEngine, data: Buffer, timeoutMs = 10_000): Promise<EngineScanResult> {
  const signal = AbortSignal.timeout(timeoutMs);
  const ctx = await e.openContext(signal);
  try {
    return await e.scan(ctx, Readable.from([data]), { signal });
  } finally {
    await e.closeContext(ctx);
  }
}

describe('icap engine against hostile or broken servers', () => {
  const servers: FaultServer[] = [];
  const serve = async (fn: (sock: Socket) => void) => {
    const s = await startFaultServer(fn);
    servers.push(s);
    return s;
  };
  after(async () => {
    for (const s of servers) await s.close();
  });

  test('a 200 answering a partial preview with an echo of just the preview is not free', async () => {
    const s = await serve(
      icapPeer(async (w, req) => {
        const preview = await w.chunks();
        assert.equal(preview.ieof, false);
        // no 100 Continue: "here is your object" -- only the 16 bytes it saw
        w.sock.write(echo200(req.http, preview.data));
      }),
    );
    const r = await scanOnce(engine(s.port), randomBytes(100_000));
    assert.deepEqual(r.verdict, { status: 'found', names: ['ICAP.Modified'] });
    assert.equal(r.bytes, 16);
  });

  test('a 200 without any encapsulated object answering a partial preview is not free', async () => {
    const s = await serve(
      icapPeer(async (w) => {
        await w.chunks();
        w.sock.write('ICAP/1.0 200 OK\r\nEncapsulated: null-body=0\r\n\r\n');
      }),
    );
    const r = await scanOnce(engine(s.port), randomBytes(100_000));
    assert.notEqual(r.verdict.status, 'free', JSON.stringify(r.verdict));
  });

  test('204 to a request without Allow: 204 and without preview → protocol error, not free', async () => {
    const s = await serve(
      icapPeer(async (w, req) => {
        assert.ok(!req.lines.some((l) => /^allow:/i.test(l)));
        await w.chunks();
        w.sock.write('ICAP/1.0 204 No Content\r\nISTag: "h-1"\r\nEncapsulated: null-body=0\r\n\r\n');
      }),
    );
    const r = await scanOnce(engine(s.port, { 'allow-204': 'no', preview: 'off' }), randomBytes(5000));
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_PROTOCOL', JSON.stringify(r.verdict));
  });

  test('204 after 100 Continue without Allow: 204 → protocol error; 204 answering the preview itself → free', async () => {
    let afterContinue = true;
    const s = await serve(
      icapPeer(async (w) => {
        const preview = await w.chunks();
        if (afterContinue && !preview.ieof) {
          w.sock.write('ICAP/1.0 100 Continue\r\n\r\n');
          await w.chunks();
        }
        w.sock.write('ICAP/1.0 204 No Content\r\nISTag: "h-1"\r\nEncapsulated: null-body=0\r\n\r\n');
      }),
    );
    const e = engine(s.port, { 'allow-204': 'no' });
    const r = await scanOnce(e, randomBytes(5000));
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_PROTOCOL', JSON.stringify(r.verdict));
    afterContinue = false;
    assert.deepEqual((await scanOnce(e, randomBytes(5000))).verdict, { status: 'free' });
  });

  test('OPTIONS trickled forever (100 Continue storm) ends after socket-timeout instead of hanging', { timeout: 15_000 }, async () => {
    const timers: NodeJS.Timeout[] = [];
    const s = await serve((sock) => {
      sock.once('data', () => {
        const t = setInterval(() => {
          if (sock.destroyed) clearInterval(t);
          else sock.write('ICAP/1.0 100 Continue\r\n\r\n');
        }, 20);
        timers.push(t);
      });
    });
    try {
      const e = engine(s.port, { 'socket-timeout': '500ms' });
      const started = Date.now();
      // no signal: the ICAP front end asks this way for its own OPTIONS answer
      assert.equal(await e.signatureVersion(), null);
      assert.ok(Date.now() - started < 3000, `${Date.now() - started} ms`);
      // nothing left stuck: a scan gets an error of its own, well before its signal
      const r = await scanOnce(e, Buffer.from('abc'), 10_000);
      assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_TIMEOUT', JSON.stringify(r.verdict));
      assert.ok(Date.now() - started < 5000, `${Date.now() - started} ms`);
    } finally {
      for (const t of timers) clearInterval(t);
    }
  });

  test('OPTIONS with an endless body ends after socket-timeout', { timeout: 15_000 }, async () => {
    const s = await serve((sock) => {
      sock.once('data', () => {
        sock.write('ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\nEncapsulated: opt-body=0\r\n\r\n');
        const t = setInterval(() => {
          if (sock.destroyed) clearInterval(t);
          else sock.write('400\r\n' + 'x'.repeat(1024) + '\r\n');
        }, 5);
      });
    });
    const e = engine(s.port, { 'socket-timeout': '500ms' });
    const started = Date.now();
    assert.equal(await e.signatureVersion(), null);
    assert.ok(Date.now() - started < 3000, `${Date.now() - started} ms`);
  });
});

describe('icap engine, the verdict cache and a changing ISTag', () => {
  test('a RESPMOD answer with a new ISTag: that verdict is not cached under the version read before the scan', async () => {
    // OPTIONS says "v-1", every answer says "v-2": the service changed while the object was scanned.
    const s = await startFaultServer(
      icapPeer(async (w) => {
        await w.chunks();
        w.sock.write('ICAP/1.0 204 No Content\r\nISTag: "v-2"\r\nEncapsulated: null-body=0\r\n\r\n');
      }, OPTIONS_OK.replace('"h-1"', '"v-1"')),
    );
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'icap', engine: engine(s.port) }], LIMITS, cache, silentLogger());
    try {
      const data = randomBytes(5000);
      const first = await scanner.scan({ source: { kind: 'buffer', data } });
      assert.equal(first.status, 'free');
      const second = await scanner.scan({ source: { kind: 'buffer', data } });
      assert.equal(second.status, 'free');
      assert.equal(second.cached, false, 'nothing was cached under "v-1"');
    } finally {
      await scanner.close();
      cache.close();
      await s.close();
    }
  });

  test('a stable ISTag: the second scan of the same object is a cache hit', async () => {
    const s = await startFaultServer(
      icapPeer(async (w) => {
        await w.chunks();
        w.sock.write('ICAP/1.0 204 No Content\r\nISTag: "h-1"\r\nEncapsulated: null-body=0\r\n\r\n');
      }),
    );
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'icap', engine: engine(s.port) }], LIMITS, cache, silentLogger());
    try {
      const data = randomBytes(5000);
      assert.equal((await scanner.scan({ source: { kind: 'buffer', data } })).cached, false);
      assert.equal((await scanner.scan({ source: { kind: 'buffer', data } })).cached, true);
    } finally {
      await scanner.close();
      cache.close();
      await s.close();
    }
  });
});
