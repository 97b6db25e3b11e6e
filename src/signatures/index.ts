import { join, resolve } from 'node:path';
import type { Config } from '../config/schema.js';
import { AvgateError, messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import type { Engine } from '../engines/types.js';
import { localClamdFor } from '../runtime.js';
import { readUpdaterState, SignatureUpdater } from './updater.js';
import { metricFamily } from '../core/prometheus-text.js';

export { readUpdaterState, sourceNames, SignatureUpdater, type UpdateReport, type SourceReport, type UpdaterState } from './updater.js';

/** <state-dir>/signatures: the updater's state.json. */
export function signaturesStateDir(config: Readonly<Config>): string {
  return join(resolve(config['state-dir']), 'signatures');
}

/**
 * The updater for the project-local clamd's database directory; after a reload the given engines
 * forget their cached signature version. Throws AVG_ERR_CONFIG when avgate does not manage clamd.
 */
export function updaterFor(config: Readonly<Config>, log: Logger, engines: readonly Engine[] = []): SignatureUpdater {
  if (!config.clamd.managed) {
    throw new AvgateError('AVG_ERR_CONFIG', 'signatures: the updater installs into the project-local clamd\'s database (clamd.managed: true)');
  }
  const local = localClamdFor(config);
  return new SignatureUpdater({
    config: config.signatures,
    dbDir: local.dbDir,
    stateDir: signaturesStateDir(config),
    log,
    reload: async () => {
      if (!(await local.ping())) return false; // not running: it loads the files when it starts
      await local.reload();
      for (const e of engines) e.invalidateVersion?.();
      return true;
    },
  });
}

/**
 * avgate serve: an update at start and every signatures.interval (when set and there are sources).
 * Returns the stop function (aborts an update under way).
 */
export function startSignatureUpdates(config: Readonly<Config>, engines: readonly Engine[], managedClamd: boolean, log: Logger): () => Promise<void> {
  const s = config.signatures;
  if (s.interval <= 0 || s.sources.length === 0) return async () => undefined;
  if (!managedClamd) {
    log.warn('signatures.interval is set but this avgate does not run the project-local clamd: no signature updates');
    return async () => undefined;
  }
  const updater = updaterFor(config, log, engines);
  const abort = new AbortController();
  let timer: NodeJS.Timeout | null = null;
  let current: Promise<unknown> | null = null;
  const tick = () => {
    current = updater
      .update(abort.signal)
      .catch((err: unknown) => {
        if (!abort.signal.aborted) log.error({ err: messageOf(err) }, 'signature update failed');
      })
      .finally(() => {
        current = null;
        if (!abort.signal.aborted) {
          timer = setTimeout(tick, s.interval);
          timer.unref();
        }
      });
  };
  tick();
  return async () => {
    abort.abort();
    if (timer) clearTimeout(timer);
    await current;
  };
}

/**
 * The updater's gauges for /metrics (empty without sources): when it last ran, and its sources by
 * that run's outcome, so an alert can fire on a failing mirror or an updater that stopped.
 */
export async function signatureMetrics(config: Readonly<Config>): Promise<string> {
  if (config.signatures.sources.length === 0) return '';
  const state = await readUpdaterState(signaturesStateDir(config));
  const run = state.lastRun;
  const count = (o: string) => run?.sources.filter((s) => s.outcome === o).length ?? 0;
  const lines: string[] = [];
  metricFamily(lines, 'avgate_signatures_last_run_timestamp_seconds', 'gauge', 'When the signature updater last finished a run (0: never).', [
    ['', run ? Math.floor(Date.parse(run.at) / 1000) : 0],
  ]);
  metricFamily(
    lines,
    'avgate_signatures_sources',
    'gauge',
    'Signature sources by the outcome of the last run.',
    ['installed', 'unchanged', 'failed', 'removed'].map((o): [string, number] => [`{outcome="${o}"}`, count(o)]),
  );
  metricFamily(lines, 'avgate_signatures_installed_files', 'gauge', 'Database files the updater has installed.', [['', Object.keys(state.files).length]]);
  return `${lines.join('\n')}\n`;
}
