import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { runScanCommand, SCAN_USAGE } from '../../src/cli/scan.js';
import { CLAMAV_TESTFILES_DIR, eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Scanner } from '../../src/scan/scanner.js';
import { clamdScanner, startTestClamd, type TestClamd } from '../helpers/clamd.js';

class Capture extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout lines before the summary block. */
  lines: string[];
}

let clamd: TestClamd;
let scanner: Scanner;
let base: string;

async function scan(argv: string[], stdin: NodeJS.ReadableStream = Readable.from([])): Promise<Run> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await runScanCommand(argv, { scanner, stdout, stderr, stdin, isTTY: false });
  const all = stdout.text.split('\n');
  const end = all.indexOf('');
  return { code, stdout: stdout.text, stderr: stderr.text, lines: end === -1 ? all : all.slice(0, end) };
}

/** A fresh tree per test: two clean files, one EICAR file (written now, never stored in the repo). */
async function makeTree(name: string, eicarName = 'eicar.com'): Promise<{ root: string; eicar: string }> {
  const root = join(base, name);
  await mkdir(join(root, 'sub'), { recursive: true });
  await writeFile(join(root, 'clean.txt'), 'nothing to see here\n');
  await writeFile(join(root, 'sub', 'clean2.txt'), 'still nothing\n');
  const eicar = join(root, 'sub', eicarName);
  await writeFile(eicar, eicarBytes());
  return { root, eicar };
}

function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, stdout }));
  });
}

/** `path: Name1, Name2 FOUND` lines → path → sorted names. */
function foundMap(lines: string[]): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of lines) {
    const r = /^(.*): (.+) FOUND$/.exec(line);
    if (r) m.set(r[1] as string, (r[2] as string).split(', ').sort());
  }
  return m;
}

before(async () => {
  clamd = await startTestClamd();
  scanner = await clamdScanner(clamd, { maxCheckedSize: 100 * 1024 * 1024, scanTimeoutMs: 60_000, maxConcurrentScans: 4, maxQueue: 100, contextIdleTimeoutMs: 10_000 });
  base = await mkdtemp(join(tmpdir(), 'avgate-cli-scan-'));
});

after(async () => {
  await scanner?.close();
  await clamd?.stop();
  if (base) await rm(base, { recursive: true, force: true });
});

