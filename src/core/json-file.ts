import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { AvgateError } from './errors.js';

/**
 * Small JSON state files of avgate's own (console users and tokens, the signature updater's
 * state): read with a default when missing, replaced atomically.
 */

/** Reads a JSON file of ours; a missing file is the empty value. */
export async function readJson<T>(path: string, empty: T): Promise<T> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return empty;
    throw err;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new AvgateError('AVG_ERR_CONFIG', `${path}: not valid JSON`);
  }
}

/** Replaces the file atomically, mode 0600 in a 0700 directory (password hashes, tokens, mirror URLs). */
export async function writeJson(path: string, value: unknown): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
  await rename(tmp, path);
}
