import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCicap, type Cicap } from '../../tools/peers/cicap.js';

export interface TestCicap extends Cicap {
  dir: string;
}

/**
 * A real c-icap (virus_scan, Debian's default file types) in front of the given clamd socket, in
 * a fresh directory that stop() removes.
 */
export async function startTestCicap(opts: { clamdSocket: string; startTimeoutMs?: number }): Promise<TestCicap> {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-cicap-'));
  let cicap: Cicap;
  try {
    cicap = await startCicap({ dir, clamdSocket: opts.clamdSocket, ...(opts.startTimeoutMs ? { startTimeoutMs: opts.startTimeoutMs } : {}) });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    ...cicap,
    dir,
    async stop() {
      await cicap.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
