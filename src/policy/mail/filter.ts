import type { FilterHit, MailDocument } from './facts.js';

/**
 * The attachment filter (Kaspersky's FilterByName / FilterByMIME): rules on file names, entry
 * names inside zip archives, and MIME types. A match makes the document `filtered`.
 */
export interface FilterRule {
  /** As written in the config. */
  source: string;
  re: RegExp;
}

export interface AttachmentFilter {
  byName: readonly FilterRule[];
  byType: readonly FilterRule[];
}

/**
 * A MIME type and subtype may be written with `*` (any run of token characters) and `?` (one):
 * `application/x-msdownload`, `*\/x-executable`, `application/vnd.ms-*`. Neither crosses the `/`.
 */
export const MIME_GLOB = /^[A-Za-z0-9!#$&^_.+*?-]+\/[A-Za-z0-9!#$&^_.+*?-]+$/;

export function mimeGlobToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^$()|[\]{}\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]');
  return new RegExp(`^${body}$`, 'i');
}

/** File name rules are searched (not anchored), so `\.exe$` means "ends in .exe". */
export function nameRule(source: string): FilterRule {
  return { source, re: new RegExp(source, 'i') };
}

export function typeRule(source: string): FilterRule {
  return { source, re: mimeGlobToRegExp(source) };
}

export function compileFilter(names: readonly string[], types: readonly string[]): AttachmentFilter {
  return { byName: names.map(nameRule), byType: types.map(typeRule) };
}

/** `Application/ZIP; name="a.zip"` → `application/zip`. */
export function bareType(contentType: string): string {
  return (contentType.split(';')[0] ?? '').trim().toLowerCase();
}

function matchName(rules: readonly FilterRule[], name: string): FilterRule | null {
  // An archive entry is matched by its full path and by its last component, so `^setup` finds
  // `tools/setup.exe` too.
  const slash = Math.max(name.lastIndexOf('/'), name.lastIndexOf('\\'));
  const base = slash >= 0 ? name.slice(slash + 1) : name;
  for (const r of rules) {
    if (r.re.test(name) || (base !== name && r.re.test(base))) return r;
  }
  return null;
}

/** First hit: the file name, then the names inside an archive, then declared and detected types. */
export function matchAttachmentFilter(
  filter: AttachmentFilter,
  doc: Pick<MailDocument, 'fileName' | 'contentType' | 'detectedType' | 'archiveNames'>,
): FilterHit | null {
  if (filter.byName.length > 0) {
    if (doc.fileName !== null && doc.fileName !== '') {
      const r = matchName(filter.byName, doc.fileName);
      if (r) return { kind: 'name', rule: r.source, value: doc.fileName, inArchive: false };
    }
    for (const entry of doc.archiveNames ?? []) {
      const r = matchName(filter.byName, entry);
      if (r) return { kind: 'name', rule: r.source, value: entry, inArchive: true };
    }
  }
  if (filter.byType.length > 0) {
    for (const t of [doc.contentType, doc.detectedType]) {
      if (t === null || t === undefined || t === '') continue;
      const type = bareType(t);
      const r = filter.byType.find((rule) => rule.re.test(type));
      if (r) return { kind: 'type', rule: r.source, value: type, inArchive: false };
    }
  }
  return null;
}
