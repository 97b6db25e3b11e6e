import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { parseConfigText } from '../../src/config/loader.js';
import type { Config } from '../../src/config/schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { eicarBytes, TEST_SIGNATURE_NAMES } from '../../src/engines/clamd/testdb.js';
import { EngineHealth } from '../../src/engines/health.js';
import { openQuarantine } from '../../src/quarantine/store.js';
import type { Quarantine } from '../../src/quarantine/types.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { openStatsStore, type StatsStore } from '../../src/stats/store.js';
import { PasswordStore } from '../../src/web/auth.js';
import { ConsoleServer } from '../../src/web/server.js';
import { capturedLog } from '../helpers/log.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { ConsoleClient, rawRequest } from '../helpers/console.js';
import { startRecordingServer, type RecordingServer } from '../helpers/smtp.js';
import { externalClamdYaml } from '../../tools/peers/avgate.js';

const PASSWORD = 'test-password-1';
const XSS = '<script>alert(1)</script>';

function configFor(stateDir: string, clamdSocket: string, dbDir: string, nextHopPort: number, consoleExtra: string[] = []): Config {
  return parseConfigText(
    [
      `state-dir: ${stateDir}`,
      ...externalClamdYaml({ socketPath: clamdSocket, dbDir }),
      'smtp:',
      '  next-hop:',
      `    target: smtp:127.0.0.1:${nextHopPort}`,
      'console:',
      '  listen: 127.0.0.1:0',
      '  login-max-failures: 3',
      '  max-upload-size: 1MiB',
      ...consoleExtra,
      'stats:',
      '  flush-interval: 10ms',
      '',
    ].join('\n'),
    'web-console.yaml',
  );
}

function mailWithSubject(subject: string): Buffer {
  return Buffer.from(
    [`From: <a@example.org>`, `To: <b@example.org>`, `Subject: ${subject}`, 'Message-ID: <x1@example.org>', 'Content-Type: text/html', '', `<p>${XSS} body must never be rendered</p>`, ''].join('\r\n'),
  );
}

