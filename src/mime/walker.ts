import { tmpdir } from 'node:os';
import { Spool } from '../core/spool.js';
import type { ScanSource } from '../scan/types.js';
import { Base64Decoder, IdentityDecoder, QuotedPrintableDecoder, type BodyDecoder } from './decoders.js';
import { readMessage, type MessageInput } from './input.js';
import { DEFAULT_MIME_LIMITS, validateMimeLimits, type MimeLimits, type MimeProblem, type MimeProblemCode } from './limits.js';
import { MimeParser, type Entity, type ParserEvent, type PartCounter } from './parser.js';
import { UuScanner, type UuEvent } from './uuencode.js';

/** What the walker tells about one document (a leaf part, a uuencoded file, an unopened container). */
export interface MimeDocumentInfo {
  /** Document id: the part id, or `<part id>/uu<n>` for the n-th uuencoded file inside a text part. */
  id: string;
  /** The MIME part to act on (rewriteMessage): the part itself, or the text part holding a uuencoded file. */
  partId: string;
  /** part: a leaf part (or a container handed over unopened); uuencode: a file found in a text part; preamble: the text of a multipart in which no part was found. */
  kind: 'part' | 'uuencode' | 'preamble';
  /** Containers (multiparts, attached messages) above it; the top of the message is 0. */
  depth: number;
  /** `type/subtype`, lowercase (text/plain when absent or invalid, RFC 2045 5.2). */
  contentType: string;
  charset: string | null;
  /** Content-Disposition filename, else Content-Type name (RFC 2231 and RFC 2047 decoded); the `begin` line's name for a uuencoded file. */
  filename: string | null;
  /** Content-Disposition value (`inline`, `attachment`), lowercase. */
  disposition: string | null;
  /** Content-Transfer-Encoding as written (lowercase), `uuencode` / `base64` for files found in text. */
  encoding: string;
  /** Decoded bytes handed over. */
  size: number;
  /** Cut at max-decoded-size. */
  truncated: boolean;
  /** Inside an attached message (message/rfc822). */
  inAttachedMessage: boolean;
  /** A multipart or message handed over as raw bytes, not opened (depth, bad boundary, encoded message). */
  opaque: boolean;
  /** Problems recorded for this document so far. */
  problems: readonly MimeProblem[];
  /** The content hash (core/content-hash.ts) of the decoded bytes when `hash` was asked for. */
  contentHash: string | null;
}

/** A document handed to the callback: its decoded bytes are in `spool` until the callback returns. */
export interface MimeDocument extends MimeDocumentInfo {
  readonly spool: Spool;
  /** The decoded bytes as a scanner source (chunks in memory, or the spool's temp file). */
  source(): ScanSource;
}

export type DocumentHandler<T> = (doc: MimeDocument) => Promise<T> | T;

export interface WalkOptions {
  limits?: MimeLimits;
  /** Where documents larger than spoolMemoryLimit are written (default: the OS temp dir). */
  spoolDir?: string;
  /** Decoded bytes of one document kept in memory before its spool goes to a temp file. */
  spoolMemoryLimit?: number;
  /** Compute the content hash (core/content-hash.ts) of each document on the way (for the verdict cache). */
  hash?: boolean;
  signal?: AbortSignal;
}

export interface WalkResult<T> {
  /** Every document in message order (uuencoded files before the text part holding them), with what the callback returned. */
  documents: Array<{ document: MimeDocumentInfo; result: T }>;
  problems: MimeProblem[];
  /** Parts counted against max-parts (entities and uuencoded files). */
  parts: number;
  /** Bytes of the message. */
  size: number;
}

export const DEFAULT_SPOOL_MEMORY_LIMIT = 1024 * 1024;
/** Problems kept per message; beyond it the message is corrupted anyway. */
const MAX_PROBLEMS = 1000;

function joinId(prefix: string, n: number): string {
  return prefix === '' ? String(n) : `${prefix}.${n}`;
}

