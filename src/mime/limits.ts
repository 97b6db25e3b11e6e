import { AvgateError } from '../core/errors.js';

/**
 * Bounds of the MIME walker. Each one stops a way a hostile message can make a filter spend
 * unbounded memory or time (deep nesting, thousands of parts, a header that never ends, a bomb of
 * decoded bytes). Exceeding one is never an exception: it is a problem with a code, the message is
 * "corrupted", and what could be decoded is still handed over.
 */
export interface MimeLimits {
  /** Nesting of multiparts and attached messages; a container deeper than this is not opened. */
  maxDepth: number;
  /** MIME parts plus uuencoded files in one message; the rest of the message is not walked. */
  maxParts: number;
  /** Bytes of one header block (one part's headers); the rest of the block is ignored. */
  maxHeaderSize: number;
  /** Decoded bytes of one document; the document is handed over cut at this size. */
  maxDecodedSize: number;
  /**
   * Bytes of one line a decoder keeps in memory (a uuencoded line, trailing blanks of a
   * quoted-printable line). Body lines are otherwise never held whole.
   */
  maxLineLength: number;
}

/** Defaults; the config keys are `mail.max-depth`, `mail.max-parts` ... (see MIME_LIMIT_KEYS). */
export const DEFAULT_MIME_LIMITS: Readonly<MimeLimits> = Object.freeze({
  maxDepth: 20,
  maxParts: 1000,
  maxHeaderSize: 64 * 1024,
  maxDecodedSize: 100 * 1024 * 1024,
  maxLineLength: 16 * 1024,
});

/** Config key (kebab-case, under `mail.`) of each limit, for the config layer and its docs. */
export const MIME_LIMIT_KEYS: Readonly<Record<keyof MimeLimits, string>> = Object.freeze({
  maxDepth: 'max-depth',
  maxParts: 'max-parts',
  maxHeaderSize: 'max-header-size',
  maxDecodedSize: 'max-decoded-size',
  maxLineLength: 'max-line-length',
});

/** The limits as the config holds them (`mail.max-depth` ..., see MIME_LIMIT_KEYS): one reading for every front end. */
export function mimeLimitsFrom(
  mail: Readonly<Record<'max-depth' | 'max-parts' | 'max-header-size' | 'max-decoded-size' | 'max-line-length', number>>,
): MimeLimits {
  return {
    maxDepth: mail['max-depth'],
    maxParts: mail['max-parts'],
    maxHeaderSize: mail['max-header-size'],
    maxDecodedSize: mail['max-decoded-size'],
    maxLineLength: mail['max-line-length'],
  };
}

/** Throws AVG_ERR_CONFIG unless every limit is a positive safe integer. Returns a frozen copy. */
export function validateMimeLimits(limits: MimeLimits): Readonly<MimeLimits> {
  const out = {} as MimeLimits;
  for (const key of Object.keys(DEFAULT_MIME_LIMITS) as Array<keyof MimeLimits>) {
    const v = limits[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
      throw new AvgateError('AVG_ERR_CONFIG', `mail.${MIME_LIMIT_KEYS[key]}: must be a positive integer, got ${String(v)}`);
    }
    out[key] = v;
  }
  return Object.freeze(out);
}

/**
 * Machine codes of what can be wrong with a message. Any of them makes the message "corrupted"
 * for policy; the text is for docs/mime.md and logs (a unit test keeps the two in step).
 */
export const MIME_PROBLEM_CODES = {
  depth: 'nesting deeper than max-depth: the container was handed over as one document, unopened',
  parts: 'more parts than max-parts: the rest of the message was not walked',
  'header-size': 'a header block larger than max-header-size: the rest of the block was ignored',
  header: 'a line in a header block that is neither a field nor a continuation: the body starts there',
  'decoded-size': 'a document larger than max-decoded-size: it was handed over cut',
  boundary: 'a multipart without a usable boundary, without any part, or a part not closed by its own delimiter',
  encoding: 'invalid base64, quoted-printable or uuencode data (what could be decoded was handed over)',
  truncated: 'the message ends inside an open multipart',
  ambiguous:
    'readers could take the structure two ways: Content-Type or Content-Transfer-Encoding given twice with different values, a parameter such as the boundary given twice, a boundary in single quotes, or a delimiter line after the close delimiter',
} as const;

export type MimeProblemCode = keyof typeof MIME_PROBLEM_CODES;

export interface MimeProblem {
  code: MimeProblemCode;
  /** Id of the part (or document) concerned; '' is the whole message. */
  partId: string;
  /** Short human text for the log. */
  message: string;
}
