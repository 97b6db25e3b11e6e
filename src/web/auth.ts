import { createHash, randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { AvgateError } from '../core/errors.js';
import { readJson, writeJson } from '../core/json-file.js';

/**
 * Console authentication: users with scrypt password hashes, API tokens stored as SHA-256 only
 * with their scopes, server-side sessions with idle and absolute expiry that end when their user's
 * password changes, per-session CSRF tokens, and a login rate limit per client address. Files are
 * read again when they change, so `avgate admin ...` takes effect without a restart.
 */

function scrypt(password: string, salt: Buffer, keylen: number, o: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => scryptCb(password, salt, keylen, o, (err, key) => (err ? reject(err) : resolve(key))));
}

/** OWASP's scrypt floor (N=2^17 would cost 128 MiB per login; 2^15 is 32 MiB and ~100 ms). */
export const SCRYPT_DEFAULTS = { N: 32768, r: 8, p: 1, keylen: 64 } as const;
/** Bounds on parameters read from the file: a tampered file must not make a login cost gigabytes. */
const SCRYPT_MAX = { N: 1 << 20, r: 16, p: 4, keylen: 128 };

/** `scrypt$N$r$p$<salt b64>$<hash b64>`: the parameters travel with the hash. */
export async function hashPassword(password: string, params: { N: number; r: number; p: number; keylen: number } = SCRYPT_DEFAULTS): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(password, salt, params.keylen, { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r });
  return ['scrypt', params.N, params.r, params.p, salt.toString('base64'), key.toString('base64')].join('$');
}

function parseHash(stored: string): { N: number; r: number; p: number; salt: Buffer; key: Buffer } | null {
  const m = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(stored);
  if (!m) return null;
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const salt = Buffer.from(m[4] as string, 'base64');
  const key = Buffer.from(m[5] as string, 'base64');
  if (N < 2 || N > SCRYPT_MAX.N || (N & (N - 1)) !== 0 || r < 1 || r > SCRYPT_MAX.r || p < 1 || p > SCRYPT_MAX.p) return null;
  if (key.length < 16 || key.length > SCRYPT_MAX.keylen || salt.length < 8) return null;
  return { N, r, p, salt, key };
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const h = parseHash(stored);
  if (!h) return false;
  const key = await scrypt(password, h.salt, h.key.length, { N: h.N, r: h.r, p: h.p, maxmem: 256 * h.N * h.r });
  return timingSafeEqual(key, h.key);
}

/** Compares two strings in time independent of where they differ (lengths may leak; tokens are fixed-length). */
export function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export const USER_NAME = /^[A-Za-z0-9._@-]{1,64}$/;
export const TOKEN_NAME = USER_NAME;

interface PasswordFile {
  users: Record<string, { hash: string; changed: string }>;
}

/** A file's identity as stat sees it: a rename over it (writeJson) or an edit changes one of these. */
async function fileStamp(path: string): Promise<string> {
  const st = await stat(path).catch(() => null);
  return st ? `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}` : 'missing';
}

/**
 * A user's password record version, kept by each session: a new password (fresh salt) or a
 * removed user gives another value, so the user's sessions end at their next request.
 */
function passwordVersion(hash: string): string {
  return createHash('sha256').update(hash).digest('base64url');
}

export class PasswordStore {
  /** Verified against when the user does not exist, so both failures cost the same time. */
  private dummy: Promise<string> | null = null;
  /** The file as last read, with its stamp: read again as soon as the stamp differs. */
  private cached: { file: PasswordFile; stamp: string } | null = null;

  constructor(readonly path: string) {}

  private async load(): Promise<PasswordFile> {
    const f = await readJson<PasswordFile>(this.path, { users: {} });
    return f && typeof f.users === 'object' && f.users !== null ? f : { users: {} };
  }

