import { basename, extname } from 'node:path';
import type { MailDocument, MessageFacts } from './facts.js';
import { matchAttachmentFilter } from './filter.js';
import type { MailGroup } from './groups.js';
import { bulkReason, forgingName, type NotificationPlan, type SenderSuppression } from './notify.js';
import { documentStatus, isMessageAction, messageStatuses, worstStatus, type MailStatus, type MessageAction } from './status.js';
import { headerSafe, renderTemplate } from './templates.js';

/** The SMTP answer for a group's share of the recipients. */
export type MailReply =
  | { kind: 'deliver' }
  | { kind: MessageAction; code: number; enhanced: string; text: string };

/** What happens to one document when the message is delivered. */
export type DocumentEdit =
  | { kind: 'keep' }
  /** Drop the document; put a text/plain UTF-8 part with `notice` in its place (for a `whole` document: as the whole body). */
  | { kind: 'remove'; notice: string }
  /** Put the configured file in its place, under its own name. */
  | { kind: 'replace'; file: string; fileName: string; contentType: string };

export interface DocumentPlan {
  id: string;
  fileName: string | null;
  contentType: string | null;
  whole: boolean;
  status: MailStatus;
  names: string[];
  reason: string;
  /** Meaningful only when the reply is deliver; otherwise keep. */
  edit: DocumentEdit;
}

export interface MailPlan {
  group: string;
  recipients: string[];
  /** The message status: the worst document status. */
  status: MailStatus;
  /** The statuses the message has, worst first (clean only when all documents are clean). */
  statuses: MailStatus[];
  /** Every virus name found, in document order. */
  names: string[];
  reply: MailReply;
  /** The status whose message-level action decided the reply; null when delivered. */
  decidedBy: MailStatus | null;
  documents: DocumentPlan[];
  /** Prefix for the Subject (use prefixSubject() from mime-text.ts); null = none. Deliver only. */
  subjectPrefix: string | null;
  /** Headers to add to the delivered message, in this order. */
  addHeaders: Array<{ name: string; value: string }>;
  /** Headers to drop from the delivered message first: ours, which nobody else may set. */
  removeHeaders: string[];
  /** Put the unchanged original in quarantine (then call decideMessage again with quarantineId). */
  quarantine: boolean;
  /** Addresses that get the unchanged original (BCC). */
  copyTo: string[];
  notifications: NotificationPlan[];
  /** Sender notices the statuses asked for but that were not made, and why. */
  suppressed: Array<{ kind: 'sender'; reason: SenderSuppression; detail: string }>;
  /** Text report (REPORT macro, admin attachment, logs). */
  report: string;
}

const REPLY: Readonly<Record<MessageAction, { code: number; enhanced: string; verb: string }>> = {
  // 250 after a silent drop: the client must not retry, and must not bounce.
  discard: { code: 250, enhanced: '2.7.0', verb: 'Ok, discarded' },
  // 554 5.7.0: "other or undefined security status" (RFC 3463) — a content refusal.
  reject: { code: 554, enhanced: '5.7.0', verb: 'Rejected' },
  // 451 4.3.0: the check could not be finished here; the client keeps the message and retries.
  tempfail: { code: 451, enhanced: '4.3.0', verb: 'Try again later' },
};

/** SMTP reply text: printable ASCII only (virus names come from engines), bounded. */
function replyText(verb: string, status: MailStatus, names: readonly string[]): string {
  const list = names.length > 0 ? ` (${names.join(', ')})` : '';
  const text = `${verb}: ${status}${list}`.replace(/[^\x20-\x7e]/g, '?');
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

/** X-AV-Status value: `infected (Eicar-Test-Signature)`, bounded to stay within one header line. */
function avStatus(status: MailStatus, names: readonly string[]): string {
  if (names.length === 0) return status;
  let list = '';
  for (const n of names) {
    const clean = n.replace(/[^\x21-\x7e]/g, '?');
    const next = list === '' ? clean : `${list}, ${clean}`;
    if (next.length > 400) {
      list += ', ...';
      break;
    }
    list = next;
  }
  return `${status} (${list})`;
}

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.txt': 'text/plain; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.pdf': 'application/pdf',
  '.png': 'image/png',
  '.gif': 'image/gif',
  '.jpg': 'image/jpeg',
};

