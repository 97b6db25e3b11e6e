import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { walkMessage } from '../../src/mime/index.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { eicarAttachment, mailWith, startMailAvgate } from '../helpers/mail.js';
import { SmtpTestClient, startRecordingServer, type RecordedMessage, type TestReply } from '../helpers/smtp.js';
import { zipOneFile } from '../helpers/zip.js';

/**
 * Robustness of the mail filter's less travelled paths: what the removal notice may carry into the
 * delivered message, what happens when a required quarantine write fails, and what the quarantine
 * records when the recipients of one message fall into several groups (LMTP).
 */

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

/** File names (or type#id) of the documents a mail reader finds in a delivered message. */
async function documentNames(body: Buffer): Promise<string[]> {
  const names: string[] = [];
  await walkMessage(body, {}, async (d) => {
    names.push(d.filename ?? `${d.contentType}#${d.id}`);
  });
  return names;
}

const POLICY = [
  'notify-from: postmaster@gw.test',
  'default-group:',
  '  admin: [admin@gw.test]',
  'groups:',
  '  - name: tools',
  "    recipients: ['tools@example\\.net']",
  "    filter-by-name: ['\\.exe']",
  '  - name: strict',
  "    recipients: ['strict.*@example\\.net']",
  '    actions: {infected: reject}',
  '  - name: relaxed',
  "    recipients: ['relaxed@example\\.net']",
  '    actions: {infected: unchanged}',
  '    quarantine: []',
  '    notify-sender: []',
  '    notify-recipients: []',
  '    notify-admin: []',
].join('\n');

