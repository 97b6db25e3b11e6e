/**
 * Objects that passed their scan recently, by what their server said about them before the body
 * (URL, announced size, validators). Only a hint that the same bytes come again: the verdict still
 * comes from the whole body (its hash in the verdict cache, or a scan). What a hint allows is to
 * pass bytes on while they arrive, within the trickle limits (see trickle's `eager`): a changed
 * object that blocks is cut off before its end, exactly as a trickled one.
 */
export class CleanHints {
  private readonly seen = new Map<string, true>();

  constructor(private readonly maxEntries = 4096) {}

  /** null when the object cannot be recognised (no announced size). */
  static key(parts: { rule: string; url: string; size: number | null; etag: string | null; lastModified: string | null; encoding: string | null }): string | null {
    if (parts.size === null) return null;
    return [parts.rule, parts.url, parts.size, parts.etag ?? '', parts.lastModified ?? '', parts.encoding ?? ''].join('\0');
  }

  has(key: string | null): boolean {
    return key !== null && this.seen.has(key);
  }

  /** Remembers a clean object (most recent last; the oldest goes beyond maxEntries). */
  add(key: string | null): void {
    if (key === null) return;
    this.seen.delete(key);
    this.seen.set(key, true);
    if (this.seen.size > this.maxEntries) {
      const oldest = this.seen.keys().next();
      if (!oldest.done) this.seen.delete(oldest.value);
    }
  }

  delete(key: string | null): void {
    if (key !== null) this.seen.delete(key);
  }
}
