import { readFile } from 'node:fs/promises';
import { PassThrough, type Readable } from 'node:stream';
import type { Logger } from 'pino';
import { messageOf } from '../core/errors.js';
import type { Spool } from '../core/spool.js';
import type { Verdict, VerdictResult } from '../core/verdict.js';
import { zipNamesFromBuffer, zipNamesFromFile } from '../formats/zip-names.js';
import { decodeEncodedWords, rewriteMessage, walkMessage, type MimeLimits, type MimeProblem, type PartEdit, type WalkResult } from '../mime/index.js';
import { anyNonAscii, buildNotification, decideMessage, docLabel, needsSmtpUtf8, type MailDocument, type MailHeader, type MailPlan, type MailPolicy, type MessageFacts } from '../policy/mail/index.js';
import { isPositive, isTemporary, reply } from '../protocols/smtp/reply.js';
import type { InboundMessage, MessageHandler, NextHop, PartitionHook, Recipient, SmtpReply } from '../protocols/smtp/types.js';
import type { ScanOrigin } from '../stats/types.js';
import type { Quarantine } from '../quarantine/types.js';
import type { ScanService, ScanSource } from '../scan/types.js';
import { readTopHeaders } from './headers.js';

/**
 * The mail filter: the handler the SMTP/LMTP transport calls for each message. It walks the
 * message (src/mime), scans every document (src/scan), lets the policy decide per recipient group
 * (src/policy/mail), then acts: delivers the (possibly rewritten) message through the next hop,
 * or discards, rejects or tempfails; quarantines, copies and notifies. Replies are per recipient;
 * the transport answers the client only after this returns (never lose mail).
 */
export interface MailFilterOptions {
  scanner: ScanService;
  policy: MailPolicy;
  quarantine: Quarantine;
  limits: MimeLimits;
  spoolDir: string;
  documentMemory: number;
  scanWholeMessage: boolean;
  /** Messages up to this size are scanned whole first; documents one by one only if that is not clean (0 = never). */
  prescanMaxSize: number;
  lenientQuotedPrintable: boolean;
  log: Logger;
}

export interface MailFilterCounters {
  messages: number;
  byStatus: Record<string, number>;
  byAction: Record<string, number>;
  notifications: number;
  notificationFailures: number;
  quarantined: number;
  /** Items removed again because the next hop deferred the delivery (the retry keeps its own). */
  quarantineWithdrawn: number;
  /** Engine calls (documents and whole messages). */
  scans: number;
  /** Messages settled by one scan of the whole message (prescan-max-size). */
  prescanned: number;
}

/** What a document is, for the zip-name filter: the type or name says zip, or the bytes begin like one. */
const ZIP_TYPES = /zip|compressed/i;

export class MailFilter {
  readonly counters: MailFilterCounters = { messages: 0, byStatus: {}, byAction: {}, notifications: 0, notificationFailures: 0, quarantined: 0, quarantineWithdrawn: 0, scans: 0, prescanned: 0 };
  private readonly replacements = new Map<string, Buffer>();

  constructor(private readonly o: MailFilterOptions) {}

  /** SMTP: one group per transaction, so one DATA reply can be exact (see PartitionHook). */
  readonly partition: PartitionHook = (mailFrom, rcpt) => this.o.policy.groupKey(mailFrom.address, rcpt.address);

  readonly handler: MessageHandler = (msg, nextHop) => this.handle(msg, nextHop);

