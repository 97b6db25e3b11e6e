import assert from 'node:assert/strict';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { headerValue } from '../../src/engines/icap/protocol.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { startTestIcap, type TestIcap } from '../helpers/avgate-icap.js';
import { buildRequest, chunked, icapExchange, trickle } from '../helpers/icap-client.js';

const MiB = 1024 * 1024;

/**
 * Limits of the ICAP server against clients that misbehave or are merely unusual: heads trickled
 * byte by byte (header-timeout), bodies known or found to be over max-object-size (nothing stored
 * beyond the limit), clients that half-close after their request, and connections over
 * max-connections (503).
 */
/** Polls `cond` every 20 ms for up to 5 s. */
async function waitFor(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const until = Date.now() + 5000;
  while (!(await cond())) {
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('ICAP server limits', () => {
  let clamd: TestClamd;
  let icap: TestIcap;
  /** A second server with max-connections 3. */
  let few: TestIcap;
  let spoolDir: string;

  before(async () => {
    clamd = await startTestClamd();
    few = await startTestIcap({ clamd, icapYaml: 'max-connections: 3' });
    icap = await startTestIcap({
      clamd,
      icapYaml: [
        'read-timeout: 3s',
        'header-timeout: 2s',
        'idle-timeout: 10s',
        'spool-memory: 64KiB',
        'access-log: access.log',
        'services:',
        '  avscan:',
        '    aliases: [srv_clamav]',
        '  capped:',
        '    max-object-size: 1MiB',
        '  lenient:',
        '    max-object-size: 1MiB',
        '    accept-status: [free, skipped]',
      ].join('\n'),
    });
    spoolDir = join(icap.stateDir, 'spool');
  });
  after(async () => {
    await icap?.stop();
    await few?.stop();
    await clamd?.stop();
  });

  const open = async (): Promise<Socket> => {
    const s = connect(icap.port, '127.0.0.1');
    s.on('error', () => undefined);
    await once(s, 'connect');
    return s;
  };

  /** Writes `data` one byte every `everyMs` until it is all sent or `stop()` says so. */
  describe('header-timeout', () => {
    test('an ICAP head trickled faster than read-timeout still ends in 408 at about header-timeout', async () => {
      const s = await open();
      const head = Buffer.from(`OPTIONS icap://127.0.0.1/avscan ICAP/1.0\r\nHost: x\r\nX-Pad: ${'a'.repeat(200)}\r\n\r\n`);
      const started = performance.now();
      let done = false;
      const sending = trickle(s, head, 1, 700, () => done);
      const r = await icapExchange(icap.port, [], { socket: s, timeoutMs: 15_000, keepOpen: true });
      done = true;
      const sent = await sending;
      const ms = performance.now() - started;
      s.destroy();
      assert.equal(r.responses[0]?.head.status, 408, JSON.stringify(r.responses[0]?.head));
      assert.equal(r.closed, true, 'connection closed after the 408');
      assert.ok(sent < head.length, 'answered before the head was complete');
      assert.ok(ms > 1000 && ms < 10_000, `408 after ${Math.round(ms)} ms (header-timeout 2 s)`);
    });

    test('the encapsulated HTTP headers count as head: trickled after a prompt ICAP head → 408', async () => {
      const req = buildRequest(icap.port, randomBytes(100), { allow204: true }).first;
      const icapHeadEnd = req.indexOf('\r\n\r\n') + 4;
      const s = await open();
      s.write(req.subarray(0, icapHeadEnd));
      let done = false;
      const sending = trickle(s, req.subarray(icapHeadEnd), 1, 700, () => done);
      const r = await icapExchange(icap.port, [], { socket: s, timeoutMs: 15_000, keepOpen: true });
      done = true;
      await sending;
      s.destroy();
      assert.equal(r.responses[0]?.head.status, 408);
      assert.equal(r.closed, true);
    });

    test('idle time between requests is not head time, and a slow body has only the per-read timeout', async () => {
      const s = await open();
      const first = await icapExchange(icap.port, ['OPTIONS icap://127.0.0.1/avscan ICAP/1.0\r\nHost: x\r\n\r\n'], { socket: s, timeoutMs: 5000 });
      assert.equal(first.responses[0]?.head.status, 200);
      await sleep(2500); // longer than header-timeout, shorter than idle-timeout
      // A body trickled over ~3.5 s (longer than header-timeout), each byte well within read-timeout.
      const body = randomBytes(5);
      const req = buildRequest(icap.port, body, { allow204: true, close: true }).first;
      const bodyStart = req.length - chunked(body).length;
      s.write(req.subarray(0, bodyStart));
      const collecting = icapExchange(icap.port, [], { socket: s, timeoutMs: 15_000 });
      await trickle(s, req.subarray(bodyStart), 1, 230);
      const r = await collecting;
      s.destroy();
      assert.equal(r.responses[0]?.head.status, 204, JSON.stringify(r.responses[0]?.head));
    });
  });

  describe('bodies over max-object-size', () => {
    /** A RESPMOD head (no preview) for a body of `declared` bytes (none: no Content-Length). */
    const overLimitHead = (service: string, opts: { declared?: number; allow204?: boolean }): Buffer => {
      const reqHdr = 'GET /big.bin HTTP/1.1\r\nHost: origin.test\r\n\r\n';
      const cl = opts.declared === undefined ? '' : `Content-Length: ${opts.declared}\r\n`;
      const resHdr = `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n${cl}\r\n`;
      const head = [
        `RESPMOD icap://127.0.0.1:${icap.port}/${service} ICAP/1.0`,
        `Host: 127.0.0.1:${icap.port}`,
        `Encapsulated: req-hdr=0, res-hdr=${reqHdr.length}, res-body=${reqHdr.length + resHdr.length}`,
        ...(opts.allow204 ? ['Allow: 204'] : []),
      ].join('\r\n');
      return Buffer.from(`${head}\r\n\r\n${reqHdr}${resHdr}`, 'latin1');
    };
    const piece = Buffer.concat([Buffer.from(`${MiB.toString(16)}\r\n`), randomBytes(MiB), Buffer.from('\r\n')]);

    const spoolBytes = async (): Promise<number> => {
      let n = 0;
      for (const f of await readdir(spoolDir).catch(() => [] as string[])) n += (await stat(join(spoolDir, f)).catch(() => ({ size: 0 }))).size;
      return n;
    };

    /**
     * Sends `count` MiB chunks (waiting for the socket to drain), measuring the spool directory
     * after each; stops early when the server closed. Returns the largest size seen and how many went out.
     */
    const sendBody = async (s: Socket, count: number): Promise<{ maxSpool: number; sent: number }> => {
      let maxSpool = 0;
      let sent = 0;
      for (let i = 0; i < count && !s.destroyed && s.writable; i++) {
        if (!s.write(piece)) await Promise.race([once(s, 'drain'), once(s, 'close')]);
        sent++;
        maxSpool = Math.max(maxSpool, await spoolBytes());
      }
      return { maxSpool, sent };
    };

    const accessLines = async (service: string): Promise<string[]> =>
      (await readFile(join(icap.stateDir, 'access.log'), 'utf8').catch(() => '')).split('\n').filter((l) => l.includes(` ${service} RESPMOD `));

    test('Content-Length 300 MiB, blocked: the page comes before any body byte, nothing is spooled, a client that stops is cut off', async () => {
      const s = await open();
      const answer = await icapExchange(icap.port, [overLimitHead('capped', { declared: 300 * MiB })], { socket: s, timeoutMs: 5000 });
      const res = answer.responses[0];
      assert.equal(res?.head.status, 200);
      assert.match(res?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);
      assert.match(res?.body.toString() ?? '', /max-object-size/);
      // The client goes on sending (20 of the 300 MiB): read and dropped, never written to disk.
      const closing = icapExchange(icap.port, [], { socket: s, timeoutMs: 20_000 });
      const { maxSpool, sent } = await sendBody(s, 20);
      assert.ok(sent > 0);
      assert.ok(maxSpool < 256 * 1024, `spool held ${maxSpool} bytes`);
      // Then it stops, mid-body: the server closes within read-timeout (3 s) plus its grace.
      const started = performance.now();
      const end = await closing;
      s.destroy();
      assert.equal(end.closed, true, 'server closed the connection of a body that stopped');
      assert.ok(performance.now() - started < 15_000);
      await waitFor(async () => (await accessLines('capped')).length > 0, 'the access log line');
      assert.match((await accessLines('capped')).at(-1) ?? '', / capped RESPMOD 200 skipped \d+ \d+ http:\/\/origin\.test\/big\.bin - -$/);
    });

    test('no Content-Length: answered once the limit is passed; at most the limit is stored; the connection goes on after the body', async () => {
      const CHUNKS = 20;
      const s = await open();
      s.write(overLimitHead('capped', { allow204: true }));
      const state = { answered: false };
      const answering = icapExchange(icap.port, [], { socket: s, timeoutMs: 20_000 }).then((r) => {
        state.answered = true;
        return r;
      });
      let maxSpool = 0;
      let sentAtAnswer = CHUNKS;
      for (let i = 0; i < CHUNKS; i++) {
        if (!s.write(piece)) await once(s, 'drain');
        maxSpool = Math.max(maxSpool, await spoolBytes());
        if (state.answered && sentAtAnswer === CHUNKS) sentAtAnswer = i + 1;
      }
      s.write('0\r\n\r\n');
      const r = await answering;
      assert.match(r.responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);
      assert.ok(maxSpool <= MiB + 128 * 1024, `spool held ${maxSpool} bytes (limit 1 MiB)`);
      assert.ok(sentAtAnswer < CHUNKS, 'the answer came before the whole body was sent');
      // The rest was read to its end: the same connection serves the next request.
      const next = await icapExchange(icap.port, [buildRequest(icap.port, randomBytes(300), { allow204: true }).first], { socket: s, timeoutMs: 5000 });
      s.destroy();
      assert.equal(next.responses[0]?.head.status, 204);
      await waitFor(async () => (await spoolBytes()) === 0, 'an empty spool directory');
    });

    test('skipped accepted and Allow: 204: 204 with X-Avgate-Verdict at once, nothing spooled', async () => {
      const s = await open();
      const r = await icapExchange(icap.port, [overLimitHead('lenient', { declared: 300 * MiB, allow204: true })], { socket: s, timeoutMs: 5000 });
      assert.equal(r.responses[0]?.head.status, 204);
      assert.match(headerValue(r.responses[0]!.head, 'X-Avgate-Verdict') ?? '', /^skipped; /);
      const { maxSpool } = await sendBody(s, 8);
      s.destroy();
      assert.ok(maxSpool < 256 * 1024, `spool held ${maxSpool} bytes`);
    });

    test('skipped accepted without Allow: 204: the whole body is still echoed, byte for byte', async () => {
      const body = randomBytes(3 * MiB);
      const r = await icapExchange(icap.port, [buildRequest(icap.port, body, { service: 'lenient' }).first], { timeoutMs: 15_000 });
      const res = r.responses[0];
      assert.equal(res?.head.status, 200);
      // (The early response head went out before the limit was passed, so it carries no verdict note.)
      assert.ok(res?.body.equals(body), 'echo is byte-identical');
    });
  });

  describe('half-closed clients', () => {
    /** Writes a request, shuts down the sending side, and collects what comes back. */
    const halfClosed = async (request: Buffer) => {
      const s = await open();
      s.write(request);
      s.end();
      const r = await icapExchange(icap.port, [], { socket: s, timeoutMs: 15_000, keepOpen: true });
      s.destroy();
      return r;
    };

    test('a complete request followed by FIN gets its whole answer: 204, echo, block page, 3 MB echo', async () => {
      const clean = await halfClosed(buildRequest(icap.port, randomBytes(64), { allow204: true }).first);
      assert.equal(clean.responses[0]?.head.status, 204);
      assert.equal(clean.closed, true, 'closed after the answer');

      const small = randomBytes(20_000);
      const echo = await halfClosed(buildRequest(icap.port, small).first);
      assert.equal(echo.responses[0]?.head.status, 200);
      assert.ok(echo.responses[0]?.body.equals(small));

      const infected = await halfClosed(buildRequest(icap.port, Buffer.concat([randomBytes(500), eicarBytes()]), { allow204: true }).first);
      assert.ok(headerValue(infected.responses[0]!.head, 'X-Infection-Found'));
      assert.match(infected.responses[0]?.sections['res-hdr']?.toString() ?? '', /^HTTP\/1\.1 403/);

      const big = randomBytes(3_000_000);
      const bigEcho = await halfClosed(buildRequest(icap.port, big).first);
      assert.equal(bigEcho.responses[0]?.head.status, 200);
      assert.equal(bigEcho.responses[0]?.body.length, big.length);
      assert.ok(bigEcho.responses[0]?.body.equals(big), '3 MB echo complete and identical');
    });

    test('a FIN in the middle of a request is a client gone: no answer, the request is logged as aborted', async () => {
      const req = buildRequest(icap.port, randomBytes(50_000), { allow204: true }).first;
      const r = await halfClosed(req.subarray(0, req.length - 20_000));
      assert.equal(r.responses.length, 0);
      assert.equal(r.closed, true);
      await sleep(100);
      const log = await readFile(join(icap.stateDir, 'access.log'), 'utf8');
      assert.match(log, / avscan RESPMOD 0 aborted:client-gone /);
    });
  });

  describe('max-connections', () => {
    test('one connection too many gets ICAP 503 and a close, not a reset; a freed slot is usable again', async () => {
      const held: Socket[] = [];
      try {
        for (let i = 0; i < 3; i++) {
          const s = connect(few.port, '127.0.0.1');
          s.on('error', () => undefined);
          await once(s, 'connect');
          held.push(s);
        }
        await waitFor(() => few.server.openConnections === 3, '3 open connections');
        const refused = await icapExchange(few.port, ['OPTIONS icap://127.0.0.1/avscan ICAP/1.0\r\nHost: x\r\n\r\n'], { timeoutMs: 5000, keepOpen: true });
        refused.socket.destroy();
        assert.equal(refused.responses[0]?.head.status, 503);
        assert.equal(headerValue(refused.responses[0]!.head, 'Connection'), 'close');
        assert.equal(refused.closed, true);
        assert.ok(few.server.counters.refused >= 1);
        held.pop()?.destroy();
        await waitFor(() => few.server.openConnections === 2, 'a freed slot');
        const ok = await icapExchange(few.port, ['OPTIONS icap://127.0.0.1/avscan ICAP/1.0\r\nHost: x\r\n\r\n'], { timeoutMs: 5000 });
        ok.socket.destroy();
        assert.equal(ok.responses[0]?.head.status, 200);
      } finally {
        for (const s of held) s.destroy();
      }
    });
  });
});
