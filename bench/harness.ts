/**
 * What every section of the benchmark shares: clean-up on every exit path, the stop flag set by
 * SIGINT/SIGTERM, and the load driver (workers, slices, CPU accounting, verdict checks).
 */
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { uniqueBody, type CorpusItem } from './corpus.js';
import type { Cell } from './stats.js';

// ---------------------------------------------------------------- clean-up on every exit path

const cleanups: Array<() => Promise<void>> = [];
let cleaning: Promise<void> | null = null;

/** Registers a clean-up step; steps run in reverse order of registration. */
export function onCleanup(step: () => Promise<void>): void {
  cleanups.push(step);
}

export function cleanupAll(): Promise<void> {
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
export function isStopping(): boolean {
  return stopping;
}
export function checkStop(): void {
  if (stopping) throw new Error('interrupted');
}
export function installSignalHandlers(): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      stopping = true;
      process.stderr.write(`\n${sig}: stopping servers and cleaning up\n`);
      void cleanupAll().finally(() => process.exit(130));
    });
  }
}

export function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

export const gc = (globalThis as { gc?: () => void }).gc;

const here = dirname(fileURLToPath(import.meta.url));
/** Running from dist (node) rather than from the TypeScript sources (tsx). */
export const compiled = fileURLToPath(import.meta.url).endsWith('.js');
/** The project root (the working directory for child processes). */
export const projectRoot = resolve(here, compiled ? '../..' : '..');

/** File path of a bench script (`icap-server`, `big-object`), compiled or TypeScript. */
export function benchScript(name: string): string {
  return join(here, `${name}${compiled ? '.js' : '.ts'}`);
}

/** Node arguments that run a bench script in a child process (with the tsx loader in development). */
export function childScript(name: string, nodeFlags: readonly string[] = []): { args: string[]; runner: string } {
  const script = benchScript(name);
  return compiled
    ? { args: ['--expose-gc', ...nodeFlags, script], runner: 'node (compiled)' }
    : { args: ['--expose-gc', '--import', 'tsx', ...nodeFlags, script], runner: 'node + tsx loader (dev: RSS includes the TypeScript loader)' };
}

// ---------------------------------------------------------------- load driver

export type Outcome = { status: 'free' | 'found' | 'other'; detail: string; cached?: boolean };
/** One request: the body (made before the clock starts), its corpus item, and the worker's index. */
export type Send = (body: Buffer, item: CorpusItem, worker: number) => Promise<Outcome>;

/** Linux USER_HZ; 100 on every common architecture. */
const CLOCK_TICKS = 100;

/** CPU time of one process so far (ms), all threads: utime + stime from /proc. */
export async function processCpuMs(pid: number | undefined): Promise<number> {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU time (ms, all threads) of a process and all its live descendants, from /proc: c-icap
 * serves from child processes it forks, so the parent's own figure would show nothing.
 */
export async function treeCpuMs(rootPid: number | undefined): Promise<number> {
  if (rootPid === undefined) return Number.NaN;
  const stats = new Map<number, { ppid: number; ms: number }>();
  let names: string[];
  try {
    names = await readdir('/proc');
  } catch {
    return Number.NaN;
  }
  await Promise.all(
    names
      .filter((n) => /^\d+$/.test(n))
      .map(async (n) => {
        try {
          const stat = await readFile(`/proc/${n}/stat`, 'utf8');
          const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
          stats.set(Number(n), { ppid: Number(f[1]), ms: ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS });
        } catch {
          // gone meanwhile
        }
      }),
  );
  if (!stats.has(rootPid)) return Number.NaN;
  let total = 0;
  const queue = [rootPid];
  const seen = new Set<number>();
  while (queue.length > 0) {
    const pid = queue.pop() as number;
    if (seen.has(pid)) continue;
    seen.add(pid);
    total += stats.get(pid)?.ms ?? 0;
    for (const [child, s] of stats) if (s.ppid === pid) queue.push(child);
  }
  return total;
}

export interface Meters {
  clamdPid: number | undefined;
  /** The server under test (its whole process tree is counted), if it is another process. */
  serverPid?: number | undefined;
}

/**
 * One slice of a cell: `count` requests with `concurrency` workers; request i sends
 * corpus[i mod n]. A body is made before the request's clock starts (the same work in every
 * mode), so latency is the round trip; throughput is over the wall time of the slice.
 */
export async function runSlice(
  cell: Cell,
  corpus: readonly CorpusItem[],
  count: number,
  unique: boolean,
  send: Send,
  meters: Meters,
  expectCached = false,
): Promise<void> {
  gc?.();
  const cpu0 = process.cpuUsage();
  const clamd0 = await processCpuMs(meters.clamdPid);
  const server0 = meters.serverPid !== undefined ? await treeCpuMs(meters.serverPid) : Number.NaN;
  const started = performance.now();
  await drive(cell.concurrency, count, corpus, unique, send, cell, expectCached);
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpu0);
  cell.seconds += seconds;
  cell.nodeCpuMs += (cpu.user + cpu.system) / 1000;
  cell.clamdCpuMs += (await processCpuMs(meters.clamdPid)) - clamd0;
  if (meters.serverPid !== undefined) cell.serverCpuMs += (await treeCpuMs(meters.serverPid)) - server0;
  else cell.serverCpuMs = Number.NaN;
  cell.sliceReqPerSec.push(count / seconds);
}

/**
 * Untimed requests (or messages) per mode before a section's first cell (`--warmup`). A server
 * just started is not yet the server that runs for weeks: avgate's JIT compiler spends its first
 * thousand requests or so compiling hot code on two of the machine's threads, and a cell of a few
 * seconds measured then shows that instead of the steady state. Every mode gets the same load.
 */
export const WARMUP_DEFAULT = 1000;

/** A few untimed requests before each cell: connections opened, code paths warm. */
export function warmUp(concurrency: number, corpus: readonly CorpusItem[], unique: boolean, send: Send): Promise<void> {
  return drive(concurrency, Math.min(corpus.length, concurrency * 2), corpus, unique, send, null);
}

/** `total` requests over `concurrency` workers; verdicts checked when a cell is given. */
export async function drive(
  concurrency: number,
  total: number,
  corpus: readonly CorpusItem[],
  unique: boolean,
  send: Send,
  cell: Cell | null,
  expectCached = false,
): Promise<void> {
  let next = 0;
  const worker = async (w: number) => {
    for (;;) {
      const i = next++;
      if (i >= total || stopping) return;
      const item = corpus[i % corpus.length];
      if (!item) throw new Error('empty corpus');
      const body = unique ? uniqueBody(item) : item.data;
      const t0 = performance.now();
      let out: Outcome;
      try {
        out = await send(body, item, w);
      } catch (err) {
        out = { status: 'other', detail: `exception: ${err instanceof Error ? err.message : String(err)}` };
      }
      const ms = performance.now() - t0;
      if (!cell) continue;
      cell.record(item.name, ms);
      cell.bytes += body.length;
      if (out.status !== item.expect) cell.mismatch(`${item.name}: expected ${item.expect}, got ${out.detail}`);
      if (expectCached && out.cached !== true) cell.notCached++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, w) => worker(w)));
}
