import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { link, lstat, open, unlink, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';

/**
 * What `avgate scan` does to an object found infected: move it to a quarantine directory, remove
 * it, run a command, write a report line. These run as whatever user runs the scan (often root)
 * on files in trees other users can write, so every step refuses to follow a symbolic link and
 * never lets a file name reach the shell as command text (--exec refers to variables holding it).
 */

export interface FoundMacros {
  fullPath: string;
  fileName: string;
  virusNames: readonly string[];
}

/** The --exec command may run this long before it is killed; a hung hook must not hang the scan. */
export const EXEC_TIMEOUT_MS = 60_000;
/** `name`, `name.1` ... `name.N`: beyond this the quarantine directory is more likely an attack than a coincidence. */
const MAX_NAME_COLLISIONS = 10_000;

export class ActionError extends Error {}

/** A path for node:fs: text, or the exact bytes when the name is not valid UTF-8 (see walk.ts). */
export type FsPath = string | Buffer;

/** Which file was scanned: device and inode, taken with lstat() before the scan. */
export interface FileIdentity {
  dev: bigint;
  ino: bigint;
}

export async function identityOf(path: FsPath): Promise<FileIdentity> {
  const st = await lstat(path, { bigint: true });
  return { dev: st.dev, ino: st.ino };
}

/**
 * The path must still be the regular file that was scanned. Between the scan and the action a
 * hostile user can swap it for a symbolic link to /etc/shadow; link() and unlink() act on the
 * link itself, and the copy below opens with O_NOFOLLOW, but refusing early gives a clear message.
 * A link in a directory above it is not caught that way: with `dir` renamed away and replaced by a
 * link to /etc, `dir/passwd` is a regular file again, but another one. Hence `expected`: the device
 * and inode the path had when it was scanned; a path that now leads to another file is left alone.
 */
async function assertRegularFile(path: FsPath, expected?: FileIdentity): Promise<void> {
  const st = await lstat(path, { bigint: true });
  if (st.isSymbolicLink()) throw new ActionError('is a symbolic link; left in place');
  if (!st.isFile()) throw new ActionError('is no longer a regular file; left in place');
  assertSame(st, expected);
}

function assertSame(st: { dev: bigint; ino: bigint }, expected?: FileIdentity): void {
  if (expected && (st.dev !== expected.dev || st.ino !== expected.ino)) {
    throw new ActionError('is no longer the file that was scanned (replaced, or a directory on its path was); left in place');
  }
}

function baseOf(path: FsPath): FsPath {
  return typeof path === 'string' ? basename(path) : path.subarray(path.lastIndexOf(0x2f) + 1);
}

function destFor(dir: string, base: FsPath, i: number): FsPath {
  if (typeof base === 'string') return join(dir, i === 0 ? base : `${base}.${i}`);
  return Buffer.concat([Buffer.from(dir.endsWith('/') ? dir : `${dir}/`), base, Buffer.from(i === 0 ? '' : `.${i}`)]);
}

/**
 * Moves the file into dir under its base name (`name.1`, `name.2` ... on a collision) and returns
 * the new path. link()+unlink() instead of rename(): rename silently replaces an existing file,
 * link fails with EEXIST, so two scans quarantining `invoice.pdf` at once never overwrite each
 * other. Where a hard link is impossible (another file system, EXDEV, or a file system without
 * links) the content is copied to a file created with O_EXCL, then the original is unlinked.
 */
export async function moveInto(path: FsPath, dir: string, expected?: FileIdentity): Promise<FsPath> {
  await assertRegularFile(path, expected);
  const base = baseOf(path);
  for (let i = 0; i <= MAX_NAME_COLLISIONS; i++) {
    const dest = destFor(dir, base, i);
    try {
      await link(path, dest);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') continue;
      if (code === 'ENOENT') throw err;
      if (!(await copyExclusive(path, dest, expected))) continue;
    }
    try {
      await unlink(path);
    } catch (err) {
      // Keep exactly one copy: a quarantined duplicate next to a live original misleads the admin.
      await unlink(dest).catch(() => undefined);
      throw err;
    }
    return dest;
  }
  throw new ActionError(`${MAX_NAME_COLLISIONS} files named ${base.toString()}* already in ${dir}`);
}

/** Copies src to dest; false when dest exists already. */
async function copyExclusive(src: FsPath, dest: FsPath, expected?: FileIdentity): Promise<boolean> {
  let input: FileHandle | null = null;
  let output: FileHandle | null = null;
  try {
    input = await open(src, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    const st = await input.stat({ bigint: true });
    if (!st.isFile()) throw new ActionError('is no longer a regular file; left in place');
    assertSame(st, expected);
    const mode = Number(st.mode & 0o777n);
    try {
      output = await open(dest, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    }
    try {
      // A plain read/write loop: streams made from the handles with autoClose false would keep
      // FileHandle.close() below waiting for ever (the move across file systems hung, or the
      // process ran out of work and exited 0 mid-scan).
      await copyHandle(input, output);
    } catch (err) {
      await output.close();
      output = null;
      await unlink(dest).catch(() => undefined);
      throw err;
    }
    return true;
  } finally {
    await output?.close();
    await input?.close();
  }
}

/** Copies what is left to read of `input` to `output`, a MiB at a time. */
async function copyHandle(input: FileHandle, output: FileHandle): Promise<void> {
  const buf = Buffer.allocUnsafe(1 << 20);
  for (;;) {
    const { bytesRead } = await input.read(buf, 0, buf.length, null);
    if (bytesRead === 0) return;
    let done = 0;
    while (done < bytesRead) done += (await output.write(buf, done, bytesRead - done)).bytesWritten;
  }
}

export async function removeFile(path: FsPath, expected?: FileIdentity): Promise<void> {
  await assertRegularFile(path, expected);
  await unlink(path);
}

/**
 * Replaces %FULLPATH%, %FILENAME% and %VIRUSNAMES% by references to the environment variables
 * that hold them, never by the values: the shell expands a variable once and does not parse its
 * value again, so no file name runs as code. The reference is written for where the macro stands,
 * so that the value is one word, never split or globbed: bare → `"$AVGATE_FULLPATH"`, inside
 * double quotes (`logger "found %VIRUSNAMES% in %FULLPATH%"`) → `$AVGATE_FULLPATH`, inside single
 * quotes → `'"$AVGATE_FULLPATH"'` (the quotes closed around it).
 */
export function expandExecMacros(template: string): string {
  let out = '';
  let state: 'bare' | 'single' | 'double' = 'bare';
  for (let i = 0; i < template.length; i++) {
    const macro = /^%(FULLPATH|FILENAME|VIRUSNAMES)%/.exec(template.slice(i, i + 13));
    if (macro) {
      const ref = `$AVGATE_${macro[1] as string}`;
      out += state === 'double' ? ref : state === 'single' ? `'"${ref}"'` : `"${ref}"`;
      i += macro[0].length - 1;
      continue;
    }
    const c = template[i] as string;
    out += c;
    if (c === '\\' && state !== 'single' && i + 1 < template.length) {
      out += template[++i] as string; // an escaped character changes no state
    } else if (c === "'" && state !== 'double') state = state === 'single' ? 'bare' : 'single';
    else if (c === '"' && state !== 'single') state = state === 'double' ? 'bare' : 'double';
  }
  return out;
}

export interface ExecResult {
  ok: boolean;
  /** `exit code 0`, `killed after 60000 ms` ... */
  detail: string;
}

/**
 * Runs the --exec command with /bin/sh -c. The values are also passed in the environment
 * (AVGATE_FULLPATH, AVGATE_FILENAME, AVGATE_VIRUSNAMES), which is the injection-proof way for
 * scripts that prefer "$AVGATE_FULLPATH". The command's output goes to `output` (the CLI's
 * standard error) so that standard output stays the scan result.
 */
export function runExec(
  template: string,
  macros: FoundMacros,
  output: NodeJS.WritableStream,
  timeoutMs = EXEC_TIMEOUT_MS,
): Promise<ExecResult> {
  const command = expandExecMacros(template);
  return new Promise((resolve) => {
    const child = spawn('/bin/sh', ['-c', command], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        AVGATE_FULLPATH: macros.fullPath,
        AVGATE_FILENAME: macros.fileName,
        AVGATE_VIRUSNAMES: macros.virusNames.join(', '),
      },
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    timer.unref();
    child.stdout?.on('data', (d: Buffer) => output.write(d));
    child.stderr?.on('data', (d: Buffer) => output.write(d));
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ ok: false, detail: err.message });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) resolve({ ok: false, detail: `killed after ${timeoutMs} ms` });
      else if (signal) resolve({ ok: false, detail: `killed by ${signal}` });
      else resolve({ ok: code === 0, detail: `exit code ${code ?? '-'}` });
    });
  });
}

/**
 * Appends one line per object to the --report file. Writes are chained so lines from parallel
 * scans never interleave; the file is opened in append mode so several runs share one report.
 */
export class ReportFile {
  private chain: Promise<void> = Promise.resolve();
  private failure: unknown = null;

  private constructor(private readonly handle: FileHandle) {}

  static async open(path: string): Promise<ReportFile> {
    return new ReportFile(await open(path, 'a', 0o640));
  }

  append(line: string): Promise<void> {
    const text = `${line.replace(/\n/g, ' ')}\n`;
    this.chain = this.chain.then(async () => {
      if (this.failure) return;
      try {
        await this.handle.write(text);
      } catch (err) {
        this.failure = err;
      }
    });
    return this.chain;
  }

  /** The first write error, if any: reported once at the end instead of once per object. */
  get error(): unknown {
    return this.failure;
  }

  async close(): Promise<void> {
    await this.chain;
    await this.handle.close();
  }
}
