import { createReadStream } from 'node:fs';
import { open, readdir } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Engine } from '../engines/types.js';

/**
 * Which signature names an engine can detect, for the signatures page. clamd's text databases
 * name every signature on its line (.hdb/.hsb/.mdb/.msb: `hash:size:NAME`, .ndb: `NAME:target:...`,
 * .ldb: `NAME;...`); the signed containers (.cvd/.cld) are compressed and signed, so only the
 * count in their 512-byte header is shown. Reading is bounded: a page of names, at most
 * MAX_LINES lines per request.
 */
export interface SignatureListing {
  files: Array<{ name: string; kind: string; count: number | null }>;
  /** Names on this page, or null when the engine cannot tell its names. */
  names: string[] | null;
  /** Names matching (counted over the text databases read). */
  total: number;
  page: number;
  pageSize: number;
  note: string | null;
}

const HASH_DB = new Set(['.hdb', '.hsb', '.mdb', '.msb', '.hdu', '.hsu', '.mdu', '.msu']);
const TEXT_DB = new Set([...HASH_DB, '.ndb', '.ndu', '.ldb', '.ldu']);
const CONTAINER = new Set(['.cvd', '.cld', '.cud']);
const MAX_LINES = 2_000_000;

function nameOf(ext: string, line: string): string | null {
  if (line.length === 0 || line.startsWith('#')) return null;
  if (HASH_DB.has(ext)) return line.split(':')[2] ?? null;
  if (ext === '.ldb' || ext === '.ldu') return line.split(';')[0] ?? null;
  return line.split(':')[0] ?? null;
}

/** The signature count from a .cvd/.cld header (`ClamAV-VDB:time:version:SIGS:...`). */
async function containerCount(path: string): Promise<number | null> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(512);
    const { bytesRead } = await fh.read(buf, 0, 512, 0);
    const head = buf.subarray(0, bytesRead).toString('latin1');
    if (!head.startsWith('ClamAV-VDB:')) return null;
    const n = Number(head.split(':')[3]);
    return Number.isSafeInteger(n) ? n : null;
  } finally {
    await fh.close();
  }
}

export async function listDatabaseDir(dir: string, o: { page: number; pageSize: number; q: string }): Promise<SignatureListing> {
  let entries: string[];
  try {
    entries = (await readdir(dir)).sort();
  } catch (err) {
    return { files: [], names: null, total: 0, page: 1, pageSize: o.pageSize, note: `cannot read ${dir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` };
  }
  const files: SignatureListing['files'] = [];
  const names: string[] = [];
  const first = (o.page - 1) * o.pageSize;
  const needle = o.q.toLowerCase();
  let total = 0;
  let lines = 0;
  let truncated = false;
  for (const f of entries) {
    const ext = extname(f).toLowerCase();
    const path = join(dir, f);
    if (CONTAINER.has(ext)) {
      files.push({ name: f, kind: 'signed container (names not listed; sigtool --list-sigs shows them)', count: await containerCount(path).catch(() => null) });
      continue;
    }
    if (!TEXT_DB.has(ext)) continue;
    let count = 0;
    const rl = createInterface({ input: createReadStream(path, { encoding: 'utf8' }), crlfDelay: Infinity });
    for await (const line of rl) {
      if (++lines > MAX_LINES) {
        truncated = true;
        break;
      }
      const name = nameOf(ext, line.trim());
      if (!name) continue;
      count++;
      if (needle && !name.toLowerCase().includes(needle)) continue;
      if (total >= first && names.length < o.pageSize) names.push(name);
      total++;
    }
    rl.close();
    files.push({ name: f, kind: `text (${ext.slice(1)})`, count: truncated ? null : count });
    if (truncated) break;
  }
  return { files, names, total, page: o.page, pageSize: o.pageSize, note: truncated ? `stopped after ${MAX_LINES} lines` : null };
}

/** From the engine's own listing (plugins), one page. */
export async function listFromEngine(engine: Engine, o: { page: number; pageSize: number; q: string }): Promise<SignatureListing> {
  const names: string[] = [];
  const first = (o.page - 1) * o.pageSize;
  const needle = o.q.toLowerCase();
  let total = 0;
  for await (const name of (engine.listSignatures as () => AsyncIterable<string>)()) {
    if (needle && !name.toLowerCase().includes(needle)) continue;
    if (total >= first && names.length < o.pageSize) names.push(name);
    if (++total >= MAX_LINES) break;
  }
  return { files: [], names, total, page: o.page, pageSize: o.pageSize, note: null };
}

export async function listSignatures(engine: Engine, o: { page: number; pageSize: number; q: string }): Promise<SignatureListing> {
  if (engine.listSignatures) return listFromEngine(engine, o);
  const dir = engine.databaseDir?.() ?? null;
  if (dir) return listDatabaseDir(dir, o);
  return { files: [], names: null, total: 0, page: 1, pageSize: o.pageSize, note: 'this engine does not tell which signatures it has' };
}
