/**
 * The foundation benchmark: direct clamd INSTREAM vs avgate's Scanner (no cache, and a warm
 * verdict cache) on one corpus, at concurrency 1, 4 and 16, plus the memory of one 2 GiB object
 * streamed through the Scanner in a child process.
 *
 *   npm run bench                     (compiled: node --expose-gc dist/bench/run.js)
 *   npx tsx bench/run.ts [--quick]    (development)
 *
 * Flags: --quick (half corpus, two passes per cell, 256 MiB big object), --passes N (corpus passes
 * per direct/engine cell), --big-bytes N, --skip-big, --big-full-scan (raise clamd's
 * MaxFileSize/MaxScanSize so that it really scans the big object), --direct-chunk N.
 *
 * Fairness: one clamd (test database) for everything; every direct and engine request is made
 * unique by the same scheme (16 random bytes appended) so clamd's own clean cache never answers;
 * a direct/engine cell is measured in slices (one or two corpus passes) that alternate
 * direct, engine, engine, direct, ... so that load from elsewhere on a small shared machine hits
 * both alike; CPU per request of this process and of clamd is reported beside wall-clock
 * figures (it is much less sensitive to such noise); verdicts are checked on every request.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VerdictCache } from '../src/cache/verdict-cache.js';
import { silentLogger } from '../src/core/logging.js';
import { describeVerdict, type Verdict } from '../src/core/verdict.js';
import { LocalClamd } from '../src/engines/clamd/local.js';
import { ClamdNetEngine } from '../src/engines/clamd/net.js';
import { Scanner, type ScannerLimits } from '../src/scan/scanner.js';
import type { BigObjectResult } from './big-object.js';
import { corpusSummary, loadCorpus, uniqueBody, type CorpusItem } from './corpus.js';
import { classifyReply, directInstream } from './direct.js';
import { Cell, CELL_HEADERS, cellRow, median, ratio, signed, table, type CellResult } from './stats.js';

// ---------------------------------------------------------------- options

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
function numArg(name: string, fallback: number): number {
  const i = argv.indexOf(name);
  if (i < 0) return fallback;
  const v = Number(argv[i + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name}: expected a positive number, got "${argv[i + 1] ?? ''}"`);
  return v;
}
const quick = flag('--quick');
const opts = {
  quick,
  corpusScale: quick ? 0.5 : 1,
  passes: numArg('--passes', quick ? 2 : 12),
  /** Corpus passes per slice: direct and engine alternate slice by slice. */
  slicePasses: quick ? 1 : 2,
  bigBytes: numArg('--big-bytes', quick ? 256 * 1024 ** 2 : 2 * 1024 ** 3),
  skipBig: flag('--skip-big'),
  bigFullScan: flag('--big-full-scan'),
  /** INSTREAM chunk of the direct client: the same as clamd-net's default chunk-size. */
  directChunk: numArg('--direct-chunk', 256 * 1024),
};
const CONCURRENCIES = [1, 4, 16] as const;
const WARM_FACTOR = 5;

const here = dirname(fileURLToPath(import.meta.url));
const compiled = fileURLToPath(import.meta.url).endsWith('.js');
const gc = (globalThis as { gc?: () => void }).gc;

const LIMITS: ScannerLimits = {
  maxCheckedSize: 200 * 1024 ** 2,
  scanTimeoutMs: 120_000,
  maxConcurrentScans: 16,
  maxQueue: 1024,
  contextIdleTimeoutMs: 60_000,
};

// ---------------------------------------------------------------- clean-up on every exit path

