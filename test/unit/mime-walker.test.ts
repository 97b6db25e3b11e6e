import assert from 'node:assert/strict';
import { readFile, rm, mkdtemp, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { contentHashOf } from '../../src/core/content-hash.js';
import { Spool } from '../../src/core/spool.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { DEFAULT_MIME_LIMITS, type MimeLimits } from '../../src/mime/limits.js';
import { walkMessage, type MimeDocumentInfo, type WalkOptions, type WalkResult } from '../../src/mime/walker.js';

interface Doc extends MimeDocumentInfo {
  data: Buffer;
}

/** Walks and keeps every document's bytes (read back from its source, the way a scanner would). */
async function walk(input: Buffer | string | Spool, options: WalkOptions = {}): Promise<WalkResult<Doc>> {
  return walkMessage(input, options, async (d) => {
    const src = d.source();
    const data = src.kind === 'chunks' ? Buffer.concat(src.chunks) : src.kind === 'file' ? await readFile(src.path) : Buffer.alloc(0);
    const { spool: _spool, source: _source, ...info } = d;
    return { ...info, data };
  });
}

function docs(r: WalkResult<Doc>): Doc[] {
  return r.documents.map((d) => d.result);
}

function codes(r: WalkResult<Doc>): string[] {
  return r.problems.map((p) => `${p.code}@${p.partId}`);
}

function msg(lines: string[], eol = '\r\n'): Buffer {
  return Buffer.from(lines.join(eol), 'utf8');
}

function b64(data: Buffer | string, width = 76): string[] {
  const s = Buffer.from(data).toString('base64');
  const out: string[] = [];
  for (let i = 0; i < s.length; i += width) out.push(s.slice(i, i + width));
  return out;
}

function limits(over: Partial<MimeLimits>): MimeLimits {
  return { ...DEFAULT_MIME_LIMITS, ...over };
}

const BASIC = [
  'From: Alice <a@example.com>',
  'To: b@example.com',
  'Subject: basic',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="=_outer"',
  '',
  'This is a multi-part message in MIME format.',
  '--=_outer',
  'Content-Type: text/plain; charset=UTF-8',
  'Content-Transfer-Encoding: quoted-printable',
  '',
  'Caf=C3=A9 au lait, a long line that is cut with a soft=',
  ' break and =3D sign',
  '--=_outer',
  'Content-Type: application/octet-stream; name="data.bin"',
  'Content-Transfer-Encoding: base64',
  'Content-Disposition: attachment; filename="data.bin"',
  '',
  ...b64(Buffer.from([0, 1, 2, 250, 251, 252, 253, 254, 255])),
  '--=_outer--',
  'epilogue text',
  '',
];

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'avgate-mime-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('walkMessage: structure and decoding', () => {
  it('walks a multipart message: ids, types, names, decoded bytes', async () => {
    const r = await walk(msg(BASIC));
    assert.deepEqual(r.problems, []);
    const d = docs(r);
    assert.deepEqual(
      d.map((x) => [x.id, x.partId, x.depth, x.contentType, x.charset, x.encoding, x.filename, x.disposition, x.inAttachedMessage]),
      [
        ['1', '1', 1, 'text/plain', 'utf-8', 'quoted-printable', null, null, false],
        ['2', '2', 1, 'application/octet-stream', null, 'base64', 'data.bin', 'attachment', false],
      ],
    );
    assert.equal(d[0]?.data.toString('utf8'), 'Café au lait, a long line that is cut with a soft break and = sign');
    assert.deepEqual(d[1]?.data, Buffer.from([0, 1, 2, 250, 251, 252, 253, 254, 255]));
    assert.equal(d[1]?.size, 9);
    assert.equal(r.size, msg(BASIC).length);
    assert.equal(r.parts, 3);
  });

  it('gives the same documents for an LF-only message', async () => {
    const crlf = docs(await walk(msg(BASIC)));
    const lf = await walk(msg(BASIC, '\n'));
    assert.deepEqual(lf.problems, []);
    assert.deepEqual(
      docs(lf).map((x) => [x.id, x.data.toString('latin1')]),
      crlf.map((x) => [x.id, x.data.toString('latin1')]),
    );
  });

  it('a single-part message is part 1 at depth 0; without Content-Type it is text/plain', async () => {
    const r = await walk(msg(['Subject: hi', '', 'line one', 'line two']));
    assert.deepEqual(
      docs(r).map((x) => [x.id, x.depth, x.contentType, x.encoding, x.data.toString()]),
      [['1', 0, 'text/plain', '7bit', 'line one\r\nline two']],
    );
    // a message with a header only
    const h = await walk(Buffer.from('Subject: only a header\r\n'));
    assert.deepEqual(h.problems, []);
    assert.deepEqual(docs(h).map((x) => [x.id, x.size]), [['1', 0]]);
  });

  it('walks attached messages recursively with IMAP part numbers', async () => {
    const m = msg([
      'Content-Type: multipart/mixed; boundary=A',
      '',
      '--A',
      '',
      'body text',
      '--A',
      'Content-Type: message/rfc822',
      '',
      'From: x@y',
      'Subject: inner multipart',
      'Content-Type: multipart/alternative; boundary=B',
      '',
      '--B',
      'Content-Type: text/plain',
      '',
      'inner plain',
      '--B',
      'Content-Type: message/rfc822',
      '',
      'Subject: innermost single part',
      'Content-Type: application/pdf; name=deep.pdf',
      '',
      'PDF bytes',
      '--B--',
      '--A',
      'Content-Type: message/rfc822',
      '',
      'Subject: attached single part',
      '',
      'attached body',
      '--A--',
    ]);
    const r = await walk(m);
    assert.deepEqual(r.problems, []);
    assert.deepEqual(
      docs(r).map((x) => [x.id, x.depth, x.inAttachedMessage, x.contentType, x.filename, x.data.toString()]),
      [
        ['1', 1, false, 'text/plain', null, 'body text'],
        ['2.1', 3, true, 'text/plain', null, 'inner plain'],
        ['2.2.1', 4, true, 'application/pdf', 'deep.pdf', 'PDF bytes'],
        ['3.1', 2, true, 'text/plain', null, 'attached body'],
      ],
    );
  });

  it('walks a base64-encoded attached message as an attached message; the rewriter acts on the outer part', async () => {
    const inner = msg(['Subject: wrapped', 'Content-Type: multipart/mixed; boundary=IN', '', '--IN', 'Content-Type: application/x-msdownload; name=a.exe', 'Content-Transfer-Encoding: base64', '', ...b64('MZ payload'), '--IN--', '']);
    const m = msg(['Content-Type: multipart/mixed; boundary=OUT', '', '--OUT', '', 'hi', '--OUT', 'Content-Type: message/rfc822', 'Content-Transfer-Encoding: base64', '', ...b64(inner), '--OUT--', '']);
    const r = await walk(m);
    assert.deepEqual(r.problems, []);
    assert.deepEqual(
      docs(r).map((x) => [x.id, x.partId, x.depth, x.inAttachedMessage, x.filename, x.data.toString()]),
      [
        ['1', '1', 1, false, null, 'hi'],
        ['2.1', '2', 3, true, 'a.exe', 'MZ payload'],
      ],
    );
  });

  it('decodes RFC 2231 and RFC 2047 file names', async () => {
    const m = msg([
      'Content-Type: multipart/mixed; boundary=X',
      '',
      '--X',
      "Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rates.pdf",
      '',
      'a',
      '--X',
      'Content-Disposition: attachment;',
      "  filename*0*=ISO-8859-1''r%E9sum%E9;",
      '  filename*1=" final";',
      '  filename*2*=%2Edoc',
      '',
      'b',
      '--X',
      'Content-Type: application/octet-stream; name="=?UTF-8?B?w7xiZXI=?= =?UTF-8?Q?_gr=C3=B6=C3=9Fe?=.zip"',
      '',
      'c',
      '--X',
      'Content-Type: text/plain; name=plain.txt',
      'Content-Disposition: attachment; filename=disposition-wins.txt',
      '',
      'd',
      '--X',
      'Content-Type: application/octet-stream; name="=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=.txt"',
      '',
      'e',
      '--X',
      'Content-Disposition: attachment; filename="raw-utf8-\u00e9t\u00e9.txt"; filename*=utf-8\'\'extended-wins.txt',
      '',
      'f',
      '--X--',
    ]);
    const r = await walk(m);
    assert.deepEqual(r.problems, []);
    assert.deepEqual(
      docs(r).map((x) => x.filename),
      ['€ rates.pdf', 'résumé final.doc', 'über größe.zip', 'disposition-wins.txt', '日本語.txt', 'extended-wins.txt'],
    );
  });

  it('decodes raw 8-bit UTF-8 file names (RFC 6532)', async () => {
    const r = await walk(msg(['Content-Type: text/plain; name="r\u00e9sum\u00e9.txt"', '', 'x']));
    assert.equal(docs(r)[0]?.filename, 'résumé.txt');
  });

  it('finds uuencoded files inside text parts, each a document of its own', async () => {
    const file1 = Buffer.from('first uuencoded file, longer than one line of forty-five bytes');
    const file2 = eicarBytes();
    const m = msg([
      'Subject: uu',
      'Content-Type: text/plain',
      '',
      'Here are two files:',
      'begin 644 one.txt',
      ...uuLines(file1),
      '`',
      'end',
      'and the second',
      'begin 600 two.com',
      ...uuLines(file2),
      '`',
      'end',
      'bye',
    ]);
    const r = await walk(m);
    assert.deepEqual(r.problems, []);
    const d = docs(r);
    assert.deepEqual(
      d.map((x) => [x.id, x.partId, x.kind, x.filename, x.encoding, x.depth]),
      [
        ['1/uu1', '1', 'uuencode', 'one.txt', 'uuencode', 1],
        ['1/uu2', '1', 'uuencode', 'two.com', 'uuencode', 1],
        ['1', '1', 'part', null, '7bit', 0],
      ],
    );
    assert.deepEqual(d[0]?.data, file1);
    assert.deepEqual(d[1]?.data, file2);
    assert.equal(r.parts, 3);
  });

  it('finds uuencoded files inside quoted-printable and base64 text, and begin-base64 blocks', async () => {
    const file = Buffer.from('the file inside');
    const text = ['intro', 'begin 644 q.bin', ...uuLines(file), '`', 'end', 'begin-base64 644 b.bin', ...b64(file), '====', ''].join('\r\n');
    const m = msg(['Content-Type: multipart/mixed; boundary=X', '', '--X', 'Content-Transfer-Encoding: base64', '', ...b64(text), '--X--']);
    const r = await walk(m);
    assert.deepEqual(r.problems, []);
    assert.deepEqual(
      docs(r).map((x) => [x.id, x.filename, x.data.toString()]),
      [
        ['1/uu1', 'q.bin', 'the file inside'],
        ['1/uu2', 'b.bin', 'the file inside'],
        ['1', null, text],
      ],
    );
  });

  it('a uuencoded block without end is handed over and reported', async () => {
    const file = Buffer.from('cut short');
    const r = await walk(msg(['', 'begin 644 cut.bin', ...uuLines(file)]));
    assert.deepEqual(codes(r), ['encoding@1/uu1']);
    assert.deepEqual(docs(r)[0]?.data, file);
  });

  it('quoted-printable: soft breaks, trailing blanks, escapes across CRLF and LF', async () => {
    for (const eol of ['\r\n', '\n']) {
      const r = await walk(
        msg(['Content-Transfer-Encoding: quoted-printable', '', 'soft=', 'break=3D=3d  ', 'trailing blanks dropped \t', 'tab=09end=', ''], eol),
      );
      assert.deepEqual(r.problems, []);
      assert.equal(docs(r)[0]?.data.toString(), `softbreak==${eol}trailing blanks dropped${eol}tab\tend`);
    }
  });

  it('hands a large document over from a temp file, and hashes when asked', async () => {
    const big = Buffer.alloc(300_000, 'x');
    const spoolDir = join(dir, 'spool');
    let onDisk = false;
    const r = await walkMessage(msg(['Content-Transfer-Encoding: base64', '', ...b64(big)]), { spoolDir, spoolMemoryLimit: 64 * 1024, hash: true }, async (d) => {
      const src = d.source();
      onDisk = src.kind === 'file';
      return src.kind === 'file' ? readFile(src.path) : Buffer.alloc(0);
    });
    assert.ok(onDisk);
    assert.deepEqual(r.documents[0]?.result, big);
    assert.equal(r.documents[0]?.document.contentHash, contentHashOf([big]));
    assert.deepEqual(await readdir(spoolDir), [], 'temp files are removed after the callback');
  });

  it('reads from a file path and from a Spool (memory and disk)', async () => {
    const m = msg(BASIC);
    const path = join(dir, 'basic.eml');
    await writeFile(path, m);
    const expected = docs(await walk(m)).map((x) => x.data.toString('latin1'));
    assert.deepEqual(docs(await walk(path)).map((x) => x.data.toString('latin1')), expected);
    for (const memoryLimit of [1 << 20, 16]) {
      const spool = new Spool(join(dir, 'in'), memoryLimit, { hash: false });
      for (let i = 0; i < m.length; i += 7) await spool.write(m.subarray(i, i + 7));
      await spool.end();
      assert.deepEqual(docs(await walk(spool)).map((x) => x.data.toString('latin1')), expected);
      await spool.dispose();
    }
  });

  it('collects what the callback returns, waits for it, and rejects with its error', async () => {
    const order: string[] = [];
    const r = await walkMessage(msg(BASIC), {}, async (d) => {
      order.push(`start ${d.id}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
      order.push(`end ${d.id}`);
      return d.id.length;
    });
    assert.deepEqual(order, ['start 1', 'end 1', 'start 2', 'end 2']);
    assert.deepEqual(r.documents.map((d) => d.result), [1, 1]);
    await assert.rejects(
      walkMessage(msg(BASIC), {}, () => {
        throw new Error('scanner gone');
      }),
      /scanner gone/,
    );
  });

  it('stops when the signal is aborted', async () => {
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(walkMessage(msg(BASIC), { signal: ac.signal }, () => 0), { name: 'AbortError' });
  });
});

describe('walkMessage: damaged messages', () => {
  it('a multipart without boundary is handed over whole', async () => {
    const r = await walk(msg(['Content-Type: multipart/mixed', '', '--x', '', 'text', '--x--']));
    assert.deepEqual(codes(r), ['boundary@1']);
    assert.deepEqual(docs(r).map((x) => [x.id, x.opaque, x.contentType]), [['1', true, 'multipart/mixed']]);
    assert.equal(docs(r)[0]?.data.toString(), '--x\r\n\r\ntext\r\n--x--');
  });

  it('a boundary that never appears: the body is handed over as the preamble', async () => {
    const r = await walk(msg(['Content-Type: multipart/mixed; boundary=nowhere', '', 'TVqQAAMAAAAEAAAA', '--elsewhere--']));
    assert.deepEqual(codes(r), ['boundary@1']);
    assert.deepEqual(docs(r)[0]?.problems.map((p) => p.code), ['boundary']);
    assert.deepEqual(docs(r).map((x) => [x.id, x.kind, x.data.toString()]), [['1', 'preamble', 'TVqQAAMAAAAEAAAA\r\n--elsewhere--']]);
  });

  it('an inner multipart closed by the outer delimiter, and a missing close delimiter at the end', async () => {
    const r = await walk(
      msg(['Content-Type: multipart/mixed; boundary=A', '', '--A', 'Content-Type: multipart/alternative; boundary=B', '', '--B', '', 'one', '--A', '', 'two', '']),
    );
    assert.deepEqual(codes(r).sort(), ['boundary@1', 'truncated@']);
    assert.deepEqual(docs(r).map((x) => [x.id, x.data.toString()]), [['1.1', 'one'], ['2', 'two\r\n']]);
  });

  it('a message cut inside a part header', async () => {
    const r = await walk(msg(['Content-Type: multipart/mixed; boundary=A', '', '--A', '', 'one', '--A', 'Content-Type: text/pl']));
    assert.deepEqual(codes(r), ['truncated@']);
    assert.deepEqual(docs(r).map((x) => x.id), ['1', '2']);
  });

  it('a close delimiter without a final line break closes the multipart', async () => {
    const r = await walk(Buffer.from('Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n\r\none\r\n--A--'));
    assert.deepEqual(r.problems, []);
    assert.deepEqual(docs(r).map((x) => x.data.toString()), ['one']);
  });

  it('a delimiter line with trailing text still delimits (RFC 2046: a boundary may not start any other line)', async () => {
    const r = await walk(msg(['Content-Type: multipart/mixed; boundary=A', '', '--A   ', '', 'one', '--A junk', '', 'two', '--A--junk']));
    assert.deepEqual(r.problems, []);
    assert.deepEqual(docs(r).map((x) => x.data.toString()), ['one', 'two']);
  });

  it('invalid base64: reported, and what decodes is handed over', async () => {
    const r = await walk(msg(['Content-Transfer-Encoding: base64', '', 'SGVs*bG8g!d29y', 'bGQ']));
    assert.deepEqual(codes(r), ['encoding@1']);
    assert.equal(docs(r)[0]?.data.toString(), 'Hello world');
    assert.deepEqual(docs(r)[0]?.problems.map((p) => p.code), ['encoding']);
  });

  it('base64 with padding in the middle (concatenated blocks) decodes all of it', async () => {
    const r = await walk(msg(['Content-Transfer-Encoding: base64', '', 'SGk=', 'IHRoZXJl']));
    assert.deepEqual(r.problems, []);
    assert.equal(docs(r)[0]?.data.toString(), 'Hi there');
  });

  it('invalid quoted-printable escapes are kept literally and reported', async () => {
    const r = await walk(msg(['Content-Transfer-Encoding: quoted-printable', '', 'a=ZZb=4', '']));
    assert.deepEqual(codes(r), ['encoding@1']);
    assert.equal(docs(r)[0]?.data.toString(), 'a=ZZb=4\r\n');
  });

  it('a line that is not a header field starts the body (as mail clients do)', async () => {
    const r = await walk(msg(['Content-Type: multipart/mixed; boundary=A', '', '--A', 'Content-Type: application/octet-stream', 'TVqQAAMAAAAEAAAA', '--A--']));
    assert.deepEqual(codes(r), ['header@1']);
    assert.equal(docs(r)[0]?.data.toString(), 'TVqQAAMAAAAEAAAA');
  });

  it('an mbox From line before the first field is not a problem', async () => {
    const r = await walk(msg(['From sender@example.com Mon Jan  1 00:00:00 2024', 'Subject: x', '', 'body']));
    assert.deepEqual(r.problems, []);
    assert.equal(docs(r)[0]?.data.toString(), 'body');
  });
});

/** No timing assertions (the machine is shared); a hang guard catches a quadratic blow-up. */
const HANG_GUARD = { timeout: 60_000 };

describe('walkMessage: limits', HANG_GUARD, () => {
  it('10 000 parts: max-parts stops the walk, fast, with a parts problem', async () => {
    const lines = ['Content-Type: multipart/mixed; boundary=P', ''];
    for (let i = 0; i < 10_000; i++) lines.push('--P', 'Content-Type: text/plain', '', `part ${i}`);
    lines.push('--P--', '');
    const r = await walk(msg(lines));
    assert.deepEqual(codes(r), ['parts@1000']);
    assert.equal(r.documents.length, 999);
    assert.equal(r.parts, 1000);
    // a lower limit counts uuencoded files too
    const uu = await walk(msg(['', 'begin 644 a', ...uuLines(Buffer.from('a')), 'end', 'begin 644 b', ...uuLines(Buffer.from('b')), 'end']), { limits: limits({ maxParts: 2 }) });
    assert.deepEqual(codes(uu), ['parts@1/uu2']);
    assert.deepEqual(docs(uu).map((x) => x.id), ['1/uu1', '1']);
  });

  it('nesting 200 deep: containers past max-depth are handed over unopened', async () => {
    const depth = 200;
    const lines: string[] = [];
    for (let i = 0; i < depth; i++) lines.push(`Content-Type: multipart/mixed; boundary="b${i}x"`, '', `--b${i}x`);
    lines.push('Content-Type: text/plain', '', 'deepest');
    for (let i = depth - 1; i >= 0; i--) lines.push(`--b${i}x--`);
    const r = await walk(msg(lines));
    assert.deepEqual(codes(r), ['depth@1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1']);
    const d = docs(r);
    assert.equal(d.length, 1);
    assert.equal(d[0]?.depth, 20);
    assert.equal(d[0]?.opaque, true);
    assert.ok(d[0]?.data.includes('deepest'), 'the unopened container still holds the deepest text');
    // attached messages count as nesting too
    const m: string[] = [];
    for (let i = 0; i < 30; i++) m.push('Content-Type: message/rfc822', '');
    m.push('Subject: deep', '', 'x');
    const rm = await walk(msg(m), { limits: limits({ maxDepth: 5 }) });
    assert.deepEqual(codes(rm), ['depth@1.1.1.1.1.1']);
    assert.equal(docs(rm)[0]?.contentType, 'message/rfc822');
  });

  it('a 1 MB header line: header-size problem, the walk goes on', async () => {
    const m = msg(['Subject: big', `X-Long: ${'a'.repeat(1024 * 1024)}`, 'Content-Type: text/html', '', 'body']);
    const r = await walk(m);
    assert.deepEqual(codes(r), ['header-size@1']);
    assert.deepEqual(docs(r).map((x) => [x.contentType, x.data.toString()]), [['text/plain', 'body']]);
    // inside a part, with the delimiter still found after it
    const p = msg(['Content-Type: multipart/mixed; boundary=A', '', '--A', `X-Long: ${'b'.repeat(1024 * 1024)}`, '', 'one', '--A', '', 'two', '--A--']);
    const rp = await walk(p);
    assert.deepEqual(codes(rp), ['header-size@1']);
    assert.deepEqual(docs(rp).map((x) => x.data.toString()), ['one', 'two']);
  });

  it('a header block that never ends is bounded too', async () => {
    const lines = ['Content-Type: multipart/mixed; boundary=A', '', '--A'];
    for (let i = 0; i < 20_000; i++) lines.push(`X-Field-${i}: value`);
    lines.push('--A', '', 'after', '--A--');
    const r = await walk(msg(lines));
    assert.deepEqual(codes(r), ['header-size@1']);
    assert.deepEqual(docs(r).map((x) => [x.id, x.data.toString()]), [['1', ''], ['2', 'after']]);
  });

  it('max-decoded-size cuts a document and says so', async () => {
    const r = await walk(msg(['Content-Transfer-Encoding: base64', '', ...b64(Buffer.alloc(10_000, 7))]), { limits: limits({ maxDecodedSize: 4096 }) });
    assert.deepEqual(codes(r), ['decoded-size@1']);
    assert.equal(docs(r)[0]?.size, 4096);
    assert.equal(docs(r)[0]?.truncated, true);
  });

  it('a long body line is never held whole', async () => {
    const line = 'x'.repeat(5 * 1024 * 1024);
    const r = await walk(msg(['Content-Type: multipart/mixed; boundary=A', '', '--A', 'Content-Transfer-Encoding: quoted-printable', '', line, '--A--']));
    assert.deepEqual(r.problems, []);
    assert.equal(docs(r)[0]?.size, line.length);
  });

  it('hostile header values (a 64 KiB run of separators, comments, continuations, encoded words) stay linear', async () => {
    const fill = (unit: string): string => unit.repeat(Math.floor(60_000 / unit.length));
    const m = msg([
      'Content-Type: multipart/mixed; boundary=A',
      '',
      '--A',
      `Content-Type: text/plain${fill(';')}`,
      '',
      'a',
      '--A',
      `Content-Transfer-Encoding: ${fill('(')}`,
      '',
      'b',
      '--A',
      `Content-Disposition: attachment${fill('; filename*7*=%41')}`,
      '',
      'c',
      '--A',
      `Content-Type: text/plain; name="${fill('=?x?q?')}"`,
      '',
      'd',
      '--A',
      `Content-Type: text/plain; name=${fill('=?a=?b?q?c?= ')}`,
      '',
      'e',
      '--A--',
    ]);
    const r = await walk(m);
    assert.deepEqual(r.problems, []);
    assert.deepEqual(docs(r).map((x) => x.data.toString()), ['a', 'b', 'c', 'd', 'e']);
  });

  it('refuses invalid limits (config errors are programmer errors, not message problems)', async () => {
    await assert.rejects(walkMessage(Buffer.from('x'), { limits: limits({ maxDepth: 0 }) }, () => 0), { code: 'AVG_ERR_CONFIG' });
  });
});

/** uuencode of data, 45 bytes a line, written here for the tests. */
function uuLines(data: Buffer): string[] {
  const out: string[] = [];
  const ch = (v: number): string => (v === 0 ? '`' : String.fromCharCode(v + 32));
  for (let i = 0; i < data.length; i += 45) {
    const part = data.subarray(i, i + 45);
    let line = ch(part.length);
    for (let j = 0; j < part.length; j += 3) {
      const a = part[j] ?? 0;
      const b = part[j + 1] ?? 0;
      const c = part[j + 2] ?? 0;
      line += ch(a >> 2) + ch(((a << 4) | (b >> 4)) & 63) + ch(((b << 2) | (c >> 6)) & 63) + ch(c & 63);
    }
    out.push(line);
  }
  return out;
}

describe('walker: structures two readers could take two ways are "ambiguous"', () => {
  const eicar = eicarBytes();
  const mp = (ct: string, body: string[]) => msg(['MIME-Version: 1.0', `Content-Type: ${ct}`, '', ...body, '']);

  it('a quoted "base64" is decoded as base64 (engines and some clients do)', async () => {
    const r = await walk(msg(['Content-Type: application/octet-stream', 'Content-Transfer-Encoding: "base64"', '', ...b64(eicar), '']));
    assert.deepEqual(docs(r)[0]?.data, eicar);
    assert.deepEqual(codes(r), []);
  });

  it('Content-Transfer-Encoding or Content-Type given twice with different values', async () => {
    const cte = await walk(msg(['Content-Type: application/octet-stream', 'Content-Transfer-Encoding: 7bit', 'Content-Transfer-Encoding: base64', '', ...b64(eicar), '']));
    assert.deepEqual(codes(cte), ['ambiguous@1']);
    const same = await walk(msg(['Content-Type: text/plain', 'Content-Transfer-Encoding: 7bit', 'Content-Transfer-Encoding: 7BIT', '', 'hello', '']));
    assert.deepEqual(codes(same), [], 'the same value twice is no ambiguity');
    const ct = await walk(msg(['Content-Type: text/plain', 'Content-Type: application/zip', '', 'hello', '']));
    assert.deepEqual(codes(ct), ['ambiguous@1']);
  });

  it('a boundary given twice, or in single quotes: the multipart is ambiguous (the whole message counts)', async () => {
    const body = ['--AA', 'Content-Type: text/plain', '', 'one', '--BB', 'Content-Type: text/plain', '', 'two', '--BB--', '--AA--'];
    const twice = await walk(mp('multipart/mixed; boundary="AA"; boundary="BB"', body));
    assert.ok(codes(twice).includes('ambiguous@'), codes(twice).join());
    const quoted = await walk(mp("multipart/mixed; boundary='CC'", ['--CC', 'Content-Type: text/plain', '', 'x', '--CC--']));
    assert.ok(codes(quoted).includes('ambiguous@'), codes(quoted).join());
  });

  it('a delimiter line after the close delimiter (a part in the epilogue)', async () => {
    const r = await walk(
      mp('multipart/mixed; boundary="XX"', ['--XX', 'Content-Type: text/plain', '', 'hi', '--XX--', '--XX', 'Content-Type: application/octet-stream', 'Content-Transfer-Encoding: base64', '', ...b64(eicar), '--XX--']),
    );
    assert.ok(codes(r).includes('ambiguous@'), codes(r).join());
    const plain = await walk(mp('multipart/mixed; boundary="XX"', ['--XX', 'Content-Type: text/plain', '', 'hi', '--XX--', 'an epilogue line', '--YY']));
    assert.deepEqual(codes(plain), [], 'other text in the epilogue is fine');
  });
});
