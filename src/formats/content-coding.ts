import type { Readable } from 'node:stream';
import { Transform, type TransformCallback } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate, createInflateRaw } from 'node:zlib';
import { skippedVerdict, type Verdict } from '../core/verdict.js';

/**
 * HTTP content codings (RFC 9110 §8.4) of a body handed to the engines, for the HTTP proxy and
 * the ICAP server alike. A browser undoes every coding listed, last applied first; an engine sees
 * the bytes as sent, and ClamAV unpacks gzip by itself but not deflate, br or a chain of them. So
 * the engines get the body decoded, and a coding that cannot be decoded here is not scanned (its
 * verdict is `skipped`), never passed as what the engine saw.
 */

/** Codings decoded here (zstd is not in Node 20's zlib). */
export const DECODED_CODINGS: ReadonlySet<string> = new Set(['gzip', 'x-gzip', 'deflate', 'br', 'identity']);
/** Codings ClamAV unpacks by itself (plus identity): what may be scanned as sent without decoding. */
export const ENGINE_CODINGS: ReadonlySet<string> = new Set(['gzip', 'x-gzip', 'identity']);

/** The codings of every Content-Encoding value, in the order applied, identity left out. */
export function contentCodings(values: readonly string[]): string[] {
  return values
    .flatMap((v) => v.split(','))
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== '' && c !== 'identity');
}

export type CodingPlan = { kind: 'as-sent' } | { kind: 'decode'; codings: string[] } | { kind: 'undecodable'; reason: string };

/** How a body with these codings is scanned; `decode`: the config lets avgate decode. */
export function codingPlan(codings: readonly string[], decode: boolean): CodingPlan {
  if (codings.length === 0) return { kind: 'as-sent' };
  // One gzip layer the engine opens by itself; anything else needs decoding here.
  if (!decode && codings.length === 1 && ENGINE_CODINGS.has(codings[0] as string)) return { kind: 'as-sent' };
  const unknown = codings.find((c) => !DECODED_CODINGS.has(c));
  if (unknown !== undefined) return { kind: 'undecodable', reason: `Content-Encoding ${unknown.slice(0, 40)} cannot be decoded for scanning` };
  if (!decode) return { kind: 'undecodable', reason: `Content-Encoding ${codings.join(', ').slice(0, 80)} is not decoded (decode-content-encoding is off)` };
  return { kind: 'decode', codings: [...codings] };
}

/**
 * `deflate` as sent in practice: zlib-wrapped (RFC 9110) or raw (RFC 1951, what some servers
 * send and every browser accepts). The first two bytes tell: a zlib header is CM 8 with a check
 * that makes the pair a multiple of 31.
 */
class DeflateEither extends Transform {
  private inner: Transform | null = null;
  private head: Buffer = Buffer.alloc(0);
  /** The inner decoder reached the end of the compressed stream: what comes after is not fed to it. */
  private innerEnded = false;

  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    if (this.inner) return this.feed(chunk, cb);
    this.head = Buffer.concat([this.head, chunk]);
    if (this.head.length < 2) return cb();
    this.start();
    const held = this.head;
    this.head = Buffer.alloc(0);
    this.feed(held, cb);
  }

  override _flush(cb: TransformCallback): void {
    if (!this.inner && this.head.length === 0) return cb();
    const inner = this.inner ?? this.start();
    if (this.head.length > 0 && !this.innerEnded) inner.write(this.head);
    // The compressed stream may have ended long before the input did (bytes after it): its 'end'
    // is then past, and waiting for it would hold the scan until scan-timeout.
    if (this.innerEnded) return cb();
    inner.once('end', () => cb());
    inner.once('error', (e) => cb(e));
    inner.end();
  }

  /** Input bytes the decoder used (the rest came after the end of the compressed stream), as zlib's streams count them. */
  get bytesWritten(): number {
    return (this.inner as unknown as { bytesWritten?: number } | null)?.bytesWritten ?? 0;
  }

  private start(): Transform {
    const b0 = this.head[0] ?? 0;
    const b1 = this.head[1] ?? 0;
    const zlib = (b0 & 0x0f) === 8 && (b0 >> 4) <= 7 && ((b0 << 8) | b1) % 31 === 0;
    const inner = zlib ? createInflate() : createInflateRaw();
    inner.on('data', (d: Buffer) => this.push(d));
    inner.on('end', () => void (this.innerEnded = true));
    inner.on('error', (e) => this.destroy(e));
    this.inner = inner;
    return inner;
  }

  private feed(chunk: Buffer, cb: TransformCallback): void {
    const inner = this.inner as Transform;
    // Bytes after the end of the compressed stream: counted as fed, never used (problem()).
    if (this.innerEnded) return cb();
    if (inner.write(chunk)) return cb();
    let done = false;
    const go = () => {
      if (done) return;
      done = true;
      inner.off('drain', go);
      inner.off('end', go);
      cb();
    };
    inner.once('drain', go);
    inner.once('end', go);
  }
}

