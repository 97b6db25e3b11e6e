import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { splitAt } from '../helpers/split.js';
import {
  buildOptionsRequest,
  buildRespmodHead,
  ChunkedDecoder,
  DEFAULT_OPTIONS_TTL_SECONDS,
  encodeChunk,
  extensionOf,
  headDecides,
  headerList,
  headerValue,
  headerValues,
  httpStatusOf,
  isModified,
  LAST_CHUNK,
  LAST_CHUNK_IEOF,
  MAX_HEAD_BYTES,
  MODIFIED_THREAT_NAME,
  parseEncapsulated,
  parseIcapUrl,
  parseInfectionFound,
  parseOptionsHead,
  parseResponseHead,
  parseViolationsFound,
  respmodVerdict,
  ResponseParser,
  threatNames,
  transferMode,
  VIOLATION_THREAT_NAME,
  wantsClose,
  type IcapResponseHead,
  type ResponseEvent,
} from '../../src/engines/icap/protocol.js';

function head(text: string): IcapResponseHead {
  const r = parseResponseHead(text);
  if (!r.ok) throw new Error(`test head did not parse: ${r.reason}`);
  return r.head;
}

/** Feeds the parser in the given pieces and flattens body data, for comparisons. */
function feed(pieces: Buffer[]): ResponseEvent[] {
  const p = new ResponseParser();
  const events = pieces.flatMap((piece) => p.push(piece));
  const merged: ResponseEvent[] = [];
  for (const ev of events) {
    const prev = merged[merged.length - 1];
    if (ev.type === 'body' && prev?.type === 'body') merged[merged.length - 1] = { type: 'body', data: Buffer.concat([prev.data, ev.data]) };
    else merged.push(ev);
  }
  return merged;
}


describe('URLs', () => {
  test('icap URLs', () => {
    const table: Array<[string, unknown]> = [
      ['icap://127.0.0.1:1344/avscan', { host: '127.0.0.1', port: 1344, service: '/avscan' }],
      ['icap://icap.example/virus_scan?allow204=on', { host: 'icap.example', port: 1344, service: '/virus_scan?allow204=on' }],
      ['icap://[::1]:11344/av', { host: '::1', port: 11344, service: '/av' }],
      ['icap://host:0/av', null],
      ['icap://host:70000/av', null],
      ['icap://host/', null],
      ['icap://host', null],
      ['http://host/av', null],
      ['icaps://host/av', null],
      ['icap://ho st/av', null],
    ];
    for (const [text, expected] of table) assert.deepEqual(parseIcapUrl(text), expected, text);
  });
});

describe('requests', () => {
  const url = { host: '127.0.0.1', port: 1344, service: '/avscan' };

  test('OPTIONS', () => {
    assert.equal(
      buildOptionsRequest(url).toString('latin1'),
      'OPTIONS icap://127.0.0.1:1344/avscan ICAP/1.0\r\nHost: 127.0.0.1:1344\r\nUser-Agent: avgate\r\nEncapsulated: null-body=0\r\n\r\n',
    );
  });

  test('RESPMOD with preview, Allow: 204 and a known size', () => {
    const text = buildRespmodHead({ url, preview: 1024, allow204: true, size: 5000 }).toString('latin1');
    const [icap, http] = text.split(/(?<=\r\n\r\n)/);
    assert.equal(
      icap,
      'RESPMOD icap://127.0.0.1:1344/avscan ICAP/1.0\r\nHost: 127.0.0.1:1344\r\nUser-Agent: avgate\r\nAllow: 204\r\n' +
        `Preview: 1024\r\nEncapsulated: res-hdr=0, res-body=${Buffer.byteLength(http ?? '')}\r\n\r\n`,
    );
    assert.equal(http, 'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 5000\r\n\r\n');
  });

  test('RESPMOD without preview, without 204, size unknown', () => {
    const text = buildRespmodHead({ url, preview: null, allow204: false }).toString('latin1');
    assert.doesNotMatch(text, /Preview:|Allow:|Content-Length:/);
    const http = 'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n';
    assert.ok(text.endsWith(`Encapsulated: res-hdr=0, res-body=${http.length}\r\n\r\n${http}`));
  });

  test('chunk framing', () => {
    assert.equal(encodeChunk(Buffer.from('hello, world')).toString(), 'c\r\nhello, world\r\n');
    assert.equal(encodeChunk(Buffer.alloc(0)).length, 0);
    assert.equal(LAST_CHUNK.toString(), '0\r\n\r\n');
    assert.equal(LAST_CHUNK_IEOF.toString(), '0; ieof\r\n\r\n');
  });
});

