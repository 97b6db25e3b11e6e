/**
 * Child process of the benchmark: avgate's ICAP server, started through
 * bench/glue.ts (`startIcapForBench`), in a process of its own so that its CPU and memory
 * are its own (not the load generator's) — as avgate runs in production. Prints
 * `READY {"port":N}` once it listens; stops when stdin closes or on SIGTERM/SIGINT.
 *
 *   node dist/bench/icap-server.js --clamd-socket PATH --db-dir DIR --state-dir DIR [--cache yes|no] [--max-object-size BYTES]
 */
import { arg, stopWhenParentSays } from './child.js';
import { startIcapForBench, type IcapBenchOptions } from './glue.js';

async function main(): Promise<void> {
  const options: IcapBenchOptions = {
    clamdSocket: arg('--clamd-socket'),
    dbDir: arg('--db-dir'),
    stateDir: arg('--state-dir'),
    cache: /^(yes|on|true|1)$/i.test(process.argv.includes('--cache') ? arg('--cache') : 'yes'),
  };
  if (process.argv.includes('--max-object-size')) options.maxObjectSize = Number(arg('--max-object-size'));
  const server = await startIcapForBench(options);
  stopWhenParentSays('icap-server', () => server.stop());
  process.stdin.resume();
  process.stdout.write(`READY ${JSON.stringify({ port: server.port })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`icap-server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
