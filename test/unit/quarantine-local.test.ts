import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { LocalDirQuarantine } from '../../src/quarantine/local-dir.js';
import type { QuarantineMeta } from '../../src/quarantine/types.js';

let base: string;
before(async () => {
  base = await mkdtemp(join(tmpdir(), 'avgate-quarantine-'));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

const meta: QuarantineMeta = {
  sender: 'alice@example.org',
  recipients: ['bob@example.com', 'carol@example.com'],
  group: 'default',
  statuses: ['infected', 'error'],
  virusNames: ['Win.Test.EICAR_HDB-1'],
  messageId: '<m1@example.org>',
  subject: 'Hello',
  queueId: '4Q1',
};

async function bytes(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777;

test('put a stream, get it back with its record; files 0600 in a 0700 directory', async () => {
  const dir = join(base, 'q1');
  const q = await LocalDirQuarantine.open(dir);
  assert.equal(await mode(dir), 0o700);
  const body = Buffer.from('Subject: Hello\r\n\r\nbody\r\n');
  const { id } = await q.put(Readable.from([body.subarray(0, 5), body.subarray(5)]), meta);
  assert.match(id, /^\d{8}T\d{6}Z-[0-9a-f]{16}$/);
  const item = await q.get(id);
  assert.ok(item);
  assert.deepEqual(await bytes(item.open()), body);
  assert.equal(item.record.size, body.length);
  assert.equal(item.record.sha256, createHash('sha256').update(body).digest('hex'));
  assert.deepEqual({ ...item.record, id: undefined, date: undefined, size: undefined, sha256: undefined }, { ...meta, note: null, id: undefined, date: undefined, size: undefined, sha256: undefined });
  assert.ok(Math.abs(Date.parse(item.record.date) - Date.now()) < 60_000);
  const files = (await readdir(dir)).sort();
  assert.deepEqual(files, [`${id}.eml`, `${id}.json`], 'no temporary files left');
  for (const f of files) assert.equal(await mode(join(dir, f)), 0o600, f);
});

test('put a spooled file by path; list oldest first; remove', async () => {
  const dir = join(base, 'q2');
  const q = await LocalDirQuarantine.open(dir);
  const spooled = join(base, 'spooled.eml');
  await writeFile(spooled, 'x'.repeat(100_000));
  const a = await q.put(spooled, { ...meta, subject: 'first' });
  const b = await q.put(Readable.from([Buffer.from('second')]), { ...meta, subject: null });
  const list = await q.list();
  assert.deepEqual(list.map((r) => r.id), [a.id, b.id].sort());
  assert.equal(list.find((r) => r.id === a.id)?.size, 100_000);
  assert.equal(await q.remove(a.id), true);
  assert.equal(await q.remove(a.id), false);
  assert.equal(await q.get(a.id), null);
  assert.deepEqual((await q.list()).map((r) => r.id), [b.id]);
});

test('an existing directory is tightened to 0700; ids cannot name other files', async () => {
  const dir = join(base, 'q3');
  await mkdir(dir, { mode: 0o755 });
  await LocalDirQuarantine.open(dir);
  assert.equal(await mode(dir), 0o700);
  const q = await LocalDirQuarantine.open(dir);
  await writeFile(join(base, 'outside.json'), JSON.stringify({ id: '../outside' }));
  for (const id of ['../outside', '/etc/passwd', '', '20250701T120000Z-0123456789abcdeg', '20250701T120000Z-0123456789abcdef/../x']) {
    assert.equal(await q.get(id), null, id);
    assert.equal(await q.remove(id), false, id);
  }
  assert.equal(await q.get('20250701T120000Z-0123456789abcdef'), null, 'well-formed but unknown');
});

test('a failing source leaves nothing behind', async () => {
  const dir = join(base, 'q4');
  const q = await LocalDirQuarantine.open(dir);
  const broken = new Readable({
    read() {
      this.destroy(new Error('spool file vanished'));
    },
  });
  await assert.rejects(q.put(broken, meta), /spool file vanished/);
  assert.deepEqual(await readdir(dir), []);
  await assert.rejects(q.put(join(base, 'no-such-spool.eml'), meta), /ENOENT/);
  assert.deepEqual(await readdir(dir), []);
  assert.deepEqual(await q.list(), []);
});

test('a damaged record is skipped by list, not fatal', async () => {
  const dir = join(base, 'q5');
  const q = await LocalDirQuarantine.open(dir);
  const { id } = await q.put(Readable.from([Buffer.from('m')]), meta);
  await writeFile(join(dir, '20200101T000000Z-0000000000000000.json'), '{not json');
  assert.deepEqual((await q.list()).map((r) => r.id), [id]);
});