interface Builder {
  info: Omit<MimeDocumentInfo, 'problems' | 'contentHash' | 'size' | 'truncated'>;
  spool: Spool;
  decoder: BodyDecoder;
  uu: UuScanner | null;
  /** An encoded attached message: walked once decoded, not handed over itself. */
  nested: boolean;
  uuCount: number;
  uuDoc: Builder | null;
  size: number;
  cut: boolean;
  encodingReported: boolean;
}

const UU_ENCODINGS = new Set(['x-uuencode', 'uuencode', 'x-uue', 'uue']);

/**
 * Walks every part of a message and hands each leaf document, decoded, to `onDocument`, one at a
 * time (the walk waits for it). Bad input never throws: it ends up in `problems`, and what could
 * be decoded is still handed over. Errors reading the input, and the callback's own, do reject.
 */
export async function walkMessage<T>(input: MessageInput, options: WalkOptions, onDocument: DocumentHandler<T>): Promise<WalkResult<T>> {
  const limits = options.limits ? validateMimeLimits(options.limits) : DEFAULT_MIME_LIMITS;
  const shared: Shared<T> = {
    limits,
    options,
    onDocument,
    problems: [],
    seen: new Set(),
    documents: [],
    live: new Set(),
    counter: { parts: 0, exceeded: false },
    spoolDir: options.spoolDir ?? tmpdir(),
    spoolMemoryLimit: options.spoolMemoryLimit ?? DEFAULT_SPOOL_MEMORY_LIMIT,
  };
  let size: number;
  try {
    size = await new Walk(shared, null).run(input);
  } finally {
    const spools = [...shared.live];
    shared.live.clear();
    await Promise.all(spools.map((s) => s.dispose()));
  }
  return { documents: shared.documents, problems: shared.problems, parts: shared.counter.parts, size };
}

/** What the walks of one message share (an encoded attached message gets a walk of its own). */
interface Shared<T> {
  limits: Readonly<MimeLimits>;
  options: WalkOptions;
  onDocument: DocumentHandler<T>;
  problems: MimeProblem[];
  seen: Set<string>;
  documents: Array<{ document: MimeDocumentInfo; result: T }>;
  live: Set<Spool>;
  counter: PartCounter;
  spoolDir: string;
  spoolMemoryLimit: number;
}

/** Where a walk of an attached message sits in the outer one. */
interface Attached {
  id: string;
  depth: number;
  /** The outer part the rewriter acts on. */
  partId: string;
}

const IDENTITY = new Set(['7bit', '8bit', 'binary']);

class Walk<T> {
  private readonly parser: MimeParser;
  private readonly limits: Readonly<MimeLimits>;
  private readonly docs = new Map<Entity, Builder>();
  /** Open multiparts with their preamble (null until it has bytes); dropped at their first part. */
  private readonly preambles = new Map<Entity, Builder | null>();

  constructor(
    private readonly shared: Shared<T>,
    private readonly attached: Attached | null,
  ) {
    this.limits = shared.limits;
    this.parser = new MimeParser(shared.limits, {
      data: true,
      preamble: true,
      counter: shared.counter,
      ...(attached ? { attachedAt: { id: attached.id, depth: attached.depth } } : {}),
    });
  }

  /** Walks the input; returns its size. */
  async run(input: MessageInput): Promise<number> {
    const signal = this.shared.options.signal;
    for await (const chunk of readMessage(input)) {
      signal?.throwIfAborted();
      await this.handle(this.parser.push(chunk));
    }
    signal?.throwIfAborted();
    await this.handle(this.parser.finish());
    return this.parser.size;
  }

  private problem(code: MimeProblemCode, partId: string, message: string): void {
    const sh = this.shared;
    const key = `${code}\0${partId}`;
    if (sh.seen.has(key) || sh.problems.length >= MAX_PROBLEMS) return;
    sh.seen.add(key);
    sh.problems.push({ code, partId, message });
  }

