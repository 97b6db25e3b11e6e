import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { parseConfigText } from '../../src/config/loader.js';
import type { Logger } from '../../src/core/logging.js';
import type { Verdict } from '../../src/core/verdict.js';
import { EngineHealth } from '../../src/engines/health.js';
import type { Engine } from '../../src/engines/types.js';
import type { NextHop } from '../../src/protocols/smtp/types.js';
import { openQuarantine } from '../../src/quarantine/store.js';
import type { Quarantine } from '../../src/quarantine/types.js';
import type { ScannerEngine } from '../../src/scan/scanner.js';
import type { ScanService } from '../../src/scan/types.js';
import { ConsoleServer } from '../../src/web/server.js';
import { ConsoleClient, rawRequest } from '../helpers/console.js';
import { waitFor, within } from '../helpers/wait.js';

/**
 * The console under hostile or clumsy clients: parallel password guessing, bodies that never
 * finish, more connections than allowed, a client that hangs up, and a release the store refuses.
 * No engine is needed: the scanner is a stub that takes its time.
 */
const PASSWORD = 'limits-password-1';
const SCAN_MS = 700;

const slowScanner: ScanService = {
  wantsHash: false,
  engineLikely: true,
  concurrency: 4,
  prefersFiles: () => false,
  async scan(): Promise<Verdict> {
    await new Promise((r) => setTimeout(r, SCAN_MS));
    return { status: 'free', engine: 'stub', signatureVersion: null, durationMs: SCAN_MS, bytes: 0, cached: false };
  },
  close: () => Promise.resolve(),
};

const refusingHop: NextHop = {
  target: 'smtp:127.0.0.1:9',
  deliver: () => Promise.reject(new Error('the test never delivers')),
  close: () => Promise.resolve(),
};

interface LogLine {
  level: number;
  msg: string;
  err?: string;
  client?: string;
  path?: string;
  unsent?: number;
}

interface Started {
  web: ConsoleServer;
  port: number;
  quarantine: Quarantine;
  logs: LogLine[];
  stop(): Promise<void>;
}

async function startConsole(consoleYaml: string[], engines: ScannerEngine[] = []): Promise<Started> {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-web-limits-'));
  const config = parseConfigText([`state-dir: ${join(dir, 'state')}`, 'console:', '  listen: 127.0.0.1:0', ...consoleYaml, ''].join('\n'), 'web-limits.yaml');
  const logs: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) }) as unknown as Logger;
  const quarantine = await openQuarantine(config);
  const web = new ConsoleServer({ config, configSource: 'web-limits.yaml', scanner: slowScanner, engines, health: new EngineHealth([]), quarantine, stats: null, nextHop: refusingHop, log });
  const { port } = await web.listen();
  await web.passwords.setPassword('admin', PASSWORD);
  return {
    web,
    port,
    quarantine,
    logs,
    stop: async () => {
      await web.close();
      await quarantine.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A raw connection: what it received, and a promise that settles when the server closed it. */
function open(port: number): Promise<{ socket: Socket; received: () => string; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    const parts: Buffer[] = [];
    socket.on('data', (d: Buffer) => parts.push(d));
    socket.on('error', () => undefined); // a reset is one way of being closed
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.once('connect', () => resolve({ socket, received: () => Buffer.concat(parts).toString('latin1'), closed }));
    socket.once('error', reject);
  });
}

const formHead = (port: number, length: number) =>
  `POST /login HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nOrigin: http://127.0.0.1:${port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${length}\r\n\r\n`;

describe('console login rate limit under parallel logins', () => {
  let s: Started;
  before(async () => {
    s = await startConsole(['  login-max-failures: 3', '  login-window: 5m']);
  });
  after(async () => s?.stop());

  test('20 parallel wrong logins: at most login-max-failures are checked (401), the rest 429; then the right password is 429 too', async () => {
    const c = new ConsoleClient(s.port);
    await c.get('/login');
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => c.post('/login', { user: 'admin', password: `wrong-${i}` })));
    const statuses = replies.map((r) => r.status);
    const checked = statuses.filter((x) => x === 401).length;
    const refused = statuses.filter((x) => x === 429).length;
    assert.ok(checked >= 1 && checked <= 3, `401s: ${statuses.join(' ')}`);
    assert.equal(checked + refused, 20, `only 401 and 429: ${statuses.join(' ')}`);
    assert.ok(s.web.counters.loginFailures <= 3);
    for (const r of replies.filter((x) => x.status === 429)) assert.ok(Number(r.headers['retry-after']) > 0);

    await c.get('/login');
    const right = await c.post('/login', { user: 'admin', password: PASSWORD });
    assert.equal(right.status, 429, 'the window is not over: even the right password waits');
    assert.ok(Number(right.headers['retry-after']) > 0);
    assert.equal(s.web.counters.logins, 0);
  });
});

