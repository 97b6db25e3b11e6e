import { resolve } from 'node:path';
import { tuneGarbageCollector } from './core/gc-tuning.js';
import { mimeLimitsFrom } from './mime/index.js';
import { loadConfig, type LoadedConfig } from './config/loader.js';
import type { Config } from './config/schema.js';
import { Listeners } from './core/listen.js';
import { statsNodeName } from './config/stats-schema.js';
import { reloadInputs } from './config/reload-inputs.js';
import { largeObjectHash } from './core/content-hash.js';
import { mkdirSync } from 'node:fs';
import { errorCodeOf, messageOf } from './core/errors.js';
import { createLogger, reopenLogFiles, type Logger } from './core/logging.js';
import { VERSION } from './core/version.js';
import { configWarnings } from './config/check.js';
import { controlSocketPath, openControlSocket, type ControlServer } from './control/server.js';
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
import { sumCounters } from './web/runtime-metrics.js';
import { ConsoleServer, type ReloadStatus } from './web/server.js';


/**
 * `avgate serve`: config → engines (and the project-local clamd) → front ends → signals.
 * Front ends so far: the ICAP server and the SMTP/LMTP mail filter. Engines' health is logged every health.interval.
 */
/** Reopens every log file by its path (avgate's, the access logs, the project-local clamd's) and says so. */
function reopenLogs(log: Logger, via: string): void {
  const { files, failed } = reopenLogFiles();
  if (failed.length > 0) log.warn({ signal: via, files, failed }, 'log files reopened, some kept their old file');
  else log.info({ signal: via, files }, 'log files reopened');
}

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
  /** The configuration at work (after a reload: the reloaded one). */
  config: Readonly<Config>;
  stop: (opts?: StopOptions) => Promise<void>;
  /** Reads the config file again and applies it (SIGHUP); see reload in serve. */
  reload: () => Promise<ReloadResult>;
}

/** Top-level sections a reload applies; the others keep their running values until a restart. */
export const RELOADABLE_SECTIONS = ['engines', 'scan', 'health', 'icap', 'smtp', 'mail', 'pop3-proxy', 'http-proxy', 'ftp-proxy', 'imap-proxy', 'reload-drain-timeout', 'stop-timeout', 'stop-delay'] as const;

/** The front ends of one configuration; a reload starts a new set beside the running one. */
interface FrontEnds {
  icap: IcapServer | null;
  icapPort: number | null;
  icapTlsPort: number | null;
  mail: MailFrontEnd | null;
  pop3: Pop3FrontEnd | null;
  ftp: FtpProxyServer | null;
  ftpProxyPort: number | null;
  imapProxy: ImapProxyServer | null;
  imapProxyPort: number | null;
  httpProxy: HttpProxyServer | null;
  httpProxyPort: number | null;
}

/** One configuration at work: its runtime (engines, scanners), front ends and listening sockets. */
interface Generation {
  config: Readonly<Config>;
  /** reloadInputs of config: a reload whose inputs are the same rebuilds nothing. */
  inputs: string;
  runtime: Runtime;
  listeners: Listeners;
  fe: FrontEnds;
  engineHealth: EngineHealth;
}

