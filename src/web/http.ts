import { randomBytes } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { StallWatch, type StallProbe } from '../core/send-stall.js';

/**
 * The console's HTTP layer: path parsing that refuses traversal tricks, a small router, cookies,
 * bounded form bodies, and responses that always carry the security headers.
 */

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/**
 * The path as segments, or null when it is not a plain path: `.`/`..` segments (raw or
 * percent-encoded), encoded slashes or backslashes, NUL, bad escapes. Nothing is normalised:
 * a path that needs normalising is not one of ours (404).
 */
export function pathSegments(rawUrl: string): string[] | null {
  const q = rawUrl.indexOf('?');
  const path = q < 0 ? rawUrl : rawUrl.slice(0, q);
  if (!path.startsWith('/') || path.startsWith('//') || path.length > 2048) return null;
  const out: string[] = [];
  const parts = path.slice(1).split('/');
  for (let i = 0; i < parts.length; i++) {
    const raw = parts[i] as string;
    if (raw === '' && i === parts.length - 1) break; // trailing slash
    let seg: string;
    try {
      seg = decodeURIComponent(raw);
    } catch {
      return null;
    }
    if (seg === '' || seg === '.' || seg === '..' || /[/\\\0]/.test(seg)) return null;
    out.push(seg);
  }
  return out;
}

export function queryOf(rawUrl: string): URLSearchParams {
  const q = rawUrl.indexOf('?');
  return new URLSearchParams(q < 0 ? '' : rawUrl.slice(q + 1));
}

export function parseCookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const name = part.slice(0, eq).trim();
    if (!out.has(name)) out.set(name, part.slice(eq + 1).trim());
  }
  return out;
}

export function cookie(name: string, value: string, o: { secure: boolean; maxAgeSec?: number }): string {
  return [`${name}=${value}`, 'Path=/', 'HttpOnly', 'SameSite=Strict', ...(o.secure ? ['Secure'] : []), ...(o.maxAgeSec !== undefined ? [`Max-Age=${o.maxAgeSec}`] : [])].join('; ');
}

/** A fresh nonce per response, should a page ever need an inline script (none does today). */
export function nonce(): string {
  return randomBytes(16).toString('base64');
}

/** Every response: no framing, no sniffing, no referrer to other sites, scripts and styles from us only. */
export function securityHeaders(res: ServerResponse, o: { page: boolean }): void {
  res.setHeader('Content-Security-Policy', "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'");
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  // Not no-referrer: under it browsers send `Origin: null` on form POSTs, which would defeat the
  // same-origin check below. same-origin sends nothing to other sites, which is what matters.
  res.setHeader('Referrer-Policy', 'same-origin');
  res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
  res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
  if (o.page) res.setHeader('Cache-Control', 'no-store');
}

export function sendHtml(res: ServerResponse, status: number, html: string, headers: Record<string, string | string[]> = {}): void {
  securityHeaders(res, { page: true });
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  const body = Buffer.from(html, 'utf8');
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': body.length });
  res.end(body);
}

export function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  securityHeaders(res, { page: true });
  const body = Buffer.from(`${JSON.stringify(value)}\n`, 'utf8');
  res.writeHead(status, { ...headers, 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': body.length });
  res.end(body);
}

export function sendText(res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  securityHeaders(res, { page: true });
  const body = Buffer.from(text, 'utf8');
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', ...headers, 'Content-Length': body.length });
  res.end(body);
}

export function redirect(res: ServerResponse, location: string, headers: Record<string, string | string[]> = {}): void {
  securityHeaders(res, { page: true });
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.writeHead(303, { Location: location, 'Content-Length': 0 });
  res.end();
}

/** Reads an application/x-www-form-urlencoded body of at most `max` bytes (413 above, 415 for another type). */
export async function readForm(req: IncomingMessage, max = 16 * 1024): Promise<URLSearchParams> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') throw new HttpError(415, 'expected a form (application/x-www-form-urlencoded)');
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > max) throw new HttpError(413, 'form too large');
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    n += chunk.length;
    if (n > max) throw new HttpError(413, 'form too large');
    parts.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(parts).toString('utf8'));
}

/** True when the request announces a body (Content-Length above 0, or any Transfer-Encoding). */
export function hasBody(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const length = req.headers['content-length'];
  return length !== undefined && length !== '0';
}

