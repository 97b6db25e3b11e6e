/**
 * Unique test messages for the mail section: multipart/mixed, a text/plain part and one base64
 * attachment, CRLF line ends, nothing that needs dot-stuffing (no line starts with a dot).
 *
 * Every message is unique where a scanner looks: the text carries a random token, and the
 * attachment's decoded bytes start with fresh random bytes, so neither clamd's clean-file cache
 * (keyed by content hash, also for parts it extracts from a message) nor avgate's verdict cache
 * can answer. The rest of the attachment is a slice of a pool of random bytes encoded once: a
 * message costs a copy, not a CSPRNG run and a base64 pass over megabytes, so the load generator
 * spends little of the machine's two cores.
 *
 * An infected message carries the EICAR test string at the start of its attachment (the test
 * database's body signature finds it anywhere): same size, same shape, one more document verdict.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { eicarBytes } from '../src/engines/clamd/testdb.js';

export interface MessageKind {
  /** Label in tables: `5KB`, `100KB`, `2MB`. */
  label: string;
  /** Decoded attachment bytes (rounded up to whole base64 lines). */
  attachmentBytes: number;
  /** Bytes of the text part. */
  textBytes: number;
}

/** The three kinds the issue names: a 5 KB message (text + small attachment), 100 KB and 2 MB attachments. */
export const MESSAGE_KINDS: readonly MessageKind[] = [
  { label: '5KB', attachmentBytes: 2736, textBytes: 900 },
  { label: '100KB', attachmentBytes: 100 * 1024, textBytes: 600 },
  { label: '2MB', attachmentBytes: 2 * 1024 * 1024, textBytes: 600 },
];

export interface BenchMessage {
  /** The message as sent after DATA, without the final `.` line. */
  wire: Buffer;
  infected: boolean;
}

/** 57 decoded bytes make one 76-character base64 line. */
const LINE_BYTES = 57;
const CRLF = Buffer.from('\r\n');

/** Base64 in lines of 76 characters, each ending in CRLF (input: whole lines except maybe the last). */
function base64Lines(data: Buffer): Buffer {
  const lines: Buffer[] = [];
  for (let off = 0; off < data.length; off += LINE_BYTES) {
    lines.push(Buffer.from(data.subarray(off, Math.min(data.length, off + LINE_BYTES)).toString('base64'), 'latin1'), CRLF);
  }
  return Buffer.concat(lines);
}

const WORDS = 'the quick brown fox jumps over a lazy dog while clamd scans every part of this message for test signatures only'.split(' ');

function text(bytes: number, token: string): Buffer {
  const lines: string[] = [`Benchmark message ${token}.`];
  let size = lines[0]!.length + 2;
  let line = '';
  for (let i = 0; size + line.length < bytes; i++) {
    line += `${WORDS[randomInt(WORDS.length)]} `;
    if (line.length >= 70) {
      lines.push(line.trimEnd());
      size += line.length + 1;
      line = '';
    }
  }
  if (line) lines.push(line.trimEnd());
  return Buffer.from(`${lines.join('\r\n')}\r\n`, 'latin1');
}

/**
 * Makes the messages of one kind. `pool` lines of encoded random bytes are shared by all messages
 * of the kind; each message takes a contiguous run of them at a random line.
 */
export class MessageFactory {
  private readonly pool: Buffer;
  private readonly poolLines: number;
  /** Lines of the attachment that come from the pool (the first two are fresh). */
  private readonly tailLines: number;
  private readonly eicar = eicarBytes();
  private seq = 0;

  constructor(
    readonly kind: MessageKind,
    private readonly from: string,
    private readonly to: string,
  ) {
    const lines = Math.ceil(kind.attachmentBytes / LINE_BYTES);
    this.tailLines = Math.max(0, lines - 2);
    // Twice the attachment (at least 1 MiB): start offsets vary over many lines.
    this.poolLines = Math.max(2 * this.tailLines, Math.ceil((1024 * 1024) / LINE_BYTES));
    this.pool = base64Lines(randomBytes(this.poolLines * LINE_BYTES));
  }

  /** Size of a message of this kind on the wire (all are the same size, give or take the text). */
  get approxSize(): number {
    return this.make(false).wire.length;
  }

  make(infected: boolean): BenchMessage {
    const n = ++this.seq;
    const token = randomBytes(12).toString('hex');
    const boundary = `=_avgate_bench_${token}`;
    // The first two lines (114 bytes) are fresh: random, or EICAR followed by random bytes.
    const head = randomBytes(2 * LINE_BYTES);
    if (infected) this.eicar.copy(head, 0);
    const start = randomInt(this.poolLines - this.tailLines + 1) * (76 + 2);
    const tail = this.pool.subarray(start, start + this.tailLines * (76 + 2));
    const name = `data-${n}.bin`;
    const top = [
      `From: Bench Sender <${this.from}>`,
      `To: Bench Recipient <${this.to}>`,
      `Subject: avgate mail bench ${this.kind.label} ${n}`,
      `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
      `Message-ID: <${token}.${n}@bench.test>`,
      'MIME-Version: 1.0',
      `Content-Type: multipart/mixed; boundary="${boundary}"`,
      '',
      'This is a multi-part message in MIME format.',
      '',
      `--${boundary}`,
      'Content-Type: text/plain; charset=us-ascii',
      'Content-Transfer-Encoding: 7bit',
      '',
      '',
    ].join('\r\n');
    const attach = [
      '',
      `--${boundary}`,
      `Content-Type: application/octet-stream; name="${name}"`,
      'Content-Transfer-Encoding: base64',
      `Content-Disposition: attachment; filename="${name}"`,
      '',
      '',
    ].join('\r\n');
    const wire = Buffer.concat([
      Buffer.from(top, 'latin1'),
      text(this.kind.textBytes, token),
      Buffer.from(attach, 'latin1'),
      base64Lines(head),
      tail,
      Buffer.from(`--${boundary}--\r\n`, 'latin1'),
    ]);
    return { wire, infected };
  }
}
