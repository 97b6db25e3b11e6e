import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freeLoopbackPort } from '../../src/core/net.js';
import { filterMainCf, filterMasterCf, postfixAvailable, type SinkMessage } from '../../tools/peers/postfix.js';
import { waitFor } from '../helpers/wait.js';
import { startTestPostfix, type TestPostfix } from '../helpers/postfix.js';
import { asSinkContent, crlf, startTestFilter, swaks, type TestFilter } from '../helpers/smtp.js';

const skip = postfixAvailable() ? false : 'needs Postfix and root';

/** The message with Postfix's own Received headers (at the top) taken out. */
function withoutReceived(content: Buffer): { received: string[]; rest: Buffer } {
  const text = content.toString('latin1');
  const received: string[] = [];
  let pos = 0;
  while (text.startsWith('Received:', pos)) {
    let end = text.indexOf('\n', pos);
    while (text[end + 1] === ' ' || text[end + 1] === '\t') end = text.indexOf('\n', end + 1);
    received.push(text.slice(pos, end));
    pos = end + 1;
  }
  return { received, rest: Buffer.from(text.slice(pos), 'latin1') };
}

function message(id: string): Buffer {
  return crlf([
    'From: Sender <a@example.com>',
    'To: Rcpt <b@example.net>',
    `Subject: through the filter ${id}`,
    'Date: Sun, 22 Nov 2026 10:00:00 +0000',
    `Message-ID: <${id}@example.com>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    '.leading dot',
    'Grüße — 8-bit body',
    ...Array.from({ length: 300 }, (_, i) => `body line ${i}`),
  ]);
}


describe('real Postfix with avgate as after-queue content_filter', { skip }, () => {
  let pf: TestPostfix;
  let filterPort: number;
  let filter: TestFilter | null = null;
  const startFilter = async () => {
    filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${pf.postfix.reinjectPort}`, smtp: { listen: `127.0.0.1:${filterPort}` } });
  };
  before(async () => {
    filterPort = await freeLoopbackPort();
    pf = await startTestPostfix({ contentFilterPort: filterPort });
  });
  after(async () => {
    await filter?.stop();
    await pf?.stop();
  });

  const byId = (ms: SinkMessage[], id: string) => ms.filter((m) => m.content.includes(Buffer.from(`<${id}@example.com>`)));

  test('swaks → Postfix → avgate → re-injection → smtp-sink: once, byte-identical apart from Received', async () => {
    await startFilter();
    const id = 'pass-1';
    const file = join(pf.dir, `${id}.eml`);
    const msg = message(id);
    await writeFile(file, msg);
    const r = await swaks(['--server', `127.0.0.1:${pf.postfix.port}`, '--ehlo', 'client.test', '--from', 'a@example.com', '--to', 'b@example.net', '--data', `@${file}`]);
    assert.equal(r.code, 0, r.stdout);
    const [m] = await waitFor('delivery', async () => {
      const got = byId(await pf.sink.messages(), id);
      return got.length > 0 ? got : null;
    });
    assert.ok(m);
    const { received, rest } = withoutReceived(m.content);
    assert.equal(received.length, 2, `Postfix's two smtpd each add one: ${received.join(' | ')}`);
    // Newest first: the re-injection smtpd got it from avgate, the front smtpd from swaks.
    assert.match(received[0] ?? '', /^Received: from avgate\.test \(localhost \[127\.0\.0\.1\]\)/);
    assert.match(received[1] ?? '', /^Received: from client\.test \(localhost \[127\.0\.0\.1\]\)/);
    // XFORWARD went through avgate: the re-injection logs the original queue id and client.
    const firstId = /with ESMTP id ([0-9A-F]+)/.exec(received[1] ?? '')?.[1];
    assert.ok(firstId);
    assert.match(pf.postfix.logTail(20_000), new RegExp(`client=localhost\\[127\\.0\\.0\\.1\\], orig_queue_id=${firstId}, orig_client=localhost\\[127\\.0\\.0\\.1\\]`));
    // swaks adds an empty line after the file's last CRLF.
    assert.ok(rest.equals(asSinkContent(Buffer.concat([msg, Buffer.from('\r\n')]))), 'the message is unchanged');
    assert.match(pf.postfix.logTail(), new RegExp(`relay=127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${filterPort}.*status=sent \\(250 2\\.0\\.0 Ok`));
    await new Promise((res) => setTimeout(res, 1500));
    assert.equal(byId(await pf.sink.messages(), id).length, 1, 'exactly once');
    assert.deepEqual(await pf.postfix.queue(), []);
  });

  test('avgate stopped: Postfix keeps the mail queued, then delivers it exactly once after avgate is back and the queue is flushed', async () => {
    await filter?.stop();
    filter = null;
    const id = 'queued-1';
    const file = join(pf.dir, `${id}.eml`);
    await writeFile(file, message(id));
    const r = await swaks(['--server', `127.0.0.1:${pf.postfix.port}`, '--ehlo', 'client.test', '--from', 'a@example.com', '--to', 'b@example.net', '--data', `@${file}`]);
    assert.equal(r.code, 0, r.stdout);
    const entry = await waitFor('the deferral', async () => {
      const q = await pf.postfix.queue();
      const e = q.find((x) => x.recipients.some((rc) => rc.delay_reason));
      return e ?? null;
    });
    assert.match(entry.recipients[0]?.delay_reason ?? '', /Connection refused/);
    assert.equal(byId(await pf.sink.messages(), id).length, 0, 'not delivered while avgate is down');
    await startFilter();
    await pf.postfix.flush();
    await waitFor('delivery after the flush', async () => ((byId(await pf.sink.messages(), id).length > 0 ? true : null)));
    await waitFor('an empty queue', async () => ((await pf.postfix.queue()).length === 0 ? true : null));
    // Further queue runs must not deliver it again.
    await new Promise((res) => setTimeout(res, 2500));
    await pf.postfix.flush();
    await new Promise((res) => setTimeout(res, 500));
    assert.equal(byId(await pf.sink.messages(), id).length, 1, 'exactly once');
  });

  test('a next hop command: cmd:/usr/sbin/sendmail -bs (local submission, not filtered again)', async () => {
    const viaCmd = await startTestFilter({ nextHop: `cmd:/usr/sbin/sendmail -C ${pf.postfix.configDir} -bs` });
    try {
      const id = 'cmd-1';
      const file = join(pf.dir, `${id}.eml`);
      await writeFile(file, message(id));
      const r = await swaks(['--server', `127.0.0.1:${viaCmd.port}`, '--from', 'a@example.com', '--to', 'b@example.net', '--data', `@${file}`]);
      assert.equal(r.code, 0, r.stdout);
      await waitFor('delivery through sendmail', async () => ((byId(await pf.sink.messages(), id).length > 0 ? true : null)));
      assert.equal(byId(await pf.sink.messages(), id).length, 1);
    } finally {
      await viaCmd.stop();
    }
  });
});

test('docs/mail.md shows exactly the master.cf and main.cf lines the harness uses', () => {
  const doc = readFileSync(new URL('../../docs/mail.md', import.meta.url), 'utf8');
  assert.ok(doc.includes(filterMasterCf({ reinjectListen: '127.0.0.1:10026' })), 'master.cf lines');
  assert.ok(doc.includes(filterMainCf({ filterAddress: '[127.0.0.1]:10025' })), 'main.cf lines');
});
