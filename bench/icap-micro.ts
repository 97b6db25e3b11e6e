/**
 * A focused latency comparison for working on avgate's ICAP server: one object size, one request
 * at a time, unique content (random bytes appended), direct clamd INSTREAM vs c-icap vs avgate's
 * ICAP server (child process, verdict cache off unless --cache), with and without preview; two
 * rounds so that noise shows. Optionally profiles avgate (V8 CPU profile) or traces its garbage
 * collector. --warm sends the same body every time (with --cache: the verdict cache answers);
 * --mix 5000,2000000 cycles through several sizes (per-size medians); --gap MS pauses before each
 * timed request (a server woken from idle, as after a long scan). --node-flags "FLAGS" passes V8/node flags to avgate's process (e.g. "--trace-gc-nvp").
 *
 *   node dist/bench/icap-micro.js [--size BYTES] [--requests N] [--cache] [--warm] [--profile DIR] [--trace-gc] [--node-flags "F"] [--mix S1,S2,...] [--gap MS]
 *   npx tsx bench/icap-micro.ts --size 3000000 --requests 100 --profile /tmp/prof
 *   node dist/bench/cpuprofile-top.js /tmp/prof/CPU.*.cpuprofile
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LocalClamd } from '../src/engines/clamd/local.js';
import { startAvgateIcap } from './avgate-icap.js';
import { startBenchCicap } from './cicap.js';
import { directInstream } from './direct.js';
import { cleanupAll, log, onCleanup } from './harness.js';
import { IcapBenchClient } from './icap-client.js';
import { treeCpuMs } from './proc-cpu.js';
import { percentile } from './stats.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const size = Number(arg('--size') ?? 5000);
  const n = Number(arg('--requests') ?? 1000);
  const profile = arg('--profile');
  const traceGc = process.argv.includes('--trace-gc');
  const tmp = await mkdtemp(join(tmpdir(), 'avgate-icap-micro-'));
  onCleanup(() => rm(tmp, { recursive: true, force: true, maxRetries: 5 }));
  const clamd = new LocalClamd({ stateDir: join(tmp, 'clamd'), database: 'test', tcpPort: 0, maxThreads: 16, streamMaxLength: '100M' });
  onCleanup(() => clamd.stop());
  await clamd.start();
  const cicap = await startBenchCicap({ dir: join(tmp, 'c-icap'), clamdSocket: clamd.socketPath });
  onCleanup(() => cicap.stop());
  const flags = [...(profile ? ['--cpu-prof', '--cpu-prof-dir', profile] : []), ...(traceGc ? ['--trace-gc'] : []), ...(arg('--node-flags')?.split(' ').filter(Boolean) ?? [])];
  const avgate = await startAvgateIcap({ clamdSocket: clamd.socketPath, dbDir: clamd.dbDir, stateDir: join(tmp, 'avgate'), cache: process.argv.includes('--cache'), nodeFlags: flags, echoOutput: traceGc });

  const cpuSnapshot = async () => ({
    clamd: clamd.pid ? await treeCpuMs(clamd.pid) : 0,
    cicap: await treeCpuMs(cicap.pid),
    avgate: avgate ? await treeCpuMs(avgate.pid) : 0,
    client: (process.cpuUsage().user + process.cpuUsage().system) / 1000,
  });
  // --mix 5000,300000,2000000: requests cycle through these sizes (per-size medians are printed too).
  const sizes = arg('--mix')?.split(',').map(Number) ?? [size];
  const bases = sizes.map((s) => randomBytes(s));
  // --gap MS: an idle pause before each timed request (as behind a long scan): what a request costs a server that was asleep.
  const gapMs = Number(arg('--gap') ?? 0);
  const warm = process.argv.includes('--warm'); // the same body again and again (with --cache: cache hits)
  const body = (i: number) => {
    const base = bases[i % bases.length] as Buffer;
    return warm ? base : Buffer.concat([base, randomBytes(16)]);
  };
  const run = async (name: string, send: (b: Buffer) => Promise<unknown>) => {
    for (let i = 0; i < Math.min(200, n); i++) await send(body(i));
    const lat = new Float64Array(n);
    const bySize = sizes.map(() => [] as number[]);
    const cpu0 = await cpuSnapshot();
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const b = body(i);
      if (gapMs > 0) await sleep(gapMs);
      const s = performance.now();
      await send(b);
      lat[i] = performance.now() - s;
      bySize[i % sizes.length]?.push(lat[i] as number);
    }
    const seconds = (performance.now() - t0) / 1000;
    const cpu1 = await cpuSnapshot();
    lat.sort();
    const per = (a: number, b: number) => ((b - a) / n).toFixed(2);
    log(
      `${name.padEnd(18)} ${(n / seconds).toFixed(0).padStart(6)} req/s  p50 ${percentile(lat, 50).toFixed(3)} ms  p99 ${percentile(lat, 99).toFixed(3)} ms` +
        `  CPU ms/req: clamd ${per(cpu0.clamd, cpu1.clamd)} c-icap ${per(cpu0.cicap, cpu1.cicap)} avgate ${per(cpu0.avgate, cpu1.avgate)} client ${per(cpu0.client, cpu1.client)}` +
        (sizes.length > 1 ? `  p50 by size: ${sizes.map((s, k) => `${s} ${percentile(Float64Array.from(bySize[k] ?? []).sort(), 50).toFixed(2)}`).join(', ')}` : ''),
    );
  };
  const c = new IcapBenchClient(cicap.port, cicap.service);
  const a = avgate ? new IcapBenchClient(avgate.port, '/avscan') : null;
  log(`${sizes.join('/')} bytes, ${n} requests per line, concurrency 1, unique content`);
  for (let round = 0; round < 2; round++) {
    await run('direct', (b) => directInstream(clamd.socketPath, [b], 256 * 1024));
    await run('c-icap', (b) => c.respmod(b, { preview: 1024, allow204: true }));
    await run('c-icap-nopreview', (b) => c.respmod(b, { preview: null, allow204: true }));
    if (a) {
      await run('avgate', (b) => a.respmod(b, { preview: 1024, allow204: true }));
      await run('avgate-nopreview', (b) => a.respmod(b, { preview: null, allow204: true }));
    }
  }
  c.close();
  a?.close();
  await avgate?.stop(); // writes the CPU profile
}

try {
  await main();
} catch (err) {
  process.stderr.write(`icap-micro: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