/** Starts every enabled front end; on a failure closes those already started and throws. */
async function startFrontEnds(config: Readonly<Config>, runtime: Runtime, log: Logger, quarantine: Quarantine, listeners: Listeners): Promise<FrontEnds> {
  const fe: FrontEnds = { icap: null, icapPort: null, icapTlsPort: null, mail: null, pop3: null, ftp: null, ftpProxyPort: null, imapProxy: null, imapProxyPort: null, httpProxy: null, httpProxyPort: null };
  const stateDir = config['state-dir'];
  try {
    if (config.icap.enabled) {
      fe.icap = new IcapServer(config.icap, { stateDir, scannerFor: runtime.scannerFor, log, version: VERSION, quarantine, listeners });
      const bound = await fe.icap.listen();
      fe.icapPort = bound.port;
      fe.icapTlsPort = bound.tlsPort;
    }
    if (config.smtp.enabled) fe.mail = await startMailFilter(config, runtime, log, quarantine, listeners);
    if (config['pop3-proxy'].enabled) fe.pop3 = await startPop3Proxy(config, runtime, log, quarantine, listeners);
    if (config['ftp-proxy'].enabled) {
      fe.ftp = new FtpProxyServer(config['ftp-proxy'], { stateDir, scannerFor: runtime.scannerFor, log, quarantine, listeners });
      fe.ftpProxyPort = (await fe.ftp.listen()).port;
    }
    if (config['imap-proxy'].enabled) {
      const mime = { limits: mimeLimitsFrom(config.mail), lenientQuotedPrintable: config.mail['lenient-quoted-printable'] };
      fe.imapProxy = new ImapProxyServer(config['imap-proxy'], { stateDir, scannerFor: runtime.scannerFor, log, mime, quarantine, listeners });
      fe.imapProxyPort = (await fe.imapProxy.listen()).port;
    }
    if (config['http-proxy'].enabled) {
      fe.httpProxy = new HttpProxyServer(config['http-proxy'], { stateDir, scannerFor: runtime.scannerFor, maxCheckedSize: config.scan['max-checked-size'], log, quarantine, listeners });
      fe.httpProxyPort = (await fe.httpProxy.listen()).port;
    }
  } catch (err) {
    await closeFrontEnds(fe, 0);
    throw err;
  }
  return fe;
}

/**
 * Stops accepting (ports handed to a newer generation stay open), then lets connections end
 * within `graceMs`; `reload`: HTTP CONNECT tunnels go on too (a stop cuts them at once).
 */
async function closeFrontEnds(fe: FrontEnds, graceMs: number, reload = false): Promise<void> {
  await Promise.all([
    fe.icap?.close(graceMs),
    fe.httpProxy?.close(graceMs, { keepTunnels: reload }),
    fe.mail?.server.close(graceMs),
    fe.ftp?.close(graceMs),
    fe.imapProxy?.close(graceMs),
    fe.pop3?.server.close(graceMs),
  ]);
}

/**
 * The configuration a reload applies: `next`'s reloadable sections, the running values of
 * everything else; with the sections that changed and those whose change waits for a restart.
 */
export function reloadedConfig(running: Readonly<Config>, next: Readonly<Config>): { config: Readonly<Config>; restartNeeded: string[]; changed: string[] } {
  const merged: Record<string, unknown> = {};
  const restartNeeded: string[] = [];
  const changed: string[] = [];
  const reloadable = new Set<string>(RELOADABLE_SECTIONS);
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  for (const key of Object.keys(running) as Array<keyof Config & string>) {
    const was = running[key];
    const now = next[key];
    if (reloadable.has(key)) {
      merged[key] = now;
      if (!same(was, now)) changed.push(key);
    } else if (key === 'log') {
      // The level applies at once (every child logger follows the root's level); the file needs a
      // restart (SIGHUP reopens the same path, for logrotate).
      const w = was as Config['log'];
      const n = now as Config['log'];
      merged[key] = { ...w, level: n.level };
      if (w.level !== n.level) changed.push('log.level');
      if (w.file !== n.file) restartNeeded.push('log.file');
    } else {
      merged[key] = was;
      if (!same(was, now)) restartNeeded.push(key);
    }
  }
  return { config: Object.freeze(merged) as unknown as Readonly<Config>, restartNeeded, changed };
}

export async function serve(loaded: LoadedConfig, opts: ServeOptions = {}): Promise<Serving> {
  const { config } = loaded;
  const log = opts.logger ?? createLogger({ level: config.log.level, file: config.log.file, node: statsNodeName(config.stats) });
  log.info({ config: loaded.path ?? '(embedded defaults)' }, 'avgate starting');
  // Before anything is started: another avgate on the same state-dir would share its clamd
  // (and stop it as a leftover), its spool and its databases.
  const controlPath = controlSocketPath(config);
  let control: ControlServer | null = null;
  if (controlPath !== null) {
    mkdirSync(config['state-dir'], { recursive: true });
    const onStop = opts.signal ? opts.onStopRequest : undefined;
    control = await openControlSocket(controlPath, log.child({ component: 'control' }), {
      ...(onStop
        ? {
            stopWhileStarting: () => {
              setImmediate(onStop);
              return { ok: true, pid: process.pid, stopping: true, note: 'stopping during start-up', waitMs: config['stop-timeout'] };
            },
          }
        : {}),
    });
  }
  try {
    return await startServing(loaded, opts, log, control);
  } catch (err) {
    await control?.close();
    throw err;
  }
}

