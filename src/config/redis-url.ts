/** Where the shared verdict cache level lives, from `cache.redis.url`. */
export interface RedisTarget {
  address: { host: string; port: number } | { path: string };
  tls: boolean;
  /** ACL user (Redis 6+); null = the default user. */
  username: string | null;
  /** null = no AUTH. */
  password: string | null;
  /** SELECTed after connecting; 0 = none sent. */
  db: number;
}

export const REDIS_URL_FORMS = 'redis://[user:password@]host[:port][/db], rediss://… (TLS) or unix:///path/to/redis.sock[?db=N&user=…&password=…]';

const DEFAULT_PORT = 6379;
const MAX_DB = 2 ** 31 - 1;

/**
 * Parses a Redis URL: `redis://`, `rediss://` (TLS) or `unix://` (a socket path, its user,
 * password and db in the query, as redis-py writes them). Returns the reason when it is not one;
 * the reason never repeats the URL, which may hold a password.
 */
export function parseRedisUrl(text: string): RedisTarget | { error: string } {
  let u: URL;
  try {
    u = new URL(text.trim());
  } catch {
    return { error: `not a URL; expected ${REDIS_URL_FORMS}` };
  }
  if (u.hash !== '') return { error: 'a Redis URL has no #fragment' };
  const target = u.protocol === 'unix:' ? unixTarget(u) : networkTarget(u);
  // AUTH takes a user only with a password (Redis 6 ACL); a lone user would be dropped silently.
  if (!('error' in target) && target.username !== null && target.password === null) return { error: 'a user needs a password' };
  return target;
}

function networkTarget(u: URL): RedisTarget | { error: string } {
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') return { error: `unknown scheme "${u.protocol}"; expected ${REDIS_URL_FORMS}` };
  if (u.hostname === '') return { error: 'no host' };
  if (u.search !== '') return { error: 'redis:// and rediss:// URLs take no query; the database number is the path (/2)' };
  const port = u.port === '' ? DEFAULT_PORT : Number(u.port);
  if (!(port >= 1 && port <= 65535)) return { error: 'port out of range' };
  const path = u.pathname === '' || u.pathname === '/' ? null : u.pathname.slice(1);
  const db = path === null ? 0 : dbNumber(path);
  if (db === null) return { error: 'the path must be a database number (/0 … /15 in a default Redis)' };
  return {
    // An IPv6 literal comes bracketed from URL; net.connect wants it bare.
    address: { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port },
    tls: u.protocol === 'rediss:',
    username: u.username === '' ? null : decodeURIComponent(u.username),
    password: u.password === '' ? null : decodeURIComponent(u.password),
    db,
  };
}

function unixTarget(u: URL): RedisTarget | { error: string } {
  if (u.host !== '' || u.username !== '' || u.password !== '') {
    return { error: 'unix:///path/to/redis.sock takes no host; user and password go in the query (?user=…&password=…)' };
  }
  if (!u.pathname.startsWith('/') || u.pathname.length < 2) return { error: 'unix: needs an absolute socket path' };
  const allowed = new Set(['db', 'user', 'password']);
  for (const k of u.searchParams.keys()) if (!allowed.has(k)) return { error: `unknown query parameter "${k}" (db, user, password)` };
  const dbText = u.searchParams.get('db');
  const db = dbText === null ? 0 : dbNumber(dbText);
  if (db === null) return { error: 'db must be a database number' };
  const user = u.searchParams.get('user');
  const password = u.searchParams.get('password');
  return {
    address: { path: decodeURIComponent(u.pathname) },
    tls: false,
    username: user === null || user === '' ? null : user,
    password: password === null || password === '' ? null : password,
    db,
  };
}

function dbNumber(text: string): number | null {
  if (!/^\d{1,10}$/.test(text)) return null;
  const n = Number(text);
  return n <= MAX_DB ? n : null;
}
