/**
 * Starts avgate's ICAP server in a child process (bench/icap-server.ts) and samples its memory.
 * A child, not this process: the load generator must not share the server's event loop (that
 * would charge the client's work to avgate, and c-icap too runs in processes of its own), and RSS
 * must be the server's alone.
 */
import { readFile } from 'node:fs/promises';
import { startBenchChild } from './child.js';

export interface AvgateIcapChild {
  port: number;
  pid: number;
  runner: string;
  stderrTail(): string;
  stop(): Promise<void>;
}

export async function startAvgateIcap(p: {
  clamdSocket: string;
  dbDir: string;
  stateDir: string;
  cache: boolean;
  /** Passed to the glue as maxObjectSize (see bench/glue.ts). */
  maxObjectSize?: number;
  /** Extra node flags (e.g. --cpu-prof --cpu-prof-dir DIR). */
  nodeFlags?: string[];
  /** Copy the child's stdout after READY to this process's stderr (for --trace-gc output). */
  echoOutput?: boolean;
  startTimeoutMs?: number;
}): Promise<AvgateIcapChild> {
  const args = ['--clamd-socket', p.clamdSocket, '--db-dir', p.dbDir, '--state-dir', p.stateDir, '--cache', p.cache ? 'yes' : 'no'];
  if (p.maxObjectSize !== undefined) args.push('--max-object-size', String(p.maxObjectSize));
  const c = await startBenchChild({
    script: 'icap-server',
    args,
    label: 'avgate ICAP server',
    ...(p.nodeFlags ? { nodeFlags: p.nodeFlags } : {}),
    ...(p.startTimeoutMs !== undefined ? { startTimeoutMs: p.startTimeoutMs } : {}),
  });
  c.child.stdout?.on('data', (d: Buffer) => {
    if (p.echoOutput) process.stderr.write(d);
  });
  return { port: c.port, pid: c.pid, runner: c.runner, stderrTail: c.stderrTail, stop: c.stop };
}

/** VmRSS and VmHWM (peak RSS since the process started) of a process, in MiB. */
export async function rssOf(pid: number): Promise<{ rssMB: number; hwmMB: number } | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
    return { rssMB: kb('VmRSS') / 1024, hwmMB: kb('VmHWM') / 1024 };
  } catch {
    return null;
  }
}

/** Samples a process's RSS every `everyMs` until stopped; the kernel's VmHWM catches peaks between samples. */
export function sampleRss(pid: number, everyMs = 50): { stop(): Promise<{ peakSampledMB: number; hwmMB: number; samples: number }> } {
  let peak = 0;
  let samples = 0;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    void rssOf(pid).then((r) => {
      busy = false;
      if (!r) return;
      samples++;
      if (r.rssMB > peak) peak = r.rssMB;
    });
  }, everyMs);
  return {
    async stop() {
      clearInterval(timer);
      const r = await rssOf(pid);
      if (r && r.rssMB > peak) peak = r.rssMB;
      return { peakSampledMB: peak, hwmMB: r?.hwmMB ?? Number.NaN, samples };
    },
  };
}
