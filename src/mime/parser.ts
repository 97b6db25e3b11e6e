import { cleanFilename, mediaType, parseStructured, rawText, transferEncoding, unfold } from './headers.js';
import type { MimeLimits, MimeProblemCode } from './limits.js';

/**
 * The push parser under the walker and the rewriter: bytes in (cut anywhere), events out, with
 * the absolute offset of every entity's header and body so the rewriter can cut exact byte
 * ranges. It finds structure only (header blocks, delimiter lines); decoding is the walker's.
 *
 * Cost: a body is crossed with Buffer.indexOf("\n--") and handed on in slices; only lines that
 * start with "--" are looked at, and only while a multipart is open. Memory: one header block
 * (max-header-size) and a few hundred bytes of a possible delimiter line are held; no body line.
 *
 * Part ids follow IMAP (RFC 3501 6.4.5): the children of the top multipart are 1, 2 ...; a
 * single-part message's body is 1; children of part 2 are 2.1 ...; the body of an attached
 * message at 2 is 2.1 when single-part, and when multipart its children are 2.1, 2.2 ...
 */

export type EntityKind = 'leaf' | 'multipart' | 'message';

export interface HeaderField {
  /** Lowercase field name. */
  name: string;
  /** Absolute offset of the field's first byte. */
  start: number;
  /** Absolute offset after the line break of its last line. */
  end: number;
  /** Absolute offset just after the colon. */
  valueStart: number;
  /** Absolute offset of the line break of the first line. */
  firstLineEnd: number;
  /** Raw bytes from valueStart to end (line breaks of folding included). */
  raw: Buffer[];
}

export interface Entity {
  /** Part id ('' for the top multipart, which has no IMAP number). */
  id: string;
  depth: number;
  kind: EntityKind;
  parent: Entity | null;
  /** The top entity of the message or of an attached message: its header holds message fields. */
  messageTop: boolean;
  /** Inside an attached message (message/rfc822). */
  inMessage: boolean;
  /** `type/subtype`, lowercase. */
  contentType: string;
  params: Map<string, string>;
  /** Content-Transfer-Encoding, lowercase ('7bit' when absent). */
  encoding: string;
  disposition: string | null;
  filename: string | null;
  /** A container handed over as one document, unopened (depth, boundary, encoded message). */
  opaque: boolean;
  headerStart: number;
  /** Where the header fields end (the blank line starts here, when there is one). */
  headerEnd: number;
  bodyStart: number;
  /** Body end: the line break before the next delimiter belongs to the delimiter (RFC 2046 5.1.1). */
  bodyEnd: number;
  /** The header block was closed by a blank line. */
  blankLine: boolean;
  /** A line break (or nothing) precedes headerEnd: a field inserted there needs no line break first. */
  headerBreak: boolean;
  fields: HeaderField[];
  /** Multipart: children seen so far. */
  children: number;
  /** Multipart: numbering prefix of the children. */
  childPrefix: string;
}

export type ParserEvent =
  /** A header block was parsed (any kind of entity). */
  | { type: 'entity'; entity: Entity }
  /** Raw body bytes of a leaf (or, with the `preamble` option, of a multipart before its first part). */
  | { type: 'data'; entity: Entity; data: Buffer }
  /** The entity ended; bodyEnd is final. */
  | { type: 'end'; entity: Entity }
  | { type: 'problem'; code: MimeProblemCode; partId: string; message: string };

export interface ParserOptions {
  /** Emit data events (the rewriter's structure pass does not need them). */
  data: boolean;
  /** Emit the preamble of multiparts as data (the walker hands it over when no part follows). */
  preamble: boolean;
  /**
   * The message parsed is attached (decoded from an encoded message/rfc822 part) at this part id
   * and depth: its ids and depths continue the outer message's.
   */
  attachedAt?: { id: string; depth: number };
  /** Shared with the parsers of attached messages, so max-parts bounds the whole message. */
  counter?: PartCounter;
}

export interface PartCounter {
  parts: number;
  exceeded: boolean;
}

