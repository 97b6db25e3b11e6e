/**
 * Starts `avgate serve` with one front end (bench/http-avgate-server.ts) in a child process, as
 * bench/avgate-icap.ts does for the ICAP server: the child prints `READY {"port":N}` and stops
 * when its stdin closes (SIGKILL after 10 s); the stop is registered for every exit path.
 */
import { startBenchChild } from './child.js';
import type { FrontEnd } from './http-avgate-server.js';

export interface AvgateFrontChild {
  port: number;
  pid: number;
  runner: string;
  stderrTail(): string;
  stop(): Promise<void>;
}

export async function startAvgateFront(p: {
  front: FrontEnd;
  clamdSocket: string;
  dbDir: string;
  stateDir: string;
  /** YAML inside the front end's section (unindented), e.g. the upstream server. */
  frontYaml?: string;
  nodeFlags?: string[];
}): Promise<AvgateFrontChild> {
  const args = ['--front', p.front, '--clamd-socket', p.clamdSocket, '--db-dir', p.dbDir, '--state-dir', p.stateDir];
  if (p.frontYaml) args.push('--front-yaml', p.frontYaml);
  const c = await startBenchChild({
    script: 'http-avgate-server',
    args,
    label: `avgate ${p.front}`,
    ...(p.nodeFlags ? { nodeFlags: p.nodeFlags } : {}),
  });
  return { port: c.port, pid: c.pid, runner: c.runner, stderrTail: c.stderrTail, stop: c.stop };
}
