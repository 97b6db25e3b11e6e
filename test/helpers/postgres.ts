/**
 * A throwaway PostgreSQL cluster for tests: Debian's binaries (package postgresql), a data
 * directory in a temp dir owned by the `postgres` system user (PostgreSQL refuses to run as root),
 * the server on a free loopback port with its unix socket in the same temp dir, fsync off and
 * small buffers so it starts in a second or two. The system cluster is never touched. Stopped and
 * removed by `destroy()`, and killed at process exit if a test never got there.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, mkdtempSync, openSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { freeLoopbackPort } from '../../src/core/net.js';
import { systemUser, tail, waitExit, waitReady } from '../../tools/peers/process.js';

/** Debian's binaries of the newest PostgreSQL installed (15 on bookworm). */
export const PG_BIN = pgBin();

function pgBin(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)).map(Number).sort((a, b) => b - a) : [];
  return join(root, String(versions[0] ?? 15), 'bin');
}
/** The role avgate connects as, over TCP with a password (scram-sha-256). */
export const PG_ROLE = 'avgate';
export const PG_PASSWORD = 'pg-secret-1';

/** Why PostgreSQL tests cannot run here, or false (startTestPostgres throws it: the tests fail, never skip). */
export function postgresMissing(): string | false {
  if (!existsSync(join(PG_BIN, 'postgres'))) return `${PG_BIN}/postgres missing (scripts/system-deps.sh installs postgresql)`;
  if (process.getuid?.() !== 0) return 'the test cluster runs as the postgres system user, which needs root';
  if (!systemUser('postgres')) return 'no postgres system user';
  return false;
}

export interface TestPostgres {
  port: number;
  /** The directory of the unix socket. */
  socketDir: string;
  /** The server's self-signed certificate (CN and IP SAN 127.0.0.1): the CA for sslmode=verify-full. The server takes TLS and plain connections. */
  tlsCa: string;
  /** postgres://avgate:PASSWORD@127.0.0.1:PORT/DB */
  url(db: string): string;
  /** A new database owned by the avgate role; `icu`: an ICU collation (e.g. en-US) instead of C. */
  createDatabase(name: string, opts?: { icu?: string }): Promise<string>;
  /** A query as the superuser over the unix socket. */
  query<R extends pg.QueryResultRow = Record<string, unknown>>(db: string, sql: string, params?: unknown[]): Promise<R[]>;
  /** Fast shutdown (connections are cut); the data stays. */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /** Stops it and removes the temp dir. */
  destroy(): Promise<void>;
}

const live = new Set<number>();
let exitHook = false;

function asPostgres(user: { uid: number; gid: number }) {
  return { uid: user.uid, gid: user.gid, env: { PATH: '/usr/bin:/bin', LC_ALL: 'C.UTF-8' } };
}

export async function startTestPostgres(): Promise<TestPostgres> {
  const missing = postgresMissing();
  if (missing) throw new Error(`PostgreSQL tests cannot run: ${missing}`);
  const user = systemUser('postgres');
  if (!user) throw new Error('no postgres system user');
  const dir = mkdtempSync(join(tmpdir(), 'avgate-pg-'));
  chownSync(dir, user.uid, user.gid);
  const data = join(dir, 'data');
  const logPath = join(dir, 'server.log');
  // TLS for sslmode tests: a self-signed certificate for 127.0.0.1, the key readable by postgres only.
  const tlsCert = join(dir, 'server.crt');
  const tlsKey = join(dir, 'server.key');
  const cert = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', tlsKey, '-out', tlsCert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8' });
  if (cert.status !== 0) throw new Error(`openssl failed: ${cert.stderr || cert.error?.message}`);
  chownSync(tlsKey, user.uid, user.gid);
  chmodSync(tlsKey, 0o600);
  chownSync(tlsCert, user.uid, user.gid);
  chmodSync(tlsCert, 0o644);
  const init = spawnSync(
    join(PG_BIN, 'initdb'),
    ['-D', data, '-U', 'postgres', '--auth-local=trust', '--auth-host=scram-sha-256', '--no-sync', '--no-instructions', '-E', 'UTF8', '--locale=C.UTF-8'],
    { ...asPostgres(user), encoding: 'utf8' },
  );
  if (init.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`initdb failed: ${init.stderr || init.error?.message}`);
  }
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const pid of live) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    });
  }
  let child: ChildProcess | null = null;
  let port = 0;

  const superClient = async (db: string) => {
    const c = new pg.Client({ host: dir, port, user: 'postgres', database: db, connectionTimeoutMillis: 2000 });
    c.on('error', () => undefined);
    await c.connect();
    return c;
  };
  const query = async <R extends pg.QueryResultRow>(db: string, sql: string, params: unknown[] = []): Promise<R[]> => {
    const c = await superClient(db);
    try {
      return (await c.query<R>(sql, params)).rows;
    } finally {
      await c.end();
    }
  };
  const launch = async (fixedPort: number | null) => {
    const deadline = Date.now() + 20_000;
    for (let attempt = 0; attempt < 3; attempt++) {
      port = fixedPort ?? (await freeLoopbackPort());
      const out = openSync(logPath, 'a');
      const p = spawn(
        join(PG_BIN, 'postgres'),
        ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'synchronous_commit=off',
          '-c', 'full_page_writes=off', '-c', 'shared_buffers=16MB', '-c', 'max_connections=60', '-c', 'logging_collector=off',
          '-c', 'ssl=on', '-c', `ssl_cert_file=${tlsCert}`, '-c', `ssl_key_file=${tlsKey}`],
        { ...asPostgres(user), stdio: ['ignore', out, out] },
      );
      closeSync(out);
      const ready = await waitReady(p, async () => {
        try {
          await query(`postgres`, 'SELECT 1');
          return true;
        } catch {
          return false;
        }
      }, deadline, 50);
      if (ready.kind === 'ready') {
        child = p;
        live.add(p.pid as number);
        return;
      }
      p.kill('SIGKILL');
      await waitExit(p);
      if (ready.kind === 'timeout' || fixedPort !== null) break;
    }
    throw new Error(`postgres did not start\n${tail(logPath, 3000)}`);
  };
  const stop = async () => {
    const p = child;
    child = null;
    if (!p) return;
    // SIGINT: fast shutdown, clients are disconnected (SIGTERM would wait for them).
    p.kill('SIGINT');
    const grace = new AbortController();
    const gone = await Promise.race([waitExit(p).then(() => true), sleep(10_000, false, { signal: grace.signal }).catch(() => false)]);
    grace.abort();
    if (!gone) {
      p.kill('SIGKILL');
      await waitExit(p);
    }
    live.delete(p.pid as number);
  };

  try {
    await launch(null);
    await query('postgres', `CREATE ROLE ${PG_ROLE} LOGIN PASSWORD '${PG_PASSWORD}'`);
  } catch (err) {
    await stop();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const url = (db: string) => `postgres://${PG_ROLE}:${PG_PASSWORD}@127.0.0.1:${port}/${db}`;
  return {
    get port() {
      return port;
    },
    socketDir: dir,
    tlsCa: tlsCert,
    url,
    async createDatabase(name, opts = {}) {
      const icu = opts.icu ? ` TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '${opts.icu}' LOCALE 'C.UTF-8'` : '';
      await query('postgres', `CREATE DATABASE ${name} OWNER ${PG_ROLE}${icu}`);
      return url(name);
    },
    query,
    stop,
    start: () => launch(port),
    async destroy() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
