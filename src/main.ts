import { tuneGarbageCollector } from './core/gc-tuning.js';
import { mimeLimitsFrom } from './mime/index.js';
import type { LoadedConfig } from './config/loader.js';
import { largeObjectHash } from './core/content-hash.js';
import { messageOf } from './core/errors.js';
import { createLogger, reopenLogFiles, type Logger } from './core/logging.js';
import { VERSION } from './core/version.js';
import { configWarnings } from './config/check.js';
import { EngineHealth } from './engines/health.js';
import { startMailFilter, type MailFrontEnd } from './mail/index.js';
import { IcapServer } from './protocols/icap/server.js';
import { startPop3Proxy, type Pop3FrontEnd } from './protocols/pop3/index.js';
import { HttpProxyServer } from './protocols/http-proxy/server.js';
import { FtpProxyServer } from './protocols/ftp/server.js';
import { ImapProxyServer } from './protocols/imap/server.js';
import { startQuarantinePurge } from './quarantine/retention.js';
import { openQuarantine } from './quarantine/store.js';
import type { Quarantine } from './quarantine/types.js';
import { openRuntime, type Runtime } from './runtime.js';
import { startSignatureUpdates } from './signatures/index.js';
import { openStats } from './stats/open.js';
import type { StatsService, StoreStatus } from './stats/types.js';
import { ConsoleServer } from './web/server.js';

/** How long a graceful stop may take before the process exits anyway. */
const STOP_DEADLINE_MS = 10_000;

/**
 * `avgate serve`: config → engines (and the project-local clamd) → front ends → signals.
 * Front ends so far: the ICAP server and the SMTP/LMTP mail filter. Engines' health is logged every health.interval.
 */
export interface Serving {
  runtime: Runtime;
  icap: IcapServer | null;
  icapPort: number | null;
  icapTlsPort: number | null;
  mail: MailFrontEnd | null;
  smtpPort: number | null;
  /** The statistics store, SQLite or PostgreSQL (null when stats.enabled is false); flushed and closed by stop. */
  stats: StatsService | null;
  /** The one quarantine store of every front end (closed by stop). */
  quarantine: Quarantine;
  /** The web console, scanning API and /metrics (null when console.enabled is false). */
  web: ConsoleServer | null;
  consolePort: number | null;
  /** The FTP proxy (null when ftp-proxy.enabled is false). */
  ftp: FtpProxyServer | null;
  ftpProxyPort: number | null;
  /** The IMAP4 proxy (null when imap-proxy.enabled is false); its bound port. */
  imapProxy: ImapProxyServer | null;
  imapProxyPort: number | null;
  /** The POP3 proxy (null when pop3-proxy.enabled is false); its bound port. */
  pop3: Pop3FrontEnd | null;
  pop3ProxyPort: number | null;
  /** The HTTP forward proxy (null when http-proxy.enabled is false); its bound port. */
  httpProxy: HttpProxyServer | null;
  httpProxyPort: number | null;
  stop: () => Promise<void>;
}

