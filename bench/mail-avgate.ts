/**
 * Starts avgate's mail filter in a child process (bench/mail-server.ts), as bench/avgate-icap.ts
 * does for the ICAP server: the child prints `READY {"port":N}`, and stops when its stdin closes
 * (SIGKILL after 10 s). The stop is registered for the clean-up of every exit path.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { childScript, onCleanup, projectRoot } from './harness.js';

export interface AvgateMailChild {
  port: number;
  pid: number;
  runner: string;
  stderrTail(): string;
  /** The child's memory after a full GC (null if it did not answer within 10 s). */
  memory(): Promise<ChildMemory | null>;
  stop(): Promise<void>;
}

/** process.memoryUsage() of the child, in bytes, after gc() when `gc` is true. */
export interface ChildMemory {
  gc: boolean;
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
}

export async function startAvgateMail(p: {
  clamdSocket: string;
  dbDir: string;
  stateDir: string;
  nextHopPort: number;
  nodeFlags?: string[];
  startTimeoutMs?: number;
}): Promise<AvgateMailChild> {
  const { args, runner } = childScript('mail-server', p.nodeFlags ?? []);
  args.push('--clamd-socket', p.clamdSocket, '--db-dir', p.dbDir, '--state-dir', p.stateDir, '--next-hop-port', String(p.nextHopPort));
  const child: ChildProcess = spawn(process.execPath, args, { cwd: projectRoot, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<void>((res) => {
    if (child.exitCode !== null || child.signalCode !== null) res();
    else child.once('exit', () => res());
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.stdin?.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  onCleanup(stop);
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`avgate mail filter did not start in time: ${stderr.trim()}`)), p.startTimeoutMs ?? 30_000);
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
      reject(new Error(`avgate mail filter exited during start-up (${code ?? sig}): ${stderr.trim()}`));
    });
  });
  if (child.pid === undefined) throw new Error('avgate mail filter: no pid');
  let pendingMem: Array<(m: ChildMemory | null) => void> = [];
  let lines = '';
  child.stdout?.on('data', (d: Buffer) => {
    lines += d.toString();
    let nl: number;
    while ((nl = lines.indexOf('\n')) >= 0) {
      const line = lines.slice(0, nl);
      lines = lines.slice(nl + 1);
      if (line.startsWith('MEM ')) pendingMem.shift()?.(JSON.parse(line.slice(4)) as ChildMemory);
    }
  });
  const memory = () =>
    new Promise<ChildMemory | null>((resolve) => {
      const timer = setTimeout(() => {
        pendingMem = pendingMem.filter((f) => f !== answer);
        resolve(null);
      }, 10_000);
      const answer = (m: ChildMemory | null) => {
        clearTimeout(timer);
        resolve(m);
      };
      pendingMem.push(answer);
      child.stdin?.write('MEM\n');
    });
  return { port, pid: child.pid, runner, stderrTail: () => stderr.trim(), memory, stop };
}
