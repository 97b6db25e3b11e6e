import { z } from 'zod';
import { duration, timerDuration, positiveInt, size, listenAddress } from './units-schema.js';
import { smtpSchema } from './smtp-schema.js';
import { mailSchema } from './mail-schema.js';
import { quarantineSchema } from './quarantine-schema.js';
import { statsSchema } from './stats-schema.js';
import { consoleSchema } from './console-schema.js';
import { pop3ProxySchema } from './mail-proxy-schema.js';
import { httpProxySchema } from './proxy-schema.js';
import { ftpProxySchema } from './ftp-schema.js';
import { imapProxySchema } from './imap-schema.js';
import { signaturesSchema } from './signatures-schema.js';
import { parseRedisUrl } from './redis-url.js';

/**
 * The configuration schema. Every key is kebab-case, every object is strict (an unknown key is an
 * error with its line, never silently ignored), every size and duration carries its unit, and the
 * defaults here are the ones documented in docs/config.md (a test checks that every key is there).
 */
const optionValue = z.union([z.string(), z.number(), z.boolean()]);

export const ENGINE_ID = /^[a-z][a-z0-9_-]{0,31}$/;

const engineSchema = z.strictObject({
  /** clamd-net | clamd-file | icap | plugin */
  type: z.enum(['clamd-net', 'clamd-file', 'icap', 'plugin']),
  /** For type plugin: path of an ES module whose default export is an EngineFactory. */
  module: z.string().optional(),
  /** Engine options, passed as {name, value} pairs; a list value gives the option several times. */
  options: z.record(z.string(), z.union([optionValue, z.array(optionValue)])).default({}),
  /**
   * false: no verdict of a scanner using this engine is cached (an ICAP server whose ISTag does
   * not change with its signatures, a plugin whose version says nothing).
   */
  cache: z.boolean().default(true),
});

const logSchema = z.strictObject({
  level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  file: z.string().nullable().default(null),
});

const clamdSchema = z.strictObject({
  /** Start and stop a project-local clamd with `avgate serve`. */
  managed: z.boolean().default(true),
  /** `test` = generated test database; `system` = ClamAV's /var/lib/clamav (freshclam); or a directory. */
  database: z.string().default('test'),
  /** null = no TCP socket: clamd answers on its unix socket only. */
  'tcp-port': z.number().int().min(0).max(65535).nullable().default(3310),
  'tcp-addr': z.string().default('127.0.0.1'),
  'stream-max-length': z.string().default('100M'),
  'max-threads': positiveInt.default(16),
  'start-timeout': timerDuration.prefault('120s'),
  /** clamd's TemporaryDirectory: `auto` (a private directory in /dev/shm when it is a tmpfs), `state`, or a directory. */
  'temp-dir': z.string().min(1).default('auto'),
  /**
   * clamd's AlertExceedsMax: a file whose unpacking passes clamd's MaxFileSize, MaxScanSize or
   * MaxRecursion is reported (Heuristics.Limits.Exceeded...) instead of clean — a compressed bomb
   * with the virus past the limit must not pass as clean.
   */
  'alert-exceeds-max': z.boolean().default(true),
});

const scanSchema = z.strictObject({
  /** Engine ids from `engines`, all asked about every object; verdicts are combined. */
  engines: z.array(z.string()).min(1).default(['clamav']),
  'max-checked-size': size.prefault('100MiB'),
  'scan-timeout': timerDuration.prefault('120s'),
  'max-concurrent-scans': positiveInt.default(16),
  'max-queue': z.number().int().min(0).default(256),
  'context-idle-timeout': timerDuration.prefault('20s'),
});

