import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startVsftpd, type Vsftpd } from '../../tools/peers/vsftpd.js';
import { startTestClamd, type TestClamd, delayEngineYaml } from '../helpers/clamd.js';
import { FtpControl, openData, run } from '../helpers/ftp-control.js';
import { selfSignedCert } from '../helpers/tls.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const CLAM_ZIP = '/usr/share/clamav-testfiles/clam.zip';

describe('FTP proxy against vsftpd (curl, lftp, raw control)', () => {
  let clamd: TestClamd;
  let vsftpd: Vsftpd;
  let avgate: Serving;
  let dir: string;
  let stateDir: string;
  let proxyPort: number;
  /** USER for the proxy: anonymous@127.0.0.1:PORT (URL-encoded for curl). */
  let userAtHost: string;
  let curlBase: string;
  /** The delay engine: clamd's verdicts, 3 s late (test/fixtures/ftp-delay-engine.ts). */
  let delayEngine: string;
  const clean = randomBytes(3 * 1024 * 1024 + 17);
  const eicarText = Buffer.concat([Buffer.from('some text before\n'), eicarBytes(), Buffer.from('\nand after\n')]);
  const bigInfected = Buffer.concat([randomBytes(6 * 1024 * 1024), eicarBytes(), randomBytes(2 * 1024 * 1024)]);
  const bigClean = randomBytes(8 * 1024 * 1024 + 5);
  const heldInfected = Buffer.concat([randomBytes(1024 * 1024), eicarBytes(), randomBytes(1024 * 1024)]);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-ftp-'));
    stateDir = await mkdtemp(join(tmpdir(), 'avgate-ftp-state-'));
    clamd = await startTestClamd();
    vsftpd = await startVsftpd({ dir });
    await writeFile(join(vsftpd.root, 'clean.bin'), clean, { mode: 0o644 });
    await writeFile(join(vsftpd.root, 'eicar.txt'), eicarText, { mode: 0o644 });
    await copyFile(CLAM_ZIP, join(vsftpd.root, 'clam.zip'));
    await import('node:fs/promises').then((fs) => fs.chmod(join(vsftpd.root, 'clam.zip'), 0o644));
    await writeFile(join(dir, 'clean.bin'), clean);
    await writeFile(join(dir, 'eicar.txt'), eicarText);
    await writeFile(join(vsftpd.root, 'big-infected.bin'), bigInfected, { mode: 0o644 });
    await writeFile(join(vsftpd.root, 'big-clean.bin'), bigClean, { mode: 0o644 });
    await writeFile(join(vsftpd.root, 'held-infected.bin'), heldInfected, { mode: 0o644 });
    await writeFile(join(vsftpd.root, 'held-clean.bin'), clean.subarray(0, 100_000), { mode: 0o644 });
    await writeFile(join(vsftpd.root, 'lines.txt'), 'one\ntwo\n', { mode: 0o644 });
    delayEngine = delayEngineYaml(clamd);
    avgate = await startAvgatePeer({
      stateDir,
      clamd,
      extraEngines: delayEngine,
      ftpYaml: [
        "allowed-upstreams: ['127.0.0.1:*']",
        'access-log: ftp-access.log',
        'quarantine: [found]',
        'doc-acl:',
        '  - name: trickled',
        "    match: {url: 'ftp://*/big-*', methods: [RETR]}",
        '    antivirus: [delay]',
        '    trickle: {interval: 100ms, chunk: 256KiB, limit: 90%, keep-back: 1MiB}',
        '  - name: held',
        "    match: {url: 'ftp://*/held-*'}",
        '    antivirus: [delay]',
        '    trickle: null',
        '  - name: unscanned',
        "    match: {url: 'ftp://*/upload/unscanned-*', methods: [RETR]}",
        '    action: accept',
        '  - name: default',
      ].join('\n'),
    });
    proxyPort = avgate.ftpProxyPort as number;
    userAtHost = `anonymous@127.0.0.1:${vsftpd.port}`;
    curlBase = `ftp://${encodeURIComponent(userAtHost)}:x@127.0.0.1:${proxyPort}`;
  });

  after(async () => {
    await avgate?.stop();
    await vsftpd?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });

  const uploaded = async () => (await readdir(vsftpd.uploadDir)).sort();

  /** A raw control connection through the proxy, logged in to vsftpd (in binary mode unless `binary` is false). */
  const loggedIn = async (binary = true): Promise<FtpControl> => {
    const c = await FtpControl.open(proxyPort);
    await c.reply();
    assert.equal((await c.command(`USER ${userAtHost}`)).code, 230);
    if (binary) assert.equal((await c.command('TYPE I')).code, 200);
    return c;
  };

  for (const mode of ['passive', 'active'] as const) {
    const modeArgs = mode === 'active' ? ['-P', '127.0.0.1'] : [];

    test(`curl ${mode}: RETR of a clean file is byte-identical`, async () => {
      const out = join(dir, `got-${mode}.bin`);
      const r = await run('curl', ['-sS', '--max-time', '60', ...modeArgs, '-o', out, `${curlBase}/clean.bin`]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(sha256(await readFile(out)), sha256(clean));
    });

    test(`curl ${mode}: RETR of EICAR and of clam.zip is refused, no complete file reaches the client`, async () => {
      for (const [name, size] of [
        ['eicar.txt', eicarText.length],
        ['clam.zip', (await readFile(CLAM_ZIP)).length],
      ] as const) {
        const out = join(dir, `got-${mode}-${name}`);
        const r = await run('curl', ['-sS', '--max-time', '60', ...modeArgs, '-o', out, `${curlBase}/${name}`]);
        assert.notEqual(r.code, 0, `${name}: curl must fail`);
        const got = await readFile(out).catch(() => Buffer.alloc(0));
        assert.ok(got.length < size, `${name}: the client must not hold the whole file (${got.length} of ${size})`);
      }
    });

    test(`curl ${mode}: STOR of a clean file arrives byte-identical on the server`, async () => {
      const name = `clean-${mode}.bin`;
      const r = await run('curl', ['-sS', '--max-time', '60', ...modeArgs, '-T', join(dir, 'clean.bin'), `${curlBase}/upload/${name}`]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(sha256(await readFile(join(vsftpd.uploadDir, name))), sha256(clean));
    });

    test(`curl ${mode}: STOR of EICAR and of clam.zip gets 550 and nothing is written on the server`, async () => {
      for (const [src, name] of [
        [join(dir, 'eicar.txt'), `eicar-${mode}.txt`],
        [CLAM_ZIP, `clam-${mode}.zip`],
      ] as const) {
        const r = await run('curl', ['-v', '--max-time', '60', ...modeArgs, '-T', src, `${curlBase}/upload/${name}`]);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /< 550 Upload refused: infected: \S+/, r.stderr.slice(-1500));
        assert.ok(!(await uploaded()).includes(name), `${name} must not exist on the server`);
      }
    });
  }

  test('curl: REST (-C) resumes a download at the offset; LIST and NLST work', async () => {
    const out = join(dir, 'resumed.bin');
    await writeFile(out, clean.subarray(0, 1_000_000));
    const r = await run('curl', ['-sS', '--max-time', '60', '-C', '-', '-o', out, `${curlBase}/clean.bin`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(sha256(await readFile(out)), sha256(clean));
    const list = await run('curl', ['-sS', '--max-time', '30', `${curlBase}/`]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^-.*\bclean\.bin$/m, 'LIST gives long lines');
    const nlst = await run('curl', ['-sS', '--max-time', '30', '--list-only', `${curlBase}/`]);
    assert.equal(nlst.code, 0, nlst.stderr);
    assert.deepEqual(nlst.stdout.split(/\r?\n/).filter(Boolean).sort(), ['big-clean.bin', 'big-infected.bin', 'clam.zip', 'clean.bin', 'eicar.txt', 'held-clean.bin', 'held-infected.bin', 'lines.txt', 'upload']);
  });

  test('lftp: get (passive and active) and put of clean files, ls; an infected get and put fail', async () => {
    const lftp = (script: string) =>
      run('lftp', ['-u', `${userAtHost},x`, '-p', String(proxyPort), '-e', `set ftp:ssl-allow no; set net:max-retries 1; set net:timeout 20; ${script}; bye`, '127.0.0.1'], 90_000);
    const out = join(dir, 'lftp-got.bin');
    const got = await lftp(`get clean.bin -o ${out}`);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(sha256(await readFile(out)), sha256(clean));
    const outActive = join(dir, 'lftp-got-active.bin');
    const active = await lftp(`set ftp:passive-mode off; get clean.bin -o ${outActive}`);
    assert.equal(active.code, 0, active.stderr);
    assert.equal(sha256(await readFile(outActive)), sha256(clean), 'lftp in active mode (PORT)');
    const put = await lftp(`put ${join(dir, 'clean.bin')} -o upload/lftp.bin`);
    assert.equal(put.code, 0, put.stderr);
    assert.equal(sha256(await readFile(join(vsftpd.uploadDir, 'lftp.bin'))), sha256(clean));
    const ls = await lftp('cls -1');
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /clean\.bin/);
    const bad = await lftp(`get eicar.txt -o ${join(dir, 'lftp-eicar.txt')}`);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /550|451|infected/i, bad.stderr);
    const badPut = await lftp(`put ${join(dir, 'eicar.txt')} -o upload/lftp-eicar.txt`);
    assert.notEqual(badPut.code, 0);
    assert.ok(!(await uploaded()).includes('lftp-eicar.txt'));
  });

  test('bounce attempts (PORT/EPRT to another address or a privileged port) get 501; malformed commands 500/501; the session goes on', async () => {
    const c = await FtpControl.open(proxyPort);
    try {
      assert.equal((await c.reply()).code, 220);
      assert.equal((await c.command('NOOP')).code, 200);
      assert.equal((await c.command('LIST')).code, 530, 'nothing but login before USER user@host');
      assert.equal((await c.command('USER anonymous@nowhere.invalid:21')).code, 530, 'not in allowed-upstreams');
      assert.equal((await c.command(`USER ${userAtHost}`)).code, 230);
      for (const line of ['PORT 127,0,0,2,100,100', 'PORT 127,0,0,1,0,25', 'EPRT |1|127.0.0.2|40000|', 'EPRT |1|127.0.0.1|21|', 'PORT 10,0,0,1,100,100']) {
        const r = await c.command(line);
        assert.equal(r.code, 501, `${line}: ${r.lines.join(' ')}`);
      }
      for (const line of ['PORT 1,2,3', 'PORT 300,0,0,1,100,100', 'EPRT |9|x|1|', 'EPRT garbage', 'REST abc', 'EPSV 7']) {
        assert.equal((await c.command(line)).code, 501, line);
      }
      assert.equal((await c.command('RETR clean.bin')).code, 425, 'a transfer without PORT/PASV first');
      assert.equal((await c.command('\x01\x02 zz')).code, 500);
      assert.equal((await c.command('X'.repeat(10_000))).code, 500, 'line over max-line-length');
      assert.equal((await c.command('')).code, 500);
      assert.equal((await c.command('MODE B')).code, 504);
      assert.equal((await c.command('AUTH TLS')).code, 502);
      const p = await c.command('PASV');
      assert.equal(p.code, 227);
      assert.match(p.lines[0] as string, /\(127,0,0,1,\d+,\d+\)/);
      assert.equal((await c.command('NOOP')).code, 200, 'still alive');
      assert.equal((await c.command('QUIT')).code, 221);
    } finally {
      c.close();
    }
  });

  test('passive data port theft: a connection from another address is closed, the client\'s own one gets the file', async () => {
    const c = await loggedIn();
    try {
      const p = await c.command('PASV');
      const m = /\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)/.exec(p.lines[0] as string);
      assert.ok(m);
      const port = Number(m[5]) * 256 + Number(m[6]);
      const thief = await openData(port, '127.0.0.2');
      await thief.closed;
      assert.equal(thief.received().length, 0, 'the other address gets no byte and is closed');
      const data = await openData(port);
      assert.equal((await c.command('RETR clean.bin')).code, 150);
      assert.equal((await c.reply(30_000)).code, 226);
      await data.closed;
      assert.equal(sha256(data.received()), sha256(clean));
    } finally {
      c.close();
    }
  });

  test('TYPE A and TYPE I: the server converts line ends in ASCII mode, the proxy passes bytes as they come', async () => {
    const c = await loggedIn(false);
    try {
      const fetch = async () => {
        const data = await openData(await c.epsvPort());
        assert.equal((await c.command('RETR lines.txt')).code, 150);
        assert.equal((await c.reply(30_000)).code, 226);
        await data.closed;
        return data.received().toString('latin1');
      };
      assert.equal((await c.command('TYPE A')).code, 200);
      assert.equal(await fetch(), 'one\r\ntwo\r\n');
      assert.equal((await c.command('TYPE I')).code, 200);
      assert.equal(await fetch(), 'one\ntwo\n');
    } finally {
      c.close();
    }
  });

  test('trickle (doc-acl rule with a slow engine): an infected download is cut off after part of it was sent, 550 with the virus name', async (t) => {
    const out = join(dir, 'big-infected.out');
    const r = await run('curl', ['-v', '--max-time', '60', '-o', out, `${curlBase}/big-infected.bin`]);
    assert.notEqual(r.code, 0, 'curl must fail');
    const got = await readFile(out).catch(() => Buffer.alloc(0));
    assert.ok(got.length > 0, 'bytes were trickled while the scan ran');
    assert.ok(got.length <= bigInfected.length - 1024 * 1024, `the last keep-back bytes never left (${got.length} of ${bigInfected.length})`);
    assert.deepEqual(got, bigInfected.subarray(0, got.length), 'what was sent is the start of the file');
    await new Promise((resolve) => setTimeout(resolve, 200));
    const log = await readFile(join(stateDir, 'ftp-access.log'), 'utf8');
    const m = / RETR "\/big-infected\.bin" 550 found:Avgate\.Test\.EICAR\S* (\d+) /.exec(log);
    assert.ok(m, log);
    assert.equal(Number(m[1]), got.length, 'the access log counts the bytes the client got');
    t.diagnostic(`trickled ${got.length} of ${bigInfected.length} bytes before the verdict`);
  });

  test('trickle: a clean large file arrives whole through the slow engine', async () => {
    const out = join(dir, 'big-clean.out');
    const r = await run('curl', ['-sS', '--max-time', '60', '-P', '127.0.0.1', '-o', out, `${curlBase}/big-clean.bin`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(sha256(await readFile(out)), sha256(bigClean));
  });

  test('held (rule with trickle null): an infected download sends no byte at all and gets 550', async () => {
    const c = await loggedIn();
    try {
      const data = await openData(await c.epsvPort());
      assert.equal((await c.command('RETR held-infected.bin')).code, 150);
      const final = await c.reply(30_000);
      await data.closed;
      assert.equal(final.code, 550);
      assert.match(final.lines[0] as string, /^550 Transfer refused: infected: \S+/);
      assert.equal(data.received().length, 0, 'no byte of a held file before the verdict');
      assert.equal((await c.command('NOOP')).code, 200, 'the session goes on');
    } finally {
      c.close();
    }
  });

  test('ABOR during a held transfer: 426 then 226, no byte sent; a command sent during a transfer is answered after it', async () => {
    const c = await loggedIn();
    try {
      let d = await openData(await c.epsvPort());
      assert.equal((await c.command('RETR held-clean.bin')).code, 150);
      c.send('\xff\xf4\xff\xf2ABOR\r\n');
      assert.equal((await c.reply(30_000)).code, 426);
      assert.equal((await c.reply()).code, 226);
      await d.closed;
      assert.equal(d.received().length, 0);
      d = await openData(await c.epsvPort());
      assert.equal((await c.command('RETR held-clean.bin')).code, 150);
      c.send('NOOP\r\n');
      assert.equal((await c.reply(30_000)).code, 226, 'the transfer ends first');
      assert.equal((await c.reply()).code, 200, 'then the NOOP sent meanwhile is answered');
      await d.closed;
      assert.deepEqual(d.received(), clean.subarray(0, 100_000));
    } finally {
      c.close();
    }
  });

  /** Whether vsftpd's protocol log shows the command `line` coming from the proxy. */
  const serverSaw = async (line: string): Promise<boolean> => (await readFile(join(dir, 'vsftpd.log'), 'utf8')).includes(`"${line}"`);

  test('REST 1 + RETR of an EICAR file: the server sends the whole file, it is scanned whole, 550 with no byte sent', async () => {
    // Just the EICAR string: its tail from byte 1 on is no longer EICAR, so only a scan of the whole finds it.
    await writeFile(join(vsftpd.root, 'rest-eicar.com'), eicarBytes(), { mode: 0o644 });
    const c = await loggedIn();
    try {
      const data = await openData(await c.epsvPort());
      assert.equal((await c.command('REST 1')).code, 350);
      assert.equal((await c.command('RETR rest-eicar.com')).code, 150);
      const final = await c.reply(30_000);
      await data.closed;
      assert.equal(final.code, 550, final.lines.join(' '));
      assert.match(final.lines[0] as string, /^550 Transfer refused: infected: \S+/);
      assert.equal(data.received().length, 0, 'no byte of the infected file');
      assert.equal(await serverSaw('REST 1'), false, 'REST is not passed on for a scanned download');
      assert.equal((await c.command('NOOP')).code, 200, 'the session goes on');
    } finally {
      c.close();
    }
  });

  test('REST n + RETR of a clean file: exactly the bytes from n on, then 226', async () => {
    const c = await loggedIn();
    const offset = 1_234_567;
    try {
      const data = await openData(await c.epsvPort());
      assert.equal((await c.command(`REST ${offset}`)).code, 350);
      assert.equal((await c.command('RETR clean.bin')).code, 150);
      assert.equal((await c.reply(30_000)).code, 226);
      await data.closed;
      assert.equal(sha256(data.received()), sha256(clean.subarray(offset)));
      assert.equal(await serverSaw(`REST ${offset}`), false);
    } finally {
      c.close();
    }
    await new Promise((r) => setTimeout(r, 200));
    const log = await readFile(join(stateDir, 'ftp-access.log'), 'utf8');
    assert.match(log, new RegExp(` RETR "/clean\\.bin" 226 free(/cached)? ${clean.length - offset} `), 'the access log counts what the client got');
  });

  test('resuming a download cut off after trickling (curl -C -) yields no byte past the trickle cap: the client never holds the whole infected file', async () => {
    // A file of its own: the verdict cache knows big-infected.bin and would block it at once.
    const infected = Buffer.concat([randomBytes(6 * 1024 * 1024), eicarBytes(), randomBytes(2 * 1024 * 1024)]);
    await writeFile(join(vsftpd.root, 'big-resume-infected.bin'), infected, { mode: 0o644 });
    const out = join(dir, 'big-infected-resumed.out');
    const first = await run('curl', ['-sS', '--max-time', '60', '-o', out, `${curlBase}/big-resume-infected.bin`]);
    assert.notEqual(first.code, 0, 'curl must fail');
    const held = (await readFile(out).catch(() => Buffer.alloc(0))).length;
    assert.ok(held > 0, 'bytes were trickled while the scan ran');
    const again = await run('curl', ['-v', '--max-time', '60', '-C', '-', '-o', out, `${curlBase}/big-resume-infected.bin`]);
    assert.notEqual(again.code, 0, 'the resumed download fails too');
    assert.match(again.stderr, new RegExp(`> REST ${held}\\b`), 'curl resumed at what it held');
    const got = await readFile(out);
    assert.ok(got.length <= infected.length - 1024 * 1024, `never past keep-back of the whole file (${held} then ${got.length} of ${infected.length})`);
    assert.deepEqual(got, infected.subarray(0, got.length), 'what the client holds is the start of the file');
    // curl gives up when the data connection ends short, before the 550: the access log has it.
    await new Promise((r) => setTimeout(r, 200));
    const log = await readFile(join(stateDir, 'ftp-access.log'), 'utf8');
    const resumed = [...log.matchAll(/ RETR "\/big-resume-infected\.bin" (\d+) (\S+) (\d+) /g)];
    assert.equal(resumed.length, 2, log);
    const [, status, verdict, bytes] = resumed[1] as RegExpMatchArray;
    assert.deepEqual([status, verdict?.replace(/:.*/, ''), Number(bytes)], ['550', 'found', got.length - held], 'the resumed transfer was blocked on the whole file');
  });

  test('an unscanned download (doc-acl accept) still passes REST to the server', async () => {
    const name = 'unscanned-clean.bin';
    await writeFile(join(vsftpd.uploadDir, name), clean.subarray(0, 50_000), { mode: 0o644 });
    const c = await loggedIn();
    try {
      const data = await openData(await c.epsvPort());
      assert.equal((await c.command('REST 4321')).code, 350);
      assert.equal((await c.command(`RETR upload/${name}`)).code, 150);
      assert.equal((await c.reply(30_000)).code, 226);
      await data.closed;
      assert.deepEqual(data.received(), clean.subarray(4321, 50_000));
      assert.equal(await serverSaw('REST 4321'), true, 'REST went to the server');
    } finally {
      c.close();
    }
  });

  test('partial uploads (APPE, REST n + STOR) are refused, so a file split over two uploads cannot pass unscanned; REST 0 + STOR is whole', async () => {
    const c = await loggedIn();
    try {
      // The second half of EICAR alone is clean: appended to the first half on the server it is not.
      await openData(await c.epsvPort());
      const appe = await c.command('APPE upload/split.com');
      assert.equal(appe.code, 550, appe.lines.join(' '));
      assert.match(appe.lines[0] as string, /APPE refused/);
      await openData(await c.epsvPort());
      assert.equal((await c.command('REST 34')).code, 350);
      const stor = await c.command('STOR upload/split.com');
      assert.equal(stor.code, 550, stor.lines.join(' '));
      assert.equal(await serverSaw('APPE upload/split.com'), false, 'the server never heard of the append');
      assert.equal(await serverSaw('REST 34'), false);
      assert.equal((await uploaded()).includes('split.com'), false);
      // REST 0 is a whole upload.
      const data = await openData(await c.epsvPort());
      assert.equal((await c.command('REST 0')).code, 350);
      assert.equal((await c.command('STOR upload/rest0.bin')).code, 150);
      data.socket.end(clean.subarray(0, 10_000));
      assert.equal((await c.reply(30_000)).code, 226);
      assert.deepEqual(await readFile(join(vsftpd.uploadDir, 'rest0.bin')), clean.subarray(0, 10_000));
    } finally {
      c.close();
    }
  });

  test('counters, the access log and the quarantine record transfers and verdicts', async () => {
    const ftp = avgate.ftp;
    assert.ok(ftp);
    assert.ok(ftp.counters.byVerdict.found >= 4, JSON.stringify(ftp.counters));
    assert.ok(ftp.counters.byVerdict.free >= 4, JSON.stringify(ftp.counters));
    // The access log is written asynchronously.
    await new Promise((r) => setTimeout(r, 200));
    const log = await readFile(join(stateDir, 'ftp-access.log'), 'utf8');
    assert.match(log, / STOR "\/upload\/eicar-passive\.txt" 550 found:Avgate\.Test\.EICAR\S* \d+ \d+$/m);
    assert.match(log, / RETR "\/clean\.bin" 226 free(\/cached)? 3145745 \d+$/m);
    const kept = await avgate.quarantine.list({ source: 'ftp' });
    const up = kept.find((r) => r.url === 'ftp://127.0.0.1/upload/eicar-passive.txt');
    assert.ok(up, JSON.stringify(kept.map((r) => r.url)));
    assert.equal(up.action, 'block-upload');
    assert.match(up.note ?? '', /^client 127\.0\.0\.1\nuser \S+$/m, 'who sent it');
    assert.match(up.virusNames[0] ?? '', /\S/);
    assert.ok(kept.some((r) => r.url === 'ftp://127.0.0.1/eicar.txt' && r.action === 'block'), 'blocked downloads are kept too');
    assert.equal(ftp.counters.quarantined, kept.length);
    const stats = avgate.stats;
    assert.ok(stats);
    await stats.flush();
    const bySource = (await stats.statusesBySource({ from: 0, to: Date.now() + 3_600_000 })).filter((r) => r.source === 'ftp');
    assert.ok(bySource.some((r) => r.status === 'found' && r.count >= 4), JSON.stringify(bySource));
    assert.ok(bySource.some((r) => r.status === 'free'), 'statistics carry the origin ftp');
    const left = await readdir(join(stateDir, 'spool')).catch(() => [] as string[]);
    assert.deepEqual(left, [], 'every spool file of every transfer was removed');
  });
  describe('FTPS towards the clients (ftp-proxy.tls: AUTH TLS, PBSZ, PROT P)', () => {
    const peers: Serving[] = [];
    let tlsPort: number;
    let requiredPort: number;
    const base = (port: number) => `ftp://${encodeURIComponent(userAtHost)}:x@127.0.0.1:${port}`;

    before(async () => {
      const { cert, key } = await selfSignedCert(dir);
      for (const required of [false, true]) {
        const peer = await startAvgatePeer({
          stateDir: await mkdtemp(join(dir, 'ftps-state-')),
          clamd,
          extraEngines: delayEngine,
          ftpYaml: [
            "allowed-upstreams: ['127.0.0.1:*']",
            'tls:',
            `  cert: ${cert}`,
            `  key: ${key}`,
            `  required: ${required}`,
            'doc-acl:',
            '  - name: trickled',
            "    match: {url: 'ftp://*/big-*', methods: [RETR]}",
            '    antivirus: [delay]',
            '    trickle: {interval: 100ms, chunk: 256KiB, limit: 90%, keep-back: 1MiB}',
            '  - name: default',
          ].join('\n'),
        });
        peers.push(peer);
        if (required) requiredPort = peer.ftpProxyPort as number;
        else tlsPort = peer.ftpProxyPort as number;
      }
    });
    after(async () => {
      for (const p of peers) await p.stop();
    });

    // curl only in passive mode: Debian's curl 7.88 never starts TLS on an active data connection
    // (curl issue #10666, a regression of 7.87/7.88); lftp covers active mode below.
    for (const mode of ['passive'] as const) {
      test(`curl --ssl-reqd ${mode}: control and data in TLS; clean RETR and STOR byte-identical, EICAR refused both ways`, async () => {
        const tls = ['-sS', '--max-time', '60', '--ssl-reqd', '-k'];
        const out = join(dir, `ftps-${mode}.bin`);
        const r = await run('curl', [...tls, '-o', out, `${base(tlsPort)}/clean.bin`]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(sha256(await readFile(out)), sha256(clean));
        const badOut = join(dir, `ftps-${mode}-eicar.txt`);
        assert.notEqual((await run('curl', [...tls, '-o', badOut, `${base(tlsPort)}/eicar.txt`])).code, 0);
        assert.ok((await readFile(badOut).catch(() => Buffer.alloc(0))).length < eicarText.length, 'the client never holds the whole infected file');
        const name = `ftps-${mode}.bin`;
        assert.equal((await run('curl', [...tls, '-T', join(dir, 'clean.bin'), `${base(tlsPort)}/upload/${name}`])).code, 0);
        assert.equal(sha256(await readFile(join(vsftpd.uploadDir, name))), sha256(clean));
        const bad = await run('curl', [...tls.filter((a) => a !== '-sS'), '-v', '-T', join(dir, 'eicar.txt'), `${base(tlsPort)}/upload/ftps-${mode}-eicar.txt`]);
        assert.notEqual(bad.code, 0);
        assert.ok(!(await uploaded()).includes(`ftps-${mode}-eicar.txt`));
      });
    }

    test('trickle over FTPS: an infected download is cut off after part of it was sent (the TLS data connection reset), a clean one arrives whole', async () => {
      const out = join(dir, 'ftps-big-infected.out');
      const r = await run('curl', ['-sS', '--max-time', '60', '--ssl-reqd', '-k', '-o', out, `${base(tlsPort)}/big-infected.bin`]);
      assert.notEqual(r.code, 0, 'curl must fail');
      const got = await readFile(out).catch(() => Buffer.alloc(0));
      assert.ok(got.length > 0, 'bytes were trickled while the scan ran');
      assert.ok(got.length <= bigInfected.length - 1024 * 1024, `the last keep-back bytes never left (${got.length} of ${bigInfected.length})`);
      assert.deepEqual(got, bigInfected.subarray(0, got.length));
      const cleanOut = join(dir, 'ftps-big-clean.out');
      const ok = await run('curl', ['-sS', '--max-time', '60', '--ssl-reqd', '-k', '-o', cleanOut, `${base(tlsPort)}/big-clean.bin`]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(sha256(await readFile(cleanOut)), sha256(bigClean));
    });

    test('lftp with ftp:ssl-force and protected data: get (passive and active) and put of clean files; an infected get fails', async () => {
      const lftp = (script: string) =>
        run('lftp', ['-u', `${userAtHost},x`, '-p', String(tlsPort), '-e', `set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; set net:max-retries 1; set net:timeout 20; ${script}; bye`, '127.0.0.1'], 90_000);
      const out = join(dir, 'lftp-ftps.bin');
      const outActive = join(dir, 'lftp-ftps-active.bin');
      const r = await lftp(`get clean.bin -o ${out}; set ftp:passive-mode off; get clean.bin -o ${outActive}; put ${join(dir, 'clean.bin')} -o upload/lftp-ftps.bin`);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(sha256(await readFile(out)), sha256(clean));
      assert.equal(sha256(await readFile(outActive)), sha256(clean), 'active mode: the proxy connects and is the TLS server');
      assert.equal(sha256(await readFile(join(vsftpd.uploadDir, 'lftp-ftps.bin'))), sha256(clean));
      const bad = await lftp(`set ftp:passive-mode off; get eicar.txt -o ${join(dir, 'lftp-ftps-eicar.txt')}`);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /550|infected/i, bad.stderr);
    });

    test('raw control: FEAT offers AUTH TLS; PBSZ/PROT need TLS first; a USER sent in clear behind AUTH TLS is never taken', async () => {
      const c = await FtpControl.open(tlsPort);
      try {
        assert.equal((await c.reply()).code, 220);
        const feat = await c.command('FEAT');
        assert.ok(feat.lines.some((l) => /^\s*AUTH TLS$/.test(l)), feat.lines.join('|'));
        assert.equal((await c.command('PBSZ 0')).code, 503);
        assert.equal((await c.command('AUTH GSSAPI')).code, 504);
        assert.equal((await c.startTls(`USER ${userAtHost}\r\n`)).code, 234);
        // Had the USER been taken, the session would be logged in and PWD would answer 257.
        assert.equal((await c.command('PWD')).code, 530);
        assert.equal((await c.command('AUTH TLS')).code, 503, 'not twice');
        assert.equal((await c.command('PROT P')).code, 503, 'PBSZ first');
        assert.equal((await c.command('PBSZ 0')).code, 200);
        assert.equal((await c.command('PROT S')).code, 536);
        assert.equal((await c.command('PROT P')).code, 200);
        assert.equal((await c.command(`USER ${userAtHost}`)).code, 230);
        assert.equal((await c.command('CCC')).code, 502, 'the control connection stays in TLS');
      } finally {
        c.close();
      }
    });

    test('tls.required: no USER in clear, no transfer with PROT C; plain curl and control-only TLS fail', async () => {
      const c = await FtpControl.open(requiredPort);
      try {
        assert.equal((await c.reply()).code, 220);
        assert.equal((await c.command(`USER ${userAtHost}`)).code, 530);
        assert.equal((await c.startTls()).code, 234);
        assert.equal((await c.command('PBSZ 0')).code, 200);
        assert.equal((await c.command('PROT C')).code, 534);
        assert.equal((await c.command(`USER ${userAtHost}`)).code, 230);
        assert.equal((await c.command('TYPE I')).code, 200);
        assert.equal((await c.command('EPSV')).code, 229);
        assert.equal((await c.command('RETR clean.bin')).code, 521, 'no data in clear');
      } finally {
        c.close();
      }
      assert.notEqual((await run('curl', ['-sS', '--max-time', '30', '-o', '/dev/null', `${base(requiredPort)}/clean.bin`])).code, 0);
      assert.notEqual((await run('curl', ['-sS', '--max-time', '30', '--ftp-ssl-control', '-k', '-o', '/dev/null', `${base(requiredPort)}/clean.bin`])).code, 0);
      const out = join(dir, 'ftps-required.bin');
      const ok = await run('curl', ['-sS', '--max-time', '60', '--ssl-reqd', '-k', '-o', out, `${base(requiredPort)}/clean.bin`]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(sha256(await readFile(out)), sha256(clean));
    });
  });
  describe('FTPS towards the servers (ftp-proxy.upstream-tls; vsftpd forcing TLS for logins and data)', () => {
    const peers: Serving[] = [];
    const servers: Vsftpd[] = [];
    let explicit: Vsftpd;
    let implicit: Vsftpd;
    let cert: string;
    const peer = async (yaml: string[]): Promise<number> => {
      const p = await startAvgatePeer({ stateDir: await mkdtemp(join(dir, 'ftps-up-')), clamd, ftpYaml: ["allowed-upstreams: ['127.0.0.1:*']", ...yaml].join('\n') });
      peers.push(p);
      return p.ftpProxyPort as number;
    };
    const url = (proxy: number, server: Vsftpd, path: string) => `ftp://${encodeURIComponent(`anonymous@127.0.0.1:${server.port}`)}:x@127.0.0.1:${proxy}/${path}`;

    before(async () => {
      let key: string;
      ({ cert, key } = await selfSignedCert(dir, 'localhost'));
      for (const mode of ['explicit', 'implicit'] as const) {
        const d = join(dir, `vs-${mode}`);
        await import('node:fs/promises').then((fs) => fs.mkdir(d));
        const v = await startVsftpd({ dir: d, tls: { cert, key, implicit: mode === 'implicit' } });
        servers.push(v);
        await writeFile(join(v.root, 'clean.bin'), clean, { mode: 0o644 });
        await writeFile(join(v.root, 'eicar.txt'), eicarText, { mode: 0o644 });
        if (mode === 'explicit') explicit = v;
        else implicit = v;
      }
    });
    after(async () => {
      for (const p of peers) await p.stop();
      for (const v of servers) await v.stop();
    });

    /** Through the proxy in clear: the clean file whole, EICAR refused; uploads likewise (explicit server only). */
    async function check(proxy: number, server: Vsftpd, label: string, uploads: boolean): Promise<void> {
      const out = join(dir, `up-${label}.bin`);
      const r = await run('curl', ['-sS', '--max-time', '60', '-o', out, url(proxy, server, 'clean.bin')]);
      assert.equal(r.code, 0, `${r.stderr}\n${server.logTail()}`);
      assert.equal(sha256(await readFile(out)), sha256(clean));
      const bad = join(dir, `up-${label}-eicar.txt`);
      assert.notEqual((await run('curl', ['-sS', '--max-time', '60', '-o', bad, url(proxy, server, 'eicar.txt')])).code, 0);
      assert.ok((await readFile(bad).catch(() => Buffer.alloc(0))).length < eicarText.length);
      if (!uploads) return;
      assert.equal((await run('curl', ['-sS', '--max-time', '60', '-T', join(dir, 'clean.bin'), url(proxy, server, `upload/${label}.bin`)])).code, 0);
      assert.equal(sha256(await readFile(join(server.uploadDir, `${label}.bin`))), sha256(clean));
      assert.notEqual((await run('curl', ['-sS', '--max-time', '60', '-T', join(dir, 'eicar.txt'), url(proxy, server, `upload/${label}-eicar.txt`)])).code, 0);
      assert.ok(!(await readdir(server.uploadDir)).includes(`${label}-eicar.txt`));
    }

    test('upstream-tls: starttls (AUTH TLS, PBSZ 0, PROT P, session reuse on data): downloads and uploads scanned; without it the server refuses the login', async () => {
      await check(await peer(['upstream-tls: starttls', `tls-ca: ${cert}`]), explicit, 'explicit', true);
      // The same server through a proxy that speaks plain FTP to it: vsftpd refuses the anonymous login.
      const c = await FtpControl.open(proxyPort);
      try {
        assert.equal((await c.reply()).code, 220);
        assert.equal((await c.command(`USER anonymous@127.0.0.1:${explicit.port}`)).code, 530);
      } finally {
        c.close();
      }
    });

    test('upstream-tls: tls (implicit FTPS): downloads scanned', async () => {
      await check(await peer(['upstream-tls: tls', `tls-ca: ${cert}`]), implicit, 'implicit', true);
    });

    test('an untrusted server certificate: 421, nothing relayed; tls-verify false accepts it; an unreadable tls-ca stops the start', async () => {
      const port = await peer(['upstream-tls: starttls']);
      const c = await FtpControl.open(port);
      try {
        assert.equal((await c.reply()).code, 220);
        const r = await c.command(`USER anonymous@127.0.0.1:${explicit.port}`);
        assert.equal(r.code, 421, r.lines.join(' '));
      } finally {
        c.close();
      }
      await check(await peer(['upstream-tls: tls', 'tls-verify: false']), implicit, 'noverify', false);
      await assert.rejects(peer(['upstream-tls: tls', `tls-ca: ${join(dir, 'missing-ca.pem')}`]), (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONFIG' && /ftp-proxy\.tls-ca: cannot read/.test(err.message));
    });
  });
});
