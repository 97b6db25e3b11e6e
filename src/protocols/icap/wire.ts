/**
 * ICAP (RFC 3507) message format for the server side: parsing request heads, the Encapsulated
 * header and the encapsulated HTTP header blocks; formatting responses and chunks. No sockets.
 */

export const ICAP_METHODS = ['OPTIONS', 'REQMOD', 'RESPMOD'] as const;
export type IcapMethod = (typeof ICAP_METHODS)[number];

/** An error that maps to an ICAP status; the connection is closed after answering it. */
export class IcapProtocolError extends Error {
  constructor(
    readonly status: 400 | 404 | 405 | 408 | 413 | 500 | 501 | 503 | 505,
    message: string,
  ) {
    super(message);
  }
}

export const STATUS_TEXT: Record<number, string> = {
  100: 'Continue',
  200: 'OK',
  204: 'No Content',
  400: 'Bad Request',
  404: 'ICAP Service Not Found',
  405: 'Method Not Allowed For Service',
  408: 'Request Timeout',
  413: 'Request Entity Too Large',
  500: 'Server Error',
  501: 'Method Not Implemented',
  503: 'Service Overloaded',
  505: 'ICAP Version Not Supported',
};

export class Headers {
  /** Lower-case name → values in order. */
  private readonly map = new Map<string, string[]>();
  readonly order: Array<[string, string]> = [];

  add(name: string, value: string): void {
    const key = name.toLowerCase();
    const list = this.map.get(key);
    if (list) list.push(value);
    else this.map.set(key, [value]);
    this.order.push([name, value]);
  }

  get(name: string): string | undefined {
    return this.map.get(name.toLowerCase())?.[0];
  }

  all(name: string): string[] {
    return this.map.get(name.toLowerCase()) ?? [];
  }

  has(name: string): boolean {
    return this.map.has(name.toLowerCase());
  }
}

// RFC 7230 token characters for header names and methods.
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Parses `Name: value` lines. Obsolete line folding is refused (it is how header injection
 * slips through), as are CR or NUL inside values and names that are not tokens.
 */
export function parseHeaderLines(lines: string[], what: string): Headers {
  const h = new Headers();
  for (const line of lines) {
    if (line.length === 0) continue;
    if (line[0] === ' ' || line[0] === '\t') throw new IcapProtocolError(400, `${what}: folded header line`);
    const colon = line.indexOf(':');
    if (colon <= 0) throw new IcapProtocolError(400, `${what}: header line without a name`);
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) throw new IcapProtocolError(400, `${what}: invalid header name`);
    const value = line.slice(colon + 1).trim();
    if (/[\r\n\0]/.test(value)) throw new IcapProtocolError(400, `${what}: invalid character in header ${name}`);
    h.add(name, value);
  }
  return h;
}

export interface IcapRequestHead {
  method: IcapMethod;
  uri: string;
  /** Service name: the first path segment of the URI. */
  service: string;
  query: string;
  headers: Headers;
  encapsulated: EncapsulatedPart[] | null;
  preview: number | null;
  allow204: boolean;
  allow206: boolean;
  connectionClose: boolean;
}

export interface RequestLimits {
  maxRequestLine: number;
}

