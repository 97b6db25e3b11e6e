import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { ClamdFileEngine } from '../../src/engines/clamd/file.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { closedPort, startFaultServer } from '../helpers/fault-server.js';

function fileEngine(commDir: string, address: string): ClamdFileEngine {
  const e = new ClamdFileEngine();
  e.configure([
    { name: 'address', value: address },
    { name: 'comm-dir', value: commDir },
  ]);
  return e;
}

const scan = (e: ClamdFileEngine, data: Buffer, timeoutMs = 5000) =>
  e.scan(null, Readable.from([data]), { signal: AbortSignal.timeout(timeoutMs) });

describe('clamd-file', () => {
  let clamd: TestClamd;
  let dir: string;
  let commDir: string;
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-commdir-'));
    commDir = join(dir, 'comm');
    await mkdir(commDir);
  });
  after(async () => {
    await clamd.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('SCAN of a file in comm-dir against a real clamd: free and found; the file is always removed', async () => {
    const e = fileEngine(commDir, `unix:${clamd.socketPath}`);
    await e.init();
    const clean = await scan(e, randomBytes(20_000));
    assert.deepEqual(clean, { verdict: { status: 'free' }, bytes: 20_000 });
    const found = await scan(e, Buffer.concat([Buffer.from('x'), eicarBytes()]));
    assert.equal(found.verdict.status, 'found');
    assert.match(found.verdict.status === 'found' ? (found.verdict.names[0] ?? '') : '', /^Avgate\.Test\.EICAR/);
    assert.deepEqual(await readdir(commDir), []);
  });

  test('startup fails clearly when comm-dir is missing, not a directory, or not writable', async () => {
    const missing = join(dir, 'nope');
    await assert.rejects(fileEngine(missing, `unix:${clamd.socketPath}`).init(), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'AVG_ERR_COMM_DIR');
      assert.ok(err.message.includes(missing), err.message);
      return true;
    });
    const file = join(dir, 'plain-file');
    await writeFile(file, 'x');
    await assert.rejects(fileEngine(file, `unix:${clamd.socketPath}`).init(), { code: 'AVG_ERR_COMM_DIR' });
    await assert.rejects(new ClamdFileEngine().init(), { code: 'AVG_ERR_COMM_DIR' });
    if (process.getuid?.() !== 0) {
      const ro = join(dir, 'ro');
      await mkdir(ro);
      await chmod(ro, 0o555);
      await assert.rejects(fileEngine(ro, `unix:${clamd.socketPath}`).init(), { code: 'AVG_ERR_COMM_DIR' });
    }
  });

  test('engine refused → error, and the spooled file is still removed', async () => {
    const e = fileEngine(commDir, `127.0.0.1:${await closedPort()}`);
    await e.init();
    const r = await scan(e, randomBytes(100));
    assert.equal(r.verdict.status === 'error' ? r.verdict.code : r.verdict.status, 'AVG_ERR_ENGINE_CONNECT');
    assert.deepEqual(await readdir(commDir), []);
  });

  test('garbage reply → unknown; stall → timeout error; the file is removed in both cases', async () => {
    const garbage = await startFaultServer((s) => s.once('data', () => s.end('WHAT?\0')));
    const stall = await startFaultServer((s) => s.resume());
    try {
      const g = await scan(fileEngine(commDir, garbage.address), randomBytes(100));
      assert.deepEqual(g.verdict, { status: 'unknown', raw: 'WHAT?' });
      const t = await scan(fileEngine(commDir, stall.address), randomBytes(100), 300);
      assert.equal(t.verdict.status === 'error' ? t.verdict.code : t.verdict.status, 'AVG_ERR_ENGINE_TIMEOUT');
      assert.deepEqual(await readdir(commDir), []);
    } finally {
      await garbage.close();
      await stall.close();
    }
  });
});
