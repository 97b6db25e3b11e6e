import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mailSchema } from '../../src/config/mail-schema.js';
import type { VerdictResult } from '../../src/core/verdict.js';
import {
  compileMailPolicy, decideMessage, MAIL_STATUSES, prefixSubject, type MailDocument, type MailGroup, type MailPlan, type MailStatus, type MessageFacts,
} from '../../src/policy/mail/index.js';

const NOW = new Date('2025-07-01T12:00:00Z');
const facts = (extra: Partial<MessageFacts> = {}): MessageFacts => ({
  sender: 'alice@example.org',
  recipients: ['bob@example.com', 'carol@example.com'],
  headers: [{ name: 'Subject', value: 'Hello' }, { name: 'Message-ID', value: '<m1@example.org>' }],
  subject: 'Hello',
  messageId: '<m1@example.org>',
  date: 'Tue, 01 Jul 2025 11:59:00 +0000',
  queueId: 'Q1',
  now: NOW,
  ...extra,
});

const groupOf = (mail: unknown = {}, name = 'default'): MailGroup => compileMailPolicy(mailSchema.parse(mail)).group(name);
const defaults = groupOf({ 'default-group': { admin: ['av@example.com'] } });

let n = 0;
const d = (verdict: VerdictResult | null, extra: Partial<MailDocument> = {}): MailDocument => ({
  id: String(++n), fileName: `file${n}.bin`, contentType: 'application/octet-stream', verdict, ...extra,
});
const free = (): MailDocument => d({ status: 'free' });
const infected = (name = 'Win.Test.EICAR_HDB-1'): MailDocument => d({ status: 'found', names: [name] });
const error = (): MailDocument => d({ status: 'error', code: 'AVG_ERR_ENGINE_CONNECT', cause: 'refused' });

/** A document of each status, by the default classification. */
const OF: Readonly<Record<MailStatus, () => MailDocument>> = {
  clean: free,
  infected: () => infected(),
  suspicious: () => d({ status: 'found', names: ['Heuristics.Phishing.Email'] }),
  filtered: () => d({ status: 'free' }, { fileName: 'run.exe' }),
  protected: () => d({ status: 'skipped', reason: 'encrypted (Heuristics.Encrypted.Zip)' }),
  corrupted: () => d({ status: 'free' }, { problems: ['boundary'] }),
  error,
  unknown: () => d({ status: 'unknown', raw: 'what?' }),
  skipped: () => d({ status: 'skipped', reason: 'larger than max-checked-size' }),
};
const filtering = { 'filter-by-name': ['\\.exe$'] };

function summary(p: MailPlan): string {
  return `${p.status} ${p.reply.kind === 'deliver' ? 'deliver' : `${p.reply.kind} ${p.reply.code} ${p.reply.enhanced}`} [${p.documents.map((x) => x.edit.kind).join(',')}]`;
}

test('defaults per status (Kaspersky-like): the table of docs/mail-policy.md', () => {
  const g = groupOf({ 'default-group': { admin: ['av@example.com'], ...filtering } });
  const expected: Record<MailStatus, string> = {
    clean: 'clean deliver [keep,keep]',
    infected: 'infected deliver [keep,remove]',
    suspicious: 'suspicious deliver [keep,remove]',
    filtered: 'filtered deliver [keep,remove]',
    protected: 'protected deliver [keep,remove]',
    corrupted: 'corrupted deliver [keep,remove]',
    error: 'error tempfail 451 4.3.0 [keep,keep]',
    unknown: 'unknown deliver [keep,remove]',
    skipped: 'skipped deliver [keep,remove]',
  };
  for (const s of MAIL_STATUSES) {
    const p = decideMessage(g, [free(), OF[s]()], facts());
    assert.equal(summary(p), expected[s], s);
    assert.equal(p.quarantine, s !== 'clean' && s !== 'error', `quarantine for ${s}`);
    const kinds = p.notifications.map((x) => x.kind).join(',');
    assert.equal(kinds, s === 'infected' ? 'sender,recipient,recipient,admin' : '', `notifications for ${s}`);
    assert.equal(p.subjectPrefix, s === 'infected' ? '[VIRUS REMOVED]' : s === 'suspicious' ? '[SUSPICIOUS]' : null, `prefix for ${s}`);
  }
});

