import assert from 'node:assert/strict';
import { stat, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { hashPassword, LoginLimiter, PasswordStore, SessionTable, TokenStore, verifyPassword } from '../../src/web/auth.js';
import { esc, html } from '../../src/web/html.js';
import { pathSegments } from '../../src/web/http.js';
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

test('sessions expire when idle and at their maximum age', () => {
  let now = 0;
  const sessions = new SessionTable(1000, 5000, () => now);
  const s = sessions.create('admin');
  assert.equal(s.id.length, 43, '32 random bytes, base64url');
  assert.notEqual(s.csrf, s.id);
  now = 900;
  assert.equal(sessions.get(s.id)?.user, 'admin');
  now = 1800; // 900 ms after the last use
  assert.equal(sessions.get(s.id)?.user, 'admin');
  now = 2801;
  assert.equal(sessions.get(s.id), null, 'idle timeout');
  const t = sessions.create('admin');
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
