import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { ClamdNetEngine, type ClamdNetContext } from '../../src/engines/clamd/net.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { afterBytes, closedPort, startFaultServer } from '../helpers/fault-server.js';
import { zipOneFile } from '../helpers/zip.js';

const FOUND_NAME = /^Avgate\.Test\.EICAR\.(HDB|NDB)(\.UNOFFICIAL)?$/;

function engineFor(address: string, extra: Array<[string, string]> = []): ClamdNetEngine {
  const e = new ClamdNetEngine();
  e.configure([{ name: 'address', value: address }, ...extra.map(([name, value]) => ({ name, value }))]);
  return e;
}

async function scanOnce(e: ClamdNetEngine, data: Buffer | Readable, timeoutMs = 5000) {
  const ctx = await e.openContext();
  try {
    return await e.scan(ctx, Buffer.isBuffer(data) ? Readable.from([data]) : data, { signal: AbortSignal.timeout(timeoutMs) });
  } finally {
    await e.closeContext(ctx);
  }
}

describe('clamd-net against a real clamd', () => {
  let clamd: TestClamd;
  before(async () => {
    clamd = await startTestClamd({ streamMaxLength: '1M', extra: { AlertEncrypted: 'yes' } });
  });
  after(async () => {
    await clamd.stop();
  });

  for (const [label, session] of [['session', 'yes'], ['one connection per scan', 'no']] as const) {
    for (const transport of ['unix', 'tcp'] as const) {
      test(`${transport}, ${label}: free, found, found in an archive, skipped over StreamMaxLength`, async () => {
        const address = transport === 'unix' ? `unix:${clamd.socketPath}` : `tcp:127.0.0.1:${clamd.tcpPort}`;
        const e = engineFor(address, [['session', session], ['stream-max-length', '1M']]);
        await e.init();
        const ctx: ClamdNetContext = await e.openContext();
        const scan = (s: Readable) => e.scan(ctx, s, { signal: AbortSignal.timeout(5000) });
        const clean = await scan(Readable.from([randomBytes(10_000)]));
        assert.equal(clean.verdict.status, 'free');
        assert.equal(clean.bytes, 10_000);
        const found = await scan(Readable.from([Buffer.from('prefix '), eicarBytes()]));
        assert.equal(found.verdict.status, 'found');
        assert.match(found.verdict.status === 'found' ? (found.verdict.names[0] ?? '') : '', FOUND_NAME);
        const zip = await scan(createReadStream('/usr/share/clamav-testfiles/clam.zip'));
        assert.equal(zip.verdict.status, 'found');
        assert.match(zip.verdict.status === 'found' ? zip.verdict.names.join() : '', /^Avgate\.Test\.ClamExe/);
        const big = await scan(Readable.from([randomBytes(3 * 1024 * 1024)]));
        assert.equal(big.verdict.status, 'skipped');
        assert.match(big.verdict.status === 'skipped' ? big.verdict.reason : '', /StreamMaxLength/);
        await e.closeContext(ctx);
      });
    }
  }

  test('without stream-max-length, an object over clamd\'s limit is never free (skipped, or reset when clamd closes first)', async () => {
    for (const session of ['yes', 'no']) {
      const e = engineFor(`unix:${clamd.socketPath}`, [['session', session]]);
      const r = await scanOnce(e, Readable.from([randomBytes(3 * 1024 * 1024)]));
      const outcome = r.verdict.status === 'error' ? r.verdict.code : r.verdict.status;
      assert.ok(outcome === 'skipped' || outcome === 'AVG_ERR_ENGINE_RESET', outcome);
    }
  });

  test('an encrypted archive: clamd says Heuristics.Encrypted; skipped when so configured, found otherwise', async () => {
    const zip = zipOneFile('secret.txt', randomBytes(200), { encrypted: true });
    const plain = await scanOnce(engineFor(`unix:${clamd.socketPath}`), zip);
    assert.equal(plain.verdict.status, 'found');
    assert.match(plain.verdict.status === 'found' ? (plain.verdict.names[0] ?? '') : '', /^Heuristics\.Encrypted\.Zip/);
    const skipping = await scanOnce(engineFor(`unix:${clamd.socketPath}`, [['encrypted-as-skipped', 'yes']]), zip);
    assert.equal(skipping.verdict.status, 'skipped');
    assert.match(skipping.verdict.status === 'skipped' ? skipping.verdict.reason : '', /encrypted/);
    const clearZip = await scanOnce(engineFor(`unix:${clamd.socketPath}`), zipOneFile('clear.txt', randomBytes(200)));
    assert.equal(clearZip.verdict.status, 'free', 'the same archive unencrypted is free');
  });

  test('content past clamd\'s unpacking limits is found as Heuristics.Limits.Exceeded (AlertExceedsMax), not free', async () => {
    // 110 MiB of zeros and the test virus behind them, gzipped to ~110 KiB: past MaxFileSize (100M).
    const packed = gzipSync(Buffer.concat([Buffer.alloc(110 * 1024 * 1024), eicarBytes()]), { level: 1 });
    assert.ok(packed.length < 1024 * 1024);
    const r = await scanOnce(engineFor(`unix:${clamd.socketPath}`), Readable.from([packed]));
    assert.equal(r.verdict.status, 'found');
    assert.match(r.verdict.status === 'found' ? r.verdict.names.join() : '', /^Heuristics\.Limits\.Exceeded/);
  });

  test('stream-max-length known in advance: skipped without contacting clamd', async () => {
    const e = engineFor('127.0.0.1:1', [['stream-max-length', '1K']]);
    const r = await e.scan({ conn: null }, Readable.from([randomBytes(10)]), { size: 2048, signal: AbortSignal.timeout(1000) });
    assert.equal(r.verdict.status, 'skipped');
  });

  test('scan-files: a local file goes to clamd by path (SCAN) with the same verdicts as INSTREAM', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'avgate-scanfile-'));
    try {
      const e = engineFor(`unix:${clamd.socketPath}`, [['stream-max-length', '1M']]);
      assert.equal(e.prefersFiles(), true, 'auto: a unix socket means clamd on this host');
      assert.equal(engineFor(`tcp:192.0.2.1:3310`).prefersFiles(), false, 'auto: a remote address streams');
      assert.equal(engineFor(`unix:${clamd.socketPath}`, [['scan-files', 'no']]).prefersFiles(), false);
      const ctx = await e.openContext();
      const clean = join(dir, 'clean');
      const infected = join(dir, 'infected');
      const big = join(dir, 'big');
      await writeFile(clean, randomBytes(20_000));
      await writeFile(infected, Buffer.concat([Buffer.from('prefix '), eicarBytes()]));
      await writeFile(big, randomBytes(2 * 1024 * 1024));
      const meta = { signal: AbortSignal.timeout(5000) };
      const c = await e.scanFile(ctx, clean, meta);
      assert.deepEqual(c, { verdict: { status: 'free' }, bytes: 20_000 });
      const f = await e.scanFile(ctx, infected, meta);
      assert.equal(f?.verdict.status, 'found');
      assert.match(f?.verdict.status === 'found' ? (f.verdict.names[0] ?? '') : '', FOUND_NAME);
      const z = await e.scanFile(ctx, '/usr/share/clamav-testfiles/clam.zip', meta);
      assert.equal(z?.verdict.status, 'found');
      // Over StreamMaxLength: skipped like INSTREAM would answer, not scanned in part.
      const b = await e.scanFile(ctx, big, meta);
      assert.equal(b?.verdict.status, 'skipped');
      assert.equal(e.contextUsable(ctx), true, 'the session carries on after SCAN');
      const after = await e.scan(ctx, Readable.from([randomBytes(1000)]), meta);
      assert.equal(after.verdict.status, 'free');
      await e.closeContext(ctx);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a session is reused across scans (one connection for several scans)', async () => {
    // Count connections through a transparent relay in front of clamd.
    const { connect } = await import('node:net');
    const relay = await startFaultServer((client) => {
      const upstream = connect(clamd.socketPath);
      client.pipe(upstream).pipe(client);
      upstream.on('error', () => client.destroy());
    });
    try {
      const e = engineFor(relay.address);
      const ctx = await e.openContext();
      for (let i = 0; i < 5; i++) {
        const r = await e.scan(ctx, Readable.from([randomBytes(100)]), { signal: AbortSignal.timeout(5000) });
        assert.equal(r.verdict.status, 'free');
      }
      assert.equal(e.contextUsable(ctx), true);
      assert.equal(relay.connections, 1);
      await e.closeContext(ctx);
    } finally {
      await relay.close();
    }
  });

  test('signature version: engine version plus a database fingerprint when VERSION has none', async () => {
    const e = engineFor(`unix:${clamd.socketPath}`, [['database-dir', clamd.dbDir]]);
    const v = await e.signatureVersion();
    assert.match(v ?? '', /^ClamAV [\d.]+\/db:[0-9a-f]{16}$/);
    const bare = engineFor(`unix:${clamd.socketPath}`);
    assert.equal(await bare.signatureVersion(), null, 'no database version and no directory: cannot tell');
    assert.equal((await e.ping()).trim(), 'PONG');
  });

  test('a session clamd has closed is noticed and not reused', async () => {
    const e = engineFor(`unix:${clamd.socketPath}`);
    const ctx = await e.openContext();
    ctx.conn?.kill('AVG_ERR_ENGINE_RESET', 'simulated');
    assert.equal(e.contextUsable(ctx), false);
    const r = await e.scan(ctx, Readable.from([Buffer.from('x')]), { signal: AbortSignal.timeout(2000) });
    assert.equal(r.verdict.status, 'error');
    assert.equal(r.verdict.status === 'error' ? r.verdict.code : '', 'AVG_ERR_ENGINE_RESET');
  });

  test('failover: the second address is used when the first refuses', async () => {
    const dead = await closedPort();
    const e = engineFor(`127.0.0.1:${dead}`, [['address', `unix:${clamd.socketPath}`]]);
    e.configure([
      { name: 'address', value: `127.0.0.1:${dead}` },
      { name: 'address', value: `unix:${clamd.socketPath}` },
    ]);
    const r = await scanOnce(e, eicarBytes());
    assert.equal(r.verdict.status, 'found');
    // Neither answers: the error names both, not only the last one tried.
    const other = await closedPort();
    const none = engineFor(`127.0.0.1:${dead}`, [['address', `127.0.0.1:${other}`], ['session', 'no']]);
    const both = await scanOnce(none, Buffer.from('x'));
    assert.equal(both.verdict.status, 'error');
    const cause = both.verdict.status === 'error' ? both.verdict.cause : '';
    assert.ok(cause.includes(String(dead)) && cause.includes(String(other)), cause);
    assert.equal(both.verdict.status === 'error' ? both.verdict.code : '', 'AVG_ERR_ENGINE_CONNECT');
  });
});

