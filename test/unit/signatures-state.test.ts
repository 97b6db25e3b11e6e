import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { signaturesSchema } from '../../src/config/signatures-schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { readUpdaterState, SignatureUpdater } from '../../src/signatures/updater.js';

/** The updater's state.json is read back as data, not trusted: names in it are only database file names. */

let base: string;
before(async () => {
  base = await mkdtemp(join(tmpdir(), 'avgate-sigstate-'));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

const entry = { url: 'http://127.0.0.1:9/x.ndb', etag: null, lastModified: null, sha256: '0'.repeat(64), size: 1, installedAt: '2024-01-01T00:00:00.000Z' };

test('a state.json naming ../ paths: the update removes nothing outside the database directory', async () => {
  const dbDir = join(base, 'db');
  const stateDir = join(base, 'state');
  await mkdir(dbDir, { recursive: true });
  await mkdir(stateDir, { recursive: true });
  const victim = join(base, 'victim.ndb');
  await writeFile(victim, 'not the updater\'s\n');
  await writeFile(join(dbDir, 'gone.ndb'), 'installed by the updater once\n');
  await writeFile(join(stateDir, 'state.json'), JSON.stringify({ files: { '../victim.ndb': entry, [`${base}/victim.ndb`]: entry, 'gone.ndb': entry } }));
  assert.deepEqual(Object.keys((await readUpdaterState(stateDir)).files), ['gone.ndb']);
  const updater = new SignatureUpdater({
    config: signaturesSchema.parse({ sources: [], 'test-load': false }),
    dbDir,
    stateDir,
    reload: async () => false,
    log: silentLogger(),
  });
  const report = await updater.update();
  assert.equal(await readFile(victim, 'utf8'), 'not the updater\'s\n');
  assert.deepEqual(
    report.sources.map((s) => [s.name, s.outcome]),
    [['gone.ndb', 'removed']],
  );
});