async function startServing(loaded: LoadedConfig, opts: ServeOptions, log: Logger, control: ControlServer | null): Promise<Serving> {
  const { config } = loaded;
  const startedAt = Date.now();
  if (config['gc-tuning']) tuneGarbageCollector();
  // Statistics first: every scanner the runtime builds reports its verdicts to it.
  const stats = config.stats.enabled ? openStats(config.stats, config['state-dir'], log.child({ component: 'stats' }), config['sqlite-cache-size']) : null;
  const runtime = await openRuntime(config, { logger: log, localClamd: 'always', stats, ...(opts.signal ? { signal: opts.signal } : {}) }).catch(async (err: unknown) => {
    await stats?.close();
    throw err;
  });
  // One quarantine for every front end; opening it creates the key file on first start.
  const quarantine = await openQuarantine(config).catch(async (err: unknown) => {
    await runtime.close();
    await stats?.close();
    throw err;
  });
  const listeners = new Listeners();
  const reloads: ReloadStatus = { lastOk: true, lastSuccessAt: Date.now(), counts: { applied: 0, unchanged: 0, failed: 0 } };
  let gen: Generation;
  let web: ConsoleServer | null = null;
  let consolePort: number | null = null;
  /**
   * /metrics counts on across reloads: the counters of generations a reload replaced (summed
   * into `retired` once their connections ended, read live while they drain) are added to the
   * running one's. Set once `draining` exists.
   */
  const earlier = { counters: (): Array<Record<string, object>> => [] };
  try {
    const fe = await startFrontEnds(config, runtime, log, quarantine, listeners);
    gen = { config, inputs: reloadInputs(config, RELOADABLE_SECTIONS), runtime, listeners, fe, engineHealth: new EngineHealth(runtime.allEngines.map((e) => e.id)) };
    if (config.console.enabled) {
      try {
        web = new ConsoleServer({
          config,
          configSource: loaded.path ?? '(embedded defaults)',
          scanner: runtime.scanner,
          engines: runtime.allEngines,
          health: gen.engineHealth,
          quarantine,
          stats,
          configWarnings: configWarnings(config),
          cache: runtime.cache,
          reloads: () => reloads,
          // The running generation's, whichever that is when /metrics is asked, on top of the earlier ones'.
          frontEnds: () => ({
            counters: sumCounters([...earlier.counters(), frontEndCounters(gen.fe)]),
            connections: Object.fromEntries(Object.entries(frontEndStatus(gen, null)).flatMap(([k, v]) => (v === null || k === 'console' ? [] : [[k, v.connections]]))),
          }),
          log,
        });
        consolePort = (await web.listen()).port;
      } catch (err) {
        await web?.close();
        await closeFrontEnds(fe, 0);
        throw err;
      }
    }
  } catch (err) {
    await quarantine.close();
    await runtime.close();
    await stats?.close();
    throw err;
  }
  const stopPurge = startQuarantinePurge(quarantine, config.quarantine, log.child({ component: 'quarantine' }));
  const startHealth = (g: Generation) =>
    startHealthLog(g.runtime, log, g.config.health.interval, () => ({
      ...frontEndCounters(g.fe),
      ...(web ? { console: web.counters } : {}),
      ...(stats ? { stats: statsCounters(stats.status()) } : {}),
    }), g.engineHealth);
  let health = startHealth(gen);
  // The updater tells the engines to look at their signature version again after an update: the
  // running generation's engines (this array follows a reload).
  const updaterEngines = runtime.allEngines.map((e) => e.engine);
  const stopSignatures = startSignatureUpdates(config, updaterEngines, runtime.clamd !== null, log.child({ component: 'signatures' }));
  /** Generations replaced by a reload whose connections are still ending. */
  const draining = new Map<Generation, Promise<void>>();
  let retired: Record<string, object> = {};
  earlier.counters = () => [retired, ...[...draining.keys()].map((g) => frontEndCounters(g.fe))];
  let stopping: Promise<void> | null = null;
  let reloading: Promise<ReloadResult> | null = null;
  let reloadAgain = false;
  /** What `avgate status` prints (the control socket's `status`). */
  const status = () => ({
    ok: true,
    pid: process.pid,
    version: VERSION,
    node: statsNodeName(gen.config.stats),
    startedAt: new Date(startedAt).toISOString(),
    uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
    // As a path the command can use from anywhere (serve's own working directory resolves it).
    config: loaded.path === null ? null : resolve(loaded.path),
    stopping: stopping !== null,
    reloads: { ...reloads.counts, lastOk: reloads.lastOk, lastSuccessAt: new Date(reloads.lastSuccessAt).toISOString(), reloading: reloading !== null, draining: draining.size },
    frontEnds: frontEndStatus(gen, consolePort),
    engines: gen.engineHealth.snapshot().map((e) => ({ id: e.id, healthy: e.healthy, signatureVersion: e.signatureVersion, version: e.version, lastError: e.lastError, failuresInRow: e.failuresInRow })),
    clamdPid: gen.runtime.clamd?.pid ?? null,
    scans: { ...gen.runtime.scanner.counters },
    cache: gen.runtime.cache ? { levels: gen.runtime.cache.levels, ...gen.runtime.cache.stats } : null,
    stats: stats ? statsCounters(stats.status()) : null,
  });
  const controlHandlers = () => ({
    status,
    signatures: () => {
      for (const e of updaterEngines) e.invalidateVersion?.();
      log.info({ engines: updaterEngines.length }, 'signature databases changed (control socket): engines read their signature version again');
      return { ok: true, engines: updaterEngines.length };
    },
    reload: async () => {
      // The same as SIGHUP (ExecReload, logrotate's postrotate): log files first.
      reopenLogs(log, 'control');
      const r = await reload();
      if (!r.ok) return { ok: false, error: r.reason };
      return {
        ok: true,
        result: reloadResult(r),
        changed: r.changed,
        restartNeeded: r.restartNeeded,
        ...(loaded.path === null ? { note: 'avgate runs on its embedded defaults: there is no config file to read again' } : {}),
      };
    },
    stop: () => {
      // How long the process may still take: its stop-timeout, and when a reload is running (the
      // stop waits for it, then takes the reloaded stop-timeout) once more.
      const waitMs = stopWithin(gen.config) * (reloading ? 2 : 1);
      if (stopping) return { ok: true, pid: process.pid, stopping: true, note: 'already stopping', waitMs };
      // After the answer is written: the stop closes the control socket last.
      setImmediate(() => (opts.onStopRequest ? opts.onStopRequest() : void serving.stop()));
      return { ok: true, pid: process.pid, stopping: true, waitMs };
    },
  });

  const serving: Serving = {
    runtime,
    icap: null,
    icapPort: null,
    icapTlsPort: null,
    mail: null,
    smtpPort: null,
    quarantine,
    stats,
    web,
    consolePort,
    ftp: null,
    ftpProxyPort: null,
    imapProxy: null,
    imapProxyPort: null,
    pop3: null,
    pop3ProxyPort: null,
    httpProxy: null,
    httpProxyPort: null,
    config,
    stop: (opts?: StopOptions) => stop(opts),
    reload: () => reload(),
  };
  const show = (g: Generation) => {
    const { fe } = g;
    Object.assign(serving, {
      runtime: g.runtime,
      config: g.config,
      icap: fe.icap,
      icapPort: fe.icapPort,
      icapTlsPort: fe.icapTlsPort,
      mail: fe.mail,
      smtpPort: fe.mail?.port ?? null,
      ftp: fe.ftp,
      ftpProxyPort: fe.ftpProxyPort,
      imapProxy: fe.imapProxy,
      imapProxyPort: fe.imapProxyPort,
      pop3: fe.pop3,
      pop3ProxyPort: fe.pop3?.port ?? null,
      httpProxy: fe.httpProxy,
      httpProxyPort: fe.httpProxyPort,
    });
  };
  show(gen);

  /**
   * Reads the config file again and, when it is valid, starts a new generation of front ends
   * beside the running one, hands the listening ports over, and lets the old connections end.
   * A file that does not validate, an engine that does not start or a port that cannot be bound
   * leaves the running configuration as it was (one error line with the reason).
   */
  const reloadOnce = async (): Promise<ReloadResult> => {
    if (loaded.path === null) {
      log.warn('reload: avgate runs on its embedded defaults, there is no config file to read again');
      return { ok: true, changed: [], restartNeeded: [], rebuilt: false };
    }
    const running = gen;
    let next: ReturnType<typeof reloadedConfig>;
    try {
      next = reloadedConfig(running.config, (await loadConfig(loaded.path)).config);
    } catch (err) {
      log.error({ config: loaded.path, reason: messageOf(err) }, 'configuration not reloaded: the file is not valid; the running configuration stays');
      return { ok: false, reason: messageOf(err) };
    }
    // Applied with the rest, once nothing can refuse the reload any more.
    const applyLogLevel = () => {
      if (next.config.log.level === running.config.log.level) return;
      log.info({ from: running.config.log.level, to: next.config.log.level }, 'reload: log level changed');
      log.level = next.config.log.level;
    };
    const inputs = reloadInputs(next.config, RELOADABLE_SECTIONS);
    if (inputs === running.inputs) {
      if (next.restartNeeded.length > 0) {
        log.warn({ sections: next.restartNeeded }, 'reload: these sections changed in the file but keep their running values until a restart');
      }
      const changed = next.changed.filter((c) => c === 'log.level');
      if (changed.length > 0) {
        applyLogLevel();
        // Nothing to rebuild, but the running configuration now says the new level.
        running.config = next.config;
        show(running);
        web?.update({ config: next.config, configSource: loaded.path, scanner: running.runtime.scanner, engines: running.runtime.allEngines, health: running.engineHealth, configWarnings: configWarnings(next.config), cache: running.runtime.cache });
      }
      log.info({ config: loaded.path, changed, restartNeeded: next.restartNeeded }, changed.length > 0 ? 'reload: log level applied; nothing else changed, nothing rebuilt' : next.restartNeeded.length > 0 ? 'reload: only sections that need a restart changed (restartNeeded); nothing rebuilt' : 'reload: the configuration and the files it names are unchanged; nothing rebuilt');
      return { ok: true, changed, restartNeeded: next.restartNeeded, rebuilt: false };
    }
    const nextListeners = new Listeners(running.listeners);
    let nextRuntime: Runtime;
    try {
      nextRuntime = await openRuntime(next.config, { logger: log, localClamd: 'always', stats, shared: { cache: running.runtime.cache, clamd: running.runtime.clamd } });
    } catch (err) {
      log.error({ config: loaded.path, reason: messageOf(err) }, 'configuration not reloaded: its engines did not start; the running configuration stays');
      return { ok: false, reason: messageOf(err) };
    }
    let fe: FrontEnds;
    try {
      fe = await startFrontEnds(next.config, nextRuntime, log, quarantine, nextListeners);
    } catch (err) {
      await nextRuntime.close({ keepShared: true });
      log.error({ config: loaded.path, reason: messageOf(err) }, 'configuration not reloaded: a front end did not start; the running configuration stays');
      return { ok: false, reason: messageOf(err) };
    }
    const notTaken = await nextListeners.takeOver();
    if (notTaken.length > 0) {
      log.error({ addresses: notTaken }, 'reload: these listening sockets could not be handed over; they close with the previous configuration');
    }
    applyLogLevel();
    gen = { config: next.config, inputs, runtime: nextRuntime, listeners: nextListeners, fe, engineHealth: new EngineHealth(nextRuntime.allEngines.map((e) => e.id)) };
    show(gen);
    updaterEngines.splice(0, updaterEngines.length, ...nextRuntime.allEngines.map((e) => e.engine));
    web?.update({
      config: next.config,
      configSource: loaded.path,
      scanner: nextRuntime.scanner,
      engines: nextRuntime.allEngines,
      health: gen.engineHealth,
      configWarnings: configWarnings(next.config),
      cache: nextRuntime.cache,
    });
    clearInterval(health);
    health = startHealth(gen);
    if (next.restartNeeded.length > 0) {
      log.warn({ sections: next.restartNeeded }, 'reload: these sections changed in the file but keep their running values until a restart');
    }
    log.info({ config: loaded.path, changed: next.changed, restartNeeded: next.restartNeeded, engines: nextRuntime.allEngines.map((e) => e.id), ports: frontEndPorts(fe) }, 'configuration reloaded');
    // The previous generation: stops accepting where the new one does not listen, and its
    // connections end (idle ones at once) within reload-drain-timeout.
    const drainMs = next.config['reload-drain-timeout'];
    const open = openConnections(running.fe);
    const done = (async () => {
      await closeFrontEnds(running.fe, drainMs, true);
      await running.runtime.close({ keepShared: true });
      log.info({ connectionsAtReload: open }, 'reload: the previous configuration\'s connections have ended');
    })().catch((err: unknown) => log.error({ err: messageOf(err) }, 'reload: closing the previous configuration failed'));
    draining.set(running, done);
    void done.finally(() => {
      retired = sumCounters([retired, frontEndCounters(running.fe)]);
      draining.delete(running);
    });
    return { ok: true, changed: next.changed, restartNeeded: next.restartNeeded, rebuilt: true };
  };
  // One reload at a time; a SIGHUP during one makes one more run after it (the file may have changed again).
  const reload = (): Promise<ReloadResult> => {
    if (stopping) return Promise.resolve({ ok: false, reason: 'stopping' });
    if (reloading) {
      reloadAgain = true;
      return reloading;
    }
    reloading = (async () => {
      let r: ReloadResult;
      do {
        reloadAgain = false;
        r = await reloadOnce();
        reloads.lastOk = r.ok;
        if (r.ok) reloads.lastSuccessAt = Date.now();
        reloads.counts[reloadResult(r)]++;
      } while (reloadAgain && !stopping);
      return r;
    })().finally(() => {
      reloading = null;
    });
    return reloading;
  };

  const stop = (opts: StopOptions = {}) => {
    stopping ??= (async () => {
      log.info('avgate stopping');
      await reloading?.catch(() => undefined);
      // The deadline and the grace below come from the same configuration (a reload may just have changed it).
      opts.deadline?.(stopWithin(gen.config));
      // First the load balancer is told (stop-delay), while everything still serves.
      const delay = gen.config['stop-delay'];
      if (web && delay > 0) {
        web.stopping = true;
        log.info({ stopDelayMs: delay }, '/healthz answers 503 (stopping); the front ends serve until stop-delay has passed');
        await new Promise((r) => setTimeout(r, delay));
      }
      clearInterval(health);
      await stopSignatures();
      // Generations still draining after a reload get the stop's deadline too (their close hurries).
      // Connections get half of stop-timeout; the rest is for the engines, quarantine and statistics.
      const grace = gen.config['stop-timeout'] / 2;
      for (const old of draining.keys()) void closeFrontEnds(old.fe, grace).catch(() => undefined); // its own promise logs
      await Promise.all([closeFrontEnds(gen.fe, grace), web?.close(), ...draining.values()]);
      await stopPurge();
      await quarantine.close();
      await gen.runtime.close();
      await stats?.close(); // after the scanners: their last verdicts are written
      // Last: until here a second avgate on this state-dir is told that this one still runs.
      await control?.close();
      log.info('avgate stopped');
    })();
    return stopping;
  };
  control?.setHandlers(controlHandlers());
  const fe = gen.fe;
  log.info({ engines: runtime.allEngines.map((e) => e.id), cacheKeyOver32KiB: largeObjectHash(), cacheLevels: runtime.cache?.levels ?? [], clamdPid: runtime.clamd?.pid, ...frontEndPorts(fe), consolePort, controlSocket: control?.path ?? null }, 'avgate ready');
  return serving;
}

