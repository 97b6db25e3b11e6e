/**
 * Engine section: direct clamd INSTREAM vs avgate's Scanner (clamd-net engine, no cache, and a
 * warm verdict cache) on one corpus, at concurrency 1, 4 and 16, plus the memory of one large
 * object streamed through the Scanner in a child process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { VerdictCache } from '../src/cache/verdict-cache.js';
import { silentLogger } from '../src/core/logging.js';
import { describeVerdict, type Verdict } from '../src/core/verdict.js';
import type { LocalClamd } from '../src/engines/clamd/local.js';
import { ClamdNetEngine } from '../src/engines/clamd/net.js';
import { Scanner, type ScannerLimits } from '../src/scan/scanner.js';
import type { BigObjectResult } from './big-object.js';
import type { CorpusItem } from './corpus.js';
import { classifyReply, directInstream } from './direct.js';
import { checkStop, childScript, log, onCleanup, projectRoot, runSlice, warmUp, type Outcome, type Send } from './harness.js';
import { Cell, CELL_HEADERS, cellRow, median, ratio, signed, table, type CellResult } from './stats.js';

export const CONCURRENCIES = [1, 4, 16] as const;
const WARM_FACTOR = 5;

const LIMITS: ScannerLimits = {
  maxCheckedSize: 200 * 1024 ** 2,
  scanTimeoutMs: 120_000,
  maxConcurrentScans: 16,
  maxQueue: 1024,
  contextIdleTimeoutMs: 60_000,
};

export interface SectionOptions {
  passes: number;
  slicePasses: number;
  bigBytes: number;
  skipBig: boolean;
  bigFullScan: boolean;
  directChunk: number;
}

export interface SectionResult {
  /** Table and detail lines printed after the section. */
  report: string[];
  /** Lines for the RESULT block. */
  result: string[];
  wrong: number;
  checked: number;
  failed: boolean;
}

function outcomeOf(v: Verdict): Outcome {
  const status = v.status === 'free' || v.status === 'found' ? v.status : 'other';
  return { status, detail: describeVerdict(v), cached: v.cached };
}

async function runBigObject(
  socketPath: string,
  bytes: number,
): Promise<{ result: BigObjectResult | null; runner: string; error: string | null }> {
  const { args, runner } = childScript('big-object');
  args.push('--socket', socketPath, '--bytes', String(bytes));
  const child: ChildProcess = spawn(process.execPath, args, { cwd: projectRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  onCleanup(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) child.kill('SIGTERM');
  });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const code = await new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
  const line = out.split('\n').find((l) => l.startsWith('BIGOBJECT '));
  if (!line) return { result: null, runner, error: `child exited with ${code ?? 'signal'}: ${err.trim() || out.trim()}` };
  return { result: JSON.parse(line.slice('BIGOBJECT '.length)) as BigObjectResult, runner, error: null };
}

export async function runEngineSection(p: {
  corpus: readonly CorpusItem[];
  clamd: LocalClamd;
  tmp: string;
  opts: SectionOptions;
  /** A clamd that accepts multi-GB streams (started once, shared with the ICAP section). */
  bigClamd: () => Promise<LocalClamd>;
}): Promise<SectionResult> {
  const { corpus, clamd, tmp, opts } = p;
  const total = corpus.length * opts.passes;
  log(
    `engine section: direct/engine ${total} requests per cell (${opts.passes} corpus passes, alternating slices of ${opts.slicePasses}), ` +
      `engine-warm ${total * WARM_FACTOR}; concurrency ${CONCURRENCIES.join('/')}`,
  );

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
  onCleanup(() => scanner.close());
  const cache = new VerdictCache({ memoryEntries: 10_000, sqlitePath: join(tmp, 'cache', 'verdicts.sqlite'), sqliteMaxEntries: 100_000, maxAgeMs: 0 });
  onCleanup(async () => cache.close());
  const warmScanner = new Scanner([{ id: 'clamd', engine: await makeEngine() }], LIMITS, cache, silentLogger());
  onCleanup(() => warmScanner.close());

  const meters = { clamdPid: clamd.pid };
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
        await runSlice(cell, corpus, sliceCount, true, send, meters);
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
  await runSlice(fillCell, corpus, corpus.length, false, sendWarm, meters);
  const fill = fillCell.result();
  log(`  cache fill: ${fill.requests} objects, ${fill.mismatches} wrong`);
  const warm: CellResult[] = [];
  for (const c of CONCURRENCIES) {
    checkStop();
    const cell = new Cell('engine-warm', c);
    await warmUp(c, corpus, false, sendWarm);
    // Hits are far cheaper than scans: more of them, so the cell lasts long enough to measure.
    await runSlice(cell, corpus, corpus.length * opts.passes * WARM_FACTOR, false, sendWarm, meters, true);
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
    const bigClamd = await p.bigClamd();
    log(`  big object: ${(opts.bigBytes / 1024 ** 3).toFixed(2)} GiB through the Scanner (stream source) ...`);
    big = await runBigObject(bigClamd.socketPath, opts.bigBytes);
  }
  checkStop();

  const report: string[] = ['', table(CELL_HEADERS, rows.map(cellRow))];
  const wrong = [...rows, fill].filter((r) => r.mismatches > 0);
  for (const r of wrong) {
    report.push(`WRONG VERDICTS in ${r.mode} c${r.concurrency}: ${r.mismatches}`);
    for (const s of r.mismatchSamples) report.push(`  ${s}`);
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
  report.push(...bigLines);

  const result: string[] = [];
  for (const c of CONCURRENCIES) {
    const d = cellOf(direct, c);
    const e = cellOf(engine, c);
    const w = warm.find((r) => r.concurrency === c);
    const r = e.reqPerSec / d.reqPerSec;
    // Slices ran in adjacent pairs: the median of the pairwise ratios shrugs off a burst of load.
    const pairwise = median(e.sliceReqPerSec.map((x, i) => x / (d.sliceReqPerSec[i] ?? Number.NaN)));
    result.push(
      `engine/direct c${String(c).padEnd(2)}: ${r.toFixed(3)} req/s (${e.reqPerSec.toFixed(1)} / ${d.reqPerSec.toFixed(1)}), ` +
        `median slice ratio ${pairwise.toFixed(3)}, p50 ${ratio(e.p50Ms, d.p50Ms)}x, p99 ${ratio(e.p99Ms, d.p99Ms)}x, ` +
        `client cpu ${signed(e.nodeCpuMsPerReq - d.nodeCpuMsPerReq, 3)} ms/req  ${r >= 0.95 ? 'ok (>= 0.95)' : 'BELOW 0.95'}`,
    );
    if (w) result.push(`engine-warm/direct c${String(c).padEnd(2)}: ${ratio(w.reqPerSec, d.reqPerSec)} req/s (${w.reqPerSec.toFixed(1)} / ${d.reqPerSec.toFixed(1)})`);
  }
  result.push(...bigLines.slice(0, 2));
  const all = [...rows, fill];
  return {
    report,
    result,
    wrong: all.reduce((a, r) => a + r.mismatches, 0),
    checked: all.reduce((a, r) => a + r.requests, 0),
    failed: big !== null && !big.result,
  };
}
