/**
 * Starts avgate's mail filter in a child process (bench/mail-server.ts), as bench/avgate-icap.ts
 * does for the ICAP server: the child prints `READY {"port":N}`, and stops when its stdin closes
 * (SIGKILL after 10 s). The stop is registered for the clean-up of every exit path.
 */
import { startBenchChild } from './child.js';

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
  /** V8's heap pages in memory (getHeapStatistics().total_physical_size). */
  heapPhysical: number;
  /** What V8 itself holds from malloc. */
  malloced: number;
}

export async function startAvgateMail(p: {
  clamdSocket: string;
  dbDir: string;
  stateDir: string;
  nextHopPort: number;
  nodeFlags?: string[];
  startTimeoutMs?: number;
}): Promise<AvgateMailChild> {
  const c = await startBenchChild({
    script: 'mail-server',
    args: ['--clamd-socket', p.clamdSocket, '--db-dir', p.dbDir, '--state-dir', p.stateDir, '--next-hop-port', String(p.nextHopPort)],
    label: 'avgate mail filter',
    ...(p.nodeFlags ? { nodeFlags: p.nodeFlags } : {}),
    ...(p.startTimeoutMs !== undefined ? { startTimeoutMs: p.startTimeoutMs } : {}),
  });
  const child = c.child;
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
  return { port: c.port, pid: c.pid, runner: c.runner, stderrTail: c.stderrTail, memory, stop: c.stop };
}
