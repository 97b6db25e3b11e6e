import Database from 'better-sqlite3';
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, timingSafeEqual, type DecipherGCM } from 'node:crypto';
import { chmodSync, createReadStream, readdirSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { chmod, lstat, mkdir, open, readFile, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { PassThrough, pipeline as streamPipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Config } from '../config/schema.js';
import { AvgateError } from '../core/errors.js';
import { setPageCache } from '../core/sqlite.js';
import type { AuditRecord, PurgeResult, Quarantine, QuarantineFilter, QuarantineItem, QuarantineMeta, QuarantineRecord, QuarantineSource } from './types.js';

/**
 * The encrypted quarantine (docs/quarantine.md). One directory, 0700:
 *
 *   quarantine.sqlite      items (every QuarantineRecord field) and audit (append-only, triggers)
 *   objects/<name>         one file per distinct original: MAGIC, IV (12), AES-256-GCM ciphertext, tag (16)
 *   tmp/                   objects being written; renamed into objects/ only when whole and synced
 *
 * The key file (32 random bytes, 0600) lives outside the directory by default. Two keys are derived
 * from it: one encrypts, one names objects — `<name>` is an HMAC of the plaintext SHA-256, so a
 * listing of objects/ does not say which files are stored, yet the same bytes map to one object
 * (kept once; the items table counts the references).
 */
const MAGIC = Buffer.from('AVGQ\x00\x01\r\n', 'latin1');
const IV_LENGTH = 12;
const TAG_LENGTH = 16;
const HEAD_LENGTH = MAGIC.length + IV_LENGTH;
export const KEY_LENGTH = 32;

/** Ids: 128 random bits in base 36, 25 characters. Anything not matching this is no id at all. */
const ID = /^[0-9a-z]{20,64}$/;
const OBJECT_NAME = /^[0-9a-f]{64}$/;

function newId(): string {
  return BigInt(`0x${randomBytes(16).toString('hex')}`)
    .toString(36)
    .padStart(25, '0');
}

export interface QuarantineOptions {
  /** The quarantine directory (created 0700, or tightened to 0700). */
  dir: string;
  /** The key file: created (32 random bytes, 0600) when missing; refused when group/other may read it. */
  keyFile: string;
  /** SQLite page cache (bytes); DEFAULT_SQLITE_CACHE_BYTES when absent. */
  sqliteCacheBytes?: number;
}

/** Opens the quarantine configured in `config.quarantine`, paths relative to `stateDir`. */
export function openQuarantine(config: Readonly<Config>, stateDir: string = config['state-dir']): Promise<EncryptedQuarantine> {
  const q = config.quarantine;
  return EncryptedQuarantine.open({ dir: resolve(stateDir, q.dir), keyFile: resolve(stateDir, q['key-file']), sqliteCacheBytes: config['sqlite-cache-size'] });
}

/** Reads the key file, creating it first when missing ('wx': never overwrites a key another process just made). */
export async function loadOrCreateKey(path: string): Promise<Buffer> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  try {
    const fh = await open(path, 'wx', 0o600);
    try {
      await fh.writeFile(randomBytes(KEY_LENGTH));
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = await lstat(path);
  if (!st.isFile()) throw new AvgateError('AVG_ERR_QUARANTINE', `quarantine key ${path} is not a regular file`);
  if ((st.mode & 0o077) !== 0) {
    throw new AvgateError('AVG_ERR_QUARANTINE', `quarantine key ${path} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`);
  }
  const key = await readFile(path);
  if (key.length !== KEY_LENGTH) throw new AvgateError('AVG_ERR_QUARANTINE', `quarantine key ${path} must hold exactly ${KEY_LENGTH} bytes (has ${key.length})`);
  return key;
}

interface ItemRow {
  id: string;
  at: number;
  date: string;
  source: string;
  sender: string;
  recipients: string;
  grp: string;
  statuses: string;
  virus_names: string;
  message_id: string | null;
  subject: string | null;
  queue_id: string | null;
  file_name: string | null;
  url: string | null;
  original_path: string | null;
  action: string | null;
  note: string | null;
  size: number;
  sha256: string;
  object: string;
  released_at: string | null;
}

interface AuditRow {
  item_id: string;
  date: string;
  action: string;
  actor: string;
  detail: string;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS objects (
  name TEXT PRIMARY KEY,
  size INTEGER NOT NULL,
  created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
  id TEXT PRIMARY KEY,
  at INTEGER NOT NULL,
  date TEXT NOT NULL,
  source TEXT NOT NULL,
  sender TEXT NOT NULL,
  recipients TEXT NOT NULL,
  grp TEXT NOT NULL,
  statuses TEXT NOT NULL,
  virus_names TEXT NOT NULL,
  message_id TEXT,
  subject TEXT,
  queue_id TEXT,
  file_name TEXT,
  url TEXT,
  original_path TEXT,
  action TEXT,
  note TEXT,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  object TEXT NOT NULL REFERENCES objects(name),
  released_at TEXT,
  search TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_at ON items(at);
CREATE INDEX IF NOT EXISTS items_object ON items(object);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  item_id TEXT NOT NULL,
  at INTEGER NOT NULL,
  date TEXT NOT NULL,
  action TEXT NOT NULL,
  actor TEXT NOT NULL,
  detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_item ON audit(item_id, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
`;

/** Temp files older than this at open are leftovers of a crash (a put in progress is much younger). */
const STALE_TMP_MS = 24 * 3600_000;

/** Options of a put. */
export interface PutOptions {
  /**
   * No new item when one for the same bytes, source and recipients is there and not released: its
   * id is returned (`existing`). For the mail proxies, whose clients fetch a message again and again.
   */
  once?: boolean;
}

export class EncryptedQuarantine implements Quarantine {
  private readonly db: Database.Database;
  private readonly encKey: Buffer;
  private readonly nameKey: Buffer;
  private readonly objectsDir: string;
  private readonly tmpDir: string;
  private readonly walPath: string;
  private closed = false;
  private readonly pending = new Set<Promise<unknown>>();

  private constructor(
    readonly dir: string,
    key: Buffer,
    sqliteCacheBytes?: number,
  ) {
    this.encKey = createHmac('sha256', key).update('avgate quarantine v1 encryption').digest();
    this.nameKey = createHmac('sha256', key).update('avgate quarantine v1 object names').digest();
    this.objectsDir = join(dir, 'objects');
    this.tmpDir = join(dir, 'tmp');
    const dbPath = join(dir, 'quarantine.sqlite');
    this.walPath = `${dbPath}-wal`;
    this.db = new Database(dbPath);
    this.db.pragma('journal_mode = WAL');
    // NORMAL: a commit does not fsync the WAL on the event loop (on a slow disk that stalls every
    // connection of the process for milliseconds). Each write method instead fsyncs the WAL
    // itself, on libuv's threadpool, before it returns (durable()): a committed item survives a
    // power loss, like the object it points to, once the caller has been answered.
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 10000');
    setPageCache(this.db, sqliteCacheBytes);
    this.db.exec(SCHEMA);
    for (const f of [dbPath, `${dbPath}-wal`, `${dbPath}-shm`]) {
      try {
        chmodSync(f, 0o600);
      } catch {
        // -wal/-shm may not exist yet; the directory is 0700 anyway
      }
    }
  }

  /** Opens (creating what is missing) the quarantine in `dir` with the key in `keyFile`. */
  static async open(o: QuarantineOptions): Promise<EncryptedQuarantine> {
    const key = await loadOrCreateKey(o.keyFile);
    await mkdir(o.dir, { recursive: true, mode: 0o700 });
    await chmod(o.dir, 0o700);
    for (const sub of ['objects', 'tmp']) await mkdir(join(o.dir, sub), { recursive: true, mode: 0o700 });
    const q = new EncryptedQuarantine(o.dir, key, o.sqliteCacheBytes);
    q.sweep();
    return q;
  }

  async put(original: Readable | string, meta: QuarantineMeta, opts: PutOptions = {}): Promise<{ id: string; existing?: boolean }> {
    this.assertOpen();
    const work = this.putNow(original, meta, opts);
    this.pending.add(work);
    try {
      return await work;
    } finally {
      this.pending.delete(work);
    }
  }

  private async putNow(original: Readable | string, meta: QuarantineMeta, opts: PutOptions): Promise<{ id: string; existing?: boolean }> {
    let id = newId();
    const tmp = join(this.tmpDir, `${id}.tmp`);
    const iv = randomBytes(IV_LENGTH);
    const cipher = createCipheriv('aes-256-gcm', this.encKey, iv);
    cipher.setAAD(MAGIC);
    const hash = createHash('sha256');
    let size = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        hash.update(chunk);
        size += chunk.length;
        done(null, chunk);
      },
    });
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.write(Buffer.concat([MAGIC, iv]));
      const source = typeof original === 'string' ? createReadStream(original) : original;
      await pipeline(source, meter, cipher, async (encrypted: AsyncIterable<Buffer>) => {
        for await (const chunk of encrypted) await fh.write(chunk);
      });
      await fh.write(cipher.getAuthTag());
      await fh.sync();
    } catch (err) {
      await fh.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
    await fh.close();
    const sha256 = hash.digest('hex');
    const object = createHmac('sha256', this.nameKey).update(sha256).digest('hex');
    const now = new Date();
    const m: Required<QuarantineMeta> = {
      source: meta.source,
      sender: meta.sender,
      recipients: [...meta.recipients],
      group: meta.group,
      statuses: [...meta.statuses],
      virusNames: [...meta.virusNames],
      messageId: meta.messageId ?? null,
      subject: meta.subject ?? null,
      queueId: meta.queueId ?? null,
      fileName: meta.fileName ?? null,
      url: meta.url ?? null,
      originalPath: meta.originalPath ?? null,
      action: meta.action ?? null,
      note: meta.note ?? null,
    };
    // One immediate transaction: another writer (serve and the CLI share the store) cannot slip
    // between "is the object there" and "item refers to it", nor unlink it meanwhile.
    let kept = false;
    let existing = false;
    this.db
      .transaction(() => {
        const exists = this.db.prepare('SELECT 1 FROM objects WHERE name = ?').get(object);
        if (exists !== undefined && opts.once === true) {
          // The same bytes for the same recipients from the same source, not yet released: that
          // item stands for this one too (a mail client fetching one message again and again).
          const same = this.db
            .prepare('SELECT id FROM items WHERE object = ? AND source = ? AND recipients = ? AND released_at IS NULL ORDER BY at DESC LIMIT 1')
            .pluck()
            .get(object, m.source, JSON.stringify(m.recipients)) as string | undefined;
          if (same !== undefined) {
            id = same;
            existing = true;
            return;
          }
        }
        if (!exists) {
          renameSync(tmp, join(this.objectsDir, object));
          this.db.prepare('INSERT INTO objects (name, size, created) VALUES (?, ?, ?)').run(object, size, now.getTime());
          kept = true;
        }
        this.db
          .prepare(
            `INSERT INTO items (id, at, date, source, sender, recipients, grp, statuses, virus_names, message_id, subject, queue_id,
               file_name, url, original_path, action, note, size, sha256, object, released_at, search)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)`,
          )
          .run(
            id,
            now.getTime(),
            now.toISOString(),
            m.source,
            m.sender,
            JSON.stringify(m.recipients),
            m.group,
            JSON.stringify(m.statuses),
            JSON.stringify(m.virusNames),
            m.messageId,
            m.subject,
            m.queueId,
            m.fileName,
            m.url,
            m.originalPath,
            m.action,
            m.note,
            size,
            sha256,
            object,
            searchText(m),
          );
        this.db
          .prepare('INSERT INTO audit (item_id, at, date, action, actor, detail) VALUES (?, ?, ?, ?, ?, ?)')
          .run(id, now.getTime(), now.toISOString(), 'put', 'system', JSON.stringify({ source: m.source, size, deduplicated: exists !== undefined }));
      })
      .immediate();
    if (!kept) await unlink(tmp).catch(() => undefined);
    if (existing) return { id, existing: true };
    // The rename and the commit reach the disk before the caller (who then answers its client) is
    // told: both fsyncs run on the threadpool, side by side.
    await Promise.all([kept ? syncPath(this.objectsDir) : Promise.resolve(), this.durable()]);
    return { id };
  }

  /** fsync of the WAL: what this connection committed survives a power loss (synchronous = NORMAL). */
  private async durable(): Promise<void> {
    await syncPath(this.walPath).catch((err: NodeJS.ErrnoException) => {
      // No WAL file: nothing was written since a checkpoint truncated it.
      if (err.code !== 'ENOENT') throw err;
    });
  }

  async get(id: string): Promise<QuarantineItem | null> {
    this.assertOpen();
    if (typeof id !== 'string' || !ID.test(id)) return null;
    const row = this.db.prepare('SELECT * FROM items WHERE id = ?').get(id) as ItemRow | undefined;
    if (!row) return null;
    const record = recordOf(row);
    const path = join(this.objectsDir, objectName(row));
    return { record, open: () => this.decrypting(path, row.sha256) };
  }

  async list(filter: QuarantineFilter = {}): Promise<QuarantineRecord[]> {
    this.assertOpen();
    const { where, params } = whereOf(filter);
    const limit = Math.min(Math.max(Math.trunc(filter.limit ?? 100), 0), 10_000);
    const offset = Math.max(Math.trunc(filter.offset ?? 0), 0);
    const rows = this.db.prepare(`SELECT * FROM items ${where} ORDER BY at DESC, rowid DESC LIMIT ? OFFSET ?`).all(...params, limit, offset) as ItemRow[];
    return rows.map(recordOf);
  }

  async count(filter: QuarantineFilter = {}): Promise<number> {
    this.assertOpen();
    const { where, params } = whereOf(filter);
    return (this.db.prepare(`SELECT COUNT(*) AS n FROM items ${where}`).get(...params) as { n: number }).n;
  }

  async remove(id: string, actor = 'system'): Promise<boolean> {
    this.assertOpen();
    if (typeof id !== 'string' || !ID.test(id)) return false;
    const removed = this.removeNow(id, actor, 'delete', {}) !== null;
    await this.durable();
    return removed;
  }

  /** Deletes the item and, when it was the last reference, its object; the freed bytes, or null when there was no item. */
  private removeNow(id: string, actor: string, action: 'delete' | 'purge', detail: Record<string, unknown>): number | null {
    return this.db
      .transaction((): number | null => {
        const row = this.db.prepare('SELECT id, object FROM items WHERE id = ?').get(id) as { id: string; object: string } | undefined;
        if (!row) return null;
        objectName(row);
        this.db.prepare('DELETE FROM items WHERE id = ?').run(id);
        const now = new Date();
        this.db
          .prepare('INSERT INTO audit (item_id, at, date, action, actor, detail) VALUES (?, ?, ?, ?, ?, ?)')
          .run(id, now.getTime(), now.toISOString(), action, actor, JSON.stringify(detail));
        const others = this.db.prepare('SELECT 1 FROM items WHERE object = ? LIMIT 1').get(row.object);
        if (others) return 0;
        const obj = this.db.prepare('SELECT size FROM objects WHERE name = ?').get(row.object) as { size: number } | undefined;
        this.db.prepare('DELETE FROM objects WHERE name = ?').run(row.object);
        // Inside the transaction (write lock held): no put can re-create the name in between.
        try {
          unlinkSync(join(this.objectsDir, row.object));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
        return obj?.size ?? 0;
      })
      .immediate();
  }

  async audit(entry: Omit<AuditRecord, 'date'>): Promise<void> {
    this.assertOpen();
    const now = new Date();
    this.db
      .transaction(() => {
        this.db
          .prepare('INSERT INTO audit (item_id, at, date, action, actor, detail) VALUES (?, ?, ?, ?, ?, ?)')
          .run(entry.itemId, now.getTime(), now.toISOString(), entry.action, entry.actor, JSON.stringify(entry.detail ?? {}));
        if (entry.action === 'release' && entry.detail?.ok === true) {
          this.db.prepare('UPDATE items SET released_at = ? WHERE id = ?').run(now.toISOString(), entry.itemId);
        }
      })
      .immediate();
    await this.durable();
  }

  async auditTrail(id?: string): Promise<AuditRecord[]> {
    this.assertOpen();
    const rows =
      id === undefined
        ? (this.db.prepare('SELECT * FROM audit ORDER BY seq DESC LIMIT 1000').all() as AuditRow[]).reverse()
        : (this.db.prepare('SELECT * FROM audit WHERE item_id = ? ORDER BY seq').all(id) as AuditRow[]);
    return rows.map((r) => ({ itemId: r.item_id, date: r.date, action: r.action as AuditRecord['action'], actor: r.actor, detail: JSON.parse(r.detail) as Record<string, unknown> }));
  }

  async purge(o: { olderThanMs?: number; maxTotalSize?: number; actor?: string; dryRun?: boolean }): Promise<PurgeResult> {
    this.assertOpen();
    const actor = o.actor ?? 'system';
    const plan = this.purgePlan(o);
    if (o.dryRun === true) return { removed: plan.length, bytes: plan.reduce((n, p) => n + p.frees, 0), ids: plan.map((p) => p.id) };
    let removed = 0;
    let bytes = 0;
    for (const p of plan) {
      const detail = p.reason === 'age' ? { reason: 'age', olderThanMs: o.olderThanMs } : { reason: 'size', maxTotalSize: o.maxTotalSize };
      const freed = this.removeNow(p.id, actor, 'purge', detail);
      if (freed !== null) {
        removed++;
        bytes += freed;
      }
    }
    if (removed > 0) await this.durable();
    return { removed, bytes };
  }

  /**
   * What a purge removes, in order: the items older than olderThanMs, then the oldest others until
   * the distinct objects left fit in maxTotalSize (an object shared by several items is freed with
   * the last of them). Worked out on the rows, so a dry run and the purge agree; the items are read
   * a page at a time, so a quarantine of millions of items costs what is purged, not what is kept.
   */
  private purgePlan(o: { olderThanMs?: number; maxTotalSize?: number }): Array<{ id: string; reason: 'age' | 'size'; frees: number }> {
    const refsOf = this.db.prepare('SELECT COUNT(*) FROM items WHERE object = ?').pluck();
    const sizeOf = this.db.prepare('SELECT size FROM objects WHERE name = ?').pluck();
    const page = this.db.prepare('SELECT rowid AS r, id, at, object FROM items WHERE (at > ? OR (at = ? AND rowid > ?)) ORDER BY at, rowid LIMIT 1000');
    let total = this.db.prepare('SELECT COALESCE(SUM(size), 0) FROM objects').pluck().get() as number;
    const taken = new Map<string, number>();
    const plan: Array<{ id: string; reason: 'age' | 'size'; frees: number }> = [];
    const cutoff = o.olderThanMs !== undefined && o.olderThanMs >= 0 ? Date.now() - o.olderThanMs : null;
    const maxTotal = o.maxTotalSize !== undefined && o.maxTotalSize >= 0 ? o.maxTotalSize : null;
    let after = { at: -Infinity, r: 0 };
    for (;;) {
      const rows = page.all(after.at, after.at, after.r) as Array<{ r: number; id: string; at: number; object: string }>;
      for (const it of rows) {
        const reason = cutoff !== null && it.at < cutoff ? 'age' : maxTotal !== null && total > maxTotal ? 'size' : null;
        if (reason === null) return plan; // oldest first: nothing after this one goes either
        const n = (taken.get(it.object) ?? 0) + 1;
        taken.set(it.object, n);
        const frees = n === (refsOf.get(it.object) as number) ? ((sizeOf.get(it.object) as number | undefined) ?? 0) : 0;
        total -= frees;
        plan.push({ id: it.id, reason, frees });
      }
      if (rows.length < 1000) return plan;
      const last = rows[rows.length - 1] as { r: number; at: number };
      after = { at: last.at, r: last.r };
    }
  }

  async usage(): Promise<{ items: number; objects: number; bytes: number }> {
    this.assertOpen();
    const items = (this.db.prepare('SELECT COUNT(*) AS n FROM items').get() as { n: number }).n;
    const o = this.db.prepare('SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM objects').get() as { n: number; bytes: number };
    return { items, objects: o.n, bytes: o.bytes };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.allSettled([...this.pending]);
    this.closed = true;
    this.db.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new AvgateError('AVG_ERR_QUARANTINE', 'the quarantine is closed');
  }

  /**
   * The decrypting stream of one object. Plaintext flows as it is decrypted (the tag is at the
   * end), so a consumer must treat the bytes as provisional until 'end': a tag that does not verify,
   * a truncated file or a SHA-256 other than the record's is an 'error' instead of 'end'.
   */
  private decrypting(path: string, sha256: string): Readable {
    const key = this.encKey;
    let head: Buffer | null = Buffer.alloc(0);
    let held = Buffer.alloc(0);
    let decipher: DecipherGCM | null = null;
    const hash = createHash('sha256');
    const fail = (why: string) => new AvgateError('AVG_ERR_QUARANTINE', `quarantine object ${path} does not verify: ${why}`);
    const transform = new Transform({
      transform(chunk: Buffer, _enc, done: TransformCallback) {
        let data = chunk;
        if (head !== null) {
          head = Buffer.concat([head, data]);
          if (head.length < HEAD_LENGTH) return done();
          if (!head.subarray(0, MAGIC.length).equals(MAGIC)) return done(fail('not an avgate quarantine object'));
          decipher = createDecipheriv('aes-256-gcm', key, head.subarray(MAGIC.length, HEAD_LENGTH));
          decipher.setAAD(MAGIC);
          data = head.subarray(HEAD_LENGTH);
          head = null;
        }
        // The last TAG_LENGTH bytes seen so far may be the tag: hold them back.
        const all = held.length > 0 ? Buffer.concat([held, data]) : data;
        const cut = Math.max(all.length - TAG_LENGTH, 0);
        held = Buffer.from(all.subarray(cut));
        if (cut === 0) return done();
        const plain = decipher!.update(all.subarray(0, cut));
        hash.update(plain);
        done(null, plain);
      },
      flush(done: TransformCallback) {
        if (head !== null || decipher === null || held.length !== TAG_LENGTH) return done(fail('truncated'));
        try {
          decipher.setAuthTag(held);
          const last = decipher.final();
          hash.update(last);
          if (last.length > 0) this.push(last);
        } catch {
          return done(fail('authentication tag mismatch (tampered or wrong key)'));
        }
        const got = hash.digest();
        const want = Buffer.from(sha256, 'hex');
        if (got.length !== want.length || !timingSafeEqual(got, want)) return done(fail('content hash differs from the record'));
        done();
      },
    });
    // pipeline: a file error fails the transform, and a consumer that stops early closes the file.
    // An object purged or deleted meanwhile is a refusal in the store's terms, not a raw ENOENT.
    const file = createReadStream(path);
    const source = new PassThrough();
    file.on('error', (err: NodeJS.ErrnoException) => source.destroy(err.code === 'ENOENT' ? fail('it was removed (purged or deleted) while being read') : err));
    source.on('close', () => file.destroy());
    file.pipe(source);
    streamPipeline(source, transform, () => undefined);
    return transform;
  }

  /** At open: temp files of crashed puts, and objects no item row refers to (crash between rename and commit). */
  private sweep(): void {
    const now = Date.now();
    for (const name of readdirSync(this.tmpDir)) {
      const p = join(this.tmpDir, name);
      try {
        if (now - statSync(p).mtimeMs > STALE_TMP_MS) unlinkSync(p);
      } catch {
        // gone meanwhile
      }
    }
    this.db
      .transaction(() => {
        const known = this.db.prepare('SELECT 1 FROM objects WHERE name = ?').pluck();
        for (const name of readdirSync(this.objectsDir)) {
          if (OBJECT_NAME.test(name) && known.get(name) === undefined) unlinkSync(join(this.objectsDir, name));
        }
      })
      .immediate();
  }
}

/** fsync of a file or a directory (its entries), on the threadpool. */
async function syncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function searchText(m: Required<QuarantineMeta>): string {
  // The note holds avgate's own queue id when queueId is the MTA's: both find the item.
  return [m.sender, ...m.recipients, m.subject ?? '', m.fileName ?? '', m.url ?? '', ...m.virusNames, m.queueId ?? '', m.messageId ?? '', m.note ?? ''].join('\n').toLowerCase();
}

/** WHERE clause and its parameters: every value user-supplied goes in as a bound parameter. */
function whereOf(f: QuarantineFilter): { where: string; params: Array<string | number> } {
  const clauses: string[] = [];
  const params: Array<string | number> = [];
  if (f.since) {
    clauses.push('at >= ?');
    params.push(f.since.getTime());
  }
  if (f.until) {
    clauses.push('at < ?');
    params.push(f.until.getTime());
  }
  if (f.status !== undefined) {
    clauses.push('EXISTS (SELECT 1 FROM json_each(items.statuses) WHERE json_each.value = ?)');
    params.push(String(f.status));
  }
  if (f.source !== undefined) {
    clauses.push('source = ?');
    params.push(String(f.source));
  }
  if (f.text !== undefined && f.text !== '') {
    clauses.push('instr(search, ?) > 0');
    params.push(String(f.text).toLowerCase());
  }
  return { where: clauses.length > 0 ? `WHERE ${clauses.join(' AND ')}` : '', params };
}

/**
 * The row's object name, checked: a row edited to name `../../etc/passwd` must neither be read nor,
 * on delete or purge, unlinked outside objects/.
 */
function objectName(r: { id: string; object: string }): string {
  if (typeof r.object !== 'string' || !OBJECT_NAME.test(r.object)) throw new AvgateError('AVG_ERR_QUARANTINE', `quarantine record ${r.id} is damaged: bad object name`);
  return r.object;
}

/** A list column of a row (JSON array of strings); a damaged one is AVG_ERR_QUARANTINE, not a SyntaxError. */
function listOf(r: ItemRow, column: 'recipients' | 'statuses' | 'virus_names'): string[] {
  let v: unknown;
  try {
    v = JSON.parse(r[column]);
  } catch {
    v = null;
  }
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new AvgateError('AVG_ERR_QUARANTINE', `quarantine record ${r.id} is damaged: ${column} is not a list of strings`);
  return v as string[];
}

function recordOf(r: ItemRow): QuarantineRecord {
  return {
    id: r.id,
    date: r.date,
    size: r.size,
    sha256: r.sha256,
    releasedAt: r.released_at,
    source: r.source as QuarantineSource,
    sender: r.sender,
    recipients: listOf(r, 'recipients'),
    group: r.grp,
    statuses: listOf(r, 'statuses'),
    virusNames: listOf(r, 'virus_names'),
    messageId: r.message_id,
    subject: r.subject,
    queueId: r.queue_id,
    fileName: r.file_name,
    url: r.url,
    originalPath: r.original_path,
    action: r.action,
    note: r.note,
  };
}

