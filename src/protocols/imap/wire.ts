/**
 * IMAP4rev1 framing (RFC 3501 §4.3, §7.5; RFC 7888 LITERAL+/LITERAL-; RFC 3516 literal8) as an
 * incremental tokenizer shared by both directions of the proxy. A protocol "message" (a command or a
 * response) is one or more text segments; every segment but the last ends with a literal marker
 * `{n}`, `{n+}` or `~{n}` and is followed by exactly n bytes of literal data. The tokenizer never
 * holds a literal: its bytes are handed out as views of the received chunks, so the caller can spool
 * them. Only text segments are bounded (max-line-length): an overlong one is reported once and
 * skipped to its line end, so one bad line never desynchronises the stream.
 */

export interface LiteralSpec {
  size: number;
  /** `{n+}`: non-synchronising (the client does not wait for `+`). */
  plus: boolean;
  /** `~{n}`: literal8 (RFC 3516), may hold NUL bytes. */
  binary: boolean;
  /** Where the marker starts in the segment text (for rewriting the octet count). */
  markerStart: number;
}

export type WireEvent =
  /**
   * One text segment. `text` is without its line ending; `raw` is the bytes as received (for
   * untouched relaying). `first`: the segment starts a new command/response. `literal`: the segment
   * ends with a literal marker whose data follows; null = the command/response ends here.
   */
  | { kind: 'text'; text: Buffer; raw: Buffer; first: boolean; literal: LiteralSpec | null }
  /** A piece of literal data (a view, valid until the next push()). */
  | { kind: 'data'; data: Buffer }
  /** The literal announced by the previous text segment is complete. */
  | { kind: 'literal-end' }
  /** A segment over the line limit; `head` = its first bytes (the tag); the rest is skipped. */
  | { kind: 'overflow'; head: Buffer; first: boolean };

export type WireRole = 'client' | 'server';

export interface WireOptions {
  /** Longest text segment in bytes (without the line ending). */
  maxLineLength: number;
  /**
   * 'server': a continuation request (`+ ...`) and status responses (OK/NO/BAD/BYE/PREAUTH) carry
   * free text, never literals, so a `{5}` at their end is text. 'client': every marker counts.
   */
  role: WireRole;
}

/** `{123}`, `{123+}`, `~{123}` at the very end of a segment (RFC 3501 literal, RFC 7888, RFC 3516). */
const MARKER = /(~?)\{(\d{1,40})(\+?)\}$/;
const LF = 0x0a;
const CR = 0x0d;
/** Bytes of an overlong segment kept for its tag. */
const HEAD_BYTES = 64;

