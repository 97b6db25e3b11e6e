import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { walkMessage } from '../../src/mime/index.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { closedPort } from '../helpers/fault-server.js';
import { capturedLog } from '../helpers/log.js';
import { clamZipAttachment, eicarAttachment, forwardedEicar, mailWith, startMailAvgate } from '../helpers/mail.js';
import { crlf, SmtpTestClient, startRecordingServer, type RecordedMessage, type RecordingServer, type TestReply } from '../helpers/smtp.js';

const EICAR_NAME = /Avgate\.Test\.EICAR\.(HDB|NDB)/;

/** One SMTP (or LMTP) transaction; returns the DATA replies (or the first refusal). */
async function send(port: number, from: string, to: string[], message: Buffer, lmtp = false): Promise<{ rcpt: TestReply[]; data: TestReply[] }> {
  const { client } = await SmtpTestClient.connect(port);
  try {
    await client.command(`${lmtp ? 'LHLO' : 'EHLO'} client.test`);
    const mail = await client.command(`MAIL FROM:<${from}>`);
    assert.equal(mail.code, 250, mail.text);
    const rcpt: TestReply[] = [];
    for (const r of to) rcpt.push(await client.command(`RCPT TO:<${r}>`));
    const accepted = rcpt.filter((r) => r.code === 250).length;
    const data = accepted === 0 ? [] : await client.data(message, lmtp ? accepted : 1);
    return { rcpt, data };
  } finally {
    await client.quit();
  }
}

/** Decoded documents of a delivered message, by file name (or content type). */
async function documentsOf(body: Buffer): Promise<Map<string, string>> {
  const docs = new Map<string, string>();
  await walkMessage(body, {}, async (d) => {
    const chunks = d.source();
    const text = chunks.kind === 'chunks' ? Buffer.concat(chunks.chunks).toString('utf8') : chunks.kind === 'buffer' ? chunks.data.toString('utf8') : '';
    docs.set(d.filename ?? `${d.contentType}#${d.id}`, text);
  });
  return docs;
}

function header(body: Buffer, name: string): string | null {
  const head = body.toString('latin1').split(/\r\n\r\n/)[0] ?? '';
  const m = new RegExp(`^${name}: (.*(?:\\r\\n[ \\t].*)*)`, 'mi').exec(head);
  return m ? (m[1] as string).replace(/\r\n[ \t]+/g, ' ') : null;
}

const MAIL_POLICY = [
  'notify-from: postmaster@gw.test',
  'default-group:',
  '  admin: [admin@gw.test]',
  'groups:',
  '  - name: strict',
  "    recipients: ['strict.*@example\\.net']",
  '    actions: {infected: reject}',
  '  - name: quiet',
  "    recipients: ['quiet@example\\.net']",
  '    actions: {infected: discard}',
  '    notify-sender: []',
  '    notify-recipients: []',
  '    notify-admin: []',
  '  - name: replace',
  "    recipients: ['replace@example\\.net']",
  '    actions: {infected: replace}',
  '    replace-with: {infected: REPLACEMENT}',
  '    copy-to: {infected: [audit@gw.test]}',
  '  - name: filtered',
  "    recipients: ['filter@example\\.net']",
  "    filter-by-name: ['\\.exe$']",
].join('\n');