function actionText(reply: MailReply, docs: readonly DocumentPlan[]): string {
  if (reply.kind === 'discard') return 'the message was discarded';
  if (reply.kind === 'reject') return `the message was rejected (${reply.code} ${reply.enhanced})`;
  if (reply.kind === 'tempfail') return `delivery was postponed (${reply.code} ${reply.enhanced})`;
  const removed = docs.filter((d) => d.edit.kind === 'remove').length;
  const replaced = docs.filter((d) => d.edit.kind === 'replace').length;
  const parts: string[] = [];
  if (removed > 0) parts.push(`${removed} document${removed === 1 ? '' : 's'} removed`);
  if (replaced > 0) parts.push(`${replaced} document${replaced === 1 ? '' : 's'} replaced`);
  return parts.length === 0 ? 'the message was delivered unchanged' : `the message was delivered with ${parts.join(' and ')}`;
}

/** A macro value that must stay on its line: line breaks and other controls become spaces. */
function oneLine(value: string): string {
  return headerSafe(value);
}

function oneLineValues(values: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(values).map(([k, v]) => [k, oneLine(v)]));
}

export function docLabel(d: Pick<DocumentPlan, 'fileName' | 'whole' | 'id'>): string {
  if (d.fileName) return d.fileName;
  return d.whole ? '(the whole message)' : `(part ${d.id})`;
}

/**
 * What happened to a document, for the report: its own edit when the message was delivered;
 * otherwise the message's fate (documents are not edited then, and "kept" would claim a delivery
 * that did not happen).
 */
function documentOutcome(reply: MailReply, d: DocumentPlan): string {
  if (reply.kind === 'discard') return 'discarded';
  if (reply.kind === 'reject') return 'rejected';
  if (reply.kind === 'tempfail') return 'deferred';
  return d.edit.kind === 'keep' ? 'kept' : d.edit.kind === 'remove' ? 'removed' : 'replaced';
}

function buildReport(p: {
  facts: MessageFacts;
  group: string;
  recipients: readonly string[];
  status: MailStatus;
  reply: MailReply;
  action: string;
  quarantineId: string | null;
  documents: readonly DocumentPlan[];
}): string {
  const f = p.facts;
  const lines = [
    `Message-ID:  ${f.messageId ?? '(none)'}`,
    `Queue id:    ${f.queueId ?? '(none)'}${f.gatewayQueueId ? ` (avgate ${f.gatewayQueueId})` : ''}`,
    `Date:        ${f.date ?? '(none)'}`,
    `Subject:     ${f.subject ?? '(none)'}`,
    `Sender:      ${f.sender === '' ? '<>' : f.sender}`,
    `Recipients:  ${p.recipients.join(', ')}`,
    `Group:       ${p.group}`,
    `Size:        ${f.size ?? '(unknown)'}`,
    `Status:      ${p.status}`,
    `Action:      ${p.action}`,
    `Quarantine:  ${p.quarantineId ?? 'none'}`,
    '',
    'Documents:',
  ];
  p.documents.forEach((d, i) => {
    const what = documentOutcome(p.reply, d);
    lines.push(`  ${i + 1}. ${docLabel(d)} [${d.contentType ?? 'no type'}] ${d.status}${d.names.length > 0 ? ` (${d.names.join(', ')})` : ''}; ${what}`);
    lines.push(`     ${d.reason}`);
  });
  if (p.documents.length === 0) lines.push('  (none)');
  return `${lines.map((l) => l.replace(/[\r\n]+/g, ' ')).join('\n')}\n`;
}

