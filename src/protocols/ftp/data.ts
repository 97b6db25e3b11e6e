import { connect, createServer, isIPv4, type Server, type Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { RateAllowance } from '../../core/rate-allowance.js';
import { bindServer } from '../../core/listen.js';
import { plainAddress } from './wire.js';

/**
 * Data connections of the FTP proxy. Both ends terminate at the proxy: towards the client the
 * proxy listens (PASV/EPSV) or connects back (PORT/EPRT), towards the server it always uses
 * passive mode. Addresses are checked so that neither end can point a data connection elsewhere
 * (the FTP bounce attack, CERT CA-1997-27; data-port stealing on passive listeners).
 */

export class DataError extends Error {}

/** The peer reset a data connection (TCP RST): what arrived may be only the first part of the data. */
export class DataReset extends DataError {}

/**
 * How long a passive listener still waits for the client after a connection that was already
 * reset when it was accepted (see PassiveListener).
 */
export const DEAD_ARRIVAL_GRACE_MS = 1000;

interface PeerHandle {
  getpeername?(out: object): number;
}

/**
 * False once the socket's TCP connection is closed in the kernel. A reset from the peer closes it
 * at once and getpeername(2) then fails (ENOTCONN), while after the peer's FIN the connection waits
 * in CLOSE_WAIT and still has its peer until this side closes too. Node offers no public call for
 * this, so the socket's handle is asked directly; a TLS socket's handle passes the call on to the
 * TCP handle under it. Without a handle (or the call) the answer is true: nothing is claimed.
 */
export function peerConnected(s: Socket): boolean {
  const handle = (s as unknown as { _handle?: PeerHandle | null })._handle;
  if (!handle || typeof handle.getpeername !== 'function') return true;
  return handle.getpeername({}) === 0;
}

/**
 * The pace a data connection must keep while the proxy waits for its bytes (see dataChunks).
 * `idleMs`: the longest wait for the next bytes (`timeouts.data-idle`). `minRate` (bytes per second,
 * `upload-min-rate`; 0 = none): the waits may add up to `idleMs` plus 1 s for every `minRate` bytes
 * received, so a peer that sends a byte now and then, each gap below `idleMs`, is still cut.
 */
export interface DataPace {
  idleMs: number;
  minRate?: number;
}

/** The peer kept the proxy waiting past its DataPace: no bytes for `idleMs`, or slower than `minRate`. */
export class DataTimeout extends DataError {}

/**
 * The chunks of a data connection up to its end. A connection the peer ended by a reset rejects
 * with DataReset instead of ending, also when Node reports the reset as a plain end: libuv takes a
 * hang-up seen together with a short read for the end of the stream and never reads the pending
 * ECONNRESET (libuv issue 2319). Which of the two it was is decided when 'end' is emitted: this side
 * has not closed anything yet then (Node's own half-close follows on the next tick), so a closed
 * connection can only mean the peer's reset. Except on a TLS 1.3 connection the proxy serves, where
 * a client's orderly close may be a reset too (resetMayBeOrderly).
 *
 * With `pace`, the socket is destroyed with DataTimeout when the peer does not keep it. Only the time
 * spent waiting for the next chunk counts: while the consumer is busy (writing to a receiver that
 * reads slowly, a spool write) the peer is held back by the proxy, which is not its fault.
 */
export async function* dataChunks(s: Socket, pace?: DataPace): AsyncGenerator<Buffer, void, undefined> {
  let reset = false;
  const onEnd = () => {
    reset = !peerConnected(s) && !resetMayBeOrderly(s);
  };
  s.once('end', onEnd);
  const idleMs = pace?.idleMs ?? 0;
  const rate = idleMs > 0 && (pace?.minRate ?? 0) > 0 ? new RateAllowance(idleMs, pace?.minRate ?? 0) : null;
  let since = 0;
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    if (idleMs <= 0) return;
    since = performance.now();
    // The wait allowed now: a gap of at most idleMs, and what is left of the rate allowance.
    const ms = Math.max(1, Math.min(idleMs, rate?.leftMs() ?? idleMs));
    const why = ms < idleMs && rate ? rate.describe('data') : `no data for ${idleMs} ms`;
    timer = setTimeout(() => s.destroy(new DataTimeout(why)), ms);
  };
  const disarm = () => {
    if (timer === undefined) return;
    clearTimeout(timer);
    timer = undefined;
    rate?.waited(performance.now() - since);
  };
  try {
    arm();
    for await (const chunk of s as AsyncIterable<Buffer>) {
      disarm();
      rate?.took(chunk.length);
      yield chunk;
      arm();
    }
  } finally {
    disarm();
    s.off('end', onEnd);
  }
  if (reset) throw new DataReset('the peer reset the data connection');
}

