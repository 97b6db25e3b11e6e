import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { claimControlSocket, controlRequest, listenControlSocket, socketAddress, type ControlHandlers } from '../../src/control/server.js';
import { silentLogger } from '../../src/core/logging.js';

const dir = mkdtempSync(join(tmpdir(), 'avgate-ctl-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(dir, `c${++n}.ctl`);

const handlers = (over: Partial<ControlHandlers> = {}): ControlHandlers => ({
  status: () => ({ ok: true, pid: 4242 }),
  reload: () => ({ ok: true, result: 'unchanged' }),
  stop: () => ({ ok: true, stopping: true }),
  ...over,
});

/** Sends raw bytes and returns everything the server wrote before closing. */
function raw(path: string, bytes: string, waitMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    let text = '';
    s.setEncoding('utf8');
    s.on('connect', () => s.write(bytes));
    s.on('data', (d: string) => (text += d));
    s.on('close', () => resolve(text));
    s.on('error', reject);
    setTimeout(() => {
      s.destroy();
      resolve(text);
    }, waitMs).unref();
  });
}

describe('control socket', () => {
  test('answers each command with one JSON line and closes; the file is mode 0600 and removed at close', async () => {
    const path = fresh();
    const calls: string[] = [];
    const srv = await listenControlSocket(
      path,
      handlers({
        reload: async () => {
          calls.push('reload');
          await new Promise((r) => setTimeout(r, 20));
          return { ok: true, result: 'applied', changed: ['icap'] };
        },
      }),
      silentLogger(),
    );
    try {
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.deepEqual(await controlRequest(path, 'status', 2000), { ok: true, pid: 4242 });
      assert.deepEqual(await controlRequest(path, 'reload', 2000), { ok: true, result: 'applied', changed: ['icap'] });
      assert.deepEqual(calls, ['reload']);
      // The line may come in pieces, with CRLF.
      assert.equal(await raw(path, 'sta', 300), '', 'no answer before the end of the line');
      const pieces = await new Promise<string>((resolve) => {
        const s = net.connect(path);
        let t = '';
        s.setEncoding('utf8');
        s.on('data', (d: string) => (t += d));
        s.on('close', () => resolve(t));
        s.write('sta');
        setTimeout(() => s.write('tus\r\n'), 30);
      });
      assert.deepEqual(JSON.parse(pieces), { ok: true, pid: 4242 });
    } finally {
      await srv.close();
    }
    assert.equal(existsSync(path), false, 'the socket file is removed');
  });

  test('refuses unknown commands, over-long lines, and reports a handler that throws', async () => {
    const path = fresh();
    const srv = await listenControlSocket(path, handlers({ stop: () => Promise.reject(new Error('boom')) }), silentLogger());
    try {
      const unknown = JSON.parse(await raw(path, 'shutdown-now\n')) as Record<string, unknown>;
      assert.equal(unknown['ok'], false);
      assert.match(String(unknown['error']), /unknown command "shutdown-now"; known: status, reload, stop/);
      const long = JSON.parse(await raw(path, 'x'.repeat(300))) as Record<string, unknown>;
      assert.match(String(long['error']), /longer than 256 bytes/);
      assert.deepEqual(await controlRequest(path, 'stop', 2000), { ok: false, error: 'boom' });
      // Still serving after all that.
      assert.equal((await controlRequest(path, 'status', 2000))['pid'], 4242);
    } finally {
      await srv.close();
    }
  });

  test('claim: nothing there or a stale socket file is fine, a live one or a plain file is refused', async () => {
    await claimControlSocket(fresh());
    // A socket file whose server was killed (kill -9 leaves the file): removed, then claimable.
    const leftover = fresh();
    const killed = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(leftover)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    assert.equal(killed.signal, 'SIGKILL');
    assert.ok(statSync(leftover).isSocket(), 'the socket file is left behind');
    await claimControlSocket(leftover);
    assert.equal(existsSync(leftover), false, 'the stale file was removed');

    const live = fresh();
    const running = await listenControlSocket(live, handlers(), silentLogger());
    try {
      await assert.rejects(claimControlSocket(live), (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONTROL' && /another avgate \(pid 4242\) already serves from this state-dir/.test(err.message));
    } finally {
      await running.close();
    }
    const file = fresh();
    writeFileSync(file, 'not a socket');
    await assert.rejects(claimControlSocket(file), /exists and is not a socket/);
    assert.ok(existsSync(file), 'a plain file is left alone');

    // Something that accepts but never answers: not taken away from it.
    const mute = fresh();
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(mute, r));
    try {
      await assert.rejects(claimControlSocket(mute, 300), /in use but did not answer/);
      assert.ok(existsSync(mute));
    } finally {
      silent.close();
    }
  });

  test('a path over the unix socket limit is used relative to the working directory, or refused', () => {
    assert.throws(() => socketAddress(join('/', 'd'.repeat(200), 'x.ctl')), /longer than 107 bytes .*set control-socket/);
    assert.equal(socketAddress('/tmp/x.ctl'), '/tmp/x.ctl');
    const rel = socketAddress(join(process.cwd(), 'e'.repeat(100), 'x.ctl'));
    assert.equal(rel, join('e'.repeat(100), 'x.ctl'));
  });

  test('a server on such a long path is reached by a client in the same working directory', async () => {
    const base = mkdtempSync(join(tmpdir(), 'avgate-ctl-deep-'));
    const deepDir = join(base, 'f'.repeat(95));
    mkdirSync(deepDir);
    const path = join(deepDir, 'avgate.ctl');
    assert.ok(Buffer.byteLength(path) > 107);
    const cwd = process.cwd();
    process.chdir(base);
    try {
      const srv = await listenControlSocket(path, handlers(), silentLogger());
      assert.ok(statSync(path).isSocket(), 'the file is where the config says');
      assert.equal((await controlRequest(path, 'status', 2000))['pid'], 4242);
      await srv.close();
      assert.equal(existsSync(path), false);
    } finally {
      process.chdir(cwd);
      rmSync(base, { recursive: true, force: true });
    }
  });

  test('a client that sends no line is answered with an error after the request timeout', { timeout: 15_000 }, async () => {
    const path = fresh();
    const srv = await listenControlSocket(path, handlers(), silentLogger());
    try {
      const started = Date.now();
      const text = await raw(path, '', 10_000);
      assert.match(text, /no command line within 5000 ms/);
      assert.ok(Date.now() - started >= 4_000);
    } finally {
      await srv.close();
    }
  });
});
