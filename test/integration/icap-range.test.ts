import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startNginx, type Nginx } from '../../tools/peers/nginx.js';
import { startTestIcap, type TestIcap } from '../helpers/avgate-icap.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { curlVia } from '../helpers/http-proxy.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';
import { startTestSquid, type TestSquid } from '../helpers/squid.js';

/**
 * Ranges through ICAP (trial finding: a blocked download completed with `curl -C -`, and a
 * download manager's segments, each a 206 scanned alone, put an infected file together). With
 * `range-requests: whole` REQMOD takes a GET's Range out, so the server sends the whole object and
 * RESPMOD scans all of it; a 206 that reaches RESPMOD anyway is not scanned alone.
 */
describe('ICAP: Range requests and 206 Partial Content (range-requests: whole)', () => {
  let clamd: TestClamd;
  let icap: TestIcap;
  let squid: TestSquid;
  let nginx: Nginx;
  let dir: string;
  const eicar = eicarBytes();
  const infected = Buffer.concat([randomBytes(100_000), eicar, randomBytes(100_000)]);
  const clean = randomBytes(200_000);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-icap-range-'));
    const root = join(dir, 'www');
    await mkdir(root, { recursive: true });
    await writeFile(join(root, 'infected.bin'), infected);
    await writeFile(join(root, 'clean.bin'), clean);
    clamd = await startTestClamd();
    icap = await startTestIcap({ clamd });
    nginx = await startNginx({ dir: join(dir, 'nginx'), root });
    squid = await startTestSquid({
      icapUrl: null,
      extraConfig: [
        'icap_enable on',
        'icap_preview_enable on',
        'icap_preview_size 1024',
        `icap_service avreq reqmod_precache bypass=0 ${icap.url()}`,
        `icap_service avresp respmod_precache bypass=0 ${icap.url()}`,
        'icap_service_failure_limit -1',
        'adaptation_access avreq allow all',
        'adaptation_access avresp allow all',
      ],
    });
  });

  after(async () => {
    await squid?.stop();
    await nginx?.stop();
    await icap?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('REQMOD takes Range out of a GET: the ICAP answer is the request without Range, If-Range, Request-Range', async () => {
    const port = icap.port;
    const r = await icapExchange(port, [buildRequest(port, null, { method: 'REQMOD', preview: 0, reqHeaders: ['Range: bytes=100-199', 'If-Range: "abc"', 'Accept: */*'] }).first]);
    r.socket.destroy();
    const res = r.responses[0];
    assert.equal(res?.head.status, 200);
    const reqHdr = res.sections['req-hdr']?.toString('latin1') ?? '';
    assert.match(reqHdr, /^GET \/file\.bin HTTP\/1\.1\r\n/);
    assert.match(reqHdr, /\r\nAccept: \*\/\*\r\n/);
    assert.doesNotMatch(reqHdr, /range/i);
    // Without a Range, nothing to change: 204.
    const plain = await icapExchange(port, [buildRequest(port, null, { method: 'REQMOD', preview: 0 }).first]);
    plain.socket.destroy();
    assert.equal(plain.responses[0]?.head.status, 204);
  });

  test('RESPMOD: a 206 is not scanned alone, even when its part is clean: skipped, the page', async () => {
    const port = icap.port;
    const r = await icapExchange(port, [buildRequest(port, clean.subarray(0, 5000), { allow204: true, preview: 1024, resStatus: 'HTTP/1.1 206 Partial Content', resHeaders: ['Content-Range: bytes 0-4999/200000'] }).first]);
    r.socket.destroy();
    assert.equal(r.responses[0]?.head.status, 200);
    assert.match(r.responses[0]?.sections['res-hdr']?.toString('latin1') ?? '', /^HTTP\/1\.1 403/);
    assert.match(r.responses[0]?.body.toString('latin1') ?? '', /206 Partial Content/);
  });

  test('through Squid: a clean part of an infected file is refused (the whole was scanned); a range of a clean file is served', async () => {
    const out = join(dir, 'out');
    // Bytes 0-99 of infected.bin hold nothing of EICAR (it sits at 100 000). Squid is asked for the
    // whole object, which is blocked: the page, or (past the early-response size) a 200 cut off
    // before its end. Never the clean-looking 206 a part scanned alone got.
    const refused = (r: { status: number; code: number }) => r.status !== 206 && (r.status === 403 || r.code !== 0);
    const part = await curlVia(squid.port, nginx.url('infected.bin'), out, ['-r', '0-99']);
    assert.ok(refused(part), `${JSON.stringify(part)} ${squid.logTail()}`);
    // Resuming after the EICAR (as after a cut-off download) is refused too.
    const resume = await curlVia(squid.port, nginx.url('infected.bin'), out, ['-r', '100068-']);
    assert.ok(refused(resume), JSON.stringify(resume));
    // A clean file: whatever Squid makes of the Range, the bytes are the file's.
    const ok = await curlVia(squid.port, nginx.url('clean.bin'), out, ['-r', '0-99']);
    assert.ok(ok.status === 200 || ok.status === 206, String(ok.status));
    const got = await readFile(out);
    assert.ok(ok.status === 200 ? got.equals(clean) : got.equals(clean.subarray(0, 100)));
  });
});