describe('mail filter: scanning, groups and actions (recording next hop)', () => {
  let clamd: TestClamd;
  let dir: string;
  let hop: RecordingServer;
  let av: Awaited<ReturnType<typeof startMailAvgate>>;
  const delivered = (rcpt: string): RecordedMessage[] => hop.messages.filter((m) => m.rcptTo.some((r) => r.address === rcpt) && m.mailFrom.address !== '');
  const notices = (): RecordedMessage[] => hop.messages.filter((m) => m.mailFrom.address === '');
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-mail-'));
    hop = await startRecordingServer();
    await writeFile(join(dir, 'replacement.txt'), 'This file was infected and has been replaced.\n');
    av = await startMailAvgate({ clamd, stateDir: join(dir, 'state'), nextHop: `smtp:127.0.0.1:${hop.port}`, mailYaml: MAIL_POLICY.replace('REPLACEMENT', join(dir, 'replacement.txt')) });
  });
  after(async () => {
    await av?.stop();
    await hop?.close();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('clean mail: delivered once, the original bytes after the added headers', async () => {
    const msg = mailWith('clean-1', [{ name: 'data.bin', type: 'application/octet-stream', data: randomBytes(30_000) }]);
    const r = await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg);
    assert.equal(r.data[0]?.code, 250, r.data[0]?.text);
    const [m] = delivered('b@example.net');
    assert.ok(m);
    const body = m.body;
    const at = body.indexOf(msg);
    assert.ok(at > 0, 'the original follows the added headers unchanged');
    assert.equal(at + msg.length, body.length);
    const added = body.subarray(0, at).toString();
    assert.match(added, /^X-Virus-Scanned: avgate\r\n/m);
    assert.match(added, /^X-AV-Status: clean/m);
    assert.equal(notices().length, 0);
  });

  test('default: every document is scanned on its own, no whole-message prescan (prescan-max-size 0)', async () => {
    const c = av.mail.filter.counters;
    const scans0 = c.scans;
    const pre0 = c.prescanned;
    const clean = mailWith('docs-clean', [{ name: 'small.bin', type: 'application/octet-stream', data: randomBytes(3000) }]);
    assert.equal((await send(av.smtpPort, 'a@example.com', ['b@example.net'], clean)).data[0]?.code, 250);
    assert.equal(c.scans - scans0, 2, 'the text part and the attachment');
    assert.equal(c.prescanned - pre0, 0);
  });

  test('a message clamd reads differently (a delimiter followed by a tab) is still scanned part by part and its culprit removed', async () => {
    // RFC 2046 allows transport padding after a delimiter; mail clients see the attachment.
    const msg = Buffer.from(mailWith('tab-delim', [eicarAttachment()]).toString('latin1').replaceAll('--b-tab-delim\r\n', '--b-tab-delim\t\r\n'), 'latin1');
    assert.equal((await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg)).data[0]?.code, 250);
    const [d] = delivered('b@example.net').filter((x) => x.body.includes(Buffer.from('tab-delim')));
    assert.ok(d);
    assert.match(header(d.body, 'X-AV-Status') ?? '', /^infected/);
    assert.equal((await documentsOf(d.body)).has('eicar.com'), false, 'the attachment is removed');
  });

  test('EICAR in a base64-encoded attached message (single part, or the whole body): the encoded part is removed', async () => {
    const eicarB64 = eicarAttachment().data.toString('base64');
    const inner = crlf(['From: x@example.com', 'Subject: inner', 'Content-Type: application/octet-stream; name="in.com"', 'Content-Transfer-Encoding: base64', '', eicarB64, '']);
    const wrapped = (inner.toString('base64').match(/.{1,76}/g) ?? []).join('\r\n');
    const nested = crlf([
      'From: Alice <a@example.com>',
      'To: Bob <b@example.net>',
      'Subject: test b64-rfc822',
      'MIME-Version: 1.0',
      'Content-Type: multipart/mixed; boundary="BB"',
      '',
      '--BB',
      'Content-Type: text/plain',
      '',
      'see attached',
      '--BB',
      'Content-Type: message/rfc822',
      'Content-Transfer-Encoding: base64',
      '',
      wrapped,
      '--BB--',
      '',
    ]);
    const top = crlf(['From: Alice <a@example.com>', 'To: Bob <b@example.net>', 'Subject: test b64-top', 'MIME-Version: 1.0', 'Content-Type: message/rfc822', 'Content-Transfer-Encoding: base64', '', wrapped, '']);
    for (const [tag, msg] of [['b64-rfc822', nested], ['b64-top', top]] as const) {
      assert.equal((await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg)).data[0]?.code, 250, tag);
      const [d] = delivered('b@example.net').filter((x) => x.body.includes(Buffer.from(`test ${tag}`)));
      assert.ok(d, tag);
      assert.match(header(d.body, 'X-AV-Status') ?? '', /^infected/, tag);
      assert.equal(d.body.includes(Buffer.from(wrapped.slice(0, 60))), false, `${tag}: the encoded message is gone`);
      const docs = [...(await documentsOf(d.body)).values()].join('\n');
      assert.equal(docs.includes(eicarB64), false, `${tag}: no decoded document holds the virus`);
      assert.equal(docs.includes(eicarAttachment().data.toString('latin1')), false, tag);
    }
  });

  test('EICAR attachment, default group: attachment removed with a notice, subject tagged, sender/recipient/admin notified', async () => {
    const before = hop.messages.length;
    const msg = mailWith('eicar-1', [eicarAttachment(), { name: 'keep.txt', type: 'text/plain', data: Buffer.from('keep me') }]);
    const r = await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg);
    assert.equal(r.data[0]?.code, 250, r.data[0]?.text);
    const fresh = hop.messages.slice(before);
    const main = fresh.find((m) => m.mailFrom.address === 'a@example.com');
    assert.ok(main, 'the cleaned message was delivered');
    assert.match(header(main.body, 'Subject') ?? '', /^\[VIRUS REMOVED\] test eicar-1$/);
    assert.match(header(main.body, 'X-AV-Status') ?? '', /^infected \(.*Avgate\.Test\.EICAR/);
    const docs = await documentsOf(main.body);
    assert.equal(docs.has('eicar.com'), false, 'the infected attachment is gone');
    assert.equal(docs.get('keep.txt'), 'keep me', 'the clean attachment stays');
    assert.ok([...docs.values()].some((t) => /eicar\.com/.test(t) && EICAR_NAME.test(t)), 'a text part says what was removed and why');
    const noticeRcpts = fresh.filter((m) => m.mailFrom.address === '').flatMap((m) => m.rcptTo.map((x) => x.address)).sort();
    assert.deepEqual(noticeRcpts, ['a@example.com', 'admin@gw.test', 'b@example.net']);
    for (const n of fresh.filter((m) => m.mailFrom.address === '')) {
      const text = n.body.toString();
      assert.match(text, EICAR_NAME, 'the virus name macro is filled');
      assert.match(text, /test eicar-1/, 'the subject macro is filled');
      assert.match(header(n.body, 'From') ?? '', /postmaster@gw\.test/);
      assert.match(header(n.body, 'Auto-Submitted') ?? '', /auto-generated/);
    }
    const [quarantined] = await av.quarantine.list({ text: 'test eicar-1' });
    assert.ok(quarantined, 'the original is in quarantine');
    assert.match(quarantined.virusNames.join(), EICAR_NAME);
    assert.equal(quarantined.source, 'smtp');
  });

  test('clam.zip and EICAR inside an attached message are found and removed', async () => {
    for (const [id, msg] of [
      ['zip-1', mailWith('zip-1', [clamZipAttachment()])],
      ['fwd-1', forwardedEicar('fwd-1')],
    ] as const) {
      const before = hop.messages.length;
      const r = await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg);
      assert.equal(r.data[0]?.code, 250, `${id}: ${r.data[0]?.text}`);
      const main = hop.messages.slice(before).find((m) => m.mailFrom.address === 'a@example.com');
      assert.ok(main, id);
      assert.match(header(main.body, 'X-AV-Status') ?? '', /^infected/, id);
      const docs = await documentsOf(main.body);
      assert.equal(docs.has('clam.zip') || docs.has('inner.com'), false, `${id}: infected document removed`);
    }
  });

  test('groups: reject (5xx), discard (250, nothing delivered), filter by name', async () => {
    const before = hop.messages.length;
    const rej = await send(av.smtpPort, 'a@example.com', ['strict1@example.net'], mailWith('rej-1', [eicarAttachment()]));
    assert.equal(rej.data[0]?.code, 554, rej.data[0]?.text);
    const dis = await send(av.smtpPort, 'a@example.com', ['quiet@example.net'], mailWith('dis-1', [eicarAttachment()]));
    assert.equal(dis.data[0]?.code, 250);
    const fresh = hop.messages.slice(before);
    assert.equal(fresh.filter((m) => m.mailFrom.address === 'a@example.com').length, 0, 'nothing delivered for reject and discard');
    assert.equal(fresh.filter((m) => m.rcptTo.some((x) => x.address === 'quiet@example.net')).length, 0, 'no notices in the quiet group');
    // An SMTP transaction takes one group: a recipient of another group is deferred (452) to another transaction.
    const mixed = await send(av.smtpPort, 'a@example.com', ['b@example.net', 'strict2@example.net'], mailWith('mix-1', []));
    assert.deepEqual(
      mixed.rcpt.map((r) => r.code),
      [250, 452],
    );
    const f = await send(av.smtpPort, 'a@example.com', ['filter@example.net'], mailWith('filt-1', [{ name: 'setup.exe', type: 'application/octet-stream', data: randomBytes(100) }]));
    assert.equal(f.data[0]?.code, 250);
    const filtered = delivered('filter@example.net').at(-1);
    assert.ok(filtered);
    assert.match(header(filtered.body, 'X-AV-Status') ?? '', /^filtered/);
    assert.equal((await documentsOf(filtered.body)).has('setup.exe'), false);
  });

  test('replace: the infected document is replaced by the configured file; copy-to gets the unchanged original', async () => {
    const before = hop.messages.length;
    const msg = mailWith('repl-1', [eicarAttachment('bad.com')]);
    const r = await send(av.smtpPort, 'a@example.com', ['replace@example.net'], msg);
    assert.equal(r.data[0]?.code, 250, r.data[0]?.text);
    const fresh = hop.messages.slice(before);
    const main = fresh.find((m) => m.mailFrom.address === 'a@example.com');
    assert.ok(main);
    const docs = await documentsOf(main.body);
    assert.equal(docs.has('bad.com'), false);
    assert.ok([...docs.values()].includes('This file was infected and has been replaced.\n'), [...docs.keys()].join());
    const copy = fresh.find((m) => m.rcptTo.some((x) => x.address === 'audit@gw.test'));
    assert.ok(copy, 'copy-to got a copy');
    assert.ok(copy.body.equals(msg), 'the copy is the unchanged original');
  });

  test('malformed mail gets its status and the action, never a crash: 10 000 parts, nesting 200 deep, 1 MB header line, bad base64, broken boundary', async () => {
    const many = crlf([
      'Subject: many',
      'Content-Type: multipart/mixed; boundary=x',
      '',
      ...Array.from({ length: 10_000 }, (_, i) => ['--x', 'Content-Type: text/plain', '', `part ${i}`]).flat(),
      '--x--',
      '',
    ]);
    const deep = crlf([
      'Subject: deep',
      ...Array.from({ length: 200 }, (_, i) => [`Content-Type: multipart/mixed; boundary=d${i}`, '', `--d${i}`]).flat(),
      'Content-Type: text/plain',
      '',
      'bottom',
      '',
    ]);
    const longHeader = crlf(['Subject: long', `X-Long: ${'a'.repeat(1024 * 1024)}`, '', 'body', '']);
    const badBase64 = crlf([
      'Subject: bad64',
      'Content-Type: multipart/mixed; boundary=b',
      '',
      '--b',
      'Content-Type: application/octet-stream; name=x.bin',
      'Content-Transfer-Encoding: base64',
      '',
      '!!!! not base64 @@@@ ****',
      '--b--',
      '',
    ]);
    const broken = crlf(['Subject: broken', 'Content-Type: multipart/mixed; boundary=zz', '', '--zz', 'Content-Type: text/plain', '', 'never closed', '']);
    for (const [name, msg] of Object.entries({ many, deep, longHeader, badBase64, broken })) {
      const before = hop.messages.length;
      const r = await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg);
      assert.equal(r.data[0]?.code, 250, `${name}: ${r.data[0]?.text}`);
      const main = hop.messages.slice(before).find((m) => m.mailFrom.address === 'a@example.com');
      assert.ok(main, `${name}: delivered (corrupted → remove with notice, the default)`);
      assert.match(header(main.body, 'X-AV-Status') ?? '', /^corrupted/, name);
    }
  });
});