describe('response heads', () => {
  test('status line, case-insensitive and repeated headers, folded lines', () => {
    const h = head(
      'ICAP/1.0 200 OK\r\nISTag: "abc"\r\nmethods: RESPMOD\r\nMETHODS: REQMOD, OPTIONS\r\n' +
        'X-Violations-Found: 1\r\n\t-\r\n\tEicar\r\n\t0\r\n\t0\r\n\r\n',
    );
    assert.equal(h.status, 200);
    assert.equal(h.reason, 'OK');
    assert.equal(h.version, '1.0');
    assert.equal(headerValue(h, 'istag'), '"abc"');
    assert.deepEqual(headerValues(h, 'Methods'), ['RESPMOD', 'REQMOD, OPTIONS']);
    assert.deepEqual(headerList(h, 'methods'), ['RESPMOD', 'REQMOD', 'OPTIONS']);
    assert.equal(headerValue(h, 'x-violations-found'), '1\n-\nEicar\n0\n0');
  });

  test('bad heads come back with their first line', () => {
    const table: Array<[string, string]> = [
      ['HELLO WORLD\r\n\r\n', 'HELLO WORLD'],
      ['HTTP/1.1 200 OK\r\n\r\n', 'HTTP/1.1 200 OK'],
      ['ICAP/1.0 20 OK\r\n\r\n', 'ICAP/1.0 20 OK'],
      ['ICAP/1.0 200 OK\r\nno colon here\r\n\r\n', 'ICAP/1.0 200 OK'],
      ['ICAP/1.0 200 OK\r\n continuation first\r\n\r\n', 'ICAP/1.0 200 OK'],
      ['', ''],
    ];
    for (const [text, firstLine] of table) {
      const r = parseResponseHead(text);
      assert.equal(r.ok, false, text);
      if (!r.ok) assert.equal(r.firstLine, firstLine);
    }
  });

  test('Connection: close', () => {
    assert.equal(wantsClose(head('ICAP/1.0 204 No Content\r\nConnection: close\r\n')), true);
    assert.equal(wantsClose(head('ICAP/1.0 204 No Content\r\nConnection: keep-alive\r\n')), false);
  });

  test('Encapsulated', () => {
    const table: Array<[string, unknown]> = [
      ['res-hdr=0, res-body=137', [{ name: 'res-hdr', offset: 0 }, { name: 'res-body', offset: 137 }]],
      ['null-body=0', [{ name: 'null-body', offset: 0 }]],
      ['req-hdr=0, res-hdr=45, res-body=100', [
        { name: 'req-hdr', offset: 0 },
        { name: 'res-hdr', offset: 45 },
        { name: 'res-body', offset: 100 },
      ]],
      ['RES-HDR=0,NULL-BODY=20', [{ name: 'res-hdr', offset: 0 }, { name: 'null-body', offset: 20 }]],
      ['opt-body=0', [{ name: 'opt-body', offset: 0 }]],
      ['res-hdr=5, res-body=10', null],
      ['res-hdr=0, res-body=10, null-body=20', null],
      ['res-body=0, res-hdr=10', null],
      ['res-hdr=0', null],
      ['res-hdr=0, res-body=x', null],
      ['foo=0', null],
      ['', null],
    ];
    for (const [text, expected] of table) assert.deepEqual(parseEncapsulated(text), expected, text);
  });

  test('encapsulated HTTP status', () => {
    assert.equal(httpStatusOf('HTTP/1.0 403 Forbidden\r\nServer: C-ICAP\r\n\r\n'), 403);
    assert.equal(httpStatusOf('HTTP/1.1 200 OK\r\n\r\n'), 200);
    assert.equal(httpStatusOf('HTTP/1.1 200\r\n\r\n'), 200);
    assert.equal(httpStatusOf('garbage\r\n'), null);
  });
});

