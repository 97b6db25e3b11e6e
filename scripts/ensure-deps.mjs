// Installs what is missing before `npm start` and `npm test` on a fresh machine with only Node and
// npm: the Debian packages (scripts/system-deps.sh, a no-op when all are there) and the npm
// packages (npm ci when node_modules was never installed).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const run = (cmd, args) => execFileSync(cmd, args, { stdio: 'inherit', cwd: root });

run('bash', [join(root, 'scripts', 'system-deps.sh')]);
if (!existsSync(join(root, 'node_modules', '.package-lock.json'))) {
  run('npm', existsSync(join(root, 'package-lock.json')) ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund']);
}
