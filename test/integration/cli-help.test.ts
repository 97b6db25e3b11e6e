import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

const ROOT = new URL('../..', import.meta.url).pathname;

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // A config that does not exist: --help must not need one.
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/helpers/cli.ts'), '--config', '/nonexistent/avgate.yaml', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('latin1')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

test('every command answers --help with its usage on stdout and exit 0, without reading the config; no terminal control bytes', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['serve', '--help'], /^usage: avgate \[--config FILE\] serve/],
    [['status', '--help'], /^usage: avgate status/],
    [['signatures', '--help'], /^usage: avgate signatures update \| status/],
    [['admin', '-h'], /^usage: avgate admin passwd/],
    [['config', '--help'], /^usage: avgate config check\|show/],
    [['clamd', '--help'], /^usage: avgate clamd setup\|run/],
    [['quarantine', '--help'], /avgate quarantine/],
    [['policy', '--help'], /avgate policy/],
  ];
  for (const [args, usage] of cases) {
    const r = await cli(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stdout, usage, args.join(' '));
  }
  // scan's usage names the escapes it prints as text: ESC and CSI themselves would act on the terminal.
  const scan = await cli(['scan', '--help']);
  assert.equal(scan.code, 0, scan.stderr);
  assert.match(scan.stdout, /\\x1b, \\u009b,\s+\\xff/);
  const control = [...scan.stdout].filter((c) => c !== '\n' && c !== '\t' && (c.charCodeAt(0) < 0x20 || (c.charCodeAt(0) >= 0x7f && c.charCodeAt(0) <= 0x9f)));
  assert.deepEqual(control, [], 'no control bytes');
});

test('bin/avgate.js says so when dist/ is older than src/ (a checkout not rebuilt), and runs', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-bin-'));
  try {
    await mkdir(join(dir, 'bin'));
    await mkdir(join(dir, 'scripts'));
    await copyFile(join(ROOT, 'scripts', 'newest-mtime.mjs'), join(dir, 'scripts', 'newest-mtime.mjs'));
    await mkdir(join(dir, 'dist', 'src', 'cli'), { recursive: true });
    await mkdir(join(dir, 'src'));
    await copyFile(join(ROOT, 'bin', 'avgate.js'), join(dir, 'bin', 'avgate.js'));
    await writeFile(join(dir, 'package.json'), '{"type": "module"}');
    await writeFile(join(dir, 'dist', 'src', 'cli', 'main.js'), 'export async function main(args) { process.stdout.write(`ran ${args.join(" ")}\\n`); return 0; }\n');
    const run = () => spawnSync(process.execPath, [join(dir, 'bin', 'avgate.js'), 'x'], { encoding: 'utf8' });
    await writeFile(join(dir, 'src', 'a.ts'), '');
    const old = new Date(Date.now() - 60_000);
    await utimes(join(dir, 'dist', 'src', 'cli', 'main.js'), old, old);
    const stale = run();
    assert.equal(stale.stdout, 'ran x\n');
    assert.match(stale.stderr, /dist\/ is older than src\/: this runs the old build; run `npm run build`/);
    await utimes(join(dir, 'dist', 'src', 'cli', 'main.js'), new Date(), new Date());
    const fresh = run();
    assert.equal(fresh.stdout, 'ran x\n');
    assert.equal(fresh.stderr, '');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
