/**
 * ICAP section: direct clamd INSTREAM vs c-icap (virus_scan + clamd_mod) vs avgate's ICAP server,
 * all on the same clamd, the same corpus and the same load generator (bench/icap-client.ts), at
 * concurrency 1, 4 and 16, with and without a 1024-byte preview, in two regimes:
 *
 * - cold: every request unique (random bytes appended, as in the engine section), so that no cache
 *   (clamd's or avgate's) answers and every front end pays one real scan per request;
 * - warm: the corpus as it is, again and again: avgate's verdict cache answers; c-icap has no
 *   cache of its own, clamd's clean-file cache answers what it can (direct shows that floor).
 *
 * Cells of one regime and concurrency run in slices of one corpus pass that rotate through the
 * modes (D C Cn A An, then C Cn A An D ...), so that load from elsewhere hits every mode alike.
 * Every verdict is checked (viruses must be found, clean files must pass).
 *
 * Plus the peak RSS of avgate's ICAP server (a fresh child process) while one large object
 * generated on the fly passes through it with a preview and without Allow: 204, as Squid sends a
 * body over 64 KB: the server must echo it.
 */
import { randomFillSync } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { LocalClamd } from '../src/engines/clamd/local.js';
import { sampleRss, rssOf, startAvgateIcap, type AvgateIcapChild } from './avgate-icap.js';
import { rawOptions, startBenchCicap } from './cicap.js';
import { BUCKETS, type CorpusItem } from './corpus.js';
import { classifyReply, directInstream } from './direct.js';
import { CONCURRENCIES, type SectionResult } from './engine-section.js';
import { checkStop, drive, log, onCleanup, runSlice, warmUp, type Meters, type Send } from './harness.js';
import { IcapBenchClient, type RespmodOptions, type RespmodOutcome } from './icap-client.js';
import { Cell, ICAP_CELL_HEADERS, icapCellRow, median, pairedAddedByGroup, pairedAddedMs, ratio, signed, table, type CellResult } from './stats.js';

export interface IcapSectionOptions {
  /** Corpus passes per cold cell (slices of one pass). */
  coldPasses: number;
  /** Corpus passes per warm cell. */
  warmPasses: number;
  preview: number;
  bigBytes: number;
  skipBig: boolean;
  directChunk: number;
  /** Directory for avgate's V8 CPU profile (--cpu-prof) during the cold and warm cells, or null. */
  profileDir: string | null;
  /** Run avgate's ICAP server without its verdict cache in the cold regime (a second server). */
  coldNoCache: boolean;
  /** Extra node flags for avgate's ICAP server processes (e.g. --max-semi-space-size=32). */
  avgateNodeFlags: string[];
  /** Untimed requests per mode before the first cell (half unique, half the corpus as it is); 0 = none. */
  warmup: number;
}

interface Mode {
  name: string;
  send: Send;
  /** Closes the mode's persistent connections (c-icap serves one connection per thread). */
  close?: () => void;
  /** The server process to meter (CPU of its process tree), if any. */
  serverPid?: number;
}

type Regime = 'cold' | 'warm';

function toOutcome(o: RespmodOutcome): { status: RespmodOutcome['status']; detail: string } {
  return { status: o.status, detail: o.detail };
}

/** One client (one persistent connection) per worker. */
function icapMode(name: string, port: number, service: string, ro: RespmodOptions, serverPid: number | undefined): Mode {
  const clients: IcapBenchClient[] = [];
  const clientOf = (w: number) => {
    let c = clients[w];
    if (!c) {
      c = new IcapBenchClient(port, service);
      clients[w] = c;
    }
    return c;
  };
  return {
    name,
    serverPid,
    send: async (body, _item, w) => toOutcome(await clientOf(w).respmod(body, ro)),
    close: () => {
      for (const c of clients) c.close();
      clients.length = 0;
    },
  };
}

/** `Preview:` of the service's OPTIONS (null when it offers none), and its ISTag, for the log. */
async function serviceOptions(port: number, service: string): Promise<{ preview: number | null; istag: string; head: string | null }> {
  const head = await rawOptions(port, service, 3000);
  const pv = head ? /^Preview:\s*(\d+)/im.exec(head)?.[1] : undefined;
  const istag = head ? (/^ISTag:\s*(.*)$/im.exec(head)?.[1]?.trim() ?? '-') : '-';
  return { preview: pv === undefined ? null : Number(pv), istag, head };
}