describe('mail filter: removal notices, quarantine failures, quarantine per group', () => {
  let clamd: TestClamd;
  let dir: string;
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-mail-inline-'));
  });
  after(async () => {
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('an archive entry name with line breaks cannot add a MIME part through the removal notice', async () => {
    const hop = await startRecordingServer();
    const av = await startMailAvgate({ clamd, stateDir: join(dir, 'inject'), nextHop: `smtp:127.0.0.1:${hop.port}`, mailYaml: POLICY });
    try {
      // The message's own boundary is b-inject: a line "--b-inject" in the notice text would end
      // the notice part and start one of the attacker's making, which nobody scanned.
      const entry = [
        'setup.exe',
        '--b-inject',
        // No "=" anywhere: quoted-printable would write it =3D. A plain header is enough.
        'Content-Type: text/html',
        '',
        '<script>document.location.href.replace(String.fromCharCode(104))</script>',
        '',
      ].join('\r\n');
      const zip = zipOneFile(entry, Buffer.from('MZ not really a program\r\n'));
      const msg = mailWith('inject', [{ name: 'tools.zip', type: 'application/zip', data: zip }]);
      const r = await send(av.smtpPort, 'a@example.com', ['tools@example.net'], msg);
      assert.equal(r.data[0]?.code, 250, r.data[0]?.text);
      const [m] = hop.messages.filter((x) => x.mailFrom.address === 'a@example.com');
      assert.ok(m, 'delivered');
      const names = await documentNames(m.body);
      assert.equal(names.includes('tools.zip'), false, 'the filtered archive is removed');
      assert.equal(
        names.some((n) => n.startsWith('text/html')),
        false,
        `no part of the attacker's making: ${JSON.stringify(names)}`,
      );
      assert.equal(m.body.toString('latin1').includes('\r\n--b-inject\r\nContent-Type: text/html'), false);
      // The notice still names the entry, on one line.
      const notices = hop.messages.filter((x) => x.mailFrom.address === '');
      for (const n of notices) assert.equal(/^--b-inject\r?$/m.test(n.body.toString('latin1')), false, 'no forged lines in a notice either');
    } finally {
      await av.stop();
      await hop.close();
    }
  });

  test('a required quarantine write that fails: 451 and nothing delivered, copied or notified (SMTP and LMTP)', async () => {
    const hop = await startRecordingServer();
    // The quarantine's work directory becomes a file: every put fails (ENOTDIR), even as root.
    const breakQuarantine = async (stateDir: string) => {
      const qtmp = join(stateDir, 'quarantine', 'tmp');
      await rm(qtmp, { recursive: true, force: true });
      await writeFile(qtmp, 'not a directory');
    };
    const smtpDir = join(dir, 'qfail-smtp');
    const av = await startMailAvgate({ clamd, stateDir: smtpDir, nextHop: `smtp:127.0.0.1:${hop.port}`, mailYaml: POLICY });
    const lmtpDir = join(dir, 'qfail-lmtp');
    const av2 = await startMailAvgate({ clamd, stateDir: lmtpDir, nextHop: `smtp:127.0.0.1:${hop.port}`, smtpYaml: 'protocol: lmtp', mailYaml: POLICY });
    try {
      await breakQuarantine(smtpDir);
      await breakQuarantine(lmtpDir);
      const smtp = await send(av.smtpPort, 'a@example.com', ['b@example.net'], mailWith('qfail-smtp', [eicarAttachment()]));
      assert.equal(smtp.data[0]?.code, 451, `the client keeps the message: ${smtp.data[0]?.text}`);
      assert.match(smtp.data[0]?.text ?? '', /4\.3\.0/);
      assert.equal(hop.messages.length, 0, 'nothing delivered, no copy, no notice');
      // LMTP: the quarantining groups' recipients get 451; "relaxed" (no quarantine) is delivered.
      const lmtp = await send(av2.smtpPort, 'a@example.com', ['b@example.net', 'relaxed@example.net', 'strict1@example.net'], mailWith('qfail-lmtp', [eicarAttachment()]), true);
      assert.deepEqual(
        lmtp.data.map((x) => x.code),
        [451, 250, 554],
        'the removal (deliver) share is deferred; a rejection stays a rejection (the sender keeps its copy)',
      );
      const delivered = hop.messages.filter((m) => m.mailFrom.address === 'a@example.com');
      assert.deepEqual(
        delivered.map((m) => m.rcptTo.map((x) => x.address)),
        [['relaxed@example.net']],
        'only the share that needed no quarantine went on',
      );
      const notified = hop.messages.filter((m) => m.mailFrom.address === '').flatMap((m) => m.rcptTo.map((x) => x.address));
      assert.equal(notified.includes('b@example.net'), false, 'no notice about the deferred share');
    } finally {
      await av.stop();
      await av2.stop();
      await hop.close();
    }
  });

  test('LMTP, recipients in two groups: each quarantining share gets its own item with its own recipients', async () => {
    const hop = await startRecordingServer();
    const av = await startMailAvgate({ clamd, stateDir: join(dir, 'qshare'), nextHop: `smtp:127.0.0.1:${hop.port}`, smtpYaml: 'protocol: lmtp', mailYaml: POLICY });
    try {
      const r = await send(av.smtpPort, 'a@example.com', ['relaxed@example.net', 'strict1@example.net', 'b@example.net'], mailWith('qshare', [eicarAttachment()]), true);
      assert.deepEqual(
        r.data.map((x) => x.code),
        [250, 554, 250],
      );
      const items = await av.quarantine.list({ text: 'qshare' });
      const byGroup = new Map(items.map((i) => [i.group, i.recipients]));
      assert.deepEqual(byGroup.get('strict'), ['strict1@example.net']);
      assert.deepEqual(byGroup.get('default'), ['b@example.net']);
      assert.equal(items.length, 2, 'relaxed quarantines nothing: a release must not send it a second copy');
      const delivered: RecordedMessage[] = hop.messages.filter((m) => m.mailFrom.address === 'a@example.com');
      assert.equal(delivered.length, 2);
    } finally {
      await av.stop();
      await hop.close();
    }
  });
  test('notices and copies about SMTPUTF8 mail go out with SMTPUTF8, the To: header in UTF-8 (not RFC 2047)', async () => {
    const hop = await startRecordingServer();
    const yaml = `${POLICY}\n  - name: copied\n    recipients: ['kopie@example\\.net']\n    copy-to: {infected: ['prüfer@exämple.net']}`;
    const av = await startMailAvgate({ clamd, stateDir: join(dir, 'utf8'), nextHop: `smtp:127.0.0.1:${hop.port}`, mailYaml: yaml });
    try {
      for (const rcpt of ['jürgen@exämple.net', 'kopie@example.net']) {
        const { client } = await SmtpTestClient.connect(av.smtpPort);
        try {
          await client.command('EHLO client.test');
          assert.equal((await client.command('MAIL FROM:<jörg@exämple.com> SMTPUTF8')).code, 250);
          assert.equal((await client.command(`RCPT TO:<${rcpt}>`)).code, 250);
          const [r] = await client.data(mailWith(`utf8-${rcpt.length}`, [eicarAttachment()]), 1);
          assert.equal(r?.code, 250, r?.text);
        } finally {
          await client.quit();
        }
      }
      const notices = hop.messages.filter((m) => m.mailFrom.address === '');
      const to = (addr: string) => notices.filter((m) => m.rcptTo.some((r) => r.address === addr));
      for (const addr of ['jörg@exämple.com', 'jürgen@exämple.net']) {
        // The sender sent two messages: two notices; the recipient one.
        const got = to(addr);
        assert.equal(got.length, addr.startsWith('jörg') ? 2 : 1, `notices to ${addr}: ${JSON.stringify(notices.map((m) => m.rcptTo.map((r) => r.address)))}`);
        for (const n of got) {
          assert.equal((n.mailFrom.args as Record<string, unknown>).SMTPUTF8, true, 'sent with SMTPUTF8');
          const head = n.body.toString('utf8').split('\r\n\r\n')[0] ?? '';
          assert.match(head, new RegExp(`^To: <${addr}>$`, 'm'), 'the address as it is (RFC 6532)');
        }
      }
      // The admin notice (ASCII recipient) attaches no original here: no SMTPUTF8 needed.
      const [admin] = to('admin@gw.test');
      assert.ok(admin, 'an admin notice');
      assert.equal((admin.mailFrom.args as Record<string, unknown>).SMTPUTF8, undefined);
      // The copy of an SMTPUTF8 original keeps the parameter.
      const [copy] = hop.messages.filter((m) => m.rcptTo.some((r) => r.address === 'prüfer@exämple.net'));
      assert.ok(copy, 'the copy went out');
      assert.equal((copy.mailFrom.args as Record<string, unknown>).SMTPUTF8, true);
    } finally {
      await av.stop();
      await hop.close();
    }
  });
});
