import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mailSchema } from '../../src/config/mail-schema.js';
import type { VerdictResult } from '../../src/core/verdict.js';
import {
  classifyName, compileFilter, compileMailPolicy, documentStatus, KNOWN_MIME_PROBLEMS, matchAttachmentFilter, messageStatuses, mimeGlobToRegExp,
  MAIL_STATUSES, STATUS_ORDER, statusRank, worstStatus, type MailDocument, type MailStatus,
} from '../../src/policy/mail/index.js';

const rules = compileMailPolicy(mailSchema.parse({})).common.nameRules;
const doc = (verdict: VerdictResult | null, extra: Partial<MailDocument> = {}): MailDocument => ({
  id: '1', fileName: 'a.bin', contentType: 'application/octet-stream', verdict, ...extra,
});
const status = (d: MailDocument, hit = null as Parameters<typeof documentStatus>[2]): MailStatus => documentStatus(d, rules, hit).status;

test('the order is total, worst first, and documented as infected > ... > clean', () => {
  assert.deepEqual(STATUS_ORDER, ['infected', 'suspicious', 'filtered', 'protected', 'corrupted', 'error', 'unknown', 'skipped', 'clean']);
  assert.deepEqual([...STATUS_ORDER].sort(), [...MAIL_STATUSES].sort());
  for (let i = 1; i < STATUS_ORDER.length; i++) {
    assert.ok(statusRank(STATUS_ORDER[i - 1] as MailStatus) > statusRank(STATUS_ORDER[i] as MailStatus));
  }
});

test('worst status wins; no documents is clean', () => {
  assert.equal(worstStatus([]), 'clean');
  assert.equal(worstStatus(['clean', 'error', 'skipped']), 'error');
  assert.equal(worstStatus(['error', 'corrupted']), 'corrupted');
  assert.equal(worstStatus(['protected', 'filtered', 'clean']), 'filtered');
  assert.equal(worstStatus(['suspicious', 'infected']), 'infected');
  assert.equal(worstStatus(['unknown', 'skipped']), 'unknown');
});

test('a message has clean only when every document is clean', () => {
  assert.deepEqual(messageStatuses([]), ['clean']);
  assert.deepEqual(messageStatuses(['clean', 'clean']), ['clean']);
  assert.deepEqual(messageStatuses(['clean', 'error', 'infected', 'error']), ['infected', 'error']);
});

test('engine verdicts map to statuses', () => {
  assert.equal(status(doc({ status: 'free' })), 'clean');
  assert.equal(status(doc({ status: 'found', names: ['Win.Trojan.Agent-1'] })), 'infected');
  assert.equal(status(doc({ status: 'error', code: 'AVG_ERR_ENGINE_CONNECT', cause: 'refused' })), 'error');
  assert.equal(status(doc({ status: 'unknown', raw: '??' })), 'unknown');
  assert.equal(status(doc({ status: 'skipped', reason: 'larger than max-checked-size' })), 'skipped');
  assert.equal(status(doc(null)), 'skipped', 'not scanned at all');
});

test('heuristic names are suspicious, encryption names and encrypted skips are protected', () => {
  assert.equal(status(doc({ status: 'found', names: ['Heuristics.Phishing.Email.SpoofedDomain'] })), 'suspicious');
  assert.equal(status(doc({ status: 'found', names: ['PUA.Win.Packer.Upx'] })), 'suspicious');
  assert.equal(status(doc({ status: 'found', names: ['Heuristics.Encrypted.Zip'] })), 'protected');
  const skipped = documentStatus(doc({ status: 'skipped', reason: 'encrypted (Heuristics.Encrypted.Zip)' }), rules, null);
  assert.deepEqual(skipped, { status: 'protected', names: ['Heuristics.Encrypted.Zip'], reason: 'not scanned: encrypted (Heuristics.Encrypted.Zip)' });
  // A real virus next to a heuristic one: infected, with both names.
  const both = documentStatus(doc({ status: 'found', names: ['Heuristics.Broken.Executable', 'Eicar-Signature'] }), rules, null);
  assert.equal(both.status, 'infected');
  assert.deepEqual(both.names, ['Heuristics.Broken.Executable', 'Eicar-Signature']);
  assert.equal(classifyName('heuristics.encrypted.pdf', rules), 'protected', 'case-insensitive');
});