/** Size buckets in size order (the virus files last). */
function bucketRank(label: string): number {
  const i = BUCKETS.findIndex((b) => b.label === label);
  return i < 0 ? BUCKETS.length : i;
}

/** Rotation of the modes for slice s: every mode runs first, last, and in between as often. */
function orderFor<T>(modes: readonly T[], s: number): T[] {
  const k = s % modes.length;
  const rotated = [...modes.slice(k), ...modes.slice(0, k)];
  return Math.floor(s / modes.length) % 2 === 1 ? rotated.reverse() : rotated;
}

/** A pool of random buffers, cycled: the big object costs no CSPRNG time per byte. */
function* generated(total: number, chunk: number): Generator<Buffer> {
  const pool = Array.from({ length: 8 }, () => randomFillSync(Buffer.allocUnsafe(chunk)));
  let sent = 0;
  for (let i = 0; sent < total; i++) {
    const b = pool[i % pool.length] as Buffer;
    const n = Math.min(chunk, total - sent);
    sent += n;
    yield n === chunk ? b : b.subarray(0, n);
  }
}

export async function runIcapSection(p: {
  corpus: readonly CorpusItem[];
  clamd: LocalClamd;
  tmp: string;
  opts: IcapSectionOptions;
  bigClamd: () => Promise<LocalClamd>;
}): Promise<SectionResult> {
  const { corpus, clamd, tmp, opts } = p;
  const report: string[] = [];
  const result: string[] = [];
  let failed = false;

  // ------------------------------------------------------------ servers
  const cicap = await startBenchCicap({ dir: join(tmp, 'c-icap'), clamdSocket: clamd.socketPath });
  onCleanup(() => cicap.stop());
  const cOpts = await serviceOptions(cicap.port, cicap.service);
  log(`icap section: c-icap pid ${cicap.pid}, port ${cicap.port}, OPTIONS Preview ${cOpts.preview ?? 'none'}, ISTag ${cOpts.istag}`);

  const haveAvgate = true;
  let avgate: AvgateIcapChild | null = null;
  let avgateCold: AvgateIcapChild | null = null;
  let aOpts: Awaited<ReturnType<typeof serviceOptions>> | null = null;
  if (haveAvgate) {
    // One directory per server: V8 names the files itself (one per thread; the tsx loader has its own).
    const profileFlags = (tag: string) => [...opts.avgateNodeFlags, ...(opts.profileDir ? ['--cpu-prof', '--cpu-prof-dir', join(opts.profileDir, tag)] : [])];
    if (opts.profileDir) await mkdir(opts.profileDir, { recursive: true });
    avgate = await startAvgateIcap({
      clamdSocket: clamd.socketPath,
      dbDir: clamd.dbDir,
      stateDir: join(tmp, 'avgate-icap'),
      cache: true,
      nodeFlags: profileFlags('cache'),
    });
    if (opts.coldNoCache) {
      avgateCold = await startAvgateIcap({
        clamdSocket: clamd.socketPath,
        dbDir: clamd.dbDir,
        stateDir: join(tmp, 'avgate-icap-nocache'),
        cache: false,
        nodeFlags: profileFlags('nocache'),
      });
    }
    aOpts = await serviceOptions(avgate.port, '/avscan');
    log(
      `  avgate ICAP server: child pid ${avgate.pid} (${avgate.runner}), port ${avgate.port}, verdict cache on` +
        `${avgateCold ? `; cold cells: pid ${avgateCold.pid}, cache off` : ' (cold cells too: unique bodies miss it)'}, ` +
        `OPTIONS ${aOpts.head ? `Preview ${aOpts.preview ?? 'none'}, ISTag ${aOpts.istag}` : 'did not answer'}`,
    );
  }

  const previewFor = (serverPreview: number | null) => (serverPreview === null ? opts.preview : Math.min(opts.preview, serverPreview));
  const meters = (m: Mode): Meters => ({ clamdPid: clamd.pid, serverPid: m.serverPid });
  const direct: Mode = { name: 'direct', send: async (body) => classifyReply(await directInstream(clamd.socketPath, [body], opts.directChunk)) };
  const mk = icapMode;
  const cPreview = previewFor(cOpts.preview);
  const modesFor = (regime: Regime): Mode[] => {
    const list: Mode[] = [
      direct,
      mk('c-icap', cicap.port, cicap.service, { preview: cPreview, allow204: true }, cicap.pid),
      mk('c-icap-nopreview', cicap.port, cicap.service, { preview: null, allow204: true }, cicap.pid),
    ];
    const server = regime === 'cold' && avgateCold ? avgateCold : avgate;
    if (server && aOpts) {
      const aPreview = previewFor(aOpts.preview);
      list.push(
        mk('avgate-icap', server.port, '/avscan', { preview: aPreview, allow204: true }, server.pid),
        mk('avgate-icap-nopreview', server.port, '/avscan', { preview: null, allow204: true }, server.pid),
      );
    }
    return list;
  };

  // ------------------------------------------------------------ cells
  const cells = new Map<string, Cell>(); // `${regime} ${mode} ${c}`
  const cellOf = (regime: Regime, mode: string, c: number): Cell | undefined => cells.get(`${regime} ${mode} ${c}`);
  const fills: Cell[] = [];
  const modeNames: Record<Regime, string[]> = { cold: [], warm: [] };

  if (opts.warmup > 0) {
    const t0 = performance.now();
    const warmupModes = [...modesFor('cold'), ...modesFor('warm')].filter((m, i, all) => all.findIndex((x) => x.name === m.name && x.serverPid === m.serverPid) === i);
    for (const m of warmupModes) {
      checkStop();
      const half = Math.ceil(opts.warmup / 2);
      await drive(4, half, corpus, true, m.send, null);
      await drive(4, opts.warmup - half, corpus, false, m.send, null);
      m.close?.();
    }
    log(`  warm-up: ${opts.warmup} untimed requests per mode (half unique, half the corpus as it is, concurrency 4) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }

  for (const regime of ['cold', 'warm'] as const) {
    const modes = modesFor(regime);
    modeNames[regime] = modes.map((m) => m.name);
    const unique = regime === 'cold';
    const passes = regime === 'cold' ? opts.coldPasses : opts.warmPasses;
    log(`  ${regime}: ${modes.map((m) => m.name).join(', ')}; ${passes} corpus passes per cell (${passes * corpus.length} requests) in rotating slices of one pass`);
    if (regime === 'warm') {
      // One checked pass of the corpus as it is fills avgate's cache (and clamd's, for everyone).
      for (const m of modes) {
        checkStop();
        const fill = new Cell(`${m.name} fill`, 4);
        await drive(4, corpus.length, corpus, false, m.send, fill);
        m.close?.();
        fills.push(fill);
      }
    }
    for (const c of CONCURRENCIES) {
      for (const m of modes) {
        checkStop();
        cells.set(`${regime} ${m.name} ${c}`, new Cell(m.name, c));
        await warmUp(c, corpus, unique, m.send);
      }
      for (let s = 0; s < passes; s++) {
        for (const m of orderFor(modes, s)) {
          checkStop();
          const cell = cellOf(regime, m.name, c) as Cell;
          await runSlice(cell, corpus, corpus.length, unique, m.send, meters(m));
        }
      }
      for (const m of modes) m.close?.();
      for (const m of modes) {
        const r = (cellOf(regime, m.name, c) as Cell).result();
        log(
          `  ${regime} ${m.name.padEnd(21)} c${String(c).padEnd(2)} ${r.reqPerSec.toFixed(1).padStart(7)} req/s  p50 ${r.p50Ms.toFixed(2).padStart(6)} ms  p99 ${r.p99Ms.toFixed(2).padStart(7)} ms  ` +
            `cpu-ms/req client ${r.nodeCpuMsPerReq.toFixed(3)} server ${Number.isFinite(r.serverCpuMsPerReq) ? r.serverCpuMsPerReq.toFixed(3) : '-'} clamd ${r.clamdCpuMsPerReq.toFixed(2)}` +
            `${r.mismatches ? `  WRONG ${r.mismatches}` : ''}`,
        );
      }
    }
  }

  // ------------------------------------------------------------ big object through avgate
  let bigLine: string | null = null;
  checkStop();
  if (haveAvgate && !opts.skipBig) {
    // The throughput servers are no longer needed: stopping them writes the CPU profiles.
    await avgate?.stop();
    await avgateCold?.stop();
    const bigClamd = await p.bigClamd();
    const server = await startAvgateIcap({ clamdSocket: bigClamd.socketPath, dbDir: bigClamd.dbDir, stateDir: join(tmp, 'avgate-icap-big'), cache: true, maxObjectSize: opts.bigBytes + 1024 ** 2, nodeFlags: opts.avgateNodeFlags });
    log(`  big object: ${(opts.bigBytes / 1024 ** 3).toFixed(2)} GiB through avgate's ICAP server (child pid ${server.pid}, ${server.runner}) ...`);
    const baseline = await rssOf(server.pid);
    const sampler = sampleRss(server.pid);
    const client = new IcapBenchClient(server.port, '/avscan');
    const t0 = performance.now();
    let out: RespmodOutcome | null = null;
    let error: string | null = null;
    try {
      // No Content-Length (a chunked origin response): the server cannot refuse the object up front
      // by its size, so all of it passes through (received, spooled or scanned, answered).
      out = await client.respmod(
        { size: undefined, pieces: () => generated(opts.bigBytes, 256 * 1024) },
        { preview: previewFor(aOpts?.preview ?? null), allow204: false },
      );
    } catch (err) {
      error = err instanceof Error ? err.message : String(err);
    }
    const seconds = (performance.now() - t0) / 1000;
    const mem = await sampler.stop();
    client.close();
    await server.stop();
    if (out) {
      const peak = Math.max(mem.peakSampledMB, mem.hwmMB);
      // An abort after (nearly) the whole echo is avgate's answer to a verdict that is not clean
      // after an early response head (for instance skipped: over max-object-size), not a failure.
      const abortedAfterEcho = out.status === 'other' && out.echoedBytes >= opts.bigBytes * 0.99;
      bigLine =
        `avgate-icap big object ${(opts.bigBytes / 1024 ** 3).toFixed(2)} GiB: peak RSS ${peak.toFixed(1)} MB ${peak < 150 ? 'ok (< 150)' : 'OVER 150'} ` +
        `[baseline ${baseline ? baseline.rssMB.toFixed(1) : '?'} MB, sampled peak ${mem.peakSampledMB.toFixed(1)} MB, VmHWM ${mem.hwmMB.toFixed(1)} MB, ${mem.samples} samples]; ` +
        `preview ${previewFor(aOpts?.preview ?? null)}, no Allow: 204, no Content-Length: ` +
        (abortedAfterEcho
          ? 'early 200, body echoed, then the connection was aborted (a verdict that is not clean after the early head: by design; a glue without maxObjectSize keeps max-object-size 100 MiB, so the object is skipped), '
          : `ICAP ${out.icapStatus} ${out.status} (${out.detail}), `) +
        `echoed ${(out.echoedBytes / 1024 ** 2).toFixed(0)} MiB${out.earlyAnswer ? ', early response' : ''}, ` +
        `${seconds.toFixed(1)} s = ${(opts.bigBytes / 1024 ** 2 / seconds).toFixed(0)} MiB/s in; runner: ${server.runner}`;
      if ((out.status === 'other' && !abortedAfterEcho) || peak >= 150) failed = true;
    } else {
      bigLine = `avgate-icap big object FAILED: ${error ?? 'no result'}; server: ${server.stderrTail().slice(-500)}`;
      failed = true;
    }
    log(`  ${bigLine}`);
  }

  // ------------------------------------------------------------ report
  const rows: Array<[CellResult, Regime]> = [];
  for (const regime of ['cold', 'warm'] as const)
    for (const c of CONCURRENCIES)
      for (const name of modeNames[regime]) {
        const cell = cellOf(regime, name, c);
        if (cell) rows.push([cell.result(), regime]);
      }
  report.push('', table(ICAP_CELL_HEADERS, rows.map(([r, g]) => icapCellRow(r, g))));
  const fillResults = fills.map((f) => f.result());
  const checkedRows: Array<[CellResult, Regime]> = [...rows, ...fillResults.map((r): [CellResult, Regime] => [r, 'warm'])];
  for (const [r, g] of checkedRows.filter(([x]) => x.mismatches > 0)) {
    report.push(`WRONG VERDICTS in ${g} ${r.mode} c${r.concurrency}: ${r.mismatches}`);
    for (const s of r.mismatchSamples) report.push(`  ${s}`);
  }
  if (bigLine) report.push(bigLine);

  const res = (regime: Regime, mode: string, c: number) => cellOf(regime, mode, c)?.result();
  const sliceRatio = (a: CellResult, b: CellResult) => median(a.sliceReqPerSec.map((x, i) => x / (b.sliceReqPerSec[i] ?? Number.NaN)));
  const pair = (label: string, a: CellResult | undefined, b: CellResult | undefined, target: number | null) => {
    if (!a || !b) return;
    const r = a.reqPerSec / b.reqPerSec;
    result.push(
      `${label} c${String(a.concurrency).padEnd(2)}: ${r.toFixed(3)} req/s (${a.reqPerSec.toFixed(1)} / ${b.reqPerSec.toFixed(1)}), ` +
        `median slice ratio ${sliceRatio(a, b).toFixed(3)}, p50 ${ratio(a.p50Ms, b.p50Ms)}x` +
        (target === null ? '' : `  ${r >= target ? `ok (>= ${target})` : `BELOW ${target}`}`),
    );
  };
  for (const c of CONCURRENCIES) {
    pair('avgate-icap/direct cold', res('cold', 'avgate-icap', c), res('cold', 'direct', c), 0.95);
    pair('avgate-icap-nopreview/direct cold', res('cold', 'avgate-icap-nopreview', c), res('cold', 'direct', c), 0.95);
    pair('c-icap/direct cold', res('cold', 'c-icap', c), res('cold', 'direct', c), null);
  }
  for (const c of CONCURRENCIES) {
    pair('avgate-icap/c-icap warm', res('warm', 'avgate-icap', c), res('warm', 'c-icap', c), 3);
    pair('avgate-icap-nopreview/c-icap-nopreview warm', res('warm', 'avgate-icap-nopreview', c), res('warm', 'c-icap-nopreview', c), 3);
  }
  for (const c of CONCURRENCIES) {
    const d = cellOf('cold', 'direct', c);
    for (const name of ['avgate-icap', 'avgate-icap-nopreview', 'c-icap']) {
      const a = cellOf('cold', name, c);
      if (!a || !d) continue;
      const ar = a.result();
      const dr = d.result();
      const added = ar.p99Ms - dr.p99Ms;
      const target = name.startsWith('avgate') ? `  ${added <= 2 ? 'ok (<= 2 ms)' : 'OVER 2 ms'}` : '';
      result.push(
        `${name} p99 added latency over direct cold c${String(c).padEnd(2)}: ${signed(added, 2)} ms (p99 ${ar.p99Ms.toFixed(2)} vs ${dr.p99Ms.toFixed(2)} ms); ` +
          `per object (median a - median direct): p50 ${signed(pairedAddedMs(a, d, 50), 2)} ms, p99 ${signed(pairedAddedMs(a, d, 99), 2)} ms${target}`,
      );
    }
  }
  // Where the added latency comes from, by object size (cold, per object: median a - median direct).
  const bucketOf = new Map(corpus.map((it) => [it.name, it.bucket]));
  const buckets = [...new Set(corpus.map((it) => it.bucket))].sort((x, y) => bucketRank(x) - bucketRank(y));
  for (const c of CONCURRENCIES) {
    const d = cellOf('cold', 'direct', c);
    if (!d) continue;
    for (const name of ['avgate-icap', 'avgate-icap-nopreview', 'c-icap']) {
      const a = cellOf('cold', name, c);
      if (!a) continue;
      const by = pairedAddedByGroup(a, d, (item) => bucketOf.get(item));
      result.push(
        `${name} added latency by size, cold c${String(c).padEnd(2)} (median per object): ` +
          buckets.map((b) => `${b} ${signed(by.get(b) ?? Number.NaN, 2)}`).join(', ') +
          ' ms',
      );
    }
  }
  if (bigLine) result.push(bigLine);

  return {
    report,
    result,
    wrong: checkedRows.reduce((a, [r]) => a + r.mismatches, 0),
    checked: checkedRows.reduce((a, [r]) => a + r.requests, 0),
    failed,
  };
}
