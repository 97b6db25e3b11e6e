import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { mailSchema } from '../../src/config/mail-schema.js';
import type { VerdictResult } from '../../src/core/verdict.js';
import {
  buildNotification, bulkReason, compileMailPolicy, crlfLines, decideMessage, formatMailDate, headerField, MAIL_ACTIONS, MAIL_STATUSES,
  NOTICE_MACROS, NOTIFICATION_MACROS, quotedPrintable, renderTemplate, type MailDocument, type MailGroup, type MessageFacts, type NotificationPlan,
} from '../../src/policy/mail/index.js';

const NOW = new Date('2025-07-01T12:00:00Z');
const facts = (extra: Partial<MessageFacts> = {}): MessageFacts => ({
  sender: 'alice@example.org',
  recipients: ['bob@example.com'],
  headers: [{ name: 'From', value: 'Alice <alice@example.org>' }, { name: 'Subject', value: 'Quarterly numbers' }],
  subject: 'Quarterly numbers',
  messageId: '<m1@example.org>',
  date: 'Tue, 01 Jul 2025 11:59:00 +0000',
  queueId: '4Q1',
  now: NOW,
  ...extra,
});
const group = (mail: unknown = {}): MailGroup => compileMailPolicy(mailSchema.parse(mail)).group('default');
const admin = group({ 'notify-from': 'av@gw.example.com', 'default-group': { admin: ['admin@example.com', 'sec@example.com'] } });
const doc = (verdict: VerdictResult, extra: Partial<MailDocument> = {}): MailDocument => ({ id: '2', fileName: 'invoice.zip', contentType: 'application/zip', verdict, ...extra });
const eicar = doc({ status: 'found', names: ['Win.Test.EICAR_HDB-1'] });

