import type { CommandAclRule, DocAclAction, DocAclRule, MailAclRule, MailProxyPolicyConfig } from '../config/mail-proxy-schema.js';
import { hostMatcher } from '../config/smtp-schema.js';
import type { MailStatus } from '../policy/mail/status.js';

/**
 * The mail proxies' ACLs, compiled once per policy: pure decisions, no sockets. Every list is
 * ordered and the first matching rule wins (Kernun's command-acl, mail-acl, doc-acl).
 */

/** Glob with `*` (any run) and `?` (one character), matched whole and case-insensitive. */
export function globRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\*?]/g, (c) => (c === '*' ? '.*' : c === '?' ? '.' : `\\${c}`));
  return new RegExp(`^${body}$`, 'is');
}

const anyOf = (res: readonly RegExp[], value: string | null): boolean => res.length === 0 || (value !== null && res.some((r) => r.test(value)));

export interface CommandDecision {
  rule: string | null;
  action: 'accept' | 'deny';
  useAntivirus: boolean;
}

export interface DocFacts {
  status: MailStatus;
  contentType: string | null;
  filename: string | null;
  user: string | null;
}

export interface MessageAclFacts {
  /** Addresses in From:. */
  senders: readonly string[];
  /** Addresses in To: and Cc:. */
  recipients: readonly string[];
  size: number;
}

export interface CompiledPolicy {
  command(facts: { client: string | null; user: string | null; command: string }): CommandDecision;
  mail(facts: MessageAclFacts): { rule: string | null; action: 'accept' | 'reject' };
  doc(facts: DocFacts): { rule: string | null; action: DocAclAction };
  /**
   * Some command-acl or doc-acl rule names login names (`users`): a session must know who logged
   * in, so logins that do not show the name (SASL SCRAM-*, GSSAPI ...) are refused (fail closed).
   */
  readonly userRules: boolean;
}

function compileCommand(r: CommandAclRule) {
  const clients = r.match.clients.length > 0 ? hostMatcher(r.match.clients) : null;
  const users = r.match.users.map(globRegExp);
  const commands = new Set(r.match.commands.map((c) => c.toUpperCase()));
  return (f: { client: string | null; user: string | null; command: string }) =>
    (clients === null || (f.client !== null && clients(f.client))) && anyOf(users, f.user) && (commands.size === 0 || commands.has(f.command.toUpperCase()));
}

function compileMail(r: MailAclRule) {
  const senders = r.match.senders.map((s) => new RegExp(s, 'i'));
  const recipients = r.match.recipients.map((s) => new RegExp(s, 'i'));
  const some = (res: RegExp[], list: readonly string[]) => res.length === 0 || list.some((a) => res.some((re) => re.test(a)));
  return (f: MessageAclFacts) =>
    some(senders, f.senders) &&
    some(recipients, f.recipients) &&
    (r.match['min-size'] === null || f.size >= r.match['min-size']) &&
    (r.match['max-size'] === null || f.size <= r.match['max-size']);
}

function compileDoc(r: DocAclRule) {
  const statuses = new Set(r.match.statuses);
  const types = r.match['content-types'].map(globRegExp);
  const names = r.match.filenames.map(globRegExp);
  const users = r.match.users.map(globRegExp);
  return (f: DocFacts) => (statuses.size === 0 || statuses.has(f.status)) && anyOf(types, f.contentType) && anyOf(names, f.filename) && anyOf(users, f.user);
}

const compiled = new WeakMap<MailProxyPolicyConfig, CompiledPolicy>();

/** The policy's matchers (cached per policy object). */
export function compilePolicy(policy: MailProxyPolicyConfig): CompiledPolicy {
  let c = compiled.get(policy);
  if (c) return c;
  const commands = policy['command-acl'].map((r) => ({ r, m: compileCommand(r) }));
  const mails = policy['mail-acl'].map((r) => ({ r, m: compileMail(r) }));
  const docs = policy['doc-acl'].map((r) => ({ r, m: compileDoc(r) }));
  c = {
    userRules: policy['command-acl'].some((r) => r.match.users.length > 0) || policy['doc-acl'].some((r) => r.match.users.length > 0),
    command(f) {
      const hit = commands.find((x) => x.m(f));
      return hit ? { rule: hit.r.name, action: hit.r.action, useAntivirus: hit.r['use-antivirus'] } : { rule: null, action: 'accept', useAntivirus: true };
    },
    mail(f) {
      const hit = mails.find((x) => x.m(f));
      return hit ? { rule: hit.r.name, action: hit.r.action } : { rule: null, action: 'accept' };
    },
    doc(f) {
      const hit = docs.find((x) => x.m(f));
      return hit ? { rule: hit.r.name, action: hit.r.action } : { rule: null, action: 'replace-av-unknown' };
    },
  };
  compiled.set(policy, c);
  return c;
}

/** Statuses replace-infected replaces: something harmful was found. */
const INFECTED: ReadonlySet<MailStatus> = new Set(['infected', 'suspicious']);

/**
 * Whether a document is replaced: docok keeps it; replace-infected replaces what was found
 * harmful; replace-av-unknown replaces everything that is not clean. An engine error follows
 * on-error under both replace actions (the notice says it could not be scanned).
 */
export function shouldReplace(action: DocAclAction, status: MailStatus, onError: 'replace' | 'pass'): boolean {
  if (action === 'docok' || status === 'clean') return false;
  if (status === 'error') return onError === 'replace';
  if (action === 'replace-infected') return INFECTED.has(status);
  return true;
}
