import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { AvgateError } from '../../src/core/errors.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { restoreItem } from '../../src/quarantine/release.js';
import { EncryptedQuarantine } from '../../src/quarantine/store.js';
import type { QuarantineMeta } from '../../src/quarantine/types.js';

/** The quarantine store given a damaged record or a restore target it cannot write. */

let base: string;
let n = 0;
before(async () => {
  base = await mkdtemp(join(tmpdir(), 'avgate-qdamaged-'));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

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

async function fresh(): Promise<{ q: EncryptedQuarantine; root: string; dir: string }> {
  const root = join(base, `s${++n}`);
  const dir = join(root, 'quarantine');
  return { q: await EncryptedQuarantine.open({ dir, keyFile: join(root, 'quarantine.key') }), root, dir };
}

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
