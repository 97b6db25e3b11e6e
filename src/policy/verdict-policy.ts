import type { Verdict, VerdictStatus } from '../core/verdict.js';

/** What a front end does with a verdict: the same rules for ICAP, HTTP and FTP (doc-ACLs). */
export interface VerdictPolicy {
  /** Verdicts that let the object through (Kernun's accept-antivirus-status); default [free]. */
  acceptStatus: readonly VerdictStatus[];
  /** HTTP status of the page for each verdict that does not pass. */
  blockStatus: Readonly<Record<Exclude<VerdictStatus, 'free'>, number>>;
}

export type Decision =
  | { action: 'pass'; /** Set when a non-free verdict passes: say so to the client in a header. */ note: string | null }
  | { action: 'block'; httpStatus: number; reason: string };

/** Short reason text for pages and headers. */
export function verdictReason(v: Verdict): string {
  switch (v.status) {
    case 'free':
      return 'clean';
    case 'found':
      return `infected: ${v.names.join(', ')}`;
    case 'skipped':
      return `not scanned: ${v.reason}`;
    case 'unknown':
      return 'the antivirus engine gave an answer that could not be understood';
    case 'error':
      return `the antivirus engine could not be reached (${v.code})`;
  }
}

export function decide(v: Verdict, policy: VerdictPolicy): Decision {
  if (policy.acceptStatus.includes(v.status)) {
    return { action: 'pass', note: v.status === 'free' ? null : `${v.status}; ${verdictReason(v)}` };
  }
  if (v.status === 'free') return { action: 'block', httpStatus: 403, reason: 'clean objects are not accepted by this service' };
  return { action: 'block', httpStatus: policy.blockStatus[v.status], reason: verdictReason(v) };
}
