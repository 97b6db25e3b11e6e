/**
 * The MIME walker and rewriter shared by the mail front ends (SMTP/LMTP filter, POP3/IMAP
 * proxies). See docs/mime.md.
 */
export { DEFAULT_MIME_LIMITS, MIME_LIMIT_KEYS, MIME_PROBLEM_CODES, mimeLimitsFrom, validateMimeLimits } from './limits.js';
export type { MimeLimits, MimeProblem, MimeProblemCode } from './limits.js';
export type { MessageInput } from './input.js';
export { DEFAULT_SPOOL_MEMORY_LIMIT, walkMessage } from './walker.js';
export type { DocumentHandler, MimeDocument, MimeDocumentInfo, WalkOptions, WalkResult } from './walker.js';
export { rewriteMessage } from './rewriter.js';
export type { HeaderLine, PartEdit, RewriteOptions, RewritePlan, RewriteResult } from './rewriter.js';
export { decodeEncodedWords } from './headers.js';
