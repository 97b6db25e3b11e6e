import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdir, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Quarantine } from '../../src/quarantine/types.js';
import { startTestIcap, type TestIcap } from '../helpers/avgate-icap.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { buildRequest, chunked, icapExchange } from '../helpers/icap-client.js';

async function streamBytes(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('ICAP service option quarantine: blocked objects are kept', () => {
  let clamd: TestClamd;
  let icap: TestIcap;
  let q: Quarantine;
  before(async () => {
    clamd = await startTestClamd();
    icap = await startTestIcap({
      clamd,
      icapYaml: [
        'services:',
        '  avscan:',
        '    quarantine: [found]',
        '  plain:',
        '    aliases: []',
        '  capped:',
        '    max-object-size: 64KiB',
        '    quarantine: [found, skipped]',
      ].join('\n'),
      // Objects the scanner itself skips (within the service's max-object-size).
      yaml: ['scan:', '  max-checked-size: 32KiB'].join('\n'),
    });
    q = icap.quarantine;
  });
  after(async () => {
    await icap?.stop();
    await clamd?.stop();
  });

  test('EICAR by RESPMOD: blocked, and the exact body is in the quarantine with the URL and the virus name', async () => {
    const body = Buffer.concat([eicarBytes(), randomBytes(100)]);
    const url = 'http://origin.test/downloads/evil%20file.com?x=1';
    const { responses } = await icapExchange(icap.port, [buildRequest(icap.port, body, { allow204: true, url, extraHeaders: ['X-Client-IP: 192.0.2.8', 'X-Authenticated-User: jdoe'] }).first]);
    assert.equal(responses[0]?.head.status, 200);
    const [item] = await q.list({ source: 'icap' });
    assert.equal(item?.note, 'client 192.0.2.8\nuser jdoe', 'the HTTP client and user Squid named');
    assert.ok(item, 'one icap item');
    assert.equal(item.url, url);
    assert.equal(item.fileName, 'evil file.com');
    assert.equal(item.group, 'avscan');
    assert.equal(item.action, 'block');
    assert.deepEqual(item.statuses, ['found']);
    assert.match(item.virusNames[0] ?? '', /EICAR/);
    assert.equal(item.size, body.length);
    const got = await q.get(item.id);
    assert.ok(got);
    assert.ok((await streamBytes(got.open())).equals(body), 'the stored bytes are the blocked body');
  });

  test('clean bodies, and services without the option, keep nothing', async () => {
    const before = await q.count();
    const clean = await icapExchange(icap.port, [buildRequest(icap.port, randomBytes(5000), { allow204: true }).first]);
    assert.equal(clean.responses[0]?.head.status, 204);
    const other = await icapExchange(icap.port, [buildRequest(icap.port, eicarBytes(), { allow204: true, service: 'plain' }).first]);
    assert.equal(other.responses[0]?.head.status, 200, 'blocked by the other service');
    assert.equal(await q.count(), before);
  });

  describe('quarantine: [skipped] and bodies over max-object-size', () => {
    const spoolBytes = async (): Promise<number> => {
      const dir = join(icap.stateDir, 'spool');
      let n = 0;
      for (const f of await readdir(dir).catch(() => [] as string[])) n += (await stat(join(dir, f)).catch(() => ({ size: 0 }))).size;
      return n;
    };

    test('a skipped object within max-object-size is kept, with its reason', async () => {
      const body = randomBytes(40 * 1024); // over scan.max-checked-size, under max-object-size
      const before = await q.count();
      const { responses } = await icapExchange(icap.port, [buildRequest(icap.port, body, { allow204: true, service: 'capped', url: 'http://o.test/a.bin' }).first]);
      assert.match(responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);
      assert.equal(await q.count(), before + 1);
      const [item] = await q.list({ source: 'icap', text: 'a.bin' });
      assert.deepEqual(item?.statuses, ['skipped']);
      assert.equal(item?.size, body.length);
      assert.match(item?.note ?? '', /max-checked-size/);
    });

    test('over max-object-size: blocked as before, and neither the object nor its first part is quarantined', async () => {
      const before = await q.count();
      // Without Content-Length: the answer comes once the limit is passed; the body goes on to its end.
      const body = randomBytes(2 * 1024 * 1024);
      const r = await icapExchange(icap.port, [buildRequest(icap.port, body, { allow204: true, service: 'capped', contentLength: false }).first], { timeoutMs: 15_000 });
      assert.equal(r.responses[0]?.head.status, 200);
      assert.match(r.responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);
      assert.match(r.responses[0]?.body.toString() ?? '', /max-object-size/);
      // With a preview and Content-Length: answered at the end of the preview, without the rest.
      const pv = buildRequest(icap.port, body, { allow204: true, service: 'capped', preview: 1024 });
      const p = await icapExchange(icap.port, [pv.first], { timeoutMs: 5000 });
      assert.equal(p.responses[0]?.head.status, 200, 'the final answer, not 100 Continue');
      assert.match(p.responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);
      assert.equal(await q.count(), before, 'no over-limit object (nor a prefix of one) in the quarantine');
    });

    test('over max-object-size with Content-Length: the page comes before the body, which is read and dropped', async () => {
      const before = await q.count();
      const body = randomBytes(4 * 1024 * 1024);
      const req = buildRequest(icap.port, body, { allow204: true, service: 'capped' }).first;
      const headEnd = req.length - chunked(body).length; // the head only: no body byte yet
      const s = connect(icap.port, '127.0.0.1');
      s.on('error', () => undefined);
      await once(s, 'connect');
      const answer = await icapExchange(icap.port, [req.subarray(0, headEnd)], { socket: s, timeoutMs: 5000 });
      assert.equal(answer.responses[0]?.head.status, 200, 'answered before the body was sent');
      assert.match(answer.responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);
      let maxSpool = 0;
      const rest = req.subarray(headEnd);
      for (let off = 0; off < rest.length; off += 256 * 1024) {
        if (!s.write(rest.subarray(off, off + 256 * 1024))) await once(s, 'drain');
        maxSpool = Math.max(maxSpool, await spoolBytes());
      }
      // The connection goes on after the dropped rest.
      const next = await icapExchange(icap.port, [buildRequest(icap.port, randomBytes(100), { allow204: true }).first], { socket: s, timeoutMs: 5000 });
      s.destroy();
      assert.equal(next.responses[0]?.head.status, 204);
      assert.ok(maxSpool < 256 * 1024, `spool held ${maxSpool} bytes`);
      assert.equal(await q.count(), before);
    });
  });
});
