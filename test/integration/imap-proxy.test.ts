import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { imapProxySchema, type ImapProxyConfig } from '../../src/config/imap-schema.js';
import { Listeners } from '../../src/core/listen.js';
import { createLogger, silentLogger, type Logger } from '../../src/core/logging.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { ImapProxyServer } from '../../src/protocols/imap/server.js';
import { EncryptedQuarantine } from '../../src/quarantine/store.js';
import type { Quarantine } from '../../src/quarantine/types.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';
import { capturedLog } from '../helpers/log.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestDovecot, startTlsDovecot } from '../helpers/dovecot.js';
import { closedPort, startFaultServer } from '../helpers/fault-server.js';
import { fetchLiterals, ImapTestClient } from '../helpers/imap-client.js';
import { mailWith } from '../helpers/mail.js';
import { waitFor } from '../helpers/wait.js';
import { selfSignedCert } from '../helpers/tls.js';
import { type CorpusMessage, deadScanner, mailCorpus, partDigests, proxyScanner } from '../helpers/mailproxy.js';

const run = promisify(execFile);

/** EICAR's text must never reach a client through the proxy. */
const EICAR_MARK = 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE';

describe('imap proxy (Dovecot, clamd)', () => {
  let dir: string;
  let clamd: TestClamd;
  let dovecot: Dovecot;
  let scanner: Scanner;
  const proxies: ImapProxyServer[] = [];
  let port: number;
  const corpus: CorpusMessage[] = mailCorpus('imap');

  async function startProxy(over: Record<string, unknown>, withScanner: Scanner = scanner, quarantine: Quarantine | null = null, log?: Logger): Promise<{ proxy: ImapProxyServer; port: number }> {
    const config: ImapProxyConfig = imapProxySchema.parse({ listen: '127.0.0.1:0', upstream: `127.0.0.1:${dovecot.imapPort}`, ...over });
    const proxy = new ImapProxyServer(config, {
      stateDir: dir,
      scannerFor: () => ({ scanner: withScanner }),
      log: log ?? (process.env.IMAP_DEBUG_LOG ? createLogger({ level: 'debug', file: process.env.IMAP_DEBUG_LOG }) : silentLogger()),
      quarantine,
    });
    proxies.push(proxy);
    return { proxy, port: (await proxy.listen()).port };
  }

  async function session(p = port): Promise<ImapTestClient> {
    const { client, greeting } = await ImapTestClient.connect(p);
    assert.match(greeting.text, /^\* OK/);
    await client.login(dovecot.user, dovecot.password);
    return client;
  }

  /** A FETCH straight from Dovecot (the reference for byte identity). */
  async function direct(command: string, mailbox = 'INBOX'): Promise<Array<{ seq: number; item: string; data: Buffer }>> {
    const c = await session(dovecot.imapPort);
    try {
      await c.command(`SELECT ${mailbox}`);
      const r = await c.command(command);
      assert.match(r.tagged, / OK/);
      return fetchLiterals(r.untagged);
    } finally {
      c.close();
    }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-imap-'));
    clamd = await startTestClamd();
    dovecot = await startTestDovecot();
    for (const m of corpus) {
      await dovecot.deliver(dovecot.user, m.raw);
      // Dovecot numbers new mail in directory order: let it take each one before the next, so
      // sequence number i + 1 is corpus[i].
      const c = await session(dovecot.imapPort);
      await c.command('STATUS INBOX (MESSAGES)');
      c.close();
    }
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
    port = (await startProxy({})).port;
  });

  after(async () => {
    for (const p of proxies) await p.close(100);
    await scanner?.close();
    await dovecot?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('greeting and CAPABILITY do not offer what the proxy cannot carry', async () => {
    const c = await session();
    try {
      const r = await c.command('CAPABILITY');
      const caps = r.untagged.find((u) => u.text.startsWith('* CAPABILITY'));
      assert.ok(caps);
      assert.match(caps.text, /IMAP4rev1/);
      assert.doesNotMatch(caps.text, /STARTTLS|COMPRESS=|CATENATE|PREVIEW|SNIPPET/);
      // COMPRESS asked anyway is refused, and the session goes on.
      assert.match((await c.command('COMPRESS DEFLATE')).tagged, /^t\d+ NO /);
      assert.match((await c.command('NOOP')).tagged, / OK/);
    } finally {
      c.close();
    }
  });

  test('PREVIEW and SNIPPET asked anyway: the preview comes back empty (quoted or literal), never the message text', async () => {
    const eicar = eicarBytes().toString('latin1');
    // Dovecot sends an ASCII preview as a quoted string, a UTF-8 one as a literal.
    const messages = [
      Buffer.from(`From: a@example.org\r\nTo: b@example.org\r\nSubject: preview\r\n\r\n${eicar}\r\n`, 'latin1'),
      Buffer.concat([Buffer.from('From: a@example.org\r\nTo: b@example.org\r\nSubject: preview 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße ', 'utf8'), Buffer.from(`${eicar}\r\n`, 'latin1')]),
    ];
    // Stored directly (the proxy refuses infected uploads), in a mailbox of its own: the other tests count what INBOX holds.
    const d = await session(dovecot.imapPort);
    try {
      assert.match((await d.command('CREATE Previews')).tagged, / OK/);
      for (const m of messages) assert.match((await d.append('Previews', m)).tagged, / OK/);
      await d.command('SELECT Previews');
      const r = await d.command('FETCH 1:2 (PREVIEW)');
      assert.ok(r.untagged.some((u) => u.text.includes(EICAR_MARK)) && r.untagged.some((u) => u.literals.some((l) => l.includes(EICAR_MARK))), 'Dovecot previews the text, quoted and as a literal');
    } finally {
      d.close();
    }
    const c = await session();
    try {
      await c.command('SELECT Previews');
      const asked: Array<[string, RegExp]> = [
        ['FETCH 1:2 (UID PREVIEW FLAGS)', /^\* [12] FETCH \(UID [12] PREVIEW "" FLAGS \([^)]*\)\)$/],
        ['UID FETCH 1:* (PREVIEW (LAZY))', /^\* [12] FETCH \((?:UID [12] )?PREVIEW ""(?: UID [12])?\)$/],
        ['FETCH 1:2 (SNIPPET (LAZY=FUZZY) UID)', /^\* [12] FETCH \(SNIPPET \(FUZZY ""\) UID [12]\)$/],
        ['FETCH 1:* SNIPPET', /^\* [12] FETCH \(SNIPPET \(FUZZY ""\)\)$/],
      ];
      for (const [command, shape] of asked) {
        const r = await c.command(command);
        assert.match(r.tagged, / OK/, command);
        const fetched = r.untagged.filter((u) => / FETCH /.test(u.text));
        assert.equal(fetched.length, 2, command);
        for (const u of fetched) {
          assert.match(u.text, shape, command);
          assert.equal(u.literals.length, 0);
        }
      }
      assert.match((await c.command('NOOP')).tagged, / OK/);
      assert.ok(!Buffer.concat(c.received).toString('latin1').includes(EICAR_MARK), 'no preview text reached the client');
    } finally {
      c.close();
    }
  });

  test('FETCH 1:* BODY[]: clean messages byte-identical, infected parts replaced, counts right', async () => {
    const reference = await direct('FETCH 1:* BODY.PEEK[]');
    const c = await session();
    try {
      await c.command('SELECT INBOX');
      const r = await c.command('FETCH 1:* BODY.PEEK[]');
      assert.match(r.tagged, / OK/);
      const got = fetchLiterals(r.untagged);
      assert.equal(got.length, corpus.length);
      for (const [i, m] of corpus.entries()) {
        const mine = got[i] as { item: string; data: Buffer };
        const ref = reference[i] as { data: Buffer };
        assert.equal(mine.item, 'BODY[]');
        assert.ok(ref.data.equals(m.raw), `${m.name}: Dovecot stores the message as delivered`);
        if (m.infected.length === 0) {
          assert.ok(mine.data.equals(ref.data), `${m.name}: clean message byte-identical`);
          continue;
        }
        assert.ok(!mine.data.includes(EICAR_MARK), `${m.name}: no EICAR left`);
        const before = await partDigests(ref.data);
        const afterParts = await partDigests(mine.data);
        for (const p of before) {
          const now = afterParts.find((q) => q.key === p.key);
          if (m.infected.includes(p.key)) {
            assert.ok(!now || now.sha256 !== p.sha256, `${m.name}: ${p.key} replaced`);
          } else if (!m.infected.some((k) => p.key.includes(k)) && p.contentType !== 'message/rfc822') {
            // Clean documents keep their decoded bytes (inside a replaced forwarded mail only the infected one changes).
            if (now) assert.equal(now.sha256, p.sha256, `${m.name}: clean part ${p.key} unchanged`);
          }
        }
        assert.match(mine.data.toString('utf8'), /replaced by avgate/);
      }
    } finally {
      c.close();
    }
  });

  test('UID FETCH of single parts (BODY.PEEK[2], BODY[3]) and RFC822 of the clean message', async () => {
    const eicarSeq = corpus.findIndex((m) => m.name === 'eicar') + 1;
    const cleanSeq = corpus.findIndex((m) => m.name === 'clean') + 1;
    const ref = await direct(`FETCH ${eicarSeq} (BODY.PEEK[2] BODY.PEEK[3])`);
    const refClean = await direct(`FETCH ${cleanSeq} RFC822`);
    const c = await session();
    try {
      await c.command('SELECT INBOX');
      const r = await c.command(`UID FETCH ${eicarSeq} (UID BODY.PEEK[2] BODY.PEEK[3])`);
      assert.match(r.tagged, / OK/);
      const parts = fetchLiterals(r.untagged);
      const p2 = parts.find((p) => p.item === 'BODY[2]');
      const p3 = parts.find((p) => p.item === 'BODY[3]');
      assert.ok(p2 && p3);
      // The EICAR attachment (base64 on the wire) is replaced by the notice, still base64.
      const decoded = Buffer.from(p2.data.toString('latin1'), 'base64').toString('utf8');
      assert.match(decoded, /replaced by avgate/);
      assert.ok(!decoded.includes(EICAR_MARK));
      assert.ok(p3.data.equals((ref.find((x) => x.item === 'BODY[3]') as { data: Buffer }).data), 'clean part byte-identical');
      const rc = await c.command(`FETCH ${cleanSeq} RFC822`);
      const lit = fetchLiterals(rc.untagged);
      assert.equal(lit[0]?.item, 'RFC822');
      assert.ok(lit[0]?.data.equals((refClean[0] as { data: Buffer }).data));
    } finally {
      c.close();
    }
  });

  test('BODY[TEXT], BINARY[2] and a partial BODY[]<0.200> are scanned as documents', async () => {
    const eicarSeq = corpus.findIndex((m) => m.name === 'eicar') + 1;
    const cleanSeq = corpus.findIndex((m) => m.name === 'clean') + 1;
    const ref = await direct(`FETCH ${eicarSeq} (BODY.PEEK[TEXT] BODY.PEEK[3])`);
    const refPartial = await direct(`FETCH ${cleanSeq} BODY.PEEK[]<0.200>`);
    const c = await session();
    try {
      await c.command('SELECT INBOX');
      const r = await c.command(`FETCH ${eicarSeq} (BODY.PEEK[TEXT] BINARY.PEEK[2])`);
      assert.match(r.tagged, / OK/);
      const lits = fetchLiterals(r.untagged);
      const text = lits.find((l) => l.item === 'BODY[TEXT]');
      const bin = lits.find((l) => l.item === 'BINARY[2]');
      assert.ok(text && bin, JSON.stringify(lits.map((l) => l.item)));
      const refText = (ref.find((l) => l.item === 'BODY[TEXT]') as { data: Buffer }).data;
      const eicarB64 = eicarBytes().toString('base64').slice(0, 40);
      assert.ok(refText.includes(eicarB64));
      assert.ok(!text.data.includes(eicarB64), 'the EICAR attachment is gone from BODY[TEXT]');
      // The clean attachment's encoded bytes are still there, as they were.
      const clean3 = (ref.find((l) => l.item === 'BODY[3]') as { data: Buffer }).data;
      assert.ok(text.data.includes(clean3.subarray(0, clean3.length - 2)));
      assert.match(text.data.toString('utf8'), /replaced by avgate/);
      // BINARY[2] is the decoded attachment: replaced by the plain notice.
      assert.ok(!bin.data.includes(EICAR_MARK));
      assert.match(bin.data.toString('utf8'), /replaced by avgate/);
      const p = await c.command(`FETCH ${cleanSeq} BODY.PEEK[]<0.200>`);
      const [partial] = fetchLiterals(p.untagged);
      assert.equal(partial?.item, 'BODY[]<0>');
      assert.equal(partial.data.length, 200);
      assert.ok(partial.data.equals((refPartial[0] as { data: Buffer }).data));
    } finally {
      c.close();
    }
  });

  test('partial fetches: clean pieces cut anywhere pass unchanged, an infected piece is replaced', async () => {
    const cleanSeq = corpus.findIndex((m) => m.name === 'clean') + 1;
    const eicarSeq = corpus.findIndex((m) => m.name === 'eicar') + 1;
    const items = `BODY.PEEK[]<0.2000> BODY.PEEK[]<1500.3001> BODY.PEEK[3]<0.1001>`;
    const ref = await direct(`FETCH ${cleanSeq} (${items})`);
    assert.equal(ref.length, 3);
    const c = await session();
    try {
      await c.command('SELECT INBOX');
      const r = await c.command(`FETCH ${cleanSeq} (${items})`);
      const got = fetchLiterals(r.untagged);
      assert.equal(got.length, 3);
      for (const [i, g] of got.entries()) assert.ok(g.data.equals((ref[i] as { data: Buffer }).data), `${g.item} unchanged`);
      const bad = await c.command(`FETCH ${eicarSeq} BODY.PEEK[2]<0.5000>`);
      const [piece] = fetchLiterals(bad.untagged);
      assert.equal(piece?.item, 'BODY[2]<0>');
      assert.match(Buffer.from(piece.data.toString('latin1'), 'base64').toString('utf8'), /replaced by avgate/);
    } finally {
      c.close();
    }
  });

  test('max-message-size: a larger fetched message is replaced by a notice unscanned', async () => {
    const small = await startProxy({ 'max-message-size': '1KiB' });
    const c = await session(small.port);
    try {
      await c.command('SELECT INBOX');
      const seq = corpus.findIndex((m) => m.name === 'clean') + 1;
      const r = await c.command(`FETCH ${seq} BODY.PEEK[]`);
      const [lit] = fetchLiterals(r.untagged);
      assert.match(lit?.data.toString('utf8') ?? '', /larger than max-message-size/);
      assert.match(r.tagged, / OK/);
    } finally {
      c.close();
    }
  });

  test('stop: an idle session gets * BYE', async () => {
    const p = await startProxy({});
    const c = await session(p.port);
    await p.proxy.close(1000);
    const bye = await c.next();
    assert.match(bye.text, /^\* BYE /);
    c.close();
  });

  test('reload: a session of the previous configuration gets a BYE that says the proxy is reloading (the port is served on); a stop says shutting down', async () => {
    const generation = async (listeners: Listeners) => {
      const proxy = new ImapProxyServer(imapProxySchema.parse({ listen: '127.0.0.1:0', upstream: `127.0.0.1:${dovecot.imapPort}` }), { stateDir: dir, scannerFor: () => ({ scanner }), log: silentLogger(), quarantine: null, listeners });
      proxies.push(proxy);
      return { proxy, port: (await proxy.listen()).port };
    };
    const first = new Listeners();
    const old = await generation(first);
    const before = await session(old.port);
    // The next generation takes the listening socket over, as serve's reload does.
    const nextListeners = new Listeners(first);
    const next = await generation(nextListeners);
    assert.equal(next.port, old.port);
    assert.deepEqual(await nextListeners.takeOver(), []);
    try {
      await old.proxy.close(5000);
      assert.match((await before.next()).text, /^\* BYE \[UNAVAILABLE\] The proxy is reloading, reconnect now/);
      const after = await session(next.port);
      assert.match((await after.command('NOOP')).tagged, / OK/);
      await next.proxy.close(5000);
      assert.match((await after.next()).text, /^\* BYE \[UNAVAILABLE\] Server shutting down/);
      after.close();
    } finally {
      before.close();
    }
  });

  test('stop: a FETCH being scanned is answered before the BYE; a session in IDLE gets it at once; a command sent meanwhile is not relayed', async () => {
    // Scans held until the test lets them go: the FETCH is under way when close() starts.
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    let scans = 0;
    const slow = Object.create(scanner) as Scanner;
    slow.scan = async (req) => {
      scans++;
      await held;
      return scanner.scan(req);
    };
    const p = await startProxy({}, slow);
    const busy = await session(p.port);
    const idle = await session(p.port);
    const appending = await session(p.port);
    try {
      await busy.command('SELECT INBOX');
      await idle.command('SELECT INBOX');
      // A mailbox of its own: the other tests count what INBOX holds.
      assert.match((await appending.command('CREATE Drain')).tagged, / OK/);
      idle.send('i1 IDLE\r\n');
      assert.match((await idle.next()).text, /^\+ /);
      const eicarSeq = corpus.findIndex((m) => m.name === 'eicar') + 1;
      busy.send(`f1 FETCH ${eicarSeq} BODY.PEEK[]\r\n`);
      for (let i = 0; i < 200 && scans === 0; i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok(scans > 0, 'the FETCH is being scanned');
      // An APPEND being scanned too (its tag goes upstream only once it is clean).
      const scansBefore = scans;
      const appended = appending.append('Drain', mailWith('drain-append', [{ name: 'ok.txt', type: 'text/plain', data: Buffer.from('fine\n') }]), { plus: true });
      for (let i = 0; i < 200 && scans === scansBefore; i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok(scans > scansBefore, 'the APPEND is being scanned');
      const closing = p.proxy.close(20_000);
      // IDLE only: ended at once.
      assert.match((await idle.next()).text, /^\* BYE \[UNAVAILABLE\] Server shutting down/);
      // A command sent while the FETCH is under way is not relayed: no answer but the BYE.
      busy.send('n1 NOOP\r\n');
      await new Promise((r) => setTimeout(r, 200));
      release();
      const rest = [];
      for (;;) {
        const r = await busy.next();
        rest.push(r);
        if (/^\* BYE /.test(r.text)) break;
      }
      const [lit] = fetchLiterals(rest);
      assert.ok(lit, 'the FETCH response was relayed whole');
      assert.ok(!lit.data.includes(EICAR_MARK), 'and scanned');
      assert.match(lit.data.toString('latin1'), /eicar\.com/);
      assert.ok(rest.some((r) => /^f1 OK/.test(r.text)), 'its tagged OK came before the BYE');
      assert.ok(!rest.some((r) => /^n1 /.test(r.text)), 'NOOP sent meanwhile: not relayed');
      assert.match((rest.at(-1) as { text: string }).text, /^\* BYE \[UNAVAILABLE\] Server shutting down/);
      // The APPEND finished (Dovecot took it), then the BYE.
      assert.match((await appended).tagged, /^t\d+ OK/);
      assert.match((await appending.next()).text, /^\* BYE \[UNAVAILABLE\] Server shutting down/);
      await closing;
    } finally {
      release();
      busy.close();
      idle.close();
      appending.close();
    }
  });

  test('the log has a line per session (user, fetched content scanned and replaced, how it ended) and one per login the server refused', async () => {
    const { log, lines } = capturedLog();
    const p = await startProxy({}, scanner, null, log);
    const { client: wrong } = await ImapTestClient.connect(p.port);
    assert.match((await wrong.command(`LOGIN ${dovecot.user} not-the-password`)).tagged, / NO /);
    wrong.close();
    const c = await session(p.port);
    await c.command('SELECT INBOX');
    const eicarSeq = corpus.findIndex((m) => m.name === 'eicar') + 1;
    await c.command(`FETCH ${eicarSeq} BODY.PEEK[]`);
    await c.command('LOGOUT');
    c.close();
    await waitFor('two session lines', async () => (lines.filter((l) => l['msg'] === 'imap: session ended').length === 2 ? true : null), 10_000);
    const refused = lines.find((l) => l['msg'] === 'imap: login refused by the server');
    assert.equal(refused?.['user'], dovecot.user);
    assert.equal(refused?.['client'], '127.0.0.1');
    const ended = lines.filter((l) => l['msg'] === 'imap: session ended');
    const mine = ended.find((l) => l['user'] === dovecot.user);
    assert.ok(mine, JSON.stringify(ended));
    assert.deepEqual([mine['scanned'], mine['replaced'], mine['failedLogins']], [1, 1, 0]);
    assert.equal(ended.find((l) => l['user'] === null)?.['failedLogins'], 1);
    await p.proxy.close(1000);
  });

  test('pipelined commands: every command answered, infected content replaced, framing intact', async () => {
    const c = await session();
    try {
      await c.command('SELECT INBOX');
      c.send('p1 NOOP\r\np2 FETCH 1:* (UID BODY.PEEK[])\r\np3 UID FETCH 1:* (FLAGS)\r\np4 NOOP\r\n');
      // Dovecot may finish pipelined commands out of order (NOOP waits for the FETCH): collect all four.
      const tagged = new Map<string, string>();
      const untagged = [];
      while (tagged.size < 4) {
        const r = await c.next();
        const m = /^(p\d) /.exec(r.text);
        if (m) tagged.set(m[1] as string, r.text);
        else untagged.push(r);
      }
      for (const t of ['p1', 'p2', 'p3', 'p4']) assert.match(tagged.get(t) ?? '', new RegExp(`^${t} OK`));
      const lits = fetchLiterals(untagged);
      assert.equal(lits.length, corpus.length);
      for (const l of lits) assert.ok(!l.data.includes(EICAR_MARK));
      assert.equal(untagged.filter((u) => /FLAGS \(/.test(u.text)).length, corpus.length);
    } finally {
      c.close();
    }
  });

  test('command-acl: deny answers NO [NOPERM] (per login name); use-antivirus false relays unscanned', async () => {
    const acl = await startProxy({
      'command-acl': [
        { name: 'no-expunge', match: { users: [dovecot.user], commands: ['EXPUNGE'] }, action: 'deny' },
        { name: 'raw-fetch', match: { commands: ['FETCH'] }, 'use-antivirus': false },
      ],
    });
    const eicarSeq = corpus.findIndex((m) => m.name === 'eicar') + 1;
    const ref = await direct(`FETCH ${eicarSeq} BODY.PEEK[]`);
    const c = await session(acl.port);
    try {
      await c.command('SELECT INBOX');
      assert.match((await c.command('EXPUNGE')).tagged, /^t\d+ NO \[NOPERM\]/);
      const r = await c.command(`UID FETCH ${eicarSeq} BODY.PEEK[]`);
      const [lit] = fetchLiterals(r.untagged);
      assert.ok(lit?.data.equals((ref[0] as { data: Buffer }).data), 'relayed as it is');
    } finally {
      c.close();
    }
  });

  test('max-connections: one session more gets * BYE at once', async () => {
    const one = await startProxy({ 'max-connections': 1 });
    const c = await session(one.port);
    try {
      const { client, greeting } = await ImapTestClient.connect(one.port);
      assert.match(greeting.text, /^\* BYE \[UNAVAILABLE\]/);
      client.close();
      assert.match((await c.command('NOOP')).tagged, / OK/);
    } finally {
      c.close();
    }
  });

  test('quarantine: [infected] keeps an infected message fetched whole (BODY.PEEK[]) as Dovecot holds it; a single part, a partial fetch or BINARY[] (the decoded copy) adds nothing', async () => {
    const q = await EncryptedQuarantine.open({ dir: join(dir, 'quarantine'), keyFile: join(dir, 'quarantine.key') });
    try {
      const { port: qport } = await startProxy({ quarantine: ['infected'] }, scanner, q);
      const seq = corpus.findIndex((m) => m.name === 'eicar') + 1;
      const c = await session(qport);
      try {
        await c.command('SELECT INBOX');
        // The part keeps its transfer encoding (base64): the notice is decoded to be read.
        const part = Buffer.from(fetchLiterals((await c.command(`FETCH ${seq} (BODY.PEEK[2])`)).untagged)[0]?.data.toString('latin1') ?? '', 'base64').toString('utf8');
        assert.match(part, /replaced by avgate/, 'part 2 (eicar.com) was replaced');
        await c.command(`FETCH ${seq} (BODY.PEEK[]<0.400>)`);
        // BINARY[] is Dovecot's decoded copy (Content-Transfer-Encoding: binary): scanned and replaced, not kept.
        const [bin] = fetchLiterals((await c.command(`FETCH ${seq} (BINARY.PEEK[])`)).untagged);
        assert.ok(bin && !bin.data.includes(EICAR_MARK), 'BINARY[] scanned');
        assert.match(bin.data.toString('utf8'), /replaced by avgate/);
        assert.equal((await q.list()).length, 0, 'parts, partial fetches and BINARY[] are not kept');
        const r = await c.command(`FETCH ${seq} (BODY.PEEK[])`);
        assert.match(r.tagged, / OK/);
      } finally {
        c.close();
      }
      const [want] = await direct(`FETCH ${seq} (BODY.PEEK[])`);
      const items = await q.list();
      assert.equal(items.length, 1);
      const item = items[0] as (typeof items)[number];
      assert.equal(item.source, 'imap');
      assert.deepEqual(item.statuses, ['infected']);
      assert.deepEqual(item.recipients, [dovecot.user]);
      assert.equal(item.fileName, 'eicar.com');
      assert.equal(item.sha256, createHash('sha256').update((want as { data: Buffer }).data).digest('hex'), 'kept as Dovecot holds it');
    } finally {
      await q.close();
    }
  });

  test('curl imap:// through the proxy: clean message identical, infected one rewritten', async () => {
    const cleanUid = corpus.findIndex((m) => m.name === 'clean') + 1;
    const eicarUid = corpus.findIndex((m) => m.name === 'nested') + 1;
    const auth = `${dovecot.user}:${dovecot.password}`;
    const curl = async (p: number, uid: number) => (await run('curl', ['-sS', '--max-time', '60', `imap://127.0.0.1:${p}/INBOX;UID=${uid}`, '-u', auth], { encoding: 'buffer', maxBuffer: 16 << 20 })).stdout;
    const cleanDirect = await curl(dovecot.imapPort, cleanUid);
    const cleanProxied = await curl(port, cleanUid);
    assert.ok(cleanDirect.length > 100, `direct curl gave ${cleanDirect.length} bytes`);
    assert.equal(cleanProxied.toString('latin1'), cleanDirect.toString('latin1'));
    const infectedDirect = await curl(dovecot.imapPort, eicarUid);
    const infectedProxied = await curl(port, eicarUid);
    assert.ok(infectedDirect.includes('Content-Type: message/rfc822'), 'direct curl gets the forwarded mail');
    assert.ok(!infectedProxied.includes(EICAR_MARK));
    assert.match(infectedProxied.toString('utf8'), /replaced by avgate/);
    assert.match(infectedProxied.toString('utf8'), /see attached/, 'the clean text part is still there');
  });

  test('APPEND: infected refused with NO (nothing reaches Dovecot), clean one lands byte-identical', async () => {
    const newDir = join(dovecot.maildir(dovecot.user), '.Uploads');
    const c = await session();
    try {
      assert.match((await c.command('CREATE Uploads')).tagged, / OK/);
      const infected = mailWith('up-bad', [{ name: 'e.com', type: 'application/octet-stream', data: eicarBytes() }]);
      const sync = await c.append('Uploads', infected);
      assert.equal(sync.continued, true, 'the proxy asked for the literal');
      assert.match(sync.tagged, /^t\d+ NO \[CANNOT\] .*virus/i);
      const plus = await c.append('Uploads', infected, { plus: true });
      assert.match(plus.tagged, /^t\d+ NO /);
      const st = await c.command('STATUS Uploads (MESSAGES)');
      assert.match(st.untagged.map((u) => u.text).join('\n'), /MESSAGES 0/);
      const clean = mailWith('up-good', [{ name: 'ok.txt', type: 'text/plain', data: Buffer.from('harmless\r\n') }]);
      const ok = await c.append('Uploads', clean);
      assert.match(ok.tagged, /^t\d+ OK/);
      const ok2 = await c.append('Uploads', clean, { plus: true });
      assert.match(ok2.tagged, /^t\d+ OK/);
    } finally {
      c.close();
    }
    // Checked at Dovecot directly: exactly the two clean messages, byte-identical.
    const expected = mailWith('up-good', [{ name: 'ok.txt', type: 'text/plain', data: Buffer.from('harmless\r\n') }]);
    const ref = await direct('FETCH 1:* BODY.PEEK[]', 'Uploads');
    assert.equal(ref.length, 2);
    for (const r of ref) assert.ok(r.data.equals(expected));
    const onDisk: Buffer[] = [];
    for (const sub of ['new', 'cur']) {
      for (const f of await readdir(join(newDir, sub)).catch(() => [] as string[])) onDisk.push(await readFile(join(newDir, sub, f)));
    }
    assert.equal(onDisk.length, 2);
    for (const d of onDisk) assert.ok(!d.includes(EICAR_MARK));
  });

  test('curl upload (APPEND) through the proxy: infected refused, clean stored', async () => {
    const auth = `${dovecot.user}:${dovecot.password}`;
    // curl wants to know the size before APPEND: a file (temporary, removed at once).
    const upload = async (message: Buffer) => {
      const file = join(dir, `upload-${Date.now()}.eml`);
      await writeFile(file, message, { mode: 0o600 });
      try {
        return await new Promise<{ code: number | null; stderr: string }>((resolve) => {
          const child = spawn('curl', ['-sS', '--max-time', '60', '-T', file, `imap://127.0.0.1:${port}/CurlBox`, '-u', auth]);
          let stderr = '';
          child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
          child.on('close', (code) => resolve({ code, stderr }));
        });
      } finally {
        await rm(file, { force: true });
      }
    };
    const c = await session();
    assert.match((await c.command('CREATE CurlBox')).tagged, / OK/);
    c.close();
    const bad = await upload(mailWith('curl-bad', [{ name: 'e.com', type: 'application/octet-stream', data: eicarBytes() }]));
    assert.notEqual(bad.code, 0, 'curl reports the refused upload');
    assert.match(bad.stderr, /APPEND|denied|refused|78|Upload failed/i);
    const good = mailWith('curl-good', [{ name: 'g.txt', type: 'text/plain', data: Buffer.from('good\r\n') }]);
    const ok = await upload(good);
    assert.equal(ok.code, 0, ok.stderr);
    const stored = await direct('FETCH 1:* BODY.PEEK[]', 'CurlBox');
    assert.equal(stored.length, 1);
    assert.ok(stored[0]?.data.equals(good));
  });

  test('APPEND over max-literal-size: NO [TOOBIG] before any byte, session goes on', async () => {
    const small = await startProxy({ 'max-literal-size': '1KiB' });
    const c = await session(small.port);
    try {
      const big = Buffer.alloc(4096, 0x61);
      const r = await c.append('INBOX', big);
      assert.equal(r.continued, false);
      assert.match(r.tagged, /^t\d+ NO \[TOOBIG\]/);
      const p = await c.append('INBOX', big, { plus: true });
      assert.match(p.tagged, /^t\d+ NO \[TOOBIG\]/);
      // A count past 2^53 is a literal too (not command text the server would take as one).
      c.send('t77 APPEND INBOX {99999999999999999999999}\r\n');
      assert.match((await c.until('t77')).tagged, /^t77 NO \[TOOBIG\]/);
      assert.match((await c.command('NOOP')).tagged, / OK/);
    } finally {
      c.close();
    }
  });

  test('malformed client input: overlong line gets BAD, garbage is answered, no crash', async () => {
    const strict = await startProxy({ 'max-line-length': '1KiB' });
    const c = await session(strict.port);
    try {
      c.send(`t90 NOOP ${'x'.repeat(5000)}\r\n`);
      const r = await c.next();
      assert.match(r.text, /^t90 BAD /);
      c.send('\x00\x01\x02 garbage {3}\r\nabc\r\n');
      c.send('t91 NOOP\r\n');
      const after = await c.until('t91');
      assert.match(after.tagged, /^t91 OK/);
      assert.equal(strict.proxy.openConnections, 1);
    } finally {
      c.close();
    }
  });

  test('random client bytes (fast-check): the proxy answers or closes, and keeps serving', async () => {
    const sample = fc.sample(fc.uint8Array({ minLength: 1, maxLength: 3000 }), { numRuns: 12, seed: 7 });
    for (const bytes of sample) {
      const { client } = await ImapTestClient.connect(port);
      client.send(Buffer.from(bytes));
      client.send('\r\nz1 LOGOUT\r\n');
      // Either LOGOUT is answered or the session is closed; never a hang or a crash.
      await client.until('z1', 10_000).catch((err: Error) => assert.match(err.message, /closed/));
      client.close();
    }
    const c = await session();
    assert.match((await c.command('NOOP')).tagged, / OK/);
    c.close();
  });

  test('synchronising literals of other commands pass through (LOGIN with literals, the server answers "+")', async () => {
    const { client: c } = await ImapTestClient.connect(port);
    try {
      c.send(`l1 LOGIN {${dovecot.user.length}}\r\n`);
      assert.match((await c.next()).text, /^\+/);
      c.send(`${dovecot.user} {${dovecot.password.length}}\r\n`);
      assert.match((await c.next()).text, /^\+/);
      c.send(`${dovecot.password}\r\n`);
      assert.match((await c.until('l1')).tagged, /^l1 OK/);
      assert.match((await c.command('SELECT INBOX')).tagged, / OK/);
    } finally {
      c.close();
    }
  });

  test('IDLE and DONE pass through', async () => {
    const c = await session();
    try {
      await c.command('SELECT INBOX');
      c.send('t50 IDLE\r\n');
      const cont = await c.next();
      assert.match(cont.text, /^\+ /);
      c.send('DONE\r\n');
      assert.match((await c.until('t50')).tagged, /^t50 OK/);
    } finally {
      c.close();
    }
  });

  test('upstream down: the client gets * BYE, the proxy keeps serving', async () => {
    const down = await startProxy({ upstream: `127.0.0.1:${await closedPort()}` });
    const { client, greeting } = await ImapTestClient.connect(down.port);
    assert.match(greeting.text, /^\* BYE /);
    client.close();
  });

  test('malformed server: an overlong line or a broken literal ends the session with BYE, never a crash', async () => {
    const fault = await startFaultServer((s) => {
      s.write('* OK fake ready\r\n');
      s.on('data', (d: Buffer) => {
        const tag = d.toString('latin1').split(' ')[0];
        if (d.includes('LOGIN')) s.write(`${tag} OK logged in\r\n`);
        else if (d.includes('LONG')) s.write(`* ${'y'.repeat(5000)}\r\n`);
        else if (d.includes('FETCH')) s.end(`* 1 FETCH (BODY[] {100}\r\nshort`);
      });
    });
    try {
      const f = await startProxy({ upstream: fault.address, 'max-line-length': '1KiB' });
      const c1 = await session(f.port);
      c1.send('t1 LONG\r\n');
      const bye = await c1.next();
      assert.match(bye.text, /^\* BYE /);
      c1.close();
      const c2 = await session(f.port);
      c2.send('t1 FETCH 1 BODY[]\r\n');
      await assert.rejects(c2.next(10_000), /closed/);
      c2.close();
      // The proxy still accepts sessions.
      const c3 = await session(f.port);
      c3.close();
    } finally {
      await fault.close();
    }
  });

  test('engine down with on-error: pass: content is relayed unscanned (configured)', async () => {
    const dead = deadScanner();
    try {
      const d = await startProxy({ 'on-error': 'pass' }, dead);
      const cleanSeq = corpus.findIndex((m) => m.name === 'clean') + 1;
      const ref = await direct(`FETCH ${cleanSeq} BODY.PEEK[]`);
      const c = await session(d.port);
      try {
        await c.command('SELECT INBOX');
        const r = await c.command(`FETCH ${cleanSeq} BODY.PEEK[]`);
        const [lit] = fetchLiterals(r.untagged);
        assert.ok(lit?.data.equals((ref[0] as { data: Buffer }).data));
      } finally {
        c.close();
      }
    } finally {
      await dead.close();
    }
  });

  test('a server that stops in the middle of a response: the session ends after timeouts.read', async () => {
    const fault = await startFaultServer((s) => {
      s.write('* OK fake ready\r\n');
      s.on('data', (d: Buffer) => {
        const tag = d.toString('latin1').split(' ')[0];
        if (d.includes('LOGIN')) s.write(`${tag} OK logged in\r\n`);
        else if (d.includes('FETCH')) s.write('* 1 FETCH (BODY[] {100}\r\nonly a few bytes'); // and silence
      });
    });
    try {
      const f = await startProxy({ upstream: fault.address, timeouts: { read: '300ms' } });
      const c = await session(f.port);
      c.send('t9 FETCH 1 BODY[]\r\n');
      await assert.rejects(c.next(10_000), /closed/);
      c.close();
    } finally {
      await fault.close();
    }
  });

  test('engine down: fetched content is replaced by a could-not-be-scanned notice, nothing hangs', async () => {
    const dead = deadScanner();
    try {
      const d = await startProxy({}, dead);
      const c = await session(d.port);
      try {
        await c.command('SELECT INBOX');
        const seq = corpus.findIndex((m) => m.name === 'eicar') + 1;
        const r = await c.command(`FETCH ${seq} BODY.PEEK[]`);
        assert.match(r.tagged, / OK/);
        const [lit] = fetchLiterals(r.untagged);
        assert.ok(lit);
        assert.ok(!lit.data.includes(EICAR_MARK));
        assert.match(lit.data.toString('utf8'), /could not be scanned/);
      } finally {
        c.close();
      }
    } finally {
      await dead.close();
    }
  });

  describe('STARTTLS towards the clients (imap-proxy.tls)', () => {
    let cert: string;
    let key: string;
    before(async () => {
      ({ cert, key } = await selfSignedCert(dir));
    });

    const capabilities = async (c: ImapTestClient): Promise<string> => (await c.command('CAPABILITY')).untagged.find((u) => u.text.startsWith('* CAPABILITY'))?.text ?? '';

    test('STARTTLS offered until used; the session goes on in TLS; curl --ssl-reqd gets the infected message rewritten', async () => {
      const { proxy, port: p } = await startProxy({ tls: { cert, key } });
      const { client: c, greeting } = await ImapTestClient.connect(p);
      try {
        assert.match(greeting.text, /^\* OK \[CAPABILITY [^\]]*\bSTARTTLS\b/, greeting.text);
        const before = await capabilities(c);
        assert.match(before, /\bSTARTTLS\b/);
        assert.doesNotMatch(before, /LOGINDISABLED/);
        assert.match(await c.startTls(), /^t\d+ OK /);
        assert.ok(c.socket.constructor.name === 'TLSSocket');
        const after = await capabilities(c);
        assert.match(after, /IMAP4rev1/);
        assert.doesNotMatch(after, /STARTTLS/, 'not offered twice');
        assert.match((await c.command('STARTTLS')).tagged, /^t\d+ BAD /);
        await c.login(dovecot.user, dovecot.password);
        await c.command('SELECT INBOX');
        const seq = corpus.findIndex((m) => m.name === 'eicar') + 1;
        const [lit] = fetchLiterals((await c.command(`FETCH ${seq} BODY.PEEK[]`)).untagged);
        assert.ok(lit && !lit.data.includes(EICAR_MARK));
        assert.match(lit.data.toString('utf8'), /replaced by avgate/);
      } finally {
        c.close();
      }
      const uid = corpus.findIndex((m) => m.name === 'nested') + 1;
      const { stdout } = await run('curl', ['-sS', '--max-time', '60', '--ssl-reqd', '-k', `imap://127.0.0.1:${p}/INBOX;UID=${uid}`, '-u', `${dovecot.user}:${dovecot.password}`], { encoding: 'buffer', maxBuffer: 16 << 20 });
      assert.ok(!stdout.includes(EICAR_MARK));
      assert.match(stdout.toString('utf8'), /replaced by avgate/);
      // Sessions that moved to TLS are counted out when they end (the listener tracks the TCP sockets).
      for (let i = 0; i < 100 && proxy.openConnections > 0; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(proxy.openConnections, 0);
    });

    test('STARTTLS is not offered once a login is under way: the post-login * CAPABILITY Dovecot sends inside the LOGIN / AUTHENTICATE answer has none', async () => {
      const { port: p } = await startProxy({ tls: { cert, key } });
      const plain = Buffer.from(`\0${dovecot.user}\0${dovecot.password}`).toString('base64');
      for (const login of [`AUTHENTICATE PLAIN ${plain}`, `LOGIN ${dovecot.user} ${dovecot.password}`]) {
        const { client: c } = await ImapTestClient.connect(p);
        try {
          // A CAPABILITY before the login makes Dovecot send the post-login list untagged, before the tagged OK.
          assert.match(await capabilities(c), /\bSTARTTLS\b/);
          const r = await c.command(login);
          assert.match(r.tagged, /^t\d+ OK /);
          const caps = r.untagged.find((u) => u.text.startsWith('* CAPABILITY'))?.text ?? '';
          assert.match(caps, /\bIMAP4rev1\b.*\bMOVE\b/, `the post-login list (${login.split(' ')[0]})`);
          assert.doesNotMatch(caps, /STARTTLS/, caps);
          assert.doesNotMatch(r.tagged, /STARTTLS/);
          assert.doesNotMatch(await capabilities(c), /STARTTLS/);
          assert.match((await c.command('STARTTLS')).tagged, /^t\d+ BAD /);
          assert.match((await c.command('SELECT INBOX')).tagged, / OK/);
        } finally {
          c.close();
        }
      }
    });

    test('tls.required: LOGINDISABLED, no LOGIN in clear, curl without TLS fails; a command sent in clear behind STARTTLS is never taken', async () => {
      const { port: p } = await startProxy({ tls: { cert, key, required: true } });
      const { client: c } = await ImapTestClient.connect(p);
      try {
        const caps = await capabilities(c);
        assert.match(caps, /\bSTARTTLS\b/);
        assert.match(caps, /\bLOGINDISABLED\b/);
        assert.doesNotMatch(caps, /AUTH=/);
        assert.match((await c.command(`LOGIN ${dovecot.user} ${dovecot.password}`)).tagged, /^t\d+ NO \[PRIVACYREQUIRED\]/);
        assert.match((await c.command('AUTHENTICATE PLAIN')).tagged, /^t\d+ NO \[PRIVACYREQUIRED\]/);
      } finally {
        c.close();
      }
      await assert.rejects(run('curl', ['-sS', '--max-time', '30', `imap://127.0.0.1:${p}/INBOX;UID=1`, '-u', `${dovecot.user}:${dovecot.password}`]));

      // STARTTLS and LOGIN in one packet: the LOGIN is plain text sent before TLS (CVE-2011-0411 kind of injection).
      const { client: d } = await ImapTestClient.connect(p);
      try {
        assert.match(await d.startTls(`x1 LOGIN ${dovecot.user} ${dovecot.password}\r\n`), /^t\d+ OK /);
        // Had the LOGIN been taken, this SELECT would work.
        assert.match((await d.command('SELECT INBOX')).tagged, /^t\d+ (?:NO|BAD) /);
        assert.ok(!Buffer.concat(d.received).toString('latin1').includes('x1 '), 'no answer to the injected command');
        await d.login(dovecot.user, dovecot.password);
        assert.match((await d.command('SELECT INBOX')).tagged, / OK/);
      } finally {
        d.close();
      }
    });

    test('plain text instead of a TLS handshake after the OK: the session ends, nothing is answered in clear, the proxy goes on', async () => {
      const { proxy, port: p } = await startProxy({ tls: { cert, key } });
      const { client: c } = await ImapTestClient.connect(p);
      const tag = c.nextTag();
      c.send(`${tag} STARTTLS\r\n`);
      assert.match((await c.until(tag)).tagged, / OK /);
      c.send('x1 NOOP\r\n');
      await assert.rejects(c.next(10_000), /connection closed/);
      assert.ok(!Buffer.concat(c.received).toString('latin1').includes('x1 '), 'the plain command was not taken');
      for (let i = 0; i < 100 && proxy.openConnections > 0; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(proxy.openConnections, 0);
      const d = await session(p);
      assert.match((await d.command('NOOP')).tagged, / OK/);
      d.close();
    });

    test('without imap-proxy.tls STARTTLS is refused as before; unreadable certificate stops the start naming the key', async () => {
      const c = await session();
      try {
        assert.match((await c.command('STARTTLS')).tagged, /^t\d+ NO \[CANNOT\]/);
        assert.match((await c.command('NOOP')).tagged, / OK/);
      } finally {
        c.close();
      }
      await assert.rejects(startProxy({ tls: { cert: join(dir, 'missing.pem'), key } }), (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONFIG' && /imap-proxy\.tls\.cert: cannot read/.test(err.message));
      assert.throws(() => imapProxySchema.parse({ tls: { cert } }), /cert and key go together/);
    });
  });
});

describe('imap proxy to a TLS upstream without LITERAL+ (Dovecot ssl, imap_capability)', () => {
  let dir: string;
  let clamd: TestClamd;
  let dovecot: Dovecot;
  let scanner: Scanner;
  let tlsPort: number;
  /** Dovecot's certificate, trusted by the proxy through tls-ca. */
  let cert: string;
  const proxies: ImapProxyServer[] = [];

  async function startProxy(over: Record<string, unknown>): Promise<number> {
    const config = imapProxySchema.parse({ listen: '127.0.0.1:0', upstream: `127.0.0.1:${dovecot.imapPort}`, 'tls-ca': cert, ...over });
    const proxy = new ImapProxyServer(config, { stateDir: dir, scannerFor: () => ({ scanner }), log: process.env.IMAP_DEBUG_LOG ? createLogger({ level: 'debug', file: process.env.IMAP_DEBUG_LOG }) : silentLogger() });
    proxies.push(proxy);
    return (await proxy.listen()).port;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-imaptls-'));
    clamd = await startTestClamd();
    // No LITERAL+: the proxy must wait for "+" before each literal it forwards.
    ({ dovecot, tlsPort, cert } = await startTlsDovecot(dir, 'imap', { extraConfig: 'imap_capability = IMAP4rev1 IDLE BINARY MULTIAPPEND UIDPLUS' }));
    await dovecot.deliver(dovecot.user, mailWith('tls-eicar', [{ name: 'e.com', type: 'application/octet-stream', data: eicarBytes() }]));
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
  });

  after(async () => {
    for (const p of proxies) await p.close(100);
    await scanner?.close();
    await dovecot?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('STARTTLS upstream (certificate checked): stale greeting capabilities dropped, FETCH scanned', async () => {
    const port = await startProxy({ 'upstream-tls': 'starttls' });
    const { client: c, greeting } = await ImapTestClient.connect(port);
    try {
      assert.match(greeting.text, /^\* OK /);
      assert.doesNotMatch(greeting.text, /STARTTLS|CAPABILITY/);
      await c.login(dovecot.user, dovecot.password);
      const caps = await c.command('CAPABILITY');
      assert.doesNotMatch(caps.untagged.map((u) => u.text).join(' '), /STARTTLS|LITERAL\+/);
      await c.command('SELECT INBOX');
      const r = await c.command('FETCH 1 BODY.PEEK[]');
      const [lit] = fetchLiterals(r.untagged);
      assert.ok(lit);
      assert.ok(!lit.data.includes(EICAR_MARK));
      assert.match(lit.data.toString('utf8'), /replaced by avgate/);
    } finally {
      c.close();
    }
  });

  test('implicit TLS upstream: APPEND (client LITERAL+) forwarded with synchronising literals; MULTIAPPEND with one infected message stores nothing', async () => {
    const port = await startProxy({ 'upstream-tls': 'tls', upstream: `127.0.0.1:${tlsPort}` });
    const c = await session(port);
    try {
      assert.match((await c.command('CREATE Sync')).tagged, / OK/);
      const clean = mailWith('tls-clean', [{ name: 'a.txt', type: 'text/plain', data: Buffer.from('fine\r\n') }]);
      const bad = mailWith('tls-bad', [{ name: 'e.com', type: 'application/octet-stream', data: eicarBytes() }]);
      assert.match((await c.append('Sync', clean, { plus: true })).tagged, /^t\d+ OK/);
      const tag = c.nextTag();
      c.send(Buffer.concat([Buffer.from(`${tag} APPEND Sync {${clean.length}+}\r\n`), clean, Buffer.from(` {${bad.length}+}\r\n`), bad, Buffer.from('\r\n')]));
      assert.match((await c.until(tag)).tagged, new RegExp(`^${tag} NO `));
      const two = c.nextTag();
      c.send(Buffer.concat([Buffer.from(`${two} APPEND Sync (\\Seen) {${clean.length}+}\r\n`), clean, Buffer.from(` {${clean.length}+}\r\n`), clean, Buffer.from('\r\n')]));
      assert.match((await c.until(two)).tagged, new RegExp(`^${two} OK`));
    } finally {
      c.close();
    }
    const direct = await session(dovecot.imapPort);
    try {
      await direct.command('SELECT Sync');
      const r = await direct.command('FETCH 1:* BODY.PEEK[]');
      const lits = fetchLiterals(r.untagged);
      assert.equal(lits.length, 3, 'one single APPEND and one MULTIAPPEND of two; the infected MULTIAPPEND stored nothing');
      for (const l of lits) assert.ok(l.data.equals(mailWith('tls-clean', [{ name: 'a.txt', type: 'text/plain', data: Buffer.from('fine\r\n') }])));
    } finally {
      direct.close();
    }
  });

  test('tls-ca is read once at start: an unreadable file stops the proxy from starting, naming the key', async () => {
    await assert.rejects(
      startProxy({ 'upstream-tls': 'tls', upstream: `127.0.0.1:${tlsPort}`, 'tls-ca': join(dir, 'missing-ca.pem') }),
      (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONFIG' && /imap-proxy\.tls-ca: cannot read .*missing-ca\.pem: ENOENT/.test(err.message),
    );
  });

  test('an upstream certificate that is not trusted: * BYE, nothing relayed', async () => {
    const port = await startProxy({ 'upstream-tls': 'tls', upstream: `127.0.0.1:${tlsPort}`, 'tls-ca': null });
    const { client, greeting } = await ImapTestClient.connect(port);
    assert.match(greeting.text, /^\* BYE /);
    client.close();
  });

  async function session(port: number): Promise<ImapTestClient> {
    const { client, greeting } = await ImapTestClient.connect(port);
    assert.match(greeting.text, /^\* OK/);
    await client.login(dovecot.user, dovecot.password);
    return client;
  }
});
