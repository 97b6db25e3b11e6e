/**
 * Header hygiene of the HTTP proxy: what must not be forwarded (hop-by-hop, RFC 9110 §7.6.1), what
 * is refused outright (request smuggling: a message two parsers could frame differently), and the
 * target of a proxy request. No sockets here.
 */

/** Hop-by-hop headers: they describe one connection and are never forwarded (plus those Connection names). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** A header value or name with CR, LF or NUL: it could end a header early downstream. */
const UNSAFE = /[\r\n\0]/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Pairs from node's rawHeaders (names as sent). */
export function headerPairs(raw: readonly string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i + 1 < raw.length; i += 2) out.push([raw[i] as string, raw[i + 1] as string]);
  return out;
}

/**
 * Why a request head must be refused with 400, or null. node's parser already refuses most
 * smuggling shapes (CL with TE, bad chunk sizes, bare CR/LF); these checks do not rely on it:
 * - several Content-Length headers (or a list in one), or one that is not a plain number;
 * - Transfer-Encoding other than exactly `chunked` (a proxy that forwards `gzip, chunked` or
 *   `chunked, identity` invites a next hop to frame the body differently);
 * - Content-Length together with Transfer-Encoding (RFC 9112 §6.3: a sender must not, and an
 *   intermediary must not forward such a message as it is);
 * - several Host headers; CR/LF/NUL in any name or value; names that are not tokens.
 */
export function requestHeadProblem(pairs: ReadonlyArray<readonly [string, string]>): string | null {
  let cl = 0;
  let te = 0;
  let host = 0;
  for (const [name, value] of pairs) {
    if (!TOKEN.test(name)) return 'invalid header name';
    if (UNSAFE.test(value)) return 'CR, LF or NUL in a header value';
    const n = name.toLowerCase();
    if (n === 'content-length') {
      cl++;
      if (!/^\d{1,15}$/.test(value.trim())) return 'invalid Content-Length';
    } else if (n === 'transfer-encoding') {
      te++;
      if (value.trim().toLowerCase() !== 'chunked') return 'unsupported Transfer-Encoding';
    } else if (n === 'host') {
      host++;
    }
  }
  if (cl > 1) return 'several Content-Length headers';
  if (te > 1) return 'several Transfer-Encoding headers';
  if (cl > 0 && te > 0) return 'Content-Length together with Transfer-Encoding';
  if (host > 1) return 'several Host headers';
  return null;
}

/** Names the Connection header lists (they are hop-by-hop for this message too). */
function connectionListed(pairs: ReadonlyArray<readonly [string, string]>): Set<string> {
  const out = new Set<string>();
  for (const [name, value] of pairs) {
    if (name.toLowerCase() !== 'connection' && name.toLowerCase() !== 'proxy-connection') continue;
    for (const t of value.split(',')) {
      const v = t.trim().toLowerCase();
      if (v) out.add(v);
    }
  }
  return out;
}

/**
 * The end-to-end headers of a message, for forwarding: hop-by-hop and Connection-listed headers
 * dropped, `drop` (lower-case) dropped too, a Via entry appended (RFC 9110 §7.6.3).
 */
export function forwardHeaders(
  pairs: ReadonlyArray<readonly [string, string]>,
  via: string,
  httpVersion: string,
  drop: readonly string[] = [],
): Array<[string, string]> {
  const listed = connectionListed(pairs);
  const out: Array<[string, string]> = [];
  let viaSeen: string | null = null;
  for (const [name, value] of pairs) {
    const n = name.toLowerCase();
    if (HOP_BY_HOP.has(n) || listed.has(n) || drop.includes(n)) continue;
    if (n === 'via') {
      viaSeen = viaSeen === null ? value : `${viaSeen}, ${value}`;
      continue;
    }
    out.push([name, value]);
  }
  const mine = `${httpVersion === '1.0' ? '1.0' : '1.1'} ${via}`;
  out.push(['Via', viaSeen === null ? mine : `${viaSeen}, ${mine}`]);
  return out;
}

/**
 * A client's Accept-Encoding cut to the codings the proxy can have scanned (RFC 9110 12.5.3 list
 * with q-values kept); null when none is left (the origin then sends identity). An origin that
 * answered in a coding nobody decodes (zstd, for one) would have its body scanned still packed.
 */
export function scannableAcceptEncoding(value: string, codings: ReadonlySet<string>): string | null {
  const kept = value
    .split(',')
    .map((s) => s.trim())
    .filter((item) => item !== '' && codings.has((item.split(';')[0] as string).trim().toLowerCase()));
  return kept.length === 0 ? null : kept.join(', ');
}

/** True when our own Via entry is already in the message (a request looping through this proxy). */
export function viaLoops(pairs: ReadonlyArray<readonly [string, string]>, via: string): boolean {
  for (const [name, value] of pairs) {
    if (name.toLowerCase() !== 'via') continue;
    for (const entry of value.split(',')) {
      const parts = entry.trim().split(/\s+/);
      if (parts[1] === via) return true;
    }
  }
  return false;
}

export function headerValue(pairs: ReadonlyArray<readonly [string, string]>, name: string): string | null {
  const n = name.toLowerCase();
  for (const [k, v] of pairs) if (k.toLowerCase() === n) return v;
  return null;
}

