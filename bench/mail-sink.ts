/**
 * The final destination of the mail section: Postfix's smtp-sink on a free loopback port, in
 * counting mode (`-c`) rather than dumping (`-d`, as tools/peers/postfix.ts runs it for tests):
 * messages of 2 MB at tens per second would otherwise be written to disk, and the benchmark only
 * needs to know how many arrived. With `-c` smtp-sink prints `sess=N quit=N mesg=N` plus a
 * carriage return after every event; `mesg` counts completed DATA transactions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { freeLoopbackPort } from '../src/core/net.js';
import { accepts, stopChild, waitReady } from '../tools/peers/process.js';

export interface CountingSink {
  port: number;
  pid: number;
  /** Completed DATA transactions so far. */
  count(): number;
  /** Waits until the count reaches `n`, or it has not moved for `quietMs`, or `timeoutMs` passed. */
  settle(n: number, quietMs?: number, timeoutMs?: number): Promise<number>;
  stop(): Promise<void>;
}

export async function startCountingSink(): Promise<CountingSink> {
  const asRoot = process.getuid?.() === 0 ? ['-u', 'root'] : [];
  let lastError = 'not started';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeLoopbackPort();
    const child: ChildProcess = spawn('/usr/sbin/smtp-sink', [...asRoot, '-c', `127.0.0.1:${port}`, '256'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let mesg = 0;
    let pending = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => {
      pending += d.toString('latin1');
      const cut = pending.lastIndexOf('\r');
      if (cut < 0) return;
      const done = pending.slice(0, cut);
      pending = pending.slice(cut + 1);
      const m = /mesg=(\d+)\s*$/.exec(done);
      if (m) mesg = Number(m[1]);
    });
    child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
    const r = await waitReady(child, () => accepts(port), Date.now() + 10_000, 50);
    if (r.kind === 'ready') {
      // The probe connection counts as a session, not as a message.
      return {
        port,
        pid: child.pid as number,
        count: () => mesg,
        async settle(n, quietMs = 1500, timeoutMs = 30_000) {
          const end = Date.now() + timeoutMs;
          let last = mesg;
          let still = Date.now();
          while (mesg < n && Date.now() < end) {
            await sleep(25);
            if (mesg !== last) {
              last = mesg;
              still = Date.now();
            } else if (Date.now() - still >= quietMs) break;
          }
          return mesg;
        },
        stop: () => stopChild(child, 2000),
      };
    }
    if (r.kind === 'timeout') await stopChild(child, 1000);
    lastError = r.kind === 'exited' ? `smtp-sink ${r.reason}: ${stderr.trim()}` : 'smtp-sink was not ready in time';
  }
  throw new Error(`smtp-sink did not start: ${lastError}`);
}