/** Status responses: their text is free-form (RFC 3501 resp-text), no literals. */
const STATUS_RESPONSE = /^(?:\*|[^\s*+]+) (?:OK|NO|BAD|BYE|PREAUTH)(?:[\s[]|$)/i;

export function parseLiteralMarker(text: Buffer): LiteralSpec | null {
  // A marker is short; look only at the tail (a long segment is not re-scanned).
  const tail = text.subarray(Math.max(0, text.length - 48)).toString('latin1');
  const m = MARKER.exec(tail);
  if (!m) return null;
  // A count past 2^53 is still a literal (the server would take it as one): too large for any
  // limit, so it is refused like any other oversized one, never relayed as command text.
  const size = Math.min(Number(m[2]), Number.MAX_SAFE_INTEGER);
  return { size, plus: m[3] === '+', binary: m[1] === '~', markerStart: text.length - m[0].length };
}

/** The marker for a literal of `size` octets (server responses never use `+`). */
export function literalMarker(size: number, opts: { binary?: boolean; plus?: boolean } = {}): string {
  return `${opts.binary ? '~' : ''}{${size}${opts.plus ? '+' : ''}}`;
}

/** The segment text with its literal marker rewritten for a literal of `size` octets, plus CRLF. */
export function rewriteMarker(text: Buffer, spec: LiteralSpec, size: number, opts: { plus?: boolean } = {}): Buffer {
  return Buffer.concat([text.subarray(0, spec.markerStart), Buffer.from(`${literalMarker(size, { binary: spec.binary, plus: opts.plus ?? false })}\r\n`, 'latin1')]);
}

export class ImapWireParser {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  /** Where the search for LF in the current segment continues (no quadratic re-scan). */
  private searched = 0;
  private state: 'line' | 'literal' | 'skip' = 'line';
  private literalLeft = 0;
  private first = true;
  /** The current command/response started with a segment that cannot carry literals. */
  private noLiterals = false;

  constructor(private readonly opts: WireOptions) {}

  /** Unconsumed bytes held (a partial segment; bounded by maxLineLength when next() is drained). */
  get buffered(): number {
    return this.buf.length - this.pos;
  }

  /** True between messages (no partial segment or literal pending). */
  get atMessageStart(): boolean {
    return this.state === 'line' && this.first && this.buffered === 0;
  }

  /** Adds received bytes. Drain next() before pushing more, or unconsumed bytes accumulate. */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.pos >= this.buf.length) {
      this.buf = chunk;
      this.searched = 0;
    } else {
      this.buf = Buffer.concat([this.buf.subarray(this.pos), chunk]);
      this.searched -= this.pos;
    }
    this.pos = 0;
  }

  /**
   * The literal announced by the last text event will not come (a synchronising literal the proxy
   * refused): the next bytes start a new command.
   */
  cancelLiteral(): void {
    if (this.state !== 'literal') return;
    this.state = 'line';
    this.first = true;
    this.literalLeft = 0;
  }

  /** The next event, or null when more bytes are needed. */
  next(): WireEvent | null {
    for (;;) {
      switch (this.state) {
        case 'literal': {
          if (this.literalLeft === 0) {
            this.state = 'line';
            return { kind: 'literal-end' };
          }
          const avail = this.buf.length - this.pos;
          if (avail === 0) return null;
          const n = Math.min(avail, this.literalLeft);
          const data = this.buf.subarray(this.pos, this.pos + n);
          this.pos += n;
          this.searched = this.pos;
          this.literalLeft -= n;
          return { kind: 'data', data };
        }
        case 'skip': {
          const i = this.buf.indexOf(LF, this.pos);
          if (i < 0) {
            this.pos = this.buf.length;
            this.searched = this.pos;
            return null;
          }
          this.pos = i + 1;
          this.searched = this.pos;
          this.state = 'line';
          this.first = true;
          continue;
        }
        case 'line': {
          const from = Math.max(this.searched, this.pos);
          const i = this.buf.indexOf(LF, from);
          const limit = this.opts.maxLineLength + 2;
          if (i < 0) {
            this.searched = this.buf.length;
            if (this.buf.length - this.pos > limit) return this.overflow();
            return null;
          }
          if (i - this.pos + 1 > limit) return this.overflow();
          const raw = this.buf.subarray(this.pos, i + 1);
          const end = i > this.pos && this.buf[i - 1] === CR ? i - 1 : i;
          const text = this.buf.subarray(this.pos, end);
          if (text.length > this.opts.maxLineLength) return this.overflow();
          this.pos = i + 1;
          this.searched = this.pos;
          const first = this.first;
          if (first) this.noLiterals = this.opts.role === 'server' && cannotCarryLiterals(text);
          const literal = this.noLiterals ? null : parseLiteralMarker(text);
          if (literal) {
            this.state = 'literal';
            this.literalLeft = literal.size;
            this.first = false;
          } else {
            this.first = true;
          }
          return { kind: 'text', text, raw, first, literal };
        }
      }
    }
  }

  private overflow(): WireEvent {
    const head = Buffer.from(this.buf.subarray(this.pos, this.pos + HEAD_BYTES));
    const first = this.first;
    this.state = 'skip';
    return { kind: 'overflow', head, first };
  }
}

function cannotCarryLiterals(text: Buffer): boolean {
  if (text[0] === 0x2b /* + */) return true;
  return STATUS_RESPONSE.test(text.subarray(0, 32).toString('latin1'));
}

/**
 * The tag of a client command (first atom), or null when the line does not start with one. `}`
 * is an atom character (RFC 3501 §9) that servers (Dovecot) take in a tag, and so is DEL (0x7f,
 * a CTL to the RFC, yet Dovecot 2.3 takes `\x7f LOGIN ...` as a login): a tag the proxy did not
 * see as one would let the command pass unexamined (LOGIN in clear, the command-acl).
 */