describe('clamd-net scanning by path from another working directory than clamd\'s', () => {
  let clamd: TestClamd;
  let dir: string;
  const cwd = process.cwd();
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-relpath-'));
    // clamd starts in "theirs", where docs/report.doc is clean; ours holds EICAR under the same name.
    for (const [side, data] of [['theirs', randomBytes(3000)], ['ours', eicarBytes()]] as const) {
      await mkdir(join(dir, side, 'docs'), { recursive: true });
      await writeFile(join(dir, side, 'docs', 'report.doc'), data);
    }
    process.chdir(join(dir, 'theirs'));
    try {
      clamd = await startTestClamd();
    } finally {
      process.chdir(cwd);
    }
  });
  after(async () => {
    process.chdir(cwd);
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('a path with characters outside Latin-1 (一, U+4E00) reaches clamd as its UTF-8 bytes', async () => {
    const e = engineFor(`unix:${clamd.socketPath}`, [['scan-files', 'yes']]);
    await mkdir(join(dir, 'ours', '一 名'), { recursive: true });
    const path = join(dir, 'ours', '一 名', 'é.com');
    await writeFile(path, eicarBytes());
    const ctx = await e.openContext();
    try {
      const r = await e.scanFile(ctx, path, { signal: AbortSignal.timeout(5000) });
      assert.equal(r?.verdict.status, 'found', JSON.stringify(r));
      assert.equal(e.prefersFiles(), true, 'not taken for a file clamd cannot open');
    } finally {
      await e.closeContext(ctx);
    }
  });

  test('a relative path is scanned as the caller means it (made absolute), not as clamd would find it', async () => {
    const e = engineFor(`unix:${clamd.socketPath}`, [['scan-files', 'yes']]);
    const ctx = await e.openContext();
    process.chdir(join(dir, 'ours'));
    try {
      const r = await e.scanFile(ctx, 'docs/report.doc', { signal: AbortSignal.timeout(5000) });
      assert.equal(r?.verdict.status, 'found', JSON.stringify(r));
    } finally {
      process.chdir(cwd);
      await e.closeContext(ctx);
    }
  });
});

