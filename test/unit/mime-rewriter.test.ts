import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Spool } from '../../src/core/spool.js';
import { decodeEncodedWords } from '../../src/mime/headers.js';
import { MimeParser, type Entity } from '../../src/mime/parser.js';
import { DEFAULT_MIME_LIMITS } from '../../src/mime/limits.js';
import { rewriteMessage, type RewritePlan, type RewriteResult } from '../../src/mime/rewriter.js';
import { walkMessage } from '../../src/mime/walker.js';
import type { MessageInput } from '../../src/mime/input.js';

async function rewrite(input: MessageInput, plan: RewritePlan): Promise<{ out: Buffer; result: RewriteResult }> {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  const result = await rewriteMessage(input, sink, plan);
  return { out: Buffer.concat(chunks), result };
}

async function documents(m: Buffer): Promise<Array<{ id: string; contentType: string; filename: string | null; data: string }>> {
  const r = await walkMessage(m, {}, (d) => ({ id: d.id, contentType: d.contentType, filename: d.filename, data: Buffer.concat(d.spool.memoryChunks).toString('utf8') }));
  assert.deepEqual(r.problems, [], 'the rewritten message walks without problems');
  return r.documents.map((d) => d.result);
}

/** Byte ranges [headerStart, bodyEnd) of every entity, by id, from the parser itself. */
function ranges(m: Buffer): Map<string, { start: number; end: number }> {
  const p = new MimeParser(DEFAULT_MIME_LIMITS, { data: false, preamble: false });
  const out = new Map<string, { start: number; end: number }>();
  const seen: Entity[] = [];
  for (const ev of [...p.push(m), ...p.finish()]) if (ev.type === 'entity') seen.push(ev.entity);
  for (const e of seen) if (!out.has(e.id)) out.set(e.id, { start: e.headerStart, end: e.bodyEnd });
  return out;
}

/** Everything of `orig` outside [start, end) is in `out`, byte for byte, around the new bytes. */
function assertOnlyRangeChanged(orig: Buffer, out: Buffer, start: number, end: number): void {
  assert.ok(out.subarray(0, start).equals(orig.subarray(0, start)), 'bytes before the part are unchanged');
  const tail = orig.length - end;
  assert.ok(out.subarray(out.length - tail).equals(orig.subarray(end)), 'bytes after the part are unchanged');
}

function msg(lines: string[], eol = '\r\n'): Buffer {
  return Buffer.from(lines.join(eol), 'utf8');
}

