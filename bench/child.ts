/**
 * A benchmark server in a child process (bench/icap-server.ts, bench/mail-server.ts): the load
 * generator must not share the server's event loop, and RSS must be the server's alone. The child
 * prints `READY {"port":N}` and stops when its stdin closes (SIGKILL after 10 s); the stop is
 * registered for the clean-up of every exit path.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { childScript, onCleanup, projectRoot } from './harness.js';

export interface BenchChild {
  child: ChildProcess;
  port: number;
  pid: number;
  runner: string;
  stderrTail(): string;
  stop(): Promise<void>;
}

export async function startBenchChild(o: {
  script: string;
  args: string[];
  label: string;
  nodeFlags?: string[];
  startTimeoutMs?: number;
}): Promise<BenchChild> {
  const { args, runner } = childScript(o.script, o.nodeFlags ?? []);
  args.push(...o.args);
  const child: ChildProcess = spawn(process.execPath, args, { cwd: projectRoot, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<void>((res) => {
    if (child.exitCode !== null || child.signalCode !== null) res();
    else child.once('exit', () => res());
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.stdin?.end(); // the child stops its server and exits
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  onCleanup(stop);
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${o.label} did not start in time: ${stderr.trim()}`)), o.startTimeoutMs ?? 30_000);
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('READY '));
      if (line) {
        clearTimeout(timer);
        resolve((JSON.parse(line.slice(6)) as { port: number }).port);
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${o.label} exited during start-up (${code ?? sig}): ${stderr.trim()}`));
    });
  });
  if (child.pid === undefined) throw new Error(`${o.label}: no pid`);
  return { child, port, pid: child.pid, runner, stderrTail: () => stderr.trim(), stop };
}

/** In a child: the value after `--name` on the command line (required). */
export function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (v === undefined) throw new Error(`${name} is required`);
  return v;
}

/** In the child: stop (then exit 0) on SIGTERM, SIGINT, or when the parent closes stdin. */
export function stopWhenParentSays(name: string, stopServer: () => Promise<void>): void {
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= stopServer()
      .catch((err: unknown) => {
        process.stderr.write(`${name}: stop: ${err instanceof Error ? err.message : String(err)}\n`);
      })
      .finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
}

/** In a child: `onLine` for each line (trimmed) the parent writes to stdin (commands such as COUNT or MEM). */
export function onParentLine(onLine: (line: string) => void): void {
  let input = '';
  process.stdin.on('data', (d: Buffer) => {
    input += d.toString();
    for (let nl = input.indexOf('\n'); nl >= 0; nl = input.indexOf('\n')) {
      const line = input.slice(0, nl).trim();
      input = input.slice(nl + 1);
      onLine(line);
    }
  });
}