describe('clamd-net with stream-max-length above clamd\'s own file limits', () => {
  let clamd: TestClamd;
  before(async () => {
    clamd = await startTestClamd({ streamMaxLength: '130M' });
  });
  after(async () => {
    await clamd?.stop();
  });

  test('a clean 110 MB object is free, not Heuristics.Limits.Exceeded (MaxFileSize follows StreamMaxLength); EICAR behind it is found', async () => {
    assert.match(await readFile(join(clamd.stateDir, 'clamd.conf'), 'utf8'), /^MaxFileSize 136314880$/m);
    const e = engineFor(`unix:${clamd.socketPath}`);
    const chunk = randomBytes(1024 * 1024);
    const big = (tail: Buffer) =>
      Readable.from(
        (function* () {
          for (let i = 0; i < 110; i++) yield Buffer.concat([chunk, Buffer.from(String(i))]);
          yield tail;
        })(),
      );
    const clean = await scanOnce(e, big(Buffer.alloc(0)), 120_000);
    assert.equal(clean.verdict.status, 'free', JSON.stringify(clean.verdict));
    const infected = await scanOnce(e, big(eicarBytes()), 120_000);
    assert.equal(infected.verdict.status, 'found', JSON.stringify(infected.verdict));
  });
});

describe('clamd-net against fault servers', () => {
  test('connection refused → error AVG_ERR_ENGINE_CONNECT', async () => {
    const port = await closedPort();
    const e = engineFor(`127.0.0.1:${port}`, [['session', 'no']]);
    const r = await scanOnce(e, Buffer.from('data'));
    assert.equal(r.verdict.status, 'error');
    assert.equal(r.verdict.status === 'error' ? r.verdict.code : '', 'AVG_ERR_ENGINE_CONNECT');
    await assert.rejects(e.openContext.call(engineFor(`127.0.0.1:${port}`)), { code: 'AVG_ERR_ENGINE_CONNECT' });
  });

  test('reset in the middle of the stream → error AVG_ERR_ENGINE_RESET', async () => {
    const srv = await startFaultServer((s) => afterBytes(s, 50_000, () => s.resetAndDestroy()));
    try {
      const e = engineFor(srv.address, [['session', 'no']]);
      const r = await scanOnce(e, Readable.from((function* () {
        for (let i = 0; i < 100; i++) yield randomBytes(16_384);
      })()));
      assert.equal(r.verdict.status, 'error');
      assert.equal(r.verdict.status === 'error' ? r.verdict.code : '', 'AVG_ERR_ENGINE_RESET');
    } finally {
      await srv.close();
    }
  });

  test('stalled past the scan timeout → error AVG_ERR_ENGINE_TIMEOUT, connection dropped', async () => {
    const srv = await startFaultServer((s) => s.resume()); // reads everything, never answers
    try {
      const e = engineFor(srv.address);
      const ctx = await e.openContext();
      const started = Date.now();
      const r = await e.scan(ctx, Readable.from([Buffer.from('data')]), { signal: AbortSignal.timeout(300) });
      assert.equal(r.verdict.status, 'error');
      assert.equal(r.verdict.status === 'error' ? r.verdict.code : '', 'AVG_ERR_ENGINE_TIMEOUT');
      assert.ok(Date.now() - started < 5000);
      assert.equal(e.contextUsable(ctx), false);
    } finally {
      await srv.close();
    }
  });

  test('scan-files: a reply about another file than the one asked for is unknown, never its OK', async () => {
    const asked: string[] = [];
    const srv = await startFaultServer((s) => {
      let buf = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf(0);
        if (buf[0] !== 0x7a || end < 0) return;
        const cmd = buf.subarray(1, end).toString();
        buf = buf.subarray(end + 1);
        asked.push(cmd);
        s.end(asked.length === 1 ? '/etc/passwd: OK\0' : `${cmd.slice(5)}.x: OK\0`);
      });
    });
    const dir = await mkdtemp(join(tmpdir(), 'avgate-scanfile-'));
    try {
      const e = engineFor(srv.address, [['session', 'no'], ['scan-files', 'yes']]);
      const path = join(dir, 'object');
      await writeFile(path, eicarBytes());
      const ctx = await e.openContext();
      for (const want of [/^\/etc\/passwd: OK$/, /object\.x: OK$/]) {
        const r = await e.scanFile(ctx, path, { signal: AbortSignal.timeout(5000) });
        assert.equal(r?.verdict.status, 'unknown', JSON.stringify(r));
        assert.match(r?.verdict.status === 'unknown' ? r.verdict.raw : '', want);
      }
      assert.deepEqual(asked, [`SCAN ${path}`, `SCAN ${path}`]);
    } finally {
      await srv.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('scan-files: clamd cannot open our file (another user) → streamed instead, and from then on', async () => {
    const commands: string[] = [];
    const srv = await startFaultServer((s) => {
      let buf = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf[0] === 0x7a /* z */) {
          const end = buf.indexOf(0);
          if (end < 0) return;
          const cmd = buf.subarray(1, end).toString();
          commands.push(cmd.split(' ')[0] ?? '');
          buf = buf.subarray(end + 1);
          if (cmd.startsWith('SCAN ')) s.write(`${cmd.slice(5)}: lstat() failed: Permission denied. ERROR\0`);
        }
        // INSTREAM: answer once the zero-length chunk arrived
        if (commands.at(-1) === 'INSTREAM' && buf.length >= 4 && buf.subarray(-4).equals(Buffer.alloc(4))) {
          buf = Buffer.alloc(0);
          s.end('stream: OK\0');
        }
      });
    });
    const dir = await mkdtemp(join(tmpdir(), 'avgate-scanfile-'));
    try {
      const e = engineFor(srv.address, [['session', 'no'], ['scan-files', 'yes']]);
      const path = join(dir, 'object');
      await writeFile(path, randomBytes(5000));
      const ctx = await e.openContext();
      assert.equal(await e.scanFile(ctx, path, { signal: AbortSignal.timeout(5000) }), null, 'declined: the scanner streams it');
      assert.equal(e.prefersFiles(), false);
      assert.match(e.fileScanRefusal ?? '', /Permission denied/);
      const r = await scanOnce(e, createReadStream(path));
      assert.deepEqual(r.verdict, { status: 'free' });
      assert.deepEqual(commands, ['SCAN', 'INSTREAM']);
    } finally {
      await srv.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('garbage reply → unknown with the raw text', async () => {
    const srv = await startFaultServer((s) => afterBytes(s, 1, () => s.end('HELLO WORLD\0')));
    try {
      const e = engineFor(srv.address, [['session', 'no']]);
      const r = await scanOnce(e, Buffer.from('data'));
      assert.deepEqual(r.verdict, { status: 'unknown', raw: 'HELLO WORLD' });
    } finally {
      await srv.close();
    }
  });

  test('a reply that never ends is cut at 64 KiB, not buffered without bound', async () => {
    const srv = await startFaultServer((s) => afterBytes(s, 1, () => s.write(Buffer.alloc(200_000, 0x41))));
    try {
      const e = engineFor(srv.address, [['session', 'no']]);
      const r = await scanOnce(e, Buffer.from('data'));
      assert.equal(r.verdict.status, 'error');
      assert.equal(r.verdict.status === 'error' ? r.verdict.code : '', 'AVG_ERR_ENGINE_PROTOCOL');
    } finally {
      await srv.close();
    }
  });

  test('init without an address is a config error', async () => {
    await assert.rejects(new ClamdNetEngine().init(), { code: 'AVG_ERR_CONFIG' });
    assert.throws(() => engineFor('not an address'), { code: 'AVG_ERR_CONFIG' });
  });
});
