import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { RedisLevel, type RedisLevelOptions } from './cache/redis-level.js';
import { parseRedisUrl } from './config/redis-url.js';
import { VerdictCache } from './cache/verdict-cache.js';
import { engineReferences } from './config/engine-refs.js';
import { maskUrlPassword } from './config/mask.js';
import type { Config, EngineConfig, RedisCacheConfig } from './config/schema.js';
import { readPem } from './config/tls-schema.js';
import { AvgateError, messageOf } from './core/errors.js';
import type { Logger } from './core/logging.js';
import { parseSize } from './core/units.js';
import { createEngine } from './engines/registry.js';
import { LocalClamd } from './engines/clamd/local.js';
import type { Engine, EngineFactory, EngineOption } from './engines/types.js';
import { Scanner, type ScannerEngine } from './scan/scanner.js';
import type { ScanOrigin, StatsRecorder } from './stats/types.js';

/** The engine address meaning "the project-local clamd's unix socket". */
export const LOCAL_ADDRESS = 'local';

export interface Runtime {
  config: Readonly<Config>;
  /** The scanner for scan.engines. */
  scanner: Scanner;
  /** Engines of scan.engines. */
  engines: ScannerEngine[];
  /** Every engine built (scan.engines and those the front ends name). */
  allEngines: ScannerEngine[];
  /** The scanner for another list of engine ids (one per distinct list, sharing the cache). */
  scannerFor(engineIds: readonly string[] | null): { scanner: Scanner; engines: ScannerEngine[] };
  cache: VerdictCache | null;
  /** The project-local clamd when this runtime started it (or took it over on a reload). */
  clamd: LocalClamd | null;
  /**
   * Closes the scanners and engines, then the cache and the local clamd, unless `keepShared`
   * (a reload: the next generation's runtime took them over).
   */
  close(opts?: { keepShared?: boolean }): Promise<void>;
}

export interface RuntimeOptions {
  logger: Logger;
  /**
   * `always`: start the project-local clamd (avgate serve); `if-needed`: start it only when an
   * engine uses address "local" and nothing answers on its socket (avgate scan); `never`.
   */
  localClamd: 'always' | 'if-needed' | 'never';
  /** Every scanner reports each verdict here (avgate serve: the statistics store). */
  stats?: StatsRecorder | null;
  /** The origin of scans whose request names none (avgate scan: fs). */
  defaultOrigin?: ScanOrigin;
  /**
   * A reload: the running runtime's cache and local clamd, taken over (this runtime closes them
   * at the end) instead of made anew; `localClamd` is then not looked at.
   */
  shared?: { cache: VerdictCache | null; clamd: LocalClamd | null };
  /** A stop during serve's start-up: ends the wait for the local clamd (AVG_ERR_STOPPED). */
  signal?: AbortSignal;
  /** No verdict cache (`config check`: it leaves no cache file behind). */
  withoutCache?: boolean;
}

export function localClamdFor(config: Readonly<Config>): LocalClamd {
  const c = config.clamd;
  return new LocalClamd({
    stateDir: join(resolve(config['state-dir']), 'clamd'),
    database: c.database,
    tcpPort: c['tcp-port'],
    tcpAddr: c['tcp-addr'],
    streamMaxLength: c['stream-max-length'],
    maxThreads: c['max-threads'],
    startTimeoutMs: c['start-timeout'],
    tempDir: c['temp-dir'],
    alertExceedsMax: c['alert-exceeds-max'],
  });
}

function usesLocal(config: Readonly<Config>): boolean {
  return Object.values(config.engines).some((e) => optionList(e).some((o) => o.name === 'address' && o.value === LOCAL_ADDRESS));
}

function optionList(e: EngineConfig): EngineOption[] {
  const out: EngineOption[] = [];
  for (const [name, value] of Object.entries(e.options)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      out.push({ name, value: typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v) });
    }
  }
  return out;
}

