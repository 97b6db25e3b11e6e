import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { splitAt } from '../helpers/split.js';
import {
  blankStrings,
  commandName,
  contentKindOf,
  FetchItemTracker,
  ImapWireParser,
  parseLiteralMarker,
  rewriteMarker,
  type WireEvent,
  type WireRole,
} from '../../src/protocols/imap/wire.js';

/** What a stream means: messages as lists of text segments and whole literals. */
type Token = { t: 'text'; s: string; first: boolean; lit: number | null } | { t: 'lit'; data: string } | { t: 'overflow' };

function tokensOf(chunks: Buffer[], role: WireRole = 'client', maxLineLength = 200): Token[] {
  const p = new ImapWireParser({ role, maxLineLength });
  const out: Token[] = [];
  let lit: Buffer[] | null = null;
  const take = (e: WireEvent) => {
    if (e.kind === 'text') {
      out.push({ t: 'text', s: e.text.toString('latin1'), first: e.first, lit: e.literal?.size ?? null });
      if (e.literal) lit = [];
    } else if (e.kind === 'data') {
      // Views are valid until the next push: copy.
      (lit as Buffer[]).push(Buffer.from(e.data));
    } else if (e.kind === 'literal-end') {
      out.push({ t: 'lit', data: Buffer.concat(lit as Buffer[]).toString('latin1') });
      lit = null;
    } else out.push({ t: 'overflow' });
  };
  for (const c of chunks) {
    p.push(c);
    for (let e = p.next(); e; e = p.next()) take(e);
  }
  return out;
}


/** Text without CR/LF, not ending in something that looks like a marker. */
const textArb = fc.string({ unit: fc.constantFrom('a', 'B', ' ', '(', ')', '[', ']', '"', '1', '.', '<', '>', '\\', '*'), maxLength: 40 }).map((s) => `A${s}x`);
const literalArb = fc.uint8Array({ maxLength: 600 }).map((u) => Buffer.from(u));
const messageArb = fc.record({
  segments: fc.array(fc.record({ text: textArb, literal: literalArb, kind: fc.constantFrom('', '+', '~') }), { maxLength: 3 }),
  last: textArb,
});

function encode(messages: Array<{ segments: Array<{ text: string; literal: Buffer; kind: string }>; last: string }>): { wire: Buffer; model: Token[] } {
  const parts: Buffer[] = [];
  const model: Token[] = [];
  for (const m of messages) {
    let first = true;
    for (const seg of m.segments) {
      const marker = seg.kind === '~' ? `~{${seg.literal.length}}` : `{${seg.literal.length}${seg.kind}}`;
      parts.push(Buffer.from(`${seg.text} ${marker}\r\n`, 'latin1'), seg.literal);
      model.push({ t: 'text', s: `${seg.text} ${marker}`, first, lit: seg.literal.length }, { t: 'lit', data: seg.literal.toString('latin1') });
      first = false;
    }
    parts.push(Buffer.from(`${m.last}\r\n`, 'latin1'));
    model.push({ t: 'text', s: m.last, first, lit: null });
  }
  return { wire: Buffer.concat(parts), model };
}