  /**
   * The file for checks: one stat per call, a read only when it changed, so a password set or a
   * user removed by the CLI (another process) counts at the next request. Never cached across a
   * change of the stamp: no second of grace for a session whose password was just changed.
   */
  private async current(): Promise<PasswordFile> {
    const stamp = await fileStamp(this.path);
    if (this.cached && this.cached.stamp === stamp) return this.cached.file;
    const file = await this.load();
    this.cached = { file, stamp };
    return file;
  }

  async setPassword(user: string, password: string): Promise<void> {
    if (!USER_NAME.test(user)) throw new AvgateError('AVG_ERR_CONFIG', `user name "${user}": use letters, digits and . _ @ - (at most 64)`);
    if (password.length < 8) throw new AvgateError('AVG_ERR_CONFIG', 'the password needs at least 8 characters');
    const f = await this.load();
    f.users[user] = { hash: await hashPassword(password), changed: new Date().toISOString() };
    await writeJson(this.path, f);
    this.cached = null;
  }

  /** Removes a user (false when there is none); their sessions end at their next request. */
  async remove(user: string): Promise<boolean> {
    const f = await this.load();
    if (!Object.hasOwn(f.users, user)) return false;
    delete f.users[user];
    await writeJson(this.path, f);
    this.cached = null;
    return true;
  }

  async users(): Promise<string[]> {
    return Object.keys((await this.load()).users).sort();
  }

  /** True only for a known user with this password; unknown users cost a full scrypt too. */
  async verify(user: string, password: string): Promise<boolean> {
    return (await this.authenticate(user, password)) !== null;
  }

  /**
   * The user's password record version when the password is right, else null; unknown users cost
   * a full scrypt too. The version is the one of the record checked, for the session made from it.
   */
  async authenticate(user: string, password: string): Promise<string | null> {
    const { users } = await this.current();
    const entry = Object.hasOwn(users, user) ? users[user] : undefined;
    if (!entry || typeof entry.hash !== 'string') {
      this.dummy ??= hashPassword(randomBytes(16).toString('hex'));
      await verifyPassword(password, await this.dummy);
      return null;
    }
    return (await verifyPassword(password, entry.hash)) ? passwordVersion(entry.hash) : null;
  }

  /** The user's password record version now, or null when the user no longer exists. */
  async version(user: string): Promise<string | null> {
    const { users } = await this.current();
    const entry = Object.hasOwn(users, user) ? users[user] : undefined;
    return entry && typeof entry.hash === 'string' ? passwordVersion(entry.hash) : null;
  }
}

/**
 * What a token may do: `scan` the scanning API; `read` statistics, the quarantine's list and
 * items, /metrics; `quarantine` release, delete and download quarantined items. A token made for
 * CI scanning must not be able to release malware.
 */
export const TOKEN_SCOPES = ['scan', 'read', 'quarantine'] as const;
export type TokenScope = (typeof TOKEN_SCOPES)[number];
/** A new token's scopes unless given. */
export const DEFAULT_TOKEN_SCOPES: readonly TokenScope[] = ['scan'];

interface TokenFile {
  /** `scopes` is absent for tokens made before scopes existed: they keep every scope. */
  tokens: Record<string, { sha256: string; created: string; scopes?: string[] }>;
}

/** A verified token: its name and what it may do. */
export interface TokenGrant {
  name: string;
  scopes: ReadonlySet<TokenScope>;
}

/** The scopes of a stored token: all for one without the field (made before scopes), none for a malformed one. */
function storedScopes(t: { scopes?: unknown }): TokenScope[] {
  if (t.scopes === undefined) return [...TOKEN_SCOPES];
  if (!Array.isArray(t.scopes)) return [];
  return TOKEN_SCOPES.filter((s) => (t.scopes as unknown[]).includes(s));
}