export interface ServeOptions {
  logger?: Logger;
  /**
   * `avgate stop` on the control socket: serveForever stops as on SIGTERM; without it, stop() runs.
   * Also asked for while serve is still starting (with `signal`, which the stop then aborts).
   */
  onStopRequest?: () => void;
  /**
   * Aborted by a stop during start-up (a signal, avgate stop): the wait for the project-local
   * clamd ends, clamd is stopped again, and serve rejects with AVG_ERR_STOPPED.
   */
  signal?: AbortSignal;
}

/** How a reload counts: refused, applied (something rebuilt or changed) or unchanged. */
function reloadResult(r: ReloadResult): 'failed' | 'applied' | 'unchanged' {
  return !r.ok ? 'failed' : r.rebuilt || r.changed.length > 0 ? 'applied' : 'unchanged';
}

/** Each running front end's counters: the health log's `counters` line and /metrics. */
function frontEndCounters(fe: FrontEnds): Record<string, object> {
  return {
    ...(fe.icap ? { icap: fe.icap.counters } : {}),
    ...(fe.mail ? { smtp: fe.mail.server.counters, mail: fe.mail.filter.counters } : {}),
    ...(fe.httpProxy ? { http: fe.httpProxy.counters } : {}),
    ...(fe.ftp ? { ftp: fe.ftp.counters } : {}),
    ...(fe.imapProxy ? { imap: fe.imapProxy.counters } : {}),
    ...(fe.pop3 ? { pop3: fe.pop3.server.counters } : {}),
  };
}

