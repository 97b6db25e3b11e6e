/** Bits set per hash; with BITS_PER_ENTRY bits an entry, about 1 % false positives at capacity. */
const PROBES = 7;
const BITS_PER_ENTRY = 10;
/** Largest generation: 2^26 bits (8 MiB); a bigger cache only gets more false positives. */
const MAX_BITS = 2 ** 26;

/**
 * Which content hashes (core/content-hash.ts: 64 hex digits, after `b3:` for BLAKE3) may be in the verdict cache's SQLite level: "no" is certain, "maybe"
 * needs the look-up. A Bloom filter in two generations of `capacity` hashes each: when the newer
 * one is full, the older is dropped and a new one begun, so the filter always covers at least the
 * last `capacity` hashes added — all the level can hold, since it keeps the newest
 * sqlite-max-entries rows. SHA-256 and BLAKE3 output is uniform, so the probes are slices of the hash itself.
 */
export class HashFilter {
  private current: Uint32Array;
  private previous: Uint32Array | null = null;
  private added = 0;
  private readonly mask: number;

  constructor(private readonly capacity: number) {
    let bits = 1024;
    while (bits < capacity * BITS_PER_ENTRY && bits < MAX_BITS) bits *= 2;
    this.mask = bits - 1;
    this.current = new Uint32Array(bits / 32);
  }

  /** Bytes held (both generations). */
  get bytes(): number {
    return this.current.byteLength + (this.previous?.byteLength ?? 0);
  }

  add(hash: string): void {
    if (this.added >= this.capacity) {
      this.previous = this.current;
      this.current = new Uint32Array(this.current.length);
      this.added = 0;
    }
    for (let i = 0; i < PROBES; i++) {
      const bit = probe(hash, i) & this.mask;
      this.current[bit >>> 5] = (this.current[bit >>> 5] as number) | (1 << (bit & 31));
    }
    this.added++;
  }

  mayHave(hash: string): boolean {
    return inGeneration(this.current, hash, this.mask) || (this.previous !== null && inGeneration(this.previous, hash, this.mask));
  }
}

function inGeneration(bits: Uint32Array, hash: string, mask: number): boolean {
  for (let i = 0; i < PROBES; i++) {
    const bit = probe(hash, i) & mask;
    if (((bits[bit >>> 5] as number) & (1 << (bit & 31))) === 0) return false;
  }
  return true;
}

/** The i-th 32 bits of the hash's last 64 hex digits (a non-hex key gives 0s: always "maybe", never wrong). */
function probe(hash: string, i: number): number {
  const at = Math.max(0, hash.length - 64) + i * 8;
  const v = Number.parseInt(hash.slice(at, at + 8), 16);
  return Number.isNaN(v) ? 0 : v >>> 0;
}