/**
 * The stall timeout for request bodies (`console.timeouts.body`): a request whose body stops
 * arriving for `stallMs` is handed to `onStall`. Progress is read from the socket's byte count,
 * which moves even while nothing reads the body; bytes waiting in the request's own buffer mean the
 * console is the slow side (a scan, a disk), which never counts against the client. One timer for
 * every request watched, running only while there are some.
 */
export class BodyStallWatch extends StallWatch<IncomingMessage> {
  constructor(stallMs: number, now: () => number = Date.now) {
    super(stallMs, bodyProbe, now);
  }

  /** Watches the request until its body is complete or its connection ends; 0 turns the watch off. */
  watch(req: IncomingMessage, onStall: () => void): void {
    if (this.stallMs <= 0 || req.complete || !hasBody(req)) return;
    this.add(req, onStall);
  }
}

function bodyProbe(req: IncomingMessage): StallProbe {
  const socket = req.socket as IncomingMessage['socket'] | null;
  if (req.complete || !socket || socket.destroyed) return { done: true, waiting: false, mark: '' };
  return { done: false, waiting: req.readableLength === 0, mark: String(socket.bytesRead) };
}

/**
 * Whether a request's Host names this console: an IP literal (IPv4, bracketed IPv6) with any port,
 * or one of `names` (lower case: `localhost`, the host of console.listen, console.allowed-hosts)
 * with any port. A page that rebinds its own name to the console's address (DNS rebinding) comes
 * with its name in Host, which is none of these. A request without Host (HTTP/1.0) is allowed: no
 * browser sends one, and old health checkers do.
 */
export function hostAllowed(host: string | undefined, names: ReadonlySet<string>): boolean {
  if (host === undefined) return true;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^[\]:]+))(?::(\d{1,5}))?$/.exec(host);
  if (!m || (m[3] !== undefined && Number(m[3]) > 65535)) return false;
  if (m[1] !== undefined) return isIPv6(m[1]);
  const name = (m[2] as string).toLowerCase();
  return isIPv4(name) || names.has(name);
}

/**
 * Same-origin check for state-changing requests: the Origin header (or, without one, the
 * Referer's origin) must be this server as the client addressed it. A missing both is refused:
 * every browser sends Origin on a POST. The Host it is built from has passed hostAllowed: on its
 * own this check would take a rebound name's origin for ours.
 */
export function sameOrigin(req: IncomingMessage, tls: boolean): boolean {
  const host = req.headers.host;
  if (!host) return false;
  const expected = `${tls ? 'https' : 'http'}://${host.toLowerCase()}`;
  const origin = req.headers.origin;
  if (origin !== undefined) return origin.toLowerCase() === expected;
  const referer = req.headers.referer;
  if (referer === undefined) return false;
  try {
    return new URL(referer).origin.toLowerCase() === expected;
  } catch {
    return false;
  }
}

/** The client's address without the IPv4-mapped prefix (the rate limit's key). */
export function clientAddress(req: IncomingMessage): string {
  return (req.socket.remoteAddress ?? 'unknown').replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
}

export interface Route<C> {
  method: 'GET' | 'POST' | 'DELETE';
  /** Literal segments, or `:name` for a parameter that must match `params[name]`. */
  path: string;
  params?: Record<string, RegExp>;
  handler: (ctx: C, params: Record<string, string>) => Promise<void>;
}

/** Finds the route for a method and segments: { route, params }, 'method' (405) or null (404). */
export function match<C>(routes: readonly Route<C>[], method: string, segments: readonly string[]): { route: Route<C>; params: Record<string, string> } | 'method' | null {
  let pathMatched = false;
  for (const route of routes) {
    const want = route.path === '/' ? [] : route.path.slice(1).split('/');
    if (want.length !== segments.length) continue;
    const params: Record<string, string> = {};
    let ok = true;
    for (let i = 0; i < want.length && ok; i++) {
      const w = want[i] as string;
      const s = segments[i] as string;
      if (w.startsWith(':')) {
        const re = route.params?.[w.slice(1)];
        ok = re !== undefined && re.test(s);
        params[w.slice(1)] = s;
      } else ok = w === s;
    }
    if (!ok) continue;
    pathMatched = true;
    if (route.method === method || (method === 'HEAD' && route.method === 'GET')) return { route, params };
  }
  return pathMatched ? 'method' : null;
}
