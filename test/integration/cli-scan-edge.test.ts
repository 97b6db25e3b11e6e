import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { printablePath, runScanCommand } from '../../src/cli/scan.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Scanner } from '../../src/scan/scanner.js';
import { clamdScanner, startTestClamd, type TestClamd } from '../helpers/clamd.js';

/**
 * `avgate scan` on awkward trees: names that are not UTF-8, control characters beyond ASCII,
 * special files, and a directory swapped for a symbolic link between the scan and the action.
 */

class Capture extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

let clamd: TestClamd;
let scanner: Scanner;
let base: string;

async function scan(argv: string[]): Promise<{ code: number; stdout: string; stderr: string; lines: string[] }> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await runScanCommand(argv, { scanner, stdout, stderr, stdin: Readable.from([]), isTTY: false });
  const all = stdout.text.split('\n');
  const end = all.indexOf('');
  return { code, stdout: stdout.text, stderr: stderr.text, lines: end === -1 ? all : all.slice(0, end) };
}

/** A path made of text and raw bytes: `bytes(root, '/bad', [0xff], '.com')`. */
function bytes(...parts: Array<string | number[]>): Buffer {
  return Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
}

before(async () => {
  clamd = await startTestClamd();
  scanner = await clamdScanner(clamd, { maxCheckedSize: 10 * 1024 * 1024, scanTimeoutMs: 30_000, maxConcurrentScans: 2, maxQueue: 20, contextIdleTimeoutMs: 10_000 });
  base = await mkdtemp(join(tmpdir(), 'avgate-cli-scan-edge-'));
});

after(async () => {
  await scanner?.close();
  await clamd?.stop();
  if (base) await rm(base, { recursive: true, force: true });
});