/** Each front end's address, bound port and open connections (null entries: turned off). */
function frontEndStatus(g: Generation, consolePort: number | null): Record<string, { listen: string; port: number | null; connections: number | null } | null> {
  const { fe, config } = g;
  const entry = (on: boolean, listen: string, port: number | null, connections: number | null) => (on ? { listen, port, connections } : null);
  return {
    icap: entry(fe.icap !== null, config.icap.listen, fe.icapPort, fe.icap?.openConnections ?? null),
    icaps: fe.icapTlsPort === null || config.icap.tls === null ? null : { listen: config.icap.tls.listen, port: fe.icapTlsPort, connections: null },
    smtp: entry(fe.mail !== null, config.smtp.listen, fe.mail?.port ?? null, fe.mail?.server.openConnections ?? null),
    'http-proxy': entry(fe.httpProxy !== null, config['http-proxy'].listen, fe.httpProxyPort, fe.httpProxy?.openConnections ?? null),
    'ftp-proxy': entry(fe.ftp !== null, config['ftp-proxy'].listen, fe.ftpProxyPort, fe.ftp?.openSessions ?? null),
    'pop3-proxy': entry(fe.pop3 !== null, config['pop3-proxy'].listen, fe.pop3?.port ?? null, fe.pop3?.server.openConnections ?? null),
    'imap-proxy': entry(fe.imapProxy !== null, config['imap-proxy'].listen, fe.imapProxyPort, fe.imapProxy?.openConnections ?? null),
    console: entry(consolePort !== null, config.console.listen, consolePort, null),
  };
}