  private async handle(msg: InboundMessage, nextHop: NextHop): Promise<SmtpReply[]> {
    const started = performance.now();
    const { documents, headers } = await this.inspect(msg);
    const facts = factsOf(msg, headers);
    const sender = msg.mailFrom.address;

    // Recipients by group, keeping each recipient's position for the replies.
    const shares = new Map<string, number[]>();
    msg.rcptTo.forEach((r, i) => {
      const key = this.o.policy.groupKey(sender, r.address);
      const list = shares.get(key) ?? [];
      list.push(i);
      shares.set(key, list);
    });

    const replies: SmtpReply[] = new Array<SmtpReply>(msg.rcptTo.length);
    /** Sender notices already sent for this message: one per message, however many group shares act. */
    const senderNotified = new Set<string>();
    let quarantineId: string | null = null;
    const logShares: unknown[] = [];
    for (const [groupName, indexes] of shares) {
      const group = this.o.policy.group(groupName);
      const rcpts = indexes.map((i) => msg.rcptTo[i] as Recipient);
      const shareFacts: MessageFacts = { ...facts, recipients: rcpts.map((r) => r.address) };
      let plan = decideMessage(group, documents, shareFacts);
      let shareQuarantine: string | null = null;
      let shareReplies: SmtpReply[];
      let action = plan.reply.kind === 'deliver' ? deliverLabel(plan) : plan.reply.kind;
      if (plan.quarantine) {
        // One item per share, with that share's recipients and group: a release goes to them only.
        shareQuarantine = await this.quarantine(msg, plan, facts, rcpts);
        if (shareQuarantine) plan = decideMessage(group, documents, { ...shareFacts, quarantineId: shareQuarantine });
        quarantineId ??= shareQuarantine;
      }
      if (plan.quarantine && shareQuarantine === null && plan.reply.kind !== 'reject') {
        // The copy the policy requires could not be kept. Delivering without the removed
        // documents, or discarding, would lose them for good: the client keeps the message and
        // retries instead (a rejection loses nothing, the sender has the message).
        shareReplies = rcpts.map(() => reply(451, '4.3.0', 'Try again later: quarantine unavailable'));
        action = 'tempfail(quarantine)';
      } else {
        shareReplies = await this.act(msg, nextHop, plan, rcpts, documents);
        const { took, retried, notify } = outcomes(msg.protocol, plan, shareReplies);
        if (shareQuarantine !== null && retried.length === rcpts.length && took.length === 0) {
          // The client sends the message to every recipient again, and that attempt is
          // quarantined anew. Kept, each retry of an outage would leave one more item. (Once the
          // next hop took it for a recipient, the removal notice there names the item: kept.)
          if (await this.o.quarantine.remove(shareQuarantine).catch(() => false)) this.counters.quarantineWithdrawn++;
          if (quarantineId === shareQuarantine) quarantineId = null;
          shareQuarantine = null;
          action = `${action}; deferred by the next hop`;
        }
        // Copies and notices once the outcome is final, for the recipients that got the message:
        // a recipient deferred is sent the message again and that attempt notifies; one refused
        // is bounced. Nobody took it: none at all.
        if (plan.reply.kind !== 'tempfail' && notify.length > 0) {
          const finalPlan =
            notify.length === rcpts.length
              ? plan
              : decideMessage(group, documents, { ...shareFacts, recipients: notify.map((k) => (rcpts[k] as Recipient).address), ...(shareQuarantine ? { quarantineId: shareQuarantine } : {}) });
          await this.sideEffects(msg, nextHop, finalPlan, senderNotified);
        }
      }
      indexes.forEach((idx, k) => (replies[idx] = shareReplies[k] as SmtpReply));
      this.count(plan, action);
      logShares.push({
        group: groupName,
        rcpts: plan.recipients,
        status: plan.status,
        // The group's statuses of the documents that are not clean (its attachment filter included).
        documents: plan.documents.filter((d) => d.status !== 'clean').map((d) => ({ id: d.id, status: d.status, reason: d.reason })),
        action,
        reply: shareReplies.map(replyLabel),
        ...(shareQuarantine ? { quarantineId: shareQuarantine } : {}),
        // Sender notices the policy asked for but did not make (bulk mail, forged senders ...).
        ...(plan.suppressed.length > 0 ? { suppressed: plan.suppressed } : {}),
      });
    }
    this.counters.messages++;
    this.o.log.info(
      {
        queueId: msg.queueId,
        ...(facts.gatewayQueueId ? { mtaQueueId: facts.queueId } : {}),
        messageId: facts.messageId,
        from: sender,
        size: msg.size,
        documents: documents.map((d) => ({ id: d.id, name: d.fileName, verdict: statusLabel(d), ...(verdictNames(d.verdict) ? { names: verdictNames(d.verdict) } : {}) })),
        shares: logShares,
        quarantineId,
        ms: Math.round(performance.now() - started),
      },
      'mail',
    );
    return replies;
  }

