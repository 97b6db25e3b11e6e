import { BlockList, isIP } from 'node:net';
import { z } from 'zod';
import { listenerTlsSchema } from './tls-schema.js';
import { timerDuration, positiveInt, size, listenAddress } from './units-schema.js';

/**
 * The `smtp` section: the SMTP/LMTP content filter (docs/mail.md). Same conventions as the rest of
 * the schema (kebab-case, strict objects, units on every size and duration); its defaults are the
 * ones in config/avgate.example.yaml and docs/config.md.
 */

/** `127.0.0.1`, `::1`, `10.0.0.0/8`, `fd00::/8`. */
export function parseHostPattern(text: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | null {
  const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(text.trim());
  if (!m) return null;
  const address = m[1] as string;
  const v = isIP(address);
  if (v === 0) return null;
  const max = v === 4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) return null;
  return { address, prefix, family: v === 4 ? 'ipv4' : 'ipv6' };
}

/**
 * A matcher for a list of host patterns (IPv4-mapped IPv6 client addresses match IPv4 patterns).
 * Answers are remembered per address (BlockList.check builds a SocketAddress each time: ~2 % of
 * the HTTP proxy's CPU per request); the memo is emptied at MATCH_MEMO_MAX addresses.
 */
export function hostMatcher(patterns: readonly string[]): (address: string) => boolean {
  const list = new BlockList();
  for (const p of patterns) {
    const h = parseHostPattern(p);
    if (h) list.addSubnet(h.address, h.prefix, h.family);
  }
  const memo = new Map<string, boolean>();
  return (address) => {
    const known = memo.get(address);
    if (known !== undefined) return known;
    const a = address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
    const v = isIP(a);
    const answer = v !== 0 && list.check(a, v === 4 ? 'ipv4' : 'ipv6');
    if (memo.size >= MATCH_MEMO_MAX) memo.clear();
    memo.set(address, answer);
    return answer;
  };
}

/** Client addresses whose answer a host matcher remembers (a few hundred KB at most). */
const MATCH_MEMO_MAX = 4096;

const hostList = z.array(
  z.string().refine((s) => parseHostPattern(s) !== null, { message: 'expected an IP address or CIDR block (127.0.0.1, 10.0.0.0/8, ::1)' }),
);

/** `smtp:HOST:PORT`, `smtp:[V6]:PORT`, `lmtp:HOST:PORT`, `lmtp:unix:/PATH`, `smtp:unix:/PATH`, `cmd:/PATH ARGS`. */
export const NEXT_HOP_TARGET = /^(?:(?:smtp|lmtp):(?:unix:\/.+|\[[0-9A-Fa-f:.]+\]:\d{1,5}|[^:\s[\]]+:\d{1,5})|cmd:\/\S.*)$/;

const nextHopTimeoutsSchema = z.strictObject({
  connect: timerDuration.prefault('30s'),
  /** The greeting and the EHLO/LHLO (and XCLIENT) replies. */
  greeting: timerDuration.prefault('2m'),
  /** Replies to RSET, XFORWARD, MAIL, RCPT and DATA. */
  command: timerDuration.prefault('2m'),
  /** Each piece of the body must be taken by the next hop within this. */
  'data-block': timerDuration.prefault('3m'),
  /** The reply (LMTP: every reply) after the final dot. */
  'data-done': timerDuration.prefault('5m'),
});

const nextHopSchema = z.strictObject({
  target: z.string().regex(NEXT_HOP_TARGET, 'expected smtp:HOST:PORT, lmtp:HOST:PORT, lmtp:unix:/PATH or cmd:/PATH ARGS').default('smtp:127.0.0.1:10026'),
  /** Send XCLIENT (instead of XFORWARD) when the next hop offers it. */
  xclient: z.boolean().default(false),
  /** Connections to the next hop at most (busy and idle together). */
  'pool-size': positiveInt.default(20),
  /** An idle pooled connection is closed (QUIT) after this; 0 = no reuse. */
  'idle-timeout': timerDuration.prefault('10s'),
  /** Transactions over one connection before it is replaced. */
  'max-reuse': positiveInt.default(1000),
  /**
   * STARTTLS to the next hop (smtp:/lmtp: over TCP): none; may = when the next hop offers it;
   * encrypt = always (a next hop without it, or a failed handshake, is a 4xx for the client).
   */
  tls: z.enum(['none', 'may', 'encrypt']).default('none'),
  /** Check the next hop's certificate (chain to tls-ca or the system's CAs, and the host name); off = encrypt without checking, as Postfix's may/encrypt. */
  'tls-verify': z.boolean().default(false),
  /** PEM file of the CA(s) trusted for the next hop, read once at start; null = the system's. */
  'tls-ca': z.string().nullable().default(null),
  timeouts: nextHopTimeoutsSchema.prefault({}),
});

const timeoutsSchema = z.strictObject({
  /** A client silent this long between commands or inside DATA gets 421 and is closed. */
  idle: timerDuration.prefault('5m'),
  /**
   * The handler (scan and delivery) of one message; past it the client gets 451 4.4.7 and the
   * handler's signal is aborted. Keep it below the client's own wait for the DATA reply
   * (Postfix: smtp_data_done_timeout, 600s).
   */
  handler: timerDuration.prefault('8m'),
});

export const smtpSchema = z.strictObject({
  enabled: z.boolean().default(true),
  protocol: z.enum(['smtp', 'lmtp']).default('smtp'),
  /** host:port; loopback by default. */
  listen: listenAddress.default('127.0.0.1:10025'),
  /** Name in the greeting and in EHLO/LHLO to the next hop; null = the machine's host name. */
  hostname: z.string().nullable().default(null),
  banner: z.string().default('avgate content filter'),
  'max-connections': positiveInt.default(100),
  'max-message-size': size.prefault('100MiB'),
  'max-recipients': positiveInt.default(1000),
  /** Message bytes kept in memory per transaction before spooling to spool-dir. */
  'spool-memory': size.prefault('1MiB'),
  'spool-dir': z.string().default('spool'),
  /** Clients allowed to send XFORWARD / XCLIENT (addresses or CIDR blocks). */
  'xforward-hosts': hostList.default(['127.0.0.0/8', '::1']),
  'xclient-hosts': hostList.default([]),
  timeouts: timeoutsSchema.prefault({}),
  /** STARTTLS for the in-line proxy in front of an MX (an MX must not require it, RFC 3207). */
  tls: listenerTlsSchema.prefault({}),
  'next-hop': nextHopSchema.prefault({}),
});

export type SmtpConfig = z.output<typeof smtpSchema>;
export type NextHopConfig = z.output<typeof nextHopSchema>;
