import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { imapProxySchema, type ImapProxyConfig } from '../../src/config/imap-schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { ImapProxyServer } from '../../src/protocols/imap/server.js';
import { commandName, commandTag } from '../../src/protocols/imap/wire.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestDovecot } from '../helpers/dovecot.js';
import { fetchLiterals, ImapTestClient } from '../helpers/imap-client.js';
import { mailWith } from '../helpers/mail.js';
import { proxyScanner } from '../helpers/mailproxy.js';
import { selfSignedCert } from '../helpers/tls.js';

/**
 * Tags the server takes must be tags to the proxy too: a command whose tag the proxy does not
 * recognise is relayed as "not a command", past tls.required, the command-acl and STARTTLS.
 * Dovecot accepts `}` in a tag (an atom character in RFC 3501).
 */
describe('imap proxy: every tag the server accepts is examined', () => {
  let dir: string;
  let clamd: TestClamd;
  let dovecot: Dovecot;
  let scanner: Scanner;
  const proxies: ImapProxyServer[] = [];

  async function startProxy(over: Record<string, unknown>): Promise<number> {
    const config: ImapProxyConfig = imapProxySchema.parse({ listen: '127.0.0.1:0', upstream: `127.0.0.1:${dovecot.imapPort}`, ...over });
    const proxy = new ImapProxyServer(config, { stateDir: dir, scannerFor: () => ({ scanner }), log: silentLogger(), quarantine: null });
    proxies.push(proxy);
    return (await proxy.listen()).port;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-imaptag-'));
    clamd = await startTestClamd();
    dovecot = await startTestDovecot();
    await dovecot.deliver(dovecot.user, mailWith('tag-eicar', [{ name: 'e.com', type: 'application/octet-stream', data: eicarBytes() }]));
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
  });
  after(async () => {
    for (const p of proxies) await p.close(100);
    await scanner?.close();
    await dovecot?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('wire: a tag with } is a tag', () => {
    assert.equal(commandTag(Buffer.from('a} LOGIN u p')), 'a}');
    assert.deepEqual(commandName(Buffer.from('a} login u p')), { tag: 'a}', name: 'LOGIN', rest: ' u p' });
    // What is not an atom character still is no tag.
    for (const bad of ['a{ NOOP', 'a( NOOP', 'a" NOOP', 'a+ NOOP', 'a\\ NOOP', 'a* NOOP']) assert.equal(commandTag(Buffer.from(bad)), null, bad);
  });

  test('tls.required: LOGIN under a } tag is refused in clear, not relayed to Dovecot', async () => {
    const { cert, key } = await selfSignedCert(dir);
    const port = await startProxy({ tls: { cert, key, required: true } });
    const { client: c } = await ImapTestClient.connect(port);
    try {
      c.send(`a} LOGIN ${dovecot.user} ${dovecot.password}\r\n`);
      const r = await c.until('a}');
      assert.match(r.tagged, /^a\} NO \[PRIVACYREQUIRED\]/);
      // Not logged in: SELECT fails.
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ (?:NO|BAD) /);
    } finally {
      c.close();
    }
  });

  test('wire: DEL (0x7f) in a tag is a tag character, as Dovecot takes it', () => {
    assert.equal(commandTag(Buffer.from('\x7f LOGIN u p', 'latin1')), '\x7f');
    assert.deepEqual(commandName(Buffer.from('a\x7f EXPUNGE', 'latin1')), { tag: 'a\x7f', name: 'EXPUNGE', rest: '' });
  });

  test('tls.required: LOGIN under a DEL tag is refused in clear; a line the proxy cannot read gets its own BAD and never reaches Dovecot', async () => {
    const { cert, key } = await selfSignedCert(dir, 'imaptag-del');
    const port = await startProxy({ tls: { cert, key, required: true } });
    const { client: c } = await ImapTestClient.connect(port);
    try {
      c.send(`\x7f LOGIN ${dovecot.user} ${dovecot.password}\r\n`);
      assert.match((await c.until('\x7f')).tagged, /^\x7f NO \[PRIVACYREQUIRED\]/);
      // Lines that are no command to the proxy: answered by the proxy itself (Dovecot would say
      // "Error in IMAP command received by server"), nothing of them relayed.
      for (const line of [`a\x01 LOGIN ${dovecot.user} ${dovecot.password}`, `a LOGIN\t${dovecot.user} ${dovecot.password}`, `(x) LOGIN ${dovecot.user} ${dovecot.password}`]) {
        c.send(`${line}\r\n`);
        const r = await c.next();
        assert.match(r.text, /^\S+ BAD Command not understood \(use STARTTLS first\)$/, JSON.stringify(line));
      }
      // A literal behind such a line is not waited for (the client would wait for "+").
      c.send('a\x01 X {5}\r\n');
      assert.match((await c.next()).text, /^\S+ BAD Command not understood/);
      assert.match((await c.command('NOOP')).tagged, /^t\d+ OK /);
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ (?:NO|BAD) /, 'not logged in');
    } finally {
      c.close();
    }
  });

  test('command-acl: a denied command under a DEL tag is refused', async () => {
    const port = await startProxy({ 'command-acl': [{ name: 'no-expunge', match: { commands: ['EXPUNGE'] }, action: 'deny' }] });
    const { client: c } = await ImapTestClient.connect(port);
    try {
      await c.login(dovecot.user, dovecot.password);
      await c.command('SELECT INBOX');
      c.send('\x7f EXPUNGE\r\n');
      assert.match((await c.until('\x7f')).tagged, /^\x7f NO \[NOPERM\]/);
    } finally {
      c.close();
    }
  });

  test('command-acl: a denied command under a } tag is refused; FETCH under a } tag is scanned', async () => {
    const port = await startProxy({ 'command-acl': [{ name: 'no-expunge', match: { commands: ['EXPUNGE'] }, action: 'deny' }] });
    const { client: c } = await ImapTestClient.connect(port);
    try {
      await c.login(dovecot.user, dovecot.password);
      await c.command('SELECT INBOX');
      c.send('x} EXPUNGE\r\n');
      assert.match((await c.until('x}')).tagged, /^x\} NO \[NOPERM\]/);
      c.send('y} FETCH 1 BODY.PEEK[]\r\n');
      const [lit] = fetchLiterals((await c.until('y}')).untagged);
      assert.ok(lit, 'a literal');
      assert.ok(!lit.data.includes('EICAR-STANDARD-ANTIVIRUS-TEST-FILE'));
      assert.match(lit.data.toString('utf8'), /replaced by avgate/);
    } finally {
      c.close();
    }
  });
});
