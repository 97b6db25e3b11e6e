// Compiles src/ and bench/ to dist/ when dist is missing or older than a source file.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;

function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

const stamp = join(root, 'dist', 'src', 'cli', 'main.js');
const sources = Math.max(newest(join(root, 'src')), newest(join(root, 'bench')), newest(join(root, 'tools')));
if (!existsSync(stamp) || statSync(stamp).mtimeMs < sources) {
  process.stderr.write('avgate: building (tsc)\n');
  execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json')], {
    stdio: 'inherit',
    cwd: root,
  });
}