describe('mail filter: LMTP, engine and next hop failures', () => {
  let clamd: TestClamd;
  let dir: string;
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-mail-f-'));
  });
  after(async () => {
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('LMTP, three recipients in two groups: per-recipient replies; one group gets the cleaned message, the other a rejection', async () => {
    const hop = await startRecordingServer();
    const av = await startMailAvgate({ clamd, stateDir: join(dir, 'lmtp'), nextHop: `smtp:127.0.0.1:${hop.port}`, smtpYaml: 'protocol: lmtp', mailYaml: MAIL_POLICY });
    try {
      const r = await send(av.smtpPort, 'a@example.com', ['strict1@example.net', 'b@example.net', 'strict2@example.net'], mailWith('lmtp-1', [eicarAttachment()]), true);
      assert.deepEqual(
        r.data.map((x) => x.code),
        [554, 250, 554],
      );
      const main = hop.messages.filter((m) => m.mailFrom.address === 'a@example.com');
      assert.equal(main.length, 1);
      assert.deepEqual(
        main[0]?.rcptTo.map((x) => x.address),
        ['b@example.net'],
      );
      assert.match(header(main[0]?.body as Buffer, 'X-AV-Status') ?? '', /^infected/);
    } finally {
      await av.stop();
      await hop.close();
    }
  });

  test('LMTP, one message delivered to two groups that both notify the sender: the sender gets one notice', async () => {
    const hop = await startRecordingServer();
    await writeFile(join(dir, 'replacement2.txt'), 'replaced\n');
    const av = await startMailAvgate({ clamd, stateDir: join(dir, 'lmtp2'), nextHop: `smtp:127.0.0.1:${hop.port}`, smtpYaml: 'protocol: lmtp', mailYaml: MAIL_POLICY.replace('REPLACEMENT', join(dir, 'replacement2.txt')) });
    try {
      const r = await send(av.smtpPort, 'sender@example.org', ['b@example.net', 'replace@example.net'], mailWith('lmtp-2', [eicarAttachment()]), true);
      assert.deepEqual(
        r.data.map((x) => x.code),
        [250, 250],
      );
      const toSender = hop.messages.filter((m) => m.mailFrom.address === '' && m.rcptTo.some((x) => x.address === 'sender@example.org'));
      assert.equal(toSender.length, 1, 'one sender notice per message, not one per group share');
      const delivered = hop.messages.filter((m) => m.mailFrom.address === 'sender@example.org');
      assert.equal(delivered.length, 2, 'each group got its own version');
    } finally {
      await av.stop();
      await hop.close();
    }
  });

  test('engine down → 451 (the client keeps the mail); next hop refusing → 4xx', async () => {
    const hop = await startRecordingServer();
    const down = await startTestClamd();
    const av = await startMailAvgate({ clamd: down, stateDir: join(dir, 'down'), nextHop: `smtp:127.0.0.1:${hop.port}` });
    try {
      await down.stop();
      const r = await send(av.smtpPort, 'a@example.com', ['b@example.net'], mailWith('down-1', []));
      assert.equal(r.data[0]?.code, 451, r.data[0]?.text);
      assert.equal(hop.messages.length, 0, 'nothing passed unscanned');
    } finally {
      await av.stop();
      await hop.close();
    }
    const port = await closedPort();
    const av2 = await startMailAvgate({ clamd, stateDir: join(dir, 'nohop'), nextHop: `smtp:127.0.0.1:${port}` });
    try {
      const r = await send(av2.smtpPort, 'a@example.com', ['b@example.net'], mailWith('nohop-1', []));
      assert.equal(Math.floor((r.data[0]?.code ?? 0) / 100), 4, r.data[0]?.text);
    } finally {
      await av2.stop();
    }
  });
});

