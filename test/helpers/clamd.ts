import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { VerdictCache } from '../../src/cache/verdict-cache.js';
import { silentLogger } from '../../src/core/logging.js';
import { LocalClamd } from '../../src/engines/clamd/local.js';
import { ClamdNetEngine } from '../../src/engines/clamd/net.js';
import { Scanner, type ScannerLimits } from '../../src/scan/scanner.js';

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
    tcpPort: clamd.tcpPort as number, // 0 was asked for: a free port was picked
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

/**
 * A Scanner with one clamd-net engine on the test clamd's unix socket (database-dir set, so the
 * verdict cache key follows the database); `cache` null = no verdict cache.
 */
export async function clamdScanner(clamd: TestClamd, limits: Partial<ScannerLimits> = {}, cache: VerdictCache | null = null): Promise<Scanner> {
  const engine = new ClamdNetEngine();
  engine.configure([
    { name: 'address', value: `unix:${clamd.socketPath}` },
    { name: 'database-dir', value: clamd.dbDir },
  ]);
  await engine.init();
  return new Scanner(
    [{ id: 'clamav', engine }],
    { maxCheckedSize: 10 * 1024 * 1024, scanTimeoutMs: 30_000, maxConcurrentScans: 4, maxQueue: 100, contextIdleTimeoutMs: 10_000, ...limits },
    cache,
    silentLogger(),
  );
}

/**
 * The `engines:` entry of a clamd engine that answers `delayMs` late (test/fixtures/ftp-delay-engine.ts,
 * an engine plugin): for trickling, held transfers and timeouts that must not fire during a scan.
 */
export function delayEngineYaml(clamd: TestClamd, delayMs = 3000, id = 'delay'): string {
  return [
    `${id}:`,
    '  type: plugin',
    `  module: ${fileURLToPath(new URL('../fixtures/ftp-delay-engine.ts', import.meta.url))}`,
    '  options:',
    `    address: unix:${clamd.socketPath}`,
    `    database-dir: ${clamd.dbDir}`,
    `    delay-ms: ${delayMs}`,
  ].join('\n');
}
