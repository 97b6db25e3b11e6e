import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** File endings clamd loads as signature databases. */
const DB_EXT = /\.(c[vl]d|cud|hd[bu]|hsb|hsu|md[bu]|ms[bu]|ndb|ndu|ldb|ldu|idb|cdb|cfg|fp|sfp|ftm|ign2?|crb|pdb|wdb|gdb|yara?|cbc|imp|pwdb|info|db)$/i;

/**
 * A short fingerprint of a signature database directory: names, sizes and modification times of
 * its database files. Changes whenever a database file is added, removed or rewritten.
 */
export async function databaseFingerprint(dir: string): Promise<string> {
  const names = (await readdir(dir)).filter((n) => DB_EXT.test(n)).sort();
  const h = createHash('sha256');
  for (const name of names) {
    const st = await stat(join(dir, name));
    h.update(`${name}\0${st.size}\0${st.mtimeMs}\n`);
  }
  return h.digest('hex').slice(0, 16);
}