describe('mail filter: the opt-in whole-message prescan (mail.prescan-max-size)', () => {
  let clamd: TestClamd;
  let dir: string;
  let hop: RecordingServer;
  let av: Awaited<ReturnType<typeof startMailAvgate>>;
  const delivered = (rcpt: string): RecordedMessage[] => hop.messages.filter((m) => m.rcptTo.some((r) => r.address === rcpt) && m.mailFrom.address !== '');
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-mail-pre-'));
    hop = await startRecordingServer();
    av = await startMailAvgate({ clamd, stateDir: join(dir, 'state'), nextHop: `smtp:127.0.0.1:${hop.port}`, mailYaml: 'prescan-max-size: 32KiB' });
  });
  after(async () => {
    await av?.stop();
    await hop?.close();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('prescan: a small clean message takes one engine call; an infected one is then scanned document by document', async () => {
    const c = av.mail.filter.counters;
    const scans0 = c.scans;
    const pre0 = c.prescanned;
    const clean = mailWith('prescan-clean', [{ name: 'small.bin', type: 'application/octet-stream', data: randomBytes(3000) }]);
    assert.ok(clean.length < 32 * 1024);
    assert.equal((await send(av.smtpPort, 'a@example.com', ['b@example.net'], clean)).data[0]?.code, 250);
    assert.equal(c.scans - scans0, 1, 'one scan of the whole message');
    assert.equal(c.prescanned - pre0, 1);
    const [m] = delivered('b@example.net').filter((d) => d.body.includes(Buffer.from('prescan-clean')));
    assert.match(header(m?.body ?? Buffer.alloc(0), 'X-AV-Status') ?? '', /^clean/);

    const scans1 = c.scans;
    const dirty = mailWith('prescan-dirty', [eicarAttachment(), { name: 'other.txt', type: 'text/plain', data: Buffer.from('other') }]);
    assert.equal((await send(av.smtpPort, 'a@example.com', ['b@example.net'], dirty)).data[0]?.code, 250);
    // The whole message, then its three documents (text, eicar.com, other.txt).
    assert.equal(c.scans - scans1, 4);
    assert.equal(c.prescanned - pre0, 1);
    const [d] = delivered('b@example.net').filter((x) => x.body.includes(Buffer.from('prescan-dirty')));
    assert.ok(d);
    const docs = await documentsOf(d.body);
    assert.equal(docs.get('other.txt'), 'other', 'the clean document stays');
    assert.equal(docs.has('eicar.com'), false, 'the culprit is found and removed');

    // A MIME problem (invalid base64) makes the documents be scanned one by one despite a clean prescan.
    const scans2 = c.scans;
    const broken = Buffer.from(mailWith('prescan-broken', [{ name: 'x.bin', type: 'application/octet-stream', data: Buffer.from('hello') }]).toString().replace('aGVsbG8=', 'a$$$GVsbG8'));
    await send(av.smtpPort, 'a@example.com', ['b@example.net'], broken);
    assert.equal(c.scans - scans2, 3, 'whole message, then the two documents');
    assert.equal(c.prescanned - pre0, 1);
  });
});

