import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { imapReadAll, pop3ReadAll } from '../../bench/mailproxy-clients.js';
import { checkFetched, messageSizes, ProxyMessageFactory, type ProxyBenchMessage } from '../../bench/mailproxy-messages.js';
import type { Dovecot } from '../../tools/peers/dovecot.js';
import { startTestDovecot } from '../helpers/dovecot.js';

// The mail-proxy benchmark's POP3 and IMAP clients (bench/mailproxy-clients.ts) read a real
// Dovecot mailbox whole and byte for byte (POP3 dot-unstuffing, IMAP literals), and its message
// check (bench/mailproxy-messages.ts) tells a passed infected attachment from a removed one.

const USER = 'reader';
const PASSWORD = 'reader-pw';

describe('bench mail-proxy clients against Dovecot', () => {
  let dovecot: Dovecot;
  const byToken = new Map<string, ProxyBenchMessage>();
  /** A message whose text has lines starting with a dot (POP3 stuffs them). */
  const dotted = Buffer.from('From: a@bench.test\r\nSubject: dots\r\n\r\n.one dot\r\n..two dots\r\n.\r\nend\r\n', 'latin1');

  before(async () => {
    dovecot = await startTestDovecot({ users: [{ user: USER, password: PASSWORD }] });
    const f = new ProxyMessageFactory();
    const sizes = messageSizes(6);
    for (let i = 0; i < sizes.length; i++) {
      const m = f.make(sizes[i] as number, i === 2);
      byToken.set(m.token, m);
      await dovecot.deliver(USER, m.wire);
    }
    await dovecot.deliver(USER, dotted);
  });
  after(() => dovecot?.stop());

  const readWith = async (read: typeof pop3ReadAll, port: number) => {
    const got: Buffer[] = [];
    const n = await read({ port, user: USER, password: PASSWORD, deadline: Date.now() + 60_000, maxBytes: 1024 * 1024, onMessage: (raw) => got.push(raw) });
    return { n, got };
  };

  const assertMailbox = (got: Buffer[]) => {
    assert.equal(got.length, byToken.size + 1);
    const delivered = [...byToken.values()].map((m) => m.wire).concat([dotted]);
    const sameBytes = (a: Buffer) => delivered.some((d) => d.equals(a));
    for (const raw of got) assert.ok(sameBytes(raw), `a message came back changed: ${raw.subarray(0, 80).toString('latin1')}`);
    // every message once
    const tokens = got.map((raw) => checkFetched(raw, byToken, false).token).filter((t) => t !== null);
    assert.equal(new Set(tokens).size, byToken.size);
  };

  test('POP3: every message read whole, dot-stuffed lines restored', async () => {
    const { n, got } = await readWith(pop3ReadAll, dovecot.pop3Port);
    assert.equal(n, byToken.size + 1);
    assertMailbox(got);
    assert.ok(got.some((raw) => raw.equals(dotted)));
  });

  test('IMAP: every message read whole from its literal, twice the same (BODY.PEEK leaves it unchanged)', async () => {
    const first = await readWith(imapReadAll, dovecot.imapPort);
    const second = await readWith(imapReadAll, dovecot.imapPort);
    assert.equal(first.n, byToken.size + 1);
    assertMailbox(first.got);
    assert.deepEqual(
      second.got.map((b) => b.toString('latin1')),
      first.got.map((b) => b.toString('latin1')),
    );
  });

  test('the message check: infected attachment present directly, a problem when it passed a scanner', async () => {
    const { got } = await readWith(imapReadAll, dovecot.imapPort);
    const mine = got.filter((raw) => checkFetched(raw, byToken, false).token !== null);
    const infected = mine.filter((raw) => byToken.get(checkFetched(raw, byToken, false).token as string)?.infected);
    assert.equal(infected.length, 1);
    for (const raw of mine) assert.equal(checkFetched(raw, byToken, false).problem, null);
    assert.equal(checkFetched(infected[0] as Buffer, byToken, true).problem, 'infected attachment passed');
    // a clean message whose attachment is gone is caught too
    const clean = mine.find((raw) => !byToken.get(checkFetched(raw, byToken, false).token as string)?.infected) as Buffer;
    const m = byToken.get(checkFetched(clean, byToken, false).token as string) as ProxyBenchMessage;
    const stripped = Buffer.from(clean.toString('latin1').replace(m.probe, 'x'.repeat(76)), 'latin1');
    assert.equal(checkFetched(stripped, byToken, true).problem, 'clean attachment missing');
    assert.equal(checkFetched(dotted, byToken, true).problem, 'not one of the mailbox messages (no known token)');
  });
});
