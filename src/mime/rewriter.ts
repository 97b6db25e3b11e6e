import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { AvgateError } from '../core/errors.js';
import {
  encodeBase64Lines,
  encodeLegacyName,
  encodeParam,
  encodeQuotedPrintable,
  encodeWords,
  headerLine,
  needsEncoding,
  safeContentType,
  sanitizeValue,
} from './encode.js';
import { decodeEncodedWords, rawText, unfold } from './headers.js';
import { readMessage, type MessageInput } from './input.js';
import { DEFAULT_MIME_LIMITS, validateMimeLimits, type MimeLimits } from './limits.js';
import { fieldValue, MimeParser, type Entity, type HeaderField } from './parser.js';

/**
 * One part to change, by the id the walker gave (a uuencoded file's id acts on the text part
 * holding it). The id '' is the whole message: its body is replaced, its message fields kept.
 */
export type PartEdit =
  /** The part becomes a text/plain notice (UTF-8, quoted-printable). */
  | { action: 'remove'; id: string; notice: string }
  /** The part becomes the given bytes (base64), with this media type and file name. */
  | { action: 'replace'; id: string; data: Buffer; contentType: string; filename?: string | null };

export interface HeaderLine {
  name: string;
  /** Line breaks are turned into blanks; non-ASCII text is RFC 2047-encoded; long values are folded. */
  value: string;
}

export interface RewritePlan {
  parts?: readonly PartEdit[];
  /** Fields added at the top of the message header, in this order. */
  addHeaders?: readonly HeaderLine[];
  /** Put before every Subject (not again when it is already there); a message without one gets one. */
  subjectPrefix?: string;
  /** Top-level header fields dropped (case-insensitive names), e.g. a forged X-AV-Status. */
  removeHeaders?: readonly string[];
}

export interface RewriteOptions {
  /** The same limits as the walk that produced the ids (ids past max-parts do not exist). */
  limits?: MimeLimits;
  /** End the output when done (default true). */
  end?: boolean;
  signal?: AbortSignal;
  /** A part to remove or replace that is not found rejects (AVG_ERR_REWRITE) before any byte is written. */
  failOnMissing?: boolean;
}

export interface RewriteResult {
  /** Bytes written. */
  bytes: number;
  /** Part ids changed. */
  applied: string[];
  /** Part ids of the plan not found in the message (nothing written for them). */
  missing: string[];
}

/** A byte range of the input replaced by new bytes (an insertion when start === end). */
interface Edit {
  start: number;
  end: number;
  bytes: Buffer;
}

interface Structure {
  eol: string;
  root: Entity | null;
  targets: Map<string, Entity>;
}

function joinId(prefix: string, n: number): string {
  return prefix === '' ? String(n) : `${prefix}.${n}`;
}

/** The part id a plan entry acts on: `2/uu1` (a uuencoded file) is part 2. */
function partOf(id: string): string {
  const slash = id.indexOf('/');
  return slash < 0 ? id : id.slice(0, slash);
}

/**
 * Writes the message with the plan applied. Every byte the plan does not touch is copied as it
 * was: header fields, parts, line endings, preambles. The input is read twice (structure, then
 * copy); the output is written with backpressure. Nothing of the message is held in memory but
 * the chunk being copied.
 */
export async function rewriteMessage(input: MessageInput, output: Writable, plan: RewritePlan, options: RewriteOptions = {}): Promise<RewriteResult> {
  const limits = options.limits ? validateMimeLimits(options.limits) : DEFAULT_MIME_LIMITS;
  const wanted = new Set((plan.parts ?? []).map((p) => partOf(p.id)));
  const needHeader = (plan.addHeaders?.length ?? 0) > 0 || (plan.subjectPrefix ?? '') !== '' || (plan.removeHeaders?.length ?? 0) > 0;
  let edits: Edit[] = [];
  const applied: string[] = [];
  const missing: string[] = [];
  if (wanted.size > 0 || needHeader) {
    const s = await structure(input, limits, wanted, options.signal);
    edits = planEdits(s, plan, applied, missing);
    if (missing.length > 0 && options.failOnMissing === true) {
      throw new AvgateError('AVG_ERR_REWRITE', `parts to remove or replace not found: ${missing.join(', ')}`);
    }
  }
  const bytes = await copyWithEdits(input, output, edits, options.signal);
  if (options.end !== false) {
    output.end();
    await finished(output, { readable: false });
  }
  return { bytes, applied, missing };
}

