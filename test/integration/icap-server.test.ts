import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { headerValue } from '../../src/engines/icap/protocol.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestIcap, type TestIcap } from '../helpers/avgate-icap.js';
import { closedPort } from '../helpers/fault-server.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';

const NAME = /^Avgate\.Test\.EICAR\.(HDB|NDB)/;

describe('avgate ICAP server', () => {
  let clamd: TestClamd;
  let icap: TestIcap;
  let deadPort: number;
  before(async () => {
    clamd = await startTestClamd();
    deadPort = await closedPort();
    icap = await startTestIcap({
      clamd,
      extraEngines: ['dead:', '  type: clamd-net', '  options:', `    address: 127.0.0.1:${deadPort}`].join('\n'),
      icapYaml: [
        'read-timeout: 1s',
        'idle-timeout: 2s',
        'access-log: access.log',
        'services:',
        '  avscan:',
        '    aliases: [srv_clamav]',
        '  small:',
        '    max-object-size: 1KiB',
        '    methods: [RESPMOD]',
        '  lenient:',
        '    max-object-size: 1KiB',
        '    accept-status: [free, skipped]',
        '  down:',
        '    engines: [dead]',
        '  noearly:',
        '    early-response-after: 0',
        '  down500:',
        '    engines: [dead]',
        '    engine-error: icap-error',
      ].join('\n'),
    });
  });
  after(async () => {
    await icap?.stop();
    await clamd?.stop();
  });

  test('OPTIONS: methods, ISTag, TTL, preview, 204, limits — also without Encapsulated (Squid) and by alias', async () => {
    for (const [service, enc] of [
      ['avscan', 'Encapsulated: null-body=0\r\n'],
      ['srv_clamav', ''],
    ] as const) {
      const { responses } = await icapExchange(icap.port, [`OPTIONS icap://127.0.0.1:${icap.port}/${service} ICAP/1.0\r\nHost: x\r\n${enc}\r\n`]);
      const h = responses[0]?.head;
      assert.ok(h);
      assert.equal(h.status, 200);
      assert.equal(headerValue(h, 'Methods'), 'RESPMOD, REQMOD');
      assert.match(headerValue(h, 'ISTag') ?? '', /^"AVG-[0-9a-f]{24}"$/);
      assert.equal(headerValue(h, 'Options-TTL'), '3600');
      assert.equal(headerValue(h, 'Preview'), '1024');
      assert.equal(headerValue(h, 'Allow'), '204');
      assert.equal(headerValue(h, 'Transfer-Preview'), '*');
      assert.equal(headerValue(h, 'Encapsulated'), 'null-body=0');
      assert.ok(headerValue(h, 'Max-Connections'));
      assert.ok(Date.parse(headerValue(h, 'Date') ?? '') > 0);
    }
  });

  test('clean object: 204 in answer to a complete preview; 200 with the exact bytes without Allow: 204', async () => {
    const body = randomBytes(5000);
    const r1 = await icapExchange(icap.port, [buildRequest(icap.port, body, { preview: 1024 * 8 }).first]);
    assert.equal(r1.responses[0]?.head.status, 204);
    const r2 = await icapExchange(icap.port, [buildRequest(icap.port, body).first]);
    const res = r2.responses[0];
    assert.equal(res?.head.status, 200);
    assert.ok(res?.body.equals(body), 'echoed body is byte-identical');
    assert.match(res?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 200 OK\r\nContent-Type: application\/octet-stream\r\nContent-Length: 5000\r\n\r\n$/);
  });

  test('preview without ieof: 100 Continue, then the verdict after the rest', async () => {
    const body = Buffer.concat([randomBytes(3000), eicarBytes()]);
    const req = buildRequest(icap.port, body, { preview: 1024, allow204: true });
    // Within read-timeout (1 s here): the client answers 100 Continue promptly.
    const first = await icapExchange(icap.port, [req.first], { count: 0, timeoutMs: 150, keepOpen: true });
    assert.equal(first.responses[0]?.head.status, 100);
    const rest = await icapExchange(icap.port, [req.rest as Buffer], { socket: first.socket });
    const res = rest.responses[0];
    assert.equal(res?.head.status, 200);
    assert.match(headerValue(res!.head, 'X-Infection-Found') ?? '', /^Type=0; Resolution=2; Threat=Avgate\.Test\.EICAR\.\S+;$/);
    assert.match(headerValue(res!.head, 'X-Virus-ID') ?? '', NAME);
    assert.match(res?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403 Forbidden\r\n/);
    assert.match(res?.body.toString() ?? '', /Avgate\.Test\.EICAR/);
    first.socket.destroy();
  });

  test('Squid\'s empty body: Preview: 0 with null-body and no chunks → answered at once', async () => {
    const { responses } = await icapExchange(icap.port, [buildRequest(icap.port, null, { preview: 0, allow204: true }).first], { timeoutMs: 2000 });
    assert.equal(responses[0]?.head.status, 204);
  });

  test('infected: block page with escaped URL, infection headers, REQMOD too', async () => {
    const rawTarget = '/<script>alert(1)</script>?a="b"';
    const { responses } = await icapExchange(icap.port, [buildRequest(icap.port, eicarBytes(), { allow204: true, rawTarget }).first]);
    const res = responses[0];
    assert.equal(res?.head.status, 200);
    const html = res?.body.toString() ?? '';
    assert.ok(!html.includes('<script>alert'), 'URL is HTML-escaped');
    assert.match(html, /&#60;script&#62;/);
    assert.match(html, /avgate/);
    // Folded: count, then file name, threat, problem id, resolution (the client unfolds with \n).
    assert.match(headerValue(res!.head, 'X-Violations-Found') ?? '', /^1\n\S+\nAvgate\.Test\.EICAR\S*\n0\n2$/);
    const req = await icapExchange(icap.port, [buildRequest(icap.port, eicarBytes(), { method: 'REQMOD', allow204: true }).first]);
    assert.match(req.responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);
    const clean = await icapExchange(icap.port, [buildRequest(icap.port, randomBytes(100), { method: 'REQMOD', allow204: true }).first]);
    assert.equal(clean.responses[0]?.head.status, 204);
  });

  test('every clamav-testfiles file is blocked', async () => {
    const { readdir } = await import('node:fs/promises');
    const dir = '/usr/share/clamav-testfiles';
    for (const f of await readdir(dir)) {
      const body = await readFile(join(dir, f));
      const { responses } = await icapExchange(icap.port, [buildRequest(icap.port, body, { allow204: true, url: `http://o.test/${f}` }).first]);
      assert.ok(headerValue(responses[0]!.head, 'X-Infection-Found'), `${f} not reported infected`);
    }
  });

  test('pipelined requests are answered in order on one connection; Connection: close is honoured', async () => {
    const a = buildRequest(icap.port, randomBytes(200), { allow204: true }).first;
    const b = buildRequest(icap.port, eicarBytes(), { allow204: true }).first;
    const c = buildRequest(icap.port, randomBytes(300), { allow204: true, close: true }).first;
    const r = await icapExchange(icap.port, [Buffer.concat([a, b, c])], { count: 3, keepOpen: true, timeoutMs: 3000 });
    assert.deepEqual(
      r.responses.map((x) => x.head.status),
      [204, 200, 204],
    );
    assert.ok(headerValue(r.responses[1]!.head, 'X-Infection-Found'));
    assert.equal(r.closed, true, 'closed after Connection: close');
  });

  const ERRORS: Array<[string, string, number]> = [
    ['unknown service', 'RESPMOD icap://h/nosuch ICAP/1.0\r\nHost: h\r\nEncapsulated: null-body=0\r\n\r\n', 404],
    ['method not allowed for the service', 'REQMOD icap://h/small ICAP/1.0\r\nHost: h\r\nEncapsulated: null-body=0\r\n\r\n', 405],
    ['unknown method', 'FROB icap://h/avscan ICAP/1.0\r\nHost: h\r\n\r\n', 501],
    ['wrong version', 'OPTIONS icap://h/avscan ICAP/2.0\r\nHost: h\r\n\r\n', 505],
    ['missing Host', 'OPTIONS icap://h/avscan ICAP/1.0\r\n\r\n', 400],
    ['missing Encapsulated', 'RESPMOD icap://h/avscan ICAP/1.0\r\nHost: h\r\n\r\n', 400],
    ['bad Encapsulated', 'RESPMOD icap://h/avscan ICAP/1.0\r\nHost: h\r\nEncapsulated: res-body=0, res-hdr=5\r\n\r\n', 400],
    ['offsets that do not match the header block', 'RESPMOD icap://h/avscan ICAP/1.0\r\nHost: h\r\nEncapsulated: res-hdr=0, res-body=10\r\n\r\nHTTP/1.1 200 OK\r\n\r\n0\r\n\r\n', 400],
    ['bad chunk size', 'RESPMOD icap://h/avscan ICAP/1.0\r\nHost: h\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\nzz\r\nabc\r\n0\r\n\r\n', 400],
    ['chunk longer than its size', 'RESPMOD icap://h/avscan ICAP/1.0\r\nHost: h\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n2\r\nabc\r\n0\r\n\r\n', 400],
    ['folded header', 'OPTIONS icap://h/avscan ICAP/1.0\r\nHost: h\r\n x: y\r\n\r\n', 400],
    ['garbage', 'HELLO\r\n\r\n', 400],
  ];
  for (const [label, raw, status] of ERRORS) {
    test(`bad input → ICAP ${status} and close: ${label}`, async () => {
      const r = await icapExchange(icap.port, [raw], { timeoutMs: 3000 });
      assert.equal(r.responses[0]?.head.status, status, JSON.stringify(r.responses[0]?.head));
      assert.equal(headerValue(r.responses[0]!.head, 'Connection'), 'close');
      await new Promise((res) => setTimeout(res, 50));
      assert.equal(r.socket.destroyed || r.closed, true);
    });
  }

  test('a header block over max-header-size → 400', async () => {
    const r = await icapExchange(icap.port, [`OPTIONS icap://h/avscan ICAP/1.0\r\nHost: h\r\nX: ${'a'.repeat(70_000)}\r\n\r\n`]);
    assert.equal(r.responses[0]?.head.status, 400);
  });

  test('slowloris: a head that stops arriving → 408 after read-timeout; an idle connection is closed', async () => {
    const started = Date.now();
    const r = await icapExchange(icap.port, ['OPTIONS icap://h/avscan ICAP/1.0\r\nHo'], { timeoutMs: 5000 });
    assert.equal(r.responses[0]?.head.status, 408);
    assert.ok(Date.now() - started < 3000);
    const idle = await icapExchange(icap.port, [], { timeoutMs: 5000 });
    assert.equal(idle.closed, true);
  });

  test('over max-object-size: skipped → blocked by default (403), passed with a note where accepted', async () => {
    const body = randomBytes(5000);
    const blocked = await icapExchange(icap.port, [buildRequest(icap.port, body, { service: 'small', allow204: true }).first]);
    assert.match(blocked.responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);
    assert.match(blocked.responses[0]?.body.toString() ?? '', /max-object-size/);
    const passed = await icapExchange(icap.port, [buildRequest(icap.port, body, { service: 'lenient' }).first]);
    assert.equal(passed.responses[0]?.head.status, 200);
    assert.ok(passed.responses[0]?.body.equals(body));
    assert.match(passed.responses[0]?.sections['res-hdr']?.toString() ?? '', /X-Avgate-Verdict: skipped; /);
    // Known too big from Content-Length in the preview: answered without the rest.
    const req = buildRequest(icap.port, body, { service: 'small', preview: 1024, allow204: true });
    const pv = await icapExchange(icap.port, [req.first], { timeoutMs: 3000 });
    assert.equal(pv.responses[0]?.head.status, 200, 'final answer instead of 100 Continue');
  });

  test('engine unreachable: fails closed with a 503 page', async () => {
    const r = await icapExchange(icap.port, [buildRequest(icap.port, randomBytes(100), { service: 'down', allow204: true }).first]);
    assert.match(r.responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 503/);
    assert.match(r.responses[0]?.body.toString() ?? '', /AVG_ERR_ENGINE_CONNECT/);
  });

  test('engine-error: icap-error answers an engine error with ICAP 500 (the client\'s bypass decides), small or big, and the connection goes on', async () => {
    const small = buildRequest(icap.port, randomBytes(100), { service: 'down500', allow204: true }).first;
    const big = buildRequest(icap.port, randomBytes(300_000), { service: 'down500' }).first;
    const options = `OPTIONS icap://127.0.0.1:${icap.port}/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n`;
    const r = await icapExchange(icap.port, [small, big, options], { timeoutMs: 10_000, count: 3 });
    assert.deepEqual(
      r.responses.map((x) => x.head.status),
      [500, 500, 200],
    );
    assert.equal(r.responses[0]?.sections['res-hdr'], undefined, 'no page');
  });

  test('engine unreachable and a big body without Allow: 204: the 503 page at once, never an early head with the object after it', async () => {
    const body = randomBytes(3_000_000);
    const r = await icapExchange(icap.port, [buildRequest(icap.port, body, { service: 'down' }).first], { timeoutMs: 10_000 });
    const res = r.responses[0];
    assert.equal(res?.head.status, 200);
    assert.match(res?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 503/, 'the page, not the original head');
    assert.match(res?.body.toString() ?? '', /AVG_ERR_ENGINE_CONNECT/);
    assert.equal(res?.body.includes(body.subarray(0, 4096)), false, 'no byte of the object');
  });

  test('early response: a big body without Allow: 204 gets the 200 head before it is complete', async () => {
    const body = randomBytes(200_000);
    const all = buildRequest(icap.port, body).first;
    // Everything but the last chunk, a pause, then the last chunk: the head must come in the pause.
    const r = await icapExchange(icap.port, [all.subarray(0, all.length - 5), all.subarray(all.length - 5)], { pauseMs: 250 });
    const res = r.responses[0];
    assert.equal(res?.head.status, 200);
    assert.ok((r.headAt[0] as number) < (r.sentAt[1] as number), 'head before the body was complete');
    assert.ok(res?.body.equals(body), 'clean body streamed after the verdict');
  });

  test('REQMOD: an upload is held whole below early-response-after-reqmod; early-response-after: 0 holds bigger ones too', async () => {
    for (const [service, size] of [['avscan', 1_000_000], ['noearly', 5_000_000]] as const) {
      const all = buildRequest(icap.port, randomBytes(size), { method: 'REQMOD', service }).first;
      const r = await icapExchange(icap.port, [all.subarray(0, all.length - 5), all.subarray(all.length - 5)], { pauseMs: 300, timeoutMs: 20_000 });
      assert.equal(r.responses[0]?.head.status, 200, service);
      assert.ok((r.headAt[0] as number) > (r.sentAt[1] as number), `${service}: no head before the upload was complete`);
    }
  });

  test('early response + infected: the connection is aborted, the body never completes', async () => {
    const body = Buffer.concat([randomBytes(100_000), eicarBytes(), randomBytes(100_000)]);
    const r = await icapExchange(icap.port, [buildRequest(icap.port, body).first], { timeoutMs: 5000 });
    assert.equal(r.closed, true);
    assert.equal(r.responses.length, 0, 'no complete response');
  });

  test('early response keep-back: a big body flows on while it arrives, except its last MiB', async () => {
    const body = randomBytes(4 * 1024 * 1024);
    const all = buildRequest(icap.port, body).first;
    const cut = all.length - 5;
    // The pause gives the flow time on a busy machine (250 ms was too short under a load average of 6); under read-timeout (1s).
    const r = await icapExchange(icap.port, [all.subarray(0, cut), all.subarray(cut)], { pauseMs: 800, timeoutMs: 10_000 });
    const sentBeforeEnd = r.bodyBytesAtSend[1] as number;
    assert.ok(sentBeforeEnd >= body.length - 1024 * 1024 - 256 * 1024, `only ${sentBeforeEnd} bytes before the end`);
    assert.ok(sentBeforeEnd <= body.length - 1024 * 1024, 'the last MiB waited for the verdict');
    assert.ok(r.responses[0]?.body.equals(body));
    const infected = Buffer.concat([randomBytes(3 * 1024 * 1024), eicarBytes(), randomBytes(100)]);
    const bad = await icapExchange(icap.port, [buildRequest(icap.port, infected).first], { timeoutMs: 10_000 });
    assert.equal(bad.closed, true);
    assert.equal(bad.responses.length, 0);
    const got = bad.partial?.body.length ?? 0;
    assert.ok(got <= infected.length - 1024 * 1024, `received ${got} of ${infected.length}: never the whole object`);
  });

  test('access log has one line per request: the URL, and the HTTP client and user the ICAP client names', async () => {
    // As Squid sends them with adaptation_send_client_ip and adaptation_send_username.
    const req = buildRequest(icap.port, eicarBytes(), {
      url: 'http://downloads.test/setup.exe?x=1',
      allow204: true,
      // The name's UTF-8 octets on the wire (the helper writes each character as one byte).
      extraHeaders: ['X-Client-IP: 192.0.2.44', `X-Authenticated-User: ${Buffer.from('jürgen doe').toString('latin1')}`],
    });
    const r = await icapExchange(icap.port, [req.first]);
    r.socket.destroy();
    assert.equal(r.responses[0]?.head.status, 200);
    const log = await readFile(join(icap.stateDir, 'access.log'), 'utf8');
    assert.match(log, /^\S+ 127\.0\.0\.1:\d+ avscan RESPMOD 200 found:Avgate\.Test\.EICAR\S* \d+ \d+ http:\/\/downloads\.test\/setup\.exe\?x=1 192\.0\.2\.44 j%C3%BCrgen%20doe$/m, 'the UTF-8 octets, once');
    assert.match(log, /^\S+ 127\.0\.0\.1:\d+ avscan RESPMOD 200 found:Avgate\.Test\.EICAR\S* \d+ \d+ http:\/\/\S+ - -$/m, 'without those headers: -');
    assert.match(log, /^\S+ 127\.0\.0\.1:\d+ avscan OPTIONS 200 - 0 \d+ - - -$/m);
    assert.ok(icap.server.counters.byVerdict.found > 0);
  });
});

describe('icaps (TLS)', () => {
  test('OPTIONS over TLS with a certificate from config', async () => {
    const clamd = await startTestClamd();
    const { mkdtemp, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const dir = await mkdtemp(join(tmpdir(), 'avgate-tls-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    const icap = await startTestIcap({ clamd, icapYaml: `tls:\n  listen: 127.0.0.1:0\n  cert: ${join(dir, 'cert.pem')}\n  key: ${join(dir, 'key.pem')}` });
    try {
      const port = icap.tlsPort as number;
      const socket = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false });
      await new Promise<void>((r) => socket.once('secureConnect', () => r()));
      const r = await icapExchange(port, [`OPTIONS icaps://127.0.0.1/avscan ICAP/1.0\r\nHost: x\r\n\r\n`], { socket: socket as never });
      assert.equal(r.responses[0]?.head.status, 200);
      socket.destroy();
    } finally {
      await icap.stop();
      await clamd.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
