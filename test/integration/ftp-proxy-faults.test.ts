import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { ftpProxySchema } from '../../src/config/ftp-schema.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { silentLogger } from '../../src/core/logging.js';
import type { Serving } from '../../src/main.js';
import { FtpProxyServer } from '../../src/protocols/ftp/server.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startVsftpd, type Vsftpd } from '../../tools/peers/vsftpd.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startFaultServer, type FaultServer } from '../helpers/fault-server.js';
import { FtpControl, openData, run } from '../helpers/ftp-control.js';

describe('FTP proxy: fixed upstream, limits, fail-closed engine errors (vsftpd, real clamd)', () => {
  let clamd: TestClamd;
  let vsftpd: Vsftpd;
  let avgate: Serving;
  let dir: string;
  let stateDir: string;
  let base: string;
  const big = randomBytes(2 * 1024 * 1024);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-ftpf-'));
    stateDir = await mkdtemp(join(tmpdir(), 'avgate-ftpf-state-'));
    clamd = await startTestClamd();
    vsftpd = await startVsftpd({ dir });
    await writeFile(join(vsftpd.root, 'small.txt'), 'small clean file\n', { mode: 0o644 });
    await writeFile(join(vsftpd.root, 'big.bin'), big, { mode: 0o644 });
    await writeFile(join(vsftpd.root, 'dead-clean.txt'), 'clean, but the engine is down\n', { mode: 0o644 });
    await writeFile(join(dir, 'big.bin'), big);
    await writeFile(join(dir, 'small.txt'), 'small clean upload\n');
    await writeFile(join(dir, 'eicar.com'), eicarBytes());
    avgate = await startAvgatePeer({
      stateDir,
      clamd,
      // An engine that cannot be reached: its verdicts are errors, and errors must block.
      extraEngines: ['dead:', '  type: clamd-net', '  options:', `    address: unix:${join(dir, 'no-such.sock')}`].join('\n'),
      ftpYaml: [
        `upstream: 127.0.0.1:${vsftpd.port}`,
        'max-object-size: 1MiB',
        'data-ports: 41000-41999',
        'max-connections: 3',
        'timeouts: {control-idle: 2s}',
        'doc-acl:',
        "  - {name: dead, match: {url: 'ftp://*/dead-*'}, antivirus: [dead]}",
        "  - {name: unscanned, match: {url: 'ftp://*/free-*'}, action: accept}",
        "  - {name: denied, match: {url: 'ftp://*/*.exe'}, action: deny}",
        "  - {name: blocked-dir, match: {url: 'ftp://*/upload/blocked-*'}, action: deny}",
      ].join('\n'),
    });
    base = `ftp://anonymous:x@127.0.0.1:${avgate.ftpProxyPort as number}`;
  });

  after(async () => {
    await avgate?.stop();
    await vsftpd?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });

  test('fixed upstream: the server greeting is passed on, USER is relayed as given', async () => {
    const c = await FtpControl.open(avgate.ftpProxyPort as number);
    try {
      const g = await c.reply();
      assert.equal(g.code, 220);
      assert.match(g.lines[0] as string, /vsFTPd/);
      assert.equal((await c.command('USER anonymous')).code, 230);
      assert.equal((await c.command('PWD')).code, 257);
    } finally {
      c.close();
    }
    const r = await run('curl', ['-sS', '--max-time', '30', `${base}/small.txt`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'small clean file\n');
    // A clean upload the server refuses (its root is not writable): the server's own answer is passed on.
    const refused = await run('curl', ['-v', '--max-time', '30', '-T', join(dir, 'small.txt'), `${base}/not-here.txt`]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /< 553 /);
  });

  test('engine down: download and upload are refused with 451 (fail closed), nothing written on the server', async () => {
    const c = await FtpControl.open(avgate.ftpProxyPort as number);
    try {
      await c.reply();
      await c.command('USER anonymous');
      const dataPort = await c.epsvPort();
      assert.ok(dataPort >= 41000 && dataPort <= 41999, `passive port ${dataPort} from data-ports`);
      const data = await openData(dataPort);
      const r = await c.command('RETR dead-clean.txt');
      // RETR: 150 from the server first, then the proxy's verdict.
      const final = r.code === 150 ? await c.reply() : r;
      assert.equal(final.code, 451, final.lines.join(' '));
      assert.match(final.lines[0] as string, /could not be reached/);
      assert.equal(data.received().length, 0, 'no byte of an unscanned file');
      data.socket.destroy();
    } finally {
      c.close();
    }
    const up = await run('curl', ['-v', '--max-time', '30', '-T', join(dir, 'small.txt'), `${base}/upload/dead-up.txt`]);
    assert.notEqual(up.code, 0);
    assert.match(up.stderr, /< 451 Upload refused/);
    assert.ok(!(await readdir(vsftpd.uploadDir)).includes('dead-up.txt'));
  });

  test('doc-acl: accept passes unscanned (EICAR upload goes through), deny answers 550', async () => {
    const ok = await run('curl', ['-sS', '--max-time', '30', '-T', join(dir, 'eicar.com'), `${base}/upload/free-eicar.com`]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok((await readdir(vsftpd.uploadDir)).includes('free-eicar.com'), 'a rule with action accept is not scanned');
    const denied = await run('curl', ['-v', '--max-time', '30', '-T', join(dir, 'small.txt'), `${base}/upload/x.exe`]);
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /< 550 STOR denied by policy \(denied\)/);
    assert.ok(!(await readdir(vsftpd.uploadDir)).includes('x.exe'));
  });

  test('doc-acl paths are absolute and normalised: CWD then STOR, and dot-dot tricks, match /upload/blocked-*', async () => {
    const viaCwd = await run('curl', ['-v', '--max-time', '30', '-T', join(dir, 'small.txt'), `${base}/upload/blocked-1.txt`]);
    assert.match(viaCwd.stderr, /> CWD upload/);
    assert.match(viaCwd.stderr, /< 550 STOR denied by policy \(blocked-dir\)/);
    const c = await FtpControl.open(avgate.ftpProxyPort as number);
    try {
      await c.reply();
      assert.equal((await c.command('USER anonymous')).code, 230);
      assert.equal((await c.command('PASV')).code, 227);
      const r = await c.command('RETR /nowhere/../upload/./blocked-2.txt');
      assert.equal(r.code, 550, r.lines.join(' '));
      assert.match(r.lines[0] as string, /blocked-dir/);
    } finally {
      c.close();
    }
    assert.ok(!(await readdir(vsftpd.uploadDir)).some((n) => n.startsWith('blocked-')));
  });

  test('max-object-size: a larger download and a larger upload are aborted with 552', async () => {
    const down = await run('curl', ['-v', '--max-time', '30', '-o', join(dir, 'big.out'), `${base}/big.bin`]);
    assert.notEqual(down.code, 0);
    const up = await run('curl', ['-v', '--max-time', '30', '-T', join(dir, 'big.bin'), `${base}/upload/big-up.bin`]);
    assert.notEqual(up.code, 0);
    assert.match(up.stderr, /< 552 Upload refused: larger than max-object-size/);
    assert.ok(!(await readdir(vsftpd.uploadDir)).includes('big-up.bin'));
    const log = avgate.ftp?.counters.byStatus ?? {};
    assert.ok((log['552'] ?? 0) >= 2, JSON.stringify(log));
  });

  test('max-connections: one client too many gets 421; a silent client gets 421 after control-idle', async () => {
    const port = avgate.ftpProxyPort as number;
    const held = await Promise.all([0, 1, 2].map(() => FtpControl.open(port)));
    try {
      for (const h of held) assert.equal((await h.reply()).code, 220);
      const extra = await FtpControl.open(port);
      assert.equal((await extra.reply()).code, 421);
      extra.close();
      const idle = await held[0]?.reply(10_000);
      assert.equal(idle?.code, 421);
      assert.match(idle?.lines[0] ?? '', /Idle timeout/);
    } finally {
      for (const h of held) h.close();
    }
  });
});

