import type { ListenOptions, Server } from 'node:net';
import { AvgateError } from './errors.js';

/**
 * The listening sockets of one generation of front ends. A configuration reload builds a new
 * generation beside the running one; an address both use (same host and port; for port 0, the
 * same front end on the same host, which keeps the port it was given) is handed over when the new
 * generation takes over (`takeOver`), so the port never closes and no connection attempt is
 * refused: new connections go to the new front end, connections already accepted stay with the
 * old one until they end.
 *
 * The hand-over gives the new server the old one's listening handle (`server.listen(oldServer)`,
 * node's documented form for listening on an existing handle) and takes the handle from the old
 * server, so that the old server's close() stops nothing but still waits for its own connections
 * to drain, as each front end's graceful close expects. test/unit/listen.test.ts checks that
 * node behaves so.
 */
export class Listeners {
  /** Servers this generation bound or will take over, by address key. */
  private readonly servers = new Map<string, Server>();
  /** Addresses the previous generation listens on: taken over by takeOver(). */
  private readonly pending = new Map<string, { server: Server; from: Server }>();
  private tookOver = false;

  /**
   * `previous`: the running generation, whose addresses this one takes over. Forgotten at
   * takeOver: otherwise every generation would keep the one before it (its servers, front ends
   * and engines) alive, a chain as long as the number of reloads.
   */
  constructor(private previous: Listeners | null = null) {}

  /**
   * Binds `server` (or, when the previous generation listens on this address, marks it for the
   * hand-over); returns the bound port. `what` names the front end in the error (`icap listen
   * 127.0.0.1:1344: EADDRINUSE`).
   */
  async listen(server: Server, host: string, port: number, what: string): Promise<number> {
    const key = addressKey(host, port, what);
    const from = this.previous?.servers.get(key);
    if (this.servers.has(key)) {
      throw new AvgateError('AVG_ERR_CONFIG', `${what} listen ${host}:${port}: another front end listens there`);
    }
    if (from && !this.tookOver) {
      this.pending.set(key, { server, from });
      this.servers.set(key, server);
      return portOf(from, port);
    }
    await bindServer(server, { port, host }).catch((err: NodeJS.ErrnoException) => {
      throw new AvgateError('AVG_ERR_CONFIG', `${what} listen ${host}:${port}: ${err.code ?? err.message}`);
    });
    const bound = portOf(server, port);
    this.servers.set(key, server);
    return bound;
  }

  /**
   * Hands the addresses both generations use from the previous one to this one. After it, the
   * previous generation's close() leaves those ports open and only waits for its connections.
   * Returns the addresses that could not be handed over (with node's reason): they stay with
   * the previous generation and close with it.
   */
  async takeOver(): Promise<string[]> {
    this.tookOver = true;
    const failed: string[] = [];
    for (const [key, { server, from }] of this.pending) {
      try {
        await bindServer(server, from);
      } catch (err) {
        failed.push(`${key}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        this.servers.delete(key);
        continue;
      }
      // The handle is the new server's now: the old server's close() must not close it.
      (from as unknown as { _handle: unknown })._handle = null;
    }
    this.pending.clear();
    this.previous = null;
    return failed;
  }

  /** The addresses of this generation (for logs and tests). */
  get addresses(): string[] {
    return [...this.servers.keys()];
  }
}

/** host|port; for port 0 (any free port) the front end and host, so a reload keeps the port it got. */
function addressKey(host: string, port: number, what: string): string {
  return port === 0 ? `${what}|${host.toLowerCase()}|0` : `${host.toLowerCase()}|${port}`;
}

function portOf(server: Server, fallback: number): number {
  const a = server.address();
  return typeof a === 'object' && a ? a.port : fallback;
}

/**
 * `server.listen(target)` as a promise: resolves once it listens, rejects with the bind error
 * (EADDRINUSE ...) and leaves no error listener behind. `target` may be another server, whose
 * listening handle is then taken over (see Listeners).
 */
export function bindServer(server: Server, target: ListenOptions | Server): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(target, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * `listeners.listen(...)`, or a plain bind when a front end runs on its own (tests, `avgate scan`
 * has none): one error format either way.
 */
export function listenOn(listeners: Listeners | null | undefined, server: Server, host: string, port: number, what: string): Promise<number> {
  return (listeners ?? new Listeners()).listen(server, host, port, what);
}
