/**
 * `avgate policy`: the policy a config file sets, in the order it is applied, and which rule a
 * given message or download falls under — read from the file, with the same matchers the front
 * ends use (src/policy/mail, src/proxy/doc-acl.ts, src/mailproxy/acl.ts). Nothing is scanned and
 * no running avgate is asked.
 */
import { isIP } from 'node:net';
import { posix } from 'node:path';
import type { Writable } from 'node:stream';
import type { DocAclRule as MailProxyDocRule, MailProxyPolicyConfig } from '../config/mail-proxy-schema.js';
import type { DocAclRule, TrickleConfig } from '../config/proxy-schema.js';
import type { Config } from '../config/schema.js';
import { messageOf } from '../core/errors.js';
import { splitHostPort, urlHost } from '../core/net.js';
import { formatBytes, parseSize } from '../core/units.js';
import { compileMailPolicy, DEFAULT_GROUP, MAIL_STATUSES, type MailGroup, type MailPolicy, type MailStatus } from '../policy/mail/index.js';
import { hostMatcher } from '../config/smtp-schema.js';
import { DOWNLOADS, isPartialUpload, LISTINGS, UPLOADS, upstreamAllowed } from '../protocols/ftp/session.js';
import { parseProxyTarget, responseHasNoBody } from '../protocols/http-proxy/headers.js';
import { DocAcl, type DocFacts } from '../proxy/doc-acl.js';

export const POLICY_USAGE = `usage: avgate policy show [SECTION]
       avgate policy mail --from ADDR --to ADDR [--to ADDR ...] [--json]
       avgate policy http-proxy|ftp-proxy --url URL [--client IP] [--method M]
                     [--content-type TYPE] [--size N] [--upload] [--json]
show: every rule list of the config in the order it is applied (SECTION: mail, http-proxy,
ftp-proxy, pop3-proxy, imap-proxy; default all). mail: the group each recipient falls into and
what that group does per status. http-proxy, ftp-proxy: the doc-acl rule a request falls under
(--client default 127.0.0.1; --method default GET/RETR, POST/STOR with --upload; --size is the
Content-Length and --content-type the Content-Type, HTTP only: the FTP proxy knows neither then).
Read from the config file only: nothing is scanned, the running avgate is not asked.
`;

const SECTIONS = ['mail', 'http-proxy', 'ftp-proxy', 'pop3-proxy', 'imap-proxy'] as const;
type Section = (typeof SECTIONS)[number];

interface Io {
  stdout: Writable;
  stderr: Writable;
}

/** `--name value` options, repeatable ones collected; flags without a value listed in `flags`. */
function parseOptions(args: string[], flags: readonly string[]): { values: Map<string, string[]>; flags: Set<string>; rest: string[] } {
  const values = new Map<string, string[]>();
  const set = new Set<string>();
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (flags.includes(a)) {
      set.add(a);
    } else if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq > 0 ? a.slice(0, eq) : a;
      const value = eq > 0 ? a.slice(eq + 1) : args[++i];
      if (value === undefined) throw new Error(`${name} needs a value`);
      values.set(name, [...(values.get(name) ?? []), value]);
    } else {
      rest.push(a);
    }
  }
  return { values, flags: set, rest };
}

export function runPolicyCommand(config: Readonly<Config>, args: string[], io: Io): number {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
    io.stdout.write(POLICY_USAGE);
    return sub === undefined ? 2 : 0;
  }
  try {
    if (sub === 'show') {
      const which = rest[0];
      if (which !== undefined && !(SECTIONS as readonly string[]).includes(which)) throw new Error(`unknown section "${which}"; one of ${SECTIONS.join(', ')}`);
      io.stdout.write(showPolicy(config, which === undefined ? SECTIONS : [which as Section]));
      return 0;
    }
    if (sub === 'mail') return mailCommand(config, rest, io);
    if (sub === 'http-proxy' || sub === 'ftp-proxy') return docAclCommand(config, sub, rest, io);
    throw new Error(`unknown subcommand "${sub}"`);
  } catch (err) {
    io.stderr.write(`avgate policy: ${messageOf(err)}\n${POLICY_USAGE}`);
    return 2;
  }
}

