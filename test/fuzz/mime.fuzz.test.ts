import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Base64Decoder, QuotedPrintableDecoder } from '../../src/mime/decoders.js';
import { encodeLegacyName, encodeParam } from '../../src/mime/encode.js';
import { MIME_PROBLEM_CODES, type MimeLimits } from '../../src/mime/limits.js';
import { MimeParser, type ParserEvent } from '../../src/mime/parser.js';
import { rewriteMessage, type RewritePlan } from '../../src/mime/rewriter.js';
import { UuScanner } from '../../src/mime/uuencode.js';
import { walkMessage } from '../../src/mime/walker.js';

/**
 * Property tests of the MIME walker and rewriter: random MIME trees are serialized (by code
 * written here, independent of src/mime's parser) and the walker must find exactly their
 * documents; random damage must never make it throw or grow; the rewriter must copy what it
 * does not change byte for byte.
 */

type Enc = '7bit' | '8bit' | 'base64' | 'quoted-printable';
interface Leaf {
  kind: 'leaf';
  text: boolean;
  enc: Enc;
  lines: string[];
  bytes: Uint8Array;
  filename: string | null;
  nameIn: 'disposition' | 'type';
  omitType: boolean;
}
interface Multi {
  kind: 'multipart';
  sub: string;
  children: Node[];
  preamble: string;
  epilogue: string;
  fold: boolean;
}
interface Msg {
  kind: 'message';
  body: Node;
}
type Node = Leaf | Multi | Msg;

interface Expected {
  id: string;
  data: Buffer;
  filename: string | null;
  contentType: string;
  start: number;
  end: number;
  messageTop: boolean;
}

/** Text that can never look like a delimiter, a uuencode begin line or an encoded word. */
const safeChar = fc.constantFrom(...'abcdef0123456789 .,:;'.split(''));
const safeLine = fc.string({ unit: safeChar, maxLength: 50 });
const filename = fc
  .string({ unit: 'grapheme', minLength: 1, maxLength: 24 })
  // eslint-disable-next-line no-control-regex
  .filter((s) => s === s.trim() && !/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(s) && !s.includes('=?') && s.length > 0);

const leafArb: fc.Arbitrary<Leaf> = fc
  .record({
    text: fc.boolean(),
    enc: fc.constantFrom<Enc>('7bit', '8bit', 'base64', 'quoted-printable'),
    lines: fc.array(safeLine, { maxLength: 4 }),
    bytes: fc.uint8Array({ maxLength: 300 }),
    filename: fc.option(filename, { nil: null }),
    nameIn: fc.constantFrom<'disposition' | 'type'>('disposition', 'type'),
    omitType: fc.boolean(),
  })
  .map((r) => ({ kind: 'leaf' as const, ...r }));

const { node: nodeArb } = fc.letrec<{ node: Node; multi: Multi; msg: Msg; leaf: Leaf }>((tie) => ({
  node: fc.oneof({ maxDepth: 6, depthSize: 'medium', depthIdentifier: 'mime' }, tie('leaf'), tie('multi'), tie('msg')),
  leaf: leafArb,
  multi: fc
    .record({
      sub: fc.constantFrom('mixed', 'alternative', 'related', 'signed'),
      children: fc.array(tie('node'), { minLength: 1, maxLength: 5, depthIdentifier: 'mime' }),
      preamble: safeLine,
      epilogue: safeLine,
      fold: fc.boolean(),
    })
    .map((r) => ({ kind: 'multipart' as const, ...r })),
  msg: tie('node').map((body) => ({ kind: 'message' as const, body })),
}));

function join(prefix: string, n: number): string {
  return prefix === '' ? String(n) : `${prefix}.${n}`;
}

/** Quoted-printable of arbitrary bytes (written here: everything but safe ASCII escaped, soft breaks). */
function qp(data: Uint8Array, eol: string): string {
  let out = '';
  let line = '';
  for (const c of data) {
    const t = c > 32 && c < 127 && c !== 61 ? String.fromCharCode(c) : `=${c.toString(16).toUpperCase().padStart(2, '0')}`;
    if (line.length + t.length > 75) {
      out += `${line}=${eol}`;
      line = '';
    }
    line += t;
  }
  return out + line;
}

function base64Lines(data: Uint8Array, eol: string): string {
  const s = Buffer.from(data).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < s.length; i += 76) lines.push(s.slice(i, i + 76));
  return lines.join(eol);
}

/** 8bit content: any byte but CR, LF and '-' (no line may start a delimiter). */
function eightBit(data: Uint8Array): Buffer {
  return Buffer.from(Array.from(data, (c) => (c === 10 || c === 13 || c === 45 ? 0x41 : c)));
}

