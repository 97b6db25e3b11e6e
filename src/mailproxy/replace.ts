import { open, stat } from 'node:fs/promises';
import { Writable } from 'node:stream';
import type { Logger } from 'pino';
import type { MailProxyPolicyConfig } from '../config/mail-proxy-schema.js';
import { DEFAULT_VIRUS_NAME_STATUS } from '../config/mail-schema.js';
import { Spool } from '../core/spool.js';
import type { VerdictResult } from '../core/verdict.js';
import { DEFAULT_MIME_LIMITS, rewriteMessage, walkMessage, type MessageInput, type MimeLimits, type MimeProblem, type PartEdit, type WalkResult } from '../mime/index.js';
import { scanWholeMessage } from '../mail/filter.js';
import { documentStatus, type MailDocument, type MailStatus, type NameRule } from '../policy/mail/index.js';
import type { Quarantine, QuarantineSource } from '../quarantine/types.js';
import type { ScanService } from '../scan/types.js';
import type { ScanOrigin } from '../stats/types.js';
import { compilePolicy, shouldReplace } from './acl.js';
import { renderReplacement, type ReplacementTemplate } from './template.js';

/**
 * The mail proxies' document replacer (POP3 and IMAP): walks a message with the one MIME walker
 * (src/mime), scans every document, asks the doc-acl which ones to replace, and writes the
 * rewritten message (every untouched byte copied as it was) into a spool. Shared by
 * src/protocols/pop3 and src/protocols/imap; protocol code frames, this decides nothing about
 * the wire.
 */
export interface ReplaceDeps {
  scanner: ScanService;
  policy: MailProxyPolicyConfig;
  replacement: ReplacementTemplate;
  spoolDir: string;
  log: Logger;
  origin: ScanOrigin;
  /** MIME walker limits (mail.max-depth ...); default DEFAULT_MIME_LIMITS. */
  limits?: MimeLimits;
  /** Login name, for doc-acl `users` (null = unknown). */
  user?: string | null;
  /** Name of the message in logs and scan requests (e.g. `pop3 alice 3`). */
  label?: string;
  /** Virus names → status (mail.virus-name-status); default: the built-in rules (Heuristics.Encrypted → protected ...). */
  nameRules?: readonly NameRule[];
  /** A stray "=" in quoted-printable text is not a problem (mail.lenient-quoted-printable); default true. */
  lenientQuotedPrintable?: boolean;
  /**
   * The message is cut on purpose (POP3 TOP, an IMAP partial fetch): the MIME problems a cut
   * causes (unclosed boundaries, a broken last line of base64) do not make it corrupted.
   */
  partial?: boolean;
  /**
   * Where a whole message goes before documents of the statuses in policy.quarantine are
   * replaced (null or absent = nowhere). Cut messages (partial) and headerless parts are not kept.
   */
  quarantine?: Quarantine | null;
}

/** Problems a deliberately cut message has anyway. */
const CUT_PROBLEMS: ReadonlySet<string> = new Set(['boundary', 'truncated', 'encoding']);

export interface ReplacedDocument {
  /** Walker part id ('' = the whole message body). */
  path: string;
  filename: string | null;
  status: string;
  names: string[];
}

export interface ReplaceResult {
  /** The original input when unchanged, else an ended Spool with the rewritten message. */
  output: MessageInput;
  /** Bytes of output. */
  size: number;
  changed: boolean;
  replaced: ReplacedDocument[];
  /** error: at least one document's scan failed (replaced or passed per on-error). */
  status: 'clean' | 'replaced' | 'error';
  /** Every document with its status and the doc-acl rule that decided (for logs and tests). */
  documents: Array<{ path: string; filename: string | null; contentType: string | null; status: MailStatus; names: string[]; rule: string | null; replaced: boolean }>;
  /** Removes the rewritten spool (a no-op when unchanged). */
  dispose(): Promise<void>;
}

const DEFAULT_NAME_RULES: readonly NameRule[] = DEFAULT_VIRUS_NAME_STATUS.map((r) => ({ source: r.pattern, re: new RegExp(r.pattern, 'i'), status: r.status }));

const ADDRESS = /[^\s<>@,;:"()[\]]+@[^\s<>@,;:"()[\]]+/g;

