import * as nodeCrypto from 'node:crypto';
import { createHash, type Hash } from 'node:crypto';
import { createRequire } from 'node:module';

/**
 * The content hash that keys the verdict cache (and the mail proxies' memo of clean messages).
 *
 * - Objects of up to SMALL_MAX bytes: SHA-256, plain hex (64 characters).
 * - Larger objects: BLAKE3, `b3:` + hex, when the native module (@napi-rs/blake-hash) loads on this
 *   platform; SHA-256 otherwise. Both are collision-resistant, which a cache that lets content pass
 *   unscanned must be. Measured here with SHA-NI: SHA-256 1.6 GB/s, BLAKE3 7.7 GB/s on one core,
 *   but each BLAKE3 hasher costs about 15 µs and each call into it about 0.6 µs, so small objects
 *   stay with SHA-256 and BLAKE3 is fed in batches.
 *
 * The choice depends only on the content's length, so the same bytes get the same key however they
 * are split into chunks. The first SMALL_MAX bytes are copied into a staging buffer (they are all
 * there is for a small object, and the start of a large one's first batch); later small pieces are
 * gathered there too.
 */
export const SMALL_MAX = 32 * 1024;
/** crypto.hash exists from Node 20.12 on: looked up at run time, so that an older Node 20 still loads this module. */
const oneShotHash = (nodeCrypto as unknown as { hash?: (algorithm: string, data: Uint8Array, encoding: 'hex') => string }).hash;
const STAGE_SIZE = 64 * 1024;
/** A piece at least this long goes to BLAKE3 directly instead of through the staging buffer. */
const DIRECT_MIN = 16 * 1024;

interface Blake3 {
  update(input: Uint8Array): unknown;
  digest(format: 'hex'): string;
}
type Blake3Ctor = new () => Blake3;

let blake3Ctor: Blake3Ctor | null | undefined;

/** The BLAKE3 hasher class, or null where the native module is not available. */
function loadBlake3(): Blake3Ctor | null {
  if (blake3Ctor !== undefined) return blake3Ctor;
  try {
    const mod = createRequire(import.meta.url)('@napi-rs/blake-hash') as { Blake3Hasher?: Blake3Ctor };
    blake3Ctor = typeof mod.Blake3Hasher === 'function' ? mod.Blake3Hasher : null;
  } catch {
    blake3Ctor = null;
  }
  return blake3Ctor;
}

/** What large objects are hashed with here: 'blake3', or 'sha256' where BLAKE3 cannot be loaded. */
export function largeObjectHash(): 'blake3' | 'sha256' {
  return loadBlake3() ? 'blake3' : 'sha256';
}

/** Staging buffers are reused: a small object's hash then allocates nothing. */
const stagePool: Buffer[] = [];
const STAGE_POOL_MAX = 32;

function takeStage(): Buffer {
  return stagePool.pop() ?? Buffer.allocUnsafeSlow(STAGE_SIZE);
}

function giveStage(b: Buffer): void {
  if (stagePool.length < STAGE_POOL_MAX) stagePool.push(b);
}

export class ContentHasher {
  private stage: Buffer | null = null;
  private staged = 0;
  private total = 0;
  private large: Blake3 | Hash | null = null;
  private result: string | null = null;
  private released = false;
  private readonly blake3: Blake3Ctor | null;

  /** `large`: force the algorithm for large objects (tests); by default BLAKE3 where it loads. */
  constructor(large?: 'blake3' | 'sha256') {
    this.blake3 = large === 'sha256' ? null : loadBlake3();
    if (large === 'blake3' && !this.blake3) throw new Error('BLAKE3 is not available on this platform');
  }

  /** Bytes hashed so far. */
  get length(): number {
    return this.total;
  }

  update(data: Uint8Array): void {
    // A string would be staged as zeros (all strings of one length, one key): bytes only.
    if (!(data instanceof Uint8Array)) throw new TypeError('content hash input must be bytes');
    if (this.result !== null) throw new Error('content hash already computed');
    if (this.released) return;
    const n = data.length;
    if (n === 0) return;
    this.total += n;
    if (!this.large) {
      if (this.staged + n <= SMALL_MAX) {
        this.stage ??= takeStage();
        this.stage.set(data, this.staged);
        this.staged += n;
        return;
      }
      this.large = this.blake3 ? new this.blake3() : createHash('sha256');
    }
    const large = this.large;
    if (n >= DIRECT_MIN) {
      this.flush();
      large.update(data);
      return;
    }
    this.stage ??= takeStage();
    if (this.staged + n > STAGE_SIZE) this.flush();
    (this.stage as Buffer).set(data, this.staged);
    this.staged += n;
  }

  /** The key: SHA-256 hex for up to SMALL_MAX bytes, else `b3:` + BLAKE3 hex (SHA-256 hex without BLAKE3). */
  digest(): string {
    if (this.result !== null) return this.result;
    if (this.released) throw new Error('content hasher released');
    if (!this.large) {
      const held = this.stage ? this.stage.subarray(0, this.staged) : Buffer.alloc(0);
      this.result = typeof oneShotHash === 'function' ? oneShotHash('sha256', held, 'hex') : createHash('sha256').update(held).digest('hex');
    } else {
      this.flush();
      this.result = this.blake3 ? `b3:${(this.large as Blake3).digest('hex')}` : (this.large as Hash).digest('hex');
      this.large = null;
    }
    if (this.stage) giveStage(this.stage);
    this.stage = null;
    this.staged = 0;
    return this.result;
  }

  /**
   * The hash is not wanted after all: the staging buffer goes back to the pool (an abandoned
   * hasher would keep it, and the pool would run dry). Later update()s are ignored; digest()
   * throws, so a released hasher never gives a key.
   */
  release(): void {
    if (this.result !== null || this.released) return;
    this.released = true;
    if (this.stage) giveStage(this.stage);
    this.stage = null;
    this.staged = 0;
    this.large = null;
  }

  private flush(): void {
    if (this.staged > 0 && this.stage && this.large) this.large.update(this.stage.subarray(0, this.staged));
    this.staged = 0;
  }
}

/** The content hash of bytes held in memory. */
export function contentHashOf(chunks: readonly Uint8Array[]): string {
  const h = new ContentHasher();
  for (const c of chunks) h.update(c);
  return h.digest();
}