const cleanups: Array<() => Promise<void>> = [];
let cleaning: Promise<void> | null = null;
function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (err) {
        process.stderr.write(`cleanup: ${err instanceof Error ? err.message : String(err)}\n`);
      }
    }
  })();
  return cleaning;
}
/** Set on SIGINT/SIGTERM: workers take no new request, main stops at the next phase. */
let stopping = false;
function checkStop(): void {
  if (stopping) throw new Error('interrupted');
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    stopping = true;
    process.stderr.write(`\n${sig}: stopping clamd and cleaning up\n`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------- cells

type Outcome = { status: 'free' | 'found' | 'other'; detail: string; cached?: boolean };
type Send = (body: Buffer, item: CorpusItem) => Promise<Outcome>;

function outcomeOf(v: Verdict): Outcome {
  const status = v.status === 'free' || v.status === 'found' ? v.status : 'other';
  return { status, detail: describeVerdict(v), cached: v.cached };
}

/** CPU time of a process so far (ms), all threads: utime + stime from /proc. */
async function processCpuMs(pid: number | undefined): Promise<number> {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}
/** Linux USER_HZ; 100 on every common architecture. */
const CLOCK_TICKS = 100;

/**
 * One slice of a cell: `count` requests with `concurrency` workers; request i scans
 * corpus[i mod n]. A body is made before the request's clock starts (the same work in every
 * mode), so latency is the scan round trip; throughput is over the wall time of the slice.
 */
async function runSlice(
  cell: Cell,
  corpus: readonly CorpusItem[],
  count: number,
  unique: boolean,
  send: Send,
  clamdPid: number | undefined,
  expectCached = false,
): Promise<void> {
  gc?.();
  const cpu0 = process.cpuUsage();
  const clamd0 = await processCpuMs(clamdPid);
  const started = performance.now();
  await drive(cell.concurrency, count, corpus, unique, send, cell, expectCached);
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpu0);
  cell.seconds += seconds;
  cell.nodeCpuMs += (cpu.user + cpu.system) / 1000;
  cell.clamdCpuMs += (await processCpuMs(clamdPid)) - clamd0;
  cell.sliceReqPerSec.push(count / seconds);
}

/** A few untimed requests: connections of the pool opened, code paths warm. */
function warmUp(concurrency: number, corpus: readonly CorpusItem[], unique: boolean, send: Send): Promise<void> {
  return drive(concurrency, Math.min(corpus.length, concurrency * 2), corpus, unique, send, null);
}

async function drive(
  concurrency: number,
  total: number,
  corpus: readonly CorpusItem[],
  unique: boolean,
  send: Send,
  cell: Cell | null,
  expectCached = false,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= total || stopping) return;
      const item = corpus[i % corpus.length];
      if (!item) throw new Error('empty corpus');
      const body = unique ? uniqueBody(item) : item.data;
      const t0 = performance.now();
      let out: Outcome;
      try {
        out = await send(body, item);
      } catch (err) {
        out = { status: 'other', detail: `exception: ${err instanceof Error ? err.message : String(err)}` };
      }
      const ms = performance.now() - t0;
      if (!cell) continue;
      cell.latencies.push(ms);
      cell.bytes += body.length;
      if (out.status !== item.expect) cell.mismatch(`${item.name}: expected ${item.expect}, got ${out.detail}`);
      if (expectCached && out.cached !== true) cell.notCached++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

// ---------------------------------------------------------------- big object (child process)

async function runBigObject(socketPath: string): Promise<{ result: BigObjectResult | null; runner: string; error: string | null }> {
  const script = compiled ? join(here, 'big-object.js') : join(here, 'big-object.ts');
  const args = compiled ? ['--expose-gc', script] : ['--expose-gc', '--import', 'tsx', script];
  const runner = compiled ? 'node (compiled)' : 'node + tsx loader (dev: RSS includes the TypeScript loader)';
  args.push('--socket', socketPath, '--bytes', String(opts.bigBytes));
  const child: ChildProcess = spawn(process.execPath, args, { cwd: resolve(here, compiled ? '../..' : '..'), stdio: ['ignore', 'pipe', 'pipe'] });
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) child.kill('SIGTERM');
  };
  cleanups.push(kill);
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const code = await new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
  const line = out.split('\n').find((l) => l.startsWith('BIGOBJECT '));
  if (!line) return { result: null, runner, error: `child exited with ${code ?? 'signal'}: ${err.trim() || out.trim()}` };
  return { result: JSON.parse(line.slice('BIGOBJECT '.length)) as BigObjectResult, runner, error: null };
}

