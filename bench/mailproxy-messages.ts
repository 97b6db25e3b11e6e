/**
 * Messages of the mail-proxy section: multipart/mixed with a short text part and one base64
 * attachment, 5 KB to 100 KB in all, CRLF line ends, no line starting with a dot. Every message is
 * unique where a scanner looks (a random token in the text, fresh random bytes at the start of the
 * attachment), so a mailbox fetched for the first time is cold for every cache; the rest of the
 * attachment is a slice of a pool encoded once (as bench/mail-messages.ts does), so making a few
 * thousand messages costs little CPU. One message in `infectedEvery` carries the EICAR test string
 * at the start of its attachment.
 *
 * The fetch checks use `token` (in the Subject, to find which message came back), `probe` (the
 * attachment's first base64 line: present when the attachment was passed on) and EICAR itself.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { eicarBytes } from '../src/engines/clamd/testdb.js';
import { walkMessage, type MimeLimits } from '../src/mime/index.js';

export interface ProxyBenchMessage {
  token: string;
  wire: Buffer;
  infected: boolean;
  /** The attachment's first base64 line (unique to this message). */
  probe: string;
}

export const MIN_MESSAGE_BYTES = 5 * 1024;
export const MAX_MESSAGE_BYTES = 100 * 1024;

const LINE_BYTES = 57; // one 76-character base64 line
const POOL_LINES = Math.ceil((2 * MAX_MESSAGE_BYTES) / LINE_BYTES);

export class ProxyMessageFactory {
  private readonly pool: Buffer;
  private readonly eicar = eicarBytes();
  private seq = 0;

  constructor() {
    const lines: string[] = [];
    const raw = randomBytes(POOL_LINES * LINE_BYTES);
    for (let i = 0; i < POOL_LINES; i++) lines.push(`${raw.subarray(i * LINE_BYTES, (i + 1) * LINE_BYTES).toString('base64')}\r\n`);
    this.pool = Buffer.from(lines.join(''), 'latin1');
  }

  /** One message of about `size` bytes (5-100 KB). */
  make(size: number, infected: boolean): ProxyBenchMessage {
    const n = ++this.seq;
    const token = randomBytes(12).toString('hex');
    const boundary = `=_avgate_mp_${token}`;
    const head = randomBytes(2 * LINE_BYTES);
    if (infected) this.eicar.copy(head, 0);
    const headLines = `${head.subarray(0, LINE_BYTES).toString('base64')}\r\n${head.subarray(LINE_BYTES).toString('base64')}\r\n`;
    const top = [
      'From: Bench Sender <sender@bench.test>',
      'To: Bench Reader <reader@bench.test>',
      `Subject: avgate mailproxy bench ${token}`,
      `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
      `Message-ID: <${token}.${n}@bench.test>`,
      'MIME-Version: 1.0',
      `Content-Type: multipart/mixed; boundary="${boundary}"`,
      '',
      `--${boundary}`,
      'Content-Type: text/plain; charset=us-ascii',
      '',
      `Benchmark message ${n}, token ${token}.`,
      '',
      `--${boundary}`,
      `Content-Type: application/octet-stream; name="data-${n}.bin"`,
      'Content-Transfer-Encoding: base64',
      `Content-Disposition: attachment; filename="data-${n}.bin"`,
      '',
      '',
    ].join('\r\n');
    const end = `--${boundary}--\r\n`;
    const fixed = top.length + headLines.length + end.length;
    const tailLines = Math.max(0, Math.round((size - fixed) / 78));
    const start = randomInt(POOL_LINES - tailLines + 1) * 78;
    const wire = Buffer.concat([
      Buffer.from(top, 'latin1'),
      Buffer.from(headLines, 'latin1'),
      this.pool.subarray(start, start + tailLines * 78),
      Buffer.from(end, 'latin1'),
    ]);
    return { token, wire, infected, probe: headLines.slice(0, 76) };
  }
}

/** Sizes spread evenly over 5-100 KB, in a shuffled order. */
export function messageSizes(count: number): number[] {
  const sizes = Array.from({ length: count }, (_, i) => Math.round(MIN_MESSAGE_BYTES + ((MAX_MESSAGE_BYTES - MIN_MESSAGE_BYTES) * i) / Math.max(1, count - 1)));
  for (let i = sizes.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [sizes[i], sizes[j]] = [sizes[j] as number, sizes[i] as number];
  }
  return sizes;
}

const TOKEN = /^Subject: avgate mailproxy bench ([0-9a-f]{24})\r?$/m;

/**
 * What is wrong with a fetched message (null: as expected), given the mailbox's messages by token.
 * An infected attachment's first base64 line encodes the EICAR string: through avgate it must be
 * gone (the document replaced by a notice), directly it must be there.
 */
export function checkFetched(raw: Buffer, byToken: ReadonlyMap<string, ProxyBenchMessage>, scanned: boolean): { token: string | null; problem: string | null } {
  const token = TOKEN.exec(raw.subarray(0, 4096).toString('latin1'))?.[1] ?? null;
  const m = token ? byToken.get(token) : undefined;
  if (!token || !m) return { token, problem: 'not one of the mailbox messages (no known token)' };
  const attached = raw.includes(m.probe);
  if (m.infected) {
    if (scanned && attached) return { token, problem: 'infected attachment passed' };
    if (!scanned && !attached) return { token, problem: 'infected attachment missing (direct)' };
    return { token, problem: null };
  }
  if (!attached) return { token, problem: 'clean attachment missing' };
  if (raw.length < m.wire.length) return { token, problem: `${raw.length} bytes instead of ${m.wire.length}` };
  return { token, problem: null };
}

/** One document of a message as avgate's mail proxies hand it to the scanner: decoded, copied out of the walker's spool. */
export interface MessageDocument {
  /** Walker document id (`1`, `2`, ...). */
  id: string;
  data: Buffer;
  /** Content-Disposition: attachment (the part that carries EICAR in an infected message). */
  attachment: boolean;
}

/**
 * The documents src/mailproxy/replace.ts scans one by one for a message (with prescan-max-size 0,
 * the mail proxies' default): every document walkMessage hands over, in message order, decoded by
 * the same walker with the same limits. `problems`: the walk's MIME problem codes (none expected
 * for these messages).
 */
export async function messageDocuments(wire: Buffer, opts: { limits: MimeLimits; spoolDir: string }): Promise<{ documents: MessageDocument[]; problems: string[] }> {
  const documents: MessageDocument[] = [];
  const walk = await walkMessage(wire, { limits: opts.limits, spoolDir: opts.spoolDir, hash: false }, async (doc) => {
    // A copy: the walker disposes of the spool (and may reuse its memory) once the callback returns.
    documents.push({ id: doc.id, data: Buffer.from(await doc.spool.readRange(0, doc.size)), attachment: doc.disposition === 'attachment' });
  });
  return { documents, problems: walk.problems.map((p) => `${p.partId || '(message)'}: ${p.code}`) };
}