async function text(r: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function headersOf(msg: string): Map<string, string> {
  const head = msg.slice(0, msg.indexOf('\r\n\r\n')).replace(/\r\n[ \t]/g, ' ');
  const out = new Map<string, string>();
  for (const line of head.split('\r\n')) {
    const i = line.indexOf(':');
    out.set(line.slice(0, i).toLowerCase(), line.slice(i + 1).trim());
  }
  return out;
}

function decodeQP(s: string): string {
  const bytes = s.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
  return Buffer.from(bytes, 'latin1').toString('utf8');
}

function decodeWords(s: string): string {
  return s.replace(/=\?UTF-8\?B\?([^?]*)\?=\s*/g, (_m, b: string) => Buffer.from(b, 'base64').toString('utf8'));
}

test('notices to sender, each recipient and the admins, with the macros filled', () => {
  const p = decideMessage(admin, [eicar, doc({ status: 'free' }, { id: '1', fileName: null, contentType: 'text/plain' })], facts({ recipients: ['bob@example.com', 'carol@example.com'], quarantineId: 'Q-123' }));
  assert.deepEqual(p.notifications.map((n) => [n.kind, n.to]), [
    ['sender', ['alice@example.org']],
    ['recipient', ['bob@example.com']],
    ['recipient', ['carol@example.com']],
    ['admin', ['admin@example.com', 'sec@example.com']],
  ]);
  for (const n of p.notifications) {
    assert.equal(n.from, 'av@gw.example.com');
    assert.equal(n.envelopeFrom, '');
    assert.equal(n.date, NOW);
    assert.ok(!/\{\{[A-Z_]+\}\}/.test(n.subject + n.body), `every macro filled in the ${n.kind} notice`);
  }
  const [sender, bob, , adm] = p.notifications as [NotificationPlan, NotificationPlan, NotificationPlan, NotificationPlan];
  assert.equal(sender.subject, 'Virus found in your message: Quarterly numbers');
  assert.match(sender.body, /Message-ID: <m1@example\.org>/);
  assert.match(sender.body, /To: {9}bob@example\.com, carol@example\.com/);
  assert.match(sender.body, /was found to be infected: Win\.Test\.EICAR_HDB-1/);
  assert.match(sender.body, /Removed files: invoice\.zip/);
  assert.match(bob.body, /From: {7}alice@example\.org/);
  assert.match(bob.body, /Quarantine id: Q-123/);
  assert.equal(adm.subject, '[avgate] infected: Win.Test.EICAR_HDB-1 from alice@example.org');
  assert.match(adm.body, /^Queue id: {4}4Q1$/m);
  assert.match(adm.body, /^Subject: Quarterly numbers$/m, 'original headers');
  assert.equal(adm.attach, 'report');
});

test('templates: unknown macros stay, values are not expanded twice, headers stay one line', () => {
  assert.equal(renderTemplate('{{STATUS}} {{NOPE}}', { STATUS: 'x' }, 'body'), 'x {{NOPE}}');
  assert.equal(renderTemplate('{{SUBJECT}}', { SUBJECT: '{{REPORT}}', REPORT: 'secret' }, 'body'), '{{REPORT}}');
  assert.equal(renderTemplate('Re: {{SUBJECT}}', { SUBJECT: 'a\r\nBcc: victim@example.com\n' }, 'header'), 'Re: a Bcc: victim@example.com');
  assert.equal(renderTemplate('{{HEADERS}}', { HEADERS: 'A: 1\r\nB: 2\0' }, 'body'), 'A: 1\nB: 2');
});

test('no header injection through the subject, the sender or names', async () => {
  const evil = facts({ subject: 'hi\r\nBcc: victim@example.com\r\n\r\nbody', sender: 'alice@example.org' });
  const p = decideMessage(admin, [doc({ status: 'found', names: ['Evil\r\nX-Injected: yes'] })], evil);
  for (const n of p.notifications) {
    const msg = await text(buildNotification(n));
    const head = msg.slice(0, msg.indexOf('\r\n\r\n'));
    assert.ok(!/^Bcc:/im.test(head) && !/^X-Injected:/im.test(head), head);
    assert.ok(head.split('\r\n').every((l) => l.length <= 998));
  }
});

test('no sender notice for viruses that forge senders, for bulk, list and automatic mail, for <>', () => {
  const kinds = (p: ReturnType<typeof decideMessage>) => p.notifications.map((n) => n.kind);
  for (const name of ['Win.Worm.Mydoom-1', 'Email-Worm.Win32.Netsky.q', 'Heuristics.Phishing.Email.SpoofedDomain', 'Email.Trojan.Agent-1', 'W32/Bagle.A@mm', 'Win.Trojan.MassMailer']) {
    const p = decideMessage(admin, [doc({ status: 'found', names: ['Eicar-Signature', name] })], facts());
    assert.deepEqual(kinds(p), ['recipient', 'admin'], name);
    assert.equal(p.suppressed[0]?.reason, 'forging-virus');
  }
  const bulk: Array<[MessageFacts['headers'], string]> = [
    [[{ name: 'Precedence', value: 'bulk' }], 'Precedence: bulk'],
    [[{ name: 'precedence', value: ' List ' }], 'Precedence: list'],
    [[{ name: 'Precedence', value: 'junk' }], 'Precedence: junk'],
    [[{ name: 'List-Id', value: '<news.example.org>' }], 'List-Id'],
    [[{ name: 'Auto-Submitted', value: 'auto-replied' }], 'Auto-Submitted: auto-replied'],
    [[{ name: 'Auto-Submitted', value: 'auto-generated (out of office)' }], 'Auto-Submitted: auto-generated'],
  ];
  for (const [headers, reason] of bulk) {
    assert.equal(bulkReason({ sender: 'a@b.c', headers }), reason);
    const p = decideMessage(admin, [eicar], facts({ headers }));
    assert.deepEqual(kinds(p), ['recipient', 'admin'], reason);
    assert.deepEqual(p.suppressed, [{ kind: 'sender', reason: 'bulk', detail: reason }]);
  }
  assert.equal(bulkReason({ sender: 'a@b.c', headers: [{ name: 'Auto-Submitted', value: 'no (a person wrote this)' }, { name: 'Precedence', value: 'first-class' }] }), null);
  assert.deepEqual(decideMessage(admin, [eicar], facts({ sender: '' })).suppressed, [{ kind: 'sender', reason: 'null-sender', detail: 'the envelope sender is <>' }]);
  assert.equal(decideMessage(admin, [eicar], facts({ sender: 'AV@gw.example.com' })).suppressed[0]?.reason, 'loop');
  // Configurable: bulk mail may be answered, and the forging list replaced.
  const lenient = group({ 'notify-sender-of-bulk': true, 'sender-forging-names': ['^Win\\.Worm\\.Specific'] });
  assert.deepEqual(kinds(decideMessage(lenient, [eicar], facts({ headers: [{ name: 'List-Id', value: '<l>' }] }))), ['sender', 'recipient']);
  assert.deepEqual(kinds(decideMessage(lenient, [doc({ status: 'found', names: ['Win.Worm.Mydoom-1'] })], facts())), ['sender', 'recipient']);
  assert.deepEqual(kinds(decideMessage(lenient, [doc({ status: 'found', names: ['Win.Worm.Specific-1'] })], facts())), ['recipient']);
  assert.deepEqual(kinds(decideMessage(lenient, [eicar], facts({ sender: '' }))), ['recipient'], '<> can never be notified');
});

test('a built notice is a complete RFC 5322 message with CRLF line ends', async () => {
  const p = decideMessage(group({ 'default-group': { 'notify-recipients': [], 'notify-admin': [] } }), [eicar], facts({ subject: 'Ünïcödé numbers — a long subject line that goes on and on and on past seventy-eight characters' }));
  const n = p.notifications[0] as NotificationPlan;
  const msg = await text(buildNotification(n, { messageId: '<n1@localhost>' }));
  assert.ok(!/[^\r]\n/.test(msg), 'no bare LF');
  assert.ok(msg.split('\r\n').every((l) => l.length <= 78), 'short lines (encoded words, quoted-printable)');
  const h = headersOf(msg);
  assert.equal(h.get('from'), 'Antivirus gateway <postmaster@localhost>');
  assert.equal(h.get('to'), '<alice@example.org>');
  assert.equal(decodeWords(h.get('subject') ?? ''), n.subject);
  assert.equal(h.get('date'), 'Tue, 01 Jul 2025 12:00:00 +0000');
  assert.equal(h.get('message-id'), '<n1@localhost>');
  assert.equal(h.get('references'), '<m1@example.org>');
  assert.equal(h.get('mime-version'), '1.0');
  assert.equal(h.get('auto-submitted'), 'auto-generated');
  assert.equal(h.get('content-type'), 'text/plain; charset=utf-8');
  assert.equal(h.get('content-transfer-encoding'), 'quoted-printable');
  assert.equal(decodeQP(msg.slice(msg.indexOf('\r\n\r\n') + 4)).replace(/\r\n/g, '\n'), `${n.body}\n`);
  assert.match(headersOf(await text(buildNotification(n))).get('message-id') ?? '', /^<[0-9a-z]+\.[0-9a-f]{18}@localhost>$/);
  assert.equal(formatMailDate(new Date('2024-02-29T03:04:05Z')), 'Thu, 29 Feb 2024 03:04:05 +0000');
});

test('admin notice with the report attached, and with the original streamed as message/rfc822', async () => {
  const g = group({ 'default-group': { admin: ['admin@example.com'], 'admin-attachment': 'original', 'notify-sender': [], 'notify-recipients': [] } });
  const n = decideMessage(g, [eicar], facts()).notifications[0] as NotificationPlan;
  assert.equal(n.kind, 'admin');
  assert.throws(() => buildNotification(n), /needs options\.original/);
  // The original has LF line ends, a CR cut from its LF by a chunk border, and 8-bit bytes.
  const original = Readable.from([Buffer.from('Subject: x\nFrom: a@b.c\r'), Buffer.from('\n\nbody \xe9\n', 'latin1')]);
  const msg = await text(buildNotification(n, { original, boundary: 'BOUNDARY' }));
  assert.match(headersOf(msg).get('content-type') ?? '', /^multipart\/mixed; boundary="BOUNDARY"$/);
  const parts = msg.split('--BOUNDARY');
  assert.equal(parts.length, 5, 'preamble, text, report, original, end');
  assert.match(parts[1] ?? '', /^\r\nContent-Type: text\/plain; charset=utf-8\r\n/);
  assert.match(parts[2] ?? '', /Content-Disposition: attachment; filename="report\.txt"/);
  assert.match(parts[2] ?? '', /Status: {6}infected/);
  assert.equal(parts[3], '\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename="original.eml"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSubject: x\r\nFrom: a@b.c\r\n\r\nbody \ufffd\r\n\r\n');
  assert.equal(parts[4], '--\r\n');
  const reportOnly = decideMessage(group({ 'default-group': { admin: ['admin@example.com'] } }), [eicar], facts()).notifications.find((x) => x.kind === 'admin') as NotificationPlan;
  assert.equal((await text(buildNotification(reportOnly, { boundary: 'B' }))).split('--B').length, 4, 'text and report only');
});

test('a big original is pulled as the notice is read, never held whole', async () => {
  const g = group({ 'default-group': { admin: ['admin@example.com'], 'admin-attachment': 'original', 'notify-sender': [], 'notify-recipients': [] } });
  const n = decideMessage(g, [eicar], facts()).notifications[0] as NotificationPlan;
  const CHUNKS = 2000; // 2000 × 64 KiB = 125 MiB if it were buffered
  let produced = 0;
  let opened = false;
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  const original = () => {
    opened = true;
    return new Readable({
      read() {
        produced++;
        this.push(produced > CHUNKS ? null : chunk);
      },
    });
  };
  const stream = buildNotification(n, { original });
  assert.equal(opened, false, 'opened only when reading gets there');
  let read = 0;
  let maxAhead = 0;
  for await (const c of stream) {
    read += (c as Buffer).length;
    if (opened) maxAhead = Math.max(maxAhead, produced * chunk.length - read);
  }
  assert.ok(read > CHUNKS * chunk.length);
  assert.ok(maxAhead < 2 * 1024 * 1024, `at most a few chunks ahead of the reader (${maxAhead} bytes)`);
});

test('encoders: quoted-printable, encoded words, LF → CRLF across chunks', async () => {
  assert.equal(quotedPrintable('a=b \nc\t'), 'a=3Db=20\r\nc=09');
  const long = quotedPrintable('x'.repeat(200));
  assert.ok(long.split('\r\n').every((l) => l.length <= 76));
  assert.equal(decodeQP(quotedPrintable('žluťoučký kůň '.repeat(10))), 'žluťoučký kůň '.repeat(10));
  assert.equal(headerField('Subject', 'plain'), 'Subject: plain\r\n');
  assert.equal(decodeWords(headerField('Subject', 'ěščř'.repeat(30)).slice(9, -2).replace(/\r\n /g, ' ')), 'ěščř'.repeat(30));
  assert.match(headerField('Subject', 'looks =?encoded?= but is not'), /^Subject: =\?UTF-8\?B\?/, 'literal =? is encoded');
  const out: Buffer[] = [];
  for await (const b of crlfLines(Readable.from([Buffer.from('a\r'), Buffer.from('\nb\n'), Buffer.from('\n'), Buffer.from('c\r\n')]))) out.push(b);
  assert.equal(Buffer.concat(out).toString(), 'a\r\nb\r\n\r\nc\r\n');
});

test('docs/mail-policy.md names every status, action and macro', () => {
  const doc = readFileSync(new URL('../../docs/mail-policy.md', import.meta.url), 'utf8');
  for (const s of [...MAIL_STATUSES, ...MAIL_ACTIONS]) assert.ok(doc.includes(`\`${s}\``), s);
  for (const m of new Set([...NOTIFICATION_MACROS, ...NOTICE_MACROS])) assert.ok(doc.includes(`{{${m}}}`), m);
});