// ------------------------------------------------------------------ mail filter groups

function mailCommand(config: Readonly<Config>, args: string[], io: Io): number {
  const { values, flags, rest } = parseOptions(args, ['--json']);
  const unknown = [...values.keys()].filter((k) => k !== '--from' && k !== '--to');
  if (unknown.length > 0 || rest.length > 0) throw new Error(`unexpected argument ${unknown[0] ?? rest[0]}`);
  const from = values.get('--from');
  const to = values.get('--to') ?? [];
  if (from?.length !== 1 || to.length === 0) throw new Error('give one --from (an empty string for the null sender <>) and at least one --to');
  const sender = from[0] as string;
  const policy = compileMailPolicy(config.mail);
  const shares = policy.assignGroups(sender, to);
  if (flags.has('--json')) {
    const groups = [...shares].map(([name, recipients]) => ({ group: name, position: positionOf(policy, name), recipients, settings: groupJson(policy.group(name)) }));
    io.stdout.write(`${JSON.stringify({ sender, groups })}\n`);
    return 0;
  }
  const out: string[] = [`sender ${sender === '' ? '<> (null sender)' : sender}`];
  for (const r of to) {
    const name = policy.groupKey(sender, r);
    out.push(`  ${r} -> group ${name} (${positionOf(policy, name)} of ${policy.groups.length}${name === DEFAULT_GROUP ? ', no other group matched' : ''})`);
  }
  if (shares.size > 1) out.push('the recipients are split: each share is handled by its own group (and delivered or refused on its own)');
  for (const name of shares.keys()) out.push(...describeGroup(config.mail, policy.group(name), positionOf(policy, name)));
  out.push(senderNoticeRule(policy));
  io.stdout.write(`${out.join('\n')}\n`);
  return 0;
}

/** The exceptions to every group's `notify sender`. */
function senderNoticeRule(policy: MailPolicy): string {
  const c = policy.common;
  return `sender notices are never sent to the null sender <> or to notify-from, nor for rejected messages (the client bounces them), nor for virus names matching sender-forging-names (${c.senderForgingNames.length} pattern(s))${c.notifySenderOfBulk ? '' : ', nor for bulk or list mail'}`;
}

function positionOf(policy: MailPolicy, name: string): number {
  return policy.groups.findIndex((g) => g.name === name) + 1;
}

/**
 * What the filter does for a document of status s in group g, as src/policy/mail/plan.ts decides
 * it: a tempfail does nothing else (the message comes again); quarantine, copies and notices go
 * with delivered, rejected and discarded messages (no sender notice for a rejected one); the subject prefix and the headers only with a
 * delivered one; admin notices only when the group has admin addresses.
 */
function effect(g: MailGroup, s: MailStatus) {
  const action = g.actions[s];
  const final = action !== 'tempfail';
  const delivered = final && action !== 'reject' && action !== 'discard';
  return {
    action,
    replaceWith: action === 'replace' ? (g.replaceWith[s] ?? null) : null,
    quarantine: final && g.quarantine.has(s),
    // A rejection is bounced to the sender by the client: no sender notice then.
    notify: final ? notifyList(g, s).filter((n) => n !== 'sender' || action !== 'reject') : [],
    copyTo: final ? [...(g.copyTo[s] ?? [])] : [],
    // Trimmed, and a blank one is none (the filter then takes the next status's).
    prefixSubject: delivered && (g.prefixSubject[s] ?? '').trim() !== '' ? (g.prefixSubject[s] as string).trim() : null,
    headers: delivered && g.addHeaders.has(s),
  };
}

