import type { MailConfig, MailDefaultGroupConfig, MailGroupConfig } from '../../config/mail-schema.js';
import { compileFilter, type AttachmentFilter } from './filter.js';
import type { MailAction, MailStatus, NameRule } from './status.js';
import { loadMailTemplates, type MailTemplates } from './templates.js';

/** The name of the group every recipient falls into when no other group matches. */
export const DEFAULT_GROUP = 'default';

/** Settings every group shares (from the top of the `mail` section). */
export interface MailCommon {
  notifyFrom: string;
  /** X-Virus-Scanned value; null = header not added. */
  xVirusScanned: string | null;
  nameRules: readonly NameRule[];
  senderForgingNames: readonly RegExp[];
  notifySenderOfBulk: boolean;
}

export type AdminAttachment = 'none' | 'report' | 'original';

/** A group with its settings resolved (the default group's filled in) and its patterns compiled. */
export interface MailGroup {
  name: string;
  /** Anchored, case-insensitive; empty for the default group (it takes whatever is left). */
  senders: readonly RegExp[];
  recipients: readonly RegExp[];
  admin: readonly string[];
  actions: Readonly<Record<MailStatus, MailAction>>;
  replaceWith: Readonly<Partial<Record<MailStatus, string>>>;
  quarantine: ReadonlySet<MailStatus>;
  copyTo: Readonly<Partial<Record<MailStatus, readonly string[]>>>;
  prefixSubject: Readonly<Partial<Record<MailStatus, string>>>;
  addHeaders: ReadonlySet<MailStatus>;
  notifySender: ReadonlySet<MailStatus>;
  notifyRecipients: ReadonlySet<MailStatus>;
  notifyAdmin: ReadonlySet<MailStatus>;
  adminAttachment: AdminAttachment;
  filter: AttachmentFilter;
  templates: MailTemplates;
  common: MailCommon;
}

/**
 * An address pattern must match the whole address (`^(?:...)$`), case-insensitively: `.*@example\.com`
 * matches a domain, and `example\.com` alone matches nothing but that literal text — so a pattern
 * can never be satisfied by `example.com.attacker.net`.
 */
export function addressPattern(source: string): RegExp {
  new RegExp(source); // a pattern that is invalid on its own must not become valid by wrapping
  return new RegExp(`^(?:${source})$`, 'i');
}

/** `<User@Example.com>` → `User@Example.com`; the null sender `<>` → ``. */
export function bareAddress(address: string): string {
  const t = address.trim();
  return t.startsWith('<') && t.endsWith('>') ? t.slice(1, -1).trim() : t;
}

function resolve(
  name: string,
  g: MailDefaultGroupConfig | (MailGroupConfig & MailDefaultGroupConfig),
  senders: readonly string[],
  recipients: readonly string[],
  common: MailCommon,
  readTemplate: ((path: string) => string) | undefined,
): MailGroup {
  return {
    name,
    senders: senders.map(addressPattern),
    recipients: recipients.map(addressPattern),
    admin: [...g.admin],
    actions: { ...g.actions },
    replaceWith: { ...g['replace-with'] },
    quarantine: new Set(g.quarantine),
    copyTo: { ...g['copy-to'] },
    prefixSubject: { ...g['prefix-subject'] },
    addHeaders: new Set(g['add-headers']),
    notifySender: new Set(g['notify-sender']),
    notifyRecipients: new Set(g['notify-recipients']),
    notifyAdmin: new Set(g['notify-admin']),
    adminAttachment: g['admin-attachment'],
    filter: compileFilter(g['filter-by-name'], g['filter-by-type']),
    templates: loadMailTemplates(g.templates, readTemplate),
    common,
  };
}

