import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { imapProxySchema } from '../../src/config/imap-schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { ImapProxyServer } from '../../src/protocols/imap/server.js';
import { EncryptedQuarantine } from '../../src/quarantine/store.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestDovecot } from '../helpers/dovecot.js';
import { fetchLiterals, ImapTestClient } from '../helpers/imap-client.js';
import { mailWith } from '../helpers/mail.js';
import { proxyScanner } from '../helpers/mailproxy.js';

const EICAR_MARK = 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE';

/**
 * Clients that read a message in pieces (Thunderbird's mail.imap.fetch_by_chunks, on by default:
 * BODY.PEEK[]<0.65536>, then <65536.65536> ...) must not get an infected attachment whole, piece
 * by piece: a piece cut from the middle of a base64 attachment decodes to nothing an engine knows.
 */
describe('imap proxy: partial fetches (Dovecot, clamd)', () => {
  let dir: string;
  let clamd: TestClamd;
  let dovecot: Dovecot;
  let scanner: Scanner;
  let proxy: ImapProxyServer;
  let port: number;
  let q: EncryptedQuarantine;
  const eicar = eicarBytes();
  // EICAR in the middle of a 300 KB attachment: every 16 KiB or 64 KiB piece around it starts
  // inside the base64 text, away from the part's header.
  const infected = mailWith('chunks-bad', [{ name: 'mid.bin', type: 'application/octet-stream', data: Buffer.concat([randomBytes(150_000), eicar, randomBytes(150_000)]) }]);
  const clean = mailWith('chunks-ok', [{ name: 'big.bin', type: 'application/octet-stream', data: randomBytes(200_000) }]);
  // Parts fetched alone arrive without their header: encodings a guess from the first bytes misses.
  const uuencoded = (() => {
    const lines = ['begin 644 eicar.com'];
    for (let i = 0; i < eicar.length; i += 45) {
      const chunk = eicar.subarray(i, i + 45);
      let line = String.fromCharCode(32 + chunk.length);
      for (let j = 0; j < chunk.length; j += 3) {
        const [a = 0, b = 0, c = 0] = [chunk[j], chunk[j + 1], chunk[j + 2]];
        for (const v of [a >> 2, ((a & 3) << 4) | (b >> 4), ((b & 15) << 2) | (c >> 6), c & 63]) line += v === 0 ? '`' : String.fromCharCode(32 + v);
      }
      lines.push(line);
    }
    lines.push('`', 'end');
    return Buffer.from(['Subject: uu', 'Content-Type: text/plain', '', 'Here it is:', ...lines, ''].join('\r\n'));
  })();
  const lateSoftBreak = Buffer.from(
    ['Subject: qp', 'MIME-Version: 1.0', 'Content-Type: text/plain', 'Content-Transfer-Encoding: quoted-printable', '', ...Array.from({ length: 1200 }, (_, i) => `quoted line ${i} of a long reply, plain text`), `${eicar.subarray(0, 30).toString('latin1').replace(/=/g, '=3D')}=`, eicar.subarray(30).toString('latin1').replace(/=/g, '=3D'), ''].join('\r\n'),
    'latin1',
  );
  const junkFirst = Buffer.from(
    ['Subject: b64', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="j"', '', '--j', 'Content-Type: text/plain', '', 'hi', '--j', 'Content-Type: application/octet-stream; name="e.com"', 'Content-Transfer-Encoding: base64', '', '!!!! ----', eicar.toString('base64'), '--j--', ''].join('\r\n'),
    'latin1',
  );

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-imap-partial-'));
    clamd = await startTestClamd();
    dovecot = await startTestDovecot();
    for (const m of [infected, clean, uuencoded, lateSoftBreak, junkFirst]) {
      await dovecot.deliver(dovecot.user, m);
      const { client } = await ImapTestClient.connect(dovecot.imapPort);
      await client.login(dovecot.user, dovecot.password);
      await client.command('STATUS INBOX (MESSAGES)');
      client.close();
    }
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
    q = await EncryptedQuarantine.open({ dir: join(dir, 'quarantine'), keyFile: join(dir, 'quarantine.key') });
    proxy = new ImapProxyServer(imapProxySchema.parse({ listen: '127.0.0.1:0', upstream: `127.0.0.1:${dovecot.imapPort}`, quarantine: ['infected'] }), {
      stateDir: dir,
      scannerFor: () => ({ scanner }),
      log: silentLogger(),
      quarantine: q,
    });
    port = (await proxy.listen()).port;
  });

  after(async () => {
    await proxy?.close(100);
    await scanner?.close();
    await q?.close();
    await dovecot?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  async function session(p: number): Promise<ImapTestClient> {
    const { client } = await ImapTestClient.connect(p);
    await client.login(dovecot.user, dovecot.password);
    await client.command('SELECT INBOX');
    return client;
  }

  /** The message read piece by piece, as Thunderbird does, until a short piece. */
  async function inPieces(c: ImapTestClient, seq: number, size: number, uid = false): Promise<{ data: Buffer; items: string[] }> {
    const parts: Buffer[] = [];
    const items: string[] = [];
    for (let off = 0; ; off += size) {
      const r = await c.command(`${uid ? 'UID ' : ''}FETCH ${seq} (UID BODY.PEEK[]<${off}.${size}>)`);
      assert.match(r.tagged, / OK/);
      const [lit] = fetchLiterals(r.untagged);
      assert.ok(lit, 'a piece');
      items.push(lit.item);
      parts.push(lit.data);
      if (lit.data.length < size) break;
    }
    return { data: Buffer.concat(parts), items };
  }

  test('an infected attachment read in 16 KiB and 64 KiB pieces arrives as a whole fetch delivers it: replaced, never whole; pieces are not kept in quarantine, the whole fetch is', async () => {
    const c = await session(port);
    try {
      const pieces = [];
      for (const size of [16_384, 65_536]) pieces.push(await inPieces(c, 1, size));
      assert.equal((await q.list()).length, 0, 'pieces add nothing to the quarantine');
      const whole = fetchLiterals((await c.command('FETCH 1 BODY.PEEK[]')).untagged)[0]?.data;
      assert.ok(whole);
      assert.equal((await q.list()).length, 1, 'the whole fetch keeps the original');
      assert.match(whole.toString('latin1'), /replaced by avgate/);
      for (const got of pieces) {
        assert.ok(got.data.equals(whole), 'the pieces put together are the whole fetch\'s bytes');
        assert.equal(got.items[0], 'BODY[]<0>');
        assert.ok(!got.data.toString('latin1').includes(EICAR_MARK));
        assert.ok(!got.data.includes(infected.subarray(infected.length / 2, infected.length / 2 + 4096)), 'nothing of the infected attachment');
      }
    } finally {
      c.close();
    }
  });

  test('a clean message in pieces: each piece byte-identical to Dovecot\'s; UID FETCH, several pieces and the whole in one command', async () => {
    const direct = await session(dovecot.imapPort);
    const c = await session(port);
    try {
      const items = 'BODY.PEEK[]<0.2000> BODY.PEEK[]<1500.3001> BODY.PEEK[2]<100.1001> BODY.PEEK[]<999999.10>';
      const want = fetchLiterals((await direct.command(`FETCH 2 (${items})`)).untagged);
      const got = fetchLiterals((await c.command(`FETCH 2 (${items})`)).untagged);
      const byItem = (l: typeof want) => [...l].sort((a, b) => a.item.localeCompare(b.item));
      assert.deepEqual(
        byItem(got).map((g) => [g.item, g.data.length]),
        byItem(want).map((w) => [w.item, w.data.length]),
      );
      for (const g of got) assert.ok(g.data.equals(want.find((w) => w.item === g.item)?.data ?? Buffer.alloc(1)), `${g.item} as Dovecot sends it`);
      // Pieces and the whole in one command: the whole once, and the piece.
      const both = fetchLiterals((await c.command('FETCH 2 (BODY.PEEK[] BODY.PEEK[]<10.20>)')).untagged);
      assert.deepEqual(both.map((b) => b.item).sort(), ['BODY[]', 'BODY[]<10>']);
      assert.ok(both.find((b) => b.item === 'BODY[]')?.data.equals(clean));
      assert.ok(both.find((b) => b.item === 'BODY[]<10>')?.data.equals(clean.subarray(10, 30)));
      const uid = (await c.command('FETCH 2 (UID)')).untagged.map((u) => /UID (\d+)/.exec(u.text)?.[1]).find(Boolean) as string;
      const byUid = await inPieces(c, Number(uid), 65_536, true);
      assert.ok(byUid.data.equals(clean), 'UID FETCH in pieces gives the message');
    } finally {
      direct.close();
      c.close();
    }
  });

  test('a piece fetched without PEEK still sets \\Seen', async () => {
    const c = await session(port);
    try {
      await c.command('STORE 1 -FLAGS (\\Seen)');
      assert.doesNotMatch((await c.command('FETCH 1 (FLAGS)')).untagged.map((u) => u.text).join(' '), /\\Seen/);
      const [piece] = fetchLiterals((await c.command('FETCH 1 (BODY[]<0.100>)')).untagged);
      assert.equal(piece?.item, 'BODY[]<0>');
      assert.equal(piece.data.length, 100);
      assert.match((await c.command('FETCH 1 (FLAGS)')).untagged.map((u) => u.text).join(' '), /\\Seen/);
    } finally {
      c.close();
    }
  });
  test('parts fetched alone (no header): uuencode in a text, quoted-printable whose first soft break is past the sniffed bytes, base64 after a junk line are found', async () => {
    const c = await session(port);
    try {
      const decodedAll = (data: Buffer) => {
        const text = data.toString('latin1');
        const qp = text.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
        const b64 = Buffer.from(text.replace(/[^A-Za-z0-9+/=]/g, ''), 'base64').toString('latin1');
        return [text, qp, b64].some((t) => t.includes(EICAR_MARK)) || /begin 644 eicar\.com/.test(text);
      };
      for (const [seq, section] of [[3, 'TEXT'], [3, '1'], [4, 'TEXT'], [4, '1'], [5, '2']] as const) {
        const [lit] = fetchLiterals((await c.command(`FETCH ${seq} BODY.PEEK[${section}]`)).untagged);
        assert.ok(lit, `${seq} ${section}`);
        assert.ok(!decodedAll(lit.data), `message ${seq} BODY[${section}] is replaced`);
        assert.match(lit.data.toString('latin1') + Buffer.from(lit.data.toString('latin1'), 'base64').toString('utf8'), /replaced by avgate/);
      }
      // A clean part read the other ways is still clean: unchanged.
      const direct = await session(dovecot.imapPort);
      try {
        const want = fetchLiterals((await direct.command('FETCH 2 BODY.PEEK[2]')).untagged)[0]?.data;
        const got = fetchLiterals((await c.command('FETCH 2 BODY.PEEK[2]')).untagged)[0]?.data;
        assert.ok(want && got && got.equals(want));
      } finally {
        direct.close();
      }
    } finally {
      c.close();
    }
  });
});
