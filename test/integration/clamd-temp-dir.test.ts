import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, readlink, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { clamdTempDir, LocalClamd, TMPFS_MIN_FREE } from '../../src/engines/clamd/local.js';
import { ClamdNetEngine } from '../../src/engines/clamd/net.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { configSchema } from '../../src/config/schema.js';

/** What `auto` must pick on this host: /dev/shm when it is a tmpfs with room, else the state directory. */
async function shmUsable(): Promise<boolean> {
  try {
    const fs = await statfs('/dev/shm');
    return fs.type === 0x01021994 && fs.bavail * fs.bsize >= TMPFS_MIN_FREE;
  } catch {
    return false;
  }
}

test('clamd.temp-dir: state, a directory, and auto', async () => {
  assert.equal(configSchema.parse({}).clamd['temp-dir'], 'auto');
  assert.deepEqual(await clamdTempDir('state', '/var/x/clamd'), { path: '/var/x/clamd/tmp', private: false });
  assert.deepEqual(await clamdTempDir('scratch', '/var/x/clamd'), { path: '/var/x/clamd/scratch', private: false });
  assert.deepEqual(await clamdTempDir('/srv/clamtmp', '/var/x/clamd'), { path: '/srv/clamtmp', private: false });
  const a = await clamdTempDir('auto', '/var/x/clamd');
  const b = await clamdTempDir('auto', '/var/y/clamd');
  if (await shmUsable()) {
    assert.equal(a.private, true);
    assert.match(a.path, /^\/dev\/shm\/avgate-clamd-\d+-[0-9a-f]{12}$/);
    assert.notEqual(a.path, b.path, 'two state directories never share one');
    assert.deepEqual(await clamdTempDir('auto', '/var/x/clamd'), a, 'the same state directory gets the same one');
  } else {
    assert.deepEqual(a, { path: '/var/x/clamd/tmp', private: false });
  }
});

test('the local clamd writes INSTREAM objects in its temp-dir; a private one is emptied at start and removed at stop', async (t) => {
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-clamd-tmp-'));
  const clamd = new LocalClamd({ stateDir, database: 'test', tcpPort: 0, maxThreads: 2 });
  const chosen = await clamdTempDir('auto', stateDir);
  // Left over by a clamd that was killed: must not survive the next start in a private directory.
  if (chosen.private) {
    await mkdir(chosen.path, { recursive: true });
    await writeFile(join(chosen.path, 'clamav-leftover.tmp'), 'x');
  }
  try {
    await clamd.start();
    assert.equal(clamd.tempDir, chosen.path);
    const conf = await readFile(clamd.confPath, 'utf8');
    assert.match(conf, new RegExp(`^TemporaryDirectory ${chosen.path}$`, 'm'));
    if (chosen.private) assert.deepEqual(await readdir(chosen.path), [], 'the leftover is gone');
    // clamd really works from there: a clean and an infected object by INSTREAM.
    const engine = new ClamdNetEngine();
    engine.configure([{ name: 'address', value: `unix:${clamd.socketPath}` }]);
    await engine.init();
    const ctx = await engine.openContext();
    try {
      const clean = await engine.scan(ctx, Readable.from([randomBytes(20_000)]), { signal: AbortSignal.timeout(10_000) });
      assert.equal(clean.verdict.status, 'free');
      const bad = await engine.scan(ctx, Readable.from([Buffer.concat([randomBytes(100), eicarBytes()])]), { signal: AbortSignal.timeout(10_000) });
      assert.equal(bad.verdict.status, 'found');
      // An archive: clamd unpacks its member into the temp-dir too.
      const zip = await engine.scan(ctx, createReadStream('/usr/share/clamav-testfiles/clam.zip'), { signal: AbortSignal.timeout(10_000) });
      assert.equal(zip.verdict.status, 'found');
      if (chosen.private) assert.deepEqual(await readdir(chosen.path), [], 'clamd removed its temp files');
    } finally {
      await engine.closeContext(ctx);
    }
    t.diagnostic(`temp-dir auto chose ${chosen.path}`);
  } finally {
    await clamd.stop();
    await rm(stateDir, { recursive: true, force: true });
  }
  if (chosen.private) assert.equal(existsSync(chosen.path), false, 'the private directory is removed at stop');
});

