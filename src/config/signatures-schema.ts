import { z } from 'zod';
import { isDatabaseFile } from '../engines/clamd/fingerprint.js';
import { timerDuration, size } from './units-schema.js';

const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * The file name a source installs as (its `name`, else the URL's last path segment), or null when
 * clamd would not load a file of that name from its database directory.
 */
export function sourceFileName(src: { url: string; name: string | null }): string | null {
  let name = src.name;
  if (name === null) {
    let path: string;
    try {
      path = new URL(src.url).pathname;
      name = decodeURIComponent(path.slice(path.lastIndexOf('/') + 1));
    } catch {
      return null;
    }
  }
  return FILE_NAME.test(name) && isDatabaseFile(name) ? name : null;
}

/**
 * The signature updater (src/signatures/): database files fetched over HTTP(S) into the
 * project-local clamd's database directory, checked, and loaded with RELOAD. For unofficial
 * databases (the way fangfrisch or clamav-unofficial-sigs are used beside freshclam) and for
 * private mirrors of a site's own signatures.
 */
const sourceSchema = z.strictObject({
  /** http:// or https:// URL of one database file (.hdb .hsb .ndb .ldb .cdb .fp .ign2 .cvd ...). */
  url: z.string().regex(/^https?:\/\/\S+$/i, 'an http:// or https:// URL'),
  /** The file name in the database directory; default: the last path segment of the URL. */
  name: z.string().nullable().default(null),
  /** Expected SHA-256 of the file (hex); a download with another digest is refused. */
  sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, '64 hex digits').nullable().default(null),
});

export const signaturesSchema = z
  .strictObject({
    sources: z.array(sourceSchema).default([]),
    /** How often `avgate serve` updates; 0 = only `avgate signatures update`. */
    interval: timerDuration.prefault('0s'),
    /** Per download (connection, headers and body). */
    timeout: timerDuration.prefault('5m'),
    /** A larger download is refused. */
    'max-size': size.prefault('512MiB'),
    /** Load the new set with clamscan before installing it: a file clamd cannot load is refused. */
    'test-load': z.boolean().default(true),
    'test-load-timeout': timerDuration.prefault('5m'),
    clamscan: z.string().default('clamscan'),
  })
  .superRefine((s, ctx) => {
    const seen = new Set<string>();
    s.sources.forEach((src, i) => {
      const name = sourceFileName(src);
      if (name === null) {
        ctx.addIssue({ code: 'custom', path: ['sources', i, src.name === null ? 'url' : 'name'], message: 'not a database file name clamd loads (.hdb .hsb .ndb .ldb .cdb .fp .ign2 .cvd ...): set name' });
      } else if (seen.has(name)) {
        ctx.addIssue({ code: 'custom', path: ['sources', i], message: `a second source for ${name}` });
      } else seen.add(name);
    });
  });

export type SignaturesConfig = z.infer<typeof signaturesSchema>;
export type SignatureSource = z.infer<typeof sourceSchema>;
