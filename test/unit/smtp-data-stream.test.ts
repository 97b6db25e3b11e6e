import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import type { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { keepPipelinedTransactions, scanDataNatively } from '../../src/protocols/smtp/server.js';

// The oracle is smtp-server's own SMTPStream; the patch goes on a subclass, so the two run side
// by side in one process. Both with the continue() that avgate installs as well (without it,
// pipelined transactions hang in either).
keepPipelinedTransactions({ _parser: new SMTPStream() } as unknown as SMTPConnection);
class Patched extends SMTPStream {}
scanDataNatively({ _parser: new Patched() } as unknown as SMTPConnection);
const original = SMTPStream.prototype._feedDataStream;
const patched = Patched.prototype._feedDataStream;

type Consumer = 'flowing' | 'slow' | { destroyAfter: number };

interface Run {
  /** Everything the parser did, in order: counted bytes, writes/ends on the data stream, _endDataMode, commands, each input chunk's callback. */
  log: string[];
  /** What each data stream received (write/end arguments), and what its reader got out of it. */
  written: Buffer[];
  read: Buffer[];
  final: { dataBytes: number; dataMode: boolean; atDataStart: boolean; lastBytes: string; remainder: string };
}

const hex = (b: Buffer | false | undefined): string => (b ? b.toString('hex') : String(b));

/**
 * Feeds `chunks` to a parser of class `Cls` as smtp-connection does: one chunk at a time (the next
 * after the previous one's callback, as from a socket pipe), `DATA` starts data mode, continue()
 * once the message stream is over (or, like an onData that gave up, right after destroying it).
 */
async function run(Cls: typeof SMTPStream, chunks: Buffer[], consumer: Consumer = 'flowing', maxBytes?: number): Promise<Run> {
  const parser = new Cls();
  const log: string[] = [];
  const written: Buffer[] = [];
  const read: Buffer[] = [];
  let transactions = 0;

  const count = parser._countDataBytes;
  parser._countDataBytes = (n: number) => {
    log.push(`count ${n}`);
    count.call(parser, n);
  };
  const endDataMode = parser._endDataMode;
  parser._endDataMode = (chunk, remainder, cb) => {
    log.push(`endDataMode ${hex(chunk)} ${hex(remainder)} dataBytes=${parser.dataBytes}`);
    endDataMode.call(parser, chunk, remainder, cb);
  };

  const startData = (): void => {
    const n = ++transactions;
    const stream = parser.startDataMode(maxBytes);
    const parts: Buffer[] = [];
    const got: Buffer[] = [];
    let continued = false;
    const proceed = (): void => {
      if (continued) return;
      continued = true;
      setImmediate(() => parser.continue());
    };
    const write = stream.write.bind(stream) as (b: Buffer) => boolean;
    (stream as unknown as { write: (b: Buffer) => boolean }).write = (b: Buffer) => {
      log.push(`write#${n} ${b.length}`);
      parts.push(Buffer.from(b));
      return write(b);
    };
    const end = stream.end.bind(stream) as (b?: Buffer) => unknown;
    (stream as unknown as { end: (b?: Buffer) => unknown }).end = (b?: Buffer) => {
      log.push(`end#${n} ${b ? b.length : '-'} byteLength=${stream.byteLength} sizeExceeded=${stream.sizeExceeded}`);
      if (b) parts.push(Buffer.from(b));
      written.push(Buffer.concat(parts));
      return b ? end(b) : end();
    };
    stream.on('error', () => undefined);
    stream.on('data', (d: Buffer) => {
      got.push(d);
      if (typeof consumer === 'object') {
        if (got.reduce((s, g) => s + g.length, 0) > consumer.destroyAfter) {
          stream.destroy();
          proceed();
        }
      } else if (consumer === 'slow') {
        stream.pause();
        setImmediate(() => stream.resume());
      }
    });
    stream.on('end', () => {
      read.push(Buffer.concat(got));
      proceed();
    });
  };

  parser.oncommand = (command: Buffer, callback?: () => void) => {
    const line = command.toString('latin1');
    log.push(`command ${JSON.stringify(line)}`);
    if (line === 'DATA') startData();
    callback?.();
  };
  parser.on('error', (err: Error) => log.push(`error ${err.message}`));

  for (const [k, chunk] of chunks.entries()) {
    await new Promise<void>((resolve) => parser.write(chunk, () => resolve()));
    log.push(`done ${k} dataBytes=${parser.dataBytes}`);
  }
  await new Promise<void>((resolve) => parser.end(() => resolve()));
  const final = {
    dataBytes: parser.dataBytes,
    dataMode: parser._dataMode,
    atDataStart: parser._atDataStart,
    lastBytes: hex(parser._lastBytes),
    remainder: parser._remainder,
  };
  return { log, written, read, final };
}

/** Both parsers on the same input: the patched one must do exactly what the original does. */
async function same(chunks: Buffer[], consumer: Consumer = 'flowing', maxBytes?: number): Promise<Run> {
  const want = await run(SMTPStream, chunks, consumer, maxBytes);
  const got = await run(Patched, chunks, consumer, maxBytes);
  assert.deepEqual(got.log, want.log);
  assert.deepEqual(got.final, want.final);
  assert.equal(got.written.length, want.written.length);
  for (const [i, w] of want.written.entries()) assert.ok(w.equals(got.written[i] as Buffer), `data stream ${i + 1} received other bytes`);
  assert.equal(got.read.length, want.read.length);
  for (const [i, w] of want.read.entries()) assert.ok(w.equals(got.read[i] as Buffer), `data stream ${i + 1} gave other bytes`);
  return got;
}

/** `wire` cut into pieces of the given sizes, taken in turn. */
function cut(wire: Buffer, sizes: number[]): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0, k = 0; at < wire.length; k++) {
    const n = Math.max(1, sizes[k % sizes.length] ?? wire.length);
    out.push(wire.subarray(at, at + n));
    at += n;
  }
  return out;
}