describe('OPTIONS', () => {
  test('c-icap style answer', () => {
    const o = parseOptionsHead(
      head(
        'ICAP/1.0 200 OK\r\nMethods: RESPMOD, REQMOD\r\nService: C-ICAP/0.5.10 server - Antivirus service\r\n' +
          'ISTag: "CI0001-2BWMfD4Mx7Bq9w9BJDAOJAAA"\r\nTransfer-Preview: *\r\nOptions-TTL: 3600\r\n' +
          'Max-Connections: 600\r\nAllow: 204\r\nPreview: 1024\r\nTransfer-Ignore: JPG, gif\r\nTransfer-Complete: exe\r\n' +
          'Encapsulated: null-body=0\r\n\r\n',
      ),
    );
    assert.deepEqual(o, {
      methods: ['RESPMOD', 'REQMOD'],
      istag: 'CI0001-2BWMfD4Mx7Bq9w9BJDAOJAAA',
      ttlSeconds: 3600,
      preview: 1024,
      allow204: true,
      maxConnections: 600,
      service: 'C-ICAP/0.5.10 server - Antivirus service',
      transferPreview: ['*'],
      transferIgnore: ['jpg', 'gif'],
      transferComplete: ['exe'],
    });
    assert.equal(transferMode(o, 'photo.JPG'), 'ignore');
    assert.equal(transferMode(o, 'http://x/setup.exe?dl=1'), 'complete');
    assert.equal(transferMode(o, 'report.pdf'), 'preview');
    assert.equal(transferMode(o, undefined), 'preview');
  });

  test('defaults when headers are missing or invalid', () => {
    const o = parseOptionsHead(head('ICAP/1.0 200 OK\r\nPreview: many\r\nOptions-TTL: -5\r\n'));
    assert.equal(o.ttlSeconds, DEFAULT_OPTIONS_TTL_SECONDS);
    assert.equal(o.preview, null);
    assert.equal(o.istag, null);
    assert.equal(o.allow204, false);
    assert.equal(o.maxConnections, null);
    assert.deepEqual(o.methods, []);
    assert.equal(transferMode(o, 'a.exe'), 'preview');
  });

  test('* in Transfer-Complete makes whole transfers the default', () => {
    const o = parseOptionsHead(head('ICAP/1.0 200 OK\r\nTransfer-Complete: *\r\nTransfer-Preview: txt\r\n'));
    assert.equal(transferMode(o, 'a.txt'), 'preview');
    assert.equal(transferMode(o, 'a.bin'), 'complete');
    assert.equal(transferMode(o, 'noext'), 'complete');
  });

  test('extensions', () => {
    const table: Array<[string | undefined, string | null]> = [
      ['a.TXT', 'txt'],
      ['dir.d/file', null],
      ['/x/y.tar.gz?q=1#f', 'gz'],
      ['C:\\dl\\setup.EXE', 'exe'],
      ['.bashrc', null],
      ['trailing.', null],
      [undefined, null],
    ];
    for (const [name, ext] of table) assert.equal(extensionOf(name), ext, String(name));
  });
});

