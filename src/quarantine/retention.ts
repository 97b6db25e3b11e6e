import type { QuarantineConfig } from '../config/quarantine-schema.js';
import { messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import type { PurgeResult, Quarantine } from './types.js';

/** One purge with the configured limits (0 = that limit is off). */
export function purgeByConfig(q: Quarantine, c: QuarantineConfig, actor = 'system', dryRun = false): Promise<PurgeResult> {
  return q.purge({
    ...(c['max-age'] > 0 ? { olderThanMs: c['max-age'] } : {}),
    ...(c['max-total-size'] > 0 ? { maxTotalSize: c['max-total-size'] } : {}),
    actor,
    dryRun,
  });
}

/**
 * `avgate serve`'s retention: a purge at start and every purge-interval, one at a time. Returns
 * the function that stops it (and waits for a purge in progress).
 */
export function startQuarantinePurge(q: Quarantine, c: QuarantineConfig, log: Logger): () => Promise<void> {
  let running: Promise<void> | null = null;
  const run = () => {
    if (running) return;
    running = purgeByConfig(q, c)
      .then((r) => {
        if (r.removed > 0) log.info({ removed: r.removed, bytes: r.bytes }, 'quarantine purged');
      })
      .catch((err: unknown) => log.error({ err: messageOf(err) }, 'quarantine purge failed'))
      .finally(() => (running = null));
  };
  run();
  const timer = setInterval(run, Math.max(c['purge-interval'], 1000));
  timer.unref();
  return async () => {
    clearInterval(timer);
    await running;
  };
}
