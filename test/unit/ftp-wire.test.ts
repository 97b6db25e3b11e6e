import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import fc from 'fast-check';
import { ftpProxySchema } from '../../src/config/ftp-schema.js';
import { parseConfigText } from '../../src/config/loader.js';
import { activeAddressAllowed } from '../../src/protocols/ftp/data.js';
import { LineReader, type LineEvent } from '../../src/protocols/ftp/lines.js';
import { splitHostPort } from '../../src/core/net.js';
import { upstreamAllowed } from '../../src/protocols/ftp/session.js';
import {
  formatCommand,
  formatHostPortNumbers,
  formatReply,
  parseAnnouncedSize,
  parseCommand,
  parseEprt,
  parseEpsvReply,
  parseHostPortNumbers,
  parsePasvReply,
  parsePwdReply,
  parseReplyLine,
  parseUserAtHost,
  printable,
  ReplyAssembler,
  textOf,
  type FtpReply,
} from '../../src/protocols/ftp/wire.js';

test('command lines: verb and argument, garbage refused', () => {
  const table: Array<[string, { verb: string; arg: string } | null]> = [
    ['USER anonymous', { verb: 'USER', arg: 'anonymous' }],
    ['retr  two spaces', { verb: 'RETR', arg: ' two spaces' }],
    ['PASV', { verb: 'PASV', arg: '' }],
    ['\xff\xf4\xff\xf2ABOR', { verb: 'ABOR', arg: '' }],
    ['', null],
    ['AB', null],
    ['TOOLONGVERB x', null],
    ['RE7R x', null],
    [' USER x', null],
    ['STOR a\0b', null],
    ['STOR a\rDELE b', null],
  ];
  for (const [line, want] of table) assert.deepEqual(parseCommand(line), want, JSON.stringify(line));
});

test('property: parseCommand never throws; what it accepts cannot smuggle a second line', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (s) => {
      const c = parseCommand(s);
      if (c === null) return;
      assert.match(c.verb, /^[A-Z]{3,8}$/);
      assert.ok(!/[\r\n\0]/.test(c.arg));
      assert.equal(formatCommand(c.verb, c.arg).split('\r\n').length, 2);
    }),
  );
});

test('property: formatCommand and parseCommand round-trip', () => {
  fc.assert(
    fc.property(fc.stringMatching(/^[A-Z]{3,4}$/), fc.stringMatching(/^[^\r\n\0\xff]{0,60}$/), (verb, arg) => {
      const line = formatCommand(verb, arg).slice(0, -2);
      assert.deepEqual(parseCommand(line), { verb, arg });
    }),
  );
});

test('host-port numbers (PORT, 227) round-trip; out-of-range bytes and port 0 refused', () => {
  fc.assert(
    fc.property(fc.ipV4(), fc.integer({ min: 1, max: 65535 }), (host, port) => {
      const text = formatHostPortNumbers({ host, port });
      assert.deepEqual(parseHostPortNumbers(text), { host, port });
      assert.deepEqual(parsePasvReply(`Entering Passive Mode (${text}).`), { host, port });
      assert.deepEqual(parsePasvReply(`Entering Passive Mode ${text}`), { host, port });
    }),
  );
  for (const bad of ['1,2,3,4,5', '256,0,0,1,1,1', '1,2,3,4,0,0', '1,2,3,4,5,6,7', 'a,b,c,d,e,f', '']) assert.equal(parseHostPortNumbers(bad), null, bad);
});

test('EPRT (RFC 2428): both families, any delimiter; mismatches refused', () => {
  fc.assert(
    fc.property(fc.oneof(fc.ipV4().map((h) => [1, h] as const), fc.ipV6().map((h) => [2, h] as const)), fc.integer({ min: 1, max: 65535 }), fc.constantFrom('|', '!', '#', '$'), ([proto, host], port, d) => {
      const r = parseEprt(`${d}${proto}${d}${host}${d}${port}${d}`);
      assert.deepEqual(r, { host, port, family: proto === 1 ? 4 : 6 });
    }),
  );
  for (const bad of ['|1|::1|21|', '|2|127.0.0.1|21|', '|3|127.0.0.1|21|', '|1|127.0.0.1|0|', '|1|127.0.0.1|70000|', '|1|127.0.0.1|21', '1|127.0.0.1|21|', '', '|1|x|2|']) {
    assert.equal(parseEprt(bad), null, bad);
  }
  fc.assert(fc.property(fc.string({ maxLength: 60 }), (s) => void parseEprt(s)));
});