export function commandTag(text: Buffer): string | null {
  const s = text.subarray(0, 128).toString('latin1');
  const m = /^([\x21\x23-\x27\x2c-\x5b\x5d-\x7a\x7c-\x7f]{1,64})(?: |$)/.exec(s);
  return m ? (m[1] as string) : null;
}

/** Tag and command name (upper case; `UID FETCH` style for UID commands), or null. */
export function commandName(text: Buffer): { tag: string; name: string; rest: string } | null {
  const s = text.toString('latin1');
  const m = /^(\S{1,64}) ([A-Za-z][A-Za-z0-9.-]{0,31})(?: ([A-Za-z][A-Za-z0-9.-]{0,31}))?(?= |$)/.exec(s);
  if (!m || !commandTag(text)) return null;
  const first = (m[2] as string).toUpperCase();
  if (first === 'UID' && m[3]) {
    return { tag: m[1] as string, name: `UID ${m[3].toUpperCase()}`, rest: s.slice(m[0].length) };
  }
  const restStart = (m[1] as string).length + 1 + (m[2] as string).length;
  return { tag: m[1] as string, name: first, rest: s.slice(restStart) };
}

/**
 * FETCH items whose strings are never relayed: a preview (RFC 8970 PREVIEW, Dovecot's SNIPPET) is
 * up to 200 characters of the message text, decoded by the server and never scanned. The proxy
 * does not offer them; a server that sends one anyway has its strings (quoted or literal) blanked
 * to `""` (FetchItemTracker.hidden, literalHidden; blankStrings).
 */
const HIDDEN_ITEM = /^(?:PREVIEW|SNIPPET)$/;

/**
 * Follows the attribute list of an untagged FETCH response across its segments (RFC 3501 §7.4.2)
 * to tell which item a literal is the value of. Items are `NAME value` pairs at depth 1; a literal
 * inside a nested list (ENVELOPE, BODYSTRUCTURE strings) belongs to no item of interest.
 */
export class FetchItemTracker {
  private depth = 0;
  private expectName = true;
  private item: string | null = null;
  /** Quoted strings of a hidden item (PREVIEW, SNIPPET) in the last segment walked: [start, end) offsets. */
  hidden: Array<[number, number]> = [];

  /**
   * Starts a response; false when the segment is not `* n FETCH (`.
   */
  start(text: Buffer): boolean {
    const s = text.toString('latin1');
    const m = /^\* \d+ FETCH \(/i.exec(s);
    this.hidden = [];
    if (!m) return false;
    this.depth = 1;
    this.expectName = true;
    this.item = null;
    this.walk(s, m[0].length);
    return true;
  }

  /** A following segment (the text after a literal). */
  continue(text: Buffer): void {
    this.hidden = [];
    this.walk(text.toString('latin1'), 0);
  }

  /**
   * Called before literalItem() when the segment ended with a literal marker: the literal is a
   * string of a hidden item's value (`PREVIEW {76}`, `SNIPPET (FUZZY {76}`).
   */
  literalHidden(): boolean {
    return this.depth >= 1 && !this.expectName && this.item !== null && HIDDEN_ITEM.test(this.item);
  }

  /**
   * Called when the segment ended with a literal marker (the marker excluded from the walked text):
   * the item name when the literal is a top-level item's value, else null.
   */
  literalItem(): string | null {
    if (this.depth === 1 && !this.expectName && this.item !== null) {
      const name = this.item;
      // The literal is the value: the next thing at depth 1 is a name.
      this.expectName = true;
      this.item = null;
      return name;
    }
    return null;
  }

  /** Walks a piece of the attribute list (without a trailing literal marker) from `i`. */
  private walk(s: string, i: number): void {
    while (i < s.length) {
      const c = s[i] as string;
      if (c === ' ') {
        i++;
        continue;
      }
      if (c === '{' || c === '~') {
        // The literal marker at the end of this segment: handled by literalItem().
        const rest = s.slice(i);
        if (/^~?\{\d+\+?\}$/.test(rest)) return;
      }
      if (this.depth > 1) {
        i = this.skipInList(s, i);
        continue;
      }
      if (c === ')') {
        this.depth = 0;
        i++;
        continue;
      }
      if (this.expectName) {
        const end = scanItemName(s, i);
        this.item = s.slice(i, end).toUpperCase();
        this.expectName = false;
        i = end;
        continue;
      }
      // A value at depth 1.
      if (c === '(') {
        this.depth++;
        i++;
        continue;
      }
      if (c === '"') i = this.quoted(s, i);
      else i = skipAtom(s, i);
      this.expectName = true;
      this.item = null;
    }
  }

  /** Skips a quoted string; one of a hidden item's value is noted in `hidden`. */
  private quoted(s: string, i: number): number {
    const end = skipQuoted(s, i);
    if (this.item !== null && HIDDEN_ITEM.test(this.item)) this.hidden.push([i, end]);
    return end;
  }

  /** Inside a nested list: follow parentheses and quoted strings only. */
  private skipInList(s: string, i: number): number {
    const c = s[i] as string;
    if (c === '(') {
      this.depth++;
      return i + 1;
    }
    if (c === ')') {
      this.depth--;
      if (this.depth === 1) {
        this.expectName = true;
        this.item = null;
      }
      return i + 1;
    }
    if (c === '"') return this.quoted(s, i);
    return skipAtom(s, i);
  }
}

/** The segment with the given spans (quoted strings) each replaced by `""`. */
export function blankStrings(text: Buffer, spans: ReadonlyArray<readonly [number, number]>): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  for (const [start, end] of spans) {
    out.push(text.subarray(at, start), Buffer.from('""'));
    at = end;
  }
  out.push(text.subarray(at));
  return Buffer.concat(out);
}

