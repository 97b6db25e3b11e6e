import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { runSignaturesCommand } from '../../src/cli/signatures.js';
import { configWarnings } from '../../src/config/check.js';
import { parseConfigText } from '../../src/config/loader.js';
import { databaseFingerprint, UPDATING_MARKER, UPDATING_STALE_MS } from '../../src/engines/clamd/fingerprint.js';

test('database fingerprint: changes with a database file, ignores other files, is null while a fresh update marker is there', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-fp-'));
  try {
    await writeFile(join(dir, 'a.ndb'), 'A:0:*:4142\n');
    const one = await databaseFingerprint(dir);
    assert.match(one ?? '', /^[0-9a-f]{16}$/);
    await writeFile(join(dir, 'notes.txt'), 'not loaded by clamd');
    assert.equal(await databaseFingerprint(dir), one, 'a file clamd does not load changes nothing');
    await writeFile(join(dir, 'b.hdb'), '44d88612fea8a8f36de82e1278abb02f:68:B\n');
    const two = await databaseFingerprint(dir);
    assert.notEqual(two, one);
    await writeFile(join(dir, UPDATING_MARKER), '1\n');
    assert.equal(await databaseFingerprint(dir), null, 'no fingerprint while the updater works');
    const old = new Date(Date.now() - UPDATING_STALE_MS - 60_000);
    await utimes(join(dir, UPDATING_MARKER), old, old);
    assert.equal(await databaseFingerprint(dir), two, 'a marker left by a dead updater is ignored');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('database fingerprint: of contents, not times (nodes sharing verdicts download the same files at their own time)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-fp-'));
  try {
    await writeFile(join(dir, 'a.ndb'), 'A:0:*:4142\n');
    const one = await databaseFingerprint(dir);
    const past = new Date(Date.now() - 86_400_000);
    await utimes(join(dir, 'a.ndb'), past, past);
    assert.equal(await databaseFingerprint(dir), one, 'the same bytes at another mtime');
    await writeFile(join(dir, 'a.ndb'), 'A:0:*:4143\n');
    await utimes(join(dir, 'a.ndb'), past, past);
    assert.notEqual(await databaseFingerprint(dir), one, 'other bytes of the same size');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('config check warns about signature sources nobody uses and an interval without sources', () => {
  const warn = (yaml: string) => configWarnings(parseConfigText(yaml, 'x.yaml')).filter((w) => w.startsWith('signatures'));
  assert.deepEqual(warn('signatures: {sources: [{url: "http://127.0.0.1/a.ndb"}], interval: 1h}\n'), []);
  assert.match(warn('clamd: {managed: false}\nsignatures: {sources: [{url: "http://127.0.0.1/a.ndb"}]}\n')[0] ?? '', /are not used: .*clamd\.managed: true/);
  assert.match(warn('signatures: {interval: 1h}\n')[0] ?? '', /interval is set but signatures\.sources is empty/);
});

test('avgate signatures update/status refuse options they do not take (exit 2), instead of ignoring them', async () => {
  const config = parseConfigText('signatures: {sources: [{url: "http://127.0.0.1:9/a.ndb"}]}\n', 'x.yaml');
  for (const args of [['update', '--force'], ['status', '--json']]) {
    const err: string[] = [];
    const sink = (to: string[]) => ({ write: (s: string) => to.push(s) }) as unknown as NodeJS.WritableStream;
    assert.equal(await runSignaturesCommand(config, args, { stdout: sink([]), stderr: sink(err) }), 2, args.join(' '));
    assert.match(err.join(''), new RegExp(`avgate signatures ${args[0]}: unexpected "${args[1]}"`));
  }
});

test('database fingerprint: a FIFO under a database name is not read (it would wait for a writer for ever)', { timeout: 10_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-fp-fifo-'));
  try {
    await writeFile(join(dir, 'a.ndb'), 'A:0:*:4142\n');
    execFileSync('mkfifo', [join(dir, 'held.hdb')]);
    assert.match((await databaseFingerprint(dir)) ?? '', /^[0-9a-f]{16}$/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
