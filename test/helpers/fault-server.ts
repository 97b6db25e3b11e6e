import { createServer, type Server, type Socket } from 'node:net';

export interface FaultServer {
  port: number;
  address: string;
  /** Connections accepted so far. */
  connections: number;
  close(): Promise<void>;
}

/**
 * A loopback TCP server that misbehaves on purpose, for failures a real engine will not produce
 * on demand: `onConnection` decides what each accepted socket gets.
 */
export async function startFaultServer(onConnection: (socket: Socket) => void): Promise<FaultServer> {
  const sockets = new Set<Socket>();
  const state = { connections: 0 };
  const server: Server = createServer((socket) => {
    state.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (!addr || typeof addr !== 'object') throw new Error('no address');
  return {
    port: addr.port,
    address: `127.0.0.1:${addr.port}`,
    get connections() {
      return state.connections;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A port on which nothing listens (bound, then closed). */
export async function closedPort(): Promise<number> {
  const s = await startFaultServer(() => undefined);
  await s.close();
  return s.port;
}

/** Calls fn once the socket has received at least `bytes` bytes. */
export function afterBytes(socket: Socket, bytes: number, fn: () => void): void {
  let seen = 0;
  let fired = false;
  socket.on('data', (d: Buffer) => {
    seen += d.length;
    if (!fired && seen >= bytes) {
      fired = true;
      fn();
    }
  });
}