/** Parses the head of an ICAP request (the block through the empty line, latin1-decoded). */
export function parseRequestHead(block: Buffer, limits: RequestLimits): IcapRequestHead {
  const text = block.toString('latin1');
  const lines = text.split('\r\n');
  const requestLine = lines[0] ?? '';
  if (requestLine.length > limits.maxRequestLine) throw new IcapProtocolError(400, 'request line too long');
  // A bare CR or LF inside a line is how one message hides in another: refuse it.
  if (lines.some((l) => /[\r\n]/.test(l))) throw new IcapProtocolError(400, 'bare CR or LF in request head');
  const parts = requestLine.split(' ');
  if (parts.length !== 3) throw new IcapProtocolError(400, 'malformed request line');
  const [method, uri, version] = parts as [string, string, string];
  if (!/^ICAP\/\d+\.\d+$/.test(version)) throw new IcapProtocolError(400, 'malformed ICAP version');
  if (version !== 'ICAP/1.0') throw new IcapProtocolError(505, `unsupported version ${version}`);
  if (!TOKEN.test(method)) throw new IcapProtocolError(400, 'malformed method');
  if (!(ICAP_METHODS as readonly string[]).includes(method)) throw new IcapProtocolError(501, `method ${method} not implemented`);
  const m = /^icaps?:\/\/([^/?#\s]+)(\/[^?#\s]*)?(\?[^#\s]*)?$/i.exec(uri);
  if (!m) throw new IcapProtocolError(400, 'malformed ICAP URI');
  const path = m[2] ?? '/';
  const service = decodeURIComponentSafe(path.replace(/^\/+/, '').split('/')[0] ?? '');
  const headers = parseHeaderLines(lines.slice(1), 'ICAP header');
  if (!headers.has('host')) throw new IcapProtocolError(400, 'missing Host header');
  if (headers.all('host').length > 1) throw new IcapProtocolError(400, 'duplicate Host header');
  const encValues = headers.all('encapsulated');
  if (encValues.length > 1) throw new IcapProtocolError(400, 'duplicate Encapsulated header');
  const encapsulated = encValues[0] === undefined ? null : parseEncapsulated(encValues[0], method as IcapMethod);
  if (encapsulated === null && method !== 'OPTIONS') throw new IcapProtocolError(400, 'missing Encapsulated header');
  const previewValues = headers.all('preview');
  if (previewValues.length > 1) throw new IcapProtocolError(400, 'duplicate Preview header');
  let preview: number | null = null;
  if (previewValues[0] !== undefined) {
    if (!/^\d{1,9}$/.test(previewValues[0])) throw new IcapProtocolError(400, 'malformed Preview header');
    preview = Number(previewValues[0]);
  }
  const allow = headers
    .all('allow')
    .flatMap((v) => v.split(','))
    .map((v) => v.trim());
  const connection = headers
    .all('connection')
    .flatMap((v) => v.split(','))
    .map((v) => v.trim().toLowerCase());
  return {
    method: method as IcapMethod,
    uri,
    service,
    query: m[3] ?? '',
    headers,
    encapsulated,
    preview,
    allow204: allow.includes('204'),
    allow206: allow.includes('206'),
    connectionClose: connection.includes('close'),
  };
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new IcapProtocolError(400, 'malformed service name');
  }
}

export type EncapsulatedName = 'req-hdr' | 'res-hdr' | 'req-body' | 'res-body' | 'null-body' | 'opt-body';
export interface EncapsulatedPart {
  name: EncapsulatedName;
  offset: number;
}

const BODY_NAMES = new Set<EncapsulatedName>(['req-body', 'res-body', 'null-body', 'opt-body']);

/** Which entity sequences each method may carry (RFC 3507 section 4.4.1). */
const ALLOWED: Record<IcapMethod, RegExp> = {
  REQMOD: /^(req-hdr )?(req-body|null-body)$/,
  RESPMOD: /^(req-hdr )?(res-hdr )?(res-body|null-body)$/,
  OPTIONS: /^(opt-body|null-body)$/,
};

/**
 * `req-hdr=0, res-hdr=137, res-body=296`: entities in order, offsets starting at 0 and strictly
 * increasing between header parts, exactly one body entity and it comes last.
 */
export function parseEncapsulated(value: string, method: IcapMethod): EncapsulatedPart[] {
  const parts: EncapsulatedPart[] = [];
  for (const item of value.split(',')) {
    const m = /^\s*([a-z-]+)=(\d{1,10})\s*$/.exec(item);
    if (!m) throw new IcapProtocolError(400, `malformed Encapsulated header: ${value.slice(0, 100)}`);
    const name = m[1] as EncapsulatedName;
    if (!['req-hdr', 'res-hdr', 'req-body', 'res-body', 'null-body', 'opt-body'].includes(name)) {
      throw new IcapProtocolError(400, `unknown Encapsulated entity ${name}`);
    }
    parts.push({ name, offset: Number(m[2]) });
  }
  if (parts.length === 0 || (parts[0] as EncapsulatedPart).offset !== 0) {
    throw new IcapProtocolError(400, 'Encapsulated offsets must start at 0');
  }
  for (let i = 1; i < parts.length; i++) {
    const prev = parts[i - 1] as EncapsulatedPart;
    const cur = parts[i] as EncapsulatedPart;
    // A header entity is at least an empty line long, so the next offset must be larger.
    if (cur.offset <= prev.offset) throw new IcapProtocolError(400, 'Encapsulated offsets must increase');
  }
  const last = parts[parts.length - 1] as EncapsulatedPart;
  if (!BODY_NAMES.has(last.name)) throw new IcapProtocolError(400, 'Encapsulated must end with a body entity');
  if (!ALLOWED[method].test(parts.map((p) => p.name).join(' '))) {
    throw new IcapProtocolError(400, `Encapsulated entities not valid for ${method}: ${value.slice(0, 100)}`);
  }
  return parts;
}

export interface HttpHead {
  /** The start line: `HTTP/1.1 200 OK` or `GET /x HTTP/1.1`. */
  startLine: string;
  headers: Headers;
  /** The exact bytes as received (echoed unchanged). */
  raw: Buffer;
}

/** An encapsulated HTTP header block, which must be exactly the bytes the offsets announced. */
export function parseHttpHead(raw: Buffer, kind: 'request' | 'response'): HttpHead {
  if (raw.length < 4 || raw.subarray(raw.length - 4).toString('latin1') !== '\r\n\r\n') {
    throw new IcapProtocolError(400, `encapsulated ${kind} header does not end where Encapsulated says`);
  }
  const text = raw.toString('latin1');
  const body = text.slice(0, -4);
  if (body.indexOf('\r\n\r\n') >= 0) throw new IcapProtocolError(400, `encapsulated ${kind} header ends before its offset`);
  const lines = body.split('\r\n');
  const startLine = lines[0] ?? '';
  if (kind === 'response' && !/^HTTP\/\d\.\d \d{3}( .*)?$/.test(startLine)) {
    throw new IcapProtocolError(400, 'malformed encapsulated HTTP status line');
  }
  if (kind === 'request' && !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+( HTTP\/\d\.\d)?$/.test(startLine)) {
    throw new IcapProtocolError(400, 'malformed encapsulated HTTP request line');
  }
  // The encapsulated message is the client's business (duplicate Content-Length from
  // c-icap-client included); only what would break our framing of it is refused.
  for (const l of lines.slice(1)) {
    if (/[\0\r\n]/.test(l)) throw new IcapProtocolError(400, `invalid character in encapsulated ${kind} header`);
  }
  const headers = new Headers();
  for (const l of lines.slice(1)) {
    const c = l.indexOf(':');
    if (c > 0) headers.add(l.slice(0, c).trim(), l.slice(c + 1).trim());
  }
  return { startLine, headers, raw };
}

/** `size[;ext]` of a chunk: size in hex, at most 16 digits; extensions kept for `ieof`. */
export function parseChunkSizeLine(line: string): { size: number; ieof: boolean } {
  const m = /^([0-9a-fA-F]{1,16})[ \t]*(;.*)?$/.exec(line);
  if (!m) throw new IcapProtocolError(400, 'malformed chunk size');
  const size = parseInt(m[1] as string, 16);
  if (!Number.isSafeInteger(size)) throw new IcapProtocolError(400, 'chunk size too large');
  const ext = (m[2] ?? '')
    .split(';')
    .map((e) => e.trim().toLowerCase())
    .filter((e) => e.length > 0);
  return { size, ieof: ext.includes('ieof') };
}

export function chunk(data: Buffer): Buffer[] {
  return [Buffer.from(`${data.length.toString(16)}\r\n`, 'latin1'), data, CRLF_BUF];
}

export const CRLF_BUF = Buffer.from('\r\n');
export const LAST_CHUNK = Buffer.from('0\r\n\r\n');

export interface IcapResponseInit {
  status: number;
  headers: Array<[string, string]>;
  /** Encapsulated parts: header blocks first, then the body's name. */
  encapsulated?: { headers: Array<{ name: EncapsulatedName; block: Buffer }>; body: EncapsulatedName };
}

/** An ICAP response head (+ encapsulated header blocks), ready to write. */
export function formatResponseHead(init: IcapResponseInit): Buffer {
  const lines = [`ICAP/1.0 ${init.status} ${STATUS_TEXT[init.status] ?? 'Unknown'}`];
  for (const [n, v] of init.headers) lines.push(`${n}: ${v}`);
  const blocks: Buffer[] = [];
  if (init.encapsulated) {
    let offset = 0;
    const parts: string[] = [];
    for (const h of init.encapsulated.headers) {
      parts.push(`${h.name}=${offset}`);
      offset += h.block.length;
      blocks.push(h.block);
    }
    parts.push(`${init.encapsulated.body}=${offset}`);
    lines.push(`Encapsulated: ${parts.join(', ')}`);
  }
  return Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), ...blocks]);
}

/** An HTTP/1.1 response header block for pages avgate generates (block page, error page). */
export function httpResponseHead(status: number, reason: string, headers: Array<[string, string]>): Buffer {
  const lines = [`HTTP/1.1 ${status} ${reason}`, ...headers.map(([n, v]) => `${n}: ${v}`)];
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
}

/** Quoted string for ISTag and X-Infection-Found values: no quotes, CR, LF or control bytes inside. */
export function headerSafe(s: string): string {
  let out = '';
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    out += c < 0x20 || c === 0x7f || ch === '"' ? '?' : ch;
  }
  return out;
}
