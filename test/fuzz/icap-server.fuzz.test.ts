import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestIcap, type TestIcap } from '../helpers/avgate-icap.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';

/**
 * Property tests of the ICAP server against a real clamd: a valid request split at random byte
 * positions gets the same answer as in one piece; a mutated request gets an ICAP status or a
 * closed connection — never a crash, never a connection left open.
 */
describe('ICAP server properties', () => {
  let clamd: TestClamd;
  let icap: TestIcap;
  const clean = randomBytes(3000);
  const infected = Buffer.concat([randomBytes(500), eicarBytes()]);
  let requests: Array<{ name: string; bytes: Buffer; status: number }>;

  before(async () => {
    clamd = await startTestClamd();
    icap = await startTestIcap({ clamd, icapYaml: 'read-timeout: 300ms\nidle-timeout: 1s' });
    const p = icap.port;
    requests = [
      { name: 'options', bytes: Buffer.from(`OPTIONS icap://127.0.0.1:${p}/avscan ICAP/1.0\r\nHost: x\r\n\r\n`), status: 200 },
      { name: 'clean 204', bytes: buildRequest(p, clean, { allow204: true }).first, status: 204 },
      { name: 'clean echo', bytes: buildRequest(p, clean).first, status: 200 },
      { name: 'clean preview ieof', bytes: buildRequest(p, clean, { preview: 4096 }).first, status: 204 },
      { name: 'infected', bytes: buildRequest(p, infected, { allow204: true }).first, status: 200 },
      { name: 'reqmod', bytes: buildRequest(p, clean, { method: 'REQMOD', allow204: true }).first, status: 204 },
      { name: 'null body', bytes: buildRequest(p, null, { allow204: true }).first, status: 204 },
    ];
  });
  after(async () => {
    await icap?.stop();
    await clamd?.stop();
  });

  test('a request split at random positions gets the same answer as in one piece', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: 6 }), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 }), async (which, cuts) => {
        const req = requests[which] as { name: string; bytes: Buffer; status: number };
        const points = [...new Set(cuts.map((c) => Math.floor(c * req.bytes.length)))].sort((a, b) => a - b);
        const pieces: Buffer[] = [];
        let prev = 0;
        for (const p of points) {
          pieces.push(req.bytes.subarray(prev, p));
          prev = p;
        }
        pieces.push(req.bytes.subarray(prev));
        const r = await icapExchange(icap.port, pieces.filter((x) => x.length > 0), { pauseMs: 2, timeoutMs: 5000 });
        r.socket.destroy();
        assert.equal(r.error, null, `${req.name}: unparseable answer`);
        assert.equal(r.responses[0]?.head.status, req.status, `${req.name} split at ${points.join(',')}`);
        if (req.name === 'clean echo') assert.ok(r.responses[0]?.body.equals(clean));
      }),
      { numRuns: 60 },
    );
  });

  test('mutated requests: an ICAP status or a close, never a crash, no connection left behind', async () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), byte: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
      fc.record({ kind: fc.constant('insert' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), text: fc.constantFrom('\r\n', '\n', ':', ';ieof', 'ffffffffffffffffff\r\n', '0\r\n\r\n', ' ', '\0', 'Encapsulated: res-body=0\r\n') }),
      fc.record({ kind: fc.constant('header' as const), line: fc.string({ maxLength: 80 }) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: 6 }), fc.array(mutation, { minLength: 1, maxLength: 3 }), async (which, mutations) => {
        let bytes = Buffer.from((requests[which] as { bytes: Buffer }).bytes);
        for (const m of mutations) {
          const at = m.kind === 'header' ? bytes.indexOf('\r\n') + 2 : Math.floor(m.at * bytes.length);
          if (m.kind === 'flip') {
            if (bytes.length > 0) bytes[Math.min(at, bytes.length - 1)] = m.byte;
          } else if (m.kind === 'cut') {
            bytes = bytes.subarray(0, at);
          } else {
            const text = m.kind === 'insert' ? m.text : `${m.line}\r\n`;
            bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(text, 'latin1'), bytes.subarray(at)]);
          }
        }
        const r = await icapExchange(icap.port, [bytes], { timeoutMs: 600 });
        r.socket.destroy();
        if (r.responses.length > 0) {
          const status = (r.responses[0] as { head: { status: number } }).head.status;
          assert.ok([100, 200, 204, 400, 404, 405, 408, 413, 500, 501, 505].includes(status), `status ${status}`);
          assert.notEqual(status, 500, 'no internal error for bad input');
        }
      }),
      { numRuns: 150 },
    );
    // The server is alive and well afterwards, and every connection is gone.
    const ok = await icapExchange(icap.port, [(requests[0] as { bytes: Buffer }).bytes]);
    ok.socket.destroy();
    assert.equal(ok.responses[0]?.head.status, 200);
    const until = Date.now() + 3000;
    while (icap.server.openConnections > 0 && Date.now() < until) await new Promise((res) => setTimeout(res, 50));
    assert.equal(icap.server.openConnections, 0);
  });
});
