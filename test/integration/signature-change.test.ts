import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { VerdictCache } from '../../src/cache/verdict-cache.js';
import { reopenLogFiles, silentLogger } from '../../src/core/logging.js';
import type { Verdict } from '../../src/core/verdict.js';
import { clamdRequest } from '../../src/engines/clamd/connection.js';
import { ClamdNetEngine } from '../../src/engines/clamd/net.js';
import { Scanner, type ScannerLimits } from '../../src/scan/scanner.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';

const LIMITS: ScannerLimits = { maxCheckedSize: 10 * 1024 * 1024, scanTimeoutMs: 10_000, maxConcurrentScans: 4, maxQueue: 16, contextIdleTimeoutMs: 5000 };
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
const reloads = async (c: TestClamd) => ((await readFile(c.clamd.logPath, 'utf8')).match(/Database correctly reloaded/g) ?? []).length;

/**
 * Signature files changed behind avgate's back (an updater of the admin's, a copied .hdb) while
 * clamd still scans with the old ones: no clean verdict may be cached under the new files'
 * fingerprint, or it would be served for what the new signatures detect until cache max-age.
 */
describe('signature files changed outside the updater', () => {
  let clamd: TestClamd;

  before(async () => {
    clamd = await startTestClamd();
  });

  after(async () => {
    await clamd?.stop();
  });

  test('the project-local clamd (no SelfCheck): the engine has it RELOAD, and only then caches under the new files', async () => {
    const engine = new ClamdNetEngine();
    engine.configure([
      { name: 'address', value: `unix:${clamd.socketPath}` },
      { name: 'database-dir', value: clamd.dbDir },
      { name: 'version-check-interval', value: '200ms' },
    ]);
    const errors: unknown[] = [];
    engine.useDatabaseLoader(clamd.clamd, (err) => errors.push(err));
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'clamav', engine }], LIMITS, cache, silentLogger());
    try {
      const x = randomBytes(7000);
      const first = await scanner.scan({ source: { kind: 'buffer', data: x } });
      assert.equal(first.status, 'free');
      assert.equal((await scanner.scan({ source: { kind: 'buffer', data: x } })).cached, true);
      const reloadsBefore = await reloads(clamd);
      await writeFile(join(clamd.dbDir, 'later.hdb'), `${md5(x)}:${x.length}:Avgate.Test.Later\n`);
      // Engines built now (a configuration reload) do not take the files on trust either: what
      // clamd loaded is recorded beside it, not assumed by whoever looks first.
      const fresh = new ClamdNetEngine();
      fresh.configure([
        { name: 'address', value: `unix:${clamd.socketPath}` },
        { name: 'database-dir', value: clamd.dbDir },
      ]);
      fresh.useDatabaseLoader(clamd.clamd, (err) => errors.push(err));
      assert.equal(await fresh.signatureVersion(), null, 'no version for files clamd has not loaded');
      const seen: Verdict[] = [];
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline) {
        const v = await scanner.scan({ source: { kind: 'buffer', data: x } });
        seen.push(v);
        if (v.status === 'found') break;
        await sleep(50);
      }
      const last = seen.at(-1);
      assert.equal(last?.status, 'found', `the new signature answers in the end: ${JSON.stringify(seen.slice(-3))}`);
      assert.match(last?.status === 'found' ? (last.names[0] ?? '') : '', /^Avgate\.Test\.Later/);
      for (const v of seen.filter((s) => s.status === 'free')) {
        assert.equal(v.signatureVersion === first.signatureVersion || v.signatureVersion === null, true, `a clean answer under the new files: ${JSON.stringify(v)}`);
      }
      assert.notEqual(last?.signatureVersion, first.signatureVersion);
      // Once clamd confirmed the RELOAD, the new files make the version, and verdicts are cached again.
      let now: string | null = null;
      for (let i = 0; i < 100 && now === null; i++) {
        now = await engine.signatureVersion();
        if (now === null) await sleep(100);
      }
      assert.match(now ?? '', /\/db:[0-9a-f]{16}$/);
      assert.notEqual(now, first.signatureVersion);
      const n = await reloads(clamd);
      assert.ok(n >= reloadsBefore + 1 && n <= reloadsBefore + 2, `the engines' RELOAD (${n - reloadsBefore})`);
      assert.deepEqual(errors, []);
      await scanner.scan({ source: { kind: 'buffer', data: x } });
      const again = await scanner.scan({ source: { kind: 'buffer', data: x } });
      assert.deepEqual([again.status, again.cached, again.signatureVersion], ['found', true, now]);
    } finally {
      await scanner.close();
    }
  });

  test('another clamd (database-dir, no loader): no version until its VERSION changes or reload-grace has passed', async () => {
    const engine = new ClamdNetEngine();
    engine.configure([
      { name: 'address', value: `unix:${clamd.socketPath}` },
      { name: 'database-dir', value: clamd.dbDir },
      { name: 'version-check-interval', value: '100ms' },
      { name: 'reload-grace', value: '3s' },
    ]);
    const before = await engine.signatureVersion();
    assert.match(before ?? '', /\/db:[0-9a-f]{16}$/);
    const y = randomBytes(3000);
    await writeFile(join(clamd.dbDir, 'other.hdb'), `${md5(y)}:${y.length}:Avgate.Test.Other\n`);
    const changed = Date.now();
    await sleep(150);
    assert.equal(await engine.signatureVersion(), null, 'the files changed; clamd may still scan with the old ones');
    // The admin's updater has clamd load them: VERSION stays the same (no official database), so
    // the grace decides.
    await clamd.reload();
    if (Date.now() - changed < 2500) assert.equal(await engine.signatureVersion(), null);
    await sleep(Math.max(0, 3100 - (Date.now() - changed)));
    await sleep(150);
    const after = await engine.signatureVersion();
    assert.match(after ?? '', /\/db:[0-9a-f]{16}$/);
    assert.notEqual(after, before);
  });

  test('a RELOAD that clamd drops (one already running) is sent again: the files of the moment of reload() are the ones in use after it', async () => {
    const z = randomBytes(4000);
    // A reload already running when ours comes (as when the updater and an engine ask at once);
    // 300 000 hash signatures make it last long enough.
    const many = Array.from({ length: 300_000 }, (_, i) => `${createHash('md5').update(`filler ${i}`).digest('hex')}:${1000 + (i % 5000)}:Avgate.Test.Filler${i}`).join('\n');
    await writeFile(join(clamd.dbDir, 'filler.hdb'), `${many}\n`);
    await clamdRequest({ kind: 'unix', path: clamd.socketPath }, 'RELOAD', { timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 100));
    await writeFile(join(clamd.dbDir, 'racing.hdb'), `${md5(z)}:${z.length}:Avgate.Test.Racing\n`);
    await clamd.reload();
    const e = new ClamdNetEngine();
    e.configure([{ name: 'address', value: `unix:${clamd.socketPath}` }]);
    const ctx = await e.openContext();
    try {
      const r = await e.scan(ctx, Readable.from([z]), { signal: AbortSignal.timeout(5000) });
      assert.equal(r.verdict.status, 'found', JSON.stringify(r.verdict));
    } finally {
      await e.closeContext(ctx);
      await rm(join(clamd.dbDir, 'filler.hdb'), { force: true });
    }
  });

  test('logrotate moved clamd.log away: the reopen (SIGHUP, avgate reload) reaches clamd, and RELOAD is confirmed from the new file', async () => {
    const log = clamd.clamd.logPath;
    await rename(log, `${log}.1`);
    const { failed } = reopenLogFiles();
    assert.deepEqual(failed, []);
    const started = Date.now();
    await clamd.reload();
    assert.ok(Date.now() - started < 30_000);
    assert.ok(existsSync(log), 'clamd writes a new clamd.log');
    assert.equal(await reloads(clamd), 1, 'the confirmation is in the new file');
  });
});