async function loadPlugin(modulePath: string): Promise<EngineFactory> {
  const mod = (await import(pathToFileURL(resolve(modulePath)).href)) as { default?: unknown };
  if (typeof mod.default !== 'function') {
    throw new AvgateError('AVG_ERR_ENGINE_UNKNOWN', `plugin ${modulePath}: default export is not an engine factory`);
  }
  return mod.default as EngineFactory;
}

/** Builds engines, the verdict cache and the scanner from a config (and the local clamd if asked). */
export async function openRuntime(config: Readonly<Config>, options: RuntimeOptions): Promise<Runtime> {
  const log = options.logger;
  // Read first (cache.redis.tls-ca): a file that cannot be read stops the start before anything runs.
  const redis = !options.shared && config.cache.enabled && config.cache.redis !== null ? redisConnectOptions(config.cache.redis) : null;
  let clamd: LocalClamd | null = options.shared?.clamd ?? null;
  const local = clamd ?? localClamdFor(config);
  if (options.shared && clamd === null && config.clamd.managed && usesLocal(config)) {
    // Only serve's start runs it: an engine on it would fail every scan (closed) after the reload.
    throw new AvgateError('AVG_ERR_CONFIG', 'an engine uses address "local", but the project-local clamd was not started (no engine used it at start): restart avgate');
  }
  /** A command-line run sharing the local clamd with others (LocalClamd.join). */
  let joined = false;
  if (!options.shared && config.clamd.managed && usesLocal(config) && options.localClamd !== 'never') {
    if (options.localClamd === 'if-needed') {
      await local.join();
      joined = true;
    }
    const running = options.localClamd === 'if-needed' && (await local.ping());
    if (!running) {
      log.info({ stateDir: local.stateDir, database: local.dbDir }, 'starting the project-local clamd');
      if (options.localClamd === 'always') local.ownedByServe();
      await local.start(options.signal);
      clamd = local;
      log.info({ pid: local.pid, socket: local.socketPath, tcpPort: local.tcpPort, tempDir: local.tempDir }, 'clamd answers PING');
      // serve keeps it running: a clamd that dies is started again (scans fail closed meanwhile).
      if (options.localClamd === 'always') local.supervise(log.child({ component: 'clamd' }));
    }
  }
  const byId = new Map<string, ScannerEngine>();
  const wanted = new Set<string>(engineReferences(config).flatMap((r) => r.ids));
  try {
    for (const id of wanted) {
      const ec = config.engines[id] as EngineConfig;
      const engine: Engine = ec.type === 'plugin' ? (await loadPlugin(ec.module as string))() : createEngine(ec.type);
      const opts = optionList(ec).map((o) =>
        o.name === 'address' && o.value === LOCAL_ADDRESS ? { name: 'address', value: `unix:${local.socketPath}` } : o,
      );
      // The local clamd's VERSION carries no database version: let the engine fingerprint the directory,
      // and knows its StreamMaxLength, so objects over it are skipped without racing clamd's close.
      if (opts.some((o) => o.value === `unix:${local.socketPath}`)) {
        if (!opts.some((o) => o.name === 'database-dir')) opts.push({ name: 'database-dir', value: local.dbDir });
        if (!opts.some((o) => o.name === 'stream-max-length')) {
          opts.push({ name: 'stream-max-length', value: config.clamd['stream-max-length'] });
        }
      }
      engine.configure(opts);
      if (opts.some((o) => o.value === `unix:${local.socketPath}`) && !opts.some((o) => o.name === 'database-dir' && o.value !== local.dbDir)) {
        // Changed files in its directory (an updater of the admin's, a copied .ndb) are loaded
        // by RELOAD before verdicts are cached under them.
        engine.useDatabaseLoader?.(local, (err) =>
          log.warn({ engine: id, err: messageOf(err) }, 'clamd did not load the changed signature files; nothing is cached until it does (tried again after version-check-interval)'),
        );
      }
      await engine.init();
      byId.set(id, { id, engine, cache: ec.cache });
      log.info({ engine: id, ...engine.info() }, 'engine ready');
    }
  } catch (err) {
    for (const e of byId.values()) await e.engine.close().catch(() => undefined);
    if (joined) await local.leave(clamd !== null).catch(() => undefined);
    else if (!options.shared) await clamd?.stop();
    throw err;
  }
  const cache = options.shared
    ? options.shared.cache
    : config.cache.enabled && options.withoutCache !== true
    ? new VerdictCache({
        memoryEntries: config.cache['memory-entries'],
        sqlitePath: config.cache.sqlite === null ? null : resolve(config['state-dir'], config.cache.sqlite),
        sqliteMaxEntries: config.cache['sqlite-max-entries'],
        maxAgeMs: config.cache['max-age'],
        sqliteCacheBytes: config['sqlite-cache-size'],
        shared: redis === null ? null : new RedisLevel({ ...redis, maxAgeMs: config.cache['max-age'], log: log.child({ component: 'cache' }) }),
      })
    : null;
  const limits = {
    maxCheckedSize: config.scan['max-checked-size'],
    scanTimeoutMs: config.scan['scan-timeout'],
    maxConcurrentScans: config.scan['max-concurrent-scans'],
    maxQueue: config.scan['max-queue'],
    contextIdleTimeoutMs: config.scan['context-idle-timeout'],
  };
  const scanners = new Map<string, { scanner: Scanner; engines: ScannerEngine[] }>();
  const scannerFor = (ids: readonly string[] | null) => {
    const list = ids ?? config.scan.engines;
    const key = list.join(',');
    let entry = scanners.get(key);
    if (!entry) {
      const engines = list.map((id) => {
        const e = byId.get(id);
        if (!e) throw new AvgateError('AVG_ERR_ENGINE_UNKNOWN', `no engine "${id}" in engines`);
        return e;
      });
      const scannerOptions = { stats: options.stats ?? null, ...(options.defaultOrigin ? { defaultOrigin: options.defaultOrigin } : {}) };
      entry = { scanner: new Scanner(engines, limits, cache, log.child({ component: 'scanner', engines: key }), scannerOptions), engines };
      scanners.set(key, entry);
    }
    return entry;
  };
  const main = scannerFor(null);
  const allEngines = [...byId.values()];
  return {
    config,
    scanner: main.scanner,
    engines: main.engines,
    allEngines,
    scannerFor,
    cache,
    clamd,
    async close(closeOpts = {}) {
      for (const { scanner } of scanners.values()) await scanner.close({ waitForScans: closeOpts.keepShared === true });
      for (const e of allEngines) {
        try {
          await e.engine.close();
        } catch (err) {
          log.warn({ engine: e.id, err: messageOf(err) }, 'engine close failed');
        }
      }
      if (closeOpts.keepShared) return;
      cache?.close();
      if (joined) await local.leave(clamd !== null);
      else await clamd?.stop();
    },
  };
}

