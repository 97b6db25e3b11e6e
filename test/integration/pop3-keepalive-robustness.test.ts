import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Pop3ProxyServer } from '../../src/protocols/pop3/index.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { ScanService } from '../../src/scan/types.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestDovecot } from '../helpers/dovecot.js';
import { listenPop3Proxy, proxyScanner } from '../helpers/mailproxy.js';
import { Pop3TestClient } from '../helpers/pop3.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';

/**
 * The POP3 keep-alive (early header lines during a held-up scan) with top headers whose end the
 * MIME parser finds at a line that is not a header field (no blank line before the body).
 */
describe('POP3 keep-alive: only real header fields go out before the verdict', () => {
  let clamd: TestClamd;
  let dovecot: Dovecot;
  let dir: string;
  let scanner: Scanner;
  const proxies: Pop3ProxyServer[] = [];

  before(async () => {
    clamd = await startTestClamd();
    dovecot = await startTestDovecot({ users: [{ user: 'kat', password: 'kat-pw' }] });
    dir = await mkdtemp(join(tmpdir(), 'avgate-pop3ka-'));
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
    // Message 1: two fields, then the EICAR line straight away. It has no colon, so the parser
    // (and mail clients) take it as the first body line, and the body is infected.
    await dovecot.deliver('kat', Buffer.concat([Buffer.from('From: sender@example.org\r\nSubject: ka no blank line\r\n', 'latin1'), eicarBytes(), Buffer.from('\r\n', 'latin1')]));
    // Message 2: a folded field is still header; a line holding a lone CR before its CRLF is not.
    await dovecot.deliver(
      'kat',
      Buffer.concat([Buffer.from('From: sender@example.org\r\nSubject: ka folded\r\n\tsecond line\r\n\r\r\n', 'latin1'), eicarBytes(), Buffer.from('\r\n', 'latin1')]),
    );
  });
  after(async () => {
    for (const p of proxies) await p.close(100);
    await scanner?.close();
    await dovecot?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** A scanner whose first scan waits for `release` (the keep-alive runs meanwhile). */
  function heldScanner(): { service: ScanService; release: () => void; held: () => number } {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let held = 0;
    const service: ScanService = {
      wantsHash: false,
      engineLikely: true,
      concurrency: 1,
      prefersFiles: () => false,
      close: async () => undefined,
      scan: async (req) => {
        held++;
        await gate;
        return scanner.scan(req);
      },
    };
    return { service, release, held: () => held };
  }

  const eicarText = () => eicarBytes().toString('latin1');

  for (const { n, fields } of [
    { n: 1, fields: ['From: sender@example.org', 'Subject: ka no blank line'] },
    { n: 2, fields: ['From: sender@example.org', 'Subject: ka folded', '\tsecond line'] },
  ]) {
    test(`message ${n}: the early lines stop at the body; the client gets the rewritten message whole`, async () => {
      const slow = heldScanner();
      const port = await listenPop3Proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, 'keep-alive': { after: '20ms', interval: '20ms', 'max-lines': 10 } }, { scanner: slow.service, spoolDir: join(dir, 'spool') }, proxies);
      const c = await Pop3TestClient.connect(port);
      await c.login('kat', 'kat-pw');
      c.send(`RETR ${n}\r\n`);
      assert.equal(await c.line(), '+OK message follows (scanned by avgate)');
      const early: string[] = [];
      for (const _ of fields) early.push(await c.line());
      assert.deepEqual(early, fields);
      // Ten intervals more: nothing else may come while the scan is held (the next line is body).
      const more = await c.line(400).then(
        (l) => l,
        () => null,
      );
      assert.equal(slow.held(), 1);
      assert.equal(more, null, 'a body line was sent before the verdict');
      slow.release();
      const rest = await c.body();
      const whole = Buffer.concat([Buffer.from(`${early.join('\r\n')}\r\n`, 'latin1'), rest]).toString('latin1');
      assert.ok(!whole.includes(eicarText()), 'EICAR reached the client');
      assert.match(whole, /replaced by avgate/);
      assert.match(whole, /^From: sender@example\.org\r\nSubject: ka /);
      // The session is in step.
      assert.match(await c.command('STAT'), /^\+OK 2 \d+/);
      await c.quit();
    });
  }
});
