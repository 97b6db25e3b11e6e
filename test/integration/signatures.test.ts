import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseConfigText } from '../../src/config/loader.js';
import type { Config } from '../../src/config/schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { UPDATING_MARKER } from '../../src/engines/clamd/fingerprint.js';
import { runSignaturesCommand } from '../../src/cli/signatures.js';
import { serve } from '../../src/main.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { SignatureUpdater, signaturesStateDir, updaterFor } from '../../src/signatures/index.js';
import { redirectAllowed } from '../../src/signatures/updater.js';
import { startNginx, type Nginx } from '../../tools/peers/nginx.js';
import { freeLoopbackPort } from '../../src/core/net.js';
import { ConsoleClient } from '../helpers/console.js';
import { startFaultServer } from '../helpers/fault-server.js';
import { waitFor, within } from '../helpers/wait.js';

/** A body signature (.ndb) for a random token, and content carrying it. */
function tokenSignature(name: string): { line: string; content: Buffer } {
  const token = `avgate-update-${randomBytes(12).toString('hex')}`;
  return { line: `${name}:0:*:${Buffer.from(token).toString('hex')}\n`, content: Buffer.from(`some text ${token} more text\n`) };
}

/** Captures what a CLI command writes. */
function io() {
  const out: string[] = [];
  const err: string[] = [];
  const sink = (to: string[]) => ({ write: (s: string) => to.push(s) }) as unknown as NodeJS.WritableStream;
  return { stdout: sink(out), stderr: sink(err), out: () => out.join(''), err: () => err.join('') };
}