const LF = 0x0a;
const CR = 0x0d;
const DASH = 0x2d;
const SP = 0x20;
const TAB = 0x09;
const NL_DASH_DASH = Buffer.from('\n--');
const FROM_ = Buffer.from('From ');
/** RFC 2046 allows 70; longer ones are accepted up to this bound, then refused. */
export const MAX_BOUNDARY_LENGTH = 200;
const NEED_MORE = -2;
const NOT_DELIMITER = -1;

interface Container {
  entity: Entity;
  /** Multipart: the boundary bytes (without the dashes). */
  boundary: Buffer | null;
  closed: boolean;
}

/** What a new header block will be. */
interface EntityContext {
  id: string;
  depth: number;
  parent: Entity | null;
  messageTop: boolean;
  inMessage: boolean;
  /** For a message top: the prefix its multipart children are numbered under. */
  msgPrefix: string;
  digest: boolean;
}

interface HeaderState {
  ctx: EntityContext;
  start: number;
  size: number;
  fields: HeaderField[];
  overflow: boolean;
  /** Inside a line too long to keep (overflow) or being skipped. */
  midLine: boolean;
  /** Absolute offset where the last line's line break starts. */
  lastBreak: number;
  /** The last line seen ended with a line break (not cut by the end of the message). */
  lineEnded: boolean;
  first: boolean;
}

type Role = 'leaf' | 'preamble' | 'epilogue' | 'skip';
type Mode = 'header' | 'body' | 'skipline';

function join(prefix: string, n: number | string): string {
  return prefix === '' ? String(n) : `${prefix}.${n}`;
}

export class MimeParser {
  private pending: Buffer | null = null;
  /** Absolute offset of the next buffer's first byte. */
  private base = 0;
  private events: ParserEvent[] = [];
  private readonly stack: Container[] = [];
  private openBoundaries = 0;
  /** The last closed multipart, while its epilogue is read with no boundary open: watched for its own delimiter. */
  private epilogue: { container: Container; pattern: Buffer; tail: Buffer } | null = null;
  private mode: Mode = 'header';
  private hdr: HeaderState;
  private role: Role = 'leaf';
  private current: Entity | null = null;
  private atLineStart = true;
  private after: { container: Container; close: boolean } | null = null;
  private readonly counter: PartCounter;
  private finished = false;

  constructor(
    private readonly limits: MimeLimits,
    private readonly options: ParserOptions,
  ) {
    this.counter = options.counter ?? { parts: 0, exceeded: false };
    const at = options.attachedAt;
    const root: EntityContext = at
      ? { id: join(at.id, 1), depth: at.depth + 1, parent: null, messageTop: true, inMessage: true, msgPrefix: at.id, digest: false }
      : { id: '1', depth: 0, parent: null, messageTop: true, inMessage: false, msgPrefix: '', digest: false };
    this.hdr = this.newHeader(root, 0);
    this.startEntity(root, 0);
  }

  /** Parts (entities and uuencoded files) counted against max-parts. */
  get parts(): number {
    return this.counter.parts;
  }

  /** Bytes pushed so far. */
  get size(): number {
    return this.base + (this.pending?.length ?? 0);
  }

  /** Counts a document found inside a part (a uuencoded file); false once max-parts is reached. */
  countDocument(id: string): boolean {
    const c = this.counter;
    if (c.exceeded) return false;
    if (c.parts >= this.limits.maxParts) {
      c.exceeded = true;
      this.problem('parts', id, `more than ${this.limits.maxParts} parts`);
      return false;
    }
    c.parts++;
    return true;
  }

  /** Takes the problems raised by countDocument() (they are not tied to a push). */
  takeEvents(): ParserEvent[] {
    const e = this.events;
    this.events = [];
    return e;
  }

  push(chunk: Buffer): ParserEvent[] {
    if (this.finished) throw new Error('parser already finished');
    if (chunk.length > 0) {
      const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
      this.pending = null;
      this.run(buf, false);
    }
    return this.takeEvents();
  }

