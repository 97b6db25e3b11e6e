import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseConfigText } from '../../src/config/loader.js';
import { mailSchema } from '../../src/config/mail-schema.js';
import { compileMailPolicy, DEFAULT_GROUP } from '../../src/policy/mail/index.js';

const policy = compileMailPolicy(
  mailSchema.parse({
    groups: [
      { name: 'staff', senders: ['.*'], recipients: ['.*@staff\\.example\\.com'] },
      { name: 'partners', senders: ['.*@partner\\.org', '.*@partner\\.net'], recipients: ['.*@example\\.com', '.*@staff\\.example\\.com'] },
      { name: 'boss', recipients: ['boss@example\\.com'] },
    ],
  }),
);

function configError(yaml: string): string {
  try {
    parseConfigText(yaml, 'avgate.yaml');
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail('expected a config error');
}

test('the default group always exists and is last', () => {
  assert.deepEqual(policy.groups.map((g) => g.name), ['staff', 'partners', 'boss', DEFAULT_GROUP]);
  assert.deepEqual(compileMailPolicy(mailSchema.parse({})).groups.map((g) => g.name), ['default']);
});

test('first group whose sender and recipient lists both match', () => {
  assert.equal(policy.groupKey('a@partner.org', 'x@staff.example.com'), 'staff', 'staff comes first');
  assert.equal(policy.groupKey('a@partner.org', 'x@example.com'), 'partners');
  assert.equal(policy.groupKey('a@PARTNER.NET', 'X@Example.COM'), 'partners', 'case-insensitive');
  assert.equal(policy.groupKey('a@other.org', 'boss@example.com'), 'boss', 'sender not a partner: next group');
  assert.equal(policy.groupKey('a@partner.org', 'boss@example.com'), 'partners', 'partners is before boss');
  assert.equal(policy.groupKey('a@other.org', 'x@example.com'), 'default');
  assert.equal(policy.groupKey('', 'x@staff.example.com'), 'staff', '.* matches the null sender');
  assert.equal(policy.groupKey('<a@partner.org>', '<x@example.com>'), 'partners', 'angle brackets are ignored');
});

test('patterns match the whole address', () => {
  assert.equal(policy.groupKey('a@partner.org.evil.net', 'x@example.com'), 'default');
  assert.equal(policy.groupKey('a@partner.org', 'x@example.com.evil.net'), 'default');
  assert.equal(policy.groupKey('a@other.org', 'theboss@example.com'), 'default');
});

test('recipients are split by group, in group order, each share in the given order', () => {
  const split = policy.assignGroups('a@partner.org', ['z@nowhere.net', 'y@example.com', 'x@staff.example.com', 'boss@example.com', 'w@staff.example.com']);
  assert.deepEqual([...split.entries()], [
    ['staff', ['x@staff.example.com', 'w@staff.example.com']],
    ['partners', ['y@example.com', 'boss@example.com']],
    ['default', ['z@nowhere.net']],
  ]);
  assert.deepEqual([...policy.assignGroups('a@b.c', []).entries()], []);
});

test('groups inherit the default group: maps merge per status, lists replace', () => {
  const p = compileMailPolicy(
    mailSchema.parse({
      'default-group': { admin: ['av@example.com'], 'notify-admin': ['infected', 'suspicious'], 'filter-by-name': ['\\.exe$'], 'prefix-subject': { filtered: '[FILTERED]' } },
      groups: [{ name: 'g', actions: { infected: 'reject' }, 'notify-admin': [], 'prefix-subject': { infected: '[V]' }, templates: { admin: null } }],
    }),
  );
  const g = p.group('g');
  const d = p.group('default');
  assert.equal(g.actions.infected, 'reject');
  assert.equal(g.actions.suspicious, 'remove', 'not set: inherited');
  assert.equal(g.actions.error, 'tempfail');
  assert.deepEqual(g.admin, ['av@example.com']);
  assert.deepEqual([...g.notifyAdmin], [], 'a list replaces');
  assert.deepEqual([...d.notifyAdmin], ['infected', 'suspicious']);
  assert.deepEqual(g.filter.byName.map((r) => r.source), ['\\.exe$']);
  assert.deepEqual(g.prefixSubject, { infected: '[V]', suspicious: '[SUSPICIOUS]', filtered: '[FILTERED]' });
  assert.throws(() => p.group('nope'), /no mail group "nope"/);
});

test('config errors: bad patterns, names, missing replace file, unknown keys', () => {
  assert.match(configError('mail:\n  groups:\n    - name: a\n      senders: ["(unclosed"]\n'), /avgate\.yaml:\d+: mail\.groups\.0\.senders\.0: invalid regular expression/);
  assert.match(configError('mail:\n  groups:\n    - name: default\n'), /mail\.groups\.0\.name: the default group is configured in mail\.default-group/);
  assert.match(configError('mail:\n  groups:\n    - name: a\n    - name: A\n'), /mail\.groups\.1\.name: duplicate group name "A"/);
  assert.match(configError('mail:\n  default-group:\n    actions:\n      infected: replace\n'), /mail\.default-group\.actions\.infected: action replace needs replace-with\.infected/);
  assert.match(configError('mail:\n  groups:\n    - name: a\n      actions: {filtered: replace}\n'), /mail\.groups\.0\.actions\.filtered: action replace needs replace-with/);
  assert.match(configError('mail:\n  default-group:\n    actions:\n      infectd: remove\n'), /avgate\.yaml:4: mail\.default-group\.actions\.infectd: unknown key/);
  assert.match(configError('mail:\n  default-group:\n    filter-by-type: ["exe"]\n'), /expected a MIME type/);
  assert.match(configError('mail:\n  notify-from: "a@b\\r\\nBcc: x@y"\n'), /mail\.notify-from: expected a mail address/);
  assert.match(configError('mail:\n  x-virus-scanned: "a\\r\\nX-Evil: 1"\n'), /mail\.x-virus-scanned: one non-empty line/);
  // A replace inherited from the default group is satisfied by the inherited file.
  const ok = parseConfigText('mail:\n  default-group:\n    actions: {infected: replace}\n    replace-with: {infected: /etc/hosts}\n  groups:\n    - name: a\n', 'x');
  assert.equal(ok.mail['default-group'].actions.infected, 'replace');
});

test('a template file that is missing is a config error at startup', () => {
  const cfg = mailSchema.parse({ 'default-group': { templates: { sender: '/nonexistent/avgate-sender.txt' } } });
  assert.throws(() => compileMailPolicy(cfg), (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONFIG' && /avgate-sender\.txt: ENOENT/.test(err.message));
  const bad = mailSchema.parse({ 'default-group': { templates: { admin: 'x.txt' } } });
  assert.throws(() => compileMailPolicy(bad, { readTemplate: () => 'no subject line\nbody' }), /must start with a "Subject:" line/);
  const good = compileMailPolicy(bad, { readTemplate: () => 'Subject: {{STATUS}} alert\r\n\r\nBody {{GROUP}}\r\n' });
  assert.deepEqual(good.group('default').templates.admin, { subject: '{{STATUS}} alert', body: 'Body {{GROUP}}\n' });
});
