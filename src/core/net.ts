import { connect, createServer, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, TLSSocket, type SecureContext } from 'node:tls';
import { AvgateError, messageOf } from './errors.js';

export type ConnectTarget = { path: string } | { host: string; port: number };

/** A host as written in URLs: an IPv6 address in brackets (`[::1]`). */
export function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** `host:port` as written in URLs and messages (`[::1]:21`). */
export function hostPort(host: string, port: number): string {
  return `${urlHost(host)}:${port}`;
}

/** `host:port` or `[v6]:port` read back; throws (the config schema has checked the form already). */
export function splitHostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text.trim());
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new Error(`expected host:port, got "${text}"`);
  return { host: (m[1] ?? m[2]) as string, port };
}

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

/** How a proxy checks the server it connects to over TLS (`tls-verify`, `tls-ca` of the IMAP, POP3 and FTP proxies). */
export interface UpstreamTls {
  verify: boolean;
  /** PEM of the trusted CAs, read at start; null = the system's. */
  ca: Buffer | null;
}

/**
 * The client side of TLS towards a mail or FTP server: on a new connection to host:port (implicit
 * TLS), or on `socket` after the server's go-ahead (STARTTLS, STLS, AUTH TLS) or for an FTPS data
 * connection (`session`: the control connection's, for servers that require its reuse). The
 * certificate is checked against `host` (a name is also sent as SNI) unless `verify` is off.
 * Rejects (the socket destroyed) on a failed handshake or after `timeoutMs`.
 */
export async function connectTls(target: { host: string; port: number; socket?: Socket; session?: Buffer }, tls: UpstreamTls, timeoutMs: number): Promise<TLSSocket> {
  const { host, port, socket, session } = target;
  const s = tlsConnect({
    ...(socket ? { socket } : { host, port }),
    ...(session ? { session } : {}),
    host,
    rejectUnauthorized: tls.verify,
    ...(isIP(host) === 0 ? { servername: host } : {}),
    ...(tls.ca ? { ca: tls.ca } : {}),
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('TLS handshake timeout')), Math.max(1, timeoutMs));
      s.once('secureConnect', () => {
        clearTimeout(t);
        resolve();
      });
      s.once('error', (err) => {
        clearTimeout(t);
        reject(err);
      });
    });
  } catch (err) {
    s.destroy();
    throw err;
  }
  return s;
}
