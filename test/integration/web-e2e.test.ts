import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { eicarAttachment, mailWith } from '../helpers/mail.js';
import { SmtpTestClient, startRecordingServer, type RecordingServer } from '../helpers/smtp.js';
import { waitFor } from '../helpers/wait.js';

/**
 * The console end to end in a real headless Chromium: log in, see the chart with the verdicts just
 * produced (an EICAR through the scanning API and an infected mail through the SMTP filter), open
 * the quarantined mail, release it to a recording next hop, log out. Screenshots go to test-artifacts/.
 */
const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = new URL('../../test-artifacts/', import.meta.url).pathname;
const PASSWORD = 'e2e-password-1';

describe('web console in Chromium', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} missing (scripts/system-deps.sh installs it)` }, () => {
  let dir: string;
  let clamd: TestClamd;
  let sink: RecordingServer;
  let avgate: Serving;
  let browser: Browser;
  let base: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-e2e-'));
    await mkdir(ARTIFACTS, { recursive: true });
    clamd = await startTestClamd();
    sink = await startRecordingServer();
    avgate = await startAvgatePeer({
      clamd,
      stateDir: join(dir, 'state'),
      smtpYaml: [`next-hop:`, `  target: smtp:127.0.0.1:${sink.port}`, 'hostname: avgate.test'].join('\n'),
    });
    assert.ok(avgate.web && avgate.consolePort, 'serve started the console');
    base = `http://127.0.0.1:${avgate.consolePort}`;
    await avgate.web.passwords.setPassword('admin', PASSWORD);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  });

  after(async () => {
    await browser?.close();
    await avgate?.stop();
    await sink?.close();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('login, chart, quarantined mail, release, logout', async () => {
    const web = avgate.web;
    assert.ok(web);
    // Events first: an EICAR through the API, an infected mail through the filter.
    const token = await web.tokens.add('e2e');
    const scan = await fetch(`${base}/api/v1/scan?name=eicar.com`, { method: 'POST', headers: { Authorization: `Bearer ${token}` }, body: eicarBytes() });
    assert.equal(scan.status, 200);
    assert.equal(((await scan.json()) as { status: string }).status, 'found');
    const { client } = await SmtpTestClient.connect(avgate.smtpPort as number);
    assert.equal((await client.command('EHLO client.test')).code, 250);
    assert.equal((await client.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await client.command('RCPT TO:<bob@example.net>')).code, 250);
    const [accepted] = await client.data(mailWith('e2e1', [eicarAttachment()], []));
    assert.equal(accepted?.code, 250);
    await client.quit();
    await waitFor('the mail in quarantine', async () => ((await avgate.quarantine.count()) > 0 ? true : null));
    const delivered = sink.messages.length; // the cleaned copy went to the next hop

    const page = await browser.newPage();
    try {
      await page.goto(`${base}/`);
      assert.match(page.url(), /\/login$/);
      await page.fill('input[name=user]', 'admin');
      await page.fill('input[name=password]', PASSWORD);
      await page.screenshot({ path: join(ARTIFACTS, 'console-login.png') });
      await page.click('button[type=submit]');
      await page.waitForURL(`${base}/`);

      // The chart: one rect per hour of the last 24, and the found verdicts in the current hour.
      const bars = await waitFor('the found verdicts in the chart', async () => {
        await page.reload();
        const b = await page.$$eval('svg#activity rect.bucket', (rects) => rects.map((r) => ({ t: Number(r.getAttribute('data-t')), found: Number(r.getAttribute('data-found')) })));
        return b.reduce((n, x) => n + x.found, 0) >= 2 ? b : null;
      }, 10_000);
      assert.equal(bars.length, 24);
      const last = bars.at(-1) as { t: number; found: number };
      assert.ok(Date.now() - last.t < 3_600_000, 'the last bucket is the current hour');
      assert.ok(last.found >= 2);
      assert.match((await page.textContent('#engines')) ?? '', /clamav/);
      // Recent detections: the mail's attachment (queue id/part and file name) and the API's upload, newest first.
      const recent = await page.$$eval('#recent-detections tbody tr', (rows) =>
        rows.map((r) => Array.from(r.querySelectorAll('td') as ArrayLike<{ textContent: string | null }>, (c) => c.textContent ?? '')),
      );
      assert.equal(recent.length, 2, JSON.stringify(recent));
      assert.deepEqual(recent.map((r) => r[2]), ['smtp', 'api']);
      assert.match(recent[0]?.[5] ?? '', /^\S+\/\S+ eicar\.com$/);
      assert.equal(recent[1]?.[5], 'eicar.com');
      assert.match(recent[0]?.[3] ?? '', /Avgate\.Test\.EICAR/);
      await page.screenshot({ path: join(ARTIFACTS, 'console-overview.png'), fullPage: true });

      // The quarantined mail.
      await page.click('nav a[href="/quarantine"]');
      await page.click('#items a.item');
      assert.match(page.url(), /\/quarantine\/[0-9a-z]{20,}$/);
      assert.match((await page.textContent('#headers')) ?? '', /Subject: test e2e1/);
      assert.match((await page.textContent('#meta')) ?? '', /Avgate\.Test\.EICAR/);
      await page.screenshot({ path: join(ARTIFACTS, 'console-item.png'), fullPage: true });

      // Release to another address: the original goes through the next hop.
      await page.fill('#release input[name=to]', 'admin@example.org');
      await page.click('#release button[type=submit]');
      await page.waitForSelector('#notice');
      assert.match((await page.textContent('#notice')) ?? '', /released to admin@example\.org/);
      assert.equal(sink.messages.length, delivered + 1);
      const released = sink.messages.at(-1);
      assert.deepEqual(released?.rcptTo.map((a) => a.address), ['admin@example.org']);
      assert.ok(released?.body.includes(eicarBytes().subarray(0, 10).toString('base64').slice(0, 8)) || released?.body.includes('e2e1'));
      assert.match((await page.textContent('#audit')) ?? '', /release\s*web:admin/);
      await page.screenshot({ path: join(ARTIFACTS, 'console-released.png'), fullPage: true });

      // Log out (a POST with the CSRF token), and the pages are closed again.
      await page.click('#logout');
      await page.waitForURL(`${base}/login`);
      await page.goto(`${base}/quarantine`);
      assert.match(page.url(), /\/login$/);
    } finally {
      await page.close();
    }
  });
});
