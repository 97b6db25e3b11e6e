import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { smtpSchema } from '../../src/config/smtp-schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { Listeners } from '../../src/core/listen.js';
import { reply } from '../../src/protocols/smtp/reply.js';
import { SmtpFilterServer } from '../../src/protocols/smtp/server.js';
import type { MessageHandler } from '../../src/protocols/smtp/types.js';
import { startSmtpSink } from '../../tools/peers/postfix.js';
import { closedPort, startFaultServer } from '../helpers/fault-server.js';
import { capturedLog } from '../helpers/log.js';
import { crlf, SmtpTestClient, startRecordingServer, startTestFilter, swaks, swaksReplies, type RecordedMessage, type TestFilter, type TestReply } from '../helpers/smtp.js';

/** One transaction over a fresh connection; returns every reply from MAIL on. */
async function transaction(port: number, rcpts: string[], message: Buffer, mailParams = ''): Promise<{ mail: number; rcpt: number[]; data: Array<{ code: number; text: string }> }> {
  const { client } = await SmtpTestClient.connect(port);
  try {
    await client.command('EHLO client.test');
    const mail = (await client.command(`MAIL FROM:<a@example.com>${mailParams}`)).code;
    const rcpt: number[] = [];
    for (const r of rcpts) rcpt.push((await client.command(`RCPT TO:<${r}>`)).code);
    const data = mail === 250 && rcpt.includes(250) ? await client.data(message) : [];
    return { mail, rcpt, data };
  } finally {
    await client.quit();
  }
}

const small = crlf(['Subject: test', '', 'hello']);

describe('SMTP filter: next hop trouble is a temporary failure, a next hop refusal is relayed', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-smtp-fail-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('next hop down → 451 4.4.1 naming the next hop and the cause, and a warning to alert on', async () => {
    const port = await closedPort();
    const { log, lines } = capturedLog();
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${port}`, log });
    try {
      const r = await swaks(['--server', `127.0.0.1:${filter.port}`, '--from', 'a@example.com', '--to', 'b@example.com']);
      assert.notEqual(r.code, 0);
      const last = swaksReplies(r.stdout).find((l) => l.startsWith('451'));
      assert.ok(last, r.stdout);
      assert.equal(last, `451 4.4.1 next hop smtp:127.0.0.1:${port}: ECONNREFUSED`);
      const warn = lines.find((l) => l.msg === 'next hop delivery failed');
      assert.equal(warn?.level, 40, JSON.stringify(lines.map((l) => l.msg)));
      assert.match(String(warn?.err), /ECONNREFUSED/);
    } finally {
      await filter.stop();
    }
  });

  test('a next hop that refuses the session (554 greeting, 421 after RCPT) → 451 with its text', async () => {
    const greeter = await startFaultServer((s) => s.end('554 5.7.1 go away\r\n'));
    const sink421 = await startSmtpSink({ dir: join(dir, 'q421'), args: ['-Q', 'RCPT'] });
    const f1 = await startTestFilter({ nextHop: `smtp:127.0.0.1:${greeter.port}` });
    const f2 = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink421.port}` });
    try {
      const r1 = await transaction(f1.port, ['b@example.com'], small);
      assert.equal(r1.data[0]?.code, 451);
      assert.match(r1.data[0]?.text ?? '', /^4\.4\.1 next hop .*refused the connection: 554 5\.7\.1 go away/);
      const r2 = await transaction(f2.port, ['b@example.com'], small);
      assert.equal(r2.data[0]?.code, 451);
      assert.match(r2.data[0]?.text ?? '', /421/);
      assert.equal((await sink421.messages()).length, 0);
    } finally {
      await f1.stop();
      await f2.stop();
      await greeter.close();
      await sink421.stop();
    }
  });

  test('next hop 5xx (at the final dot, at RCPT) is relayed as 5xx', async () => {
    const dotSink = await startSmtpSink({ dir: join(dir, 'dot'), args: ['-f', '.', '-B', '550 5.7.1 Message refused by policy'] });
    const rcptSink = await startSmtpSink({ dir: join(dir, 'rcpt'), args: ['-f', 'RCPT', '-B', '550 5.1.1 No such user'] });
    const f1 = await startTestFilter({ nextHop: `smtp:127.0.0.1:${dotSink.port}` });
    const f2 = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rcptSink.port}` });
    try {
      const r1 = await transaction(f1.port, ['b@example.com'], small);
      assert.deepEqual(r1.data.map((d) => [d.code, d.text]), [[550, '5.7.1 Message refused by policy']]);
      const r2 = await transaction(f2.port, ['b@example.com', 'c@example.com'], small);
      assert.deepEqual(r2.data.map((d) => [d.code, d.text]), [[550, '5.1.1 No such user']]);
    } finally {
      await f1.stop();
      await f2.stop();
      await dotSink.stop();
      await rcptSink.stop();
    }
  });

  test('a next hop that stops answering after the dot → 451 4.4.2 after data-done', async () => {
    // Answers everything up to DATA, then swallows the message and never replies.
    const silent = await startFaultServer((s) => {
      s.write('220 slow.test ESMTP\r\n');
      let inData = false;
      s.on('data', (d: Buffer) => {
        if (inData) return;
        for (const line of d.toString('latin1').split('\r\n').filter((l) => l.length > 0)) {
          if (/^EHLO/i.test(line)) s.write('250-slow.test\r\n250 PIPELINING\r\n');
          else if (/^DATA/i.test(line)) {
            s.write('354 go on\r\n');
            inData = true;
            return;
          } else s.write('250 ok\r\n');
        }
      });
    });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${silent.port}`, smtp: { 'next-hop': { timeouts: { 'data-done': '400ms' } } } });
    try {
      const r = await transaction(filter.port, ['b@example.com'], small);
      assert.equal(r.data[0]?.code, 451);
      assert.match(r.data[0]?.text ?? '', /^4\.4\.2 next hop .*no reply within 400 ms \(data-done\)/);
    } finally {
      await filter.stop();
      await silent.close();
    }
  });
});