export async function serve(loaded: LoadedConfig, opts: { logger?: Logger } = {}): Promise<Serving> {
  const { config } = loaded;
  if (config['gc-tuning']) tuneGarbageCollector();
  let icapPort: number | null = null;
  let icapTlsPort: number | null = null;
  const log = opts.logger ?? createLogger({ level: config.log.level, file: config.log.file });
  log.info({ config: loaded.path ?? '(embedded defaults)' }, 'avgate starting');
  // Statistics first: every scanner the runtime builds reports its verdicts to it.
  const stats = config.stats.enabled ? openStats(config.stats, config['state-dir'], log.child({ component: 'stats' }), config['sqlite-cache-size']) : null;
  const runtime = await openRuntime(config, { logger: log, localClamd: 'always', stats }).catch(async (err: unknown) => {
    await stats?.close();
    throw err;
  });
  // One quarantine for every front end; opening it creates the key file on first start.
  const quarantine = await openQuarantine(config).catch(async (err: unknown) => {
    await runtime.close();
    await stats?.close();
    throw err;
  });
  let icap: IcapServer | null = null;
  let mail: MailFrontEnd | null = null;
  let web: ConsoleServer | null = null;
  let consolePort: number | null = null;
  let httpProxy: HttpProxyServer | null = null;
  let httpProxyPort: number | null = null;
  let ftp: FtpProxyServer | null = null;
  let ftpProxyPort: number | null = null;
  let imapProxy: ImapProxyServer | null = null;
  let imapProxyPort: number | null = null;
  let pop3: Pop3FrontEnd | null = null;
  const engineHealth = new EngineHealth(runtime.engines.map((e) => e.id));
  try {
    if (config.icap.enabled) {
      icap = new IcapServer(config.icap, { stateDir: config['state-dir'], scannerFor: runtime.scannerFor, log, version: VERSION, quarantine });
      const bound = await icap.listen();
      icapPort = bound.port;
      icapTlsPort = bound.tlsPort;
    }
    if (config.smtp.enabled) mail = await startMailFilter(config, runtime, log, quarantine);
    if (config['pop3-proxy'].enabled) pop3 = await startPop3Proxy(config, runtime, log, quarantine);
    if (config['ftp-proxy'].enabled) {
      ftp = new FtpProxyServer(config['ftp-proxy'], { stateDir: config['state-dir'], scannerFor: runtime.scannerFor, log, quarantine });
      ftpProxyPort = (await ftp.listen()).port;
    }
    if (config['imap-proxy'].enabled) {
      const mime = { limits: mimeLimitsFrom(config.mail), lenientQuotedPrintable: config.mail['lenient-quoted-printable'] };
      imapProxy = new ImapProxyServer(config['imap-proxy'], { stateDir: config['state-dir'], scannerFor: runtime.scannerFor, log, mime, quarantine });
      imapProxyPort = (await imapProxy.listen()).port;
    }
    if (config['http-proxy'].enabled) {
      httpProxy = new HttpProxyServer(config['http-proxy'], {
        stateDir: config['state-dir'],
        scannerFor: runtime.scannerFor,
        maxCheckedSize: config.scan['max-checked-size'],
        log,
        quarantine,
      });
      httpProxyPort = (await httpProxy.listen()).port;
    }
    if (config.console.enabled) {
      web = new ConsoleServer({
        config,
        configSource: loaded.path ?? '(embedded defaults)',
        scanner: runtime.scanner,
        engines: runtime.engines,
        health: engineHealth,
        quarantine,
        stats,
        configWarnings: configWarnings(config),
        cache: runtime.cache,
        log,
      });
      consolePort = (await web.listen()).port;
    }
  } catch (err) {
    await web?.close();
    await mail?.server.close(0);
    await httpProxy?.close(0);
    await ftp?.close(0);
    await imapProxy?.close(0);
    await pop3?.server.close(0);
    await icap?.close(0);
    await quarantine.close();
    await runtime.close();
    await stats?.close();
    throw err;
  }
  const stopPurge = startQuarantinePurge(quarantine, config.quarantine, log.child({ component: 'quarantine' }));
  const health = startHealthLog(runtime, log, config.health.interval, () => ({
    ...(icap ? { icap: icap.counters } : {}),
    ...(mail ? { smtp: mail.server.counters, mail: mail.filter.counters } : {}),
    ...(web ? { console: web.counters } : {}),
    ...(stats ? { stats: statsCounters(stats.status()) } : {}),
    ...(httpProxy ? { http: httpProxy.counters } : {}),
    ...(ftp ? { ftp: ftp.counters } : {}),
    ...(imapProxy ? { imap: imapProxy.counters } : {}),
    ...(pop3 ? { pop3: pop3.server.counters } : {}),
  }), engineHealth);
  const stopSignatures = startSignatureUpdates(config, runtime.allEngines.map((e) => e.engine), runtime.clamd !== null, log.child({ component: 'signatures' }));
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= (async () => {
      log.info('avgate stopping');
      clearInterval(health);
      await stopSignatures();
      await Promise.all([icap?.close(STOP_DEADLINE_MS / 2), httpProxy?.close(STOP_DEADLINE_MS / 2), mail?.server.close(STOP_DEADLINE_MS / 2), web?.close(), ftp?.close(STOP_DEADLINE_MS / 2)]);
      await imapProxy?.close(STOP_DEADLINE_MS / 2);
      await pop3?.server.close(STOP_DEADLINE_MS / 2);
      await stopPurge();
      await quarantine.close();
      await runtime.close();
      await stats?.close(); // after the scanners: their last verdicts are written
      log.info('avgate stopped');
    })();
    return stopping;
  };
  const smtpPort = mail?.port ?? null;
  log.info({ engines: runtime.engines.map((e) => e.id), cacheKeyOver32KiB: largeObjectHash(), cacheLevels: runtime.cache?.levels ?? [], clamdPid: runtime.clamd?.pid, icapPort, smtpPort, consolePort, ftpProxyPort, httpProxyPort, imapProxyPort, pop3ProxyPort: pop3?.port ?? null }, 'avgate ready');
  return { runtime, httpProxy, httpProxyPort, icap, icapPort, icapTlsPort, mail, smtpPort, quarantine, stats, web, consolePort, ftp, ftpProxyPort, imapProxy, imapProxyPort, pop3, pop3ProxyPort: pop3?.port ?? null, stop };
}

