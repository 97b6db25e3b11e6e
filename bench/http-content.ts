/**
 * Content of the HTTP section's origin, a pure function of the URL path, so that the origin (a
 * bench child) and the load generator agree on every byte without sharing anything:
 *
 *   /obj/SIZE/ID     SIZE bytes: SHA-256 of the path (32 bytes), then a deterministic pseudo-random
 *                    pool (AES-128-CTR of zeros under a fixed key) read from an offset the hash picks
 *   /eicar/SIZE/ID   the same, with the EICAR test string in front (the test database's body
 *                    signature finds it anywhere)
 *
 * Every ID gives new content (the first 32 bytes differ, so neither clamd's clean cache nor avgate's
 * verdict cache can answer); the same path gives the same bytes (the warm regime). The pool is made
 * once per process (a few milliseconds): serving costs a copy, not a cipher run per byte.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { eicarBytes } from '../src/engines/clamd/testdb.js';

export const POOL_BYTES = 4 * 1024 * 1024;
const CHUNK = 64 * 1024;

let pool: Buffer | null = null;
function thePool(): Buffer {
  pool ??= createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0)).update(Buffer.alloc(POOL_BYTES));
  return pool;
}

export interface ObjectSpec {
  path: string;
  size: number;
  infected: boolean;
}

/** Parses `/obj/SIZE/ID` and `/eicar/SIZE/ID`; null for anything else (404). */
export function parseObjectPath(path: string): ObjectSpec | null {
  const m = /^\/(obj|eicar)\/(\d{1,10})\/([A-Za-z0-9._-]{1,100})$/.exec(path);
  if (!m) return null;
  const size = Number(m[2]);
  if (!Number.isSafeInteger(size)) return null;
  return { path, size, infected: m[1] === 'eicar' };
}

export function objectPath(size: number, id: string, infected = false): string {
  return `/${infected ? 'eicar' : 'obj'}/${size}/${id}`;
}

function pathDigest(path: string): Buffer {
  return createHash('sha256').update(path).digest();
}

/** The first bytes of an object (up to 32 + the EICAR string): what the client checks. */
export function objectPrefix(spec: ObjectSpec): Buffer {
  const digest = pathDigest(spec.path);
  const head = spec.infected ? Buffer.concat([eicarBytes(), digest]) : digest;
  return head.subarray(0, Math.min(head.length, spec.size));
}

/** The object's bytes, in pieces of at most 64 KiB (pool slices are not copied). */
export function* objectPieces(spec: ObjectSpec): Generator<Buffer> {
  const p = thePool();
  const prefix = objectPrefix(spec);
  yield prefix;
  let left = spec.size - prefix.length;
  // Where in the pool this object's bytes start: picked by its hash, on a chunk boundary.
  let off = (pathDigest(spec.path).readUInt32BE(0) % (POOL_BYTES / CHUNK)) * CHUNK;
  while (left > 0) {
    const n = Math.min(left, CHUNK, POOL_BYTES - off);
    yield p.subarray(off, off + n);
    left -= n;
    off = (off + n) % POOL_BYTES;
  }
}
