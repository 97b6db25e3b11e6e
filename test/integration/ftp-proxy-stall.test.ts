import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { link, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Serving } from '../../src/main.js';
import type { FtpCounters } from '../../src/protocols/ftp/server.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startVsftpd, type Vsftpd } from '../../tools/peers/vsftpd.js';
import { startTestClamd, type TestClamd, delayEngineYaml } from '../helpers/clamd.js';
import { FtpControl, openData } from '../helpers/ftp-control.js';

/**
 * Peers that stop taking or giving bytes (docs/ftp-proxy.md, "Limits and failures"): clients that
 * never read a download or the replies, uploads that never come or trickle in, a server that stops
 * in the middle of a RETR; and slow but steady peers, which must not be cut. vsftpd and a real clamd.
 */
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 50 ms; false when it did not become true within `ms`. */
async function within(ms: number, cond: () => boolean): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (cond()) return true;
    await sleep(50);
  }
  return cond();
}

/** Every process below `pid` (vsftpd's per-session processes). */
function descendants(pid: number): number[] {
  let out: string;
  try {
    out = execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' });
  } catch {
    // ps exits 1 when there is none.
    return [];
  }
  const kids = out.split(/\s+/).filter(Boolean).map(Number);
  return kids.flatMap((k) => [k, ...descendants(k)]);
}