describe('FTP proxy against broken servers and garbage clients (fault server)', () => {
  let proxy: FtpProxyServer;
  let port: number;
  let stateDir: string;
  const faults: FaultServer[] = [];

  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'avgate-ftpz-'));
    const config = ftpProxySchema.parse({ listen: '127.0.0.1:0', 'allowed-upstreams': ['127.0.0.1:*'], 'max-reply-lines': 50, 'max-line-length': 512, timeouts: { reply: '2s' } });
    proxy = new FtpProxyServer(config, {
      stateDir,
      scannerFor: () => {
        throw new Error('no transfers in these tests');
      },
      log: silentLogger(),
    });
    port = (await proxy.listen()).port;
  });

  after(async () => {
    await proxy.close(0);
    for (const f of faults) await f.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  const fault = async (behave: (s: Socket) => void) => {
    const f = await startFaultServer(behave);
    faults.push(f);
    return f;
  };

  const loginReply = async (serverPort: number) => {
    const c = await FtpControl.open(port);
    try {
      assert.equal((await c.reply()).code, 220);
      return await c.command(`USER u@127.0.0.1:${serverPort}`);
    } finally {
      c.close();
    }
  };

  test('a server that greets with garbage, never ends a multi-line reply, sends an overlong line, stays silent, or closes: 421, and the proxy goes on', async () => {
    const cases: Array<(s: Socket) => void> = [
      (s) => s.write('hello there\r\n'),
      (s) => s.write(`220-welcome\r\n${' more\r\n'.repeat(100)}`),
      (s) => s.write(`220 ${'x'.repeat(2000)}\r\n`),
      () => undefined,
      (s) => s.end(),
      (s) => s.end('220 hi\r\n'),
    ];
    for (const [i, behave] of cases.entries()) {
      const f = await fault(behave);
      const r = await loginReply(f.port);
      assert.equal(r.code, 421, `case ${i}: ${r.lines.join(' ')}`);
    }
    const refused = await fault((s) => s.end('421 go away\r\n'));
    assert.equal((await loginReply(refused.port)).code, 421, 'the server refusing the session is passed on');
  });

  test('a server whose multi-line replies are well-formed is relayed line by line', async () => {
    const f = await fault((s) => {
      s.write('220 ok\r\n');
      s.on('data', (d: Buffer) => {
        const line = d.toString('latin1');
        if (line.startsWith('USER')) s.write('331-first\r\n second\r\n331 send PASS\r\n');
        else if (line.startsWith('HELP')) s.write('214-a\r\n214-b\r\n214 end\r\n');
      });
    });
    const c = await FtpControl.open(port);
    try {
      await c.reply();
      assert.deepEqual(await c.command(`USER u@127.0.0.1:${f.port}`), { code: 331, lines: ['331-first', ' second', '331 send PASS'] });
      assert.deepEqual(await c.command('HELP'), { code: 214, lines: ['214-a', '214-b', '214 end'] });
    } finally {
      c.close();
    }
  });

  test('property: any garbage lines before login get exactly one 2xx/5xx reply each, never a crash', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.string({ unit: 'binary-ascii', maxLength: 80 }).map((s) => s.replace(/[\r\n]/g, ' ')), { minLength: 1, maxLength: 12 }), async (lines) => {
        const c = await FtpControl.open(port);
        try {
          await c.reply();
          for (const l of lines) {
            if (/^\s*(QUIT|USER)\b/i.test(l)) continue;
            c.send(`${l}\r\n`);
            const got = await c.reply();
            assert.ok([200, 211, 215, 500, 501, 502, 503, 530].includes(got.code), `${JSON.stringify(l)} → ${got.lines.join(' ')}`);
          }
        } finally {
          c.close();
        }
      }),
      { numRuns: 25 },
    );
    // Still serving.
    const c = await FtpControl.open(port);
    assert.equal((await c.reply()).code, 220);
    c.close();
  });
});