function serialize(root: Node, eol: string): { message: Buffer; expected: Expected[] } {
  const pieces: Buffer[] = [];
  let length = 0;
  const add = (s: string | Buffer): void => {
    const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    pieces.push(b);
    length += b.length;
  };
  const expected: Expected[] = [];
  let boundaries = 0;

  const entity = (node: Node, id: string, messageTop: boolean, msgPrefix: string, extra: string[]): void => {
    const start = length;
    const headers = [...extra];
    if (node.kind === 'leaf') {
      const type = node.text ? 'text/plain' : 'application/octet-stream';
      const enc: Enc = node.text && node.enc === '8bit' ? '7bit' : node.enc;
      const name = node.filename;
      if (!(node.omitType && node.text && !name)) headers.push(`Content-Type: ${type}${name && node.nameIn === 'type' ? `; ${encodeLegacyName(name)}` : ''}`);
      if (enc !== '7bit' || !node.omitType) headers.push(`Content-Transfer-Encoding: ${enc}`);
      if (name && node.nameIn === 'disposition') headers.push(`Content-Disposition: attachment; ${encodeParam('filename', name)}`);
      add(headers.map((h) => h + eol).join('') + eol);
      let data: Buffer;
      if (node.text && enc === '7bit') {
        data = Buffer.from(node.lines.join(eol));
        add(data);
      } else if (node.text) {
        data = Buffer.from(node.lines.join(eol));
        add(enc === 'base64' ? base64Lines(data, eol) : qp(data, eol));
      } else if (enc === '8bit' || enc === '7bit') {
        data = eightBit(node.bytes);
        add(data);
      } else {
        data = Buffer.from(node.bytes);
        add(enc === 'base64' ? base64Lines(data, eol) : qp(data, eol));
      }
      expected.push({ id, data, filename: name, contentType: type, start, end: length, messageTop });
      return;
    }
    if (node.kind === 'message') {
      headers.push('Content-Type: message/rfc822');
      add(headers.map((h) => h + eol).join('') + eol);
      entity(node.body, join(id, 1), true, id, ['Subject: attached']);
      return;
    }
    const b = `=_${++boundaries}_b${boundaries * 7919}`;
    headers.push(node.fold ? `Content-Type: multipart/${node.sub};${eol}\tboundary="${b}"` : `Content-Type: multipart/${node.sub}; boundary=${b}`);
    add(headers.map((h) => h + eol).join('') + eol);
    if (node.preamble) add(node.preamble + eol);
    const prefix = messageTop ? msgPrefix : id;
    node.children.forEach((c, i) => {
      add(`--${b}${eol}`);
      entity(c, join(prefix, i + 1), false, '', []);
      add(eol);
    });
    add(`--${b}--`);
    if (node.epilogue) add(eol + node.epilogue);
  };
  entity(root, '1', true, '', ['From: fuzz@example.com', 'Subject: fuzz', 'MIME-Version: 1.0']);
  return { message: Buffer.concat(pieces, length), expected };
}

const messageArb = fc.tuple(nodeArb, fc.constantFrom('\r\n', '\n')).map(([node, eol]) => ({ node, eol, ...serialize(node, eol) }));

async function walkAll(m: Buffer, limits?: MimeLimits) {
  return walkMessage(m, limits ? { limits } : {}, (d) => ({
    id: d.id,
    partId: d.partId,
    size: d.size,
    filename: d.filename,
    contentType: d.contentType,
    data: Buffer.concat(d.spool.memoryChunks),
  }));
}

async function rewriteToBuffer(m: Buffer, plan: RewritePlan, limits?: MimeLimits): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(c: Buffer, _e, cb) {
      chunks.push(c);
      cb();
    },
  });
  await rewriteMessage(m, sink, plan, limits ? { limits } : {});
  return Buffer.concat(chunks);
}

/** Parser events reduced to comparable text, offsets included. */
function trace(m: Buffer, cuts: number[], limits: MimeLimits): string[] {
  const p = new MimeParser(limits, { data: true, preamble: true });
  const data = new Map<string, Buffer[]>();
  const out: string[] = [];
  const take = (events: ParserEvent[]): void => {
    for (const ev of events) {
      if (ev.type === 'data') {
        const key = `${ev.entity.id}@${ev.entity.headerStart}`;
        data.set(key, [...(data.get(key) ?? []), ev.data]);
      } else if (ev.type === 'problem') out.push(`problem ${ev.code} ${ev.partId}`);
      else {
        const e = ev.entity;
        const key = `${e.id}@${e.headerStart}`;
        out.push(`${ev.type} ${key} ${e.kind} ${e.headerEnd} ${e.bodyStart} ${ev.type === 'end' ? e.bodyEnd : ''} ${ev.type === 'end' ? Buffer.concat(data.get(key) ?? []).toString('latin1') : ''}`);
      }
    }
  };
  let prev = 0;
  for (const c of [...cuts, m.length]) {
    take(p.push(m.subarray(prev, c)));
    prev = c;
  }
  take(p.finish());
  return out;
}

