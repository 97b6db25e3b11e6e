/**
 * HTTP section (issue 6): downloads through avgate's HTTP proxy vs straight from the origin vs
 * Squid 5.7 + c-icap 0.5.10 (virus_scan + clamd_mod, respmod_precache), all on the same clamd and
 * the same origin (bench/http-origin.ts, a child process), with the same lean client
 * (bench/http-load.ts): objects of 1 KB to 100 MB at concurrency 1, 8 and 32, in two regimes.
 * A fourth mode, `squid` (unless `plainSquid` is off), is the same Squid with no ICAP at all: a
 * plain relay that scans nothing, the reference for what re-sending every byte through a proxy
 * process costs here (squid/direct and avgate/squid are printed with no target).
 *
 * - cold: every request a new URL, hence new content (bench/http-content.ts): every front end
 *   pays one real scan per download, no cache can answer;
 * - warm: a few URLs per cell fetched again and again (same content): avgate's verdict cache
 *   answers; Squid keeps nothing (`cache deny all`) and the origin forbids caching, so all three
 *   still fetch every byte from the origin.
 *
 * A cell (regime x size x concurrency) is bounded by a byte budget, a request count and a time,
 * whichever comes first (never fewer requests than workers); big objects get few requests, and a
 * cell whose concurrency x size exceeds `maxInflightBytes` is left out. Cells run in slices that
 * rotate through the modes, so load from elsewhere on the small shared machine hits all alike.
 * Every download is checked: status 200, complete, the right length, the right first bytes; and
 * the origin counts what it served, slice by slice, so a proxy answering from a cache of its own
 * would show as a wrong result. Before
 * the cells, one EICAR download of two sizes per mode shows that the proxies really scan.
 */
import { join } from 'node:path';
import type { LocalClamd } from '../src/engines/clamd/local.js';
import { startBenchChild, type BenchChild } from './child.js';
import type { SectionResult } from './engine-section.js';
import { checkStop, isStopping, log, onCleanup, processCpuMs } from './harness.js';
import { startAvgateFront, type AvgateFrontChild } from './http-avgate.js';
import { objectPath, objectPrefix, parseObjectPath } from './http-content.js';
import { HttpLoadClient, type FetchResult } from './http-load.js';
import { startHttpCicap, startHttpPlainSquid, startHttpSquid, type BenchPeer } from './http-peers.js';
import { treeCpuMs } from './proc-cpu.js';
import { Cell, ratio, table } from './stats.js';

export const HTTP_SIZES = [1e3, 1e4, 1e5, 1e6, 1e7, 1e8] as const;
export const HTTP_CONCURRENCIES = [1, 8, 32] as const;

/** What the issue asks: avgate / (Squid + c-icap) by size, and warm avgate / direct. */
export const HTTP_TARGET_SMALL = 1.2; // objects up to 100 KB
export const HTTP_TARGET_LARGE = 1.0;
export const HTTP_TARGET_WARM_DIRECT = 0.8;
const SMALL_LIMIT = 100_000;

export interface HttpSectionOptions {
  sizes: readonly number[];
  concurrencies: readonly number[];
  /** Bytes per mode and cell (requests = budget / size, at least the concurrency). */
  budgetBytes: number;
  /** Requests per mode and cell at most. */
  maxRequests: number;
  /** Seconds per mode and cell after which no new request starts. */
  cellSeconds: number;
  /** Cells with concurrency x size above this are left out. */
  maxInflightBytes: number;
  /** Slices per cell (the modes rotate slice by slice). */
  slices: number;
  /** A download with no complete answer within this is a stall. */
  timeoutMs: number;
  avgateNodeFlags: readonly string[];
  /** Untimed requests per mode before the first cell (sizes of the run up to 1 MB, half unique); 0 = none. */
  warmup: number;
  /** Also measure mode `squid`: the same Squid with no ICAP (a plain relay, reference only). */
  plainSquid: boolean;
}

type Regime = 'cold' | 'warm';

