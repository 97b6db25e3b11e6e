import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, test } from 'node:test';
import { runPolicyCommand } from '../../src/cli/policy.js';
import { parseConfigText } from '../../src/config/loader.js';

const CONFIG = parseConfigText(
  `
mail:
  groups:
    - name: staff
      senders: ['.*']
      recipients: ['.*@staff\\.example']
      actions:
        infected: reject
      quarantine: []
    - name: partners
      senders: ['.*@partner\\.example']
      recipients: ['.*']
      admin: [av@example.org]
      quarantine: [infected, error]
      copy-to:
        error: [archive@example.org]
      prefix-subject:
        infected: '  [V]  '
        suspicious: '   '
  default-group:
    filter-by-name: ['.*\\.exe']
http-proxy:
  allowed-clients: [127.0.0.0/8, 10.0.0.0/8, 192.0.2.0/24]
  doc-acl:
    - name: lan-exe
      match: { clients: [10.0.0.0/8], url: 'http://*.exe' }
      action: deny
    - name: uploads
      match: { direction: upload }
      accept-status: [free, skipped]
    - name: big
      match: { min-size: 10MB }
      trickle: { interval: 5s }
    - match: { content-types: ['image/*'] }
      action: accept
ftp-proxy:
  enabled: false
  allowed-upstreams: ['*:21', '*:2121']
  doc-acl:
    - name: secret
      match: { url: 'ftp://*/secret/*' }
      action: deny
`,
  'test.yaml',
);

function run(args: string[]): { code: number; out: string; err: string } {
  let out = '';
  let err = '';
  const sink = (f: (s: string) => void) => new Writable({ write: (c: Buffer, _e, cb) => (f(c.toString()), cb()) });
  const code = runPolicyCommand(CONFIG, args, { stdout: sink((s) => (out += s)), stderr: sink((s) => (err += s)) });
  return { code, out, err };
}

