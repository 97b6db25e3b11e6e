import { hostPort } from '../../core/net.js';
import type { VerdictResult } from '../../core/verdict.js';

/**
 * ICAP (RFC 3507) wire format for a RESPMOD/OPTIONS client, without sockets.
 *
 * The object to scan travels as the body of a synthetic HTTP response (`HTTP/1.1 200 OK`), the
 * same shape a proxy sends for a downloaded file, so any ICAP antivirus service (c-icap
 * virus_scan, Kaspersky, Symantec ...) treats it as a download to check. Bodies use HTTP/1.1
 * chunked framing (RFC 3507 4.4.1); the preview (4.5) ends with `0\r\n\r\n`, or with
 * `0; ieof\r\n\r\n` when the preview already holds the whole object.
 */

/** An ICAP response head (or encapsulated header section) longer than this is refused (4.3.2 sets no limit). */
export const MAX_HEAD_BYTES = 64 * 1024;
/** A chunk-size line with its extensions: RFC 3507 only defines `ieof`, anything long is garbage. */
export const MAX_CHUNK_LINE_BYTES = 4096;
/** A server's suggested Preview above this is clamped: the preview is held in memory before sending. */
export const MAX_PREVIEW_BYTES = 1024 * 1024;
/** Options-TTL when the server sends none (4.10.2 says: no expiry; an hour keeps ISTag changes visible). */
export const DEFAULT_OPTIONS_TTL_SECONDS = 3600;
/** Verdict name for a 200 that changed the object but named no threat (e.g. a 403 block page). */
export const MODIFIED_THREAT_NAME = 'ICAP.Modified';
/** Verdict name for `X-Violations-Found: N` (N > 0) whose violation lines name no threat. */
export const VIOLATION_THREAT_NAME = 'ICAP.Violation';

export const CRLF = Buffer.from('\r\n', 'latin1');
/** End of a body that continues after 100 Continue, or of a complete body sent without preview. */
export const LAST_CHUNK = Buffer.from('0\r\n\r\n', 'latin1');
/** End of a preview that holds the whole object (4.5): the server must not send 100 Continue. */
export const LAST_CHUNK_IEOF = Buffer.from('0; ieof\r\n\r\n', 'latin1');

export interface IcapUrl {
  host: string;
  port: number;
  /** Path and query as they appear in the request line: `/avscan`, `/virus_scan?allow204=on`. */
  service: string;
}