  finish(): ParserEvent[] {
    if (this.finished) return this.takeEvents();
    const buf = this.pending ?? Buffer.alloc(0);
    this.pending = null;
    this.run(buf, true);
    this.finished = true;
    const end = this.base;
    if (this.mode === 'skipline') {
      // A last delimiter line without a line break: a close delimiter still closes; a part
      // that would start at the very end is nothing.
      if (this.after?.close) this.afterDelimiter(end);
      else {
        this.after = null;
        this.current = null;
        this.role = 'skip';
        this.mode = 'body';
      }
    }
    if (this.mode === 'header') this.finishHeader(end, end, false, true, this.hdr.lineEnded);
    this.endCurrent(end);
    while (this.stack.length > 0) this.popContainer(end, true);
    return this.takeEvents();
  }

  // ---- driving -------------------------------------------------------------------------------

  private run(buf: Buffer, eof: boolean): void {
    let pos = 0;
    const end = buf.length;
    while (pos < end) {
      let next: number;
      if (this.mode === 'body') next = this.body(buf, pos, eof);
      else if (this.mode === 'header') next = this.header(buf, pos, eof);
      else next = this.skipLine(buf, pos);
      if (next < 0) break;
      pos = next;
    }
    this.base += end - (this.pending?.length ?? 0);
  }

  private keep(buf: Buffer, from: number): number {
    this.pending = buf.subarray(from);
    return -1;
  }

  private problem(code: MimeProblemCode, partId: string, message: string): void {
    this.events.push({ type: 'problem', code, partId, message });
  }

  // ---- delimiter lines -----------------------------------------------------------------------

  /**
   * Is the line at c (starting "--") a delimiter of an open multipart? Innermost first. A line
   * that starts with "--boundary" is one whatever follows: RFC 2046 forbids the boundary as the
   * prefix of any line inside a part, and a client that accepts it must not see a part we missed.
   * Returns the stack index (close delimiters as -(index + 3)), NOT_DELIMITER or NEED_MORE.
   */
  private delimiterAt(buf: Buffer, c: number, eof: boolean): number {
    const end = buf.length;
    if (end - c < 2) return eof ? NOT_DELIMITER : NEED_MORE;
    if (buf[c] !== DASH || buf[c + 1] !== DASH) return NOT_DELIMITER;
    const from = c + 2;
    for (let i = this.stack.length - 1; i >= 0; i--) {
      const k = this.stack[i] as Container;
      const b = k.boundary;
      if (!b) continue;
      const avail = end - from;
      const n = Math.min(avail, b.length);
      if (buf.compare(b, 0, n, from, from + n) !== 0) continue;
      if (k.closed) {
        // Its epilogue: a reader that goes on after the close delimiter finds more parts here.
        if (n === b.length) this.problem('ambiguous', k.entity.id, 'a delimiter line after the close delimiter');
        continue;
      }
      if (n < b.length) {
        // the line may go on in the next chunk, unless it already ended
        const nl = buf.indexOf(LF, from);
        if (eof || (nl >= 0 && nl < from + n)) continue;
        return NEED_MORE;
      }
      const t = from + b.length;
      if (t + 2 <= end) return buf[t] === DASH && buf[t + 1] === DASH ? -(i + 3) : i;
      if (t + 1 === end && buf[t] !== DASH) return i;
      if (eof) return i;
      return t === end || buf[t] === DASH ? NEED_MORE : i;
    }
    return NOT_DELIMITER;
  }

  /** A delimiter of stack[index] at absolute lb (the line break before it, or the line start). */
  private delimiter(match: number, lb: number): void {
    const close = match <= -3;
    const index = close ? -match - 3 : match;
    this.endCurrent(lb);
    while (this.stack.length - 1 > index) this.popContainer(lb, false);
    const k = this.stack[index] as Container;
    this.after = { container: k, close };
    this.mode = 'skipline';
  }

  private skipLine(buf: Buffer, pos: number): number {
    const nl = buf.indexOf(LF, pos);
    if (nl < 0) return buf.length;
    this.afterDelimiter(this.base + nl + 1);
    return nl + 1;
  }

