import assert from 'node:assert/strict';
import { test } from 'node:test';
import { configWarnings } from '../../src/config/check.js';
import { parseConfigText } from '../../src/config/loader.js';
import { docAclRuleSchema, trickleSchema, type DocAclRule } from '../../src/config/proxy-schema.js';
import { DocAcl, type DocFacts } from '../../src/proxy/doc-acl.js';

const facts = (over: Partial<DocFacts> = {}): DocFacts => ({
  client: '127.0.0.1',
  host: 'files.example.com',
  url: 'http://files.example.com/pub/setup.exe',
  method: 'GET',
  contentType: 'application/octet-stream',
  size: 1000,
  direction: 'download',
  ...over,
});

const rules = (list: unknown[]): DocAclRule[] => list.map((r) => docAclRuleSchema.parse(r));

test('doc-acl: the first matching rule wins, in order', () => {
  const acl = new DocAcl(rules([
    { name: 'trusted', match: { hosts: ['*.example.com'] }, action: 'accept' },
    { name: 'all', action: 'scan' },
  ]));
  assert.equal(acl.match(facts()).name, 'trusted');
  assert.equal(acl.match(facts({ host: 'FILES.EXAMPLE.COM' })).name, 'trusted', 'host globs ignore case');
  assert.equal(acl.match(facts({ host: 'example.org' })).name, 'all');
  assert.equal(acl.match(facts({ host: 'example.org' })).index, 1);
});

test('doc-acl: clients by CIDR, IPv4-mapped IPv6 included', () => {
  const acl = new DocAcl(rules([{ name: 'lan', match: { clients: ['10.0.0.0/8', '::1'] } }]));
  assert.equal(acl.match(facts({ client: '10.1.2.3' })).name, 'lan');
  assert.equal(acl.match(facts({ client: '::ffff:10.1.2.3' })).name, 'lan');
  assert.equal(acl.match(facts({ client: '::1' })).name, 'lan');
  assert.equal(acl.match(facts({ client: '192.168.1.1' })).name, 'fallback');
});

test('doc-acl: url as glob or /regex/i, methods, content-type globs with parameters stripped', () => {
  const acl = new DocAcl(rules([
    { name: 'exe', match: { url: '/\\.exe$/i' } },
    { name: 'zipglob', match: { url: 'http://*.zip' } },
    { name: 'post', match: { methods: ['post'] } },
    { name: 'text', match: { 'content-types': ['text/*'] } },
  ]));
  assert.equal(acl.match(facts({ url: 'http://x/A.EXE' })).name, 'exe');
  assert.equal(acl.match(facts({ url: 'http://x/a.zip' })).name, 'zipglob');
  assert.equal(acl.match(facts({ url: 'https://x/a.zip' })).name, 'fallback', 'a glob is matched whole');
  assert.equal(acl.match(facts({ url: 'http://x/', method: 'POST' })).name, 'post');
  assert.equal(acl.match(facts({ url: 'http://x/', contentType: 'Text/HTML; charset=utf-8' })).name, 'text');
  assert.equal(acl.match(facts({ url: 'http://x/', contentType: null })).name, 'fallback', 'no type matches no type glob');
});

test('doc-acl: size bounds hold only for a known size; direction', () => {
  const acl = new DocAcl(rules([
    { name: 'small', match: { 'max-size': '1KiB' }, trickle: null },
    { name: 'up', match: { direction: 'upload' } },
    { name: 'big', match: { 'min-size': '1MiB', direction: 'download' } },
  ]));
  assert.equal(acl.match(facts({ size: 1024 })).name, 'small');
  assert.equal(acl.match(facts({ size: 1025 })).name, 'fallback');
  assert.equal(acl.match(facts({ size: null })).name, 'fallback', 'an unknown size matches no size rule');
  assert.equal(acl.match(facts({ size: 5_000_000 })).name, 'big');
  assert.equal(acl.match(facts({ size: 5_000_000, direction: 'upload' })).name, 'up');
  assert.equal(acl.match(facts({ size: null, direction: 'upload' })).name, 'up');
});

test('doc-acl: no rule matching falls back to scanning with the defaults', () => {
  const m = new DocAcl([]).match(facts());
  assert.equal(m.index, -1);
  assert.equal(m.rule.action, 'scan');
  assert.deepEqual(m.rule['accept-status'], ['free']);
  assert.equal(m.rule.antivirus, null);
});

test('doc-acl schema: defaults, trickle limit as size or share, bad values refused', () => {
  const r = docAclRuleSchema.parse({});
  assert.equal(r.action, 'scan');
  assert.deepEqual(r.trickle, { interval: 10_000, chunk: 65536, limit: { kind: 'percent', value: 90 }, 'keep-back': 1024 * 1024 });
  assert.deepEqual(trickleSchema.parse({ limit: '8MiB' }).limit, { kind: 'bytes', value: 8 * 1024 * 1024 });
  assert.equal(trickleSchema.safeParse({ limit: '120%' }).success, false);
  assert.equal(trickleSchema.safeParse({ limit: 'lots' }).success, false);
  assert.equal(docAclRuleSchema.safeParse({ match: { clients: ['not-an-ip'] } }).success, false);
  assert.equal(docAclRuleSchema.safeParse({ match: { url: '/(/' } }).success, false);
  assert.equal(docAclRuleSchema.safeParse({ match: { 'min-size': '2MiB', 'max-size': '1MiB' } }).success, false);
  assert.equal(docAclRuleSchema.safeParse({ bogus: 1 }).success, false, 'strict: unknown keys refused');
  assert.equal(docAclRuleSchema.parse({ antivirus: 'none' }).antivirus, 'none');
});

test('config: http-proxy defaults, and an unknown engine in a rule is named with its line', () => {
  const c = parseConfigText('', 'x');
  assert.equal(c['http-proxy'].listen, '127.0.0.1:3128');
  assert.equal(c['http-proxy']['doc-acl'].length, 1);
  assert.throws(
    () => parseConfigText('http-proxy:\n  doc-acl:\n    - antivirus: [nope]\n', 'avgate.yaml'),
    /avgate\.yaml:3: http-proxy\.doc-acl\.0\.antivirus: no engine "nope"/,
  );
});

test('config check warns about an open proxy (a /0 block in allowed-clients), not about the default', () => {
  assert.deepEqual(configWarnings(parseConfigText('', 'x')).filter((w) => w.includes('http-proxy')), []);
  const open = configWarnings(parseConfigText('http-proxy:\n  allowed-clients: [0.0.0.0/0]\n', 'x'));
  assert.ok(open.some((w) => /open proxy/.test(w)), JSON.stringify(open));
});

test('config check warns about a trickle limit that is a few bytes (a bare number is bytes, not a share)', () => {
  const w = configWarnings(parseConfigText('http-proxy:\n  doc-acl:\n    - {name: a, trickle: {limit: 95}}\n    - {name: b, trickle: {limit: "95%"}}\n    - {name: c, trickle: {limit: 8MiB}}\n', 'x'));
  assert.deepEqual(w.filter((x) => x.includes('trickle')), ['http-proxy.doc-acl.0.trickle.limit is 95 bytes: a share of the body is written with %, as "95%"']);
});