test('each action can be set per status', () => {
  const g = groupOf({ 'default-group': { actions: { infected: 'discard', suspicious: 'reject', filtered: 'replace', protected: 'unchanged', clean: 'tempfail' }, 'replace-with': { filtered: '/srv/avgate/blocked.txt' }, ...filtering } });
  const infectedPlan = decideMessage(g, [infected()], facts());
  assert.deepEqual(infectedPlan.reply, { kind: 'discard', code: 250, enhanced: '2.7.0', text: 'Ok, discarded: infected (Win.Test.EICAR_HDB-1)' });
  assert.deepEqual(decideMessage(g, [OF.suspicious()], facts()).reply, { kind: 'reject', code: 554, enhanced: '5.7.0', text: 'Rejected: suspicious (Heuristics.Phishing.Email)' });
  const replaced = decideMessage(groupOf({ 'default-group': { actions: { filtered: 'replace' }, 'replace-with': { filtered: '/srv/avgate/blocked.txt' }, ...filtering } }), [OF.filtered()], facts());
  assert.deepEqual(replaced.documents[0]?.edit, { kind: 'replace', file: '/srv/avgate/blocked.txt', fileName: 'blocked.txt', contentType: 'text/plain; charset=utf-8' });
  const kept = decideMessage(groupOf({ 'default-group': { actions: { protected: 'unchanged' } } }), [OF.protected()], facts());
  assert.equal(summary(kept), 'protected deliver [keep]');
  assert.equal(decideMessage(g, [free()], facts()).reply.kind, 'tempfail', 'even clean can be told to wait');
});

test('message-level actions win: the worst status that has one decides', () => {
  // infected → remove (document level), error → tempfail: the unscanned part must not pass.
  const p = decideMessage(defaults, [infected(), error(), free()], facts());
  assert.equal(p.status, 'infected');
  assert.deepEqual(p.statuses, ['infected', 'error']);
  assert.equal(p.decidedBy, 'error');
  assert.equal(summary(p), 'infected tempfail 451 4.3.0 [keep,keep,keep]');
  // A permanent answer for a worse status outranks the tempfail: retrying cannot change it.
  const g = groupOf({ 'default-group': { actions: { infected: 'reject' } } });
  assert.equal(decideMessage(g, [error(), infected()], facts()).reply.kind, 'reject');
  // Between two message-level actions, the worse status's wins, whatever the action.
  const g2 = groupOf({ 'default-group': { actions: { infected: 'discard', corrupted: 'reject' } } });
  const p2 = decideMessage(g2, [OF.corrupted(), infected()], facts());
  assert.equal(p2.reply.kind, 'discard');
  assert.equal(p2.decidedBy, 'infected');
  const g3 = groupOf({ 'default-group': { actions: { protected: 'reject' } } });
  assert.equal(decideMessage(g3, [OF.protected(), error()], facts()).reply.kind, 'reject');
});

test('tempfail has no side effects: nothing quarantined, copied or notified', () => {
  const g = groupOf({ 'default-group': { admin: ['av@example.com'], 'copy-to': { infected: ['copy@example.com'], error: ['copy@example.com'] }, 'notify-admin': ['infected', 'error'] } });
  const p = decideMessage(g, [infected(), error()], facts());
  assert.equal(p.reply.kind, 'tempfail');
  assert.equal(p.quarantine, false);
  assert.deepEqual(p.copyTo, []);
  assert.deepEqual(p.notifications, []);
  assert.deepEqual(p.addHeaders, []);
  assert.equal(p.subjectPrefix, null);
});

test('discard and reject still quarantine, copy and notify as configured', () => {
  const g = groupOf({ 'default-group': { admin: ['av@example.com'], actions: { infected: 'reject' }, 'copy-to': { infected: ['copy@example.com', 'av@example.com'], suspicious: ['av@example.com'] } } });
  const p = decideMessage(g, [infected(), OF.suspicious()], facts());
  assert.equal(p.reply.kind, 'reject');
  assert.equal(p.quarantine, true);
  assert.deepEqual(p.copyTo, ['copy@example.com', 'av@example.com'], 'union over statuses, no duplicates');
  // The phishing name forges senders: no sender notice, and the plan says why.
  assert.deepEqual(p.notifications.map((x) => x.kind), ['recipient', 'recipient', 'admin']);
  assert.deepEqual(p.suppressed, [{ kind: 'sender', reason: 'forging-virus', detail: 'Heuristics.Phishing.Email forges senders' }]);
  assert.deepEqual(p.documents.map((x) => x.edit.kind), ['keep', 'keep'], 'no edits: nothing is delivered');
  assert.match(p.notifications[0]?.body ?? '', /What was done: the message was rejected \(554 5\.7\.0\)/);
  // A rejection is bounced to the sender by the client: no notice of ours on top.
  const alone = decideMessage(g, [infected()], facts());
  assert.deepEqual(alone.notifications.map((x) => x.kind), ['recipient', 'recipient', 'admin']);
  assert.deepEqual(alone.suppressed.map((x) => x.reason), ['rejected']);
  const discarded = decideMessage(groupOf({ 'default-group': { actions: { infected: 'discard' } } }), [infected()], facts());
  assert.deepEqual(discarded.notifications.map((x) => x.kind), ['sender', 'recipient', 'recipient'], 'a discarded one: the sender is told');
});

