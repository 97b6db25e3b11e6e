import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { AvgateError } from '../../src/core/errors.js';
import type { VerdictResult } from '../../src/core/verdict.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { createIcapEngine, IcapEngine, type IcapContext } from '../../src/engines/icap/engine.js';
import type { EngineScanResult } from '../../src/engines/types.js';
import { startTestCicap, type TestCicap } from '../helpers/cicap.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { IcapPeer } from '../helpers/icap-peer.js';

const EICAR_NAME = /^Avgate\.Test\.EICAR\.(HDB|NDB)(\.[A-Z]+)?$/;

function engineFor(url: string, options: Record<string, string> = {}): IcapEngine {
  const e = createIcapEngine() as IcapEngine;
  e.configure([{ name: 'url', value: url }, ...Object.entries(options).map(([name, value]) => ({ name, value }))]);
  return e;
}

function source(data: Buffer | Readable): Readable {
  return Buffer.isBuffer(data) ? Readable.from([data]) : data;
}

/** Pieces of random data produced on demand: the object never exists as a whole in memory. */
function randomStream(total: number, piece = 64 * 1024): Readable {
  let left = total;
  return new Readable({
    read() {
      if (left <= 0) {
        this.push(null);
        return;
      }
      const n = Math.min(piece, left);
      left -= n;
      this.push(randomBytes(n));
    },
  });
}

function scan(e: IcapEngine, ctx: IcapContext, data: Buffer | Readable, timeoutMs = 10_000, size?: number): Promise<EngineScanResult> {
  return e.scan(ctx, source(data), { signal: AbortSignal.timeout(timeoutMs), ...(size !== undefined ? { size } : {}) });
}

/** As the scanner does it: a context that cannot be opened becomes an error verdict. */
async function scanOnce(e: IcapEngine, data: Buffer | Readable, signal = AbortSignal.timeout(10_000)): Promise<EngineScanResult> {
  let ctx: IcapContext;
  try {
    ctx = await e.openContext(signal);
  } catch (err) {
    assert.ok(err instanceof AvgateError);
    return { verdict: { status: 'error', code: err.code, cause: err.message }, bytes: 0 };
  }
  try {
    return await e.scan(ctx, source(data), { signal });
  } finally {
    await e.closeContext(ctx);
  }
}

function names(v: VerdictResult): string[] {
  return v.status === 'found' ? v.names : [];
}

describe('icap engine against a real c-icap (virus_scan + clamd_mod) and a real clamd', () => {
  let clamd: TestClamd;
  let cicap: TestCicap;
  before(async () => {
    clamd = await startTestClamd();
    cicap = await startTestCicap({ clamdSocket: clamd.socketPath });
  });
  after(async () => {
    await cicap?.stop();
    await clamd?.stop();
  });

  test('EICAR found, clean bytes free, clam.zip found, all on one reused connection', async () => {
    const e = engineFor(cicap.url);
    await e.init();
    const ctx = await e.openContext();
    const port = ctx.conn.localPort;

    const eicar = await scan(e, ctx, eicarBytes());
    assert.equal(eicar.verdict.status, 'found', JSON.stringify(eicar.verdict));
    assert.match(names(eicar.verdict)[0] ?? '', EICAR_NAME);
    assert.equal(eicar.bytes, eicarBytes().length);
    assert.equal(e.contextUsable(ctx), true);

    const clean = await scan(e, ctx, randomBytes(100_000));
    assert.deepEqual(clean.verdict, { status: 'free' });
    assert.equal(clean.bytes, 100_000);

    const zip = await scan(e, ctx, createReadStream('/usr/share/clamav-testfiles/clam.zip'));
    assert.equal(zip.verdict.status, 'found', JSON.stringify(zip.verdict));
    assert.match(names(zip.verdict).join(), /^Avgate\.Test\.ClamExe/);

    // past the 1024-byte preview: c-icap answers 100 Continue and gets the rest
    const deep = await scan(e, ctx, Buffer.concat([randomBytes(300_000), eicarBytes(), randomBytes(1000)]));
    assert.equal(deep.verdict.status, 'found', JSON.stringify(deep.verdict));
    assert.match(names(deep.verdict)[0] ?? '', EICAR_NAME);

    // 4 RESPMOD, all on the first socket (OPTIONS goes over a connection of its own)
    assert.equal(e.contextUsable(ctx), true);
    assert.equal(ctx.conn.completed, 4);
    assert.equal(ctx.conn.localPort, port);
    await e.closeContext(ctx);
  });

  test('a 20 MB object streamed with a known size (Content-Length) is free', async () => {
    const e = engineFor(cicap.url);
    await e.init();
    const ctx = await e.openContext();
    const r = await scan(e, ctx, randomStream(20 * 1024 * 1024), 60_000, 20 * 1024 * 1024);
    assert.deepEqual(r.verdict, { status: 'free' });
    assert.equal(r.bytes, 20 * 1024 * 1024);
    assert.equal(e.contextUsable(ctx), true);
    await e.closeContext(ctx);
  });

  test('without preview and without 204 (c-icap echoes the body): clean free, EICAR found', async () => {
    const e = engineFor(cicap.url, { preview: 'off', 'allow-204': 'no' });
    await e.init();
    const ctx = await e.openContext();
    const clean = await scan(e, ctx, randomBytes(200_000));
    assert.deepEqual(clean.verdict, { status: 'free' });
    const found = await scan(e, ctx, Buffer.concat([Buffer.from('x'.repeat(5000)), eicarBytes()]));
    assert.equal(found.verdict.status, 'found', JSON.stringify(found.verdict));
    assert.match(names(found.verdict)[0] ?? '', EICAR_NAME);
    await e.closeContext(ctx);
  });

  test("signatureVersion() is c-icap's ISTag", async () => {
    const e = engineFor(cicap.url);
    await e.init();
    const expected = await cicap.istag();
    assert.ok(expected && expected.length > 0);
    assert.equal(await e.signatureVersion(), expected);
    assert.equal(e.currentOptions()?.istag, expected);
    assert.equal(e.currentOptions()?.preview, 1024);
  });
});

