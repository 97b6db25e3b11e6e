#!/usr/bin/env node
// Thin launcher: the CLI lives in src/cli (compiled to dist/ by `npm run build`).
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;

// In a checkout (src/ beside dist/): a build older than the sources would run silently with what
// the sources no longer say. Said on stderr; `npm start` and `npm run build` build it.
const built = join(root, 'dist', 'src', 'cli', 'main.js');
if (existsSync(join(root, 'src')) && existsSync(built)) {
  const { newest } = await import('../scripts/newest-mtime.mjs');
  if (statSync(built).mtimeMs < newest(join(root, 'src'))) {
    process.stderr.write('avgate: warning: dist/ is older than src/: this runs the old build; run `npm run build`\n');
  }
}

const { main } = await import('../dist/src/cli/main.js');
main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    process.stderr.write(`avgate: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 2;
  },
);