test('229 replies: the port between the delimiters', () => {
  assert.equal(parseEpsvReply('Entering Extended Passive Mode (|||6446|)'), 6446);
  assert.equal(parseEpsvReply('ok (!!!21!)'), 21);
  assert.equal(parseEpsvReply('(|||0|)'), null);
  assert.equal(parseEpsvReply('(|||70000|)'), null);
  assert.equal(parseEpsvReply('(||6446|)'), null);
  assert.equal(parseEpsvReply('no port'), null);
});

test('reply lines and multi-line replies (RFC 959 4.2)', () => {
  assert.deepEqual(parseReplyLine('220 ready'), { code: 220, last: true, text: 'ready' });
  assert.deepEqual(parseReplyLine('211-Features:'), { code: 211, last: false, text: 'Features:' });
  assert.deepEqual(parseReplyLine('226'), { code: 226, last: true, text: '' });
  assert.deepEqual(parseReplyLine(' EPSV'), { code: null, last: false, text: ' EPSV' });
  assert.deepEqual(parseReplyLine('600 nope'), { code: null, last: false, text: '600 nope' });
  const a = new ReplyAssembler();
  const lines = ['211-Features:', ' EPSV', '123 not the end', '211-also not', '211 End'];
  const got = lines.map((l) => a.push(l));
  assert.deepEqual(got.slice(0, 4), [null, null, null, null]);
  assert.deepEqual(got[4], { code: 211, lines });
  assert.ok('error' in (new ReplyAssembler().push('garbage') as object));
  const bounded = new ReplyAssembler(3);
  bounded.push('200-a');
  bounded.push(' b');
  assert.equal(bounded.push(' c'), null);
  assert.ok('error' in (bounded.push(' d') as object), 'a reply over maxLines is an error');
});

test('property: formatReply output reassembles to the same reply; CR/LF in texts cannot add lines', () => {
  fc.assert(
    fc.property(fc.integer({ min: 100, max: 599 }), fc.array(fc.string({ maxLength: 40 }), { minLength: 1, maxLength: 6 }), (code, texts) => {
      const wire = formatReply(code, texts);
      const wireLines = wire.split('\r\n').slice(0, -1);
      assert.equal(wireLines.length, texts.length);
      const a = new ReplyAssembler();
      let r: FtpReply | { error: string } | null = null;
      for (const l of wireLines) {
        assert.equal(r, null, 'the reply must not end early');
        r = a.push(l);
      }
      assert.ok(r && !('error' in r));
      assert.equal(r.code, code);
      assert.equal(r.lines.length, texts.length);
    }),
  );
});

test('property: the assembler never throws on arbitrary lines', () => {
  fc.assert(
    fc.property(fc.array(fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('220 x', '150-a', '150 b', '226', ' x')), { maxLength: 30 }), (lines) => {
      const a = new ReplyAssembler(10);
      for (const l of lines) a.push(l);
    }),
  );
});

test('257 replies: the quoted directory, doubled quotes undone', () => {
  assert.equal(parsePwdReply('257 "/" is the current directory'), '/');
  assert.equal(parsePwdReply('257 "/a ""b"" c" created'), '/a "b" c');
  assert.equal(parsePwdReply('257 no quotes'), null);
  assert.equal(parsePwdReply('250 "/x"'), null);
});

