import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PasswordStore, TokenStore } from '../../src/web/auth.js';

const ROOT = new URL('../..', import.meta.url).pathname;

function cli(args: string[], input = '') {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'test/helpers/cli.ts'), ...args], { cwd: ROOT, encoding: 'utf8', input, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('avgate admin', () => {
  let dir: string;
  let conf: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-admin-'));
    conf = join(dir, 'avgate.yaml');
    await writeFile(conf, `state-dir: ${join(dir, 'state')}\nlog:\n  level: silent\n`);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('passwd --password-stdin stores a scrypt hash in a 0600 file', async () => {
    const r = cli(['--config', conf, 'admin', 'passwd', '--user', 'ops', '--password-stdin'], 'a long password\n');
    assert.equal(r.code, 0, r.stderr);
    const path = join(dir, 'state', 'console', 'passwords.json');
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    const text = await readFile(path, 'utf8');
    assert.match(text, /"hash": "scrypt\$\d+\$\d+\$\d+\$/);
    assert.doesNotMatch(text, /a long password/);
    assert.equal(await new PasswordStore(path).verify('ops', 'a long password'), true);
    assert.equal(cli(['--config', conf, 'admin', 'passwd', '--password-stdin'], 'short\n').code, 1);
  });

  test('token add prints the token once; list and remove', async () => {
    const add = cli(['--config', conf, 'admin', 'token', 'add', 'ci']);
    assert.equal(add.code, 0, add.stderr);
    const token = add.stdout.trim();
    const path = join(dir, 'state', 'console', 'tokens.json');
    assert.equal(await new TokenStore(path).verify(token), 'ci');
    assert.doesNotMatch(await readFile(path, 'utf8'), new RegExp(token));
    assert.match(cli(['--config', conf, 'admin', 'token', 'list']).stdout, /^ci\t\d{4}-/m);
    assert.equal(cli(['--config', conf, 'admin', 'token', 'remove', 'ci']).code, 0);
    assert.equal(await new TokenStore(path).verify(token), null);
    assert.equal(cli(['--config', conf, 'admin', 'token', 'remove', 'ci']).code, 1);
    assert.equal(cli(['--config', conf, 'admin', 'bogus']).code, 2);
  });

  test('passwd --remove removes a console user', async () => {
    const path = join(dir, 'state', 'console', 'passwords.json');
    assert.equal(cli(['--config', conf, 'admin', 'passwd', '--user', 'gone', '--password-stdin'], 'a long password\n').code, 0);
    const r = cli(['--config', conf, 'admin', 'passwd', '--remove', 'gone']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^user gone removed/);
    assert.equal(await new PasswordStore(path).version('gone'), null);
    assert.deepEqual(await new PasswordStore(path).users(), ['ops'], 'the others are kept');
    assert.equal(cli(['--config', conf, 'admin', 'passwd', '--remove', 'gone']).code, 1, 'no such user');
    assert.equal(cli(['--config', conf, 'admin', 'passwd', '--remove', 'ops', '--password-stdin'], 'a long password\n').code, 2);
  });

  test('token add --scope; scan only by default; list shows the scopes, all for a token from before scopes', async () => {
    const path = join(dir, 'state', 'console', 'tokens.json');
    const ci = cli(['--config', conf, 'admin', 'token', 'add', 'scanner']);
    assert.equal(ci.code, 0, ci.stderr);
    assert.match(ci.stderr, /created with scopes scan;/);
    const ops = cli(['--config', conf, 'admin', 'token', 'add', 'ops', '--scope', 'quarantine,read']);
    assert.equal(ops.code, 0, ops.stderr);
    assert.deepEqual([...((await new TokenStore(path).grant(ops.stdout.trim()))?.scopes ?? [])], ['read', 'quarantine']);
    const bad = cli(['--config', conf, 'admin', 'token', 'add', 'x', '--scope', 'scan,admin']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /one or more of scan, read, quarantine/);
    // A token stored before scopes existed: no "scopes" field.
    const file = JSON.parse(await readFile(path, 'utf8')) as { tokens: Record<string, unknown> };
    file.tokens.old = { sha256: 'a'.repeat(64), created: '2026-01-01T00:00:00.000Z' };
    await writeFile(path, JSON.stringify(file));
    const list = cli(['--config', conf, 'admin', 'token', 'list']);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^old\t2026-01-01T00:00:00\.000Z\tall \(made before scopes\)$/m);
    assert.match(list.stdout, /^ops\t\S+\tread,quarantine$/m);
    assert.match(list.stdout, /^scanner\t\S+\tscan$/m);
  });
});