function groupJson(g: MailGroup): Record<string, unknown> {
  return Object.fromEntries(MAIL_STATUSES.map((s) => [s, effect(g, s)]));
}

function notifyList(g: MailGroup, s: MailStatus): string[] {
  return [g.notifySender.has(s) ? 'sender' : null, g.notifyRecipients.has(s) ? 'recipients' : null, g.notifyAdmin.has(s) && g.admin.length > 0 ? 'admin' : null].filter((x): x is string => x !== null);
}

function describeGroup(mail: Readonly<Config['mail']>, g: MailGroup, position: number): string[] {
  const out = [`group ${g.name} (${position}):`];
  // The patterns as written (the compiled ones are anchored).
  const written = mail.groups.find((c) => c.name === g.name);
  if (!written) out.push('  takes every recipient no group above matched');
  else out.push(`  senders: ${written.senders.join(' | ')}`, `  recipients: ${written.recipients.join(' | ')}`);
  if (g.admin.length > 0) out.push(`  admin: ${g.admin.join(', ')}`);
  else if (g.notifyAdmin.size > 0) out.push('  admin: none, so no admin notices are sent');
  out.push('  per document status (reject, discard and tempfail apply to the whole message; headers follow its worst status):');
  for (const s of MAIL_STATUSES) {
    const e = effect(g, s);
    const parts: string[] = [e.replaceWith !== null ? `replace with ${e.replaceWith}` : e.action === 'tempfail' ? 'tempfail (4xx: the client sends it again; nothing else happens)' : e.action];
    if (e.quarantine) parts.push('quarantine');
    if (e.notify.length > 0) parts.push(`notify ${e.notify.join(', ')}`);
    if (e.copyTo.length > 0) parts.push(`copy to ${e.copyTo.join(', ')}`);
    if (e.prefixSubject) parts.push(`subject prefix ${JSON.stringify(e.prefixSubject)}`);
    if (e.headers) parts.push(g.common.xVirusScanned !== null ? 'X-Virus-Scanned and X-AV-Status headers' : 'X-AV-Status header');
    out.push(`    ${s.padEnd(11)} ${parts.join('; ')}`);
  }
  const filters = [...g.filter.byName.map((r) => `name ${r.source}`), ...g.filter.byType.map((r) => `type ${r.source}`)];
  if (filters.length > 0) out.push(`  attachment filter (status filtered): ${filters.join(', ')}`);
  return out;
}

// ------------------------------------------------------------------ HTTP and FTP doc-acl