/** The TCP socket under each TLS data connection, for resetData. */
const tcpUnder = new WeakMap<Socket, Socket>();
/** TLS data connections the proxy serves (a client's, after PROT P): the proxy is the TLS server. */
const servedTls = new WeakSet<Socket>();

/**
 * Remembers the TCP socket `raw` under the TLS socket `secure` (for resetData) and which end of TLS
 * the proxy is (for dataChunks); returns `secure`.
 */
export function overTcp<T extends Socket>(secure: T, raw: Socket, proxyIs: 'client' | 'server'): T {
  tcpUnder.set(secure, raw);
  if (proxyIs === 'server') servedTls.add(secure);
  return secure;
}

/**
 * True where a peer's orderly close can arrive as a reset: on a TLS 1.3 connection the proxy serves,
 * the session tickets it sent after the handshake may still sit unread at a client that only writes,
 * and closing a socket with unread data sends a reset, close_notify or not. Node does not tell whether
 * a close_notify came, so there a reset cannot be told from an abort and is left as an end.
 */
function resetMayBeOrderly(s: Socket): boolean {
  return servedTls.has(s) && s instanceof TLSSocket && s.getProtocol() === 'TLSv1.3';
}

/**
 * Cuts a data connection with a TCP reset, so the peer sees the transfer fail and never a clean
 * end. For a TLS connection the reset goes out on the TCP socket under it (a TLS socket cannot send
 * one itself); one whose TCP socket is not known is only destroyed.
 */
export function resetData(s: Socket): void {
  const raw = tcpUnder.get(s);
  if (raw) {
    if (!raw.destroyed) raw.resetAndDestroy();
    s.destroy();
  } else if (s instanceof TLSSocket) s.destroy();
  else if (!s.destroyed) s.resetAndDestroy();
}

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
 *
 * A connection the peer reset before the proxy accepted it arrives without an address (the kernel
 * has forgotten its peer), so whose it was cannot be told. It is closed like a stranger's, but the
 * wait for the client is cut to DEAD_ARRIVAL_GRACE_MS from then on: a client that reset its data
 * connection does not open another one, and waiting out the whole data-connect timeout would only
 * delay its 425. A client whose own connection is still on its way has that long to arrive.
 */
export class PassiveListener implements ClientDataSetup {
  readonly kind = 'passive';
  private waiting: { take(s: Socket): void; deadArrival(): void } | null = null;
  private accepted: Socket | null = null;
  private closed = false;
  /** A connection already reset when accepted has come in. */
  private deadArrived = false;

  private constructor(
    private readonly server: Server,
    readonly host: string,
    readonly port: number,
    private readonly clientAddress: string,
  ) {
    server.on('connection', (s: Socket) => {
      s.on('error', () => undefined);
      if (this.accepted || this.closed) {
        s.destroy();
        return;
      }
      if (!peerConnected(s)) {
        s.destroy();
        this.deadArrived = true;
        this.waiting?.deadArrival();
        return;
      }
      if (plainAddress(s.remoteAddress ?? '') !== this.clientAddress) {
        s.destroy();
        return;
      }
      this.accepted = s;
      // One connection per listener: stop listening right away.
      server.close();
      const w = this.waiting;
      this.waiting = null;
      w?.take(s);
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
        await bindServer(server, { host, port, backlog: 4, exclusive: true });
        const a = server.address();
        const bound = typeof a === 'object' && a ? a.port : port;
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
      const deadline = Date.now() + timeoutMs;
      let timer: NodeJS.Timeout | undefined;
      const done = (err: Error | null, s?: Socket) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        this.waiting = null;
        if (err) reject(err);
        else resolve(s as Socket);
      };
      const onAbort = () => done(new DataError('session ended'));
      const wait = (ms: number, why: string) => {
        clearTimeout(timer);
        timer = setTimeout(() => done(new DataError(why)), Math.max(0, ms));
      };
      const cutShort = () => wait(Math.min(DEAD_ARRIVAL_GRACE_MS, deadline - Date.now()), 'a data connection was reset before it was accepted, and the client opened no other');
      if (this.deadArrived) cutShort();
      else wait(timeoutMs, `the client did not open the data connection within ${timeoutMs} ms`);
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting = { take: (s) => done(null, s), deadArrival: cutShort };
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
