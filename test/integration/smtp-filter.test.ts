import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { NextHopClient, nextHopOptions } from '../../src/protocols/smtp/next-hop.js';
import { smtpSchema } from '../../src/config/smtp-schema.js';
import { startSmtpSink, type SmtpSink } from '../../tools/peers/postfix.js';
import { asSinkContent, crlf, SmtpTestClient, startRecordingServer, startTestFilter, swaks, swaksReplies } from '../helpers/smtp.js';

/** A message that exercises the transport: dots at line starts, 8-bit text, long lines, trailing blanks. */
function trickyMessage(): Buffer {
  return Buffer.concat([
    crlf([
      'From: Sender <a@example.com>',
      'To: b@example.com',
      'Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=',
      'Message-ID: <tricky@example.com>',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 8bit',
      '',
      '.',
      '..two dots',
      '. dot space',
      'Grüße aus Köln — 8-bit text',
      'trailing blanks   ',
      'x'.repeat(990),
      '',
      '.',
      'not the last line: swaks takes a final "." line for the end of DATA',
    ]),
    crlf(Array.from({ length: 2000 }, (_, i) => `line ${i} ${randomBytes(24).toString('base64')}`)),
  ]);
}

describe('SMTP filter, pass-through to smtp-sink', () => {
  let dir: string;
  let sink: SmtpSink;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-smtp-sink-'));
    sink = await startSmtpSink({ dir });
  });
  after(async () => {
    await sink?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('swaks → avgate → smtp-sink: the message arrives with the same bytes', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink.port}` });
    try {
      const before = (await sink.messages()).length;
      const message = trickyMessage();
      const file = join(dir, 'tricky.eml');
      await writeFile(file, message);
      const r = await swaks(['--server', `127.0.0.1:${filter.port}`, '--from', 'a@example.com', '--to', 'b@example.com,c@example.com', '--data', `@${file}`, '--pipeline']);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.ok(swaksReplies(r.stdout).some((l) => /^250 2\.0\.0 Ok/.test(l)), 'the sink reply is relayed');
      const got = await sink.waitForMessages(before + 1);
      const m = got[got.length - 1];
      assert.ok(m);
      assert.equal(m.mailArgs.split(' ')[0], '<a@example.com>');
      assert.deepEqual(m.rcptArgs, ['<b@example.com>', '<c@example.com>']);
      assert.equal(m.helo, 'avgate.test');
      // smtp-sink writes lines with LF (the message has CRLF everywhere); swaks ends DATA with
      // CRLF.CRLF after the file's own last CRLF, so the message it sends has one more empty line.
      assert.ok(m.content.equals(asSinkContent(Buffer.concat([message, Buffer.from('\r\n')]))), 'byte-identical apart from smtp-sink line ends');
      assert.deepEqual(await filter.spoolFiles(), [], 'spool removed');
    } finally {
      await filter.stop();
    }
  });

  test('pipelined MAIL, RCPT, RCPT, DATA (RFC 2920): the four replies reach a client process in one read, and the mail is delivered', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink.port}` });
    try {
      const token = randomBytes(8).toString('hex');
      // The client runs in a process of its own: in this one it could read only after the server
      // had written everything anyway. It reads as soon as a segment arrives.
      const script = `
        const s = require('node:net').connect(${filter.port}, '127.0.0.1');
        let buf = '', stage = 0, reads = [];
        const done = (re) => re.test(buf);
        s.on('data', (d) => {
          buf += d.toString('latin1');
          if (stage === 2) reads.push(d.toString('latin1'));
          if (stage === 0 && done(/^220 .*\\r\\n/m)) { stage = 1; buf = ''; s.write('EHLO client.test\\r\\n'); }
          else if (stage === 1 && done(/^250 .*\\r\\n/m)) {
            stage = 2; buf = '';
            s.write('MAIL FROM:<a@example.com>\\r\\nRCPT TO:<b@example.com>\\r\\nRCPT TO:<c@example.com>\\r\\nDATA\\r\\n');
          } else if (stage === 2 && (buf.match(/^\\d{3} .*\\r\\n/gm) || []).length === 4) {
            stage = 3; buf = '';
            s.write('Subject: pipelined\\r\\n\\r\\n${token}\\r\\n.\\r\\n');
          } else if (stage === 3 && done(/^\\d{3} .*\\r\\n/m)) {
            stage = 4;
            process.stdout.write(JSON.stringify({ reads, final: buf }));
            s.end('QUIT\\r\\n');
          }
        });`;
      const out = await new Promise<string>((resolve, reject) => {
        execFile(process.execPath, ['-e', script], { timeout: 30_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
      });
      const { reads, final } = JSON.parse(out) as { reads: string[]; final: string };
      assert.deepEqual(reads.join('').match(/^\d{3}(?= )/gm), ['250', '250', '250', '354']);
      assert.equal(reads.length, 1, `replies in ${reads.length} reads: ${JSON.stringify(reads)}`);
      assert.match(final, /^250 /);
      const got = await sink.messages();
      assert.ok(got.some((m) => m.content.includes(Buffer.from(token))), 'delivered');
    } finally {
      await filter.stop();
    }
  });

  test('DSN, BODY and ENVID are relayed to a next hop that offers DSN and 8BITMIME', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink.port}` });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      assert.equal((await client.command('EHLO client.test')).code, 250);
      const msg = crlf(['Subject: dsn', '', 'body ü']);
      client.send(
        `MAIL FROM:<a@example.com> SIZE=${msg.length} BODY=8BITMIME RET=HDRS ENVID=id+2Bwith+3Dchars`,
        'RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com',
        'RCPT TO:<c@example.com> NOTIFY=NEVER',
      );
      for (let i = 0; i < 3; i++) assert.equal((await client.reply()).code, 250);
      const [done] = await client.data(msg);
      assert.equal(done?.code, 250, done?.text);
      const got = await sink.messages();
      const m = got.find((x) => x.content.includes(Buffer.from('Subject: dsn')));
      assert.ok(m, 'delivered');
      // smtp-sink does not offer SIZE: the parameter is left out, the others go through.
      assert.equal(m.mailArgs, '<a@example.com> BODY=8BITMIME RET=HDRS ENVID=id+2Bwith+3Dchars');
      assert.deepEqual(m.rcptArgs, ['<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com', '<c@example.com> NOTIFY=NEVER']);
    } finally {
      await client.quit();
      await filter.stop();
    }
  });

  test('a next hop without DSN gets the mail without the DSN parameters', async () => {
    const plain = await startSmtpSink({ dir: join(dir, 'nodsn'), args: ['-N'] });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${plain.port}` });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      await client.command('EHLO client.test');
      assert.equal((await client.command('MAIL FROM:<a@example.com> RET=FULL ENVID=x1')).code, 250);
      assert.equal((await client.command('RCPT TO:<b@example.com> NOTIFY=FAILURE')).code, 250);
      const [done] = await client.data(crlf(['Subject: no dsn', '', 'x']));
      assert.equal(done?.code, 250);
      const [m] = await plain.waitForMessages(1);
      assert.equal(m?.mailArgs, '<a@example.com>');
      assert.deepEqual(m?.rcptArgs, ['<b@example.com>']);
    } finally {
      await client.quit();
      await filter.stop();
      await plain.stop();
    }
  });
});

