import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Config } from './schema.js';

/** Keys whose values name files avgate writes (they change all the time) or directories. */
const WRITTEN = new Set(['access-log', 'password-file', 'tokens-file']);
/** Files read at start above this size are compared by size and modification time only. */
const HASH_LIMIT = 4 * 1024 * 1024;

/**
 * What a generation of front ends was built from: the reloadable sections and the files they
 * name (certificates, keys, CA files, notice templates, engine plugins), by content. A SIGHUP
 * whose inputs are the same as the running generation's (logrotate's nightly one) rebuilds
 * nothing, so no connection is ended for it; a renewed certificate under the same path is a
 * change.
 */
export function reloadInputs(config: Readonly<Config>, sections: readonly string[]): string {
  const picked: Record<string, unknown> = {};
  const files: Record<string, string> = {};
  const visit = (v: unknown, key: string): void => {
    if (typeof v === 'string') {
      if (!WRITTEN.has(key) && !key.endsWith('-dir') && v.length > 0 && v.length < 4096) {
        const f = fileFingerprint(v);
        if (f !== null) files[v] = f;
      }
    } else if (Array.isArray(v)) {
      for (const x of v) visit(x, key);
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) visit(x, k);
    }
  };
  for (const s of sections) {
    const value = (config as Record<string, unknown>)[s];
    picked[s] = value;
    visit(value, s);
  }
  return JSON.stringify({ config: picked, files });
}

/** A regular file's content hash (size and mtime past HASH_LIMIT); null when `path` is none. */
function fileFingerprint(path: string): string | null {
  try {
    const full = resolve(path);
    const st = statSync(full);
    if (!st.isFile()) return null;
    if (st.size > HASH_LIMIT) return `${st.size}:${st.mtimeMs}`;
    return createHash('sha256').update(readFileSync(full)).digest('hex');
  } catch {
    return null;
  }
}
