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

/** What an error verdict's code means for the user, in the words of a block page. */
const ERROR_REASONS: Partial<Record<string, string>> = {
  AVG_ERR_ENGINE_CONNECT: 'the antivirus engine could not be reached',
  AVG_ERR_ENGINE_RESET: 'the antivirus engine closed the connection before it answered',
  AVG_ERR_ENGINE_TIMEOUT: 'the antivirus engine did not answer in time',
  AVG_ERR_ENGINE_FAILED: 'the antivirus engine could not scan the object',
  AVG_ERR_ENGINE_PROTOCOL: 'the antivirus engine gave a broken answer',
  AVG_ERR_QUEUE_FULL: 'the antivirus gateway is overloaded',
  AVG_ERR_ABORTED: 'the scan was given up',
  AVG_ERR_SOURCE: 'the object could not be read for scanning',
  AVG_ERR_INTERNAL: 'the antivirus gateway failed while scanning',
};

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
      return `${ERROR_REASONS[v.code] ?? 'the antivirus engine could not scan the object'} (${v.code})`;
  }
}

export function decide(v: Verdict, policy: VerdictPolicy): Decision {
  if (policy.acceptStatus.includes(v.status)) {
    return { action: 'pass', note: v.status === 'free' ? null : `${v.status}; ${verdictReason(v)}` };
  }
  if (v.status === 'free') return { action: 'block', httpStatus: 403, reason: 'clean objects are not accepted by this service' };
  return { action: 'block', httpStatus: policy.blockStatus[v.status], reason: verdictReason(v) };
}