/** Scopes as given on the command line (`scan,read`): known names only, in canonical order, at least one. */
export function parseScopes(text: string): TokenScope[] {
  const names = text.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
  const unknown = names.filter((x) => !(TOKEN_SCOPES as readonly string[]).includes(x));
  if (unknown.length > 0 || names.length === 0) {
    throw new AvgateError('AVG_ERR_CONFIG', `token scopes "${text}": use one or more of ${TOKEN_SCOPES.join(', ')}, separated by commas`);
  }
  return TOKEN_SCOPES.filter((s) => names.includes(s));
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

export class TokenStore {
  /** The file as last read for verify(), re-checked (stat) at most once per second. */
  private cached: { file: TokenFile; mtimeMs: number; size: number; checkedAt: number } | null = null;

  constructor(readonly path: string) {}

  /** The tokens for verify(): a token added or removed by the CLI counts within a second. */
  private async current(): Promise<TokenFile> {
    const now = Date.now();
    const c = this.cached;
    if (c && now - c.checkedAt < 1000) return c.file;
    const st = await stat(this.path).catch(() => null);
    const mtimeMs = st?.mtimeMs ?? -1;
    const size = st?.size ?? -1;
    if (c && c.mtimeMs === mtimeMs && c.size === size) {
      c.checkedAt = now;
      return c.file;
    }
    const file = await this.load();
    this.cached = { file, mtimeMs, size, checkedAt: now };
    return file;
  }

  private async load(): Promise<TokenFile> {
    const f = await readJson<TokenFile>(this.path, { tokens: {} });
    return f && typeof f.tokens === 'object' && f.tokens !== null ? f : { tokens: {} };
  }

  /** Creates a token with these scopes (default: scan only); the plaintext is returned once and never stored. */
  async add(name: string, scopes: readonly TokenScope[] = DEFAULT_TOKEN_SCOPES): Promise<string> {
    if (!TOKEN_NAME.test(name)) throw new AvgateError('AVG_ERR_CONFIG', `token name "${name}": use letters, digits and . _ @ - (at most 64)`);
    const wanted = TOKEN_SCOPES.filter((s) => scopes.includes(s));
    if (wanted.length === 0) throw new AvgateError('AVG_ERR_CONFIG', `a token needs at least one scope (${TOKEN_SCOPES.join(', ')})`);
    const f = await this.load();
    if (Object.hasOwn(f.tokens, name)) throw new AvgateError('AVG_ERR_CONFIG', `a token named "${name}" exists; remove it first`);
    const token = `avg_${randomBytes(32).toString('base64url')}`;
    f.tokens[name] = { sha256: sha256(token), created: new Date().toISOString(), scopes: wanted };
    await writeJson(this.path, f);
    this.cached = null;
    return token;
  }

  /** Names, creation dates and scopes; `scopes` is null for a token made before scopes (it has all). */
  async list(): Promise<Array<{ name: string; created: string; scopes: TokenScope[] | null }>> {
    return Object.entries((await this.load()).tokens)
      .map(([name, t]) => ({ name, created: t.created, scopes: t.scopes === undefined ? null : storedScopes(t) }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  async remove(name: string): Promise<boolean> {
    const f = await this.load();
    if (!Object.hasOwn(f.tokens, name)) return false;
    delete f.tokens[name];
    await writeJson(this.path, f);
    this.cached = null;
    return true;
  }

  /** The token's name, or null. */
  async verify(token: string): Promise<string | null> {
    return (await this.grant(token))?.name ?? null;
  }

  /** The token's name and scopes, or null. Every stored hash is compared (no early exit on a match). */
  async grant(token: string): Promise<TokenGrant | null> {
    if (token.length === 0 || token.length > 256) return null;
    const h = sha256(token);
    let found: TokenGrant | null = null;
    for (const [name, t] of Object.entries((await this.current()).tokens)) {
      if (typeof t.sha256 === 'string' && safeEqual(h, t.sha256) && found === null) found = { name, scopes: new Set(storedScopes(t)) };
    }
    return found;
  }
}

export interface Session {
  id: string;
  user: string;
  /**
   * The user's password record version at login (PasswordStore.version): a request whose user's
   * version differs now (a new password, a removed user) ends the session.
   */
  passwordVersion: string;
  /** Sent as a hidden field in every form, checked on every POST. */
  csrf: string;
  createdAt: number;
  lastSeenAt: number;
}

/** Server-side sessions: the cookie carries only a random id (32 bytes). */
export class SessionTable {
  private readonly sessions = new Map<string, Session>();

  constructor(
    private readonly idleMs: number,
    private readonly maxAgeMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  create(user: string, passwordVersion: string): Session {
    this.sweep();
    const t = this.now();
    const s: Session = { id: randomBytes(32).toString('base64url'), user, passwordVersion, csrf: randomBytes(32).toString('base64url'), createdAt: t, lastSeenAt: t };
    this.sessions.set(s.id, s);
    return s;
  }

  /** The live session for a cookie value (touching it), or null when unknown or expired. */
  get(id: string | undefined): Session | null {
    if (!id) return null;
    const s = this.sessions.get(id);
    if (!s) return null;
    const t = this.now();
    if (t - s.lastSeenAt > this.idleMs || t - s.createdAt > this.maxAgeMs) {
      this.sessions.delete(id);
      return null;
    }
    s.lastSeenAt = t;
    return s;
  }

  destroy(id: string): void {
    this.sessions.delete(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  private sweep(): void {
    const t = this.now();
    for (const [id, s] of this.sessions) if (t - s.lastSeenAt > this.idleMs || t - s.createdAt > this.maxAgeMs) this.sessions.delete(id);
  }
}

/**
 * One password check in flight, holding one of its client's tries until it is settled. Only the
 * first settle counts; `release` gives the try back (the check never happened, e.g. a bad CSRF token).
 */
export interface LoginAttempt {
  failed(): void;
  succeeded(): void;
  release(): void;
}

/**
 * Failed logins per client address in a sliding window (brute force and password spraying).
 * Checks still running count as failures until they are settled: a burst of parallel logins
 * cannot all get past the limit before the first scrypt check has ended.
 */
export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();
  /** Password checks in flight per address. */
  private readonly pending = new Map<string, number>();

  constructor(
    private readonly maxFailures: number,
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  private recent(ip: string): number[] {
    const t = this.now();
    const list = (this.failures.get(ip) ?? []).filter((x) => t - x < this.windowMs);
    if (list.length === 0) this.failures.delete(ip);
    else this.failures.set(ip, list);
    return list;
  }

  /** Seconds until the next attempt is allowed, or 0 when it is allowed now. */
  retryAfter(ip: string): number {
    const list = this.recent(ip);
    if (list.length + (this.pending.get(ip) ?? 0) < this.maxFailures) return 0;
    // Over the limit only through checks in flight: they end within a second or so.
    if (list.length === 0) return 1;
    return Math.max(1, Math.ceil(((list[0] as number) + this.windowMs - this.now()) / 1000));
  }

  /**
   * Takes a try for a password check, or null when the client is over the limit (then see
   * retryAfter). Check and reservation happen together, with no await between them.
   */
  begin(ip: string): LoginAttempt | null {
    if (this.retryAfter(ip) > 0) return null;
    this.pending.set(ip, (this.pending.get(ip) ?? 0) + 1);
    let open = true;
    const settle = (then: () => void) => {
      if (!open) return;
      open = false;
      const n = (this.pending.get(ip) ?? 1) - 1;
      if (n > 0) this.pending.set(ip, n);
      else this.pending.delete(ip);
      then();
    };
    return {
      failed: () => settle(() => this.fail(ip)),
      succeeded: () => settle(() => this.succeed(ip)),
      release: () => settle(() => undefined),
    };
  }

  fail(ip: string): void {
    if (this.failures.size > 100_000) this.failures.clear(); // bounded memory under a spray from many addresses
    this.failures.set(ip, [...this.recent(ip), this.now()]);
  }

  /** A right password: the client's failures are forgotten (checks still in flight keep their tries). */
  succeed(ip: string): void {
    this.failures.delete(ip);
  }
}
