// Compiles src/ and bench/ to dist/ when dist is missing or older than a source file.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { newest } from './newest-mtime.mjs';

const root = new URL('..', import.meta.url).pathname;

const stamp = join(root, 'dist', 'src', 'cli', 'main.js');
const sources = Math.max(newest(join(root, 'src')), newest(join(root, 'bench')), newest(join(root, 'tools')));
if (!existsSync(stamp) || statSync(stamp).mtimeMs < sources) {
  process.stderr.write('avgate: building (tsc)\n');
  execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json')], {
    stdio: 'inherit',
    cwd: root,
  });
}
