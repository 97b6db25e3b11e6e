import { z } from 'zod';
import { defaultDocAcl, docAclRuleSchema } from './proxy-schema.js';
import { listenerTlsSchema, upstreamTlsKeys } from './tls-schema.js';
import { timerDuration, positiveInt, size, listenAddress } from './units-schema.js';

/**
 * The `ftp-proxy` section: the scanning FTP proxy (docs/ftp-proxy.md). Same conventions as the
 * rest of the schema (kebab-case, strict objects, units on every size and duration); its defaults
 * are the ones in config/avgate.example.yaml and docs/config.md.
 */

/** `host:port`, `[v6]:port`. */
const HOST_PORT = /^(?:\[[0-9A-Fa-f:.]+\]|[^:\s[\]/@]+):\d{1,5}$/;

/** `0` (any free port) or `MIN-MAX`. */
const dataPorts = z.union([z.literal(0), z.string()]).transform((v, ctx): { min: number; max: number } | null => {
  if (v === 0 || v === '0') return null;
  const m = /^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$/.exec(v);
  const min = Number(m?.[1]);
  const max = Number(m?.[2]);
  if (!m || min < 1024 || max > 65535 || min > max) {
    ctx.addIssue({ code: 'custom', message: `invalid port range "${v}" (0 or MIN-MAX within 1024-65535)` });
    return z.NEVER;
  }
  return { min, max };
});

const timeoutsSchema = z.strictObject({
  /** Connecting to the FTP server (control and data connections). */
  connect: timerDuration.prefault('30s'),
  /** A client silent this long between commands gets 421 and is closed. */
  'control-idle': timerDuration.prefault('5m'),
  /** The server's reply to a command (the final reply of a transfer: after its data ended). */
  reply: timerDuration.prefault('2m'),
  /** The client must open (passive) or accept (active) the data connection within this. */
  'data-connect': timerDuration.prefault('30s'),
  /**
   * The peer that sends a transfer's data (the server for downloads and listings, the client for
   * uploads) must deliver bytes within this while the proxy waits for them; else 426.
   */
  'data-idle': timerDuration.prefault('5m'),
  /**
   * The peer that receives (the client for downloads, listings and replies on the control
   * connection, the server for uploads) must take bytes (write progress) within this while the
   * proxy has bytes for it; else the connection is reset. 0 = off.
   */
  send: timerDuration.prefault('60s'),
});

export const ftpProxySchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** host:port; loopback by default. Port 0 = any free port (logged as ftpProxyPort in "avgate ready"). */
  listen: listenAddress.default('127.0.0.1:2121'),
  /** host:port of the one FTP server behind the proxy; null = the client names it: USER user@host[:port]. */
  upstream: z.string().regex(HOST_PORT, 'expected host:port').nullable().default(null),
  /** Servers a client may name with USER user@host[:port]: `host:port` globs (* and ?). */
  'allowed-upstreams': z.array(z.string().min(1)).default(['*:21']),
  /** FTPS to the server(s): upstream-tls (explicit AUTH TLS then PBSZ 0 and PROT P, or implicit), tls-verify, tls-ca; data connections follow. */
  ...upstreamTlsKeys,
  /** Local ports of the passive data listeners the proxy opens for clients: 0 = any free port, or MIN-MAX. */
  'data-ports': dataPorts.prefault(0),
  timeouts: timeoutsSchema.prefault({}),
  'max-connections': positiveInt.default(100),
  /**
   * Explicit FTPS towards the clients (AUTH TLS, PBSZ, PROT; RFC 4217): offered with a certificate
   * and key. `required`: no USER before AUTH TLS, and no transfer without PROT P.
   */
  tls: listenerTlsSchema.prefault({}),
  /** Command and reply lines above this are refused (500) or end the session (server side). */
  'max-line-length': size.prefault('4KiB'),
  /**
   * Bytes per second an upload must keep up: the proxy's waits for its data may add up to
   * timeouts.data-idle plus 1 s for every this many bytes received; else 426. 0 = only data-idle.
   */
  'upload-min-rate': size.prefault('500'),
  /** Lines of one multi-line server reply at most. */
  'max-reply-lines': positiveInt.default(10000),
  /** One download or upload above this is aborted (552); scanning past scan.max-checked-size is a skipped verdict. */
  'max-object-size': size.prefault('1GiB'),
  /** Bytes of a transfer kept in memory before spooling to spool-dir. */
  'spool-memory': size.prefault('1MiB'),
  /** Where spooled transfers go; relative to state-dir. */
  'spool-dir': z.string().default('spool'),
  /**
   * `APPE`, and `STOR` after a `REST` other than 0, send only a part of the file the server ends up
   * with, and only that part could be scanned: an infected file split over two uploads would pass.
   * `refuse` (default): such uploads get 550 when the doc-ACL scans them; `scan-part`: the part is
   * scanned and sent like a whole file.
   */
  'partial-uploads': z.enum(['refuse', 'scan-part']).default('refuse'),
  /** Verdict statuses whose blocked files (downloads and uploads) are kept in the quarantine (e.g. [found]); [] = none. */
  quarantine: z.array(z.enum(['free', 'found', 'skipped', 'unknown', 'error'])).default([]),
  /** One line per transfer (time client user@host command path status verdict bytes ms), relative to state-dir; null = the main log. */
  'access-log': z.string().nullable().default(null),
  /** Document ACL: first matching rule wins (methods RETR/STOR/APPE/STOU; url = ftp://host/path); no rule = scan with the defaults. */
  'doc-acl': z.array(docAclRuleSchema).default(defaultDocAcl),
});

export type FtpProxyConfig = z.output<typeof ftpProxySchema>;
