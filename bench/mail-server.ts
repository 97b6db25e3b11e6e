/**
 * Child process of the mail section: `avgate serve` with its mail filter (default policy) on a
 * free loopback port, scanning with the benchmark's clamd and delivering to the benchmark's
 * smtp-sink — in a process of its own, so that the load generator does not share its event loop
 * and its CPU and RSS are its own (as in bench/icap-server.ts). Prints `READY {"port":N}` once it
 * listens; stops when stdin closes or on SIGTERM/SIGINT. A `MEM` line on stdin is answered with
 * `MEM {...}` on stdout: process.memoryUsage() after a full garbage collection (the child runs with
 * --expose-gc), to tell live memory from garbage not collected yet.
 *
 *   node dist/bench/mail-server.js --clamd-socket PATH --db-dir DIR --state-dir DIR --next-hop-port N
 */
import { getHeapStatistics } from 'node:v8';
import { arg, onParentLine, stopWhenParentSays } from './child.js';
import { startAvgatePeer } from '../tools/peers/avgate.js';

async function main(): Promise<void> {
  const nextHopPort = Number(arg('--next-hop-port'));
  if (!Number.isInteger(nextHopPort) || nextHopPort <= 0) throw new Error('--next-hop-port: expected a port');
  const s = await startAvgatePeer({
    stateDir: arg('--state-dir'),
    clamd: { socketPath: arg('--clamd-socket'), dbDir: arg('--db-dir') },
    // Everything else (smtp limits, pool, mail policy, cache) stays at its default.
    smtpYaml: `next-hop:\n  target: smtp:127.0.0.1:${nextHopPort}`,
  });
  if (s.smtpPort === null) {
    await s.stop();
    throw new Error('the mail filter did not start');
  }
  stopWhenParentSays('mail-server', () => s.stop());
  onParentLine((line) => {
    if (line !== 'MEM') return;
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    const m = process.memoryUsage();
    const h = getHeapStatistics();
    process.stdout.write(
      `MEM ${JSON.stringify({ gc: gc !== undefined, rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers, heapPhysical: h.total_physical_size, malloced: h.malloced_memory })}\n`,
    );
  });
  process.stdout.write(`READY ${JSON.stringify({ port: s.smtpPort })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`mail-server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