function docAclCommand(config: Readonly<Config>, section: 'http-proxy' | 'ftp-proxy', args: string[], io: Io): number {
  const { values, flags, rest } = parseOptions(args, ['--json', '--upload']);
  const known = ['--url', '--client', '--method', '--content-type', '--size'];
  const unknown = [...values.keys()].filter((k) => !known.includes(k));
  if (unknown.length > 0 || rest.length > 0) throw new Error(`unexpected argument ${unknown[0] ?? rest[0]}`);
  const one = (k: string): string | undefined => {
    const v = values.get(k);
    if (v && v.length > 1) throw new Error(`${k} given more than once`);
    return v?.[0];
  };
  const url = one('--url');
  if (url === undefined) throw new Error('--url is needed');
  const client = one('--client') ?? '127.0.0.1';
  if (isIP(client) === 0) throw new Error(`--client ${client} is not an IP address`);
  const upload = flags.has('--upload');
  const sizeText = one('--size');
  const contentType = one('--content-type') ?? null;
  let host: string;
  let target: string;
  /** The FTP server as the session reaches it, when its port is not 21 (the rules' URL has no port). */
  let serverNote = '';
  const method = (one('--method') ?? (upload ? (section === 'ftp-proxy' ? 'STOR' : 'POST') : section === 'ftp-proxy' ? 'RETR' : 'GET')).toUpperCase();
  let direction: 'download' | 'upload' = upload ? 'upload' : 'download';
  /** Set when the proxy applies no rule at all to this request, or refuses it before any rule. */
  let noRule: string | null = null;
  if (section === 'http-proxy') {
    // The same parse and normalisation as the proxy's (src/protocols/http-proxy/headers.ts).
    const t = parseProxyTarget(url);
    if (!t) throw new Error(`--url ${url} is not an absolute http:// URL the proxy takes (https:// goes through CONNECT tunnels, which are not scanned)`);
    host = t.host;
    target = t.url;
    const size = sizeText === undefined ? null : sizeOf(sizeText);
    if (!upload && responseHasNoBody(method, 200)) noRule = `a ${method} response has no body: it is passed without a rule (so are 1xx, 204 and 304 responses)`;
    if (upload && size === 0) noRule = 'an upload without a body is not checked against the rules';
    // Checked first by the proxy, before any rule.
    if (!hostMatcher(config['http-proxy']['allowed-clients'])(client)) noRule = `client ${client} is not in http-proxy.allowed-clients: refused (403) before any rule`;
  } else {
    // As the FTP proxy builds it from the command's argument (src/protocols/ftp/session.ts,
    // facts()): the host as given, the path as the client sends it, made absolute and normalised;
    // nothing is percent-decoded. It knows neither size nor type when it picks the rule.
    if (sizeText !== undefined || contentType !== null) throw new Error('the FTP proxy picks the rule before it knows a size or type: --size and --content-type do not apply');
    const m = /^ftp:\/\/([^/]+)(\/.*)?$/is.exec(url);
    if (!m) throw new Error(`--url ${url} is not ftp://HOST/PATH`);
    const server = ftpServer(m[1] as string);
    host = server.host;
    // With a fixed upstream the server is that one, whatever the client names.
    const fixed = config['ftp-proxy'].upstream;
    const port = fixed !== null ? splitHostPort(fixed).port : server.port;
    if (fixed !== null) host = splitHostPort(fixed).host;
    if (port !== 21) serverNote = ` (server port ${port})`;
    target = `ftp://${urlHost(host)}${posix.normalize(m[2] ?? '/')}`;
    if (upload && !UPLOADS.has(method)) throw new Error(`--upload with --method ${method}: the FTP proxy takes the direction from the command (uploads: ${[...UPLOADS].join(', ')})`);
    direction = UPLOADS.has(method) ? 'upload' : 'download';
    if (LISTINGS.has(method)) noRule = `${method} listings are relayed unscanned, without a rule`;
    else if (!DOWNLOADS.has(method) && !UPLOADS.has(method)) noRule = `${method} is passed to the server without a rule (rules apply to ${[...DOWNLOADS, ...UPLOADS].join(', ')})`;
    // USER user@host[:port] is checked before the session reaches the server.
    if (fixed === null && !upstreamAllowed(config['ftp-proxy']['allowed-upstreams'], host, server.port)) {
      noRule = `server ${host}:${server.port} is not in ftp-proxy.allowed-upstreams: USER user@host is refused (530), no session`;
    }
  }
  const facts: DocFacts = { client, host, url: target, method, contentType, size: sizeText === undefined ? null : sizeOf(sizeText), direction };
  const rules = config[section]['doc-acl'];
  const m = new DocAcl(rules).match(facts);
  const partial =
    section === 'ftp-proxy' && direction === 'upload' && m.rule.action === 'scan' && m.rule.antivirus !== 'none' && config['ftp-proxy']['partial-uploads'] === 'refuse'
      ? isPartialUpload(method, null)
        ? `${method} is refused (550): partial uploads cannot be scanned (ftp-proxy.partial-uploads: refuse)`
        : `after a REST other than 0, ${method} is refused (550): ftp-proxy.partial-uploads: refuse`
      : null;
  if (flags.has('--json')) {
    const rule = noRule === null ? { rule: m.name, position: m.index + 1, of: rules.length, action: m.rule.action, antivirus: m.rule.antivirus, acceptStatus: m.rule['accept-status'], trickle: m.rule.trickle } : { rule: null, note: noRule };
    io.stdout.write(`${JSON.stringify({ section, facts, ...rule, ...(partial && noRule === null ? { partialUploads: partial } : {}) })}\n`);
    return 0;
  }
  const where = m.index < 0 ? `no rule of ${rules.length} matched: the fallback` : `rule ${m.index + 1} of ${rules.length}, "${m.name}"`;
  const head = `${section} ${facts.direction} ${facts.method} ${target}${serverNote} from ${client}${facts.contentType ? `, ${facts.contentType}` : ''}${section === 'ftp-proxy' ? '' : facts.size !== null ? `, ${formatBytes(facts.size)}` : ', size unknown'}`;
  const lines = [head, noRule !== null ? `  ${noRule}` : `  ${where}: ${describeDocRule(m.rule, facts.direction)}`];
  if (partial !== null && noRule === null) lines.push(`  ${partial}`);
  if (!config[section].enabled) lines.push(`  (${section} is not enabled in this config)`);
  io.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

/** The server as the FTP proxy holds it: the host without user or IPv6 brackets, the port (21 when none is given). */
function ftpServer(authority: string): { host: string; port: number } {
  const a = authority.slice(authority.lastIndexOf('@') + 1);
  const portOf = (p: string | undefined) => (p ? Number(p) : 21);
  const v6 = /^\[([^\]]*)\](?::(\d*))?$/.exec(a);
  if (v6) return { host: v6[1] as string, port: portOf(v6[2]) };
  // One colon: host:port; more: a bare IPv6 address.
  const parts = a.split(':');
  return parts.length === 2 ? { host: parts[0] as string, port: portOf(parts[1]) } : { host: a, port: 21 };
}