test('quarantine, copy-to and notifications follow every status the message has; clean only when all clean', () => {
  const g = groupOf({ 'default-group': { quarantine: ['protected'], 'copy-to': { clean: ['archive@example.com'] }, 'notify-admin': [], 'notify-sender': [], 'notify-recipients': ['protected'] } });
  const p = decideMessage(g, [infected(), OF.protected(), free()], facts());
  assert.equal(p.quarantine, true, 'protected is one of the statuses');
  assert.deepEqual(p.copyTo, [], 'clean does not count next to other statuses');
  assert.deepEqual(p.notifications.map((x) => x.to), [['bob@example.com'], ['carol@example.com']]);
  assert.deepEqual(decideMessage(g, [free(), free()], facts()).copyTo, ['archive@example.com']);
  assert.deepEqual(decideMessage(g, [], facts()).copyTo, ['archive@example.com'], 'a message without documents is clean');
});

test('headers: X-Virus-Scanned and X-AV-Status with names, per add-headers; ours are removed first', () => {
  const p = decideMessage(defaults, [infected('Eicar-Signature'), OF.suspicious()], facts());
  assert.deepEqual(p.addHeaders, [{ name: 'X-Virus-Scanned', value: 'avgate' }, { name: 'X-AV-Status', value: 'infected (Eicar-Signature, Heuristics.Phishing.Email)' }]);
  assert.deepEqual(p.removeHeaders, ['X-AV-Status']);
  assert.deepEqual(decideMessage(defaults, [free()], facts()).addHeaders, [{ name: 'X-Virus-Scanned', value: 'avgate' }, { name: 'X-AV-Status', value: 'clean' }]);
  const quiet = groupOf({ 'x-virus-scanned': null, 'default-group': { 'add-headers': ['infected'] } });
  assert.deepEqual(decideMessage(quiet, [free()], facts()).addHeaders, []);
  assert.deepEqual(decideMessage(quiet, [infected('X')], facts()).addHeaders, [{ name: 'X-AV-Status', value: 'infected (X)' }]);
  // Engine names are not trusted in a header: no CR/LF, no 8-bit, bounded.
  const evil = decideMessage(defaults, [infected('Bad\r\nX-Injected: 1'), infected('Ünï'), ...Array.from({ length: 60 }, (_, i) => infected(`Win.Trojan.Long-Name-${i}`))], facts());
  const v = evil.addHeaders[1]?.value ?? '';
  assert.ok(!/[\r\n]/.test(v) && /^[\x20-\x7e]+$/.test(v), v);
  assert.ok(v.length < 500 && v.endsWith(', ...)'), v);
});

test('subject prefix: the worst status that has one; helper keeps encoded words and avoids doubling', () => {
  const g = groupOf({ 'default-group': { 'prefix-subject': { infected: '', protected: '[LOCKED]' } } });
  assert.equal(decideMessage(g, [infected(), OF.protected()], facts()).subjectPrefix, '[LOCKED]', 'infected has none here');
  assert.equal(prefixSubject('=?UTF-8?B?w6k=?=', '[VIRUS REMOVED]'), '[VIRUS REMOVED] =?UTF-8?B?w6k=?=');
  assert.equal(prefixSubject('[VIRUS REMOVED] hi', '[VIRUS REMOVED]'), '[VIRUS REMOVED] hi');
  assert.equal(prefixSubject(null, '[V]'), '[V]');
  assert.equal(prefixSubject('hi', '[VÍRUS]\r\nBcc: x'), `=?UTF-8?B?${Buffer.from('[VÍRUS] Bcc: x').toString('base64')}?= hi`, 'encoded, one line');
});

