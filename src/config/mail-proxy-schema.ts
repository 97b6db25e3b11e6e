import { z } from 'zod';
import { parseHostPattern } from './smtp-schema.js';
import { listenerTlsSchema, upstreamTlsKeys } from './tls-schema.js';
import { timerDuration, positiveInt, size, listenAddress } from './units-schema.js';
import { MAIL_STATUSES } from '../policy/mail/status.js';

/**
 * The mail proxies (POP3 `pop3-proxy`, IMAP `imap-proxy`): mail is scanned as the client reads it
 * and infected or unscannable documents are replaced by a notice (docs/mail-proxies.md). The ACLs
 * follow Kernun's pop3-proxy/imap4-proxy: command-acl (per command: allowed, scanned), mail-acl
 * (per message: accepted or replaced whole), doc-acl (per document, first match wins:
 * replace-infected, replace-av-unknown, docok). `mailProxyPolicySchema` is shared by both
 * sections; same conventions as the rest of the schema (kebab-case, strict, units).
 */

/** A JavaScript regular expression (case-insensitive when used). */
const regex = z.string().superRefine((s, ctx) => {
  try {
    new RegExp(s, 'i');
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `invalid regular expression: ${(err as Error).message}` });
  }
});

const cidr = z.string().refine((s) => parseHostPattern(s) !== null, {
  message: 'expected an IP address or CIDR block (127.0.0.1, 10.0.0.0/8, ::1)',
});

/** Glob with `*` and `?`, matched whole and case-insensitive (file names, media types, users). */
const glob = z.string().min(1);

const RULE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const ruleName = z.string().regex(RULE_NAME, 'rule names are 1-64 letters, digits, _ . -, starting with a letter or digit');

/** A command (POP3 RETR, IMAP FETCH ...): upper-case letters and digits. */
const commandName = z.string().regex(/^[A-Za-z][A-Za-z0-9]{0,19}$/, 'a command name like RETR or FETCH');

const commandAclRuleSchema = z.strictObject({
  name: ruleName,
  match: z
    .strictObject({
      /** Client addresses or CIDR blocks; [] = any. */
      clients: z.array(cidr).default([]),
      /** Login names (globs, the part before @host); [] = anyone, including before login. */
      users: z.array(glob).default([]),
      /** Commands (case-insensitive); [] = any. */
      commands: z.array(commandName).default([]),
    })
    .prefault({}),
  /** accept: relayed; deny: answered with an error (-ERR, NO) and not relayed. */
  action: z.enum(['accept', 'deny']).default('accept'),
  /** false: what the command reads is relayed unscanned (Kernun's use-antivirus). */
  'use-antivirus': z.boolean().default(true),
});

const mailAclRuleSchema = z.strictObject({
  name: ruleName,
  match: z
    .strictObject({
      /** From: addresses (regular expressions, case-insensitive); [] = any. */
      senders: z.array(regex).default([]),
      /** To:/Cc: addresses; any one matching is enough; [] = any. */
      recipients: z.array(regex).default([]),
      /** Message size in bytes (as read from the server). */
      'min-size': size.nullable().default(null),
      'max-size': size.nullable().default(null),
    })
    .prefault({}),
  /** accept: the documents go to the doc-acl; reject: the whole body is replaced by the notice. */
  action: z.enum(['accept', 'reject']).default('accept'),
});

export const DOC_ACL_ACTIONS = ['replace-infected', 'replace-av-unknown', 'docok'] as const;
export type DocAclAction = (typeof DOC_ACL_ACTIONS)[number];

const docAclRuleSchema = z.strictObject({
  name: ruleName,
  match: z
    .strictObject({
      /** Document statuses (src/policy/mail statuses: clean, infected, unknown ...); [] = any. */
      statuses: z.array(z.enum(MAIL_STATUSES)).default([]),
      /** Media types (globs: application/*); [] = any. */
      'content-types': z.array(glob).default([]),
      /** File names (globs: *.exe); [] = any, including documents without a name. */
      filenames: z.array(glob).default([]),
      /** Login names (globs); [] = any. */
      users: z.array(glob).default([]),
    })
    .prefault({}),
  /**
   * replace-infected: infected and suspicious documents are replaced, others kept;
   * replace-av-unknown: every document that is not clean is replaced (infected, suspicious,
   * protected, corrupted, unknown, skipped; engine errors follow on-error); docok: kept as it is.
   */
  action: z.enum(DOC_ACL_ACTIONS),
});

export type CommandAclRule = z.output<typeof commandAclRuleSchema>;
export type MailAclRule = z.output<typeof mailAclRuleSchema>;
export type DocAclRule = z.output<typeof docAclRuleSchema>;

