// `npm start`: installs what is missing (Debian packages, npm packages, the build), then runs
// `avgate serve` with the embedded defaults (or $AVGATE_CONFIG): project-local clamd with the
// generated test database, every front end on its default loopback port.
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const run = (cmd, args) => execFileSync(cmd, args, { stdio: 'inherit', cwd: root });

run(process.execPath, [join(root, 'scripts', 'ensure-deps.mjs')]);
run(process.execPath, [join(root, 'scripts', 'ensure-built.mjs')]);

const child = spawn(process.execPath, [join(root, 'bin', 'avgate.js'), 'serve', ...process.argv.slice(2)], {
  stdio: 'inherit',
  cwd: root,
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
