import { parseConfigText } from '../src/config/loader.js';
import { silentLogger } from '../src/core/logging.js';
import { serve } from '../src/main.js';

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
  const text = [
    `state-dir: ${opts.stateDir}`,
    'log:',
    '  level: silent',
    'clamd:',
    '  managed: false',
    'engines:',
    '  clamav:',
    '    type: clamd-net',
    '    options:',
    `      address: unix:${opts.clamdSocket}`,
    `      database-dir: ${opts.dbDir}`,
    'cache:',
    `  enabled: ${opts.cache}`,
    ...(big ? ['scan:', `  max-checked-size: ${big}`, '  scan-timeout: 30m'] : []),
    'icap:',
    '  listen: 127.0.0.1:0',
    ...(big ? ['  services:', '    avscan:', `      max-object-size: ${big}`] : []),
  ].join('\n');
  const s = await serve({ config: parseConfigText(text, 'bench.yaml'), path: null }, { logger: silentLogger() });
  if (s.icapPort === null) throw new Error('icap server not started');
  return { port: s.icapPort, stop: s.stop };
}
