import { readFileSync } from 'node:fs';
import { AvgateError } from '../core/errors.js';

/** Values a page template can use as {{NAME}}; every value is HTML-escaped when inserted. */
export interface PageValues {
  TITLE: string;
  STATUS: string;
  REASON: string;
  VIRUS_NAMES: string;
  URL: string;
  SERVICE: string;
  ENGINE: string;
  SIGNATURE_VERSION: string;
  TIME: string;
  /** The user's machine: the HTTP client's address (ICAP: X-Client-IP), `-` when unknown. */
  CLIENT: string;
  /** The user's login (ICAP: X-Authenticated-User), `-` when unknown. */
  USER: string;
}

/** The {{NAMES}} a page template can use. */
export const PAGE_VALUE_NAMES: readonly string[] = ['TITLE', 'STATUS', 'REASON', 'VIRUS_NAMES', 'URL', 'SERVICE', 'ENGINE', 'SIGNATURE_VERSION', 'TIME', 'CLIENT', 'USER'];

/** The {{NAMES}} of a template that no page fills (a typo, or a macro of another product's page). */
export function unknownPageNames(template: string): string[] {
  const names = [...template.matchAll(/\{\{([A-Z_]+)\}\}/g)].map((m) => m[1] as string);
  return [...new Set(names.filter((n) => !PAGE_VALUE_NAMES.includes(n)))];
}

export const DEFAULT_PAGE = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<style>body{font-family:sans-serif;max-width:42em;margin:3em auto;color:#222}h1{color:#a00}
dt{font-weight:bold}dd{margin:0 0 .6em 0;font-family:monospace;word-break:break-all}</style></head>
<body><h1>{{TITLE}}</h1><p>{{REASON}}</p>
<dl><dt>URL</dt><dd>{{URL}}</dd><dt>Virus</dt><dd>{{VIRUS_NAMES}}</dd><dt>Verdict</dt><dd>{{STATUS}}</dd>
<dt>Service</dt><dd>{{SERVICE}}</dd><dt>Engine</dt><dd>{{ENGINE}} (signatures {{SIGNATURE_VERSION}})</dd>
<dt>Time</dt><dd>{{TIME}}</dd></dl>
<p><small>avgate antivirus gateway</small></p></body></html>
`;

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Fills a template; unknown {{NAMES}} stay as they are so a typo shows on the page. */
export function renderPage(template: string, values: PageValues): string {
  return template.replace(/\{\{([A-Z_]+)\}\}/g, (whole, name: string) =>
    Object.prototype.hasOwnProperty.call(values, name) ? escapeHtml(values[name as keyof PageValues]) : whole,
  );
}

/** Reads a template file at startup: a missing file is a config error, not a broken page later. */
export function loadTemplate(path: string | null): string {
  if (path === null) return DEFAULT_PAGE;
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new AvgateError('AVG_ERR_CONFIG', `page template ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}