interface Mode {
  name: string;
  /** Process trees metered as the server under test. */
  pids: number[];
  /** Whether the mode scans: EICAR must not get through it (false: it must be delivered whole). */
  scans: boolean;
  client(w: number): HttpLoadClient;
  close(): void;
}

export function sizeLabel(n: number): string {
  if (n >= 1e6) return `${n / 1e6}MB`;
  if (n >= 1e3) return `${n / 1e3}KB`;
  return `${n}B`;
}

function mkMode(name: string, port: number, via: 'origin' | 'proxy', originPort: number, pids: number[], scans: boolean, timeoutMs: number): Mode {
  const clients: HttpLoadClient[] = [];
  return {
    name,
    pids,
    scans,
    client(w) {
      let c = clients[w];
      if (!c) {
        c = new HttpLoadClient(port, via, originPort, { timeoutMs, keep: 64 });
        clients[w] = c;
      }
      return c;
    },
    close() {
      for (const c of clients) c.close();
      clients.length = 0;
    },
  };
}

/** Rotation of the modes for slice s: every mode runs first, last and in between as often. */
function orderFor<T>(modes: readonly T[], s: number): T[] {
  const k = s % modes.length;
  const rotated = [...modes.slice(k), ...modes.slice(0, k)];
  return Math.floor(s / modes.length) % 2 === 1 ? rotated.reverse() : rotated;
}

/** Why a download is not the object the origin sent (null: it is). */
function problem(r: FetchResult, path: string): string | null {
  const spec = parseObjectPath(path);
  if (!spec) return 'bad path';
  if (!r.complete) return `${r.status || 'no answer'}: ${r.error ?? 'incomplete'} after ${r.bytes} bytes`;
  if (r.status !== 200) return `HTTP ${r.status}`;
  if (r.bytes !== spec.size) return `${r.bytes} bytes instead of ${spec.size}`;
  const want = objectPrefix(spec);
  if (!r.head.subarray(0, want.length).equals(want.subarray(0, r.head.length))) return 'different bytes';
  return null;
}

async function cpuOf(pids: readonly number[]): Promise<number> {
  let total = 0;
  for (const pid of pids) total += await treeCpuMs(pid);
  return total;
}

type OriginCount = { requests: number; bytes: number };

/** Asks the origin child how many objects it has served (null if it does not answer within 10 s). */
function originCounter(origin: BenchChild): () => Promise<OriginCount | null> {
  const waiting: Array<(c: OriginCount | null) => void> = [];
  let buf = '';
  origin.child.stdout?.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.startsWith('COUNT ')) waiting.shift()?.(JSON.parse(line.slice(6)) as OriginCount);
    }
  });
  return () =>
    new Promise<OriginCount | null>((resolve) => {
      const answer = (c: OriginCount | null) => {
        clearTimeout(timer);
        resolve(c);
      };
      const timer = setTimeout(() => {
        const i = waiting.indexOf(answer);
        if (i >= 0) waiting.splice(i, 1);
        resolve(null);
      }, 10_000);
      waiting.push(answer);
      origin.child.stdin?.write('COUNT\n');
    });
}

interface Acc {
  cell: Cell;
  serverCpuMs: number;
  originCpuMs: number;
}

