import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Serving } from '../../src/main.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { curlVia } from '../helpers/http-proxy.js';

/**
 * An origin whose kept-alive connection closes just as the next request arrives (its idle
 * timeout): the request fails before any answer. A fault server, since a real one does this only
 * by the chance of timing: each connection answers its first request (keep-alive, no
 * `Connection: close`) and drops the second unanswered.
 */
describe('HTTP proxy: a reused server connection that closes unanswered', () => {
  let clamd: TestClamd;
  let avgate: Serving;
  let origin: Server;
  let originPort: number;
  let dir: string;
  let connections = 0;
  const requests: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-reuse-'));
    clamd = await startTestClamd();
    origin = createServer((s: Socket) => {
      connections++;
      let seen = 0;
      let buf = '';
      s.on('error', () => undefined);
      s.on('data', (d) => {
        buf += d.toString('latin1');
        while (buf.includes('\r\n\r\n')) {
          const head = buf.slice(0, buf.indexOf('\r\n\r\n'));
          buf = buf.slice(buf.indexOf('\r\n\r\n') + 4);
          const line = head.split('\r\n')[0] as string;
          const len = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
          buf = buf.slice(len);
          seen++;
          if (seen > 1) {
            s.destroy();
            return;
          }
          requests.push(line);
          s.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello');
        }
      });
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    originPort = (origin.address() as AddressInfo).port;
    avgate = await startAvgatePeer({ stateDir: join(dir, 'state'), clamd });
  });

  after(async () => {
    await avgate?.stop();
    await new Promise((r) => origin?.close(r));
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('an idempotent request is sent again once on a new connection, so the client gets the answer, not a 502; a POST is not', async () => {
    const port = avgate.httpProxyPort as number;
    for (let i = 0; i < 4; i++) {
      const out = join(dir, `get-${i}`);
      const r = await curlVia(port, `http://127.0.0.1:${originPort}/file-${i}.txt`, out);
      assert.equal(r.status, 200, `GET ${i}: ${r.stderr}`);
      assert.equal(await readFile(out, 'utf8'), 'hello');
    }
    assert.deepEqual(
      requests.map((l) => l.split(' ')[1]),
      ['/file-0.txt', '/file-1.txt', '/file-2.txt', '/file-3.txt'],
      'each answered once, on the first request of a connection',
    );
    assert.ok(connections >= 4);
    // A POST is not idempotent: on a reused connection that closes unanswered the failure stands
    // (the server may have acted on it), 502.
    const posted = join(dir, 'post');
    assert.equal((await curlVia(port, `http://127.0.0.1:${originPort}/warm.txt`, posted)).status, 200);
    const p = await curlVia(port, `http://127.0.0.1:${originPort}/form`, posted, ['--data-binary', 'a=1']);
    assert.equal(p.status, 502);
  });
});
