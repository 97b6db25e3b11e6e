import { z } from 'zod';
import { parseSize } from '../core/units.js';
import { parseHostPattern } from './smtp-schema.js';
import { timerDuration, positiveInt, size, listenAddress } from './units-schema.js';

/**
 * Document ACLs (after Kernun's doc-acl) and trickling, shared by the HTTP proxy (`http-proxy`)
 * and the FTP proxy: ordered rules, first match wins; each says which engines scan the object,
 * which verdicts pass, and how the unscanned body may trickle to the client meanwhile
 * (docs/http-proxy.md). Same conventions as the rest of the schema: kebab-case, strict objects,
 * units on every size and duration.
 */

const STATUS = z.enum(['free', 'found', 'skipped', 'unknown', 'error']);

/** A trickle limit: a size ("8MiB") or a share of the body ("90%"). */
export type TrickleLimit = { kind: 'bytes'; value: number } | { kind: 'percent'; value: number };

const trickleLimit = z.union([z.string(), z.number()]).transform((v, ctx): TrickleLimit => {
  if (typeof v === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(v);
    if (m) {
      const pct = Number(m[1]);
      if (pct > 100) {
        ctx.addIssue({ code: 'custom', message: `invalid limit "${v}" (a percentage is at most 100%)` });
        return z.NEVER;
      }
      return { kind: 'percent', value: pct };
    }
  }
  const n = parseSize(v);
  if (n === null) {
    ctx.addIssue({ code: 'custom', message: `invalid limit "${v}" (a size like 8MiB or a share like 90%)` });
    return z.NEVER;
  }
  return { kind: 'bytes', value: n };
});

/**
 * Trickling (Kernun's interval/chunk/limit, HAVP's keep-back): once a scan has taken longer than
 * `interval`, up to `chunk` bytes of the unscanned body are sent every `interval`, never more than
 * `limit` in all and never the last `keep-back` bytes. A verdict that blocks after bytes were sent
 * aborts the connection, so the client never holds the whole object.
 */
export const trickleSchema = z.strictObject({
  /** Time between two chunks (and before the first). */
  interval: timerDuration.prefault('10s'),
  /** Bytes sent per interval. */
  chunk: size.prefault('64KiB'),
  /** At most this much of the body is sent before the verdict: a size or a share ("90%"). */
  limit: trickleLimit.prefault('90%'),
  /** The last bytes of the body always wait for the verdict. */
  'keep-back': size.prefault('1MiB'),
});

export type TrickleConfig = z.output<typeof trickleSchema>;

/** Glob with `*` (any run of characters) and `?` (one character), matched whole, case-insensitive. */
export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\*?]/g, (c) => (c === '*' ? '.*' : c === '?' ? '.' : `\\${c}`));
  return new RegExp(`^${body}$`, 'is');
}

/** `/REGEX/` (flags i allowed after the slash) or a glob; null when the regex does not compile. */
export function urlPatternToRegExp(pattern: string): RegExp | null {
  const m = /^\/(.*)\/(i?)$/s.exec(pattern);
  if (!m) return globToRegExp(pattern);
  try {
    return new RegExp(m[1] as string, m[2] === 'i' ? 'i' : '');
  } catch {
    return null;
  }
}

const cidr = z.string().refine((s) => parseHostPattern(s) !== null, {
  message: 'expected an IP address or CIDR block (127.0.0.1, 10.0.0.0/8, ::1)',
});

const docAclMatchSchema = z
  .strictObject({
    /** Client addresses or CIDR blocks; [] = any client. */
    clients: z.array(cidr).default([]),
    /** Server host name globs (`*.example.com`); [] = any host. */
    hosts: z.array(z.string().min(1)).default([]),
    /** URL as a glob (`http://*.exe`) or a regular expression between slashes (`/\.exe$/i`); null = any. */
    url: z
      .string()
      .min(1)
      .refine((s) => urlPatternToRegExp(s) !== null, { message: 'invalid regular expression' })
      .nullable()
      .default(null),
    /** Request methods (GET, POST; FTP: RETR, STOR); [] = any. */
    methods: z.array(z.string().min(1).transform((s) => s.toUpperCase())).default([]),
    /** Content-Type globs (`application/*`), without parameters; [] = any. */
    'content-types': z.array(z.string().min(1)).default([]),
    /** Only bodies of at least this size (when the size is known); null = no lower bound. */
    'min-size': size.nullable().default(null),
    /** Only bodies of at most this size (when the size is known); null = no upper bound. */
    'max-size': size.nullable().default(null),
    /** download = responses (FTP RETR), upload = request bodies (POST/PUT, FTP STOR), both. */
    direction: z.enum(['download', 'upload', 'both']).default('both'),
  })
  .refine((m) => m['min-size'] === null || m['max-size'] === null || m['min-size'] <= m['max-size'], {
    message: 'min-size is larger than max-size',
  });

export const docAclRuleSchema = z.strictObject({
  /** Shown in logs and the access log; null = the rule's position (rule-1, rule-2 ...). */
  name: z.string().min(1).nullable().default(null),
  match: docAclMatchSchema.prefault({}),
  /** scan = scan and decide by accept-status; accept = pass unscanned; deny = refuse (403). */
  action: z.enum(['scan', 'accept', 'deny']).default('scan'),
  /** Engine ids; null = scan.engines; `none` = not scanned (like action accept, but logged as skipped). */
  antivirus: z.union([z.literal('none'), z.array(z.string()).min(1)]).nullable().default(null),
  /** Verdicts that let the object through (Kernun's accept-antivirus-status). */
  'accept-status': z.array(STATUS).min(1).default(['free']),
  /** Trickling while the body is scanned; null = hold the whole body until the verdict. Downloads only. */
  trickle: trickleSchema.nullable().prefault({}),
});