/** Pass 1: line ending, the top header and the entities the plan names (all of the walk when parts are wanted). */
async function structure(input: MessageInput, limits: Readonly<MimeLimits>, wanted: Set<string>, signal?: AbortSignal): Promise<Structure> {
  const parser = new MimeParser(limits, { data: false, preamble: false });
  const s: Structure = { eol: '\r\n', root: null, targets: new Map() };
  let first = true;
  const take = (e: Entity, id: string): void => {
    if (wanted.has(id) && !s.targets.has(id)) s.targets.set(id, e);
  };
  const handle = (events: ReturnType<MimeParser['push']>): void => {
    for (const ev of events) {
      if (ev.type === 'entity') {
        const e = ev.entity;
        if (!s.root) {
          s.root = e;
          take(e, '');
        }
        if (e.kind !== 'multipart' || !e.messageTop) take(e, e.id);
      } else if (ev.type === 'end') {
        const e = ev.entity;
        // a multipart in which no part was found is handed over whole by the walker, under this id
        if (e.kind === 'multipart' && e.children === 0) take(e, e.messageTop ? joinId(e.childPrefix, 1) : e.id);
      }
    }
  };
  for await (const chunk of readMessage(input)) {
    signal?.throwIfAborted();
    if (first) {
      first = false;
      const nl = chunk.indexOf(0x0a);
      if (nl >= 0) s.eol = nl > 0 && chunk[nl - 1] === 0x0d ? '\r\n' : '\n';
    }
    handle(parser.push(chunk));
    if (wanted.size === 0 && s.root) break;
  }
  if (wanted.size > 0 || !s.root) handle(parser.finish());
  return s;
}

function planEdits(s: Structure, plan: RewritePlan, applied: string[], missing: string[]): Edit[] {
  const edits: Edit[] = [];
  const eol = s.eol;
  const root = s.root;
  const top: string[] = [];
  for (const h of plan.addHeaders ?? []) top.push(headerLine(h.name, h.value, eol));

  const prefix = sanitizeValue(plan.subjectPrefix ?? '').trim();
  if (prefix !== '') {
    const subjects = root ? root.fields.filter((f) => f.name === 'subject') : [];
    if (subjects.length === 0) top.push(headerLine('Subject', prefix, eol));
    for (const f of subjects) {
      const edit = subjectEdit(f, prefix, eol);
      if (edit) edits.push(edit);
    }
  }
  const drop = new Set((plan.removeHeaders ?? []).map((n) => n.toLowerCase()));
  if (root && drop.size > 0) {
    for (const f of root.fields) if (drop.has(f.name)) edits.push({ start: f.start, end: f.end, bytes: Buffer.alloc(0) });
  }
  if (top.length > 0) {
    // after an mbox "From " line, if there is one
    const at = root?.fields[0]?.start ?? root?.headerStart ?? 0;
    edits.push({ start: at, end: at, bytes: Buffer.from(top.join(''), 'latin1') });
  }

  const done = new Set<string>();
  for (const p of plan.parts ?? []) {
    const id = partOf(p.id);
    if (done.has(id)) continue;
    done.add(id);
    const e = s.targets.get(id);
    if (!e) {
      missing.push(id);
      continue;
    }
    applied.push(id);
    const { headers, body } = newContent(p, eol);
    if (e.messageTop) {
      // The top of a message: its own fields (From, Subject, Received ...) stay, only the
      // Content-* fields and the body change.
      let hasVersion = false;
      for (const f of e.fields) {
        if (f.name.startsWith('content-')) edits.push({ start: f.start, end: f.end, bytes: Buffer.alloc(0) });
        else if (f.name === 'mime-version') hasVersion = true;
      }
      const lines = (e.headerBreak ? '' : eol) + (hasVersion ? '' : `MIME-Version: 1.0${eol}`) + headers + (e.blankLine ? '' : eol);
      edits.push({ start: e.headerEnd, end: e.headerEnd, bytes: Buffer.from(lines, 'latin1') });
      edits.push({ start: e.bodyStart, end: e.bodyEnd, bytes: Buffer.from(body, 'latin1') });
    } else {
      edits.push({ start: e.headerStart, end: e.bodyEnd, bytes: Buffer.from(headers + eol + body, 'latin1') });
    }
  }

  // In order; an edit inside a range already replaced (a part inside a removed part) is dropped.
  edits.sort((a, b) => a.start - b.start || a.end - b.end);
  const out: Edit[] = [];
  let reach = 0;
  for (const e of edits) {
    if (e.start < reach) continue;
    out.push(e);
    reach = e.end;
  }
  return out;
}

