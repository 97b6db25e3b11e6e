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
  mismatches = 0;
  notCached = 0;
  readonly samples: string[] = [];
  readonly sliceReqPerSec: number[] = [];

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
