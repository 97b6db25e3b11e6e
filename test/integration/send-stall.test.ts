import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino, type Logger } from 'pino';
import { imapProxySchema } from '../../src/config/imap-schema.js';
import { parseConfigText } from '../../src/config/loader.js';
import { pop3ProxySchema } from '../../src/config/mail-proxy-schema.js';
import { httpProxySchema } from '../../src/config/proxy-schema.js';
import { cutConnection, SendStallWatch } from '../../src/core/send-stall.js';
import { BUILT_IN_REPLACEMENT } from '../../src/mailproxy/index.js';
import { HttpProxyServer } from '../../src/protocols/http-proxy/server.js';
import { IcapServer } from '../../src/protocols/icap/server.js';
import { ImapProxyServer } from '../../src/protocols/imap/server.js';
import { Pop3ProxyServer } from '../../src/protocols/pop3/index.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';
import { clamdScanner, startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestDovecot } from '../helpers/dovecot.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';
import { mailWith } from '../helpers/mail.js';
import { startTestOrigin, type TestOrigin } from '../helpers/origin.js';
import { selfSignedCert } from '../helpers/tls.js';
import { waitFor, within } from '../helpers/wait.js';

/**
 * The send timeout of every front end (src/core/send-stall.ts): a client that asks for something
 * larger than the socket buffers (on loopback the kernel takes about 4 MB of a write while nothing
 * reads) and stops reading is cut after the timeout, with a warning, and what its exchange held
 * (upstream, scan, spool) is released. A slow reader that keeps reading is never cut. Against real
 * peers: clamd, Dovecot, the HTTP test origin.
 */

const SEND_MS = 1000;
const MiB = 1024 * 1024;
/** Pause after every chunk the slow reader takes: the whole answer spans several send timeouts. */
const SLOW_PAUSE_MS = 25;

type LogLine = Record<string, unknown> & { level: number; msg: string };

function captureLog(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { log: pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as LogLine) }), lines };
}

/** A connection whose reading side is stopped at once: what the server sends fills the kernel's buffers. */
async function stoppedReader(port: number): Promise<{ socket: Socket; closed: Promise<void> }> {
  const socket = connect(port, '127.0.0.1');
  socket.pause();
  socket.on('error', () => undefined);
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  await once(socket, 'connect');
  return { socket, closed };
}

/**
 * Sends `request`, then reads everything slowly (a pause after every chunk) until
 * `complete(received)` or the connection ends; resolves to what came and how long it took.
 */
async function readSlowly(port: number, request: string, complete: (got: Buffer) => boolean): Promise<{ got: Buffer; ms: number }> {
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  socket.write(request);
  const started = Date.now();
  const parts: Buffer[] = [];
  let got = Buffer.alloc(0);
  let done = false;
  socket.on('data', (d: Buffer) => {
    parts.push(d);
    socket.pause();
    setTimeout(() => socket.resume(), SLOW_PAUSE_MS);
  });
  socket.resume();
  await waitFor(
    'the whole answer',
    async () => {
      if (parts.length > 0) got = Buffer.concat([got, ...parts.splice(0)]);
      done = complete(got);
      return done || socket.destroyed ? true : null;
    },
    90_000,
  );
  socket.destroy();
  return { got, ms: Date.now() - started };
}

/**
 * Sends `request` on a connection that never reads, waits for `counter` to grow and checks the cut:
 * not before the timeout, the connection ends, a warning with the unsent bytes. Returns the warning
 * and where the test's log lines begin.
 */
async function stalledAnswer(port: number, request: string | Buffer, counter: () => number, logs: LogLine[], msg: RegExp): Promise<{ line: LogLine; from: number }> {
  const before = counter();
  const from = logs.length;
  const started = Date.now();
  const { socket, closed } = await stoppedReader(port);
  socket.write(request);
  let ended = false;
  void closed.then(() => (ended = true));
  // Without the watch nothing ends this connection (the server waits for 'drain' for ever): the
  // test's own end does.
  await waitFor('the send timeout', async () => (counter() > before || ended ? true : null), 15_000).catch(() => {
    socket.destroy();
    assert.fail(`after 15 s the server still holds the connection (${socket.bytesRead} bytes read by the client)`);
  });
  assert.ok(counter() > before, 'the connection ended, but not by the send timeout');
  const ms = Date.now() - started;
  assert.ok(ms >= SEND_MS, `cut after ${ms} ms, before the send timeout`);
  socket.resume();
  await within('the cut connection closed', 5000, closed);
  return { line: warnLine(logs, from, msg), from };
}

