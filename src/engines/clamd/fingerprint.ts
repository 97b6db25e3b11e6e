import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** File endings clamd loads as signature databases. */
const DB_EXT = /\.(c[vl]d|cud|hd[bu]|hsb|hsu|md[bu]|ms[bu]|ndb|ndu|ldb|ldu|idb|cdb|cfg|fp|sfp|ftm|ign2?|crb|pdb|wdb|gdb|yara?|cbc|imp|pwdb|info|db)$/i;

/** True for a file name clamd would load from its database directory. */
export function isDatabaseFile(name: string): boolean {
  return DB_EXT.test(name);
}

/**
 * Put in the database directory by the signature updater while it replaces files and clamd reloads
 * (src/signatures/updater.ts). While it is there (and younger than UPDATING_STALE_MS) the directory
 * has no fingerprint: verdicts are neither cached nor taken from the cache, so nothing scanned by the
 * old database can be stored under the new database's key.
 */
export const UPDATING_MARKER = '.avgate-updating';
/** A marker older than this is left over from an updater that died: ignored. */
export const UPDATING_STALE_MS = 15 * 60_000;

/**
 * A short fingerprint of a signature database directory: names, sizes and modification times of
 * its database files. Changes whenever a database file is added, removed or rewritten; null while
 * the signature updater is changing the directory.
 */
export async function databaseFingerprint(dir: string): Promise<string | null> {
  const entries = await readdir(dir);
  if (entries.includes(UPDATING_MARKER)) {
    const st = await stat(join(dir, UPDATING_MARKER)).catch(() => null);
    if (st && Date.now() - st.mtimeMs < UPDATING_STALE_MS) return null;
  }
  const names = entries.filter((n) => DB_EXT.test(n)).sort();
  const h = createHash('sha256');
  for (const name of names) {
    const st = await stat(join(dir, name));
    h.update(`${name}\0${st.size}\0${st.mtimeMs}\n`);
  }
  return h.digest('hex').slice(0, 16);
}