/** A position in [0, 1): fast-check's doubles lean to the ends, a cut must fall anywhere. */
const position = fc.noBias(fc.integer({ min: 0, max: 999_999 })).map((n) => n / 1_000_000);

const SMALL: MimeLimits = { maxDepth: 4, maxParts: 12, maxHeaderSize: 200, maxDecodedSize: 400, maxLineLength: 64 };
const LARGE: MimeLimits = { maxDepth: 20, maxParts: 1000, maxHeaderSize: 65536, maxDecodedSize: 1 << 20, maxLineLength: 1 << 20 };

const mutation = fc.oneof(
  fc.record({ kind: fc.constant('cut' as const), at: position }),
  fc.record({ kind: fc.constant('flip' as const), at: position, byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({
    kind: fc.constant('insert' as const),
    at: position,
    text: fc.constantFrom(
      '\r\n',
      '\n',
      '\r',
      '--',
      '--=_1_b7919',
      '--=_1_b7919--\r\n',
      '--=_2_b15838\n',
      '=',
      '=\r\n',
      '\r\n\r\n',
      'begin 644 x.bin\n',
      'begin-base64 644 y\r\n',
      '\nend\n',
      'Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n',
      'Content-Type: message/rfc822\n\n',
      'Content-Transfer-Encoding: base64\r\n\r\n',
      ' folded\r\n',
      'no colon line\r\n',
      'X-Long: ' + 'a'.repeat(300) + '\r\n',
    ),
  }),
);

function mutate(m: Buffer, mutations: Array<{ kind: 'cut' | 'flip' | 'insert'; at: number; byte?: number; text?: string }>): Buffer {
  let b = Buffer.from(m);
  for (const x of mutations) {
    const at = Math.min(b.length, Math.floor(x.at * b.length));
    if (x.kind === 'cut') b = b.subarray(0, at);
    else if (x.kind === 'flip') {
      if (b.length > 0) b[Math.min(at, b.length - 1)] = x.byte ?? 0;
    } else b = Buffer.concat([b.subarray(0, at), Buffer.from(x.text ?? ''), b.subarray(at)]);
  }
  return b;
}

describe('MIME walker properties', () => {
  test('a random MIME tree: exactly its documents, with their exact bytes, names and types', async () => {
    await fc.assert(
      fc.asyncProperty(messageArb, async ({ message, expected }) => {
        const r = await walkAll(message);
        assert.deepEqual(r.problems, []);
        assert.deepEqual(
          r.documents.map((d) => [d.result.id, d.result.contentType, d.result.filename, d.result.data.toString('hex')]),
          expected.map((e) => [e.id, e.contentType, e.filename, e.data.toString('hex')]),
        );
        assert.equal(r.size, message.length);
      }),
      { numRuns: 200 },
    );
  });

  test('the parser gives the same events whatever the chunk boundaries (valid and damaged messages)', async () => {
    await fc.assert(
      fc.property(
        messageArb,
        fc.array(mutation, { maxLength: 3 }),
        fc.array(position, { maxLength: 12 }),
        fc.constantFrom(SMALL, LARGE),
        ({ message }, mutations, cuts, limits) => {
          const m = mutate(message, mutations);
          const points = [...new Set(cuts.map((c) => Math.floor(c * m.length)))].sort((a, b) => a - b);
          assert.deepEqual(trace(m, points, limits), trace(m, [], limits));
        },
      ),
      { numRuns: 300 },
    );
  });

  test('damaged messages: never a throw, bounded output, known problem codes; empty rewrite still identical', async () => {
    await fc.assert(
      fc.asyncProperty(messageArb, fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.constantFrom(SMALL, LARGE), async ({ message }, mutations, limits) => {
        const m = mutate(message, mutations);
        const r = await walkAll(m, limits);
        assert.ok(r.documents.length <= limits.maxParts);
        assert.ok(r.parts <= limits.maxParts);
        for (const d of r.documents) assert.ok(d.result.size <= limits.maxDecodedSize && d.result.data.length === d.result.size);
        for (const p of r.problems) assert.ok(p.code in MIME_PROBLEM_CODES, p.code);
        assert.ok((await rewriteToBuffer(m, {}, limits)).equals(m));
        // removing every document found still gives a message the walker reads without throwing
        const plan: RewritePlan = { parts: r.documents.map((d) => ({ action: 'remove' as const, id: d.result.partId, notice: 'removed' })) };
        const out = await rewriteToBuffer(m, plan, limits);
        await walkAll(out, limits);
      }),
      { numRuns: 300 },
    );
  });

  test('decoders give the same bytes whatever the chunk boundaries, on any input', () => {
    const token = fc.constantFrom('begin 644 a.bin', 'begin-base64 600 b', 'end', '====', '#86)C', '`', 'M' + '86)C'.repeat(15), 'SGVsbG8=', '=3D', '=', '= ', 'x=\t', '===', '!!');
    fc.assert(
      fc.property(
        fc.array(fc.oneof(token, fc.string({ maxLength: 20 })), { maxLength: 20 }),
        fc.constantFrom('\n', '\r\n'),
        fc.array(position, { maxLength: 8 }),
        (lines, eol, cuts) => {
          const input = Buffer.from(lines.join(eol), 'latin1');
          const points = [...new Set(cuts.map((c) => Math.floor(c * input.length)))].sort((a, b) => a - b);
          const split = (write: (b: Buffer) => Buffer | string, end: () => Buffer | string): string => {
            let out = '';
            let prev = 0;
            for (const p of [...points, input.length]) {
              const r = write(input.subarray(prev, p));
              out += typeof r === 'string' ? r : r.toString('latin1');
              prev = p;
            }
            const e = end();
            return out + (typeof e === 'string' ? e : e.toString('latin1'));
          };
          const whole = (write: (b: Buffer) => Buffer | string, end: () => Buffer | string): string => {
            const r = write(input);
            const e = end();
            return (typeof r === 'string' ? r : r.toString('latin1')) + (typeof e === 'string' ? e : e.toString('latin1'));
          };
          const b64 = (): [(b: Buffer) => Buffer, () => Buffer] => {
            const d = new Base64Decoder();
            return [(b) => d.write(b), () => d.end()];
          };
          const q = (): [(b: Buffer) => Buffer, () => Buffer] => {
            const d = new QuotedPrintableDecoder(1 << 20);
            return [(b) => d.write(b), () => d.end()];
          };
          const uu = (): [(b: Buffer) => string, () => string] => {
            const s = new UuScanner(1 << 20);
            const fmt = (evs: ReturnType<UuScanner['write']>): string =>
              evs.map((e) => (e.type === 'begin' ? `<${e.name}>` : e.type === 'data' ? e.data.toString('latin1') : `</${e.complete}>`)).join('');
            return [(b) => fmt(s.write(b)), () => fmt(s.end())];
          };
          for (const make of [b64, q, uu] as Array<() => [(b: Buffer) => Buffer | string, () => Buffer | string]>) {
            assert.equal(split(...make()), whole(...make()));
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('MIME rewriter properties', () => {
  test('an empty plan gives identical bytes', async () => {
    await fc.assert(
      fc.asyncProperty(messageArb, async ({ message }) => {
        assert.ok((await rewriteToBuffer(message, {})).equals(message));
      }),
      { numRuns: 100 },
    );
  });

  test('removing or replacing one part changes its bytes only; the others walk the same', async () => {
    // (expected[] always has at least one leaf: every tree ends in leaves)
    await fc.assert(
      fc.asyncProperty(messageArb, fc.nat(), fc.boolean(), async ({ message, expected, eol }, pick, replace) => {
        const target = expected[pick % expected.length] as Expected;
        const data = Buffer.from('replacement bytes');
        const plan: RewritePlan = {
          parts: [replace ? { action: 'replace', id: target.id, data, contentType: 'application/octet-stream', filename: 'clean.bin' } : { action: 'remove', id: target.id, notice: 'removed' }],
        };
        const out = await rewriteToBuffer(message, plan);
        // The top part of a message keeps its message fields: only its Content-* fields change,
        // so the unchanged stretch starts at its first Content- field there.
        const start = target.messageTop ? message.indexOf('Content-', target.start) : target.start;
        const before = start < 0 || start > target.end ? target.start : start;
        assert.ok(out.subarray(0, before).equals(message.subarray(0, before)), 'bytes before the part');
        const tail = message.length - target.end;
        assert.ok(out.subarray(out.length - tail).equals(message.subarray(target.end)), 'bytes after the part');
        const r = await walkAll(out);
        assert.deepEqual(r.problems, []);
        assert.deepEqual(
          r.documents.map((d) => [d.result.id, d.result.data.toString('hex')]),
          expected.map((e) => [e.id, e.id === target.id ? (replace ? data : Buffer.from(`removed${eol}`)).toString('hex') : e.data.toString('hex')]),
        );
      }),
      { numRuns: 150 },
    );
  });
});
