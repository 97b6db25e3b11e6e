import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Pop3ProxyServer } from '../../src/protocols/pop3/index.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';
import { startTestDovecot } from '../helpers/dovecot.js';
import { deadScanner, listenPop3Proxy } from '../helpers/mailproxy.js';
import { Pop3TestClient } from '../helpers/pop3.js';
import { ALICE, apopDigest, b64, BOB, cramMd5, scramSha1 } from '../helpers/sasl.js';
import { selfSignedCert } from '../helpers/tls.js';

/**
 * The login name behind AUTH (RFC 5034: PLAIN, LOGIN, CRAM-MD5, with or without an initial
 * response) and APOP is what the users rules match, and only once the server said +OK.
 */
describe('POP3 proxy: the login name of AUTH and APOP (Dovecot with PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1, APOP)', () => {
  let dir: string;
  let dovecot: Dovecot;
  let scanner: Scanner;
  const proxies: Pop3ProxyServer[] = [];
  /** Users of a server with virtual domains: two users, not one `bob`. */
  const CORP = { user: 'bob@corp.test', password: 'secret-corp' };
  const OTHER = { user: 'bob@other.test', password: 'secret-other' };
  const denyStat = (user: string) => ({ 'command-acl': [{ name: `${user.replace(/[^A-Za-z0-9-]/g, '-')}-no-stat`, match: { users: [user], commands: ['STAT'] }, action: 'deny' }] });

  const proxy = (yaml: Record<string, unknown>): Promise<number> =>
    listenPop3Proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, ...yaml }, { scanner, spoolDir: join(dir, 'spool') }, proxies);

  /** A continuation line's base64 text. */
  function challenge(line: string): string {
    assert.match(line, /^\+ /, line);
    return line.slice(2);
  }

  type Way = 'LOGIN' | 'LOGIN-IR' | 'CRAM-MD5' | 'PLAIN' | 'PLAIN-IR';
  /** Logs in with one SASL way; returns the final answer. */
  async function auth(c: Pop3TestClient, way: Way, u: { user: string; password: string }): Promise<string> {
    switch (way) {
      case 'LOGIN':
        challenge(await c.command('AUTH LOGIN'));
        challenge(await c.command(b64(u.user)));
        return c.command(b64(u.password));
      case 'LOGIN-IR':
        challenge(await c.command(`AUTH LOGIN ${b64(u.user)}`));
        return c.command(b64(u.password));
      case 'CRAM-MD5': {
        return c.command(cramMd5(u.user, u.password, challenge(await c.command('AUTH CRAM-MD5'))));
      }
      case 'PLAIN':
        challenge(await c.command('AUTH PLAIN'));
        return c.command(b64(`\0${u.user}\0${u.password}`));
      case 'PLAIN-IR':
        return c.command(`AUTH PLAIN ${b64(`\0${u.user}\0${u.password}`)}`);
    }
  }

  async function multiLines(c: Pop3TestClient, command: string): Promise<string[]> {
    const { status, body } = await c.multi(command);
    assert.match(status, /^\+OK/);
    return body.toString('latin1').split('\r\n');
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-pop3sasl-'));
    dovecot = await startTestDovecot({ users: [ALICE, BOB, CORP, OTHER], extraConfig: 'auth_mechanisms = plain login cram-md5 scram-sha-1 apop\nauth_failure_delay = 0\n' });
    // Nothing here is scanned: a scanner that would fail is enough.
    scanner = deadScanner();
  });
  after(async () => {
    for (const p of proxies) await p.close(100);
    await scanner?.close();
    await dovecot?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('users rules apply after AUTH LOGIN, CRAM-MD5, PLAIN, with and without an initial response', async () => {
    const port = await proxy(denyStat('alice'));
    for (const way of ['LOGIN', 'LOGIN-IR', 'CRAM-MD5', 'PLAIN', 'PLAIN-IR'] as const) {
      for (const u of [ALICE, BOB]) {
        const c = await Pop3TestClient.connect(port);
        try {
          assert.match(await auth(c, way, u), /^\+OK/, `${way} ${u.user}`);
          const stat = await c.command('STAT');
          if (u === ALICE) assert.match(stat, /^-ERR command refused by policy/, `${way}: alice's rule applies`);
          else assert.match(stat, /^\+OK \d+ \d+/, `${way}: bob is not alice`);
        } finally {
          await c.quit();
        }
      }
    }
  });

  test('with users rules a mechanism that hides the name is neither offered (CAPA, AUTH) nor relayed; nor is PLAIN acting as another user', async () => {
    const port = await proxy(denyStat('alice'));
    const c = await Pop3TestClient.connect(port);
    try {
      assert.ok((await multiLines(c, 'CAPA')).includes('SASL PLAIN LOGIN CRAM-MD5'));
      const listed = await multiLines(c, 'AUTH');
      assert.ok(listed.includes('CRAM-MD5') && !listed.some((l) => /SCRAM/.test(l)), listed.join('|'));
      assert.match(await c.command(`AUTH SCRAM-SHA-1 ${scramSha1('alice', ALICE.password).initial}`), /^-ERR authentication refused by the proxy: .*SCRAM-SHA-1/);
      assert.match(await c.command('AUTH GSSAPI'), /^-ERR authentication refused by the proxy/);
      assert.match(await c.command(`AUTH PLAIN ${b64(`bob\0alice\0${ALICE.password}`)}`), /^-ERR authentication refused by the proxy/);
      // The same as a response: not relayed, the exchange is cancelled.
      challenge(await c.command('AUTH PLAIN'));
      assert.match(await c.command(b64(`bob\0alice\0${ALICE.password}`)), /^-ERR authentication refused by the proxy/);
      assert.match(await auth(c, 'PLAIN-IR', BOB), /^\+OK/);
      assert.match(await c.command('STAT'), /^\+OK \d+ \d+/);
    } finally {
      await c.quit();
    }
  });

  test('without users rules any mechanism passes (SCRAM-SHA-1 end to end); after it STLS is no longer offered', async () => {
    const { cert, key } = await selfSignedCert(dir);
    const port = await proxy({ tls: { cert, key } });
    const c = await Pop3TestClient.connect(port);
    try {
      const capa = await multiLines(c, 'CAPA');
      assert.ok(capa.some((l) => /^SASL .*SCRAM-SHA-1/.test(l)) && capa.includes('STLS'), capa.join('|'));
      const scram = scramSha1('alice', ALICE.password);
      const first = challenge(await c.command(`AUTH SCRAM-SHA-1 ${scram.initial}`));
      challenge(await c.command(scram.final(first))); // the server's signature
      assert.match(await c.command(''), /^\+OK/);
      assert.ok(!(await multiLines(c, 'CAPA')).includes('STLS'), 'logged in: no STLS');
      assert.match(await c.command('STLS'), /^-ERR/);
      assert.match(await c.command('STAT'), /^\+OK \d+ \d+/);
    } finally {
      await c.quit();
    }
  });

  test('the name counts only on +OK: USER bob with a wrong PASS, then alice by AUTH, is alice\'s session', async () => {
    const port = await proxy(denyStat('bob'));
    const c = await Pop3TestClient.connect(port);
    try {
      assert.match(await c.command('USER bob'), /^\+OK/);
      assert.match(await c.command('PASS wrong'), /^-ERR/);
      assert.match(await auth(c, 'PLAIN-IR', ALICE), /^\+OK/);
      assert.match(await c.command('STAT'), /^\+OK \d+ \d+/, 'alice, not bob');
    } finally {
      await c.quit();
    }
  });

  test('APOP bob with a wrong digest and a cancelled AUTH LOGIN naming bob leave no name; then alice', async () => {
    const port = await proxy(denyStat('bob'));
    const c = await Pop3TestClient.connect(port);
    try {
      const stamp = /<[^>]+>/.exec(c.greeting)?.[0];
      assert.ok(stamp, `APOP timestamp in ${c.greeting}`);
      assert.match(await c.command(`APOP bob ${'0'.repeat(32)}`), /^-ERR/);
      challenge(await c.command('AUTH LOGIN'));
      challenge(await c.command(b64('bob')));
      assert.match(await c.command('*'), /^-ERR/);
      assert.match(await auth(c, 'CRAM-MD5', ALICE), /^\+OK/);
      assert.match(await c.command('STAT'), /^\+OK \d+ \d+/, 'alice, not bob');
    } finally {
      await c.quit();
    }
  });

  test('APOP names the user: bob\'s rule applies', async () => {
    const port = await proxy(denyStat('bob'));
    const c = await Pop3TestClient.connect(port);
    try {
      const stamp = /<[^>]+>/.exec(c.greeting)?.[0] as string;
      assert.match(await c.command(`APOP bob ${apopDigest(stamp, BOB.password)}`), /^\+OK/);
      assert.match(await c.command('STAT'), /^-ERR command refused by policy/);
    } finally {
      await c.quit();
    }
  });

  test('a SASL response or initial response that is not base64 never reaches the server; the session goes on', async () => {
    const port = await proxy({});
    const c = await Pop3TestClient.connect(port);
    try {
      assert.match(await c.command('AUTH PLAIN not-base64!'), /^-ERR invalid base64/);
      challenge(await c.command('AUTH LOGIN'));
      assert.match(await c.command('USER alice'), /^-ERR response not base64/);
      assert.match(await auth(c, 'LOGIN', ALICE), /^\+OK/);
      assert.match(await c.command('STAT'), /^\+OK \d+ \d+/);
    } finally {
      await c.quit();
    }
  });

  test('tls.required: before STLS no login form and no unknown command is relayed (the proxy answers each itself)', async () => {
    const { cert, key } = await selfSignedCert(dir, 'pop3sasl');
    const port = await proxy({ tls: { cert, key, required: true } });
    const c = await Pop3TestClient.connect(port);
    try {
      for (const line of [`AUTH PLAIN ${b64(`\0alice\0${ALICE.password}`)}`, `APOP alice ${'0'.repeat(32)}`, `XAUTH alice ${ALICE.password}`, `PASS ${ALICE.password}`, 'AUTH LOGIN']) {
        assert.match(await c.command(line), /^-ERR TLS required/, line);
      }
      assert.match(await c.command(`LOGIN\u0001 alice ${ALICE.password}`), /^-ERR malformed command/);
      const capa = await multiLines(c, 'CAPA');
      assert.ok(capa.includes('STLS'), 'not logged in');
      c.send('STLS\r\n');
      assert.match(await c.line(), /^\+OK/);
    } finally {
      c.socket.destroy();
    }
  });

  async function stat(port: number, login: (c: Pop3TestClient) => Promise<string>): Promise<string> {
    const c = await Pop3TestClient.connect(port);
    try {
      assert.match(await login(c), /^\+OK/);
      return await c.command('STAT');
    } finally {
      await c.quit();
    }
  }

  test('login names with a domain are kept whole (the server has bob@corp.test and bob@other.test): fixed upstream: USER/PASS and AUTH PLAIN as bob@corp.test meet its rule; bob@other.test does not', async () => {
    const port = await proxy(denyStat('bob@corp.test'));
    const userPass = (u: typeof CORP) => async (c: Pop3TestClient) => {
      assert.match(await c.command(`USER ${u.user}`), /^\+OK/);
      return c.command(`PASS ${u.password}`);
    };
    const plain = (u: typeof CORP) => (c: Pop3TestClient) => c.command(`AUTH PLAIN ${b64(`\0${u.user}\0${u.password}`)}`);
    assert.match(await stat(port, userPass(CORP)), /^-ERR/, 'USER bob@corp.test: the rule applies');
    assert.match(await stat(port, plain(CORP)), /^-ERR/, 'AUTH PLAIN bob@corp.test: the rule applies');
    assert.match(await stat(port, userPass(OTHER)), /^\+OK/, 'bob@other.test is another user');
    assert.match(await stat(port, plain(OTHER)), /^\+OK/);
  });

  test('login names with a domain: USER name@host: the host is taken off once, a domain in the name stays', async () => {
    const port = await listenPop3Proxy({ upstream: null, 'allowed-upstreams': ['127.0.0.1:*'], ...denyStat('bob@corp.test') }, { scanner, spoolDir: join(dir, 'spool') }, proxies);
    const via = (u: typeof CORP) => async (c: Pop3TestClient) => {
      assert.match(await c.command(`USER ${u.user}@127.0.0.1:${dovecot.pop3Port}`), /^\+OK/);
      return c.command(`PASS ${u.password}`);
    };
    assert.match(await stat(port, via(CORP)), /^-ERR/, 'bob@corp.test@server: the rule applies');
    assert.match(await stat(port, via(OTHER)), /^\+OK/);
  });
});
