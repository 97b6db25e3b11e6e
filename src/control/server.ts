/**
 * The control socket of `avgate serve`: a unix socket in state-dir (mode 0600) through which
 * `avgate reload`, `avgate status` and `avgate stop` reach the running gateway, and by which a
 * second `avgate serve` on the same state-dir finds out that one already runs.
 *
 * Wire format: the client sends one command line (`reload`, `status`, `stop`), the server answers
 * one JSON line and closes. A request line is at most MAX_REQUEST bytes and must arrive within
 * REQUEST_TIMEOUT_MS; anything else gets `{ ok: false, error }`. Only the socket's owner (and
 * root) can connect: the file is created with mode 0600.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import net from 'node:net';
import { relative, resolve } from 'node:path';
import { AvgateError, messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';

/** Commands the control socket understands, each answered with one JSON object. */
export const CONTROL_COMMANDS = ['status', 'reload', 'stop'] as const;
export type ControlCommand = (typeof CONTROL_COMMANDS)[number];

export type ControlHandlers = Record<ControlCommand, () => Promise<object> | object>;

/** A command line longer than this is refused (the commands are short words). */
const MAX_REQUEST = 256;
/** A client that does not finish its command line within this is disconnected. */
const REQUEST_TIMEOUT_MS = 5_000;
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
export const MAX_SOCKET_PATH = 107;

/**
 * Refuses to go on when another avgate answers on path (it serves from the same state-dir), and
 * removes a socket file left by one that died. Run before anything else is started.
 */
export async function claimControlSocket(path: string, timeoutMs = 2_000): Promise<void> {
  socketAddress(path);
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new AvgateError('AVG_ERR_CONTROL', `control socket ${path}: ${messageOf(err)}`, { cause: err });
  }
  if (!isSocket) throw new AvgateError('AVG_ERR_CONTROL', `control socket ${path} exists and is not a socket: move it away, or set control-socket`);
  let reply: ControlReply;
  try {
    reply = await controlRequest(path, 'status', timeoutMs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // Nobody listens: a socket file left by an avgate that was killed.
    if (code === 'ECONNREFUSED' || code === 'ENOENT') {
      try {
        unlinkSync(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new AvgateError('AVG_ERR_CONTROL', `stale control socket ${path} cannot be removed: ${messageOf(e)}`);
      }
      return;
    }
    // Something holds the socket but does not answer in time: do not take it away from it.
    throw new AvgateError('AVG_ERR_CONTROL', `control socket ${path} is in use but did not answer (${messageOf(err)}): is another avgate starting or stopping with the same state-dir?`, { cause: err });
  }
  const pid = typeof reply['pid'] === 'number' ? ` (pid ${reply['pid']})` : '';
  throw new AvgateError('AVG_ERR_CONTROL', `another avgate${pid} already serves from this state-dir (its control socket ${path} answers): stop it first, or give this one its own state-dir`);
}

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

/**
 * The name to bind or connect to: the absolute path, or when that is over a unix socket's limit
 * (a deep checkout), the same file relative to the working directory.
 */
export function socketAddress(path: string): string {
  if (Buffer.byteLength(path) <= MAX_SOCKET_PATH) return path;
  const rel = relative(process.cwd(), path);
  if (Buffer.byteLength(rel) <= MAX_SOCKET_PATH) return rel;
  throw new AvgateError('AVG_ERR_CONTROL', `control socket path ${path} is longer than ${MAX_SOCKET_PATH} bytes (a unix socket's limit): set control-socket to a shorter path, or null`);
}

/** Listens on path (claimControlSocket first) with mode 0600 and answers commands with handlers. */
export async function listenControlSocket(path: string, handlers: ControlHandlers, log: Logger): Promise<ControlServer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    serveOne(socket, handlers, log);
  });
  // The file gets mode 0600 from the start: no moment in which others could connect.
  const mask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketAddress(path), () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    throw new AvgateError('AVG_ERR_CONTROL', `control socket ${path} cannot be opened: ${messageOf(err)}`, { cause: err });
  } finally {
    process.umask(mask);
  }
  await chmod(path, 0o600);
  const ino = lstatSync(path).ino;
  server.on('error', (err) => log.error({ err: messageOf(err), path }, 'control socket failed'));
  let closed: Promise<void> | null = null;
  return {
    path,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
        // Removed only while it is still ours (not one a later avgate put in its place).
        try {
          if (lstatSync(path).ino === ino) unlinkSync(path);
        } catch {
          // already gone
        }
      })),
  };
}

function serveOne(socket: net.Socket, handlers: ControlHandlers, log: Logger): void {
  let line = '';
  let answered = false;
  const answer = (reply: object) => {
    if (answered) return;
    answered = true;
    socket.setTimeout(0);
    socket.end(`${JSON.stringify(reply)}\n`);
  };
  socket.setTimeout(REQUEST_TIMEOUT_MS, () => {
    answer({ ok: false, error: `no command line within ${REQUEST_TIMEOUT_MS} ms` });
    socket.destroySoon();
  });
  socket.on('error', () => socket.destroy());
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    if (answered) return;
    line += chunk;
    const nl = line.indexOf('\n');
    if (nl < 0) {
      if (line.length > MAX_REQUEST) answer({ ok: false, error: `command line longer than ${MAX_REQUEST} bytes` });
      return;
    }
    const command = line.slice(0, nl).trim();
    if (!(CONTROL_COMMANDS as readonly string[]).includes(command)) {
      answer({ ok: false, error: `unknown command ${JSON.stringify(command.slice(0, 40))}; known: ${CONTROL_COMMANDS.join(', ')}` });
      return;
    }
    socket.pause();
    if (command !== 'status') log.info({ command }, 'control socket: command received');
    Promise.resolve()
      .then(() => handlers[command as ControlCommand]())
      .then(answer, (err: unknown) => {
        log.error({ command, err: messageOf(err) }, 'control socket: command failed');
        answer({ ok: false, error: messageOf(err) });
      });
  });
}

export type ControlReply = Record<string, unknown>;

/** Sends one command and returns the parsed reply (rejects with the socket's error code on connect failures). */
export function controlRequest(path: string, command: string, timeoutMs: number): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketAddress(path));
    let text = '';
    let done = false;
    const finish = (err: Error | null, value?: ControlReply) => {
      if (done) return;
      done = true;
      socket.destroy();
      if (err) reject(err);
      else resolve(value as ControlReply);
    };
    socket.setTimeout(timeoutMs, () => finish(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${command}\n`));
    socket.on('data', (d: string) => {
      text += d;
      if (text.length > 1 << 20) finish(new Error('the answer is longer than 1 MiB'));
    });
    socket.on('error', (err) => finish(err));
    socket.on('end', () => {
      try {
        const value = JSON.parse(text) as unknown;
        if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('not a JSON object');
        finish(null, value as ControlReply);
      } catch (err) {
        finish(new Error(`the control socket's answer is not valid (${messageOf(err)}): ${JSON.stringify(text.slice(0, 200))}`));
      }
    });
  });
}

/** Where the control socket of a config lives (null: none); relative paths are under state-dir. */
export function controlSocketPath(config: { 'state-dir': string; 'control-socket': string | null }): string | null {
  const value = config['control-socket'];
  return value === null ? null : resolve(config['state-dir'], value);
}