function sizeOf(text: string): number {
  const n = parseSize(text);
  if (n === null) throw new Error(`--size ${text} is not a size (bytes, or with a unit: 10KiB, 5MB)`);
  return n;
}

function describeTrickle(t: TrickleConfig | null): string {
  if (t === null) return 'the body is held until the verdict';
  const limit = t.limit.kind === 'percent' ? `${t.limit.value}%` : formatBytes(t.limit.value);
  return `trickle ${formatBytes(t.chunk)} every ${t.interval / 1000}s once the transfer has taken ${t.interval / 1000}s, at most ${limit}, keeping back ${formatBytes(t['keep-back'])}`;
}

function describeDocRule(r: DocAclRule, direction?: 'download' | 'upload'): string {
  if (r.action === 'accept') return 'accept: passed unscanned';
  if (r.action === 'deny') return 'deny: refused (403 page; FTP 550)';
  if (r.antivirus === 'none') return 'antivirus none: passed unscanned';
  const engines = r.antivirus === null ? 'scan.engines' : r.antivirus.join(', ');
  const trickle = direction === 'upload' ? 'uploads are held until the verdict' : describeTrickle(r.trickle);
  return `scan with ${engines}; passes when ${r['accept-status'].join(', ')}; ${trickle}`;
}

function describeMatch(m: DocAclRule['match']): string {
  const parts: string[] = [];
  if (m.direction !== 'both') parts.push(`${m.direction}s`);
  if (m.clients.length > 0) parts.push(`clients ${m.clients.join(', ')}`);
  if (m.hosts.length > 0) parts.push(`hosts ${m.hosts.join(', ')}`);
  if (m.url !== null) parts.push(`url ${m.url}`);
  if (m.methods.length > 0) parts.push(`methods ${m.methods.join(', ')}`);
  if (m['content-types'].length > 0) parts.push(`types ${m['content-types'].join(', ')}`);
  if (m['min-size'] !== null) parts.push(`size >= ${formatBytes(m['min-size'])}`);
  if (m['max-size'] !== null) parts.push(`size <= ${formatBytes(m['max-size'])}`);
  return parts.length > 0 ? parts.join('; ') : 'everything';
}