export async function runHttpSection(p: { clamd: LocalClamd; tmp: string; opts: HttpSectionOptions }): Promise<SectionResult> {
  const { clamd, tmp, opts } = p;
  const report: string[] = [];
  const result: string[] = [];
  let failed = false;

  // ------------------------------------------------------------ servers
  const origin: BenchChild = await startBenchChild({ script: 'http-origin', args: [], label: 'origin' });
  const originCount = originCounter(origin);
  const cicap = await startHttpCicap({ dir: join(tmp, 'http-c-icap'), clamdSocket: clamd.socketPath });
  onCleanup(() => cicap.stop());
  const squid = await startHttpSquid({ dir: join(tmp, 'http-squid'), icapPort: cicap.port });
  onCleanup(() => squid.stop());
  let plainSquid: BenchPeer | null = null;
  if (opts.plainSquid) {
    plainSquid = await startHttpPlainSquid({ dir: join(tmp, 'http-squid-plain') });
    const started = plainSquid;
    onCleanup(() => started.stop());
  }
  let avgate: AvgateFrontChild | null = null;
  let avgateError: string | null = null;
  try {
    avgate = await startAvgateFront({
      front: 'http-proxy',
      clamdSocket: clamd.socketPath,
      dbDir: clamd.dbDir,
      stateDir: join(tmp, 'http-avgate'),
      nodeFlags: [...opts.avgateNodeFlags],
    });
  } catch (err) {
    avgateError = err instanceof Error ? err.message.split('\n')[0] ?? err.message : String(err);
    failed = true;
  }
  log(
    `http section: origin pid ${origin.pid} port ${origin.port}; Squid pid ${squid.pid} port ${squid.port} -> c-icap pid ${cicap.pid} port ${cicap.port} (streamed, SendPercentData 99); ` +
      (plainSquid ? `plain Squid (no ICAP, reference) pid ${plainSquid.pid} port ${plainSquid.port}; ` : 'plain Squid left out (--http-no-plain-squid); ') +
      (avgate ? `avgate http-proxy child pid ${avgate.pid} (${avgate.runner}) port ${avgate.port}` : `avgate http-proxy NOT STARTED: ${avgateError}`),
  );

  const direct = mkMode('direct', origin.port, 'origin', origin.port, [], false, opts.timeoutMs);
  const squidMode = mkMode('squid+c-icap', squid.port, 'proxy', origin.port, [squid.pid, cicap.pid], true, opts.timeoutMs);
  const modes: Mode[] = [direct];
  // `squid` is a relay that scans nothing: it is measured and checked like the others, but its
  // EICAR probe must come through whole, as direct's does
  if (plainSquid) modes.push(mkMode('squid', plainSquid.port, 'proxy', origin.port, [plainSquid.pid], false, opts.timeoutMs));
  modes.push(squidMode);
  const avgateMode = avgate ? mkMode('avgate', avgate.port, 'proxy', origin.port, [avgate.pid], true, opts.timeoutMs) : null;
  if (avgateMode) modes.push(avgateMode);
  onCleanup(async () => {
    for (const m of modes) m.close();
  });

  // ------------------------------------------------------------ EICAR: the scanning proxies block it
  // direct and the plain Squid do not scan: there EICAR must be delivered whole (which also shows
  // that the probe really carries EICAR); avgate and Squid + c-icap must not deliver it.
  const eicarLines: string[] = [];
  for (const m of modes) {
    const outcomes: string[] = [];
    let ok = true;
    for (const size of [1000, 200_000]) {
      const path = objectPath(size, `probe-${m.name.replace(/[^a-z]/g, '')}-${size}`, true);
      const r = await m.client(0).get(path);
      const delivered = problem(r, path) === null;
      const blocked = !delivered;
      outcomes.push(`${sizeLabel(size)}: ${delivered ? 'delivered whole' : r.complete ? `HTTP ${r.status}` : `cut off after ${r.bytes} bytes`}`);
      if (m.scans ? delivered : blocked) ok = false;
    }
    const expected = m.scans ? 'expected blocked' : m === direct ? 'expected delivered: no proxy' : 'expected delivered: plain relay, no scanning';
    eicarLines.push(`  EICAR ${m.name}: ${outcomes.join(', ')} ${ok ? 'ok' : 'WRONG'} (${expected})`);
    if (!ok) failed = true;
  }
  for (const l of eicarLines) log(l);

  if (opts.warmup > 0) {
    const t0 = performance.now();
    const sizes = opts.sizes.filter((x) => x <= 1e6);
    if (sizes.length === 0) sizes.push(100_000);
    let bad = 0;
    const samples: string[] = [];
    for (const m of modes) {
      // 4 workers; every other request a URL of its own (a scan), the rest a few repeated ones (cache hits)
      let next = 0;
      await Promise.all(
        Array.from({ length: 4 }, async (_, w) => {
          for (;;) {
            const i = next++;
            if (i >= opts.warmup || isStopping()) return;
            const size = sizes[i % sizes.length] as number;
            const path = i % 2 === 0 ? objectPath(size, `warmup-${m.name.replace(/[^a-z]/g, '')}-${i}`) : objectPath(size, `warmup-same-${i % 8}`);
            const trouble = problem(await m.client(w).get(path), path);
            if (trouble) {
              bad++;
              if (samples.length < 3) samples.push(`${m.name} ${path}: ${trouble}`);
            }
          }
        }),
      );
    }
    log(`  warm-up: ${opts.warmup} untimed requests per mode (${sizes.map(sizeLabel).join(', ')}; half unique, half 8 repeated URLs; 4 workers) in ${((performance.now() - t0) / 1000).toFixed(1)} s${bad ? `; ${bad} WRONG: ${samples.join('; ')}` : ''}`);
    if (bad > 0) failed = true;
  }

  // ------------------------------------------------------------ cells
  const accs = new Map<string, Acc>(); // `${regime} ${size} ${c} ${mode}`
  const key = (regime: Regime, size: number, c: number, mode: string) => `${regime} ${size} ${c} ${mode}`;
  const skipped: string[] = [];
  let seq = 0;
  const sectionStarted = performance.now();

  for (const regime of ['cold', 'warm'] as const) {
    for (const size of opts.sizes) {
      for (const c of opts.concurrencies) {
        checkStop();
        if (c * size > opts.maxInflightBytes) {
          skipped.push(`${regime} ${sizeLabel(size)} c${c}`);
          continue;
        }
        const requests = Math.max(c, Math.min(opts.maxRequests, Math.ceil(opts.budgetBytes / size)));
        // warm: a few URLs, each fetched once by every mode before the clock starts
        const warmSet = Math.max(1, Math.min(8, requests));
        const warmPath = (i: number) => objectPath(size, `w${c}-${i % warmSet}`);
        if (regime === 'warm') {
          for (const m of modes) {
            await Promise.all(Array.from({ length: Math.min(c, warmSet) }, async (_, w) => {
              for (let i = w; i < warmSet; i += Math.min(c, warmSet)) await m.client(w).get(warmPath(i));
            }));
          }
        }
        for (const m of modes) accs.set(key(regime, size, c, m.name), { cell: new Cell(m.name, c), serverCpuMs: 0, originCpuMs: 0 });
        // every slice keeps all c workers busy: fewer slices when the cell has few requests (big objects)
        const slices = Math.max(1, Math.min(opts.slices, Math.floor(requests / c)));
        const perSlice = Math.max(c, Math.ceil(requests / slices));
        const limitMs = (opts.cellSeconds * 1000) / slices;
        for (let s = 0; s < slices; s++) {
          for (const m of orderFor(modes, s)) {
            checkStop();
            const acc = accs.get(key(regime, size, c, m.name)) as Acc;
            const cpu0 = process.cpuUsage();
            const clamd0 = await processCpuMs(clamd.pid);
            const server0 = await cpuOf(m.pids);
            const origin0 = await processCpuMs(origin.pid);
            const served0 = await originCount();
            const started = performance.now();
            let next = 0;
            let made = 0;
            const worker = async (w: number) => {
              for (;;) {
                const i = next++;
                if (i >= perSlice || isStopping() || (i >= c && performance.now() - started > limitMs)) return;
                made++;
                const path = regime === 'cold' ? objectPath(size, `c${++seq}-${m.name.replace(/[^a-z]/g, '')}`) : warmPath(i);
                const t0 = performance.now();
                const r = await m.client(w).get(path);
                acc.cell.record(sizeLabel(size), performance.now() - t0);
                acc.cell.bytes += r.bytes;
                const bad = problem(r, path);
                if (bad) acc.cell.mismatch(`${path}: ${bad}`);
              }
            };
            await Promise.all(Array.from({ length: c }, (_, w) => worker(w)));
            const seconds = (performance.now() - started) / 1000;
            const cpu = process.cpuUsage(cpu0);
            acc.cell.seconds += seconds;
            acc.cell.nodeCpuMs += (cpu.user + cpu.system) / 1000;
            acc.cell.clamdCpuMs += (await processCpuMs(clamd.pid)) - clamd0;
            acc.serverCpuMs += m.pids.length > 0 ? (await cpuOf(m.pids)) - server0 : Number.NaN;
            acc.originCpuMs += (await processCpuMs(origin.pid)) - origin0;
            acc.cell.sliceReqPerSec.push(made / seconds);
            // every download must have come from the origin: no proxy may answer from a cache
            const served1 = await originCount();
            if (!served0 || !served1) acc.cell.mismatch('the origin did not tell how many objects it served');
            else if (served1.requests - served0.requests < made) acc.cell.mismatch(`the origin served ${served1.requests - served0.requests} of ${made} downloads (a cache answered?)`);
          }
        }
        const line = modes
          .map((m) => {
            const r = (accs.get(key(regime, size, c, m.name)) as Acc).cell.result();
            return `${m.name} ${r.mbPerSec.toFixed(1)} MB/s ${r.reqPerSec.toFixed(1)} req/s${r.mismatches ? ` WRONG ${r.mismatches}` : ''}`;
          })
          .join(' | ');
        log(`  ${regime} ${sizeLabel(size).padStart(5)} c${String(c).padEnd(2)} ${line}`);
        // big objects: closing the connections lets every server free what it holds per connection
        if (size >= 1e7) for (const m of modes) m.close();
      }
    }
  }
  for (const m of modes) m.close();
  const seconds = (performance.now() - sectionStarted) / 1000;

  // ------------------------------------------------------------ report
  const fmt = (n: number, d: number) => (Number.isFinite(n) ? n.toFixed(d) : '-');
  const rows: string[][] = [];
  const ratioRows: string[][] = [];
  let wrong = 0;
  let checked = 0;
  let below = 0;
  let ratioCells = 0;
  // reference ratios (plain Squid, no target), per regime: [squid/direct, avgate/squid] of every cell
  const refs: Record<Regime, { squidDirect: number[]; avgateSquid: number[] }> = {
    cold: { squidDirect: [], avgateSquid: [] },
    warm: { squidDirect: [], avgateSquid: [] },
  };
  for (const regime of ['cold', 'warm'] as const) {
    for (const size of opts.sizes) {
      for (const c of opts.concurrencies) {
        const got = modes.map((m) => accs.get(key(regime, size, c, m.name)));
        if (got.some((a) => a === undefined)) continue;
        const res = (got as Acc[]).map((a) => ({ r: a.cell.result(), a }));
        for (const { r, a } of res) {
          wrong += r.mismatches;
          checked += r.requests;
          rows.push([
            regime,
            sizeLabel(size),
            String(c),
            r.mode,
            String(r.requests),
            fmt(r.seconds, 2),
            fmt(r.mbPerSec, 1),
            fmt(r.reqPerSec, 1),
            fmt(r.p50Ms, 2),
            fmt(r.p99Ms, 2),
            fmt(a.serverCpuMs / r.requests, 3),
            fmt(r.clamdCpuMsPerReq, 3),
            fmt(a.originCpuMs / r.requests, 3),
            fmt(r.nodeCpuMsPerReq, 3),
            String(r.mismatches),
          ]);
          for (const s of r.mismatchSamples) report.push(`WRONG ${regime} ${sizeLabel(size)} c${c} ${r.mode}: ${s}`);
        }
        const by = (name: string) => res.find((x) => x.r.mode === name)?.r;
        const a = by('avgate');
        const s = by('squid+c-icap');
        const d = by('direct');
        const plain = by('squid');
        if (plain && d) refs[regime].squidDirect.push(plain.mbPerSec / d.mbPerSec);
        if (plain && a) refs[regime].avgateSquid.push(a.mbPerSec / plain.mbPerSec);
        if (!a || !s || !d) continue;
        const target = size <= SMALL_LIMIT ? HTTP_TARGET_SMALL : HTTP_TARGET_LARGE;
        const vsSquid = a.mbPerSec / s.mbPerSec;
        const vsDirect = a.mbPerSec / d.mbPerSec;
        const okSquid = vsSquid >= target;
        const okDirect = regime === 'cold' || vsDirect >= HTTP_TARGET_WARM_DIRECT;
        ratioCells++;
        if (!okSquid || !okDirect) below++;
        ratioRows.push([
          regime,
          sizeLabel(size),
          String(c),
          ratio(a.mbPerSec, s.mbPerSec),
          `>= ${target.toFixed(1)}`,
          okSquid ? 'ok' : 'BELOW',
          ratio(a.mbPerSec, d.mbPerSec),
          regime === 'warm' ? `>= ${HTTP_TARGET_WARM_DIRECT.toFixed(1)}` : '-',
          regime === 'warm' ? (okDirect ? 'ok' : 'BELOW') : '-',
          ...(plain ? [ratio(plain.mbPerSec, d.mbPerSec), ratio(a.mbPerSec, plain.mbPerSec)] : []),
        ]);
      }
    }
  }
  report.push(
    '',
    'HTTP section: downloads (MB/s of body delivered; server cpu = Squid + c-icap process trees, the plain Squid\'s (mode squid), or avgate\'s child; origin cpu = the origin child)',
    table(
      ['regime', 'size', 'conc', 'mode', 'requests', 'time s', 'MB/s', 'req/s', 'p50 ms', 'p99 ms', 'server cpu ms/req', 'clamd cpu ms/req', 'origin cpu ms/req', 'client cpu ms/req', 'wrong'],
      rows,
    ),
  );
  if (ratioRows.length > 0) {
    report.push(
      '',
      plainSquid
        ? 'HTTP section: avgate / Squid+c-icap and avgate / direct (throughput ratios, same cell); reference, no target: squid/direct and avgate/squid (squid = the same Squid with no ICAP, a plain relay that scans nothing)'
        : 'HTTP section: avgate / Squid+c-icap and avgate / direct (throughput ratios, same cell)',
      table(
        [
          'regime',
          'size',
          'conc',
          'avgate/squid+c-icap',
          'target',
          '',
          'avgate/direct',
          'target',
          '',
          ...(plainSquid ? ['ref squid/direct', 'ref avgate/squid'] : []),
        ],
        ratioRows,
      ),
    );
  }
  if (skipped.length > 0) report.push(`HTTP cells left out (concurrency x size over ${(opts.maxInflightBytes / 1e6).toFixed(0)} MB in flight): ${skipped.join(', ')}`);
  report.push(...eicarLines.map((l) => l.trim()));

  result.push(
    avgate
      ? `http: ${ratioCells - below} of ${ratioCells} cells meet their targets (avgate >= ${HTTP_TARGET_SMALL}x Squid+c-icap up to 100 KB, >= ${HTTP_TARGET_LARGE}x above; warm >= ${HTTP_TARGET_WARM_DIRECT}x direct); ${seconds.toFixed(0)} s`
      : `http: avgate's HTTP proxy did not start (${avgateError ?? '?'}): direct${plainSquid ? ', squid (plain)' : ''} and Squid+c-icap only; ${seconds.toFixed(0)} s`,
  );
  if (plainSquid) {
    const span = (xs: readonly number[]) => (xs.length === 0 ? '-' : `${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)}`);
    const warmReach = refs.warm.squidDirect.filter((x) => x >= HTTP_TARGET_WARM_DIRECT).length;
    result.push(
      `http reference, no target (squid = the same Squid, no ICAP: a plain relay): squid/direct cold ${span(refs.cold.squidDirect)}, warm ${span(refs.warm.squidDirect)} ` +
        `(warm cells where the plain relay reaches ${HTTP_TARGET_WARM_DIRECT}x direct: ${warmReach} of ${refs.warm.squidDirect.length})` +
        (avgate ? `; avgate/squid cold ${span(refs.cold.avgateSquid)}, warm ${span(refs.warm.avgateSquid)}` : ''),
    );
  }
  if (wrong > 0) failed = true;
  return { report, result, wrong, checked, failed };
}