/** Dot-stuffing as a client does it: a dot before every line that starts with one (RFC 5321 4.5.2). */
function stuff(body: Buffer, lineStart: 'lf' | 'crlf' | 'none'): Buffer {
  if (lineStart === 'none') return body;
  const out: number[] = [];
  for (let i = 0; i < body.length; i++) {
    const c = body[i] as number;
    const atLine = i === 0 || (body[i - 1] === 0x0a && (lineStart === 'lf' || body[i - 2] === 0x0d));
    if (c === 0x2e && atLine) out.push(0x2e);
    out.push(c);
  }
  return Buffer.from(out);
}

/** The message on the wire: stuffed body, the CRLF a client adds if the body has none at its end, ".\r\n". */
function wireOf(body: Buffer, lineStart: 'lf' | 'crlf' | 'none' = 'lf'): Buffer {
  const stuffed = stuff(body, lineStart);
  const end = body.length === 0 || body.subarray(-2).toString('latin1') === '\r\n' ? '.\r\n' : '\r\n.\r\n';
  return Buffer.concat([stuffed, Buffer.from(end, 'latin1')]);
}

/** The body a server should hand on for a correctly stuffed wire, terminator's CRLF included. */
function expected(body: Buffer): Buffer {
  if (body.length === 0) return body;
  return body.subarray(-2).toString('latin1') === '\r\n' ? body : Buffer.concat([body, Buffer.from('\r\n')]);
}

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const DATA = b('DATA\r\n');

// Lines of a message: random bytes (dots, CR and LF likely), and the lines a stuffing bug lives on.
const lineArb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('.', '..', '...', '.\r', '. ', '.x', '', 'From: a', 'text . more', '\r.', '.\n.') },
  { weight: 3, arbitrary: fc.string({ unit: fc.constantFrom('a', '.', ' ', '\r', '\n', 'x', '\u00e9'), maxLength: 12 }) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 80 }).map((u) => Buffer.from(u).toString('latin1')) },
);
const eolArb = fc.oneof({ weight: 8, arbitrary: fc.constant('\r\n') }, { weight: 2, arbitrary: fc.constant('\n') }, { weight: 1, arbitrary: fc.constant('\r') });
const bodyArb = fc
  .array(fc.tuple(lineArb, eolArb), { maxLength: 40 })
  .chain((lines) => fc.tuple(fc.constant(lines), fc.boolean()))
  .map(([lines, lastEol]) => {
    const text = lines.map(([l, e], i) => (i < lines.length - 1 || lastEol ? l + e : l)).join('');
    return b(text);
  });