/** How long a stop may take: stop-delay, then stop-timeout. */
function stopWithin(config: Config): number {
  return config['stop-delay'] + config['stop-timeout'];
}

/** changed: reloadable sections whose values changed (a renewed certificate rebuilds with none). */
export interface StopOptions {
  /** Called once the stop knows its stop-timeout (after a reload under way settled): serveForever arms its exit there. */
  deadline?: (ms: number) => void;
}

export type ReloadResult = { ok: true; changed: string[]; restartNeeded: string[]; rebuilt: boolean } | { ok: false; reason: string };

function frontEndPorts(fe: FrontEnds): Record<string, number | null> {
  return { icapPort: fe.icapPort, smtpPort: fe.mail?.port ?? null, ftpProxyPort: fe.ftpProxyPort, httpProxyPort: fe.httpProxyPort, imapProxyPort: fe.imapProxyPort, pop3ProxyPort: fe.pop3?.port ?? null };
}

function openConnections(fe: FrontEnds): number {
  return (fe.icap?.openConnections ?? 0) + (fe.mail?.server.openConnections ?? 0) + (fe.httpProxy?.openConnections ?? 0) + (fe.ftp?.openSessions ?? 0) + (fe.imapProxy?.openConnections ?? 0) + (fe.pop3?.server.openConnections ?? 0);
}