describe('SMTP filter: limits and the never-lose rules', () => {
  let rec: Awaited<ReturnType<typeof startRecordingServer>>;
  before(async () => {
    rec = await startRecordingServer();
  });
  after(async () => {
    await rec.close();
  });

  test('over max-message-size → 552 5.3.4 (announced SIZE, and on the data itself); the session goes on', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, smtp: { 'max-message-size': '64KiB', 'spool-memory': '16KiB' } });
    const before = rec.messages.length;
    const { client } = await SmtpTestClient.connect(filter.port);
    try {
      const ehlo = await client.command('EHLO client.test');
      assert.ok(ehlo.lines.includes('SIZE 65536'));
      const early = await client.command('MAIL FROM:<a@example.com> SIZE=100000');
      assert.equal(early.code, 552);
      assert.equal((await client.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await client.command('RCPT TO:<b@example.com>')).code, 250);
      const big = crlf(Array.from({ length: 2000 }, (_, i) => `line ${i} ${'x'.repeat(60)}`));
      const [r] = await client.data(big);
      assert.equal(r?.code, 552);
      assert.equal(r?.text, '5.3.4 Message size exceeds fixed maximum message size');
      assert.equal(rec.messages.length, before, 'nothing delivered');
      // In step: the next transaction on the same connection works.
      assert.equal((await client.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await client.command('RCPT TO:<b@example.com>')).code, 250);
      assert.equal((await client.data(small))[0]?.code, 250);
      assert.equal(rec.messages.length, before + 1);
      assert.equal(filter.server.counters.oversize, 1);
      assert.deepEqual(await filter.spoolFiles(), []);
    } finally {
      await client.quit();
      await filter.stop();
    }
  });

  test('client gone in the middle of DATA → nothing delivered, spool file removed, the server goes on', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, smtp: { 'spool-memory': '16KiB' } });
    const before = rec.messages.length;
    try {
      const { client } = await SmtpTestClient.connect(filter.port);
      await client.command('EHLO client.test');
      await client.command('MAIL FROM:<a@example.com>');
      await client.command('RCPT TO:<b@example.com>');
      assert.equal((await client.command('DATA')).code, 354);
      client.socket.write(crlf(Array.from({ length: 3000 }, (_, i) => `line ${i} ${'y'.repeat(60)}`)));
      // The spool went to disk (over spool-memory) before the client vanished.
      const until = Date.now() + 5000;
      while ((await filter.spoolFiles()).length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      assert.equal((await filter.spoolFiles()).length, 1, 'spooled to a file');
      client.destroy();
      const until2 = Date.now() + 5000;
      while (filter.server.counters.clientAborts === 0 && Date.now() < until2) await new Promise((r) => setTimeout(r, 10));
      assert.equal(filter.server.counters.clientAborts, 1);
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(await filter.spoolFiles(), [], 'spool file removed');
      assert.equal(rec.messages.length, before, 'nothing delivered');
      const again = await transaction(filter.port, ['b@example.com'], small);
      assert.equal(again.data[0]?.code, 250);
    } finally {
      await filter.stop();
    }
  });

  test('the spool file of a process killed during a message (kill -9) is removed when the next SMTP front end starts; files of running processes stay', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'avgate-smtp-killed-'));
    const spoolDir = join(stateDir, 'spool');
    // Another avgate: an SMTP front end in a child process whose handler never finishes.
    const src = (p: string) => JSON.stringify(new URL(`../../src/${p}`, import.meta.url).pathname);
    const code = [
      `const { SmtpFilterServer } = await import(${src('protocols/smtp/server.ts')});`,
      `const { smtpSchema } = await import(${src('config/smtp-schema.ts')});`,
      `const { silentLogger } = await import(${src('core/logging.ts')});`,
      `const config = smtpSchema.parse({ listen: '127.0.0.1:0', hostname: 'avgate.test', 'spool-memory': '16KiB', 'next-hop': { target: 'smtp:127.0.0.1:9' } });`,
      `const server = new SmtpFilterServer(config, { stateDir: ${JSON.stringify(stateDir)}, log: silentLogger(), handler: () => new Promise(() => {}) });`,
      'process.stdout.write(JSON.stringify(await server.listen()) + "\\n");',
    ].join('\n');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    let server: SmtpFilterServer | null = null;
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('\n')) resolve((JSON.parse(out) as { port: number }).port);
        });
        child.once('exit', (c) => reject(new Error(`child exited ${c}`)));
      });
      const { client } = await SmtpTestClient.connect(port);
      await client.command('EHLO client.test');
      await client.command('MAIL FROM:<a@example.com>');
      await client.command('RCPT TO:<b@example.com>');
      assert.equal((await client.command('DATA')).code, 354);
      client.socket.write(crlf([...Array.from({ length: 1000 }, (_, i) => `line ${i} ${'z'.repeat(60)}`), '.']));
      const until = Date.now() + 10_000;
      while ((await readdir(spoolDir).catch(() => [])).length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      const [left] = await readdir(spoolDir);
      assert.match(left ?? '', new RegExp(`^spool-${child.pid}-[0-9a-f]{12}-0$`), 'the message is in a spool file while the handler runs');
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      client.destroy();
      // A running process's file (this test's parent, alive) and a file that is no spool file stay.
      const alive = `spool-${process.ppid}-0123456789ab-0`;
      await writeFile(join(spoolDir, alive), 'x');
      await writeFile(join(spoolDir, 'notes.txt'), 'x');
      assert.deepEqual((await readdir(spoolDir)).sort(), [alive, left, 'notes.txt'].sort());

      const { log, lines } = capturedLog();
      const config = smtpSchema.parse({ listen: '127.0.0.1:0', hostname: 'avgate.test', 'next-hop': { target: `smtp:127.0.0.1:${rec.port}` } });
      server = new SmtpFilterServer(config, { stateDir, log });
      await server.listen();
      assert.deepEqual((await readdir(spoolDir)).sort(), [alive, 'notes.txt'].sort(), 'the killed process\'s message is gone');
      const info = lines.find((l) => l.msg === 'spool: removed files left by processes that are gone');
      assert.equal(info?.level, 30, JSON.stringify(lines));
      assert.deepEqual([info?.dir, info?.removed, info?.kept], [spoolDir, 1, 1]);
    } finally {
      child.kill('SIGKILL');
      await server?.close(1000);
      await rm(stateDir, { recursive: true, force: true });
    }
  });

  test('the spool cannot be written (disk trouble) → 452 4.3.1, nothing delivered, the session goes on', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, smtp: { 'spool-memory': '1KiB', 'spool-dir': 'not-a-dir/spool' } });
    const before = rec.messages.length;
    try {
      await writeFile(join(filter.stateDir, 'not-a-dir'), 'a file where the spool directory should be');
      const big = await transaction(filter.port, ['b@example.com'], crlf(Array.from({ length: 100 }, () => 'w'.repeat(70))));
      assert.deepEqual(
        big.data.map((d) => [d.code, d.text]),
        [[452, '4.3.1 Insufficient system storage']],
      );
      assert.equal(rec.messages.length, before);
      const fits = await transaction(filter.port, ['b@example.com'], small);
      assert.equal(fits.data[0]?.code, 250, 'a message that fits in memory still passes');
    } finally {
      await filter.stop();
    }
  });

  test('handler throws → 451 4.3.0; wrong number of replies → 451; too slow → 451 4.4.7 and its signal aborts', async () => {
    let aborted = false;
    const handlers: Record<string, MessageHandler> = {
      throws: async () => {
        throw new Error('scanner exploded');
      },
      short: async () => [],
      slow: (msg) =>
        new Promise((resolve) => {
          msg.signal.addEventListener('abort', () => {
            aborted = true;
            resolve(msg.rcptTo.map(() => reply(250, '2.0.0', 'too late')));
          });
        }),
    };
    for (const [name, handler] of Object.entries(handlers)) {
      const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, handler, smtp: { timeouts: { handler: '300ms' } } });
      try {
        const r = await transaction(filter.port, ['b@example.com'], small);
        assert.equal(r.data[0]?.code, 451, name);
        assert.match(r.data[0]?.text ?? '', name === 'slow' ? /^4\.4\.7 / : /^4\.3\.0 /, name);
      } finally {
        await filter.stop();
      }
    }
    assert.ok(aborted, 'the slow handler saw its signal abort');
  });

  test('close() while a handler runs: after the deadline the handler signal aborts with "server stopping", and close returns', async () => {
    let reason: unknown = null;
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => (entered = r));
    const handler: MessageHandler = (msg) =>
      new Promise((resolve) => {
        entered();
        msg.signal.addEventListener('abort', () => {
          reason = msg.signal.reason;
          resolve(msg.rcptTo.map(() => reply(451, '4.3.2', 'stopping')));
        });
      });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, handler, smtp: { timeouts: { handler: '60s' } } });
    const sent = transaction(filter.port, ['b@example.com'], small).catch(() => null);
    await inHandler;
    assert.equal(filter.server.inFlight, 1);
    const t0 = Date.now();
    await filter.server.close(200);
    assert.ok(reason instanceof Error && reason.message === 'server stopping', `reason: ${String(reason)}`);
    assert.ok(Date.now() - t0 < 10_000);
    assert.equal(filter.server.inFlight, 0);
    await sent;
    await filter.stop();
  });

  test('partition hook: a recipient of another group gets 452 4.5.3 and goes in its own transaction', async () => {
    const seen: string[][] = [];
    const filter = await startTestFilter({
      nextHop: `smtp:127.0.0.1:${rec.port}`,
      partition: (_from, rcpt) => (rcpt.address.endsWith('@scanned.test') ? 'scan' : 'plain'),
      handler: async (msg) => {
        seen.push(msg.rcptTo.map((r) => r.address));
        return msg.rcptTo.map(() => reply(250, '2.0.0', 'Ok'));
      },
    });
    try {
      const r = await transaction(filter.port, ['a@scanned.test', 'b@plain.test', 'c@scanned.test'], small);
      assert.deepEqual(r.rcpt, [250, 452, 250]);
      const r2 = await transaction(filter.port, ['b@plain.test'], small);
      assert.deepEqual(r2.rcpt, [250]);
      assert.deepEqual(seen, [['a@scanned.test', 'c@scanned.test'], ['b@plain.test']]);
      // A refused RCPT's text says what to do.
      const { client } = await SmtpTestClient.connect(filter.port);
      await client.command('EHLO x.test');
      await client.command('MAIL FROM:<a@example.com>');
      await client.command('RCPT TO:<a@plain.test>');
      const refused = await client.command('RCPT TO:<z@scanned.test>');
      assert.equal(refused.code, 452);
      assert.match(refused.text, /^4\.5\.3 /);
      await client.quit();
    } finally {
      await filter.stop();
    }
  });

  test('max-recipients → 452 4.5.3 for the one too many', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, smtp: { 'max-recipients': 2 } });
    try {
      const r = await transaction(filter.port, ['a@x.test', 'b@x.test', 'a@x.test', 'c@x.test'], small);
      assert.deepEqual(r.rcpt, [250, 250, 250, 452], 'a repeated recipient does not count twice');
      assert.equal(r.data[0]?.code, 250);
    } finally {
      await filter.stop();
    }
  });

  test('max-connections: one more connection gets 421 at once; the greeting names the server', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${rec.port}`, smtp: { 'max-connections': 2, banner: 'test filter' } });
    try {
      const a = await SmtpTestClient.connect(filter.port);
      const b = await SmtpTestClient.connect(filter.port);
      assert.equal(a.greeting.code, 220);
      assert.equal(a.greeting.text, 'avgate.test ESMTP test filter');
      assert.equal(b.greeting.code, 220);
      const c = await SmtpTestClient.connect(filter.port);
      assert.equal(c.greeting.code, 421);
      c.client.destroy();
      await a.client.quit();
      await b.client.quit();
    } finally {
      await filter.stop();
    }
  });

  test('SMTP: recipients the next hop refuses while it takes others get a bounce (RFC 3464) to the sender; NOTIFY=NEVER and <> get none', async () => {
    const hop = await startRecordingServer({ rcpt: (a) => (a.startsWith('nouser') ? { code: 550, text: '5.1.1 No such user here' } : null) });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${hop.port}` });
    try {
      const msg = crlf(['Subject: partly refused', 'Message-ID: <m1@example.org>', '', 'hello']);
      const r = await transaction(filter.port, ['bob@example.com', 'nouser@example.com'], msg);
      assert.equal(r.data[0]?.code, 250, 'bob got it: one 250 for the transaction');
      const bounces = hop.messages.filter((m) => m.mailFrom.address === '');
      assert.equal(bounces.length, 1, hop.messages.map((m) => m.mailFrom.address).join());
      const b = bounces[0] as RecordedMessage;
      assert.deepEqual(b.rcptTo.map((x) => x.address), ['a@example.com']);
      const text = b.body.toString('utf8');
      assert.match(text, /^Content-Type: multipart\/report; report-type=delivery-status; boundary="/m);
      assert.match(text, /^Final-Recipient: rfc822; nouser@example\.com\r?$/m);
      assert.match(text, /^Action: failed\r?$/m);
      assert.match(text, /^Status: 5\.1\.1\r?$/m);
      assert.match(text, /^Diagnostic-Code: smtp; 550 5\.1\.1 No such user here\r?$/m);
      assert.match(text, /^Message-ID: <m1@example\.org>\r?$/m, 'the original headers are quoted');
      assert.doesNotMatch(text, /bob@example\.com/, 'only the refused recipient is reported');
      assert.equal(filter.server.counters.bounces, 1);
      // NOTIFY=NEVER: the sender asked for no bounce.
      const { client } = await SmtpTestClient.connect(filter.port);
      try {
        await client.command('EHLO client.test');
        assert.equal((await client.command('MAIL FROM:<a@example.com>')).code, 250);
        assert.equal((await client.command('RCPT TO:<bob@example.com>')).code, 250);
        assert.equal((await client.command('RCPT TO:<nouser2@example.com> NOTIFY=NEVER')).code, 250);
        assert.equal((await client.data(msg))[0]?.code, 250);
      } finally {
        await client.quit();
      }
      assert.equal(hop.messages.filter((m) => m.mailFrom.address === '').length, 1, 'no second bounce');
    } finally {
      await filter.stop();
      await hop.close();
    }
  });

  test('SMTP bounce: ENVID comes back as Original-Envelope-Id (xtext decoded); an SMTPUTF8 original gets message/global-headers (RFC 6533), a UTF-8 recipient the global delivery status, sent with SMTPUTF8 and BODY=8BITMIME', async () => {
    const hop = await startRecordingServer({ rcpt: (a) => (a.startsWith('nouser') ? { code: 550, text: '5.1.1 No such user here' } : null) });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${hop.port}` });
    const bounces = () => hop.messages.filter((m) => m.mailFrom.address === '');
    // smtp-server's args: false when the command had none.
    const argsOf = (m: RecordedMessage) => (m.mailFrom.args || {}) as Record<string, unknown>;
    try {
      const ascii = crlf(['Subject: partly refused', 'Message-ID: <m2@example.org>', '', 'hello']);
      const r1 = await transaction(filter.port, ['bob@example.com', 'nouser@example.com'], ascii, ' RET=HDRS ENVID=QQ314159+2Bx');
      assert.equal(r1.data[0]?.code, 250);
      const plain = bounces()[0] as RecordedMessage;
      const text1 = plain.body.toString('utf8');
      assert.match(text1, /^Content-Type: message\/delivery-status\r\n\r\nOriginal-Envelope-Id: QQ314159\+x\r\nReporting-MTA: dns; avgate\.test\r$/m);
      assert.match(text1, /^Content-Type: text\/rfc822-headers\r?$/m);
      assert.deepEqual(argsOf(plain), {}, 'ASCII through and through: no parameter needed');

      const utf8 = Buffer.from('From: Jürgen <a@example.com>\r\nSubject: Grüße\r\nMessage-ID: <m3@example.org>\r\n\r\nHallo, schöne Grüße\r\n', 'utf8');
      const r2 = await transaction(filter.port, ['bob@example.com', 'nouser@example.com'], utf8, ' BODY=8BITMIME SMTPUTF8');
      assert.equal(r2.data[0]?.code, 250);
      const intl = bounces()[1] as RecordedMessage;
      const text2 = intl.body.toString('utf8');
      assert.match(text2, /^Content-Type: message\/global-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\nFrom: Jürgen <a@example\.com>\r\nSubject: Grüße\r$/m, 'the UTF-8 headers as they came');
      assert.doesNotMatch(text2, /text\/rfc822-headers/);
      assert.doesNotMatch(text2, /Original-Envelope-Id/, 'no ENVID, no field');
      assert.deepEqual(argsOf(intl), { SMTPUTF8: true, BODY: '8BITMIME' });

      const r3 = await transaction(filter.port, ['bob@example.com', 'nouser-jürgen@example.com'], ascii, ' SMTPUTF8');
      assert.equal(r3.data[0]?.code, 250);
      const global = bounces()[2] as RecordedMessage;
      const text3 = global.body.toString('utf8');
      assert.match(text3, /^Content-Type: multipart\/report; report-type=global-delivery-status; /m);
      assert.match(text3, /^Content-Type: message\/global-delivery-status\r$/m);
      assert.match(text3, /^Final-Recipient: utf-8; nouser-jürgen@example\.com\r$/m);
      assert.deepEqual(argsOf(global), { SMTPUTF8: true, BODY: '8BITMIME' });
      assert.equal(filter.server.counters.bounces, 3);
    } finally {
      await filter.stop();
      await hop.close();
    }
  });

  test('SMTP: no bounce while a recipient is deferred (the DATA reply is its 4xx, the client sends to all again); the attempt answered 250 bounces', async () => {
    let full = true;
    const hop = await startRecordingServer({
      rcpt: (a) => (a.startsWith('nouser') ? { code: 550, text: '5.1.1 No such user here' } : a.startsWith('full') && full ? { code: 452, text: '4.2.2 Mailbox full' } : null),
    });
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${hop.port}` });
    const bounces = () => hop.messages.filter((m) => m.mailFrom.address === '');
    try {
      const msg = crlf(['Subject: partly deferred', '', 'hello']);
      const rcpts = ['bob@example.com', 'nouser@example.com', 'full@example.com'];
      for (let i = 0; i < 2; i++) {
        const r = await transaction(filter.port, rcpts, msg);
        assert.equal(r.data[0]?.code, 452, r.data[0]?.text);
      }
      assert.equal(bounces().length, 0, 'no bounce per deferred attempt');
      assert.equal(filter.server.counters.bounces, 0);
      full = false;
      const r = await transaction(filter.port, rcpts, msg);
      assert.equal(r.data[0]?.code, 250, r.data[0]?.text);
      assert.equal(bounces().length, 1, 'one bounce, from the attempt the client took as done');
      assert.match((bounces()[0] as RecordedMessage).body.toString('utf8'), /^Final-Recipient: rfc822; nouser@example\.com\r?$/m);
      assert.equal(filter.server.counters.bounces, 1);
    } finally {
      await filter.stop();
      await hop.close();
    }
  });

  test('SMTP: the DATA reply of recipients with different replies (any 4xx → 4xx, all 5xx → 5xx, else 250)', async () => {
    const table: Array<{ codes: number[]; want: number }> = [
      { codes: [250, 550], want: 250 },
      { codes: [550, 450, 250], want: 450 },
      { codes: [550, 554], want: 550 },
      { codes: [250, 250], want: 250 },
    ];
    for (const row of table) {
      const filter = await startTestFilter({
        nextHop: `smtp:127.0.0.1:${rec.port}`,
        handler: async (msg) => msg.rcptTo.map((_, i) => reply(row.codes[i] as number, null, `reply ${i}`)),
      });
      try {
        const r = await transaction(
          filter.port,
          row.codes.map((_, i) => `r${i}@example.com`),
          small,
        );
        assert.equal(r.data[0]?.code, row.want, JSON.stringify(row));
      } finally {
        await filter.stop();
      }
    }
  });

  test('reload, then stop: a session with an open transaction (MAIL and RCPT given, no DATA yet) finishes it and then gets 421; the 421 of a reload says restarting', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'avgate-smtp-reload-'));
    const config = smtpSchema.parse({ listen: '127.0.0.1:0', hostname: 'avgate.test', 'next-hop': { target: `smtp:127.0.0.1:${rec.port}` } });
    const genA = new Listeners();
    const old = new SmtpFilterServer(config, { stateDir, log: silentLogger(), listeners: genA });
    const { port } = await old.listen();
    const genB = new Listeners(genA);
    const next = new SmtpFilterServer(config, { stateDir, log: silentLogger(), listeners: genB });
    const clients: SmtpTestClient[] = [];
    /** A session that has said EHLO, and with `rcpt` MAIL and RCPT too. */
    const session = async (rcpt: string | null): Promise<SmtpTestClient> => {
      const { client } = await SmtpTestClient.connect(port);
      clients.push(client);
      assert.equal((await client.command('EHLO client.test')).code, 250);
      if (rcpt) {
        assert.equal((await client.command('MAIL FROM:<a@example.com>')).code, 250);
        assert.equal((await client.command(`RCPT TO:<${rcpt}>`)).code, 250);
      }
      return client;
    };
    /** DATA on an open transaction, then the 421 once the session is idle again. */
    const finish = async (client: SmtpTestClient, id: string): Promise<{ data: TestReply; after: TestReply | null }> => {
      const [data] = await client.data(crlf([`Subject: ${id}`, '', 'hello']));
      return { data: data as TestReply, after: await client.reply().catch(() => null) };
    };
    try {
      const idle = await session(null);
      const open = await session('reload@example.com');
      assert.equal((await next.listen()).port, port);
      await genB.takeOver();
      const draining = old.close(30_000);
      const idleReply = await idle.reply();
      assert.equal(idleReply.code, 421);
      assert.equal(idleReply.text, '4.3.2 Service restarting, try again');
      const r = await finish(open, 'finished at reload');
      assert.equal(r.data.code, 250, `the open transaction is not cut: ${r.data.code} ${r.data.text}`);
      assert.equal(r.after && `${r.after.code} ${r.after.text}`, '421 4.3.2 Service restarting, try again', 'then 421, once idle');
      await draining;
      assert.ok(rec.messages.some((m) => m.body.includes('finished at reload')));

      // A stop: the same, but the service is going away. RSET ends a transaction too; one left
      // open gets its 421 at the deadline.
      const open2 = await session('stop@example.com');
      const reset = await session('rset@example.com');
      const left = await session('left@example.com');
      const stopping = next.close(3000);
      const r2 = await finish(open2, 'finished at stop');
      assert.equal(r2.data.code, 250, `${r2.data.code} ${r2.data.text}`);
      assert.equal(r2.after && `${r2.after.code} ${r2.after.text}`, '421 4.3.2 Service shutting down', 'then 421, once idle');
      assert.equal((await reset.command('RSET')).code, 250);
      assert.equal((await reset.reply()).code, 421);
      const atDeadline = await left.reply(10_000);
      assert.equal(`${atDeadline.code} ${atDeadline.text}`, '421 4.3.2 Service shutting down');
      await stopping;
      assert.ok(rec.messages.some((m) => m.body.includes('finished at stop')));
    } finally {
      for (const c of clients) c.destroy();
      await Promise.all([old.close(0), next.close(0)]);
      await rm(stateDir, { recursive: true, force: true });
    }
  });

  test('graceful stop: a message being handled is answered; idle sessions get 421', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let filter: TestFilter | null = await startTestFilter({
      nextHop: `smtp:127.0.0.1:${rec.port}`,
      handler: async (msg) => {
        await gate;
        return msg.rcptTo.map(() => reply(250, '2.0.0', 'handled'));
      },
    });
    try {
      const idle = await SmtpTestClient.connect(filter.port);
      await idle.client.command('EHLO idle.test');
      const busy = transaction(filter.port, ['b@example.com'], small);
      while (filter.server.inFlight === 0) await new Promise((r) => setTimeout(r, 10));
      const stopping = filter.stop();
      const idleReply = await idle.client.reply();
      assert.equal(idleReply.code, 421);
      setTimeout(release, 100);
      const r = await busy;
      assert.equal(r.data[0]?.code, 250);
      assert.equal(r.data[0]?.text, '2.0.0 handled');
      await stopping;
      filter = null;
    } finally {
      release();
      await filter?.stop();
    }
  });
});