// ---------------------------------------------------------------- main

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function main(): Promise<void> {
  const benchStarted = performance.now();
  const tmp = await mkdtemp(join(tmpdir(), 'avgate-bench-'));
  cleanups.push(() => rm(tmp, { recursive: true, force: true, maxRetries: 5 }));

  log(`avgate benchmark${opts.quick ? ' (--quick)' : ''} — node ${process.version}, ${compiled ? 'compiled' : 'tsx'}, gc ${gc ? 'exposed' : 'not exposed'}`);
  const corpus = await loadCorpus(opts.corpusScale);
  log(`corpus: ${corpusSummary(corpus)}`);
  const total = corpus.length * opts.passes;
  log(
    `cells: direct/engine ${total} requests each (${opts.passes} corpus passes, alternating slices of ${opts.slicePasses}), ` +
      `engine-warm ${total * WARM_FACTOR}; concurrency ${CONCURRENCIES.join('/')}`,
  );

  const clamd = new LocalClamd({ stateDir: join(tmp, 'clamd'), database: 'test', tcpPort: 0, maxThreads: 16, streamMaxLength: '100M' });
  cleanups.push(() => clamd.stop());
  await clamd.start();
  log(`clamd: pid ${clamd.pid ?? '?'}, ${clamd.socketPath}, MaxThreads 16, test database`);

  const makeEngine = async () => {
    const engine = new ClamdNetEngine();
    engine.configure([
      { name: 'address', value: `unix:${clamd.socketPath}` },
      { name: 'session', value: 'yes' },
      { name: 'database-dir', value: clamd.dbDir },
    ]);
    await engine.init();
    return engine;
  };
  const scanner = new Scanner([{ id: 'clamd', engine: await makeEngine() }], LIMITS, null, silentLogger());
  cleanups.push(() => scanner.close());
  const cache = new VerdictCache({ memoryEntries: 10_000, sqlitePath: join(tmp, 'cache', 'verdicts.sqlite'), sqliteMaxEntries: 100_000, maxAgeMs: 0 });
  cleanups.push(async () => cache.close());
  const warmScanner = new Scanner([{ id: 'clamd', engine: await makeEngine() }], LIMITS, cache, silentLogger());
  cleanups.push(() => warmScanner.close());

  const sendDirect: Send = async (body) => classifyReply(await directInstream(clamd.socketPath, [body], opts.directChunk));
  const sendEngine: Send = async (body, item) => outcomeOf(await scanner.scan({ source: { kind: 'buffer', data: body }, name: item.name }));
  const sendWarm: Send = async (body, item) => outcomeOf(await warmScanner.scan({ source: { kind: 'buffer', data: body }, name: item.name }));

  // direct and engine in alternating slices: D E E D D E ... per concurrency.
  const slices = Math.max(1, Math.round(opts.passes / opts.slicePasses));
  const sliceCount = corpus.length * opts.slicePasses;
  const direct = new Map<number, Cell>();
  const engine = new Map<number, Cell>();
  for (const c of CONCURRENCIES) {
    const d = new Cell('direct', c);
    const e = new Cell('engine', c);
    direct.set(c, d);
    engine.set(c, e);
    await warmUp(c, corpus, true, sendDirect);
    await warmUp(c, corpus, true, sendEngine);
    for (let s = 0; s < slices; s++) {
      const pair: Array<[Cell, Send]> = [
        [d, sendDirect],
        [e, sendEngine],
      ];
      if (s % 2 === 1) pair.reverse();
      for (const [cell, send] of pair) {
        checkStop();
        await runSlice(cell, corpus, sliceCount, true, send, clamd.pid);
      }
    }
    for (const r of [d.result(), e.result()]) {
      log(
        `  ${r.mode.padEnd(6)} c${String(c).padEnd(2)} ${r.reqPerSec.toFixed(1).padStart(7)} req/s ${r.mbPerSec.toFixed(1).padStart(6)} MB/s  ` +
          `p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms  node ${r.nodeCpuMsPerReq.toFixed(3)} / clamd ${r.clamdCpuMsPerReq.toFixed(2)} cpu-ms/req` +
          `${r.mismatches ? `  WRONG ${r.mismatches}` : ''}`,
      );
    }
  }
  const cellOf = (m: Map<number, Cell>, c: number): CellResult => {
    const cell = m.get(c);
    if (!cell) throw new Error(`no cell for c${c}`);
    return cell.result();
  };

  // warm cache: one pass fills it (verdicts checked), then the same content again and again.
  checkStop();
  const fillCell = new Cell('warm-fill', 4);
  await runSlice(fillCell, corpus, corpus.length, false, sendWarm, clamd.pid);
  const fill = fillCell.result();
  log(`  cache fill: ${fill.requests} objects, ${fill.mismatches} wrong`);
  const warm: CellResult[] = [];
  for (const c of CONCURRENCIES) {
    checkStop();
    const cell = new Cell('engine-warm', c);
    await warmUp(c, corpus, false, sendWarm);
    // Hits are far cheaper than scans: more of them, so the cell lasts long enough to measure.
    await runSlice(cell, corpus, corpus.length * opts.passes * WARM_FACTOR, false, sendWarm, clamd.pid, true);
    const r = cell.result(`cache hits ${cell.latencies.length - cell.notCached}/${cell.latencies.length}`);
    warm.push(r);
    log(`  engine-warm c${String(c).padEnd(2)} ${r.reqPerSec.toFixed(1).padStart(8)} req/s  p50 ${r.p50Ms.toFixed(3)} ms  ${r.note}`);
  }

  const rows: CellResult[] = [];
  for (const c of CONCURRENCIES) rows.push(cellOf(direct, c), cellOf(engine, c));
  rows.push(...warm);

  // big object
  let big: Awaited<ReturnType<typeof runBigObject>> | null = null;
  checkStop();
  if (!opts.skipBig) {
    const extra: Record<string, string> = opts.bigFullScan ? { MaxFileSize: '4000M', MaxScanSize: '4000M' } : {};
    const bigClamd = new LocalClamd({ stateDir: join(tmp, 'clamd-big'), database: 'test', tcpPort: 0, maxThreads: 2, streamMaxLength: '4000M', extra });
    cleanups.push(() => bigClamd.stop());
    await bigClamd.start();
    log(`  big object: ${(opts.bigBytes / 1024 ** 3).toFixed(2)} GiB through the Scanner (stream source) ...`);
    big = await runBigObject(bigClamd.socketPath);
    await bigClamd.stop();
  }

  checkStop();
  // ------------------------------------------------------------ report
  log('');
  log(table(CELL_HEADERS, rows.map(cellRow)));
  const wrong = [...rows, fill].filter((r) => r.mismatches > 0);
  for (const r of wrong) {
    log(`WRONG VERDICTS in ${r.mode} c${r.concurrency}: ${r.mismatches}`);
    for (const s of r.mismatchSamples) log(`  ${s}`);
  }

  const bigLines: string[] = [];
  if (big) {
    if (big.result) {
      const b = big.result;
      bigLines.push(
        `big-object ${(b.bytesRequested / 1024 ** 3).toFixed(2)} GiB: peak RSS ${b.peakRssMB.toFixed(1)} MB (target < 100) ` +
          `[baseline ${b.baselineRssMB.toFixed(1)} MB, +${(b.peakRssMB - b.baselineRssMB).toFixed(1)} MB; peak heapUsed ${b.peakHeapUsedMB.toFixed(1)} MB, external ${b.peakExternalMB.toFixed(1)} MB; ${b.samples} samples]`,
        `big-object verdict: ${b.verdict} (${b.status}), ${(b.bytesSent / 1024 ** 2).toFixed(0)} MiB sent in ${b.seconds.toFixed(1)} s = ${b.mbPerSec.toFixed(0)} MiB/s; runner: ${big.runner}`,
      );
      bigLines.push(
        opts.bigFullScan
          ? 'big-object note: MaxFileSize/MaxScanSize raised to 4000M, but clamd.conf(5) says ClamAV cannot scan files over 2 GB: above that clamd receives the stream and answers without scanning it'
          : 'big-object note: clamd StreamMaxLength 4000M with default MaxFileSize 100M / MaxScanSize 400M: clamd receives the whole stream and answers without scanning past its limits (the figure is avgate streaming, not clamd scanning)',
      );
    } else {
      bigLines.push(`big-object FAILED: ${big.error ?? 'no result'}`);
    }
  }
  for (const l of bigLines) log(l);

  log('');
  log('RESULT');
  for (const c of CONCURRENCIES) {
    const d = cellOf(direct, c);
    const e = cellOf(engine, c);
    const w = warm.find((r) => r.concurrency === c);
    const r = e.reqPerSec / d.reqPerSec;
    // Slices ran in adjacent pairs: the median of the pairwise ratios shrugs off a burst of load.
    const pairwise = median(e.sliceReqPerSec.map((x, i) => x / (d.sliceReqPerSec[i] ?? Number.NaN)));
    log(
      `engine/direct c${String(c).padEnd(2)}: ${r.toFixed(3)} req/s (${e.reqPerSec.toFixed(1)} / ${d.reqPerSec.toFixed(1)}), ` +
        `median slice ratio ${pairwise.toFixed(3)}, p50 ${ratio(e.p50Ms, d.p50Ms)}x, p99 ${ratio(e.p99Ms, d.p99Ms)}x, ` +
        `client cpu ${signed(e.nodeCpuMsPerReq - d.nodeCpuMsPerReq, 3)} ms/req  ${r >= 0.95 ? 'ok (>= 0.95)' : 'BELOW 0.95'}`,
    );
    if (w) log(`engine-warm/direct c${String(c).padEnd(2)}: ${ratio(w.reqPerSec, d.reqPerSec)} req/s (${w.reqPerSec.toFixed(1)} / ${d.reqPerSec.toFixed(1)})`);
  }
  for (const l of bigLines.slice(0, 2)) log(l);
  const totalWrong = [...rows, fill].reduce((a, r) => a + r.mismatches, 0);
  log(`verdicts: ${totalWrong === 0 ? 'all correct' : `${totalWrong} WRONG`} (${[...rows, fill].reduce((a, r) => a + r.requests, 0)} checked requests)`);
  log(`bench time: ${((performance.now() - benchStarted) / 1000).toFixed(0)} s`);
  if (totalWrong > 0 || (big && !big.result)) process.exitCode = 1;
}

try {
  await main();
} catch (err) {
  if (stopping) process.stderr.write('bench interrupted\n');
  else process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}

