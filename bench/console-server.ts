/**
 * Child process of the benchmark's console section: one avgate (`serve`, through
 * tools/peers/avgate.ts) with both its ICAP server and its web console (dashboard and scanning
 * API) on free loopback ports, scanning with the benchmark's clamd, its statistics in a given
 * SQLite file (filled beforehand by the parent). Writes `{"icapPort":N,"consolePort":N}` to the
 * ports file, then prints `READY {"port":ICAP}`; stops when stdin closes or on SIGTERM/SIGINT.
 *
 *   node dist/bench/console-server.js --clamd-socket PATH --db-dir DIR --state-dir DIR --stats-db FILE --ports-file FILE
 */
import { writeFile } from 'node:fs/promises';
import { startAvgatePeer } from '../tools/peers/avgate.js';
import { arg, stopWhenParentSays } from './child.js';

async function main(): Promise<void> {
  const s = await startAvgatePeer({
    stateDir: arg('--state-dir'),
    clamd: { socketPath: arg('--clamd-socket'), dbDir: arg('--db-dir') },
    // The filled store spans 90 days: a shorter event-retention would delete most of it at start.
    yaml: ['cache:', '  enabled: true', 'stats:', `  db: ${JSON.stringify(arg('--stats-db'))}`, '  event-retention: 100d'].join('\n'),
  });
  if (s.consolePort === null) {
    await s.stop();
    throw new Error('the console did not start');
  }
  stopWhenParentSays('console-server', () => s.stop());
  process.stdin.resume();
  await writeFile(arg('--ports-file'), JSON.stringify({ icapPort: s.icapPort, consolePort: s.consolePort }));
  process.stdout.write(`READY ${JSON.stringify({ port: s.icapPort })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`console-server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