/** `icap://host[:port]/service[?args]`; port defaults to 1344 (RFC 3507 4.2). */
export function parseIcapUrl(text: string): IcapUrl | null {
  const m = /^icap:\/\/(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9._-]+))(?::(\d{1,5}))?(\/[^\s#]*)$/.exec(text.trim());
  if (!m) return null;
  const host = (m[1] ?? m[2]) as string;
  const port = m[3] === undefined ? 1344 : Number(m[3]);
  if (port < 1 || port > 65535) return null;
  const service = m[4] as string;
  if (service === '/' || service.startsWith('/?')) return null;
  return { host, port, service };
}

export function formatIcapUrl(u: IcapUrl): string {
  return `icap://${hostPort(u.host, u.port)}${u.service}`;
}

const USER_AGENT = 'avgate';

/** OPTIONS (4.10): `Encapsulated: null-body=0` because the request carries no body. */
export function buildOptionsRequest(url: IcapUrl): Buffer {
  return Buffer.from(
    `OPTIONS ${formatIcapUrl(url)} ICAP/1.0\r\n` +
      `Host: ${hostPort(url.host, url.port)}\r\n` +
      `User-Agent: ${USER_AGENT}\r\n` +
      'Encapsulated: null-body=0\r\n' +
      '\r\n',
    'latin1',
  );
}

export interface RespmodRequest {
  url: IcapUrl;
  /** Bytes of preview announced in `Preview:`, or null to send the whole body without preview. */
  preview: number | null;
  /** Send `Allow: 204` so the server may answer "unmodified" without echoing the object (4.6). */
  allow204: boolean;
  /** Object size when known: becomes the encapsulated Content-Length. */
  size?: number;
}

/** The synthetic HTTP response header block the object travels under. */
export function syntheticHttpHeader(size?: number): string {
  return (
    'HTTP/1.1 200 OK\r\n' +
    'Content-Type: application/octet-stream\r\n' +
    (size !== undefined ? `Content-Length: ${size}\r\n` : '') +
    '\r\n'
  );
}

/**
 * ICAP head plus encapsulated HTTP header, up to where the chunked body starts. The Encapsulated
 * offsets (4.4.1) count from the end of the ICAP head: res-hdr at 0, res-body after the HTTP header.
 */
export function buildRespmodHead(req: RespmodRequest): Buffer {
  const http = syntheticHttpHeader(req.size);
  const httpLength = Buffer.byteLength(http, 'latin1');
  const head =
    `RESPMOD ${formatIcapUrl(req.url)} ICAP/1.0\r\n` +
    `Host: ${hostPort(req.url.host, req.url.port)}\r\n` +
    `User-Agent: ${USER_AGENT}\r\n` +
    (req.allow204 ? 'Allow: 204\r\n' : '') +
    (req.preview !== null ? `Preview: ${req.preview}\r\n` : '') +
    `Encapsulated: res-hdr=0, res-body=${httpLength}\r\n` +
    '\r\n';
  return Buffer.from(head + http, 'latin1');
}

/** Chunk-size line for a chunk of `length` bytes; the data and a CRLF follow it. */
export function chunkPrefix(length: number): Buffer {
  return Buffer.from(`${length.toString(16)}\r\n`, 'latin1');
}

/** One whole chunk. Empty data gives an empty buffer: a zero-size chunk would end the body. */
export function encodeChunk(data: Buffer): Buffer {
  if (data.length === 0) return Buffer.alloc(0);
  return Buffer.concat([chunkPrefix(data.length), data, CRLF]);
}

// ---------------------------------------------------------------------------------------------
// Response heads

export interface IcapResponseHead {
  /** `1.0` */
  version: string;
  status: number;
  reason: string;
  statusLine: string;
  /** Lower-cased names; one entry per header line, in order. Folded lines are joined with `\n`. */
  headers: Map<string, string[]>;
}

export type HeadParseResult =
  | { ok: true; head: IcapResponseHead }
  | { ok: false; firstLine: string; reason: string };

const STATUS_LINE = /^ICAP\/(\d+\.\d+)[ \t]+(\d{3})(?:[ \t]+(.*))?$/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

export function parseStatusLine(line: string): { version: string; status: number; reason: string } | null {
  const m = STATUS_LINE.exec(line.trim());
  if (!m) return null;
  return { version: m[1] as string, status: Number(m[2]), reason: (m[3] ?? '').trim() };
}

/**
 * Parses a head (status line and header lines, CRLF or LF separated, the blank line optional).
 * Never throws: anything that is not an ICAP head comes back with its first line for the log.
 */
export function parseResponseHead(text: string): HeadParseResult {
  const lines = text.replace(/(\r?\n)+$/, '').split(/\r?\n/);
  const firstLine = (lines[0] ?? '').trim();
  const status = parseStatusLine(firstLine);
  if (!status) return { ok: false, firstLine, reason: 'not an ICAP status line' };
  const headers = new Map<string, string[]>();
  let last: { name: string; index: number } | null = null;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    if (line.length === 0) break;
    if (line[0] === ' ' || line[0] === '\t') {
      // obs-fold: X-Violations-Found puts one violation field per continuation line
      if (!last) return { ok: false, firstLine, reason: 'continuation line before any header' };
      const values = headers.get(last.name) as string[];
      values[last.index] = `${values[last.index] as string}\n${line.trim()}`;
      continue;
    }
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon) : '';
    if (!TOKEN.test(name)) return { ok: false, firstLine, reason: `malformed header line ${JSON.stringify(line.slice(0, 80))}` };
    const key = name.toLowerCase();
    const value = line.slice(colon + 1).trim();
    const values = headers.get(key);
    if (values) values.push(value);
    else headers.set(key, [value]);
    last = { name: key, index: (headers.get(key) as string[]).length - 1 };
  }
  return { ok: true, head: { ...status, statusLine: firstLine, headers } };
}

export function headerValues(head: IcapResponseHead, name: string): string[] {
  return head.headers.get(name.toLowerCase()) ?? [];
}

export function headerValue(head: IcapResponseHead, name: string): string | undefined {
  return headerValues(head, name)[0];
}