/** Why a document is replaced, for the notice's {{REASON}}. */
function reasonFor(status: MailStatus, names: readonly string[]): string {
  switch (status) {
    case 'infected':
      return `a virus was found in it (${names.join(', ') || 'no name'})`;
    case 'suspicious':
      return `it looks harmful (${names.join(', ') || 'no name'})`;
    case 'protected':
      return 'it is encrypted and could not be checked';
    case 'corrupted':
      return 'its MIME structure is broken and it could not be checked';
    case 'error':
      return 'it could not be scanned (the virus scanner failed)';
    case 'unknown':
      return 'it could not be scanned (no verdict from the virus scanner)';
    case 'skipped':
      return 'it could not be scanned (over a scanning limit)';
    default:
      return `its status is ${status}`;
  }
}

async function sizeOf(input: MessageInput): Promise<number> {
  if (Buffer.isBuffer(input)) return input.length;
  if (input instanceof Spool) return input.size;
  return (await stat(input)).size;
}

/** First bytes of the message, for the top header (mail-acl). */
async function headOf(input: MessageInput, max: number): Promise<Buffer> {
  if (Buffer.isBuffer(input)) return input.subarray(0, max);
  if (input instanceof Spool) return input.readRange(0, Math.min(input.size, max));
  const h = await open(input, 'r');
  try {
    const b = Buffer.alloc(max);
    const { bytesRead } = await h.read(b, 0, max, 0);
    return b.subarray(0, bytesRead);
  } finally {
    await h.close();
  }
}

/** The top header block of `head` (up to the blank line), unfolded. */
function headerBlock(head: Buffer): string {
  const text = head.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  return (end >= 0 ? text.slice(0, end) : text).replace(/\r?\n[ \t]+/g, ' ');
}

/** From: and To:/Cc: addresses of the top header (unfolded; RFC 2047 words are left alone). */
function addressesOf(head: Buffer): { senders: string[]; recipients: string[] } {
  const block = headerBlock(head);
  const senders: string[] = [];
  const recipients: string[] = [];
  for (const line of block.split(/\r?\n/)) {
    const m = /^([A-Za-z-]+)[ \t]*:(.*)$/.exec(line);
    if (!m) continue;
    const name = (m[1] as string).toLowerCase();
    const found = (m[2] as string).match(ADDRESS) ?? [];
    if (name === 'from') senders.push(...found);
    else if (name === 'to' || name === 'cc') recipients.push(...found);
  }
  return { senders, recipients };
}

/** A Writable that fills a spool (with backpressure: the next write waits for the spool). */
function spoolWriter(spool: Spool): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      spool.write(chunk).then(() => cb(), cb);
    },
  });
}

interface Scanned {
  verdict: VerdictResult;
}

interface Fact {
  doc: MailDocument;
  /** The part an edit replaces (a uuencoded file: the text part holding it). */
  partId: string;
}

const CLEAN: VerdictResult = { status: 'free' };

/**
 * Deepest part (MIME nesting) a clean whole-message verdict is trusted for. clamd stops unpacking
 * at its MaxRecursion (17 by default) and then answers OK, not FOUND; the walker allows
 * mail.max-depth (20). Deeper documents are scanned one by one, so nothing hides below clamd's limit.
 */
const PRESCAN_MAX_DEPTH = 8;

/**
 * Messages (content hash, cut or not, leniency, MIME limits) whose walk found no MIME problem, with
 * their documents: the walk is a function of those alone, so a message read again (a second POP3
 * client, an IMAP client fetching it again) whose whole-message verdict is clean (the verdict
 * cache answers) costs a hash and a copy. Bounded; the oldest entry goes first.
 */
const wellFormed = new Map<string, readonly Fact[]>();
const WELL_FORMED_MAX = 4096;

function remember(key: string, facts: readonly Fact[], map = wellFormed): void {
  map.delete(key);
  map.set(key, facts);
  if (map.size > WELL_FORMED_MAX) map.delete(map.keys().next().value as string);
}

/**
 * Messages (content hash, cut or not, leniency, MIME limits, engines and signature versions) whose
 * documents were each scanned free without a MIME problem. Only the scanner's own verdicts on the
 * walker's documents go in, never a whole-message answer, so nothing clamd's MIME parser missed
 * can hide here. Bounded like wellFormed.
 */
