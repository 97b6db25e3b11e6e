import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls';
import { acceptTls } from '../../src/core/net.js';
import { dataChunks, DataReset, DEAD_ARRIVAL_GRACE_MS, overTcp, PassiveListener, peerConnected, resetData } from '../../src/protocols/ftp/data.js';
import { selfSignedCert } from '../helpers/tls.js';

/** How the peer ends its side after writing: FIN, reset, or (TLS) close_notify and FIN followed by a reset. */
type Ending = 'fin' | 'reset' | 'notify-then-reset';

/** TLS on the connection: the version, and whether it is marked as one the proxy serves (overTcp 'server'). */
type Tls = { version: 'TLSv1.2' | 'TLSv1.3'; served: boolean } | null;

interface Drained {
  bytes: number;
  error: unknown;
  /** The connection was already closed in the kernel when the end was seen. */
  gone: boolean;
}

/** A listener for one connection, which arrives paused (as the proxy's data connections do) and is handed to `take`. */
async function listen(take: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ pauseOnConnect: true }, (s) => {
    s.on('error', () => undefined);
    server.close();
    take(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as { port: number }).port };
}

/** Reads `s` with dataChunks after `delayMs`: the bytes, and the error it ended with (null for an end). */
async function drain(s: Socket, delayMs: number): Promise<Drained> {
  await new Promise((r) => setTimeout(r, delayMs));
  let bytes = 0;
  let gone = false;
  s.once('end', () => (gone = !peerConnected(s)));
  try {
    for await (const c of dataChunks(s)) bytes += c.length;
    return { bytes, error: null, gone };
  } catch (error) {
    return { bytes, error, gone };
  }
}

const isReset = (err: unknown): boolean => err instanceof DataReset || (err as NodeJS.ErrnoException | null)?.code === 'ECONNRESET';

