import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { imapProxySchema, type ImapProxyConfig } from '../../src/config/imap-schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { SaslIdentity } from '../../src/protocols/sasl.js';
import { ImapProxyServer } from '../../src/protocols/imap/server.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';
import { startTestDovecot } from '../helpers/dovecot.js';
import { ImapTestClient } from '../helpers/imap-client.js';
import { deadScanner } from '../helpers/mailproxy.js';
import { ALICE, b64, BOB, cramMd5, scramSha1 } from '../helpers/sasl.js';
import { selfSignedCert } from '../helpers/tls.js';

/**
 * The login name behind AUTHENTICATE (LOGIN, CRAM-MD5, PLAIN, SASL-IR forms) is what the users
 * rules of the command-acl match; mechanisms that hide it are refused while such rules exist.
 */
describe('imap proxy: the login name of AUTHENTICATE (Dovecot with PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1)', () => {
  let dir: string;
  let dovecot: Dovecot;
  let scanner: Scanner;
  const proxies: ImapProxyServer[] = [];
  /** alice may not SELECT; anyone else may. */
  const aliceNoSelect = { 'command-acl': [{ name: 'alice-no-select', match: { users: ['alice'], commands: ['SELECT'] }, action: 'deny' }] };

  async function startProxy(over: Record<string, unknown>): Promise<number> {
    const config: ImapProxyConfig = imapProxySchema.parse({ listen: '127.0.0.1:0', upstream: `127.0.0.1:${dovecot.imapPort}`, ...over });
    const proxy = new ImapProxyServer(config, { stateDir: dir, scannerFor: () => ({ scanner }), log: silentLogger(), quarantine: null });
    proxies.push(proxy);
    return (await proxy.listen()).port;
  }

  async function connect(port: number): Promise<ImapTestClient> {
    const { client } = await ImapTestClient.connect(port);
    return client;
  }

  /** The next response, which must be a continuation request: its base64 text. */
  async function challenge(c: ImapTestClient): Promise<string> {
    const r = await c.next();
    assert.match(r.text, /^\+/, r.text);
    return r.text.slice(2);
  }

  type Way = 'LOGIN' | 'LOGIN-IR' | 'CRAM-MD5' | 'PLAIN' | 'PLAIN-IR';
  /** Logs in with one SASL way; returns the tagged answer. */
  async function authenticate(c: ImapTestClient, way: Way, u: { user: string; password: string }): Promise<string> {
    const tag = c.nextTag();
    switch (way) {
      case 'LOGIN':
        c.send(`${tag} AUTHENTICATE LOGIN\r\n`);
        await challenge(c);
        c.send(`${b64(u.user)}\r\n`);
        await challenge(c);
        c.send(`${b64(u.password)}\r\n`);
        break;
      case 'LOGIN-IR':
        c.send(`${tag} AUTHENTICATE LOGIN ${b64(u.user)}\r\n`);
        await challenge(c);
        c.send(`${b64(u.password)}\r\n`);
        break;
      case 'CRAM-MD5':
        c.send(`${tag} AUTHENTICATE CRAM-MD5\r\n`);
        c.send(`${cramMd5(u.user, u.password, await challenge(c))}\r\n`);
        break;
      case 'PLAIN':
        c.send(`${tag} AUTHENTICATE PLAIN\r\n`);
        await challenge(c);
        c.send(`${b64(`\0${u.user}\0${u.password}`)}\r\n`);
        break;
      case 'PLAIN-IR':
        c.send(`${tag} AUTHENTICATE PLAIN ${b64(`\0${u.user}\0${u.password}`)}\r\n`);
        break;
    }
    return (await c.until(tag)).tagged;
  }

  const capabilities = async (c: ImapTestClient): Promise<string> => (await c.command('CAPABILITY')).untagged.find((u) => u.text.startsWith('* CAPABILITY'))?.text ?? '';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-imapsasl-'));
    dovecot = await startTestDovecot({ users: [ALICE, BOB], extraConfig: 'auth_mechanisms = plain login cram-md5 scram-sha-1\nauth_failure_delay = 0\n' });
    // Nothing here is scanned: a scanner that would fail is enough.
    scanner = deadScanner();
  });
  after(async () => {
    for (const p of proxies) await p.close(100);
    await scanner?.close();
    await dovecot?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('the name in a SASL exchange: PLAIN, LOGIN, CRAM-MD5; cancel, other authzid, malformed', () => {
    const read = (mech: string, ir: string | null, ...responses: string[]): string | null => {
      const s = new SaslIdentity(mech);
      if (ir !== null) s.initial(ir);
      for (const r of responses) s.response(r);
      return s.identified;
    };
    assert.equal(read('plain', b64('\0carol\0pw')), 'carol');
    assert.equal(read('PLAIN', null, b64('carol\0carol\0pw')), 'carol');
    assert.equal(read('PLAIN', null, b64('dave\0carol\0pw')), null, 'acting as another user: no name');
    assert.equal(read('PLAIN', '=', b64('\0carol\0pw')), 'carol', 'an empty initial response: the name comes next');
    assert.equal(read('LOGIN', b64('carol'), b64('pw')), 'carol');
    assert.equal(read('LOGIN', null, b64('carol'), b64('pw')), 'carol');
    assert.equal(read('LOGIN', null, b64('carol'), '*'), null, 'cancelled');
    assert.equal(read('CRAM-MD5', null, b64(`carol ${'a'.repeat(32)}`)), 'carol');
    assert.equal(read('CRAM-MD5', null, b64('carol nodigest')), null);
    assert.equal(read('SCRAM-SHA-1', b64('n,,n=carol,r=x')), null);
    assert.equal(read('LOGIN', null, b64('ca\nrol')), null, 'control characters: no name');
    assert.equal(new SaslIdentity('PLAIN').response('not base64!'), 'invalid');
  });

  test('users rules apply after AUTHENTICATE LOGIN, CRAM-MD5, PLAIN and their SASL-IR forms', async () => {
    const port = await startProxy(aliceNoSelect);
    for (const way of ['LOGIN', 'LOGIN-IR', 'CRAM-MD5', 'PLAIN', 'PLAIN-IR'] as const) {
      for (const u of [ALICE, BOB]) {
        const c = await connect(port);
        try {
          assert.match(await authenticate(c, way, u), /^t\d+ OK /, `${way} ${u.user}`);
          const select = (await c.command('SELECT INBOX')).tagged;
          if (u === ALICE) assert.match(select, /^t\d+ NO \[NOPERM\]/, `${way}: alice's rule applies`);
          else assert.match(select, /^t\d+ OK /, `${way}: bob is not alice`);
        } finally {
          c.close();
        }
      }
    }
  });

  test('with users rules a mechanism that hides the name is neither offered nor relayed (NO [CANNOT]); nor is PLAIN acting as another user', async () => {
    const port = await startProxy(aliceNoSelect);
    const c = await connect(port);
    try {
      const caps = await capabilities(c);
      assert.match(caps, /AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5/);
      assert.doesNotMatch(caps, /SCRAM/);
      assert.match((await c.command(`AUTHENTICATE SCRAM-SHA-1 ${scramSha1('alice', ALICE.password).initial}`)).tagged, /^t\d+ NO \[CANNOT\] .*SCRAM-SHA-1/);
      assert.match((await c.command('AUTHENTICATE GSSAPI')).tagged, /^t\d+ NO \[CANNOT\]/);
      assert.match((await c.command(`AUTHENTICATE PLAIN ${b64(`bob\0alice\0${ALICE.password}`)}`)).tagged, /^t\d+ NO \[CANNOT\]/);
      // The same as a response: not relayed, the exchange is cancelled.
      const tag = c.nextTag();
      c.send(`${tag} AUTHENTICATE PLAIN\r\n`);
      await challenge(c);
      c.send(`${b64(`bob\0alice\0${ALICE.password}`)}\r\n`);
      assert.match((await c.until(tag)).tagged, new RegExp(`^${tag} NO \\[CANNOT\\]`));
      // Not logged in; the session goes on.
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ (?:NO|BAD) (?!\[NOPERM\])/);
      assert.match(await authenticate(c, 'PLAIN-IR', BOB), /^t\d+ OK /);
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ OK /);
    } finally {
      c.close();
    }
  });

  test('without users rules any mechanism passes (SCRAM-SHA-1 end to end); after it STARTTLS is no longer offered', async () => {
    const { cert, key } = await selfSignedCert(dir);
    const port = await startProxy({ tls: { cert, key } });
    const c = await connect(port);
    try {
      const caps = await capabilities(c);
      assert.match(caps, /AUTH=SCRAM-SHA-1/);
      assert.match(caps, /\bSTARTTLS\b/);
      const scram = scramSha1('alice', ALICE.password);
      const tag = c.nextTag();
      c.send(`${tag} AUTHENTICATE SCRAM-SHA-1 ${scram.initial}\r\n`);
      c.send(`${scram.final(await challenge(c))}\r\n`);
      await challenge(c); // the server's signature
      c.send('\r\n');
      assert.match((await c.until(tag)).tagged, new RegExp(`^${tag} OK `));
      assert.doesNotMatch(await capabilities(c), /STARTTLS/, 'logged in: no STARTTLS');
      assert.match((await c.command('STARTTLS')).tagged, /^t\d+ BAD /);
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ OK /);
    } finally {
      c.close();
    }
  });

  test('the name counts only on OK: a cancelled or failed exchange naming bob leaves none; then alice logs in', async () => {
    const port = await startProxy(aliceNoSelect);
    const c = await connect(port);
    try {
      const tag = c.nextTag();
      c.send(`${tag} AUTHENTICATE LOGIN\r\n`);
      await challenge(c);
      c.send(`${b64('bob')}\r\n`);
      await challenge(c);
      c.send('*\r\n');
      assert.match((await c.until(tag)).tagged, new RegExp(`^${tag} (?:NO|BAD) `));
      assert.match(await authenticate(c, 'LOGIN', { user: 'bob', password: 'wrong' }), /^t\d+ NO /);
      assert.match(await authenticate(c, 'CRAM-MD5', ALICE), /^t\d+ OK /);
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ NO \[NOPERM\]/, 'alice, not bob');
    } finally {
      c.close();
    }
  });

  test('two logins at once: the second is refused by the proxy, the first one\'s name counts', async () => {
    const port = await startProxy(aliceNoSelect);
    const c = await connect(port);
    try {
      c.send(`a1 LOGIN alice ${ALICE.password}\r\na2 LOGIN bob wrong\r\n`);
      const answers = [(await c.next()).text, (await c.next()).text];
      assert.ok(answers.some((a) => /^a2 NO \[CANNOT\]/.test(a)), answers.join(' | '));
      assert.ok(answers.some((a) => /^a1 OK /.test(a)), answers.join(' | '));
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ NO \[NOPERM\]/);
    } finally {
      c.close();
    }
  });

  test('LOGIN {5}: the name is the literal', async () => {
    const port = await startProxy(aliceNoSelect);
    const c = await connect(port);
    try {
      c.send('a1 LOGIN {5}\r\n');
      assert.match((await c.next()).text, /^\+/);
      c.send(`alice ${ALICE.password}\r\n`);
      assert.match((await c.until('a1')).tagged, /^a1 OK /);
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ NO \[NOPERM\]/);
    } finally {
      c.close();
    }
  });

  test('a SASL response is one line to the server: a literal marker at its end does not hide the next command from the command-acl', async () => {
    const port = await startProxy({ 'command-acl': [{ name: 'no-id', match: { commands: ['ID'] }, action: 'deny' }] });
    const c = await connect(port);
    try {
      const tag = c.nextTag();
      c.send(`${tag} AUTHENTICATE PLAIN\r\n`);
      await challenge(c);
      // To Dovecot `x{10}` is a (bad) response line and `b1 ID NIL` the next command.
      c.send('x{10}\r\nb1 ID NIL\r\n');
      const answers = [(await c.next()).text, (await c.next()).text];
      assert.ok(answers.some((a) => new RegExp(`^${tag} BAD `).test(a)), answers.join(' | '));
      assert.ok(answers.some((a) => /^b1 NO \[NOPERM\]/.test(a)), `ID examined by the command-acl: ${answers.join(' | ')}`);
    } finally {
      c.close();
    }
  });

  test('an overlong SASL response cancels the exchange: the AUTHENTICATE gets BAD [TOOBIG], the session goes on', async () => {
    const port = await startProxy({ 'max-line-length': '1KiB' });
    const c = await connect(port);
    try {
      const tag = c.nextTag();
      c.send(`${tag} AUTHENTICATE PLAIN\r\n`);
      await challenge(c);
      c.send(`${'QUFB'.repeat(600)}\r\n`);
      assert.match((await c.until(tag)).tagged, new RegExp(`^${tag} BAD \\[TOOBIG\\]`));
      assert.match(await authenticate(c, 'PLAIN-IR', BOB), /^t\d+ OK /);
    } finally {
      c.close();
    }
  });

  test('a SASL response sent ahead of the server\'s "+" is still read as the response', async () => {
    const port = await startProxy(aliceNoSelect);
    const c = await connect(port);
    try {
      c.send(`a1 AUTHENTICATE PLAIN\r\n${b64(`\0alice\0${ALICE.password}`)}\r\n`);
      assert.match((await c.until('a1')).tagged, /^a1 OK /);
      assert.match((await c.command('SELECT INBOX')).tagged, /^t\d+ NO \[NOPERM\]/);
    } finally {
      c.close();
    }
  });
});
