import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { DotStuffer, MultilineDecoder, MultilineScanner, parseCommand, responseKind } from '../../src/protocols/pop3/wire.js';
import { paddingLines, parseHostPort } from '../../src/protocols/pop3/session.js';
import { shouldReplace, compilePolicy } from '../../src/mailproxy/index.js';
import { proxyPolicy } from '../helpers/mailproxy.js';
import { splitAt as split } from '../helpers/split.js';


function stuff(payload: Buffer, cuts: number[] = []): Buffer {
  const s = new DotStuffer();
  const out: Buffer[] = [];
  for (const piece of split(payload, cuts)) out.push(...s.push(piece));
  out.push(s.end());
  return Buffer.concat(out);
}

function decode(wire: Buffer, cuts: number[]): { payload: Buffer; rest: Buffer; done: boolean } {
  const d = new MultilineDecoder();
  const data: Buffer[] = [];
  let rest = Buffer.alloc(0);
  for (const piece of split(wire, cuts)) {
    if (d.done) {
      rest = Buffer.concat([rest, piece]);
      continue;
    }
    const r = d.push(piece);
    data.push(...r.data);
    if (r.rest) rest = Buffer.concat([rest, r.rest]);
  }
  return { payload: Buffer.concat(data), rest, done: d.done };
}

/** Message-like payloads: lines of text, many starting with dots, CRLF ends (some bare LF). */
const lineArb = fc.oneof(
  fc.constantFrom('.', '..', '...', '. ', '.x', '', 'From: a', '.\r', 'text . more'),
  fc.string({ maxLength: 40 }).map((s) => s.replace(/[\r\n]/g, '')),
);
const payloadArb = fc
  .array(fc.tuple(lineArb, fc.constantFrom('\r\n', '\r\n', '\n')), { maxLength: 40 })
  .map((lines) => Buffer.from(lines.map(([l, e]) => l + e).join(''), 'latin1'));

test('dot-stuffing round trip: decode(stuff(x)) = x for payloads ending in a line end, split anywhere', () => {
  fc.assert(
    fc.property(payloadArb, fc.array(fc.nat(), { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 12 }), (payload, cutsIn, cutsOut) => {
      const wire = stuff(payload, cutsIn);
      // The decoder stops exactly at the end of what the stuffer wrote: nothing inside looked like the terminator.
      const r = decode(Buffer.concat([wire, Buffer.from('+OK next\r\n')]), cutsOut);
      assert.equal(r.done, true);
      assert.equal(r.payload.toString('latin1'), payload.toString('latin1'));
      assert.equal(r.rest.toString('latin1'), '+OK next\r\n');
    }),
    { numRuns: 400 },
  );
});

test('a payload without a final line end gets one before the terminator', () => {
  assert.equal(stuff(Buffer.from('abc')).toString(), 'abc\r\n.\r\n');
  assert.equal(stuff(Buffer.from('')).toString(), '.\r\n');
  assert.equal(stuff(Buffer.from('.a\r\n..b\r\n.\r\n')).toString(), '..a\r\n...b\r\n..\r\n.\r\n');
});

test('the decoder is the same whatever the splits (table and random)', () => {
  const wire = Buffer.from('..one\r\ntwo\r\n...\r\n..\r\n.x\r\n.\r\nrest');
  const expected = '.one\r\ntwo\r\n..\r\n.\r\nx\r\n';
  for (let cut = 0; cut <= wire.length; cut++) {
    const r = decode(wire, [cut]);
    assert.equal(r.payload.toString('latin1'), expected, `cut at ${cut}`);
    assert.equal(r.rest.toString('latin1'), 'rest');
  }
  fc.assert(
    fc.property(fc.array(fc.nat(), { maxLength: 20 }), (cuts) => {
      const r = decode(wire, cuts);
      return r.payload.toString('latin1') === expected && r.rest.toString('latin1') === 'rest';
    }),
  );
});

test('an unterminated body is not done; the scanner counts exactly the response bytes', () => {
  assert.equal(decode(Buffer.from('a\r\n.\r'), []).done, false);
  assert.equal(decode(Buffer.from('a\r\n..\r\n'), []).done, false);
  const s = new MultilineScanner();
  const chunk = Buffer.from('1 10\r\n2 20\r\n.\r\n+OK');
  assert.equal(s.push(chunk), chunk.length - 3);
  assert.equal(s.done, true);
});

