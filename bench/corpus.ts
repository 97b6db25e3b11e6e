import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CLAMAV_TESTFILES_DIR, eicarBytes } from '../src/engines/clamd/testdb.js';

export interface CorpusItem {
  /** Path (or label) for mismatch reports. */
  name: string;
  /** The content as it is on disk: what the warm (cache) cell sends again and again. */
  data: Buffer;
  expect: 'free' | 'found';
  /** Size bucket label for the summary. */
  bucket: string;
  /**
   * How a request is made unique. `append`: 16 random bytes after the content. `tar`: the
   * content as the one member of a tar archive whose member name carries the random bytes — for
   * an object that clamd knows only by its exact hash (clam.exe), where appended bytes would
   * change the hash and so the verdict.
   */
  unique: 'append' | 'tar';
}

export interface Bucket {
  label: string;
  min: number;
  max: number;
  count: number;
}

/** Size buckets of clean files, bytes inclusive; counts are per full corpus. */
export const BUCKETS: readonly Bucket[] = [
  { label: '1-10K', min: 1024, max: 10 * 1024, count: 40 },
  { label: '10-100K', min: 10 * 1024 + 1, max: 100 * 1024, count: 30 },
  { label: '100K-1M', min: 100 * 1024 + 1, max: 1024 * 1024, count: 16 },
  { label: '1-5M', min: 1024 * 1024 + 1, max: 5 * 1024 * 1024, count: 12 },
];

export const SOURCE_DIRS = ['/usr/lib/x86_64-linux-gnu', '/usr/share/doc', '/usr/bin'];

/**
 * Test viruses from Debian's clamav-testfiles that the generated test database detects and that
 * stay detected with bytes appended (checked against clamd 1.4.6): archives, documents, packed
 * executables. clam.exe itself is detected by its exact MD5 and size, so it goes in a tar.
 */
const VIRUS_FILES: ReadonlyArray<{ file: string; unique: 'append' | 'tar' }> = [
  { file: 'clam.zip', unique: 'append' },
  { file: 'clam.pdf', unique: 'append' },
  { file: 'clam.exe', unique: 'tar' },
  { file: 'clam.tar.gz', unique: 'append' },
  { file: 'clam.7z', unique: 'append' },
  { file: 'clam.ole.doc', unique: 'append' },
  { file: 'clam.exe.rtf', unique: 'append' },
  { file: 'clam-upx.exe', unique: 'append' },
  { file: 'clam_ISmsi_ext.exe', unique: 'append' },
];

/** Regular files under dir (symlinks not followed), at most maxDepth levels down. */
async function walk(dir: string, maxDepth: number, out: Array<{ path: string; size: number }>): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const path = join(dir, name);
    let st;
    try {
      st = await lstat(path);
    } catch {
      continue;
    }
    if (st.isFile()) out.push({ path, size: st.size });
    else if (st.isDirectory() && maxDepth > 0) await walk(path, maxDepth - 1, out);
  }
}

/**
 * Picks clean files deterministically: every regular file of the source directories, sorted by
 * path, split into size buckets; from each bucket `count` files evenly spaced over the sorted list
 * (so the sample is spread over the tree, not the first directory). Same machine → same corpus.
 */
export async function loadCorpus(scale: number): Promise<CorpusItem[]> {
  const all: Array<{ path: string; size: number }> = [];
  for (const dir of SOURCE_DIRS) await walk(dir, 4, all);
  all.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const items: CorpusItem[] = [];
  for (const b of BUCKETS) {
    const inBucket = all.filter((f) => f.size >= b.min && f.size <= b.max);
    const count = Math.max(1, Math.round(b.count * scale));
    if (inBucket.length < count) throw new Error(`corpus: only ${inBucket.length} files of ${b.label} found, need ${count}`);
    for (let i = 0; i < count; i++) {
      const f = inBucket[Math.floor((i * inBucket.length) / count)];
      if (!f) continue;
      items.push({ name: f.path, data: await readFile(f.path), expect: 'free', bucket: b.label, unique: 'append' });
    }
  }
  items.push({ name: 'EICAR (generated)', data: eicarBytes(), expect: 'found', bucket: 'virus', unique: 'append' });
  for (const v of VIRUS_FILES) {
    const path = join(CLAMAV_TESTFILES_DIR, v.file);
    if (!existsSync(path)) throw new Error(`corpus: ${path} is missing (install clamav-testfiles)`);
    items.push({ name: path, data: await readFile(path), expect: 'found', bucket: 'virus', unique: v.unique });
  }
  // Interleave sizes so every slice of the request sequence has a similar mix (a cell that ends
  // mid-pass then still measures the same kind of load).
  return interleave(items);
}

function interleave(items: CorpusItem[]): CorpusItem[] {
  const groups = new Map<string, CorpusItem[]>();
  for (const it of items) {
    const g = groups.get(it.bucket) ?? [];
    g.push(it);
    groups.set(it.bucket, g);
  }
  const lists = [...groups.values()];
  const total = items.length;
  // Each item gets a fractional position (i + 0.5) / n within its group; merge by position.
  const placed = lists.flatMap((g) => g.map((it, i) => ({ it, pos: (i + 0.5) / g.length })));
  placed.sort((a, b) => a.pos - b.pos);
  const out = placed.map((p) => p.it);
  if (out.length !== total) throw new Error('interleave lost items');
  return out;
}

/** 512-byte ustar header for one regular file. */
function tarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'latin1');
  h.write('0000644\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write(`${Math.floor(Date.UTC(2024, 0, 1) / 1000).toString(8).padStart(11, '0')}\0`, 136, 'latin1');
  h.write('        ', 148, 'latin1'); // checksum field counts as spaces while summing
  h.write('0', 156, 'latin1');
  h.write('ustar\0' + '00', 257, 'latin1');
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

/**
 * One unique request body for an item: fresh random bytes every call, the same scheme for the
 * direct client and avgate so that both pay the same clamd scan cost.
 */
export function uniqueBody(item: CorpusItem): Buffer {
  const rnd = randomBytes(16);
  if (item.unique === 'append') return Buffer.concat([item.data, rnd]);
  const pad = (512 - (item.data.length % 512)) % 512;
  return Buffer.concat([tarHeader(`x${rnd.toString('hex')}.exe`, item.data.length), item.data, Buffer.alloc(pad + 1024)]);
}

export function corpusSummary(items: readonly CorpusItem[]): string {
  const by = new Map<string, { n: number; bytes: number }>();
  for (const it of items) {
    const s = by.get(it.bucket) ?? { n: 0, bytes: 0 };
    s.n++;
    s.bytes += it.data.length;
    by.set(it.bucket, s);
  }
  const total = items.reduce((a, it) => a + it.data.length, 0);
  const parts = [...by.entries()].map(([k, s]) => `${k}: ${s.n} (${(s.bytes / 1e6).toFixed(1)} MB)`);
  return `${items.length} objects, ${(total / 1e6).toFixed(1)} MB — ${parts.join(', ')}`;
}