/** cache.redis: the shared level (docs/scale-out.md). */
const redisCacheSchema = z.strictObject({
  /** redis://[user:password@]host[:port][/db], rediss:// (TLS), unix:///path?db=N&user=…&password=… */
  url: z.string().superRefine((v, ctx) => {
    const r = parseRedisUrl(v);
    if ('error' in r) ctx.addIssue({ code: 'custom', message: `not a usable Redis URL: ${r.error}` });
  }),
  /** Put before every key, so several avgate clusters (or other users) can share one Redis. */
  'key-prefix': z.string().min(1).max(256).default('avgate:vc:'),
  /** A look-up not answered within this is a miss (the engines answer). */
  timeout: timerDuration.refine((ms) => ms >= 1, { message: 'at least 1ms' }).prefault('50ms'),
  /** Connect, TLS handshake, AUTH, SELECT and PING together. */
  'connect-timeout': timerDuration.refine((ms) => ms >= 1, { message: 'at least 1ms' }).prefault('1s'),
  /** This many look-ups in a row unanswered within timeout: Redis counts as down (skipped, reconnected). */
  'down-after-timeouts': positiveInt.default(5),
  /** First delay before reconnecting; doubled per failed attempt up to reconnect-max-delay. */
  'reconnect-delay': timerDuration.refine((ms) => ms >= 1, { message: 'at least 1ms' }).prefault('100ms'),
  'reconnect-max-delay': timerDuration.refine((ms) => ms >= 1, { message: 'at least 1ms' }).prefault('5s'),
  /** Writes sent and not yet answered; beyond, writes are dropped (counted). */
  'max-pending-writes': z.number().int().min(0).default(1000),
  /** Look-ups sent and not yet answered; beyond, look-ups skip Redis (counted). */
  'max-pending-lookups': positiveInt.default(1000),
  /** A value longer than this is invalid (a miss); Redis sends no more than this. */
  'max-value-size': size.refine((n) => n >= 64 && n <= 1024 * 1024, { message: 'from 64 bytes to 1MiB' }).prefault('16KiB'),
  /** PEM file of the CAs trusted for rediss://; null = the system's. */
  'tls-ca': z.string().nullable().default(null),
}).superRefine((r, ctx) => {
  if (r['tls-ca'] !== null && !r.url.trim().startsWith('rediss:')) {
    ctx.addIssue({ code: 'custom', path: ['tls-ca'], message: 'only used with a rediss:// URL (TLS)' });
  }
});

const cacheSchema = z.strictObject({
  enabled: z.boolean().default(true),
  'memory-entries': z.number().int().min(0).default(10000),
  /** SQLite file, relative to state-dir; null = memory level only. */
  sqlite: z.string().nullable().default('cache.sqlite'),
  'sqlite-max-entries': positiveInt.default(1_000_000),
  'max-age': duration.prefault('7d'),
  /** Level 3, shared by several avgate nodes through Redis; null = off. */
  redis: redisCacheSchema.nullable().default(null),
});

const healthSchema = z.strictObject({
  /** How often `avgate serve` pings every engine and logs its state. */
  interval: timerDuration.prefault('30s'),
});

const STATUS = z.enum(['free', 'found', 'skipped', 'unknown', 'error']);