describe('avgate scan', () => {
  it('acceptance: finds what clamscan finds in clamav-testfiles, with the same names and exit code', { skip: !existsSync(CLAMAV_TESTFILES_DIR) }, async () => {
    const ours = await scan(['--no-summary', CLAMAV_TESTFILES_DIR]);
    const theirs = await run('clamscan', ['--no-summary', '-d', clamd.dbDir, CLAMAV_TESTFILES_DIR]);
    const oursFound = foundMap(ours.lines);
    const theirsFound = foundMap(theirs.stdout.split('\n'));
    assert.ok(theirsFound.size > 0, 'clamscan found nothing: test database not loaded?');
    assert.deepEqual(new Map([...oursFound].sort()), new Map([...theirsFound].sort()));
    assert.equal(theirs.code, 1);
    assert.equal(ours.code, 1);
    // Every file gets exactly one line.
    const files = await readdir(CLAMAV_TESTFILES_DIR);
    assert.equal(ours.lines.length, files.length, ours.stdout);
  });

  it('prints clamscan-style lines and a summary; exit 1 when something is found', async () => {
    const { root, eicar } = await makeTree('plain');
    const r = await scan([root]);
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.lines.includes(`${root}/clean.txt: OK`), r.stdout);
    assert.ok(r.lines.some((l) => l.startsWith(`${eicar}: `) && l.endsWith(' FOUND')), r.stdout);
    assert.match(r.stdout, /----------- SCAN SUMMARY -----------\nScanned files: 3\nInfected files: 1\nErrors: 0\nSkipped: 0\nData scanned: .+\nTime: [\d.]+ sec/);
  });

  it('--infected prints only the infected file (not the symbolic link the walk skips)', async () => {
    const { root, eicar } = await makeTree('infected-only');
    await symlink('/etc/hostname', join(root, 'link'));
    const r = await scan(['--infected', '--no-summary', root]);
    assert.equal(r.code, 1);
    assert.equal(r.lines.length, 1, r.stdout);
    assert.match(r.lines[0] as string, new RegExp(`^${eicar.replace(/[.]/g, '\\.')}: .*EICAR.* FOUND$`));
  });

  it('--json writes one parseable object per file and a summary object', async () => {
    const { root, eicar } = await makeTree('json');
    const r = await scan(['--json', root]);
    assert.equal(r.code, 1);
    const objs = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const results = objs.filter((o) => o.type === 'result');
    assert.equal(results.length, 3);
    const found = results.find((o) => o.path === eicar);
    assert.equal(found?.status, 'found');
    assert.ok(Array.isArray(found?.names) && (found.names as string[]).some((n) => /EICAR/.test(n)));
    assert.equal(found?.engine, 'clamav');
    assert.equal(typeof found?.ms, 'number');
    assert.equal(found?.bytes, eicarBytes().length);
    assert.equal(found?.cached, false);
    const last = objs.at(-1);
    assert.equal(last?.type, 'summary');
    assert.equal(last?.infected, 1);
    assert.equal(last?.scanned, 3);
  });

  it('--move moves the infected file, appending .1 on a name collision', async () => {
    const quarantine = join(base, 'quarantine');
    await mkdir(quarantine);
    const first = await makeTree('move1');
    const second = await makeTree('move2');
    const r1 = await scan(['--move', quarantine, first.root]);
    assert.equal(r1.code, 1);
    assert.ok(r1.lines.includes(`${first.eicar}: moved to ${join(quarantine, 'eicar.com')}`), r1.stdout);
    assert.equal(existsSync(first.eicar), false);
    const r2 = await scan(['--move', quarantine, second.root]);
    assert.ok(r2.lines.includes(`${second.eicar}: moved to ${join(quarantine, 'eicar.com.1')}`), r2.stdout);
    assert.deepEqual((await readdir(quarantine)).sort(), ['eicar.com', 'eicar.com.1']);
    assert.deepEqual(await readFile(join(quarantine, 'eicar.com.1')), eicarBytes());
    assert.equal(existsSync(join(first.root, 'clean.txt')), true);
  });

  it('--move to another file system (/dev/shm, a tmpfs): copied, the original gone, the summary printed (it used to hang or exit 0 mid-scan)', async () => {
    const quarantine = await mkdtemp('/dev/shm/avgate-move-');
    try {
      const { root, eicar } = await makeTree('move-xdev');
      const r = await scan(['--move', quarantine, root]);
      assert.equal(r.code, 1, r.stderr);
      assert.ok(r.lines.includes(`${eicar}: moved to ${join(quarantine, 'eicar.com')}`), r.stdout);
      assert.match(r.stdout, /Infected files: 1\n/);
      assert.equal(existsSync(eicar), false);
      assert.deepEqual(await readFile(join(quarantine, 'eicar.com')), eicarBytes());
    } finally {
      await rm(quarantine, { recursive: true, force: true });
    }
  });

  it('--move does not rescan its own quarantine directory inside the tree', async () => {
    const { root } = await makeTree('move-inside');
    const q = join(root, 'q');
    await mkdir(q);
    const r = await scan(['--move', q, root]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /Infected files: 1\n/);
    assert.deepEqual(await readdir(q), ['eicar.com']);
  });

  it('--move to a missing directory is refused before scanning', async () => {
    const { root, eicar } = await makeTree('move-missing');
    const r = await scan(['--move', join(base, 'no-such-dir'), root]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--move .*ENOENT/);
    assert.equal(r.stdout, '');
    assert.equal(existsSync(eicar), true);
  });

  it('--remove removes the infected file only', async () => {
    const { root, eicar } = await makeTree('remove');
    const r = await scan(['--remove', root]);
    assert.equal(r.code, 1);
    assert.ok(r.lines.includes(`${eicar}: removed`), r.stdout);
    assert.equal(existsSync(eicar), false);
    assert.equal(existsSync(join(root, 'clean.txt')), true);
  });

  it('--exec substitutes shell-quoted macros: a hostile file name does not inject', async () => {
    const marker = join(base, 'pwned');
    process.env.AVGATE_TEST_MARKER = marker;
    // No slash is possible in a name, so the payload takes the marker path from the environment.
    const hostile = `x'; touch "$AVGATE_TEST_MARKER"; echo '$(touch $AVGATE_TEST_MARKER)\`touch $AVGATE_TEST_MARKER\`;%FULLPATH%.com`;
    const { root, eicar } = await makeTree('exec', hostile);
    const out = join(base, 'exec-out.txt');
    const r = await scan(['--infected', '--exec', `printf '%s|%s|%s\\n' %FULLPATH% %FILENAME% %VIRUSNAMES% >> ${out}`, root]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.equal(existsSync(marker), false, 'the file name was executed by the shell');
    const [line, ...rest] = (await readFile(out, 'utf8')).split('\n');
    assert.deepEqual(rest, ['']);
    const [fullPath, fileName, names] = (line as string).split('|');
    assert.equal(fullPath, eicar);
    assert.equal(fileName, hostile);
    assert.match(names as string, /EICAR/);
    assert.ok(r.lines.some((l) => l.endsWith(': exec done (exit code 0)')), r.stdout);
    delete process.env.AVGATE_TEST_MARKER;
  });

  it('--exec: a macro inside double quotes (an admin\'s habit) runs no file name either; %FULLPATH% is absolute for a relative argument', async () => {
    const marker = join(base, 'pwned2');
    process.env.AVGATE_TEST_MARKER = marker;
    const hostile = `y$(touch $AVGATE_TEST_MARKER)\`touch $AVGATE_TEST_MARKER\`".com`;
    const { eicar } = await makeTree('exec-dq', hostile);
    const out = join(base, 'exec-dq-out.txt');
    const cwd = process.cwd();
    process.chdir(base);
    try {
      const r = await scan(['--infected', '--exec', `echo "[%FULLPATH%] [%VIRUSNAMES%]" >> ${out}`, 'exec-dq']);
      assert.equal(r.code, 1, r.stdout + r.stderr);
    } finally {
      process.chdir(cwd);
      delete process.env.AVGATE_TEST_MARKER;
    }
    assert.equal(existsSync(marker), false, 'the file name was executed by the shell');
    const line = (await readFile(out, 'utf8')).trim();
    assert.ok(line.startsWith(`[${eicar}] [`), line);
    assert.ok(eicar.startsWith('/'));
  });

  it('--report appends a line per infected or failed object', async () => {
    const { root, eicar } = await makeTree('report');
    const report = join(base, 'report.log');
    const missing = join(base, 'missing-file');
    const r = await scan(['--report', report, root, missing]);
    assert.equal(r.code, 1);
    const lines = (await readFile(report, 'utf8')).trim().split('\n');
    assert.equal(lines.length, 2, lines.join('\n'));
    assert.ok(lines.some((l) => /^\d{4}-\d\d-\d\dT[\d:.]+Z /.test(l) && l.includes(`${eicar}: `) && l.endsWith(' FOUND')));
    assert.ok(lines.some((l) => l.includes(`${missing}: ERROR (AVG_ERR_SOURCE: ENOENT`)));
    await scan(['--report', report, root]);
    assert.equal((await readFile(report, 'utf8')).trim().split('\n').length, 3);
  });

  it('"-" scans standard input', async () => {
    const bad = await scan(['-'], Readable.from([eicarBytes()]));
    assert.equal(bad.code, 1);
    assert.match(bad.lines[0] as string, /^stdin: .*EICAR.* FOUND$/);
    const good = await scan(['--no-summary', '-'], Readable.from([Buffer.from('hello\n')]));
    assert.equal(good.code, 0);
    assert.deepEqual(good.lines, ['stdin: OK']);
  });

  it('--list reads paths from a file', async () => {
    const { root, eicar } = await makeTree('list');
    const list = join(base, 'list.txt');
    await writeFile(list, `${join(root, 'clean.txt')}\n\n${join(root, 'sub')}\r\n`);
    const r = await scan(['--no-summary', '--list', list]);
    assert.equal(r.code, 1);
    assert.equal(r.lines.length, 3, r.stdout);
    assert.ok(r.lines.some((l) => l.startsWith(`${eicar}: `)));
    const dirAsList = await scan(['--no-summary', '--list', root]);
    assert.equal(dirAsList.code, 2);
    assert.deepEqual(dirAsList.lines, [`${root}: ERROR (AVG_ERR_SOURCE: EISDIR: illegal operation on a directory)`]);
  });

  it('--exclude and --max-depth limit what is scanned', async () => {
    const { root } = await makeTree('limits');
    const ex = await scan(['--no-summary', '--exclude', '*.com', root]);
    assert.equal(ex.code, 0);
    assert.equal(ex.lines.length, 2);
    const shallow = await scan(['--no-summary', '--max-depth', '1', root]);
    assert.equal(shallow.code, 0);
    assert.deepEqual(shallow.lines, [`${root}/clean.txt: OK`]);
  });

  it('reports a symbolic link in the tree as skipped and does not follow it by default', async () => {
    const { root } = await makeTree('symlinks');
    const outside = join(base, 'outside-eicar');
    await mkdir(outside, { recursive: true });
    await writeFile(join(outside, 'e.com'), eicarBytes());
    await symlink(outside, join(root, 'link'));
    await rm(join(root, 'sub'), { recursive: true });
    const r = await scan([root]);
    assert.equal(r.code, 0, r.stdout);
    assert.ok(r.lines.includes(`${root}/link: SKIPPED (symbolic link not followed)`), r.stdout);
    assert.match(r.stdout, /Skipped: 1\n/);
    const followed = await scan(['--follow-symlinks', root]);
    assert.equal(followed.code, 1);
  });

  it('exit 2 for a nonexistent path, while the rest is still scanned; exit 0 for a clean tree', async () => {
    const { root, eicar } = await makeTree('exit-codes');
    await rm(eicar);
    const missing = join(base, 'does-not-exist');
    const r = await scan([missing, root]);
    assert.equal(r.code, 2);
    assert.ok(r.lines.includes(`${missing}: ERROR (AVG_ERR_SOURCE: ENOENT: no such file or directory)`), r.stdout);
    assert.ok(r.lines.includes(`${root}/clean.txt: OK`));
    assert.match(r.stdout, /Errors: 1\n/);
    const clean = await scan([root]);
    assert.equal(clean.code, 0);
  });

  it('escapes control characters in printed paths so a name cannot forge a result line', async () => {
    const root = join(base, 'ctrl');
    await mkdir(root);
    await writeFile(join(root, 'a\nforged: OK\x1b[2J'), 'x');
    const r = await scan(['--no-summary', root]);
    assert.deepEqual(r.lines, [`${root}/a\\x0aforged: OK\\x1b[2J: OK`]);
  });

  it('usage errors exit 2 with the usage text; --help exits 0', async () => {
    const unknown = await scan(['--frobnicate', '/tmp']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /avgate scan: .*frobnicate/);
    assert.ok(unknown.stderr.includes(SCAN_USAGE));
    assert.equal((await scan([])).code, 2);
    assert.equal((await scan(['--max-depth', 'x', '/tmp'])).code, 2);
    assert.equal((await scan(['--move', base, '--remove', '/tmp'])).code, 2);
    assert.equal((await scan(['--list', '-'])).code, 2);
    const help = await scan(['--help']);
    assert.equal(help.code, 0);
    assert.equal(help.stdout, SCAN_USAGE);
  });
});