/** An item name: an atom with an optional `[section]` (which may hold lists and quoted strings) and `<partial>`. */
function scanItemName(s: string, i: number): number {
  let j = i;
  while (j < s.length && !' ()[{"'.includes(s[j] as string)) j++;
  if (s[j] === '[') {
    let depth = 0;
    while (j < s.length) {
      const c = s[j] as string;
      if (c === '"') {
        j = skipQuoted(s, j);
        continue;
      }
      if (c === '[') depth++;
      if (c === ']') {
        depth--;
        if (depth === 0) {
          j++;
          break;
        }
      }
      j++;
    }
    if (s[j] === '<') {
      const k = s.indexOf('>', j);
      j = k < 0 ? s.length : k + 1;
    }
  }
  return Math.max(j, i + 1);
}

function skipQuoted(s: string, i: number): number {
  let j = i + 1;
  while (j < s.length) {
    const c = s[j];
    if (c === '\\') j += 2;
    else if (c === '"') return j + 1;
    else j++;
  }
  return s.length;
}

function skipAtom(s: string, i: number): number {
  let j = i;
  while (j < s.length && !' ()"'.includes(s[j] as string)) {
    if (s[j] === '[') {
      const k = s.indexOf(']', j);
      j = k < 0 ? s.length : k + 1;
    } else j++;
  }
  return Math.max(j, i + 1);
}

export type ContentKind =
  /** The whole message (BODY[], RFC822, BINARY[]): scanned as a message, infected parts replaced. */
  | { kind: 'message'; partial: boolean; binary: boolean }
  /** A body part or the text of a message (BODY[1.2], BODY[TEXT], RFC822.TEXT, BINARY[2]): a document. */
  | { kind: 'part'; partial: boolean; binary: boolean }
  /** Header-only items and everything else: relayed untouched. */
  | { kind: 'other' };

/**
 * What a FETCH item name (as echoed by the server) carries. BODY.PEEK[...] is echoed as BODY[...]
 * (RFC 3501 §7.4.2), but a server that echoes PEEK is understood too.
 */
export function contentKindOf(item: string): ContentKind {
  const name = item.toUpperCase();
  if (name === 'RFC822') return { kind: 'message', partial: false, binary: false };
  if (name === 'RFC822.TEXT') return { kind: 'part', partial: false, binary: false };
  const m = /^(BODY|BINARY)(?:\.PEEK)?\[([^\]]*)\](<\d+(?:\.\d+)?>)?$/.exec(name);
  if (!m) return { kind: 'other' };
  const section = m[2] as string;
  const partial = m[3] !== undefined;
  const binary = m[1] === 'BINARY';
  if (section === '') return { kind: 'message', partial, binary };
  // Headers only: HEADER, HEADER.FIELDS (...), HEADER.FIELDS.NOT (...), n.MIME, n.HEADER.
  if (/(?:^|\.)(?:HEADER(?:\.FIELDS(?:\.NOT)?\s*\(.*\))?|MIME)$/.test(section)) return { kind: 'other' };
  return { kind: 'part', partial, binary };
}

