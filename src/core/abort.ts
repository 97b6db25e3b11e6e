import { AvgateError } from './errors.js';

/**
 * The promise's outcome, or a rejection (AVG_ERR_ENGINE_TIMEOUT, "scan timeout") as soon as
 * `signal` aborts; the promise itself goes on (for others waiting on it, or to be reaped).
 * Without a signal, the promise as it is.
 */
export function raceAbort<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(new AvgateError('AVG_ERR_ENGINE_TIMEOUT', 'scan timeout'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new AvgateError('AVG_ERR_ENGINE_TIMEOUT', 'scan timeout'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