describe('web console', () => {
  let dir: string;
  let clamd: TestClamd;
  let config: Config;
  let runtime: Runtime;
  let quarantine: Quarantine;
  let stats: StatsStore;
  let web: ConsoleServer;
  let port: number;
  let token: string;
  let itemId: string;
  let sink: RecordingServer;
  const health = new EngineHealth(['clamav']);
  /** What the console logged. */
  let logLines: Array<Record<string, unknown>> = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-web-'));
    clamd = await startTestClamd();
    sink = await startRecordingServer();
    config = configFor(join(dir, 'state'), clamd.socketPath, clamd.dbDir, sink.port, ['  allowed-hosts: [avgate.example.com]']);
    stats = openStatsStore(config.stats, config['state-dir']);
    runtime = await openRuntime(config, { logger: silentLogger(), localClamd: 'never', stats });
    quarantine = await openQuarantine(config);
    health.ok('clamav', { reply: 'PONG', version: 'ClamAV 1.0.0', signatureVersion: 'test' });
    const { log: consoleLog, lines } = capturedLog();
    logLines = lines;
    web = new ConsoleServer({ config, configSource: 'web-console.yaml', scanner: runtime.scanner, engines: runtime.engines, health, quarantine, stats, log: consoleLog });
    port = (await web.listen()).port;
    await web.passwords.setPassword('admin', PASSWORD);
    token = await web.tokens.add('ci');
    ({ id: itemId } = await quarantine.put(Readable.from([mailWithSubject(XSS)]), {
      source: 'smtp',
      sender: 'a@example.org',
      recipients: ['b@example.org'],
      group: 'default',
      statuses: ['infected'],
      virusNames: ['Avgate.Test.EICAR.NDB'],
      subject: XSS,
      fileName: '"><img src=x onerror=alert(2)>',
    }));
  });

  after(async () => {
    await web?.close();
    await quarantine?.close();
    await runtime?.close();
    stats?.close();
    await sink?.close();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('pages need a login; responses carry the security headers', async () => {
    const c = new ConsoleClient(port);
    const r = await c.get('/');
    assert.equal(r.status, 303);
    assert.equal(r.headers.location, '/login');
    const login = await c.get('/login');
    assert.equal(login.status, 200);
    assert.match(String(login.headers['content-security-policy']), /default-src 'self'/);
    assert.doesNotMatch(String(login.headers['content-security-policy']), /unsafe-inline/);
    assert.equal(login.headers['x-frame-options'], 'DENY');
    assert.equal(login.headers['x-content-type-options'], 'nosniff');
    assert.equal(login.headers['cache-control'], 'no-store');
    assert.ok(login.headers['referrer-policy']);
    assert.doesNotMatch(login.body, /<script/i, 'no scripts at all');
    for (const path of ['/quarantine', '/signatures', '/config', `/quarantine/${itemId}`, `/quarantine/${itemId}/export.zip`]) {
      assert.equal((await c.get(path)).status, 303, path);
    }
  });

  test('login sets an HttpOnly SameSite=Strict cookie; logout is a POST with CSRF', async () => {
    const c = new ConsoleClient(port);
    const r = await c.login('admin', PASSWORD);
    assert.equal(r.status, 303);
    const set = (r.headers['set-cookie'] as string[]).find((s) => s.startsWith('avgate_session='));
    assert.match(String(set), /^avgate_session=[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Strict$/);
    const home = await c.get('/');
    assert.equal(home.status, 200);
    assert.match(home.body, /Virus activity/);
    assert.equal((await c.post('/logout', {}, { csrf: null })).status, 403, 'logout without CSRF');
    assert.equal((await c.get('/')).status, 200, 'still logged in');
    const out = await c.post('/logout', {});
    assert.equal(out.status, 303);
    assert.equal((await c.get('/')).status, 303, 'logged out');
  });

  test('a Host that is not ours (DNS rebinding) gets 421 with no content on every route, login included; IP literals, localhost and allowed-hosts answer', async () => {
    const evil = 'rebind.attacker.example:8080';
    const requests: Array<[string, string, Record<string, string>, string?]> = [
      ['GET', '/metrics', {}],
      ['GET', '/healthz', {}],
      ['GET', '/static/console.css', {}],
      ['GET', '/login', {}],
      ['GET', '/', {}],
      ['GET', '/no-such-page', {}],
      ['GET', '/api/v1/stats', { Authorization: `Bearer ${token}` }],
      ['POST', '/api/v1/scan', { Authorization: `Bearer ${token}` }, 'hello'],
    ];
    for (const [method, path, headers, body] of requests) {
      const r = await rawRequest(port, method, path, { headers: { Host: evil, ...headers }, ...(body !== undefined ? { body } : {}) });
      assert.deepEqual([r.status, r.headers['content-length'], r.body], [421, '0', ''], `${method} ${path}`);
    }
    // A login with that Host and a matching Origin: refused before the password is looked at, no cookie.
    const c = new ConsoleClient(port);
    await c.get('/login');
    const login = await c.post('/login', { user: 'admin', password: PASSWORD }, { headers: { Host: evil, Origin: `http://${evil}` } });
    assert.deepEqual([login.status, login.headers['set-cookie'], login.body], [421, undefined, '']);
    assert.equal((await c.get('/')).status, 303, 'not logged in');
    for (const host of [`127.0.0.1:${port}`, '127.0.0.1', `localhost:${port}`, `[::1]:${port}`, 'avgate.example.com', 'AVGATE.example.com:443']) {
      assert.equal((await rawRequest(port, 'GET', '/healthz', { headers: { Host: host } })).status, 200, host);
    }
    // Behind a reverse proxy with a listed name, the login works with that name's origin.
    const proxied = { Host: 'avgate.example.com', Origin: 'http://avgate.example.com' };
    const p = new ConsoleClient(port);
    await p.get('/login', { Host: proxied.Host });
    assert.equal((await p.post('/login', { user: 'admin', password: PASSWORD }, { headers: proxied })).status, 303);
    assert.equal((await p.get('/', { Host: proxied.Host })).status, 200);
  });

  test("a new password or a removed user ends the user's sessions at once (avgate admin passwd is another process)", async () => {
    const cli = new PasswordStore(web.passwords.path);
    await cli.setPassword('ops', 'ops-password-1');
    const c = new ConsoleClient(port);
    assert.equal((await c.login('ops', 'ops-password-1')).status, 303);
    assert.equal((await c.get('/')).status, 200);
    const admin = new ConsoleClient(port);
    await admin.login('admin', PASSWORD);
    await cli.setPassword('ops', 'ops-password-2');
    const after = await c.get('/');
    assert.deepEqual([after.status, after.headers.location], [303, '/login'], 'the old cookie no longer works');
    assert.equal((await admin.get('/')).status, 200, "another user's session is kept");
    assert.equal((await c.login('ops', 'ops-password-2')).status, 303);
    assert.equal((await c.get('/')).status, 200);
    assert.equal(await cli.remove('ops'), true);
    assert.equal((await c.get('/')).status, 303, 'a removed user is logged out');
    assert.equal((await admin.get('/')).status, 200);
  });

  test('same message for unknown user and wrong password; login CSRF enforced', async () => {
    const c = new ConsoleClient(port);
    await c.get('/login');
    const wrong = await c.post('/login', { user: 'admin', password: 'nope-nope' });
    const unknown = await c.post('/login', { user: 'nobody', password: PASSWORD });
    assert.equal(wrong.status, 401);
    assert.equal(unknown.status, 401);
    const msg = (b: string) => /id="login-error">([^<]*)</.exec(b)?.[1];
    assert.equal(msg(wrong.body), msg(unknown.body));
    assert.equal((await c.post('/login', { user: 'admin', password: PASSWORD }, { csrf: 'forged' })).status, 403);
    // Failures so far: 2 of 3 (the CSRF refusal is not a password try). One good login resets the count.
    assert.equal((await c.post('/login', { user: 'admin', password: PASSWORD })).status, 303);
  });

  test('state-changing requests: no CSRF token, a wrong one, a foreign or missing Origin → 403', async () => {
    const c = new ConsoleClient(port);
    await c.login('admin', PASSWORD);
    await c.get('/');
    const del = `/quarantine/${itemId}/delete`;
    assert.equal((await c.post(del, {}, { csrf: null })).status, 403);
    assert.equal((await c.post(del, {}, { csrf: 'x'.repeat(43) })).status, 403);
    assert.equal((await c.post(del, {}, { headers: { Origin: 'http://evil.example' } })).status, 403);
    assert.equal((await c.post(del, {}, { headers: { Origin: 'null' } })).status, 403);
    assert.equal((await c.post(del, {}, { headers: { Origin: '' } })).status, 403, 'neither Origin nor Referer');
    assert.equal((await c.post(del, {}, { headers: { Origin: '', Referer: 'http://evil.example/x' } })).status, 403);
    const other = new ConsoleClient(port);
    await other.login('admin', PASSWORD);
    assert.equal((await c.post(del, {}, { csrf: other.csrf })).status, 403, "another session's token");
    assert.ok(await quarantine.get(itemId), 'nothing was deleted');
  });

  test('data is escaped: a subject with <script> and a file name breaking out of an attribute', async () => {
    const c = new ConsoleClient(port);
    await c.login('admin', PASSWORD);
    const list = await c.get('/quarantine');
    assert.equal(list.status, 200);
    assert.ok(list.body.includes('&lt;script&gt;alert(1)&lt;/script&gt;'));
    assert.ok(!list.body.includes(XSS));
    const item = await c.get(`/quarantine/${itemId}`);
    assert.equal(item.status, 200);
    assert.ok(!item.body.includes(XSS));
    assert.ok(!item.body.includes('<img'));
    assert.match(item.body, /<pre id="headers">[^<]*Subject: &lt;script&gt;alert\(1\)&lt;\/script&gt;/);
    assert.doesNotMatch(item.body, /body must never be rendered/, 'only the header block');
  });

  test('path traversal and ids that are not ids → 404', async () => {
    const c = new ConsoleClient(port);
    await c.login('admin', PASSWORD);
    for (const path of [
      '/quarantine/../../etc/passwd',
      '/quarantine/%2e%2e/%2e%2e/etc/passwd',
      '/quarantine/..%2f..%2fetc%2fpasswd',
      '/static/../../../../etc/passwd',
      '/quarantine/ABC',
      '/quarantine/short',
      `/quarantine/${itemId}x%00`,
      `/quarantine/${'z'.repeat(30)}`,
      `/quarantine/${itemId}/../../config`,
      '/etc/passwd',
    ]) {
      const r = await c.get(path);
      assert.equal(r.status, 404, path);
      assert.doesNotMatch(r.body, /root:/);
    }
    assert.equal((await c.post('/quarantine/../x/delete', {})).status, 404);
  });

  test('SQL-ish filter values are plain text', async () => {
    const c = new ConsoleClient(port);
    await c.login('admin', PASSWORD);
    const before = await quarantine.count();
    for (const q of [
      `text=${encodeURIComponent("' OR 1=1 --")}`,
      `status=${encodeURIComponent("x'; DROP TABLE items; --")}`,
      `text=${encodeURIComponent('%')}`,
      `text=${encodeURIComponent('_')}`,
      `since=${encodeURIComponent("2020-01-01' OR '1'='1")}`,
      'source=nope',
    ]) {
      const r = await c.get(`/quarantine?${q}`);
      assert.equal(r.status, 200, q);
      assert.match(r.body, /0 items|no items match|class="error"/, q);
    }
    assert.equal(await quarantine.count(), before, 'nothing dropped');
    assert.match((await c.get('/quarantine?text=script')).body, /1 items/);
    assert.equal((await c.get('/quarantine?page=-5')).status, 200);
  });

  test('scanning API: tokens, raw and multipart bodies with a real clamd, limits', async () => {
    const api = (body: Buffer | string, headers: Record<string, string> = {}, path = '/api/v1/scan?name=eicar.com') =>
      rawRequest(port, 'POST', path, { headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/octet-stream', ...headers }, body });
    assert.equal((await api('x', { Authorization: '' })).status, 401);
    assert.equal((await api('x', { Authorization: `Bearer ${token}x` })).status, 401);
    assert.equal((await api('x', { Authorization: 'Basic YWRtaW46eA==' })).status, 401);

    const found = await api(eicarBytes());
    assert.equal(found.status, 200, found.body);
    const v = JSON.parse(found.body) as Record<string, unknown>;
    assert.equal(v.status, 'found');
    assert.ok((v.names as string[]).some((n) => n.startsWith('Avgate.Test.EICAR')));
    assert.equal(v.engine, 'clamav');
    assert.equal(v.bytes, eicarBytes().length);
    assert.equal(v.sha256, createHash('sha256').update(eicarBytes()).digest('hex'), 'the SHA-256 of the upload');
    assert.equal(typeof v.durationMs, 'number');
    assert.equal(JSON.parse((await api(eicarBytes())).body).cached, true, 'second time from the verdict cache');
    const scans = logLines.filter((l) => l.msg === 'api: scan');
    assert.equal(scans.length, 2, 'one log line per API scan');
    assert.match(String(scans[0]?.verdict), /^found:Avgate\.Test\.EICAR/);
    assert.match(String(scans[1]?.verdict), /\/cached$/);
    assert.deepEqual([scans[0]?.token, scans[0]?.name, scans[0]?.bytes], ['ci', 'eicar.com', eicarBytes().length]);

    const clean = JSON.parse((await api(randomBytes(5000))).body) as Record<string, unknown>;
    assert.equal(clean.status, 'free');
    assert.equal(clean.sha256, undefined, 'a SHA-256 only for infected uploads');
    // Past the size where the cache key is BLAKE3 (core/content-hash.ts) the key still finds the verdict,
    // and an infected upload of that size is still named by its SHA-256 (read back from the spool).
    const large = randomBytes(300_000);
    const first = JSON.parse((await api(large)).body) as Record<string, unknown>;
    assert.deepEqual([first.status, first.cached, first.sha256], ['free', false, undefined]);
    assert.equal(JSON.parse((await api(large)).body).cached, true, 'a large object from the verdict cache');
    const largeBad = Buffer.concat([randomBytes(300_000), eicarBytes()]);
    const bad300 = JSON.parse((await api(largeBad)).body) as Record<string, unknown>;
    assert.deepEqual([bad300.status, bad300.sha256], ['found', createHash('sha256').update(largeBad).digest('hex')]);

    const boundary = '----avgate' + randomBytes(8).toString('hex');
    const filePart = Buffer.concat([randomBytes(10), eicarBytes()]);
    const form = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="e.com"\r\nContent-Type: application/octet-stream\r\n\r\n`),
      filePart,
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]);
    const mp = await api(form, { 'Content-Type': `multipart/form-data; boundary=${boundary}` }, '/api/v1/scan');
    assert.equal(mp.status, 200, mp.body);
    assert.equal(JSON.parse(mp.body).status, 'found');
    assert.equal(JSON.parse(mp.body).sha256, createHash('sha256').update(filePart).digest('hex'), 'the SHA-256 of the file part');
    assert.match(JSON.parse(mp.body).names[0], new RegExp(`^${TEST_SIGNATURE_NAMES.eicarBody.replace(/\./g, '\\.')}`), 'the body signature: the file sits after 10 other bytes');
    const bad = await api(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="f"; filename="x"\r\n\r\nno end`), { 'Content-Type': `multipart/form-data; boundary=${boundary}` });
    assert.equal(bad.status, 400);
    assert.equal((await api('x', { 'Content-Type': 'multipart/form-data' })).status, 400, 'no boundary');
    // An RFC 2231 file name is a file to busboy, undici and Python: scanned here too, and beside
    // another file part a 400, never a free verdict for the other one alone.
    const multipart = { 'Content-Type': `multipart/form-data; boundary=${boundary}` };
    const starPart = Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="x"; filename*=UTF-8''evil.com\r\n\r\n`), eicarBytes()]);
    const star = await api(Buffer.concat([starPart, Buffer.from(`\r\n--${boundary}--\r\n`)]), multipart, '/api/v1/scan');
    assert.equal(star.status, 200, star.body);
    assert.equal(JSON.parse(star.body).status, 'found', 'the filename* part is the object');
    assert.deepEqual(logLines.filter((l) => l.msg === 'api: scan').at(-1)?.name, 'evil.com', 'its name decoded');
    const plainPart = `\r\n--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="clean.txt"\r\n\r\nclean\r\n--${boundary}--\r\n`;
    const hidden = await api(Buffer.concat([starPart, Buffer.from(plainPart)]), multipart, '/api/v1/scan');
    assert.equal(hidden.status, 400, hidden.body);
    assert.deepEqual(JSON.parse(hidden.body), { status: 'error', reason: 'bad multipart body: more than one file part: send one object per request' });
    // Two Content-Disposition lines: busboy reads the first, undici the last.
    const twoLines = `--${boundary}\r\nContent-Disposition: form-data; name="x"; filename="evil.com"\r\nContent-Disposition: form-data; name="x"\r\n\r\n`;
    const twice = await api(Buffer.concat([Buffer.from(twoLines), eicarBytes(), Buffer.from(plainPart)]), multipart, '/api/v1/scan');
    assert.equal(twice.status, 400, twice.body);
    assert.deepEqual(JSON.parse(twice.body), { status: 'error', reason: 'bad multipart body: a part with two content-disposition header lines' });

    const big = await rawRequest(port, 'POST', '/api/v1/scan', { headers: { Authorization: `Bearer ${token}`, 'Content-Length': String(2 * 1024 * 1024) } });
    assert.equal(big.status, 413, 'Content-Length over the limit: refused before the body');
    const streamed = await rawRequest(port, 'POST', '/api/v1/scan', {
      headers: { Authorization: `Bearer ${token}`, 'Transfer-Encoding': 'chunked' },
      body: async function* () {
        for (let i = 0; i < 40; i++) yield randomBytes(64 * 1024);
      },
    });
    assert.equal(streamed.status, 413, 'chunked body over the limit');
    assert.equal(JSON.parse(streamed.body).status, 'error');
    assert.deepEqual(await readdir(join(config['state-dir'], 'spool', 'api')).catch(() => []), [], 'no spool files left');
  });

  test('API token scopes: scan only scans, read reads, quarantine releases and deletes (403 in JSON otherwise); a token from before scopes keeps all', async () => {
    const reader = await web.tokens.add('reader', ['read']);
    const releaser = await web.tokens.add('releaser', ['quarantine']);
    const call = (t: string, method: string, path: string, body?: string) => rawRequest(port, method, path, { headers: { Authorization: `Bearer ${t}` }, ...(body !== undefined ? { body } : {}) });
    const absent = 'z'.repeat(32);
    const release = JSON.stringify({ to: ['thief@example.net'] });
    const lacks = (name: string, scope: string) => ({ status: 'error', reason: `the token "${name}" lacks the scope "${scope}"` });
    const statusOf = async (t: string, method: string, path: string, body?: string) => (await call(t, method, path, body)).status;
    // The default token (scan only): none of the statistics and quarantine routes.
    for (const [method, path, scope, body] of [
      ['GET', '/api/v1/stats', 'read'],
      ['GET', '/api/v1/quarantine', 'read'],
      ['GET', `/api/v1/quarantine/${itemId}`, 'read'],
      ['POST', `/api/v1/quarantine/${itemId}/release`, 'quarantine', release],
      ['DELETE', `/api/v1/quarantine/${itemId}`, 'quarantine'],
    ] as Array<[string, string, string, string?]>) {
      const r = await call(token, method, path, body);
      assert.equal(r.status, 403, `${method} ${path}`);
      assert.deepEqual(JSON.parse(r.body), lacks('ci', scope));
    }
    assert.equal(sink.messages.length, 0, 'nothing released');
    assert.ok(await quarantine.get(itemId), 'nothing deleted');
    assert.equal(await statusOf(reader, 'GET', '/api/v1/stats'), 200);
    assert.equal(await statusOf(reader, 'GET', '/api/v1/quarantine'), 200);
    assert.equal(await statusOf(reader, 'GET', `/api/v1/quarantine/${itemId}`), 200);
    assert.equal(await statusOf(reader, 'POST', `/api/v1/quarantine/${itemId}/release`, release), 403);
    assert.equal(await statusOf(reader, 'DELETE', `/api/v1/quarantine/${itemId}`), 403);
    assert.deepEqual(JSON.parse((await call(reader, 'POST', '/api/v1/scan', 'hello')).body), lacks('reader', 'scan'));
    assert.equal(await statusOf(releaser, 'GET', '/api/v1/quarantine'), 403);
    assert.equal(await statusOf(releaser, 'POST', `/api/v1/quarantine/${absent}/release`), 404, 'past the scope check');
    assert.equal(await statusOf(releaser, 'DELETE', `/api/v1/quarantine/${absent}`), 404);
    assert.equal(await statusOf(releaser, 'POST', '/api/v1/scan', 'hello'), 403);
    // A token stored before scopes (no "scopes" in the file) keeps every scope.
    const legacy = await web.tokens.add('legacy', ['scan']);
    const file = JSON.parse(await readFile(web.tokens.path, 'utf8')) as { tokens: Record<string, { scopes?: string[] }> };
    delete file.tokens.legacy?.scopes;
    await writeFile(web.tokens.path, JSON.stringify(file));
    await new Promise((r) => setTimeout(r, 1100)); // the server looks at the file at most once a second
    assert.equal(await statusOf(legacy, 'GET', '/api/v1/quarantine'), 200);
    assert.equal(await statusOf(legacy, 'DELETE', `/api/v1/quarantine/${absent}`), 404);
    assert.equal(await statusOf(legacy, 'POST', '/api/v1/scan', 'hello'), 200);
  });

  test('overview shows the API verdicts in the chart; metrics, healthz, signatures, config', async () => {
    await new Promise((r) => setTimeout(r, 100)); // the stats store writes in batches
    const c = new ConsoleClient(port);
    await c.login('admin', PASSWORD);
    const home = await c.get('/?period=24h');
    const bars = [...home.body.matchAll(/<rect class="bucket"[^>]*data-t="(\d+)"[^>]*data-found="(\d+)"/g)];
    assert.equal(bars.length, 24);
    assert.ok(bars.reduce((n, m) => n + Number(m[2]), 0) >= 3, 'found verdicts of the API test are in the chart');
    assert.match(home.body, /Avgate\.Test\.EICAR/);
    assert.match(home.body, /ClamAV 1\.0\.0/);
    assert.equal([...(await c.get('/?period=30d')).body.matchAll(/<rect class="bucket"/g)].length, 30);
    assert.equal((await c.get('/?period=<x>')).status, 200);

    const metrics = await rawRequest(port, 'GET', '/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /avgate_scans_total\{source="api",status="found"\} \d+/);
    assert.equal((await rawRequest(port, 'GET', '/healthz')).status, 200);

    const sigs = await c.get('/signatures');
    assert.equal(sigs.status, 200);
    assert.ok(sigs.body.includes(TEST_SIGNATURE_NAMES.eicarHash) && sigs.body.includes(TEST_SIGNATURE_NAMES.eicarBody));
    assert.match((await c.get('/signatures?q=ClamExe')).body, /1 names matching/);

    const conf = await c.get('/config');
    assert.equal(conf.status, 200);
    assert.match(conf.body, /export-password: &quot;?\*\*\*\*\*\*\*\*|export-password: \*\*\*\*\*\*\*\*/);
    assert.doesNotMatch(conf.body, /infected\b.*export/);
  });

  test('release (optional To) and delete from the item page', async () => {
    const c = new ConsoleClient(port);
    await c.login('admin', PASSWORD);
    await c.get(`/quarantine/${itemId}`);
    assert.equal((await c.post(`/quarantine/${itemId}/release`, { to: 'bad address\r\nRCPT' })).status, 400);
    const r = await c.post(`/quarantine/${itemId}/release`, { to: 'admin@example.org' });
    assert.equal(r.status, 200, r.body);
    assert.match(r.body, /id="notice">released to admin@example\.org/);
    assert.equal(sink.messages.length, 1);
    assert.deepEqual(sink.messages[0]?.rcptTo.map((a) => a.address), ['admin@example.org']);
    assert.match(r.body, /web:admin/, 'audit trail names the user');
    const zip = await c.get(`/quarantine/${itemId}/export.zip`);
    assert.equal(zip.status, 200);
    assert.equal(zip.headers['content-type'], 'application/zip');
    const del = await c.post(`/quarantine/${itemId}/delete`, {});
    assert.equal(del.status, 303);
    assert.equal(await quarantine.get(itemId), null);
    assert.equal((await c.get(`/quarantine/${itemId}`)).status, 404);
  });

  test('login rate limit: 429 with Retry-After after N failures, even for the right password', async () => {
    const c = new ConsoleClient(port);
    for (let i = 0; i < 3; i++) {
      await c.get('/login');
      assert.equal((await c.post('/login', { user: 'admin', password: `wrong-${i}` })).status, 401);
    }
    await c.get('/login');
    const r = await c.post('/login', { user: 'admin', password: PASSWORD });
    assert.equal(r.status, 429);
    assert.ok(Number(r.headers['retry-after']) > 0);
  });
});

describe('scanning API when the engine is down', () => {
  test('503 with status error (fail closed); /metrics behind a token when configured', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'avgate-web-down-'));
    const config = configFor(join(dir, 'state'), join(dir, 'no-such.sock'), dir, 9, ['  metrics-token-required: true']);
    const runtime = await openRuntime(config, { logger: silentLogger(), localClamd: 'never' });
    const web = new ConsoleServer({ config, configSource: 'x', scanner: runtime.scanner, engines: runtime.engines, health: new EngineHealth(['clamav']), quarantine: null, stats: null, log: silentLogger() });
    const { port } = await web.listen();
    try {
      const token = await web.tokens.add('ci');
      const reader = await web.tokens.add('metrics', ['read']);
      const r = await rawRequest(port, 'POST', '/api/v1/scan', { headers: { Authorization: `Bearer ${token}` }, body: 'hello' });
      assert.equal(r.status, 503);
      const v = JSON.parse(r.body) as Record<string, unknown>;
      assert.equal(v.status, 'error');
      assert.match(String(v.reason), /^AVG_ERR_/);
      assert.equal((await rawRequest(port, 'GET', '/metrics')).status, 401);
      const scanOnly = await rawRequest(port, 'GET', '/metrics', { headers: { Authorization: `Bearer ${token}` } });
      assert.equal(scanOnly.status, 403, 'a scanning token');
      assert.deepEqual(JSON.parse(scanOnly.body), { status: 'error', reason: 'the token "ci" lacks the scope "read"' });
      assert.equal((await rawRequest(port, 'GET', '/metrics', { headers: { Authorization: `Bearer ${reader}` } })).status, 200);
    } finally {
      await web.close();
      await runtime.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