  private afterDelimiter(at: number): void {
    const a = this.after;
    this.after = null;
    if (!a) return;
    const k = a.container;
    if (a.close) {
      k.closed = true;
      this.openBoundaries--;
      if (k.boundary) this.epilogue = { container: k, pattern: Buffer.concat([NL_DASH_DASH, k.boundary]), tail: Buffer.from([LF]) };
      this.current = k.entity;
      this.role = 'epilogue';
      this.mode = 'body';
      this.atLineStart = true;
      return;
    }
    const parent = k.entity;
    const n = ++parent.children;
    const ctx: EntityContext = {
      id: join(parent.childPrefix, n),
      depth: parent.depth + 1,
      parent,
      messageTop: false,
      inMessage: parent.inMessage,
      msgPrefix: '',
      digest: parent.contentType === 'multipart/digest',
    };
    this.startEntity(ctx, at);
  }

  /** A new header block at absolute `at`, or a skipped part once max-parts is reached. */
  private startEntity(ctx: EntityContext, at: number): void {
    const c = this.counter;
    if (!c.exceeded && c.parts >= this.limits.maxParts) {
      c.exceeded = true;
      this.problem('parts', ctx.id, `more than ${this.limits.maxParts} parts`);
    }
    if (c.exceeded) {
      this.current = null;
      this.role = 'skip';
      this.mode = 'body';
      this.atLineStart = true;
      return;
    }
    c.parts++;
    this.hdr = this.newHeader(ctx, at);
    this.mode = 'header';
  }

  private newHeader(ctx: EntityContext, at: number): HeaderState {
    return { ctx, start: at, size: 0, fields: [], overflow: false, midLine: false, lastBreak: at, lineEnded: true, first: true };
  }

  // ---- header blocks -------------------------------------------------------------------------

  private header(buf: Buffer, pos: number, eof: boolean): number {
    const h = this.hdr;
    const end = buf.length;
    if (h.midLine) {
      const nl = buf.indexOf(LF, pos);
      if (nl < 0) return end;
      h.midLine = false;
      h.lineEnded = true;
      h.lastBreak = this.base + (nl > pos && buf[nl - 1] === CR ? nl - 1 : nl);
      return nl + 1;
    }
    if (end - pos < 2 && !eof) return this.keep(buf, pos);
    const b0 = buf[pos];
    if (b0 === LF || (b0 === CR && buf[pos + 1] === LF)) {
      const len = b0 === LF ? 1 : 2;
      this.finishHeader(this.base + pos, this.base + pos + len, true, false, true);
      return pos + len;
    }
    if (b0 === DASH && this.openBoundaries > 0) {
      const d = this.delimiterAt(buf, pos, eof);
      if (d === NEED_MORE) return this.keep(buf, pos);
      if (d !== NOT_DELIMITER) {
        // A part that ends inside its header block: it has no body.
        const lb = Math.max(h.start, h.lastBreak);
        this.finishHeader(lb, lb, false, true, lb === h.start);
        this.delimiter(d, lb);
        return pos;
      }
    }
    let nl = buf.indexOf(LF, pos);
    if (h.overflow) {
      if (nl < 0) {
        h.midLine = true;
        h.lineEnded = false;
        return end;
      }
      h.lastBreak = this.base + (nl > pos && buf[nl - 1] === CR ? nl - 1 : nl);
      h.lineEnded = true;
      return nl + 1;
    }
    if (nl < 0) {
      if (!eof) {
        if (h.size + (end - pos) > this.limits.maxHeaderSize) {
          this.headerOverflow(h);
          h.midLine = true;
          h.lineEnded = false;
          return end;
        }
        return this.keep(buf, pos);
      }
      nl = end;
    }
    const lineEnd = nl < end ? nl + 1 : end;
    h.lineEnded = nl < end;
    if (h.size + (lineEnd - pos) > this.limits.maxHeaderSize) {
      this.headerOverflow(h);
      if (nl < end) h.lastBreak = this.base + (nl > pos && buf[nl - 1] === CR ? nl - 1 : nl);
      return lineEnd;
    }
    const first = h.first;
    h.first = false;
    const breakAt = nl < end ? (nl > pos && buf[nl - 1] === CR ? nl - 1 : nl) : end;
    if (b0 === SP || b0 === TAB) {
      const f = h.fields[h.fields.length - 1];
      if (f) {
        h.size += lineEnd - pos;
        f.raw.push(buf.subarray(pos, lineEnd));
        f.end = this.base + lineEnd;
        h.lastBreak = this.base + breakAt;
        return lineEnd;
      }
    } else {
      const colon = fieldColon(buf, pos, nl);
      if (colon > 0) {
        h.size += lineEnd - pos;
        h.fields.push({
          name: buf.toString('latin1', pos, colon).trimEnd().toLowerCase(),
          start: this.base + pos,
          end: this.base + lineEnd,
          valueStart: this.base + colon + 1,
          firstLineEnd: this.base + breakAt,
          raw: [buf.subarray(colon + 1, lineEnd)],
        });
        h.lastBreak = this.base + breakAt;
        return lineEnd;
      }
      if (first && this.hdr.ctx.messageTop && buf.compare(FROM_, 0, FROM_.length, pos, Math.min(end, pos + FROM_.length)) === 0) {
        // an mbox separator line before the first field
        h.size += lineEnd - pos;
        h.lastBreak = this.base + breakAt;
        return lineEnd;
      }
    }
    // Neither a field nor a continuation: mail clients start the body here, so we do too.
    this.problem('header', h.ctx.id, 'a line in the header block is not a header field');
    this.finishHeader(this.base + pos, this.base + pos, false, false, true);
    return pos;
  }