// ------------------------------------------------------------------ show

function showPolicy(config: Readonly<Config>, sections: readonly Section[]): string {
  const out: string[] = [];
  for (const section of sections) {
    if (section === 'mail') {
      const policy = compileMailPolicy(config.mail);
      out.push(`mail filter (smtp${config.smtp.enabled ? '' : ', not enabled'}): groups in match order; a recipient falls into the first group whose senders match the sender and whose recipients match it`);
      policy.groups.forEach((g, i) => out.push(...describeGroup(config.mail, g, i + 1).map((l) => `  ${l}`)));
      out.push(`  ${senderNoticeRule(policy)}`);
    } else if (section === 'http-proxy' || section === 'ftp-proxy') {
      const rules = config[section]['doc-acl'];
      out.push(`${section}${config[section].enabled ? '' : ' (not enabled)'} doc-acl: the first rule whose every condition holds; none: scan with scan.engines, only free passes`);
      rules.forEach((r, i) => out.push(`  ${i + 1}. ${r.name ?? `rule-${i + 1}`}: ${describeMatch(r.match)}`, `     -> ${describeDocRule(r)}`));
    } else {
      out.push(...describeMailProxy(section, config[section].enabled, config[section]));
    }
    out.push('');
  }
  return out.join('\n');
}

function describeMailProxy(section: 'pop3-proxy' | 'imap-proxy', enabled: boolean, p: MailProxyPolicyConfig): string[] {
  const out = [`${section}${enabled ? '' : ' (not enabled)'}: antivirus ${p.antivirus === null ? 'scan.engines' : p.antivirus.join(', ')}; on engine error: ${p['on-error']}`];
  const list = (title: string, rules: readonly { name: string | null }[], line: (r: never) => string, none: string) => {
    out.push(`  ${title} (first match wins; none matching: ${none})`);
    rules.forEach((r, i) => out.push(`    ${i + 1}. ${r.name ?? '(unnamed)'}: ${line(r as never)}`));
  };
  list(
    'command-acl',
    p['command-acl'],
    (r: MailProxyPolicyConfig['command-acl'][number]) =>
      `${[r.match.clients.length ? `clients ${r.match.clients.join(', ')}` : '', r.match.users.length ? `users ${r.match.users.join(', ')}` : '', r.match.commands.length ? `commands ${r.match.commands.join(', ')}` : ''].filter(Boolean).join('; ') || 'everything'} -> ${r.action}${r['use-antivirus'] ? ', scanned' : ', not scanned'}`,
    'accept, scanned',
  );
  list(
    'mail-acl',
    p['mail-acl'],
    (r: MailProxyPolicyConfig['mail-acl'][number]) =>
      `${[r.match.senders.length ? `senders ${r.match.senders.join(' | ')}` : '', r.match.recipients.length ? `recipients ${r.match.recipients.join(' | ')}` : '', r.match['min-size'] !== null ? `size >= ${formatBytes(r.match['min-size'])}` : '', r.match['max-size'] !== null ? `size <= ${formatBytes(r.match['max-size'])}` : ''].filter(Boolean).join('; ') || 'everything'} -> ${r.action}`,
    'accept',
  );
  list(
    'doc-acl',
    p['doc-acl'],
    (r: MailProxyDocRule) =>
      `${[r.match.statuses.length ? `statuses ${r.match.statuses.join(', ')}` : '', r.match['content-types'].length ? `types ${r.match['content-types'].join(', ')}` : '', r.match.filenames.length ? `file names ${r.match.filenames.join(', ')}` : '', r.match.users.length ? `users ${r.match.users.join(', ')}` : ''].filter(Boolean).join('; ') || 'everything'} -> ${r.action}`,
    'replace-av-unknown',
  );
  return out;
}
