import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../src/config/loader.js';
import { silentLogger } from '../../src/core/logging.js';
import { clamdRequest } from '../../src/engines/clamd/connection.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { serve } from '../../src/main.js';
import { icapExchange } from '../helpers/icap-client.js';
import { selfSignedCert } from '../helpers/tls.js';
import { closedPort } from '../helpers/fault-server.js';

const ROOT = new URL('../..', import.meta.url).pathname;

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'test/helpers/cli.ts'), ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('avgate serve and the config commands', () => {
  let dir: string;
  let configPath: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-serve-'));
    configPath = join(dir, 'avgate.yaml');
    await writeFile(
      configPath,
      [`state-dir: ${join(dir, 'state')}`, 'log:', '  level: silent', 'clamd:', '  tcp-port: 0', 'health:', '  interval: 1s', 'icap:', '  listen: 127.0.0.1:0', 'smtp:', '  listen: 127.0.0.1:0', 'console:', '  listen: 127.0.0.1:0', 'ftp-proxy:', '  listen: 127.0.0.1:0', 'http-proxy:', '  listen: 127.0.0.1:0', 'pop3-proxy:', '  listen: 127.0.0.1:0', 'imap-proxy:', '  listen: 127.0.0.1:0', ''].join('\n'),
    );
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('serve starts the project-local clamd with the test database, scans, and stops it cleanly', async () => {
    const loaded = await loadConfig(configPath);
    const { runtime, stop, imapProxyPort, icapPort, smtpPort, consolePort } = await serve(loaded, { logger: silentLogger() });
    assert.ok(typeof imapProxyPort === 'number' && imapProxyPort > 0, 'the IMAP proxy is bound');
    const clamd = runtime.clamd;
    assert.ok(clamd, 'serve started a clamd');
    assert.equal((await clamdRequest(clamd.unixAddress, 'PING', { timeoutMs: 2000 })).trim(), 'PONG');
    assert.equal((await clamdRequest(clamd.tcpAddress, 'PING', { timeoutMs: 2000 })).trim(), 'PONG');
    const conf = await readFile(clamd.confPath, 'utf8');
    assert.match(conf, /^TCPAddr 127\.0\.0\.1$/m, 'clamd listens on loopback only');
    assert.equal((await runtime.scanner.scan({ source: { kind: 'buffer', data: eicarBytes() } })).status, 'found');
    assert.equal((await runtime.scanner.scan({ source: { kind: 'buffer', data: randomBytes(100) } })).status, 'free');

    // /metrics: the front ends' counters and open connections, and the engines' health.
    const options = await icapExchange(icapPort as number, [`OPTIONS icap://127.0.0.1:${icapPort}/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n`]);
    options.socket.destroy();
    const smtp = connect(smtpPort as number, '127.0.0.1');
    await new Promise<void>((r) => smtp.once('data', () => r()));
    try {
      let metrics = '';
      for (let i = 0; i < 50 && !/^avgate_engine_up\{engine="clamav"\} 1$/m.test(metrics); i++) {
        metrics = await (await fetch(`http://127.0.0.1:${consolePort}/metrics`)).text();
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(metrics, /^avgate_engine_up\{engine="clamav"\} 1$/m, 'after its first health check');
      assert.match(metrics, /^avgate_engine_failed_checks\{engine="clamav"\} 0$/m);
      assert.match(metrics, /^avgate_engine_signature_info\{engine="clamav",version="ClamAV [\d.]+\/db:[0-9a-f]{16}"\} 1$/m);
      assert.match(metrics, /^avgate_build_info\{version="[^"]+",node="[^"]+"\} 1$/m);
      assert.match(metrics, /^avgate_frontend_events_total\{frontend="icap",event="byMethod:OPTIONS"\} 1$/m);
      assert.match(metrics, /^avgate_frontend_events_total\{frontend="smtp",event="deferred"\} 0$/m);
      assert.match(metrics, /^avgate_frontend_connections\{frontend="smtp"\} 1$/m, 'the session held open');
      assert.match(metrics, /^avgate_frontend_connections\{frontend="http-proxy"\} 0$/m);
      assert.match(metrics, /^# TYPE avgate_frontend_events_total counter$/m);
    } finally {
      smtp.destroy();
    }
    const pid = clamd.pid as number;
    await stop();
    assert.throws(() => process.kill(pid, 0), 'clamd is gone after stop');
    assert.equal(existsSync(clamd.socketPath), false, 'clamd removed its socket');
  });

  test('config check validates and pings the engines; config show prints the effective values', () => {
    const check = cli(['--config', configPath, 'config', 'check']);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.match(check.stdout, /syntax and keys OK/);
    assert.match(check.stdout, /engine clamav \(clamd-net\): OK \(PONG; signatures ClamAV [\d.]+\/db:[0-9a-f]+\)/);
    const show = cli(['config', 'show'], { AVGATE_CONFIG: configPath });
    assert.equal(show.code, 0);
    assert.match(show.stdout, /max-checked-size: 104857600/);
  });

  test('config check tries the servers the front ends hand on to: a greeting is shown, one that does not answer is a warning', async () => {
    // A greeting server in a child process (the check runs with spawnSync, which holds this one).
    const sink = spawn(process.execPath, ['-e', "require('net').createServer((s) => s.end('220 sink.test ESMTP ready\\r\\n')).listen(0, '127.0.0.1', function () { console.log(this.address().port); })"], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const port = Number(await new Promise<string>((r) => sink.stdout.once('data', (d: Buffer) => r(d.toString().trim()))));
      const closed = await closedPort();
      const file = join(dir, 'peers.yaml');
      const base = await readFile(configPath, 'utf8');
      const state = join(dir, 'state-check');
      await writeFile(
        file,
        base
          .replace(`state-dir: ${join(dir, 'state')}`, `state-dir: ${state}`)
          .replace('smtp:\n', `smtp:\n  next-hop: {target: "smtp:127.0.0.1:${port}"}\n`)
          .replace('imap-proxy:\n', `imap-proxy:\n  upstream: 127.0.0.1:${closed}\n`),
      );
      const r = cli(['--config', file, 'config', 'check']);
      assert.equal(r.code, 0, 'a server that is not up yet is no config error');
      assert.match(r.stdout, /engine clamav \(clamd-net\): OK/, 'a clamd of its own to load the database');
      assert.equal(existsSync(join(state, 'cache.sqlite')), false, 'no verdict cache file left behind');
      assert.match(r.stdout, new RegExp(`^smtp\\.next-hop smtp:127\\.0\\.0\\.1:${port}: OK \\(greets "220 sink\\.test ESMTP ready"\\)$`, 'm'));
      assert.match(r.stdout, new RegExp(`^warning: imap-proxy\\.upstream 127\\.0\\.0\\.1:${closed}: ECONNREFUSED: does not answer now \\(clients get \\* BYE until it does\\)$`, 'm'));
    } finally {
      sink.kill();
    }
  });

  test('config check reads the TLS files: a good pair is OK, a missing key file fails the check (exit 1) naming its key', async () => {
    const { cert, key } = await selfSignedCert(dir);
    const base = await readFile(configPath, 'utf8');
    const good = join(dir, 'tls-good.yaml');
    await writeFile(good, base.replace('smtp:\n', `smtp:\n  tls: {cert: ${cert}, key: ${key}}\n`));
    const ok = cli(['--config', good, 'config', 'check']);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /^tls smtp\.tls: CN=avgate\.test, valid until \d{4}-\d\d-\d\d: OK$/m);
    const bad = join(dir, 'tls-bad.yaml');
    await writeFile(bad, base.replace('imap-proxy:\n', `imap-proxy:\n  tls: {cert: ${cert}, key: ${join(dir, 'no-key.pem')}}\n`));
    const r = cli(['--config', bad, 'config', 'check']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /^tls FAILED: imap-proxy\.tls\.key: cannot read .*no-key\.pem: ENOENT$/m);
    assert.match(r.stdout, /engine clamav \(clamd-net\): OK/, 'the engines are still checked');
  });

  test('config check pings an engine used only by an ICAP service too (it used to check scan.engines alone)', async () => {
    const closed = await closedPort();
    const file = join(dir, 'service-engine.yaml');
    const base = await readFile(configPath, 'utf8');
    await writeFile(
      file,
      `${base.replace('icap:\n  listen: 127.0.0.1:0\n', `icap:\n  listen: 127.0.0.1:0\n  services:\n    avscan: {}\n    ext:\n      engines: [ext]\n`)}engines:\n  clamav:\n    type: clamd-net\n    options: {address: local}\n  ext:\n    type: clamd-net\n    options: {address: "127.0.0.1:${closed}", connect-timeout: 1s}\n`.replace(`state-dir: ${join(dir, 'state')}`, `state-dir: ${join(dir, 'state-ext')}`),
    );
    const r = cli(['--config', file, 'config', 'check']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /^engine clamav \(clamd-net\): OK/m);
    assert.match(r.stdout, /^engine ext \(clamd-net\): FAILED: .*ECONNREFUSED/m);
  });

  test('a config with an unknown key is refused with its line, exit code 2', async () => {
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'scan:\n  max-checked-size: 1MiB\n  scan-timout: 5s\n');
    const r = cli(['--config', bad, 'config', 'check']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /bad\.yaml:3: scan\.scan-timout: unknown key/);
  });

  test('an engine that does not answer makes config check fail (exit 1) and names it', async () => {
    const down = join(dir, 'down.yaml');
    await writeFile(
      down,
      'clamd:\n  managed: false\nengines:\n  clamav:\n    type: clamd-net\n    options:\n      address: 127.0.0.1:1\n      connect-timeout: 1s\n',
    );
    const r = cli(['--config', down, 'config', 'check']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /engine clamav \(clamd-net\): FAILED: tcp:127\.0\.0\.1:1: ECONNREFUSED/);
  });

  test('unknown commands and a missing config file are usage errors', () => {
    assert.equal(cli(['frobnicate']).code, 2);
    const r = cli(['--config', join(dir, 'missing.yaml'), 'config', 'check']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /cannot read config .*missing\.yaml: ENOENT/);
  });
});

