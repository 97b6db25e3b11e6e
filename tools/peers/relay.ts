/**
 * A plain TCP relay (Debian's `socat`, written in C) between loopback ports, for the benchmark's
 * relay reference: what passing the bytes through one more process costs, with no scanning and no
 * protocol parsing at all. One listener on a free loopback port; every accepted connection is
 * forked into a socat process of its own that copies both ways to `target` until either side
 * closes (`fork`: mail sessions are long-lived, one fork per session).
 *
 * Settings in the relay's favour, so that it is the cheapest relay socat makes:
 * - `nodelay` on both sides, as avgate's proxies set on theirs (Nagle with delayed ACKs would stall
 *   a request/response protocol on small writes);
 * - `-b 65536`: reads and writes of up to 64 KiB (socat's default is 8 KiB), as Node's sockets read;
 * - `backlog=128` (socat's default listen backlog is 5).
 *
 * Stopping: socat does not pass SIGTERM on to its forked children, which then live on until their
 * connection closes; stop() ends the children it finds (by their parent's pid), then the listener.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { freeLoopbackPort } from '../../src/core/net.js';
import { accepts, stopChild, tail, waitExit, waitReady, type PeerProcess } from './process.js';

export const SOCAT_BIN = '/usr/bin/socat';

/** True when socat is installed (Debian `socat`, scripts/system-deps.sh). */
export function relayAvailable(): boolean {
  return existsSync(SOCAT_BIN);
}

/** socat's version line, e.g. `socat version 1.7.4.4 on 06 Nov 2022 08:15:51` (null when it does not say). */
export function relayVersion(): string | null {
  const r = spawnSync(SOCAT_BIN, ['-V'], { encoding: 'latin1', timeout: 5000 });
  return /^socat version \S+/m.exec(r.stdout ?? '')?.[0] ?? null;
}

export interface RelayOptions {
  /** The loopback port the relay forwards every connection to. */
  targetPort: number;
  /** socat's output (errors, with `-d`) is appended here. */
  outPath: string;
  startTimeoutMs?: number;
}

export interface Relay extends PeerProcess {
  /** The last part of socat's output (for failure messages). */
  logTail(): string;
}

/** Pids of the live processes whose parent is `pid` (/proc). */
async function childPids(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    const p = Number(name);
    if (!Number.isInteger(p)) continue;
    try {
      const stat = await readFile(`/proc/${p}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(p);
    } catch {
      // gone
    }
  }
  return out;
}

/** Starts socat on a free loopback port (three tries when the port is taken meanwhile). */
export async function startRelay(o: RelayOptions): Promise<Relay> {
  const deadline = Date.now() + (o.startTimeoutMs ?? 10_000);
  const logTail = () => tail(o.outPath, 2000);
  let lastError = 'not started';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeLoopbackPort();
    const out = openSync(o.outPath, 'a');
    const child = spawn(
      SOCAT_BIN,
      ['-d', '-b', '65536', `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,backlog=128,nodelay`, `TCP:127.0.0.1:${o.targetPort},nodelay`],
      { stdio: ['ignore', out, out] },
    );
    closeSync(out);
    const r = await waitReady(child, () => accepts(port), deadline);
    if (r.kind === 'ready') {
      const pid = child.pid as number;
      return {
        port,
        pid,
        logTail,
        stop: async () => {
          // The forks first, while the listener is there to reap them (for up to 2 s); then the listener.
          for (const p of await childPids(pid)) {
            try {
              process.kill(p, 'SIGTERM');
            } catch {
              // already gone with its connection
            }
          }
          for (let i = 0; i < 40 && (await childPids(pid)).length > 0; i++) await sleep(50);
          await stopChild(child);
        },
      };
    }
    if (r.kind === 'timeout') {
      child.kill('SIGKILL');
      await waitExit(child);
      lastError = 'socat was not ready in time';
      break;
    }
    lastError = `socat ${r.reason}`;
  }
  throw new Error(`socat relay did not start: ${lastError}\n${logTail()}`);
}
