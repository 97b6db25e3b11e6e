import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freeLoopbackPort } from '../../src/core/net.js';
import { accepts, stopChild, tail, waitExit, waitReady } from '../../tools/peers/process.js';

/** Debian's redis-server (scripts/system-deps.sh). */
export const REDIS_SERVER = '/usr/bin/redis-server';
export const redisAvailable = existsSync(REDIS_SERVER) && existsSync('/usr/bin/redis-cli');

export interface TestRedis {
  port: number;
  dir: string;
  /** Its unix socket (it listens there too). */
  socketPath: string;
  /** redis://[:password@]127.0.0.1:port/db (rediss://localhost:port/db with TLS) */
  url(db?: number): string;
  /** redis-cli against it (the password given); stdout trimmed. An independent client: the tests do not check avgate's RESP code with itself. */
  cli(...args: string[]): string;
  /** SIGKILL, as a crash: no goodbye to the clients. */
  kill(): Promise<void>;
  /** Sends a signal (SIGSTOP: a Redis that accepts but never answers; SIGCONT ends it). */
  signal(sig: NodeJS.Signals): void;
  /** Its process is alive. */
  readonly running: boolean;
  /** Starts it again on the same port (after kill or stop). */
  restart(): Promise<void>;
  /** SIGTERM (SIGKILL after 5 s) and the directory removed. */
  stop(): Promise<void>;
}

/**
 * Every redis-server this process started, killed when it exits, also when it is ended by a
 * signal (the test runner's file timeout sends SIGTERM; a SIGSTOPped one would hang around).
 */
const running = new Set<ChildProcess>();
const killAll = () => {
  for (const c of running) c.kill('SIGKILL');
};
process.once('exit', killAll);
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
  process.once(sig, () => {
    killAll();
    process.kill(process.pid, sig); // the listener is gone: the signal's default action now
  });
}

/**
 * A real redis-server on a free loopback port, nothing persisted (`--save '' --appendonly no`), in
 * its own temporary directory; `password` sets requirepass; `tls`: TLS only on that port (a
 * certificate for localhost, clients not asked for one).
 */
export async function startTestRedis(opts: { password?: string; tls?: { cert: string; key: string } } = {}): Promise<TestRedis> {
  // Missing is a failure, never a skip: scripts/system-deps.sh installs it.
  if (!redisAvailable) throw new Error(`${REDIS_SERVER} or redis-cli missing (scripts/system-deps.sh installs redis-server)`);
  const dir = await mkdtemp(join(tmpdir(), 'avgate-redis-'));
  const log = join(dir, 'redis.log');
  let child: ChildProcess | null = null;
  const args = (port: number) => [
    ...(opts.tls
      ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', opts.tls.cert, '--tls-key-file', opts.tls.key, '--tls-auth-clients', 'no']
      : ['--port', String(port)]),
    '--bind', '127.0.0.1',
    '--save', '',
    '--appendonly', 'no',
    '--dir', dir,
    '--daemonize', 'no',
    '--logfile', log,
    '--unixsocket', join(dir, 'redis.sock'),
    '--unixsocketperm', '700',
    ...(opts.password ? ['--requirepass', opts.password] : []),
  ];
  const launch = (port: number): ChildProcess => {
    const out = openSync(join(dir, 'stdout.log'), 'a');
    const c = spawn(REDIS_SERVER, args(port), { stdio: ['ignore', out, out] });
    closeSync(out);
    running.add(c);
    c.once('exit', () => running.delete(c));
    child = c;
    return c;
  };
  // A port free when probed may be taken before redis-server binds it: then it exits, another is tried.
  let port = 0;
  let reason = 'not started';
  for (let attempt = 0; attempt < 3 && port === 0; attempt++) {
    const candidate = await freeLoopbackPort();
    const r = await waitReady(launch(candidate), () => accepts(candidate), Date.now() + 10_000);
    if (r.kind === 'ready') port = candidate;
    else reason = r.kind === 'exited' ? r.reason : 'not ready within 10 s';
  }
  if (port === 0) {
    if (child) await stopChild(child);
    const diagnostics = tail(log, 2000);
    await rm(dir, { recursive: true, force: true });
    throw new Error(`redis-server did not start: ${reason}\n${diagnostics}`);
  }
  const auth = [...(opts.password ? ['-a', opts.password, '--no-auth-warning'] : []), ...(opts.tls ? ['--tls', '--cacert', opts.tls.cert] : [])];
  const host = opts.tls ? 'localhost' : '127.0.0.1';
  return {
    port,
    dir,
    socketPath: join(dir, 'redis.sock'),
    url: (db = 0) => `${opts.tls ? 'rediss' : 'redis'}://${opts.password ? `:${encodeURIComponent(opts.password)}@` : ''}${host}:${port}/${db}`,
    cli: (...a: string[]) => {
      const r = spawnSync('/usr/bin/redis-cli', ['-h', host, '-p', String(port), ...auth, ...a], { encoding: 'utf8', timeout: 10_000 });
      if (r.status !== 0) throw new Error(`redis-cli ${a[0] ?? ''} failed: ${r.stderr}`);
      return r.stdout.trim();
    },
    signal(sig: NodeJS.Signals) {
      const c = child;
      if (c && c.exitCode === null && c.signalCode === null) c.kill(sig);
    },
    get running() {
      const c = child;
      return c !== null && c.exitCode === null && c.signalCode === null;
    },
    async kill() {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      c.kill('SIGKILL');
      await waitExit(c);
    },
    async restart() {
      const c = launch(port);
      const r = await waitReady(c, () => accepts(port), Date.now() + 10_000);
      if (r.kind !== 'ready') throw new Error(`redis-server did not start again on ${port}: ${r.kind}\n${tail(log, 2000)}`);
    },
    async stop() {
      if (child) await stopChild(child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