describe('verdict rules', () => {
  const ok200 = 'ICAP/1.0 200 OK\r\nISTag: "x"\r\nEncapsulated: res-hdr=0, res-body=100\r\n';
  const table: Array<[string, string, boolean, unknown]> = [
    ['204', 'ICAP/1.0 204 No Content\r\nISTag: "x"\r\n', false, { status: 'free' }],
    ['c-icap virus_scan found', `${ok200}X-Infection-Found: Type=0; Resolution=2; Threat=Eicar-Test-Signature;\r\n` +
      'X-Violations-Found: 1\r\n\t-\r\n\tEicar-Test-Signature\r\n\t0\r\n\t0\r\n', true,
      { status: 'found', names: ['Eicar-Test-Signature'] }],
    ['violations only, two of them', `${ok200}X-Violations-Found: 2\r\n\tf1\r\n\tA\r\n\t1\r\n\t2\r\n\tf2\r\n\tB\r\n\t1\r\n\t2\r\n`, false,
      { status: 'found', names: ['A', 'B'] }],
    ['violation count without lines', `${ok200}X-Violations-Found: 1\r\n`, false, { status: 'found', names: [VIOLATION_THREAT_NAME] }],
    ['violation count zero, echo', `${ok200}X-Violations-Found: 0\r\n`, false, { status: 'free' }],
    ['X-Virus-ID', `${ok200}X-Virus-ID: EICAR-Test-File\r\n`, true, { status: 'found', names: ['EICAR-Test-File'] }],
    ['several headers, names deduplicated', `${ok200}X-Virus-ID: A\r\nX-Infection-Found: Threat=A;\r\nX-Infection-Found: Type=0; Threat=B\r\n`,
      true, { status: 'found', names: ['A', 'B'] }],
    ['modified without a name', ok200, true, { status: 'found', names: [MODIFIED_THREAT_NAME] }],
    ['unchanged echo', ok200, false, { status: 'free' }],
    ['413', 'ICAP/1.0 413 Request Entity Too Large\r\n', false,
      { status: 'skipped', reason: 'ICAP server: ICAP/1.0 413 Request Entity Too Large' }],
    ['404', 'ICAP/1.0 404 ICAP Service not found\r\n', false,
      { status: 'error', code: 'AVG_ERR_ENGINE_FAILED', cause: 'ICAP server: ICAP/1.0 404 ICAP Service not found' }],
    ['500', 'ICAP/1.0 500 Server Error\r\n', false, { status: 'error', code: 'AVG_ERR_ENGINE_FAILED', cause: 'ICAP server: ICAP/1.0 500 Server Error' }],
    ['206 (not asked for)', 'ICAP/1.0 206 Partial Content\r\n', false, { status: 'unknown', raw: 'ICAP/1.0 206 Partial Content' }],
    ['100 as final', 'ICAP/1.0 100 Continue\r\n', false, { status: 'unknown', raw: 'ICAP/1.0 100 Continue' }],
  ];
  for (const [label, text, modified, expected] of table) {
    test(label, () => assert.deepEqual(respmodVerdict(head(text), modified), expected));
  }

  test('threat header parsers', () => {
    assert.deepEqual(parseInfectionFound('Type=0; Resolution=2; Threat=Win.Test.EICAR_HDB-1;'), ['Win.Test.EICAR_HDB-1']);
    assert.deepEqual(parseInfectionFound('Type=0; Resolution=2; threat = Spaced Name ;'), ['Spaced Name']);
    assert.deepEqual(parseInfectionFound('Type=0; Resolution=2'), []);
    assert.deepEqual(parseViolationsFound('1\n-\nX\n0\n0'), { count: 1, names: ['X'] });
    assert.deepEqual(parseViolationsFound('garbage'), { count: 0, names: [] });
    assert.deepEqual(threatNames(head('ICAP/1.0 200 OK\r\nX-Virus-ID: -\r\n')), { names: [], violations: 0 });
  });

  test('which heads decide before the body is read', () => {
    assert.equal(headDecides(head('ICAP/1.0 204 No Content\r\n')), true);
    assert.equal(headDecides(head('ICAP/1.0 500 Server Error\r\n')), true);
    assert.equal(headDecides(head('ICAP/1.0 200 OK\r\nX-Virus-ID: V\r\n')), true);
    assert.equal(headDecides(head('ICAP/1.0 200 OK\r\n')), false);
  });

  test('modified: another HTTP status or other body bytes', () => {
    const table: Array<[Parameters<typeof isModified>[0], boolean]> = [
      [{ httpStatus: 200, bodySame: true }, false],
      [{ httpStatus: 403, bodySame: true }, true],
      [{ httpStatus: null, bodySame: true }, true],
      [{ httpStatus: 200, bodySame: false }, true],
      [{ bodySame: false }, true],
      [{ httpStatus: 200 }, false],
      [{}, false],
    ];
    for (const [input, expected] of table) assert.equal(isModified(input), expected, JSON.stringify(input));
  });
});

