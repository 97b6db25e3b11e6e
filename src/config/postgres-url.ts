/**
 * `stats.postgres.url`: `postgres://user:password@host:port/database`, read here once so that a
 * malformed URL is a config error with its line, and the store connects to exactly what was
 * checked. The host may be a unix-socket directory: `postgres://user@/db?host=/run/postgresql`,
 * or percent-encoded in the host part (`postgres://user@%2Frun%2Fpostgresql/db`).
 */
export type SslMode = 'disable' | 'require' | 'verify-full';

export interface PostgresTarget {
  /** Host name, IP address, or a unix-socket directory (starts with `/`). */
  host: string;
  port: number;
  user: string | null;
  password: string | null;
  database: string;
  /** disable: plain TCP; require: TLS without a certificate check; verify-full: TLS, certificate and host name checked. */
  sslMode: SslMode;
  /** CA file for verify-full (PEM); null: the system's CAs. */
  sslRootCert: string | null;
}

const PARAMS = new Set(['host', 'sslmode', 'sslrootcert']);
const SSL_MODES: readonly SslMode[] = ['disable', 'require', 'verify-full'];
const NO_HOST = 'avgate-no-host.invalid';
export const POSTGRES_URL_FORM = 'postgres://user:password@host:port/database';

/** The target a URL names, or why it is refused (the password never appears in the reason). */
export function parsePostgresUrl(text: string): { ok: true; target: PostgresTarget } | { ok: false; error: string } {
  const fail = (why: string) => ({ ok: false as const, error: `${why} (expected ${POSTGRES_URL_FORM}, or ?host=/socket/dir)` });
  const m = /^(postgres(?:ql)?):\/\//i.exec(text);
  if (!m) return fail('not a postgres:// URL');
  let url: URL;
  try {
    // Credentials before an empty host (a unix socket given by ?host=) are not a URL to WHATWG.
    url = new URL(text.replace(/^([^/]*\/\/[^/?#]*@)(?=[:/?#]|$)/, `$1${NO_HOST}`));
  } catch {
    return fail('malformed URL');
  }
  if (url.hash) return fail('the URL has a #fragment');
  const params = new Map<string, string>();
  for (const [k, v] of url.searchParams) {
    if (!PARAMS.has(k)) return fail(`unknown parameter "${k.slice(0, 40)}" (known: ${[...PARAMS].join(', ')})`);
    if (params.has(k)) return fail(`parameter "${k}" given twice`);
    params.set(k, v);
  }
  const decode = (s: string): string | null => {
    try {
      return decodeURIComponent(s);
    } catch {
      return null;
    }
  };
  const urlHost = url.hostname === NO_HOST ? '' : (decode(url.hostname) ?? '');
  const host = (params.get('host') ?? urlHost).replace(/^\[(.*)\]$/, '$1');
  if (!host) return fail('the URL names no host');
  const port = url.port === '' ? 5432 : Number(url.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return fail('the port must be 1 to 65535');
  const database = decode(url.pathname.replace(/^\//, ''));
  if (database === null) return fail('the database name is not valid percent-encoding');
  if (!database || database.includes('/')) return fail('the URL names no database');
  const user = url.username ? decode(url.username) : null;
  const password = url.password ? decode(url.password) : null;
  if ((url.username && user === null) || (url.password && password === null)) return fail('user or password is not valid percent-encoding');
  const sslMode = (params.get('sslmode') ?? 'disable') as SslMode;
  if (!SSL_MODES.includes(sslMode)) return fail(`sslmode must be one of ${SSL_MODES.join(', ')}`);
  const sslRootCert = params.get('sslrootcert') ?? null;
  if (sslRootCert !== null && sslMode !== 'verify-full') return fail('sslrootcert needs sslmode=verify-full');
  return { ok: true, target: { host, port, user, password, database, sslMode, sslRootCert } };
}

/** The target for logs and `config check`: no password. */
export function describePostgres(t: PostgresTarget): string {
  const where = t.host.startsWith('/') ? `${t.host} (unix socket)` : t.host.includes(':') ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`;
  return `${t.user ? `${t.user}@` : ''}${where}/${t.database}`;
}