describe('mail filter: quarantine and notices only once the outcome is final', () => {
  let clamd: TestClamd;
  let dir: string;
  let hop: RecordingServer;
  let av: Awaited<ReturnType<typeof startMailAvgate>>;
  /** What the next hop says to the next original (not to notices or copies): null = accept. */
  let answer: { code: number; text: string } | null = null;
  /** The next hop defers RCPT TO:<deferred@...>. */
  let full = false;
  const notices = (): RecordedMessage[] => hop.messages.filter((m) => m.mailFrom.address === '');
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-mail-final-'));
    hop = await startRecordingServer({
      data: (m) => (m.mailFrom.address === '' ? null : answer),
      rcpt: (a) => (a.startsWith('deferred') && full ? { code: 452, text: '4.2.2 Mailbox full' } : null),
    });
    av = await startMailAvgate({ clamd, stateDir: join(dir, 'state'), nextHop: `smtp:127.0.0.1:${hop.port}`, mailYaml: ['notify-from: postmaster@gw.test', 'default-group:', '  admin: [admin@gw.test]', '  quarantine: [infected]'].join('\n') });
  });
  after(async () => {
    await av?.stop();
    await hop?.close();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('a next hop deferral keeps no quarantine item and sends no notice (the retry does); a refusal keeps the item, notifies nobody; an acceptance does both once', async () => {
    const msg = mailWith('final-1', [eicarAttachment('eicar.com')]);
    // Deferred three times (an outage): the client retries each time.
    answer = { code: 451, text: '4.3.0 try again later' };
    for (let i = 0; i < 3; i++) {
      const r = await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg);
      assert.equal(r.data[0]?.code, 451, r.data[0]?.text);
    }
    assert.equal(await av.quarantine.count(), 0, 'no item per deferred attempt');
    assert.equal(notices().length, 0, 'no notice per deferred attempt');
    assert.equal(av.mail.filter.counters.quarantineWithdrawn, 3, 'each put was withdrawn again (counted apart: counters never go down)');

    // Refused for good: the client bounces it; the copy is kept, nobody is told it was delivered.
    answer = { code: 554, text: '5.7.1 no thanks' };
    const refused = await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg);
    assert.equal(refused.data[0]?.code, 554);
    assert.equal(await av.quarantine.count(), 1);
    assert.equal(notices().length, 0);

    // Accepted: one item more, and the notices.
    answer = null;
    const ok = await send(av.smtpPort, 'a@example.com', ['b@example.net'], msg);
    assert.equal(ok.data[0]?.code, 250, ok.data[0]?.text);
    assert.equal(await av.quarantine.count(), 2);
    const to = notices().flatMap((n) => n.rcptTo.map((r) => r.address)).sort();
    assert.deepEqual(to, ['a@example.com', 'admin@gw.test', 'b@example.net']);
    // Each deferred attempt's item was put and removed again (its object with it); the refused
    // one's object is new, the accepted one shares it.
    const trail = await av.quarantine.auditTrail();
    assert.equal(trail.filter((t) => t.action === 'delete').length, 3);
    const puts = trail.filter((t) => t.action === 'put').map((t) => t.detail['deduplicated']);
    assert.deepEqual([...puts].sort(), [false, false, false, false, true]);
  });

  test("Postfix's queue id (XFORWARD IDENT) is the notices' and the quarantine item's; the item's note names each document that is not clean", async () => {
    answer = null;
    const before = notices().length;
    const { client } = await SmtpTestClient.connect(av.smtpPort);
    try {
      await client.command('EHLO postfix.test');
      assert.equal((await client.command('XFORWARD NAME=mx.origin.test ADDR=192.0.2.9 IDENT=4XyZ12AbCd')).code, 250);
      assert.equal((await client.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await client.command('RCPT TO:<b@example.net>')).code, 250);
      const [r] = await client.data(mailWith('final-ident', [eicarAttachment('eicar.com'), { name: 'ok.txt', type: 'text/plain', data: Buffer.from('fine\n') }]), 1);
      assert.equal(r?.code, 250, r?.text);
    } finally {
      await client.quit();
    }
    const [item] = await av.quarantine.list({ text: 'final-ident' });
    assert.ok(item, 'kept');
    assert.equal(item.queueId, '4XyZ12AbCd');
    const note = item.note ?? '';
    assert.match(note, /^eicar\.com: infected: found Avgate\.Test\.EICAR/m);
    assert.doesNotMatch(note, /ok\.txt/, 'clean documents are not listed');
    assert.match(note, /^avgate queue id: [A-Z0-9]{12}$/m);
    const admin = notices().slice(before).find((n) => n.rcptTo.some((t) => t.address === 'admin@gw.test'));
    assert.ok(admin);
    assert.match(admin.body.toString('utf8'), /Queue id: +4XyZ12AbCd \(avgate [A-Z0-9]{12}\)/);
  });

  test('SMTP, the next hop defers one recipient and takes the other: the DATA reply is 4xx and the client sends to both again, so no notice yet; the item is kept (the message the next hop took names it)', async () => {
    answer = null;
    const before = notices().length;
    const msg = mailWith('final-partial', [eicarAttachment('eicar.com')]);
    full = true;
    try {
      const r = await send(av.smtpPort, 'a@example.com', ['b@example.net', 'deferred@example.net'], msg);
      assert.equal(r.data[0]?.code, 452, r.data[0]?.text);
      assert.equal(notices().length, before, 'no notice for an attempt the client sends again');
      assert.equal(await av.quarantine.count({ text: 'final-partial' }), 1);
    } finally {
      full = false;
    }
    const again = await send(av.smtpPort, 'a@example.com', ['b@example.net', 'deferred@example.net'], msg);
    assert.equal(again.data[0]?.code, 250, again.data[0]?.text);
    const to = notices().slice(before).flatMap((n) => n.rcptTo.map((x) => x.address)).sort();
    assert.deepEqual(to, ['a@example.com', 'admin@gw.test', 'b@example.net', 'deferred@example.net'], 'the attempt answered 250 notifies, once');
  });
});

