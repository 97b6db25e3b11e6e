/**
 * The control socket of `avgate serve`: a unix socket in state-dir (mode 0600) through which
 * `avgate reload`, `avgate status` and `avgate stop` reach the running gateway, and by which a
 * second `avgate serve` on the same state-dir finds out that one already runs (it is bound first
 * thing at start, so two starting at once cannot both have it).
 *
 * Wire format: the client sends one command line (`reload`, `status`, `stop`), the server answers
 * one JSON line and closes. A request line is at most MAX_REQUEST bytes and must arrive within
 * REQUEST_TIMEOUT_MS; anything else gets `{ ok: false, error }`. Only the socket's owner (and
 * root) can connect: connecting needs write permission on the file, which is mode 0600.
 */
import { lstatSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import net from 'node:net';
import { relative, resolve } from 'node:path';
import { AvgateError, messageOf } from '../core/errors.js';
import { bindServer } from '../core/listen.js';
import type { Logger } from '../core/logging.js';

/** Commands the control socket understands, each answered with one JSON object. */
/**
 * `signatures`: the signature databases changed under the running avgate (`avgate signatures
 * update` from the CLI): its engines read their signature version again at once, so the verdict
 * cache stops answering from the old one.
 */
export const CONTROL_COMMANDS = ['status', 'reload', 'stop', 'signatures'] as const;
export type ControlCommand = (typeof CONTROL_COMMANDS)[number];

export type ControlHandlers = Record<ControlCommand, () => Promise<object> | object>;

/** A command line longer than this is refused (the commands are short words). */
const MAX_REQUEST = 256;
/** A client that does not finish its command line within this is disconnected. */
const REQUEST_TIMEOUT_MS = 5_000;
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
export const MAX_SOCKET_PATH = 107;

export interface ControlServer {
  readonly path: string;
  /** What the commands do from now on (serve sets them once it is ready). */
  setHandlers(handlers: ControlHandlers): void;
  /** Control connections open now. */
  readonly connections: number;
  close(): Promise<void>;
}

export interface ControlOptions {
  /** A client must send its command line within this (ms). */
  requestTimeoutMs?: number;
  /** How long an existing socket may take to answer the probe (ms). */
  probeTimeoutMs?: number;
  /** `stop` before setHandlers (serve still starting); without it, refused until ready. */
  stopWhileStarting?: () => object;
}

/** At most this many control connections at once (each lives for one command). */
const MAX_CONNECTIONS = 16;
/** After the answer, a peer that does not close its side is cut after this (ms). */
const LINGER_MS = 2_000;

/**
 * Claims path for this avgate and listens on it, before serve starts anything else: when another
 * avgate answers there (it serves from the same state-dir) or binds it first, throws
 * AVG_ERR_CONTROL. A socket file left by one that was killed answers nothing and is replaced.
 * Until setHandlers, `status` answers `starting`, `reload` is refused, and `stop` is refused too
 * unless `opts.stopWhileStarting` takes it.
 */
export async function openControlSocket(path: string, log: Logger, opts: ControlOptions = {}): Promise<ControlServer> {
  const address = socketAddress(path);
  // Held from the probe to the bind: of two avgates starting at once after a crash, one must not
  // remove as stale the socket the other has just bound.
  const unlock = takeLock(`${path}.lock`);
  try {
    await removeStaleSocket(path, opts.probeTimeoutMs ?? 2_000);
    return await bindControlSocket(path, address, log, opts);
  } finally {
    unlock();
  }
}

/** A lock file without a pid in it (being written) counts as held for this long. */
const FRESH_LOCK_MS = 5_000;

/**
 * Takes `lock` (created exclusively, holding this pid) or throws AVG_ERR_CONTROL when a live
 * avgate holds it. A lock whose pid is gone (an avgate killed while it opened its socket) is taken
 * over: renamed away first, and put back if what was renamed turns out to be another's new lock.
 */
function takeLock(lock: string): () => void {
  const mine = `${process.pid}\n`;
  const refuse = (holder: string) =>
    new AvgateError('AVG_ERR_CONTROL', `another avgate${holder} is starting with this state-dir (${lock} exists): give this one its own state-dir, or remove the file if no avgate is starting`);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(lock, mine, { flag: 'wx', mode: 0o600 });
      return () => {
        try {
          if (readFileSync(lock, 'utf8') === mine) unlinkSync(lock);
        } catch {
          // gone already
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new AvgateError('AVG_ERR_CONTROL', `control socket lock ${lock}: ${messageOf(err)}`, { cause: err });
    }
    let text: string;
    let age: number;
    try {
      age = Date.now() - lstatSync(lock).mtimeMs;
      text = readFileSync(lock, 'utf8');
    } catch {
      continue; // removed meanwhile, or a link to nothing: try again (bounded)
    }
    const pid = Number.parseInt(text, 10);
    if (Number.isSafeInteger(pid) && pid > 0 ? processExists(pid) : age < FRESH_LOCK_MS) throw refuse(Number.isSafeInteger(pid) && pid > 0 ? ` (pid ${pid})` : '');
    const aside = `${lock}.stale-${process.pid}`;
    try {
      renameSync(lock, aside);
    } catch {
      continue;
    }
    let moved = '';
    try {
      moved = readFileSync(aside, 'utf8');
    } catch {
      // a link to nothing
    }
    if (moved !== text) {
      // Another avgate took the stale lock over and made its own in between: give it back.
      try {
        renameSync(aside, lock);
      } catch {
        // nothing more to do
      }
      throw refuse('');
    }
    try {
      unlinkSync(aside);
    } catch {
      // gone already
    }
  }
  throw refuse('');
}

/** Whether a process with this pid exists (EPERM: it does, another user's). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function bindControlSocket(path: string, address: string, log: Logger, opts: ControlOptions): Promise<ControlServer> {
  let handlers: ControlHandlers = {
    status: () => ({ ok: true, pid: process.pid, starting: true }),
    reload: () => ({ ok: false, error: 'avgate is starting; try again once it is ready' }),
    // Its engines are not built yet: they read the signature version when they are.
    signatures: () => ({ ok: true, engines: 0, note: 'avgate is starting' }),
    stop: opts.stopWhileStarting ?? (() => ({ ok: false, error: 'avgate is starting; try again once it is ready' })),
  };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    serveOne(socket, (c) => handlers[c](), opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS, log);
  });
  server.maxConnections = MAX_CONNECTIONS;
  try {
    // Binding is atomic: of two avgates starting at once on one state-dir, one gets EADDRINUSE.
    await bindServer(server, { path: address });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new AvgateError('AVG_ERR_CONTROL', `another avgate is starting with this state-dir (its control socket ${path} appeared meanwhile): give this one its own state-dir`, { cause: err });
    }
    throw new AvgateError('AVG_ERR_CONTROL', `control socket ${path} cannot be opened: ${messageOf(err)}`, { cause: err });
  }
  let id: { dev: number; ino: number };
  try {
    // Created with the process umask (022 leaves nobody but the owner the write permission a
    // connect needs), then narrowed: the umask is process-wide, libuv's threads create files too.
    await chmod(path, 0o600);
    const st = lstatSync(path);
    id = { dev: st.dev, ino: st.ino };
  } catch (err) {
    server.close(); // which removes the socket file it bound
    throw new AvgateError('AVG_ERR_CONTROL', `control socket ${path}: ${messageOf(err)}`, { cause: err });
  }
  server.on('error', (err) => log.error({ err: messageOf(err), path }, 'control socket failed'));
  let closed: Promise<void> | null = null;
  return {
    path,
    setHandlers: (h) => {
      handlers = h;
    },
    get connections() {
      return sockets.size;
    },
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
        // Removed only while it is still ours (not one a later avgate put in its place).
        try {
          const st = lstatSync(path);
          if (st.ino === id.ino && st.dev === id.dev) unlinkSync(path);
        } catch {
          // already gone
        }
      })),
  };
}

/** Throws when path is something other than a socket nobody answers on; removes such a socket. */
async function removeStaleSocket(path: string, timeoutMs: number): Promise<void> {
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
    if (code === 'EACCES') {
      throw new AvgateError('AVG_ERR_CONTROL', `control socket ${path} exists and this user may not connect to it (another user's avgate?): give this one its own state-dir`, { cause: err });
    }
    // Something holds the socket but does not answer in time: do not take it away from it.
    throw new AvgateError('AVG_ERR_CONTROL', `control socket ${path} is in use but did not answer (${messageOf(err)}): is another avgate stopping with the same state-dir?`, { cause: err });
  }
  const pid = typeof reply['pid'] === 'number' ? ` (pid ${reply['pid']})` : '';
  const what = reply['starting'] === true ? 'is starting with' : 'already serves from';
  throw new AvgateError('AVG_ERR_CONTROL', `another avgate${pid} ${what} this state-dir (its control socket ${path} answers): stop it first, or give this one its own state-dir`);
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

function serveOne(socket: net.Socket, run: (c: ControlCommand) => Promise<object> | object, requestTimeoutMs: number, log: Logger): void {
  const chunks: Buffer[] = [];
  let length = 0;
  let answered = false;
  const answer = (reply: object) => {
    if (answered) return;
    answered = true;
    socket.end(`${JSON.stringify(reply)}\n`);
    // A peer that keeps its side open does not keep the descriptor.
    socket.setTimeout(LINGER_MS, () => socket.destroy());
  };
  socket.setTimeout(requestTimeoutMs, () => {
    answer({ ok: false, error: `no command line within ${requestTimeoutMs} ms` });
  });
  socket.on('error', () => socket.destroy());
  socket.on('data', (chunk: Buffer) => {
    if (answered) return;
    chunks.push(chunk);
    length += chunk.length;
    const all = Buffer.concat(chunks, length);
    const nl = all.indexOf(10);
    if ((nl < 0 ? length : nl) > MAX_REQUEST) {
      answer({ ok: false, error: `command line longer than ${MAX_REQUEST} bytes` });
      return;
    }
    if (nl < 0) return;
    // The command is known from here: the work it starts (a reload) may take longer than a request may.
    socket.setTimeout(0);
    const command = all.subarray(0, nl).toString('utf8').trim();
    if (!(CONTROL_COMMANDS as readonly string[]).includes(command)) {
      answer({ ok: false, error: `unknown command ${JSON.stringify(command.slice(0, 40))}; known: ${CONTROL_COMMANDS.join(', ')}` });
      return;
    }
    socket.pause();
    if (command !== 'status') log.info({ command }, 'control socket: command received');
    Promise.resolve()
      .then(() => run(command as ControlCommand))
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
