import { headerSafe } from './templates.js';

/**
 * The few pieces of RFC 5322 / RFC 2045-2047 that generated mail needs: dates, encoded header
 * words, folding, quoted-printable. Everything here produces CRLF line ends.
 */

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

const pad2 = (n: number): string => String(n).padStart(2, '0');

/** RFC 5322 date-time in UTC: `Tue, 01 Jul 2025 12:00:00 +0000`. */
export function formatMailDate(d: Date): string {
  return `${DAYS[d.getUTCDay()]}, ${pad2(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} +0000`;
}

// Bytes of UTF-8 per encoded word: 39 bytes → 52 base64 characters → a 64-character word, so
// `Subject: ` plus the first word stays under the 78-character line of RFC 5322 §2.1.1.
const WORD_BYTES = 39;

/** RFC 2047 `=?UTF-8?B?...?=` words, split between characters, joined by folding white space. */
function encodedWords(text: string): string[] {
  const words: string[] = [];
  let chunk = '';
  let bytes = 0;
  for (const ch of text) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > WORD_BYTES && chunk !== '') {
      words.push(chunk);
      chunk = '';
      bytes = 0;
    }
    chunk += ch;
    bytes += n;
  }
  if (chunk !== '') words.push(chunk);
  return words.map((w) => `=?UTF-8?B?${Buffer.from(w, 'utf8').toString('base64')}?=`);
}

/** Longest header text kept (a subject built from an attacker's subject must stay bounded). */
export const MAX_HEADER_TEXT = 900;

/**
 * One header field, folded, ending in CRLF. The value is made one line first (CR/LF and controls
 * become spaces: no injected headers), cut to MAX_HEADER_TEXT characters, and encoded as RFC 2047
 * words when it is not plain printable ASCII.
 */
export function headerField(name: string, value: string): string {
  let v = headerSafe(value).trim();
  if (v.length > MAX_HEADER_TEXT) v = `${v.slice(0, MAX_HEADER_TEXT)}...`;
  if (/^[\x20-\x7e]*$/.test(v) && !/=\?/.test(v)) return `${name}: ${foldAscii(v, name.length + 2)}\r\n`;
  return `${name}: ${encodedWords(v).join('\r\n ')}\r\n`;
}

/** Folds at spaces so lines stay near 78 characters; a word longer than that stays whole. */
function foldAscii(value: string, used: number): string {
  const words = value.split(' ');
  let out = '';
  let line = used;
  for (const [i, w] of words.entries()) {
    if (i === 0) {
      out = w;
      line += w.length;
    } else if (line + 1 + w.length > 78 && line > used) {
      out += `\r\n ${w}`;
      line = 1 + w.length;
    } else {
      out += ` ${w}`;
      line += 1 + w.length;
    }
  }
  return out;
}

/**
 * Header value with a subject prefix in front: `[VIRUS REMOVED] Hello`. The original raw value is
 * kept as it was (its RFC 2047 words stay valid after a space); the prefix is encoded when it is not
 * ASCII. A subject that already starts with the prefix is left alone (a message scanned twice).
 */
export function prefixSubject(rawValue: string | null, prefix: string): string {
  const p = headerSafe(prefix).trim();
  const raw = rawValue === null ? '' : rawValue.trim();
  if (p === '') return raw;
  if (raw.startsWith(p)) return raw;
  const encoded = /^[\x20-\x7e]*$/.test(p) ? p : encodedWords(p).join(' ');
  return raw === '' ? encoded : `${encoded} ${raw}`;
}

/** A message id, or null when it is not one (spaces, control characters, no brackets). */
export function sanitizeMessageId(id: string | null | undefined): string | null {
  if (!id) return null;
  const t = id.trim();
  return /^<[\x21-\x3b\x3d\x3f-\x7e]{1,900}>$/.test(t) ? t : null;
}

/** Text as UTF-8 quoted-printable (RFC 2045 §6.7), lines of at most 76 characters, CRLF ends. */
export function quotedPrintable(text: string): string {
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  const out: string[] = [];
  for (const line of lines) {
    const bytes = Buffer.from(line, 'utf8');
    let cur = '';
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i] as number;
      const last = i === bytes.length - 1;
      let tok: string;
      if ((b >= 33 && b <= 126 && b !== 61) || ((b === 32 || b === 9) && !last)) tok = String.fromCharCode(b);
      else tok = `=${b.toString(16).toUpperCase().padStart(2, '0')}`;
      if (cur.length + tok.length > 75) {
        out.push(`${cur}=`);
        cur = '';
      }
      cur += tok;
    }
    out.push(cur);
  }
  return out.join('\r\n');
}

/** Plain ASCII text with short lines can go as 7bit; anything else is quoted-printable. */
export function textBody(text: string): { encoding: '7bit' | 'quoted-printable'; data: string } {
  const normalized = text.replace(/\r\n?/g, '\n');
  const lines = normalized.split('\n');
  if (/^[\x20-\x7e\t\n]*$/.test(normalized) && lines.every((l) => l.length <= 900)) {
    return { encoding: '7bit', data: lines.join('\r\n') };
  }
  return { encoding: 'quoted-printable', data: quotedPrintable(normalized) };
}

/**
 * Turns bare LF into CRLF on the way, CRLF stays, so an original spooled with either line end is
 * attached with the line ends RFC 5322 wants. A CR at the end of one chunk is remembered.
 */
export async function* crlfLines(source: AsyncIterable<Buffer | string>): AsyncGenerator<Buffer> {
  let prevCR = false;
  for await (const piece of source) {
    const chunk = typeof piece === 'string' ? Buffer.from(piece, 'utf8') : piece;
    if (chunk.length === 0) continue;
    let lfs = 0;
    for (let i = 0; i < chunk.length; i++) {
      if (chunk[i] === 0x0a && (i === 0 ? !prevCR : chunk[i - 1] !== 0x0d)) lfs++;
    }
    if (lfs === 0) {
      prevCR = chunk[chunk.length - 1] === 0x0d;
      yield chunk;
      continue;
    }
    const out = Buffer.allocUnsafe(chunk.length + lfs);
    let o = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i] as number;
      if (b === 0x0a && (i === 0 ? !prevCR : chunk[i - 1] !== 0x0d)) out[o++] = 0x0d;
      out[o++] = b;
    }
    prevCR = chunk[chunk.length - 1] === 0x0d;
    yield out;
  }
}