test('commands and responses: parsing and refusal of garbage', () => {
  assert.deepEqual(parseCommand(Buffer.from('retr 1')), { verb: 'RETR', args: ['1'], raw: 'retr 1' });
  assert.deepEqual(parseCommand(Buffer.from('TOP 2 0'))?.args, ['2', '0']);
  assert.equal(parseCommand(Buffer.from('')), null);
  assert.equal(parseCommand(Buffer.from('RE\u0000TR 1', 'latin1')), null);
  assert.equal(parseCommand(Buffer.from('USER \u00e9', 'latin1')), null);
  assert.equal(parseCommand(Buffer.from('1RETR')), null);
  assert.equal(responseKind(Buffer.from('+OK 2 messages')), 'ok');
  assert.equal(responseKind(Buffer.from('+ok')), 'ok');
  assert.equal(responseKind(Buffer.from('-ERR no')), 'err');
  assert.equal(responseKind(Buffer.from('+ ')), 'cont');
  assert.equal(responseKind(Buffer.from('+')), 'cont');
  assert.equal(responseKind(Buffer.from('hello')), null);
  fc.assert(fc.property(fc.uint8Array({ maxLength: 60 }), (bytes) => {
    const c = parseCommand(Buffer.from(bytes));
    return c === null || /^[A-Z][A-Z0-9-]*$/.test(c.verb);
  }));
});

test('user@host targets and padding', () => {
  assert.deepEqual(parseHostPort('mail.example.com', 110), { host: 'mail.example.com', port: 110 });
  assert.deepEqual(parseHostPort('127.0.0.1:2110', 110), { host: '127.0.0.1', port: 2110 });
  assert.deepEqual(parseHostPort('[::1]:995', 110), { host: '::1', port: 995 });
  assert.equal(parseHostPort('a b', 110), null);
  assert.equal(parseHostPort('host:99999', 110), null);
  for (const n of [0, 1]) assert.equal(paddingLines(n).length, 0);
  for (let n = 2; n < 400; n++) {
    const p = paddingLines(n);
    assert.equal(p.length, n);
    assert.match(p.toString('latin1'), /^( *\r\n)+$/);
    for (const line of p.toString('latin1').split('\r\n')) assert.ok(line.length <= 76);
  }
});

test('doc-acl actions and command-acl decisions', () => {
  assert.equal(shouldReplace('docok', 'infected', 'replace'), false);
  assert.equal(shouldReplace('replace-infected', 'infected', 'pass'), true);
  assert.equal(shouldReplace('replace-infected', 'unknown', 'replace'), false);
  assert.equal(shouldReplace('replace-infected', 'error', 'replace'), true);
  assert.equal(shouldReplace('replace-av-unknown', 'skipped', 'replace'), true);
  assert.equal(shouldReplace('replace-av-unknown', 'error', 'pass'), false);
  assert.equal(shouldReplace('replace-av-unknown', 'clean', 'replace'), false);
  const p = compilePolicy(
    proxyPolicy({
      'command-acl': [
        { name: 'no-dele', match: { commands: ['dele'] }, action: 'deny' },
        { name: 'bob-raw', match: { users: ['bob*'], clients: ['127.0.0.0/8'] }, 'use-antivirus': false },
      ],
    }),
  );
  assert.deepEqual(p.command({ client: '127.0.0.1', user: 'x', command: 'DELE' }), { rule: 'no-dele', action: 'deny', useAntivirus: true });
  assert.deepEqual(p.command({ client: '::ffff:127.0.0.1', user: 'bobby', command: 'RETR' }), { rule: 'bob-raw', action: 'accept', useAntivirus: false });
  assert.deepEqual(p.command({ client: '10.0.0.1', user: 'bobby', command: 'RETR' }), { rule: null, action: 'accept', useAntivirus: true });
});

test('config: pop3-proxy.antivirus must name configured engines; bad upstream and ACL values are refused with their key', async () => {
  const { parseConfigText } = await import('../../src/config/loader.js');
  assert.throws(() => parseConfigText('pop3-proxy:\n  antivirus: [nope]\n', 'x.yaml'), /x\.yaml:2: pop3-proxy\.antivirus: no engine "nope" in engines/);
  assert.throws(() => parseConfigText('pop3-proxy:\n  upstream: "not a host"\n', 'x.yaml'), /pop3-proxy\.upstream: expected host:port/);
  assert.throws(() => parseConfigText('pop3-proxy:\n  doc-acl:\n    - name: a\n      action: delete\n', 'x.yaml'), /pop3-proxy\.doc-acl\.0\.action/);
  assert.throws(() => parseConfigText('pop3-proxy:\n  mail-acl:\n    - name: a\n      match: {senders: ["("]}\n', 'x.yaml'), /invalid regular expression/);
  const ok = parseConfigText('pop3-proxy:\n  antivirus: [clamav]\n  on-error: pass\n', 'x.yaml');
  assert.deepEqual(ok['pop3-proxy'].antivirus, ['clamav']);
  assert.equal(ok['pop3-proxy']['on-error'], 'pass');
});