describe('console body timeout and client aborts', () => {
  let s: Started;
  let token: string;
  before(async () => {
    s = await startConsole(['  timeouts:', '    body: 300ms']);
    token = await s.web.tokens.add('ci');
  });
  after(async () => s?.stop());

  test('bodies that stop arriving: 408 and the connection closed, for 20 at once', { timeout: 20_000 }, async () => {
    const conns = await Promise.all(Array.from({ length: 20 }, () => open(s.port)));
    for (const conn of conns) conn.socket.write(`${formHead(s.port, 10_000)}user=admin&pass`);
    await within('stalled bodies closed', 10_000, Promise.all(conns.map((x) => x.closed)));
    for (const conn of conns) assert.match(conn.received(), /^HTTP\/1\.1 408 /);
    assert.equal(s.web.counters.bodyTimeouts, 20);
    assert.deepEqual(s.logs.filter((l) => l.level >= 50).map((l) => l.msg), [], 'nothing logged at error level');
  });

  test('an upload that stalls half way gets 408; a slow scan after a complete body does not count', { timeout: 20_000 }, async () => {
    const conn = await open(s.port);
    conn.socket.write(`POST /api/v1/scan HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
    await within('stalled upload closed', 10_000, conn.closed);
    assert.match(conn.received(), /^HTTP\/1\.1 408 /);
    // The stub scanner takes longer than the body timeout: the answer still comes.
    const r = await rawRequest(s.port, 'POST', '/api/v1/scan', { headers: { Authorization: `Bearer ${token}` }, body: 'hello' });
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).status, 'free');
  });

  test('a body that keeps coming, slowly, is not cut', { timeout: 20_000 }, async () => {
    const c = new ConsoleClient(s.port);
    await c.get('/login');
    const form = new URLSearchParams({ user: 'admin', password: PASSWORD, _csrf: c.csrf }).toString();
    const r = await rawRequest(s.port, 'POST', '/login', {
      headers: { Host: `127.0.0.1:${s.port}`, Origin: c.origin, 'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': String(form.length), Cookie: [...c.cookies].map(([k, v]) => `${k}=${v}`).join('; ') },
      body: async function* () {
        for (let i = 0; i < form.length; i += 4) {
          yield Buffer.from(form.slice(i, i + 4));
          await new Promise((res) => setTimeout(res, 40));
        }
      },
    });
    assert.equal(r.status, 303, r.body);
  });

  test('a client hanging up mid-request is logged at debug, not as a failed request', { timeout: 20_000 }, async () => {
    const before = s.logs.length;
    const conn = await open(s.port);
    conn.socket.write(`${formHead(s.port, 10_000)}user=admin`);
    await new Promise((r) => setTimeout(r, 50));
    conn.socket.destroy();
    await waitFor('the abort in the log', async () => (s.logs.slice(before).some((l) => l.msg === 'console client went away') ? true : null), 5000);
    const line = s.logs.slice(before).find((l) => l.msg === 'console client went away');
    assert.equal(line?.level, 20, 'debug');
    assert.ok(!s.logs.slice(before).some((l) => l.level >= 50), 'nothing at error level');
  });
});

describe('console connection cap', () => {
  let s: Started;
  before(async () => {
    s = await startConsole(['  max-connections: 3']);
  });
  after(async () => s?.stop());

  test('max-connections: one connection more is closed at once; a freed place is usable again', { timeout: 20_000 }, async () => {
    const kept = [];
    for (let i = 0; i < 3; i++) {
      const conn = await open(s.port);
      // A whole request and its answer: the server has surely counted this connection.
      conn.socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      await waitFor('healthz answer', async () => (/\r\n\r\n\{/.test(conn.received()) ? true : null), 5000);
      kept.push(conn);
    }
    const dropped = s.web.counters.droppedConnections;
    const extra = await open(s.port);
    extra.socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await within('the extra connection closed', 5000, extra.closed);
    assert.equal(extra.received(), '', 'no answer on the connection over the cap');
    assert.equal(s.web.counters.droppedConnections, dropped + 1);
    assert.ok(s.logs.some((l) => l.level === 40 && /max-connections/.test(l.msg)), 'logged at warn');

    kept[0]?.socket.destroy();
    await waitFor('a place free again', async () => {
      const r = await rawRequest(s.port, 'GET', '/healthz').catch(() => null);
      return r?.status === 200 ? true : null;
    }, 5000);
    for (const conn of kept) conn.socket.destroy();
  });
});

describe('console release of an item that is not mail', () => {
  let s: Started;
  before(async () => {
    s = await startConsole([]);
  });
  after(async () => s?.stop());

  test('POST /quarantine/ID/release of an FTP download: 400 with the reason on the page, escaped', async () => {
    const { id } = await s.quarantine.put(Readable.from([Buffer.from('not a mail at all')]), {
      source: 'ftp',
      sender: '',
      recipients: [],
      group: 'default',
      statuses: ['found'],
      virusNames: ['Avgate.Test.EICAR'],
      fileName: 'x.exe',
      url: 'ftp://example.org/x.exe',
    });
    const c = new ConsoleClient(s.port);
    assert.equal((await c.login('admin', PASSWORD)).status, 303);
    await c.get(`/quarantine/${id}`);
    const r = await c.post(`/quarantine/${id}/release`, {});
    assert.equal(r.status, 400, r.body);
    assert.match(r.body, new RegExp(`id="notice">item ${id} is not a mail message \\(source ftp\\): restore or export it instead<`));
    assert.ok(!s.logs.some((l) => l.level >= 50), 'no internal error logged');

    const xss = '<script>alert(1)</script>@example.org';
    const bad = await c.post(`/quarantine/${id}/release`, { to: xss });
    assert.equal(bad.status, 400);
    assert.match(bad.body, /id="notice">refusing address &quot;&lt;script&gt;alert\(1\)&lt;\/script&gt;@example\.org&quot;/);
    assert.ok(!bad.body.includes('<script>'));
    assert.ok(await s.quarantine.get(id), 'the item is still there');
  });
});

/** An engine that only lists signatures: 200 long names make a signatures page of about 10 MB. */
const NAME = 'X'.repeat(48 * 1024);
const listingEngine = {
  info: () => ({ name: 'lister', description: 'lists long names' }),
  async *listSignatures() {
    for (let i = 0; i < 200; i++) yield `${i}.${NAME}`;
  },
} as unknown as Engine;

/** A request sent on a raw socket that is then not read at all (beyond node's own small buffer). */
async function requestAndStopReading(port: number, path: string, cookies: Map<string, string>): Promise<{ socket: Socket; closed: Promise<void> }> {
  const socket = connect({ host: '127.0.0.1', port });
  socket.pause();
  socket.on('error', () => undefined);
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  await new Promise<void>((r, j) => {
    socket.once('connect', () => r());
    socket.once('error', j);
  });
  socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${[...cookies].map(([k, v]) => `${k}=${v}`).join('; ')}\r\n\r\n`);
  return { socket, closed };
}

/**
 * The whole response read slowly: a pause after every chunk, so it takes many send timeouts in all.
 * Body bytes counted on the wire (chunked framing included for the export).
 */
async function readSlowly(port: number, path: string, cookies: Map<string, string>, pauseMs: number): Promise<{ head: string; bodyBytes: number; ms: number }> {
  const started = Date.now();
  const { socket, closed } = await requestAndStopReading(port, path, cookies);
  let total = 0;
  let first = Buffer.alloc(0);
  let tail = Buffer.alloc(0);
  socket.on('data', (d: Buffer) => {
    total += d.length;
    if (first.length < 4096) first = Buffer.concat([first, d]).subarray(0, 4096);
    tail = Buffer.concat([tail, d]).subarray(-16);
    socket.pause();
    setTimeout(() => socket.resume(), pauseMs);
  });
  socket.resume();
  const head = await waitFor('the response head', async () => {
    const text = first.toString('latin1');
    const end = text.indexOf('\r\n\r\n');
    return end >= 0 ? text.slice(0, end + 4) : null;
  }, 10_000);
  const length = /\r\ncontent-length: (\d+)/i.exec(head)?.[1];
  const complete = () => (length !== undefined ? total >= head.length + Number(length) : tail.toString('latin1').endsWith('\r\n0\r\n\r\n'));
  await waitFor('the whole body', async () => (complete() || socket.destroyed ? true : null), 60_000);
  assert.ok(complete(), `the connection ended after ${total} bytes`);
  const ms = Date.now() - started;
  socket.destroy();
  await closed;
  return { head, bodyBytes: total - head.length, ms };
}

describe('console send timeout: a client that stops reading the response', () => {
  // Progress is seen when the kernel takes more of the response, which on loopback (a send buffer
  // of 4 MiB) is after about 1.5 MB read: the slow reader below reads 3 MB/s at most, with a pause
  // after every read, and the object is large enough for that to span several send timeouts.
  const SEND_MS = 2000;
  const OBJECT = 24 * 1024 * 1024;
  let s: Started;
  let id: string;
  let c: ConsoleClient;
  before(async () => {
    s = await startConsole(['  timeouts:', `    send: ${SEND_MS}ms`], [{ id: 'lister', engine: listingEngine }]);
    ({ id } = await s.quarantine.put(Readable.from([randomBytes(OBJECT)]), {
      source: 'ftp',
      sender: '',
      recipients: [],
      group: 'default',
      statuses: ['found'],
      virusNames: ['Avgate.Test.Big'],
      fileName: 'big.bin',
      url: 'ftp://example.org/big.bin',
    }));
    c = new ConsoleClient(s.port);
    assert.equal((await c.login('admin', PASSWORD)).status, 303);
  });
  after(async () => s?.stop());

  async function stalls(path: string): Promise<void> {
    const before = s.web.counters.sendTimeouts;
    const logged = s.logs.length;
    const started = Date.now();
    const { socket, closed } = await requestAndStopReading(s.port, path, c.cookies);
    await waitFor('the send timeout', async () => (s.web.counters.sendTimeouts > before ? true : null), 10_000);
    const ms = Date.now() - started;
    assert.ok(ms >= SEND_MS, `cut after ${ms} ms, before the send timeout`);
    const line = s.logs.slice(logged).find((l) => l.msg === 'console client stopped reading the response; closing');
    assert.equal(line?.level, 40, 'logged at warn');
    assert.equal(line?.client, '127.0.0.1');
    assert.equal(line?.path, path);
    assert.ok((line?.unsent ?? 0) > 0, 'bytes were still waiting');
    // The connection is gone: reading now ends in a close (a reset), not the whole response.
    let received = 0;
    socket.on('data', (d: Buffer) => (received += d.length));
    socket.resume();
    await within('the cut connection closed', 5000, closed);
    assert.ok(received < OBJECT, `only part of the response arrived (${received} bytes)`);
    assert.ok(!s.logs.slice(logged).some((l) => l.level >= 50), 'nothing at error level');
  }

  test('a quarantine export that is not read: the connection is cut after timeouts.send and logged at warn', { timeout: 30_000 }, async () => {
    await stalls(`/quarantine/${id}/export.zip`);
  });

  test('an ordinary page larger than the socket buffers: cut the same way', { timeout: 30_000 }, async () => {
    await stalls('/signatures');
  });

  test('a reader that keeps reading slowly gets the whole export and the whole page', { timeout: 90_000 }, async () => {
    const before = s.web.counters.sendTimeouts;
    const zip = await readSlowly(s.port, `/quarantine/${id}/export.zip`, c.cookies, 20);
    assert.match(zip.head, /^HTTP\/1\.1 200 /);
    assert.ok(zip.bodyBytes > OBJECT, `the whole ZIP: ${zip.bodyBytes} bytes`);
    assert.ok(zip.ms > 2 * SEND_MS, `slow enough to span several send timeouts (${zip.ms} ms)`);
    const page = await readSlowly(s.port, '/signatures', c.cookies, 20);
    assert.match(page.head, /^HTTP\/1\.1 200 /);
    assert.ok(page.bodyBytes > 200 * NAME.length);
    assert.equal(s.web.counters.sendTimeouts, before, 'no send timeout');
  });
});
