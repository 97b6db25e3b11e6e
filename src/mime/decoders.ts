/**
 * Streaming Content-Transfer-Encoding decoders. They take the raw body in pieces cut anywhere and
 * give the decoded bytes; bad input never throws: it is decoded as far as it goes and the first
 * fault is kept in `error` (the walker turns it into an `encoding` problem).
 */
export interface BodyDecoder {
  write(data: Buffer): Buffer;
  end(): Buffer;
  /** The first fault met, for the log. */
  readonly error: string | null;
}

const EMPTY = Buffer.alloc(0);
const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const TAB = 0x09;
const EQ = 0x3d;

export class IdentityDecoder implements BodyDecoder {
  readonly error = null;
  write(data: Buffer): Buffer {
    return data;
  }
  end(): Buffer {
    return EMPTY;
  }
}

const B64_NOT_ALPHABET = /[^A-Za-z0-9+/=]+/g;
const B64_INVALID = /[^A-Za-z0-9+/=\s]/;
const B64_ANY_OTHER = /[^A-Za-z0-9+/=]/;
/**
 * Input is decoded in slices of at most this size: the string work costs several times more per
 * byte on strings of hundreds of KiB (measured here: a 2 MB attachment in 1 MiB pieces 25 ms,
 * in 64 KiB pieces 3.6 ms).
 */
const B64_SLICE = 64 * 1024;

/**
 * RFC 2045 6.8. White space is ignored; other characters outside the alphabet are skipped (and
 * reported). A padded quantum ends a run and decoding goes on after it: senders concatenate
 * base64 blocks, and a client that decodes past the padding must not see bytes we did not scan.
 */
export class Base64Decoder implements BodyDecoder {
  error: string | null = null;
  private carry = '';

  write(data: Buffer): Buffer {
    if (data.length <= B64_SLICE) return this.writeSlice(data, null);
    // As one write: an invalid character anywhere in it is the first fault, before a padding fault
    // met while decoding it (what the error said before the input was sliced).
    const before = this.error;
    const junk = { seen: false };
    const out: Buffer[] = [];
    for (let off = 0; off < data.length; off += B64_SLICE) out.push(this.writeSlice(data.subarray(off, off + B64_SLICE), junk));
    if (before === null && junk.seen) this.error = 'invalid character in base64';
    return Buffer.concat(out);
  }

  private writeSlice(data: Buffer, junk: { seen: boolean } | null): Buffer {
    const raw = data.toString('latin1');
    // The usual body is lines of the alphabet ended by CRLF (or LF): dropping the line ends and
    // checking that nothing else is left costs half the general clean-up (two regular expressions
    // over every byte, one of them building the result from a piece per line).
    let s = raw.split(raw.includes('\r\n') ? '\r\n' : '\n').join('');
    if (B64_ANY_OTHER.test(s)) {
      if (junk) junk.seen ||= B64_INVALID.test(raw);
      else if (this.error === null && B64_INVALID.test(raw)) this.error = 'invalid character in base64';
      s = raw.replace(B64_NOT_ALPHABET, '');
    }
    if (this.carry.length > 0) s = this.carry + s;
    return this.decode(s);
  }

  end(): Buffer {
    const rest = this.carry;
    this.carry = '';
    if (rest.length === 1) {
      this.error ??= 'base64 ends inside a quantum';
      return EMPTY;
    }
    return rest.length > 0 ? Buffer.from(rest, 'base64') : EMPTY;
  }