test('removal notices: per document, with its name, status and reason; quarantine id on the second call', () => {
  const docs = [d({ status: 'found', names: ['Eicar-Signature'] }, { fileName: 'invoice.zip', contentType: 'application/zip' }), free()];
  const first = decideMessage(defaults, docs, facts());
  assert.equal(first.quarantine, true);
  const edit = first.documents[0]?.edit;
  assert.equal(edit?.kind, 'remove');
  const notice = edit?.kind === 'remove' ? edit.notice : '';
  assert.match(notice, /File: {4}invoice\.zip/);
  assert.match(notice, /Type: {4}application\/zip/);
  assert.match(notice, /Status: {2}infected/);
  assert.match(notice, /Found: {3}Eicar-Signature/);
  assert.match(notice, /Quarantine id: none/);
  const second = decideMessage(defaults, docs, facts({ quarantineId: '20250701T120000Z-0123456789abcdef' }));
  const edit2 = second.documents[0]?.edit;
  assert.match(edit2?.kind === 'remove' ? edit2.notice : '', /Quarantine id: 20250701T120000Z-0123456789abcdef/);
  assert.match(second.report, /Quarantine: {2}20250701T120000Z-0123456789abcdef/);
  assert.deepEqual({ ...second, documents: [], report: '', notifications: [] }, { ...first, documents: [], report: '', notifications: [] }, 'the rest is the same');
  // The whole-message document (raw scan): removing it replaces the body with the notice.
  const whole = decideMessage(defaults, [d({ status: 'found', names: ['X'] }, { whole: true, fileName: null, contentType: null })], facts());
  assert.equal(whole.documents[0]?.whole, true);
  assert.match(whole.documents[0]?.edit.kind === 'remove' ? whole.documents[0].edit.notice : '', /File: {4}\(the whole message\)/);
});

test('the filter is per group; its rules make documents filtered, with their own action', () => {
  const p = compileMailPolicy(mailSchema.parse({
    'default-group': { 'filter-by-name': ['\\.exe$'], 'filter-by-type': ['application/x-msdownload'] },
    groups: [{ name: 'devs', recipients: ['.*@dev\\.example\\.com'], 'filter-by-name': [], 'filter-by-type': [], actions: { filtered: 'reject' } },
      { name: 'strict', recipients: ['.*@strict\\.example\\.com'], actions: { filtered: 'reject' } }],
  }));
  const exe = () => d({ status: 'free' }, { fileName: 'tool.exe' });
  const zipped = () => d({ status: 'free' }, { fileName: 'tools.zip', contentType: 'application/zip', archiveNames: ['a/readme.txt', 'a/tool.EXE'] });
  const typed = () => d({ status: 'free' }, { fileName: 'x', contentType: 'application/x-msdownload' });
  assert.equal(summary(decideMessage(p.group('default'), [exe(), zipped(), typed()], facts())), 'filtered deliver [remove,remove,remove]');
  assert.equal(summary(decideMessage(p.group('devs'), [exe(), zipped(), typed()], facts())), 'clean deliver [keep,keep,keep]');
  const strict = decideMessage(p.group('strict'), [zipped()], facts());
  assert.equal(strict.reply.kind, 'reject');
  assert.match(strict.documents[0]?.reason ?? '', /file name "a\/tool\.EXE" in the archive matches filter-by-name/);
});

test('the report lists every document', () => {
  const p = decideMessage(defaults, [infected('Eicar-Signature'), d({ status: 'free' }, { fileName: null, contentType: 'text/plain' })], facts({ size: 1234 }));
  assert.match(p.report, /^Message-ID: {2}<m1@example\.org>$/m);
  assert.match(p.report, /^Recipients: {2}bob@example\.com, carol@example\.com$/m);
  assert.match(p.report, /^Group: {7}default$/m);
  assert.match(p.report, /^Size: {8}1234$/m);
  assert.match(p.report, /^Action: {6}the message was delivered with 1 document removed$/m);
  assert.match(p.report, /^ {2}1\. file\d+\.bin \[application\/octet-stream\] infected \(Eicar-Signature\); removed$/m);
  assert.match(p.report, /^ {2}2\. \(part \d+\) \[text\/plain\] clean; kept$/m);
});

test('the report says what happened to each document when the message was not delivered: discarded, rejected, deferred — never kept', () => {
  const docs = () => [infected('Eicar-Signature'), d({ status: 'free' }, { fileName: null, contentType: 'text/plain' })];
  for (const [action, word] of [['discard', 'discarded'], ['reject', 'rejected'], ['tempfail', 'deferred']] as const) {
    const g = groupOf({ 'default-group': { admin: ['av@example.com'], actions: { infected: action } } });
    const p = decideMessage(g, docs(), facts({ quarantineId: '20250701T120000Z-0123456789abcdef' }));
    assert.equal(p.reply.kind, action);
    assert.match(p.report, new RegExp(`^ {2}1\\. file\\d+\\.bin \\[application/octet-stream\\] infected \\(Eicar-Signature\\); ${word}$`, 'm'), p.report);
    assert.match(p.report, new RegExp(`^ {2}2\\. \\(part \\d+\\) \\[text/plain\\] clean; ${word}$`, 'm'), p.report);
    assert.doesNotMatch(p.report, /; kept$/m, p.report);
    // The admin notice carries the report ({{REPORT}}): it says the same.
    const admin = p.notifications.find((n) => n.kind === 'admin');
    if (action !== 'tempfail') assert.match(admin?.body ?? '', new RegExp(`infected \\(Eicar-Signature\\); ${word}$`, 'm'), action);
  }
});
