import { createReadStream } from 'node:fs';
import { Spool } from '../core/spool.js';

/**
 * A stored message: a Spool (ended), a file path, or a Buffer (small messages and tests). It is
 * read twice by the rewriter (structure, then copy), which is why a socket stream is not one.
 */
export type MessageInput = Spool | string | Buffer;

/** Chunks smaller than this are joined before parsing: fewer events, and no quadratic re-scan of a long line cut in many pieces. */
const MIN_CHUNK = 64 * 1024;
const FILE_CHUNK = 256 * 1024;

/** Reads a message in chunks of at least MIN_CHUNK bytes (except the last). */
export async function* readMessage(input: MessageInput): AsyncGenerator<Buffer> {
  if (Buffer.isBuffer(input)) {
    if (input.length > 0) yield input;
    return;
  }
  if (input instanceof Spool && !input.onDisk) {
    yield* coalesce(input.memoryChunks);
    return;
  }
  const stream = typeof input === 'string' ? createReadStream(input, { highWaterMark: FILE_CHUNK }) : input.createReadStream();
  try {
    let held: Buffer[] = [];
    let size = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      held.push(chunk);
      size += chunk.length;
      if (size >= MIN_CHUNK) {
        yield held.length === 1 ? (held[0] as Buffer) : Buffer.concat(held, size);
        held = [];
        size = 0;
      }
    }
    if (size > 0) yield held.length === 1 ? (held[0] as Buffer) : Buffer.concat(held, size);
  } finally {
    stream.destroy();
  }
}

function* coalesce(chunks: readonly Buffer[]): Generator<Buffer> {
  let start = 0;
  let size = 0;
  for (let i = 0; i < chunks.length; i++) {
    size += (chunks[i] as Buffer).length;
    if (size >= MIN_CHUNK || i === chunks.length - 1) {
      if (size > 0) yield i === start ? (chunks[i] as Buffer) : Buffer.concat(chunks.slice(start, i + 1), size);
      start = i + 1;
      size = 0;
    }
  }
}