/**
 * The decision for one group's share of a message. Pure: the same input gives the same plan (no
 * I/O, no clock unless facts.now is missing). Rules, in this order:
 * 1. Each document gets its status (documentStatus: worst of verdict, names, encryption, MIME
 *    problems, the group's attachment filter). The message status is the worst of them.
 * 2. Reply: the worst of the message's statuses whose action is discard, reject or tempfail decides
 *    (message-level actions win over document-level ones); none → deliver.
 * 3. Deliver: each document gets its own status's action (unchanged → keep, remove, replace);
 *    subject prefix of the worst status that has one; X-Virus-Scanned and X-AV-Status when the
 *    message status is in add-headers.
 * 4. Side effects — quarantine, copy-to, notifications — follow every status the message has, but
 *    not on tempfail: the message will come again and nothing is final yet.
 */
export function decideMessage(group: MailGroup, documents: readonly MailDocument[], facts: MessageFacts): MailPlan {
  const now = facts.now ?? new Date();
  const quarantineId = facts.quarantineId ?? null;
  const recipients = [...facts.recipients];
  const classified = documents.map((doc) => ({
    doc,
    ...documentStatus(doc, group.common.nameRules, matchAttachmentFilter(group.filter, doc)),
  }));
  const status = worstStatus(classified.map((c) => c.status));
  const statuses = messageStatuses(classified.map((c) => c.status));
  const names = [...new Set(classified.flatMap((c) => c.names))];

  const decidedBy = statuses.find((s) => isMessageAction(group.actions[s])) ?? null;
  let reply: MailReply = { kind: 'deliver' };
  if (decidedBy !== null) {
    const kind = group.actions[decidedBy] as MessageAction;
    const r = REPLY[kind];
    reply = { kind, code: r.code, enhanced: r.enhanced, text: replyText(r.verb, status, names) };
  }
  const delivering = reply.kind === 'deliver';

  const docPlans: DocumentPlan[] = classified.map((c) => ({
    id: c.doc.id,
    fileName: c.doc.fileName,
    contentType: c.doc.contentType,
    whole: c.doc.whole === true,
    status: c.status,
    names: c.names,
    reason: c.reason,
    edit: { kind: 'keep' },
  }));
  // Documents are edited only when the message goes on; the text of notices needs the action
  // taken, so the edits are settled before any text is rendered.
  const noticeFor: number[] = [];
  if (delivering) {
    docPlans.forEach((d, i) => {
      const action = group.actions[d.status];
      if (action === 'remove') {
        d.edit = { kind: 'remove', notice: '' };
        noticeFor.push(i);
      } else if (action === 'replace') {
        const file = group.replaceWith[d.status] as string;
        d.edit = { kind: 'replace', file, fileName: basename(file), contentType: CONTENT_TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream' };
      }
    });
  }
  for (const i of noticeFor) {
    const d = docPlans[i] as DocumentPlan;
    // The notice becomes a part of the delivered message: a value with a line break (an archive
    // entry name in REASON) could write the message's own boundary and a part nobody scanned.
    const notice = renderTemplate(group.templates.removed, oneLineValues({
      FILE_NAME: docLabel(d),
      CONTENT_TYPE: d.contentType ?? '(none)',
      STATUS: d.status,
      VIRUS_NAMES: d.names.length > 0 ? d.names.join(', ') : 'none',
      REASON: d.reason,
      ACTION: 'removed',
      GROUP: group.name,
      QUARANTINE_ID: quarantineId ?? 'none',
    }), 'body');
    d.edit = { kind: 'remove', notice };
  }

  const final = reply.kind !== 'tempfail';
  const quarantine = final && statuses.some((s) => group.quarantine.has(s));
  const copyTo = final ? [...new Set(statuses.flatMap((s) => group.copyTo[s] ?? []))] : [];
  let subjectPrefix: string | null = null;
  const addHeaders: Array<{ name: string; value: string }> = [];
  if (delivering) {
    for (const s of statuses) {
      const p = group.prefixSubject[s];
      if (p !== undefined && p.trim() !== '') {
        subjectPrefix = p.trim();
        break;
      }
    }
    if (group.addHeaders.has(status)) {
      if (group.common.xVirusScanned !== null) addHeaders.push({ name: 'X-Virus-Scanned', value: group.common.xVirusScanned });
      addHeaders.push({ name: 'X-AV-Status', value: avStatus(status, names) });
    }
  }

  const action = actionText(reply, docPlans);
  // The report and the macro values are built only when something uses them: most messages are
  // clean and notify nobody.
  let reportText: string | null = null;
  const report = (): string => (reportText ??= buildReport({ facts, group: group.name, recipients, status, reply, action, quarantineId, documents: docPlans }));
  let macroValues: Record<string, string> | null = null;
  const values = (): Record<string, string> => {
    if (macroValues) return macroValues;
    const removedFiles = docPlans.filter((d) => d.edit.kind !== 'keep').map(docLabel);
    // Every value but HEADERS and REPORT (one line per header, per report line) is one line.
    return (macroValues = {
      ...oneLineValues({
        VIRUS_NAMES: names.length > 0 ? names.join(', ') : 'none',
        STATUS: status,
        ACTION: action,
        SENDER: facts.sender === '' ? '<>' : facts.sender,
        RECIPIENTS: recipients.join(', '),
        SUBJECT: facts.subject ?? '(no subject)',
        MESSAGE_ID: facts.messageId ?? '(none)',
        DATE: facts.date ?? '(none)',
        QUEUE_ID: facts.queueId ?? '(none)',
        QUARANTINE_ID: quarantineId ?? 'none',
        REMOVED_FILES: removedFiles.length > 0 ? removedFiles.join(', ') : 'none',
        GROUP: group.name,
      }),
      HEADERS: facts.headers.map((h) => oneLine(`${h.name}: ${h.value}`)).join('\n'),
      REPORT: report(),
    });
  };

  const notifications: NotificationPlan[] = [];
  const suppressed: MailPlan['suppressed'] = [];
  const base = { from: group.common.notifyFrom, envelopeFrom: '' as const, inReplyTo: facts.messageId ?? null, date: now };
  const wants = (set: ReadonlySet<MailStatus>): boolean => final && statuses.some((s) => set.has(s));
  const make = (kind: NotificationPlan['kind'], to: string[], t: { subject: string; body: string }, attach: NotificationPlan['attach']): NotificationPlan => ({
    ...base,
    report: report(),
    kind,
    to,
    subject: renderTemplate(t.subject, values(), 'header'),
    body: renderTemplate(t.body, values(), 'body'),
    attach,
  });

  if (wants(group.notifySender)) {
    const bulk = bulkReason(facts);
    const forging = forgingName(names, group.common.senderForgingNames);
    if (facts.sender.trim() === '' || facts.sender.trim() === '<>') {
      suppressed.push({ kind: 'sender', reason: 'null-sender', detail: 'the envelope sender is <>' });
    } else if (forging !== null) {
      suppressed.push({ kind: 'sender', reason: 'forging-virus', detail: `${forging} forges senders` });
    } else if (bulk !== null && !group.common.notifySenderOfBulk) {
      suppressed.push({ kind: 'sender', reason: 'bulk', detail: bulk });
    } else if (facts.sender.toLowerCase() === group.common.notifyFrom.toLowerCase()) {
      suppressed.push({ kind: 'sender', reason: 'loop', detail: 'the sender is notify-from' });
    } else if (reply.kind === 'reject') {
      // The client that gets the 5xx tells the sender (a bounce): a notice would be a second one,
      // and the one sent to a forged sender (backscatter).
      suppressed.push({ kind: 'sender', reason: 'rejected', detail: 'the message is rejected: the sending server bounces it to the sender' });
    } else {
      notifications.push(make('sender', [facts.sender], group.templates.sender, 'none'));
    }
  }
  if (wants(group.notifyRecipients)) {
    for (const r of recipients) notifications.push(make('recipient', [r], group.templates.recipients, 'none'));
  }
  if (wants(group.notifyAdmin) && group.admin.length > 0) {
    notifications.push(make('admin', [...group.admin], group.templates.admin, group.adminAttachment));
  }

  return {
    group: group.name,
    recipients,
    status,
    statuses,
    names,
    reply,
    decidedBy,
    documents: docPlans,
    subjectPrefix,
    addHeaders,
    removeHeaders: ['X-AV-Status'],
    quarantine,
    copyTo,
    notifications,
    suppressed,
    get report() {
      return report();
    },
  };
}
