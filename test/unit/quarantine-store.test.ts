import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { AvgateError } from '../../src/core/errors.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { DeliveryRequest, DeliveryResult, NextHop } from '../../src/protocols/smtp/types.js';
import { exportZip, ZipCrypto } from '../../src/quarantine/export.js';
import { checkMailbox, contentNeeds, releaseItem, restoreItem } from '../../src/quarantine/release.js';
import { EncryptedQuarantine, KEY_LENGTH } from '../../src/quarantine/store.js';
import type { QuarantineMeta } from '../../src/quarantine/types.js';
import { filesUnder } from '../helpers/files.js';

let base: string;
let n = 0;
before(async () => {
  base = await mkdtemp(join(tmpdir(), 'avgate-qstore-'));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

const meta: QuarantineMeta = {
  source: 'smtp',
  sender: 'alice@example.org',
  recipients: ['bob@example.com', 'carol@example.com'],
  group: 'default',
  statuses: ['infected', 'error'],
  virusNames: ['Win.Test.EICAR_HDB-1'],
  messageId: '<m1@example.org>',
  subject: 'Hello there',
  queueId: '4Q1',
  action: 'deliver(remove)',
};

const fileMeta: QuarantineMeta = {
  source: 'fs',
  sender: '',
  recipients: [],
  group: 'scan',
  statuses: ['found'],
  virusNames: ['Eicar-Signature'],
  fileName: 'eicar.com',
  originalPath: '/srv/upload/eicar.com',
};

async function fresh(): Promise<{ q: EncryptedQuarantine; root: string; dir: string; keyFile: string }> {
  const root = join(base, `s${++n}`);
  const dir = join(root, 'quarantine');
  const keyFile = join(root, 'quarantine.key');
  return { q: await EncryptedQuarantine.open({ dir, keyFile }), root, dir, keyFile };
}

async function bytes(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777;

function mailWithEicar(tag: string): Buffer {
  return Buffer.from(`From: alice@example.org\r\nSubject: ${tag}\r\n\r\n${eicarBytes().toString('latin1')}\r\n`, 'latin1');
}

test('round trip: the original comes back byte for byte with every fact; key 0600, directory 0700', async () => {
  const { q, dir, keyFile } = await fresh();
  const original = mailWithEicar('round trip');
  const { id } = await q.put(Readable.from([original.subarray(0, 10), original.subarray(10)]), meta);
  assert.match(id, /^[0-9a-z]{20,}$/);
  const item = await q.get(id);
  assert.ok(item);
  assert.deepEqual(await bytes(item.open()), original);
  const r = item.record;
  assert.equal(r.size, original.length);
  assert.equal(r.sha256, createHash('sha256').update(original).digest('hex'));
  assert.equal(r.source, 'smtp');
  assert.deepEqual(r.recipients, meta.recipients);
  assert.deepEqual(r.statuses, ['infected', 'error']);
  assert.equal(r.subject, 'Hello there');
  assert.equal(r.action, 'deliver(remove)');
  assert.equal(r.fileName, null);
  assert.equal(r.releasedAt, null);
  assert.equal(await mode(dir), 0o700);
  assert.equal(await mode(keyFile), 0o600);
  assert.equal((await readFile(keyFile)).length, KEY_LENGTH);
  for (const f of await filesUnder(join(dir, 'objects'))) assert.equal(await mode(f), 0o600);
  assert.deepEqual(
    (await q.auditTrail(id)).map((a) => a.action),
    ['put'],
  );
  await q.close();
});

test('no plaintext on disk: neither the EICAR string nor the hash appears in any file of the store', async () => {
  const { q, dir } = await fresh();
  const original = mailWithEicar('secret');
  const spooled = join(base, `spool-${n}.eml`);
  await writeFile(spooled, original);
  const { id } = await q.put(spooled, meta);
  const sha = createHash('sha256').update(original).digest('hex');
  const objects = await readdir(join(dir, 'objects'));
  assert.equal(objects.length, 1);
  assert.ok(!objects.some((name) => name.includes(sha)), 'object name is not the plaintext hash');
  const eicar = eicarBytes();
  for (const f of await filesUnder(dir)) {
    const content = await readFile(f);
    assert.equal(content.indexOf(eicar.subarray(0, 40)), -1, `${f} holds EICAR bytes`);
  }
  // Without the key nobody reads it: another key gives an error, not the bytes.
  await q.close();
  const other = await EncryptedQuarantine.open({ dir, keyFile: join(base, `other-${n}.key`) });
  const item = await other.get(id);
  assert.ok(item);
  await assert.rejects(bytes(item.open()), /does not verify/);
  await other.close();
});

test('a tampered object fails the stream (error event), whatever byte was flipped', async () => {
  const { q, dir } = await fresh();
  const original = Buffer.alloc(200_000, 'x');
  const { id } = await q.put(Readable.from([original]), fileMeta);
  const [name] = await readdir(join(dir, 'objects'));
  const path = join(dir, 'objects', name!);
  const size = (await stat(path)).size;
  for (const at of [30, Math.floor(size / 2), size - 1]) {
    const fh = await open(path, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0x01;
    await fh.write(b, 0, 1, at);
    await fh.close();
    const item = await q.get(id);
    assert.ok(item);
    await assert.rejects(bytes(item.open()), (e: Error) => e instanceof AvgateError && /does not verify/.test(e.message), `flip at ${at}`);
    // Undo, and the object reads again: the check is real, not a blanket failure.
    const fh2 = await open(path, 'r+');
    b[0] = b[0]! ^ 0x01;
    await fh2.write(b, 0, 1, at);
    await fh2.close();
    assert.deepEqual(await bytes((await q.get(id))!.open()), original);
  }
  // Truncated: error too.
  const fh = await open(path, 'r+');
  await fh.truncate(size - 5);
  await fh.close();
  await assert.rejects(bytes((await q.get(id))!.open()), /does not verify/);
  // Gone: an error too, never an empty success.
  await rm(path);
  await assert.rejects(bytes((await q.get(id))!.open()), (e: Error) => e instanceof AvgateError && /removed \(purged or deleted\)/.test(e.message));
  await q.close();
});

test('the same bytes are kept once; the object goes with the last reference', async () => {
  const { q, dir } = await fresh();
  const original = mailWithEicar('dup');
  const a = await q.put(Readable.from([original]), meta);
  const b = await q.put(Readable.from([original]), { ...meta, subject: 'second' });
  const c = await q.put(Readable.from([Buffer.from('other bytes')]), fileMeta);
  assert.notEqual(a.id, b.id);
  assert.equal((await readdir(join(dir, 'objects'))).length, 2);
  assert.deepEqual(await q.usage(), { items: 3, objects: 2, bytes: original.length + 11 });
  assert.equal(await q.remove(a.id, 'test'), true);
  assert.equal(await q.remove(a.id, 'test'), false);
  assert.equal((await readdir(join(dir, 'objects'))).length, 2);
  assert.deepEqual(await bytes((await q.get(b.id))!.open()), original);
  assert.equal(await q.remove(b.id, 'test'), true);
  assert.equal((await readdir(join(dir, 'objects'))).length, 1);
  assert.equal(await q.get(b.id), null);
  assert.ok(await q.get(c.id));
  assert.deepEqual(await q.usage(), { items: 1, objects: 1, bytes: 11 });
  assert.deepEqual(
    (await q.auditTrail(a.id)).map((x) => [x.action, x.actor]),
    [
      ['put', 'system'],
      ['delete', 'test'],
    ],
  );
  assert.equal((await readdir(join(dir, 'tmp'))).length, 0);
  await q.close();
});

test('purge by age, then by total size, oldest first', async () => {
  const { q } = await fresh();
  const ids: string[] = [];
  const putOne = async (i: number) => ids.push((await q.put(Readable.from([Buffer.alloc(1000, i + 1)]), fileMeta)).id);
  await putOne(0);
  await putOne(1);
  await new Promise((r) => setTimeout(r, 250));
  await putOne(2);
  await putOne(3);
  // Nothing is older than an hour.
  assert.deepEqual(await q.purge({ olderThanMs: 3600_000 }), { removed: 0, bytes: 0 });
  // A dry run names what the purge below removes, and removes nothing.
  assert.deepEqual(await q.purge({ olderThanMs: 150, dryRun: true }), { removed: 2, bytes: 2000, ids: [ids[0], ids[1]] });
  assert.deepEqual(await q.purge({ olderThanMs: 150, maxTotalSize: 1500, dryRun: true }), { removed: 3, bytes: 3000, ids: [ids[0], ids[1], ids[2]] });
  assert.equal((await q.list()).length, 4);
  // Older than 150 ms: the two put before the pause, and only those.
  const r1 = await q.purge({ olderThanMs: 150 });
  assert.deepEqual(r1, { removed: 2, bytes: 2000 });
  assert.equal(await q.get(ids[0]!), null);
  assert.equal(await q.get(ids[1]!), null);
  assert.ok(await q.get(ids[2]!));
  // Size: keep at most 1500 bytes → only the newest (1000) stays.
  const r2 = await q.purge({ maxTotalSize: 1500, actor: 'test' });
  assert.deepEqual(r2, { removed: 1, bytes: 1000 });
  assert.deepEqual(
    (await q.list()).map((r) => r.id),
    [ids[3]],
  );
  assert.deepEqual((await q.auditTrail(ids[2]!)).at(-1)?.detail, { reason: 'size', maxTotalSize: 1500 });
  assert.equal((await q.auditTrail(ids[2]!)).at(-1)?.action, 'purge');
  // An object two items share is freed with the second of them only.
  const same = Buffer.alloc(1000, 9);
  const a1 = (await q.put(Readable.from([same]), fileMeta)).id;
  const a2 = (await q.put(Readable.from([same]), fileMeta)).id;
  assert.deepEqual(await q.purge({ maxTotalSize: 1000, dryRun: true }), { removed: 1, bytes: 1000, ids: [ids[3]] });
  assert.deepEqual(await q.purge({ maxTotalSize: 0, dryRun: true }), { removed: 3, bytes: 2000, ids: [ids[3], a1, a2] });
  assert.deepEqual(await q.purge({ maxTotalSize: 0 }), { removed: 3, bytes: 2000 });
  await q.close();
});

test('ids: anything but a real id is null, path tricks included', async () => {
  const { q } = await fresh();
  const { id } = await q.put(Readable.from([Buffer.from('x')]), fileMeta);
  for (const bad of ['', '../quarantine.sqlite', `${id}/../${id}`, id.toUpperCase(), `${id}\0`, `${id} `, 'objects', '0'.repeat(25), "' OR 1=1 --", 'a'.repeat(1000)]) {
    assert.equal(await q.get(bad), null, JSON.stringify(bad));
    assert.equal(await q.remove(bad), false, JSON.stringify(bad));
  }
  assert.ok(await q.get(id));
  await q.close();
});

test('filters use bound parameters: SQL in a filter matches nothing and breaks nothing', async () => {
  const { q } = await fresh();
  await q.put(Readable.from([Buffer.from('a')]), meta);
  await q.put(Readable.from([Buffer.from('b')]), { ...meta, sender: 'mallory@evil.example', subject: "it's 100% off_" });
  await q.put(Readable.from([Buffer.from('c')]), fileMeta);
  for (const evil of ["' OR 1=1 --", '%%', '_x', '") OR ("1"="1', "x'; DROP TABLE items; --", '*']) {
    assert.equal((await q.list({ text: evil })).length, 0, evil);
    assert.equal((await q.list({ status: evil })).length, 0, evil);
    assert.equal(await q.count({ text: evil }), 0, evil);
  }
  assert.equal((await q.list({ source: "smtp' OR '1'='1" as 'smtp' })).length, 0);
  assert.equal(await q.count(), 3);
  // Real filters do match: the same code paths can say yes.
  assert.equal((await q.list({ text: "100% OFF_" })).length, 1);
  // % and _ are plain characters, not LIKE wildcards: only what holds them (the one subject; EICAR_HDB twice).
  assert.equal((await q.list({ text: '%' })).length, 1);
  assert.equal((await q.list({ text: '_' })).length, 2);
  assert.equal((await q.list({ text: 'MALLORY' })).length, 1);
  assert.equal((await q.list({ text: 'eicar_hdb' })).length, 2);
  assert.equal((await q.list({ status: 'error' })).length, 2);
  assert.equal((await q.list({ status: 'found' })).length, 1);
  assert.equal((await q.list({ source: 'fs' })).length, 1);
  assert.equal((await q.list({ limit: 2 })).length, 2);
  assert.equal((await q.list({ since: new Date(Date.now() + 60_000) })).length, 0);
  const all = await q.list();
  assert.deepEqual(
    all.map((r) => r.source),
    ['fs', 'smtp', 'smtp'],
    'newest first',
  );
  await q.close();
});

test('the key file: created once, refused when group/other may read it or of the wrong length', async () => {
  const { q, keyFile, dir } = await fresh();
  const key = await readFile(keyFile);
  await q.close();
  const again = await EncryptedQuarantine.open({ dir, keyFile });
  assert.deepEqual(await readFile(keyFile), key, 'an existing key is never replaced');
  await again.close();
  await chmod(keyFile, 0o640);
  await assert.rejects(EncryptedQuarantine.open({ dir, keyFile }), /readable by group or others/);
  await chmod(keyFile, 0o604);
  await assert.rejects(EncryptedQuarantine.open({ dir, keyFile }), /readable by group or others/);
  const short = join(base, `short-${n}.key`);
  await writeFile(short, Buffer.alloc(16), { mode: 0o600 });
  await assert.rejects(EncryptedQuarantine.open({ dir, keyFile: short }), /exactly 32 bytes/);
});

test('a crashed put leaves no listed item; stray objects are swept at open', async () => {
  const { q, dir, keyFile } = await fresh();
  await q.put(Readable.from([Buffer.from('kept')]), fileMeta);
  // A source that fails mid-way: nothing listed, no temp file left.
  const failing = new Readable({
    read() {
      this.push(Buffer.alloc(1000, 1));
      this.destroy(new Error('client went away'));
    },
  });
  await assert.rejects(q.put(failing, fileMeta), /went away/);
  assert.equal(await q.count(), 1);
  assert.equal((await readdir(join(dir, 'tmp'))).length, 0);
  await q.close();
  // A crash between rename and commit leaves an object no row names: removed at the next open.
  await writeFile(join(dir, 'objects', 'a'.repeat(64)), 'orphan', { mode: 0o600 });
  const again = await EncryptedQuarantine.open({ dir, keyFile });
  assert.equal((await readdir(join(dir, 'objects'))).length, 1);
  assert.equal(await again.count(), 1);
  await again.close();
});

test('the audit trail is append-only; a successful release sets releasedAt', async () => {
  const { q, dir } = await fresh();
  const { id } = await q.put(Readable.from([Buffer.from('m')]), meta);
  await q.audit({ itemId: id, action: 'release', actor: 'cli:x', detail: { ok: false } });
  assert.equal((await q.get(id))!.record.releasedAt, null);
  await q.audit({ itemId: id, action: 'release', actor: 'cli:x', detail: { ok: true } });
  assert.match((await q.get(id))!.record.releasedAt ?? '', /^\d{4}-/);
  await q.close();
  const r = spawnSync('python3', ['-c', `import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\ntry:\n  c.execute("DELETE FROM audit"); c.commit(); print("deleted")\nexcept Exception as e: print("refused", e)`, join(dir, 'quarantine.sqlite')], { encoding: 'utf8' });
  if (r.status === 0) assert.match(r.stdout, /refused .*append-only/);
});

class RecordingNextHop implements NextHop {
  readonly target = 'smtp:test:25';
  requests: Array<{ from: string; rcpts: string[]; body: Buffer }> = [];
  constructor(private readonly code = 250) {}
  async deliver(req: DeliveryRequest): Promise<DeliveryResult> {
    const body = Buffer.isBuffer(req.body) ? req.body : await bytes(req.body);
    this.requests.push({ from: req.mailFrom.address, rcpts: req.rcpts.map((r) => r.address), body });
    return { replies: req.rcpts.map(() => ({ code: this.code, status: '2.0.0', lines: ['ok'] })), transcript: [], dropped: [] };
  }
  async close(): Promise<void> {}
}

test('release: original bytes, original envelope or --to; injection attempts refused before anything is sent', async () => {
  const { q } = await fresh();
  const original = mailWithEicar('release');
  const { id } = await q.put(Readable.from([original]), meta);
  const hop = new RecordingNextHop();
  const r1 = await releaseItem(q, id, { nextHop: hop, actor: 'cli:t' });
  assert.equal(r1.ok, true);
  assert.deepEqual(hop.requests[0], { from: 'alice@example.org', rcpts: meta.recipients, body: original });
  const r2 = await releaseItem(q, id, { to: ['x@y.example'], nextHop: hop, actor: 'cli:t' });
  assert.deepEqual(r2.recipients, ['x@y.example']);
  assert.deepEqual(hop.requests[1]?.rcpts, ['x@y.example']);
  for (const evil of ['a@b>\r\nRCPT TO:<evil@x>', 'a@b\nBcc: z@z', 'a\0@b', '<a@b>', 'a b@c', 'a@b@c', 'nobody', '@b', 'a@', 'a@-b-.c', '"q"@b']) {
    await assert.rejects(
      releaseItem(q, id, { to: ['ok@example.org', evil], nextHop: hop, actor: 'cli:t' }),
      (e: Error) => e instanceof AvgateError && e.code === 'AVG_ERR_BAD_ADDRESS',
      JSON.stringify(evil),
    );
  }
  assert.equal(hop.requests.length, 2, 'nothing sent for a refused address');
  for (const good of ['x@y', 'first.last+tag@sub.example.org', 'a@[192.0.2.1]', 'üser@exämple.org']) assert.equal(checkMailbox(good), null, good);
  const refused = await releaseItem(q, id, { nextHop: new RecordingNextHop(550), actor: 'cli:t' });
  assert.equal(refused.ok, false);
  const trail = (await q.auditTrail(id)).filter((a) => a.action === 'release');
  assert.deepEqual(
    trail.map((a) => a.detail.ok),
    [true, true, false],
  );
  // A file item is not released.
  const f = await q.put(Readable.from([Buffer.from('f')]), fileMeta);
  await assert.rejects(releaseItem(q, f.id, { nextHop: hop, actor: 'cli:t' }), /not a mail message/);
  await assert.rejects(releaseItem(q, 'nosuchitem0000000000000', { nextHop: hop, actor: 'cli:t' }), /no quarantined item/);
  await q.close();
});

test('release: MAIL parameters as the stored message needs them (BODY=8BITMIME for 8-bit bytes, SMTPUTF8 for UTF-8 headers or addresses), also for items stored without any', async () => {
  const { q } = await fresh();
  const sent: Array<Record<string, string | true>> = [];
  const hop: NextHop = {
    target: 'smtp:test:25',
    async deliver(req: DeliveryRequest): Promise<DeliveryResult> {
      if (!Buffer.isBuffer(req.body)) await bytes(req.body);
      sent.push({ ...req.mailFrom.params });
      return { replies: req.rcpts.map(() => ({ code: 250, status: '2.0.0', lines: ['ok'] })), transcript: [], dropped: [] };
    },
    async close() {},
  };
  const release = async (message: Buffer, m: QuarantineMeta = meta, to?: string[]) => {
    const { id } = await q.put(Readable.from([message]), m);
    await releaseItem(q, id, { nextHop: hop, actor: 'cli:t', ...(to ? { to } : {}) });
    return sent.at(-1);
  };
  assert.deepEqual(await release(mailWithEicar('ascii')), {}, 'plain ASCII needs nothing');
  const eightBitBody = Buffer.from('From: alice@example.org\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n', 'utf8');
  assert.deepEqual(await release(eightBitBody), { BODY: '8BITMIME' });
  // Past the store's first read (64 KiB): the 8-bit byte comes in a later chunk.
  const late = Buffer.concat([Buffer.from('Subject: late\r\n\r\n'), Buffer.alloc(200_000, 'a'), Buffer.from('\r\nÄ\r\n', 'utf8')]);
  assert.deepEqual(await release(late), { BODY: '8BITMIME' });
  const utf8Headers = Buffer.from('From: Jürgen <alice@example.org>\r\nSubject: Grüße\r\n\r\nHallo\r\n', 'utf8');
  assert.deepEqual(await release(utf8Headers), { BODY: '8BITMIME', SMTPUTF8: true });
  assert.deepEqual(await release(mailWithEicar('utf8-rcpt'), { ...meta, recipients: ['jürgen@exämple.org'] }), { SMTPUTF8: true });
  assert.deepEqual(await release(mailWithEicar('utf8-to'), meta, ['jürgen@exämple.org']), { SMTPUTF8: true });
  assert.deepEqual(await release(mailWithEicar('utf8-sender'), { ...meta, sender: 'jürgen@exämple.org' }), { SMTPUTF8: true });
  await q.close();
});

test('contentNeeds: the header block ends at the first empty line, however the chunks fall', async () => {
  const needs = (...chunks: string[]) => contentNeeds(Readable.from(chunks.map((c) => Buffer.from(c, 'utf8'))));
  assert.deepEqual(await needs('Subject: a\r', '\n', '\r', '\nü'), { eightBit: true, utf8Headers: false });
  assert.deepEqual(await needs('Subject: a\r\n\r', '\nü'), { eightBit: true, utf8Headers: false });
  assert.deepEqual(await needs('Subject: a\n', '\nü'), { eightBit: true, utf8Headers: false }, 'bare LF');
  assert.deepEqual(await needs('\r\nSubject: ü'), { eightBit: true, utf8Headers: false }, 'no header block at all');
  assert.deepEqual(await needs('Subject: a\r\n', 'X-Y: ü\r\n', '\r\nbody'), { eightBit: true, utf8Headers: true });
  assert.deepEqual(await needs('Subject: ü'), { eightBit: true, utf8Headers: true }, 'headers only');
  assert.deepEqual(await needs('Subject: a\r\n\r\nbody\r\n'), { eightBit: false, utf8Headers: false });
});

test('restore: a file item to a new path (0600), never over an existing file unless overwrite', async () => {
  const { q } = await fresh();
  const original = eicarBytes();
  const { id } = await q.put(Readable.from([original]), fileMeta);
  const target = join(base, `restored-${n}.com`);
  await restoreItem(q, id, target, { actor: 'cli:t' });
  assert.deepEqual(await readFile(target), original);
  assert.equal(await mode(target), 0o600);
  await assert.rejects(restoreItem(q, id, target, { actor: 'cli:t' }), /exists/);
  await writeFile(target, 'changed');
  await restoreItem(q, id, target, { overwrite: true, actor: 'cli:t' });
  assert.deepEqual(await readFile(target), original);
  await assert.rejects(restoreItem(q, id, 'relative/path', { actor: 'cli:t' }), /absolute/);
  const mail = await q.put(Readable.from([Buffer.from('m')]), meta);
  await assert.rejects(restoreItem(q, mail.id, join(base, `mail-${n}`), { actor: 'cli:t' }), /mail message/);
  assert.deepEqual(
    (await q.auditTrail(id)).map((a) => a.action),
    ['put', 'restore', 'restore'],
  );
  await q.close();
});

test('export: a ZipCrypto archive the reference decoders open only with the password', async () => {
  const { q } = await fresh();
  const original = Buffer.concat([eicarBytes(), Buffer.alloc(70_000, 0x41), Buffer.from([0, 1, 2, 255])]);
  const { id } = await q.put(Readable.from([original]), { ...fileMeta, fileName: '../../etc/evil name.com' });
  const item = (await q.get(id))!;
  const zip = await bytes(exportZip(item, 'infected'));
  assert.equal(zip.indexOf(eicarBytes().subarray(0, 40)), -1, 'the archive does not hold the plaintext');
  assert.equal(zip.readUInt32LE(0), 0x04034b50);
  assert.equal(zip.readUInt16LE(6) & 1, 1, 'encrypted flag');
  // Our own decryption of the entry gives the bytes back (the header's check byte included).
  const nameLen = zip.readUInt16LE(26);
  assert.equal(zip.subarray(30, 30 + nameLen).toString(), 'evil name.com');
  const data = zip.subarray(30 + nameLen, 30 + nameLen + zip.readUInt32LE(18));
  const plain = new ZipCrypto(Buffer.from('infected')).decrypt(data);
  assert.deepEqual(plain.subarray(12), original);
  const path = join(base, `export-${n}.zip`);
  await writeFile(path, zip);
  const py = (pw: string | null) =>
    spawnSync(
      'python3',
      ['-c', 'import zipfile,sys\nz=zipfile.ZipFile(sys.argv[1])\npw=sys.argv[2].encode() if len(sys.argv)>2 else None\nsys.stdout.buffer.write(z.read(z.namelist()[0], pwd=pw))', path, ...(pw === null ? [] : [pw])],
      { maxBuffer: 1 << 24 },
    );
  const ok = py('infected');
  if (ok.error) return; // no python3 here: the own-decoder check above stands
  assert.equal(ok.status, 0, ok.stderr.toString());
  assert.deepEqual(ok.stdout, original);
  assert.notEqual(py(null).status, 0);
  assert.notEqual(py('wrong').status, 0);
  const unzip = spawnSync('unzip', ['-p', '-P', 'infected', path], { maxBuffer: 1 << 24 });
  if (!unzip.error) {
    assert.equal(unzip.status, 0, unzip.stderr.toString());
    assert.deepEqual(unzip.stdout, original);
    const noPw = spawnSync('unzip', ['-p', '-P', '', path], { maxBuffer: 1 << 24 });
    assert.notDeepEqual(noPw.stdout, original);
    const t = spawnSync('unzip', ['-t', '-P', 'infected', path], { encoding: 'utf8' });
    assert.equal(t.status, 0, t.stdout);
  }
  await q.close();
});

// A damaged record, or a restore target the store cannot write.

/** Edits the item row behind the store's back, as a damaged or hand-edited database would. */
function editRow(dir: string, id: string, column: string, value: string): void {
  const db = new Database(join(dir, 'quarantine.sqlite'));
  try {
    db.pragma('foreign_keys = OFF');
    db.prepare(`UPDATE items SET ${column} = ? WHERE id = ?`).run(value, id);
  } finally {
    db.close();
  }
}

const quarantineError = (err: unknown) => err instanceof AvgateError && err.code === 'AVG_ERR_QUARANTINE';

test('restore into a directory that does not exist is AVG_ERR_QUARANTINE (a refusal), and leaves nothing', async () => {
  const { q } = await fresh();
  const { id } = await q.put(Readable.from([eicarBytes()]), fileMeta);
  const target = join(base, 'no-such-dir', 'eicar.com');
  await assert.rejects(restoreItem(q, id, target, { actor: 'cli:t' }), (err) => quarantineError(err) && /no-such-dir/.test((err as Error).message));
  assert.equal(existsSync(join(base, 'no-such-dir')), false);
  await q.close();
});

test('a record whose lists are not JSON is AVG_ERR_QUARANTINE, not a parser crash', async () => {
  const { q, dir } = await fresh();
  const { id } = await q.put(Readable.from([eicarBytes()]), fileMeta);
  editRow(dir, id, 'virus_names', '{not json');
  await assert.rejects(q.get(id), (err) => quarantineError(err) && /damaged/.test((err as Error).message));
  await assert.rejects(q.list(), quarantineError);
  await q.close();
});

test('a record naming an object outside objects/ is refused: nothing outside is read or deleted', async () => {
  const { q, root, dir } = await fresh();
  const { id } = await q.put(Readable.from([eicarBytes()]), fileMeta);
  const victim = join(root, 'victim');
  await writeFile(victim, 'not the quarantine\'s\n');
  editRow(dir, id, 'object', '../../victim');
  await assert.rejects(q.get(id), quarantineError);
  await assert.rejects(q.remove(id, 'cli:t'), quarantineError);
  assert.equal(await readFile(victim, 'utf8'), 'not the quarantine\'s\n');
  await assert.rejects(q.purge({ olderThanMs: 0, actor: 'cli:t' }), quarantineError);
  assert.equal(existsSync(victim), true);
  await q.close();
});

test('an object removed while its item is read (a purge meanwhile) is AVG_ERR_QUARANTINE, not a raw ENOENT', async () => {
  const { q, dir } = await fresh();
  const { id } = await q.put(Readable.from([eicarBytes()]), fileMeta);
  const item = await q.get(id);
  assert.ok(item);
  for (const name of await readdir(join(dir, 'objects'))) await rm(join(dir, 'objects', name));
  await assert.rejects(
    (async () => {
      for await (const chunk of item.open() as AsyncIterable<Buffer>) void chunk;
    })(),
    (err) => quarantineError(err) && /removed/.test((err as Error).message),
  );
  await q.close();
});

test('put once: the same bytes for the same source and recipients make no second item until the first is released', async () => {
  const { q } = await fresh();
  const meta = { ...fileMeta, source: 'imap' as const, recipients: ['bob'] };
  const body = Buffer.alloc(500, 7);
  const first = await q.put(Readable.from([body]), meta, { once: true });
  assert.equal(first.existing, undefined);
  const again = await q.put(Readable.from([body]), meta, { once: true });
  assert.deepEqual(again, { id: first.id, existing: true });
  // Released: the next put keeps an item of its own again.
  await q.audit({ itemId: first.id, action: 'release', actor: 'test', detail: { ok: true } });
  const after = await q.put(Readable.from([body]), meta, { once: true });
  assert.notEqual(after.id, first.id);
  assert.equal(after.existing, undefined);
  // Another recipient, another source, other bytes, or a put without `once`: items of their own.
  assert.equal((await q.put(Readable.from([body]), { ...meta, recipients: ['carol'] }, { once: true })).existing, undefined);
  assert.equal((await q.put(Readable.from([body]), { ...meta, source: 'pop3' }, { once: true })).existing, undefined);
  assert.equal((await q.put(Readable.from([Buffer.alloc(500, 8)]), meta, { once: true })).existing, undefined);
  assert.equal((await q.put(Readable.from([body]), meta)).existing, undefined);
  assert.equal((await q.list()).length, 6);
  await q.close();
});

test('purge plans page by page: past the first page of items the plan and the purge still agree', async () => {
  const { q } = await fresh();
  const ids: string[] = [];
  for (let i = 0; i < 1205; i++) ids.push((await q.put(Readable.from([Buffer.from(`item ${i}`)]), fileMeta)).id);
  const total = (await q.usage()).bytes;
  // Keep about the newest 100 items' bytes: the plan crosses the 1000-row page.
  const keep = Buffer.byteLength('item 1100') * 100;
  const dry = await q.purge({ maxTotalSize: keep, dryRun: true });
  assert.ok(dry.removed > 1000 && dry.removed < 1205, String(dry.removed));
  assert.deepEqual(dry.ids, ids.slice(0, dry.removed), 'oldest first');
  const done = await q.purge({ maxTotalSize: keep });
  assert.deepEqual(done, { removed: dry.removed, bytes: dry.bytes });
  assert.ok((await q.usage()).bytes <= keep && total > keep);
  await q.close();
});