  async handle(events: ParserEvent[]): Promise<void> {
    for (const ev of events) {
      switch (ev.type) {
        case 'problem':
          this.problem(ev.code, ev.partId, ev.message);
          break;
        case 'entity': {
          const e = ev.entity;
          const parent = e.parent;
          if (parent && this.preambles.has(parent)) {
            const pre = this.preambles.get(parent);
            this.preambles.set(parent, null);
            if (pre) await this.drop(pre);
          }
          if (e.kind === 'leaf') this.docs.set(e, this.builder(e));
          else if (e.kind === 'multipart') this.preambles.set(e, null);
          break;
        }
        case 'data': {
          const e = ev.entity;
          if (e.kind === 'multipart') {
            if (e.children > 0 || !this.preambles.has(e)) break;
            let pre = this.preambles.get(e) ?? null;
            if (!pre) {
              pre = this.preambleBuilder(e);
              this.preambles.set(e, pre);
            }
            await this.put(pre, ev.data);
          } else {
            const b = this.docs.get(e);
            if (b) await this.feed(b, ev.data);
          }
          break;
        }
        case 'end': {
          const e = ev.entity;
          if (e.kind === 'leaf') {
            const b = this.docs.get(e);
            this.docs.delete(e);
            if (b) await this.finish(b);
          } else if (e.kind === 'multipart') {
            const pre = this.preambles.get(e) ?? null;
            this.preambles.delete(e);
            if (pre) {
              if (e.children === 0) await this.finish(pre);
              else await this.drop(pre);
            }
          }
          break;
        }
      }
    }
  }

  private newSpool(): Spool {
    const sh = this.shared;
    const s = new Spool(sh.spoolDir, sh.spoolMemoryLimit, { hash: sh.options.hash === true });
    sh.live.add(s);
    return s;
  }

  /** A document under construction: nothing decoded yet. */
  private fresh(info: Builder['info'], decoder: BodyDecoder = new IdentityDecoder(), uu: UuScanner | null = null, nested = false): Builder {
    return { info, spool: this.newSpool(), decoder, uu, nested, uuCount: 0, uuDoc: null, size: 0, cut: false, encodingReported: false };
  }

  private builder(e: Entity): Builder {
    const enc = e.encoding;
    const decoder: BodyDecoder =
      enc === 'base64' ? new Base64Decoder() : enc === 'quoted-printable' ? new QuotedPrintableDecoder(this.limits.maxLineLength) : new IdentityDecoder();
    const uu = !e.opaque && (e.contentType.startsWith('text/') || UU_ENCODINGS.has(enc)) ? new UuScanner(this.limits.maxLineLength) : null;
    const nested = !e.opaque && (e.contentType === 'message/rfc822' || e.contentType === 'message/global') && !IDENTITY.has(enc);
    return this.fresh(
      {
        id: e.id,
        partId: this.attached?.partId ?? e.id,
        kind: 'part',
        depth: e.depth,
        contentType: e.contentType,
        charset: e.params.get('charset')?.toLowerCase() ?? null,
        filename: e.filename,
        disposition: e.disposition,
        encoding: enc,
        inAttachedMessage: e.inMessage,
        opaque: e.opaque,
      },
      decoder,
      uu,
      nested,
    );
  }

  private preambleBuilder(e: Entity): Builder {
    const id = e.messageTop ? joinId(e.childPrefix, 1) : e.id;
    return this.fresh({
      id,
      partId: this.attached?.partId ?? id,
      kind: 'preamble',
      depth: e.depth,
      contentType: e.contentType,
      charset: null,
      filename: e.filename,
      disposition: e.disposition,
      encoding: e.encoding,
      inAttachedMessage: e.inMessage,
      opaque: true,
    });
  }

  private checkDecoder(b: Builder): void {
    if (!b.encodingReported && b.decoder.error) {
      b.encodingReported = true;
      this.problem('encoding', b.info.id, `${b.info.encoding}: ${b.decoder.error}`);
    }
  }