  /**
   * Walks the message and scans each document; MIME problems become facts of their documents.
   * A small message is first scanned whole: when the engine finds it clean and the walker finds no
   * MIME problem, every document takes that verdict (one engine call instead of one per document).
   * Otherwise the documents are scanned one by one, so the policy knows which one is the culprit.
   */
  private async inspect(msg: InboundMessage): Promise<{ documents: MailDocument[]; headers: MailHeader[] }> {
    const headers = await readTopHeaders(msg.spool, this.o.limits.maxHeaderSize);
    const origin = this.origin(msg);
    let whole: Verdict | null = null;
    if (msg.size <= this.o.prescanMaxSize) {
      whole = await this.scanWhole(msg, origin);
      if (whole.status === 'free') {
        const documents = this.documents(msg, await this.walk(msg, whole, origin), this.o.scanWholeMessage ? whole : null);
        if (!documents.some((d) => (d.problems ?? []).length > 0)) {
          this.counters.prescanned++;
          return { documents, headers };
        }
      }
    }
    const walk = await this.walk(msg, null, origin);
    if (this.o.scanWholeMessage) whole ??= await this.scanWhole(msg, origin);
    // A finding on the whole message that no single document explains stays a finding.
    const unexplained = whole !== null && whole.status !== 'free' && walk.documents.every(({ result }) => result.verdict.status === 'free');
    return { documents: this.documents(msg, walk, this.o.scanWholeMessage || unexplained ? whole : null), headers };
  }

  /** The walk; each document is scanned, or takes `given` (the clean verdict of the whole message). */
  private walk(msg: InboundMessage, given: Verdict | null, origin: ScanOrigin): Promise<WalkResult<ScannedDocument>> {
    return walkMessage(
      msg.spool,
      {
        limits: this.o.limits,
        spoolDir: this.o.spoolDir,
        spoolMemoryLimit: this.o.documentMemory,
        hash: given === null && this.o.scanner.wantsHash,
        signal: msg.signal,
      },
      async (doc) => {
        const source = doc.source();
        if (!given) this.counters.scans++;
        const verdict =
          given ??
          (await this.o.scanner.scan({
            source,
            name: `${msg.queueId}/${doc.id}${doc.filename ? ` ${doc.filename}` : ''}`,
            ...(doc.contentHash ? { hash: doc.contentHash } : {}),
            ...(source.kind !== 'file' ? { toFile: () => doc.spool.fileForScan() } : {}),
            signal: msg.signal,
            origin,
          }));
        const archive = await this.archiveNames(doc.contentType, doc.filename, source);
        return { verdict, archive };
      },
    );
  }

  /** For statistics: the front end and the first recipient's group (SMTP transactions hold one group). */
  private origin(msg: InboundMessage): ScanOrigin {
    const first = msg.rcptTo[0];
    return { source: msg.protocol, group: first ? this.o.policy.groupKey(msg.mailFrom.address, first.address) : null };
  }

  private scanWhole(msg: InboundMessage, origin: ScanOrigin): Promise<Verdict> {
    this.counters.scans++;
    return scanWholeMessage(this.o.scanner, msg.spool, { name: `${msg.queueId}/(message)`, signal: msg.signal, origin });
  }

  /** The policy's view of the walk: documents with their verdicts and problem codes. */
  private documents(msg: InboundMessage, walk: WalkResult<ScannedDocument>, wholeVerdict: Verdict | null): MailDocument[] {
    // A stray "=" in quoted-printable text is common in real mail: not "corrupted" when lenient.
    const relevant = (p: MimeProblem, encoding: string | null) => !(this.o.lenientQuotedPrintable && p.code === 'encoding' && encoding === 'quoted-printable');
    const documents: MailDocument[] = walk.documents.map(({ document: d, result }) => ({
      id: d.id,
      ...(d.partId !== d.id ? { partId: d.partId } : {}),
      fileName: d.filename,
      contentType: d.contentType,
      problems: [...new Set([...d.problems, ...walk.problems.filter((p) => p.partId === d.id)].filter((p) => relevant(p, d.encoding)).map((p) => p.code))],
      verdict: stripCommon(result.verdict),
      size: d.size,
      ...(result.archive ? { archiveNames: result.archive.names, encrypted: result.archive.encrypted } : {}),
    }));
    const known = new Set(documents.map((d) => d.id));
    const loose = walk.problems.filter((p) => !known.has(p.partId) && relevant(p, null));
    if (loose.length > 0) {
      documents.push({ id: '', whole: true, fileName: null, contentType: null, problems: [...new Set(loose.map((p) => p.code))], verdict: null, size: msg.size });
    }
    if (wholeVerdict) {
      documents.push({ id: '', whole: true, fileName: null, contentType: 'message/rfc822', verdict: stripCommon(wholeVerdict), size: msg.size });
    }
    return documents;
  }