describe('response parser', () => {
  test('100 Continue, then a 200 with a res-hdr and a chunked body, then a 204', () => {
    const resHdr = 'HTTP/1.0 403 Forbidden\r\nContent-Type: text/html\r\n\r\n';
    const wire = Buffer.from(
      'ICAP/1.0 100 Continue\r\n\r\n' +
        `ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=${resHdr.length}\r\n\r\n${resHdr}` +
        '5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n' +
        'ICAP/1.0 204 No Content\r\nEncapsulated: null-body=0\r\n\r\n',
      'latin1',
    );
    const events = feed([wire]);
    assert.deepEqual(
      events.map((e) => (e.type === 'head' ? `head ${e.head.status}` : e.type === 'body' ? `body ${e.data.toString()}` : e.type)),
      ['head 100', 'end', 'head 200', 'section', 'body hello world', 'end', 'head 204', 'end'],
    );
    const section = events[3];
    assert.ok(section?.type === 'section' && section.name === 'res-hdr' && section.data.toString() === resHdr);
  });

  test('null-body after a header section; error replies without Encapsulated', () => {
    const events = feed([
      Buffer.from('ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, null-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\nICAP/1.0 500 Err\r\n\r\n'),
    ]);
    assert.deepEqual(
      events.map((e) => e.type),
      ['head', 'section', 'end', 'head', 'end'],
    );
  });

  test('garbage, with or without a blank line, is reported by its first line', () => {
    for (const text of ['HELLO WORLD\r\n\r\n', 'HELLO WORLD\r\n', 'HELLO WORLD\n']) {
      const events = feed([Buffer.from(text)]);
      assert.deepEqual(events, [{ type: 'error', kind: 'bad-status', message: 'not an ICAP status line', raw: 'HELLO WORLD' }]);
    }
  });

  test('a head over 64 KiB is refused, not buffered', () => {
    const p = new ResponseParser();
    assert.deepEqual(p.push(Buffer.from('ICAP/1.0 200 OK\r\n')), []);
    const line = Buffer.from(`X-Filler: ${'a'.repeat(1000)}\r\n`);
    let events: ResponseEvent[] = [];
    for (let i = 0; i < 100 && events.length === 0; i++) events = p.push(line);
    assert.equal(events[0]?.type, 'error');
    assert.ok(events[0]?.type === 'error' && events[0].kind === 'too-large');
    assert.equal(p.failed, true);
    assert.deepEqual(p.push(Buffer.from('ICAP/1.0 204 No Content\r\n\r\n')), []);
  });

  test('encapsulated header sections over 64 KiB are refused', () => {
    const events = feed([Buffer.from(`ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=${MAX_HEAD_BYTES + 1}\r\n\r\n`)]);
    assert.ok(events[1]?.type === 'error' && events[1].kind === 'too-large');
  });

  test('broken chunk framing and a bad Encapsulated header', () => {
    const bad = feed([Buffer.from('ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\nzz\r\n')]);
    assert.ok(bad[1]?.type === 'error' && bad[1].kind === 'framing');
    const noCrlf = feed([Buffer.from('ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\n2\r\nabXY\r\n')]);
    assert.ok(noCrlf.at(-1)?.type === 'error');
    const enc = feed([Buffer.from('ICAP/1.0 200 OK\r\nEncapsulated: nonsense\r\n\r\n')]);
    assert.ok(enc[1]?.type === 'error' && enc[1].kind === 'framing');
  });

  test('idle only between whole messages; leading blank lines are skipped', () => {
    const p = new ResponseParser();
    assert.equal(p.idle, true);
    p.push(Buffer.from('\r\n\r\nICAP/1.0 204 No'));
    assert.equal(p.idle, false);
    const ev = p.push(Buffer.from(' Content\r\n\r\n'));
    assert.equal(ev[0]?.type === 'head' && ev[0].head.status, 204);
    assert.equal(p.idle, true);
  });

  test('chunked decoder: ieof, trailers, bytes after the end', () => {
    const d = new ChunkedDecoder();
    const r = d.push(Buffer.from('3\r\nabc\r\n0; ieof\r\nX-Trailer: 1\r\n\r\nNEXT'));
    assert.equal(Buffer.concat(r.data).toString(), 'abc');
    assert.equal(r.done, true);
    assert.equal(r.ieof, true);
    assert.equal(r.rest.toString(), 'NEXT');
    assert.equal(new ChunkedDecoder().push(Buffer.from(`${'1'.repeat(5000)}`)).error !== null, true);
    assert.match(new ChunkedDecoder().push(Buffer.from('fffffffffffffff\r\n')).error ?? '', /bad chunk size/);
  });
});

