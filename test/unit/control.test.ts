import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { runControlCommand } from '../../src/cli/control.js';
import { controlRequest, openControlSocket, socketAddress, type ControlHandlers, type ControlOptions } from '../../src/control/server.js';
import { silentLogger } from '../../src/core/logging.js';

const dir = mkdtempSync(join(tmpdir(), 'avgate-ctl-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(dir, `c${++n}.ctl`);

const handlers = (over: Partial<ControlHandlers> = {}): ControlHandlers => ({
  status: () => ({ ok: true, pid: 4242 }),
  reload: () => ({ ok: true, result: 'unchanged' }),
  stop: () => ({ ok: true, stopping: true }),
  signatures: () => ({ ok: true, engines: 1 }),
  ...over,
});

/** openControlSocket with these handlers set at once (as serve does once ready). */
async function listen(path: string, h: ControlHandlers, opts: ControlOptions = {}) {
  const srv = await openControlSocket(path, silentLogger(), opts);
  srv.setHandlers(h);
  return srv;
}

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
    const srv = await listen(
      path,
      handlers({
        reload: async () => {
          calls.push('reload');
          await new Promise((r) => setTimeout(r, 20));
          return { ok: true, result: 'applied', changed: ['icap'] };
        },
      }),
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
    const srv = await listen(path, handlers({ stop: () => Promise.reject(new Error('boom')) }));
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

  test('open: a stale socket file is replaced; a live one, one bound meanwhile, or a plain file is refused', async () => {
    // A socket file whose server was killed (kill -9 leaves the file): replaced.
    const leftover = fresh();
    const killed = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(leftover)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    assert.equal(killed.signal, 'SIGKILL');
    assert.ok(statSync(leftover).isSocket(), 'the socket file is left behind');
    const taken = await listen(leftover, handlers());
    assert.equal((await controlRequest(leftover, 'status', 2000))['pid'], 4242, 'the new server answers there');

    // A live one: refused, and it keeps its socket.
    await assert.rejects(openControlSocket(leftover, silentLogger()), (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONTROL' && /another avgate \(pid 4242\) already serves from this state-dir/.test(err.message));
    assert.equal((await controlRequest(leftover, 'status', 2000))['pid'], 4242);
    await taken.close();

    // Two opening at once: binding decides, exactly one gets it.
    const both = fresh();
    const results = await Promise.allSettled([openControlSocket(both, silentLogger()), openControlSocket(both, silentLogger())]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.equal(won.length, 1);
    assert.equal(lost.length, 1);
    assert.match(String(lost[0]?.reason), /another avgate .*is starting with this state-dir/);
    // Until serve sets its handlers: status says starting, the others wait for it.
    assert.deepEqual(await controlRequest(both, 'status', 2000), { ok: true, pid: process.pid, starting: true });
    assert.match(String((await controlRequest(both, 'reload', 2000))['error']), /avgate is starting; try again once it is ready/);
    await assert.rejects(openControlSocket(both, silentLogger()), /another avgate \(pid \d+\) is starting with this state-dir/);
    await (won[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof openControlSocket>>>).value.close();

    const file = fresh();
    writeFileSync(file, 'not a socket');
    await assert.rejects(openControlSocket(file, silentLogger()), /exists and is not a socket/);
    assert.ok(existsSync(file), 'a plain file is left alone');

    // Something that accepts but never answers: not taken away from it.
    const mute = fresh();
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(mute, r));
    try {
      await assert.rejects(openControlSocket(mute, silentLogger(), { probeTimeoutMs: 300 }), /in use but did not answer/);
      assert.ok(existsSync(mute));
    } finally {
      silent.close();
    }
  });

  test('two opening at once after a crash: the lock lets one have the socket; a lock of a live pid refuses, of a dead one is taken over', async () => {
    const leftover = fresh();
    const killed = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(leftover)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    assert.equal(killed.signal, 'SIGKILL');
    const results = await Promise.allSettled([openControlSocket(leftover, silentLogger()), openControlSocket(leftover, silentLogger())]);
    const won = results.filter((r): r is PromiseFulfilledResult<Awaited<ReturnType<typeof openControlSocket>>> => r.status === 'fulfilled');
    assert.equal(won.length, 1, JSON.stringify(results.map((r) => r.status)));
    assert.match(String((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason), /another avgate .*is starting with this state-dir/);
    assert.equal((await controlRequest(leftover, 'status', 2000))['starting'], true, 'the winner answers on it');
    assert.equal(existsSync(`${leftover}.lock`), false, 'the lock is released');
    await won[0]?.value.close();

    // A lock held by a live process refuses; one of a process that is gone is taken over.
    const locked = fresh();
    writeFileSync(`${locked}.lock`, `${process.pid}\n`);
    await assert.rejects(openControlSocket(locked, silentLogger()), new RegExp(`another avgate \\(pid ${process.pid}\\) is starting with this state-dir \\(.*\\.lock exists\\)`));
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    writeFileSync(`${locked}.lock`, `${gone}\n`);
    const srv = await openControlSocket(locked, silentLogger());
    await srv.close();
    assert.equal(existsSync(`${locked}.lock`), false);
    // Without a pid (being written): held while fresh, taken over when old.
    writeFileSync(`${locked}.lock`, '');
    await assert.rejects(openControlSocket(locked, silentLogger()), /is starting with this state-dir/);
    const old = new Date(Date.now() - 60_000);
    utimesSync(`${locked}.lock`, old, old);
    await (await openControlSocket(locked, silentLogger())).close();
    // A link to nothing: refused, not a loop.
    symlinkSync(join(dir, 'nowhere'), `${locked}.lock`);
    await assert.rejects(openControlSocket(locked, silentLogger()), /is starting with this state-dir/);
    rmSync(`${locked}.lock`);
  });

  test('the CLI: a serve still starting is shown as such; with a guessed state-dir, no answer is exit 1, not 3', async () => {
    const path = fresh();
    const srv = await openControlSocket(path, silentLogger());
    const io = () => {
      let out = '';
      let err = '';
      const sink = (f: (s: string) => void) => new Writable({ write: (c: Buffer, _e, cb) => (f(c.toString()), cb()) });
      return { io: { stdout: sink((x) => (out += x)), stderr: sink((x) => (err += x)) }, out: () => out, err: () => err };
    };
    const target = { 'state-dir': dir, 'control-socket': path, 'stop-timeout': 10_000 };
    try {
      const a = io();
      assert.equal(await runControlCommand(target, 'status', [], a.io), 0);
      assert.equal(a.out(), `avgate (pid ${process.pid}) is starting: not serving yet\n`);
      const b = io();
      assert.equal(await runControlCommand(target, 'stop', [], b.io), 1);
      assert.match(b.err(), /avgate is starting; try again once it is ready/);
    } finally {
      await srv.close();
    }
    const c = io();
    assert.equal(await runControlCommand(target, 'status', [], c.io), 3);
    const d = io();
    assert.equal(await runControlCommand(target, 'status', [], d.io, true), 1);
    assert.match(d.err(), /the config does not validate, so its state-dir may not be the running avgate's/);
  });

  test('a command slower than the request timeout is still answered; peers that keep their side open are cut', async () => {
    const path = fresh();
    const srv = await listen(
      path,
      handlers({
        reload: async () => {
          await new Promise((r) => setTimeout(r, 700));
          return { ok: true, result: 'applied' };
        },
      }),
      { requestTimeoutMs: 300 },
    );
    try {
      assert.deepEqual(await controlRequest(path, 'reload', 5000), { ok: true, result: 'applied' }, 'the request timeout ends with the command line');
      // A client that reads the answer but never closes: the server does not keep it.
      const held = net.connect({ path, allowHalfOpen: true });
      let text = '';
      held.setEncoding('utf8');
      held.on('data', (d: string) => (text += d));
      held.write('status\n');
      for (let i = 0; i < 100 && text === ''; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal((JSON.parse(text) as { pid: number }).pid, 4242);
      assert.equal(srv.connections, 1, 'still open right after the answer');
      const t0 = Date.now();
      while (srv.connections > 0 && Date.now() - t0 < 6000) await new Promise((r) => setTimeout(r, 50));
      assert.equal(srv.connections, 0, 'the server let it go');
      assert.ok(Date.now() - t0 >= 1000, 'after the linger time');
      held.destroy();
    } finally {
      await srv.close();
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
      const srv = await listen(path, handlers());
      assert.ok(statSync(path).isSocket(), 'the file is where the config says');
      assert.equal((await controlRequest(path, 'status', 2000))['pid'], 4242);
      await srv.close();
      assert.equal(existsSync(path), false);
    } finally {
      process.chdir(cwd);
      rmSync(base, { recursive: true, force: true });
    }
  });

  test('at most 16 connections at once: one more is closed unanswered, and the socket serves again once they are gone', async () => {
    const path = fresh();
    const srv = await listen(path, handlers(), { requestTimeoutMs: 10_000 });
    const idle: net.Socket[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        const c = net.connect(path);
        c.on('error', () => undefined);
        await new Promise((r) => c.once('connect', r));
        idle.push(c);
      }
      for (let i = 0; i < 100 && srv.connections < 16; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(srv.connections, 16);
      const extra = await new Promise<{ text: string; closed: boolean }>((resolve) => {
        const c = net.connect(path);
        let text = '';
        c.setEncoding('utf8');
        c.on('data', (d: string) => (text += d));
        c.on('error', () => undefined);
        c.on('connect', () => c.write('status\n'));
        c.on('close', () => resolve({ text, closed: true }));
        setTimeout(() => {
          c.destroy();
          resolve({ text, closed: false });
        }, 3000).unref();
      });
      assert.deepEqual(extra, { text: '', closed: true }, 'the 17th is closed unanswered');
      for (const c of idle) c.destroy();
      for (let i = 0; i < 100 && srv.connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal((await controlRequest(path, 'status', 2000))['pid'], 4242);
    } finally {
      for (const c of idle) c.destroy();
      await srv.close();
    }
  });

  test('a client that sends no line is answered with an error after the request timeout', async () => {
    const path = fresh();
    const srv = await listen(path, handlers(), { requestTimeoutMs: 400 });
    try {
      const started = Date.now();
      const text = await raw(path, 'stat', 5_000);
      assert.match(text, /no command line within 400 ms/);
      assert.ok(Date.now() - started >= 350);
    } finally {
      await srv.close();
    }
  });
});
