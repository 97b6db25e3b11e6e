import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../../src/config/loader.js';
import { controlRequest } from '../../src/control/server.js';
import { silentLogger } from '../../src/core/logging.js';
import { clamdRequest } from '../../src/engines/clamd/connection.js';
import { serve } from '../../src/main.js';
import { icapExchange } from '../helpers/icap-client.js';
import { waitFor } from '../helpers/wait.js';

const ROOT = new URL('../..', import.meta.url).pathname;
const CLI = join(ROOT, 'test/helpers/cli.ts');

/** Runs the CLI from source; resolves with its exit code and output. */
function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The part of `avgate status --json` the test reads. */
interface StatusJson {
  config: string | null;
  clamdPid: number | null;
  frontEnds: Record<string, { listen: string; port: number | null; connections: number | null } | null>;
  reloads: { applied: number; unchanged: number; failed: number; lastOk: boolean };
}

interface Served {
  child: ChildProcess;
  exited: Promise<number | null>;
  icapPort: number;
  clamdPid: number;
  stderr: () => string;
}

async function startServe(config: string, logFile: string): Promise<Served> {
  const before = await readFile(logFile, 'utf8').catch(() => '');
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, '--config', config, 'serve'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 120_000;
  try {
    for (;;) {
      const text = (await readFile(logFile, 'utf8').catch(() => '')).slice(before.length);
      const ready = text.split('\n').find((l) => l.includes('"msg":"avgate ready"'));
      if (ready) {
        const line = JSON.parse(ready) as { icapPort: number; clamdPid: number };
        return { child, exited, icapPort: line.icapPort, clamdPid: line.clamdPid, stderr: () => stderr };
      }
      assert.ok(Date.now() < deadline && child.exitCode === null, `serve did not get ready: ${stderr} ${text.slice(-1500)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    throw err;
  }
}

async function maxConnections(port: number): Promise<string | undefined> {
  const r = await icapExchange(port, [`OPTIONS icap://127.0.0.1:${port}/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n`]);
  r.socket.destroy();
  assert.equal(r.responses[0]?.head.status, 200);
  return r.responses[0]?.head.headers.get('max-connections')?.[0];
}

test('avgate status, reload and stop reach the running serve over its control socket; a second serve on the same state-dir is refused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-ctl-'));
  const state = join(dir, 'state');
  const config = join(dir, 'avgate.yaml');
  const logFile = join(dir, 'avgate.log');
  const base = [`state-dir: ${state}`, 'log:', '  level: info', `  file: ${logFile}`, 'clamd:', '  tcp-port: 0', 'icap:', '  listen: 127.0.0.1:0']
    .concat(['smtp', 'console', 'ftp-proxy', 'http-proxy', 'pop3-proxy', 'imap-proxy'].flatMap((s) => [`${s}:`, '  enabled: false']))
    .join('\n');
  await writeFile(config, base);
  const socketPath = join(state, 'avgate.ctl');
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  const busyPort = (busy.address() as net.AddressInfo).port;
  let served: Served | null = null;
  try {
    const none = await cli(['--config', config, 'status']);
    assert.equal(none.code, 3, none.stderr);
    assert.match(none.stdout, /avgate is not running \(no answer on .*avgate\.ctl\)/);

    served = await startServe(config, logFile);
    const { child, icapPort, clamdPid } = served;
    assert.equal(statSync(socketPath).mode & 0o777, 0o600, 'only its owner may reach it');
    // What serve creates is not for other users (URLs, user names, verdicts): umask 027.
    assert.equal(statSync(logFile).mode & 0o007, 0, 'the log file is not world-readable');
    assert.equal(statSync(join(state, 'cache.sqlite')).mode & 0o007, 0, 'nor the verdict cache');

    const st = await cli(['--config', config, 'status']);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, new RegExp(`running, pid ${child.pid}, up `));
    assert.match(st.stdout, new RegExp(`icap +127\\.0\\.0\\.1:${icapPort} +0 connection`));
    assert.match(st.stdout, /smtp +off/);
    assert.match(st.stdout, /clamav +healthy, signatures /);
    assert.match(st.stdout, new RegExp(`project-local clamd: pid ${clamdPid}`));
    assert.match(st.stdout, /^node: \S+$/m);
    assert.match(st.stdout, /^verdict cache: memory \+ sqlite$/m);
    assert.match(st.stdout, /^statistics: sqlite, \d+ buffered, 0 dropped$/m);
    const js = JSON.parse((await cli(['--config', config, 'status', '--json'])).stdout) as StatusJson;
    assert.equal(js.frontEnds['icap']?.port, icapPort);
    assert.equal(js.frontEnds['http-proxy'], null);
    assert.equal(js.config, config);

    // A second serve on the same state-dir: refused before it starts anything (it used to stop
    // the first one's clamd as a leftover, and take its spool and databases).
    const second = await cli(['--config', config, 'serve']);
    assert.equal(second.code, 2);
    assert.match(second.stderr, new RegExp(`another avgate \\(pid ${child.pid}\\) already serves from this state-dir`));
    assert.equal((await clamdRequest({ kind: 'unix', path: join(state, 'clamd', 'clamd.sock') }, 'PING', { timeoutMs: 2000 })).trim(), 'PONG');
    assert.equal((JSON.parse((await cli(['--config', config, 'status', '--json'])).stdout) as StatusJson).clamdPid, clamdPid, 'the same clamd');

    // reload: applied, then unchanged.
    await writeFile(config, base.replace('  listen: 127.0.0.1:0', '  listen: 127.0.0.1:0\n  max-connections: 77'));
    const applied = await cli(['--config', config, 'reload']);
    assert.equal(applied.code, 0, applied.stderr);
    assert.equal(applied.stdout, 'configuration reloaded; changed: icap\n');
    assert.equal(await maxConnections(icapPort), '77', 'the reloaded setting on the same port');
    // logrotate moved the log away: `avgate reload` (ExecReload, postrotate) reopens it as SIGHUP does.
    await rename(logFile, `${logFile}.1`);
    const same = await cli(['--config', config, 'reload']);
    assert.equal(same.code, 0);
    assert.equal(same.stdout, 'configuration unchanged: nothing rebuilt\n');
    assert.match(await waitFor('the reopened log file', async () => (await readFile(logFile, 'utf8').catch(() => '')) || null), /"signal":"control".*"msg":"log files reopened"/);

    // Refused by the running avgate (its port is taken): the reason comes back, exit 1.
    await writeFile(config, (await readFile(config, 'utf8')).replace('http-proxy:\n  enabled: false', `http-proxy:\n  listen: 127.0.0.1:${busyPort}`));
    const refused = await cli(['--config', config, 'reload']);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /avgate reload: .*EADDRINUSE/);
    const after = JSON.parse((await cli(['--config', config, 'status', '--json'])).stdout) as StatusJson;
    assert.deepEqual([after.reloads.applied, after.reloads.unchanged, after.reloads.failed, after.reloads.lastOk], [1, 1, 1, false]);
    assert.equal(after.frontEnds['http-proxy'], null, 'the running configuration stays');
    assert.equal(await maxConnections(icapPort), '77');
    // Refused by the command itself (the file does not validate): the running avgate is not asked.
    await writeFile(config, `${base}\nstop-timeout: 1s\n`);
    const invalid = await cli(['--config', config, 'reload']);
    assert.equal(invalid.code, 1);
    assert.match(invalid.stderr, /stop-timeout: at least 5s[\s\S]*the running avgate was not asked to reload/);
    // status and stop still find it: they need only state-dir and control-socket.
    const midEdit = await cli(['--config', config, 'status']);
    assert.equal(midEdit.code, 0, midEdit.stderr);
    assert.match(midEdit.stderr, /using the file's state-dir and control-socket to find the running avgate/);
    assert.match(midEdit.stdout, new RegExp(`running, pid ${child.pid}`));
    await writeFile(config, base);

    // stop: graceful, waits until the process is gone.
    const stopped = await cli(['--config', config, 'stop']);
    assert.equal(stopped.code, 0, stopped.stderr);
    assert.equal(stopped.stdout, `avgate (pid ${child.pid}) stopped\n`);
    assert.equal(await served.exited, 0, served.stderr());
    assert.match(served.stderr(), /avgate stop \(control socket\), stopping/);
    assert.equal(existsSync(socketPath), false, 'the socket file is removed');
    assert.throws(() => process.kill(clamdPid, 0), 'its clamd is stopped too');
    assert.match(await readFile(logFile, 'utf8'), /"node":"[^"]+".*"msg":"avgate stopped"/, 'every line names the node (stats.node, the hostname)');
    assert.equal((await cli(['--config', config, 'stop'])).code, 3, 'nothing left to stop');

    // kill -9 leaves the socket file: status says not running, and the next serve starts.
    served = await startServe(config, logFile);
    served.child.kill('SIGKILL');
    await served.exited;
    assert.ok(statSync(socketPath).isSocket(), 'left behind');
    assert.equal((await cli(['--config', config, 'status'])).code, 3);
    served = await startServe(config, logFile);
    const quick = await cli(['--config', config, 'stop', '--no-wait']);
    assert.equal(quick.code, 0);
    assert.equal(quick.stdout, `avgate (pid ${served.child.pid}) stopping\n`);
    assert.equal(await served.exited, 0);
    served = null;

    // Two started at the same moment on one state-dir: one serves, the other is refused (it
    // used to start too, and the two stopped each other's clamd).
    const racers = [0, 1].map(() => {
      const c = spawn(process.execPath, ['--import', 'tsx', CLI, '--config', config, 'serve'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d: Buffer) => (err += d.toString()));
      return { c, exited: new Promise<number | null>((resolve) => c.once('exit', (code) => resolve(code))), err: () => err };
    });
    try {
      const first = await Promise.race(racers.map(async (r, i) => ({ i, code: await r.exited })));
      assert.equal(first.code, 2, racers[first.i]?.err());
      assert.match(racers[first.i]?.err() ?? '', /another avgate( \(pid \d+\))? (is starting with|already serves from) this state-dir/);
      const winner = racers[1 - first.i] as (typeof racers)[number];
      for (let i = 0; i < 1200 && (await cli(['--config', config, 'status'])).stdout.match(/running, pid/) === null; i++) await new Promise((r) => setTimeout(r, 100));
      const st2 = await cli(['--config', config, 'status']);
      assert.match(st2.stdout, new RegExp(`running, pid ${winner.c.pid}`), st2.stdout + st2.stderr + winner.err());
      assert.equal((await cli(['--config', config, 'stop'])).code, 0);
      assert.equal(await winner.exited, 0, winner.err());
    } finally {
      for (const r of racers) r.c.kill('SIGKILL');
    }
  } finally {
    served?.child.kill('SIGKILL');
    await served?.exited;
    busy.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('in-process serve: the stop command runs serve\'s own stop; control-socket null opens none', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-ctl-ip-'));
  const config = join(dir, 'avgate.yaml');
  const lines = [`state-dir: ${join(dir, 'state')}`, 'log:', '  level: silent', 'clamd:', '  tcp-port: 0', 'icap:', '  listen: 127.0.0.1:0']
    .concat(['smtp', 'console', 'ftp-proxy', 'http-proxy', 'pop3-proxy', 'imap-proxy'].flatMap((s) => [`${s}:`, '  enabled: false']));
  try {
    await writeFile(config, lines.join('\n'));
    const serving = await serve(await loadConfig(config), { logger: silentLogger() });
    const clamdPid = serving.runtime.clamd?.pid;
    assert.ok(typeof clamdPid === 'number');
    const path = join(dir, 'state', 'avgate.ctl');
    const reply = await controlRequest(path, 'stop', 5000);
    assert.equal(reply['ok'], true);
    assert.equal(reply['waitMs'], 10_000);
    // The stop closes the socket last.
    for (let i = 0; i < 200 && existsSync(path); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(existsSync(path), false);
    await serving.stop(); // the same stop, already done
    assert.throws(() => process.kill(clamdPid, 0), 'clamd stopped');

    await writeFile(config, [...lines, 'control-socket: null'].join('\n'));
    const bare = await serve(await loadConfig(config), { logger: silentLogger() });
    try {
      assert.equal(existsSync(path), false);
      const r = await cli(['--config', config, 'status']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /control-socket is null in this config/);
    } finally {
      await bare.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('stop-delay: /healthz answers 503 stopping while the front ends still serve, then the stop closes them; avgate stop counts the delay in waitMs', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-ctl-delay-'));
  const config = join(dir, 'avgate.yaml');
  const lines = [`state-dir: ${join(dir, 'state')}`, 'log:', '  level: silent', 'clamd:', '  tcp-port: 0', 'icap:', '  listen: 127.0.0.1:0', 'console:', '  listen: 127.0.0.1:0', 'stop-delay: 1500ms']
    .concat(['smtp', 'ftp-proxy', 'http-proxy', 'pop3-proxy', 'imap-proxy'].flatMap((s) => [`${s}:`, '  enabled: false']));
  try {
    await writeFile(config, lines.join('\n'));
    const serving = await serve(await loadConfig(config), { logger: silentLogger() });
    const consolePort = serving.consolePort as number;
    const icapPort = serving.icapPort as number;
    const health = async () => {
      const r = await fetch(`http://127.0.0.1:${consolePort}/healthz`);
      return { code: r.status, body: (await r.json()) as { status: string } };
    };
    assert.deepEqual(await health().then((h) => [h.code, h.body.status]), [200, 'ok']);
    const started = Date.now();
    const reply = await controlRequest(join(dir, 'state', 'avgate.ctl'), 'stop', 5000);
    assert.equal(reply['waitMs'], 11_500, 'stop-timeout 10 s plus stop-delay 1.5 s');
    await waitFor('healthz to say stopping', async () => ((await health()).body.status === 'stopping' ? true : null), 1000);
    assert.equal((await health()).code, 503);
    // Meanwhile a new ICAP connection is still served.
    const options = await icapExchange(icapPort, [`OPTIONS icap://127.0.0.1:${icapPort}/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n`]);
    options.socket.destroy();
    assert.equal(options.responses[0]?.head.status, 200);
    await serving.stop();
    assert.ok(Date.now() - started >= 1500, 'the listeners closed only after stop-delay');
    const refused = (port: number) =>
      new Promise<string>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => (s.destroy(), resolve('connected')));
        s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
      });
    assert.deepEqual([await refused(consolePort), await refused(icapPort)], ['ECONNREFUSED', 'ECONNREFUSED'], 'the console and ICAP listeners are closed after the stop');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** Pids of the clamd processes started with this clamd.conf. */
function clamdsOf(conf: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmd.some((a) => a.endsWith('clamd')) && cmd.includes(conf)) pids.push(Number(entry));
    } catch {
      // ended meanwhile
    }
  }
  return pids;
}

test('a stop during start-up (clamd still loading its database) stops that clamd too; a SIGHUP then waits until avgate is ready', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-ctl-start-'));
  const state = join(dir, 'state');
  const db = join(dir, 'db');
  const config = join(dir, 'avgate.yaml');
  const logFile = join(dir, 'avgate.log');
  const conf = join(state, 'clamd', 'clamd.conf');
  // A named pipe as the database: clamd's open() of it waits for a writer, so the start-up is
  // held for as long as the test wants.
  execFileSync('mkdir', ['-p', db]);
  const hold = join(db, 'hold.hdb');
  execFileSync('mkfifo', [hold]);
  const text = [`state-dir: ${state}`, 'log:', '  level: info', `  file: ${logFile}`, 'clamd:', `  database: ${db}`, '  tcp-port: 0', 'icap:', '  listen: 127.0.0.1:0']
    .concat(['smtp', 'console', 'ftp-proxy', 'http-proxy', 'pop3-proxy', 'imap-proxy'].flatMap((s) => [`${s}:`, '  enabled: false']))
    .join('\n');
  await writeFile(config, text);
  const children: ChildProcess[] = [];
  /** Starts serve and waits until its clamd runs (and waits on the pipe). */
  const startHeld = async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, '--config', config, 'serve'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(child);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let pids: number[] = [];
    for (let i = 0; i < 600 && pids.length === 0; i++) {
      assert.equal(child.exitCode, null, stderr);
      await new Promise((r) => setTimeout(r, 100));
      pids = clamdsOf(conf);
    }
    assert.equal(pids.length, 1, `one clamd waits on the pipe: ${stderr}`);
    return { child, exited, clamdPid: pids[0] as number, stderr: () => stderr };
  };
  try {
    // SIGTERM: node's default would end avgate at once and leave its clamd (own process group).
    const a = await startHeld();
    const st = await cli(['--config', config, 'status']);
    assert.equal(st.code, 0, st.stderr);
    assert.equal(st.stdout, `avgate (pid ${a.child.pid}) is starting: not serving yet\n`);
    a.child.kill('SIGTERM');
    assert.equal(await a.exited, 0, a.stderr());
    assert.match(a.stderr(), /avgate: SIGTERM during start-up, stopping/);
    assert.throws(() => process.kill(a.clamdPid, 0), 'its clamd is stopped too');
    assert.deepEqual(clamdsOf(conf), []);
    assert.equal(existsSync(join(state, 'avgate.ctl')), false, 'the socket file is removed');
    assert.match(await readFile(logFile, 'utf8'), /"msg":"avgate stopped during start-up"/);

    // avgate stop: taken while starting (it used to be refused until ready).
    const b = await startHeld();
    const stopped = await cli(['--config', config, 'stop']);
    assert.equal(stopped.code, 0, stopped.stderr);
    assert.equal(stopped.stdout, `avgate (pid ${b.child.pid}) stopped\n`);
    assert.equal(await b.exited, 0, b.stderr());
    assert.throws(() => process.kill(b.clamdPid, 0), 'its clamd is stopped too');

    // SIGHUP (logrotate's, a reload) while starting: it used to end avgate; now it is acted on
    // once avgate is ready.
    const c = await startHeld();
    c.child.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(c.child.exitCode, null, `still running: ${c.stderr()}`);
    // Let clamd read one signature and go on; the pipe is swapped for a plain file first (the
    // engine reads the database files for its fingerprint once clamd answers).
    const writer = await open(hold, 'w');
    await writeFile(join(db, 'next.tmp'), '44d88612fea8a8f36de82e1278abb02f:68:Held.Test\n');
    await rename(join(db, 'next.tmp'), hold);
    await writer.writeFile('44d88612fea8a8f36de82e1278abb02f:68:Held.Test\n');
    await writer.close();
    for (let i = 0; i < 600 && !(await readFile(logFile, 'utf8')).includes('"msg":"reload: the configuration and the files it names are unchanged'); i++) await new Promise((r) => setTimeout(r, 100));
    const log = await readFile(logFile, 'utf8');
    const ready = log.lastIndexOf('"msg":"avgate ready"');
    assert.ok(ready > 0, log.slice(-2000));
    assert.ok(log.indexOf('"msg":"log files reopened"', ready) > ready, 'the SIGHUP is acted on once ready');
    assert.ok(log.indexOf('"msg":"reload: the configuration and the files it names are unchanged', ready) > ready, log.slice(ready));
    assert.equal((await cli(['--config', config, 'stop'])).code, 0);
    assert.equal(await c.exited, 0, c.stderr());
  } finally {
    for (const ch of children) ch.kill('SIGKILL');
    for (const pid of clamdsOf(conf)) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});
