/**
 * What the mail proxies (POP3, IMAP) share: the document replacer, the ACLs and the replacement
 * notice. See docs/mail-proxies.md.
 */
export { scanAndReplace } from './replace.js';
export type { ReplaceDeps, ReplaceResult, ReplacedDocument } from './replace.js';
export { compilePolicy, globRegExp, shouldReplace } from './acl.js';
export type { CommandDecision, CompiledPolicy, DocFacts, MessageAclFacts } from './acl.js';
export { BUILT_IN_REPLACEMENT, DEFAULT_REPLACEMENT_TEXT, loadReplacement, renderReplacement } from './template.js';
export type { ReplacementFacts, ReplacementTemplate } from './template.js';