/** The statistics store's side of the counters line: what waits in memory, what was lost, whether the database answers. */
function statsCounters(s: StoreStatus): Record<string, unknown> {
  return { backend: s.backend, buffered: s.buffered, dropped: s.dropped, ...(s.reachable ? {} : { unreachable: s.lastError }) };
}

/** Pings every engine now and then; a failure is logged with its cause, recovery too. */
export function startHealthLog(
  runtime: Runtime,
  log: Logger,
  intervalMs: number,
  frontEnds: () => object = () => ({}),
  board: EngineHealth | null = null,
): NodeJS.Timeout {
  const healthy = new Map<string, boolean>();
  const check = async () => {
    for (const { id, engine } of runtime.engines) {
      const signal = AbortSignal.timeout(Math.min(intervalMs, 10_000));
      try {
        const reply = engine.ping ? await engine.ping(signal) : 'no ping';
        const version = await engine.signatureVersion(signal);
        const own = engine.version ? await engine.version(signal).catch(() => null) : null;
        board?.ok(id, { reply: reply.trim(), version: own, signatureVersion: version });
        if (healthy.get(id) !== true) log.info({ engine: id, reply: reply.trim(), signatureVersion: version }, 'engine healthy');
        else log.debug({ engine: id, reply: reply.trim(), signatureVersion: version }, 'engine healthy');
        healthy.set(id, true);
      } catch (err) {
        board?.failed(id, messageOf(err));
        log.error({ engine: id, err: messageOf(err) }, 'engine not answering: scans fail closed (error verdicts)');
        healthy.set(id, false);
      }
    }
    const c = runtime.scanner.counters;
    log.info({ scans: c.scans, bytes: c.bytes, byStatus: c.byStatus, cacheHits: c.cacheHits, ...(runtime.cache ? { cache: runtime.cache.stats } : {}), ...frontEnds() }, 'counters');
  };
  void check();
  const timer = setInterval(() => void check(), intervalMs);
  timer.unref();
  return timer;
}

/** Runs serve until SIGINT/SIGTERM, then stops gracefully within STOP_DEADLINE_MS. */
export async function serveForever(loaded: LoadedConfig): Promise<number> {
  const log = createLogger({ level: loaded.config.log.level, file: loaded.config.log.file });
  const { stop } = await serve(loaded, { logger: log });
  const keepAlive = setInterval(() => undefined, 1 << 30);
  // SIGHUP (node's default: exit) reopens the log files, for logrotate's postrotate (as clamd
  // does; SIGUSR1 is node's inspector signal). The configuration is read only at start: changing
  // it takes a restart (docs/config.md).
  const onReopen = (sig: NodeJS.Signals) => {
    const { files, failed } = reopenLogFiles();
    if (failed.length > 0) log.warn({ signal: sig, files, failed }, 'log files reopened, some kept their old file');
    else log.info({ signal: sig, files }, 'log files reopened');
  };
  process.on('SIGHUP', onReopen);
  await new Promise<void>((resolve) => {
    let stopping = false;
    // A terminal's Ctrl-C reaches npm, the launcher and avgate at once: later signals are ignored
    // while the first one's graceful stop runs, bounded by the deadline.
    const onSignal = (sig: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`avgate: ${sig}, stopping\n`);
      const deadline = setTimeout(() => process.exit(1), STOP_DEADLINE_MS);
      deadline.unref();
      void stop().finally(resolve);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  clearInterval(keepAlive);
  return 0;
}