/** The statistics store's side of the counters line: what waits in memory, what was lost, whether the database answers. */
function statsCounters(s: StoreStatus): Record<string, unknown> {
  return { backend: s.backend, node: s.node, buffered: s.buffered, dropped: s.dropped, reachable: s.reachable, ...(s.reachable ? {} : { unreachable: s.lastError, unreachableSince: s.unreachableSince === null ? null : new Date(s.unreachableSince).toISOString() }) };
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
    for (const { id, engine } of runtime.allEngines) {
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

/** Runs serve until SIGINT/SIGTERM, then stops gracefully within stop-timeout (as reloaded). */
export async function serveForever(loaded: LoadedConfig): Promise<number> {
  // Logs, access logs, the verdict cache and the statistics name URLs, users and files: nothing
  // serve creates is for other users (group may read). Not in serve(): tests run it in-process.
  process.umask(process.umask() | 0o027);
  const log = createLogger({ level: loaded.config.log.level, file: loaded.config.log.file, node: statsNodeName(loaded.config.stats) });
  // Signals are taken from the first moment: during start-up (clamd loading its database) node's
  // default would end avgate at once and leave clamd, in its own process group, running.
  const startAbort = new AbortController();
  // A line for the terminal when the log goes to a file; on standard error the log line says it
  // (a plain line among the JSON lines would break their readers).
  const announce = (text: string) => {
    if (loaded.config.log.file !== null) process.stderr.write(`avgate: ${text}\n`);
  };
  let startDeadline: NodeJS.Timeout | null = null;
  let stopRequested = (why: string, signal = false) => {
    if (startAbort.signal.aborted) {
      if (!signal) return;
      // A second signal: the start-up does not give way (an engine's init, a database that hangs).
      announce(`${why} again during start-up, exiting now`);
      process.exit(1);
    }
    announce(`${why} during start-up, stopping`);
    log.info({ reason: why }, 'stop asked for during start-up');
    startAbort.abort();
    // The wait for clamd ends at once; whatever else start-up waits on gets stop-timeout.
    startDeadline = setTimeout(() => {
      log.error({ reason: why, stopTimeoutMs: loaded.config['stop-timeout'] }, 'start-up did not end within stop-timeout after the stop: exiting');
      process.exit(1);
    }, loaded.config['stop-timeout']).unref();
  };
  const signalled = (sig: NodeJS.Signals) => stopRequested(sig, true);
  // A SIGHUP (logrotate's, a reload) would end it too: kept and acted on once ready.
  let hangup: NodeJS.Signals | null = null;
  const hungUp = (sig: NodeJS.Signals) => {
    hangup = sig;
  };
  process.on('SIGINT', signalled);
  process.on('SIGTERM', signalled);
  process.on('SIGHUP', hungUp);
  let serving: Serving;
  try {
    serving = await serve(loaded, { logger: log, onStopRequest: () => stopRequested('avgate stop (control socket)'), signal: startAbort.signal });
  } catch (err) {
    if (!startAbort.signal.aborted || errorCodeOf(err) !== 'AVG_ERR_STOPPED') throw err;
    // The stop ended the start-up: what started has been closed again.
    log.info({ err: messageOf(err) }, 'avgate stopped during start-up');
    return 0;
  } finally {
    // Settled: a stop from now on has its own deadline (stop-timeout, in stop()).
    if (startDeadline !== null) clearTimeout(startDeadline);
    process.off('SIGINT', signalled);
    process.off('SIGTERM', signalled);
    process.off('SIGHUP', hungUp);
  }
  const { stop, reload } = serving;
  const keepAlive = setInterval(() => undefined, 1 << 30);
  // SIGHUP (node's default: exit) reopens the log files, for logrotate's postrotate (as clamd
  // does; SIGUSR1 is node's inspector signal), and reads the config file again (as Postfix,
  // Squid and amavisd do): docs/config.md, "Reload".
  const onHangup = (sig: NodeJS.Signals) => {
    reopenLogs(log, sig);
    reload().catch((err: unknown) => log.error({ err: messageOf(err) }, 'reload failed'));
  };
  process.on('SIGHUP', onHangup);
  if (hangup !== null && !startAbort.signal.aborted) onHangup(hangup);
  await new Promise<void>((resolve) => {
    let stopping = false;
    // A terminal's Ctrl-C reaches npm, the launcher and avgate at once: later signals are ignored
    // while the first one's graceful stop runs, bounded by the deadline.
    const onSignal = (sig: string) => {
      if (stopping) return;
      stopping = true;
      announce(`${sig}, stopping`);
      log.info({ reason: sig }, 'stop asked for');
      // Armed now (a reload under way cannot hold the stop without bound), and again once stop()
      // knows the stop-timeout of the configuration it stops with.
      let timer = setTimeout(() => process.exit(1), stopWithin(serving.config)).unref();
      const deadline = (ms: number) => {
        clearTimeout(timer);
        timer = setTimeout(() => process.exit(1), ms).unref();
      };
      void stop({ deadline }).finally(resolve);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    stopRequested = onSignal;
    // Asked for after the last abortable step of the start-up: stopped as soon as it is ready.
    if (startAbort.signal.aborted) onSignal('stop asked for during start-up');
  });
  clearInterval(keepAlive);
  return 0;
}
