import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
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
 * A short fingerprint of a signature database directory: names and contents of its database
 * files. Changes whenever a database file is added, removed or rewritten with other content; null
 * while the signature updater is changing the directory.
 *
 * Contents, not modification times: the fingerprint is part of the verdict cache key, and nodes
 * that share verdicts (cache.redis, docs/scale-out.md) each download the same database at their
 * own time. A file's digest is kept while its size, mtime, ctime and inode stay the same, so the
 * files are read only when they change (ClamAV's ~300 MB take about a second to read and hash).
 */
export async function databaseFingerprint(dir: string, opts: { ignoreMarker?: boolean } = {}): Promise<string | null> {
  const entries = await readdir(dir);
  if (!opts.ignoreMarker && entries.includes(UPDATING_MARKER)) {
    const st = await stat(join(dir, UPDATING_MARKER)).catch(() => null);
    if (st && Date.now() - st.mtimeMs < UPDATING_STALE_MS) return null;
  }
  const names = entries.filter((n) => DB_EXT.test(n)).sort();
  const h = createHash('sha256');
  const seen = new Map<string, FileDigest>();
  const known = digests.get(dir);
  for (const name of names) {
    const st = await stat(join(dir, name));
    const stamp = `${st.size}:${st.mtimeMs}:${st.ctimeMs}:${st.ino}`;
    if (!st.isFile()) {
      // A FIFO or device under a database name: reading it could wait for ever. Its identity counts.
      h.update(`${name}\0special ${stamp}\n`);
      continue;
    }
    const held = known?.get(name);
    const digest = held && held.stamp === stamp ? held.digest : await fileDigest(join(dir, name));
    seen.set(name, { stamp, digest });
    h.update(`${name}\0${digest}\n`);
  }
  // Only the files there now: a directory's memo never outgrows its database files.
  digests.set(dir, seen);
  return h.digest('hex').slice(0, 16);
}

interface FileDigest {
  stamp: string;
  digest: string;
}

/** Directory → database file name → its digest and the stat it was taken at. */
const digests = new Map<string, Map<string, FileDigest>>();

/** SHA-256 of a file's content, hex. */
export async function fileDigest(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) h.update(chunk as Buffer);
  return h.digest('hex');
}
