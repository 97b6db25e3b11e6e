import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { smtpSchema } from '../../src/config/smtp-schema.js';
import { LineReader } from '../../src/protocols/pop3/wire.js';
import { SmtpFilterServer } from '../../src/protocols/smtp/server.js';
import { silentLogger } from '../../src/core/logging.js';
import { startSmtpSink, type SmtpSink } from '../../tools/peers/postfix.js';
import { startTestFilter, swaks, swaksReplies } from '../helpers/smtp.js';
import { clientTls, selfSignedCert } from '../helpers/tls.js';

describe('SMTP filter: STARTTLS on the listening side (smtp.tls), swaks as the client, smtp-sink as the next hop', () => {
  let dir: string;
  let sink: SmtpSink;
  let cert: string;
  let key: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-smtp-tls-'));
    sink = await startSmtpSink({ dir });
    ({ cert, key } = await selfSignedCert(dir));
  });
  after(async () => {
    await sink?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const send = (port: number, extra: string[]) =>
    swaks(['--server', `127.0.0.1:${port}`, '--from', 'a@example.com', '--to', 'b@example.com', '--body', 'hello over tls', ...extra]);

  test('with a certificate: EHLO offers STARTTLS, a message sent after it is relayed; a client that does not start TLS is still served', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink.port}`, smtp: { tls: { cert, key } } });
    try {
      const before = (await sink.messages()).length;
      const r = await send(filter.port, ['--tls']);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /<- {2}250-STARTTLS/, 'offered in the first EHLO');
      assert.match(r.stdout, /TLS started with cipher/);
      const replies = swaksReplies(r.stdout);
      assert.ok(replies.some((l) => /^220 /.test(l) && /TLS/i.test(l)), `the STARTTLS reply: ${replies.join(' | ')}`);
      assert.ok(
        r.stdout.split('\n').some((l) => /^<~ {1,2}250 2\.0\.0 Ok/.test(l)),
        'the sink reply, read over TLS',
      );
      const plain = await send(filter.port, []);
      assert.equal(plain.code, 0, plain.stdout);
      const got = await sink.waitForMessages(before + 2);
      assert.equal(got.length, before + 2);
    } finally {
      await filter.stop();
    }
  });

  test('a command sent in clear right behind STARTTLS is not taken inside TLS (plaintext injection, CVE-2011-0411 kind)', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink.port}`, smtp: { tls: { cert, key } } });
    try {
      const socket = connect(filter.port, '127.0.0.1');
      socket.on('error', () => undefined);
      const plain = new LineReader(socket);
      const reply = async (r: LineReader) => {
        for (;;) {
          const l = (await r.readLine(4096, 10_000))?.toString('latin1') ?? '';
          if (!/^\d{3}-/.test(l)) return l;
        }
      };
      assert.match(await reply(plain), /^220 /);
      socket.write('EHLO client.test\r\n');
      assert.match(await reply(plain), /^250 /);
      socket.write('STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n');
      assert.match(await reply(plain), /^220 /);
      const { secure, reader: tr } = await clientTls(socket, plain);
      secure.write('EHLO client.test\r\n');
      assert.match(await reply(tr), /^250 /);
      // Had the MAIL been taken, this RCPT would be accepted.
      secure.write('RCPT TO:<b@example.com>\r\n');
      assert.match(await reply(tr), /^503 /);
      secure.destroy();
    } finally {
      await filter.stop();
    }
  });

  test('tls.required: MAIL before STARTTLS gets 530 5.7.0 and nothing is relayed; after STARTTLS the message goes through', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink.port}`, smtp: { tls: { cert, key, required: true } } });
    try {
      const before = (await sink.messages()).length;
      const plain = await send(filter.port, []);
      assert.notEqual(plain.code, 0);
      assert.ok(swaksReplies(plain.stdout).some((l) => /^530 5\.7\.0 /.test(l)), plain.stdout);
      const r = await send(filter.port, ['--tls']);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const got = await sink.waitForMessages(before + 1);
      assert.equal(got.length, before + 1, 'only the message sent over TLS arrived');
    } finally {
      await filter.stop();
    }
  });

  test('without a certificate STARTTLS is neither offered nor accepted', async () => {
    const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink.port}` });
    try {
      const before = (await sink.messages()).length;
      const r = await send(filter.port, ['--tls']);
      assert.notEqual(r.code, 0, 'swaks --tls gives up');
      assert.doesNotMatch(r.stdout, /STARTTLS$/m);
      assert.equal((await sink.messages()).length, before);
    } finally {
      await filter.stop();
    }
  });

  test('config: cert and key go together; required needs them; an unreadable file is a configuration error naming the key', () => {
    assert.throws(() => smtpSchema.parse({ tls: { cert } }), /cert and key go together/);
    assert.throws(() => smtpSchema.parse({ tls: { required: true } }), /required needs cert and key/);
    assert.deepEqual(smtpSchema.parse({}).tls, { cert: null, key: null, required: false });
    const config = smtpSchema.parse({ listen: '127.0.0.1:0', tls: { cert: join(dir, 'missing.pem'), key } });
    assert.throws(
      () => new SmtpFilterServer(config, { stateDir: dir, log: silentLogger() }),
      (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONFIG' && /smtp\.tls\.cert: cannot read .*missing\.pem: ENOENT/.test(err.message),
    );
  });
  describe('STARTTLS to the next hop (smtp.next-hop.tls)', () => {
    /** A next hop that takes mail only over TLS: another filter with tls.required, in front of smtp-sink. */
    let tlsHop: Awaited<ReturnType<typeof startTestFilter>>;
    before(async () => {
      tlsHop = await startTestFilter({ nextHop: `smtp:127.0.0.1:${sink.port}`, smtp: { tls: { cert, key, required: true } } });
    });
    after(async () => {
      await tlsHop?.stop();
    });

    /** One message from swaks through a filter with `nextHop` options; the swaks result and whether the sink got it. */
    async function through(target: number, nextHop: Record<string, unknown>): Promise<{ delivered: boolean; replies: string[] }> {
      const filter = await startTestFilter({ nextHop: `smtp:127.0.0.1:${target}`, smtp: { 'next-hop': nextHop } });
      try {
        const before = (await sink.messages()).length;
        const r = await send(filter.port, []);
        const delivered = r.code === 0 && (await sink.waitForMessages(before + 1).catch(() => [])).length > before;
        return { delivered, replies: swaksReplies(r.stdout) };
      } finally {
        await filter.stop();
      }
    }

    test('may and encrypt deliver to a next hop that requires TLS; with none its 530 reaches the client as it is', async () => {
      assert.equal((await through(tlsHop.port, { tls: 'may' })).delivered, true);
      assert.equal((await through(tlsHop.port, { tls: 'encrypt' })).delivered, true);
      const plain = await through(tlsHop.port, { tls: 'none' });
      assert.equal(plain.delivered, false);
      assert.ok(plain.replies.some((l) => /^530 5\.7\.0 /.test(l)), plain.replies.join(' | '));
    });

    test('a next hop without STARTTLS (smtp-sink): may delivers in clear, encrypt refuses with a 4xx', async () => {
      assert.equal((await through(sink.port, { tls: 'may' })).delivered, true);
      const enc = await through(sink.port, { tls: 'encrypt' });
      assert.equal(enc.delivered, false);
      assert.ok(enc.replies.some((l) => /^4\d\d /.test(l)), enc.replies.join(' | '));
    });

    test('tls-verify: the next hop certificate must chain to tls-ca (and name 127.0.0.1); unreadable tls-ca is a configuration error', async () => {
      assert.equal((await through(tlsHop.port, { tls: 'encrypt', 'tls-verify': true, 'tls-ca': cert })).delivered, true);
      const untrusted = await through(tlsHop.port, { tls: 'encrypt', 'tls-verify': true });
      assert.equal(untrusted.delivered, false);
      assert.ok(untrusted.replies.some((l) => /^4\d\d /.test(l)), untrusted.replies.join(' | '));
      await assert.rejects(
        startTestFilter({ nextHop: `smtp:127.0.0.1:${tlsHop.port}`, smtp: { 'next-hop': { tls: 'may', 'tls-ca': join(dir, 'missing-ca.pem') } } }),
        (err: Error & { code?: string }) => err.code === 'AVG_ERR_CONFIG' && /smtp\.next-hop\.tls-ca: cannot read/.test(err.message),
      );
    });
  });
});