describe('imap wire tokenizer', () => {
  test('random splits of valid streams give the same tokens as the model', () => {
    fc.assert(
      fc.property(fc.array(messageArb, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { maxLength: 12 }), (messages, cuts) => {
        const { wire, model } = encode(messages);
        assert.deepEqual(tokensOf([wire]), model);
        assert.deepEqual(tokensOf(splitAt(wire, cuts)), model);
      }),
      { numRuns: 300 },
    );
  });

  test('byte-by-byte feeding equals one chunk (literal of every size 0..300)', () => {
    for (let n = 0; n <= 300; n += 7) {
      const wire = Buffer.concat([Buffer.from(`a APPEND INBOX {${n}}\r\n`), Buffer.alloc(n, 0x0a), Buffer.from('\r\nb NOOP\r\n')]);
      const bytes = [...wire].map((b) => Buffer.from([b]));
      const whole = tokensOf([wire]);
      assert.deepEqual(tokensOf(bytes), whole);
      assert.deepEqual(whole[1], { t: 'lit', data: '\n'.repeat(n) });
      assert.deepEqual(whole.at(-1), { t: 'text', s: 'b NOOP', first: true, lit: null });
    }
  });

  test('rewritten literals always carry the right octet count', () => {
    fc.assert(
      fc.property(textArb, literalArb, literalArb, fc.boolean(), (text, original, replacement, binary) => {
        const marker = binary ? `~{${original.length}}` : `{${original.length}}`;
        const line = Buffer.from(`* 1 FETCH (${text} ${marker}`, 'latin1');
        const spec = parseLiteralMarker(line);
        assert.ok(spec);
        assert.equal(spec.size, original.length);
        assert.equal(spec.binary, binary);
        const rewritten = Buffer.concat([rewriteMarker(line, spec, replacement.length), replacement, Buffer.from(')\r\n* 2 EXISTS\r\n')]);
        const toks = tokensOf([rewritten], 'server', 1000);
        assert.equal(toks[0]?.t === 'text' && toks[0].lit, replacement.length);
        assert.deepEqual(toks[1], { t: 'lit', data: replacement.toString('latin1') });
        assert.deepEqual(toks[2], { t: 'text', s: ')', first: false, lit: null });
        assert.deepEqual(toks[3], { t: 'text', s: '* 2 EXISTS', first: true, lit: null });
      }),
      { numRuns: 300 },
    );
  });

  test('an overlong line is reported once and the stream resynchronises at its end', () => {
    fc.assert(
      fc.property(fc.integer({ min: 51, max: 400 }), fc.array(fc.nat(), { maxLength: 6 }), (len, cuts) => {
        const wire = Buffer.from(`t1 ${'x'.repeat(len)} {5}\r\nt2 NOOP\r\n`);
        const toks = tokensOf(splitAt(wire, cuts), 'client', 50);
        assert.deepEqual(toks, [{ t: 'overflow' }, { t: 'text', s: 't2 NOOP', first: true, lit: null }]);
      }),
    );
  });

  test('a bare LF ends a line; garbage never throws', () => {
    assert.deepEqual(tokensOf([Buffer.from('a NOOP\nb NOOP\r\n')]), [
      { t: 'text', s: 'a NOOP', first: true, lit: null },
      { t: 'text', s: 'b NOOP', first: true, lit: null },
    ]);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 500 }), fc.constantFrom<WireRole>('client', 'server'), (bytes, role) => {
        tokensOf([Buffer.from(bytes)], role, 40);
      }),
    );
  });

  test('server status responses and continuations carry no literals', () => {
    assert.deepEqual(tokensOf([Buffer.from('* OK hello {5}\r\n+ go {3}\r\na1 NO [ALERT] x {2}\r\n* 3 FETCH (BODY[] {2}\r\nab)\r\n')], 'server'), [
      { t: 'text', s: '* OK hello {5}', first: true, lit: null },
      { t: 'text', s: '+ go {3}', first: true, lit: null },
      { t: 'text', s: 'a1 NO [ALERT] x {2}', first: true, lit: null },
      { t: 'text', s: '* 3 FETCH (BODY[] {2}', first: true, lit: 2 },
      { t: 'lit', data: 'ab' },
      { t: 'text', s: ')', first: false, lit: null },
    ]);
  });

  test('cancelLiteral: a refused synchronising literal does not swallow the next command', () => {
    const p = new ImapWireParser({ role: 'client', maxLineLength: 100 });
    p.push(Buffer.from('a APPEND INBOX {99999}\r\n'));
    const e = p.next();
    assert.equal(e?.kind === 'text' && e.literal?.size, 99999);
    p.cancelLiteral();
    p.push(Buffer.from('b NOOP\r\n'));
    const n = p.next();
    assert.equal(n?.kind === 'text' && n.text.toString(), 'b NOOP');
    assert.equal(n?.kind === 'text' && n.first, true);
  });

  test('marker variants', () => {
    assert.deepEqual(parseLiteralMarker(Buffer.from('a LOGIN {3+}')), { size: 3, plus: true, binary: false, markerStart: 8 });
    assert.deepEqual(parseLiteralMarker(Buffer.from('* 1 FETCH (BINARY[2] ~{10}')), { size: 10, plus: false, binary: true, markerStart: 21 });
    assert.equal(parseLiteralMarker(Buffer.from('a NOOP {x}')), null);
    // Past 2^53 still a literal (the server would read one), with a size no limit lets through.
    assert.equal(parseLiteralMarker(Buffer.from('a X {99999999999999999}'))?.size, Number.MAX_SAFE_INTEGER);
    assert.equal(parseLiteralMarker(Buffer.from('a APPEND INBOX {99999999999999999999999}'))?.size, Number.MAX_SAFE_INTEGER);
  });
});

