import { z } from 'zod';
import { mailProxyPolicySchema } from './mail-proxy-schema.js';
import { listenerTlsSchema, upstreamTlsKeys } from './tls-schema.js';
import { timerDuration, positiveInt, size, listenAddress } from './units-schema.js';

/**
 * The `imap-proxy` section: the IMAP4 proxy (docs/mail-proxies.md). Messages and body parts are
 * scanned as the client fetches them, uploads (APPEND) before they reach the server. The policy keys
 * (antivirus, command-acl, mail-acl, doc-acl, replacement, on-error, spool-*, max-message-size) are
 * the ones shared with `pop3-proxy`. Same conventions as the rest of the schema.
 */

const hostPort = z.string().regex(/^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected host:port');

const imapTimeoutsSchema = z.strictObject({
  /** Connecting to the upstream server, including its greeting and a STARTTLS/TLS handshake. */
  connect: timerDuration.prefault('30s'),
  /** A client silent this long is closed (RFC 3501 §5.4: an autologout timer is at least 30 minutes; IDLE clients re-issue within 29). */
  idle: timerDuration.prefault('30m'),
  /** The rest of a started command line or literal must come within this (slowloris); likewise the rest of a started server response. */
  read: timerDuration.prefault('2m'),
  /** Responses with bytes the client has not taken (a big FETCH) must make write progress within this; else the connection is reset. 0 = no bound. */
  send: timerDuration.prefault('60s'),
});

export const imapProxySchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** host:port; loopback by default; port 0 = any free port. */
  listen: listenAddress.default('127.0.0.1:1143'),
  /** host:port of the IMAP server. */
  upstream: hostPort.default('127.0.0.1:143'),
  /** TLS to the IMAP server: upstream-tls (STARTTLS before the client's first command, or imaps), tls-verify, tls-ca. */
  ...upstreamTlsKeys,
  'max-connections': positiveInt.default(100),
  /** Longest text segment of a command or response line (bytes, without CRLF); longer: BAD (client) or BYE (server). */
  'max-line-length': size.prefault('64KiB'),
  /** Largest literal a client may APPEND; larger: NO [TOOBIG] before any byte is sent (a LITERAL+ one is read and dropped). */
  'max-literal-size': size.prefault('50MiB'),
  timeouts: imapTimeoutsSchema.prefault({}),
  /**
   * STARTTLS (RFC 3501 §6.2.1) for the clients: offered with a certificate and key until the client
   * logs in; `required`: LOGINDISABLED and no LOGIN or AUTHENTICATE before it.
   */
  tls: listenerTlsSchema.prefault({}),
  ...mailProxyPolicySchema.shape,
});

export type ImapProxyConfig = z.output<typeof imapProxySchema>;
