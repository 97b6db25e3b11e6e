import { startAvgatePeer } from '../tools/peers/avgate.js';

/** What the benchmark passes to avgate's ICAP server. */
export interface IcapBenchOptions {
  clamdSocket: string;
  dbDir: string;
  cache: boolean;
  stateDir: string;
  /** max-object-size and max-checked-size in bytes for the big-object run (default 100 MiB would refuse 2 GiB). */
  maxObjectSize?: number;
}

/** avgate (serve) with its ICAP server on a free loopback port, scanning with the given clamd. */
export async function startIcapForBench(opts: IcapBenchOptions): Promise<{ port: number; stop(): Promise<void> }> {
  const big = opts.maxObjectSize;
  const s = await startAvgatePeer({
    stateDir: opts.stateDir,
    clamd: { socketPath: opts.clamdSocket, dbDir: opts.dbDir },
    yaml: [`cache:\n  enabled: ${opts.cache}`, big ? `scan:\n  max-checked-size: ${big}\n  scan-timeout: 30m` : ''].join('\n'),
    ...(big ? { icapYaml: `services:\n  avscan:\n    max-object-size: ${big}` } : {}),
  });
  return { port: s.icapPort, stop: s.stop };
}