  private headerOverflow(h: HeaderState): void {
    if (!h.overflow) {
      h.overflow = true;
      this.problem('header-size', h.ctx.id, `header block larger than ${this.limits.maxHeaderSize} bytes`);
    }
  }

  /** The header block is complete: decide what the entity is and go on to its body. */
  private finishHeader(headerEnd: number, bodyStart: number, blankLine: boolean, noBody: boolean, headerBreak: boolean): void {
    const h = this.hdr;
    const ctx = h.ctx;
    let ctField: HeaderField | undefined;
    let cteField: HeaderField | undefined;
    let cdField: HeaderField | undefined;
    let ambiguous: string | null = null;
    for (const f of h.fields) {
      if (f.name === 'content-type') {
        if (ctField && !sameValue(ctField, f)) ambiguous = 'Content-Type given twice';
        ctField ??= f;
      } else if (f.name === 'content-transfer-encoding') {
        if (cteField && transferEncoding(unfold(rawText(fieldValue(cteField)))) !== transferEncoding(unfold(rawText(fieldValue(f))))) {
          ambiguous = 'Content-Transfer-Encoding given twice';
        }
        cteField ??= f;
      } else if (f.name === 'content-disposition') cdField ??= f;
    }
    const ct = ctField ? parseStructured(unfold(rawText(fieldValue(ctField)))) : null;
    const contentType = (ct && mediaType(ct.value)) ?? (ctx.digest ? 'message/rfc822' : 'text/plain');
    const params = ct?.params ?? new Map<string, string>();
    if (ct && ct.conflicts.size > 0) ambiguous = `parameter ${[...ct.conflicts].join(', ')} given twice`;
    const encoding = cteField ? transferEncoding(unfold(rawText(fieldValue(cteField)))) || '7bit' : '7bit';
    const cd = cdField ? parseStructured(unfold(rawText(fieldValue(cdField)))) : null;
    const entity: Entity = {
      id: ctx.id,
      depth: ctx.depth,
      kind: 'leaf',
      parent: ctx.parent,
      messageTop: ctx.messageTop,
      inMessage: ctx.inMessage,
      contentType,
      params,
      encoding,
      disposition: cd ? cd.value.toLowerCase() || null : null,
      filename: cleanFilename(cd?.params.get('filename') ?? params.get('name')),
      opaque: false,
      headerStart: h.start,
      headerEnd,
      bodyStart,
      bodyEnd: bodyStart,
      blankLine,
      headerBreak,
      fields: h.fields,
      children: 0,
      childPrefix: '',
    };
    this.current = entity;
    this.mode = 'body';
    this.atLineStart = true;
    this.role = 'leaf';
    const major = contentType.slice(0, contentType.indexOf('/'));
    const identity = encoding === '7bit' || encoding === '8bit' || encoding === 'binary';
    if (major === 'multipart') {
      const boundary = params.get('boundary');
      if (boundary !== undefined && boundary.length > 2 && boundary.startsWith("'") && boundary.endsWith("'")) ambiguous ??= 'boundary in single quotes';
    }
    // A structure two readers may see differently: a client must not find a part we did not scan.
    if (ambiguous !== null) this.problem('ambiguous', major === 'multipart' && ctx.messageTop ? ctx.msgPrefix : ctx.id, ambiguous);
    if (major === 'multipart') {
      const boundary = params.get('boundary');
      if (boundary === undefined || boundary.length === 0 || boundary.length > MAX_BOUNDARY_LENGTH || !/^[\x20-\x7e]+$/.test(boundary)) {
        this.problem('boundary', ctx.id, boundary === undefined ? 'multipart without boundary' : 'unusable boundary');
        entity.opaque = true;
      } else if (ctx.depth + 1 > this.limits.maxDepth) {
        this.problem('depth', ctx.id, `nested deeper than ${this.limits.maxDepth}`);
        entity.opaque = true;
      } else if (!noBody) {
        entity.kind = 'multipart';
        if (ctx.messageTop) {
          entity.id = ctx.msgPrefix;
          entity.childPrefix = ctx.msgPrefix;
        } else entity.childPrefix = ctx.id;
        this.stack.push({ entity, boundary: Buffer.from(boundary, 'latin1'), closed: false });
        this.openBoundaries++;
        this.role = 'preamble';
      }
    } else if (contentType === 'message/rfc822' || contentType === 'message/global') {
      // An encoded message is a leaf here; the walker decodes it and walks it as attached.
      if (ctx.depth + 1 > this.limits.maxDepth) {
        this.problem('depth', ctx.id, `nested deeper than ${this.limits.maxDepth}`);
        entity.opaque = true;
      } else if (!noBody && identity) {
        entity.kind = 'message';
        this.stack.push({ entity, boundary: null, closed: false });
        this.events.push({ type: 'entity', entity });
        this.startEntity(
          { id: join(ctx.id, 1), depth: ctx.depth + 1, parent: entity, messageTop: true, inMessage: true, msgPrefix: ctx.id, digest: false },
          bodyStart,
        );
        return;
      }
    }
    this.events.push({ type: 'entity', entity });
  }

