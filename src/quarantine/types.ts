import type { Readable } from 'node:stream';

/**
 * The quarantine: one store for every front end (and the filesystem scanner's backups). The store
 * keeps bytes (encrypted at rest) and facts (SQLite); callers decide what goes in. Releasing a mail
 * item goes through the configured next hop (src/quarantine/release.ts), restoring a file item
 * writes it to a path. Every change leaves an audit record.
 */
export const QUARANTINE_SOURCES = ['icap', 'smtp', 'lmtp', 'http', 'ftp', 'pop3', 'imap', 'fs'] as const;
export type QuarantineSource = (typeof QUARANTINE_SOURCES)[number];

export interface QuarantineMeta {
  /** Which front end put it here. */
  source: QuarantineSource;
  /** Envelope sender ('' for <>); '' for non-mail sources. */
  sender: string;
  /** Envelope recipients (mail); [] otherwise. */
  recipients: string[];
  /** Policy group (mail) or service (ICAP/proxies) that quarantined it. */
  group: string;
  /** Statuses that led here, worst first (mail: infected, suspicious ...; others: found ...). */
  statuses: string[];
  virusNames: string[];
  messageId?: string | null;
  subject?: string | null;
  queueId?: string | null;
  /** File name (attachment, download, scanned file). */
  fileName?: string | null;
  /** URL (ICAP/HTTP/FTP). */
  url?: string | null;
  /** Where a scanned file lived (fs source): the default target of a restore. */
  originalPath?: string | null;
  /** What was done with the object besides quarantining it (remove, reject, block, ...). */
  action?: string | null;
  /** Free text for the admin (the report's first lines, a reason). */
  note?: string | null;
}

/** What the store records besides the caller's facts. */
export interface QuarantineRecord extends Required<QuarantineMeta> {
  /** Random, unguessable; `[0-9a-z]{20,}` — nothing else passes as an id (no path tricks). */
  id: string;
  /** When it was quarantined (ISO 8601, UTC). */
  date: string;
  /** Bytes of the original. */
  size: number;
  /** SHA-256 of the original, hex. */
  sha256: string;
  /** Last release (ISO 8601) or null. */
  releasedAt: string | null;
}

export interface QuarantineFilter {
  since?: Date;
  until?: Date;
  /** One of the record's statuses. */
  status?: string;
  source?: QuarantineSource;
  /** Substring of sender, recipients, subject, file name, URL, virus names, queue id, Message-ID or note (case-insensitive). */
  text?: string;
  /** Newest first; default 100, at most 10 000. */
  limit?: number;
  offset?: number;
}

export type AuditAction = 'put' | 'release' | 'restore' | 'export' | 'delete' | 'purge';

export interface AuditRecord {
  itemId: string;
  date: string;
  action: AuditAction;
  /** Who did it: `cli:<user>`, `web:<user>`, `api:<token name>`, `system`. */
  actor: string;
  /** JSON-safe details: release recipients and replies, restore path, purge reason. */
  detail: Record<string, unknown>;
}

export interface QuarantineItem {
  record: QuarantineRecord;
  /** The original bytes, decrypted (the stream fails if the stored object was tampered with). */
  open(): Readable;
}

export interface PurgeResult {
  removed: number;
  bytes: number;
  /** A dry run: the items it would remove, oldest first. */
  ids?: string[];
}

export interface Quarantine {
  /** Stores the original (a stream, or the path of a spooled file) with its facts; the same bytes are kept once. */
  /** `once`: no new item for bytes already kept for the same source and recipients, unreleased (its id comes back with `existing`). */
  put(original: Readable | string, meta: QuarantineMeta, opts?: { once?: boolean }): Promise<{ id: string; existing?: boolean }>;
  /** null for an unknown id, and for a string that is not an id at all. */
  get(id: string): Promise<QuarantineItem | null>;
  /** Matching items, newest first. */
  list(filter?: QuarantineFilter): Promise<QuarantineRecord[]>;
  count(filter?: QuarantineFilter): Promise<number>;
  /** Deletes an item (its object too when no other item shares it); false when there was none. */
  remove(id: string, actor?: string): Promise<boolean>;
  /**
   * Appends an audit record (release, restore and export are recorded by their callers). A
   * 'release' whose detail.ok is true also sets the item's releasedAt.
   */
  audit(entry: Omit<AuditRecord, 'date'>): Promise<void>;
  /** An item's audit trail, oldest first (all items' when id is omitted, newest 1000). */
  auditTrail(id?: string): Promise<AuditRecord[]>;
  /** Items older than `olderThanMs`, then the oldest until the total is at most `maxTotalSize`. */
  purge(o: { olderThanMs?: number; maxTotalSize?: number; actor?: string; dryRun?: boolean }): Promise<PurgeResult>;
  /** Total stored bytes (after de-duplication) and item count. */
  usage(): Promise<{ items: number; objects: number; bytes: number }>;
  close(): Promise<void>;
}