const trailerArb = fc.constantFrom('', 'QUIT\r\n', 'RSET\r\nNOOP\r\n', 'QUI', 'MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n', '\r\n.\r\n', '..\r\n');
const sizesArb = fc.oneof(
  fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 20 }),
  fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 20 }),
  fc.array(fc.integer({ min: 1, max: 65536 }), { minLength: 1, maxLength: 5 }),
);
const consumerArb: fc.Arbitrary<Consumer> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<Consumer>('flowing') },
  { weight: 2, arbitrary: fc.constant<Consumer>('slow') },
  { weight: 1, arbitrary: fc.nat({ max: 3000 }).map((n): Consumer => ({ destroyAfter: n })) },
);
const maxBytesArb = fc.option(fc.integer({ min: 1, max: 4000 }), { nil: undefined });

test('SMTPStream patch: installed on the subclass only, the oracle keeps the original', () => {
  assert.notEqual(patched, original);
  assert.ok(Object.hasOwn(Patched.prototype, '_feedDataStream'));
  assert.equal(SMTPStream.prototype._feedDataStream, original);
  assert.match(original.toString(), /setImmediate/);
});

test('SMTPStream patch: left alone for another parser shape', () => {
  class NoStart extends SMTPStream {}
  const p = new NoStart() as unknown as Record<string, unknown>;
  delete p._atDataStart;
  scanDataNatively({ _parser: p } as unknown as SMTPConnection);
  assert.equal(NoStart.prototype._feedDataStream, original);
  class Other {
    _dataStream = null;
    _lastBytes = false;
    _atDataStart = false;
    _feedDataStream(_chunk: Buffer): void {}
    _endDataMode(): void {}
    _countDataBytes(): void {}
  }
  const before = Other.prototype._feedDataStream;
  scanDataNatively({ _parser: new Other() } as unknown as SMTPConnection);
  assert.equal(Other.prototype._feedDataStream, before);
  scanDataNatively({} as unknown as SMTPConnection);
  scanDataNatively({ _parser: false } as unknown as SMTPConnection);
});

test('DATA body: same pieces, bytes, counts and commands as smtp-server, any stuffing, any cut', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(bodyArb, fc.constantFrom<'lf' | 'crlf' | 'none'>('lf', 'lf', 'lf', 'crlf', 'none')), { minLength: 1, maxLength: 3 }),
      trailerArb,
      sizesArb,
      consumerArb,
      maxBytesArb,
      async (messages, trailer, sizes, consumer, maxBytes) => {
        const wire = Buffer.concat([...messages.map(([body, how], i) => Buffer.concat([i > 0 ? DATA : b(''), wireOf(body, how)])), b(trailer)]);
        const got = await same([DATA, ...cut(wire, sizes)], consumer, maxBytes);
        // For a correctly stuffed first message, the right body, not only the original's. Except
        // after a bare LF as the very first byte: both leave the escape dot of "\n.." at offset 1
        // (their scan starts at offset 2).
        const [first, how] = messages[0] as [Buffer, string];
        if (how === 'lf' && consumer === 'flowing' && first[0] !== 0x0a) assert.ok((got.read[0] as Buffer).equals(expected(first)), 'unstuffed body');
      },
    ),
    { numRuns: 1000 },
  );
});

test('DATA body: same as smtp-server on any bytes (dots, CR, LF, terminators, DATA commands)', async () => {
  const token = fc.constantFrom('.', '..', '\r', '\n', '\r\n', 'a', '\r\n.', '.\r\n', '\r\n..', '\r\n.\r\n', 'DATA\r\n', 'xyz');
  await fc.assert(
    fc.asyncProperty(fc.array(token, { maxLength: 120 }), sizesArb, consumerArb, async (tokens, sizes, consumer) => {
      await same([DATA, ...cut(b(tokens.join('')), sizes)], consumer);
    }),
    { numRuns: 1500 },
  );
});

test('DATA body: large messages in chunks of up to 64 KiB', async () => {
  const big = fc
    .tuple(fc.array(fc.tuple(lineArb, eolArb), { minLength: 1, maxLength: 60 }), fc.integer({ min: 50, max: 3000 }))
    .map(([lines, times]) => b(lines.map(([l, e]) => l + e).join('').repeat(times)).subarray(0, 600_000));
  await fc.assert(
    fc.asyncProperty(big, fc.array(fc.integer({ min: 1, max: 65536 }), { minLength: 1, maxLength: 8 }), consumerArb, async (body, sizes, consumer) => {
      await same([DATA, ...cut(Buffer.concat([wireOf(body), b('QUIT\r\n')]), sizes)], consumer);
    }),
    { numRuns: 30 },
  );
});

