import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';

/**
 * Holds an object being received: in memory up to `memoryLimit`, then in a temp file (mode 0600)
 * in `dir`. Hashes what it is given on the way (SHA-256, for the verdict cache; optional), and can be read
 * back as often as needed once ended. dispose() removes the file; call it in every path.
 */
export class Spool {
  private memory: Buffer[] = [];
  private file: { handle: FileHandle; path: string } | null = null;
  private hash: Hash | null;
  private digest: string | null = null;
  private ended = false;
  size = 0;

  constructor(
    private readonly dir: string,
    private readonly memoryLimit: number,
    options: { hash: boolean } = { hash: true },
  ) {
    this.hash = options.hash ? createHash('sha256') : null;
  }

  get onDisk(): boolean {
    return this.file !== null;
  }

  /** Bytes held in memory (all of them while the spool has not gone to disk). */
  get memoryChunks(): readonly Buffer[] {
    return this.memory;
  }

  /** The hash is not wanted after all (the scanner hashes a streamed object itself). */
  stopHashing(): void {
    this.hash = null;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.ended) throw new Error('spool already ended');
    this.hash?.update(chunk);
    this.size += chunk.length;
    if (!this.file && this.size <= this.memoryLimit) {
      this.memory.push(chunk);
      return;
    }
    if (!this.file) {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      const path = join(this.dir, `spool-${process.pid}-${randomBytes(9).toString('hex')}`);
      const handle = await open(path, 'wx+', 0o600);
      this.file = { handle, path };
      const held = this.memory;
      this.memory = [];
      for (const b of held) await writeAll(handle, b);
    }
    await writeAll(this.file.handle, chunk);
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
    this.digest = this.hash?.digest('hex') ?? null;
    this.hash = null;
    // The file stays open for readRange() until dispose().
  }

  /** SHA-256 (hex) of everything written; available after end(). */
  get sha256(): string | null {
    return this.digest;
  }

  filePath(): string | null {
    return this.file?.path ?? null;
  }

  /** Reads the object back (after end()). */
  createReadStream(): Readable {
    if (!this.ended) throw new Error('spool not ended');
    if (this.file) return createReadStream(this.file.path, { highWaterMark: 256 * 1024 });
    return Readable.from(this.memory);
  }

  async dispose(): Promise<void> {
    this.memory = [];
    const f = this.file;
    this.file = null;
    if (f) {
      await f.handle.close().catch(() => undefined);
      await rm(f.path, { force: true });
    }
  }
}

async function writeAll(handle: FileHandle, chunk: Buffer): Promise<void> {
  let off = 0;
  while (off < chunk.length) {
    const { bytesWritten } = await handle.write(chunk, off, chunk.length - off);
    off += bytesWritten;
  }
}