/** The target of a proxy request: absolute-form `http://host[:port]/path` only. */
export interface ProxyTarget {
  host: string;
  port: number;
  /** Host header value (host[:port] as in the URL). */
  authority: string;
  /** origin-form path and query for the origin. */
  path: string;
  /** The URL as normalised (for logs, doc-ACL and pages). */
  url: string;
}

export function parseProxyTarget(raw: string): ProxyTarget | null {
  // The authority as written must be a plain host[:port]: the URL parser would otherwise make
  // something of `http:///x`, `http://a\b/` or `http://%61/`, which another parser reads apart.
  const m = /^http:\/\/([^/?#]*)/i.exec(raw);
  if (!m || !/^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$/.test(m[1] as string)) return null;
  // An explicit port must be one a connection can go to: `:0` would be dialled as port 80.
  const explicitPort = /:(\d{1,5})$/.exec(m[1] as string);
  if (explicitPort && (Number(explicitPort[1]) < 1 || Number(explicitPort[1]) > 65535)) return null;
  if (UNSAFE.test(raw) || /[\s\\]/.test(raw)) return null;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return null;
  }
  if (u.protocol !== 'http:' || u.hostname === '' || u.username !== '' || u.password !== '') return null;
  const port = u.port === '' ? 80 : Number(u.port);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  return { host, port, authority: u.host, path: `${u.pathname}${u.search}`, url: u.href };
}

/** Why parseProxyTarget refused a request target, in words for the 400 page. */
export function proxyTargetProblem(raw: string): string {
  if (raw.startsWith('/') || raw === '*') return 'this is a proxy: a request needs an absolute http:// URL (a request for a path, as to a web server, is not served here)';
  if (/^https:\/\//i.test(raw)) return 'https:// URLs go through a CONNECT tunnel (the HTTPS proxy setting of the client), not as a plain request';
  if (/^[a-z][a-z0-9+.-]*:/i.test(raw) && !/^http:/i.test(raw)) return `${raw.slice(0, raw.indexOf(':'))}: URLs are not proxied: only http:// (and https:// through CONNECT)`;
  if (/^http:\/\/[^/?#]*@/i.test(raw)) return 'a URL with a user name or password is refused';
  return 'the URL is malformed (host, port, or characters a server could read otherwise)';
}

/** `host:port` of a CONNECT request (authority-form), or null. */
export function parseConnectTarget(raw: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(raw);
  if (!m) return null;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return null;
  return { host: (m[1] ?? m[2]) as string, port };
}

/** A header-safe rendering of a text (for X-Avgate-Verdict). */
export function headerSafe(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?').slice(0, 512);
}

/** Whether a response to this request and with this status has no body (RFC 9112 §6.3). */
export function responseHasNoBody(method: string, status: number): boolean {
  return method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200);
}

/** One byte range a client asked for (RFC 9110 §14.1.2): `first-last`, `first-`, or the last `suffix` bytes. */
export type ByteRange = { first: number; last: number | null } | { suffix: number };

/**
 * The byte range of a `Range` header value: one range, `several` for a list of them, null when
 * the value is no valid `bytes=` range set (such a header is ignored, RFC 9110 §14.2).
 */
export function parseRange(value: string): ByteRange | 'several' | null {
  const m = /^\s*bytes\s*=(.*)$/is.exec(value);
  if (!m) return null;
  // Empty list elements are allowed (RFC 9110 §5.6.1) and count for nothing.
  const specs = (m[1] as string)
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  const ranges: ByteRange[] = [];
  for (const spec of specs) {
    const suffix = /^-(\d+)$/.exec(spec);
    if (suffix) {
      ranges.push({ suffix: Number(suffix[1]) });
      continue;
    }
    const r = /^(\d+)-(\d*)$/.exec(spec);
    if (!r) return null;
    const first = Number(r[1]);
    const last = r[2] === '' ? null : Number(r[2]);
    // last < first makes the whole set invalid.
    if (last !== null && last < first) return null;
    ranges.push({ first, last });
  }
  if (ranges.length === 0) return null;
  return ranges.length > 1 ? 'several' : (ranges[0] as ByteRange);
}

/**
 * Where a range lies in a representation of `total` bytes: `start` and exclusive `end`, or null
 * when it is not satisfiable (starts at or past the end, a zero suffix, an empty representation).
 */
export function rangeWithin(r: ByteRange, total: number): { start: number; end: number } | null {
  if (total <= 0) return null;
  if ('suffix' in r) return r.suffix === 0 ? null : { start: Math.max(0, total - r.suffix), end: total };
  if (r.first >= total) return null;
  return { start: r.first, end: r.last === null ? total : Math.min(r.last, total - 1) + 1 };
}

/**
 * Whether an `If-Range` condition holds for a response with these validators (RFC 9110 §13.1.5):
 * absent; an entity tag equal to a strong `ETag` (a weak tag on either side never matches); or a
 * date exactly equal to `Last-Modified`.
 */
export function ifRangeHolds(ifRange: string | null, etag: string | null, lastModified: string | null): boolean {
  if (ifRange === null) return true;
  const cond = ifRange.trim();
  if (cond.startsWith('"') || cond.startsWith('W/')) {
    return etag !== null && !cond.startsWith('W/') && !etag.trim().startsWith('W/') && cond === etag.trim();
  }
  return lastModified !== null && cond === lastModified.trim();
}