describe('avgate scan: names that are not UTF-8', () => {
  it('scans files and directories whose names are not valid UTF-8 and prints their bytes escaped', async () => {
    const root = join(base, 'latin1');
    await mkdir(root);
    // Two names that decode to the same text (U+FFFD for the bad byte), both infected, and a
    // directory with such a name holding a third infected file.
    await writeFile(bytes(root, '/bad', [0xff], '.com'), eicarBytes());
    await writeFile(bytes(root, '/bad', [0xfe], '.com'), eicarBytes());
    await mkdir(bytes(root, '/dir', [0xe9]));
    await writeFile(bytes(root, '/dir', [0xe9], '/in.com'), eicarBytes());
    await writeFile(join(root, 'clean.txt'), 'clean\n');
    const r = await scan(['--no-summary', root]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const sorted = [...r.lines].sort();
    assert.equal(sorted.length, 4, r.stdout);
    assert.match(sorted[0] as string, /^.*\/bad\\xfe\.com: .*EICAR.* FOUND$/);
    assert.match(sorted[1] as string, /^.*\/bad\\xff\.com: .*EICAR.* FOUND$/);
    assert.equal(sorted[2], `${root}/clean.txt: OK`);
    assert.match(sorted[3] as string, /^.*\/dir\\xe9\/in\.com: .*EICAR.* FOUND$/);
    assert.ok(!r.stdout.includes('\uFFFD'), 'a replacement character hides which bytes the name has');
  });

  it('--json gives the exact bytes in pathBase64; --remove removes exactly the infected file', async () => {
    const root = join(base, 'latin1-json');
    await mkdir(root);
    const bad = bytes(root, '/x', [0xff]);
    const innocent = bytes(root, '/x', [0xfe]);
    await writeFile(bad, eicarBytes());
    await writeFile(innocent, 'not a virus\n');
    const r = await scan(['--json', '--remove', root]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const results = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((o) => o.type === 'result');
    const found = results.find((o) => o.status === 'found');
    assert.ok(found, r.stdout);
    assert.equal(found.pathBase64, bad.toString('base64'));
    assert.deepEqual(found.actions, [{ action: 'removed', ok: true, detail: 'removed' }]);
    const free = results.find((o) => o.status === 'free');
    assert.equal(free?.pathBase64, innocent.toString('base64'));
    assert.deepEqual((await readdir(root, { encoding: 'buffer' })).map((n) => n.toString('hex')), [Buffer.from([0x78, 0xfe]).toString('hex')]);
  });

  it('--move keeps the name bytes; --exec is not run with a name it cannot pass on', async () => {
    const root = join(base, 'latin1-move');
    const q = join(base, 'latin1-q');
    await mkdir(root);
    await mkdir(q);
    await writeFile(bytes(root, '/m', [0xff], '.com'), eicarBytes());
    const marker = join(base, 'latin1-exec-ran');
    const r = await scan(['--no-summary', '--exec', `touch ${marker}`, '--move', q, root]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.ok(r.lines.includes(`${root}/m\\xff.com: exec failed (not run: the path is not valid UTF-8)`), r.stdout);
    assert.ok(r.lines.includes(`${root}/m\\xff.com: moved to ${q}/m\\xff.com`), r.stdout);
    assert.equal(existsSync(marker), false);
    assert.deepEqual(await readFile(bytes(q, '/m', [0xff], '.com')), eicarBytes());
  });
});

describe('avgate scan: what a path may do to the output', () => {
  it('escapes C1 controls (8-bit CSI) as well as C0', async () => {
    assert.equal(printablePath('a\u009b2Jb'), 'a\\u009b2Jb');
    assert.equal(printablePath('a\x1b[2Jb\\'), 'a\\x1b[2Jb\\\\');
    const root = join(base, 'c1');
    await mkdir(root);
    await writeFile(join(root, 'x\u009b2J\u0085y'), 'clean\n');
    const r = await scan(['--no-summary', root]);
    assert.deepEqual(r.lines, [`${root}/x\\u009b2J\\u0085y: OK`]);
  });

  it('a FIFO in the tree or named, and a device, are skipped without blocking', { timeout: 30_000 }, async () => {
    const root = join(base, 'special');
    await mkdir(root);
    execFileSync('mkfifo', [join(root, 'fifo')]);
    await writeFile(join(root, 'clean.txt'), 'clean\n');
    const r = await scan(['--no-summary', root, join(root, 'fifo'), '/dev/null']);
    assert.equal(r.code, 0, r.stdout);
    assert.deepEqual([...r.lines].sort(), [`${root}/clean.txt: OK`, `${root}/fifo: SKIPPED (not a regular file)`, `${root}/fifo: SKIPPED (not a regular file)`, '/dev/null: SKIPPED (not a regular file)'].sort());
  });
});

describe('avgate scan: a directory swapped for a link before the action', () => {
  /**
   * tree/sub/eicar.com is found. Before move or remove runs, tree/sub is renamed away and replaced
   * by a link to another directory holding a file of the same name (here the --exec hook does the
   * swap, which a hostile user would race for). The action must not touch that other file.
   */
  async function swapSetup(name: string): Promise<{ root: string; victim: string; hook: string }> {
    const root = join(base, name);
    const elsewhere = join(base, `${name}-elsewhere`);
    await mkdir(join(root, 'sub'), { recursive: true });
    await mkdir(elsewhere);
    await writeFile(join(root, 'sub', 'eicar.com'), eicarBytes());
    const victim = join(elsewhere, 'eicar.com');
    await writeFile(victim, 'an important file of somebody else\n');
    const hook = `mv ${root}/sub ${root}/sub.old && ln -s ${elsewhere} ${root}/sub`;
    return { root, victim, hook };
  }

  it('an object over max-checked-size: SKIPPED, exit 0; with --alert-exceeds-max FOUND as Heuristics.Limits.Exceeded, exit 1, --move applies', async () => {
    const dir = join(base, 'exceeds');
    await mkdir(dir, { recursive: true });
    const big = join(dir, 'big.bin');
    const fd = await open(big, 'w');
    await fd.truncate(10 * 1024 * 1024 + 1); // sparse: no disk, one byte over the limit
    await fd.close();
    await writeFile(join(dir, 'small.txt'), 'fine\n');
    const plain = await scan([dir]);
    assert.equal(plain.code, 0, plain.stdout);
    assert.ok(plain.lines.includes(`${big}: SKIPPED (larger than max-checked-size (10485760 bytes))`), plain.stdout);
    const q = join(base, 'exceeds-q');
    await mkdir(q);
    const alert = await scan(['--alert-exceeds-max', '--move', q, dir]);
    assert.equal(alert.code, 1, alert.stdout);
    assert.ok(alert.lines.includes(`${big}: Heuristics.Limits.Exceeded.MaxCheckedSize FOUND`), alert.stdout);
    assert.ok(alert.lines.includes(`${join(dir, 'small.txt')}: OK`));
    assert.deepEqual(await readdir(q), ['big.bin']);
  });

  it('--remove leaves the file the path now leads to', async () => {
    const { root, victim, hook } = await swapSetup('swap-remove');
    const r = await scan(['--no-summary', '--exec', hook, '--remove', root]);
    assert.equal(existsSync(victim), true, `the file outside the tree was removed:\n${r.stdout}`);
    assert.equal(r.code, 1);
    assert.ok(r.lines.some((l) => l.startsWith(`${root}/sub/eicar.com: remove failed: is no longer the file that was scanned`)), r.stdout);
    assert.equal(existsSync(join(root, 'sub.old', 'eicar.com')), true);
  });

  it('--move leaves the file the path now leads to', async () => {
    const { root, victim, hook } = await swapSetup('swap-move');
    const q = join(base, 'swap-q');
    await mkdir(q);
    const r = await scan(['--no-summary', '--exec', hook, '--move', q, root]);
    assert.equal(existsSync(victim), true, `the file outside the tree was moved:\n${r.stdout}`);
    assert.deepEqual(await readdir(q), []);
    assert.ok(r.lines.some((l) => l.startsWith(`${root}/sub/eicar.com: move failed: is no longer the file that was scanned`)), r.stdout);
  });
});