  private async archiveNames(
    contentType: string,
    filename: string | null,
    source: ScanSource,
  ): Promise<{ names: string[]; encrypted: boolean } | null> {
    const looksZip = ZIP_TYPES.test(contentType) || /\.(zip|jar|docx|xlsx|pptx|odt|apk)$/i.test(filename ?? '');
    let r;
    if (source.kind === 'file') {
      if (!looksZip) return null;
      r = await zipNamesFromFile(source.path);
    } else if (source.kind === 'chunks' || source.kind === 'buffer') {
      // Joined only when it is a zip: the check looks at the declared type, the name and "PK".
      const first = source.kind === 'buffer' ? source.data : source.chunks[0];
      if (!looksZip && !(first?.[0] === 0x50 && first[1] === 0x4b)) return null;
      r = zipNamesFromBuffer(source.kind === 'buffer' ? source.data : Buffer.concat(source.chunks));
    } else {
      return null;
    }
    return r.ok ? { names: [...r.names], encrypted: r.encrypted } : null;
  }

  private async quarantine(msg: InboundMessage, plan: MailPlan, facts: MessageFacts, rcpts: readonly Recipient[]): Promise<string | null> {
    try {
      const path = msg.spool.filePath();
      const { id } = await this.o.quarantine.put(path ?? msg.spool.createReadStream(), {
        source: msg.protocol,
        sender: msg.mailFrom.address,
        recipients: rcpts.map((r) => r.address),
        group: plan.group,
        statuses: plan.statuses,
        virusNames: plan.names,
        queueId: facts.queueId ?? msg.queueId,
        subject: facts.subject,
        messageId: facts.messageId,
        action: plan.reply.kind === 'deliver' ? deliverLabel(plan) : plan.reply.kind,
        note: quarantineNote(plan, msg.queueId),
      });
      this.counters.quarantined++;
      return id;
    } catch (err) {
      // The caller defers the share (or, for a rejection, refuses it without the copy).
      this.o.log.error({ queueId: msg.queueId, group: plan.group, err: messageOf(err) }, 'mail: quarantine failed');
      return null;
    }
  }

  /** The share's replies: delivery through the next hop, or the policy's own reply. */
  private async act(msg: InboundMessage, nextHop: NextHop, plan: MailPlan, rcpts: Recipient[], documents: readonly MailDocument[]): Promise<SmtpReply[]> {
    const r = plan.reply;
    if (r.kind !== 'deliver') return rcpts.map(() => ({ code: r.code, status: r.enhanced, lines: [r.text] }));
    // A document inside an encoded attached message (or a uuencoded file) is edited through the
    // part holding it; one edit per part, and the whole body replaced makes the others moot.
    const partOf = new Map(documents.map((d) => [d.id, d.partId ?? d.id]));
    let parts: PartEdit[] = [];
    const edited = new Set<string>();
    for (const d of plan.documents) {
      if (d.edit.kind === 'keep') continue;
      const target = d.whole ? '' : (partOf.get(d.id) ?? d.id);
      if (edited.has(target)) continue;
      edited.add(target);
      if (d.edit.kind === 'remove') parts.push({ action: 'remove', id: target, notice: d.edit.notice });
      else parts.push({ action: 'replace', id: target, data: await this.replacement(d.edit.file), contentType: d.edit.contentType, filename: d.edit.fileName });
    }
    if (edited.has('')) parts = parts.filter((p) => p.id === '');
    const rewrite = parts.length > 0 || plan.addHeaders.length > 0 || plan.subjectPrefix !== null || plan.removeHeaders.length > 0;
    let body: Readable;
    let rewriting: Promise<unknown> | null = null;
    if (rewrite) {
      const out = new PassThrough({ highWaterMark: 256 * 1024 });
      rewriting = rewriteMessage(
        msg.spool,
        out,
        {
          parts,
          addHeaders: plan.addHeaders,
          removeHeaders: plan.removeHeaders,
          ...(plan.subjectPrefix !== null ? { subjectPrefix: plan.subjectPrefix } : {}),
        },
        // A document to remove that the rewriter cannot find must not go out: fail (4xx), never deliver it.
        { limits: this.o.limits, signal: msg.signal, failOnMissing: true },
      ).catch((err: unknown) => {
        out.destroy(err instanceof Error ? err : new Error(String(err)));
        throw err;
      });
      body = out;
    } else {
      body = msg.spool.createReadStream();
    }
    const result = await nextHop.deliver({
      mailFrom: msg.mailFrom,
      rcpts,
      body,
      ...(rewrite ? {} : { size: msg.size }),
      xforward: msg.origin,
      xclient: msg.origin,
      signal: msg.signal,
      queueId: msg.queueId,
    });
    if (rewriting) {
      try {
        await rewriting;
      } catch (err) {
        // The next hop saw a broken body only if it accepted it: that cannot happen (the stream
        // failed before its end), so its replies are already 4xx. Say why.
        this.o.log.warn({ queueId: msg.queueId, err: messageOf(err) }, 'mail: rewriting failed');
      }
    }
    return result.replies;
  }

