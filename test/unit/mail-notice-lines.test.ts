import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mailSchema } from '../../src/config/mail-schema.js';
import { compileMailPolicy, decideMessage, type MailDocument, type MailGroup, type MessageFacts } from '../../src/policy/mail/index.js';

// Macro values chosen by a sender (subject, header values, archive entry names) must stay on the
// line the template put them on, in notices and above all in the removal notice, which becomes a
// part of the delivered message.

const group = (mail: unknown = {}): MailGroup => compileMailPolicy(mailSchema.parse(mail)).group('default');
const facts = (extra: Partial<MessageFacts> = {}): MessageFacts => ({
  sender: 'alice@example.org',
  recipients: ['bob@example.com'],
  headers: [{ name: 'Subject', value: 'hi\rX-Forged: yes' }],
  subject: 'hello\r\n--b1\r\nContent-Type: text/html',
  messageId: '<m1@example.org>',
  now: new Date('2025-07-01T12:00:00Z'),
  ...extra,
});

test('removal notice: an archive entry name with line breaks stays inside its line of REASON', () => {
  const g = group({ 'default-group': { 'filter-by-name': ['\\.exe'] } });
  const zip: MailDocument = {
    id: '2',
    fileName: 'tools.zip',
    contentType: 'application/zip',
    verdict: { status: 'free' },
    archiveNames: ['setup.exe\r\n--b1\r\nContent-Type: text/html\r\n\r\n<script>x</script>'],
  };
  const plan = decideMessage(g, [zip], facts());
  const edit = plan.documents[0]?.edit;
  assert.equal(edit?.kind, 'remove');
  const notice = edit?.kind === 'remove' ? edit.notice : '';
  assert.match(notice, /Reason: {2}file name "setup\.exe --b1 Content-Type: text\/html <script>x<\/script>" in the archive matches/);
  assert.equal(/^--b1$/m.test(notice), false);
  assert.equal(/\r/.test(notice), false);
});

test('notices: SUBJECT and header values keep to one line in the body; the template keeps its own lines', () => {
  const g = group({ 'default-group': { admin: ['admin@example.com'], 'admin-attachment': 'none' } });
  const eicar: MailDocument = { id: '2', fileName: 'a.com', contentType: 'application/octet-stream', verdict: { status: 'found', names: ['Eicar\nX'] } };
  const plan = decideMessage(g, [eicar], facts());
  assert.ok(plan.notifications.length >= 2);
  for (const n of plan.notifications) {
    assert.equal(/^--b1$/m.test(n.body), false, `${n.kind}: no line of the sender's making`);
    assert.equal(/^X-Forged: yes$/m.test(n.body), false, `${n.kind}: a CR inside a header value does not start a line`);
    assert.equal(/^X$/m.test(n.body), false, `${n.kind}: a virus name stays on its line`);
    assert.ok(n.body.split('\n').length > 5, 'the template still has its lines');
  }
  const recipient = plan.notifications.find((n) => n.kind === 'recipient');
  assert.match(recipient?.body ?? '', /^ {2}Subject: {4}hello --b1 Content-Type: text\/html$/m);
  const adminNotice = plan.notifications.find((n) => n.kind === 'admin');
  assert.match(adminNotice?.body ?? '', /^Subject: hi X-Forged: yes$/m);
});