describe('mail filter: LMTP, notices and the quarantine item follow each recipient’s reply from the next hop', () => {
  let clamd: TestClamd;
  let dir: string;
  let hop: RecordingServer;
  let av: Awaited<ReturnType<typeof startMailAvgate>>;
  const logs = capturedLog();
  /** Recipients the next hop (LMTP) defers; deferred@ and refused@ get their replies, others 250. */
  let full = true;
  const notices = (): RecordedMessage[] => hop.messages.filter((m) => m.mailFrom.address === '');
  const mailLines = () => logs.lines.filter((l) => l['msg'] === 'mail');
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-mail-rcpt-'));
    hop = await startRecordingServer({
      lmtp: true,
      data: (m) =>
        m.mailFrom.address === ''
          ? null
          : m.rcptTo.map((r) =>
              r.address.startsWith('deferred') && full ? { code: 452, text: '4.2.2 Mailbox full' } : r.address.startsWith('refused') ? { code: 550, text: '5.1.1 No such user' } : { code: 250, text: 'Ok' },
            ),
    });
    const mailYaml = ['notify-from: postmaster@gw.test', 'default-group:', '  admin: [admin@gw.test]', '  quarantine: [infected]'].join('\n');
    const s = await startAvgatePeer({
      clamd,
      stateDir: join(dir, 'state'),
      smtpYaml: ['protocol: lmtp', 'next-hop:', `  target: lmtp:127.0.0.1:${hop.port}`, 'hostname: avgate.test'].join('\n'),
      yaml: `mail:\n${mailYaml.split('\n').map((l) => `  ${l}`).join('\n')}`,
      logger: logs.log,
    });
    if (s.smtpPort === null || !s.mail) throw new Error('mail filter not started');
    av = { ...s, smtpPort: s.smtpPort, mail: s.mail };
  });
  after(async () => {
    await av?.stop();
    await hop?.close();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('one recipient delivered, one deferred, one refused: notices for the delivered one only; the item is kept; the retry of the deferred one notifies it', async () => {
    const msg = mailWith('per-rcpt', [eicarAttachment()]);
    const r = await send(av.smtpPort, 'a@example.com', ['b@example.net', 'deferred@example.net', 'refused@example.net'], msg, true);
    assert.deepEqual(
      r.data.map((x) => x.code),
      [250, 452, 550],
    );
    const to = notices().flatMap((n) => n.rcptTo.map((x) => x.address)).sort();
    assert.deepEqual(to, ['a@example.com', 'admin@gw.test', 'b@example.net'], 'no notice to a recipient the next hop deferred or refused');
    for (const n of notices()) {
      assert.doesNotMatch(n.body.toString('utf8'), /deferred@|refused@/, `the ${n.rcptTo[0]?.address} notice names only the delivered recipient`);
    }
    const sender = notices().find((n) => n.rcptTo.some((x) => x.address === 'a@example.com'));
    assert.match(sender?.body.toString('utf8') ?? '', /^ {2}To: +b@example\.net\r?$/m);
    // The message b@ got names the item in its removal notice: kept, with the share's recipients.
    const items = await av.quarantine.list({ text: 'per-rcpt' });
    assert.equal(items.length, 1);
    assert.deepEqual(items[0]?.recipients, ['b@example.net', 'deferred@example.net', 'refused@example.net']);
    assert.equal(av.mail.filter.counters.quarantineWithdrawn, 0);

    // The client sends it to the deferred recipient again: that attempt has its item and notices.
    full = false;
    const before = notices().length;
    const retry = await send(av.smtpPort, 'a@example.com', ['deferred@example.net'], msg, true);
    assert.deepEqual(
      retry.data.map((x) => x.code),
      [250],
    );
    const retryTo = notices().slice(before).flatMap((n) => n.rcptTo.map((x) => x.address)).sort();
    assert.deepEqual(retryTo, ['a@example.com', 'admin@gw.test', 'deferred@example.net']);
    assert.equal(await av.quarantine.count({ text: 'per-rcpt' }), 2);
    full = true;
  });

  test('nobody delivered (one deferred, one refused): no notices', async () => {
    const before = notices().length;
    const r = await send(av.smtpPort, 'a@example.com', ['deferred@example.net', 'refused@example.net'], mailWith('none-taken', [eicarAttachment()]), true);
    assert.deepEqual(
      r.data.map((x) => x.code),
      [452, 550],
    );
    assert.equal(notices().length, before);
  });

  test('a suppressed sender notice is in the message log line, with its reason', async () => {
    const before = mailLines().length;
    const bulk = await send(av.smtpPort, 'list@example.com', ['b@example.net'], mailWith('bulk-1', [eicarAttachment()], ['Precedence: bulk']), true);
    assert.equal(bulk.data[0]?.code, 250);
    const clean = await send(av.smtpPort, 'a@example.com', ['b@example.net'], mailWith('clean-log', []), true);
    assert.equal(clean.data[0]?.code, 250);
    const [bulkLine, cleanLine] = mailLines().slice(before) as Array<{ shares: Array<Record<string, unknown>> }>;
    assert.deepEqual(bulkLine?.shares[0]?.['suppressed'], [{ kind: 'sender', reason: 'bulk', detail: 'Precedence: bulk' }]);
    assert.equal(cleanLine?.shares[0] && 'suppressed' in cleanLine.shares[0], false, 'no field when nothing was suppressed');
    assert.equal(
      notices().some((n) => n.rcptTo.some((x) => x.address === 'list@example.com')),
      false,
    );
  });
});