  // ---- bodies --------------------------------------------------------------------------------

  private emit(buf: Buffer, from: number, to: number): void {
    if (to <= from || !this.options.data || !this.current) return;
    if (this.role === 'leaf' || (this.role === 'preamble' && this.options.preamble)) {
      this.events.push({ type: 'data', entity: this.current, data: buf.subarray(from, to) });
    }
  }

  /**
   * A delimiter line of a closed multipart in its epilogue: a reader that goes on past the close
   * delimiter finds another part there. Reported once; the pattern may span two chunks.
   */
  private watchEpilogue(buf: Buffer, pos: number, end: number): void {
    const w = this.epilogue as { container: Container; pattern: Buffer; tail: Buffer };
    const data = Buffer.concat([w.tail, buf.subarray(pos, end)]);
    if (data.indexOf(w.pattern) >= 0) {
      this.problem('ambiguous', w.container.entity.id, 'a delimiter line after the close delimiter');
      this.epilogue = null;
      return;
    }
    w.tail = Buffer.from(data.subarray(Math.max(0, data.length - w.pattern.length + 1)));
  }

  private body(buf: Buffer, pos: number, eof: boolean): number {
    const end = buf.length;
    if (this.openBoundaries === 0) {
      if (this.epilogue) this.watchEpilogue(buf, pos, end);
      this.emit(buf, pos, end);
      return end;
    }
    if (this.atLineStart) {
      const d = this.delimiterAt(buf, pos, eof);
      if (d === NEED_MORE) return this.keep(buf, pos);
      if (d !== NOT_DELIMITER) {
        this.delimiter(d, this.base + pos);
        return pos;
      }
      this.atLineStart = false;
    }
    let search = pos;
    while (true) {
      const q = buf.indexOf(NL_DASH_DASH, search);
      if (q < 0) break;
      const lb = q > pos && buf[q - 1] === CR ? q - 1 : q;
      const d = this.delimiterAt(buf, q + 1, eof);
      if (d === NOT_DELIMITER) {
        search = q + 3;
        continue;
      }
      this.emit(buf, pos, lb);
      if (d === NEED_MORE) return this.keep(buf, lb);
      this.delimiter(d, this.base + lb);
      return q + 1;
    }
    if (eof) {
      this.emit(buf, pos, end);
      return end;
    }
    // Hold back a tail that may begin "\r\n--".
    let hold = end;
    const last = buf[end - 1];
    if (last === DASH && end - 2 >= pos && buf[end - 2] === LF) hold = end - 2;
    else if (last === LF || last === CR) hold = end - 1;
    if (hold < end && buf[hold] === LF && hold - 1 >= pos && buf[hold - 1] === CR) hold--;
    this.emit(buf, pos, hold);
    if (hold < end) return this.keep(buf, hold);
    return end;
  }