/** What a connection to `cache.redis` needs, for the level and for `config check`'s probe. */
export function redisConnectOptions(r: RedisCacheConfig): Omit<RedisLevelOptions, 'maxAgeMs' | 'log'> {
  const target = parseRedisUrl(r.url);
  if ('error' in target) throw new AvgateError('AVG_ERR_CONFIG', `cache.redis.url: ${target.error}`); // the schema refused it already
  return {
    target,
    label: maskUrlPassword(r.url),
    keyPrefix: r['key-prefix'],
    timeoutMs: r.timeout,
    connectTimeoutMs: r['connect-timeout'],
    maxPendingWrites: r['max-pending-writes'],
    maxPendingLookups: r['max-pending-lookups'],
    downAfterTimeouts: r['down-after-timeouts'],
    reconnectDelayMs: r['reconnect-delay'],
    reconnectMaxDelayMs: r['reconnect-max-delay'],
    maxValueSize: r['max-value-size'],
    tlsCa: r['tls-ca'] === null ? null : readPem(r['tls-ca'], 'cache.redis.tls-ca'),
  };
}

/** For `config check`: the clamd StreamMaxLength as bytes, to warn when max-checked-size exceeds it. */
export function streamMaxLengthBytes(config: Readonly<Config>): number | null {
  return parseSize(config.clamd['stream-max-length']);
}
