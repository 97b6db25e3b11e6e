import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { silentLogger } from '../../src/core/logging.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { BUILT_IN_REPLACEMENT, scanAndReplace } from '../../src/mailproxy/index.js';
import { Pop3ProxyServer } from '../../src/protocols/pop3/index.js';
import { LineReader } from '../../src/protocols/pop3/wire.js';
import { EncryptedQuarantine } from '../../src/quarantine/store.js';
import type { Quarantine } from '../../src/quarantine/types.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { ScanService } from '../../src/scan/types.js';
import { capturedLog } from '../helpers/log.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestDovecot, startTlsDovecot } from '../helpers/dovecot.js';
import { closedPort, startFaultServer } from '../helpers/fault-server.js';
import { type CorpusMessage, deadScanner, listenPop3Proxy, mailCorpus, partDigests, proxyPolicy, proxyScanner, sha256 } from '../helpers/mailproxy.js';
import { mailWith } from '../helpers/mail.js';
import { waitFor } from '../helpers/wait.js';
import { Pop3TestClient } from '../helpers/pop3.js';
import { clientTls, selfSignedCert } from '../helpers/tls.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';

const run = promisify(execFile);

/** curl pop3://; the login goes into the URL (encoded), so a user@host:port name survives. */
async function curl(url: string, user: string, password: string): Promise<Buffer> {
  const u = new URL(url);
  u.username = encodeURIComponent(user);
  u.password = encodeURIComponent(password);
  const { stdout } = await run('curl', ['-sS', '--max-time', '60', u.toString()], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

describe('POP3 proxy with a real Dovecot and clamd', () => {
  let clamd: TestClamd;
  let dovecot: Dovecot;
  let dir: string;
  let scanner: Scanner;
  let dead: Scanner;
  const proxies: Pop3ProxyServer[] = [];
  const corpus = mailCorpus('p');
  /** Message number on the server → corpus entry, and the bytes Dovecot serves directly. */
  const byNumber = new Map<number, { m: CorpusMessage; direct: Buffer; listed: number }>();

  const proxy = (yaml: Record<string, unknown>, scan: ScanService = scanner, quarantine: Quarantine | null = null): Promise<number> =>
    listenPop3Proxy(yaml, { scanner: scan, spoolDir: join(dir, 'spool'), quarantine }, proxies);

  let fixedPort: number;
  before(async () => {
    clamd = await startTestClamd();
    dovecot = await startTestDovecot({ users: [{ user: 'alice', password: 'alice-pw' }] });
    dir = await mkdtemp(join(tmpdir(), 'avgate-pop3-'));
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
    dead = deadScanner();
    for (const m of corpus) await dovecot.deliver('alice', m.raw);
    // What Dovecot itself serves: the reference for byte comparisons.
    const direct = await Pop3TestClient.connect(dovecot.pop3Port);
    await direct.login('alice', 'alice-pw');
    const list = (await direct.multi('LIST')).body.toString('latin1').trim().split('\r\n');
    for (const entry of list) {
      const [n, size] = entry.split(' ').map(Number) as [number, number];
      const { body } = await direct.multi(`RETR ${n}`);
      // Dovecot serves the delivered bytes as they were.
      const m = corpus.find((c) => sha256(c.raw) === sha256(body));
      assert.ok(m, `message ${n} is not one delivered`);
      byNumber.set(n, { m, direct: body, listed: size });
    }
    await direct.quit();
    assert.equal(byNumber.size, corpus.length);
    fixedPort = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}` });
  });
  after(async () => {
    for (const p of proxies) await p.close(100);
    await scanner.close();
    await dead.close();
    await dovecot.stop();
    await clamd.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const paddedSeen = new Set<string>();
  const numberOf = (name: string) => [...byNumber.entries()].find(([, v]) => v.m.name === name)?.[0] as number;

  async function checkRewritten(name: string, got: Buffer, listed: number, padded = true): Promise<void> {
    const { m, direct } = byNumber.get(numberOf(name)) as { m: CorpusMessage; direct: Buffer };
    if (m.infected.length === 0) {
      assert.equal(sha256(got), sha256(direct), `${name}: clean message byte-identical`);
      return;
    }
    const before = await partDigests(direct);
    const after = await partDigests(got);
    for (const p of before.filter((p) => !m.infected.includes(p.key))) assert.ok(after.some((q) => q.sha256 === p.sha256), `${name}: clean part ${p.key} changed`);
    for (const bad of m.infected) {
      const orig = before.find((p) => p.key === bad);
      assert.ok(orig && !after.some((q) => q.sha256 === orig.sha256), `${name}: ${bad} still there`);
      assert.ok(after.some((q) => q.text?.includes('replaced by avgate') && q.text.includes(bad)), `${name}: no notice for ${bad}`);
    }
    // Padded to the size LIST announced when the notice is shorter than what it replaced; a
    // longer rewrite cannot be trimmed.
    const unpadded = await scanAndReplace(direct, { scanner, policy: proxyPolicy(), replacement: BUILT_IN_REPLACEMENT, spoolDir: join(dir, 'spool'), log: silentLogger(), origin: { source: 'pop3' } });
    assert.ok(unpadded.changed);
    if (padded) assert.equal(got.length, Math.max(listed, unpadded.size), `${name}: size`);
    if (padded && unpadded.size < listed) paddedSeen.add(name);
  }

  test('curl pop3:// through the proxy: LIST as the server says, every message valid, infected parts replaced, clean ones byte-identical', async () => {
    const direct = (await curl(`pop3://127.0.0.1:${dovecot.pop3Port}/`, 'alice', 'alice-pw')).toString();
    const proxied = (await curl(`pop3://127.0.0.1:${fixedPort}/`, 'alice', 'alice-pw')).toString();
    assert.equal(proxied, direct);
    for (const [n, { m, listed }] of byNumber) {
      const got = await curl(`pop3://127.0.0.1:${fixedPort}/${n}`, 'alice', 'alice-pw');
      await checkRewritten(m.name, got, listed);
    }
    // The big infected attachment's notice is shorter: that message came padded to its listed size.
    assert.ok(paddedSeen.has('bigvirus'), [...paddedSeen].join());
  });

  test('quarantine: [infected] keeps each infected message fetched whole (RETR) as Dovecot served it, with its facts, once however often it is fetched; TOP and clean messages add nothing', async () => {
    const q = await EncryptedQuarantine.open({ dir: join(dir, 'quarantine'), keyFile: join(dir, 'quarantine.key') });
    try {
      const port = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, quarantine: ['infected'] }, scanner, q);
      const c = await Pop3TestClient.connect(port);
      await c.login('alice', 'alice-pw');
      for (const [n, { m }] of byNumber) {
        if (m.infected.length > 0) await c.multi(`TOP ${n} 0`);
      }
      assert.equal((await q.list()).length, 0, 'TOP (a cut message) is not kept');
      for (const [n] of byNumber) await c.multi(`RETR ${n}`);
      // Fetched again (a client that leaves mail on the server): no second item.
      for (const [n] of byNumber) await c.multi(`RETR ${n}`);
      await c.quit();
      const items = await q.list();
      const infected = [...byNumber.values()].filter((v) => v.m.infected.length > 0);
      assert.equal(items.length, infected.length, items.map((i) => i.subject).join('; '));
      for (const { m, direct } of infected) {
        const item = items.find((i) => i.sha256 === sha256(direct));
        assert.ok(item, `${m.name}: kept as Dovecot served it`);
        assert.equal(item.source, 'pop3');
        assert.deepEqual(item.recipients, ['alice']);
        assert.deepEqual(item.statuses, ['infected']);
        assert.ok(item.virusNames.length > 0, `${m.name}: virus names`);
        assert.equal(item.action, 'replaced');
        const subject = /^Subject: (.*)$/im.exec(m.raw.toString('latin1'))?.[1]?.trim() ?? null;
        assert.equal(item.subject, subject);
        const got = await q.get(item.id);
        const chunks: Buffer[] = [];
        for await (const chunk of (got as NonNullable<typeof got>).open()) chunks.push(chunk as Buffer);
        assert.equal(sha256(Buffer.concat(chunks)), sha256(direct), `${m.name}: the kept bytes decrypt to the original`);
      }
    } finally {
      await q.close();
    }
  });

  test('scripted client: CAPA filtered, STAT/LIST/UIDL/TOP/RETR/DELE/RSET/QUIT relayed and framed', async () => {
    const c = await Pop3TestClient.connect(fixedPort);
    assert.match(c.greeting, /^\+OK/);
    const capa = await c.multi('CAPA');
    assert.match(capa.status, /^\+OK/);
    const caps = capa.body.toString('latin1').split('\r\n').filter(Boolean);
    assert.ok(caps.includes('TOP') && caps.includes('UIDL') && caps.includes('USER'), caps.join(','));
    assert.ok(!caps.some((l) => /^(PIPELINING|STLS)\b/i.test(l)), caps.join(','));
    await c.login('alice', 'alice-pw');
    assert.match(await c.command('STAT'), new RegExp(`^\\+OK ${corpus.length} \\d+`));
    const uidl = await c.multi('UIDL');
    assert.equal(uidl.body.toString().trim().split('\r\n').length, corpus.length);
    assert.match(await c.command(`LIST ${numberOf('eicar')}`), new RegExp(`^\\+OK ${numberOf('eicar')} ${byNumber.get(numberOf('eicar'))?.listed}`));
    // TOP n 0: the header only, unchanged (a cut message is not "corrupted").
    const top = await c.multi(`TOP ${numberOf('eicar')} 0`);
    const direct = byNumber.get(numberOf('eicar'))?.direct as Buffer;
    assert.equal(top.body.toString('latin1'), direct.subarray(0, direct.indexOf('\r\n\r\n') + 4).toString('latin1'));
    // TOP with body lines of the EICAR mail: whatever is cut out, EICAR itself never comes through.
    const top2 = await c.multi(`TOP ${numberOf('eicar')} 100`);
    assert.match(top2.status, /^\+OK/);
    const eicarB64 = eicarBytes().toString('base64').slice(0, 60);
    assert.ok(direct.includes(eicarB64));
    assert.ok(!top2.body.includes(eicarB64), 'EICAR came through TOP');
    for (const name of ['eicar', 'nested', 'plain']) {
      const r = await c.multi(`RETR ${numberOf(name)}`);
      assert.match(r.status, /^\+OK/);
      await checkRewritten(name, r.body, byNumber.get(numberOf(name))?.listed as number);
    }
    assert.match(await c.command('DELE 1'), /^\+OK/);
    assert.match(await c.command('RETR 1'), /^-ERR/);
    assert.match(await c.command('RSET'), /^\+OK/);
    assert.match(await c.command('NOOP'), /^\+OK/);
    assert.match(await c.command('QUIT'), /^\+OK/);
    assert.equal(await c.closed(), true);
  });

  test('the log has a line per session (client, user, server, fetched, replaced, how it ended) and one per login the server refused', async () => {
    const { log, lines } = capturedLog();
    const port = await listenPop3Proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}` }, { scanner, spoolDir: join(dir, 'spool'), log }, proxies);
    const wrong = await Pop3TestClient.connect(port);
    assert.match(await wrong.command('USER alice'), /^\+OK/);
    assert.match(await wrong.command('PASS not-her-password'), /^-ERR/);
    await wrong.quit();
    const c = await Pop3TestClient.connect(port);
    await c.login('alice', 'alice-pw');
    await c.multi(`RETR ${numberOf('eicar')}`);
    await c.multi(`RETR ${numberOf('clean')}`);
    await c.quit();
    await waitFor('two session lines', async () => (lines.filter((l) => l['msg'] === 'pop3: session ended').length === 2 ? true : null), 10_000);
    const refused = lines.find((l) => l['msg'] === 'pop3: login refused by the server');
    assert.equal(refused?.['user'], 'alice');
    assert.equal(refused?.['client'], '127.0.0.1');
    const [first, second] = lines.filter((l) => l['msg'] === 'pop3: session ended');
    assert.deepEqual([first?.['user'], first?.['failedLogins'], first?.['end']], [null, 1, 'QUIT']);
    assert.deepEqual([second?.['user'], second?.['fetched'], second?.['replaced'], second?.['end'], second?.['upstream']], ['alice', 2, 1, 'QUIT', `127.0.0.1:${dovecot.pop3Port}`]);
    // The replacement's line joins its session's (same session id, client) and the mail server's log (Message-ID).
    const replaced = lines.find((l) => l['msg'] === 'mail proxy: documents replaced');
    assert.equal(replaced?.['session'], second?.['session']);
    assert.equal(replaced?.['client'], '127.0.0.1');
    assert.match(String(replaced?.['messageId']), /^<.+@.+>$/);
  });

  test('malformed client lines: -ERR and the session goes on; never a crash', async () => {
    const c = await Pop3TestClient.connect(fixedPort);
    await c.login('alice', 'alice-pw');
    assert.match(await c.command(`NOOP ${'x'.repeat(20_000)}`), /^-ERR command line too long/);
    assert.match(await c.command('\u0001\u0002garbage'), /^-ERR/);
    assert.match(await c.command('XYZZY'), /^-ERR command not supported/);
    assert.match(await c.command('RETR abc'), /^-ERR/);
    assert.match(await c.command('TOP 1'), /^-ERR/);
    assert.match(await c.command('STLS'), /^-ERR/);
    assert.match(await c.command('LIST 99'), /^-ERR/);
    // Pipelined commands (without PIPELINING the proxy still answers each in order).
    c.send('NOOP\r\nSTAT\r\n');
    assert.match(await c.line(), /^\+OK/);
    assert.match(await c.line(), /^\+OK \d+ \d+/);
    // Bare LF line ends are tolerated.
    c.send('NOOP\n');
    assert.match(await c.line(), /^\+OK/);
    await c.quit();
  });

  test('USER user@host chooses an allowed upstream; others are refused; a dead one gives -ERR and the session goes on', async () => {
    const dynamic = await proxy({ upstream: null, 'allowed-upstreams': [`127.0.0.1:${dovecot.pop3Port}`, '127.0.0.1:1'] });
    const c = await Pop3TestClient.connect(dynamic);
    assert.match(c.greeting, /^\+OK avgate/);
    assert.match(await c.command('STAT'), /^-ERR/);
    assert.match(await c.command('APOP alice 0123'), /^-ERR/);
    assert.match(await c.command('USER alice'), /^-ERR log in as USER name@server/);
    assert.match(await c.command('USER alice@127.0.0.2:110'), /^-ERR server 127\.0\.0\.2:110 is not allowed/);
    assert.match(await c.command('USER alice@127.0.0.1:1'), /^-ERR cannot connect/);
    await c.login(`alice@127.0.0.1:${dovecot.pop3Port}`, 'alice-pw');
    const r = await c.multi(`RETR ${numberOf('clamzip')}`);
    await checkRewritten('clamzip', r.body, byNumber.get(numberOf('clamzip'))?.listed as number);
    await c.quit();
    // curl with user@host as the login name.
    const got = await curl(`pop3://127.0.0.1:${dynamic}/${numberOf('clean')}`, `alice@127.0.0.1:${dovecot.pop3Port}`, 'alice-pw');
    await checkRewritten('clean', got, 0);
  });

  test('upstream down: -ERR at once (fixed upstream), never a hang', async () => {
    const down = await proxy({ upstream: `127.0.0.1:${await closedPort()}` });
    const c = await Pop3TestClient.connect(down);
    assert.match(c.greeting, /^-ERR cannot connect to the POP3 server/);
    assert.equal(await c.closed(), true);
    c.socket.destroy();
  });

  test('malformed server answers: garbage greeting, garbage status, a body cut off → -ERR, the proxy keeps serving', async () => {
    const garbageGreeting = await startFaultServer((s) => s.end('HELLO I AM NOT POP3\r\n'));
    const cutBody = await startFaultServer((s) => {
      s.write('+OK ready\r\n');
      s.on('data', (d: Buffer) => {
        const t = d.toString();
        if (/^RETR/i.test(t)) {
          s.write('+OK 100 octets\r\nFrom: a@b\r\n\r\nhalf a bo');
          setTimeout(() => s.destroy(), 50);
        } else if (/^STAT/i.test(t)) s.write('WHAT?\r\n');
        else s.write('+OK\r\n');
      });
    });
    try {
      const p1 = await proxy({ upstream: garbageGreeting.address });
      const c1 = await Pop3TestClient.connect(p1);
      assert.match(c1.greeting, /^-ERR the POP3 server did not greet with \+OK/);
      c1.socket.destroy();
      const p2 = await proxy({ upstream: cutBody.address });
      const c2 = await Pop3TestClient.connect(p2);
      await c2.login('x', 'y');
      assert.match(await c2.command('RETR 1'), /^-ERR POP3 server/);
      assert.equal(await c2.closed(), true);
      c2.socket.destroy();
      const c3 = await Pop3TestClient.connect(p2);
      await c3.login('x', 'y');
      assert.match(await c3.command('STAT'), /^-ERR malformed response/);
      c3.socket.destroy();
      // Still serving.
      const c4 = await Pop3TestClient.connect(fixedPort);
      assert.match(c4.greeting, /^\+OK/);
      await c4.quit();
    } finally {
      await garbageGreeting.close();
      await cutBody.close();
    }
  });

  test('engine down: documents replaced by a "could not be scanned" notice (fail closed); on-error pass relays them', async () => {
    const closedAv = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}` }, dead);
    const c = await Pop3TestClient.connect(closedAv);
    await c.login('alice', 'alice-pw');
    const r = await c.multi(`RETR ${numberOf('clean')}`);
    const docs = await partDigests(r.body);
    assert.ok(docs.some((d) => d.text?.includes('could not be scanned')), 'notice present');
    assert.ok(!docs.some((d) => d.key === 'report.bin'), 'unscanned attachment not delivered');
    await c.quit();
    const passAv = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, 'on-error': 'pass' }, dead);
    const got = await curl(`pop3://127.0.0.1:${passAv}/${numberOf('eicar')}`, 'alice', 'alice-pw');
    assert.equal(sha256(got), sha256(byNumber.get(numberOf('eicar'))?.direct as Buffer));
  });

  test('command-acl: deny answers -ERR; use-antivirus off relays unscanned', async () => {
    const acl = await proxy({
      upstream: `127.0.0.1:${dovecot.pop3Port}`,
      'command-acl': [
        { name: 'no-dele', match: { commands: ['DELE'] }, action: 'deny' },
        { name: 'raw-top', match: { commands: ['TOP'] }, 'use-antivirus': false },
        { name: 'rest' },
      ],
    });
    const c = await Pop3TestClient.connect(acl);
    await c.login('alice', 'alice-pw');
    assert.match(await c.command('DELE 1'), /^-ERR command refused by policy/);
    const n = numberOf('eicar');
    const direct = byNumber.get(n)?.direct as Buffer;
    const raw = await c.multi(`TOP ${n} 10000`);
    assert.equal(sha256(raw.body), sha256(direct), 'TOP unscanned: as the server sent it');
    const scanned = await c.multi(`RETR ${n}`);
    assert.notEqual(sha256(scanned.body), sha256(direct));
    await c.quit();
  });

  test('keep-alive: during a held-up scan the client gets +OK and unchangeable header lines, no body byte; then the rewritten rest', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let held = 0;
    const slow: ScanService = {
      wantsHash: false,
      engineLikely: true,
      concurrency: 1,
      prefersFiles: () => false,
      close: async () => undefined,
      scan: async (req) => {
        held++;
        await gate; // the first scan waits until the test has seen the early lines
        return scanner.scan(req);
      },
    };
    const ka = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, 'keep-alive': { after: '20ms', interval: '20ms', 'max-lines': 3 } }, slow);
    const c = await Pop3TestClient.connect(ka);
    await c.login('alice', 'alice-pw');
    const n = numberOf('eicar');
    const direct = byNumber.get(n)?.direct as Buffer;
    c.send(`RETR ${n}\r\n`);
    assert.equal(await c.line(), '+OK message follows (scanned by avgate)');
    const early = [await c.line(), await c.line(), await c.line()];
    // The scan is still held: these lines came before any verdict, and they are the message's first lines.
    assert.equal(held, 1);
    assert.equal(`${early.join('\r\n')}\r\n`, direct.subarray(0, Buffer.byteLength(`${early.join('\r\n')}\r\n`)).toString('latin1'));
    assert.ok(early.every((l) => !/^(content-|mime-version)/i.test(l)));
    release();
    const rest = await c.body();
    const whole = Buffer.concat([Buffer.from(`${early.join('\r\n')}\r\n`, 'latin1'), rest]);
    await checkRewritten('eicar', whole, byNumber.get(n)?.listed as number);
    await c.quit();
  });

  test('avgate serve: the POP3 proxy on pop3ProxyPort; a missing replacement file stops startup with the key', async () => {
    const stateDir = join(dir, 'serve');
    const av = await startAvgatePeer({ clamd, stateDir, pop3Yaml: `upstream: 127.0.0.1:${dovecot.pop3Port}` });
    try {
      assert.ok(av.pop3ProxyPort !== null && av.pop3ProxyPort > 0);
      const n = numberOf('nested');
      const got = await curl(`pop3://127.0.0.1:${av.pop3ProxyPort}/${n}`, 'alice', 'alice-pw');
      await checkRewritten('nested', got, byNumber.get(n)?.listed as number);
      assert.ok((av.pop3?.server.counters.replaced ?? 0) >= 1);
      // Every document scan is a statistics event with source pop3, the infected one found.
      await av.stats?.flush();
      const pop3Events = ((await av.stats?.statusesBySource({ from: 0, to: Date.now() + 60_000 })) ?? []).filter((r) => r.source === 'pop3');
      assert.ok(pop3Events.some((r) => r.status === 'found' && r.count >= 1), JSON.stringify(pop3Events));
      assert.ok(pop3Events.some((r) => r.status === 'free' && r.count >= 1), JSON.stringify(pop3Events));
    } finally {
      await av.stop();
    }
    await assert.rejects(
      startAvgatePeer({ clamd, stateDir, pop3Yaml: `replacement: ${join(dir, 'no-such-notice.txt')}` }),
      /pop3-proxy\.replacement: cannot read the replacement file .*no-such-notice\.txt/,
    );
  });

  test('max-connections: one more client gets -ERR and is closed; a silent client is closed after timeouts.idle', async () => {
    const small = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, 'max-connections': 1, timeouts: { idle: '300ms' } });
    const first = await Pop3TestClient.connect(small);
    assert.match(first.greeting, /^\+OK/);
    const second = await Pop3TestClient.connect(small);
    assert.match(second.greeting, /^-ERR too many connections/);
    assert.equal(await second.closed(), true);
    second.socket.destroy();
    // The first one says nothing: closed with -ERR after the idle timeout.
    assert.match(await first.line(), /^-ERR idle timeout/);
    assert.equal(await first.closed(), true);
    first.socket.destroy();
  });

  test('the Dovecot launcher serves IMAP too (curl imap:// directly)', async () => {
    const n = numberOf('plain');
    const got = await curl(`imap://127.0.0.1:${dovecot.imapPort}/INBOX;UID=${n}`, 'alice', 'alice-pw');
    assert.equal(sha256(got), sha256(byNumber.get(n)?.direct as Buffer));
  });

  test('max-message-size: a larger message is replaced unscanned by its header and the notice; the session goes on', async () => {
    const limited = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, 'max-message-size': '10KiB' });
    const c = await Pop3TestClient.connect(limited);
    await c.login('alice', 'alice-pw');
    const n = numberOf('bigvirus');
    const direct = byNumber.get(n)?.direct as Buffer;
    assert.ok(direct.length > 10 * 1024);
    const r = await c.multi(`RETR ${n}`);
    assert.match(r.status, /^\+OK/);
    const text = r.body.toString('utf8');
    assert.match(text, /larger than the scanning limit \(10240 bytes\) and was not scanned/);
    assert.match(text, /^Subject: test p-big\r\n/m);
    assert.ok(!r.body.includes(eicarBytes().toString('base64').slice(0, 40)));
    const docs = await partDigests(r.body);
    assert.equal(docs.length, 1);
    // The rest of the big answer was read and dropped: the next command is in step.
    assert.match(await c.command('STAT'), /^\+OK \d+ \d+/);
    const small = await c.multi(`RETR ${numberOf('plain')}`);
    assert.equal(sha256(small.body), sha256(byNumber.get(numberOf('plain'))?.direct as Buffer));
    await c.quit();
  });
  describe('STLS (pop3-proxy.tls)', () => {
    let cert: string;
    let key: string;
    before(async () => {
      ({ cert, key } = await selfSignedCert(dir));
    });

    /** Connects, reads the greeting, sends CAPA; returns the socket, a reader and the CAPA lines. */
    async function capaLines(port: number): Promise<{ socket: Socket; reader: LineReader; capa: string[] }> {
      const socket = connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      const reader = new LineReader(socket);
      await reader.readLine(4096, 10_000); // greeting
      socket.write('CAPA\r\n');
      return { socket, reader, capa: await multiLines(reader) };
    }

    async function multiLines(reader: LineReader): Promise<string[]> {
      const lines: string[] = [];
      for (;;) {
        const l = (await reader.readLine(4096, 10_000))?.toString('latin1');
        if (l === undefined || l === '.') return lines;
        lines.push(l);
      }
    }

    test('CAPA offers STLS; after it the session goes on in TLS (CAPA without STLS); curl --ssl-reqd gets the infected message rewritten', async () => {
      const port = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, tls: { cert, key } });
      const { socket, reader, capa } = await capaLines(port);
      assert.ok(capa.includes('STLS'), capa.join('|'));
      socket.write('STLS\r\n');
      assert.match((await reader.readLine(4096, 10_000))?.toString('latin1') ?? '', /^\+OK/);
      const { secure, reader: tr } = await clientTls(socket, reader);
      secure.write('CAPA\r\n');
      const again = await multiLines(tr);
      assert.match(again[0] ?? '', /^\+OK/);
      assert.ok(!again.includes('STLS'), 'not offered twice');
      secure.write('USER alice\r\n');
      assert.match((await tr.readLine(4096, 10_000))?.toString('latin1') ?? '', /^\+OK/);
      secure.end('QUIT\r\n');

      const n = numberOf('eicar');
      const { stdout } = await run('curl', ['-sS', '--max-time', '60', '--ssl-reqd', '-k', `pop3://alice:alice-pw@127.0.0.1:${port}/${n}`], { encoding: 'buffer', maxBuffer: 16 * 1024 * 1024 });
      await checkRewritten('eicar', stdout, byNumber.get(n)?.listed as number);
      // Sessions that moved to TLS are counted out when they end (the listener tracks the TCP sockets).
      const server = proxies.at(-1) as Pop3ProxyServer;
      for (let i = 0; i < 100 && server.counters.active > 0; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(server.counters.active, 0);
    });

    test('tls.required: no USER in clear, curl without TLS fails; commands sent in clear right behind STLS are never answered', async () => {
      const port = await proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, tls: { cert, key, required: true } });
      const c = await Pop3TestClient.connect(port);
      assert.match(await c.command('USER alice'), /^-ERR TLS required/);
      await c.quit();
      await assert.rejects(run('curl', ['-sS', '--max-time', '30', `pop3://alice:alice-pw@127.0.0.1:${port}/1`]));

      // STLS and USER in one packet: the USER is plain text the client sent before TLS (RFC 2595 / CVE-2011-0411 kind of injection).
      const socket = connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      const reader = new LineReader(socket);
      await reader.readLine(4096, 10_000);
      socket.write('STLS\r\nUSER alice\r\n');
      assert.match((await reader.readLine(4096, 10_000))?.toString('latin1') ?? '', /^\+OK begin TLS/);
      const { secure, reader: tr } = await clientTls(socket, reader);
      // Had the USER been taken, this PASS would log in.
      secure.write('PASS alice-pw\r\n');
      assert.match((await tr.readLine(4096, 10_000))?.toString('latin1') ?? '', /^-ERR/);
      secure.destroy();
    });

    test('without pop3-proxy.tls STLS is refused as before and not offered', async () => {
      const { socket, reader, capa } = await capaLines(fixedPort);
      assert.ok(!capa.includes('STLS'));
      socket.write('STLS\r\n');
      assert.match((await reader.readLine(4096, 10_000))?.toString('latin1') ?? '', /^-ERR STLS is not available/);
      socket.destroy();
    });
  });
});

