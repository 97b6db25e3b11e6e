import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { httpProxySchema } from '../../src/config/proxy-schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { HttpProxyServer } from '../../src/protocols/http-proxy/server.js';
import type { ScanService } from '../../src/scan/types.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { curlVia } from '../helpers/http-proxy.js';
import { startTestOrigin, type TestOrigin } from '../helpers/origin.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A scanner the parent must never call: its only rule accepts without scanning. */
const NEVER: ScanService = {
  scan: () => Promise.reject(new Error('the parent proxy must not scan')),
  wantsHash: false,
  engineLikely: true,
  prefersFiles: () => false,
  concurrency: 1,
  close: async () => undefined,
};

describe('HTTP proxy with a parent proxy (parent-proxy)', () => {
  let clamd: TestClamd;
  let origin: TestOrigin;
  let parent: HttpProxyServer;
  let avgate: Serving;
  let dir: string;
  let out: string;
  let port: number;
  const clean = randomBytes(1024 * 1024 + 9);
  const eicarText = Buffer.concat([Buffer.from('x\n'), eicarBytes()]);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-httpp-parent-'));
    out = join(dir, 'out');
    await writeFile(join(dir, 'clean.bin'), clean);
    await writeFile(join(dir, 'eicar.txt'), eicarText);
    clamd = await startTestClamd();
    origin = await startTestOrigin({ dir });
    // The parent: avgate's own proxy under another Via name, passing everything unscanned.
    parent = new HttpProxyServer(
      httpProxySchema.parse({ listen: '127.0.0.1:0', via: 'parent', 'connect-ports': [], 'doc-acl': [{ action: 'accept' }] }),
      { stateDir: join(dir, 'parent'), scannerFor: () => ({ scanner: NEVER }), maxCheckedSize: 1 << 30, log: silentLogger() },
    );
    const p = await parent.listen();
    avgate = await startAvgatePeer({ stateDir: join(dir, 'state'), clamd, httpProxyYaml: `parent-proxy: 127.0.0.1:${p.port}\nconnect-ports: []` });
    port = avgate.httpProxyPort as number;
  });

  after(async () => {
    await avgate?.stop();
    await parent?.close(100);
    await origin?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('requests go through the parent: byte-identical, both Via entries, the parent counted them', async () => {
    const before = parent.counters.requests;
    const r = await curlVia(port, origin.url('clean.bin'), out, ['-D', `${out}.head`]);
    assert.equal(r.status, 200, r.stderr);
    assert.equal(sha256(await readFile(out)), sha256(clean));
    assert.match(await readFile(`${out}.head`, 'utf8'), /^Via: 1\.1 parent, 1\.1 avgate\r?$/im);
    assert.equal(parent.counters.requests, before + 1);
  });

  test('the child still scans what comes through the parent: EICAR gets 403', async () => {
    const r = await curlVia(port, origin.url('eicar.txt'), out);
    assert.equal(r.status, 403);
    assert.match(await readFile(out, 'utf8'), /Virus found/);
  });

  test('allowed-clients: a client outside the list gets 403, for CONNECT too', async () => {
    const closed = new HttpProxyServer(
      httpProxySchema.parse({ listen: '127.0.0.1:0', 'allowed-clients': ['10.0.0.0/8'], 'connect-ports': [] }),
      { stateDir: join(dir, 'closed'), scannerFor: () => ({ scanner: NEVER }), maxCheckedSize: 1 << 30, log: silentLogger() },
    );
    const p = await closed.listen();
    try {
      const get = await curlVia(p.port, origin.url('clean.bin'), out);
      assert.equal(get.status, 403);
      assert.match(await readFile(out, 'utf8'), /may not use the proxy/);
      const tunnel = await curlVia(p.port, origin.url('clean.bin'), out, ['-p']);
      assert.notEqual(tunnel.code, 0, 'the tunnel is refused');
      assert.equal(closed.counters.tunnels, 0);
    } finally {
      await closed.close(100);
    }
  });

  test('CONNECT goes through the parent too', async () => {
    const before = parent.counters.tunnels;
    const r = await curlVia(port, origin.url('clean.bin'), out, ['-p']);
    assert.equal(r.status, 200, r.stderr);
    assert.equal(sha256(await readFile(out)), sha256(clean));
    assert.equal(parent.counters.tunnels, before + 1);
  });
});