function newContent(p: PartEdit, eol: string): { headers: string; body: string } {
  if (p.action === 'remove') {
    const headers =
      `Content-Type: text/plain; charset=utf-8${eol}` + `Content-Transfer-Encoding: quoted-printable${eol}` + `Content-Disposition: inline${eol}`;
    return { headers, body: encodeQuotedPrintable(p.notice, eol) + eol };
  }
  const type = safeContentType(p.contentType);
  const name = p.filename ? sanitizeValue(p.filename).trim() : '';
  const fold = (line: string): string => line.replace(/; /g, `;${eol} `);
  const headers =
    (name ? fold(`Content-Type: ${type}; ${encodeLegacyName(name)}`) : `Content-Type: ${type}`) +
    eol +
    `Content-Transfer-Encoding: base64${eol}` +
    (name ? fold(`Content-Disposition: attachment; ${encodeParam('filename', name)}`) : 'Content-Disposition: attachment') +
    eol;
  return { headers, body: encodeBase64Lines(p.data, eol) };
}

/**
 * The prefix goes in front of the value; the original bytes after it stay as they were (encoded
 * words included). A prefix that must be encoded carries the separating blank inside its encoded
 * word when the value starts with one, because blanks between encoded words vanish (RFC 2047 6.2).
 */
function subjectEdit(f: HeaderField, prefix: string, eol: string): Edit | null {
  const raw = fieldValue(f);
  if (decodeEncodedWords(unfold(rawText(raw))).startsWith(prefix)) return null;
  const firstLine = f.firstLineEnd - f.valueStart;
  let ws = 0;
  while (ws < firstLine && (raw[ws] === 0x20 || raw[ws] === 0x09)) ws++;
  const restOnFirstLine = ws < firstLine;
  const encodedNext = raw.toString('latin1', ws, ws + 2) === '=?';
  const token = needsEncoding(prefix) ? encodeWords(encodedNext ? `${prefix} ` : prefix) : prefix;
  let bytes: string;
  if (!restOnFirstLine) bytes = ` ${token}`;
  else if (f.firstLineEnd - f.start + token.length + 2 > 78) bytes = ` ${token}${eol} `;
  else bytes = ` ${token} `;
  return { start: f.valueStart, end: f.valueStart + ws, bytes: Buffer.from(bytes, 'latin1') };
}

/** Pass 2: the input copied to the output with the edits applied, with backpressure. */
async function copyWithEdits(input: MessageInput, output: Writable, edits: readonly Edit[], signal?: AbortSignal): Promise<number> {
  let written = 0;
  const write = async (buf: Buffer): Promise<void> => {
    if (buf.length === 0) return;
    if (output.destroyed || output.writableEnded) throw new Error('rewrite output closed');
    written += buf.length;
    if (!output.write(buf)) await drained(output);
  };
  let offset = 0;
  let cursor = 0;
  let next = 0;
  for await (const chunk of readMessage(input)) {
    signal?.throwIfAborted();
    const cs = offset;
    const ce = offset + chunk.length;
    let p = Math.max(cs, cursor);
    while (next < edits.length && (edits[next] as Edit).start < ce) {
      const e = edits[next] as Edit;
      next++;
      if (e.start > p) await write(chunk.subarray(p - cs, e.start - cs));
      await write(e.bytes);
      cursor = Math.max(cursor, e.end);
      p = Math.max(p, e.end);
      if (p >= ce) break;
    }
    if (p < ce) await write(chunk.subarray(p - cs));
    cursor = Math.max(cursor, ce);
    offset = ce;
  }
  // edits at the very end (insertions into an empty message, a body at the end)
  while (next < edits.length) await write((edits[next++] as Edit).bytes);
  return written;
}

function drained(output: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      output.off('drain', onDrain);
      output.off('error', onError);
      output.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = (): void => done();
    const onError = (err: Error): void => done(err);
    const onClose = (): void => done(new Error('rewrite output closed'));
    output.on('drain', onDrain);
    output.on('error', onError);
    output.on('close', onClose);
  });
}
