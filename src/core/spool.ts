import { randomBytes } from 'node:crypto';
import { closeSync, createReadStream, openSync, writev, writevSync } from 'node:fs';
import { mkdir, open, readdir, rm, unlink, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { ContentHasher } from './content-hash.js';
import { messageOf } from './errors.js';
import type { Logger } from './logging.js';

/**
 * Holds an object being received: in memory up to `memoryLimit`, then in a temp file (mode 0600)
 * in `dir`. Hashes what it is given on the way (the content hash of content-hash.ts, for the verdict cache; optional), and can be read
 * back as often as needed once ended. dispose() removes the file; call it in every path.
 */
export class Spool {
  private memory: Buffer[] = [];
  private file: { handle: FileHandle; path: string } | null = null;
  /** A copy of an in-memory object written for an engine that reads files (see fileForScan). */
  private scanCopy: string | null = null;
  /** The scan copy while it is written as the object arrives (see startScanCopy). */
  private eager: EagerCopy | null = null;
  private hash: ContentHasher | null;
  private digest: string | null = null;
  private ended = false;
  /** With a slab pool: the slabs holding `memory`, and how much of the last one is used. */
  private readonly pool: SlabPool | null;
  private slabs: Buffer[] = [];
  private slabUsed = 0;
  size = 0;

  constructor(
    private readonly dir: string,
    private readonly memoryLimit: number,
    options: { hash: boolean; slabs?: SlabPool } = { hash: true },
  ) {
    this.hash = options.hash ? new ContentHasher() : null;
    this.pool = options.slabs ?? null;
  }

  get onDisk(): boolean {
    return this.file !== null;
  }

  /** Bytes held in memory (all of them while the spool has not gone to disk). */
  get memoryChunks(): readonly Buffer[] {
    return this.memory;
  }

  /**
   * Copies a received piece into pooled slabs: the socket's read buffers die young (cheap for the
   * garbage collector) and the slabs are reused from object to object, instead of every read buffer
   * of a large body living until the verdict and needing a full collection to be freed.
   */
  private copyIn(chunk: Buffer, copied: Buffer[] | null): void {
    const pool = this.pool as SlabPool;
    let off = 0;
    while (off < chunk.length) {
      let slab = this.slabs.at(-1);
      if (!slab || this.slabUsed === slab.length) {
        slab = pool.take();
        this.slabs.push(slab);
        this.slabUsed = 0;
      }
      const n = Math.min(chunk.length - off, slab.length - this.slabUsed);
      chunk.copy(slab, this.slabUsed, off, off + n);
      copied?.push(slab.subarray(this.slabUsed, this.slabUsed + n));
      const last = this.memory.at(-1);
      // Extend the previous view when it ends where this copy starts (same slab): fewer pieces.
      if (last && last.buffer === slab.buffer && last.byteOffset + last.length === slab.byteOffset + this.slabUsed) {
        this.memory[this.memory.length - 1] = slab.subarray(last.byteOffset - slab.byteOffset, this.slabUsed + n);
      } else {
        this.memory.push(slab.subarray(this.slabUsed, this.slabUsed + n));
      }
      this.slabUsed += n;
      off += n;
    }
  }

  /** The hash is not wanted after all (the scanner hashes a streamed object itself). */
  stopHashing(): void {
    this.hash?.release();
    this.hash = null;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.ended) throw new Error('spool already ended');
    this.hash?.update(chunk);
    this.size += chunk.length;
    if (!this.file && this.size <= this.memoryLimit) {
      const copied = this.eager && this.pool ? [] : null; // without a pool the piece itself is kept
      if (this.pool) this.copyIn(chunk, copied);
      else this.memory.push(chunk);
      if (this.eager) this.eager.add(copied ?? [chunk]);
      return;
    }
    if (!this.file) {
      await this.dropScanCopy(); // the spool's own file will do
      await ensureDir(this.dir);
      const path = join(this.dir, uniqueName('spool'));
      const handle = await withDir(this.dir, () => open(path, 'wx+', 0o600));
      this.file = { handle, path };
      const held = this.memory;
      this.memory = [];
      for (const b of held) await writeAll(handle, b);
      this.slabs = []; // not recycled: a caller may still hold views of them
    }
    await writeAll(this.file.handle, chunk);
  }

  /** Several pieces in order: once on disk, one writev for all of them instead of a write each. */
  async writeMany(chunks: readonly Buffer[]): Promise<void> {
    let i = 0;
    while (i < chunks.length && !this.file) await this.write(chunks[i++] as Buffer);
    if (i === chunks.length) return;
    if (this.ended) throw new Error('spool already ended');
    let rest = chunks.slice(i);
    for (const c of rest) {
      this.hash?.update(c);
      this.size += c.length;
    }
    const handle = (this.file as unknown as { handle: FileHandle }).handle;
    while (rest.length > 0) {
      const { bytesWritten } = await handle.writev(rest);
      rest = dropBytes(rest, bytesWritten);
    }
  }

  /**
   * Bytes [start, end) of what has been written so far, also while writing goes on (for sending a
   * body on while it is still arriving).
   */
  async readRange(start: number, end: number): Promise<Buffer> {
    const length = Math.max(0, Math.min(end, this.size) - start);
    if (length === 0) return Buffer.alloc(0);
    if (this.file) {
      const out = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await this.file.handle.read(out, got, length - got, start + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return out.subarray(0, got);
    }
    const parts: Buffer[] = [];
    let pos = 0;
    for (const b of this.memory) {
      const from = Math.max(start, pos);
      const to = Math.min(start + length, pos + b.length);
      if (from < to) parts.push(b.subarray(from - pos, to - pos));
      pos += b.length;
      if (pos >= start + length) break;
    }
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
  }

  async end(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.digest = this.hash?.digest() ?? null;
    this.hash = null;
    // The file stays open for readRange() until dispose().
  }

  /** The content hash (content-hash.ts) of everything written; available after end(). */
  get contentHash(): string | null {
    return this.digest;
  }

  filePath(): string | null {
    return this.file?.path ?? null;
  }

  /**
   * Starts the scan copy (fileForScan) now, while the object is still arriving: what is held so
   * far at once, later pieces as they come (see EagerCopy: a received piece is written at once,
   * a larger batch in the thread pool). The copy is then complete with the last byte instead of
   * being written after it — less latency for
   * an object that will be scanned from a file; wasted work when the verdict cache answers, so the
   * caller starts it only when that is unlikely. No-op once on disk, ended or already started.
   * `hashLater`: the same bet on the hash — once the copy is started the spool stops hashing, and
   * the scanner hashes while the engine works (ScanRequest.hashWhileScanning; contentHash stays null).
   */
  async startScanCopy(opts: { hashLater?: boolean } = {}): Promise<void> {
    if (this.file || this.scanCopy || this.ended) return;
    await ensureDir(this.dir);
    const path = join(this.dir, uniqueName('scan'));
    const fd = await withDir(this.dir, () => openSync(path, 'wx', 0o600));
    this.scanCopy = path;
    this.eager = new EagerCopy(fd);
    this.eager.add(this.memory.slice());
    if (opts.hashLater) this.stopHashing();
  }

  get copyingForScan(): boolean {
    return this.eager !== null;
  }

  /** Stops and removes a scan copy that is being written (the spool went to disk, or disposal). */
  private async dropScanCopy(): Promise<void> {
    const e = this.eager;
    if (!e) return;
    this.eager = null;
    await e.close().catch(() => undefined);
    const copy = this.scanCopy;
    this.scanCopy = null;
    if (copy) await unlink(copy).catch(() => undefined);
  }

  /**
   * A path holding the whole object (after end()): the spool's own file, or the bytes held in
   * memory written once to a file next to it (removed by dispose()), for engines that read files
   * themselves instead of taking a stream.
   */
  async fileForScan(): Promise<string> {
    if (!this.ended) throw new Error('spool not ended');
    if (this.file) return this.file.path;
    if (this.eager) {
      const e = this.eager;
      this.eager = null;
      try {
        await e.close(); // waits for the last writes
      } catch (err) {
        // A partial copy is no copy: removed, and the caller streams instead (a later call rewrites it).
        const partial = this.scanCopy;
        this.scanCopy = null;
        if (partial) await unlink(partial).catch(() => undefined);
        throw err;
      }
      return this.scanCopy as string;
    }
    if (this.scanCopy) return this.scanCopy;
    await ensureDir(this.dir);
    const path = join(this.dir, uniqueName('scan'));
    this.scanCopy = path;
    if (this.size <= SYNC_COPY_LIMIT) {
      // A small copy lands in the page cache in microseconds: cheaper in the calling thread than
      // four round trips through the thread pool.
      const fd = await withDir(this.dir, () => openSync(path, 'wx', 0o600));
      try {
        let chunks = this.memory;
        while (chunks.length > 0) chunks = dropBytes(chunks, writevSync(fd, chunks));
      } finally {
        closeSync(fd);
      }
      return path;
    }
    const handle = await withDir(this.dir, () => open(path, 'wx', 0o600));
    try {
      let chunks = this.memory;
      while (chunks.length > 0) {
        const { bytesWritten } = await handle.writev(chunks);
        chunks = dropBytes(chunks, bytesWritten);
      }
    } finally {
      await handle.close();
    }
    return path;
  }

  /** Reads the object back (after end()). */
  createReadStream(): Readable {
    if (!this.ended) throw new Error('spool not ended');
    if (this.file) return createReadStream(this.file.path, { highWaterMark: 256 * 1024 });
    return Readable.from(this.memory);
  }

  /**
   * Releases everything. `recycle`: the caller guarantees that no view of the memory chunks is still
   * in use (e.g. queued in a socket's write buffer), so pooled slabs may be handed out again.
   */
  async dispose(recycle = false): Promise<void> {
    this.stopHashing(); // a spool dropped before end(): its hasher's buffer goes back to the pool
    await this.dropScanCopy(); // before the slabs go back: its writes read from them
    this.memory = [];
    if (recycle && this.pool) for (const slab of this.slabs) this.pool.give(slab);
    this.slabs = [];
    const f = this.file;
    this.file = null;
    const copy = this.scanCopy;
    this.scanCopy = null;
    if (copy) await unlink(copy).catch(() => undefined);
    if (f) {
      await f.handle.close().catch(() => undefined);
      await rm(f.path, { force: true });
    }
  }

  /**
   * dispose() without waiting for it: a keep-alive connection's next request need not wait for the
   * unlink of this one's files (a thread-pool round trip; ~0.1-0.3 ms for a scan copy of a few
   * hundred KB on ext4). settleSpools() waits for every disposal started this way (at shutdown).
   */
  disposeSoon(recycle = false): void {
    const p: Promise<void> = this.dispose(recycle)
      .catch(() => undefined)
      .finally(() => pendingDisposals.delete(p));
    pendingDisposals.add(p);
  }
}

/** Disposals started by disposeSoon() and not finished yet. */
const pendingDisposals = new Set<Promise<void>>();

/** Resolves once every disposal started by disposeSoon() (also those started meanwhile) has ended. */
export async function settleSpools(): Promise<void> {
  while (pendingDisposals.size > 0) await Promise.all([...pendingDisposals]);
}

/**
 * Fixed-size buffers reused by spools (see Spool.copyIn). Bounded: slabs beyond `maxIdle` are left
 * to the garbage collector.
 */
export class SlabPool {
  private idle: Buffer[] = [];

  constructor(
    readonly slabSize = 256 * 1024,
    private readonly maxIdle = 64,
  ) {}

  take(): Buffer {
    return this.idle.pop() ?? Buffer.allocUnsafeSlow(this.slabSize);
  }

  give(slab: Buffer): void {
    if (slab.length === this.slabSize && this.idle.length < this.maxIdle) this.idle.push(slab);
  }

  get idleCount(): number {
    return this.idle.length;
  }
}

/**
 * A file written behind the data as it arrives. A piece that arrives while nothing is being
 * written goes straight to the page cache with a synchronous writev (what arrives from a socket is
 * one read, at most READ_PIECE bytes: microseconds), so the copy is complete with the last byte;
 * a larger batch, or pieces arriving while one is written, go in the thread pool, gathered into one
 * writev. The pieces must stay unchanged until close() has resolved (the spool's slabs do: they
 * are recycled only after dispose()).
 */
class EagerCopy {
  private queued: Buffer[] = [];
  private writing: Promise<void> | null = null;
  private failed: unknown = null;

  constructor(private readonly fd: number) {}

  add(pieces: readonly Buffer[]): void {
    if (this.failed !== null || pieces.length === 0) return;
    if (this.writing === null && byteLength(pieces) <= SYNC_COPY_LIMIT) {
      try {
        let rest: readonly Buffer[] = pieces;
        while (rest.length > 0) rest = dropBytes(rest, writevSync(this.fd, rest));
      } catch (err) {
        this.failed = err;
      }
      return;
    }
    this.queued.push(...pieces);
    this.writing ??= this.pump();
  }

  private async pump(): Promise<void> {
    try {
      while (this.queued.length > 0 && this.failed === null) {
        let batch = this.queued;
        this.queued = [];
        while (batch.length > 0) batch = dropBytes(batch, await writevAsync(this.fd, batch));
      }
    } catch (err) {
      this.failed = err;
      this.queued = [];
    } finally {
      this.writing = null;
    }
  }

  /** Waits for the writes under way, closes the file; rejects if a write failed. */
  async close(): Promise<void> {
    while (this.writing) await this.writing;
    closeSync(this.fd);
    if (this.failed !== null) throw this.failed instanceof Error ? this.failed : new Error(String(this.failed));
  }
}

function writevAsync(fd: number, chunks: readonly Buffer[]): Promise<number> {
  return new Promise((resolve, reject) => writev(fd, chunks, (err, n) => (err ? reject(err) : resolve(n))));
}

function byteLength(chunks: readonly Buffer[]): number {
  let n = 0;
  for (const c of chunks) n += c.length;
  return n;
}

/** In-memory objects up to this size are copied to a file with synchronous calls. */
const SYNC_COPY_LIMIT = 1024 * 1024;

/** Directories known to exist (created once per process, not once per object). */
const knownDirs = new Set<string>();

async function ensureDir(dir: string): Promise<void> {
  if (knownDirs.has(dir)) return;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  knownDirs.add(dir);
}

/** Runs `create`; if the directory went away meanwhile (ENOENT), makes it again and retries once. */
async function withDir<T>(dir: string, create: () => T | Promise<T>): Promise<T> {
  try {
    return await create();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    knownDirs.delete(dir);
    await ensureDir(dir);
    return await create();
  }
}

/** Unpredictable per process, unique per file: a random prefix and a counter. */
const nameTag = randomBytes(6).toString('hex');
const namePrefix = `${process.pid}-${nameTag}`;
let nameCounter = 0;
function uniqueName(kind: string): string {
  return `${kind}-${namePrefix}-${(nameCounter++).toString(36)}`;
}

/** The names uniqueName() gives: kind, the pid of the process that made the file, its tag, the counter. */
const SPOOL_NAME = /^(?:spool|scan)-(\d{1,10})-([0-9a-f]{12})-[0-9a-z]+$/;

export interface SpoolSweep {
  dir: string;
  /** Files of processes that are gone, removed. */
  removed: number;
  /** Files of other processes that are running, left alone. */
  kept: number;
}

/** Directories swept by this process: each once, however many front ends (or reloads) use it. */
const sweeps = new Map<string, Promise<SpoolSweep>>();

/**
 * Removes the spool files that processes no longer running left in `dir`: a process that is
 * killed (kill -9, the OOM killer, a power loss) never disposes its spools, and they hold what it
 * was receiving (mail, uploads) in plaintext. A file is removed only when the pid in its name is
 * no process (ESRCH), or is this process's own pid with another tag (an earlier process that had
 * the same pid, as pid 1 in a container has). Files of a running pid are never touched: another
 * avgate sharing the directory keeps its own, and a dead process's pid taken by an unrelated one
 * keeps its files until that one ends. Pids are only meaningful on this host and in this pid
 * namespace: a spool directory is not to be shared across hosts or containers. Not recursive;
 * other names are not looked at. Once per directory per process (the first front end to start
 * with it sweeps it); a sweep that cannot read the directory logs a warning and removes nothing.
 */
export function sweepSpoolDir(dir: string, log: Logger): Promise<SpoolSweep> {
  const key = resolve(dir);
  let sweep = sweeps.get(key);
  if (!sweep) {
    sweep = sweepNow(key, log);
    sweeps.set(key, sweep);
  }
  return sweep;
}

async function sweepNow(dir: string, log: Logger): Promise<SpoolSweep> {
  const result: SpoolSweep = { dir, removed: 0, kept: 0 };
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ dir, err: messageOf(err) }, 'spool: cannot look for files left by processes that are gone');
    return result;
  }
  for (const e of entries) {
    const m = SPOOL_NAME.exec(e.name);
    if (!m || !e.isFile()) continue;
    const pid = Number(m[1]);
    const gone = pid === process.pid ? m[2] !== nameTag : !processExists(pid);
    if (!gone) {
      if (pid !== process.pid) result.kept++;
      continue;
    }
    try {
      await unlink(join(dir, e.name));
      result.removed++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ dir, file: e.name, err: messageOf(err) }, 'spool: cannot remove a file left by a process that is gone');
    }
  }
  if (result.removed > 0) log.info({ dir, removed: result.removed, kept: result.kept }, 'spool: removed files left by processes that are gone');
  return result;
}

/** Whether a process with this pid exists (one of another user's too: EPERM). */
function processExists(pid: number): boolean {
  if (pid <= 0) return true; // 0 would ask about our own process group; never a spool's pid
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** What is left of `chunks` after the first `n` bytes. */
function dropBytes(chunks: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) {
    if (n >= c.length) {
      n -= c.length;
      continue;
    }
    out.push(n > 0 ? c.subarray(n) : c);
    n = 0;
  }
  return out;
}

async function writeAll(handle: FileHandle, chunk: Buffer): Promise<void> {
  let off = 0;
  while (off < chunk.length) {
    const { bytesWritten } = await handle.write(chunk, off, chunk.length - off);
    off += bytesWritten;
  }
}

/** Body buffers shared by every front end of the process (ICAP bodies, API uploads). */
export const SHARED_SLABS = new SlabPool();