describe('FTP data connections: an end by reset is never a complete transfer', () => {
  let dir: string;
  const serverTls: Partial<Record<'TLSv1.2' | 'TLSv1.3', SecureContext>> = {};

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-ftp-data-'));
    const { cert, key } = await selfSignedCert(dir);
    for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
      serverTls[version] = createSecureContext({ cert: await readFile(cert), key: await readFile(key), minVersion: version, maxVersion: version });
    }
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** One connection: the peer writes `size` bytes, then ends as `ending` says; the proxy side reads it with dataChunks. */
  async function round(ending: Ending, size: number, delayMs: number, tls: Tls): Promise<Drained> {
    let got!: Promise<Drained>;
    const accepted = new Promise<void>((resolve) => {
      void listen((raw) => {
        got = (async () => {
          if (!tls) return drain(raw, delayMs);
          const s = await acceptTls(raw, serverTls[tls.version] as SecureContext, 5000);
          return drain(tls.served ? overTcp(s, raw, 'server') : s, delayMs);
        })();
        resolve();
      }).then(({ port }) => {
        const c = connect(port, '127.0.0.1');
        c.on('error', () => undefined);
        c.once('connect', () => {
          const send = (w: Socket) => {
            w.write(Buffer.alloc(size));
            if (ending === 'fin') w.end();
            else if (ending === 'reset') setTimeout(() => c.resetAndDestroy(), 1);
            // The reset only once everything, close_notify included, is out (and fits the reader's window).
            else w.end(() => setTimeout(() => c.resetAndDestroy(), 2));
          };
          if (!tls) send(c);
          else {
            const t = tlsConnect({ socket: c, rejectUnauthorized: false }, () => send(t));
            t.on('error', () => undefined);
          }
        });
      });
    });
    await accepted;
    return got;
  }

  const tlsCases: Array<[string, Tls]> = [
    ['plain TCP', null],
    ['TLS 1.3 not served by the proxy (as towards a server)', { version: 'TLSv1.3', served: false }],
    ['TLS 1.2 served by the proxy', { version: 'TLSv1.2', served: true }],
  ];
  for (const [label, tls] of tlsCases) {

    test(`${label}: a peer that ends with a FIN gives every byte and a clean end`, async () => {
      for (const size of [0, 1000, 2 * 1024 * 1024]) {
        for (const delayMs of [0, 20]) {
          const r = await round('fin', size, delayMs, tls);
          assert.equal(r.error, null, `size ${size}, delay ${delayMs}: ${String(r.error)}`);
          assert.equal(r.bytes, size);
        }
      }
    });

    test(`${label}: a peer that resets after writing 2 MiB ends the read with an error, every time`, async () => {
      for (let i = 0; i < 10; i++) {
        // A late reader (the data waits in the kernel) is the case Node reports as a plain end.
        const r = await round('reset', 2 * 1024 * 1024, i % 2 === 0 ? 20 : 0, tls);
        // (All of the bytes may have arrived before the reset: it still says the sender gave up.)
        assert.ok(isReset(r.error), `round ${i}: ${r.bytes} bytes, then ${r.error === null ? 'a clean end' : String(r.error)}`);
      }
    });
  }

  test('TLS 1.3 served by the proxy: a client that sends close_notify and then resets (its session tickets unread) ends cleanly, every byte', async () => {
    let gone = 0;
    for (let i = 0; i < 8; i++) {
      const r = await round('notify-then-reset', 50_000, 30, { version: 'TLSv1.3', served: true });
      assert.equal(r.error, null, `round ${i}: ${String(r.error)}`);
      assert.equal(r.bytes, 50_000);
      if (r.gone) gone++;
    }
    assert.ok(gone > 0, 'the reset came before the end in some round (else this tested nothing)');
  });

  test('peerConnected: true on a live connection and after the peer\'s FIN, false after its reset', async () => {
    for (const ending of ['fin', 'reset'] as const) {
      const seen = new Promise<Socket>((resolve) => {
        void listen(resolve).then(({ port }) => {
          const c = connect(port, '127.0.0.1', () => (ending === 'fin' ? c.end() : c.resetAndDestroy()));
          c.on('error', () => undefined);
        });
      });
      const s = await seen;
      // Still paused: nothing is read, so this side has neither seen the end nor closed anything.
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(peerConnected(s), ending === 'fin', ending);
      s.destroy();
    }
  });

  test('resetData: the peer sees a reset, also under TLS (overTcp); a TLS socket without its TCP one is only destroyed', async () => {
    for (const mode of ['plain', 'tls', 'tls-unknown'] as const) {
      const peerSaw = new Promise<string>((resolve) => {
        void listen((raw) => {
          raw.resume();
          raw.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
          raw.once('close', () => resolve('close'));
        }).then(({ port }) => {
          const c = connect(port, '127.0.0.1', () => {
            if (mode === 'plain') resetData(c);
            else {
              const t = tlsConnect({ socket: c, rejectUnauthorized: false });
              t.on('error', () => undefined);
              // No TLS server on the other side: the handshake never ends, the sockets are cut meanwhile.
              setTimeout(() => resetData(mode === 'tls' ? overTcp(t, c, 'client') : t), 50);
            }
          });
          c.on('error', () => undefined);
        });
      });
      assert.equal(await peerSaw, mode === 'tls-unknown' ? 'close' : 'ECONNRESET', mode);
    }
  });

  test('a passive listener: a connection reset before it was accepted cuts the wait for the client to the grace time', async () => {
    // The client's connection comes, writes and is reset while this process cannot accept: a child
    // process does it while execFileSync holds the event loop.
    const connectAndReset = (port: number) =>
      execFileSync(process.execPath, [
        '-e',
        `const s = require('node:net').connect(${port}, '127.0.0.1', () => { s.write(Buffer.alloc(100000)); s.resetAndDestroy(); }); s.on('error', () => {}); s.on('close', () => process.exit(0));`,
      ]);
    const signal = new AbortController().signal;

    const l = await PassiveListener.open('127.0.0.1', '127.0.0.1', null);
    connectAndReset(l.port);
    const started = Date.now();
    await assert.rejects(l.connect(30_000, signal), /reset before it was accepted/);
    const waited = Date.now() - started;
    assert.ok(waited >= DEAD_ARRIVAL_GRACE_MS - 50 && waited < DEAD_ARRIVAL_GRACE_MS + 2000, `waited ${waited} ms`);
    l.close();

    // The client's own connection still counts when it comes within the grace time.
    const l2 = await PassiveListener.open('127.0.0.1', '127.0.0.1', null);
    connectAndReset(l2.port);
    const waiting = l2.connect(30_000, signal);
    await new Promise((r) => setTimeout(r, 100));
    const c = connect(l2.port, '127.0.0.1');
    c.on('error', () => undefined);
    const s = await waiting;
    assert.equal(peerConnected(s), true);
    c.destroy();
    l2.close();
  });
});
