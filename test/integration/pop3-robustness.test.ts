import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { Pop3ProxyServer } from '../../src/protocols/pop3/index.js';
import type { Scanner } from '../../src/scan/scanner.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startFaultServer, type FaultServer } from '../helpers/fault-server.js';
import { listenPop3Proxy, proxyScanner } from '../helpers/mailproxy.js';
import { Pop3TestClient } from '../helpers/pop3.js';

/** Everything the client got until the proxy closed (or `ms` passed). */
function collect(socket: Socket, ms: number): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    let text = '';
    const done = (closed: boolean) => {
      clearTimeout(timer);
      resolve({ text, closed });
    };
    const timer = setTimeout(() => done(false), ms);
    socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
    socket.once('close', () => done(true));
  });
}

/**
 * A POP3-ish server that misbehaves: greets, then answers each command line with `answer(line)`
 * (random bytes, a multi-line body that never ends ...).
 */
function pop3ish(answer: (line: string, s: Socket) => void): Promise<FaultServer> {
  return startFaultServer((s) => {
    s.write('+OK fake\r\n');
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).replace(/\r$/, '');
        buf = buf.slice(i + 1);
        if (!s.destroyed) answer(line, s);
      }
    });
  });
}

describe('POP3 proxy: hostile clients and servers never crash it', () => {
  let clamd: TestClamd;
  let scanner: Scanner;
  let dir: string;
  const proxies: Pop3ProxyServer[] = [];
  const servers: FaultServer[] = [];

  const proxy = (upstream: string): Promise<number> =>
    listenPop3Proxy({ upstream, 'max-line-length': '1KiB', timeouts: { upstream: '300ms', idle: '2s' } }, { scanner, spoolDir: join(dir, 'spool') }, proxies);

  before(async () => {
    clamd = await startTestClamd();
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
    dir = await mkdtemp(join(tmpdir(), 'avgate-pop3-fuzz-'));
  });
  after(async () => {
    for (const p of proxies) await p.close(100);
    for (const s of servers) await s.close();
    await scanner.close();
    await clamd.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('random client bytes: every answer line is +OK/-ERR (or the session closes), and the proxy keeps serving', async () => {
    const upstream = await pop3ish((line, s) => {
      // Multi-line commands get a short valid body; the rest one line.
      if (/^(CAPA|LIST|UIDL)$/i.test(line) || /^(RETR|TOP) /i.test(line)) s.write('+OK\r\nFrom: a@b\r\n\r\nhi\r\n.\r\n');
      else s.write('+OK\r\n');
    });
    servers.push(upstream);
    const port = await proxy(upstream.address);
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
      fc
        .array(fc.constantFrom('USER x', 'PASS y', 'RETR 1', 'TOP 1 0', 'LIST', 'CAPA', 'STAT', 'AUTH', 'AUTH PLAIN', 'NOOP', '', ' ', '\u0000', 'X'.repeat(2000), 'RETR', 'LIST 1 2'), { maxLength: 8 })
        .map((l) => Buffer.from(l.map((x) => `${x}\r\n`).join(''), 'latin1')),
    );
    await fc.assert(
      fc.asyncProperty(bytes, async (input) => {
        const c = await Pop3TestClient.connect(port);
        const got = collect(c.socket, 600);
        c.send(input);
        const { text } = await got;
        c.socket.destroy();
        // Every line the proxy sent is a status, a body line of the fake's answer, or a capability.
        for (const line of text.split('\r\n').filter((l) => l.length > 0)) {
          assert.ok(/^(\+OK|-ERR|\+ |From: a@b|hi|\.|TOP|USER|UIDL|RESP-CODES|IMPLEMENTATION)/.test(line), JSON.stringify(line));
        }
      }),
      { numRuns: 25 },
    );
    const alive = await Pop3TestClient.connect(port);
    assert.match(alive.greeting, /^\+OK/);
    alive.socket.destroy();
  });

  test('random server answers: the client gets +OK/-ERR lines or a closed session; never a hang past the timeouts', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 400 }), fc.boolean(), async (garbage, closeAfter) => {
        const upstream = await pop3ish((line, s) => {
          if (/^(USER|PASS)/i.test(line)) s.write('+OK\r\n');
          else {
            s.write(Buffer.from(garbage));
            if (closeAfter) s.end();
          }
        });
        try {
          const port = await proxy(upstream.address);
          const c = await Pop3TestClient.connect(port);
          await c.login('u', 'p');
          const got = collect(c.socket, 3000);
          c.send('RETR 1\r\nSTAT\r\nLIST\r\nQUIT\r\n');
          const { text, closed } = await got;
          c.socket.destroy();
          // Within 3 s (upstream timeout 300 ms per read) the proxy answered and/or closed.
          assert.ok(closed || text.length > 0, 'no answer and not closed');
          // The RETR answer is a status line; +OK only for a body that came whole: then it is
          // framed up to its terminator (never a partial message).
          const first = text.split('\r\n')[0] ?? '';
          if (text.length > 0) assert.match(first, /^(\+OK|-ERR)/, JSON.stringify(text.slice(0, 200)));
          if (first.startsWith('+OK')) assert.ok(/\r\n\.\r\n/.test(text), JSON.stringify(text.slice(0, 200)));
        } finally {
          await upstream.close();
        }
      }),
      { numRuns: 20 },
    );
  });
});