  /** Copies of the original and notifications: failures are logged, never change the replies. */
  private async sideEffects(msg: InboundMessage, nextHop: NextHop, plan: MailPlan, senderNotified: Set<string>): Promise<void> {
    // A copy is the original: it keeps the original's SMTPUTF8 and BODY (an 8-bit body or UTF-8
    // headers need them at the next hop as much as the original did).
    const orig = msg.mailFrom.params;
    const originalUtf8 = orig.SMTPUTF8 !== undefined;
    const body8 = typeof orig.BODY === 'string' && /^8BITMIME$/i.test(orig.BODY);
    const nullSender = (utf8: boolean, eightBit: boolean) => ({
      address: '',
      params: { ...(utf8 ? { SMTPUTF8: true as const } : {}), ...(eightBit ? { BODY: '8BITMIME' } : {}) },
    });
    if (plan.copyTo.length > 0) {
      const res = await nextHop.deliver({
        mailFrom: nullSender(originalUtf8 || anyNonAscii(plan.copyTo), body8),
        rcpts: plan.copyTo.map((address) => ({ address, params: {} })),
        body: msg.spool.createReadStream(),
        size: msg.size,
        queueId: msg.queueId,
      });
      this.logFailures(msg, 'copy-to', plan.copyTo, res.replies);
    }
    for (const n of plan.notifications) {
      if (n.kind === 'sender') {
        // The sender wrote one message: a second group share must not tell them again.
        if (n.to.every((a) => senderNotified.has(a.toLowerCase()))) continue;
        for (const a of n.to) senderNotified.add(a.toLowerCase());
      }
      const res = await nextHop.deliver({
        // The original goes into an admin notice as 8bit message/rfc822.
        mailFrom: nullSender(needsSmtpUtf8(n, originalUtf8), n.attach === 'original' && body8),
        rcpts: n.to.map((address) => ({ address, params: {} })),
        body: buildNotification(n, { original: () => msg.spool.createReadStream() }),
        queueId: msg.queueId,
      });
      this.counters.notifications++;
      this.logFailures(msg, `notify-${n.kind}`, n.to, res.replies);
    }
  }

  private logFailures(msg: InboundMessage, what: string, to: readonly string[], replies: readonly SmtpReply[]): void {
    const failed = replies.filter((r) => r.code >= 400);
    if (failed.length === 0) return;
    if (what.startsWith('notify')) this.counters.notificationFailures++;
    this.o.log.warn({ queueId: msg.queueId, what, to, replies: replies.map(replyLabel) }, 'mail: not accepted by the next hop');
  }

  private async replacement(file: string): Promise<Buffer> {
    let b = this.replacements.get(file);
    if (!b) {
      b = await readFile(file);
      this.replacements.set(file, b);
    }
    return b;
  }

  private count(plan: MailPlan, action: string): void {
    this.counters.byStatus[plan.status] = (this.counters.byStatus[plan.status] ?? 0) + 1;
    this.counters.byAction[action] = (this.counters.byAction[action] ?? 0) + 1;
  }
}

/**
 * One engine call on the whole message (the prescan, shared with the mail proxies in
 * src/mailproxy): clamd decodes MIME itself, so a clean answer covers every document in it. The
 * spool's own file when it has one, else its memory chunks (written to a file only if the engine
 * wants one). `hash` (the spool's content hash, when it computed one) lets the verdict cache answer.
 */
