import { connect, createServer, type Socket } from 'node:net';
import { AvgateError } from './errors.js';

export type ConnectTarget = { path: string } | { host: string; port: number };

/**
 * Connects with its own timeout (separate from any scan timeout) and an abort signal. Every
 * failure is AVG_ERR_ENGINE_CONNECT with `label: reason` (ECONNREFUSED, ENOENT, connect timeout).
 */
export function connectWithTimeout(
  target: ConnectTarget,
  options: { timeoutMs: number; label: string; signal?: AbortSignal },
): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const s = 'path' in target ? connect(target.path) : connect(target.port, target.host);
    const fail = (message: string) => {
      cleanup();
      s.destroy();
      reject(new AvgateError('AVG_ERR_ENGINE_CONNECT', `${options.label}: ${message}`));
    };
    const timer = setTimeout(() => fail(`connect timeout after ${options.timeoutMs} ms`), options.timeoutMs);
    const onError = (err: NodeJS.ErrnoException) => fail(err.code ?? err.message);
    const onAbort = () => fail('aborted while connecting');
    const cleanup = () => {
      clearTimeout(timer);
      s.off('error', onError);
      options.signal?.removeEventListener('abort', onAbort);
    };
    s.once('error', onError);
    if (options.signal?.aborted) {
      onAbort();
      return;
    }
    options.signal?.addEventListener('abort', onAbort, { once: true });
    s.once('connect', () => {
      cleanup();
      resolve(s);
    });
  });
}

/** A loopback port free right now (bound to port 0, then released). */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}