export const mailProxyPolicySchema = z.strictObject({
  /** Engine ids asked about every document; null = scan.engines. */
  antivirus: z.array(z.string()).min(1).nullable().default(null),
  /** First matching rule wins; no rule matching = accept with antivirus. */
  'command-acl': z.array(commandAclRuleSchema).default(() => [commandAclRuleSchema.parse({ name: 'default' })]),
  /** First matching rule wins; no rule matching (the default, []) = accept. */
  'mail-acl': z.array(mailAclRuleSchema).default([]),
  /** First matching rule wins; no rule matching = replace-av-unknown (fail closed). */
  'doc-acl': z.array(docAclRuleSchema).default(() => [docAclRuleSchema.parse({ name: 'default', action: 'replace-av-unknown' })]),
  /**
   * Text file of the notice that replaces a document (UTF-8; macros {{VIRUS_NAMES}}, {{FILENAME}},
   * {{STATUS}}, {{REASON}}, {{CONTENT_TYPE}}, {{PART}}); null = built in. A missing file stops startup.
   */
  replacement: z.string().min(1).nullable().default(null),
  /** Engine error on a document: replace it with the notice (fail closed), or pass it unscanned. */
  'on-error': z.enum(['replace', 'pass']).default('replace'),
  /** Message bytes kept in memory before spooling to spool-dir (a 0600 temp file). */
  'spool-memory': size.prefault('1MiB'),
  /** Decoded bytes of one document kept in memory before spooling. */
  'document-memory': size.prefault('1MiB'),
  /**
   * Messages up to this size are first scanned whole, in one engine call (clamd decodes MIME
   * itself); only when that is not clean, or the walker finds a MIME problem, are their documents
   * scanned one by one (to know which to replace). 0 (the default) = off: the clean answer would
   * trust clamd's MIME parser, and a message it reads differently from the client passes unscanned
   * (mail.prescan-max-size). A message read again is answered without a walk anyway (replace.ts).
   */
  'prescan-max-size': size.prefault('0'),
  /** Where spooled messages go; relative to state-dir. */
  'spool-dir': z.string().default('spool'),
  /**
   * Messages larger than this are not scanned (nor kept whole): the client gets a notice in their
   * place unless the command-acl turned antivirus off. The MIME limits are mail.max-depth ...
   */
  'max-message-size': size.prefault('100MiB'),
  /**
   * Whole messages (RETR, FETCH BODY[] / RFC822, APPEND) with a document of one of these statuses
   * replaced (or refused) are kept in the quarantine first, e.g. [infected]; [] = none. A message
   * fetched again adds no item while an unreleased one of the same bytes and login is there.
   */
  quarantine: z.array(z.enum(MAIL_STATUSES)).default([]),
});

export type MailProxyPolicyConfig = z.output<typeof mailProxyPolicySchema>;

const hostPort = z.string().regex(/^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected host:port');

const pop3TimeoutsSchema = z.strictObject({
  /** Connecting to the upstream server. */
  connect: timerDuration.prefault('30s'),
  /** A client silent this long between commands is closed (RFC 1939: at least 10 minutes). */
  idle: timerDuration.prefault('10m'),
  /** Each answer of the upstream server (and every piece of a multi-line answer) must come within this. */
  upstream: timerDuration.prefault('2m'),
  /** An answer with bytes the client has not taken (a big RETR) must make write progress within this; else the connection is reset. 0 = no bound. */
  send: timerDuration.prefault('60s'),
});

export const pop3ProxySchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** host:port; loopback by default; port 0 = any free port. */
  listen: listenAddress.default('127.0.0.1:1110'),
  /** host:port of the POP3 server; null = chosen by the client with USER user@host[:port]. */
  upstream: hostPort.nullable().default(null),
  /**
   * Servers a client may choose with USER user@host[:port] (globs on host:port, e.g.
   * `mail.example.com:110`, `*.example.com:*`); [] = USER user@host is refused. With a fixed
   * upstream, user@host is passed on as the login name.
   */
  'allowed-upstreams': z.array(glob).default([]),
  /** Port of a user@host upstream that names none; null = 110, or 995 with upstream-tls: tls. */
  'upstream-port': z.number().int().min(1).max(65535).nullable().default(null),
  /** TLS to the POP3 server: upstream-tls (STLS, RFC 2595, or pop3s), tls-verify, tls-ca. */
  ...upstreamTlsKeys,
  'max-connections': positiveInt.default(100),
  /** Longest command line from the client and status line from the server (bytes, with CRLF); longer → -ERR / close. */
  'max-line-length': size.prefault('8KiB'),
  timeouts: pop3TimeoutsSchema.prefault({}),
  /** STLS (RFC 2595) for the clients: offered with a certificate and key; `required`: nothing but CAPA, STLS, NOOP and QUIT before it. */
  tls: listenerTlsSchema.prefault({}),
  /**
   * p3scan's keep-alive: when a scan takes longer than `after`, `+OK` and the message's first
   * header lines (never body bytes) are sent, one line every `interval`, so the client does not give
   * up. The verdict is reached before any document byte is sent. 0 = off.
   */
  'keep-alive': z
    .strictObject({
      after: timerDuration.prefault('10s'),
      interval: timerDuration.prefault('10s'),
      /** Header lines sent early at most. */
      'max-lines': z.number().int().min(0).default(10),
    })
    .prefault({}),
  /**
   * A rewritten message shorter than the server's LIST size is padded (blank lines at the end) to
   * that size, so clients that check it are content; a longer one cannot be trimmed.
   */
  'pad-to-listed-size': z.boolean().default(true),
  ...mailProxyPolicySchema.shape,
});

export type Pop3ProxyConfig = z.output<typeof pop3ProxySchema>;
