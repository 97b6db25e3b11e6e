import type { Socket } from 'node:net';
import type { ImapProxyConfig } from '../../config/imap-schema.js';
import { AvgateError } from '../../core/errors.js';
import { connectTls, connectWithTimeout, splitHostPort, type UpstreamTls } from '../../core/net.js';

/**
 * The proxy's side toward the IMAP server: TCP, implicit TLS or STARTTLS, and the greeting. Ends
 * with a socket ready for the client's first command, the greeting line and any bytes already
 * received after it.
 */
export interface Upstream {
  socket: Socket;
  /** The greeting line without CRLF. */
  greeting: Buffer;
  /** Bytes after the greeting (normally none). */
  leftover: Buffer;
  /** The greeting's capability list was from before STARTTLS (stale). */
  staleGreetingCapabilities: boolean;
}

export function parseHostPort(text: string): { host: string; port: number } {
  try {
    return splitHostPort(text);
  } catch {
    throw new AvgateError('AVG_ERR_CONFIG', `address "${text}": expected host:port`);
  }
}

/** Reads CRLF lines off a socket during the setup phase (bounded, with a deadline). */
class SetupReader {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;
  private readonly onData = (d: Buffer) => {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    this.wake();
  };
  private readonly onEnd = () => {
    this.failure ??= new Error('the server closed the connection');
    this.wake();
  };
  private readonly onError = (err: Error) => {
    this.failure ??= err;
    this.wake();
  };

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async line(max: number, deadline: number): Promise<Buffer> {
    for (;;) {
      const i = this.buf.indexOf(0x0a);
      if (i >= 0) {
        const line = this.buf.subarray(0, i > 0 && this.buf[i - 1] === 0x0d ? i - 1 : i);
        this.buf = this.buf.subarray(i + 1);
        return line;
      }
      if (this.buf.length > max) throw new Error(`server line longer than ${max} bytes`);
      if (this.failure) throw this.failure;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timeout waiting for the server');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** Stops reading; returns what was received but not read. The socket is left paused. */
  detach(): Buffer {
    this.socket.pause();
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    return this.buf;
  }
}

/** Connects, handles TLS, reads the greeting. Every failure rejects with AVG_ERR_ENGINE_CONNECT-style text. */
export async function connectUpstream(config: ImapProxyConfig, tls: UpstreamTls): Promise<Upstream> {
  const { host, port } = parseHostPort(config.upstream);
  const deadline = Date.now() + config.timeouts.connect;
  const maxLine = config['max-line-length'];
  let socket: Socket;
  if (config['upstream-tls'] === 'tls') {
    socket = await connectTls({ host, port }, tls, config.timeouts.connect);
  } else {
    socket = await connectWithTimeout({ host, port }, { timeoutMs: config.timeouts.connect, label: `imap upstream ${host}:${port}` });
  }
  try {
    let reader = new SetupReader(socket);
    const greeting = await reader.line(maxLine, deadline);
    if (!/^\* (?:OK|PREAUTH|BYE)\b/i.test(greeting.toString('latin1'))) throw new Error(`unexpected greeting "${greeting.subarray(0, 80).toString('latin1')}"`);
    if (config['upstream-tls'] !== 'starttls' || /^\* BYE/i.test(greeting.toString('latin1'))) {
      return { socket, greeting, leftover: reader.detach(), staleGreetingCapabilities: false };
    }
    if (/^\* PREAUTH/i.test(greeting.toString('latin1'))) throw new Error('server sent PREAUTH: STARTTLS is not possible (RFC 3501 §6.2.1)');
    socket.write('avg0 STARTTLS\r\n');
    for (;;) {
      const line = (await reader.line(maxLine, deadline)).toString('latin1');
      if (line.startsWith('* ')) continue;
      if (/^avg0 OK\b/i.test(line)) break;
      throw new Error(`STARTTLS refused: ${line.slice(0, 120)}`);
    }
    // Bytes after the OK but before the handshake would be plaintext injected into the TLS session.
    if (reader.detach().length > 0) throw new Error('data after the STARTTLS reply (injection attempt)');
    const secure = await connectTls({ host, port, socket }, tls, deadline - Date.now());
    socket = secure;
    reader = new SetupReader(secure);
    return { socket: secure, greeting, leftover: reader.detach(), staleGreetingCapabilities: true };
  } catch (err) {
    socket.destroy();
    throw err;
  }
}