export function scanWholeMessage(
  scanner: ScanService,
  spool: Spool,
  req: { name: string; hash?: string | null; signal?: AbortSignal | undefined; origin?: ScanOrigin },
): Promise<Verdict> {
  const path = spool.filePath();
  return scanner.scan({
    source: path ? { kind: 'file', path } : { kind: 'chunks', chunks: spool.memoryChunks },
    name: req.name,
    ...(req.hash ? { hash: req.hash } : {}),
    ...(path ? {} : { toFile: () => spool.fileForScan() }),
    ...(req.signal ? { signal: req.signal } : {}),
    ...(req.origin ? { origin: req.origin } : {}),
  });
}

/**
 * A share's outcome, as positions of its recipients: `took`, those the next hop took (2xx) for a
 * delivery; `retried`, those the client will send the message to again; `notify`, those whose
 * outcome is final and who got the message (for the policy's own reply: all). LMTP answers each
 * recipient on its own: a 4xx is retried, a 5xx bounced. SMTP has one DATA reply, a 4xx as soon
 * as one recipient got one (combineReplies): the client then sends the message to every
 * recipient again, and nothing is final yet.
 */
function outcomes(protocol: InboundMessage['protocol'], plan: MailPlan, replies: readonly SmtpReply[]): { took: number[]; retried: number[]; notify: number[] } {
  const all = replies.map((_, k) => k);
  if (plan.reply.kind !== 'deliver') return { took: [], retried: [], notify: all };
  const took = all.filter((k) => isPositive(replies[k] as SmtpReply));
  if (protocol === 'smtp' && replies.some(isTemporary)) return { took, retried: all, notify: [] };
  return { took, retried: all.filter((k) => isTemporary(replies[k] as SmtpReply)), notify: took };
}

interface ScannedDocument {
  verdict: Verdict;
  archive: { names: string[]; encrypted: boolean } | null;
}

/**
 * The MTA's queue id, as Postfix sends it in XFORWARD IDENT (its smtp client, content_filter
 * deployments); null when the client sent none or something that is not an id.
 */
function mtaQueueId(msg: Pick<InboundMessage, 'xforward'>): string | null {
  const ident = msg.xforward['IDENT'];
  return ident !== undefined && /^[A-Za-z0-9._-]{1,64}$/.test(ident) ? ident : null;
}

function factsOf(msg: InboundMessage, headers: MailHeader[]): MessageFacts {
  const first = (name: string) => headers.find((h) => h.name.toLowerCase() === name)?.value ?? null;
  const mta = mtaQueueId(msg);
  const subject = first('subject');
  return {
    sender: msg.mailFrom.address,
    recipients: msg.rcptTo.map((r) => r.address),
    headers,
    subject: subject === null ? null : decodeEncodedWords(subject),
    messageId: first('message-id'),
    date: first('date'),
    ...(mta !== null ? { queueId: mta, gatewayQueueId: msg.queueId } : { queueId: msg.queueId }),
    size: msg.size,
  };
}

/** The policy reads the verdict result only (engine, timing and cache flags stay in the log). */
function stripCommon(v: VerdictResult): VerdictResult {
  switch (v.status) {
    case 'found':
      return { status: 'found', names: v.names };
    case 'skipped':
      return { status: 'skipped', reason: v.reason };
    case 'unknown':
      return { status: 'unknown', raw: v.raw };
    case 'error':
      return { status: 'error', code: v.code, cause: v.cause };
    default:
      return { status: 'free' };
  }
}

function verdictNames(v: VerdictResult | null): string[] | null {
  return v?.status === 'found' ? v.names : null;
}

/** What a quarantine item says of itself: each document that is not clean and why, and our queue id. */
function quarantineNote(plan: MailPlan, gatewayQueueId: string): string {
  const lines = plan.documents
    .filter((d) => d.status !== 'clean')
    .map((d) => `${docLabel(d)}: ${d.status}: ${d.reason}`);
  return [...lines, `avgate queue id: ${gatewayQueueId}`].join('\n');
}

function statusLabel(d: MailDocument): string {
  const parts = [d.verdict?.status ?? 'not-scanned', ...(d.problems ?? [])];
  return parts.join('+');
}

function deliverLabel(plan: MailPlan): string {
  const edits = plan.documents.filter((d) => d.edit.kind !== 'keep').map((d) => d.edit.kind);
  return edits.length > 0 ? `deliver(${[...new Set(edits)].join(',')})` : 'deliver';
}

function replyLabel(r: SmtpReply): string {
  return `${r.code}${r.status ? ` ${r.status}` : ''} ${r.lines.join(' ')}`.trim();
}

