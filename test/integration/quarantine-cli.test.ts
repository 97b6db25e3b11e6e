import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { QuarantineRecord } from '../../src/quarantine/types.js';
import { startSmtpSink, type SmtpSink } from '../../tools/peers/postfix.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { eicarAttachment, mailWith, startMailAvgate } from '../helpers/mail.js';
import { SmtpTestClient, startRecordingServer } from '../helpers/smtp.js';
import { filesUnder } from '../helpers/files.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const EICAR_NAME = /Avgate\.Test\.EICAR\.(HDB|NDB)/;

/** `avgate --config CFG ARGS` as a child (async: serve runs in this process and must keep answering). */
function cli(config: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/helpers/cli.ts'), '--config', config, ...args], {
      cwd: ROOT,
      env: { ...process.env, USER: 'tester' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

async function send(port: number, from: string, to: string[], message: Buffer): Promise<number | undefined> {
  const { client } = await SmtpTestClient.connect(port);
  try {
    await client.command('EHLO client.test');
    await client.command(`MAIL FROM:<${from}>`);
    for (const r of to) await client.command(`RCPT TO:<${r}>`);
    return (await client.data(message))[0]?.code;
  } finally {
    await client.quit();
  }
}

// Infected mail is discarded and kept in quarantine; no notices, so the sink sees only releases.
const MAIL_POLICY = [
  'default-group:',
  '  actions: {infected: discard}',
  '  quarantine: [infected]',
  '  notify-sender: []',
  '  notify-recipients: []',
  '  notify-admin: []',
].join('\n');

describe('avgate quarantine: the mail filter quarantines, the CLI lists, exports, releases, deletes', () => {
  let dir: string;
  let clamd: TestClamd;
  let sink: SmtpSink;
  let av: Awaited<ReturnType<typeof startMailAvgate>>;
  let config: string;
  let stateDir: string;
  const original = mailWith('q-1', [eicarAttachment()]);
  let id: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-qcli-'));
    stateDir = join(dir, 'state');
    clamd = await startTestClamd();
    sink = await startSmtpSink({ dir: join(dir, 'sink') });
    av = await startMailAvgate({ clamd, stateDir, nextHop: `smtp:127.0.0.1:${sink.port}`, mailYaml: MAIL_POLICY });
    config = join(dir, 'cli.yaml');
    await writeFile(config, [`state-dir: ${stateDir}`, 'smtp:', '  hostname: avgate.test', '  next-hop:', `    target: smtp:127.0.0.1:${sink.port}`, ''].join('\n'));
  });
  after(async () => {
    await av?.stop();
    await sink?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('an EICAR mail is discarded and listed with its facts; the key file exists 0600', async () => {
    assert.equal(await send(av.smtpPort, 'a@example.com', ['b@example.net', 'c@example.net'], original), 250);
    const r = await cli(config, ['quarantine', 'list', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const items = JSON.parse(r.stdout) as QuarantineRecord[];
    assert.equal(items.length, 1);
    const item = items[0]!;
    id = item.id;
    assert.match(id, /^[0-9a-z]{20,}$/);
    assert.equal(item.source, 'smtp');
    assert.deepEqual(item.statuses, ['infected']);
    assert.match(item.virusNames.join(), EICAR_NAME);
    assert.equal(item.sender, 'a@example.com');
    assert.deepEqual(item.recipients, ['b@example.net', 'c@example.net']);
    assert.equal(item.subject, 'test q-1');
    assert.equal(item.messageId, '<q-1@example.com>');
    assert.equal(item.action, 'discard');
    assert.equal(item.size, original.length);
    assert.equal((await stat(join(stateDir, 'quarantine.key'))).mode & 0o777, 0o600);
    // Filters reach the store: a text that is not there lists nothing, one that is lists it.
    assert.deepEqual(JSON.parse((await cli(config, ['quarantine', 'list', '--json', '--text', "' OR 1=1 --"])).stdout), []);
    assert.equal((JSON.parse((await cli(config, ['quarantine', 'list', '--json', '--status', 'infected', '--since', '1h'])).stdout) as unknown[]).length, 1);
    assert.equal((JSON.parse((await cli(config, ['quarantine', 'list', '--json', '--source', 'lmtp'])).stdout) as unknown[]).length, 0);
    // A status no item can have is a usage error, not an empty list.
    const bogus = await cli(config, ['quarantine', 'list', '--status', 'infekted']);
    assert.equal(bogus.code, 2);
    assert.match(bogus.stderr, /--status: one of clean, infected, .*found/);
    assert.equal((JSON.parse((await cli(config, ['quarantine', 'list', '--json', '--status', 'found'])).stdout) as unknown[]).length, 0);
    const text = await cli(config, ['quarantine', 'list']);
    assert.match(text.stdout, new RegExp(`^${id}  .*smtp  infected  Avgate\\.Test\\.EICAR`, 'm'));
  });

  test('show: record, audit trail and the header block', async () => {
    const r = await cli(config, ['quarantine', 'show', id]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^subject: +test q-1$/m);
    assert.match(r.stdout, /^audit:\n {2}\S+ {2}put {2}system/m);
    assert.match(r.stdout, /^headers:\nFrom: Alice <a@example\.com>\nTo: Bob <b@example\.net>\nSubject: test q-1\n/m);
    assert.doesNotMatch(r.stdout, /preamble/, 'only the header block');
    const missing = await cli(config, ['quarantine', 'show', 'zzzzzzzzzzzzzzzzzzzzzzzz']);
    assert.equal(missing.code, 1);
    assert.equal((await cli(config, ['quarantine', 'show', '../../etc/passwd'])).code, 1);
  });

  test('export: the exact original, 0600, never over an existing file; --zip opens with "infected" only', async () => {
    const plain = join(dir, 'out.eml');
    const r = await cli(config, ['quarantine', 'export', id, plain]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await readFile(plain), original);
    assert.equal((await stat(plain)).mode & 0o777, 0o600);
    assert.equal((await cli(config, ['quarantine', 'export', id, plain])).code, 1, 'an existing file is not replaced');
    assert.deepEqual(await readFile(plain), original);
    const zip = join(dir, 'out.zip');
    assert.equal((await cli(config, ['quarantine', 'export', id, zip, '--zip'])).code, 0);
    const zipped = await readFile(zip);
    assert.equal(zipped.indexOf(eicarBytes().subarray(0, 40)), -1);
    const unzip = spawnSync('unzip', ['-p', '-P', 'infected', zip, `${id}.eml`], { maxBuffer: 1 << 24 });
    const py = spawnSync('python3', ['-c', 'import zipfile,sys\nz=zipfile.ZipFile(sys.argv[1])\nsys.stdout.buffer.write(z.read(sys.argv[2], pwd=sys.argv[3].encode() if len(sys.argv)>3 else None))', zip, `${id}.eml`, 'infected']);
    assert.ok(!unzip.error || !py.error, 'unzip or python3 is needed to check the archive');
    if (!unzip.error) assert.deepEqual(unzip.stdout, original);
    if (!py.error) {
      assert.deepEqual(py.stdout, original);
      const noPassword = spawnSync('python3', ['-c', 'import zipfile,sys\nz=zipfile.ZipFile(sys.argv[1])\nsys.stdout.buffer.write(z.read(sys.argv[2]))', zip, `${id}.eml`]);
      assert.notEqual(noPassword.status, 0);
      assert.match(noPassword.stderr.toString(), /password/i);
    }
    const trail = await av.quarantine.auditTrail(id);
    assert.deepEqual(
      trail.filter((a) => a.action === 'export').map((a) => [a.actor, a.detail.zip]),
      [
        ['cli:tester', false],
        ['cli:tester', true],
      ],
    );
  });

  test('release --to with header/SMTP injection is refused and nothing is sent', async () => {
    const before = (await sink.messages()).length;
    for (const evil of ['a@b>\r\nRCPT TO:<evil@x>', 'x@y.example\nBcc: evil@x', 'a b@c', 'evil']) {
      const r = await cli(config, ['quarantine', 'release', id, '--to', 'ok@y.example', '--to', evil]);
      assert.equal(r.code, 1, `${JSON.stringify(evil)}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /refusing address .*nothing was sent/);
    }
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await sink.messages()).length, before);
    assert.equal((await av.quarantine.get(id))?.record.releasedAt, null);
  });

  test('release --to delivers the original byte for byte to smtp-sink', async () => {
    const r = await cli(config, ['quarantine', 'release', id, '--to', 'x@y.example']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^x@y\.example: 250/m);
    const [msg] = await sink.waitForMessages(1, 10_000);
    assert.ok(msg, 'smtp-sink got the release');
    assert.match(msg.mailArgs, /^<a@example\.com>/);
    assert.deepEqual(msg.rcptArgs.map((a) => a.split(' ')[0]), ['<x@y.example>']);
    // smtp-sink dumps lines with LF endings; everything else is the original's bytes.
    assert.deepEqual(msg.content, Buffer.from(original.toString('latin1').replace(/\r\n/g, '\n'), 'latin1'));
    const record = (await av.quarantine.get(id))!.record;
    assert.match(record.releasedAt ?? '', /^\d{4}-\d\d-\d\dT/);
    const release = (await av.quarantine.auditTrail(id)).filter((a) => a.action === 'release');
    assert.equal(release.length, 1);
    assert.equal(release[0]!.actor, 'cli:tester');
    assert.deepEqual(release[0]!.detail.recipients, ['x@y.example']);
  });

  test('no EICAR bytes anywhere in the quarantine directory', async () => {
    const eicar = eicarBytes();
    const files = await filesUnder(join(stateDir, 'quarantine'));
    assert.ok(files.some((f) => f.includes('objects')), 'the object is there to be searched');
    // Read in another process: opening and closing the SQLite files here would drop the POSIX
    // locks the running quarantine's connection holds on them (they are per process), and the
    // next CLI command to close would take itself for the last connection and remove the WAL.
    const needles = [eicar.subarray(0, 30), Buffer.from(eicar.toString('base64').slice(0, 40))].map((b) => b.toString('base64'));
    const search =
      "const fs = require('fs'); const { files, needles } = JSON.parse(fs.readFileSync(0, 'utf8'));" +
      "const hits = []; for (const f of files) { const d = fs.readFileSync(f); needles.forEach((n, i) => { if (d.indexOf(Buffer.from(n, 'base64')) >= 0) hits.push(`${f} (${i === 0 ? 'raw' : 'base64 form'})`); }); }" +
      'process.stdout.write(JSON.stringify(hits));';
    const hits = JSON.parse(execFileSync(process.execPath, ['-e', search], { input: JSON.stringify({ files, needles }), encoding: 'utf8' })) as string[];
    assert.deepEqual(hits, []);
  });

  test('usage errors exit 2; delete removes the item', async () => {
    assert.equal((await cli(config, ['quarantine', 'list', '--bogus'])).code, 2);
    assert.equal((await cli(config, ['quarantine', 'list', '--source', 'nntp'])).code, 2);
    assert.equal((await cli(config, ['quarantine', 'release'])).code, 2);
    assert.equal((await cli(config, ['quarantine', 'frobnicate'])).code, 2);
    // A dry run lists what a purge would take, as `list` shows it, and takes nothing.
    const preview = await cli(config, ['quarantine', 'purge', '--older-than', '0s', '--dry-run']);
    assert.equal(preview.code, 0, preview.stderr);
    assert.match(preview.stdout, new RegExp(`^${id}  .*smtp  infected  Avgate\\.Test\\.EICAR`, 'm'));
    assert.match(preview.stdout, /^dry run: would purge 1 item\(s\), .* freed; 1 item\(s\), .* now; nothing removed$/m);
    assert.ok(await av.quarantine.get(id), 'still there');
    const del = await cli(config, ['quarantine', 'delete', id]);
    assert.equal(del.code, 0, del.stderr);
    assert.equal((await cli(config, ['quarantine', 'delete', id])).code, 1);
    assert.deepEqual(JSON.parse((await cli(config, ['quarantine', 'list', '--json'])).stdout), []);
    assert.equal(await av.quarantine.get(id), null);
    assert.deepEqual(await readdir(join(stateDir, 'quarantine', 'objects')), []);
    const dry = await cli(config, ['quarantine', 'purge', '--older-than', '0s', '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /^dry run: would purge 0 item\(s\), 0 B freed; 0 item\(s\), 0 B now; nothing removed$/m);
    const purge = await cli(config, ['quarantine', 'purge', '--older-than', '0s']);
    assert.equal(purge.code, 0, purge.stderr);
    assert.match(purge.stdout, /^purged 0 item/);
  });

  test('the JSON API: list, show, release (addresses checked), delete — with a bearer token only', async () => {
    const web = av.web;
    assert.ok(web && av.consolePort, 'the console runs');
    const token = await web.tokens.add('qapi', ['read', 'quarantine']);
    const base = `http://127.0.0.1:${av.consolePort}/api/v1/quarantine`;
    const auth = { Authorization: `Bearer ${token}` };
    const second = mailWith('q-api', [eicarAttachment()]);
    assert.equal(await send(av.smtpPort, 'api@example.com', ['d@example.net'], second), 250);

    assert.equal((await fetch(base)).status, 401, 'no token');
    assert.equal((await fetch(base, { headers: { Authorization: 'Bearer avg_wrong' } })).status, 401);
    const list = (await (await fetch(`${base}?text=q-api`, { headers: auth })).json()) as { total: number; items: QuarantineRecord[] };
    assert.equal(list.total, 1);
    const item = list.items[0]!;
    assert.equal(item.sender, 'api@example.com');
    assert.equal((await fetch(`${base}?source=nntp`, { headers: auth })).status, 400);
    const shown = (await (await fetch(`${base}/${item.id}`, { headers: auth })).json()) as { record: QuarantineRecord; headers: string };
    assert.equal(shown.record.id, item.id);
    assert.match(shown.headers, /^Subject: test q-api$/m);
    assert.equal((await fetch(`${base}/..%2f..%2fetc%2fpasswd`, { headers: auth })).status, 404);

    const before = (await sink.messages()).length;
    const bad = await fetch(`${base}/${item.id}/release`, { method: 'POST', headers: auth, body: JSON.stringify({ to: ['x@y.example>\r\nRCPT TO:<evil@x.example'] }) });
    assert.equal(bad.status, 400);
    assert.equal((await sink.messages()).length, before, 'nothing sent for an injected address');
    const ok = await fetch(`${base}/${item.id}/release`, { method: 'POST', headers: auth, body: JSON.stringify({ to: ['z@y.example'] }) });
    assert.equal(ok.status, 200, await ok.clone().text());
    assert.deepEqual(((await ok.json()) as { recipients: string[] }).recipients, ['z@y.example']);
    const got = await sink.waitForMessages(before + 1, 10_000);
    const msg = got[got.length - 1]!;
    assert.deepEqual(msg.content, Buffer.from(second.toString('latin1').replace(/\r\n/g, '\n'), 'latin1'));
    assert.equal((await av.quarantine.auditTrail(item.id)).find((a) => a.action === 'release')?.actor, 'api:qapi');

    assert.equal((await fetch(`${base}/${item.id}`, { method: 'DELETE', headers: auth })).status, 200);
    assert.equal((await fetch(`${base}/${item.id}`, { headers: auth })).status, 404);
    assert.equal((await fetch(`${base}/${item.id}`, { method: 'DELETE', headers: auth })).status, 404);
  });

  test('release of a message received with BODY=8BITMIME SMTPUTF8 (UTF-8 headers, 8-bit body) goes out with both again', async () => {
    const utf8 = mailWith('q-utf8', [eicarAttachment()], ['Comments: Grüße aus Köln', 'Content-Transfer-Encoding: 8bit']);
    const { client } = await SmtpTestClient.connect(av.smtpPort);
    try {
      await client.command('EHLO client.test');
      assert.equal((await client.command('MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8')).code, 250);
      assert.equal((await client.command('RCPT TO:<b@example.net>')).code, 250);
      assert.equal((await client.data(utf8))[0]?.code, 250);
    } finally {
      await client.quit();
    }
    const [item] = await av.quarantine.list({ text: 'q-utf8' });
    assert.ok(item, 'quarantined');
    // smtp-sink announces no SMTPUTF8: a next hop that records the MAIL parameters instead.
    const recorder = await startRecordingServer();
    try {
      const hopConfig = join(dir, 'cli-recorder.yaml');
      await writeFile(hopConfig, [`state-dir: ${stateDir}`, 'smtp:', '  hostname: avgate.test', '  next-hop:', `    target: smtp:127.0.0.1:${recorder.port}`, ''].join('\n'));
      const r = await cli(hopConfig, ['quarantine', 'release', item.id]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const mail = recorder.commands.find((c) => c.startsWith('MAIL '));
      assert.ok(mail, recorder.commands.join('\n'));
      const args = JSON.parse(mail.slice(mail.indexOf('{'))) as Record<string, unknown>;
      assert.equal(args.BODY, '8BITMIME', mail);
      assert.equal(args.SMTPUTF8, true, mail);
      assert.deepEqual(recorder.messages[0]?.body, utf8, 'byte for byte');
    } finally {
      await recorder.close();
    }
  });
});
