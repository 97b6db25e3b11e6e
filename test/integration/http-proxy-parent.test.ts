import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { masked } from '../../src/config/mask.js';
import { httpProxySchema } from '../../src/config/proxy-schema.js';
import { silentLogger } from '../../src/core/logging.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import { HttpProxyServer } from '../../src/protocols/http-proxy/server.js';
import type { ScanService } from '../../src/scan/types.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { curlVia, rawExchange } from '../helpers/http-proxy.js';
import { startTestOrigin, type TestOrigin } from '../helpers/origin.js';
import { startTestSquid, type TestSquid } from '../helpers/squid.js';

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

describe('HTTP proxy with a parent proxy that asks for credentials (real Squid, parent-proxy-user)', () => {
  let clamd: TestClamd;
  let origin: TestOrigin;
  let squid: TestSquid;
  let avgate: Serving;
  let dir: string;
  let out: string;
  const user = 'gateway';
  const password = 'p@ss word:1';
  const clean = randomBytes(200 * 1024 + 3);
  const eicarText = Buffer.concat([Buffer.from('x\n'), eicarBytes()]);
  /** An in-process proxy to the same Squid with other (or no) credentials; it never scans. */
  const sideProxy = async (yaml: Record<string, unknown>) => {
    const p = new HttpProxyServer(
      httpProxySchema.parse({ listen: '127.0.0.1:0', 'connect-ports': [], 'parent-proxy': `127.0.0.1:${squid.port}`, 'doc-acl': [{ action: 'accept' }], ...yaml }),
      { stateDir: join(dir, 'side'), scannerFor: () => ({ scanner: NEVER }), maxCheckedSize: 1 << 30, log: silentLogger() },
    );
    return { proxy: p, port: (await p.listen()).port };
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-httpp-parent-auth-'));
    // Squid's auth helper runs as Squid's user: the password file must be readable by it.
    await chmod(dir, 0o755);
    out = join(dir, 'out');
    await writeFile(join(dir, 'clean.bin'), clean);
    await writeFile(join(dir, 'eicar.txt'), eicarText);
    const hash = execFileSync('openssl', ['passwd', '-apr1', password], { encoding: 'utf8' }).trim();
    await writeFile(join(dir, 'passwd'), `${user}:${hash}\n`, { mode: 0o644 });
    clamd = await startTestClamd();
    origin = await startTestOrigin({ dir });
    squid = await startTestSquid({
      icapUrl: null,
      access: [
        `auth_param basic program /usr/lib/squid/basic_ncsa_auth ${join(dir, 'passwd')}`,
        'auth_param basic realm avgate-parent',
        'acl authenticated proxy_auth REQUIRED',
        'http_access deny !authenticated',
      ],
    });
    const yaml = [`parent-proxy: 127.0.0.1:${squid.port}`, 'connect-ports: []', `parent-proxy-user: ${user}`, `parent-proxy-password: '${password}'`].join('\n');
    avgate = await startAvgatePeer({ stateDir: join(dir, 'state'), clamd, httpProxyYaml: yaml });
  });

  after(async () => {
    await avgate?.stop();
    await squid?.stop();
    await origin?.stop();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('with the credentials Squid relays: byte-identical through both, EICAR still blocked by the child, CONNECT too', async () => {
    const port = avgate.httpProxyPort as number;
    const r = await curlVia(port, origin.url('clean.bin'), out, ['-D', `${out}.head`]);
    assert.equal(r.status, 200, `${r.stderr} ${squid.logTail()}`);
    assert.equal(sha256(await readFile(out)), sha256(clean));
    assert.match(await readFile(`${out}.head`, 'utf8'), /^Via: .*avgate-test-squid.*avgate\r?$/im, 'the answer came through Squid');
    const bad = await curlVia(port, origin.url('eicar.txt'), out);
    assert.equal(bad.status, 403);
    assert.match(await readFile(out, 'utf8'), /Virus found/);
    const tunnel = await curlVia(port, origin.url('clean.bin'), out, ['-p']);
    assert.equal(tunnel.status, 200, tunnel.stderr);
    assert.equal(sha256(await readFile(out)), sha256(clean));
  });

  test("without credentials: 502 naming the missing keys; the client's own Proxy-Authorization never reaches the parent", async () => {
    const { proxy, port } = await sideProxy({});
    try {
      // The client sends Squid's valid credentials to avgate: were they relayed, Squid would answer 200.
      const r = await curlVia(port, origin.url('clean.bin'), out, ['--proxy-user', `${user}:${password}`, '--proxy-basic']);
      assert.equal(r.status, 502, r.stderr);
      assert.match(await readFile(out, 'utf8'), /asks for credentials \(407\); set http-proxy\.parent-proxy-user/);
      const c = await rawExchange(port, `CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
      assert.match(c.text, /^HTTP\/1\.1 502 /);
      assert.match(c.text, /asks for credentials \(407\)/);
      assert.equal(proxy.counters.tunnels, 0);
    } finally {
      await proxy.close(100);
    }
  });

  test('wrong password: 502 saying the parent refused them, for requests and CONNECT', async () => {
    const { proxy, port } = await sideProxy({ 'parent-proxy-user': user, 'parent-proxy-password': 'wrong' });
    try {
      const r = await curlVia(port, origin.url('clean.bin'), out);
      assert.equal(r.status, 502, r.stderr);
      const page = await readFile(out, 'utf8');
      assert.match(page, /refused the credentials of http-proxy\.parent-proxy-user \(407\)/);
      assert.doesNotMatch(page, /parent-proxy-user gateway/, 'the user name (gateway) stays off the page any client can see');
      const c = await rawExchange(port, `CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
      assert.match(c.text, /^HTTP\/1\.1 502 /);
      assert.match(c.text, /refused the credentials/);
    } finally {
      await proxy.close(100);
    }
  });

  test('config: user and password go together, need parent-proxy, and the password is masked in config show', async () => {
    assert.throws(() => httpProxySchema.parse({ 'parent-proxy': '127.0.0.1:3129', 'parent-proxy-user': 'u' }), /go together/);
    assert.throws(() => httpProxySchema.parse({ 'parent-proxy-user': 'u', 'parent-proxy-password': 'p' }), /needs parent-proxy/);
    assert.throws(() => httpProxySchema.parse({ 'parent-proxy': '127.0.0.1:3129', 'parent-proxy-user': 'a:b', 'parent-proxy-password': 'p' }), /a user name without/);
    const shown = masked({ 'http-proxy': httpProxySchema.parse({ 'parent-proxy': '127.0.0.1:3129', 'parent-proxy-user': 'u', 'parent-proxy-password': 'secret' }) }) as { 'http-proxy': Record<string, unknown> };
    assert.equal(shown['http-proxy']['parent-proxy-password'], '********');
    assert.equal(shown['http-proxy']['parent-proxy-user'], 'u');
  });
});