function decoderFor(coding: string): Transform {
  switch (coding) {
    case 'gzip':
    case 'x-gzip':
      return createGunzip();
    case 'deflate':
      return new DeflateEither();
    default:
      return createBrotliDecompress();
  }
}

/** Counts decoded bytes against the encoded ones so far: a decompression bomb stops here. */
class RatioMeter extends Transform {
  private out = 0;
  exceeded = false;
  constructor(
    private readonly encoded: () => number,
    private readonly ratio: number,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.out += chunk.length;
    // A floor of 1 MiB: tiny bodies may legitimately expand a lot.
    if (this.out > Math.max(1024 * 1024, this.encoded() * this.ratio)) {
      this.exceeded = true;
      cb(new Error('decompression ratio exceeded'));
      return;
    }
    cb(null, chunk);
  }
}

/**
 * `raw` decoded through every coding, last applied first, metered against `encodedBytes()` (the
 * encoded bytes read so far, or the whole size). An error of any stage ends the result with it.
 * `problem()`, once the result has ended (or failed): why what the engines saw is not what a
 * client may get — the decoded size passed the ratio, a coding could not be decoded (a corrupt
 * body), or bytes followed the end of a compressed stream (brotli and inflate stop there and drop
 * them, while a client that saves the body as sent keeps them) — else null. `verdictOf`, for the
 * scan's ScanRequest.verdictOf: with a problem the verdict is skipped, unless the engines found
 * something (a finding stands whatever else is wrong with the body: skipped may be accepted).
 */
export function decodedStream(
  raw: Readable,
  codings: readonly string[],
  ratio: number,
  encodedBytes: () => number,
): { stream: Readable; problem: () => string | null; verdictOf: (v: Verdict) => Verdict } {
  const meter = new RatioMeter(encodedBytes, ratio);
  const order = [...codings].reverse();
  const stages: Transform[] = order.map(decoderFor);
  const fed = stages.map(() => 0);
  let failed: { coding: string; message: string } | null = null;
  let prev: Readable = raw;
  stages.forEach((stage, i) => {
    prev.on('data', (c: Buffer) => void (fed[i] = (fed[i] as number) + c.length));
    prev.on('error', (e) => stage.destroy(e));
    stage.on('error', (e) => void (failed ??= { coding: order[i] as string, message: e.message }));
    prev = prev.pipe(stage);
  });
  prev.on('error', (e) => meter.destroy(e));
  prev.pipe(meter);
  const used = (stage: Transform): number => (stage as unknown as { bytesWritten?: number }).bytesWritten ?? 0;
  const problem = (): string | null => {
    if (meter.exceeded) return `decoded body over max-decompression-ratio (${ratio})`;
    if (failed) return `the body's Content-Encoding ${failed.coding} could not be decoded (${failed.message.slice(0, 80)})`;
    const over = stages.findIndex((s, i) => s.readableEnded && used(s) < (fed[i] as number));
    if (over >= 0) return `data after the end of the ${order[over]} stream (${(fed[over] as number) - used(stages[over] as Transform)} bytes) cannot be scanned as a client may keep it`;
    return null;
  };
  const verdictOf = (v: Verdict): Verdict => {
    const why = problem();
    return why === null || v.status === 'found' ? v : skippedVerdict(why, encodedBytes(), v.durationMs);
  };
  return { stream: meter, problem, verdictOf };
}
