import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import type { Logger } from '../../src/core/logging.js';
import { freeLoopbackPort } from '../../src/core/net.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startVsftpd, type Vsftpd } from '../../tools/peers/vsftpd.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { FtpControl, openData } from '../helpers/ftp-control.js';

/** The octets of `text` in UTF-8, one character per octet: what FtpControl.send puts on the wire as is. */
const octetsOf = (text: string): string => Buffer.from(text, 'utf8').toString('latin1');

describe('FTP proxy: data connections reset by the client, 421 closes the session, UTF-8 names (vsftpd, real clamd)', () => {
  let clamd: TestClamd;
  let vsftpd: Vsftpd;
  let avgate: Serving;
  let dir: string;
  let stateDir: string;
  let proxyPort: number;
  let userAtHost: string;
  const twoMiB = randomBytes(2 * 1024 * 1024);
  /** The main log's lines as written: raw JSON, where a key given twice shows. */
  const logLines: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-ftpr-'));
    stateDir = await mkdtemp(join(tmpdir(), 'avgate-ftpr-state-'));
    clamd = await startTestClamd();
    vsftpd = await startVsftpd({ dir });
    avgate = await startAvgatePeer({
      stateDir,
      clamd,
      logger: pino({ level: 'info' }, { write: (l: string) => void logLines.push(l) }) as unknown as Logger,
      ftpYaml: [
        "allowed-upstreams: ['127.0.0.1:*', '::1:*']",
        'access-log: ftp-access.log',
        'quarantine: [found]',
        'doc-acl:',
        "  - {name: unscanned, match: {url: 'ftp://*/upload/free-*'}, action: accept}",
        '  - name: default',
      ].join('\n'),
    });
    proxyPort = avgate.ftpProxyPort as number;
    userAtHost = `anonymous@127.0.0.1:${vsftpd.port}`;
  });

  after(async () => {
    await avgate?.stop();
    await vsftpd?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });

  const uploaded = async () => readdir(vsftpd.uploadDir);

  /** Writes 2 MiB on `s`, then resets it (SO_LINGER 0): the proxy gets part of the data and a RST, no FIN. */
  const sendAndReset = (s: Socket, afterMs: number) => {
    s.on('error', () => undefined);
    s.write(twoMiB);
    setTimeout(() => s.resetAndDestroy(), afterMs);
  };

  /** Connects to a passive data port (without waiting for more). */
  const dial = (port: number) =>
    new Promise<Socket>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });

  /** The raw log lines with message `msg` whose path ends with `suffix`. */
  const logged = (msg: string, suffix: string) =>
    logLines.filter((l) => {
      const o = JSON.parse(l) as { msg?: string; path?: string };
      return o.msg === msg && (o.path ?? '').endsWith(suffix);
    });

  /** The access log once it has a line containing `part` (it is written asynchronously). */
  const accessLogWith = async (part: string): Promise<string> => {
    const until = Date.now() + 5000;
    for (;;) {
      const log = await readFile(join(stateDir, 'ftp-access.log'), 'utf8').catch(() => '');
      if (log.includes(part) || Date.now() > until) return log;
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  /** RETR through EPSV: the final reply (after the 150, if any). */
  const retr = async (c: FtpControl, name: string) => {
    const data = await openData(await c.epsvPort());
    const first = await c.command(`RETR ${name}`);
    const final = first.code === 150 ? await c.reply(30_000) : first;
    data.socket.destroy();
    return final;
  };

  /** STOR through EPSV of `body`: the final reply. */
  const stor = async (c: FtpControl, name: string, body: Buffer) => {
    const data = await dial(await c.epsvPort());
    assert.equal((await c.command(`STOR ${name}`)).code, 150);
    data.end(body);
    return c.reply(30_000);
  };

  const loggedIn = async (): Promise<FtpControl> => {
    const c = await FtpControl.open(proxyPort);
    await c.reply();
    assert.equal((await c.command(`USER ${userAtHost}`)).code, 230);
    assert.equal((await c.command('TYPE I')).code, 200);
    return c;
  };

  test('STOR, passive: a client that resets its data connection gets 426 and nothing is written on the server (5 rounds)', async () => {
    for (let round = 0; round < 5; round++) {
      const name = `reset-passive-${round}.bin`;
      const c = await loggedIn();
      try {
        const data = await dial(await c.epsvPort());
        assert.equal((await c.command(`STOR upload/${name}`)).code, 150);
        sendAndReset(data, round % 2 === 0 ? 1 : 30);
        const r = await c.reply(30_000);
        assert.equal(r.code, 426, `round ${round}: ${r.lines.join('|')}`);
        assert.ok(!(await uploaded()).includes(name), `round ${round}: ${name} must not exist on the server`);
        assert.equal((await c.command('NOOP')).code, 200, 'the session goes on');
      } finally {
        c.close();
      }
    }
  });

  test('STOR, active: a client that resets the data connection the proxy opened gets 426, nothing written (5 rounds)', async () => {
    for (let round = 0; round < 5; round++) {
      const name = `reset-active-${round}.bin`;
      const listener = createServer((s) => sendAndReset(s, round % 2 === 0 ? 1 : 30));
      await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
      const port = (listener.address() as { port: number }).port;
      const c = await loggedIn();
      try {
        assert.equal((await c.command(`PORT 127,0,0,1,${port >> 8},${port & 255}`)).code, 200);
        assert.equal((await c.command(`STOR upload/${name}`)).code, 150);
        const r = await c.reply(30_000);
        assert.equal(r.code, 426, `round ${round}: ${r.lines.join('|')}`);
        assert.ok(!(await uploaded()).includes(name), `round ${round}: ${name} must not exist on the server`);
      } finally {
        c.close();
        listener.close();
      }
    }
  });

  test('STOR unscanned (doc-acl accept): a reset by the client gets 426, and the server is reset too, never told the upload ended well', async () => {
    for (let round = 0; round < 4; round++) {
      const name = `free-reset-${round}.bin`;
      const c = await loggedIn();
      try {
        const data = await dial(await c.epsvPort());
        assert.equal((await c.command(`STOR upload/${name}`)).code, 150);
        sendAndReset(data, round % 2 === 0 ? 1 : 30);
        const r = await c.reply(30_000);
        assert.equal(r.code, 426, `round ${round}: ${r.lines.join('|')}`);
        assert.equal((await c.command('NOOP')).code, 200);
      } finally {
        c.close();
      }
      // vsftpd logs each upload as OK or FAIL: what it was told (the data relayed so far may be on its disk).
      const log = await readFile(join(dir, 'vsftpd.log'), 'utf8');
      assert.ok(!new RegExp(`OK UPLOAD: .*/upload/${name}`).test(log), `round ${round}: the server took ${name} as complete:\n${log.slice(-2000)}`);
      assert.match(log, new RegExp(`FAIL UPLOAD: .*/upload/${name}`));
    }
  });

  test('STOR: a data connection reset before the proxy accepted it gets 425 within about a second, not after data-connect', async () => {
    const c = await loggedIn();
    try {
      const port = await c.epsvPort();
      // Connect, write and reset from a child process while this process (the proxy) cannot accept.
      execFileSync(process.execPath, [
        '-e',
        `const s = require('node:net').connect(${port}, '127.0.0.1', () => { s.write(Buffer.alloc(200000)); s.resetAndDestroy(); }); s.on('error', () => {}); s.on('close', () => process.exit(0));`,
      ]);
      const started = Date.now();
      assert.equal((await c.command('STOR upload/reset-early.bin')).code, 150);
      const r = await c.reply(30_000);
      assert.equal(r.code, 425, r.lines.join('|'));
      assert.ok(Date.now() - started < 5000, `425 after ${Date.now() - started} ms`);
      assert.ok(!(await uploaded()).includes('reset-early.bin'));
      assert.equal((await c.command('NOOP')).code, 200);
    } finally {
      c.close();
    }
  });

  /**
   * A tiny FTP server that lies: every transfer's data connection gets 1 MiB and a reset (what
   * `onData` does), and the control connection says 226 all the same.
   */
  async function lyingServer(onData: (s: Socket) => void): Promise<{ port: number; close(): void }> {
    const sockets = new Set<Socket>();
    const control = createServer((c) => {
      sockets.add(c);
      c.on('error', () => undefined);
      let data: Promise<Socket> | null = null;
      let buffered = '';
      c.write('220 lying server\r\n');
      c.on('data', (d: Buffer) => {
        buffered += d.toString('latin1');
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          const verb = line.split(' ')[0]?.toUpperCase();
          if (verb === 'EPSV') {
            const l = createServer((s) => {
              sockets.add(s);
              s.on('error', () => undefined);
              l.close();
            });
            data = new Promise((resolve) => l.once('connection', resolve));
            l.listen(0, '127.0.0.1', () => c.write(`229 Entering Extended Passive Mode (|||${(l.address() as { port: number }).port}|)\r\n`));
          } else if (verb === 'RETR' || verb === 'LIST') {
            c.write('150 here it comes\r\n');
            void data?.then((s) => {
              s.once('close', () => c.write('226 Transfer complete\r\n'));
              onData(s);
            });
          } else if (verb === 'PWD') c.write('257 "/" is the current directory\r\n');
          else if (verb === 'USER') c.write('230 logged in\r\n');
          else if (verb === 'QUIT') c.end('221 bye\r\n');
          else c.write('200 ok\r\n');
        }
      });
    });
    await new Promise<void>((r) => control.listen(0, '127.0.0.1', r));
    return {
      port: (control.address() as { port: number }).port,
      close: () => {
        for (const s of sockets) s.destroy();
        control.close();
      },
    };
  }

  test('downloads: a server that resets the data connection (and says 226) gives the client 426, scanned RETR and unscanned LIST alike (5 rounds)', async () => {
    const size = 1024 * 1024;
    let round = 0;
    const server = await lyingServer((s) => {
      s.write(randomBytes(size));
      setTimeout(() => s.resetAndDestroy(), round % 2 === 0 ? 1 : 30);
    });
    try {
      for (round = 0; round < 5; round++) {
        for (const command of ['RETR file.bin', 'LIST']) {
          const c = await FtpControl.open(proxyPort);
          try {
            await c.reply();
            assert.equal((await c.command(`USER u@127.0.0.1:${server.port}`)).code, 230);
            const data = await openData(await c.epsvPort());
            assert.equal((await c.command(command)).code, 150);
            const r = await c.reply(30_000);
            assert.equal(r.code, 426, `round ${round}, ${command}: ${r.lines.join('|')}`);
            await data.closed;
            // A scanned download is held until its verdict, which never comes; a listing is relayed as it arrives.
            if (command.startsWith('RETR')) assert.equal(data.received().length, 0, `round ${round}: bytes of an unscanned download`);
          } finally {
            c.close();
          }
        }
      }
    } finally {
      server.close();
    }
  });

  test('421 closes the control connection: USER for a server that does not answer gets 421, then the proxy closes', async () => {
    const closedPort = await freeLoopbackPort();
    const c = await FtpControl.open(proxyPort);
    try {
      await c.reply();
      const r = await c.command(`USER a@127.0.0.1:${closedPort}`);
      assert.equal(r.code, 421, r.lines.join('|'));
      assert.match(r.lines[0] as string, /Cannot connect to 127\.0\.0\.1:/);
      c.send('PASS x\r\n');
      await assert.rejects(c.reply(5000), /control connection closed/, 'no 530 after a 421: the connection is closed');
      assert.equal(c.closed, true);
    } finally {
      c.close();
    }
    // An IPv6 server is named with brackets, as it is written (user@[::1]:port).
    const v6 = await FtpControl.open(proxyPort);
    try {
      await v6.reply();
      const r = await v6.command(`USER a@[::1]:${closedPort}`);
      assert.equal(r.code, 421, r.lines.join('|'));
      assert.equal(r.lines[0], `421 Cannot connect to [::1]:${closedPort}`);
    } finally {
      v6.close();
    }
  });

  test('UTF-8 names: the server gets the octets the client sent; logs and the quarantine show the decoded name', async () => {
    await writeFile(join(dir, 'eicar.com'), eicarBytes());
    const names = [
      { octets: octetsOf('Überweisung-ß.txt'), text: 'Überweisung-ß.txt' },
      // Not UTF-8: shown as latin1, sent as it came.
      { octets: 'caf\xe9.txt', text: 'café.txt' },
    ];
    const c = await loggedIn();
    try {
      for (const { octets } of names) {
        const data = await dial(await c.epsvPort());
        assert.equal((await c.command(`STOR upload/${octets}`)).code, 150);
        data.end('clean content\n');
        assert.equal((await c.reply(30_000)).code, 226);
      }
      const rlo = '\u202egnp.exe';
      const data = await dial(await c.epsvPort());
      assert.equal((await c.command(`STOR upload/${octetsOf(rlo)}`)).code, 150);
      data.end(eicarBytes());
      const r = await c.reply(30_000);
      assert.equal(r.code, 550, r.lines.join('|'));

      const onServer = (await readdir(vsftpd.uploadDir, { encoding: 'buffer' })).map((b) => b.toString('latin1'));
      for (const { octets } of names) assert.ok(onServer.includes(octets), `${JSON.stringify(octets)} on the server: ${JSON.stringify(onServer)}`);
      assert.ok(!onServer.includes(octetsOf(rlo)), 'the infected upload never reached the server');

      const kept = await avgate.quarantine.list({ source: 'ftp' });
      const rec = kept.find((k) => k.url === `ftp://127.0.0.1/upload/${rlo}`);
      assert.ok(rec, JSON.stringify(kept.map((k) => k.url)));
      assert.equal(rec.fileName, rlo);

      await new Promise((resolve) => setTimeout(resolve, 200));
      const log = await readFile(join(stateDir, 'ftp-access.log'), 'utf8');
      // Both names carry the same bytes: the second upload is a verdict-cache hit (free/cached).
      for (const { text } of names) assert.ok(log.includes(` STOR ${JSON.stringify(`/upload/${text}`)} 226 free `) || log.includes(` STOR ${JSON.stringify(`/upload/${text}`)} 226 free/cached `), `${text} in the access log:\n${log}`);
      assert.ok(log.includes(' STOR "/upload/?gnp.exe" 550 found:'), `the override mark is not written into the log:\n${log}`);
    } finally {
      c.close();
    }
  });

  test('the "download blocked" and "upload blocked" log lines carry the client once', async () => {
    await writeFile(join(vsftpd.root, 'once-eicar.txt'), eicarBytes(), { mode: 0o644 });
    const c = await loggedIn();
    try {
      assert.equal((await retr(c, 'once-eicar.txt')).code, 550);
      assert.equal((await stor(c, 'upload/once-eicar-up.txt', eicarBytes())).code, 550);
    } finally {
      c.close();
    }
    for (const [msg, name] of [
      ['ftp: download blocked', 'once-eicar.txt'],
      ['ftp: upload blocked', 'once-eicar-up.txt'],
    ] as const) {
      const lines = logged(msg, name);
      assert.equal(lines.length, 1, `${msg}: ${JSON.stringify(logLines.slice(-10))}`);
      assert.equal(lines[0]?.match(/"client":/g)?.length, 1, `"client" once: ${lines[0]}`);
      assert.equal((JSON.parse(lines[0] as string) as { client?: string }).client, '127.0.0.1');
    }
  });

  test('the access log and the blocked lines name the absolute path the doc-ACL saw (CWD into a directory with spaces, then a relative name)', async () => {
    const sub = join(vsftpd.root, 'dir with spaces');
    await mkdir(sub, { mode: 0o755 });
    await writeFile(join(sub, 'a b.txt'), 'clean\n', { mode: 0o644 });
    await writeFile(join(sub, 'e v.txt'), eicarBytes(), { mode: 0o644 });
    const c = await loggedIn();
    try {
      assert.equal((await c.command('CWD /dir with spaces')).code, 250);
      assert.equal((await retr(c, 'a b.txt')).code, 226);
      assert.equal((await retr(c, 'e v.txt')).code, 550);
      const list = await openData(await c.epsvPort());
      assert.equal((await c.command('LIST')).code, 150);
      assert.equal((await c.reply(30_000)).code, 226);
      await list.closed;
      assert.equal((await c.command('CWD ../upload')).code, 250);
      assert.equal((await stor(c, 'e v up.txt', eicarBytes())).code, 550);
    } finally {
      c.close();
    }
    const log = await accessLogWith(' STOR "/upload/e v up.txt" ');
    assert.match(log, / RETR "\/dir with spaces\/a b\.txt" 226 free(\/cached)? 6 /, log);
    assert.match(log, / RETR "\/dir with spaces\/e v\.txt" 550 found:/, log);
    assert.match(log, / LIST "\/dir with spaces" 226 /, log);
    assert.match(log, / STOR "\/upload\/e v up\.txt" 550 found:/, log);
    assert.equal(logged('ftp: download blocked', '/dir with spaces/e v.txt').length, 1, JSON.stringify(logLines.slice(-10)));
    assert.equal(logged('ftp: upload blocked', '/upload/e v up.txt').length, 1, JSON.stringify(logLines.slice(-10)));
  });
});
