import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freeLoopbackPort } from '../../src/core/net.js';
import { postfixAvailable, type SinkMessage } from '../../tools/peers/postfix.js';
import { accepts, stopChild, waitExit } from '../../tools/peers/process.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { eicarAttachment, mailWith, startMailAvgate } from '../helpers/mail.js';
import { waitFor, within } from '../helpers/wait.js';
import { startTestPostfix, type TestPostfix } from '../helpers/postfix.js';
import { asSinkContent, SmtpTestClient, swaks } from '../helpers/smtp.js';

const skip = postfixAvailable() ? false : 'needs Postfix and root';
const root = new URL('../..', import.meta.url).pathname;


const byId = (ms: SinkMessage[], id: string) => ms.filter((m) => m.content.includes(Buffer.from(`<${id}@example.com>`)));

describe('real Postfix with avgate\'s mail filter as content_filter, smtp-sink as final destination', { skip }, () => {
  let clamd: TestClamd;
  let pf: TestPostfix;
  let filterPort: number;
  let av: Awaited<ReturnType<typeof startMailAvgate>> | null = null;
  const submit = async (id: string, msg: Buffer) => {
    const file = join(pf.dir, `${id}.eml`);
    await writeFile(file, msg);
    const r = await swaks(['--server', `127.0.0.1:${pf.postfix.port}`, '--ehlo', 'client.test', '--from', 'a@example.com', '--to', 'b@example.net', '--data', `@${file}`]);
    assert.equal(r.code, 0, r.stdout);
  };
  before(async () => {
    clamd = await within('starting clamd', 150_000, startTestClamd());
    filterPort = await freeLoopbackPort();
    pf = await within('starting Postfix and smtp-sink', 90_000, startTestPostfix({ contentFilterPort: filterPort, main: { message_size_limit: '200000000' } }));
    av = await within('starting avgate', 60_000, startMailAvgate({
      clamd,
      stateDir: join(pf.dir, 'avgate'),
      nextHop: `smtp:127.0.0.1:${pf.postfix.reinjectPort}`,
      smtpYaml: `listen: 127.0.0.1:${filterPort}`,
      mailYaml: ['notify-from: postmaster@gw.test', 'default-group:', '  admin: [admin@gw.test]'].join('\n'),
    }));
  });
  after(async () => {
    await within('stopping avgate', 30_000, av?.stop() ?? Promise.resolve());
    await within('stopping Postfix', 30_000, pf?.stop() ?? Promise.resolve());
    await within('stopping clamd', 30_000, clamd?.stop() ?? Promise.resolve());
  });

  test('clean mail arrives once, byte-identical apart from the added headers', async () => {
    const msg = mailWith('pf-clean', [{ name: 'data.bin', type: 'application/octet-stream', data: randomBytes(50_000) }]);
    await submit('pf-clean', msg);
    const [m] = await waitFor('delivery', async () => {
      const got = byId(await pf.sink.messages(), 'pf-clean');
      return got.length > 0 ? got : null;
    });
    assert.ok(m);
    const text = m.content.toString('latin1');
    const original = asSinkContent(Buffer.concat([msg, Buffer.from('\r\n')])); // swaks adds an empty line
    assert.ok(m.content.subarray(m.content.length - original.length).equals(original), 'the original bytes end the delivered message');
    const added = text.slice(0, text.length - original.length).replace(/^Received:.*\n([ \t].*\n)*/gm, '');
    assert.equal(added, 'X-Virus-Scanned: avgate\nX-AV-Status: clean\n');
  });

  test('EICAR attachment: cleaned message delivered, notifications to sender, recipient and admin arrive with the macros filled', async () => {
    await submit('pf-eicar', mailWith('pf-eicar', [eicarAttachment()]));
    const all = await waitFor('the message and three notices', async () => {
      const ms = await pf.sink.messages();
      const notices = ms.filter((m) => /<>/.test(m.mailArgs) && m.content.includes(Buffer.from('pf-eicar')));
      return byId(ms, 'pf-eicar').length >= 1 && notices.length >= 3 ? ms : null;
    });
    const main = byId(all, 'pf-eicar').find((m) => !/<>/.test(m.mailArgs));
    assert.ok(main);
    assert.match(main.content.toString(), /^Subject: \[VIRUS REMOVED\] test pf-eicar$/m);
    assert.match(main.content.toString(), /^X-AV-Status: infected \(Avgate\.Test\.EICAR/m);
    assert.doesNotMatch(main.content.toString(), /filename="eicar\.com"\nContent-Transfer-Encoding: base64/);
    const notices = all.filter((m) => /<>/.test(m.mailArgs) && m.content.includes(Buffer.from('pf-eicar')));
    const to = notices.flatMap((n) => n.rcptArgs.map((a) => /<([^>]*)>/.exec(a)?.[1] ?? '')).sort();
    assert.deepEqual(to, ['a@example.com', 'admin@gw.test', 'b@example.net']);
    for (const n of notices) assert.match(n.content.toString(), /Avgate\.Test\.EICAR/);
  });

  test('clamd stopped → 4xx, Postfix keeps the mail; delivered once after clamd is back and the queue is flushed', async () => {
    await clamd.clamd.stop();
    await submit('pf-down', mailWith('pf-down', []));
    const entry = await waitFor('the deferral', async () => (await pf.postfix.queue()).find((x) => x.recipients.some((r) => r.delay_reason)) ?? null);
    assert.match(entry.recipients[0]?.delay_reason ?? '', /451/);
    assert.equal(byId(await pf.sink.messages(), 'pf-down').length, 0, 'nothing passed unscanned');
    await clamd.clamd.start();
    await pf.postfix.flush();
    await waitFor('delivery after the flush', async () => (byId(await pf.sink.messages(), 'pf-down').length > 0 ? true : null));
    await waitFor('an empty queue', async () => ((await pf.postfix.queue()).length === 0 ? true : null));
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(byId(await pf.sink.messages(), 'pf-down').length, 1, 'exactly once');
  });

  test('avgate killed (kill -9) in the middle of DATA: Postfix retries, the message is delivered exactly once after restart', async () => {
    await av?.stop();
    av = null;
    const stateDir = join(pf.dir, 'avgate-child');
    const conf = join(pf.dir, 'avgate-child.yaml');
    await writeFile(
      conf,
      [
        `state-dir: ${stateDir}`,
        'log: {level: warn}',
        'clamd: {managed: false}',
        'engines:',
        '  clamav:',
        '    type: clamd-net',
        `    options: {address: "unix:${clamd.socketPath}", database-dir: "${clamd.dbDir}"}`,
        // Only the mail filter: the other front ends' default ports may be taken by the `npm start` test running beside this one.
        'icap: {enabled: false}',
        'console: {enabled: false}',
        'http-proxy: {enabled: false}',
        'ftp-proxy: {enabled: false}',
        'pop3-proxy: {enabled: false}',
        'imap-proxy: {enabled: false}',
        'smtp:',
        `  listen: 127.0.0.1:${filterPort}`,
        '  spool-memory: 64KiB',
        `  next-hop: {target: "smtp:127.0.0.1:${pf.postfix.reinjectPort}"}`,
        '',
      ].join('\n'),
    );
    const script = `const m = await import(${JSON.stringify(join(root, 'src/cli/main.ts'))}); process.exitCode = await m.main(['--config', ${JSON.stringify(conf)}, 'serve']);`;
    const startChild = (): ChildProcess =>
      spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
    let child = startChild();
    try {
      const spoolDir = join(stateDir, 'spool');
      // Big enough that DATA takes a while through Postfix.
      const big = mailWith('pf-kill', [{ name: 'big.bin', type: 'application/octet-stream', data: randomBytes(60 * 1024 * 1024) }]);
      await waitFor('avgate listening', async () => (accepts(filterPort).then((ok) => (ok ? true : null))));
      // swaks holds a big message in memory and gives up on it; a plain client streams it.
      const { client } = await SmtpTestClient.connect(pf.postfix.port);
      await client.command('EHLO client.test');
      await client.command('MAIL FROM:<a@example.com>');
      await client.command('RCPT TO:<b@example.net>');
      const accepted = await client.data(big);
      assert.equal(accepted[0]?.code, 250, accepted[0]?.text);
      await client.quit();
      // Kill while the spool file is still short of the whole message: in the middle of DATA.
      const until = Date.now() + 60_000;
      let killedAt = -1;
      while (killedAt < 0 && Date.now() < until) {
        for (const f of await readdir(spoolDir).catch(() => [] as string[])) {
          const size = f.startsWith('spool-') ? (statSync(join(spoolDir, f), { throwIfNoEntry: false })?.size ?? -1) : -1;
          assert.equal(child.exitCode ?? child.signalCode, null, 'avgate exited by itself during DATA');
          if (size >= 0 && size < big.length / 2) {
            child.kill('SIGKILL');
            killedAt = size;
            break;
          }
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      assert.ok(killedAt >= 0, 'caught avgate in the middle of DATA');
      await waitExit(child);
      const entry = await waitFor('the deferral', async () => (await pf.postfix.queue()).find((x) => x.recipients.some((r) => r.delay_reason)) ?? null, 60_000);
      assert.ok(entry);
      assert.equal(byId(await pf.sink.messages(), 'pf-kill').length, 0);
      child = startChild();
      await waitFor('avgate listening again', async () => (accepts(filterPort).then((ok) => (ok ? true : null))));
      await pf.postfix.flush();
      await waitFor('delivery after restart', async () => (byId(await pf.sink.messages(), 'pf-kill').length > 0 ? true : null), 120_000);
      await waitFor('an empty queue', async () => ((await pf.postfix.queue()).length === 0 ? true : null), 60_000);
      assert.equal(byId(await pf.sink.messages(), 'pf-kill').length, 1, 'exactly once');
    } finally {
      await stopChild(child);
    }
  });
});