export type DocAclRule = z.output<typeof docAclRuleSchema>;
export type DocAclMatch = z.output<typeof docAclMatchSchema>;

/** The default list: one rule scanning everything, both ways, trickling with the defaults. */
export const defaultDocAcl = (): DocAclRule[] => [docAclRuleSchema.parse({ name: 'default' })];

const timeoutsSchema = z.strictObject({
  /** The request head must arrive within this (slowloris). */
  header: timerDuration.prefault('30s'),
  /** A keep-alive client connection without a request for this long is closed. */
  idle: timerDuration.prefault('60s'),
  /** Connecting to the origin (or parent) and waiting for its response head. */
  upstream: timerDuration.prefault('60s'),
  /** Body bytes (both ways) must keep coming within this. */
  body: timerDuration.prefault('120s'),
  /**
   * A response with bytes the client has not taken must make write progress within this; else the
   * connection is reset, the upstream request aborted and the spool dropped. A slow reader that
   * keeps reading is not cut; the scan's own time does not count. 0 = no bound.
   */
  send: timerDuration.prefault('60s'),
});

/** `host:port` of a parent proxy. */
const PARENT = /^(?:\[[0-9A-Fa-f:.]+\]|[^:\s[\]/]+):\d{1,5}$/;

export const httpProxySchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** host:port; loopback by default. Port 0 = any free port (logged as httpProxyPort in "avgate ready"). */
  listen: listenAddress.default('127.0.0.1:3128'),
  /** host:port of a parent HTTP proxy every request goes through; null = straight to the origin. */
  'parent-proxy': z.string().regex(PARENT, 'expected host:port').nullable().default(null),
  /**
   * Basic credentials for the parent proxy (Squid's cache_peer login=, HAVP's PARENTUSER): sent
   * as Proxy-Authorization with every request and CONNECT to it. Both or neither; the clients'
   * own Proxy-Authorization never leaves the proxy.
   */
  'parent-proxy-user': z.string().regex(/^[^:\p{Cc}]+$/u, 'a user name without ":" or control characters').nullable().default(null),
  'parent-proxy-password': z.string().regex(/^\P{Cc}*$/u, 'no control characters').nullable().default(null),
  'max-connections': positiveInt.default(500),
  /** Clients that may use the proxy (addresses or CIDR blocks); others get 403. Widen it with listen. */
  'allowed-clients': z.array(cidr).default(['127.0.0.0/8', '::1']),
  /** Ports CONNECT may reach (tunnels are not scanned); [] = any port. */
  'connect-ports': z.array(z.number().int().min(1).max(65535)).default([443]),
  /** Request and response heads above this are refused (431 / 502). */
  'max-header-size': size.prefault('64KiB'),
  timeouts: timeoutsSchema.prefault({}),
  /** Body bytes kept in memory per transfer before spooling to spool-dir. */
  'spool-memory': size.prefault('1MiB'),
  /** Where spooled bodies go; relative to state-dir. */
  'spool-dir': z.string().default('spool'),
  /**
   * Scan the decoded body of gzip/deflate/br responses (the client still gets the encoded bytes).
   * Requests ask only for codings that get scanned unpacked (these, or gzip alone when false).
   */
  'decode-content-encoding': z.boolean().default(true),
  /** Decoded bytes per encoded byte at most (zip bombs); past it the object is blocked as skipped. */
  'max-decompression-ratio': positiveInt.default(100),
  /**
   * GET with a Range header: `whole` = Range and If-Range are not forwarded, the whole object is
   * fetched and scanned and the proxy answers the range itself (206/416) from it; `pass` = Range
   * is forwarded and only the part the origin sends is scanned (a resumed download then escapes
   * the scan of the whole).
   */
  'range-requests': z.enum(['whole', 'pass']).default('whole'),
  /** Name in the Via header (`1.1 NAME`). */
  via: z.string().min(1).regex(/^[!-~]+$/, 'a token without spaces').default('avgate'),
  /**
   * X-Forwarded-For towards the origin (Squid's forwarded_for): `keep` passes the client's own on
   * unchanged and adds nothing (the client's address stays inside), `add` appends the client's
   * address (a proxy chain's next hop logs the user's machine), `delete` removes it.
   */
  'forwarded-for': z.enum(['keep', 'add', 'delete']).default('keep'),
  /** HTML template of the block page (same {{NAMES}} as the ICAP page); null = built in. */
  'block-page': z.string().nullable().default(null),
  /** Verdict statuses whose blocked objects are kept in the quarantine (e.g. [found]); [] = none. */
  quarantine: z.array(STATUS).default([]),
  /** One line per request (time client method url status verdict bytes ms), relative to state-dir; null = the main log. */
  'access-log': z.string().nullable().default(null),
  /** Document ACL: first matching rule wins; no rule matching = scan with the defaults. */
  'doc-acl': z.array(docAclRuleSchema).default(defaultDocAcl),
})
  .refine((c) => (c['parent-proxy-user'] === null) === (c['parent-proxy-password'] === null), {
    message: 'parent-proxy-user and parent-proxy-password go together',
    path: ['parent-proxy-user'],
  })
  .refine((c) => c['parent-proxy-user'] === null || c['parent-proxy'] !== null, {
    message: 'parent-proxy-user needs parent-proxy',
    path: ['parent-proxy-user'],
  });

export type HttpProxyConfig = z.output<typeof httpProxySchema>;