/**
 * Capabilities of the server the proxy cannot honour toward the client: STARTTLS (the proxy's own
 * STARTTLS is added instead when it has a certificate), COMPRESS (the stream would no longer be
 * parseable), CATENATE (the message would be put together on the server from pieces the proxy
 * cannot scan as one), PREVIEW and SNIPPET (message text the server decodes and cuts, unscanned:
 * see HIDDEN_ITEM).
 */
const UNSUPPORTED_CAPABILITY = /^(?:STARTTLS|COMPRESS=\S+|CATENATE|PREVIEW(?:=\S+)?|SNIPPET(?:=\S+)?)$/i;

export interface CapabilityFilter {
  /** Remove the `[CAPABILITY ...]` response code entirely (stale after an upstream STARTTLS). */
  dropCode?: boolean;
  /** The proxy's max-literal-size: a larger APPENDLIMIT is lowered to it. */
  appendLimit?: number;
  /** The proxy's own capabilities, appended (STARTTLS, LOGINDISABLED). */
  add?: readonly string[];
  /** Leave out AUTH=... (logging in is refused before STARTTLS). */
  dropAuth?: boolean;
  /** Keep only these AUTH= mechanisms (upper case): the others would be refused by the proxy. */
  authMechanisms?: ReadonlySet<string>;
}

function authOffered(c: string, opts: CapabilityFilter): boolean {
  if (!/^AUTH=/i.test(c)) return true;
  if (opts.dropAuth === true) return false;
  return opts.authMechanisms === undefined || opts.authMechanisms.has(c.slice(5).toUpperCase());
}

function filterCapabilityList(list: string, opts: CapabilityFilter): string {
  const { appendLimit } = opts;
  return [
    ...list
      .split(' ')
      .filter((c) => c !== '' && !UNSUPPORTED_CAPABILITY.test(c) && authOffered(c, opts))
      .map((c) => {
        // RFC 7889: the server's limit, lowered to the proxy's own (max-literal-size).
        const m = /^APPENDLIMIT=(\d+)$/i.exec(c);
        return m && appendLimit !== undefined && Number(m[1]) > appendLimit ? `APPENDLIMIT=${appendLimit}` : c;
      }),
    ...(opts.add ?? []),
  ]
    .filter((c, i, all) => all.indexOf(c) === i)
    .join(' ');
}

/**
 * A server line with its capability list filtered: `* CAPABILITY ...` and a `[CAPABILITY ...]`
 * response code (greeting, tagged OK after login). Other lines come back unchanged (the same
 * Buffer).
 */
export function filterCapabilities(text: Buffer, opts: CapabilityFilter = {}): Buffer {
  const s = text.toString('latin1');
  const untagged = /^\* CAPABILITY (.*)$/i.exec(s);
  if (untagged) return Buffer.from(`* CAPABILITY ${filterCapabilityList(untagged[1] as string, opts)}`, 'latin1');
  const code = /^(\S+ (?:OK|PREAUTH) )\[CAPABILITY ([^\]]*)\] ?(.*)$/i.exec(s);
  if (!code) return text;
  if (opts.dropCode) return Buffer.from(`${code[1]}${code[3]}`, 'latin1');
  return Buffer.from(`${code[1]}[CAPABILITY ${filterCapabilityList(code[2] as string, opts)}] ${code[3]}`, 'latin1');
}

/** The capability names in a line filtered by filterCapabilities (upper case), or null when it has none. */
export function capabilitiesOf(text: Buffer): Set<string> | null {
  const s = text.toString('latin1');
  const m = /^\* CAPABILITY (.*)$/i.exec(s) ?? /^\S+ (?:OK|PREAUTH) \[CAPABILITY ([^\]]*)\]/i.exec(s);
  return m ? new Set((m[1] as string).toUpperCase().split(' ').filter(Boolean)) : null;
}