describe('FTP proxy: stalled and trickling peers (vsftpd, real clamd)', () => {
  let clamd: TestClamd;
  let vsftpd: Vsftpd;
  /** timeouts.send 2s, data-idle 1m: the send timeout alone must end a client that stops reading. */
  let sendGate: Serving;
  /** timeouts.data-idle 1s, upload-min-rate 2KiB, send 0 (off). */
  let idleGate: Serving;
  let dir: string;
  let stateDir: string;
  let userAtHost: string;
  const big = 50 * 1024 * 1024;
  const steady = randomBytes(12 * 1024 * 1024);
  const small = randomBytes(100_000);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-ftps-'));
    stateDir = await mkdtemp(join(tmpdir(), 'avgate-ftps-state-'));
    clamd = await startTestClamd();
    vsftpd = await startVsftpd({ dir });
    const bigPath = join(vsftpd.root, 'held-big.bin');
    await writeFile(bigPath, randomBytes(big), { mode: 0o644 });
    for (const name of ['trickled-big.bin', 'free-big.bin']) await link(bigPath, join(vsftpd.root, name));
    // Sparse: as large as a server may send at full speed before it is stopped, no disk used. No
    // larger than max-object-size (below): a size over it that vsftpd announces is refused at once.
    const sparse = await open(join(vsftpd.root, 'sparse.bin'), 'w', 0o644);
    await sparse.truncate(512 * 1024 * 1024);
    await sparse.close();
    await writeFile(join(vsftpd.root, 'steady.bin'), steady, { mode: 0o644 });
    await writeFile(join(vsftpd.root, 'held-small.bin'), small, { mode: 0o644 });
    await mkdir(join(vsftpd.root, 'many'), { mode: 0o755 });
    for (let i = 0; i < 3000; i++) await writeFile(join(vsftpd.root, 'many', `${String(i).padStart(5, '0')}-${'n'.repeat(100)}`), '', { mode: 0o644 });
    const delayEngine = delayEngineYaml(clamd);
    const common = ["allowed-upstreams: ['127.0.0.1:*']", 'max-object-size: 512MiB'];
    sendGate = await startAvgatePeer({
      stateDir: join(stateDir, 'send'),
      clamd,
      ftpYaml: [
        ...common,
        'timeouts: {data-idle: 1m, send: 2s, reply: 5s}',
        'doc-acl:',
        "  - {name: held, match: {url: 'ftp://*/held-*'}, trickle: null}",
        "  - {name: trickled, match: {url: 'ftp://*/trickled-*'}, trickle: {interval: 100ms, chunk: 1MiB, limit: 90%, keep-back: 1MiB}}",
        "  - {name: unscanned, match: {url: 'ftp://*/free-*'}, action: accept}",
        '  - name: default',
      ].join('\n'),
    });
    idleGate = await startAvgatePeer({
      stateDir: join(stateDir, 'idle'),
      clamd,
      extraEngines: delayEngine,
      ftpYaml: [
        ...common,
        'timeouts: {data-idle: 1s, send: 0, reply: 3s}',
        'upload-min-rate: 2KiB',
        'doc-acl:',
        "  - {name: held, match: {url: 'ftp://*/held-*'}, antivirus: [delay], trickle: null}",
        "  - {name: unscanned, match: {url: 'ftp://*/*free-*'}, action: accept}",
        '  - name: default',
      ].join('\n'),
    });
    userAtHost = `anonymous@127.0.0.1:${vsftpd.port}`;
  });

  after(async () => {
    await sendGate?.stop();
    await idleGate?.stop();
    await vsftpd?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });

  const counters = (gate: Serving): FtpCounters => (gate.ftp as NonNullable<Serving['ftp']>).counters;

  const loggedIn = async (gate: Serving): Promise<FtpControl> => {
    const c = await FtpControl.open(gate.ftpProxyPort as number);
    await c.reply();
    assert.equal((await c.command(`USER ${userAtHost}`)).code, 230);
    assert.equal((await c.command('TYPE I')).code, 200);
    return c;
  };

  /**
   * A data connection for the next transfer that is never read (paused from its first byte), by
   * EPSV or by EPRT; `socket()` resolves once it is connected.
   */
  const pausedData = async (c: FtpControl, mode: 'passive' | 'active'): Promise<{ socket(): Promise<Socket>; close(): void }> => {
    if (mode === 'passive') {
      const port = await c.epsvPort();
      const s = connect({ port, host: '127.0.0.1' }, () => s.pause());
      s.pause();
      s.on('error', () => undefined);
      return { socket: async () => s, close: () => s.destroy() };
    }
    let accepted: Socket | null = null;
    const server: Server = createServer({ pauseOnConnect: true }, (s) => {
      s.on('error', () => undefined);
      accepted = s;
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    assert.equal((await c.command(`EPRT |1|127.0.0.1|${port}|`)).code, 200);
    return {
      socket: async () => {
        assert.ok(await within(10_000, () => accepted !== null), 'the proxy connected back');
        return accepted as unknown as Socket;
      },
      close: () => {
        (accepted as Socket | null)?.destroy();
        server.close();
      },
    };
  };

  for (const mode of ['passive', 'active'] as const) {
    for (const name of ['held-big.bin', 'trickled-big.bin', 'free-big.bin']) {
      test(`${mode} RETR ${name} (50 MB) to a client that never reads: reset after timeouts.send, 426, counted`, async () => {
        const before = counters(sendGate).sendTimeouts;
        const c = await loggedIn(sendGate);
        const data = await pausedData(c, mode);
        try {
          const started = Date.now();
          c.send(`RETR ${name}\r\n`);
          assert.equal((await c.reply()).code, 150);
          await data.socket();
          // data-idle is 1m here: only timeouts.send (2s) ends it this soon (a held file after its scan).
          const final = await c.reply(30_000);
          assert.equal(final.code, 426, final.lines.join('\n'));
          assert.match(final.lines[0] as string, /Connection closed; transfer aborted/);
          assert.ok(Date.now() - started < 30_000);
          assert.equal(counters(sendGate).sendTimeouts, before + 1);
          // The control connection is still usable.
          assert.equal((await c.command('NOOP')).code, 200);
        } finally {
          data.close();
          c.close();
        }
      });
    }
  }

  test('a slow but steady reader (12 MB at about 2.5 MB/s, longer than timeouts.send in all) gets the whole file', async () => {
    const before = counters(sendGate).sendTimeouts;
    const c = await loggedIn(sendGate);
    try {
      const port = await c.epsvPort();
      const d = await openData(port);
      // Reads 64 KiB, then nothing for 25 ms: progress, never at once. (The kernel takes more of the
      // proxy's bytes in steps of a part of its send buffer, about 4 MB here, not byte by byte.)
      d.socket.on('data', () => {
        d.socket.pause();
        setTimeout(() => d.socket.resume(), 25);
      });
      c.send('RETR steady.bin\r\n');
      assert.equal((await c.reply()).code, 150);
      assert.equal((await c.reply(60_000)).code, 226);
      await d.closed;
      assert.equal(sha256(d.received()), sha256(steady));
      assert.equal(counters(sendGate).sendTimeouts, before);
    } finally {
      c.close();
    }
  });

  test('a client that sends commands and never reads the replies is cut after timeouts.send (control connection)', async () => {
    const before = counters(sendGate).sendTimeouts;
    const c = await loggedIn(sendGate);
    try {
      c.socket.pause();
      // Each STAT of the directory is a reply of about 400 KB from vsftpd.
      c.send('STAT many\r\n'.repeat(200));
      assert.ok(await within(20_000, () => counters(sendGate).sendTimeouts > before), 'the control connection was reset');
    } finally {
      c.close();
    }
  });

  test('with timeouts.send off, replies the client does not read are not piled up: no further command is relayed', async () => {
    const logPath = join(dir, 'vsftpd.log');
    const stats = async () => ((await readFile(logPath, 'latin1')).match(/"STAT many"/g) ?? []).length;
    const before = await stats();
    const c = await loggedIn(idleGate);
    try {
      c.socket.pause();
      c.send('STAT many\r\n'.repeat(200));
      await sleep(5000);
      const relayed = (await stats()) - before;
      // The socket buffers hold a few replies; without the wait for them to drain every STAT is relayed.
      assert.ok(relayed > 0 && relayed < 60, `relayed ${relayed} STAT commands`);
    } finally {
      c.close();
    }
  });

  for (const name of ['upload/silent.bin', 'upload/free-silent.bin']) {
    test(`STOR ${name} with nothing sent on the data connection: 426 after data-idle, nothing on the server`, async () => {
      const before = counters(idleGate).dataTimeouts;
      const c = await loggedIn(idleGate);
      try {
        const d = await openData(await c.epsvPort());
        const started = Date.now();
        c.send(`STOR ${name}\r\n`);
        assert.equal((await c.reply()).code, 150);
        const final = await c.reply(10_000);
        assert.equal(final.code, 426, final.lines.join('\n'));
        assert.ok(Date.now() - started < 6000, `${Date.now() - started} ms`);
        assert.equal(counters(idleGate).dataTimeouts, before + 1);
        d.socket.destroy();
        if (!name.includes('free-')) assert.ok(!(await readdir(vsftpd.uploadDir)).includes('silent.bin'));
      } finally {
        c.close();
      }
    });

    const trickled = name.replace('silent', 'trickled');
    test(`STOR ${trickled} trickled one byte every 300 ms (each gap below data-idle): 426 by upload-min-rate`, async () => {
      const before = counters(idleGate).dataTimeouts;
      const c = await loggedIn(idleGate);
      const d = await openData(await c.epsvPort());
      const trickle = setInterval(() => {
        if (!d.socket.destroyed) d.socket.write('x');
      }, 300);
      try {
        const started = Date.now();
        c.send(`STOR ${trickled}\r\n`);
        assert.equal((await c.reply()).code, 150);
        const final = await c.reply(15_000);
        assert.equal(final.code, 426, final.lines.join('\n'));
        assert.ok(Date.now() - started < 10_000, `${Date.now() - started} ms`);
        assert.equal(counters(idleGate).dataTimeouts, before + 1);
        if (!name.includes('free-')) assert.ok(!(await readdir(vsftpd.uploadDir)).includes('trickled.bin'));
      } finally {
        clearInterval(trickle);
        d.socket.destroy();
        c.close();
      }
    });

    const steadyName = name.replace('silent', 'steady');
    test(`STOR ${steadyName} slow but steady (4 KiB every 250 ms for 5 s, above upload-min-rate) arrives whole`, async () => {
      const before = counters(idleGate).dataTimeouts;
      const c = await loggedIn(idleGate);
      try {
        const d = await openData(await c.epsvPort());
        c.send(`STOR ${steadyName}\r\n`);
        assert.equal((await c.reply()).code, 150);
        const body = randomBytes(20 * 4096);
        for (let i = 0; i < 20; i++) {
          d.socket.write(body.subarray(i * 4096, (i + 1) * 4096));
          await sleep(250);
        }
        d.socket.end();
        assert.equal((await c.reply(30_000)).code, 226);
        assert.equal(sha256(await readFile(join(vsftpd.root, steadyName))), sha256(body));
        assert.equal(counters(idleGate).dataTimeouts, before);
      } finally {
        c.close();
      }
    });
  }

  test('a held download whose verdict takes longer than data-idle is not cut: the client waits with nothing to read', async () => {
    const c = await loggedIn(idleGate);
    try {
      const d = await openData(await c.epsvPort());
      c.send('RETR held-small.bin\r\n');
      assert.equal((await c.reply()).code, 150);
      const final = await c.reply(30_000);
      assert.equal(final.code, 226, final.lines.join('\n'));
      await d.closed;
      assert.equal(sha256(d.received()), sha256(small));
    } finally {
      c.close();
    }
  });

  for (const [name, how] of [
    ['free-big.bin', 'unscanned, relayed to a slow reader'],
    ['sparse.bin', 'scanned, spooled'],
  ] as const) {
    test(`a server that stops in the middle of RETR ${name} (${how}): 426 after data-idle, the data connection is never ended cleanly`, async () => {
      const before = counters(idleGate).dataTimeouts;
      const known = new Set(descendants(vsftpd.pid));
      const c = await loggedIn(idleGate);
      const mine = descendants(vsftpd.pid).filter((p) => !known.has(p));
      assert.ok(mine.length > 0, 'the session processes of vsftpd');
      const d = await openData(await c.epsvPort());
      let reset = false;
      d.socket.on('error', () => (reset = true));
      d.socket.on('data', () => {
        d.socket.pause();
        setTimeout(() => d.socket.resume(), 20);
      });
      try {
        c.send(`RETR ${name}\r\n`);
        assert.equal((await c.reply()).code, 150);
        for (const p of mine) process.kill(p, 'SIGSTOP');
        const started = Date.now();
        const final = await c.reply(15_000);
        assert.equal(final.code, 426, final.lines.join('\n'));
        // data-idle (1s) once the proxy waits on the server, plus what it still had for the client.
        assert.ok(Date.now() - started < 12_000, `${Date.now() - started} ms`);
        assert.equal(counters(idleGate).dataTimeouts, before + 1);
        await Promise.race([d.closed, sleep(10_000)]);
        assert.ok(reset || d.received().length < big, 'the client does not get a clean end of a cut file');
        // The server never answers (reply timeout 3s): the session ends with 421.
        assert.equal((await c.reply(10_000)).code, 421);
      } finally {
        for (const p of mine) {
          try {
            process.kill(p, 'SIGCONT');
            process.kill(p, 'SIGKILL');
          } catch {
            // gone already
          }
        }
        d.socket.destroy();
        c.close();
      }
    });
  }
});
