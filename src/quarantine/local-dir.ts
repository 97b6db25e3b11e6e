import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, mkdir, open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Quarantine, QuarantineItem, QuarantineMeta, QuarantineRecord } from './types.js';

/** `20250701T120000Z-1a2b3c4d5e6f7a8b`: sorts by time, and nothing else passes as an id. */
const ID = /^\d{8}T\d{6}Z-[0-9a-f]{16}$/;

function newId(now: Date): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
  return `${stamp}-${randomBytes(8).toString('hex')}`;
}

/**
 * A quarantine in one local directory: `<id>.eml` (the original) and `<id>.json` (its record),
 * both 0600 in a directory kept at 0700 — originals hold other people's mail. The record is written
 * last, after the original is synced and renamed into place, so an item is listed only when whole;
 * a crash leaves at most a `.tmp` file.
 */
export class LocalDirQuarantine implements Quarantine {
  private constructor(readonly dir: string) {}

  /** Creates the directory (0700), or tightens an existing one to 0700. */
  static async open(dir: string): Promise<LocalDirQuarantine> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    return new LocalDirQuarantine(dir);
  }

  async put(original: Readable | string, meta: QuarantineMeta): Promise<{ id: string }> {
    const now = new Date();
    const id = newId(now);
    const emlTmp = join(this.dir, `${id}.eml.tmp`);
    const hash = createHash('sha256');
    let size = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        hash.update(chunk);
        size += chunk.length;
        done(null, chunk);
      },
    });
    // 'wx': never follow or reuse a file someone else put there; 0600 from the first byte. The file
    // exists before any byte is read, so a failed copy always finds it to remove.
    const fh = await open(emlTmp, 'wx', 0o600);
    try {
      const source = typeof original === 'string' ? createReadStream(original) : original;
      // flush: fsync before close — the original must be on disk before anyone answers 250.
      await pipeline(source, meter, createWriteStream('', { fd: fh, flush: true }));
    } catch (err) {
      await fh.close().catch(() => undefined);
      await unlink(emlTmp).catch(() => undefined);
      throw err;
    }
    const record: QuarantineRecord = {
      id,
      date: now.toISOString(),
      size,
      sha256: hash.digest('hex'),
      sender: meta.sender,
      recipients: [...meta.recipients],
      group: meta.group,
      statuses: [...meta.statuses],
      virusNames: [...meta.virusNames],
      messageId: meta.messageId ?? null,
      subject: meta.subject ?? null,
      queueId: meta.queueId ?? null,
      note: meta.note ?? null,
    };
    await rename(emlTmp, join(this.dir, `${id}.eml`));
    await this.writeFileAtomic(`${id}.json`, `${JSON.stringify(record, null, 2)}\n`);
    return { id };
  }

  async get(id: string): Promise<QuarantineItem | null> {
    if (!ID.test(id)) return null;
    const record = await this.readRecord(`${id}.json`);
    if (!record) return null;
    const path = join(this.dir, `${id}.eml`);
    return { record, open: () => createReadStream(path) };
  }

  async list(): Promise<QuarantineRecord[]> {
    const names = (await readdir(this.dir)).filter((n) => n.endsWith('.json') && ID.test(n.slice(0, -5))).sort();
    const out: QuarantineRecord[] = [];
    for (const n of names) {
      const r = await this.readRecord(n);
      if (r) out.push(r);
    }
    return out;
  }

  async remove(id: string): Promise<boolean> {
    if (!ID.test(id)) return false;
    // The record first: without it the item is no longer listed, whatever happens next.
    try {
      await unlink(join(this.dir, `${id}.json`));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    await unlink(join(this.dir, `${id}.eml`)).catch(() => undefined);
    return true;
  }

  private async readRecord(name: string): Promise<QuarantineRecord | null> {
    try {
      const r = JSON.parse(await readFile(join(this.dir, name), 'utf8')) as QuarantineRecord;
      return r && typeof r === 'object' && typeof r.id === 'string' && ID.test(r.id) ? r : null;
    } catch {
      return null;
    }
  }

  private async writeFileAtomic(name: string, text: string): Promise<void> {
    const tmp = join(this.dir, `${name}.tmp`);
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(text, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(this.dir, name));
  }
}