const icapServiceSchema = z.strictObject({
  /** Other names the service answers to (c-icap's srv_clamav, virus_scan ...). */
  aliases: z.array(z.string()).default([]),
  methods: z.array(z.enum(['RESPMOD', 'REQMOD'])).min(1).default(['RESPMOD', 'REQMOD']),
  /** Engine ids; default: scan.engines. */
  engines: z.array(z.string()).min(1).nullable().default(null),
  /** Bodies over this are not scanned: they get the skipped policy. */
  'max-object-size': size.prefault('100MiB'),
  /**
   * Bodies with a Content-Encoding (deflate, br, chains such as `gzip, br`) are decoded for the
   * engines, as the browser will decode them; a coding that cannot be decoded (zstd) is skipped.
   * false: only a single gzip (which clamd opens itself) is scanned, any other coding is skipped.
   */
  'decode-content-encoding': z.boolean().default(true),
  /** A decoded body larger than this many times its encoded size is skipped (a decompression bomb). */
  'max-decompression-ratio': z.number().int().min(1).default(100),
  /**
   * whole: a GET's Range (If-Range, Request-Range) is taken out in REQMOD, so the server sends the
   * whole object and RESPMOD scans all of it; a 206 Partial Content that reaches RESPMOD anyway is
   * skipped (a part scanned alone passes what only the whole shows). pass: parts are scanned as
   * they come.
   */
  'range-requests': z.enum(['whole', 'pass']).default('whole'),
  /** Verdicts that let the object through; by default only free. */
  'accept-status': z.array(STATUS).min(1).default(['free']),
  /** HTTP status of the page for a verdict that does not pass. */
  'block-status': z
    .strictObject({
      found: z.number().int().min(400).max(599).default(403),
      skipped: z.number().int().min(400).max(599).default(403),
      unknown: z.number().int().min(400).max(599).default(403),
      error: z.number().int().min(400).max(599).default(503),
    })
    .prefault({}),
  /** Preview size offered in OPTIONS (bytes); 0 = previews not wanted. */
  preview: size.prefault('1024'),
  'transfer-preview': z.array(z.string()).default(['*']),
  'transfer-ignore': z.array(z.string()).default([]),
  'transfer-complete': z.array(z.string()).default([]),
  'options-ttl': duration.prefault('1h'),
  /**
   * Early response (for Squid 5.7, bug 5352): when the client did not offer 204, a body still
   * arriving after this many bytes gets the 200 response head at once; the body is held back until
   * the verdict, and the connection is aborted if it is not clean. 0 = never.
   */
  'early-response-after': size.prefault('32KiB'),
  /**
   * The same for REQMOD (uploads). An early head lets Squid send the request on to the server, so
   * an upload's prefix (infected or not) reaches it before the verdict: uploads are held whole up
   * to this size; Squid 5.7 drops REQMOD transactions that got no answer while it sent ~10–20 MB.
   */
  'early-response-after-reqmod': size.prefault('4MiB'),
  /**
   * A blocked engine error (no engine could answer): `page` = the 503 page (fail closed whatever
   * the client is set to); `icap-error` = an ICAP 500 (as c-icap answers), so the ICAP client
   * decides: Squid with bypass=1 then passes the object unscanned, with bypass=0 refuses it.
   */
  'engine-error': z.enum(['page', 'icap-error']).default('page'),
  /**
   * After an early head, the body is sent on as it arrives except for its last keep-back bytes,
   * which wait for the verdict (Squid 5.7 stalls when ~2.7 MB wait unanswered). An object that is
   * not clean is cut off, so the client never has it whole.
   */
  'early-response-keep-back': size.prefault('1MiB'),
  /** Verdict statuses whose blocked objects are kept in the quarantine (e.g. [found]); [] = none. */
  quarantine: z.array(STATUS).default([]),
  /** HTML template of the block page ({{VIRUS_NAMES}}, {{URL}}, {{SERVICE}}, {{ENGINE}}, {{SIGNATURE_VERSION}}, {{STATUS}}, {{REASON}}); null = built in. */
  'block-page': z.string().nullable().default(null),
});

const icapSchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** host:port; loopback by default. */
  listen: listenAddress.default('127.0.0.1:1344'),
  tls: z
    .strictObject({
      listen: listenAddress.default('127.0.0.1:11344'),
      cert: z.string(),
      key: z.string(),
    })
    .nullable()
    .default(null),
  'max-connections': positiveInt.default(200),
  /** A connection without a request for this long is closed. */
  'idle-timeout': timerDuration.prefault('60s'),
  /** Within a request, bytes must keep coming: no read waits longer than this (slowloris). */
  'read-timeout': timerDuration.prefault('30s'),
  /** The whole request head (ICAP head and encapsulated HTTP headers) must arrive within this, from its first byte. */
  'header-timeout': timerDuration.prefault('30s'),
  /**
   * A minimum body rate (like Apache's mod_reqtimeout `body=…,MinRate=…`): from its first byte a
   * body may keep avgate waiting this long in all, plus 1 s for every `body-min-rate` bytes
   * received; else 408 (or a cut connection when the answer has begun). Only time avgate waits for
   * the client counts, not time the client waits for an engine. 0 (default) = no body deadline:
   * with RESPMOD a body comes at the origin's pace (an event stream, a slow download), which a
   * trusted ICAP client cannot speed up.
   */
  'body-timeout': timerDuration.prefault(0),
  /** Bytes per second that extend body-timeout (sizes: 500, 1KiB); 0 = not extended: the whole body within body-timeout. */
  'body-min-rate': size.prefault('500'),
  /**
   * An answer with bytes the client has not taken (a 200 echo, a body after an early response) must
   * make write progress within this; else the connection is reset and logged. A slow reader that
   * keeps reading is not cut; time avgate spends itself (scans) does not count. 0 = no bound.
   */
  'send-timeout': timerDuration.prefault('60s'),
  'max-header-size': size.prefault('64KiB'),
  'max-request-line': size.prefault('8KiB'),
  /**
   * Memory per request before the body is spooled to a temp file. Bodies up to this size are
   * assembled and checked against the verdict cache before any engine is asked; larger ones are
   * streamed to the engine as they arrive (and spooled to disk for the echo).
   */
  'spool-memory': size.prefault('8MiB'),
  /** Where spooled bodies go; relative to state-dir. */
  'spool-dir': z.string().default('spool'),
  /** One line per request (time client service method status verdict bytes ms), relative to state-dir; null = the main log. */
  'access-log': z.string().nullable().default(null),
  services: z.record(z.string(), icapServiceSchema).default(() => ({ avscan: icapServiceSchema.parse({ aliases: ['srv_clamav', 'virus_scan', 'squidclamav'] }) })),
});

