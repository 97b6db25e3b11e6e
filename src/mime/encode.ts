/**
 * What the rewriter writes: header lines (folded, RFC 2047 when not ASCII), parameters (RFC 2231),
 * quoted-printable and base64 bodies. Everything leaves as 7-bit ASCII with the message's own
 * line ending.
 */

/** Header text that cannot go out as is: not printable ASCII, or something that looks like an encoded word. */
export function needsEncoding(text: string): boolean {
  return /[^\x20-\x7e\t]/.test(text) || text.includes('=?');
}

/** Line breaks in a value would start a new header field (header injection): they become blanks. */
export function sanitizeValue(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\r\n]+/g, ' ').replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, '');
}

/** A bytes budget per encoded word: 45 bytes give 60 base64 characters, 72 with `=?UTF-8?B??=`. */
const WORD_BYTES = 45;

/** RFC 2047 B-encoding in UTF-8, split between characters into words of at most 75 characters. */
export function encodeWords(text: string): string {
  const words: string[] = [];
  let held: Buffer[] = [];
  let size = 0;
  const flush = (): void => {
    if (size > 0) words.push(`=?UTF-8?B?${Buffer.concat(held, size).toString('base64')}?=`);
    held = [];
    size = 0;
  };
  for (const ch of text) {
    const b = Buffer.from(ch, 'utf8');
    if (size + b.length > WORD_BYTES) flush();
    held.push(b);
    size += b.length;
  }
  flush();
  return words.join(' ');
}

/** `Name: value` folded at blanks to lines of at most 78 characters where the value allows (RFC 5322 2.1.1). */
export function foldHeader(name: string, value: string, eol: string): string {
  let rest = `${name}: ${value}`;
  const lines: string[] = [];
  // a fold needs text before it: after the name on the first line, after the leading blank on the others
  let min = name.length + 2;
  while (rest.length > 78) {
    let i = rest.lastIndexOf(' ', 78);
    if (i < min) i = rest.indexOf(' ', 79);
    if (i < 0) break;
    min = 1;
    lines.push(rest.slice(0, i));
    rest = rest.slice(i);
    if (rest.trim().length === 0) break;
  }
  lines.push(rest);
  return lines.join(eol) + eol;
}

/** A header line from a caller's name and value: name checked, value sanitized and encoded when needed. */
export function headerLine(name: string, value: string, eol: string): string {
  if (!/^[!-9;-~]+$/.test(name)) throw new TypeError(`invalid header name: ${JSON.stringify(name)}`);
  const v = sanitizeValue(value).trim();
  return foldHeader(name, needsEncoding(v) ? encodeWords(v) : v, eol);
}

/** `name="value"` when plain ASCII, else RFC 2231 `name*=UTF-8''%XX..` (continued when long). */
export function encodeParam(name: string, value: string): string {
  const v = sanitizeValue(value);
  if (!/[^\x20-\x7e]/.test(v) && v.length <= 60) return `${name}="${v.replace(/["\\]/g, '\\$&')}"`;
  const pct = encodeURIComponent(v).replace(/['()*!]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  if (pct.length <= 60) return `${name}*=UTF-8''${pct}`;
  const pieces: string[] = [];
  let i = 0;
  while (i < pct.length) {
    let j = Math.min(pct.length, i + 60);
    // do not cut a %XX escape
    const k = pct.lastIndexOf('%', j - 1);
    if (k > j - 3 && k >= i) j = k === i ? Math.min(pct.length, i + 3) : k;
    pieces.push(pct.slice(i, j));
    i = j;
  }
  return pieces.map((p, n) => `${name}*${n}*=${n === 0 ? "UTF-8''" : ''}${p}`).join('; ');
}

/** A `name` parameter for old clients that read only Content-Type: RFC 2047 inside the quotes (what they expect). */
export function encodeLegacyName(value: string): string {
  const v = sanitizeValue(value);
  return needsEncoding(v) ? `name="${encodeWords(v)}"` : `name="${v.replace(/["\\]/g, '\\$&')}"`;
}

const QP_LINE = 76;

/** Quoted-printable (RFC 2045 6.7) of UTF-8 text; its line breaks become hard breaks with `eol`. */
export function encodeQuotedPrintable(text: string, eol: string): string {
  const out: string[] = [];
  for (const line of text.split(/\r\n|\r|\n/)) {
    const bytes = Buffer.from(line, 'utf8');
    let cur = '';
    for (let i = 0; i < bytes.length; i++) {
      const c = bytes[i] as number;
      const last = i === bytes.length - 1;
      let t: string;
      if ((c >= 33 && c <= 126 && c !== 61) || ((c === 32 || c === 9) && !last)) t = String.fromCharCode(c);
      else t = `=${c.toString(16).toUpperCase().padStart(2, '0')}`;
      if (cur.length + t.length > QP_LINE - 1) {
        out.push(`${cur}=`);
        cur = '';
      }
      // No encoded line starts with "-": whatever text a notice quotes, it can never form a
      // boundary line of the message around it (RFC 2049 4 (8)).
      if (cur === '' && t === '-') t = '=2D';
      cur += t;
    }
    out.push(cur);
  }
  return out.join(eol);
}

/** Base64 in lines of 76 characters, each ended with `eol`. */
export function encodeBase64Lines(data: Buffer, eol: string): string {
  const b64 = data.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 76) lines.push(b64.slice(i, i + 76));
  return lines.length === 0 ? '' : lines.join(eol) + eol;
}

/** A media type from a caller: `type/subtype` with optional ASCII parameters, else application/octet-stream. */
export function safeContentType(contentType: string): string {
  const v = sanitizeValue(contentType).trim();
  return /^[!#$%&'*+.^_`|~0-9A-Za-z-]+\/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e]*)?$/.test(v) ? v : 'application/octet-stream';
}
