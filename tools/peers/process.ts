/**
 * Running a real peer (c-icap, Squid ...) beside avgate for tests and the benchmark: in the
 * foreground, with its own config on a free loopback port, waiting until it is ready, and stopping
 * it by its own pid. Shared by test/helpers and bench/ (both import tools/peers).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { freeLoopbackPort } from '../../src/core/net.js';

export interface PeerProcess {
  port: number;
  pid: number;
  /** SIGTERM, then SIGKILL after the grace period (the grace timer never outlives the peer). */
  stop(): Promise<void>;
}

export function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

export async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const grace = new AbortController();
  const gone = await Promise.race([waitExit(child).then(() => true), sleep(graceMs, false, { signal: grace.signal }).catch(() => false)]);
  grace.abort();
  if (!gone) {
    child.kill('SIGKILL');
    await waitExit(child);
  }
}

/** uid/gid of a system user from /etc/passwd (null when there is none). */
export function systemUser(name: string): { uid: number; gid: number } | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === name) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    // no /etc/passwd
  }
  return null;
}

export function tail(path: string, chars: number): string {
  return existsSync(path) ? readFileSync(path, 'latin1').slice(-chars) : '';
}

/** True when something accepts a TCP connection on the loopback port. */
export function accepts(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/**
 * True when something on the port greets with `220` (SMTP, FTP) within the timeout; it is sent
 * QUIT then.
 */
export function greets(port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      if (!s.destroyed) {
        if (ok) s.end('QUIT\r\n');
        s.destroy();
      }
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.on('error', () => done(false));
    s.on('close', () => done(false));
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (/^220[ -]/m.test(got)) done(true);
      else if (got.includes('\n')) done(false);
    });
  });
}

/** How a wait for a fresh child ended: ready, exited (with the spawn error, if any), or out of time. */
export type Readiness = { kind: 'ready' } | { kind: 'exited'; reason: string } | { kind: 'timeout' };

/**
 * Polls `ready()` every `everyMs` until it holds, the child exits (or fails to spawn), or the
 * deadline (epoch ms) passes. The one readiness loop of every peer launcher.
 */
export async function waitReady(child: ChildProcess, ready: () => Promise<boolean>, deadline: number, everyMs = 100): Promise<Readiness> {
  let exited: string | null = child.exitCode !== null || child.signalCode !== null ? `exited with ${child.exitCode ?? child.signalCode}` : null;
  const onExit = () => (exited ??= `exited with ${child.exitCode ?? child.signalCode}`);
  const onError = (err: Error) => (exited ??= err.message);
  child.once('exit', onExit);
  child.once('error', onError);
  try {
    while (exited === null && Date.now() < deadline) {
      if (await ready()) return { kind: 'ready' };
      await sleep(everyMs);
    }
    return exited === null ? { kind: 'timeout' } : { kind: 'exited', reason: exited };
  } finally {
    child.off('exit', onExit);
    // A later spawn error must not become an uncaught 'error' event.
    child.off('error', onError);
    child.on('error', () => undefined);
  }
}

/**
 * Starts `command` with the config `writeConfig(port)` wrote for a free port; resolves once
 * `ready(port)` says so. The port may be taken between probing and binding: then the peer exits
 * and another port is tried (three times).
 */
export async function startPeer(opts: {
  name: string;
  command: string;
  args: readonly string[];
  writeConfig(port: number): Promise<void>;
  ready(port: number): Promise<boolean>;
  /** stdout/stderr of the peer go here (appended). */
  outPath: string;
  /** Text for the error when it does not start (log tails). */
  diagnostics(): string;
  startTimeoutMs?: number;
}): Promise<PeerProcess> {
  const deadline = Date.now() + (opts.startTimeoutMs ?? 20_000);
  let lastError = 'not started';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeLoopbackPort();
    await opts.writeConfig(port);
    const out = openSync(opts.outPath, 'a');
    const child = spawn(opts.command, [...opts.args], { stdio: ['ignore', out, out] });
    closeSync(out);
    const r = await waitReady(child, () => opts.ready(port), deadline);
    if (r.kind === 'ready') return { port, pid: child.pid as number, stop: () => stopChild(child) };
    if (r.kind === 'timeout') {
      child.kill('SIGKILL');
      await waitExit(child);
      lastError = `${opts.name} was not ready in time`;
      break;
    }
    lastError = `${opts.name} ${r.reason}`;
  }
  throw new Error(`${opts.name} did not start: ${lastError}\n${opts.diagnostics()}`);
}