describe('signature updater: nginx as the mirror, the project-local clamd, clamscan test loads', () => {
  let dir: string;
  let www: string;
  let nginx: Nginx;
  let runtime: Runtime;
  let base: string;
  const upd = tokenSignature('Avgate.Test.Update');
  const extra = tokenSignature('Avgate.Test.Extra');

  const config = (sources: string, more = ''): Config =>
    parseConfigText(
      [`state-dir: ${join(dir, 'state')}`, 'log: {level: silent}', 'clamd: {tcp-port: 0}', 'signatures:', '  sources:', sources || '    []', more].join('\n'),
      'signatures-test.yaml',
    );
  const src = (name: string, extraKeys = '') => `    - {url: "${nginx.url(name)}"${extraKeys}}`;
  const scan = (data: Buffer) => runtime.scanner.scan({ source: { kind: 'buffer', data } });
  const dbDir = () => runtime.clamd?.dbDir as string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-signatures-'));
    www = join(dir, 'www');
    await mkdir(www, { recursive: true });
    nginx = await within('starting nginx', 60_000, startNginx({ dir: join(dir, 'nginx'), root: www }));
    base = src('avgate-upd.ndb');
    runtime = await within('starting clamd', 150_000, openRuntime(config(base), { logger: silentLogger(), localClamd: 'always' }));
  });
  after(async () => {
    await runtime?.close();
    await nginx?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('a new database file is fetched, test-loaded, installed and loaded by RELOAD; the cached free verdict is not used after it; a second run is a 304', async () => {
    const before = await scan(upd.content);
    assert.equal(before.status, 'free');
    assert.equal((await scan(upd.content)).cached, true, 'the free verdict is cached');
    await writeFile(join(www, 'avgate-upd.ndb'), upd.line);
    const updater = updaterFor(config(base), silentLogger(), runtime.allEngines.map((e) => e.engine));
    const r = await updater.update();
    assert.deepEqual(
      r.sources.map((s) => [s.name, s.outcome]),
      [['avgate-upd.ndb', 'installed']],
    );
    assert.equal(r.reloaded, true);
    assert.equal(r.sources[0]?.sha256, createHash('sha256').update(upd.line).digest('hex'));
    assert.equal(await readFile(join(dbDir(), 'avgate-upd.ndb'), 'utf8'), upd.line);
    assert.equal(existsSync(join(dbDir(), UPDATING_MARKER)), false, 'the marker is gone after the update');
    assert.equal(existsSync(join(dbDir(), '.avgate-staging')), false, 'so is the staging directory');
    const after = await scan(upd.content);
    assert.equal(after.status, 'found');
    assert.equal(after.cached, false, 'the new database means a new cache key');
    assert.match(after.status === 'found' ? (after.names[0] ?? '') : '', /^Avgate\.Test\.Update/);

    const again = await updater.update();
    assert.deepEqual(
      again.sources.map((s) => s.outcome),
      ['unchanged'],
    );
    assert.equal(again.changed, false);
    const access = await readFile(join(dir, 'nginx', 'access.log'), 'utf8');
    assert.match(access.trim().split('\n').at(-1) ?? '', /"GET \/avgate-upd\.ndb HTTP\/1\.1" 304 /, 'the second run asked conditionally and got 304');

    const cli = io();
    assert.equal(await runSignaturesCommand(config(base), ['status'], cli), 0);
    assert.match(cli.out(), /^avgate-upd\.ndb {2}\d+ bytes {2}sha256 [0-9a-f]{16}… {2}\S+ {2}http:\/\/127\.0\.0\.1:\d+\/avgate-upd\.ndb$/m);
  });

  test('a file clamscan cannot load is refused and the one in use stays; a good file next to it is still installed', async () => {
    await writeFile(join(www, 'avgate-upd.ndb'), `${upd.line}Broken.Sig:0:*:zz-not-hex\n`);
    const future = new Date(Date.now() + 5000);
    await utimes(join(www, 'avgate-upd.ndb'), future, future);
    await writeFile(join(www, 'avgate-extra.ndb'), extra.line);
    const cli = io();
    const code = await runSignaturesCommand(config(`${base}\n${src('avgate-extra.ndb')}`), ['update'], cli);
    assert.equal(code, 1, cli.out() + cli.err());
    assert.match(cli.out(), /^failed {4}avgate-upd\.ndb \S+: clamscan cannot load it: .+$/m);
    assert.match(cli.out(), /^installed avgate-extra\.ndb \S+ \(\d+ bytes, sha256 [0-9a-f]{64}\)$/m);
    assert.match(cli.out(), /^clamd reloaded$/m);
    assert.equal(await readFile(join(dbDir(), 'avgate-upd.ndb'), 'utf8'), upd.line, 'the file in use is unchanged');
    // The CLI's updater cannot tell this runtime's engines: wait for the version check to notice.
    runtime.allEngines.forEach((e) => e.engine.invalidateVersion?.());
    assert.equal((await scan(upd.content)).status, 'found');
    assert.equal((await scan(extra.content)).status, 'found');
  });

  test('SHA-256 mismatch, max-size, HTTP 404 and a mirror that is down: each fails alone, nothing changes, exit code 1', async () => {
    await writeFile(join(www, 'pinned.hdb'), `${createHash('md5').update('x').digest('hex')}:1:Avgate.Test.Pinned\n`);
    await writeFile(join(www, 'big.ndb'), `Avgate.Test.Big:0:*:${Buffer.alloc(4096, 'a').toString('hex')}\n`);
    // The good file again, newer: fetched whole (no 304), the same bytes are no change.
    await writeFile(join(www, 'avgate-upd.ndb'), upd.line);
    const later = new Date(Date.now() + 10_000);
    await utimes(join(www, 'avgate-upd.ndb'), later, later);
    const down = await freeLoopbackPort();
    const sources = [
      base,
      src('avgate-extra.ndb'),
      src('pinned.hdb', `, sha256: "${'0'.repeat(64)}"`),
      src('big.ndb'),
      src('missing.ndb'),
      `    - {url: "http://127.0.0.1:${down}/gone.ndb"}`,
    ].join('\n');
    const cli = io();
    const code = await runSignaturesCommand(config(sources, '  max-size: 2KiB'), ['update'], cli);
    assert.equal(code, 1);
    const out = cli.out();
    assert.match(out, /^failed {4}pinned\.hdb \S+: SHA-256 [0-9a-f]{64} is not the configured 0{64}$/m);
    assert.match(out, /^failed {4}big\.ndb \S+: \d+ bytes, over signatures\.max-size \(2048\)$/m);
    assert.match(out, /^failed {4}missing\.ndb \S+: HTTP 404 Not Found$/m);
    assert.match(out, /^failed {4}gone\.ndb \S+: cannot fetch: .*ECONNREFUSED/m);
    assert.match(out, /^unchanged avgate-upd\.ndb /m);
    assert.match(out, /^nothing changed$/m);
    for (const f of ['pinned.hdb', 'big.ndb', 'missing.ndb', 'gone.ndb']) assert.equal(existsSync(join(dbDir(), f)), false, f);
    const status = io();
    assert.equal(await runSignaturesCommand(config(sources), ['status'], status), 0);
    assert.match(status.out(), /^last run \S+: avgate-upd\.ndb unchanged, avgate-extra\.ndb unchanged, pinned\.hdb failed, big\.ndb failed, missing\.ndb failed, gone\.ndb failed$/m);
    assert.match(status.out(), /^ {2}missing\.ndb: HTTP 404 Not Found$/m);
  });

  test('signatures.timeout: a mirror that answers the headers but never the body fails alone; signatures.test-load-timeout: a clamscan that does not finish fails the new file', async () => {
    // A fault server: a real nginx always finishes its answers.
    const stall = await startFaultServer((socket) => {
      socket.once('data', () => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nStall:0:*:'));
    });
    try {
      const slow = io();
      const code = await runSignaturesCommand(config(`${base}\n${src('avgate-extra.ndb')}\n    - {url: "http://127.0.0.1:${stall.port}/stall.ndb"}`, '  timeout: 300ms'), ['update'], slow);
      assert.equal(code, 1);
      assert.match(slow.out(), /^failed {4}stall\.ndb \S+: not complete within signatures\.timeout \(300 ms\)$/m);
      assert.match(slow.out(), /^nothing changed$/m);
    } finally {
      await stall.close();
    }
    // A "clamscan" that never finishes loading.
    const sleeper = join(dir, 'slow-clamscan');
    await writeFile(sleeper, '#!/bin/sh\nexec sleep 30\n', { mode: 0o755 });
    await writeFile(join(www, 'waits.ndb'), tokenSignature('Avgate.Test.Waits').line);
    const cli = io();
    const code = await runSignaturesCommand(config(`${base}\n${src('avgate-extra.ndb')}\n${src('waits.ndb')}`, `  test-load-timeout: 300ms\n  clamscan: ${sleeper}`), ['update'], cli);
    assert.equal(code, 1);
    assert.match(cli.out(), /^failed {4}waits\.ndb \S+: clamscan cannot load it: no result within signatures\.test-load-timeout \(300 ms\)$/m);
    assert.equal(existsSync(join(dbDir(), 'waits.ndb')), false);
  });

  test('a source no longer configured: the file it installed is removed and clamd reloaded; files the updater did not install stay', async () => {
    const own = await readFile(join(dbDir(), 'avgate-test.ndb'), 'utf8');
    const r = await updaterFor(config(src('avgate-extra.ndb')), silentLogger(), runtime.allEngines.map((e) => e.engine)).update();
    assert.deepEqual(
      r.sources.map((s) => [s.name, s.outcome]),
      [
        ['avgate-extra.ndb', 'unchanged'],
        ['avgate-upd.ndb', 'removed'],
      ],
    );
    assert.equal(r.reloaded, true);
    assert.equal(existsSync(join(dbDir(), 'avgate-upd.ndb')), false);
    assert.equal(await readFile(join(dbDir(), 'avgate-test.ndb'), 'utf8'), own, 'the generated test database is not the updater\'s');
    assert.equal((await scan(upd.content)).status, 'free');
    assert.equal((await scan(extra.content)).status, 'found');
  });

  test('test-load off and a file clamd refuses on RELOAD: the update is undone (the file goes, clamd keeps scanning), it fails again next time instead of passing as unchanged', async () => {
    await writeFile(join(www, 'broken.ndb'), 'Broken.Sig:0:*:zz-not-hex\n');
    const cfg = config(`${src('avgate-extra.ndb')}\n${src('broken.ndb')}`, '  test-load: false');
    for (let run = 0; run < 2; run++) {
      const r = await updaterFor(cfg, silentLogger(), runtime.allEngines.map((e) => e.engine)).update();
      const broken = r.sources.find((x) => x.name === 'broken.ndb');
      assert.equal(broken?.outcome, 'failed', `run ${run}: ${JSON.stringify(r.sources)}`);
      assert.match(broken?.reason ?? '', /clamd refused the signature files: .*Malformed database.*; the previous files are back/);
      assert.match(r.reloadError ?? '', /this update was undone/);
      assert.equal(r.reloaded, false);
      assert.equal(existsSync(join(dbDir(), 'broken.ndb')), false, 'not left for clamd\'s next start');
      assert.ok(r.failed >= 1);
    }
    assert.equal((await scan(extra.content)).status, 'found', 'clamd scans on with the previous files');
    assert.match(await readFile(runtime.clamd?.logPath as string, 'utf8'), /Database reload failed, keeping the previous instance/);
  });

  test('an installed file changed on disk is fetched again whole, not kept because the mirror says 304', async () => {
    const cfg = config(src('avgate-extra.ndb'));
    const other = tokenSignature('Avgate.Test.Edited');
    await writeFile(join(dbDir(), 'avgate-extra.ndb'), other.line);
    const r = await updaterFor(cfg, silentLogger(), runtime.allEngines.map((e) => e.engine)).update();
    assert.deepEqual(
      r.sources.map((x) => [x.name, x.outcome]),
      [['avgate-extra.ndb', 'installed']],
    );
    assert.equal(await readFile(join(dbDir(), 'avgate-extra.ndb'), 'utf8'), extra.line);
    const again = await updaterFor(cfg, silentLogger(), runtime.allEngines.map((e) => e.engine)).update();
    assert.deepEqual(again.sources.map((x) => x.outcome), ['unchanged'], 'intact: a 304 is taken again');
  });

  test('a second update while one holds the staging directory is refused (exit 2); a reload clamd does not confirm is a failure; a bad source name is a config error with its path', async () => {
    await mkdir(join(dbDir(), '.avgate-staging'));
    try {
      const cli = io();
      assert.equal(await runSignaturesCommand(config(src('avgate-extra.ndb')), ['update'], cli), 2);
      assert.match(cli.err(), /another signature update is running/);
    } finally {
      await rm(join(dbDir(), '.avgate-staging'), { recursive: true, force: true });
    }
    // Installed, but clamd does not confirm the reload: said, counted as a failure, marker gone.
    const late = tokenSignature('Avgate.Test.Late');
    await writeFile(join(www, 'late.ndb'), late.line);
    const lateConfig = config(`${src('avgate-extra.ndb')}\n${src('late.ndb')}`);
    const r = await new SignatureUpdater({
      config: lateConfig.signatures,
      dbDir: dbDir(),
      stateDir: signaturesStateDir(lateConfig),
      log: silentLogger(),
      reload: () => Promise.reject(new Error('clamd did not finish RELOAD in time')),
    }).update();
    assert.equal(r.failed, 1);
    assert.equal(r.reloadError, 'clamd did not finish RELOAD in time');
    assert.deepEqual(
      r.sources.map((x) => [x.name, x.outcome]),
      [
        ['avgate-extra.ndb', 'unchanged'],
        ['late.ndb', 'installed'],
      ],
    );
    assert.equal(existsSync(join(dbDir(), UPDATING_MARKER)), false);
    const status = io();
    await runSignaturesCommand(lateConfig, ['status'], status);
    assert.match(status.out(), /^late\.ndb {2}\d+ bytes/m);

    // A version read while the marker is there (no version: nothing cached) is read again within a
    // second. late.ndb is in the directory but clamd never confirmed loading it: the engine has it
    // RELOAD first, and only then is there a version again (well before version-check-interval).
    const engine = runtime.engines[0]?.engine;
    assert.ok(engine);
    await writeFile(join(dbDir(), UPDATING_MARKER), 'test\n');
    engine.invalidateVersion?.();
    assert.equal(await engine.signatureVersion(), null);
    await rm(join(dbDir(), UPDATING_MARKER));
    const reloadsBefore = ((await readFile(runtime.clamd?.logPath as string, 'utf8')).match(/Database correctly reloaded/g) ?? []).length;
    const back = await waitFor('a version again', async () => engine.signatureVersion(), 30_000);
    assert.match(back, /\/db:[0-9a-f]{16}$/);
    assert.ok(((await readFile(runtime.clamd?.logPath as string, 'utf8')).match(/Database correctly reloaded/g) ?? []).length > reloadsBefore, 'clamd was made to load late.ndb');
    assert.equal((await scan(late.content)).status, 'found');

    assert.throws(() => config(src('notes.txt')), /signatures\.sources\.0\.url.*not a database file name/s);
    assert.throws(() => config(`${src('a.ndb')}\n${src('a.ndb')}`), /a second source for a\.ndb/);
  });
  test('redirects: followed on http, a loop stops after 5, a redirect to another scheme is refused; https never goes to http', async () => {
    const loop = await startFaultServer((socket) => {
      socket.on('data', () => socket.write('HTTP/1.1 302 Found\r\nLocation: /again.ndb\r\nContent-Length: 0\r\n\r\n'));
    });
    const toFtp = await startFaultServer((socket) => {
      socket.once('data', () => socket.write('HTTP/1.1 301 Moved\r\nLocation: ftp://127.0.0.1/x.ndb\r\nContent-Length: 0\r\n\r\n'));
    });
    await writeFile(join(www, 'redirected.ndb'), tokenSignature('Avgate.Test.Redirected').line);
    const toMirror = await startFaultServer((socket) => {
      socket.once('data', () => socket.write(`HTTP/1.1 302 Found\r\nLocation: ${nginx.url('redirected.ndb')}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`));
    });
    try {
      const out = io();
      const sources = [`    - {url: "http://127.0.0.1:${loop.port}/loop.ndb"}`, `    - {url: "http://127.0.0.1:${toFtp.port}/ftp.ndb"}`, `    - {url: "http://127.0.0.1:${toMirror.port}/moved.ndb"}`].join('\n');
      const code = await runSignaturesCommand(config(`${base}\n${sources}`), ['update'], out);
      assert.equal(code, 1);
      assert.match(out.out(), /^failed {4}loop\.ndb \S+: more than 5 redirects$/m);
      assert.match(out.out(), /^failed {4}ftp\.ndb \S+: redirect from http: to ftp: refused$/m);
      assert.ok(existsSync(join(dbDir(), 'moved.ndb')), out.out());
    } finally {
      await loop.close();
      await toFtp.close();
      await toMirror.close();
    }
    assert.equal(redirectAllowed(new URL('https://m.example/a'), new URL('http://m.example/a')), false);
    assert.equal(redirectAllowed(new URL('https://m.example/a'), new URL('https://n.example/a')), true);
    assert.equal(redirectAllowed(new URL('http://m.example/a'), new URL('https://m.example/a')), true);
  });
});

describe('avgate serve with signatures.interval', () => {
  test('updates at start and again after the interval, the engines see the new signatures at once', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'avgate-signatures-serve-'));
    const www = join(dir, 'www');
    await mkdir(www, { recursive: true });
    const nginx = await startNginx({ dir: join(dir, 'nginx'), root: www });
    const first = tokenSignature('Avgate.Test.First');
    const second = tokenSignature('Avgate.Test.Second');
    await writeFile(join(www, 'serve.ndb'), first.line);
    const text = [
      `state-dir: ${join(dir, 'state')}`,
      'log: {level: silent}',
      'clamd: {tcp-port: 0}',
      ...['icap', 'smtp', 'http-proxy', 'ftp-proxy', 'pop3-proxy', 'imap-proxy'].map((k) => `${k}: {enabled: false}`),
      'console: {listen: "127.0.0.1:0"}',
      'signatures:',
      '  interval: 500ms',
      `  sources: [{url: "${nginx.url('serve.ndb')}"}]`,
    ].join('\n');
    const s = await within('avgate serve', 150_000, serve({ config: parseConfigText(text, 'serve-signatures.yaml'), path: null }, { logger: silentLogger() }));
    try {
      const scan = (data: Buffer) => s.runtime.scanner.scan({ source: { kind: 'buffer', data } });
      await waitFor('the first file in use', async () => ((await scan(first.content)).status === 'found' ? true : null), 60_000);
      assert.equal((await scan(second.content)).status, 'free');
      const future = new Date(Date.now() + 5000);
      await writeFile(join(www, 'serve.ndb'), first.line + second.line);
      await utimes(join(www, 'serve.ndb'), future, future);
      await waitFor('the changed file in use', async () => ((await scan(second.content)).status === 'found' ? true : null), 60_000);

      // The console shows the updater's last run; /metrics has its gauges.
      await s.web?.passwords.setPassword('admin', 'signatures-test-pw');
      const c = new ConsoleClient(s.consolePort as number);
      await c.login('admin', 'signatures-test-pw');
      const page = await c.get('/signatures');
      assert.equal(page.status, 200);
      assert.match(page.body, /<section id="updater"><h2>Signature updates<\/h2>\s*<p>last run \S+: /);
      assert.match(page.body, /<td>serve\.ndb<\/td><td>(installed|unchanged)<\/td><td>http:\/\/127\.0\.0\.1:\d+\/serve\.ndb<\/td>/);
      const metrics = await c.get('/metrics');
      assert.match(metrics.body, /^avgate_signatures_installed_files 1$/m);
      const at = Number(/^avgate_signatures_last_run_timestamp_seconds (\d+)$/m.exec(metrics.body)?.[1]);
      assert.ok(at > Date.now() / 1000 - 120, 'a recent run');
      assert.match(metrics.body, /^avgate_signatures_sources\{outcome="failed"\} 0$/m);
    } finally {
      await s.stop();
      await nginx.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('avgate signatures update from the command line tells the running serve: a cached clean verdict of the old signatures is not answered again', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'avgate-signatures-cli-'));
    const www = join(dir, 'www');
    await mkdir(www, { recursive: true });
    const nginx = await startNginx({ dir: join(dir, 'nginx'), root: www });
    const sig = tokenSignature('Avgate.Test.Cli');
    await writeFile(join(www, 'cli.ndb'), sig.line);
    const text = [
      `state-dir: ${join(dir, 'state')}`,
      'log: {level: silent}',
      'clamd: {tcp-port: 0}',
      ...['icap', 'smtp', 'http-proxy', 'ftp-proxy', 'pop3-proxy', 'imap-proxy', 'console'].map((k) => `${k}: {enabled: false}`),
      // No updates of its own: only the command line's.
      'signatures:',
      `  sources: [{url: "${nginx.url('cli.ndb')}"}]`,
    ].join('\n');
    const config = parseConfigText(text, 'cli-signatures.yaml');
    const s = await within('avgate serve', 150_000, serve({ config, path: null }, { logger: silentLogger() }));
    try {
      const scan = (data: Buffer) => s.runtime.scanner.scan({ source: { kind: 'buffer', data } });
      assert.equal((await scan(sig.content)).status, 'free');
      assert.equal((await scan(sig.content)).cached, true, 'the clean verdict is cached');
      const o = io();
      assert.equal(await runSignaturesCommand(config, ['update'], o), 0, o.err());
      assert.match(o.out(), /^clamd reloaded\nthe running avgate reads the new signature version\n$/m);
      // At once, not after the engine's version-check-interval (60 s).
      const v = await scan(sig.content);
      assert.equal(v.status, 'found', 'the new signature answers, not the cached clean verdict');
    } finally {
      await s.stop();
      await nginx.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