export type IcapConfig = z.output<typeof icapSchema>;
export type IcapServiceConfig = z.output<typeof icapServiceSchema>;

export const configSchema = z.strictObject({
  /** Runtime files: clamd socket/conf/db, cache, quarantine. Relative to the working directory. */
  'state-dir': z.string().default('var'),
  /**
   * Unix socket (mode 0600) of `avgate reload|status|stop`, relative to state-dir; null = none.
   * A second `avgate serve` that finds it answering refuses to start on the same state-dir.
   */
  'control-socket': z.string().min(1).nullable().default('avgate.ctl'),
  /** Garbage-collector settings for a long-running gateway (src/core/gc-tuning.ts). */
  'gc-tuning': z.boolean().default(true),
  /** Page cache of each SQLite database (verdict cache, statistics, quarantine). */
  'sqlite-cache-size': size.prefault('2MiB'),
  /**
   * After a reload (SIGHUP), how long connections accepted under the previous configuration may
   * go on before they are cut; idle ones end at once.
   */
  'reload-drain-timeout': timerDuration.prefault('10m'),
  /**
   * A stop (SIGTERM, SIGINT) ends within this: connections get half of it to finish (idle ones
   * end at once), then engines, quarantine and statistics close; past it the process exits (1).
   */
  'stop-timeout': timerDuration.refine((ms) => ms >= 5000, { message: 'at least 5s (a stop needs about 3 s for mail transactions and the statistics)' }).prefault('10s'),
  /**
   * Before a stop closes anything: for this long /healthz answers 503 `stopping` while every front
   * end still serves, so a load balancer's health check takes the node out first. Added to
   * stop-timeout; 0 = none.
   */
  'stop-delay': timerDuration.prefault('0s'),
  log: logSchema.default(() => logSchema.parse({})),
  clamd: clamdSchema.default(() => clamdSchema.parse({})),
  engines: z
    .record(z.string(), engineSchema)
    .default(() => ({ clamav: engineSchema.parse({ type: 'clamd-net', options: { address: 'local' } }) })),
  scan: scanSchema.default(() => scanSchema.parse({})),
  cache: cacheSchema.default(() => cacheSchema.parse({})),
  health: healthSchema.default(() => healthSchema.parse({})),
  signatures: signaturesSchema.prefault({}),
  icap: icapSchema.default(() => icapSchema.parse({})),
  smtp: smtpSchema.prefault({}),
  mail: mailSchema.prefault({}),
  quarantine: quarantineSchema.prefault({}),
  stats: statsSchema.prefault({}),
  console: consoleSchema.prefault({}),
  'pop3-proxy': pop3ProxySchema.prefault({}),
  'http-proxy': httpProxySchema.prefault({}),
  'ftp-proxy': ftpProxySchema.prefault({}),
  'imap-proxy': imapProxySchema.prefault({}),
});

export type Config = z.output<typeof configSchema>;
export type EngineConfig = z.output<typeof engineSchema>;
export type RedisCacheConfig = z.output<typeof redisCacheSchema>;