// ---------------------------------------------------------------------------------------------
// Fault servers: small ICAP peers on 127.0.0.1 that misbehave on purpose.

interface Respmod {
  lines: string[];
  httpHeader: string;
  preview: number | null;
}

const OPTIONS_REPLY =
  'ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\nService: fault\r\nISTag: "fault-1"\r\nPreview: 16\r\nAllow: 204\r\n' +
  'Options-TTL: 60\r\nEncapsulated: null-body=0\r\n\r\n';

interface FaultServer {
  url: string;
  connections: number;
  close(): Promise<void>;
}

/** Answers OPTIONS itself; each RESPMOD (after its head and HTTP header) goes to the handler. */
async function startIcapFault(
  onRespmod: (peer: IcapPeer, req: Respmod) => Promise<void>,
  optionsReply = OPTIONS_REPLY,
): Promise<FaultServer> {
  const sockets = new Set<Socket>();
  const state = { connections: 0 };
  const server: Server = createServer((sock) => {
    state.connections++;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    const peer = new IcapPeer(sock);
    void (async () => {
      for (;;) {
        const lines = await peer.head();
        const method = (lines[0] ?? '').split(' ')[0];
        if (method === 'OPTIONS') {
          sock.write(optionsReply);
          continue;
        }
        const enc = lines.find((l) => /^encapsulated:/i.test(l)) ?? '';
        const httpLength = Number(/res-body=(\d+)/.exec(enc)?.[1] ?? '0');
        const httpHeader = (await peer.exact(httpLength)).toString('latin1');
        const pv = lines.find((l) => /^preview:/i.test(l));
        await onRespmod(peer, { lines, httpHeader, preview: pv ? Number(pv.split(':')[1]) : null });
      }
    })().catch(() => sock.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    url: `icap://127.0.0.1:${port}/av`,
    get connections() {
      return state.connections;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Reads the whole body as a well-behaved server would: preview, 100 Continue if needed, rest. */
async function readBody(peer: IcapPeer, req: Respmod): Promise<Buffer> {
  const first = await peer.chunks();
  if (req.preview === null || first.ieof) return first.data;
  peer.sock.write('ICAP/1.0 100 Continue\r\n\r\n');
  const rest = await peer.chunks();
  return Buffer.concat([first.data, rest.data]);
}

function reply200(httpHeader: string, body: Buffer, extra = ''): Buffer {
  return Buffer.concat([
    Buffer.from(`ICAP/1.0 200 OK\r\nISTag: "fault-1"\r\n${extra}Encapsulated: res-hdr=0, res-body=${Buffer.byteLength(httpHeader)}\r\n\r\n${httpHeader}`),
    body.length > 0 ? Buffer.from(`${body.length.toString(16)}\r\n`) : Buffer.alloc(0),
    body,
    body.length > 0 ? Buffer.from('\r\n') : Buffer.alloc(0),
    Buffer.from('0\r\n\r\n'),
  ]);
}

async function closedPortUrl(): Promise<string> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const addr = srv.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  await new Promise<void>((r) => srv.close(() => r()));
  return `icap://127.0.0.1:${port}/av`;
}

describe('icap engine against fault servers', () => {
  const servers: FaultServer[] = [];
  const fault = async (...args: Parameters<typeof startIcapFault>) => {
    const s = await startIcapFault(...args);
    servers.push(s);
    return s;
  };
  after(async () => {
    for (const s of servers) await s.close();
  });

  test('configuration: url is required and must be an icap URL', async () => {
    const e = createIcapEngine();
    e.configure([{ name: 'connect-timeout', value: '1s' }]);
    await assert.rejects(e.init(), (err: unknown) => err instanceof AvgateError && err.code === 'AVG_ERR_CONFIG');
    for (const [name, value] of [
      ['url', 'http://127.0.0.1/av'],
      ['socket-timeout', 'soon'],
      ['preview', '2MiB'],
      ['allow-204', 'maybe'],
    ] as const) {
      const bad = engineFor('icap://127.0.0.1:1344/av', { [name]: value });
      await assert.rejects(bad.init(), (err: unknown) => err instanceof AvgateError && err.code === 'AVG_ERR_CONFIG', `${name}=${value}`);
    }
    const ok = engineFor('icap://127.0.0.1:1344/av', { 'socket-timeout': '250ms', preview: '0', 'no-such-option': 'x' });
    await ok.init();
    assert.equal(ok.info().name, 'icap');
  });

  test('connection refused → error AVG_ERR_ENGINE_CONNECT', async () => {
    const e = engineFor(await closedPortUrl(), { 'connect-timeout': '2s' });
    await e.init();
    const r = await scanOnce(e, Buffer.from('hello'));
    assert.equal(r.verdict.status, 'error');
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_CONNECT');
    assert.match(r.verdict.status === 'error' ? r.verdict.cause : '', /ECONNREFUSED/);
    assert.equal(await e.signatureVersion(), null);
  });

  test('server resets mid-stream → error AVG_ERR_ENGINE_RESET', async () => {
    const s = await fault(async (peer) => {
      await peer.chunks(); // the preview
      peer.sock.write('ICAP/1.0 100 Continue\r\n\r\n');
      await peer.exact(1000);
      peer.sock.resetAndDestroy();
    });
    const e = engineFor(s.url);
    const r = await scanOnce(e, randomStream(8 * 1024 * 1024));
    assert.equal(r.verdict.status, 'error', JSON.stringify(r.verdict));
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_RESET');
    assert.ok(r.bytes > 16 && r.bytes < 8 * 1024 * 1024, String(r.bytes));
  });

  test('server stalls past socket-timeout → error AVG_ERR_ENGINE_TIMEOUT, context unusable', async () => {
    const s = await fault(async (peer) => {
      await peer.chunks();
      await new Promise(() => undefined); // never answers
    });
    const e = engineFor(s.url, { 'socket-timeout': '300ms' });
    const ctx = await e.openContext();
    const started = Date.now();
    const r = await scan(e, ctx, Buffer.from('small object'));
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_TIMEOUT', JSON.stringify(r.verdict));
    assert.ok(Date.now() - started >= 250 && Date.now() - started < 5000);
    assert.equal(e.contextUsable(ctx), false);
    await e.closeContext(ctx);
  });

  test('a server that stops reading the body → AVG_ERR_ENGINE_TIMEOUT after about socket-timeout', async () => {
    const s = await fault(async (peer) => {
      peer.sock.pause();
      await new Promise(() => undefined);
    });
    const e = engineFor(s.url, { 'socket-timeout': '300ms', preview: 'off' });
    const started = Date.now();
    const r = await scanOnce(e, randomStream(64 * 1024 * 1024));
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_TIMEOUT', JSON.stringify(r.verdict));
    assert.ok(Date.now() - started < 1500, `${Date.now() - started} ms`);
  });

  test('the scan signal aborts → error AVG_ERR_ENGINE_TIMEOUT "scan timeout"', async () => {
    const s = await fault(async (peer) => {
      await peer.chunks();
      await new Promise(() => undefined);
    });
    const e = engineFor(s.url);
    const r = await scanOnce(e, Buffer.from('small object'), AbortSignal.timeout(300));
    assert.deepEqual(r.verdict, { status: 'error', code: 'AVG_ERR_ENGINE_TIMEOUT', cause: 'scan timeout' });
  });

  test('garbage reply → unknown with the raw first line', async () => {
    const s = await fault(async (peer) => {
      await peer.chunks();
      peer.sock.write('HELLO WORLD\r\n\r\n');
    });
    const e = engineFor(s.url);
    const ctx = await e.openContext();
    const r = await scan(e, ctx, Buffer.from('abc'));
    assert.deepEqual(r.verdict, { status: 'unknown', raw: 'HELLO WORLD' });
    assert.equal(e.contextUsable(ctx), false);
    await e.closeContext(ctx);
  });

  test('a response head over 64 KiB → protocol error, not unbounded buffering', async () => {
    const s = await fault(async (peer) => {
      await peer.chunks();
      peer.sock.write(`ICAP/1.0 200 OK\r\n${'X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n'.repeat(3000)}\r\n`);
    });
    const r = await scanOnce(engineFor(s.url), Buffer.from('abc'));
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_PROTOCOL', JSON.stringify(r.verdict));
  });

  test('200 with X-Infection-Found → found with that Threat name; connection kept', async () => {
    const s = await fault(async (peer, req) => {
      await readBody(peer, req);
      const page = Buffer.from('<html>blocked</html>');
      peer.sock.write(
        reply200(
          `HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: ${page.length}\r\n\r\n`,
          page,
          'X-Infection-Found: Type=0; Resolution=2; Threat=Fault.Test.Threat;\r\n',
        ),
      );
    });
    const e = engineFor(s.url);
    const ctx = await e.openContext();
    for (const data of [Buffer.from('tiny'), randomBytes(50_000)]) {
      const r = await scan(e, ctx, data);
      assert.deepEqual(r.verdict, { status: 'found', names: ['Fault.Test.Threat'] });
      assert.equal(e.contextUsable(ctx), true);
    }
    assert.equal(s.connections, 2); // OPTIONS + the scans' one connection
    await e.closeContext(ctx);
  });

  test('200 echoing the body unchanged → free, connection kept; a changed body → found ICAP.Modified', async () => {
    let tamper = false;
    const ieof: boolean[] = [];
    const s = await fault(async (peer, req) => {
      const first = await peer.chunks();
      ieof.push(first.ieof);
      let body = first.data;
      if (!first.ieof) {
        peer.sock.write('ICAP/1.0 100 Continue\r\n\r\n');
        body = Buffer.concat([body, (await peer.chunks()).data]);
      }
      if (tamper && body.length > 0) body[0] = (body[0] as number) ^ 0xff;
      peer.sock.write(reply200(req.httpHeader, body));
    });
    const e = engineFor(s.url);
    const ctx = await e.openContext();
    for (const data of [Buffer.alloc(0), Buffer.from('0123456789abcdef'), randomBytes(100_000)]) {
      const r = await scan(e, ctx, data);
      assert.deepEqual(r.verdict, { status: 'free' }, `${data.length} bytes`);
      assert.equal(r.bytes, data.length);
      assert.equal(e.contextUsable(ctx), true);
    }
    // an object exactly as long as the 16-byte preview still ends with ieof
    assert.deepEqual(ieof, [true, true, false]);
    tamper = true;
    const r = await scan(e, ctx, randomBytes(1000));
    assert.deepEqual(r.verdict, { status: 'found', names: ['ICAP.Modified'] });
    assert.equal(s.connections, 2);
    await e.closeContext(ctx);
  });

  test('204 after the preview (no 100 Continue) → free, the rest is never sent, connection kept', async () => {
    const previews: number[] = [];
    const s = await fault(async (peer) => {
      const p = await peer.chunks();
      previews.push(p.data.length);
      assert.equal(p.ieof, false);
      peer.sock.write('ICAP/1.0 204 No Content\r\nISTag: "fault-1"\r\nEncapsulated: null-body=0\r\n\r\n');
    });
    const e = engineFor(s.url);
    const ctx = await e.openContext();
    for (let i = 0; i < 3; i++) {
      const r = await scan(e, ctx, randomStream(1024 * 1024));
      assert.deepEqual(r.verdict, { status: 'free' });
      assert.equal(r.bytes, 16);
    }
    assert.deepEqual(previews, [16, 16, 16]);
    assert.equal(e.contextUsable(ctx), true);
    assert.equal(s.connections, 2);
    assert.equal(await e.signatureVersion(), 'fault-1');
    await e.closeContext(ctx);
  });

  test('an early infected answer while the body is still being sent stops the upload', async () => {
    const s = await fault(async (peer) => {
      // answers right after the head and stops reading the body: the client must stop sending
      peer.sock.pause();
      // ... and its block page is never finished: the verdict must come from the head alone
      const http = 'HTTP/1.1 403 Forbidden\r\n\r\n';
      peer.sock.write(`ICAP/1.0 200 OK\r\nX-Virus-ID: Early.Bird\r\nEncapsulated: res-hdr=0, res-body=${http.length}\r\n\r\n${http}5\r\nBlock`);
      await new Promise(() => undefined);
    });
    const e = engineFor(s.url, { preview: 'off', 'socket-timeout': '5s' });
    const ctx = await e.openContext();
    const started = Date.now();
    const r = await scan(e, ctx, randomStream(64 * 1024 * 1024));
    assert.deepEqual(r.verdict, { status: 'found', names: ['Early.Bird'] });
    // well before the socket-timeout: the answer, not a stalled write, ended the scan
    assert.ok(Date.now() - started < 2000, `${Date.now() - started} ms`);
    assert.ok(r.bytes < 64 * 1024 * 1024, String(r.bytes));
    assert.equal(e.contextUsable(ctx), false); // the request was cut short
    await e.closeContext(ctx);
  });

  test('a source that fails → error AVG_ERR_SOURCE, context unusable', async () => {
    const s = await fault(async (peer, req) => {
      await readBody(peer, req);
    });
    const e = engineFor(s.url);
    const ctx = await e.openContext();
    let n = 0;
    const failing = new Readable({
      read() {
        if (n++ < 3) this.push(randomBytes(1000));
        else this.destroy(new Error('disk on fire'));
      },
    });
    const r = await scan(e, ctx, failing);
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_SOURCE', JSON.stringify(r.verdict));
    assert.match(r.verdict.status === 'error' ? r.verdict.cause : '', /disk on fire/);
    assert.equal(e.contextUsable(ctx), false);
    await e.closeContext(ctx);
  });

  test('a server that closes after every response (Connection: close) still scans', async () => {
    const s = await fault(
      async (peer) => {
        await peer.chunks();
        peer.sock.end('ICAP/1.0 204 No Content\r\nConnection: close\r\nEncapsulated: null-body=0\r\n\r\n');
      },
      OPTIONS_REPLY.replace('Allow: 204\r\n', 'Allow: 204\r\nConnection: close\r\n'),
    );
    const e = engineFor(s.url);
    for (let i = 0; i < 2; i++) {
      const r = await scanOnce(e, Buffer.from('abc'));
      assert.deepEqual(r.verdict, { status: 'free' });
    }
  });

  test('ICAP 500 → error AVG_ERR_ENGINE_FAILED; Connection: close makes the context unusable', async () => {
    const s = await fault(async (peer) => {
      await peer.chunks();
      peer.sock.write('ICAP/1.0 500 Server Error\r\nConnection: close\r\nEncapsulated: null-body=0\r\n\r\n');
    });
    const e = engineFor(s.url);
    const ctx = await e.openContext();
    const r = await scan(e, ctx, Buffer.from('abc'));
    assert.deepEqual(r.verdict, { status: 'error', code: 'AVG_ERR_ENGINE_FAILED', cause: 'ICAP server: ICAP/1.0 500 Server Error' });
    assert.equal(e.contextUsable(ctx), false);
    await e.closeContext(ctx);
  });

  test('Transfer-Ignore → skipped without sending; Transfer-Complete → no preview', async () => {
    const seen: Array<number | null> = [];
    const s = await fault(
      async (peer, req) => {
        seen.push(req.preview);
        await readBody(peer, req);
        peer.sock.write('ICAP/1.0 204 No Content\r\nEncapsulated: null-body=0\r\n\r\n');
      },
      OPTIONS_REPLY.replace('Allow: 204\r\n', 'Allow: 204\r\nTransfer-Ignore: jpg\r\nTransfer-Complete: exe\r\n'),
    );
    const e = engineFor(s.url);
    const ctx = await e.openContext();
    const meta = (name: string) => ({ name, signal: AbortSignal.timeout(5000) });
    const jpg = await e.scan(ctx, Readable.from([Buffer.from('jpeg data')]), meta('photo.jpg'));
    assert.equal(jpg.verdict.status, 'skipped');
    assert.equal(jpg.bytes, 0);
    const exe = await e.scan(ctx, Readable.from([randomBytes(5000)]), meta('setup.exe'));
    assert.deepEqual(exe.verdict, { status: 'free' });
    const txt = await e.scan(ctx, Readable.from([randomBytes(5000)]), meta('notes.txt'));
    assert.deepEqual(txt.verdict, { status: 'free' });
    assert.deepEqual(seen, [null, 16]);
    await e.closeContext(ctx);
  });
});
