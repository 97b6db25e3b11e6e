import { connect } from 'node:net';

/** The chunk header of INSTREAM: 4-byte big-endian length. */
function header(length: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(length, 0);
  return b;
}

const INSTREAM = Buffer.from('zINSTREAM\0', 'latin1');
const END = Buffer.alloc(4);

/**
 * The baseline: the least a clamd client can do. One connection per request, `zINSTREAM\0`, the
 * parts as length-prefixed chunks of at most chunkSize bytes, a zero-length chunk, then the reply
 * up to its NUL. No pool, no session, no timeouts beyond the socket's own, no parsing.
 */
export function directInstream(socketPath: string, parts: readonly Buffer[], chunkSize: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    const received: Buffer[] = [];
    let done = false;
    const finish = (err: Error | null, reply?: string) => {
      if (done) return;
      done = true;
      socket.destroy();
      if (err) reject(err);
      else resolve(reply ?? '');
    };
    socket.on('data', (d: Buffer) => {
      const nul = d.indexOf(0);
      if (nul < 0) {
        received.push(d);
        return;
      }
      received.push(d.subarray(0, nul));
      finish(null, Buffer.concat(received).toString('latin1'));
    });
    socket.on('error', (err) => finish(err));
    socket.on('close', () => finish(new Error('clamd closed the connection before replying')));
    socket.once('connect', () => {
      void send();
    });

    // Honours backpressure so a large object costs a few chunks of memory, as in any real client.
    async function send(): Promise<void> {
      socket.write(INSTREAM);
      for (const part of parts) {
        for (let off = 0; off < part.length && !done; off += chunkSize) {
          const piece = part.subarray(off, Math.min(part.length, off + chunkSize));
          socket.cork();
          socket.write(header(piece.length));
          const ok = socket.write(piece);
          socket.uncork();
          if (!ok) {
            await new Promise<void>((res) => {
              const wake = () => {
                socket.off('drain', wake);
                socket.off('close', wake);
                res();
              };
              socket.on('drain', wake);
              socket.on('close', wake);
            });
          }
        }
      }
      if (!done) socket.write(END);
    }
  });
}

/** `stream: OK` → free; `stream: Name FOUND` → found; anything else is reported as it is. */
export function classifyReply(reply: string): { status: 'free' | 'found' | 'other'; detail: string } {
  const text = reply.trim();
  if (text.endsWith(': OK') || text === 'OK') return { status: 'free', detail: text };
  if (text.endsWith(' FOUND')) return { status: 'found', detail: text };
  return { status: 'other', detail: text };
}