describe('properties', () => {
  test('chunk encoder/decoder round-trip arbitrary bytes split arbitrarily', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }),
        fc.boolean(),
        fc.array(fc.nat(), { maxLength: 12 }),
        fc.uint8Array({ maxLength: 20 }),
        (pieces, ieof, cuts, tail) => {
          const data = pieces.map((p) => Buffer.from(p));
          const wire = Buffer.concat([...data.map(encodeChunk), ieof ? LAST_CHUNK_IEOF : LAST_CHUNK, Buffer.from(tail)]);
          const d = new ChunkedDecoder();
          const got: Buffer[] = [];
          const rest: Buffer[] = [];
          let done = false;
          let sawIeof = false;
          for (const part of splitAt(wire, cuts)) {
            const r = d.push(part);
            assert.equal(r.error, null);
            got.push(...r.data);
            if (r.done) {
              done = true;
              sawIeof = r.ieof;
              rest.push(r.rest);
            }
          }
          assert.equal(done, true);
          assert.equal(sawIeof, ieof);
          assert.deepEqual(Buffer.concat(got), Buffer.concat(data));
          assert.deepEqual(Buffer.concat(rest), Buffer.from(tail));
        },
      ),
      { numRuns: 500 },
    );
  });

  test('a response parses to the same events however it is split', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 500 }), fc.array(fc.nat(), { maxLength: 20 }), (body, cuts) => {
        const resHdr = 'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n';
        const wire = Buffer.concat([
          Buffer.from(`ICAP/1.0 100 Continue\r\n\r\nICAP/1.0 200 OK\r\nISTag: "t"\r\nEncapsulated: res-hdr=0, res-body=${resHdr.length}\r\n\r\n${resHdr}`),
          encodeChunk(Buffer.from(body)),
          LAST_CHUNK,
          Buffer.from('ICAP/1.0 204 No Content\r\nEncapsulated: null-body=0\r\n\r\n'),
        ]);
        const whole = feed([wire]);
        const split = feed(splitAt(wire, cuts));
        assert.deepEqual(split, whole);
        assert.deepEqual(
          whole.map((e) => e.type),
          [
            ...['head', 'end', 'head', 'section'],
            ...(body.length > 0 ? ['body'] : []),
            ...['end', 'head', 'end'],
          ],
        );
      }),
      { numRuns: 300 },
    );
  });

  test('the head parser and the response parser never throw on random input', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 400 }), (text) => {
        const r = parseResponseHead(text);
        assert.ok(r.ok === true || typeof r.firstLine === 'string');
      }),
      { numRuns: 1000 },
    );
    const icapish = fc
      .array(
        fc.constantFrom('ICAP/1.0 ', '200', ' OK', '\r\n', '\n', ':', 'Encapsulated', 'res-hdr=0', ', ', 'res-body=', '5', 'null-body=0', '\t', 'x', '0; ieof', 'ff'),
        { maxLength: 60 },
      )
      .map((parts) => parts.join(''));
    fc.assert(
      fc.property(fc.oneof(icapish, fc.string({ maxLength: 300 })), fc.array(fc.nat(), { maxLength: 10 }), (text, cuts) => {
        const r = parseResponseHead(text);
        assert.ok(r.ok === true || typeof r.firstLine === 'string');
        const p = new ResponseParser();
        for (const part of splitAt(Buffer.from(text, 'latin1'), cuts)) p.push(part);
      }),
      { numRuns: 2000 },
    );
  });
});