describe('POP3 proxy to a TLS upstream (Dovecot with ssl: STLS and pop3s)', () => {
  let clamd: TestClamd;
  let dovecot: Dovecot;
  let dir: string;
  let scanner: Scanner;
  let pop3sPort: number;
  let cert: string;
  const proxies: Pop3ProxyServer[] = [];
  const clean = mailWith('tls-clean', [{ name: 'a.txt', type: 'text/plain', data: Buffer.from('nothing to see\r\n') }]);
  const infected = mailWith('tls-eicar', [{ name: 'e.com', type: 'application/octet-stream', data: eicarBytes() }]);

  const proxy = (yaml: Record<string, unknown>): Promise<number> =>
    listenPop3Proxy({ upstream: `127.0.0.1:${dovecot.pop3Port}`, 'tls-ca': cert, ...yaml }, { scanner, spoolDir: join(dir, 'spool') }, proxies);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-pop3tls-'));
    clamd = await startTestClamd();
    ({ dovecot, tlsPort: pop3sPort, cert } = await startTlsDovecot(dir, 'pop3', { users: [{ user: 'alice', password: 'alice-pw' }] }));
    await dovecot.deliver('alice', clean);
    await dovecot.deliver('alice', infected);
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
  });
  after(async () => {
    for (const p of proxies) await p.close(100);
    await scanner?.close();
    await dovecot?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** Both messages through the proxy: the clean one as delivered, the infected one rewritten. */
  async function fetchBoth(port: number): Promise<void> {
    const got = await Promise.all([1, 2].map((n) => curl(`pop3://127.0.0.1:${port}/${n}`, 'alice', 'alice-pw')));
    const byContent = got.find((b) => b.includes('tls-clean')) as Buffer;
    const rewritten = got.find((b) => b.includes('tls-eicar')) as Buffer;
    assert.equal(sha256(byContent), sha256(clean));
    assert.ok(!rewritten.includes(eicarBytes().toString('base64').slice(0, 40)), 'EICAR removed');
    assert.match(rewritten.toString('utf8'), /replaced by avgate/);
  }

  test('upstream-tls: starttls (STLS, certificate checked with tls-ca): messages scanned; Dovecot saw the login in TLS', async () => {
    const port = await proxy({ 'upstream-tls': 'starttls' });
    const before = dovecot.logTail(1 << 20).split('\n').filter((l) => /pop3-login: Info: Login: user=<alice>.*, TLS, /.test(l)).length;
    await fetchBoth(port);
    const after = dovecot.logTail(1 << 20).split('\n').filter((l) => /pop3-login: Info: Login: user=<alice>.*, TLS, /.test(l)).length;
    assert.ok(after >= before + 2, `logins in TLS: ${before} -> ${after}\n${dovecot.logTail(2000)}`);
  });

  test('upstream-tls: tls (implicit, pop3s): messages scanned', async () => {
    await fetchBoth(await proxy({ 'upstream-tls': 'tls', upstream: `127.0.0.1:${pop3sPort}` }));
  });

  test('an upstream certificate that is not trusted: -ERR, no login relayed; tls-verify: false accepts it', async () => {
    const port = await proxy({ 'upstream-tls': 'starttls', 'tls-ca': null });
    const c = await Pop3TestClient.connect(port).catch((err: Error) => err);
    const greeting = c instanceof Error ? c.message : c.greeting;
    assert.match(greeting, /-ERR .*(?:TLS|certificate)/i);
    await fetchBoth(await proxy({ 'upstream-tls': 'tls', upstream: `127.0.0.1:${pop3sPort}`, 'tls-ca': null, 'tls-verify': false }));
  });

  test('tls-ca is read once at start: an unreadable file stops the proxy, naming the key', async () => {
    await assert.rejects(proxy({ 'upstream-tls': 'tls', 'tls-ca': join(dir, 'missing-ca.pem') }), (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONFIG' && /pop3-proxy\.tls-ca: cannot read .*ENOENT/.test(err.message));
  });
});
