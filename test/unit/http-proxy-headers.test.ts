import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  forwardHeaders,
  ifRangeHolds,
  parseConnectTarget,
  parseProxyTarget,
  parseRange,
  rangeWithin,
  requestHeadProblem,
  responseHasNoBody,
  viaLoops,
} from '../../src/protocols/http-proxy/headers.js';

test('requestHeadProblem: smuggling shapes are named, ordinary heads pass', () => {
  const table: Array<[Array<[string, string]>, RegExp | null]> = [
    [[['Host', 'x'], ['Content-Length', '5']], null],
    [[['Host', 'x'], ['Transfer-Encoding', 'chunked']], null],
    [[['Content-Length', '5'], ['content-length', '5']], /several Content-Length/],
    [[['Content-Length', '5, 5']], /invalid Content-Length/],
    [[['Content-Length', '-1']], /invalid Content-Length/],
    [[['Content-Length', '5'], ['Transfer-Encoding', 'chunked']], /together/],
    [[['Transfer-Encoding', 'gzip, chunked']], /unsupported Transfer-Encoding/],
    [[['Transfer-Encoding', 'chunked'], ['Transfer-Encoding', 'chunked']], /several Transfer-Encoding/],
    [[['Host', 'a'], ['Host', 'b']], /several Host/],
    [[['X-A', 'a\r\nX-B: b']], /CR, LF or NUL/],
    [[['X A', 'a']], /invalid header name/],
  ];
  for (const [pairs, want] of table) {
    const got = requestHeadProblem(pairs);
    if (want === null) assert.equal(got, null, JSON.stringify(pairs));
    else assert.match(got ?? '', want, JSON.stringify(pairs));
  }
});

test('forwardHeaders: hop-by-hop and Connection-listed headers dropped, Via appended to an existing one', () => {
  const out = forwardHeaders(
    [
      ['Connection', 'keep-alive, X-Private'],
      ['Keep-Alive', 'timeout=5'],
      ['X-Private', 'secret'],
      ['Proxy-Authorization', 'Basic x'],
      ['Transfer-Encoding', 'chunked'],
      ['Upgrade', 'h2c'],
      ['Via', '1.1 first'],
      ['Accept', '*/*'],
      ['Host', 'old'],
    ],
    'avgate',
    '1.1',
    ['host'],
  );
  assert.deepEqual(out, [
    ['Accept', '*/*'],
    ['Via', '1.1 first, 1.1 avgate'],
  ]);
  assert.deepEqual(forwardHeaders([], 'avgate', '1.0'), [['Via', '1.0 avgate']]);
});

test('viaLoops: our own Via entry anywhere in the list', () => {
  assert.equal(viaLoops([['Via', '1.1 a, 1.1 avgate (x)']], 'avgate'), true);
  assert.equal(viaLoops([['Via', '1.1 avgate-parent']], 'avgate'), false);
  assert.equal(viaLoops([], 'avgate'), false);
});

test('parseProxyTarget: absolute http:// URLs only', () => {
  assert.deepEqual(parseProxyTarget('http://Example.COM:8080/a/b?c=d'), {
    host: 'example.com',
    port: 8080,
    authority: 'example.com:8080',
    path: '/a/b?c=d',
    url: 'http://example.com:8080/a/b?c=d',
  });
  assert.equal(parseProxyTarget('http://[::1]/x')?.host, '::1');
  assert.equal(parseProxyTarget('http://h/')?.port, 80);
  for (const bad of ['/relative', 'https://h/', 'ftp://h/', 'http://u:p@h/', 'http:///x', 'http://h/a b', 'http://h/\r\n', 'http://a\\b/', 'http://%61/', 'http://h:/x', 'http://h:99999/', 'http://h:0/', 'http://h:00/x']) {
    assert.equal(parseProxyTarget(bad), null, bad);
  }
});

test('parseConnectTarget and bodiless responses', () => {
  assert.deepEqual(parseConnectTarget('example.com:443'), { host: 'example.com', port: 443 });
  assert.deepEqual(parseConnectTarget('[::1]:8443'), { host: '::1', port: 8443 });
  for (const bad of ['example.com', 'example.com:0', 'example.com:99999', 'a b:443', 'http://x:443']) assert.equal(parseConnectTarget(bad), null, bad);
  assert.equal(responseHasNoBody('HEAD', 200), true);
  assert.equal(responseHasNoBody('GET', 204), true);
  assert.equal(responseHasNoBody('GET', 304), true);
  assert.equal(responseHasNoBody('GET', 200), false);
});