describe('fetch items', () => {
  function itemsOf(segments: string[]): Array<string | null> {
    const t = new FetchItemTracker();
    const out: Array<string | null> = [];
    segments.forEach((s, i) => {
      const spec = parseLiteralMarker(Buffer.from(s));
      const text = Buffer.from(spec ? s.slice(0, spec.markerStart) : s);
      if (i === 0) assert.ok(t.start(text));
      else t.continue(text);
      if (spec) out.push(t.literalItem());
    });
    return out;
  }

  test('the item a literal belongs to', () => {
    assert.deepEqual(itemsOf(['* 1 FETCH (UID 5 BODY[] {10}', ')']), ['BODY[]']);
    assert.deepEqual(itemsOf(['* 1 FETCH (UID 5 FLAGS (\\Seen) RFC822 {10}', ' BODY[2]<0> {4}', ')']), ['RFC822', 'BODY[2]<0>']);
    assert.deepEqual(itemsOf(['* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT "X-)")] {10}', ' BINARY[1] ~{4}', ')']), ['BODY[HEADER.FIELDS (SUBJECT "X-)")]', 'BINARY[1]']);
    // A literal inside ENVELOPE is a string of the list, not an item value.
    assert.deepEqual(itemsOf(['* 3 FETCH (ENVELOPE ("date" {5}', ' NIL NIL) BODY[1] {3}', ')']), [null, 'BODY[1]']);
    assert.deepEqual(itemsOf(['* 4 FETCH (BODYSTRUCTURE ("text" "plain" ("name" "a)b") NIL NIL "7bit" 3 1) BODY[] {1}', ')']), ['BODY[]']);
    assert.equal(new FetchItemTracker().start(Buffer.from('* 4 EXISTS')), false);
  });

  test('random FETCH attribute lists: literals are attributed to top-level items only (property)', () => {
    type Value = { kind: 'atom' | 'quoted' | 'literal'; text: string } | { kind: 'list'; items: Value[] };
    const str = fc.string({ unit: fc.constantFrom('a', 'b', ' ', '(', ')', '"', '\\', '{', '}', '[', ']', '1'), maxLength: 12 });
    const valueArb: fc.Arbitrary<Value> = fc.letrec<{ v: Value }>((tie) => ({
      v: fc.oneof(
        { depthSize: 'small' },
        fc.record({ kind: fc.constant('atom' as const), text: fc.constantFrom('NIL', '12', '\\Seen', 'abc') }),
        fc.record({ kind: fc.constant('quoted' as const), text: str }),
        fc.record({ kind: fc.constant('literal' as const), text: str }),
        fc.record({ kind: fc.constant('list' as const), items: fc.array(tie('v'), { maxLength: 3 }) }),
      ),
    })).v;
    const itemArb = fc.record({ name: fc.constantFrom('UID', 'FLAGS', 'ENVELOPE', 'BODY[]', 'BODY[1.2]', 'BODY[HEADER.FIELDS (A "B)")]', 'BINARY[3]', 'RFC822'), value: valueArb });
    fc.assert(
      fc.property(fc.array(itemArb, { minLength: 1, maxLength: 5 }), (items) => {
        // Serialise into segments, noting for each literal the item it belongs to (null inside lists).
        const segments: string[] = [];
        const expected: Array<string | null> = [];
        let cur = '* 7 FETCH (';
        const emit = (v: Value, top: string | null): void => {
          if ('items' in v) {
            cur += '(';
            v.items.forEach((x, i) => {
              if (i > 0) cur += ' ';
              emit(x, null);
            });
            cur += ')';
          } else if (v.kind === 'atom') cur += v.text;
          else if (v.kind === 'quoted') cur += `"${v.text.replace(/["\\]/g, '\\$&')}"`;
          else if (v.kind === 'literal') {
            cur += `{${Buffer.byteLength(v.text, 'latin1')}}`;
            segments.push(cur);
            expected.push(top);
            cur = '';
          }
        };
        items.forEach((it, i) => {
          cur += `${i > 0 ? ' ' : ''}${it.name} `;
          emit(it.value, it.name);
        });
        segments.push(`${cur})`);
        assert.deepEqual(itemsOf(segments), expected);
      }),
      { numRuns: 400 },
    );
  });

  test('preview strings (PREVIEW, SNIPPET) are found, quoted or literal, and blanked; other strings are not', () => {
    /** Each segment as the proxy sends it (quoted preview strings blanked), and per literal whether it is a preview's. */
    function blanked(segments: string[]): { sent: string[]; hidden: boolean[] } {
      const t = new FetchItemTracker();
      const sent: string[] = [];
      const hidden: boolean[] = [];
      segments.forEach((s, i) => {
        const spec = parseLiteralMarker(Buffer.from(s));
        const text = Buffer.from(spec ? s.slice(0, spec.markerStart) : s, 'latin1');
        if (i === 0) assert.ok(t.start(text));
        else t.continue(text);
        sent.push(blankStrings(text, t.hidden).toString('latin1'));
        if (spec) {
          hidden.push(t.literalHidden());
          t.literalItem();
        }
      });
      return { sent, hidden };
    }
    assert.deepEqual(blanked(['* 1 FETCH (UID 4 PREVIEW "X5O!P%@AP[4\\\\PZX" FLAGS (\\Seen))']), { sent: ['* 1 FETCH (UID 4 PREVIEW "" FLAGS (\\Seen))'], hidden: [] });
    assert.deepEqual(blanked(['* 1 FETCH (SNIPPET (FUZZY "a \\"b\\" (c)") ENVELOPE ("d" "subject"))']), { sent: ['* 1 FETCH (SNIPPET (FUZZY "") ENVELOPE ("d" "subject"))'], hidden: [] });
    assert.deepEqual(blanked(['* 2 FETCH (UID 5 PREVIEW {76}', ' BODY[] {10}', ')']), { sent: ['* 2 FETCH (UID 5 PREVIEW ', ' BODY[] ', ')'], hidden: [true, false] });
    assert.deepEqual(blanked(['* 2 FETCH (SNIPPET (FUZZY {76}', ') ENVELOPE ("x" {3}', ' NIL) PREVIEW NIL)']), { sent: ['* 2 FETCH (SNIPPET (FUZZY ', ') ENVELOPE ("x" ', ' NIL) PREVIEW NIL)'], hidden: [true, false] });
    assert.deepEqual(blanked(['* 3 FETCH (BODY[HEADER.FIELDS (PREVIEW)] {5}', ' X-PREVIEW "kept")']), { sent: ['* 3 FETCH (BODY[HEADER.FIELDS (PREVIEW)] ', ' X-PREVIEW "kept")'], hidden: [false] });
  });

  test('content kinds', () => {
    const table: Array<[string, string]> = [
      ['BODY[]', 'message'],
      ['BODY.PEEK[]', 'message'],
      ['RFC822', 'message'],
      ['BINARY[]', 'message'],
      ['BODY[]<0>', 'message'],
      ['BODY[1]', 'part'],
      ['BODY[2.1]', 'part'],
      ['BODY[TEXT]', 'part'],
      ['RFC822.TEXT', 'part'],
      ['BINARY[2]', 'part'],
      ['BODY[HEADER]', 'other'],
      ['BODY[1.MIME]', 'other'],
      ['BODY[2.HEADER]', 'other'],
      ['BODY[HEADER.FIELDS (SUBJECT FROM)]', 'other'],
      ['RFC822.HEADER', 'other'],
      ['ENVELOPE', 'other'],
    ];
    for (const [item, kind] of table) assert.equal(contentKindOf(item).kind, kind, item);
    assert.deepEqual(contentKindOf('BODY[]<100>'), { kind: 'message', partial: true, binary: false });
  });

  test('command names', () => {
    assert.deepEqual(commandName(Buffer.from('a1 uid fetch 1:* BODY[]')), { tag: 'a1', name: 'UID FETCH', rest: ' 1:* BODY[]' });
    assert.deepEqual(commandName(Buffer.from('A2 APPEND INBOX {3}')), { tag: 'A2', name: 'APPEND', rest: ' INBOX {3}' });
    assert.equal(commandName(Buffer.from('')), null);
    assert.equal(commandName(Buffer.from('+ x')), null);
  });
});
