/** Figures of one measured cell. */
export interface CellResult {
  mode: string;
  concurrency: number;
  requests: number;
  bytes: number;
  seconds: number;
  reqPerSec: number;
  mbPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU of this (benchmark) process per request: the client side, avgate's cost included. */
  nodeCpuMsPerReq: number;
  /** CPU of clamd per request (all its threads). */
  clamdCpuMsPerReq: number;
  /** CPU of the server process under test per request (c-icap's process tree, avgate's ICAP child); NaN if none. */
  serverCpuMsPerReq: number;
  /** Throughput of each slice (a cell is measured in slices interleaved with the other mode). */
  sliceReqPerSec: number[];
  mismatches: number;
  /** Up to a few mismatch descriptions (object, expected, got). */
  mismatchSamples: string[];
  /** Free-form extra (cache hits ...). */
  note: string;
}

/** Nearest-rank percentile of already sorted values. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] ?? Number.NaN;
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? Number.NaN) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

/** Accumulates the slices of one cell (mode x concurrency). */
export class Cell {
  readonly latencies: number[] = [];
  bytes = 0;
  seconds = 0;
  nodeCpuMs = 0;
  clamdCpuMs = 0;
  serverCpuMs = 0;
  mismatches = 0;
  notCached = 0;
  readonly samples: string[] = [];
  readonly sliceReqPerSec: number[] = [];
  /** Latencies per corpus object (by name), for paired comparisons between modes. */
  readonly byItem = new Map<string, number[]>();

  record(item: string, ms: number): void {
    this.latencies.push(ms);
    const l = this.byItem.get(item);
    if (l) l.push(ms);
    else this.byItem.set(item, [ms]);
  }

  constructor(
    readonly mode: string,
    readonly concurrency: number,
  ) {}

  mismatch(text: string): void {
    this.mismatches++;
    if (this.samples.length < 5) this.samples.push(text);
  }

  result(note = ''): CellResult {
    const n = this.latencies.length;
    const sorted = Float64Array.from(this.latencies).sort();
    return {
      mode: this.mode,
      concurrency: this.concurrency,
      requests: n,
      bytes: this.bytes,
      seconds: this.seconds,
      reqPerSec: n / this.seconds,
      mbPerSec: this.bytes / 1e6 / this.seconds,
      p50Ms: percentile(sorted, 50),
      p99Ms: percentile(sorted, 99),
      nodeCpuMsPerReq: this.nodeCpuMs / n,
      clamdCpuMsPerReq: this.clamdCpuMs / n,
      serverCpuMsPerReq: this.serverCpuMs / n,
      sliceReqPerSec: [...this.sliceReqPerSec],
      mismatches: this.mismatches,
      mismatchSamples: [...this.samples],
      note,
    };
  }
}

function fmt(n: number, digits: number): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '-';
}

/** A plain fixed-width table (no dependency). Numbers right-aligned. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function cellRow(r: CellResult): string[] {
  return [
    r.mode,
    String(r.concurrency),
    String(r.requests),
    fmt(r.seconds, 2),
    fmt(r.reqPerSec, 1),
    fmt(r.mbPerSec, 1),
    fmt(r.p50Ms, 2),
    fmt(r.p99Ms, 2),
    fmt(r.nodeCpuMsPerReq, 3),
    fmt(r.clamdCpuMsPerReq, 2),
    String(r.mismatches),
    r.note,
  ];
}

export const CELL_HEADERS = ['mode', 'conc', 'requests', 'time s', 'req/s', 'MB/s', 'p50 ms', 'p99 ms', 'node cpu ms/req', 'clamd cpu ms/req', 'wrong', 'note'];

export function ratio(a: number, b: number): string {
  return b > 0 && Number.isFinite(a) ? (a / b).toFixed(3) : '-';
}

export function signed(n: number, digits: number): string {
  return Number.isFinite(n) ? `${n >= 0 ? '+' : ''}${n.toFixed(digits)}` : '-';
}

export const ICAP_CELL_HEADERS = [
  'mode',
  'regime',
  'conc',
  'requests',
  'time s',
  'req/s',
  'MB/s',
  'p50 ms',
  'p99 ms',
  'client cpu ms/req',
  'server cpu ms/req',
  'clamd cpu ms/req',
  'wrong',
  'note',
];

export function icapCellRow(r: CellResult, regime: string): string[] {
  return [
    r.mode,
    regime,
    String(r.concurrency),
    String(r.requests),
    fmt(r.seconds, 2),
    fmt(r.reqPerSec, 1),
    fmt(r.mbPerSec, 1),
    fmt(r.p50Ms, 2),
    fmt(r.p99Ms, 2),
    fmt(r.nodeCpuMsPerReq, 3),
    fmt(r.serverCpuMsPerReq, 3),
    fmt(r.clamdCpuMsPerReq, 2),
    String(r.mismatches),
    r.note,
  ];
}

/**
 * Paired added latency of mode `a` over mode `b` per corpus object: for every object measured in
 * both, median(a) - median(b); returns the given percentile over objects (ms).
 */
export function pairedAddedMs(a: Cell, b: Cell, p: number): number {
  const diffs: number[] = [];
  for (const [name, la] of a.byItem) {
    const lb = b.byItem.get(name);
    if (!lb || la.length === 0 || lb.length === 0) continue;
    diffs.push(median(la) - median(lb));
  }
  return percentile(Float64Array.from(diffs).sort(), p);
}

/**
 * Paired added latency by group (size bucket): for every object measured in both cells, median(a)
 * minus median(b); per group, the median of those differences (ms).
 */
export function pairedAddedByGroup(a: Cell, b: Cell, groupOf: (item: string) => string | undefined): Map<string, number> {
  const diffs = new Map<string, number[]>();
  for (const [name, la] of a.byItem) {
    const lb = b.byItem.get(name);
    const g = groupOf(name);
    if (!lb || g === undefined || la.length === 0 || lb.length === 0) continue;
    const d = diffs.get(g) ?? [];
    d.push(median(la) - median(lb));
    diffs.set(g, d);
  }
  return new Map([...diffs.entries()].map(([g, d]) => [g, median(d)]));
}
