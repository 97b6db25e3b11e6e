import { hostMatcher } from '../config/smtp-schema.js';
import { docAclRuleSchema, globToRegExp, urlPatternToRegExp, type DocAclRule } from '../config/proxy-schema.js';

/**
 * Document ACLs (Kernun's doc-acl): an ordered list of rules, the first whose every condition holds
 * decides how an object is handled. Shared by the HTTP and FTP proxies; no sockets here.
 */

/** What is known about one object when its rule is chosen. */
export interface DocFacts {
  /** Client address (IPv4-mapped IPv6 addresses match IPv4 blocks). */
  client: string;
  /** Server host name or address, without port. */
  host: string;
  /** Full URL (http://host/path, ftp://host/path). */
  url: string;
  /** HTTP method or FTP command (GET, POST, RETR, STOR). */
  method: string;
  /** Media type without parameters (text/html), or null when not given. */
  contentType: string | null;
  /** Body size when known in advance (Content-Length, FTP SIZE); null = not known. */
  size: number | null;
  direction: 'download' | 'upload';
}

/** The rule chosen for an object, with the name it is logged under. */
export interface DocAclMatch {
  rule: DocAclRule;
  /** The rule's name, or rule-N (1-based), or `fallback` when no rule matched. */
  name: string;
  /** Position in the list (0-based), -1 for the fallback. */
  index: number;
}

interface CompiledRule {
  rule: DocAclRule;
  name: string;
  clients: ((address: string) => boolean) | null;
  hosts: RegExp[];
  url: RegExp | null;
  methods: Set<string>;
  contentTypes: RegExp[];
}

/** A rule with every default: scan with scan.engines, only free passes, default trickling. */
const FALLBACK: DocAclRule = docAclRuleSchema.parse({ name: 'fallback' });

export class DocAcl {
  private readonly rules: CompiledRule[];

  constructor(rules: readonly DocAclRule[]) {
    this.rules = rules.map((rule, i) => ({
      rule,
      name: rule.name ?? `rule-${i + 1}`,
      clients: rule.match.clients.length > 0 ? hostMatcher(rule.match.clients) : null,
      hosts: rule.match.hosts.map(globToRegExp),
      // The schema checked that the pattern compiles.
      url: rule.match.url === null ? null : (urlPatternToRegExp(rule.match.url) as RegExp),
      methods: new Set(rule.match.methods),
      contentTypes: rule.match['content-types'].map(globToRegExp),
    }));
  }

  /**
   * First rule whose every condition holds. Size conditions hold only when the size is known, so a
   * rule meant for "small objects" never catches a body of unknown length. No rule matching = the
   * fallback (scan, default accept-status and trickling): an object is never passed unscanned by
   * omission.
   */
  match(f: DocFacts): DocAclMatch {
    const host = f.host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
    const type = f.contentType === null ? null : (f.contentType.split(';')[0] ?? '').trim().toLowerCase();
    for (let i = 0; i < this.rules.length; i++) {
      const c = this.rules[i] as CompiledRule;
      const m = c.rule.match;
      if (m.direction !== 'both' && m.direction !== f.direction) continue;
      if (c.clients && !c.clients(f.client)) continue;
      if (c.hosts.length > 0 && !c.hosts.some((re) => re.test(host))) continue;
      if (c.url && !c.url.test(f.url)) continue;
      if (c.methods.size > 0 && !c.methods.has(f.method.toUpperCase())) continue;
      if (c.contentTypes.length > 0 && (type === null || !c.contentTypes.some((re) => re.test(type)))) continue;
      if (m['min-size'] !== null && (f.size === null || f.size < m['min-size'])) continue;
      if (m['max-size'] !== null && (f.size === null || f.size > m['max-size'])) continue;
      return { rule: c.rule, name: c.name, index: i };
    }
    return { rule: FALLBACK, name: 'fallback', index: -1 };
  }
}
