import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestIcap, type TestIcap } from '../helpers/avgate-icap.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { curlVia } from '../helpers/http-proxy.js';
import { startTestSquid, type TestSquid } from '../helpers/squid.js';

/**
 * Uploads through a real Squid 5.7 with avgate as its REQMOD service: an infected upload is
 * blocked with the page before anything reaches the server (trial finding: early responses, meant
 * for Squid's stall on response bodies, let uploads' prefixes through to the server).
 */
describe('Squid REQMOD: uploads are held whole up to early-response-after-reqmod', () => {
  let clamd: TestClamd;
  let icap: TestIcap;
  let squid: TestSquid;
  let dir: string;
  /** An origin that counts the bytes every connection brought (a partial upload counts too), and answers 200. */
  let origin: Server;
  const received: number[] = [];
  let originPort = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-reqmod-'));
    clamd = await startTestClamd();
    icap = await startTestIcap({ clamd });
    squid = await startTestSquid({ icapUrl: null, extraConfig: ['icap_enable on', 'icap_preview_enable on', 'icap_preview_size 1024', `icap_service up reqmod_precache bypass=0 ${icap.url()}`, 'icap_service_failure_limit -1', 'adaptation_access up allow all'] });
    origin = createServer((s: Socket) => {
      const i = received.push(0) - 1;
      let head = '';
      let total = Number.POSITIVE_INFINITY;
      s.on('data', (d: Buffer) => {
        received[i] = (received[i] ?? 0) + d.length;
        if (total === Number.POSITIVE_INFINITY) {
          head = (head + d.toString('latin1')).slice(0, 65_536);
          const end = head.indexOf('\r\n\r\n');
          const len = /content-length: *(\d+)/i.exec(head);
          if (end >= 0) total = end + 4 + Number(len?.[1] ?? 0);
        }
        if ((received[i] ?? 0) >= total) s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok');
      });
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    originPort = (origin.address() as { port: number }).port;
  });

  after(async () => {
    await squid?.stop();
    await icap?.stop();
    await clamd?.stop();
    await new Promise((r) => origin?.close(r));
    await rm(dir, { recursive: true, force: true });
  });

  test('a 3 MB upload with EICAR: 403 page from avgate, the server never hears of it; a clean one arrives whole', async () => {
    const bad = join(dir, 'bad.bin');
    await writeFile(bad, Buffer.concat([eicarBytes(), randomBytes(3 << 20)]));
    const out = join(dir, 'out');
    const r = await curlVia(squid.port, `http://127.0.0.1:${originPort}/upload`, out, ['--data-binary', `@${bad}`, '-H', 'Expect:', '-m', '60']);
    assert.equal(r.status, 403, r.stderr);
    assert.match(await readFile(out, 'utf8'), /Avgate\.Test\.EICAR/);
    assert.deepEqual(received, [], 'no byte of the upload reached the server');
    const good = join(dir, 'good.bin');
    await writeFile(good, randomBytes(3 << 20));
    const ok = await curlVia(squid.port, `http://127.0.0.1:${originPort}/upload`, out, ['--data-binary', `@${good}`, '-H', 'Expect:', '-m', '60']);
    assert.equal(ok.status, 200, ok.stderr);
    assert.equal(received.length, 1);
    assert.ok((received[0] ?? 0) > 3 << 20);
  });
});