const scannedClean = new Map<string, readonly Fact[]>();

function rememberClean(key: string, facts: readonly Fact[]): void {
  remember(key, facts, scannedClean);
}

const limitsKeys = new WeakMap<MimeLimits, string>();
function limitsKey(limits: MimeLimits): string {
  let k = limitsKeys.get(limits);
  if (k === undefined) {
    k = JSON.stringify(limits);
    limitsKeys.set(limits, k);
  }
  return k;
}

/** The value of the first `name:` field of an unfolded header block (headerBlock), or null. */
function headerField(block: string, name: string): string | null {
  const m = new RegExp(`^${name}[ \\t]*:[ \\t]*(.*)$`, 'im').exec(block);
  return m ? (m[1] as string).trim().slice(0, 998) : null;
}

/**
 * Keeps the original of a message whose documents of a policy.quarantine status are about to be
 * replaced: whole messages only (not TOP, partial fetches or headerless parts). A failure is
 * logged and changes nothing for the client; the item's id, or null.
 */
async function keepOriginal(
  input: MessageInput,
  deps: ReplaceDeps,
  replaced: readonly ReplacedDocument[],
  documents: ReplaceResult['documents'],
  label: string,
  user: string | null,
  maxHeaderSize: number,
): Promise<string | null> {
  const statuses: readonly string[] = deps.policy.quarantine;
  const kept = replaced.filter((d) => statuses.includes(d.status));
  if (!deps.quarantine || deps.partial === true || !(input instanceof Spool) || kept.length === 0) return null;
  try {
    const head = await headOf(input, maxHeaderSize);
    const addresses = addressesOf(head);
    const block = headerBlock(head);
    // A message fetched again (IMAP clients re-fetch, POP3 clients that leave mail on the server)
    // keeps the one item it has.
    const { id } = await deps.quarantine.put(input.filePath() ?? input.createReadStream(), {
      source: deps.origin.source as QuarantineSource,
      sender: addresses.senders[0] ?? '',
      recipients: user !== null ? [user] : addresses.recipients,
      group: documents.find((d) => d.replaced && statuses.includes(d.status))?.rule ?? 'default',
      statuses: [...new Set(kept.map((d) => d.status))],
      virusNames: [...new Set(kept.flatMap((d) => d.names))],
      messageId: headerField(block, 'Message-ID'),
      subject: headerField(block, 'Subject'),
      fileName: kept.find((d) => d.filename)?.filename ?? null,
      action: 'replaced',
      note: `${label}: ${kept.length} document${kept.length === 1 ? '' : 's'} replaced`,
    }, { once: true });
    return id;
  } catch (err) {
    deps.log.error({ message: label, err: err instanceof Error ? err.message : String(err) }, 'mail proxy: quarantine failed');
    return null;
  }
}

/**
 * Scans the message document by document and replaces what the doc-acl says (see
 * src/mailproxy/acl.ts). Engine trouble never throws: the document gets status error and is
 * replaced or passed per on-error. Reading the input, or the signal, does reject.
 */
