import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { loadConfig } from '../../src/config/loader.js';
import type { Logger } from '../../src/core/logging.js';
import { freeLoopbackPort } from '../../src/core/net.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { serve, type Serving } from '../../src/main.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';
import { selfSignedCert } from '../helpers/tls.js';
import { waitFor, within } from '../helpers/wait.js';

/**
 * A configuration reload (SIGHUP, Serving.reload) on a real serve with the project-local clamd:
 * what changed applies to new connections, connections already open finish under the old
 * configuration, the ports never close, the clamd and the verdict cache are kept, and a file that
 * is wrong or cannot be applied leaves the running configuration as it was.
 */
interface Line {
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** Whether a connection to the port on 127.0.0.1 is refused. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve(false);
    });
    c.once('error', () => resolve(true));
  });
}

describe('configuration reload', () => {
  let dir: string;
  let file: string;
  let icapPort: number;
  /** A TCP echo server, the far end of CONNECT tunnels through the HTTP proxy. */
  let echo: Server;
  let echoPort: number;
  let serving: Serving;
  const lines: Line[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Line) }) as unknown as Logger;

  const configText = (o: { preview: number; maxChecked: string; extraService?: boolean; icapPort?: number; quarantineDir?: string; http?: boolean; tls?: { cert: string; key: string }; stopTimeout?: string; imap?: boolean; drainTimeout?: string }) =>
    [
      `state-dir: ${join(dir, 'state')}`,
      ...(o.stopTimeout ? [`stop-timeout: ${o.stopTimeout}`] : []),
      ...(o.drainTimeout ? [`reload-drain-timeout: ${o.drainTimeout}`] : []),
      'log:',
      '  level: info',
      'clamd:',
      '  tcp-port: 0',
      'scan:',
      `  max-checked-size: ${o.maxChecked}`,
      'quarantine:',
      `  dir: ${o.quarantineDir ?? 'quarantine'}`,
      'icap:',
      `  listen: 127.0.0.1:${o.icapPort ?? icapPort}`,
      ...(o.tls ? ['  tls:', '    listen: 127.0.0.1:0', `    cert: ${o.tls.cert}`, `    key: ${o.tls.key}`] : []),
      '  services:',
      '    avscan:',
      `      preview: ${o.preview}`,
      ...(o.extraService ? ['    second: {}'] : []),
      'http-proxy:',
      `  enabled: ${o.http ?? true}`,
      '  listen: 127.0.0.1:0',
      `  connect-ports: [${echoPort}]`,
      ...(o.imap ? ['imap-proxy:', '  listen: 127.0.0.1:0', '  upstream: 127.0.0.1:1'] : ['imap-proxy:', '  enabled: false']),
      'console:',
      '  listen: 127.0.0.1:0',
      ...['smtp', 'ftp-proxy', 'pop3-proxy'].flatMap((s) => [`${s}:`, '  enabled: false']),
      '',
    ].join('\n');

  const options = async (service = 'avscan', socket?: import('node:net').Socket) => {
    const r = await icapExchange(icapPort, [`OPTIONS icap://127.0.0.1:${icapPort}/${service} ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n`], socket ? { socket } : {});
    const head = r.responses[0]?.head;
    return { status: head?.status, preview: head?.headers.get('preview')?.[0] ?? null, socket: r.socket };
  };

  const metrics = async () => {
    const res = await fetch(`http://127.0.0.1:${serving.consolePort}/metrics`);
    assert.equal(res.status, 200);
    return res.text();
  };

  /** A CONNECT tunnel through the HTTP proxy to the echo server, shown working ("before" echoed). */
  const openTunnel = async () => {
    const tunnel = connect(serving.httpProxyPort as number, '127.0.0.1');
    tunnel.on('error', () => undefined);
    const received: Buffer[] = [];
    tunnel.on('data', (d: Buffer) => received.push(d));
    const text = () => Buffer.concat(received).toString('latin1');
    const closed = new Promise<void>((r) => tunnel.once('close', () => r()));
    tunnel.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
    await waitFor('the tunnel', async () => (/^HTTP\/1\.1 200 [^]*\r\n\r\n$/.test(text()) ? true : null), 5000);
    tunnel.write('before');
    await waitFor('the echo', async () => (text().endsWith('before') ? true : null), 5000);
    return { tunnel, text, closed };
  };

  /** An ICAP request that never ends (all but its last bytes sent), under way on the server. */
  const busyRequest = async () => {
    const whole = buildRequest(icapPort, randomBytes(10_000), { allow204: true }).first;
    const busy = connect(icapPort, '127.0.0.1');
    busy.on('error', () => undefined);
    await new Promise<void>((r) => busy.once('connect', () => r()));
    busy.write(whole.subarray(0, whole.length - 5));
    const busyClosed = new Promise<void>((r) => busy.once('close', () => r()));
    await waitFor('the request to be under way', async () => ((serving.icap?.openConnections ?? 0) >= 1 ? true : null), 5000);
    return { busy, busyClosed };
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-reload-'));
    file = join(dir, 'avgate.yaml');
    icapPort = await freeLoopbackPort();
    echo = createServer((c) => {
      c.on('error', () => undefined);
      c.pipe(c);
    });
    echoPort = await new Promise<number>((r) => echo.listen(0, '127.0.0.1', () => r((echo.address() as { port: number }).port)));
    await writeFile(file, configText({ preview: 1024, maxChecked: '100MiB' }));
    serving = await serve(await loadConfig(file), { logger: log });
  });
  after(async () => {
    await serving?.stop();
    echo?.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('a changed file applies to new connections; an open one finishes under the old configuration; ports, clamd and cache stay', async () => {
    const clamd = serving.runtime.clamd;
    const cache = serving.runtime.cache;
    const httpPort = serving.httpProxyPort;
    assert.ok(clamd?.pid && cache && httpPort);
    const pid = clamd.pid;
    const old = await options();
    assert.deepEqual([old.status, old.preview], [200, '1024']);
    assert.equal((await options('second')).status, 404);
    const big = Buffer.concat([randomBytes(4096), eicarBytes()]);
    assert.equal((await serving.runtime.scanner.scan({ source: { kind: 'buffer', data: big } })).status, 'found');

    // A request under way when the reload comes: all but its last bytes sent.
    const whole = buildRequest(icapPort, big, { allow204: true }).first;
    const busyRest = whole.subarray(whole.length - 5);
    const busy = connect(icapPort, '127.0.0.1');
    busy.on('error', () => undefined);
    await new Promise<void>((r) => busy.once('connect', () => r()));
    busy.write(whole.subarray(0, whole.length - 5));
    await waitFor('the request to be under way', async () => ((serving.icap?.openConnections ?? 0) >= 2 ? true : null), 5000);
    const oldClosed = new Promise<void>((r) => old.socket.once('close', () => r()));
    const busyAnswer = icapExchange(icapPort, [], { socket: busy, count: 1, keepOpen: true, timeoutMs: 20_000 });

    await writeFile(file, configText({ preview: 4096, maxChecked: '1KiB', extraService: true }));
    const r = await serving.reload();
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.changed.sort(), ['icap', 'scan']);
    assert.deepEqual(r.restartNeeded, []);

    // New connections: the new configuration, on the same ports.
    const fresh = await options();
    assert.deepEqual([fresh.status, fresh.preview], [200, '4096']);
    assert.equal((await options('second')).status, 200);
    fresh.socket.destroy();
    assert.equal(serving.icapPort, icapPort);
    assert.equal(serving.httpProxyPort, httpPort, 'a port-0 front end keeps the port it got');
    const http = await new Promise<string>((resolve) => {
      const c = connect(httpPort, '127.0.0.1');
      let got = '';
      c.on('data', (d) => (got += String(d)));
      c.on('close', () => resolve(got));
      c.on('error', () => undefined);
      c.end('GET /relative HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    });
    assert.match(http, /^HTTP\/1\.1 400 /, 'the HTTP proxy answers on its port after the reload');
    // The new scan limit, with the same clamd and the same cache.
    assert.equal((await serving.runtime.scanner.scan({ source: { kind: 'buffer', data: big } })).status, 'skipped');
    assert.equal(serving.runtime.clamd?.pid, pid, 'the local clamd was not restarted');
    assert.equal(serving.runtime.cache, cache, 'the verdict cache (and what it holds) was kept');

    // The idle connection opened before the reload was ended (a persistent client reconnects and
    // gets the new configuration); the one busy with a request finishes it under the old one.
    await within('the idle connection of the old generation to be closed', 5000, oldClosed);
    busy.write(busyRest);
    const answer = await busyAnswer;
    assert.equal(answer.responses[0]?.head.status, 200);
    assert.match(answer.responses[0]?.head.headers.get('x-virus-id')?.[0] ?? '', /Eicar/i, 'scanned under the old max-checked-size: found');
    assert.equal(answer.closed, true, 'and then closed');
    await waitFor('the previous generation to drain', async () => (lines.some((l) => /previous configuration's connections have ended/.test(l.msg)) ? true : null), 10_000);
    // The same request on a new connection: skipped under the new max-checked-size.
    const now = await icapExchange(icapPort, [buildRequest(icapPort, big, { allow204: true }).first], { count: 1 });
    now.socket.destroy();
    assert.equal(now.responses[0]?.head.headers.get('x-virus-id'), undefined);
  });

  test('an HTTPS (CONNECT) tunnel opened before a reload goes on after it', async () => {
    const { tunnel, text, closed } = await openTunnel();
    let gone = false;
    void closed.then(() => (gone = true));
    await writeFile(file, configText({ preview: 4096, maxChecked: '1KiB', extraService: true, stopTimeout: '9s' }));
    const r = await serving.reload();
    assert.ok(r.ok && r.rebuilt, JSON.stringify(r));
    tunnel.write('after');
    await waitFor('the echo after the reload', async () => (text().endsWith('beforeafter') ? true : null), 5000);
    assert.equal(gone, false, 'the tunnel is still open');
    tunnel.destroy();
    await closed;
  });

  test('a file that does not validate, or a port that cannot be bound, leaves the running configuration as it was', async () => {
    await writeFile(file, configText({ preview: 4096, maxChecked: '1KiB' }).replace('preview: 4096', 'preview: lots'));
    const bad = await serving.reload();
    assert.equal(bad.ok, false);
    assert.match(bad.ok ? '' : bad.reason, /preview/);
    assert.ok(lines.some((l) => l.level === 50 && /configuration not reloaded: the file is not valid/.test(l.msg)));
    assert.deepEqual(Object.values(await options()).slice(0, 2), [200, '4096']);

    // Another program holds the port the new file names.
    const blocker: Server = createServer();
    const taken = await new Promise<number>((r) => blocker.listen(0, '127.0.0.1', () => r((blocker.address() as { port: number }).port)));
    try {
      await writeFile(file, configText({ preview: 512, maxChecked: '1KiB', icapPort: taken }));
      const busy = await serving.reload();
      assert.equal(busy.ok, false);
      assert.match(busy.ok ? '' : busy.reason, /icap listen 127\.0\.0\.1:\d+: EADDRINUSE/);
      assert.ok(lines.some((l) => l.level === 50 && /a front end did not start/.test(l.msg)));
    } finally {
      blocker.close();
    }
    const still = await options();
    assert.deepEqual([still.status, still.preview], [200, '4096'], 'the running ICAP service answers as before');
    still.socket.destroy();
    // Monitoring sees it (as with Prometheus's own prometheus_config_last_reload_successful).
    const m = await metrics();
    assert.match(m, /^avgate_config_last_reload_successful 0$/m);
    assert.match(m, /^avgate_config_reloads_total\{result="failed"\} 2$/m);
    assert.match(m, /^avgate_config_reloads_total\{result="applied"\} 2$/m);
  });

  test('sections that need a restart keep their running values and are named; a front end turned off stops listening', async () => {
    const httpPort = serving.httpProxyPort as number;
    const quarantineDir = serving.config.quarantine.dir;
    await writeFile(file, configText({ preview: 4096, maxChecked: '1KiB', quarantineDir: 'elsewhere', http: false }));
    const r = await serving.reload();
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.restartNeeded, ['quarantine']);
    assert.ok(r.changed.includes('http-proxy') && !r.changed.includes('quarantine'), JSON.stringify(r.changed));
    assert.equal(serving.config.quarantine.dir, quarantineDir, 'the running quarantine directory is kept');
    assert.ok(lines.some((l) => l.level === 40 && /keep their running values until a restart/.test(l.msg) && JSON.stringify(l.sections) === '["quarantine"]'));
    assert.equal(serving.httpProxy, null);
    await waitFor('the HTTP proxy port to close', async () => ((await refused(httpPort)) ? true : null), 10_000);
    assert.deepEqual(Object.values(await options()).slice(0, 2), [200, '4096']);
  });

  test('a renewed TLS certificate is served after a reload, on the same TLS port', async () => {
    const first = await selfSignedCert(dir, 'first.test');
    const renewed = await selfSignedCert(dir, 'renewed.test');
    const subject = (port: number) =>
      new Promise<string>((resolve, reject) => {
        const c = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
          const cn = c.getPeerCertificate().subject.CN;
          c.destroy();
          resolve(String(cn));
        });
        c.once('error', reject);
      });
    await writeFile(file, configText({ preview: 4096, maxChecked: '1KiB', tls: first }));
    assert.ok((await serving.reload()).ok);
    const tlsPort = serving.icapTlsPort;
    assert.ok(tlsPort);
    assert.equal(await subject(tlsPort), 'first.test');
    // A client that connected but never began its handshake: the old generation ends it at once
    // (it is no persistent connection to finish), not after node's 120 s handshake timeout.
    const silent = connect(tlsPort, '127.0.0.1');
    silent.on('error', () => undefined);
    await new Promise<void>((r) => silent.once('connect', () => r()));
    const silentClosed = new Promise<void>((r) => silent.once('close', () => r()));
    // /metrics counts on across a reload that rebuilds the front ends (a counter never goes back).
    const icapRequests = async () => Number(/^avgate_frontend_events_total\{frontend="icap",event="requests"\} (\d+)$/m.exec(await metrics())?.[1]);
    const before = await icapRequests();
    assert.ok(before > 0, String(before));
    // certbot's way: the same paths, new contents; the config file itself is unchanged.
    await copyFile(renewed.cert, first.cert);
    await copyFile(renewed.key, first.key);
    const r = await serving.reload();
    assert.ok(r.ok && r.rebuilt && r.changed.length === 0, JSON.stringify(r));
    assert.ok((await icapRequests()) >= before, 'the ICAP request count goes on after the rebuild');
    assert.equal(serving.icapTlsPort, tlsPort, 'the TLS port was handed over');
    assert.equal(await subject(tlsPort), 'renewed.test');
    await within('the half-done TLS connection of the old generation to be ended', 5000, silentClosed);
  });

  test('a SIGHUP with the file and the files it names unchanged (logrotate) rebuilds nothing: an idle connection stays', async () => {
    const idle = await options();
    assert.equal(idle.status, 200);
    const r = await serving.reload();
    assert.ok(r.ok && !r.rebuilt, JSON.stringify(r));
    assert.ok(lines.some((l) => /nothing rebuilt/.test(l.msg)));
    const m = await metrics();
    assert.match(m, /^avgate_config_last_reload_successful 1$/m);
    assert.match(m, /^avgate_config_reloads_total\{result="unchanged"\} 1$/m);
    const at = Number(/^avgate_config_last_reload_success_timestamp_seconds (\d+)$/m.exec(m)?.[1]);
    assert.ok(Math.abs(at - Date.now() / 1000) < 60, String(at));
    const again = await options('avscan', idle.socket);
    assert.equal(again.status, 200, 'the idle connection still answers');
    idle.socket.destroy();
  });

  test('log.level applies at a reload without rebuilding anything, to the loggers made at start too (the ICAP access lines)', async () => {
    const accessLines = () => lines.filter((l) => l['component'] === 'icap-access').length;
    const idle = await options();
    assert.equal(idle.status, 200);
    await waitFor('the access line at info', async () => (accessLines() > 0 ? true : null), 5000);
    const text = await readFile(file, 'utf8');
    assert.match(text, /^ {2}level: info$/m);
    await writeFile(file, text.replace(/^ {2}level: info$/m, '  level: warn'));
    const r = await serving.reload();
    assert.ok(r.ok && !r.rebuilt, JSON.stringify(r));
    assert.deepEqual([r.changed, r.restartNeeded], [['log.level'], []]);
    assert.equal(serving.config.log.level, 'warn', 'the running configuration says so');
    const before = accessLines();
    const again = await options('avscan', idle.socket);
    assert.equal(again.status, 200, 'the idle connection was kept: nothing rebuilt');
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(accessLines(), before, 'no info line at warn');
    // The same file again: unchanged now.
    const same = await serving.reload();
    assert.ok(same.ok && same.changed.length === 0, JSON.stringify(same));
    await writeFile(file, text);
    const back = await serving.reload();
    assert.ok(back.ok && back.changed.includes('log.level'), JSON.stringify(back));
    await options('avscan', idle.socket);
    await waitFor('the access line at info again', async () => (accessLines() > before ? true : null), 5000);
    idle.socket.destroy();
  });

  test('a front end turned off stops listening at once, while another front end of the old generation is still busy', async () => {
    await writeFile(file, configText({ preview: 4096, maxChecked: '1KiB', imap: true }));
    assert.ok((await serving.reload()).ok);
    const imapPort = serving.imapProxyPort as number;
    assert.ok(imapPort > 0);
    const { busy } = await busyRequest();
    await writeFile(file, configText({ preview: 4096, maxChecked: '1KiB' }));
    assert.ok((await serving.reload()).ok);
    await waitFor('the IMAP port to close', async () => ((await refused(imapPort)) ? true : null), 5000);
    assert.equal(busy.destroyed, false, 'the ICAP request of the old generation is still under way');
    busy.destroy();
  });

  test('a busy connection of the previous configuration is cut after reload-drain-timeout', async () => {
    const { busy, busyClosed } = await busyRequest();
    const drained = lines.filter((l) => /previous configuration's connections have ended/.test(l.msg)).length;
    await writeFile(file, configText({ preview: 4096, maxChecked: '1KiB', drainTimeout: '1s' }));
    assert.ok((await serving.reload()).ok);
    // Not cut at the reload: it is busy; cut once the 1 s is over (the default would be 10 min).
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(busy.destroyed, false);
    await within('the busy connection to be cut after reload-drain-timeout', 5000, busyClosed);
    await waitFor('the drain to be logged', async () => (lines.filter((l) => /previous configuration's connections have ended/.test(l.msg)).length > drained ? true : null), 5000);
  });

  test('a stop while the previous configuration still drains cuts its tunnels at once and its busy connection within stop-timeout (as reloaded), not reload-drain-timeout (10 min)', async () => {
    const { busyClosed } = await busyRequest();
    const { closed: tunnelClosed } = await openTunnel();
    await writeFile(file, configText({ preview: 2048, maxChecked: '1KiB', stopTimeout: '5s' }));
    const r = await serving.reload();
    assert.ok(r.ok && r.changed.includes('stop-timeout'), JSON.stringify(r));
    assert.equal(serving.config['reload-drain-timeout'], 600_000);
    const stopping = serving.stop();
    // Tunnels kept for the drain are cut at once by a stop (not after the stop's grace).
    await within('the drained tunnel to be cut', 1000, tunnelClosed);
    // Half of stop-timeout (2.5 s) for connections; with the default (10 s) it would be 5 s.
    await within('the busy connection to be cut', 4000, busyClosed);
    await within('stop', 20_000, stopping);
    assert.ok(lines.some((l) => l.msg === 'avgate stopped'));
  });
});