test('150 replies: the size a server announces, only at the end of the last line', () => {
  const r = (...lines: string[]): FtpReply => ({ code: Number(lines[0]?.slice(0, 3)), lines });
  assert.equal(parseAnnouncedSize(r('150 Opening BINARY mode data connection for big.bin (12582912 bytes).')), 12582912);
  assert.equal(parseAnnouncedSize(r('150 Opening ASCII mode data connection for a (0 bytes)')), 0);
  assert.equal(parseAnnouncedSize(r('150-Accepted data connection', '150 12288.0 kbytes to download')), null);
  assert.equal(parseAnnouncedSize(r('150 Opening data connection')), null);
  // The file name is the client's: a `(N bytes)` in it is not the size.
  assert.equal(parseAnnouncedSize(r('150 Opening BINARY mode data connection for x (99999999 bytes).bin (17 bytes).')), 17);
  assert.equal(parseAnnouncedSize(r('150 Opening BINARY mode data connection for x (99999999 bytes)')), 99999999, 'indistinguishable: a name ending so when the server names no size');
  assert.equal(parseAnnouncedSize(r('226 Transfer complete (5 bytes)')), null, 'only preliminary replies');
});

test('USER user@host[:port]', () => {
  assert.deepEqual(parseUserAtHost('anonymous@127.0.0.1:2121'), { user: 'anonymous', host: '127.0.0.1', port: 2121 });
  assert.deepEqual(parseUserAtHost('me@corp@ftp.example.com'), { user: 'me@corp', host: 'ftp.example.com', port: null });
  assert.deepEqual(parseUserAtHost('u@[::1]:21'), { user: 'u', host: '::1', port: 21 });
  for (const bad of ['anonymous', '@host', 'u@', 'u@host:0', 'u@host:70000', 'u@[nothex]:21', 'u@ho st', 'u@host:21:22']) assert.equal(parseUserAtHost(bad), null, bad);
});

test('allowed upstreams, host:port split, and the bounce check', () => {
  assert.ok(upstreamAllowed(['*:21'], 'ftp.example.com', 21));
  assert.ok(!upstreamAllowed(['*:21'], 'ftp.example.com', 25));
  assert.ok(upstreamAllowed(['127.0.0.1:*'], '127.0.0.1', 40000));
  assert.ok(upstreamAllowed(['FTP.example.com:2?'], 'ftp.EXAMPLE.com', 21));
  assert.ok(!upstreamAllowed([], 'a', 21));
  assert.deepEqual(splitHostPort('[::1]:21'), { host: '::1', port: 21 });
  assert.deepEqual(splitHostPort('ftp.example.com:2121'), { host: 'ftp.example.com', port: 2121 });
  assert.equal(activeAddressAllowed({ host: '127.0.0.1', port: 40000 }, '::ffff:127.0.0.1'), null);
  assert.match(activeAddressAllowed({ host: '127.0.0.2', port: 40000 }, '127.0.0.1') ?? '', /not the client's own address/);
  assert.match(activeAddressAllowed({ host: '127.0.0.1', port: 25 }, '127.0.0.1') ?? '', /privileged/);
});

test('property: control lines split at any points read back the same; overlong lines are flagged and skipped', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.stringMatching(/^[ -~]{0,30}$/), { maxLength: 8 }), fc.array(fc.integer({ min: 1, max: 7 }), { maxLength: 20 }), async (lines, cuts) => {
      const input = lines.map((l) => `${l}\r\n`).join('') + `${'Z'.repeat(50)}\nend\n`;
      const stream = new PassThrough();
      const reader = new LineReader(stream as unknown as Socket, 40);
      let pos = 0;
      for (const c of cuts) {
        stream.write(input.slice(pos, pos + c));
        pos += c;
      }
      stream.end(input.slice(pos));
      const got: LineEvent[] = [];
      for (;;) {
        const ev = await reader.next(1000);
        if (ev.kind === 'eof' || ev.kind === 'timeout') break;
        got.push(ev);
      }
      assert.deepEqual(got, [...lines.map((line) => ({ kind: 'line', line })), { kind: 'too-long' }, { kind: 'line', line: 'end' }]);
    }),
    { numRuns: 100 },
  );
});