test('parseRange / rangeWithin: one byte range placed in the object; lists, garbage and unsatisfiable ranges told apart', () => {
  assert.deepEqual(parseRange('bytes=10-19'), { first: 10, last: 19 });
  assert.deepEqual(parseRange('BYTES=5-'), { first: 5, last: null });
  assert.deepEqual(parseRange('bytes=-5'), { suffix: 5 });
  assert.deepEqual(parseRange('bytes=1-2, ,'), { first: 1, last: 2 }, 'empty list elements count for nothing');
  assert.equal(parseRange('bytes=0-1,5-6'), 'several');
  for (const bad of ['bytes=', 'bytes=5-2', 'bytes=a-b', 'items=0-1', 'bytes=0-1,x', '0-1', 'bytes=--1']) assert.equal(parseRange(bad), null, bad);
  const at = (v: string, total: number) => rangeWithin(parseRange(v) as Exclude<ReturnType<typeof parseRange>, null | 'several'>, total);
  assert.deepEqual(at('bytes=10-19', 100), { start: 10, end: 20 });
  assert.deepEqual(at('bytes=90-1000', 100), { start: 90, end: 100 }, 'a last position past the end is clipped');
  assert.deepEqual(at('bytes=5-', 100), { start: 5, end: 100 });
  assert.deepEqual(at('bytes=-5', 100), { start: 95, end: 100 });
  assert.deepEqual(at('bytes=-500', 100), { start: 0, end: 100 }, 'a suffix longer than the object is all of it');
  assert.equal(at('bytes=100-', 100), null);
  assert.equal(at('bytes=-0', 100), null);
  assert.equal(at('bytes=0-', 0), null);
});

test('ifRangeHolds: absent, a strong ETag equal, or Last-Modified equal to the letter', () => {
  const lm = 'Tue, 01 Dec 2026 10:00:00 GMT';
  assert.ok(ifRangeHolds(null, null, null));
  assert.ok(ifRangeHolds('"abc"', '"abc"', null));
  assert.ok(!ifRangeHolds('"abc"', '"abd"', lm));
  assert.ok(!ifRangeHolds('W/"abc"', 'W/"abc"', null), 'weak tags never match');
  assert.ok(!ifRangeHolds('"abc"', 'W/"abc"', null));
  assert.ok(!ifRangeHolds('"abc"', null, lm));
  assert.ok(ifRangeHolds(lm, '"abc"', lm));
  assert.ok(!ifRangeHolds('Tue, 01 Dec 2026 10:00:01 GMT', null, lm));
  assert.ok(!ifRangeHolds(lm, '"abc"', null));
});

test('upstream failures in words: an unresolvable host, a refusal, a timeout, a head the parser refused', async () => {
  const { upstreamProblem } = await import('../../src/protocols/http-proxy/exchange.js');
  const err = (code: string, message: string) => Object.assign(new Error(message), { code });
  assert.equal(upstreamProblem(err('ENOTFOUND', 'getaddrinfo ENOTFOUND no-such.invalid'), 'no-such.invalid', null), 'the host name no-such.invalid could not be resolved (ENOTFOUND)');
  assert.equal(upstreamProblem(err('EAI_AGAIN', 'getaddrinfo EAI_AGAIN x'), 'x', null), 'the host name x could not be resolved (EAI_AGAIN)');
  assert.equal(upstreamProblem(err('ECONNREFUSED', 'connect ECONNREFUSED'), 'h', '10.0.0.1:3128'), 'the parent proxy 10.0.0.1:3128 refused the connection (ECONNREFUSED)');
  assert.match(upstreamProblem(new Error('no response head within 60000 ms'), 'h', null), /^the server accepted the request but sent no answer in time/);
  assert.match(upstreamProblem(err('HPE_HEADER_OVERFLOW', 'Parse Error: Header overflow'), 'h', null), /^the server sent an answer the proxy does not take \(Parse Error: Header overflow\)/);
});