describe('avgate policy', () => {
  test('mail: each recipient to the first group whose senders and recipients both match; anchored patterns', () => {
    const r = run(['mail', '--from', 'boss@partner.example', '--to', 'a@staff.example', '--to', 'b@other.example', '--to', 'c@staff.example.attacker.net']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^ {2}a@staff\.example -> group staff \(1 of 3\)$/m);
    assert.match(r.out, /^ {2}b@other\.example -> group partners \(2 of 3\)$/m);
    assert.match(r.out, /^ {2}c@staff\.example\.attacker\.net -> group partners \(2 of 3\)$/m, 'the recipient pattern matches whole addresses only');
    assert.match(r.out, /the recipients are split/);
    // The staff group's own settings, the default group's filter inherited.
    const staff = r.out.slice(r.out.indexOf('group staff (1):'), r.out.indexOf('group partners (2):'));
    // As the filter plans it: a rejected message is not delivered (no subject prefix, no headers);
    // no admin addresses, no admin notices; a tempfail does nothing else.
    assert.match(staff, /^ {4}infected {4}reject; notify recipients$/m, "a rejection is bounced to the sender by the client");
    assert.match(staff, /admin: none, so no admin notices are sent/);
    assert.match(staff, /^ {4}error {7}tempfail \(4xx: the client sends it again; nothing else happens\)$/m);
    assert.match(staff, /^ {4}suspicious {2}remove; subject prefix "\[SUSPICIOUS\]"; X-Virus-Scanned and X-AV-Status headers$/m);
    assert.match(staff, /attachment filter \(status filtered\): name \.\*\\\.exe/);
    assert.match(r.out, /sender notices are never sent to the null sender <> or to notify-from/);

    const partners = r.out.slice(r.out.indexOf('group partners (2):'));
    assert.match(partners, /^ {4}infected {4}remove; quarantine; notify sender, recipients, admin; subject prefix "\[V\]";/m, 'trimmed, as the filter uses it');
    assert.doesNotMatch(partners, /suspicious[^\n]*subject prefix/, 'a blank prefix is none');
    assert.match(partners, /^ {4}error {7}tempfail \(4xx[^\n]*nothing else happens\)$/m, 'no quarantine nor copy on a tempfail');

    const other = run(['mail', '--from', '', '--to', 'x@elsewhere.example', '--json']);
    const j = JSON.parse(other.out) as { sender: string; groups: Array<{ group: string; position: number; recipients: string[]; settings: Record<string, { action: string; quarantine: boolean }> }> };
    assert.equal(j.groups.length, 1);
    assert.equal(j.groups[0]?.group, 'default');
    assert.equal(j.groups[0]?.position, 3);
    assert.equal(j.groups[0]?.settings['infected']?.action, 'remove');
    assert.equal(j.groups[0]?.settings['infected']?.quarantine, true);
  });

  test('http-proxy: the doc-acl rule as the proxy picks it (client, normalised URL, direction, known size, type)', () => {
    const exe = run(['http-proxy', '--url', 'http://Files.example/a/../setup.exe', '--client', '10.1.2.3']);
    assert.equal(exe.code, 0, exe.err);
    assert.match(exe.out, /GET http:\/\/files\.example\/setup\.exe from 10\.1\.2\.3/);
    assert.match(exe.out, /rule 1 of 4, "lan-exe": deny/);
    // Another client: not that rule; unknown size never matches a size condition.
    const outside = run(['http-proxy', '--url', 'http://files.example/setup.exe', '--client', '192.0.2.1']);
    assert.match(outside.out, /no rule of 4 matched: the fallback: scan with scan\.engines; passes when free/);
    const big = run(['http-proxy', '--url', 'http://files.example/x.iso', '--size', '20MB']);
    assert.match(big.out, /rule 3 of 4, "big": scan with scan\.engines; passes when free; trickle 64\.00 KiB every 5s once the transfer has taken 5s/);
    const img = run(['http-proxy', '--url', 'http://files.example/p.png', '--content-type', 'image/png; q=1']);
    assert.match(img.out, /rule 4 of 4, "rule-4": accept: passed unscanned/);
    const up = run(['http-proxy', '--url', 'http://files.example/form', '--upload', '--json']);
    const uj = JSON.parse(up.out) as { rule: string; position: number; facts: { method: string; direction: string }; acceptStatus: string[] };
    assert.deepEqual([uj.rule, uj.position, uj.facts.method, uj.facts.direction, uj.acceptStatus], ['uploads', 2, 'POST', 'upload', ['free', 'skipped']]);
    // Where the proxy applies no rule: bodyless responses, uploads without a body.
    const head = run(['http-proxy', '--url', 'http://files.example/setup.exe', '--client', '10.1.2.3', '--method', 'HEAD']);
    assert.match(head.out, /a HEAD response has no body: it is passed without a rule/);
    assert.doesNotMatch(head.out, /lan-exe/);
    const empty = run(['http-proxy', '--url', 'http://files.example/form', '--upload', '--size', '0']);
    assert.match(empty.out, /an upload without a body is not checked against the rules/);
    // A client the proxy refuses before any rule.
    const stranger = run(['http-proxy', '--url', 'http://files.example/setup.exe', '--client', '198.51.100.7']);
    assert.match(stranger.out, /client 198\.51\.100\.7 is not in http-proxy\.allowed-clients: refused \(403\) before any rule/);
    assert.doesNotMatch(stranger.out, /fallback/);
    const https = run(['http-proxy', '--url', 'https://files.example/']);
    assert.equal(https.code, 2);
    assert.match(https.err, /not an absolute http:\/\/ URL the proxy takes \(https:\/\/ goes through CONNECT/);
  });

  test('ftp-proxy: the path normalised as the proxy does; size and type refused (the proxy does not know them)', () => {
    const r = run(['ftp-proxy', '--url', 'ftp://ftp.example/pub/../secret/plan.txt']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /RETR ftp:\/\/ftp\.example\/secret\/plan\.txt/);
    assert.match(r.out, /rule 1 of 1, "secret": deny/);
    assert.match(r.out, /ftp-proxy is not enabled in this config/);
    const up = run(['ftp-proxy', '--url', 'ftp://ftp.example/pub/x', '--upload']);
    assert.match(up.out, /upload STOR ftp:\/\/ftp\.example\/pub\/x from 127\.0\.0\.1\n {2}no rule of 1 matched: the fallback: scan with scan\.engines; passes when free; uploads are held until the verdict/);
    // The direction comes from the command, as in the proxy.
    const stor = run(['ftp-proxy', '--url', 'ftp://ftp.example/secret/x', '--method', 'STOR', '--json']);
    assert.equal((JSON.parse(stor.out) as { facts: { direction: string } }).facts.direction, 'upload');
    assert.match(run(['ftp-proxy', '--url', 'ftp://ftp.example/pub/', '--method', 'LIST']).out, /LIST listings are relayed unscanned, without a rule/);
    assert.match(run(['ftp-proxy', '--url', 'ftp://ftp.example/pub/x', '--method', 'APPE']).out, /APPE is refused \(550\): partial uploads cannot be scanned/);
    assert.match(run(['ftp-proxy', '--url', 'ftp://ftp.example/pub/x', '--upload']).out, /after a REST other than 0, STOR is refused \(550\)/);
    // The path as the client sends it: no URL parser (a # or a backslash is part of the name), no percent-decoding.
    assert.match(run(['ftp-proxy', '--url', 'ftp://ftp.example/secret/a#b']).out, /RETR ftp:\/\/ftp\.example\/secret\/a#b[\s\S]*"secret": deny/);
    assert.match(run(['ftp-proxy', '--url', 'ftp://ftp.example/secret\\x']).out, /no rule of 1 matched/);
    assert.match(run(['ftp-proxy', '--url', 'ftp://ftp.example/secret/caf%E9']).out, /secret\/caf%E9/);
    assert.match(run(['ftp-proxy', '--url', 'ftp://[2001:db8:0:0::1]/secret/x']).out, /RETR ftp:\/\/\[2001:db8:0:0::1\]\/secret\/x/);
    // The host as the proxy holds it: without user, port or brackets.
    assert.match(run(['ftp-proxy', '--url', 'ftp://u:p@ftp.example:2121/secret/x']).out, /RETR ftp:\/\/ftp\.example\/secret\/x[\s\S]*"secret": deny/);
    assert.match(run(['ftp-proxy', '--url', 'ftp://[::1]:2121/x']).out, /RETR ftp:\/\/\[::1\]\/x \(server port 2121\)/);
    // A server USER user@host may not name: refused before any rule.
    const evil = run(['ftp-proxy', '--url', 'ftp://evil.example:2222/a']);
    assert.match(evil.out, /RETR ftp:\/\/evil\.example\/a \(server port 2222\) from/);
    assert.match(evil.out, /server evil\.example:2222 is not in ftp-proxy\.allowed-upstreams: USER user@host is refused \(530\)/);
    assert.match(run(['ftp-proxy', '--url', 'ftp://ftp.example/secret/x', '--method', 'DELE']).out, /DELE is passed to the server without a rule/);
    const sized = run(['ftp-proxy', '--url', 'ftp://ftp.example/x', '--size', '1']);
    assert.equal(sized.code, 2);
    assert.match(sized.err, /--size and --content-type do not apply/);
  });

  test('show: every list in the order it is applied', () => {
    const r = run(['show']);
    assert.equal(r.code, 0, r.err);
    const order = ['mail filter (smtp)', 'group staff (1)', 'group partners (2)', 'group default (3)', 'http-proxy doc-acl', '1. lan-exe: clients 10.0.0.0/8; url http://*.exe', '2. uploads: uploads', '3. big: size >= 9.54 MiB', '4. rule-4: types image/*', 'ftp-proxy (not enabled) doc-acl', '1. secret: url ftp://*/secret/*', 'pop3-proxy:', 'imap-proxy:'];
    let at = 0;
    for (const s of order) {
      const i = r.out.indexOf(s, at);
      assert.ok(i >= at, `${s} after position ${at}:\n${r.out}`);
      at = i;
    }
    assert.match(r.out, /pop3-proxy: antivirus scan\.engines; on engine error: replace\n {2}command-acl[^\n]*\n {4}1\. default: everything -> accept, scanned/);
    const one = run(['show', 'http-proxy']);
    assert.doesNotMatch(one.out, /mail filter|pop3-proxy/);
  });

  test('bad arguments: exit 2 with the reason', () => {
    for (const [args, re] of [
      [['mail', '--to', 'a@b'], /give one --from/],
      [['mail', '--from', 'a@b', '--to', 'c@d', '--bcc', 'x'], /unexpected argument --bcc/],
      [['http-proxy'], /--url is needed/],
      [['http-proxy', '--url', 'http://h/', '--client', 'nowhere'], /--client nowhere is not an IP address/],
      [['http-proxy', '--url', 'http://h/', '--size', 'lots'], /--size lots is not a size/],
      [['http-proxy', '--url', 'http://h/', '--url', 'http://i/'], /--url given more than once/],
      [['show', 'smtp'], /unknown section "smtp"/],
      [['explain'], /unknown subcommand "explain"/],
    ] as Array<[string[], RegExp]>) {
      const r = run(args);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.err, re);
    }
    assert.equal(run([]).code, 2);
    assert.equal(run(['--help']).code, 0);
  });
});
