import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Base64Decoder, QuotedPrintableDecoder } from '../../src/mime/decoders.js';
import { encodeParam, encodeQuotedPrintable, encodeWords, foldHeader, headerLine, safeContentType } from '../../src/mime/encode.js';
import { cleanFilename, decodeEncodedWords, mediaType, parseStructured, transferEncoding } from '../../src/mime/headers.js';
import { DEFAULT_MIME_LIMITS, MIME_LIMIT_KEYS, MIME_PROBLEM_CODES, validateMimeLimits } from '../../src/mime/limits.js';
import { UuScanner } from '../../src/mime/uuencode.js';

describe('RFC 2047 encoded words', () => {
  const cases: Array<[string, string]> = [
    ['=?UTF-8?B?w6lsw6k=?=', 'élé'],
    ['=?utf-8?q?caf=C3=A9_cr=C3=A8me?=', 'café crème'],
    ['=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=', 'ab'],
    ['=?ISO-8859-1?Q?a?=\r\n =?ISO-8859-1?Q?b?=', 'ab'],
    ['=?ISO-8859-1?Q?a?= plain =?ISO-8859-1?Q?b?=', 'a plain b'],
    // a multi-byte character split over two words
    ['=?UTF-8?B?4oI=?= =?UTF-8?B?rA==?=', '€'],
    ['=?UTF-8*en?Q?lang?=', 'lang'],
    ['=?KOI8-R?B?8NLJ18XU?=', 'Привет'],
    ['=?x-unknown?Q?abc?=', 'abc'],
    ['not =?encoded', 'not =?encoded'],
    ['=?UTF-8?B??=', ''],
  ];
  for (const [input, expected] of cases) {
    it(JSON.stringify(input), () => assert.equal(decodeEncodedWords(input), expected));
  }

  it('encodes and decodes back, words at most 75 characters', () => {
    for (const text of ['[VÍRUS]', 'ascii only', '日本語のテキスト'.repeat(10), '€'.repeat(40), 'mixed é and 😀 emoji']) {
      const enc = encodeWords(text);
      for (const w of enc.split(' ')) assert.ok(w.length <= 75, w);
      assert.equal(decodeEncodedWords(enc), text);
    }
  });
});

describe('structured values and RFC 2231 parameters', () => {
  it('parses quoted, unquoted and junk parameters', () => {
    const v = parseStructured('Multipart/Mixed; boundary="a;b\\"c"; charset=utf-8 ;junk; name = x.txt');
    assert.equal(v.value, 'Multipart/Mixed');
    assert.equal(v.params.get('boundary'), 'a;b"c');
    assert.equal(v.params.get('charset'), 'utf-8');
    assert.equal(v.params.get('name'), 'x.txt');
  });

  it('joins continuations in index order with their charset', () => {
    const v = parseStructured("attachment; filename*2*=%20three; filename*0*=utf-8'en'one%20; filename*1=two");
    assert.equal(v.params.get('filename'), 'one two three');
    assert.equal(parseStructured("a; filename*=iso-8859-1''%E9t%E9").params.get('filename'), 'été');
    assert.equal(parseStructured("a; filename*=''no-charset").params.get('filename'), 'no-charset');
    assert.equal(parseStructured('a; filename="plain"; filename*=UTF-8\'\'ext').params.get('filename'), 'ext');
  });

  it('media types, transfer encodings, file names', () => {
    assert.equal(mediaType(' Text/HTML '), 'text/html');
    assert.equal(mediaType('text'), null);
    assert.equal(mediaType('text/html extra'), null);
    assert.equal(transferEncoding(' BASE64 (comment)'), 'base64');
    assert.equal(transferEncoding('quoted-printable; x'), 'quoted-printable');
    assert.equal(cleanFilename('=?UTF-8?Q?a=0Ab?=.exe'), 'ab.exe');
    assert.equal(cleanFilename('   '), null);
    assert.equal(cleanFilename(undefined), null);
  });
});