test('temp-dir given as a directory: used as it is and never emptied', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-clamd-tmp-'));
  const own = join(stateDir, 'own-tmp');
  await mkdir(own);
  await writeFile(join(own, 'keep.txt'), 'admin file');
  const clamd = new LocalClamd({ stateDir, database: 'test', tcpPort: 0, maxThreads: 2, tempDir: own });
  try {
    await clamd.start();
    assert.equal(clamd.tempDir, own);
    assert.ok(await clamd.ping());
  } finally {
    await clamd.stop();
  }
  assert.equal(await readFile(join(own, 'keep.txt'), 'utf8'), 'admin file');
  await rm(stateDir, { recursive: true, force: true });
});

test('setup() alone leaves a private temp-dir as it is (a clamd may be running from it); a temp-dir that cannot be made is a clamd start error', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-clamd-tmp-'));
  try {
    const chosen = await clamdTempDir('auto', stateDir);
    if (chosen.private) {
      await mkdir(chosen.path, { recursive: true });
      await writeFile(join(chosen.path, 'clamav-in-use.tmp'), 'x');
      await new LocalClamd({ stateDir, database: 'test', tcpPort: 0 }).setup();
      assert.deepEqual(await readdir(chosen.path), ['clamav-in-use.tmp']);
      await rm(chosen.path, { recursive: true, force: true });
    }
    const file = join(stateDir, 'a-file');
    await writeFile(file, 'not a directory');
    await assert.rejects(new LocalClamd({ stateDir, database: 'test', tcpPort: 0, tempDir: join(file, 'tmp') }).setup(), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'AVG_ERR_CLAMD_START');
      assert.match(err.message, /clamd\.temp-dir/);
      return true;
    });
  } finally {
    await rm(stateDir, { recursive: true, force: true });
  }
});

test('clamd.tcp-port null: clamd listens on its unix socket only', async () => {
  assert.equal(configSchema.parse({ clamd: { 'tcp-port': null } }).clamd['tcp-port'], null);
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-clamd-notcp-'));
  const clamd = new LocalClamd({ stateDir, database: 'test', tcpPort: null });
  try {
    await clamd.start();
    assert.equal(await clamd.ping(), true, 'the unix socket answers');
    const conf = await readFile(clamd.confPath, 'utf8');
    assert.doesNotMatch(conf, /^TCP(Socket|Addr) /m);
    assert.match(conf, /^LocalSocket /m);
    assert.throws(() => clamd.tcpAddress, /no TCP socket/);
    // Nothing of clamd's on a TCP port: its process holds no listening TCP socket.
    const inodes = new Set<string>();
    for (const fd of await readdir(`/proc/${clamd.pid}/fd`)) {
      const link = await readlink(`/proc/${clamd.pid}/fd/${fd}`).catch(() => '');
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m) inodes.add(m[1] as string);
    }
    const listening = ['/proc/net/tcp', '/proc/net/tcp6']
      .flatMap((f) => (existsSync(f) ? [f] : []))
      .map((f) => readFile(f, 'utf8'));
    const rows = (await Promise.all(listening)).flatMap((t) => t.split('\n').slice(1)).map((l) => l.trim().split(/\s+/));
    assert.ok(inodes.size > 0, 'clamd has its unix socket open');
    assert.deepEqual(rows.filter((r) => r[3] === '0A' && inodes.has(r[9] ?? '')), [], 'no listening TCP socket of clamd');
  } finally {
    await clamd.stop();
    await rm(stateDir, { recursive: true, force: true });
  }
});