test('the name rules are configurable: first match decides', () => {
  const own = compileMailPolicy(mailSchema.parse({ 'virus-name-status': [{ pattern: '^Heuristics\\.Limits\\.', status: 'protected' }, { pattern: '^Heuristics\\.', status: 'infected' }] })).common.nameRules;
  assert.equal(classifyName('Heuristics.Limits.Exceeded.MaxFileSize', own), 'protected');
  assert.equal(classifyName('Heuristics.Phishing.Email', own), 'infected');
  assert.equal(classifyName('PUA.Win.Tool', own), 'infected', 'no PUA rule any more');
});

test('document facts: encryption, MIME problems and the filter add candidates; the worst wins', () => {
  assert.equal(status(doc({ status: 'free' }, { encrypted: true })), 'protected', 'an encrypted zip the engine called clean');
  assert.equal(status(doc({ status: 'free' }, { problems: ['boundary'] })), 'corrupted');
  assert.equal(status(doc(null, { problems: ['depth'] })), 'corrupted', 'not scanned because broken');
  assert.equal(status(doc({ status: 'error', code: 'X', cause: 'y' }, { problems: ['encoding'] })), 'corrupted');
  assert.equal(status(doc({ status: 'found', names: ['Eicar-Signature'] }, { problems: ['truncated'] })), 'infected');
  assert.equal(status(doc({ status: 'free' }, { problems: ['some-future-code'] })), 'corrupted', 'unknown codes count');
  for (const code of KNOWN_MIME_PROBLEMS) assert.equal(status(doc({ status: 'free' }, { problems: [code] })), 'corrupted', code);
  const hit = { kind: 'name' as const, rule: '\\.exe$', value: 'a.exe', inArchive: false };
  assert.equal(status(doc({ status: 'free' }), hit), 'filtered');
  assert.equal(status(doc({ status: 'free' }, { encrypted: true }), hit), 'filtered');
  assert.equal(status(doc({ status: 'found', names: ['PUA.X'] }), hit), 'suspicious');
  assert.match(documentStatus(doc({ status: 'free' }), rules, hit).reason, /file name "a\.exe" matches filter-by-name \\\.exe\$/);
});

test('attachment filter: names, names inside archives, types with globs', () => {
  const f = compileFilter(['\\.(exe|scr|pif)$', '^setup'], ['application/x-msdownload', '*/x-executable', 'application/vnd.ms-*']);
  const m = (d: Partial<MailDocument>) => matchAttachmentFilter(f, { fileName: null, contentType: null, ...d });
  assert.equal(m({ fileName: 'INVOICE.EXE' })?.value, 'INVOICE.EXE', 'case-insensitive');
  assert.equal(m({ fileName: 'invoice.exe.txt' }), null, 'searched, and $ anchors the end');
  assert.deepEqual(m({ fileName: 'x.zip', archiveNames: ['docs/readme.txt', 'bin/run.scr'] }), { kind: 'name', rule: '\\.(exe|scr|pif)$', value: 'bin/run.scr', inArchive: true });
  assert.equal(m({ archiveNames: ['tools/setup.msi'] })?.value, 'tools/setup.msi', 'a ^ rule matches the last path component');
  assert.equal(m({ contentType: 'Application/X-MSDownload; name="a"' })?.kind, 'type');
  assert.equal(m({ contentType: 'application/x-executable' })?.rule, '*/x-executable');
  assert.equal(m({ contentType: 'text/plain', detectedType: 'application/vnd.ms-excel' })?.value, 'application/vnd.ms-excel');
  assert.equal(m({ contentType: 'text/plain', fileName: 'a.txt' }), null);
  assert.ok(!mimeGlobToRegExp('*/x-executable').test('a/b/x-executable'), '* does not cross /');
  assert.ok(mimeGlobToRegExp('image/?ng').test('image/png'));
});
