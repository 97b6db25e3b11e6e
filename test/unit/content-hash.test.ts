import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ContentHasher, contentHashOf, largeObjectHash, SMALL_MAX } from '../../src/core/content-hash.js';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
/** The module's one-shot function: another way into BLAKE3 than the streaming hasher used by ContentHasher. */
const blake3OneShot = (b: Uint8Array) => (createRequire(import.meta.url)('@napi-rs/blake-hash') as { blake3(b: Uint8Array): Buffer }).blake3(b).toString('hex');

/** Hashes `data` in pieces cut at `cuts` (positions, any order). */
function hashInPieces(data: Buffer, cuts: number[], large?: 'blake3' | 'sha256'): string {
  const h = new ContentHasher(large);
  let at = 0;
  for (const c of [...new Set(cuts)].sort((a, b) => a - b)) {
    h.update(data.subarray(at, c));
    at = c;
  }
  h.update(data.subarray(at));
  assert.equal(h.length, data.length);
  return h.digest();
}

describe('content hash (the verdict cache key)', () => {
  it('loads BLAKE3 on linux-x64 (the CI machine; the lock file holds its native build)', () => {
    const onCi = process.platform === 'linux' && process.arch === 'x64';
    assert.ok(onCi ? largeObjectHash() === 'blake3' : ['blake3', 'sha256'].includes(largeObjectHash()));
  });

  it('is SHA-256 up to SMALL_MAX bytes and BLAKE3 (b3:) above', () => {
    for (const n of [0, 1, 5000, SMALL_MAX]) {
      const b = randomBytes(n);
      assert.equal(contentHashOf([b]), sha256(b), `${n} bytes`);
    }
    for (const n of [SMALL_MAX + 1, 100_000, 3_000_000]) {
      const b = randomBytes(n);
      assert.equal(contentHashOf([b]), `b3:${blake3OneShot(b)}`, `${n} bytes`);
    }
    // The official BLAKE3 test input (bytes 0..250 repeating), 102400 bytes.
    const official = Buffer.from(Array.from({ length: 102400 }, (_, i) => i % 251));
    assert.equal(contentHashOf([official]), 'b3:bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085');
  });

  it('without BLAKE3, large objects are plain SHA-256', () => {
    const b = randomBytes(200_000);
    assert.equal(hashInPieces(b, [1, 40_000, 40_001, 150_000], 'sha256'), sha256(b));
  });

  it('the same bytes give the same key however they are cut (tiny pieces, pieces over the staging buffer)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 300_000 }), fc.array(fc.nat(), { maxLength: 40 }), fc.boolean(), (n, raw, manySmall) => {
        const data = randomBytes(n);
        // Either random cuts, or a run of 100-byte pieces (the mail walker's decoded lines) past SMALL_MAX.
        const cuts = manySmall ? Array.from({ length: Math.floor(n / 100) }, (_, i) => i * 100) : raw.map((c) => (n === 0 ? 0 : c % n));
        const whole = contentHashOf([data]);
        assert.equal(hashInPieces(data, cuts), whole);
        assert.equal(hashInPieces(data, cuts, 'sha256'), sha256(data));
      }),
      { numRuns: 60 },
    );
  });

  it('digest() twice gives the same key; update() after it is refused', () => {
    const h = new ContentHasher();
    h.update(randomBytes(50_000));
    const d = h.digest();
    assert.equal(h.digest(), d);
    assert.throws(() => h.update(Buffer.from('x')), /already computed/);
  });

  it('takes bytes only; a released hasher ignores input and gives no key', () => {
    assert.throws(() => new ContentHasher().update('hello' as unknown as Uint8Array), TypeError);
    const h = new ContentHasher();
    h.update(randomBytes(1000));
    h.release();
    h.update(randomBytes(1000));
    assert.throws(() => h.digest(), /released/);
    const b = randomBytes(2000);
    assert.equal(contentHashOf([b]), sha256(b), 'the next hasher (with the released staging buffer) is right');
  });

  it('a reused staging buffer does not leak bytes into the next hash', () => {
    const a = randomBytes(SMALL_MAX);
    contentHashOf([a]);
    const b = Buffer.from('short');
    assert.equal(contentHashOf([b]), sha256(b));
  });
});
