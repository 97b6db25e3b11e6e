import type { VerdictResult } from '../../core/verdict.js';

/**
 * What the mail policy is told about a message and its documents. The MIME walker and the scanner
 * fill these in; the policy decides from them alone (no sockets, no files but templates).
 */

/** Facts about one document, as the MIME walker and the scan found them. */
export interface MailDocument {
  /** The walker's id of the part (e.g. `1.2`); edits in the plan refer to it. */
  id: string;
  /**
   * The part the rewriter edits to remove or replace this document when that is not the document
   * itself: the encoded message/rfc822 part holding it, the text part holding a uuencoded file.
   */
  partId?: string;
  /** File name from Content-Disposition or Content-Type (decoded); null for none. */
  fileName: string | null;
  /** Declared Content-Type without parameters (e.g. `application/zip`); null for none. */
  contentType: string | null;
  /** Type found from the content itself (magic bytes), when the walker knows it. */
  detectedType?: string | null;
  /**
   * This "document" is the whole message: the optional raw-message scan, or a MIME problem that is
   * not tied to one part. Removing or replacing it replaces the whole body.
   */
  whole?: boolean;
  /** Entry names when the document is an archive (see src/formats/zip-names.ts). */
  archiveNames?: readonly string[];
  /** The walker or the archive lister saw encryption (a password-protected archive). */
  encrypted?: boolean;
  /** MIME problem codes (KNOWN_MIME_PROBLEMS, src/mime/limits.ts); any → corrupted. */
  problems?: readonly string[];
  /** The scan verdict (combined over engines); null = not scanned. */
  verdict: VerdictResult | null;
  /** Decoded size in bytes, for reports. */
  size?: number;
}

/** A match of the attachment filter (see filter.ts). */
export interface FilterHit {
  kind: 'name' | 'type';
  /** The rule as written in the config. */
  rule: string;
  /** What matched: the file name, the archive entry name, or the type. */
  value: string;
  inArchive: boolean;
}

/** One header of the original message, in order; value unfolded, as it was (RFC 2047 words kept). */
export interface MailHeader {
  name: string;
  value: string;
}

/** Facts about the message, for the plan, the macros and the report. */
export interface MessageFacts {
  /** Envelope sender (MAIL FROM), bare; '' for the null sender <>. */
  sender: string;
  /** The recipients of this group's share (from assignGroups). */
  recipients: readonly string[];
  /** Original headers, in order (for HEADERS, and to tell bulk mail). */
  headers: readonly MailHeader[];
  /** Decoded Subject; null when there is none. */
  subject?: string | null;
  messageId?: string | null;
  /** The Date header as written. */
  date?: string | null;
  /** The MTA's queue id (Postfix's XFORWARD IDENT), or our transaction id. */
  queueId?: string | null;
  /** Our transaction id when queueId is the MTA's (the report names both). */
  gatewayQueueId?: string | null;
  /** Size of the original in bytes, for reports. */
  size?: number | null;
  /** Set on the second call, once the original is in quarantine: filled into notices and notifications. */
  quarantineId?: string | null;
  /** Time of the decision (Date of notifications); default now. */
  now?: Date;
}
