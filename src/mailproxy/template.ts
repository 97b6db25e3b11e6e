import { readFile } from 'node:fs/promises';
import { AvgateError, messageOf } from '../core/errors.js';

/**
 * The notice that replaces a document (Kernun's replacement document): plain UTF-8 text with
 * macros. Loaded once at startup; a configured file that cannot be read stops startup, so a typo
 * in the path is found by the admin, not by the first infected mail.
 */
export interface ReplacementTemplate {
  /** The file it came from; null = built in. */
  source: string | null;
  text: string;
}

export const DEFAULT_REPLACEMENT_TEXT = [
  'This part of the message was replaced by avgate: {{REASON}}.',
  '',
  'File name:    {{FILENAME}}',
  'Content type: {{CONTENT_TYPE}}',
  'Status:       {{STATUS}}',
  'Virus names:  {{VIRUS_NAMES}}',
  '',
  'The rest of the message is as it was sent. Ask your administrator if you need the original.',
  '',
].join('\n');

/** Largest replacement file accepted: it goes into every rewritten message. */
const MAX_TEMPLATE_BYTES = 64 * 1024;

export const BUILT_IN_REPLACEMENT: ReplacementTemplate = Object.freeze({ source: null, text: DEFAULT_REPLACEMENT_TEXT });

/** Reads the replacement file (null = the built-in text). Throws AVG_ERR_CONFIG naming the key. */
export async function loadReplacement(path: string | null, key = 'replacement'): Promise<ReplacementTemplate> {
  if (path === null) return BUILT_IN_REPLACEMENT;
  let data: Buffer;
  try {
    data = await readFile(path);
  } catch (err) {
    throw new AvgateError('AVG_ERR_CONFIG', `${key}: cannot read the replacement file ${path}: ${messageOf(err)}`, { cause: err });
  }
  if (data.length > MAX_TEMPLATE_BYTES) throw new AvgateError('AVG_ERR_CONFIG', `${key}: ${path} is larger than ${MAX_TEMPLATE_BYTES} bytes`);
  const text = data.toString('utf8');
  if (text.includes('\uFFFD')) throw new AvgateError('AVG_ERR_CONFIG', `${key}: ${path} is not UTF-8 text`);
  return { source: path, text };
}

export interface ReplacementFacts {
  virusNames: readonly string[];
  filename: string | null;
  status: string;
  reason: string;
  contentType: string | null;
  part: string;
}

/**
 * The notice for one document. Macro values are made single-line and stripped of control
 * characters: a hostile file name cannot add lines that look like avgate's own text.
 */
export function renderReplacement(t: ReplacementTemplate, f: ReplacementFacts): string {
  // Control characters (CR, LF, ESC ...) become blanks.
  const clean = (s: string) => [...s].map((c) => (c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f ? ' ' : c)).join('').replace(/ {2,}/g, ' ').slice(0, 500);
  const values: Record<string, string> = {
    VIRUS_NAMES: f.virusNames.length > 0 ? clean(f.virusNames.join(', ')) : '-',
    FILENAME: f.filename === null ? '-' : clean(f.filename),
    STATUS: clean(f.status),
    REASON: clean(f.reason),
    CONTENT_TYPE: f.contentType === null ? '-' : clean(f.contentType),
    PART: f.part === '' ? '(whole message)' : clean(f.part),
  };
  return t.text.replace(/\{\{([A-Z_]+)\}\}/g, (m, name: string) => values[name] ?? m);
}
