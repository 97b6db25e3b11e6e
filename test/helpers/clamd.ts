import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalClamd } from '../../src/engines/clamd/local.js';

export interface TestClamd {
  socketPath: string;
  tcpPort: number;
  dbDir: string;
  stateDir: string;
  clamd: LocalClamd;
  stop(): Promise<void>;
  /** RELOAD and wait until the new database is in use. */
  reload(): Promise<void>;
}

/** A real clamd with the generated test database, in a temporary directory, on a free port. */
export async function startTestClamd(opts: { streamMaxLength?: string; extra?: Record<string, string> } = {}): Promise<TestClamd> {
  const stateDir = await mkdtemp(join(tmpdir(), 'avgate-clamd-'));
  const clamd = new LocalClamd({
    stateDir,
    database: 'test',
    tcpPort: 0,
    maxThreads: 8,
    ...(opts.streamMaxLength ? { streamMaxLength: opts.streamMaxLength } : {}),
    ...(opts.extra ? { extra: opts.extra } : {}),
  });
  await clamd.start();
  return {
    socketPath: clamd.socketPath,
    tcpPort: clamd.tcpPort,
    dbDir: clamd.dbDir,
    stateDir,
    clamd,
    async stop() {
      await clamd.stop();
      await rm(stateDir, { recursive: true, force: true });
    },
    reload: () => clamd.reload(),
  };
}