export async function scanAndReplace(input: MessageInput, deps: ReplaceDeps, signal?: AbortSignal): Promise<ReplaceResult> {
  const policy = compilePolicy(deps.policy);
  const limits = deps.limits ?? DEFAULT_MIME_LIMITS;
  const user = deps.user ?? null;
  const label = deps.label ?? 'message';
  const lenient = deps.lenientQuotedPrintable ?? true;
  const size = await sizeOf(input);
  const unchanged = (status: 'clean' | 'error', documents: ReplaceResult['documents']): ReplaceResult => ({
    output: input,
    size,
    changed: false,
    replaced: [],
    status,
    documents,
    dispose: async () => undefined,
  });

  const edits: PartEdit[] = [];
  const replaced: ReplacedDocument[] = [];
  const documents: ReplaceResult['documents'] = [];
  let anyError = false;
  const notice = (path: string, filename: string | null, contentType: string | null, status: string, names: string[], reason: string) =>
    renderReplacement(deps.replacement, { virusNames: names, filename, status, reason, contentType, part: path });

  // No mail-acl rule (the default): the header is not read for addresses nobody asks about.
  const addresses = deps.policy['mail-acl'].length > 0 ? addressesOf(await headOf(input, limits.maxHeaderSize)) : { senders: [], recipients: [] };
  const mailDecision = policy.mail({ ...addresses, size });
  if (mailDecision.action === 'reject') {
    const reason = `the message was refused by rule ${mailDecision.rule ?? '-'}`;
    edits.push({ action: 'remove', id: '', notice: notice('', null, 'message/rfc822', 'rejected', [], reason) });
    replaced.push({ path: '', filename: null, status: 'rejected', names: [] });
  } else {
    const relevant = (p: MimeProblem, encoding: string | null) => !(lenient && p.code === 'encoding' && encoding === 'quoted-printable') && !(deps.partial === true && CUT_PROBLEMS.has(p.code));
    /** The walk; each document is scanned, or takes `given` (the clean verdict of the whole message). */
    const walkAndScan = (given: VerdictResult | null) =>
      walkMessage<Scanned>(
        input,
        { limits, spoolDir: deps.spoolDir, spoolMemoryLimit: deps.policy['document-memory'], hash: given === null && deps.scanner.wantsHash, ...(signal ? { signal } : {}) },
        async (doc) => {
          if (given) return { verdict: given };
          const source = doc.source();
          const verdict = await deps.scanner.scan({
            source,
            name: `${label}/${doc.id}${doc.filename ? ` ${doc.filename}` : ''}`,
            ...(doc.contentHash ? { hash: doc.contentHash } : {}),
            ...(source.kind !== 'file' ? { toFile: () => doc.spool.fileForScan() } : {}),
            ...(signal ? { signal } : {}),
            origin: deps.origin,
          });
          return { verdict };
        },
      );
    const factsOf = (walk: WalkResult<Scanned>): Fact[] => {
      const facts: Fact[] = walk.documents.map(({ document: d, result }) => ({
        partId: d.partId,
        doc: {
          id: d.id,
          fileName: d.filename,
          contentType: d.contentType,
          problems: [...new Set([...d.problems, ...walk.problems.filter((p) => p.partId === d.id)].filter((p) => relevant(p, d.encoding)).map((p) => p.code))],
          verdict: result.verdict,
          size: d.size,
        },
      }));
      const known = new Set(walk.documents.map((d) => d.document.id));
      const loose = walk.problems.filter((p) => !known.has(p.partId) && relevant(p, null));
      if (loose.length > 0) {
        // A problem not tied to one document (max-parts, a broken boundary): parts may have gone
        // unscanned, so it is judged as the whole message.
        facts.push({ partId: '', doc: { id: '', whole: true, fileName: null, contentType: 'message/rfc822', problems: [...new Set(loose.map((p) => p.code))], verdict: { status: 'free' }, size } });
      }
      return facts;
    };

    let facts: Fact[] | null = null;
    let whole: VerdictResult | null = null;
    // A message read before whose documents were each scanned clean, under the same signatures
    // (a second client, an IMAP client fetching it again): the same bytes walk the same way.
    const sigKey = input instanceof Spool && input.contentHash !== null && deps.scanner.signatureKey ? await deps.scanner.signatureKey(signal) : null;
    const cleanKey = sigKey === null || !(input instanceof Spool) ? null : `${input.contentHash as string}/${deps.partial === true ? 1 : 0}${lenient ? 1 : 0}/${limitsKey(limits)}/${sigKey}`;
    const scannedBefore = cleanKey === null ? undefined : scannedClean.get(cleanKey);
    if (scannedBefore) {
      facts = scannedBefore.map((f) => ({ partId: f.partId, doc: { ...f.doc, problems: [], verdict: CLEAN } }));
    } else if (input instanceof Spool && size <= deps.policy['prescan-max-size']) {
      // The prescan (as the mail filter's, src/mail/filter.ts): clamd decodes MIME itself, so one
      // engine call on the whole message settles a clean one; its documents are scanned one by one
      // only when that is not clean or the walker finds a MIME problem (to know what to replace).
      whole = await scanWholeMessage(deps.scanner, input, { name: `${label}/(message)`, hash: input.contentHash, signal, origin: deps.origin });
      if (whole.status === 'free') {
        const key = input.contentHash === null ? null : `${input.contentHash}/${deps.partial === true ? 1 : 0}${lenient ? 1 : 0}/${limitsKey(limits)}`;
        const known = key === null ? undefined : wellFormed.get(key);
        if (known) {
          // The same bytes walked before without a problem: they walk the same way again.
          facts = known.map((f) => ({ partId: f.partId, doc: { ...f.doc, problems: [], verdict: CLEAN } }));
        } else {
          const clean = factsOf(await walkAndScan(CLEAN));
          if (clean.every((f) => (f.doc.problems ?? []).length === 0 && f.doc.id.split('.').length <= PRESCAN_MAX_DEPTH)) {
            facts = clean;
            if (key !== null) remember(key, clean);
          }
        }
      }
    }
    if (facts === null) {
      facts = factsOf(await walkAndScan(null));
      const all = facts;
      if (cleanKey !== null && all.every((f) => !f.doc.whole && (f.doc.problems ?? []).length === 0 && f.doc.verdict?.status === 'free')) {
        // Remembered only when the signatures did not change while the documents were scanned.
        if ((await deps.scanner.signatureKey?.(signal)) === sigKey) rememberClean(cleanKey, all);
      }
      // A finding on the whole message that no single document explains stays a finding.
      if (whole?.status === 'found' && facts.every((f) => f.doc.verdict?.status === 'free')) {
        facts.push({ partId: '', doc: { id: '', whole: true, fileName: null, contentType: 'message/rfc822', problems: [], verdict: whole, size } });
      }
    }
    const editedParts = new Set<string>();
    for (const { doc, partId } of facts) {
      const st = documentStatus(doc, deps.nameRules ?? DEFAULT_NAME_RULES, null);
      if (st.status === 'error') anyError = true;
      const decision = policy.doc({ status: st.status, contentType: doc.contentType, filename: doc.fileName, user });
      const replace = shouldReplace(decision.action, st.status, deps.policy['on-error']);
      documents.push({ path: doc.id, filename: doc.fileName, contentType: doc.contentType, status: st.status, names: st.names, rule: decision.rule, replaced: replace });
      if (!replace) continue;
      // A uuencoded file is replaced with the text part holding it; one edit per part.
      const target = partId;
      replaced.push({ path: doc.id, filename: doc.fileName, status: st.status, names: st.names });
      if (editedParts.has(target)) continue;
      editedParts.add(target);
      edits.push({ action: 'remove', id: target, notice: notice(doc.id, doc.fileName, doc.contentType, st.status, st.names, reasonFor(st.status, st.names)) });
    }
    // The whole body replaced makes every other edit moot (and the rewriter wants one or the other).
    if (editedParts.has('')) edits.splice(0, edits.length, ...edits.filter((e) => e.id === ''));
  }

  if (edits.length === 0) return unchanged(anyError ? 'error' : 'clean', documents);

  const quarantineId = await keepOriginal(input, deps, replaced, documents, label, user, limits.maxHeaderSize);
  const out = new Spool(deps.spoolDir, deps.policy['spool-memory'], { hash: false });
  try {
    // A document to replace that the rewriter cannot find rejects: the client gets an error, never the document.
    await rewriteMessage(input, spoolWriter(out), { parts: edits }, { limits, failOnMissing: true, ...(signal ? { signal } : {}) });
    await out.end();
  } catch (err) {
    await out.dispose();
    throw err;
  }
  // The Message-ID ties the line to the mail server's own log (Dovecot's mail_log, Postfix).
  const messageId = await headOf(input, limits.maxHeaderSize).then((h) => headerField(headerBlock(h), 'Message-ID'), () => null);
  deps.log.info(
    {
      message: label,
      ...(messageId ? { messageId } : {}),
      replaced: replaced.map((d) => ({ part: d.path, name: d.filename, status: d.status, names: d.names })),
      ...(quarantineId ? { quarantineId } : {}),
    },
    'mail proxy: documents replaced',
  );
  return {
    output: out,
    size: out.size,
    changed: true,
    replaced,
    status: anyError ? 'error' : 'replaced',
    documents,
    dispose: () => out.dispose(),
  };
}
