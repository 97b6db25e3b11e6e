/**
 * Child process of the benchmark: streams one large generated object (default 2 GiB) through
 * avgate's Scanner (stream source, one clamd-net engine, no cache) to the clamd whose unix socket
 * is given, sampling this process's RSS every 100 ms. Prints one JSON line (`BIGOBJECT {...}`) on
 * stdout. Run in its own process so that the corpus buffers of the parent do not count.
 *
 *   node --expose-gc dist/bench/big-object.js --socket /path/clamd.sock [--bytes N] [--chunk N]
 */
import { randomFillSync } from 'node:crypto';
import { Readable } from 'node:stream';
import { ClamdNetEngine } from '../src/engines/clamd/net.js';
import { silentLogger } from '../src/core/logging.js';
import { describeVerdict } from '../src/core/verdict.js';
import { Scanner } from '../src/scan/scanner.js';

export interface BigObjectResult {
  bytesRequested: number;
  bytesSent: number;
  status: string;
  verdict: string;
  seconds: number;
  mbPerSec: number;
  baselineRssMB: number;
  peakRssMB: number;
  peakHeapUsedMB: number;
  peakExternalMB: number;
  samples: number;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/**
 * Pseudo-random content made on the fly: a fresh buffer per read, filled from the CSPRNG (several
 * GB/s, cheaper than the scan). Nothing is kept: memory stays at what the pipeline buffers.
 */
class Generated extends Readable {
  private sent = 0;
  constructor(
    private readonly total: number,
    private readonly chunk: number,
  ) {
    super({ highWaterMark: chunk });
  }
  override _read(): void {
    const n = Math.min(this.chunk, this.total - this.sent);
    if (n <= 0) {
      this.push(null);
      return;
    }
    const b = Buffer.allocUnsafe(n);
    randomFillSync(b);
    this.sent += n;
    this.push(b);
  }
}

const mb = (n: number) => n / (1024 * 1024);

async function main(): Promise<void> {
  const socket = arg('--socket');
  if (!socket) throw new Error('--socket PATH is required');
  const total = Number(arg('--bytes') ?? 2 * 1024 ** 3);
  const chunk = Number(arg('--chunk') ?? 256 * 1024);

  const engine = new ClamdNetEngine();
  engine.configure([
    { name: 'address', value: `unix:${socket}` },
    { name: 'session', value: 'yes' },
  ]);
  await engine.init();
  const scanner = new Scanner(
    [{ id: 'clamd', engine }],
    {
      maxCheckedSize: total + 1024 ** 2,
      scanTimeoutMs: 15 * 60_000,
      maxConcurrentScans: 1,
      maxQueue: 1,
      contextIdleTimeoutMs: 60_000,
    },
    null,
    silentLogger(),
  );

  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const baseline = process.memoryUsage();
  let peakRss = baseline.rss;
  let peakHeap = baseline.heapUsed;
  let peakExternal = baseline.external;
  let samples = 0;
  const sample = () => {
    const m = process.memoryUsage();
    samples++;
    if (m.rss > peakRss) peakRss = m.rss;
    if (m.heapUsed > peakHeap) peakHeap = m.heapUsed;
    if (m.external > peakExternal) peakExternal = m.external;
  };
  const timer = setInterval(sample, 100);

  const started = performance.now();
  const verdict = await scanner.scan({ source: { kind: 'stream', stream: new Generated(total, chunk) }, name: 'big-object' });
  const seconds = (performance.now() - started) / 1000;
  sample();
  clearInterval(timer);
  await scanner.close();

  const result: BigObjectResult = {
    bytesRequested: total,
    bytesSent: verdict.bytes,
    status: verdict.status,
    verdict: describeVerdict(verdict),
    seconds,
    mbPerSec: mb(verdict.bytes) / seconds,
    baselineRssMB: mb(baseline.rss),
    peakRssMB: mb(peakRss),
    peakHeapUsedMB: mb(peakHeap),
    peakExternalMB: mb(peakExternal),
    samples,
  };
  process.stdout.write(`BIGOBJECT ${JSON.stringify(result)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`big-object: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
