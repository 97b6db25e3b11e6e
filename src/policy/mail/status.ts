import type { FilterHit, MailDocument } from './facts.js';

/**
 * Statuses of the mail filter, per document and per message, as Kaspersky's mail products name
 * them, plus the two engine answers (unknown, skipped) that have no name there.
 */
export const MAIL_STATUSES = ['clean', 'infected', 'suspicious', 'filtered', 'protected', 'corrupted', 'error', 'unknown', 'skipped'] as const;
export type MailStatus = (typeof MAIL_STATUSES)[number];

/**
 * Worst first. A message's status is the worst of its documents' statuses, and the message-level
 * action (discard, reject, tempfail) of the worst status that has one decides the reply:
 * - infected, suspicious: something harmful was found; nothing about the rest of the message can
 *   make it better, so their permanent answer outranks a temporary one;
 * - filtered: the admin's own rule matched (an executable attachment is as unwanted as a virus);
 * - protected, corrupted: the content could not be seen through (a password, broken MIME), which is
 *   how malware hides — worse than a plain engine failure;
 * - error: the engine failed; by default the message is tempfailed so the client retries;
 * - unknown, skipped: the engine answered without a verdict, or was not asked (over a limit);
 * - clean.
 */
export const STATUS_ORDER: readonly MailStatus[] = ['infected', 'suspicious', 'filtered', 'protected', 'corrupted', 'error', 'unknown', 'skipped', 'clean'];

const RANK: Readonly<Record<MailStatus, number>> = Object.fromEntries(
  STATUS_ORDER.map((s, i) => [s, STATUS_ORDER.length - i]),
) as Record<MailStatus, number>;

/** Higher is worse: clean is 1, infected 9. */
export function statusRank(s: MailStatus): number {
  return RANK[s];
}

/** The worst of the statuses; clean for none. */
export function worstStatus(statuses: Iterable<MailStatus>): MailStatus {
  let worst: MailStatus = 'clean';
  for (const s of statuses) if (RANK[s] > RANK[worst]) worst = s;
  return worst;
}

/**
 * The statuses a message "has", worst first: those of its documents, where clean counts only when
 * every document is clean. So a setting for clean (say copy-to for archiving) applies to clean
 * messages, not to every message that happens to hold one clean part.
 */
export function messageStatuses(statuses: Iterable<MailStatus>): MailStatus[] {
  const set = new Set(statuses);
  if (set.size > 1) set.delete('clean');
  if (set.size === 0) set.add('clean');
  return STATUS_ORDER.filter((s) => set.has(s));
}

export const MAIL_ACTIONS = ['unchanged', 'remove', 'replace', 'discard', 'reject', 'tempfail'] as const;
export type MailAction = (typeof MAIL_ACTIONS)[number];
/** Actions on the whole message (the SMTP reply), as opposed to actions on one document. */
export type MessageAction = Extract<MailAction, 'discard' | 'reject' | 'tempfail'>;

export function isMessageAction(a: MailAction): a is MessageAction {
  return a === 'discard' || a === 'reject' || a === 'tempfail';
}

/**
 * Problem codes the MIME walker reports for a document (or for the whole message). Any problem
 * makes the document corrupted; codes not in this list count too, so a newer walker cannot make a
 * broken part look clean.
 */
export const KNOWN_MIME_PROBLEMS = ['depth', 'parts', 'header-size', 'header', 'decoded-size', 'boundary', 'encoding', 'truncated'] as const;

/** Statuses a virus name can be classified as by `mail.virus-name-status`. */
export const NAME_STATUSES = ['infected', 'suspicious', 'protected'] as const;
export type NameStatus = (typeof NAME_STATUSES)[number];

export interface NameRule {
  /** The pattern as written in the config (for reports). */
  source: string;
  re: RegExp;
  status: NameStatus;
}

/** First matching rule decides; a name no rule matches is infected. */
export function classifyName(name: string, rules: readonly NameRule[]): NameStatus {
  for (const r of rules) if (r.re.test(name)) return r.status;
  return 'infected';
}

export interface DocumentStatus {
  status: MailStatus;
  /** Every name the engines reported for it (infected, suspicious and protected ones). */
  names: string[];
  /** One line for logs and reports: why this status. */
  reason: string;
}

/** `encrypted (Heuristics.Encrypted.Zip, X)` → the names in parentheses. */
function namesInReason(reason: string): string[] {
  const m = /\(([^)]*)\)/.exec(reason);
  if (!m) return [];
  return (m[1] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/**
 * Status of one document: every fact gives a candidate, the worst candidate wins. So a broken part
 * whose decoded bytes were still found infected is infected, and an encrypted zip that the engine
 * called clean is protected.
 */
export function documentStatus(doc: MailDocument, rules: readonly NameRule[], hit: FilterHit | null): DocumentStatus {
  const candidates: Array<{ status: MailStatus; reason: string }> = [];
  const names: string[] = [];
  const v = doc.verdict;
  if (v === null) {
    candidates.push({ status: 'skipped', reason: 'not scanned' });
  } else if (v.status === 'free') {
    candidates.push({ status: 'clean', reason: 'clean' });
  } else if (v.status === 'found') {
    for (const name of v.names) {
      names.push(name);
      candidates.push({ status: classifyName(name, rules), reason: `found ${name}` });
    }
    if (v.names.length === 0) candidates.push({ status: 'infected', reason: 'found (no name)' });
  } else if (v.status === 'skipped') {
    if (/^encrypted\b/i.test(v.reason)) {
      names.push(...namesInReason(v.reason));
      candidates.push({ status: 'protected', reason: `not scanned: ${v.reason}` });
    } else {
      candidates.push({ status: 'skipped', reason: `not scanned: ${v.reason}` });
    }
  } else if (v.status === 'unknown') {
    candidates.push({ status: 'unknown', reason: 'engine answer not understood' });
  } else {
    candidates.push({ status: 'error', reason: `engine error ${v.code}: ${v.cause}` });
  }
  if (doc.encrypted) candidates.push({ status: 'protected', reason: 'encrypted content' });
  if (doc.problems && doc.problems.length > 0) {
    candidates.push({ status: 'corrupted', reason: `MIME problem: ${[...new Set(doc.problems)].join(', ')}` });
  }
  if (hit) {
    const where = hit.inArchive ? ' in the archive' : '';
    candidates.push({ status: 'filtered', reason: `${hit.kind === 'name' ? 'file name' : 'type'} "${hit.value}"${where} matches filter-by-${hit.kind} ${hit.rule}` });
  }
  let best = candidates[0] as { status: MailStatus; reason: string };
  for (const c of candidates) if (statusRank(c.status) > statusRank(best.status)) best = c;
  return { status: best.status, names: [...new Set(names)], reason: best.reason };
}
