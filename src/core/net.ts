import { connect, createServer, type Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import { AvgateError, messageOf } from './errors.js';

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

/**
 * The server side of an in-protocol TLS upgrade (IMAP STARTTLS, POP3 STLS) on an accepted socket,
 * once the go-ahead is out: resolves with the TLS socket when the handshake is done; rejects (the
 * socket destroyed) when it fails, the client closes or `timeoutMs` passes.
 */
export async function acceptTls(plain: Socket, secureContext: SecureContext, timeoutMs: number): Promise<TLSSocket> {
  const secure = new TLSSocket(plain, { isServer: true, secureContext });
  secure.on('error', () => undefined); // reported below, then by the session's reader
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('TLS handshake timed out')), timeoutMs);
      const settle = (err: Error | null) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      secure.once('secure', () => settle(null));
      secure.once('error', (err) => settle(new Error(`TLS handshake failed: ${messageOf(err)}`)));
      secure.once('close', () => settle(new Error('client closed during the TLS handshake')));
    });
  } catch (err) {
    secure.destroy();
    throw err;
  }
  return secure;
}
