import type { Readable } from 'node:stream';

/**
 * Where originals go when policy says "quarantine": the mail filter today, other front ends later.
 * The store only keeps bytes and facts; deciding what goes in, and releasing (re-sending an item to
 * its recipients), belong to the callers — the quarantine issue builds release and an encrypted
 * store on this interface.
 */
export interface QuarantineMeta {
  /** Envelope sender ('' for <>). */
  sender: string;
  recipients: string[];
  /** Policy group (mail) or service (ICAP) that quarantined it. */
  group: string;
  /** Statuses that led here, worst first (mail: infected, suspicious ...). */
  statuses: string[];
  virusNames: string[];
  messageId?: string | null;
  subject?: string | null;
  queueId?: string | null;
  /** Free text for the admin (the report's first lines, a reason). */
  note?: string | null;
}

/** What the store records besides the caller's facts. */
export interface QuarantineRecord extends QuarantineMeta {
  id: string;
  /** When it was quarantined (ISO 8601, UTC). */
  date: string;
  /** Bytes of the original. */
  size: number;
  /** SHA-256 of the original, hex. */
  sha256: string;
}

export interface QuarantineItem {
  record: QuarantineRecord;
  /** The original bytes, as they were put. */
  open(): Readable;
}

export interface Quarantine {
  /** Stores the original (a stream, or the path of a spooled file) with its facts. */
  put(original: Readable | string, meta: QuarantineMeta): Promise<{ id: string }>;
  /** null for an unknown id, and for a string that is not an id at all (no path tricks). */
  get(id: string): Promise<QuarantineItem | null>;
  /** Every item, oldest first. */
  list(): Promise<QuarantineRecord[]>;
  /** Deletes an item; false when there was none. */
  remove(id: string): Promise<boolean>;
}
