import { isUtf8 } from 'node:buffer';
import { TextDecoder } from 'node:util';

/**
 * Header field values: the structured ones a filter needs (Content-Type, Content-Disposition,
 * Content-Transfer-Encoding) with RFC 2231 parameters, and RFC 2047 encoded words. All of it is
 * lenient: a malformed value gives a best effort, never an exception.
 */

const decoders = new Map<string, TextDecoder | null>();

function decoderFor(charset: string): TextDecoder | null {
  const label = charset.trim().toLowerCase();
  let d = decoders.get(label);
  if (d === undefined) {
    try {
      d = new TextDecoder(label);
    } catch {
      d = null;
    }
    // Labels come from hostile headers: the cache must not grow without bound.
    if (decoders.size < 256) decoders.set(label, d);
  }
  return d;
}

/** Bytes in a named charset to text; an unknown charset falls back to UTF-8 if valid, else Latin-1. */
export function decodeCharset(bytes: Buffer, charset: string): string {
  const d = decoderFor(charset);
  if (d) return d.decode(bytes);
  return rawText(bytes);
}

/** Raw header bytes to text: ASCII as is, 8-bit as UTF-8 (RFC 6532) when valid, else Latin-1. */
export function rawText(bytes: Buffer): string {
  return isUtf8(bytes) ? bytes.toString('utf8') : bytes.toString('latin1');
}

/** Removes the line breaks of folding (RFC 5322 2.2.3) and trims. */
export function unfold(value: string): string {
  return value.replace(/\r?\n(?=[ \t])/g, '').replace(/[\r\n]+/g, '').trim();
}

const ENCODED_WORD = /=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=/g;

function decodeQWord(text: string): Buffer {
  const out = Buffer.allocUnsafe(text.length);
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x5f) out[n++] = 0x20;
    else if (c === 0x3d && i + 2 < text.length && hexValue(text.charCodeAt(i + 1)) >= 0 && hexValue(text.charCodeAt(i + 2)) >= 0) {
      out[n++] = hexValue(text.charCodeAt(i + 1)) * 16 + hexValue(text.charCodeAt(i + 2));
      i += 2;
    } else out[n++] = c & 0xff;
  }
  return out.subarray(0, n);
}

/**
 * RFC 2047: `=?charset?B|Q?text?=` words decoded; white space between two adjacent encoded words
 * is dropped (6.2), and adjacent words in one charset are joined as bytes first, because senders
 * split multi-byte characters across words.
 */
export function decodeEncodedWords(value: string): string {
  if (!value.includes('=?')) return value;
  let out = '';
  let last = 0;
  let held: Buffer[] = [];
  let heldCharset = '';
  const flush = (): void => {
    if (held.length > 0) out += decodeCharset(held.length === 1 ? (held[0] as Buffer) : Buffer.concat(held), heldCharset);
    held = [];
  };
  for (const m of value.matchAll(ENCODED_WORD)) {
    const gap = value.slice(last, m.index);
    if (held.length === 0 || !/^[ \t\r\n]*$/.test(gap)) {
      flush();
      out += gap;
    }
    const charset = (m[1] ?? '').split('*')[0]?.toLowerCase() ?? '';
    const text = m[3] ?? '';
    const bytes = (m[2] ?? '').toLowerCase() === 'b' ? Buffer.from(text, 'base64') : decodeQWord(text);
    if (held.length > 0 && charset !== heldCharset) flush();
    heldCharset = charset;
    held.push(bytes);
    last = m.index + m[0].length;
  }
  flush();
  return out + value.slice(last);
}

export interface StructuredValue {
  /** The value before the first `;`, trimmed (not lowercased). */
  value: string;
  /** Parameters by lowercase name; RFC 2231 continuations and charsets resolved. */
  params: Map<string, string>;
  /** Plain parameters given more than once with different values (the first is in `params`). */
  conflicts: Set<string>;
}

interface RawParam {
  name: string;
  value: string;
}

/** Splits `value; a=b; c="d;e"` into the value and raw parameters (quoted strings unescaped). One pass: a hostile header must not cost more than its length. */
function splitParams(text: string): { value: string; params: RawParam[] } {
  const params: RawParam[] = [];
  let i = text.indexOf(';');
  const value = (i < 0 ? text : text.slice(0, i)).trim();
  if (i < 0) return { value, params };
  const n = text.length;
  while (i < n) {
    while (i < n && (text[i] === ';' || text[i] === ' ' || text[i] === '\t')) i++;
    let j = i;
    while (j < n && text[j] !== '=' && text[j] !== ';') j++;
    if (j >= n || text[j] === ';') {
      // a parameter without '=': skip it
      i = j;
      continue;
    }
    const name = text.slice(i, j).trim().toLowerCase();
    i = j + 1;
    while (i < n && (text[i] === ' ' || text[i] === '\t')) i++;
    let v = '';
    if (text[i] === '"') {
      i++;
      let from = i;
      while (i < n && text[i] !== '"') {
        if (text[i] === '\\' && i + 1 < n) {
          v += text.slice(from, i);
          i++;
          from = i;
        }
        i++;
      }
      v += text.slice(from, i);
      // anything up to the next ';' is junk after the quoted string
      while (i < n && text[i] !== ';') i++;
    } else {
      const from = i;
      while (i < n && text[i] !== ';') i++;
      v = text.slice(from, i).trim();
    }
    if (name.length > 0) params.push({ name, value: v });
  }
  return { value, params };
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x57;
  return -1;
}

