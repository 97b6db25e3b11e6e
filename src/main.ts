import type { LoadedConfig } from './config/loader.js';
import { messageOf } from './core/errors.js';
import { createLogger, type Logger } from './core/logging.js';
import { VERSION } from './core/version.js';
import { startMailFilter, type MailFrontEnd } from './mail/index.js';
import { IcapServer } from './protocols/icap/server.js';
import { openRuntime, type Runtime } from './runtime.js';

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
  stop: () => Promise<void>;
}

export async function serve(loaded: LoadedConfig, opts: { logger?: Logger } = {}): Promise<Serving> {
  const { config } = loaded;
  let icapPort: number | null = null;
  let icapTlsPort: number | null = null;
  const log = opts.logger ?? createLogger({ level: config.log.level, file: config.log.file });
  log.info({ config: loaded.path ?? '(embedded defaults)' }, 'avgate starting');
  const runtime = await openRuntime(config, { logger: log, localClamd: 'always' });
  let icap: IcapServer | null = null;
  let mail: MailFrontEnd | null = null;
  try {
    if (config.icap.enabled) {
      icap = new IcapServer(config.icap, { stateDir: config['state-dir'], scannerFor: runtime.scannerFor, log, version: VERSION });
      const bound = await icap.listen();
      icapPort = bound.port;
      icapTlsPort = bound.tlsPort;
    }
    if (config.smtp.enabled) mail = await startMailFilter(config, runtime, log);
  } catch (err) {
    await mail?.server.close(0);
    await icap?.close(0);
    await runtime.close();
    throw err;
  }
  const health = startHealthLog(runtime, log, config.health.interval, () => ({
    ...(icap ? { icap: icap.counters } : {}),
    ...(mail ? { smtp: mail.server.counters, mail: mail.filter.counters } : {}),
  }));
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= (async () => {
      log.info('avgate stopping');
      clearInterval(health);
      await Promise.all([icap?.close(STOP_DEADLINE_MS / 2), mail?.server.close(STOP_DEADLINE_MS / 2)]);
      await runtime.close();
      log.info('avgate stopped');
    })();
    return stopping;
  };
  const smtpPort = mail?.port ?? null;
  log.info({ engines: runtime.engines.map((e) => e.id), clamdPid: runtime.clamd?.pid, icapPort, smtpPort }, 'avgate ready');
  return { runtime, icap, icapPort, icapTlsPort, mail, smtpPort, stop };
}

/** Pings every engine now and then; a failure is logged with its cause, recovery too. */
export function startHealthLog(runtime: Runtime, log: Logger, intervalMs: number, frontEnds: () => object = () => ({})): NodeJS.Timeout {
  const healthy = new Map<string, boolean>();
  const check = async () => {
    for (const { id, engine } of runtime.engines) {
      const signal = AbortSignal.timeout(Math.min(intervalMs, 10_000));
      try {
        const reply = engine.ping ? await engine.ping(signal) : 'no ping';
        const version = await engine.signatureVersion(signal);
        if (healthy.get(id) !== true) log.info({ engine: id, reply: reply.trim(), signatureVersion: version }, 'engine healthy');
        else log.debug({ engine: id, reply: reply.trim(), signatureVersion: version }, 'engine healthy');
        healthy.set(id, true);
      } catch (err) {
        log.error({ engine: id, err: messageOf(err) }, 'engine not answering: scans fail closed (error verdicts)');
        healthy.set(id, false);
      }
    }
    const c = runtime.scanner.counters;
    log.info({ scans: c.scans, bytes: c.bytes, byStatus: c.byStatus, cacheHits: c.cacheHits, ...frontEnds() }, 'counters');
  };
  void check();
  const timer = setInterval(() => void check(), intervalMs);
  timer.unref();
  return timer;
}

/** Runs serve until SIGINT/SIGTERM, then stops gracefully within STOP_DEADLINE_MS. */
export async function serveForever(loaded: LoadedConfig): Promise<number> {
  const { stop } = await serve(loaded);
  const keepAlive = setInterval(() => undefined, 1 << 30);
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
