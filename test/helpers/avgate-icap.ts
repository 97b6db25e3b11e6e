import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfigText } from '../../src/config/loader.js';
import { silentLogger } from '../../src/core/logging.js';
import { serve } from '../../src/main.js';
import type { IcapServer } from '../../src/protocols/icap/server.js';
import type { Runtime } from '../../src/runtime.js';
import type { TestClamd } from './clamd.js';

export interface TestIcap {
  port: number;
  tlsPort: number | null;
  url: (service?: string) => string;
  server: IcapServer;
  runtime: Runtime;
  stateDir: string;
  stop(): Promise<void>;
}

/**
 * avgate (serve) with its ICAP server on a free loopback port, scanning with a test clamd.
 * `icapYaml` is extra YAML inside the `icap:` section (written unindented); `yaml` is extra
 * top-level YAML (cache, scan ...); `extraEngines` more entries under `engines:` besides `clamav`.
 */
export async function startTestIcap(opts: { clamd: TestClamd; icapYaml?: string; yaml?: string; extraEngines?: string }): Promise<TestIcap> {
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-icap-'));
  const indent = (text: string) =>
    text
      .split('\n')
      .filter((l) => l.trim().length > 0)
      .map((l) => `  ${l}`)
      .join('\n');
  const text = [
    `state-dir: ${stateDir}`,
    'log:',
    '  level: silent',
    'clamd:',
    '  managed: false',
    'engines:',
    '  clamav:',
    '    type: clamd-net',
    '    options:',
    `      address: unix:${opts.clamd.socketPath}`,
    `      database-dir: ${opts.clamd.dbDir}`,
    indent(opts.extraEngines ?? ''),
    'icap:',
    '  listen: 127.0.0.1:0',
    indent(opts.icapYaml ?? ''),
    opts.yaml ?? '',
  ].join('\n');
  const config = parseConfigText(text, 'test-icap.yaml');
  const s = await serve({ config, path: null }, { logger: silentLogger() });
  if (!s.icap || s.icapPort === null) throw new Error('icap not started');
  const port = s.icapPort;
  return {
    port,
    tlsPort: s.icapTlsPort,
    url: (service = 'avscan') => `icap://127.0.0.1:${port}/${service}`,
    server: s.icap,
    runtime: s.runtime,
    stateDir,
    async stop() {
      await s.stop();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}