  private decode(input: string): Buffer {
    let s = input;
    let pad = s.indexOf('=');
    if (pad < 0) {
      const whole = s.length - (s.length % 4);
      this.carry = s.slice(whole);
      return whole === 0 ? EMPTY : Buffer.from(whole === s.length ? s : s.slice(0, whole), 'base64');
    }
    const out: Buffer[] = [];
    while (pad >= 0) {
      const q = pad - (pad % 4);
      if (q > 0) out.push(Buffer.from(s.slice(0, q), 'base64'));
      const data = pad - q;
      if (data >= 2) out.push(Buffer.from(s.slice(q, pad), 'base64'));
      else if (data === 1) this.error ??= 'base64 padding after a single character';
      let j = pad;
      while (j < s.length && s.charCodeAt(j) === EQ) j++;
      s = s.slice(j);
      pad = s.indexOf('=');
    }
    const whole = s.length - (s.length % 4);
    if (whole > 0) out.push(Buffer.from(s.slice(0, whole), 'base64'));
    this.carry = s.slice(whole);
    return out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out);
  }
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x57;
  return -1;
}

/**
 * RFC 2045 6.7: `=XX` escapes, `=` at the end of a line is a soft break, trailing blanks of a line
 * are transport padding and dropped. Hard line breaks are kept as the message wrote them. An `=`
 * that starts no valid escape is kept literally (what mail clients show) and reported.
 */
export class QuotedPrintableDecoder implements BodyDecoder {
  error: string | null = null;
  private carry: Buffer | null = null;

  constructor(private readonly maxLineLength: number) {}

  write(data: Buffer): Buffer {
    const b = this.carry ? Buffer.concat([this.carry, data]) : data;
    this.carry = null;
    return this.decode(b, false);
  }

  end(): Buffer {
    const b = this.carry;
    this.carry = null;
    return b ? this.decode(b, true) : EMPTY;
  }

  private decode(b: Buffer, final: boolean): Buffer {
    const out = Buffer.allocUnsafe(b.length);
    let n = 0;
    let i = 0;
    const len = b.length;
    while (i < len) {
      const nl = b.indexOf(LF, i);
      if (nl < 0) {
        // An unfinished line: blanks, CR and a trailing `=`/`=X` wait for what follows.
        let h = len;
        if (!final) {
          while (h > i && (b[h - 1] === SP || b[h - 1] === TAB || b[h - 1] === CR)) h--;
          if (h > i && b[h - 1] === EQ) h--;
          else if (h - 1 > i && b[h - 2] === EQ) h -= 2;
          if (len - h > this.maxLineLength) h = len; // a pathological run of blanks: pass it on as text
          if (h < len) this.carry = b.subarray(h);
          n = this.line(b, i, h, out, n);
        } else {
          while (h > i && (b[h - 1] === SP || b[h - 1] === TAB || b[h - 1] === CR)) h--;
          if (h > i && b[h - 1] === EQ) h--; // soft break at the very end
          n = this.line(b, i, h, out, n);
        }
        break;
      }
      let e = nl;
      const crlf = e > i && b[e - 1] === CR;
      if (crlf) e--;
      while (e > i && (b[e - 1] === SP || b[e - 1] === TAB)) e--;
      if (e > i && b[e - 1] === EQ) {
        n = this.line(b, i, e - 1, out, n);
      } else {
        n = this.line(b, i, e, out, n);
        if (crlf) out[n++] = CR;
        out[n++] = LF;
      }
      i = nl + 1;
    }
    return out.subarray(0, n);
  }

  /** Decodes the escapes of [start, e) into out at `at`; returns the new length. */
  private line(b: Buffer, start: number, e: number, out: Buffer, at: number): number {
    let n = at;
    let s = start;
    while (s < e) {
      const j = b.indexOf(EQ, s);
      if (j < 0 || j >= e) {
        n += b.copy(out, n, s, e);
        break;
      }
      if (j > s) n += b.copy(out, n, s, j);
      const hi = j + 3 <= e ? hexValue(b[j + 1] as number) : -1;
      const lo = j + 3 <= e ? hexValue(b[j + 2] as number) : -1;
      if (hi >= 0 && lo >= 0) {
        out[n++] = hi * 16 + lo;
        s = j + 3;
      } else {
        this.error ??= 'invalid quoted-printable escape';
        out[n++] = EQ;
        s = j + 1;
      }
    }
    return n;
  }
}
