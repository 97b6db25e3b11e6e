// Runs every test file under test/ with node's test runner (TypeScript through tsx).
// Node 20's --test does not expand globs, so the list is built here.
//
// Bounded: each file gets AVGATE_TEST_FILE_TIMEOUT seconds (default 300; node's --test-timeout
// applies to a whole file when files run in their own processes), and the whole run
// AVGATE_TEST_RUN_TIMEOUT seconds (default 2400). When the run limit is reached the test
// processes still running are listed (so the hanging file is named) and everything is stopped.
import { execFileSync, spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const only = process.argv.slice(2);
const seconds = (name, fallback) => {
  const v = Number(process.env[name] ?? fallback);
  return Number.isFinite(v) && v > 0 ? v : fallback;
};
const fileTimeoutS = seconds('AVGATE_TEST_FILE_TIMEOUT', 300);
const runTimeoutS = seconds('AVGATE_TEST_RUN_TIMEOUT', 2400);

function collect(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...collect(p));
    else if (e.name.endsWith('.test.ts')) out.push(relative(root, p));
  }
  return out;
}

let files = collect(join(root, 'test')).sort();
if (only.length > 0) files = files.filter((f) => only.some((o) => f.includes(o)));
// Its own process group, so that a stop reaches every file's process and what they started.
const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', `--test-timeout=${fileTimeoutS * 1000}`, ...files], {
  stdio: 'inherit',
  cwd: root,
  detached: true,
});

const stopAll = (signal) => {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // gone already
  }
};
const watchdog = setTimeout(() => {
  console.error(`\nrun-tests: the run took longer than ${runTimeoutS} s (AVGATE_TEST_RUN_TIMEOUT); still running:`);
  try {
    const lines = execFileSync('ps', ['-eo', 'pgid=,pid=,etime=,args='], { encoding: 'utf8' }).split('\n');
    console.error(lines.filter((l) => l.trim().split(/\s+/)[0] === String(child.pid)).join('\n'));
  } catch (err) {
    console.error(`(ps failed: ${err.message})`);
  }
  stopAll('SIGTERM');
  setTimeout(() => stopAll('SIGKILL'), 5000).unref();
  process.exitCode = 1;
}, runTimeoutS * 1000);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    stopAll(sig);
    process.exit(1);
  });
}
child.on('exit', (code) => {
  clearTimeout(watchdog);
  // Whatever a test left behind in the group (a peer daemon that outlived its file).
  stopAll('SIGKILL');
  process.exit(process.exitCode ?? code ?? 1);
});