test('ftp-proxy config: data-ports, upstream, doc-acl engines checked against engines', () => {
  assert.equal(ftpProxySchema.parse({})['data-ports'], null);
  assert.deepEqual(ftpProxySchema.parse({ 'data-ports': '40000-40010' })['data-ports'], { min: 40000, max: 40010 });
  for (const bad of ['80-90', '5000-4000', '40000', 'x', '40000-70000']) assert.throws(() => ftpProxySchema.parse({ 'data-ports': bad }), bad);
  assert.equal(ftpProxySchema.parse({ upstream: 'ftp.example.com:21' }).upstream, 'ftp.example.com:21');
  assert.throws(() => ftpProxySchema.parse({ upstream: 'ftp.example.com' }));
  assert.throws(() => ftpProxySchema.parse({ bogus: 1 }), 'strict: unknown keys are errors');
  assert.throws(
    () => parseConfigText('ftp-proxy:\n  doc-acl:\n    - antivirus: [nope]\n', 'x.yaml'),
    /x\.yaml:\d+: ftp-proxy\.doc-acl\.0\.antivirus: no engine "nope"/,
  );
});

/** The octets of `text` in UTF-8, one character per octet (what the control reader hands on). */
const octetsOf = (text: string): string => Buffer.from(text, 'utf8').toString('latin1');

test('path text: UTF-8 when the octets are valid UTF-8, else latin1; parseCommand keeps the octets', () => {
  const table: Array<[string, string]> = [
    ['plain.txt', 'plain.txt'],
    [octetsOf('\u202egnp.exe'), '\u202egnp.exe'],
    [octetsOf('Überweisung-ß.pdf'), 'Überweisung-ß.pdf'],
    [octetsOf('日本語/文書.txt'), '日本語/文書.txt'],
    [octetsOf('\u{1f600}.png'), '\u{1f600}.png'],
    // A BOM is part of the name, not dropped.
    [octetsOf('\ufeffbom.txt'), '\ufeffbom.txt'],
    // Not UTF-8: latin1 (é as one octet), an overlong slash, an encoded surrogate, a cut sequence.
    ['caf\xe9.txt', 'café.txt'],
    ['a\xc0\xafb', 'a\xc0\xafb'],
    ['\xed\xa0\x80x', '\xed\xa0\x80x'],
    ['euro\xe2\x82', 'euro\xe2\x82'],
    // Not octets at all (already text): left alone.
    ['\u202egnp.exe', '\u202egnp.exe'],
  ];
  for (const [octets, text] of table) assert.equal(textOf(octets), text, JSON.stringify(octets));
  // The argument itself stays octets: formatCommand sends back exactly what came in.
  const line = `STOR ${octetsOf('\u202egnp.exe')}`;
  const cmd = parseCommand(line);
  assert.ok(cmd);
  assert.equal(cmd.arg, octetsOf('\u202egnp.exe'));
  assert.deepEqual(Buffer.from(formatCommand(cmd.verb, cmd.arg), 'latin1'), Buffer.concat([Buffer.from('STOR '), Buffer.from('\u202egnp.exe', 'utf8'), Buffer.from('\r\n')]));
});

test('property: textOf reads back any text sent as UTF-8, and never changes what it cannot decode losslessly', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme', maxLength: 60 }), (text) => {
      assert.equal(textOf(octetsOf(text)), text);
    }),
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 60 }), (bytes) => {
      const octets = Buffer.from(bytes).toString('latin1');
      const text = textOf(octets);
      // Either the octets as they are, or a decoding that gives back exactly the same octets.
      assert.ok(text === octets || Buffer.from(text, 'utf8').equals(Buffer.from(bytes)), JSON.stringify(octets));
    }),
  );
});

test('printable: controls and bidirectional marks become ?, bounded by characters', () => {
  assert.equal(printable('\u202egnp.exe'), '?gnp.exe');
  assert.equal(printable('a\x00b\x1bc\x85d\u2067e\u200ff'), 'a?b?c?d?e?f');
  assert.equal(printable('Überweisung.pdf'), 'Überweisung.pdf');
  assert.equal(printable('\u{1f600}'.repeat(5), 3), `${'\u{1f600}'.repeat(3)}…`);
});