describe('SMTP filter, parameters and addresses it does not take', () => {
  test('an unknown MAIL or RCPT parameter gets 555 5.5.4, an empty recipient 501; known ones pass', async () => {
    const rec = await startRecordingServer({ size: 10_000_000 });
    // A handler that does not know the size it sends (as the mail filter when it rewrites).
    const filter = await startTestFilter({
      nextHop: `smtp:127.0.0.1:${rec.port}`,
      handler: async (msg, nextHop) => (await nextHop.deliver({ mailFrom: msg.mailFrom, rcpts: msg.rcptTo, body: msg.spool.createReadStream() })).replies,
    });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      await client.command('EHLO client.test');
      const foo = await client.command('MAIL FROM:<a@example.com> FOO=bar');
      assert.equal(foo.code, 555, foo.text);
      assert.match(foo.text, /^5\.5\.4 MAIL parameter FOO not recognized/);
      assert.equal((await client.command('MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=e1')).code, 250);
      const empty = await client.command('RCPT TO:<>');
      assert.equal(empty.code, 501, empty.text);
      const xyz = await client.command('RCPT TO:<b@example.com> XYZ=1');
      assert.equal(xyz.code, 555, xyz.text);
      assert.equal((await client.command('RCPT TO:<b@example.com> NOTIFY=NEVER ORCPT=rfc822;b@example.com')).code, 250);
      const [done] = await client.data(crlf(['Subject: params', '', 'x']));
      assert.equal(done?.code, 250);
      assert.equal(rec.messages.length, 1);
      // The client's SIZE=100 is not passed on: the size of what is sent is unknown here, so none.
      const args = (rec.messages[0]?.mailFrom.args as Record<string, unknown> | false | undefined) || {};
      assert.equal(args.SIZE, undefined, JSON.stringify(args));
    } finally {
      await client.quit();
      await filter.stop();
      await rec.close();
    }
  });
});

