/**
 * A streaming multipart/form-data reader (RFC 7578) for the scanning API: the file part (one that
 * any common parser takes for a file, see partFileName) is handed to `sink` piece by piece (never
 * held whole), other parts are read and dropped. Bounded: preamble and each part's header block
 * at most MAX_HEAD bytes, at most MAX_PARTS parts. Anything malformed or ambiguous is a
 * MultipartError (400).
 */
export class MultipartError extends Error {}

const MAX_HEAD = 8 * 1024;
const MAX_PARTS = 32;
const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');

/** The boundary of a multipart/form-data Content-Type, or null. */
export function multipartBoundary(contentType: string | undefined): string | null {
  if (!contentType || !/^multipart\/form-data\s*;/i.test(contentType)) return null;
  const m = /;\s*boundary=(?:"([^"\r\n]{1,70})"|([^\s;"]{1,70}))/i.exec(contentType);
  return m ? ((m[1] ?? m[2]) as string) : null;
}

const TCHAR = "!#$%&'*+.^_`|~0-9A-Za-z-";
// After the type: `; key = value` with a token or quoted-string value, empty parameters allowed.
const DISPOSITION_TYPE = new RegExp(`^[${TCHAR}]+`);
const DISPOSITION_PARAM = new RegExp(`[ \\t]*;[ \\t]*(?:([${TCHAR}]+)[ \\t]*=[ \\t]*(?:"((?:[^"\\\\]|\\\\.)*)"|([^;\\s"]*)))?`, 'y');
// "filename" as any parser may read it: any case, whitespace before "=", the RFC 2231 forms
// (filename*, filename*0, filename*0*; busboy takes anything after the "*"), also inside another
// parameter's quoted value, where PHP's splitting on ";" and regex-based readers still find it.
const FILENAME_ANYWHERE = new RegExp(`(?<![${TCHAR}])filename\\s*(?:\\*[${TCHAR}]*)?\\s*=`, 'i');
const NAME_ANYWHERE = new RegExp(`(?<![${TCHAR}])name\\s*(?:\\*[${TCHAR}]*)?\\s*=`, 'i');

/**
 * A Content-Disposition's type and parameters (keys lower-cased, with their RFC 2231 "*" forms
 * as sent), or null when it is not `type *(; key=value)`. Strict on purpose: parsers disagree on
 * malformed values (busboy drops the whitespace in "file name=", undici takes no backslash
 * escapes), so what avgate cannot read exactly one way is refused rather than guessed.
 */
function parseDisposition(value: string): { type: string; params: Map<string, string> } | null {
  const t = DISPOSITION_TYPE.exec(value);
  if (!t) return null;
  const params = new Map<string, string>();
  let at = t[0].length;
  for (;;) {
    DISPOSITION_PARAM.lastIndex = at;
    const m = DISPOSITION_PARAM.exec(value);
    if (!m || m[0].length === 0) break;
    at = DISPOSITION_PARAM.lastIndex;
    if (m[1] === undefined) continue;
    const key = m[1].toLowerCase();
    if (!params.has(key)) params.set(key, m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : (m[3] ?? ''));
  }
  if (!/^[ \t]*$/.test(value.slice(at))) return null;
  return { type: t[0].toLowerCase(), params };
}

/** Percent-decoded bytes (RFC 5987 ext-value); a "%" without two hex digits is kept as it is. */
function percentBytes(s: string): Buffer {
  return Buffer.concat(s.split(/(%[0-9A-Fa-f]{2})/).map((piece, i) => (i % 2 === 1 ? Buffer.from([parseInt(piece.slice(1), 16)]) : Buffer.from(piece, 'utf8'))));
}

/**
 * A parameter's value in any of its forms, RFC 2231 first as RFC 6266 4.3 says: `key*=charset'lang'%xx`,
 * continuations `key*0=` / `key*0*=`, `key*1*=`, … (joined in order up to the first gap), then `key=`.
 * Null when none is there.
 */