describe('encoders', () => {
  it('folds long header values at blanks, lines of at most 78', () => {
    const folded = foldHeader('X-AV-Status', Array.from({ length: 30 }, (_, i) => `word${i}`).join(' '), '\r\n');
    assert.ok(folded.endsWith('\r\n'));
    for (const line of folded.slice(0, -2).split('\r\n')) assert.ok(line.length <= 78, line);
    assert.equal(folded.replace(/\r\n(?=[ \t])/g, ''), `X-AV-Status: ${Array.from({ length: 30 }, (_, i) => `word${i}`).join(' ')}\r\n`);
    // a single long token cannot be folded
    assert.equal(foldHeader('X', 'a'.repeat(100), '\n'), `X: ${'a'.repeat(100)}\n`);
  });

  it('header lines refuse bad names and neutralise line breaks', () => {
    assert.throws(() => headerLine('X:Y', 'v', '\r\n'), TypeError);
    assert.equal(headerLine('X-A', 'one\r\nBcc: x', '\r\n'), 'X-A: one Bcc: x\r\n');
  });

  it('RFC 2231 parameters round-trip through the parser', () => {
    for (const name of ['simple.txt', 'with "quotes".txt', 'ümlaut.pdf', `${'long-é-name-'.repeat(12)}.zip`, "it's (1).doc"]) {
      const v = parseStructured(`attachment; ${encodeParam('filename', name)}`);
      assert.equal(v.params.get('filename'), name);
    }
  });

  it('quoted-printable encoding decodes back with hard line breaks', () => {
    const text = `Virus found: Win.Test — removed = ok \nsecond line\t\n${'x'.repeat(200)}`;
    const enc = encodeQuotedPrintable(text, '\r\n');
    for (const line of enc.split('\r\n')) assert.ok(line.length <= 76, line);
    const d = new QuotedPrintableDecoder(1024);
    const out = Buffer.concat([d.write(Buffer.from(enc)), d.end()]);
    assert.equal(out.toString('utf8'), text.replace(/\n/g, '\r\n'));
    assert.equal(d.error, null);
  });

  it('quoted-printable: no encoded line starts with "-" (a quoted text never forms a boundary line)', () => {
    const text = `--b-inject\n--b-inject--\n${'y'.repeat(74)}-- after a soft break`;
    const enc = encodeQuotedPrintable(text, '\r\n');
    for (const line of enc.split('\r\n')) assert.ok(!line.startsWith('-'), line);
    const d = new QuotedPrintableDecoder(1024);
    assert.equal(Buffer.concat([d.write(Buffer.from(enc)), d.end()]).toString('utf8'), text.replace(/\n/g, '\r\n'));
  });

  it('caller media types are checked', () => {
    assert.equal(safeContentType('application/zip'), 'application/zip');
    assert.equal(safeContentType('text/plain; charset=utf-8'), 'text/plain; charset=utf-8');
    assert.equal(safeContentType('evil\r\nBcc: x'), 'application/octet-stream');
    assert.equal(safeContentType('noslash'), 'application/octet-stream');
  });
});

describe('decoders', () => {
  it('base64 in pieces cut anywhere gives the same bytes', () => {
    const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 7) & 255));
    const text = Buffer.from(data.toString('base64').replace(/.{76}/g, '$&\r\n'));
    for (const step of [1, 2, 3, 5, 77, 4096]) {
      const d = new Base64Decoder();
      const parts: Buffer[] = [];
      for (let i = 0; i < text.length; i += step) parts.push(d.write(text.subarray(i, i + step)));
      parts.push(d.end());
      assert.deepEqual(Buffer.concat(parts), data, `step ${step}`);
      assert.equal(d.error, null);
    }
  });

  it('base64: any mix of line ends, blanks, junk and padding, cut anywhere, decodes as the rule says', () => {
    // The rule (RFC 2045 6.8 as the decoder reads it), spelled out slowly: drop everything outside
    // the alphabet and '='; each '=' run ends a quantum (a lone character before it is dropped);
    // decoding goes on after it. Junk other than white space is an error.
    const reference = (text: string): { bytes: Buffer; invalid: boolean } => {
      const kept = text.replace(/[^A-Za-z0-9+/=]/g, '');
      const out: Buffer[] = [];
      for (const run of kept.split(/=+/)) {
        const whole = run.length - (run.length % 4);
        out.push(Buffer.from(run.slice(0, whole), 'base64'));
        if (run.length % 4 >= 2) out.push(Buffer.from(run.slice(whole), 'base64'));
      }
      return { bytes: Buffer.concat(out), invalid: /[^A-Za-z0-9+/=\s]/.test(text) };
    };
    const piece = fc.oneof(
      { weight: 6, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 120 }).map((b) => Buffer.from(b).toString('base64').replace(/=+$/, '')) },
      { weight: 2, arbitrary: fc.constantFrom('\r\n', '\n', '\r', ' ', '\t') },
      { weight: 1, arbitrary: fc.constantFrom('=', '==', '*', '-', '\u00e9', '.') },
    );
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 60 }), fc.array(fc.nat(), { maxLength: 8 }), (pieces, cutsRaw) => {
        const text = Buffer.from(pieces.join(''), 'latin1');
        const cuts = [...new Set(cutsRaw.map((c) => (text.length === 0 ? 0 : c % text.length)))].sort((a, b) => a - b);
        const d = new Base64Decoder();
        const parts: Buffer[] = [];
        let at = 0;
        for (const c of [...cuts, text.length]) {
          parts.push(d.write(text.subarray(at, c)));
          at = c;
        }
        parts.push(d.end());
        const want = reference(text.toString('latin1'));
        assert.deepEqual(Buffer.concat(parts), want.bytes);
        // The first fault depends on the cuts: a padding fault in an earlier write comes first.
        if (want.invalid) assert.notEqual(d.error, null);
        if (want.invalid && cuts.length === 0) assert.match(d.error ?? '', /invalid character/);
        if (!want.invalid) assert.doesNotMatch(d.error ?? '', /invalid character/);
      }),
      { numRuns: 400 },
    );
  });

  it('base64: one write of several hundred KiB (decoded in slices inside) gives the same bytes', () => {
    const data = Buffer.from(Array.from({ length: 400_000 }, (_, i) => (i * 31 + (i >> 7)) & 255));
    for (const eol of ['\r\n', '\n']) {
      const text = Buffer.from(data.toString('base64').replace(/.{76}/g, `$&${eol}`));
      const d = new Base64Decoder();
      assert.deepEqual(Buffer.concat([d.write(text), d.end()]), data);
      assert.equal(d.error, null);
    }
    // One write with a padding fault in its first slice and junk in a later one: the junk is the
    // first fault, as when the write was not sliced.
    const faulty = Buffer.from(`QQ==A=\r\n${`${'QUFB'.repeat(19)}\r\n`.repeat(900)}*${'QUFB'.repeat(19)}\r\n`);
    const e = new Base64Decoder();
    e.write(faulty);
    e.end();
    assert.equal(e.error, 'invalid character in base64');
  });

  it('base64: a lone last character is an error', () => {
    const d = new Base64Decoder();
    assert.equal(Buffer.concat([d.write(Buffer.from('SGVsbG8')), d.end()]).toString(), 'Hello');
    assert.equal(d.error, null);
    const e = new Base64Decoder();
    e.write(Buffer.from('SGVsbG8gd'));
    e.end();
    assert.match(e.error ?? '', /quantum/);
  });

  it('quoted-printable in pieces cut anywhere gives the same bytes', () => {
    const text = Buffer.from('a=3Db soft=\r\nbreak  \r\nline=\n2 =C3=A9\t\r\nend=');
    const whole = new QuotedPrintableDecoder(1024);
    const expected = Buffer.concat([whole.write(text), whole.end()]);
    assert.equal(expected.toString(), 'a=b softbreak\r\nline2 é\r\nend');
    for (let step = 1; step < 8; step++) {
      const d = new QuotedPrintableDecoder(1024);
      const parts: Buffer[] = [];
      for (let i = 0; i < text.length; i += step) parts.push(d.write(text.subarray(i, i + step)));
      parts.push(d.end());
      assert.deepEqual(Buffer.concat(parts), expected, `step ${step}`);
    }
  });

  it('uuencode scanner in pieces cut anywhere finds the same files', () => {
    const text = Buffer.from('hello\nbegin 644 a.txt\n#86)C\n`\nend\nbeginning of a line\nbegin 755 b\n$9F]O"@``\n`\nend\n');
    const run = (step: number): string[] => {
      const s = new UuScanner(1024);
      const out: string[] = [];
      let data = false;
      const take = (evs: ReturnType<UuScanner['write']>): void => {
        for (const e of evs) {
          // data events may come in pieces: join them
          if (e.type === 'data' && data) out.push(`${out.pop() ?? ''}${e.data.toString('latin1')}`);
          else out.push(e.type === 'begin' ? `begin ${e.name}` : e.type === 'data' ? e.data.toString('latin1') : `end ${e.complete}`);
          data = e.type === 'data';
        }
      };
      for (let i = 0; i < text.length; i += step) take(s.write(text.subarray(i, i + step)));
      take(s.end());
      return out;
    };
    const expected = ['begin a.txt', 'abc', 'end true', 'begin b', 'foo\n', 'end true'];
    for (const step of [1, 2, 3, 4, 7, 1000]) assert.deepEqual(run(step), expected, `step ${step}`);
  });
});