  /** Ends what the body bytes were going to, at absolute offset `at`. */
  private endCurrent(at: number): void {
    // (a header block in progress is always finished before this is called)
    const e = this.current;
    if (e && this.role === 'leaf') {
      e.bodyEnd = Math.max(e.bodyStart, at);
      this.events.push({ type: 'end', entity: e });
    }
    this.current = null;
    this.role = 'skip';
  }

  private popContainer(at: number, eof: boolean): void {
    const k = this.stack.pop() as Container;
    const e = k.entity;
    e.bodyEnd = Math.max(e.bodyStart, at);
    if (k.boundary) {
      if (!k.closed) this.openBoundaries--;
      // (under the id its body is handed over with, as one document)
      if (e.children === 0) this.problem('boundary', e.messageTop ? join(e.childPrefix, 1) : e.id, 'no part found in the multipart');
      else if (!k.closed) {
        if (eof) this.problem('truncated', e.id, 'the message ends before the multipart is closed');
        else this.problem('boundary', e.id, 'part list not closed by its own delimiter');
      }
    }
    this.events.push({ type: 'end', entity: e });
  }
}

/** The colon of a header field line, or -1 when the line is not `name:` (RFC 5322 2.2, with obsolete blanks before the colon). */
function fieldColon(buf: Buffer, pos: number, nl: number): number {
  let i = pos;
  while (i < nl) {
    const c = buf[i] as number;
    if (c === 0x3a) break;
    if (c <= 0x20 || c >= 0x7f) {
      // blanks may only come between the name and the colon
      if ((c === SP || c === TAB) && i > pos) {
        let j = i;
        while (j < nl && (buf[j] === SP || buf[j] === TAB)) j++;
        return j < nl && buf[j] === 0x3a ? j : -1;
      }
      return -1;
    }
    i++;
  }
  return i > pos && i < nl ? i : -1;
}

/** Raw bytes of a field's value (folding line breaks included). */
export function fieldValue(f: HeaderField): Buffer {
  return f.raw.length === 1 ? (f.raw[0] as Buffer) : Buffer.concat(f.raw);
}

/** Two fields with the same value once unfolded and trimmed (case aside). */
function sameValue(a: HeaderField, b: HeaderField): boolean {
  return unfold(rawText(fieldValue(a))).trim().toLowerCase() === unfold(rawText(fieldValue(b))).trim().toLowerCase();
}