function paramValue(params: Map<string, string>, key: string): string | null {
  const segments: { value: string; encoded: boolean }[] = [];
  const whole = params.get(`${key}*`);
  if (whole !== undefined) segments.push({ value: whole, encoded: true });
  else {
    for (let i = 0; ; i++) {
      const encoded = params.get(`${key}*${i}*`);
      const plain = params.get(`${key}*${i}`);
      if (encoded !== undefined) segments.push({ value: encoded, encoded: true });
      else if (plain !== undefined) segments.push({ value: plain, encoded: false });
      else break;
    }
  }
  if (segments.length === 0) return params.get(key) ?? null;
  let charset = 'utf-8';
  const bytes: Buffer[] = [];
  segments.forEach((s, i) => {
    let v = s.value;
    if (s.encoded && i === 0) {
      const m = /^([^']*)'[^']*'/.exec(v);
      if (m) {
        charset = (m[1] as string).toLowerCase();
        v = v.slice(m[0].length);
      }
    }
    bytes.push(s.encoded ? percentBytes(v) : Buffer.from(v, 'utf8'));
  });
  // The name is only a label for the scan (logs, engines); an unknown charset is read as UTF-8.
  return Buffer.concat(bytes).toString(/^(iso-8859-1|latin1|us-ascii)$/.test(charset) ? 'latin1' : 'utf8');
}

/**
 * The file name of a form-data part, '' for a part that has none but is a file to some parser,
 * or null for a plain field. Beside a filename in any form: busboy 0.x and @fastify/busboy take
 * any application/octet-stream part for a file, Python's email get_filename() a Content-Type name.
 */
function partFileName(disposition: { params: Map<string, string> }, contentType: string | null): string | null {
  const name = paramValue(disposition.params, 'filename');
  if (name !== null) return name;
  // filename*x=, filename*1= without a *0: no RFC 2231 value, but busboy's "filename" all the same.
  for (const key of disposition.params.keys()) if (key.startsWith('filename*')) return '';
  if (contentType !== null && (/octet-stream/i.test(contentType) || NAME_ANYWHERE.test(contentType))) return '';
  return null;
}

export interface MultipartFile {
  field: string;
  fileName: string;
  contentType: string | null;
}

export async function readMultipartFile(
  body: AsyncIterable<Buffer>,
  boundary: string,
  sink: (chunk: Buffer) => Promise<void>,
): Promise<MultipartFile> {
  const it = body[Symbol.asyncIterator]();
  let buf: Buffer = Buffer.alloc(0);
  let ended = false;
  const fill = async (): Promise<boolean> => {
    if (ended) return false;
    const r = await it.next();
    if (r.done) {
      ended = true;
      return false;
    }
    buf = buf.length === 0 ? r.value : Buffer.concat([buf, r.value]);
    return true;
  };
  const dashBoundary = Buffer.from(`--${boundary}`);
  const delimiter = Buffer.from(`\r\n--${boundary}`);

  // Preamble, then the first boundary.
  for (;;) {
    const i = buf.indexOf(dashBoundary);
    if (i >= 0 && (i === 0 || (i >= 2 && buf[i - 2] === 13 && buf[i - 1] === 10))) {
      buf = buf.subarray(i + dashBoundary.length);
      break;
    }
    if (buf.length > MAX_HEAD + dashBoundary.length) throw new MultipartError('no boundary at the start of the body');
    if (!(await fill())) throw new MultipartError('no boundary in the body');
  }
  let file: MultipartFile | null = null;
  for (let parts = 0; ; parts++) {
    while (buf.length < 2) if (!(await fill())) throw new MultipartError('body ends after a boundary');
    if (buf[0] === 45 && buf[1] === 45) break; // "--": the closing delimiter
    // Transport padding (spaces, tabs) may follow a boundary before its CRLF.
    for (;;) {
      const i = buf.indexOf(CRLF);
      if (i >= 0) {
        if (!/^[ \t]*$/.test(buf.subarray(0, i).toString('latin1'))) throw new MultipartError('garbage after a boundary');
        buf = buf.subarray(i + 2);
        break;
      }
      if (buf.length > 256) throw new MultipartError('garbage after a boundary');
      if (!(await fill())) throw new MultipartError('body ends after a boundary');
    }
    if (parts >= MAX_PARTS) throw new MultipartError(`more than ${MAX_PARTS} parts`);
    // The part's header block.
    let head: string;
    for (;;) {
      if (buf.length >= 2 && buf[0] === 13 && buf[1] === 10) {
        head = '';
        buf = buf.subarray(2);
        break;
      }
      const i = buf.indexOf(HEAD_END);
      if (i >= 0) {
        if (i > MAX_HEAD) throw new MultipartError('part header block too large');
        head = buf.subarray(0, i).toString('utf8');
        buf = buf.subarray(i + 4);
        break;
      }
      if (buf.length > MAX_HEAD) throw new MultipartError('part header block too large');
      if (!(await fill())) throw new MultipartError('body ends inside a part header');
    }
    let disposition: string | null = null;
    let contentType: string | null = null;
    for (const line of head.split('\r\n')) {
      // Obsolete line folding (a line starting with white space) continues the previous header to
      // busboy's dicer and Python's email, and a CR, LF or other control character ends a line to
      // some of them: a parameter could hide there from avgate.
      // eslint-disable-next-line no-control-regex
      if (/^[ \t]|[\x00-\x08\x0a-\x1f\x7f]/.test(line)) throw new MultipartError('bad part header line (folded, or a control character)');
      const colon = line.indexOf(':');
      if (colon <= 0) throw new MultipartError('bad part header line');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      // Parsers disagree on which of two such lines counts (busboy the first, undici the last):
      // the part could be a field to avgate and a file to the next reader.
      if ((name === 'content-disposition' && disposition !== null) || (name === 'content-type' && contentType !== null)) throw new MultipartError(`a part with two ${name} header lines`);
      if (name === 'content-disposition') disposition = value;
      else if (name === 'content-type') contentType = value;
      // RFC 7578 4.7: deprecated; a part sent encoded would be scanned still encoded.
      else if (name === 'content-transfer-encoding' && !/^(7bit|8bit|binary)$/i.test(value)) throw new MultipartError(`Content-Transfer-Encoding ${value.slice(0, 40)} in a form-data part is not taken`);
    }
    const parsed = disposition === null ? null : parseDisposition(disposition);
    if (disposition === null || parsed?.type !== 'form-data') {
      throw new MultipartError(parsed === null && disposition !== null ? 'malformed Content-Disposition' : 'part without Content-Disposition: form-data');
    }
    const fileName = partFileName(parsed, contentType);
    if (fileName === null && FILENAME_ANYWHERE.test(disposition)) throw new MultipartError('a filename inside another parameter of Content-Disposition');
    // One object per request: a second file would otherwise go unscanned while the answer says free.
    if (file !== null && fileName !== null) throw new MultipartError('more than one file part: send one object per request');
    const take = file === null && fileName !== null;
    if (take) file = { field: paramValue(parsed.params, 'name') ?? '', fileName, contentType };
    // The part's body, up to the next delimiter; the last delimiter.length-1 bytes are held back
    // because the delimiter may be split across reads.
    for (;;) {
      const i = buf.indexOf(delimiter);
      if (i >= 0) {
        if (take && i > 0) await sink(buf.subarray(0, i));
        buf = buf.subarray(i + delimiter.length);
        break;
      }
      const keep = delimiter.length - 1;
      if (buf.length > keep) {
        if (take) await sink(buf.subarray(0, buf.length - keep));
        buf = Buffer.from(buf.subarray(buf.length - keep));
      }
      if (!(await fill())) throw new MultipartError('body ends inside a part');
    }
  }
  // The epilogue is ignored, but read, so the connection stays usable.
  while (await fill()) buf = Buffer.alloc(0);
  if (!file) throw new MultipartError('no file part (a form-data part with a filename)');
  return file;
}
