// The wire pieces of the SMTP transport, without peers: dot-stuffing, replies, xtext, targets,
// attribute commands, the smtp config section.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { hostMatcher, smtpSchema } from '../../src/config/smtp-schema.js';
import { dotStuff, parseNextHop } from '../../src/protocols/smtp/client.js';
import { attributeCommands } from '../../src/protocols/smtp/next-hop.js';
import { combineReplies, encodeXtext, formatReply, reply, replyFromLines, replyText } from '../../src/protocols/smtp/reply.js';
import { newQueueId } from '../../src/protocols/smtp/server.js';

/** RFC 5321 4.5.2 receiver side: a leading dot of a line is dropped. */
function unstuff(wire: Buffer): Buffer {
  const s = wire.toString('latin1');
  return Buffer.from(s.replace(/(^|\n)\./g, '$1'), 'latin1');
}

test('dot-stuffing: whole or in any pieces, the receiver gets the original back', () => {
  const table: Array<[string, string]> = [
    ['.\r\n', '..\r\n'],
    ['a\r\n.b\r\n', 'a\r\n..b\r\n'],
    ['..\r\n', '...\r\n'],
    ['x.y\r\n', 'x.y\r\n'],
    ['a\n.b', 'a\n..b'],
  ];
  for (const [input, want] of table) assert.equal(dotStuff(Buffer.from(input), true).toString(), want, JSON.stringify(input));
  const body = fc.array(fc.constantFrom('.', '\r', '\n', 'a', '\r\n', '\r\n.', '..'), { maxLength: 60 }).map((p) => Buffer.from(p.join(''), 'latin1'));
  fc.assert(
    fc.property(body, fc.array(fc.nat(60), { maxLength: 6 }), (b, cuts) => {
      const points = [...new Set(cuts.map((c) => Math.min(c, b.length)))].sort((x, y) => x - y);
      const pieces: Buffer[] = [];
      let from = 0;
      for (const p of [...points, b.length]) {
        pieces.push(b.subarray(from, p));
        from = p;
      }
      let atLineStart = true;
      const out: Buffer[] = [];
      for (const piece of pieces) {
        if (piece.length === 0) continue;
        out.push(dotStuff(piece, atLineStart));
        atLineStart = piece[piece.length - 1] === 0x0a;
      }
      const wire = Buffer.concat(out);
      assert.ok(wire.equals(dotStuff(b, true)), 'pieces stuff like the whole');
      assert.ok(unstuff(wire).equals(b), 'the receiver gets the original');
    }),
  );
  const same = Buffer.from('no dots at line starts\r\n');
  assert.equal(dotStuff(same, true), same, 'nothing to stuff: the chunk itself, no copy');
});

test('replies: enhanced status parsed when it matches the class, text folded for one-line answers', () => {
  assert.deepEqual(replyFromLines(550, ['5.7.1 Virus found', '5.7.1 Eicar']), { code: 550, status: '5.7.1', lines: ['Virus found', 'Eicar'] });
  assert.deepEqual(replyFromLines(550, ['2.0.0 odd']), { code: 550, status: null, lines: ['2.0.0 odd'] });
  assert.deepEqual(replyFromLines(250, ['Ok']), { code: 250, status: null, lines: ['Ok'] });
  assert.equal(formatReply(reply(250, '2.0.0', ['a', 'b'])), '250-2.0.0 a\r\n250 2.0.0 b\r\n');
  assert.equal(replyText(reply(451, '4.3.0', 'bad\r\ninjected: yes')), '4.3.0 bad injected: yes');
});

test('SMTP DATA reply from mixed per-recipient replies', () => {
  const r = (code: number) => reply(code, null, String(code));
  const table: Array<[number[], number, boolean]> = [
    [[250, 250], 250, false],
    [[250, 550], 250, true],
    [[550, 450, 250], 450, true],
    [[550, 554], 550, false],
    [[451], 451, false],
  ];
  for (const [codes, want, mixed] of table) {
    const c = combineReplies(codes.map(r));
    assert.equal(c.reply.code, want, codes.join(','));
    assert.equal(c.mixed, mixed, codes.join(','));
  }
});