/** %XX decoding; a raw non-ASCII character (where only %XX is allowed) is kept as UTF-8. */
function percentDecode(text: string): Buffer {
  const src = Buffer.from(text, 'utf8');
  const out = Buffer.allocUnsafe(src.length);
  let n = 0;
  for (let i = 0; i < src.length; i++) {
    const c = src[i] as number;
    if (c === 0x25 && i + 2 < src.length) {
      const hi = hexValue(src[i + 1] as number);
      const lo = hexValue(src[i + 2] as number);
      if (hi >= 0 && lo >= 0) {
        out[n++] = hi * 16 + lo;
        i += 2;
        continue;
      }
    }
    out[n++] = c;
  }
  return out.subarray(0, n);
}

/** At most this many continuation pieces of one parameter are joined (RFC 2231 3). */
const MAX_CONTINUATIONS = 256;

/**
 * Parses a structured header value with its parameters. RFC 2231: `name*=charset'lang'%XX..`,
 * `name*0=..; name*1*=..` continuations (pieces with `*` are percent-encoded, the charset is on
 * the first piece); an extended parameter wins over a plain one of the same name.
 */
export function parseStructured(text: string): StructuredValue {
  const { value, params: raw } = splitParams(text);
  const params = new Map<string, string>();
  const pieces = new Map<string, Array<{ index: number; value: string; encoded: boolean }>>();
  const plainSeen = new Map<string, string>();
  const conflicts = new Set<string>();
  for (const p of raw) {
    const m = /^([^*]+)\*(\d{1,4})?(\*)?$/.exec(p.name);
    if (!m) {
      const seen = plainSeen.get(p.name);
      if (seen === undefined) {
        plainSeen.set(p.name, p.value);
        if (!params.has(p.name)) params.set(p.name, p.value);
      } else if (seen !== p.value) conflicts.add(p.name); // readers differ on which one counts
      continue;
    }
    const base = m[1] as string;
    const index = m[2] === undefined ? 0 : Number(m[2]);
    const encoded = m[2] === undefined ? true : m[3] === '*';
    let list = pieces.get(base);
    if (!list) pieces.set(base, (list = []));
    if (list.length < MAX_CONTINUATIONS && !list.some((x) => x.index === index)) list.push({ index, value: p.value, encoded });
  }
  for (const [base, list] of pieces) {
    list.sort((a, b) => a.index - b.index);
    let charset = 'utf-8';
    const first = list[0];
    if (first?.encoded) {
      const q1 = first.value.indexOf("'");
      const q2 = q1 < 0 ? -1 : first.value.indexOf("'", q1 + 1);
      if (q2 >= 0) {
        charset = first.value.slice(0, q1) || 'utf-8';
        first.value = first.value.slice(q2 + 1);
      }
    }
    let out = '';
    let bytes: Buffer[] = [];
    for (const piece of list) {
      if (piece.encoded) bytes.push(percentDecode(piece.value));
      else {
        if (bytes.length > 0) out += decodeCharset(Buffer.concat(bytes), charset);
        bytes = [];
        out += piece.value;
      }
    }
    if (bytes.length > 0) out += decodeCharset(Buffer.concat(bytes), charset);
    params.set(base, out);
  }
  return { value, params, conflicts };
}

/** Content-Type as `type/subtype` (lowercase), or null when the value is not one (RFC 2045 5.2: then text/plain). */
export function mediaType(value: string): string | null {
  const v = value.trim().toLowerCase();
  return /^[!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+$/.test(v) ? v : null;
}

/** Content-Transfer-Encoding token: lowercase, comments and junk after the first word dropped. */
export function transferEncoding(value: string): string {
  // a token is short; bounding the text keeps the comment regex linear on a hostile value
  const v = value.slice(0, 256).replace(/\([^)]*\)/g, ' ').trim().toLowerCase();
  const m = /^[^\s;]+/.exec(v);
  // `"base64"` is no token, but engines and some clients decode it: so do we.
  return m ? m[0].replace(/^"(.*)"$/, '$1') : '';
}

/** A file name from a header: encoded words decoded (senders put them in quoted strings too), controls removed. */
export function cleanFilename(name: string | undefined): string | null {
  if (name === undefined) return null;
  // eslint-disable-next-line no-control-regex
  const v = decodeEncodedWords(name).replace(/[\u0000-\u001f\u007f]/g, '').trim();
  return v.length > 0 ? v : null;
}