const MESSAGE = [
  'Received: from mx.example.com by relay; Mon, 1 Jan 2024 00:00:00 +0000',
  'From: Alice <a@example.com>',
  'To: b@example.com',
  'Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from Alice',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="=_A"',
  '',
  'preamble stays',
  '--=_A',
  'Content-Type: text/plain; charset=utf-8',
  '',
  'Hello   ',
  '--=_A',
  'Content-Type: application/x-msdownload; name="bad.exe"',
  'Content-Transfer-Encoding: base64',
  '',
  'TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
  '--=_A',
  'Content-Type: message/rfc822',
  '',
  'From: c@example.com',
  'Subject: inner',
  'Content-Type: multipart/mixed; boundary=B',
  '',
  '--B',
  '',
  'inner text',
  '--B',
  'Content-Type: application/zip; name=inner.zip',
  'Content-Transfer-Encoding: base64',
  '',
  'UEsDBAoAAAAAAA==',
  '--B--',
  '',
  '--=_A--',
  'epilogue stays',
  '',
];

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'avgate-mime-rw-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('rewriteMessage', () => {
  it('an empty plan gives the message byte for byte (CRLF, LF, odd bytes; Buffer, file, spool)', async () => {
    const samples = [msg(MESSAGE), msg(MESSAGE, '\n'), Buffer.from('no header at all'), Buffer.alloc(0), Buffer.from([0, 13, 10, 13, 13, 10, 255, 45, 45])];
    for (const m of samples) {
      const { out, result } = await rewrite(m, {});
      assert.ok(out.equals(m));
      assert.equal(result.bytes, m.length);
    }
    const path = join(dir, 'm.eml');
    await writeFile(path, msg(MESSAGE));
    assert.ok((await rewrite(path, {})).out.equals(msg(MESSAGE)));
    const spool = new Spool(join(dir, 'spool'), 100, { hash: false });
    for (let i = 0; i < msg(MESSAGE).length; i += 50) await spool.write(msg(MESSAGE).subarray(i, i + 50));
    await spool.end();
    assert.ok((await rewrite(spool, {})).out.equals(msg(MESSAGE)));
    await spool.dispose();
  });

  it('remove: the part becomes a text notice; every other byte is unchanged', async () => {
    for (const eol of ['\r\n', '\n']) {
      const m = msg(MESSAGE, eol);
      const { out, result } = await rewrite(m, { parts: [{ action: 'remove', id: '2', notice: 'Virus found: Eicar-Test — removed' }] });
      assert.deepEqual(result, { bytes: out.length, applied: ['2'], missing: [] });
      const r = ranges(m).get('2') as { start: number; end: number };
      assertOnlyRangeChanged(m, out, r.start, r.end);
      const docs = await documents(out);
      assert.deepEqual(
        docs.map((d) => [d.id, d.contentType]),
        [['1', 'text/plain'], ['2', 'text/plain'], ['3.1', 'text/plain'], ['3.2', 'application/zip']],
      );
      assert.equal(docs[1]?.data, `Virus found: Eicar-Test — removed${eol}`);
      // the new part uses the message's line ending only
      const added = out.subarray(r.start, out.length - (m.length - r.end)).toString('latin1');
      if (eol === '\n') assert.ok(!added.includes('\r'));
      else assert.ok(!/[^\r]\n/.test(added));
    }
  });

  it('replace: given bytes, type and name, base64; inside an attached message too', async () => {
    const m = msg(MESSAGE);
    const data = Buffer.from('the cleaned archive\x00\xff');
    const { out, result } = await rewrite(m, { parts: [{ action: 'replace', id: '3.2', data, contentType: 'application/zip', filename: 'nettoyé.zip' }] });
    assert.deepEqual(result.applied, ['3.2']);
    const r = ranges(m).get('3.2') as { start: number; end: number };
    assertOnlyRangeChanged(m, out, r.start, r.end);
    const walked = await walkMessage(out, {}, (d) => ({ id: d.id, name: d.filename, ct: d.contentType, data: Buffer.concat(d.spool.memoryChunks) }));
    const part = walked.documents.find((d) => d.result.id === '3.2')?.result;
    assert.deepEqual(part?.data, data);
    assert.equal(part?.name, 'nettoyé.zip');
    assert.equal(part?.ct, 'application/zip');
  });

  it('removing a whole attached message; a part inside a removed part is ignored', async () => {
    const m = msg(MESSAGE);
    const { out, result } = await rewrite(m, {
      parts: [
        { action: 'remove', id: '3', notice: 'attached message removed' },
        { action: 'remove', id: '3.2', notice: 'inner' },
      ],
    });
    assert.deepEqual(result.applied, ['3', '3.2']);
    const r = ranges(m).get('3') as { start: number; end: number };
    assertOnlyRangeChanged(m, out, r.start, r.end);
    assert.deepEqual((await documents(out)).map((d) => d.id), ['1', '2', '3']);
  });

  it('the body of a single-part message (or attached message) keeps its message fields', async () => {
    const m = msg(['From: a@example.com', 'Subject: single', 'Content-Type: application/octet-stream; name=x.exe', 'Content-Transfer-Encoding: base64', 'X-After: kept', '', 'TVqQAAMAAAAEAAAA']);
    const { out } = await rewrite(m, { parts: [{ action: 'remove', id: '1', notice: 'removed' }] });
    const text = out.toString();
    assert.match(text, /^From: a@example.com\r\nSubject: single\r\nX-After: kept\r\nMIME-Version: 1\.0\r\nContent-Type: text\/plain; charset=utf-8\r\n/);
    assert.ok(!text.includes('x.exe'));
    assert.deepEqual((await documents(out)).map((d) => d.data), ['removed\r\n']);
    // the same for the single-part body of an attached message
    const a = msg(['Content-Type: multipart/mixed; boundary=Z', '', '--Z', 'Content-Type: message/rfc822', '', 'Subject: inner', 'MIME-Version: 1.0', 'Content-Type: application/x-foo', '', 'payload', '--Z--', '']);
    const ra = await rewrite(a, { parts: [{ action: 'remove', id: '1.1', notice: 'gone' }] });
    assert.ok(ra.out.toString().includes('Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: text/plain'));
    assert.deepEqual((await documents(ra.out)).map((d) => [d.id, d.data]), [['1.1', 'gone\r\n']]);
  });

  it("the id '' replaces the whole body of the message, keeping its message fields", async () => {
    const m = msg(MESSAGE);
    const { out, result } = await rewrite(m, {
      parts: [
        { action: 'remove', id: '', notice: 'The message was removed.' },
        { action: 'remove', id: '2', notice: 'inside the removed body: ignored' },
      ],
    });
    assert.deepEqual(result.applied, ['', '2']);
    const text = out.toString('utf8');
    assert.ok(text.startsWith(MESSAGE.slice(0, 5).join('\r\n') + '\r\nContent-Type: text/plain; charset=utf-8\r\n'));
    assert.ok(!text.includes('multipart') && !text.includes('epilogue'));
    assert.deepEqual((await documents(out)).map((d) => [d.id, d.data]), [['1', 'The message was removed.\r\n']]);
  });

  it('a uuencoded file id acts on the text part holding it; unknown ids are reported', async () => {
    const m = msg(['Subject: x', '', 'text', 'begin 644 a.bin', '#86)C', '`', 'end', '']);
    const { out, result } = await rewrite(m, { parts: [{ action: 'remove', id: '1/uu1', notice: 'uu removed' }, { action: 'remove', id: '7.3', notice: '' }] });
    assert.deepEqual(result.applied, ['1']);
    assert.deepEqual(result.missing, ['7.3']);
    assert.deepEqual((await documents(out)).map((d) => d.data), ['uu removed\r\n']);
  });

  it('drops the top-level fields named in removeHeaders (a forged X-AV-Status), folded lines included, nothing else', async () => {
    const m = msg(['X-AV-Status: clean', 'Subject: hi', 'x-av-status: clean (forged', ' continued)', 'From: a@example.com', '', 'body', '']);
    const { out } = await rewrite(m, { removeHeaders: ['X-AV-Status'], addHeaders: [{ name: 'X-AV-Status', value: 'infected (X)' }] });
    assert.equal(out.toString('latin1'), ['X-AV-Status: infected (X)', 'Subject: hi', 'From: a@example.com', '', 'body', ''].join('\r\n'));
  });

  it('adds header fields at the top, folded, encoded when not ASCII, with no header injection', async () => {
    const m = msg(MESSAGE);
    const { out } = await rewrite(m, {
      addHeaders: [
        { name: 'X-Virus-Scanned', value: 'avgate 0.1.0' },
        { name: 'X-AV-Status', value: `infected (${'Win.Test.Very-Long-Signature-Name '.repeat(4).trim()})` },
        { name: 'X-Note', value: 'naïve\r\nBcc: evil@example.com' },
      ],
    });
    const text = out.toString('latin1');
    const headEnd = text.indexOf('Received:');
    const added = text.slice(0, headEnd);
    assert.ok(out.subarray(headEnd).equals(m), 'the original message follows unchanged');
    assert.ok(added.startsWith('X-Virus-Scanned: avgate 0.1.0\r\nX-AV-Status: infected (Win.Test.Very-Long-Signature-Name\r\n '));
    for (const line of added.split('\r\n')) assert.ok(line.length <= 78, line);
    assert.ok(!/\r\nBcc:/.test(added));
    const note = /X-Note: (.*)\r\n/.exec(added)?.[1] ?? '';
    assert.equal(decodeEncodedWords(note), 'naïve Bcc: evil@example.com');
    await assert.rejects(rewriteMessage(m, new PassThrough(), { addHeaders: [{ name: 'Bad Name', value: 'x' }] }), TypeError);
  });

  it('prefixes the Subject, keeping encoded words intact', async () => {
    const cases: Array<{ subject: string[]; prefix: string; expect: string; raw?: RegExp }> = [
      { subject: ['Subject: hello'], prefix: '[VIRUS]', expect: '[VIRUS] hello', raw: /^Subject: \[VIRUS\] hello\r\n/m },
      { subject: ['Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from Alice'], prefix: '[VIRUS]', expect: '[VIRUS] Grüße from Alice', raw: /^Subject: \[VIRUS\] =\?UTF-8\?Q\?Gr=C3=BC=C3=9Fe\?= from Alice\r\n/m },
      { subject: ['Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?='], prefix: '[VÍRUS]', expect: '[VÍRUS] Grüße' },
      { subject: ['Subject: plain'], prefix: '[VÍRUS]', expect: '[VÍRUS] plain' },
      { subject: ['Subject:'], prefix: '[VIRUS]', expect: '[VIRUS]' },
      { subject: ['Subject: [VIRUS] already tagged'], prefix: '[VIRUS]', expect: '[VIRUS] already tagged' },
      { subject: ['Subject: a folded', '  subject'], prefix: '[VIRUS]', expect: '[VIRUS] a folded  subject' },
      { subject: [`Subject: ${'long '.repeat(14).trim()}`], prefix: '[VIRUS]', expect: `[VIRUS] ${'long '.repeat(14).trim()}` },
      { subject: [], prefix: '[VIRUS]', expect: '[VIRUS]' },
    ];
    for (const c of cases) {
      const m = msg(['From: a@example.com', ...c.subject, 'To: b@example.com', '', 'body']);
      const { out } = await rewrite(m, { subjectPrefix: c.prefix });
      const text = out.toString('latin1');
      const field = /^Subject:((?:.*)(?:\r\n[ \t].*)*)\r\n/m.exec(text)?.[1] ?? '';
      assert.equal(decodeEncodedWords(field.replace(/\r\n(?=[ \t])/g, '').trim()), c.expect, JSON.stringify(c.subject));
      if (c.raw) assert.match(text, c.raw);
      for (const line of text.split('\r\n')) if (line.startsWith('Subject')) assert.ok(line.length <= 78 || c.subject[0]?.length === line.length);
      // only the Subject changed
      const orig = m.toString('latin1');
      assert.equal(text.replace(/^Subject:.*(\r\n[ \t].*)*\r\n/m, ''), orig.replace(/^Subject:.*(\r\n[ \t].*)*\r\n/m, ''));
    }
  });

  it('waits for a slow output (backpressure) and gives the same bytes', async () => {
    const lines = [...MESSAGE.slice(0, 16)];
    for (let i = 0; i < 20_000; i++) lines.push('QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB');
    lines.push(...MESSAGE.slice(16));
    const m = msg(lines);
    // from a file: the copy goes chunk by chunk, each waiting for the writer
    const path = join(dir, 'big.eml');
    await writeFile(path, m);
    let writes = 0;
    let maxPending = 0;
    const chunks: Buffer[] = [];
    const slow = new Writable({
      highWaterMark: 1024,
      write(chunk: Buffer, _enc, cb) {
        writes++;
        maxPending = Math.max(maxPending, slow.writableLength);
        chunks.push(chunk);
        setImmediate(cb);
      },
    });
    await rewriteMessage(path, slow, { parts: [{ action: 'remove', id: '1', notice: 'x' }] });
    assert.ok(writes > 3, `${writes} writes`);
    assert.ok(maxPending <= 300 * 1024, `the writer held ${maxPending} bytes at once`);
    const out = Buffer.concat(chunks);
    const r = ranges(m).get('1') as { start: number; end: number };
    assertOnlyRangeChanged(m, out, r.start, r.end);
  });

  it('fails when the output fails', async () => {
    const broken = new Writable({
      highWaterMark: 1,
      write(_c, _e, cb) {
        cb(new Error('disk full'));
      },
    });
    broken.on('error', () => undefined);
    await assert.rejects(rewriteMessage(msg(MESSAGE), broken, { addHeaders: [{ name: 'X-A', value: 'b' }] }), /disk full|closed/);
  });
});
