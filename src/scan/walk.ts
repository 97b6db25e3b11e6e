import type { Dir, Dirent, Stats } from 'node:fs';
import { lstat, opendir, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import picomatch from 'picomatch';

/**
 * The file-tree walker behind `avgate scan`. It is an async generator so the caller pulls one
 * entry at a time: a tree of millions of files is never turned into a list in memory. Only the
 * directories still to be entered are held (and at most one directory handle is open at a time,
 * so a deep tree cannot run the process out of file descriptors).
 *
 * Rules, chosen to be predictable and safe when run as root over trees other users can write:
 * - A path named by the caller (a root) is resolved even if it is a symbolic link: the user asked
 *   for it by name (clamscan's default, --follow-*-symlinks=1).
 * - Inside a tree, symbolic links are not followed by default and are reported as skipped: a link
 *   to /etc or /proc planted in a scanned home directory must not drag the scan out of the tree.
 *   With `followSymlinks` every link is followed, wherever it points; loops and directories
 *   reached twice are detected by (device, inode) and reported as skipped.
 * - Depth: the entries of a named directory are depth 1, their entries depth 2 and so on;
 *   `maxDepth` is the deepest level reported. 0 means a named directory yields nothing (only
 *   named files are scanned). Entries below the bound are left out silently, like `find -maxdepth`.
 * - Excludes (picomatch globs) are matched against the path relative to the named directory and
 *   against the base name, and one starting with `/` against the absolute path; a matching
 *   directory is not entered. Paths named by the caller are
 *   never excluded. Excluded entries are left out silently.
 * - FIFOs, sockets and devices are skipped: reading a FIFO would block the scan for ever.
 * - Names are read as bytes. A name that is not valid UTF-8 cannot be spelled as a JS string (the
 *   decoder puts U+FFFD in place of the bad bytes, and that string names no file), so such an entry
 *   also carries `raw`, the exact bytes of its path, for every file system call made on it.
 */
export interface WalkOptions {
  maxDepth?: number;
  exclude?: readonly string[];
  followSymlinks?: boolean;
  /** Directories (by `dirId`) never entered: the --move target, so moved files are not found again. */
  skipDirectories?: ReadonlySet<string>;
}

/**
 * `path` is the path as text. `raw` is present only when the path is not valid UTF-8: then `path`
 * holds U+FFFD where the bad bytes are and `raw` is the path to open, stat, move or remove.
 */
export type WalkEntry =
  | { kind: 'file'; path: string; raw?: Buffer }
  | { kind: 'skipped'; path: string; reason: string; raw?: Buffer }
  | { kind: 'error'; path: string; cause: string; raw?: Buffer };

/** What to hand node:fs for an entry: its exact bytes when the text form would name another file. */
export function fsPathOf(entry: { path: string; raw?: Buffer }): string | Buffer {
  return entry.raw ?? entry.path;
}

export const SKIP_REASONS = {
  symlink: 'symbolic link not followed',
  brokenSymlink: 'broken symbolic link',
  special: 'not a regular file',
  loop: 'directory loop',
  seen: 'directory already scanned through another path',
} as const;

export function dirId(st: Stats): string {
  return `${st.dev}:${st.ino}`;
}

/** `ENOENT: no such file or directory` without the syscall and path node appends. */
export function fsErrorText(err: unknown): string {
  if (err instanceof Error) {
    const m = /^([A-Z0-9_]+: [^,]+)/.exec(err.message);
    return m?.[1] ?? err.message;
  }
  return String(err);
}

export function compileExclude(globs: readonly string[]): (rel: string, base: string, path?: string) => boolean {
  if (globs.length === 0) return () => false;
  // dot: a hidden file is still a file the administrator means when writing `*.tmp`.
  const isMatch = picomatch([...globs], { dot: true });
  // An absolute pattern (`/srv/upload/tmp`, `/home/*/.cache`) is matched against the absolute path.
  const absolute = globs.filter((g) => g.startsWith('/'));
  const isAbsMatch = absolute.length > 0 ? picomatch(absolute, { dot: true }) : null;
  return (rel, base, path) => isMatch(rel) || isMatch(base) || (isAbsMatch !== null && path !== undefined && isAbsMatch(resolve(path)));
}

/** Ancestors of a directory, shared between siblings: loop checks cost O(depth), not a copy per directory. */
interface Chain {
  id: string;
  up: Chain | null;
}

interface Pending {
  path: string;
  /** The path's bytes; differs from `path` only when a name on the way is not valid UTF-8. */
  raw: Buffer;
  rel: string;
  depth: number;
  chain: Chain;
}

function onChain(chain: Chain | null, id: string): boolean {
  for (let c = chain; c; c = c.up) if (c.id === id) return true;
  return false;
}

function joinPath(dir: string, name: string): string {
  return dir.endsWith('/') ? dir + name : `${dir}/${name}`;
}

const SLASH = Buffer.from('/');

function joinRaw(dir: Buffer, name: Buffer): Buffer {
  return dir.length > 0 && dir[dir.length - 1] === 0x2f ? Buffer.concat([dir, name]) : Buffer.concat([dir, SLASH, name]);
}

/** `raw` when its text form would not name the same file, else nothing. */
function rawIfNeeded(path: string, raw: Buffer): { raw?: Buffer } {
  // The decoder puts U+FFFD for every invalid byte: a path without it is spelled exactly.
  return !path.includes('\uFFFD') || Buffer.from(path).equals(raw) ? {} : { raw };
}

type Kind = 'file' | 'dir' | 'link' | 'other';

function kindOf(d: Dirent | Stats): Kind | null {
  if (d.isFile()) return 'file';
  if (d.isDirectory()) return 'dir';
  if (d.isSymbolicLink()) return 'link';
  if (d.isFIFO() || d.isSocket() || d.isBlockDevice() || d.isCharacterDevice()) return 'other';
  return null;
}

export async function* walk(root: string, options: WalkOptions = {}): AsyncGenerator<WalkEntry, void, undefined> {
  const maxDepth = options.maxDepth ?? Number.POSITIVE_INFINITY;
  const follow = options.followSymlinks ?? false;
  const skipDirs = options.skipDirectories ?? new Set<string>();
  const excluded = compileExclude(options.exclude ?? []);

  let rootStat: Stats;
  try {
    rootStat = await stat(root);
  } catch (err) {
    yield { kind: 'error', path: root, cause: fsErrorText(err) };
    return;
  }
  const rootKind = kindOf(rootStat);
  if (rootKind === 'file') {
    yield { kind: 'file', path: root };
    return;
  }
  if (rootKind !== 'dir') {
    yield { kind: 'skipped', path: root, reason: SKIP_REASONS.special };
    return;
  }
  const rootId = dirId(rootStat);
  if (skipDirs.has(rootId) || maxDepth < 1) return;

  // Without symlinks a tree is a tree (bind mounts aside, which the ancestor chain catches);
  // with them the same directory can be reached many times, so remember every one entered.
  const visited = follow ? new Set<string>([rootId]) : null;
  const stack: Pending[] = [{ path: root, raw: Buffer.from(root), rel: '', depth: 0, chain: { id: rootId, up: null } }];

  while (stack.length > 0) {
    const dir = stack.pop() as Pending;
    const dirRaw = rawIfNeeded(dir.path, dir.raw);
    let handle: Dir;
    try {
      // 'buffer': the names as bytes (node supports it; @types/node only lists text encodings).
      handle = await opendir(dir.raw, { bufferSize: 64, encoding: 'buffer' as BufferEncoding });
    } catch (err) {
      yield { kind: 'error', path: dir.path, cause: fsErrorText(err), ...dirRaw };
      continue;
    }
    const subdirs: Pending[] = [];
    const depth = dir.depth + 1;
    try {
      // for-await closes the handle on completion, on error, and when the consumer stops early.
      for await (const d of handle) {
        const nameBytes = d.name as unknown as Buffer;
        const name = nameBytes.toString('utf8');
        const path = joinPath(dir.path, name);
        const rawPath = joinRaw(dir.raw, nameBytes);
        const extra = rawIfNeeded(path, rawPath);
        const rel = dir.rel ? `${dir.rel}/${name}` : name;
        if (excluded(rel, name, path)) continue;

        let kind = kindOf(d);
        let st: Stats | null = null;
        try {
          if (kind === null) {
            // Some file systems do not fill d_type; ask for it without following a link.
            st = await lstat(rawPath);
            kind = kindOf(st);
            if (kind === 'link') st = null;
          }
          if (kind === 'link') {
            if (!follow) {
              yield { kind: 'skipped', path, reason: SKIP_REASONS.symlink, ...extra };
              continue;
            }
            st = await stat(rawPath).catch(() => null);
            if (!st) {
              yield { kind: 'skipped', path, reason: SKIP_REASONS.brokenSymlink, ...extra };
              continue;
            }
            kind = kindOf(st);
          }
        } catch (err) {
          yield { kind: 'error', path, cause: fsErrorText(err), ...extra };
          continue;
        }

        if (kind === 'file') {
          yield { kind: 'file', path, ...extra };
        } else if (kind === 'dir') {
          if (depth >= maxDepth) continue;
          if (!st) {
            try {
              st = await stat(rawPath);
            } catch (err) {
              yield { kind: 'error', path, cause: fsErrorText(err), ...extra };
              continue;
            }
          }
          const id = dirId(st);
          if (skipDirs.has(id)) continue;
          if (onChain(dir.chain, id)) {
            yield { kind: 'skipped', path, reason: SKIP_REASONS.loop, ...extra };
            continue;
          }
          if (visited?.has(id)) {
            yield { kind: 'skipped', path, reason: SKIP_REASONS.seen, ...extra };
            continue;
          }
          visited?.add(id);
          subdirs.push({ path, raw: rawPath, rel, depth, chain: { id, up: dir.chain } });
        } else {
          yield { kind: 'skipped', path, reason: SKIP_REASONS.special, ...extra };
        }
      }
    } catch (err) {
      yield { kind: 'error', path: dir.path, cause: fsErrorText(err), ...dirRaw };
    }
    // Reversed so the first subdirectory read is the first entered (depth-first, readdir order).
    for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i] as Pending);
  }
}