test('xtext and the XFORWARD/XCLIENT commands', () => {
  assert.equal(encodeXtext('rfc822;a+b=c@example.com'), 'rfc822;a+2Bb+3Dc@example.com');
  assert.equal(encodeXtext('sp ace'), 'sp+20ace');
  assert.equal(encodeXtext('ü'), '+C3+BC');
  const attrs = { NAME: 'mail.example.com', ADDR: '192.0.2.1', HELO: '[UNAVAILABLE]', LOGIN: 'x', IDENT: 'Q1' };
  assert.deepEqual(attributeCommands('XFORWARD', 'NAME ADDR PROTO HELO', attrs), ['XFORWARD NAME=mail.example.com ADDR=192.0.2.1 HELO=[UNAVAILABLE]']);
  assert.deepEqual(attributeCommands('XCLIENT', 'NAME ADDR LOGIN', attrs), ['XCLIENT NAME=mail.example.com ADDR=192.0.2.1 LOGIN=x']);
  assert.deepEqual(attributeCommands('XFORWARD', 'ADDR', { ADDR: '2001:db8::1' }), ['XFORWARD ADDR=IPV6:2001:db8::1']);
  const long = attributeCommands('XFORWARD', 'NAME HELO', { NAME: 'n'.repeat(300), HELO: 'h'.repeat(300) });
  assert.equal(long.length, 2, 'split below the command length limit');
  assert.ok(long.every((l) => l.length <= 512));
});

test('next hop targets', () => {
  assert.deepEqual(parseNextHop('smtp:127.0.0.1:10026'), { kind: 'tcp', host: '127.0.0.1', port: 10026, lmtp: false });
  assert.deepEqual(parseNextHop('lmtp:[::1]:24'), { kind: 'tcp', host: '::1', port: 24, lmtp: true });
  assert.deepEqual(parseNextHop('lmtp:unix:/run/dovecot/lmtp'), { kind: 'unix', path: '/run/dovecot/lmtp', lmtp: true });
  assert.deepEqual(parseNextHop('cmd:/usr/sbin/sendmail -bs'), { kind: 'cmd', command: '/usr/sbin/sendmail', args: ['-bs'], lmtp: false });
  for (const bad of ['smtp:host', 'http://x', 'cmd:sendmail -bs', 'smtp:h:99999']) assert.throws(() => parseNextHop(bad), /next hop/);
});

test('smtp config: defaults, targets and host patterns are validated', () => {
  const d = smtpSchema.parse({});
  assert.equal(d.enabled, true, "npm start serves the mail filter on its default port");
  assert.equal(d.listen, '127.0.0.1:10025');
  assert.equal(d['max-message-size'], 100 * 1024 * 1024);
  assert.equal(d['next-hop'].target, 'smtp:127.0.0.1:10026');
  assert.equal(d['next-hop'].timeouts['data-done'], 300_000);
  assert.equal(smtpSchema.safeParse({ 'next-hop': { target: 'smtp:nohost' } }).success, false);
  assert.equal(smtpSchema.safeParse({ 'xforward-hosts': ['10.0.0.0/33'] }).success, false);
  assert.equal(smtpSchema.safeParse({ protocol: 'esmtp' }).success, false);
  const trusted = hostMatcher(['127.0.0.0/8', '::1', '192.0.2.7']);
  assert.ok(trusted('127.1.2.3'));
  assert.ok(trusted('::ffff:127.0.0.1'));
  assert.ok(trusted('::1'));
  assert.ok(trusted('192.0.2.7'));
  assert.ok(!trusted('192.0.2.8'));
  assert.ok(!trusted('not an address'));
  // Answers are remembered per address: asked again, and past the memo's size, they stay right.
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 5000; i++) {
      const inside = `127.${(i >> 8) & 255}.${i & 255}.1`;
      const outside = `10.${(i >> 8) & 255}.${i & 255}.1`;
      assert.equal(trusted(inside), true, inside);
      assert.equal(trusted(outside), false, outside);
    }
  }
  assert.ok(trusted('::1') && !trusted('192.0.2.8') && trusted('192.0.2.7'));
});

test('queue ids: 12 characters, unique, sorted by arrival', () => {
  const ids = Array.from({ length: 2000 }, () => newQueueId());
  assert.ok(ids.every((i) => /^[0-9A-Z]{12}$/.test(i)));
  assert.equal(new Set(ids).size, ids.length);
  assert.deepEqual([...ids].sort(), ids);
});
