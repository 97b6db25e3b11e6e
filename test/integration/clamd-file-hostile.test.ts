import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { ClamdFileEngine } from '../../src/engines/clamd/file.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startFaultServer, type FaultServer } from '../helpers/fault-server.js';

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

/** A fake clamd: hands the path of each `zSCAN <path>\0` command to `answer`. */
function onScanCommand(answer: (socket: Socket, path: string) => void): (socket: Socket) => void {
  return (socket) => {
    let buf = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const nul = buf.indexOf(0);
      if (nul < 0) return;
      const cmd = buf.subarray(0, nul).toString('latin1');
      buf = buf.subarray(nul + 1);
      assert.ok(cmd.startsWith('zSCAN '), cmd);
      answer(socket, cmd.slice('zSCAN '.length));
    });
  };
}

describe('clamd-file against broken or hostile peers', () => {
  let clamd: TestClamd;
  let dir: string;
  const servers: FaultServer[] = [];
  const fault = async (fn: (socket: Socket) => void) => {
    const s = await startFaultServer(fn);
    servers.push(s);
    return s;
  };
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-commdir-hostile-'));
  });
  after(async () => {
    for (const s of servers) await s.close();
    await clamd.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('a comm-dir with non-ASCII characters and spaces works against a real clamd', async () => {
    const commDir = join(dir, 'spool dir ü 目录');
    await mkdir(commDir);
    const e = fileEngine(commDir, `unix:${clamd.socketPath}`);
    await e.init();
    const clean = await scan(e, randomBytes(5000));
    assert.deepEqual(clean.verdict, { status: 'free' });
    const found = await scan(e, eicarBytes());
    assert.equal(found.verdict.status, 'found', JSON.stringify(found.verdict));
    assert.deepEqual(await readdir(commDir), []);
  });

  test('a comm-dir reached through a symbolic link still gets verdicts from a real clamd', async () => {
    const real = join(dir, 'real');
    await mkdir(real);
    const link = join(dir, 'link');
    await symlink(real, link);
    const e = fileEngine(link, `unix:${clamd.socketPath}`);
    await e.init();
    assert.deepEqual((await scan(e, randomBytes(100))).verdict, { status: 'free' });
    assert.equal((await scan(e, eicarBytes())).verdict.status, 'found');
  });

  test('a reply about another file is not a verdict about ours → unknown', async () => {
    const commDir = join(dir, 'other');
    await mkdir(commDir);
    const s = await fault(onScanCommand((sock) => sock.end('/srv/spool/some-other-file: OK\0')));
    const r = await scan(fileEngine(commDir, s.address), randomBytes(100));
    assert.deepEqual(r.verdict, { status: 'unknown', raw: '/srv/spool/some-other-file: OK' });
    const bare = await fault(onScanCommand((sock) => sock.end('OK\0')));
    assert.equal((await scan(fileEngine(commDir, bare.address), randomBytes(100))).verdict.status, 'unknown');
    assert.deepEqual(await readdir(commDir), []);
  });

  test('a reply split across many reads is put together; our own path with FOUND → found', async () => {
    const commDir = join(dir, 'split');
    await mkdir(commDir);
    const s = await fault(
      onScanCommand((sock, path) => {
        const reply = Buffer.from(`${path}: Split.Test.Sig FOUND\0`, 'latin1');
        let i = 0;
        const timer = setInterval(() => {
          if (i >= reply.length || sock.destroyed) {
            clearInterval(timer);
            sock.end();
            return;
          }
          sock.write(reply.subarray(i, i + 7));
          i += 7;
        }, 2);
      }),
    );
    const r = await scan(fileEngine(commDir, s.address), randomBytes(100));
    assert.deepEqual(r.verdict, { status: 'found', names: ['Split.Test.Sig'] });
  });

  test('a reply that never ends → protocol error, bounded, and the spool file is removed', async () => {
    const commDir = join(dir, 'endless');
    await mkdir(commDir);
    const s = await fault(
      onScanCommand((sock, path) => {
        sock.write(`${path}: `);
        const timer = setInterval(() => {
          if (sock.destroyed) clearInterval(timer);
          else sock.write('A'.repeat(16 * 1024));
        }, 1);
      }),
    );
    const r = await scan(fileEngine(commDir, s.address), randomBytes(100), 10_000);
    assert.equal(r.verdict.status === 'error' && r.verdict.code, 'AVG_ERR_ENGINE_PROTOCOL', JSON.stringify(r.verdict));
    assert.deepEqual(await readdir(commDir), []);
  });
});