  private async feed(b: Builder, raw: Buffer): Promise<void> {
    if (b.cut) return;
    const decoded = b.decoder.write(raw);
    this.checkDecoder(b);
    await this.put(b, decoded);
    if (b.uu && decoded.length > 0) await this.uuEvents(b, b.uu.write(decoded));
  }

  /** Adds decoded bytes to a document, up to max-decoded-size. */
  private async put(b: Builder, data: Buffer): Promise<void> {
    if (data.length === 0 || b.cut) return;
    let d = data;
    const room = this.limits.maxDecodedSize - b.size;
    if (d.length > room) {
      d = d.subarray(0, room);
      b.cut = true;
      this.problem('decoded-size', b.info.id, `decoded document larger than ${this.limits.maxDecodedSize} bytes`);
    }
    if (d.length > 0) {
      await b.spool.write(d);
      b.size += d.length;
    }
  }

  private async uuEvents(b: Builder, events: UuEvent[]): Promise<void> {
    for (const ev of events) {
      if (ev.type === 'begin') {
        const n = ++b.uuCount;
        const id = `${b.info.id}/uu${n}`;
        const counted = this.parser.countDocument(id);
        for (const p of this.parser.takeEvents()) if (p.type === 'problem') this.problem(p.code, p.partId, p.message);
        b.uuDoc = counted
          ? this.fresh({
              id,
              partId: b.info.partId,
              kind: 'uuencode',
              depth: b.info.depth + 1,
              contentType: 'application/octet-stream',
              charset: null,
              filename: ev.name,
              disposition: null,
              encoding: ev.base64 ? 'base64' : 'uuencode',
              inAttachedMessage: b.info.inAttachedMessage,
              opaque: false,
            })
          : null;
      } else if (ev.type === 'data') {
        if (b.uuDoc) await this.put(b.uuDoc, ev.data);
      } else {
        const doc = b.uuDoc;
        b.uuDoc = null;
        if (doc) {
          if (ev.error || !ev.complete) this.problem('encoding', doc.info.id, `uuencode: ${ev.error ?? 'no end line'}`);
          await this.finish(doc);
        }
      }
    }
  }

  private async drop(b: Builder): Promise<void> {
    this.shared.live.delete(b.spool);
    await b.spool.dispose();
  }

  /** The document is complete: hand it over, then free its spool. */
  private async finish(b: Builder): Promise<void> {
    if (!b.cut) {
      const tail = b.decoder.end();
      this.checkDecoder(b);
      await this.put(b, tail);
      if (b.uu && !b.cut) {
        if (tail.length > 0) await this.uuEvents(b, b.uu.write(tail));
        await this.uuEvents(b, b.uu.end());
      }
    }
    if (b.uuDoc) {
      // cut at max-decoded-size inside a uuencoded file: hand over what there is
      const doc = b.uuDoc;
      b.uuDoc = null;
      await this.finish(doc);
    }
    const spool = b.spool;
    try {
      await spool.end();
      if (b.nested) {
        // base64 or quoted-printable around a message/rfc822 (RFC 2046 forbids it, senders do
        // it, and some scanners stop there): walk the decoded message as an attached one.
        await new Walk(this.shared, { id: b.info.id, depth: b.info.depth, partId: b.info.partId }).run(spool);
        return;
      }
      const id = b.info.id;
      const info: MimeDocumentInfo = {
        ...b.info,
        size: b.size,
        truncated: b.cut,
        problems: this.shared.problems.filter((p) => p.partId === id),
        contentHash: spool.contentHash,
      };
      const doc: MimeDocument = {
        ...info,
        spool,
        source(): ScanSource {
          const path = spool.filePath();
          return path ? { kind: 'file', path, size: spool.size } : { kind: 'chunks', chunks: spool.memoryChunks };
        },
      };
      const result = await this.shared.onDocument(doc);
      this.shared.documents.push({ document: info, result });
    } finally {
      this.shared.live.delete(spool);
      await spool.dispose();
    }
  }
}