test('terminator split at every position across two chunks', async () => {
  const body = b('Subject: x\r\n\r\n..leading\r\nmiddle\r\n.\r\n..\r\nend');
  const wire = Buffer.concat([wireOf(body), b('QUIT\r\n')]);
  const at = wire.length - 'QUIT\r\n'.length - 5;
  for (let p = 1; p < wire.length; p++) {
    const got = await same([DATA, wire.subarray(0, p), wire.subarray(p)]);
    assert.ok((got.read[0] as Buffer).equals(expected(body)), `cut at ${p}`);
    assert.ok(got.log.includes('command "QUIT"'), `QUIT after cut at ${p}`);
  }
  // and every pair of cuts around the terminator
  for (let p = at - 2; p <= at + 5; p++) {
    for (let q = p + 1; q <= at + 7; q++) {
      const got = await same([DATA, wire.subarray(0, p), wire.subarray(p, q), wire.subarray(q)]);
      assert.ok((got.read[0] as Buffer).equals(expected(body)), `cuts at ${p}, ${q}`);
    }
  }
});

test('a first line "." sent as ".." in a chunk of its own is content, not the end of DATA', async () => {
  const smuggle = b('\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nforged\r\n.\r\n');
  for (const tail of [smuggle, b('\r\n.\r\nQUIT\r\n')]) {
    const chunks = [DATA, b('..'), tail];
    const got = await same(chunks);
    assert.equal(got.log.filter((l) => l.startsWith('command')).length, 1 + (tail === smuggle ? 0 : 1));
    if (tail !== smuggle) assert.ok((got.read[0] as Buffer).equals(b('.\r\n')), 'a message of one "." line');
    // also with the escape dot alone, and byte by byte
    await same([DATA, b('.'), b('.'), tail]);
    await same(cut(Buffer.concat([DATA, b('..'), tail]), [1]));
  }
});

test('".\\r\\n" as the very first bytes: an empty message', async () => {
  for (const chunks of [[b('.\r\nQUIT\r\n')], [b('.'), b('\r\nQUIT\r\n')], [b('.\r'), b('\nQUIT\r\n')], [b('.\r\n'), b('QUIT\r\n')]]) {
    const got = await same([DATA, ...chunks]);
    assert.equal(got.final.dataBytes, 0);
    assert.ok((got.read[0] as Buffer).equals(b('')), 'an empty message');
    assert.deepEqual(
      got.log.filter((l) => l.startsWith('command')),
      ['command "DATA"', 'command "QUIT"'],
    );
  }
});

test('a 2 MB body in 256 KiB chunks', async () => {
  const lines: string[] = [];
  for (let i = 0, size = 0; size < 2 * 1024 * 1024; i++) {
    const text = `line ${i} ${'abcdefghij'.repeat(i % 8)}`;
    const line = i % 7 === 0 ? `.${text}\r\n` : i % 53 === 0 ? '.\r\n' : `${text}\r\n`;
    lines.push(line);
    size += line.length;
  }
  const body = b(lines.join(''));
  for (const consumer of ['flowing', 'slow'] as const) {
    const got = await same([DATA, ...cut(Buffer.concat([wireOf(body), b('QUIT\r\n')]), [256 * 1024])], consumer);
    assert.ok((got.read[0] as Buffer).equals(body), 'the 2 MB body');
    assert.equal(got.final.dataBytes, body.length);
  }
});

test('backpressure: the next chunk waits until the message stream drains or closes', async () => {
  const turns = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
  };
  // a chunk over the stream's highWaterMark, with escape dots in it and without
  const lines = 'x'.repeat(70) + '\r\n';
  const plain = b(lines.repeat(1000));
  const stuffed = b(('..dot' + lines).repeat(1000));
  for (const Cls of [SMTPStream, Patched]) {
    for (const chunk of [plain, stuffed]) {
      for (const release of ['resume', 'destroy'] as const) {
        const parser = new Cls();
        const stream = parser.startDataMode();
        stream.on('error', () => undefined);
        let done = false;
        parser.write(chunk, () => (done = true));
        // (the original takes a turn of the event loop per escape dot)
        await turns(1500);
        assert.equal(done, false, `${Cls.name}: waits for the reader (${release})`);
        if (release === 'resume') stream.resume();
        else stream.destroy();
        await turns(5);
        assert.equal(done, true, `${Cls.name}: goes on after ${release}`);
      }
    }
  }
});