function warnLine(lines: LogLine[], from: number, msg: RegExp): LogLine {
  const line = lines.slice(from).find((l) => msg.test(l.msg));
  assert.ok(line, `a log line ${String(msg)}`);
  assert.equal(line.level, 40, 'logged at warn');
  assert.ok(typeof line.unsent === 'number' && line.unsent > 0, `unsent bytes: ${String(line.unsent)}`);
  return line;
}

async function emptyDir(dir: string): Promise<void> {
  await waitFor(`${dir} empty`, async () => ((await readdir(dir).catch(() => [])).length === 0 ? true : null), 5000);
}

let clamd: TestClamd;
let scanner: Scanner;
let dir: string;
before(async () => {
  clamd = await startTestClamd();
  scanner = await clamdScanner(clamd, { maxCheckedSize: 128 * MiB });
  dir = await mkdtemp(join(tmpdir(), 'avgate-send-stall-'));
});
after(async () => {
  await scanner?.close();
  await clamd?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('ICAP: icap.send-timeout', () => {
  let server: IcapServer;
  let port: number;
  let logs: LogLine[];
  let spoolDir: string;
  const body = randomBytes(8 * MiB);
  before(async () => {
    const stateDir = join(dir, 'icap');
    spoolDir = join(stateDir, 'spool');
    const yaml = [
      `state-dir: ${stateDir}`,
      'icap:',
      '  listen: 127.0.0.1:0',
      `  send-timeout: ${SEND_MS}ms`,
      '  services:',
      '    echo:',
      '      early-response-after: 0',
      '    early: {}',
    ];
    const config = parseConfigText(yaml.join('\n'), 'test.yaml');
    const c = captureLog();
    logs = c.lines;
    server = new IcapServer(config.icap, { stateDir, scannerFor: () => ({ scanner, engines: [] }), log: c.log, version: 'test' });
    port = (await server.listen()).port;
  });
  after(async () => server?.close(1000));

  for (const [service, sending] of [
    ['echo', 'the echoed body'],
    ['early', 'the body after an early response'],
  ] as const) {
    test(`an answer the client does not read (${sending}): reset after send-timeout, logged, spool released`, { timeout: 30_000 }, async () => {
      const { line, from } = await stalledAnswer(port, buildRequest(port, body, { service }).first, () => server.counters.sendTimeouts, logs, /^icap: client stopped reading/);
      assert.match(String(line.client), /^127\.0\.0\.1:\d+$/);
      assert.equal(line.service, service);
      assert.equal(line.sending, sending);
      await emptyDir(spoolDir);
      await waitFor('the connection released', async () => (server.openConnections === 0 ? true : null), 5000);
      assert.ok(!logs.slice(from).some((l) => l.level >= 50), 'nothing at error level');
    });
  }

  test('a reader that keeps reading slowly gets the whole echo', { timeout: 60_000 }, async () => {
    const before = server.counters.sendTimeouts;
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const started = Date.now();
    let chunks = 0;
    socket.on('data', () => {
      chunks++;
      socket.pause();
      setTimeout(() => socket.resume(), SLOW_PAUSE_MS);
    });
    const r = await icapExchange(port, [buildRequest(port, body, { service: 'echo' }).first], { socket, timeoutMs: 60_000 });
    const ms = Date.now() - started;
    socket.destroy();
    assert.equal(r.responses[0]?.head.status, 200);
    assert.ok(r.responses[0]?.body.equals(body), `the whole body (${r.responses[0]?.body.length ?? 0} bytes)`);
    assert.ok(ms > 2 * SEND_MS, `slow enough to span several send timeouts (${ms} ms, ${chunks} reads)`);
    assert.equal(server.counters.sendTimeouts, before, 'no send timeout');
  });
});

describe('HTTP proxy: http-proxy.timeouts.send', () => {
  let origin: TestOrigin;
  let proxy: HttpProxyServer;
  let port: number;
  let logs: LogLine[];
  let spoolDir: string;
  before(async () => {
    const stateDir = join(dir, 'http');
    spoolDir = join(stateDir, 'spool');
    await mkdir(join(dir, 'www'), { recursive: true });
    origin = await startTestOrigin({ dir: join(dir, 'www') });
    const config = httpProxySchema.parse({
      listen: '127.0.0.1:0',
      timeouts: { send: `${SEND_MS}ms` },
      'doc-acl': [{ name: 'bulk', match: { url: '*/bulk-*' }, action: 'accept' }, { name: 'default' }],
    });
    const c = captureLog();
    logs = c.lines;
    proxy = new HttpProxyServer(config, { stateDir, scannerFor: () => ({ scanner }), maxCheckedSize: 128 * MiB, log: c.log });
    port = (await proxy.listen()).port;
  });
  after(async () => {
    await proxy?.close(1000);
    await origin?.stop();
  });

  const get = (url: string) => `GET ${url} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`;

  for (const [kind, bytes, seed, rule] of [
    ['a scanned download', 24 * MiB, 'scanned-a', 'default'],
    ['an unscanned 100 MB download (accept rule)', 100 * MiB, 'bulk-a', 'bulk'],
  ] as const) {
    test(`${kind} the client does not read: reset after timeouts.send, logged, the exchange ends and lets go of the upstream`, { timeout: 30_000 }, async () => {
      const url = origin.genUrl(bytes, seed);
      const { line, from } = await stalledAnswer(port, get(url), () => proxy.counters.sendTimeouts, logs, /^http-proxy: client stopped reading/);
      assert.equal(line.client, '127.0.0.1');
      assert.equal(line.url, url);
      // The access line is written once the exchange is over: the upstream request destroyed
      // (run()'s finally), the spool disposed of (scanDownload's finally).
      const access = await waitFor('the access line', async () => logs.slice(from).find((l) => l.component === 'http-access' && l.url === url) ?? null, 5000);
      assert.match(String(access.verdict), /send-timeout$/);
      assert.equal(access.rule, rule);
      assert.ok(Number(access.bytes) < bytes);
      // The origin never finished sending: the proxy stopped taking the object.
      if (rule === 'bulk') assert.ok(!origin.log.some((l) => l.includes(seed)), origin.log.join('\n'));
      await emptyDir(spoolDir);
      await waitFor('the client connection released', async () => (proxy.openConnections === 0 ? true : null), 5000);
    });
  }

  test('a reader that keeps reading slowly gets the whole scanned download', { timeout: 60_000 }, async () => {
    const before = proxy.counters.sendTimeouts;
    const bytes = 12 * MiB;
    const { got, ms } = await readSlowly(port, get(origin.genUrl(bytes, 'slow-reader')), (b) => {
      const end = b.indexOf('\r\n\r\n');
      return end >= 0 && b.length >= end + 4 + bytes;
    });
    assert.match(got.toString('latin1', 0, 20), /^HTTP\/1\.1 200 /);
    assert.equal(got.length - (got.indexOf('\r\n\r\n') + 4), bytes, 'the whole object');
    assert.ok(ms > 2 * SEND_MS, `slow enough to span several send timeouts (${ms} ms)`);
    assert.equal(proxy.counters.sendTimeouts, before, 'no send timeout');
  });
});

describe('mail proxies: pop3-proxy.timeouts.send and imap-proxy.timeouts.send', () => {
  let dovecot: Dovecot;
  let pop3: Pop3ProxyServer;
  let imap: ImapProxyServer;
  let pop3Port: number;
  let imapPort: number;
  let logs: LogLine[];
  /** An 8 MB message: a clean 6 MB attachment, base64. */
  const message = mailWith('big', [{ name: 'big.bin', type: 'application/octet-stream', data: randomBytes(6 * MiB) }]);
  before(async () => {
    dovecot = await startTestDovecot();
    await dovecot.deliver(dovecot.user, message);
    const c = captureLog();
    logs = c.lines;
    const pop3Config = pop3ProxySchema.parse({ listen: '127.0.0.1:0', upstream: `127.0.0.1:${dovecot.pop3Port}`, timeouts: { send: `${SEND_MS}ms` } });
    pop3 = new Pop3ProxyServer(pop3Config, {
      replace: { scanner, policy: pop3Config, replacement: BUILT_IN_REPLACEMENT, spoolDir: join(dir, 'pop3-spool'), log: c.log, origin: { source: 'pop3' } },
      log: c.log,
    });
    pop3Port = (await pop3.listen()).port;
    const imapConfig = imapProxySchema.parse({ listen: '127.0.0.1:0', upstream: `127.0.0.1:${dovecot.imapPort}`, timeouts: { send: `${SEND_MS}ms` } });
    imap = new ImapProxyServer(imapConfig, { stateDir: join(dir, 'imap'), scannerFor: () => ({ scanner }), log: c.log });
    imapPort = (await imap.listen()).port;
  });
  after(async () => {
    await pop3?.close(100);
    await imap?.close(100);
    await dovecot?.stop();
  });

  /** The answer of a slow reader: the whole message, the end marker, slow enough to matter. */
  function wholeMessage(got: Buffer, end: string, ms: number): void {
    assert.ok(got.length > message.length, `the whole message (${got.length} bytes)`);
    assert.ok(got.subarray(-200).toString('latin1').includes(end), 'the answer ended');
    assert.ok(ms > 2 * SEND_MS, `slow enough to span several send timeouts (${ms} ms)`);
  }

  const pop3Commands = () => `USER ${dovecot.user}\r\nPASS ${dovecot.password}\r\nRETR 1\r\n`;
  const imapCommands = () => `a LOGIN ${dovecot.user} ${dovecot.password}\r\nb SELECT INBOX\r\nc FETCH 1 BODY.PEEK[]\r\n`;

  test('POP3: a RETR the client does not read: reset after timeouts.send, logged, the session ends', { timeout: 30_000 }, async () => {
    const { line } = await stalledAnswer(pop3Port, pop3Commands(), () => pop3.counters.sendTimeouts, logs, /^pop3: client stopped reading/);
    assert.equal(line.client, '127.0.0.1');
    assert.equal(line.sending, 'RETR 1');
    await emptyDir(join(dir, 'pop3-spool'));
    await waitFor('the session ended', async () => (pop3.counters.active === 0 ? true : null), 5000);
  });

  test('POP3: a reader that keeps reading slowly gets the whole message', { timeout: 60_000 }, async () => {
    const before = pop3.counters.sendTimeouts;
    const { got, ms } = await readSlowly(pop3Port, pop3Commands(), (b) => b.length > message.length && b.subarray(-5).toString('latin1') === '\r\n.\r\n');
    wholeMessage(got, '\r\n.\r\n', ms);
    assert.equal(pop3.counters.sendTimeouts, before, 'no send timeout');
  });

  test('IMAP: a FETCH the client does not read: reset after timeouts.send, logged, the session ends', { timeout: 30_000 }, async () => {
    const { line } = await stalledAnswer(imapPort, imapCommands(), () => imap.counters.sendTimeouts, logs, /^imap: client stopped reading/);
    assert.equal(line.client, '127.0.0.1');
    assert.match(String(line.sending), /^FETCH /);
    await emptyDir(join(dir, 'imap', 'spool'));
    await waitFor('the session ended', async () => (imap.openConnections === 0 ? true : null), 5000);
  });

  test('IMAP: a reader that keeps reading slowly gets the whole message', { timeout: 60_000 }, async () => {
    const before = imap.counters.sendTimeouts;
    const { got, ms } = await readSlowly(imapPort, imapCommands(), (b) => /\r\nc OK [^\r\n]*\r\n$/.test(b.subarray(-200).toString('latin1')));
    wholeMessage(got, 'c OK ', ms);
    assert.equal(imap.counters.sendTimeouts, before, 'no send timeout');
  });
});

describe('TLS connections: progress inside one large write', () => {
  test('a TLS reader that keeps reading one write larger than timeouts.send lets through is not cut (the TCP queue below the TLS one moves)', { timeout: 60_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'avgate-stall-tls-'));
    const { cert, key } = await selfSignedCert(dir);
    const watch = new SendStallWatch(1500);
    const size = 12 * MiB;
    let cut = false;
    const server = createTlsServer({ cert: await readFile(cert), key: await readFile(key) }, (s) => {
      s.on('error', () => undefined);
      watch.watch(s, () => {
        cut = true;
        cutConnection(s);
      });
      // One write, as a corked answer is: the TLS handle's queue stays put until all of it is taken.
      s.end(Buffer.alloc(size, 0x61));
    });
    try {
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const c = tlsConnect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', rejectUnauthorized: false });
      c.on('error', () => undefined);
      let received = 0;
      const started = Date.now();
      // About 2 MB/s: the write takes several send timeouts, yet bytes move all the time.
      c.on('data', (b: Buffer) => {
        received += b.length;
        c.pause();
        setTimeout(() => c.resume(), 8);
      });
      await new Promise<void>((r) => c.once('end', () => r()).once('close', () => r()));
      c.destroy();
      assert.equal(cut, false, 'a reader that keeps reading is never cut');
      assert.ok(Date.now() - started > 3000, 'the write spanned several send timeouts');
      assert.ok(received >= size - 64 * 1024, `received ${received} of ${size}`);
    } finally {
      watch.stop();
      server.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
