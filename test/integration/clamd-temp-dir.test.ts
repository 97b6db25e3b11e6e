import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { chmod, chown, lchown, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, statfs, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { clamdTempDir, LocalClamd, privateTempDir, TMPFS_MIN_FREE } from '../../src/engines/clamd/local.js';
import { ClamdNetEngine } from '../../src/engines/clamd/net.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { configSchema } from '../../src/config/schema.js';
import { waitFor } from '../helpers/wait.js';
import { capturedLog } from '../helpers/log.js';

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
    await mkdir(chosen.path, { recursive: true, mode: 0o700 }); // as avgate makes it
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
      // clamd may unlink its last temp file just after it answers.
      if (chosen.private) await waitFor('clamd to remove its temp files', async () => ((await readdir(chosen.path)).length === 0 ? true : null), 5000);
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

// The private temp-dir's name in /dev/shm is predictable, and any local user may create it first.
// Then it must neither stop clamd from starting (rm failing with EPERM) nor become clamd's
// TemporaryDirectory (its owner would read and swap what clamd scans).
test('a private temp-dir whose name another user took (a directory, a symlink) is left alone: clamd runs in a fresh one of its own', async (t) => {
  if (!(await shmUsable())) return t.skip('/dev/shm is not a tmpfs with room: temp-dir auto does not use it');
  if (process.getuid?.() !== 0) return t.skip('making a directory of another user needs root');
  const NOBODY = 65534;
  for (const kind of ['another user\'s directory', 'a symlink to one', 'ours but group-writable']) {
    const stateDir = await mkdtemp(join(tmpdir(), 'avgate-clamd-squat-'));
    const chosen = await clamdTempDir('auto', stateDir);
    const target = await mkdtemp('/dev/shm/avgate-squatter-');
    try {
      await writeFile(join(target, 'theirs.txt'), 'x');
      await chown(join(target, 'theirs.txt'), NOBODY, NOBODY);
      await chmod(target, 0o755);
      await chown(target, NOBODY, NOBODY);
      let squat = chosen.path;
      if (kind === 'a symlink to one') {
        await symlink(target, chosen.path);
        await lchown(chosen.path, NOBODY, NOBODY);
        squat = target;
      } else if (kind === 'ours but group-writable') {
        await mkdir(chosen.path, { mode: 0o700 });
        await chmod(chosen.path, 0o770);
        await writeFile(join(chosen.path, 'theirs.txt'), 'x');
      } else {
        await mkdir(chosen.path);
        await writeFile(join(chosen.path, 'theirs.txt'), 'x');
        await chmod(chosen.path, 0o777);
        await chown(chosen.path, NOBODY, NOBODY);
      }
      const { log, lines } = capturedLog('warn');
      const clamd = new LocalClamd({ stateDir, database: 'test', tcpPort: null, maxThreads: 2, log });
      let used = '';
      try {
        await clamd.setup();
        used = clamd.tempDir ?? '';
        assert.notEqual(used, chosen.path, `${kind}: not used`);
        assert.ok(used.startsWith(`${chosen.path}-`), `${kind}: ${used} beside it`);
        const st = await lstat(used);
        assert.deepEqual([st.isDirectory(), st.uid, st.mode & 0o777], [true, 0, 0o700], `${kind}: a directory of ours alone`);
        assert.match(await readFile(clamd.confPath, 'utf8'), new RegExp(`^TemporaryDirectory ${used}$`, 'm'));
        assert.ok(
          lines.some((l) => l.level === 40 && String(l.msg).includes(chosen.path) && String(l.msg).includes(used)),
          `${kind}: a warning names both`,
        );
        await clamd.start();
        assert.equal(clamd.tempDir, used, `${kind}: start() keeps it`);
        assert.equal(await clamd.ping(), true);
        assert.deepEqual(await readdir(squat), ['theirs.txt'], `${kind}: left as it is`);
        // A restart (supervise) takes the same one again, without a new warning.
        const warned = lines.length;
        assert.equal(await privateTempDir(chosen.path, { empty: false, previous: used, warn: () => assert.fail('warned again') }), used);
        assert.equal(lines.length, warned);
      } finally {
        await clamd.stop();
      }
      assert.equal(existsSync(used), false, `${kind}: ours removed at stop`);
      assert.deepEqual(await readdir(squat), ['theirs.txt'], `${kind}: theirs still there`);
    } finally {
      await rm(chosen.path, { recursive: true, force: true });
      await rm(target, { recursive: true, force: true });
      await rm(stateDir, { recursive: true, force: true });
    }
  }
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
      await mkdir(chosen.path, { recursive: true, mode: 0o700 });
      await writeFile(join(chosen.path, 'clamav-in-use.tmp'), 'x');
      const clamd = new LocalClamd({ stateDir, database: 'test', tcpPort: 0 });
      await clamd.setup();
      assert.equal(clamd.tempDir, chosen.path);
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
