import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IcapServer } from '../../src/protocols/icap/server.js';
import type { Quarantine } from '../../src/quarantine/types.js';
import type { Runtime } from '../../src/runtime.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import type { TestClamd } from './clamd.js';

export interface TestIcap {
  port: number;
  tlsPort: number | null;
  url: (service?: string) => string;
  server: IcapServer;
  runtime: Runtime;
  quarantine: Quarantine;
  stateDir: string;
  stop(): Promise<void>;
}

/**
 * avgate (serve) with its ICAP server on a free loopback port, scanning with a test clamd, in a
 * fresh state directory that stop() removes. See tools/peers/avgate.ts for the YAML options.
 */
export async function startTestIcap(opts: { clamd: TestClamd; icapYaml?: string; yaml?: string; extraEngines?: string }): Promise<TestIcap> {
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-icap-'));
  const s = await startAvgatePeer({ stateDir, ...opts }).catch(async (err: unknown) => {
    await rm(stateDir, { recursive: true, force: true });
    throw err;
  });
  const port = s.icapPort;
  return {
    port,
    tlsPort: s.icapTlsPort,
    url: (service = 'avscan') => `icap://127.0.0.1:${port}/${service}`,
    server: s.icap as IcapServer,
    runtime: s.runtime,
    quarantine: s.quarantine,
    stateDir,
    async stop() {
      await s.stop();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}
