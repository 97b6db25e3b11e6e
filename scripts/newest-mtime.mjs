// The newest modification time (ms) of the files under a directory: is a build older than its sources?
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

export function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}
