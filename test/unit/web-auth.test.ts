import assert from 'node:assert/strict';
import { stat, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { hashPassword, LoginLimiter, parseScopes, PasswordStore, SessionTable, TokenStore, verifyPassword } from '../../src/web/auth.js';
import { esc, html } from '../../src/web/html.js';
import { hostAllowed, pathSegments } from '../../src/web/http.js';
import { multipartBoundary, MultipartError, readMultipartFile } from '../../src/web/multipart.js';

const FAST = { N: 1024, r: 8, p: 1, keylen: 32 };

test('scrypt: parameters travel with the hash; a wrong password or a tampered hash fails', async () => {
  const h = await hashPassword('correct horse', FAST);
  assert.match(h, /^scrypt\$1024\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
  assert.equal(await verifyPassword('correct horse', h), true);
  assert.equal(await verifyPassword('correct horsf', h), false);
  assert.notEqual(await hashPassword('correct horse', FAST), h, 'random salt');
  assert.equal(await verifyPassword('correct horse', h.replace('$1024$', '$1073741824$')), false, 'absurd N refused');
  assert.equal(await verifyPassword('x', 'plain'), false);
});

test('password and token files are 0600 and hold no plaintext', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-auth-'));
  try {
    const pw = new PasswordStore(join(dir, 'console', 'passwords.json'));
    await pw.setPassword('admin', 'secret-password');
    assert.equal((await stat(pw.path)).mode & 0o777, 0o600);
    assert.doesNotMatch(await readFile(pw.path, 'utf8'), /secret-password/);
    assert.equal(await pw.verify('admin', 'secret-password'), true);
    assert.equal(await pw.verify('admin', 'wrong'), false);
    assert.equal(await pw.verify('nobody', 'secret-password'), false);
    await assert.rejects(pw.setPassword('admin', 'short'), /at least 8/);
    await assert.rejects(pw.setPassword('bad name', 'long enough'), /user name/);

    const tokens = new TokenStore(join(dir, 'console', 'tokens.json'));
    const t = await tokens.add('ci');
    assert.match(t, /^avg_[A-Za-z0-9_-]{43}$/);
    assert.equal((await stat(tokens.path)).mode & 0o777, 0o600);
    assert.doesNotMatch(await readFile(tokens.path, 'utf8'), new RegExp(t.slice(4)));
    assert.equal(await tokens.verify(t), 'ci');
    assert.equal(await tokens.verify(`${t}x`), null);
    assert.equal(await tokens.verify(''), null);
    await assert.rejects(tokens.add('ci'), /exists/);
    assert.deepEqual((await tokens.list()).map((x) => x.name), ['ci']);
    assert.equal(await tokens.remove('ci'), true);
    assert.equal(await tokens.verify(t), null);
    assert.equal(await tokens.remove('ci'), false);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('password record version: a new password (even the same one) or a removed user changes it, also when another process writes the file', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-auth-'));
  try {
    const path = join(dir, 'console', 'passwords.json');
    const server = new PasswordStore(path);
    // `avgate admin passwd` is another process: its own store, the server's cache knows nothing of it.
    const cli = new PasswordStore(path);
    assert.equal(await server.version('ops'), null);
    await cli.setPassword('ops', 'first-password');
    const v1 = await server.authenticate('ops', 'first-password');
    assert.ok(v1);
    assert.equal(await server.version('ops'), v1);
    assert.equal(await server.authenticate('ops', 'wrong-password'), null);
    await cli.setPassword('ops', 'first-password');
    const v2 = await server.version('ops');
    assert.ok(v2 && v2 !== v1, 'a new record, at once');
    assert.equal(await server.authenticate('ops', 'first-password'), v2);
    assert.equal(await cli.remove('ops'), true);
    assert.equal(await server.version('ops'), null, 'removed');
    assert.equal(await server.verify('ops', 'first-password'), false);
    assert.equal(await cli.remove('ops'), false);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('token scopes: scan by default, as given, all for a token stored before scopes; the file keeps its format', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-auth-'));
  try {
    const tokens = new TokenStore(join(dir, 'console', 'tokens.json'));
    const ci = await tokens.add('ci');
    const ops = await tokens.add('ops', ['quarantine', 'read']);
    assert.deepEqual([...((await tokens.grant(ci))?.scopes ?? [])], ['scan']);
    assert.deepEqual([...((await tokens.grant(ops))?.scopes ?? [])], ['read', 'quarantine']);
    await assert.rejects(tokens.add('none', []), /at least one scope/);
    // A tokens file written before scopes: its tokens keep every scope.
    const file = JSON.parse(await readFile(tokens.path, 'utf8')) as { tokens: Record<string, { sha256: string; created: string; scopes?: string[] }> };
    assert.deepEqual(file.tokens.ops?.scopes, ['read', 'quarantine']);
    delete file.tokens.ci?.scopes;
    file.tokens.odd = { sha256: 'x'.repeat(64), created: '2026-01-01T00:00:00.000Z', scopes: 'all' as unknown as string[] };
    await writeFile(tokens.path, JSON.stringify(file));
    const old = new TokenStore(tokens.path);
    assert.deepEqual(await old.grant(ci), { name: 'ci', scopes: new Set(['scan', 'read', 'quarantine']) });
    assert.equal(await old.verify(ci), 'ci');
    assert.deepEqual(
      (await old.list()).map((t) => [t.name, t.scopes]),
      [
        ['ci', null],
        ['odd', []],
        ['ops', ['read', 'quarantine']],
      ],
    );
    assert.deepEqual(parseScopes('quarantine, scan'), ['scan', 'quarantine']);
    assert.throws(() => parseScopes('scan,admin'), /one or more of scan, read, quarantine/);
    assert.throws(() => parseScopes(''), /one or more of/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('Host: IP literals, localhost and the listed names with any port; another name is not ours (DNS rebinding)', () => {
  const names = new Set(['localhost', 'avgate.example.com']);
  for (const ok of ['127.0.0.1', '127.0.0.1:8080', '10.1.2.3:1', '[::1]', '[::1]:8080', '[::ffff:127.0.0.1]:80', 'localhost', 'LocalHost:8080', 'avgate.example.com:443', undefined]) {
    assert.equal(hostAllowed(ok, names), true, String(ok));
  }
  for (const bad of ['rebind.attacker.example:8080', 'rebind.attacker.example', 'localhost.:8080', 'x.localhost', 'avgate.example.com.evil', '127.0.0.1.nip.io', '::1', '[::1', '[evil]:80', '[::1]x', '127.0.0.1:99999', '127.0.0.1:', '', 'a b', '127.1']) {
    assert.equal(hostAllowed(bad, names), false, bad);
  }
});

test('sessions expire when idle and at their maximum age', () => {
  let now = 0;
  const sessions = new SessionTable(1000, 5000, () => now);
  const s = sessions.create('admin', 'v1');
  assert.equal(s.id.length, 43, '32 random bytes, base64url');
  assert.notEqual(s.csrf, s.id);
  now = 900;
  assert.equal(sessions.get(s.id)?.user, 'admin');
  now = 1800; // 900 ms after the last use
  assert.equal(sessions.get(s.id)?.user, 'admin');
  now = 2801;
  assert.equal(sessions.get(s.id), null, 'idle timeout');
  const t = sessions.create('admin', 'v1');
  for (now = 3000; now <= 8000; now += 500) sessions.get(t.id);
  assert.equal(sessions.get(t.id), null, 'absolute expiry despite use');
  assert.equal(sessions.get(undefined), null);
  assert.equal(sessions.get('forged'), null);
});

test('login limiter: N failures in the window, then Retry-After until the oldest leaves it', () => {
  let now = 0;
  const l = new LoginLimiter(3, 60_000, () => now);
  for (let i = 0; i < 3; i++) {
    assert.equal(l.retryAfter('10.0.0.1'), 0);
    l.fail('10.0.0.1');
    now += 1000;
  }
  assert.equal(l.retryAfter('10.0.0.1'), 57);
  assert.equal(l.retryAfter('10.0.0.2'), 0, 'per address');
  now = 60_001;
  assert.equal(l.retryAfter('10.0.0.1'), 0);
});

test('paths: traversal, encoded dots and slashes, NUL are not paths', () => {
  assert.deepEqual(pathSegments('/quarantine/abc?x=1'), ['quarantine', 'abc']);
  assert.deepEqual(pathSegments('/'), []);
  for (const bad of ['/quarantine/../../etc/passwd', '/quarantine/%2e%2e/%2e%2e/etc/passwd', '/quarantine/%2E%2E', '/a/%2f', '/a%5c..', '/a/%00', '/a//b', '//x', '/%zz', 'x']) {
    assert.equal(pathSegments(bad), null, bad);
  }
});

test('escaping: every interpolation is escaped unless it is Raw', () => {
  assert.equal(esc(`<script>alert('1')</script>&"\``), '&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt;&amp;&quot;&#96;');
  assert.equal(html`<p title="${'"><x'}">${'<b>'}${[html`<i>${'&'}</i>`]}</p>`.html, '<p title="&quot;&gt;&lt;x">&lt;b&gt;<i>&amp;</i></p>');
});

async function parse(body: Buffer, boundary: string, pieceSize = 7): Promise<{ file: Buffer; name: string }> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < body.length; i += pieceSize) pieces.push(body.subarray(i, i + pieceSize));
  const got: Buffer[] = [];
  const f = await readMultipartFile(Readable.from(pieces), boundary, async (c) => void got.push(Buffer.from(c)));
  return { file: Buffer.concat(got), name: f.fileName };
}

test('multipart: the file part, streamed, whatever the read boundaries', async () => {
  const content = Buffer.from('line1\r\n--not-the-boundary\r\n\r\nend');
  const body = Buffer.concat([
    Buffer.from('preamble\r\n--XyZ\r\nContent-Disposition: form-data; name="comment"\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a b.txt"\r\nContent-Type: text/plain\r\n\r\n'),
    content,
    Buffer.from('\r\n--XyZ--\r\nepilogue'),
  ]);
  for (const size of [1, 2, 7, 64, 4096]) {
    const r = await parse(body, 'XyZ', size);
    assert.deepEqual(r.file, content, `piece size ${size}`);
    assert.equal(r.name, 'a b.txt');
  }
  assert.equal(multipartBoundary('multipart/form-data; boundary="a b"'), 'a b');
  assert.equal(multipartBoundary('multipart/form-data; boundary=----x'), '----x');
  assert.equal(multipartBoundary('text/plain'), null);
});

test('multipart: malformed bodies are MultipartErrors', async () => {
  const bad = [
    'no boundary at all',
    '--B\r\nContent-Disposition: form-data; name="f"; filename="x"\r\n\r\nunterminated',
    '--B\r\nContent-Disposition: form-data; name="only-a-field"\r\n\r\nv\r\n--B--',
    `--B\r\nX-Long: ${'a'.repeat(9000)}\r\n\r\nv\r\n--B--`,
    '--B\r\nnot a header\r\n\r\nv\r\n--B--',
    '--B\r\nContent-Type: text/plain\r\n\r\nv\r\n--B--',
    // Two files: the second would go unscanned while the answer says free.
    '--B\r\nContent-Disposition: form-data; name="a"; filename="a"\r\n\r\n1\r\n--B\r\nContent-Disposition: form-data; name="b"; filename="b"\r\n\r\n2\r\n--B--',
    // An encoded file would be scanned still encoded.
    '--B\r\nContent-Disposition: form-data; name="f"; filename="x"\r\nContent-Transfer-Encoding: base64\r\n\r\nYQ==\r\n--B--',
  ];
  for (const b of bad) await assert.rejects(parse(Buffer.from(b), 'B'), MultipartError, b.slice(0, 40));
});

// A part that another parser (busboy, undici, Python's email, PHP) takes for a file must be the
// file here too: dropped as a field, it would go unscanned while the answer says free.
const PLAIN_FILE = 'Content-Disposition: form-data; name="g"; filename="clean.txt"\r\n\r\nclean';

test('multipart: a file part is one however its file name is written', async () => {
  const variants: [string, string][] = [
    [`Content-Disposition: form-data; name="f"; filename*=UTF-8''%e2%82%ac%20evil.com`, '€ evil.com'],
    [`Content-Disposition: form-data; name="f"; filename*=iso-8859-1'fr'%E9t%E9.com`, 'été.com'],
    [`Content-Disposition: form-data; name="f"; filename*0*=UTF-8''ev; filename*1*=il%2E; filename*2=com`, 'evil.com'],
    ['Content-Disposition: form-data; name="f"; FILENAME="evil.com"', 'evil.com'],
    ['Content-Disposition: form-data; name="f"; filename = "evil.com"', 'evil.com'],
    ['Content-Disposition: form-data;name=f;filename=evil.com', 'evil.com'],
    ['Content-Disposition: form-data; name="f"; filename=', ''],
    // No RFC 2231 value (no *0), but busboy's filename all the same.
    ['Content-Disposition: form-data; name="f"; filename*1*=evil.com', ''],
    // busboy 0.x and @fastify/busboy: an octet-stream part is a file; Python's email: a Content-Type name.
    ['Content-Disposition: form-data; name="f"\r\nContent-Type: application/octet-stream', ''],
    ['Content-Disposition: form-data; name="f"\r\nContent-Type: text/plain; name="evil.com"', ''],
  ];
  for (const [headers, fileName] of variants) {
    const alone = await parse(Buffer.from(`--B\r\n${headers}\r\n\r\nEVIL\r\n--B--`), 'B');
    assert.deepEqual([alone.file.toString(), alone.name], ['EVIL', fileName], headers);
    const withAnother = `--B\r\n${headers}\r\n\r\nEVIL\r\n--B\r\n${PLAIN_FILE}\r\n--B--`;
    await assert.rejects(parse(Buffer.from(withAnother), 'B'), /more than one file part/, headers);
  }
});

test('multipart: a part that parsers could read two ways is refused', async () => {
  const parts = [
    // Two Content-Disposition lines: busboy takes the first, undici the last.
    'Content-Disposition: form-data; name="f"; filename="evil.com"\r\nContent-Disposition: form-data; name="f"',
    'Content-Disposition: form-data; name="f"\r\nContent-Disposition: form-data; name="f"; filename="evil.com"',
    'Content-Disposition: form-data; name="f"\r\nContent-Type: text/plain\r\ncontent-type: application/octet-stream',
    // Folded: one header to dicer and Python's email.
    'Content-Disposition: form-data; name="f";\r\n filename="evil:com"',
    // PHP splits on ";" inside quotes; undici takes no backslash escape; busboy drops the space in "file name".
    'Content-Disposition: form-data; name="f; filename=evil.com"',
    'Content-Disposition: form-data; name="f\\"; filename="evil.com"',
    'Content-Disposition: form-data; name="f"; file name="evil.com"',
    'Content-Disposition: form-data; name="f" filename="evil.com"',
    // A bare LF ends the line to Python's email.
    'Content-Disposition: form-data; name="f\nContent-Disposition: form-data; name=x"',
  ];
  for (const p of parts) {
    const body = `--B\r\n${p}\r\n\r\nEVIL\r\n--B\r\n${PLAIN_FILE}\r\n--B--`;
    await assert.rejects(parse(Buffer.from(body), 'B'), MultipartError, p);
  }
});