describe('SMTP filter, a client that does not wait for 354', () => {
  test('five transactions and QUIT in one write (message data sent without waiting): all delivered, all answered', async () => {
    const rec = await startRecordingServer();
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}` });
    let blob = 'EHLO t\r\n';
    for (let i = 0; i < 5; i++) blob += `MAIL FROM:<a@x.org>\r\nRCPT TO:<b${i}@x.org>\r\nDATA\r\nSubject: burst ${i}\r\n\r\nbody\r\n.\r\n`;
    blob += 'QUIT\r\n';
    const sock = connect(filter.port, '127.0.0.1');
    let text = '';
    sock.on('data', (d: Buffer) => (text += d.toString('latin1')));
    sock.once('data', () => sock.write(blob));
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once('close', () => resolve());
        sock.once('error', reject);
        setTimeout(() => reject(new Error(`no 221 within 20 s: ${text}`)), 20_000).unref();
      });
      assert.match(text, /^221 /m);
      assert.equal(text.match(/^354 /gm)?.length, 5);
      assert.equal(rec.messages.length, 5);
    } finally {
      sock.destroy();
      await filter.stop();
      await rec.close();
    }
  });
});

describe('SMTP filter, what only a recording next hop can show', () => {
  test('SIZE (the real size), SMTPUTF8, XFORWARD attributes and exact body bytes', async () => {
    const rec = await startRecordingServer({ size: 10 * 1024 * 1024 });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}` });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      const ehlo = await client.command('EHLO client.test');
      for (const cap of ['PIPELINING', '8BITMIME', 'SMTPUTF8', 'DSN', 'SIZE 104857600', 'XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE']) {
        assert.ok(ehlo.lines.includes(cap), `EHLO announces ${cap}: ${ehlo.lines.join(' | ')}`);
      }
      assert.equal((await client.command('XFORWARD NAME=mail.origin.test ADDR=192.0.2.7 PORT=4711 PROTO=ESMTP HELO=origin.test')).code, 250);
      assert.equal((await client.command('XFORWARD SOURCE=REMOTE IDENT=abc123')).code, 250);
      // Bare LF and a lone CR inside lines are passed as they came; dots are stuffed on the way out.
      const body = Buffer.concat([crlf(['Subject: ünïcödé', '', '.leading dot', 'bare LF follows']), Buffer.from('a\nb\rc\r\n.\r\n..\r\nend\r\n')]);
      assert.equal((await client.command('MAIL FROM:<jörg@exämple.com> SMTPUTF8 SIZE=99')).code, 250);
      assert.equal((await client.command('RCPT TO:<ü@exämple.com>')).code, 250);
      const [done] = await client.data(body);
      assert.equal(done?.code, 250, done?.text);
      assert.equal(done?.text, 'Ok: recorded');
      const m = rec.messages[0];
      assert.ok(m);
      assert.ok(m.body.equals(body), 'exact bytes');
      assert.equal(m.mailFrom.address, 'jörg@exämple.com');
      assert.deepEqual(m.mailFrom.args, { SMTPUTF8: true, SIZE: String(body.length) }, 'SIZE is the real size');
      assert.equal(m.rcptTo[0]?.address, 'ü@exämple.com');
      assert.equal(m.xforward.NAME, 'mail.origin.test');
      assert.equal(m.xforward.ADDR, '192.0.2.7');
      assert.equal(m.xforward.PORT, 4711);
      assert.equal(m.xforward.HELO, 'origin.test');
      assert.equal(m.xforward.PROTO, 'ESMTP');
      assert.equal(m.xforward.SOURCE, 'REMOTE');
      assert.equal(m.xforward.IDENT, 'abc123');

      // The next transaction on the same connection without XFORWARD (attributes last one
      // transaction, as in Postfix): avgate's own view of the client, as far as it still knows it.
      assert.equal((await client.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await client.command('RCPT TO:<b@example.com>')).code, 250);
      assert.equal((await client.data(crlf(['Subject: 2', '', 'x'])))[0]?.code, 250);
      const m2 = rec.messages[1];
      assert.equal(m2?.xforward.ADDR, '127.0.0.1');
      assert.equal(m2?.xforward.HELO, undefined, 'the HELO name was overwritten by XFORWARD: [UNAVAILABLE]');
      assert.equal(m2?.xforward.PROTO, 'ESMTP');
      assert.equal(rec.connections, 1, 'the pooled connection was reused');
    } finally {
      await client.quit();
      await filter.stop();
      await rec.close();
    }
  });

  test('XFORWARD and XCLIENT are refused to clients outside the trusted hosts', async () => {
    const rec = await startRecordingServer();
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, smtp: { 'xforward-hosts': ['10.0.0.0/8'], 'xclient-hosts': [] } });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      const ehlo = await client.command('EHLO client.test');
      assert.ok(!ehlo.lines.some((l) => l.startsWith('XFORWARD') || l.startsWith('XCLIENT')), 'not announced');
      assert.ok((await client.command('XFORWARD ADDR=192.0.2.7')).code >= 500);
      assert.ok((await client.command('XCLIENT ADDR=192.0.2.7')).code >= 500);
    } finally {
      await client.quit();
      await filter.stop();
      await rec.close();
    }
  });

  test('XCLIENT to the next hop when configured and offered; such a connection is not reused', async () => {
    const rec = await startRecordingServer();
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, smtp: { 'next-hop': { xclient: true } } });
    try {
      for (let i = 0; i < 2; i++) {
        const r = await swaks(['--server', `127.0.0.1:${filter.port}`, '--from', 'a@example.com', '--to', 'b@example.com']);
        assert.equal(r.code, 0, r.stdout);
      }
      assert.equal(rec.messages.length, 2);
      assert.equal(rec.messages[0]?.xclient.ADDR, '127.0.0.1');
      assert.equal(rec.messages[0]?.xclient.PROTO, 'ESMTP');
      assert.deepEqual(rec.messages[0]?.xforward, {}, 'XCLIENT instead of XFORWARD');
      assert.equal(rec.connections, 2, 'a personalized connection is not reused');
    } finally {
      await filter.stop();
      await rec.close();
    }
  });

  test('a next hop without PIPELINING, refusing one recipient: commands one by one, replies per recipient (LMTP in)', async () => {
    const rec = await startRecordingServer({ hidePIPELINING: true, rcpt: (a) => (a.startsWith('nobody') ? { code: 550, text: 'No such user' } : null) });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, smtp: { protocol: 'lmtp' } });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      await client.command('LHLO x.test');
      await client.command('MAIL FROM:<a@example.com>');
      for (const r of ['one@example.com', 'nobody@example.com', 'two@example.com']) await client.command(`RCPT TO:<${r}>`);
      const replies = await client.data(crlf(['Subject: np', '', 'x']), 3);
      assert.deepEqual(
        replies.map((r) => [r.code, r.text]),
        [
          [250, 'Ok: recorded'],
          [550, 'No such user'],
          [250, 'Ok: recorded'],
        ],
      );
      assert.deepEqual(rec.messages[0]?.rcptTo.map((r) => r.address), ['one@example.com', 'two@example.com']);
    } finally {
      await client.quit();
      await filter.stop();
      await rec.close();
    }
  });

  test('SMTPUTF8 addresses to a next hop without SMTPUTF8 → 550 5.6.7; ASCII addresses go without the parameter', async () => {
    const rec = await startRecordingServer({ hideSMTPUTF8: true });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}` });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      await client.command('EHLO x.test');
      await client.command('MAIL FROM:<jörg@example.com> SMTPUTF8');
      await client.command('RCPT TO:<b@example.com>');
      const [r1] = await client.data(crlf(['Subject: utf8', '', 'x']));
      assert.equal(r1?.code, 550);
      assert.match(r1?.text ?? '', /^5\.6\.7 /);
      await client.command('MAIL FROM:<a@example.com> SMTPUTF8');
      await client.command('RCPT TO:<b@example.com>');
      const [r2] = await client.data(crlf(['Subject: ascii', '', 'x']));
      assert.equal(r2?.code, 250);
      assert.equal(rec.messages.length, 1);
      assert.equal(rec.messages[0]?.mailFrom.args, false, 'no SMTPUTF8 parameter');
    } finally {
      await client.quit();
      await filter.stop();
      await rec.close();
    }
  });

  test('the pool reuses connections and survives a next hop that closed an idle one', async () => {
    const rec = await startRecordingServer({ idleCloseMs: 300 });
    const hop = new NextHopClient(
      `smtp:127.0.0.1:${rec.port}`,
      nextHopOptions(smtpSchema.parse({ 'next-hop': { 'pool-size': 2, 'idle-timeout': '30s' } })['next-hop'], 'avgate.test'),
    );
    const filter = await startTestFilter({ nextHop: hop });
    try {
      const send = async (n: number) => {
        const { client } = await SmtpTestClient.connect(filter.port);
        await client.command('EHLO c.test');
        for (let i = 0; i < n; i++) {
          assert.equal((await client.command('MAIL FROM:<a@example.com>')).code, 250);
          assert.equal((await client.command(`RCPT TO:<r${i}@example.com>`)).code, 250);
          const [d] = await client.data(crlf([`Subject: ${i}`, '', 'x']));
          assert.equal(d?.code, 250, d?.text);
        }
        await client.quit();
      };
      await Promise.all([send(5), send(5), send(5)]);
      assert.equal(rec.messages.length, 15);
      assert.ok(rec.connections <= 2, `pool-size 2 bounds the connections (${rec.connections})`);
      assert.ok(hop.counters.connectionsReused >= 13);
      // The recorder drops idle connections after 300 ms (421): the next delivery retries on a new one.
      await new Promise((r) => setTimeout(r, 600));
      await send(1);
      assert.equal(rec.messages.length, 16);
      assert.ok(hop.openConnections <= 2);
      assert.ok(rec.commands.filter((c) => c === 'DATA').length === 16, 'exactly once each');
    } finally {
      await filter.stop();
      await hop.close();
      await rec.close();
    }
  });

  test('idle pooled connections are closed after idle-timeout', async () => {
    const rec = await startRecordingServer();
    const hop = new NextHopClient(
      `smtp:127.0.0.1:${rec.port}`,
      nextHopOptions(smtpSchema.parse({ 'next-hop': { 'idle-timeout': '200ms' } })['next-hop'], 'avgate.test'),
    );
    try {
      const r = await hop.deliver({ mailFrom: { address: 'a@example.com', params: {} }, rcpts: [{ address: 'b@example.com', params: {} }], body: crlf(['Subject: idle', '', 'x']) });
      assert.equal(r.replies[0]?.code, 250);
      assert.equal(hop.idleConnections, 1);
      await new Promise((res) => setTimeout(res, 500));
      assert.equal(hop.openConnections, 0);
      assert.equal(hop.idleConnections, 0);
    } finally {
      await hop.close();
      await rec.close();
    }
  });
});
