import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { settleSpools, SlabPool, Spool, sweepSpoolDir } from '../../src/core/spool.js';
import { contentHashOf } from '../../src/core/content-hash.js';
import { capturedLog } from '../helpers/log.js';

const dir = mkdtempSync(join(tmpdir(), 'avgate-spool-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Random pieces of 1..max bytes adding up to `total`. */
function pieces(total: number, max: number): Buffer[] {
  const out: Buffer[] = [];
  for (let left = total; left > 0; ) {
    const n = Math.min(left, 1 + Math.floor(Math.random() * max));
    out.push(randomBytes(n));
    left -= n;
  }
  return out;
}

test('scan copy written while the object arrives holds exactly the object, and goes with dispose()', async () => {
  const pool = new SlabPool(64 * 1024, 8);
  for (let round = 0; round < 6; round++) {
    const parts = pieces(300_000 + round * 77_777, 70_000);
    const whole = Buffer.concat(parts);
    // Pooled slabs (the received pieces copied in) and, in odd rounds, the pieces kept as given.
    const spool = new Spool(join(dir, 'a'), 8 * 1024 * 1024, round % 2 === 0 ? { hash: true, slabs: pool } : { hash: true });
    const startAt = round % parts.length; // started before the first piece, after some, ...
    for (let i = 0; i < parts.length; i++) {
      if (i === startAt) await spool.startScanCopy();
      await spool.write(parts[i] as Buffer);
    }
    assert.equal(spool.copyingForScan, true);
    await spool.end();
    const path = await spool.fileForScan();
    assert.equal(sha(readFileSync(path)), sha(whole));
    assert.equal(spool.contentHash, contentHashOf([whole]));
    assert.equal(await spool.fileForScan(), path, 'asked again: the same file');
    await spool.dispose(true);
    assert.equal(existsSync(path), false);
  }
  assert.deepEqual(readdirSync(join(dir, 'a')), []);
});

test('scan copy: a piece arriving while no write is under way is in the file when write() returns; a batch over 1 MiB goes through the thread pool and fileForScan waits for it', async () => {
  const spool = new Spool(join(dir, 'c'), 8 * 1024 * 1024, { hash: false });
  await spool.startScanCopy();
  const [copy] = readdirSync(join(dir, 'c'));
  const small = [randomBytes(65_536), randomBytes(1_000), randomBytes(200_000)];
  for (let i = 0; i < small.length; i++) {
    await spool.write(small[i] as Buffer);
    // No turn of the event loop in between: nothing but a synchronous write can have put it there.
    assert.equal(sha(readFileSync(join(dir, 'c', copy as string))), sha(Buffer.concat(small.slice(0, i + 1))));
  }
  await spool.dispose();

  const late = new Spool(join(dir, 'c'), 8 * 1024 * 1024, { hash: false });
  const held = [randomBytes(700_000), randomBytes(700_000)];
  for (const b of held) await late.write(b);
  await late.startScanCopy(); // 1.4 MB held: one writev in the thread pool
  const tail = randomBytes(10_000); // arrives while that write is under way: queued behind it
  await late.write(tail);
  await late.end();
  const path = await late.fileForScan();
  assert.equal(sha(readFileSync(path)), sha(Buffer.concat([...held, tail])));
  await late.dispose();
  assert.deepEqual(readdirSync(join(dir, 'c')), []);
});

test('scan copy: dropped when the spool goes to disk (its own file is then the copy), removed when disposed unused', async () => {
  const spool = new Spool(join(dir, 'b'), 100_000, { hash: false });
  await spool.write(randomBytes(60_000));
  await spool.startScanCopy();
  assert.equal(readdirSync(join(dir, 'b')).length, 1);
  await spool.write(randomBytes(60_000)); // past the memory limit
  assert.equal(spool.onDisk, true);
  assert.equal(spool.copyingForScan, false);
  await spool.end();
  assert.equal(await spool.fileForScan(), spool.filePath());
  assert.equal(readdirSync(join(dir, 'b')).length, 1, 'only the spool file is left');
  await spool.dispose();

  const unused = new Spool(join(dir, 'b'), 1_000_000, { hash: false });
  await unused.startScanCopy();
  await unused.write(randomBytes(10_000));
  await unused.dispose(); // never ended: e.g. the client went away
  assert.deepEqual(readdirSync(join(dir, 'b')), []);
});

test('scan copy with hashLater: the spool stops hashing once the copy is started (the scanner hashes meanwhile); without it the hash stays', async () => {
  const data = randomBytes(50_000);
  for (const hashLater of [true, false]) {
    const spool = new Spool(join(dir, 'h'), 1_000_000, { hash: true });
    await spool.write(data.subarray(0, 20_000));
    await spool.startScanCopy({ hashLater });
    await spool.write(data.subarray(20_000));
    await spool.end();
    assert.equal(spool.copyingForScan, true);
    assert.equal(spool.contentHash, hashLater ? null : contentHashOf([data]));
    assert.equal(sha(readFileSync(await spool.fileForScan())), sha(data), 'the copy is whole either way');
    await spool.dispose(true);
  }
});

test('disposeSoon: the caller goes on at once; the scan copy and the spool file are removed, settleSpools waits for both', async () => {
  const sub = join(dir, 'soon');
  const pool = new SlabPool(64 * 1024, 8);
  // One spool with a scan copy (memory), one gone to disk (its own file).
  const copied = new Spool(sub, 8 * 1024 * 1024, { hash: true, slabs: pool });
  await copied.startScanCopy();
  await copied.write(randomBytes(200_000));
  await copied.end();
  const copyPath = await copied.fileForScan();
  const spilled = new Spool(sub, 1024, { hash: true });
  await spilled.write(randomBytes(50_000));
  await spilled.end();
  assert.equal(spilled.onDisk, true);
  assert.equal(readdirSync(sub).length, 2);
  const idleBefore = pool.idleCount;
  const started = performance.now();
  copied.disposeSoon(true);
  spilled.disposeSoon();
  assert.ok(performance.now() - started < 50, 'disposeSoon does not wait');
  await settleSpools();
  assert.equal(existsSync(copyPath), false, 'scan copy removed');
  assert.deepEqual(readdirSync(sub), [], 'no file left once settled');
  assert.ok(pool.idleCount > idleBefore, 'slabs went back to the pool');
  await settleSpools(); // nothing pending: resolves at once
});

test('sweepSpoolDir: removes the spool files of processes that are gone, never those of a running pid; once per directory', async () => {
  const d = join(dir, 'sweep');
  // This process's own file, from a real spool.
  const own = new Spool(d, 0, { hash: false });
  await own.write(Buffer.from('mine'));
  const ownName = (own.filePath() as string).slice(d.length + 1);
  // A pid that is gone: a child that has exited.
  const dead = spawnSync(process.execPath, ['-e', '0']).pid as number;
  const gone = [`spool-${dead}-0123456789ab-0`, `scan-${dead}-0123456789ab-1a`, `spool-${process.pid}-aaaaaaaaaaaa-0`];
  const stay = [`spool-${process.ppid}-0123456789ab-0`, 'notes.txt', `spool-${dead}-xyz-0`, `other-${dead}-0123456789ab-0`];
  for (const n of [...gone, ...stay]) writeFileSync(join(d, n), 'x');
  mkdirSync(join(d, `spool-${dead}-0123456789ab-2`));
  const { log, lines } = capturedLog();
  const r = await sweepSpoolDir(d, log);
  assert.deepEqual({ removed: r.removed, kept: r.kept }, { removed: 3, kept: 1 }, 'the earlier process with our pid counts as gone; our parent is running');
  assert.deepEqual(readdirSync(d).sort(), [ownName, ...stay, `spool-${dead}-0123456789ab-2`].sort());
  assert.deepEqual(
    lines.map((l) => [l.level, l.msg, l.removed]),
    [[30, 'spool: removed files left by processes that are gone', 3]],
  );
  // Once per directory: a second front end on it (or a reload) does not sweep again.
  writeFileSync(join(d, gone[0] as string), 'x');
  assert.equal(await sweepSpoolDir(join(d, '.'), log), r);
  assert.ok(existsSync(join(d, gone[0] as string)));
  assert.equal(lines.length, 1);
  // A directory that does not exist yet has nothing to sweep, and no warning.
  assert.equal((await sweepSpoolDir(join(dir, 'no-such-dir'), log)).removed, 0);
  assert.equal(lines.length, 1);
  await own.dispose();
});