describe('limits and problem codes', () => {
  it('defaults are valid and frozen; bad values are refused', () => {
    assert.deepEqual(validateMimeLimits(DEFAULT_MIME_LIMITS), DEFAULT_MIME_LIMITS);
    assert.ok(Object.isFrozen(DEFAULT_MIME_LIMITS));
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      assert.throws(() => validateMimeLimits({ ...DEFAULT_MIME_LIMITS, maxParts: bad }), { code: 'AVG_ERR_CONFIG' });
    }
  });

  it('docs/mime.md lists every limit with its default and every problem code', () => {
    const doc = readFileSync(new URL('../../docs/mime.md', import.meta.url), 'utf8');
    const sizes: Record<string, string> = { maxHeaderSize: '64KiB', maxDecodedSize: '100MiB', maxLineLength: '16KiB' };
    for (const [key, name] of Object.entries(MIME_LIMIT_KEYS)) {
      const value = sizes[key] ?? String(DEFAULT_MIME_LIMITS[key as keyof typeof DEFAULT_MIME_LIMITS]);
      assert.ok(doc.includes(`| \`mail.${name}\` | \`${value}\` |`), `docs/mime.md: mail.${name} = ${value}`);
    }
    assert.equal(DEFAULT_MIME_LIMITS.maxHeaderSize, 64 * 1024);
    assert.equal(DEFAULT_MIME_LIMITS.maxDecodedSize, 100 * 1024 * 1024);
    assert.equal(DEFAULT_MIME_LIMITS.maxLineLength, 16 * 1024);
    const section = doc.slice(doc.indexOf('## Problem codes'), doc.indexOf('## ', doc.indexOf('## Problem codes') + 3));
    const listed = [...section.matchAll(/^\| `([a-z-]+)` \|/gm)].map((m) => m[1]);
    assert.deepEqual(listed.sort(), Object.keys(MIME_PROBLEM_CODES).sort());
  });
});
