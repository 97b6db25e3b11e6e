import { parseConfigText } from '../../config/loader.js';
import { silentLogger } from '../../core/logging.js';
import { serve } from '../../main.js';

/** avgate's ICAP server in-process on a free loopback port, for `npm run bench`. */
export async function startIcapForBench(opts: {
  clamdSocket: string;
  dbDir: string;
  cache: boolean;
  stateDir: string;
}): Promise<{ port: number; stop(): Promise<void> }> {
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
    'icap:',
    '  listen: 127.0.0.1:0',
  ].join('\n');
  const s = await serve({ config: parseConfigText(text, 'bench.yaml'), path: null }, { logger: silentLogger() });
  if (s.icapPort === null) throw new Error('icap server not started');
  return { port: s.icapPort, stop: s.stop };
}