describe('avgate serve: SIGHUP', () => {
  test('reopens the main log and the access logs (logrotate), reads the config file again, and serve goes on', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'avgate-hup-'));
    const state = join(dir, 'state');
    const config = join(dir, 'avgate.yaml');
    await writeFile(
      config,
      [`state-dir: ${state}`, 'log:', '  level: info', `  file: ${join(dir, 'avgate.log')}`, 'clamd:', '  tcp-port: 0', 'icap:', '  listen: 127.0.0.1:0', '  access-log: icap-access.log']
        .concat(['smtp', 'console', 'ftp-proxy', 'http-proxy', 'pop3-proxy', 'imap-proxy'].flatMap((s) => [`${s}:`, '  enabled: false']))
        .join('\n'),
    );
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/helpers/cli.ts'), '--config', config, 'serve'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const read = (name: string) => readFile(join(dir, name), 'utf8').catch(() => '');
    const until = async (name: string, re: RegExp): Promise<string> => {
      const deadline = Date.now() + 120_000;
      for (;;) {
        const text = await read(name);
        if (re.test(text)) return text;
        assert.ok(Date.now() < deadline && child.exitCode === null, `no ${re} in ${name}: ${text.slice(-1500)} ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    const options = async (port: number) => {
      const r = await icapExchange(port, [`OPTIONS icap://127.0.0.1:${port}/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n`]);
      r.socket.destroy();
      assert.equal(r.responses[0]?.head.status, 200);
      return r.responses[0]?.head.headers.get('max-connections')?.[0];
    };
    try {
      const port = Number(/"icapPort":(\d+)/.exec(await until('avgate.log', /"msg":"avgate ready"/))?.[1]);
      assert.equal(await options(port), '200');
      await until('state/icap-access.log', / avscan OPTIONS 200 /);
      // The file changes too: the same SIGHUP applies it.
      await writeFile(config, (await readFile(config, 'utf8')).replace('  access-log: icap-access.log', '  access-log: icap-access.log\n  max-connections: 77'));
      // logrotate without copytruncate: move the files away, then SIGHUP.
      await rename(join(dir, 'avgate.log'), join(dir, 'avgate.log.1'));
      await rename(join(state, 'icap-access.log'), join(state, 'icap-access.log.1'));
      process.kill(child.pid as number, 'SIGHUP');
      const fresh = await until('avgate.log', /"msg":"log files reopened"/);
      assert.match(fresh, /"files":3/, "the main log, the ICAP access log and the project-local clamd's log");
      assert.match(await until('avgate.log', /"msg":"configuration reloaded"/), /"changed":\["icap"\]/);
      assert.equal(await options(port), '77', 'the reloaded ICAP settings, on the same port');
      await until('state/icap-access.log', / avscan OPTIONS 200 /);
      assert.equal((await read('state/icap-access.log.1')).split('\n').filter(Boolean).length, 1, 'the rotated file keeps the old line only');
      assert.equal(child.exitCode, null, 'still serving after SIGHUP');
      child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
      assert.match(await read('avgate.log'), /"msg":"avgate stopped"/, 'the stop is logged in the new file');
    } finally {
      child.kill('SIGKILL');
      await exited;
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('npm start', () => {
  test('brings up clamd and avgate serve with the embedded defaults; Ctrl-C (SIGINT to the group) stops both', async () => {
    const child = spawn('npm', ['start'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let log = '';
    child.stdout.on('data', (d: Buffer) => (log += d.toString()));
    child.stderr.on('data', (d: Buffer) => (log += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      const deadline = Date.now() + 240_000;
      while (!/"msg":"avgate ready"/.test(log) && Date.now() < deadline && child.exitCode === null) {
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.match(log, /"msg":"avgate ready"/, log.slice(-2000));
      const pid = Number(/"clamdPid":(\d+)/.exec(log)?.[1]);
      assert.ok(pid > 0);
      const pong = await clamdRequest({ kind: 'tcp', host: '127.0.0.1', port: 3310 }, 'PING', { timeoutMs: 2000 });
      assert.equal(pong.trim(), 'PONG', 'the project-local clamd listens on its default port 3310');
      assert.match(log, /"httpProxyPort":3128/, 'the HTTP proxy serves on its default port');
      const options = await icapExchange(1344, ['OPTIONS icap://127.0.0.1:1344/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n']);
      options.socket.destroy();
      assert.equal(options.responses[0]?.head.status, 200, 'ICAP service avscan on its default port 1344');
      process.kill(-(child.pid as number), 'SIGINT');
      const stopped = await Promise.race([exited.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 60_000).unref())]);
      assert.ok(stopped, `avgate did not stop within 60 s of SIGINT:\n${log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 200));
      assert.throws(() => process.kill(pid, 0), 'clamd stopped with avgate');
      assert.match(log, /"msg":"avgate stopped"/);
    } finally {
      try {
        process.kill(-(child.pid as number), 'SIGKILL');
      } catch {
        // the group is gone already: the normal case
      }
    }
  });
});