/** A group's own settings over the default group's: maps merge per status, lists replace. */
function inherit(d: MailDefaultGroupConfig, g: MailGroupConfig): MailGroupConfig & MailDefaultGroupConfig {
  const pick = <T>(own: T | undefined, base: T): T => (own === undefined ? base : own);
  const merge = <T extends object>(base: T, own: Partial<T> | undefined): T => {
    const out = { ...base };
    for (const [k, v] of Object.entries(own ?? {})) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
    return out;
  };
  return {
    ...g,
    admin: pick(g.admin, d.admin),
    actions: merge(d.actions, g.actions),
    'replace-with': merge(d['replace-with'], g['replace-with']),
    quarantine: pick(g.quarantine, d.quarantine),
    'copy-to': merge(d['copy-to'], g['copy-to']),
    'prefix-subject': merge(d['prefix-subject'], g['prefix-subject']),
    'add-headers': pick(g['add-headers'], d['add-headers']),
    'notify-sender': pick(g['notify-sender'], d['notify-sender']),
    'notify-recipients': pick(g['notify-recipients'], d['notify-recipients']),
    'notify-admin': pick(g['notify-admin'], d['notify-admin']),
    'admin-attachment': pick(g['admin-attachment'], d['admin-attachment']),
    'filter-by-name': pick(g['filter-by-name'], d['filter-by-name']),
    'filter-by-type': pick(g['filter-by-type'], d['filter-by-type']),
    templates: merge(d.templates, g.templates),
  };
}

export interface MailPolicy {
  /** In match order; the default group is last. */
  readonly groups: readonly MailGroup[];
  readonly common: MailCommon;
  /** The group by name; throws for an unknown name (a caller bug). */
  group(name: string): MailGroup;
  /** The name of the group that takes this recipient of this sender. */
  groupKey(sender: string, recipient: string): string;
  /** Recipients split by group, in group order (default last), each share in the given order. */
  assignGroups(sender: string, recipients: readonly string[]): Map<string, string[]>;
}

/** The first group whose sender list matches the sender and whose recipient list matches the recipient. */
export function matchGroup(groups: readonly MailGroup[], sender: string, recipient: string): MailGroup {
  const s = bareAddress(sender);
  const r = bareAddress(recipient);
  for (const g of groups) {
    if (g.name === DEFAULT_GROUP) return g;
    if (g.senders.some((re) => re.test(s)) && g.recipients.some((re) => re.test(r))) return g;
  }
  const last = groups[groups.length - 1];
  if (!last) throw new Error('a mail policy has at least the default group');
  return last;
}

export function groupKey(groups: readonly MailGroup[], sender: string, recipient: string): string {
  return matchGroup(groups, sender, recipient).name;
}

export function assignGroups(groups: readonly MailGroup[], sender: string, recipients: readonly string[]): Map<string, string[]> {
  const byGroup = new Map<string, string[]>();
  for (const r of recipients) {
    const name = groupKey(groups, sender, r);
    const share = byGroup.get(name);
    if (share) share.push(r);
    else byGroup.set(name, [r]);
  }
  const ordered = new Map<string, string[]>();
  for (const g of groups) {
    const share = byGroup.get(g.name);
    if (share) ordered.set(g.name, share);
  }
  return ordered;
}

export interface CompileOptions {
  /** Reads a template file (default: readFileSync; a missing file is AVG_ERR_CONFIG). */
  readTemplate?: (path: string) => string;
}

/** Builds the policy from the validated `mail` config: patterns compiled, templates read. */
export function compileMailPolicy(config: MailConfig, options: CompileOptions = {}): MailPolicy {
  const common: MailCommon = {
    notifyFrom: config['notify-from'],
    xVirusScanned: config['x-virus-scanned'],
    nameRules: config['virus-name-status'].map((r) => ({ source: r.pattern, re: new RegExp(r.pattern, 'i'), status: r.status })),
    senderForgingNames: config['sender-forging-names'].map((p) => new RegExp(p, 'i')),
    notifySenderOfBulk: config['notify-sender-of-bulk'],
  };
  const d = config['default-group'];
  const groups: MailGroup[] = config.groups.map((g) => resolve(g.name, inherit(d, g), g.senders, g.recipients, common, options.readTemplate));
  groups.push(resolve(DEFAULT_GROUP, d, [], [], common, options.readTemplate));
  const byName = new Map(groups.map((g) => [g.name, g]));
  return {
    groups,
    common,
    group(name) {
      const g = byName.get(name);
      if (!g) throw new Error(`no mail group "${name}"`);
      return g;
    },
    groupKey: (sender, recipient) => groupKey(groups, sender, recipient),
    assignGroups: (sender, recipients) => assignGroups(groups, sender, recipients),
  };
}
