import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { reply } from '../../src/protocols/smtp/reply.js';
import { parseSinkDump, startSmtpSink } from '../../tools/peers/postfix.js';
import { stopChild } from '../../tools/peers/process.js';
import { asSinkContent, crlf, SmtpTestClient, startRecordingServer, startTestFilter } from '../helpers/smtp.js';

const message = crlf(['Subject: lmtp', '', 'body']);

describe('LMTP', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-lmtp-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('LMTP inbound: three recipients, three different replies from the handler, in order', async () => {
    const filter = await startTestFilter({
      nextHop: 'lmtp:unix:/nonexistent',
      smtp: { protocol: 'lmtp' },
      handler: async (msg) => {
        assert.equal(msg.protocol, 'lmtp');
        return [reply(250, '2.1.5', `${msg.rcptTo[0]?.address} delivered`), reply(452, '4.2.2', 'Mailbox full'), reply(550, '5.7.1', ['Virus found:', 'Eicar-Test-Signature'])];
      },
    });
    const { client, greeting } = await SmtpTestClient.connect(filter.port);
    try {
      assert.match(greeting.text, /LMTP/);
      assert.equal((await client.command('EHLO x.test')).code, 500, 'EHLO is not LMTP');
      assert.equal((await client.command('LHLO x.test')).code, 250);
      await client.command('MAIL FROM:<a@example.com>');
      for (const r of ['one@example.com', 'two@example.com', 'three@example.com']) assert.equal((await client.command(`RCPT TO:<${r}>`)).code, 250);
      const replies = await client.data(message, 3);
      assert.deepEqual(
        replies.map((r) => [r.code, r.text]),
        [
          [250, '2.1.5 one@example.com delivered'],
          [452, '4.2.2 Mailbox full'],
          [550, '5.7.1 Virus found: Eicar-Test-Signature'],
        ],
      );
    } finally {
      await client.quit();
      await filter.stop();
    }
  });

  test('LMTP through to an LMTP next hop: RCPT refusals and per-recipient DATA replies come back per recipient', async () => {
    const rec = await startRecordingServer({
      lmtp: true,
      rcpt: (a) => (a.startsWith('unknown') ? { code: 550, text: '5.1.1 No such mailbox' } : null),
      data: (m) => m.rcptTo.map((r) => (r.address.startsWith('full') ? { code: 452, text: '4.2.2 Over quota' } : { code: 250, text: `2.0.0 ${r.address} saved` })),
    });
    const filter = await startTestFilter({ nextHop: `lmtp:127.0.0.1:${rec.port}`, smtp: { protocol: 'lmtp' } });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      await client.command('LHLO x.test');
      await client.command('MAIL FROM:<a@example.com>');
      for (const r of ['ok@example.com', 'unknown@example.com', 'full@example.com']) await client.command(`RCPT TO:<${r}>`);
      const replies = await client.data(message, 3);
      assert.deepEqual(
        replies.map((r) => [r.code, r.text]),
        [
          [250, '2.0.0 ok@example.com saved'],
          [550, '5.1.1 No such mailbox'],
          [452, '4.2.2 Over quota'],
        ],
      );
      assert.equal(rec.messages.length, 1);
      assert.ok(rec.messages[0]?.body.equals(message));
    } finally {
      await client.quit();
      await filter.stop();
      await rec.close();
    }
  });

  test('SMTP in, lmtp:unix: next hop (smtp-sink -L on a unix socket)', async () => {
    const sinkDir = join(dir, 'unix');
    const sock = join(sinkDir, 'lmtp.sock');
    // smtp-sink on a unix socket (startSmtpSink is for loopback ports).
    await mkdir(join(sinkDir, 'dump'), { recursive: true });
    const child = spawn('/usr/sbin/smtp-sink', [...(process.getuid?.() === 0 ? ['-u', 'root'] : []), '-L', '-d', `${sinkDir}/dump/%H%M%S.`, `unix:${sock}`, '16'], { stdio: 'ignore' });
    const filter = await startTestFilter({ nextHop: `lmtp:unix:${sock}` });
    try {
      const until = Date.now() + 5000;
      while (!existsSync(sock) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      const { client } = await SmtpTestClient.connect(filter.port);
      await client.command('EHLO x.test');
      await client.command('MAIL FROM:<a@example.com>');
      await client.command('RCPT TO:<b@example.com>');
      await client.command('RCPT TO:<c@example.com>');
      const [r] = await client.data(message);
      assert.equal(r?.code, 250, r?.text);
      await client.quit();
      const files = await readdir(join(sinkDir, 'dump'));
      assert.equal(files.length, 1);
      const m = parseSinkDump(files[0] as string, await readFile(join(sinkDir, 'dump', files[0] as string)));
      assert.equal(m.proto, 'LMTP');
      assert.deepEqual(m.rcptArgs, ['<b@example.com>', '<c@example.com>']);
      assert.ok(m.content.equals(asSinkContent(message)));
    } finally {
      await filter.stop();
      await stopChild(child);
    }
  });

  test('an LMTP message over max-message-size gets 552 once per recipient', async () => {
    const sink = await startSmtpSink({ dir: join(dir, 'size'), lmtp: true });
    const filter = await startTestFilter({ nextHop: `lmtp:127.0.0.1:${sink.port}`, smtp: { protocol: 'lmtp', 'max-message-size': '1KiB' } });
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      await client.command('LHLO x.test');
      await client.command('MAIL FROM:<a@example.com>');
      await client.command('RCPT TO:<b@example.com>');
      await client.command('RCPT TO:<c@example.com>');
      const replies = await client.data(crlf(Array.from({ length: 100 }, () => 'z'.repeat(50))), 2);
      assert.deepEqual(
        replies.map((r) => r.code),
        [552, 552],
      );
      assert.equal((await sink.messages()).length, 0);
    } finally {
      await client.quit();
      await filter.stop();
      await sink.stop();
    }
  });
});
