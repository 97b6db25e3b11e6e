/**
 * A streaming multipart/form-data reader (RFC 7578) for the scanning API: the first part with a
 * file name is handed to `sink` piece by piece (never held whole), other parts are read and
 * dropped. Bounded: preamble and each part's header block at most MAX_HEAD bytes, at most
 * MAX_PARTS parts. Anything malformed is a MultipartError (400).
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

function param(header: string, name: string): string | null {
  const re = new RegExp(`;\\s*${name}=(?:"((?:[^"\\\\]|\\\\.)*)"|([^;\\s]*))`, 'i');
  const m = re.exec(header);
  if (!m) return null;
  return m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : (m[2] ?? null);
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
    let disposition = '';
    let contentType: string | null = null;
    for (const line of head.split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon <= 0) throw new MultipartError('bad part header line');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === 'content-disposition') disposition = value;
      else if (name === 'content-type') contentType = value;
      // RFC 7578 4.7: deprecated; a part sent encoded would be scanned still encoded.
      else if (name === 'content-transfer-encoding' && !/^(7bit|8bit|binary)$/i.test(value)) throw new MultipartError(`Content-Transfer-Encoding ${value.slice(0, 40)} in a form-data part is not taken`);
    }
    if (!/^form-data\s*(;|$)/i.test(disposition)) throw new MultipartError('part without Content-Disposition: form-data');
    const fileName = param(disposition, 'filename');
    // One object per request: a second file would otherwise go unscanned while the answer says free.
    if (file !== null && fileName !== null) throw new MultipartError('more than one file part: send one object per request');
    const take = file === null && fileName !== null;
    if (take) file = { field: param(disposition, 'name') ?? '', fileName, contentType };
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
