import { connect, createServer, isIPv4, type Server, type Socket } from 'node:net';
import { plainAddress } from './wire.js';

/**
 * Data connections of the FTP proxy. Both ends terminate at the proxy: towards the client the
 * proxy listens (PASV/EPSV) or connects back (PORT/EPRT), towards the server it always uses
 * passive mode. Addresses are checked so that neither end can point a data connection elsewhere
 * (the FTP bounce attack, CERT CA-1997-27; data-port stealing on passive listeners).
 */

export class DataError extends Error {}

/** Where the client wants its data connection: a listener of ours, or its own address and port. */
export interface ClientDataSetup {
  readonly kind: 'passive' | 'active';
  /** Resolves to the connected socket (only from the client's own address). */
  connect(timeoutMs: number, signal: AbortSignal): Promise<Socket>;
  close(): void;
}

/**
 * A listener for one passive data connection. Connections from any address other than the
 * client's control connection are closed at once and the wait goes on: another host cannot steal
 * the transfer by connecting first.
 */
export class PassiveListener implements ClientDataSetup {
  readonly kind = 'passive';
  private waiting: ((s: Socket) => void) | null = null;
  private accepted: Socket | null = null;
  private closed = false;

  private constructor(
    private readonly server: Server,
    readonly host: string,
    readonly port: number,
    private readonly clientAddress: string,
  ) {
    server.on('connection', (s: Socket) => {
      s.on('error', () => undefined);
      if (this.accepted || this.closed || plainAddress(s.remoteAddress ?? '') !== this.clientAddress) {
        s.destroy();
        return;
      }
      this.accepted = s;
      // One connection per listener: stop listening right away.
      server.close();
      const w = this.waiting;
      this.waiting = null;
      w?.(s);
    });
    server.on('error', () => undefined);
  }

  /** Listens on `host` (the address the client reached the proxy at), on a port of `range` or any. */
  static async open(host: string, clientAddress: string, range: { min: number; max: number } | null): Promise<PassiveListener> {
    const tries = range ? Math.min(64, range.max - range.min + 1) : 1;
    let lastError: unknown = null;
    for (let i = 0; i < tries; i++) {
      const port = range ? range.min + Math.floor(Math.random() * (range.max - range.min + 1)) : 0;
      const server = createServer({ pauseOnConnect: true });
      try {
        const bound = await new Promise<number>((resolve, reject) => {
          server.once('error', reject);
          server.listen({ host, port, backlog: 4, exclusive: true }, () => {
            server.off('error', reject);
            const a = server.address();
            resolve(typeof a === 'object' && a ? a.port : port);
          });
        });
        return new PassiveListener(server, host, bound, plainAddress(clientAddress));
      } catch (err) {
        lastError = err;
        server.close();
      }
    }
    throw new DataError(`no passive data port free: ${(lastError as Error | null)?.message ?? 'range exhausted'}`);
  }

  get ipv4(): boolean {
    return isIPv4(plainAddress(this.host));
  }

  connect(timeoutMs: number, signal: AbortSignal): Promise<Socket> {
    if (this.accepted) return Promise.resolve(this.accepted);
    if (this.closed) return Promise.reject(new DataError('data listener closed'));
    return new Promise<Socket>((resolve, reject) => {
      const done = (err: Error | null, s?: Socket) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        this.waiting = null;
        if (err) reject(err);
        else resolve(s as Socket);
      };
      const onAbort = () => done(new DataError('session ended'));
      const timer = setTimeout(() => done(new DataError(`the client did not open the data connection within ${timeoutMs} ms`)), timeoutMs);
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting = (s) => done(null, s);
    });
  }

  close(): void {
    this.closed = true;
    this.server.close();
    if (this.accepted && !this.accepted.destroyed && this.accepted.isPaused()) this.accepted.destroy();
  }
}

/** The client's PORT/EPRT address: connected to only once a transfer needs it. */
export class ActiveTarget implements ClientDataSetup {
  readonly kind = 'active';
  private socket: Socket | null = null;

  constructor(
    readonly host: string,
    readonly port: number,
    /** The proxy's address on the client's control connection: data comes from the same one. */
    private readonly localAddress: string,
  ) {}

  async connect(timeoutMs: number, signal: AbortSignal): Promise<Socket> {
    this.socket = await connectData(this.host, this.port, timeoutMs, signal, this.localAddress);
    return this.socket;
  }

  close(): void {
    if (this.socket && !this.socket.destroyed && this.socket.isPaused()) this.socket.destroy();
  }
}

/** A TCP connection for data (paused on connect: the caller decides when bytes flow). */
export function connectData(host: string, port: number, timeoutMs: number, signal: AbortSignal, localAddress?: string): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const s = connect({ host, port, ...(localAddress ? { localAddress: plainAddress(localAddress) } : {}) });
    s.pause();
    const fail = (message: string) => {
      cleanup();
      s.destroy();
      reject(new DataError(message));
    };
    const timer = setTimeout(() => fail(`connect to ${host}:${port} timed out after ${timeoutMs} ms`), timeoutMs);
    const onError = (err: NodeJS.ErrnoException) => fail(`connect to ${host}:${port}: ${err.code ?? err.message}`);
    const onAbort = () => fail('session ended');
    const cleanup = () => {
      clearTimeout(timer);
      s.off('error', onError);
      signal.removeEventListener('abort', onAbort);
    };
    s.once('error', onError);
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    s.once('connect', () => {
      cleanup();
      s.on('error', () => undefined);
      resolve(s);
    });
  });
}

/**
 * The bounce check for PORT/EPRT: the data address must be the client's own address and the port
 * an unprivileged one, so the proxy can never be made to connect to a third host or to a service
 * port (SMTP, ...) on the client's host with attacker-chosen bytes.
 */
export function activeAddressAllowed(target: { host: string; port: number }, clientAddress: string): string | null {
  if (plainAddress(target.host) !== plainAddress(clientAddress)) return `data address ${target.host} is not the client's own address`;
  if (target.port < 1024) return `data port ${target.port} is a privileged port`;
  return null;
}