/** All comma-separated items of every line of a list header (`Methods: RESPMOD, REQMOD`). */
export function headerList(head: IcapResponseHead, name: string): string[] {
  return headerValues(head, name)
    .flatMap((v) => v.split(/[,\n]/))
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** `Connection: close` (RFC 3507 4.3.3 follows HTTP/1.1 persistence rules). */
export function wantsClose(head: IcapResponseHead): boolean {
  return headerList(head, 'connection').some((t) => t.toLowerCase() === 'close');
}

export interface EncapsulatedEntity {
  name: 'req-hdr' | 'res-hdr' | 'req-body' | 'res-body' | 'null-body' | 'opt-body';
  offset: number;
}

const ENTITY_NAMES = new Set(['req-hdr', 'res-hdr', 'req-body', 'res-body', 'null-body', 'opt-body']);

/**
 * `res-hdr=0, res-body=137` (4.4.1): offsets ascending, header sections first, exactly one body
 * entity (or null-body) last. Null when it breaks those rules: the framing cannot be trusted.
 */
export function parseEncapsulated(value: string): EncapsulatedEntity[] | null {
  const parts = value.split(',').map((p) => p.trim());
  const out: EncapsulatedEntity[] = [];
  for (const part of parts) {
    const m = /^([a-z-]+)=(\d{1,9})$/i.exec(part);
    if (!m) return null;
    const name = (m[1] as string).toLowerCase();
    if (!ENTITY_NAMES.has(name)) return null;
    const offset = Number(m[2]);
    const prev = out[out.length - 1];
    if (prev ? offset < prev.offset : offset !== 0) return null;
    out.push({ name: name as EncapsulatedEntity['name'], offset });
  }
  if (out.length === 0) return null;
  for (let i = 0; i < out.length; i++) {
    const isBody = !(out[i] as EncapsulatedEntity).name.endsWith('-hdr');
    if (isBody !== (i === out.length - 1)) return null;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// OPTIONS

export interface IcapServiceOptions {
  /** Upper-cased: `RESPMOD`, `REQMOD`. */
  methods: string[];
  /** ISTag without its quotes; changes whenever the service (its signatures) changes (4.7). */
  istag: string | null;
  ttlSeconds: number;
  /** Bytes of preview the server wants; null when it did not offer preview. */
  preview: number | null;
  /** `Allow: 204` in the OPTIONS reply: the server can answer 204 outside a preview. */
  allow204: boolean;
  maxConnections: number | null;
  service: string | null;
  /** Lower-cased file extensions, `*` for "all others" (4.10.2). */
  transferPreview: string[];
  transferIgnore: string[];
  transferComplete: string[];
}

function nonNegativeInt(v: string | undefined): number | null {
  if (v === undefined || !/^\d{1,15}$/.test(v.trim())) return null;
  return Number(v.trim());
}

export function unquote(v: string): string {
  const t = v.trim();
  return t.length >= 2 && t.startsWith('"') && t.endsWith('"') ? t.slice(1, -1) : t;
}

export function parseOptionsHead(head: IcapResponseHead): IcapServiceOptions {
  const istag = headerValue(head, 'istag');
  const exts = (name: string) => headerList(head, name).map((e) => e.toLowerCase());
  return {
    methods: headerList(head, 'methods').map((m) => m.toUpperCase()),
    istag: istag !== undefined && unquote(istag).length > 0 ? unquote(istag) : null,
    ttlSeconds: nonNegativeInt(headerValue(head, 'options-ttl')) ?? DEFAULT_OPTIONS_TTL_SECONDS,
    preview: nonNegativeInt(headerValue(head, 'preview')),
    allow204: headerList(head, 'allow').includes('204'),
    maxConnections: nonNegativeInt(headerValue(head, 'max-connections')),
    service: headerValue(head, 'service') ?? null,
    transferPreview: exts('transfer-preview'),
    transferIgnore: exts('transfer-ignore'),
    transferComplete: exts('transfer-complete'),
  };
}

export type TransferMode = 'preview' | 'complete' | 'ignore';

/** Extension of a file name or URL path: `a/b.TXT?x=1` → `txt`. */
export function extensionOf(name: string | undefined): string | null {
  if (!name) return null;
  const path = name.replace(/[?#].*$/, '');
  const base = path.slice(Math.max(path.lastIndexOf('/'), path.lastIndexOf('\\')) + 1);
  const dot = base.lastIndexOf('.');
  return dot > 0 && dot < base.length - 1 ? base.slice(dot + 1).toLowerCase() : null;
}

/**
 * How to send an object (4.10.2): a listed extension wins, then the list holding `*`; an object
 * matching nothing gets a preview (the RFC's default when the server offers one).
 */
export function transferMode(options: IcapServiceOptions, name: string | undefined): TransferMode {
  const ext = extensionOf(name);
  const lists: Array<[TransferMode, string[]]> = [
    ['ignore', options.transferIgnore],
    ['complete', options.transferComplete],
    ['preview', options.transferPreview],
  ];
  if (ext !== null) for (const [mode, list] of lists) if (list.includes(ext)) return mode;
  for (const [mode, list] of lists) if (list.includes('*')) return mode;
  return 'preview';
}

// ---------------------------------------------------------------------------------------------
// Verdicts

/** `Type=0; Resolution=2; Threat=Eicar-Test-Signature;` (draft-stecher-icap-subid). */
export function parseInfectionFound(value: string): string[] {
  const names: string[] = [];
  for (const param of value.split(';')) {
    const eq = param.indexOf('=');
    if (eq < 0) continue;
    if (param.slice(0, eq).trim().toLowerCase() !== 'threat') continue;
    const name = param.slice(eq + 1).trim();
    if (name.length > 0) names.push(name);
  }
  return names;
}

/**
 * `N` then N groups of four folded lines: file name, threat description, problem id, resolution
 * (draft-stecher-icap-subid; c-icap prints `-` as the file name). The threat is the 2nd line.
 */
export function parseViolationsFound(value: string): { count: number; names: string[] } {
  const lines = value.split('\n').map((l) => l.trim());
  const count = nonNegativeInt(lines[0]) ?? 0;
  const names: string[] = [];
  for (let i = 1; i + 1 < lines.length; i += 4) {
    const name = lines[i + 1] as string;
    if (name.length > 0 && name !== '-') names.push(name);
  }
  return { count, names };
}

/** Threat names from the headers AV servers use: X-Infection-Found, X-Violations-Found, X-Virus-ID. */
export function threatNames(head: IcapResponseHead): { names: string[]; violations: number } {
  const names: string[] = [];
  let violations = 0;
  for (const v of headerValues(head, 'x-infection-found')) names.push(...parseInfectionFound(v));
  for (const v of headerValues(head, 'x-violations-found')) {
    const parsed = parseViolationsFound(v);
    violations += parsed.count;
    names.push(...parsed.names);
  }
  for (const v of headerValues(head, 'x-virus-id')) {
    const name = v.trim();
    if (name.length > 0 && name !== '-') names.push(name);
  }
  return { names: [...new Set(names)], violations };
}

/** True when the head alone decides the verdict, so the body need not be compared (or even sent). */
export function headDecides(head: IcapResponseHead): boolean {
  if (head.status !== 200) return true;
  const t = threatNames(head);
  return t.names.length > 0 || t.violations > 0;
}

/** HTTP status code of an encapsulated res-hdr section; null when it has no HTTP status line. */
export function httpStatusOf(section: string): number | null {
  const m = /^HTTP\/\d+\.\d+[ \t]+(\d{3})(?:[ \t]|\r?$)/.exec(section.split('\n', 1)[0] ?? '');
  return m ? Number(m[1]) : null;
}

/**
 * Whether a 200's encapsulated message differs from what was sent. `httpStatus` is the status of
 * its res-hdr (undefined: no res-hdr section), `bodySame` whether its res-body bytes equal the
 * bytes we sent (undefined: no body section). A 200 carrying neither changed nothing.
 */
export function isModified(e: { httpStatus?: number | null; bodySame?: boolean }): boolean {
  if (e.httpStatus !== undefined && e.httpStatus !== 200) return true;
  if (e.bodySame === false) return true;
  return false;
}

/**
 * The verdict rules of c-icap's clients, e2guardian and Open-Xchange: 204 → free; threat headers →
 * found; a 200 that changed the object but names nothing → found ICAP.Modified; an unchanged echo →
 * free; 413 → skipped (the server declined the size); other 4xx/5xx → error; anything else unknown.
 */
export function respmodVerdict(head: IcapResponseHead, modified: boolean): VerdictResult {
  const threats = threatNames(head);
  if (head.status === 200 || head.status === 204) {
    if (threats.names.length > 0) return { status: 'found', names: threats.names };
    if (threats.violations > 0) return { status: 'found', names: [VIOLATION_THREAT_NAME] };
    if (head.status === 204) return { status: 'free' };
    return modified ? { status: 'found', names: [MODIFIED_THREAT_NAME] } : { status: 'free' };
  }
  if (head.status === 413) return { status: 'skipped', reason: `ICAP server: ${head.statusLine}` };
  if (head.status >= 400 && head.status <= 599) {
    return { status: 'error', code: 'AVG_ERR_ENGINE_FAILED', cause: `ICAP server: ${head.statusLine}` };
  }
  return { status: 'unknown', raw: head.statusLine };
}

// ---------------------------------------------------------------------------------------------
// Incremental decoding of chunked bodies and whole responses

export type ChunkedResult = {
  data: Buffer[];
  done: boolean;
  /** The last chunk carried `; ieof`. */
  ieof: boolean;
  /** Bytes after the end of the body (the next message), once done. */
  rest: Buffer;
  error: string | null;
};

/**
 * HTTP/1.1 chunked decoding, fed in arbitrary pieces. Memory is bounded by the size line and
 * trailer limits: data is handed out as it arrives, never collected.
 */
export class ChunkedDecoder {
  private state: 'size' | 'data' | 'data-crlf' | 'trailer' | 'done' | 'failed' = 'size';
  private line: Buffer[] = [];
  private lineBytes = 0;
  private remaining = 0;
  private trailerBytes = 0;
  private ieof = false;

  get finished(): boolean {
    return this.state === 'done';
  }

  push(input: Buffer): ChunkedResult {
    const out: ChunkedResult = { data: [], done: false, ieof: false, rest: Buffer.alloc(0), error: null };
    let pos = 0;
    const fail = (error: string): ChunkedResult => {
      this.state = 'failed';
      out.error = error;
      return out;
    };
    if (this.state === 'failed') return fail('decoder already failed');
    if (this.state === 'done') {
      out.done = true;
      out.ieof = this.ieof;
      out.rest = input;
      return out;
    }
    while (pos < input.length) {
      if (this.state === 'data') {
        const n = Math.min(this.remaining, input.length - pos);
        out.data.push(input.subarray(pos, pos + n));
        pos += n;
        this.remaining -= n;
        if (this.remaining === 0) this.state = 'data-crlf';
        continue;
      }
      const nl = input.indexOf(0x0a, pos);
      const end = nl < 0 ? input.length : nl;
      this.lineBytes += end - pos;
      const limit = this.state === 'trailer' ? MAX_HEAD_BYTES - this.trailerBytes : MAX_CHUNK_LINE_BYTES;
      if (this.lineBytes > limit) return fail(`chunk framing line longer than ${limit} bytes`);
      this.line.push(input.subarray(pos, end));
      if (nl < 0) break;
      pos = nl + 1;
      const line = Buffer.concat(this.line).toString('latin1').replace(/\r$/, '');
      this.line = [];
      this.trailerBytes += this.lineBytes;
      this.lineBytes = 0;
      if (this.state === 'data-crlf') {
        if (line.length !== 0) return fail('chunk data not followed by CRLF');
        this.state = 'size';
      } else if (this.state === 'size') {
        const m = /^([0-9a-fA-F]{1,13})[ \t]*(;.*)?$/.exec(line);
        if (!m) return fail(`bad chunk size line ${JSON.stringify(line.slice(0, 40))}`);
        const size = parseInt(m[1] as string, 16);
        if (size === 0) {
          this.ieof = (m[2] ?? '').split(';').some((ext) => ext.trim().toLowerCase() === 'ieof');
          this.state = 'trailer';
          this.trailerBytes = 0;
        } else {
          this.remaining = size;
          this.state = 'data';
        }
      } else if (this.state === 'trailer') {
        if (line.length === 0) {
          this.state = 'done';
          out.done = true;
          out.ieof = this.ieof;
          out.rest = input.subarray(pos);
          return out;
        }
      }
    }
    return out;
  }
}

export type ResponseEvent =
  | { type: 'head'; head: IcapResponseHead }
  /** An encapsulated header section (`res-hdr`, ...), whole (bounded by MAX_HEAD_BYTES). */
  | { type: 'section'; name: EncapsulatedEntity['name']; data: Buffer }
  | { type: 'body'; data: Buffer }
  /** End of one message: a 100 Continue, a response without body, or the last chunk. */
  | { type: 'end' }
  /** `bad-status`: not an ICAP head (raw = first line); `too-large`/`framing`: broken framing. */
  | { type: 'error'; kind: 'bad-status' | 'too-large' | 'framing'; message: string; raw: string };

/**
 * Splits a byte stream from an ICAP server into events, fed in arbitrary pieces: a head, the
 * encapsulated header sections its Encapsulated header announces, the chunked body, an end;
 * then the next message. After an error event it stays failed: the stream is out of step.
 */
export class ResponseParser {
  private state: 'head' | 'sections' | 'body' | 'failed' = 'head';
  private acc = new Accumulator();
  /** Where the search for the head's blank line resumes (a CRLF pair may straddle pushes). */
  private scanFrom = 0;
  private sections: EncapsulatedEntity[] = [];
  private sectionsTotal = 0;
  private chunked: ChunkedDecoder | null = null;

  get failed(): boolean {
    return this.state === 'failed';
  }

  /** True between messages, with no partial message buffered. */
  get idle(): boolean {
    return this.state === 'head' && this.acc.length === 0;
  }

  push(input: Buffer): ResponseEvent[] {
    const events: ResponseEvent[] = [];
    let data = input;
    while (data.length > 0 && this.state !== 'failed') {
      if (this.state === 'head') data = this.pushHead(data, events);
      else if (this.state === 'sections') data = this.pushSections(data, events);
      else data = this.pushBody(data, events);
    }
    return events;
  }

  private fail(events: ResponseEvent[], kind: 'bad-status' | 'too-large' | 'framing', message: string, raw: string): Buffer {
    this.state = 'failed';
    this.acc.clear();
    events.push({ type: 'error', kind, message, raw });
    return Buffer.alloc(0);
  }

  private pushHead(input: Buffer, events: ResponseEvent[]): Buffer {
    let data = input;
    if (this.acc.length === 0) {
      // blank lines between messages are tolerated (RFC 7230 3.5 robustness)
      let skip = 0;
      while (skip < data.length && (data[skip] === 0x0d || data[skip] === 0x0a)) skip++;
      data = data.subarray(skip);
      if (data.length === 0) return data;
      this.scanFrom = 0;
    }
    const before = this.acc.length;
    // Never hold more than the limit plus one line ending: a bigger head is refused anyway.
    const room = MAX_HEAD_BYTES + 4 - before;
    const taken = data.subarray(0, Math.max(0, room));
    this.acc.append(taken);
    const buf = this.acc.view();

    const firstNl = buf.indexOf(0x0a);
    const firstLine = buf
      .subarray(0, firstNl < 0 ? Math.min(buf.length, 200) : Math.min(firstNl, 200))
      .toString('latin1')
      .replace(/\r$/, '');
    // Give up on garbage as soon as its first line is complete, without waiting for a blank line.
    if (firstNl >= 0 && firstNl >= before && !parseStatusLine(buf.subarray(0, firstNl).toString('latin1'))) {
      return this.fail(events, 'bad-status', 'not an ICAP status line', firstLine);
    }
    if (firstNl < 0 && buf.length > MAX_CHUNK_LINE_BYTES) {
      return this.fail(events, 'bad-status', 'status line too long', firstLine);
    }
    const end = findBlankLine(buf, this.scanFrom);
    if (end === null) {
      if (buf.length > MAX_HEAD_BYTES) {
        return this.fail(events, 'too-large', `ICAP response head longer than ${MAX_HEAD_BYTES} bytes`, firstLine);
      }
      this.scanFrom = Math.max(0, buf.length - 3);
      return Buffer.alloc(0);
    }
    if (end.headEnd > MAX_HEAD_BYTES) {
      return this.fail(events, 'too-large', `ICAP response head longer than ${MAX_HEAD_BYTES} bytes`, firstLine);
    }
    const headText = buf.subarray(0, end.headEnd).toString('latin1');
    // bytes of this push that lie beyond the head belong to what follows it
    const rest = Buffer.concat([buf.subarray(end.next), data.subarray(taken.length)]);
    this.acc.clear();
    const parsed = parseResponseHead(headText);
    if (!parsed.ok) return this.fail(events, 'bad-status', parsed.reason, parsed.firstLine.slice(0, 200));
    const head = parsed.head;
    events.push({ type: 'head', head });

    const enc = headerValue(head, 'encapsulated');
    if (head.status === 100 || enc === undefined) {
      // 100 Continue has no body (4.5); error replies often omit Encapsulated entirely
      events.push({ type: 'end' });
      return rest;
    }
    const entities = parseEncapsulated(enc);
    if (!entities) return this.fail(events, 'framing', `bad Encapsulated header ${JSON.stringify(enc.slice(0, 100))}`, head.statusLine);
    const last = entities[entities.length - 1] as EncapsulatedEntity;
    if (last.offset > MAX_HEAD_BYTES) {
      return this.fail(events, 'too-large', `encapsulated headers longer than ${MAX_HEAD_BYTES} bytes`, head.statusLine);
    }
    this.sections = entities;
    this.sectionsTotal = last.offset;
    this.state = 'sections';
    // `null-body=0` needs no further byte: finish now, even when nothing else has arrived
    return this.sectionsTotal === 0 ? this.pushSections(rest, events) : rest;
  }

  private pushSections(data: Buffer, events: ResponseEvent[]): Buffer {
    const part = data.subarray(0, this.sectionsTotal - this.acc.length);
    this.acc.append(part);
    const rest = data.subarray(part.length);
    if (this.acc.length < this.sectionsTotal) return rest;
    const buf = Buffer.from(this.acc.view());
    this.acc.clear();
    for (let i = 0; i + 1 < this.sections.length; i++) {
      const s = this.sections[i] as EncapsulatedEntity;
      const next = this.sections[i + 1] as EncapsulatedEntity;
      events.push({ type: 'section', name: s.name, data: buf.subarray(s.offset, next.offset) });
    }
    const body = this.sections[this.sections.length - 1] as EncapsulatedEntity;
    if (body.name === 'null-body') {
      this.state = 'head';
      events.push({ type: 'end' });
    } else {
      this.chunked = new ChunkedDecoder();
      this.state = 'body';
    }
    return rest;
  }

  private pushBody(data: Buffer, events: ResponseEvent[]): Buffer {
    const r = (this.chunked as ChunkedDecoder).push(data);
    for (const d of r.data) if (d.length > 0) events.push({ type: 'body', data: d });
    if (r.error !== null) return this.fail(events, 'framing', r.error, '');
    if (!r.done) return Buffer.alloc(0);
    this.chunked = null;
    this.state = 'head';
    events.push({ type: 'end' });
    return r.rest;
  }
}

/** A growing byte buffer (amortised copying, so a head trickled in byte by byte stays linear). */
class Accumulator {
  private buf = Buffer.alloc(0);
  private used = 0;

  get length(): number {
    return this.used;
  }

  append(data: Buffer): void {
    if (data.length === 0) return;
    if (this.used + data.length > this.buf.length) {
      const next = Buffer.allocUnsafe(Math.max(this.used + data.length, this.buf.length * 2, 1024));
      this.buf.copy(next, 0, 0, this.used);
      this.buf = next;
    }
    data.copy(this.buf, this.used);
    this.used += data.length;
  }

  /** The bytes so far; valid until the next append or clear. */
  view(): Buffer {
    return this.buf.subarray(0, this.used);
  }

  clear(): void {
    this.buf = Buffer.alloc(0);
    this.used = 0;
  }
}

/** End of a head: the first empty line (CRLF or bare LF). headEnd excludes the blank line. */
function findBlankLine(buf: Buffer, from: number): { headEnd: number; next: number } | null {
  let nl = buf.indexOf(0x0a, from);
  while (nl >= 0) {
    const after = nl + 1;
    if (buf[after] === 0x0a) return { headEnd: after, next: after + 1 };
    if (buf[after] === 0x0d && buf[after + 1] === 0x0a) return { headEnd: after, next: after + 2 };
    nl = buf.indexOf(0x0a, after);
  }
  return null;
}
