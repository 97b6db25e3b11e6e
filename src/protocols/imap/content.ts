import { Spool } from '../../core/spool.js';
import type { MessageInput } from '../../mime/input.js';
import { renderReplacement, scanAndReplace, type ReplaceDeps, type ReplaceResult } from '../../mailproxy/index.js';
import { MAIL_STATUSES } from '../../policy/mail/status.js';

/**
 * What the IMAP proxy does with message content: whole messages go through the mail proxies'
 * replacer (src/mailproxy); a body part or a message text fetched on its own (BODY[2], BODY[TEXT],
 * a partial BODY[]<0.1000>) arrives without the MIME header that says how it is encoded, so it is
 * wrapped in a made-up header (multipart with the boundary its first line shows, else base64 /
 * quoted-printable / 8bit as its bytes suggest), scanned as a message, and replaced by the notice
 * (in the part's own transfer encoding) when the doc-acl says so. No sockets here.
 */

export interface FilterOutcome {
  /** What to send: the original input when unchanged. */
  output: MessageInput;
  size: number;
  changed: boolean;
  /** For logs and the APPEND refusal: statuses and virus names of replaced documents. */
  replaced: Array<{ status: string; names: string[]; filename: string | null }>;
  status: 'clean' | 'replaced' | 'error';
  dispose(): Promise<void>;
}

function fromResult(r: ReplaceResult): FilterOutcome {
  return {
    output: r.output,
    size: r.size,
    changed: r.changed,
    replaced: r.replaced.map((d) => ({ status: d.status, names: d.names, filename: d.filename })),
    status: r.status,
    dispose: () => r.dispose(),
  };
}

/** A whole message (BODY[], RFC822, BINARY[], an APPEND upload). */
export async function filterMessage(input: Spool, deps: ReplaceDeps, signal?: AbortSignal): Promise<FilterOutcome> {
  return fromResult(await scanAndReplace(input, deps, signal));
}

export type PartEncoding = 'multipart' | 'base64' | 'quoted-printable' | '8bit' | 'binary';

/** How far into a part its encoding is guessed (a bound: parts can be large). */
const SNIFF_BYTES = 64 * 1024;

/** Guesses a headerless part's encoding from its first bytes; `boundary` for a multipart body. */
export function sniffPart(head: Buffer, binary: boolean): { encoding: PartEncoding; boundary?: string } {
  const text = head.toString('latin1');
  // The first boundary line may follow a preamble (BODY[TEXT] of a multipart message).
  const m = /(?:^|\n)--([\x21-\x7e][\x20-\x7e]{0,69}?)[ \t]*\r?\n/.exec(text);
  if (m) return { encoding: 'multipart', boundary: m[1] as string };
  if (binary) return { encoding: 'binary' };
  if (text.length >= 4 && /^[A-Za-z0-9+/=\r\n]+$/.test(text) && /[A-Za-z0-9+/]{16}/.test(text)) return { encoding: 'base64' };
  if (/=\r?\n|=[0-9A-F]{2}/.test(text)) return { encoding: 'quoted-printable' };
  return { encoding: '8bit' };
}

function syntheticHeader(kind: { encoding: PartEncoding; boundary?: string }): Buffer {
  if (kind.encoding === 'multipart') {
    return Buffer.from(`MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="${(kind.boundary as string).replace(/["\\]/g, '')}"\r\n\r\n`, 'latin1');
  }
  const cte = kind.encoding === 'binary' ? 'binary' : kind.encoding;
  // 8bit: text, so that the walker also looks for uuencoded files in it (as in a text part).
  const type = kind.encoding === '8bit' ? 'text/plain' : 'application/octet-stream';
  return Buffer.from(`MIME-Version: 1.0\r\nContent-Type: ${type}\r\nContent-Transfer-Encoding: ${cte}\r\n\r\n`, 'latin1');
}

/**
 * A body part, a message text or a partial fetch: a document without its header. Returns the
 * content to send in place of the literal (the original spool when nothing is replaced).
 */
export async function filterPart(input: Spool, binary: boolean, deps: ReplaceDeps, signal?: AbortSignal, opts: { partial?: boolean } = {}): Promise<FilterOutcome> {
  const kind = sniffPart(await input.readRange(0, SNIFF_BYTES), binary);
  // A piece of a partial fetch is cut anywhere: broken MIME (a missing final boundary, base64
  // cut mid-quantum) is expected there and is no reason to replace it; found viruses are.
  const tolerate: ReadonlySet<string> = opts.partial ? CUT_STATUSES : NONE;
  if (kind.encoding === 'multipart') {
    // A guessed structure leaves the preamble and epilogue out of the walk: the bytes are also
    // scanned whole, so nothing hides in front of the first boundary or after the last.
    const raw = await scanWrapped(input, { encoding: binary ? 'binary' : '8bit' }, deps, signal, tolerate);
    if (raw.changed) return raw;
    return scanWrapped(input, kind, deps, signal, tolerate);
  }
  const guessed = await scanWrapped(input, kind, deps, signal, tolerate);
  if (guessed.changed) return guessed;
  // The guess can be wrong (quoted-printable whose first soft break comes after the sniffed bytes,
  // base64 after a junk line that a lenient client skips, uuencode in what looks like binary): the
  // part is also read the other ways a client might decode it. Only a finding counts there, not
  // the broken MIME a wrong reading gives; the notice keeps the guessed encoding.
  const others: PartEncoding[] = binary ? ['8bit'] : (['8bit', 'quoted-printable', 'base64'] as const).filter((e) => e !== kind.encoding);
  for (const encoding of others) {
    const r = await scanWrapped(input, { encoding }, deps, signal, NOT_A_FINDING, kind.encoding);
    if (r.changed) {
      await guessed.dispose();
      return r;
    }
  }
  return guessed;
}

/** Statuses that are no finding: what reading a part in another encoding may give for a clean one. */
const NOT_A_FINDING: ReadonlySet<string> = new Set(MAIL_STATUSES.filter((s) => s !== 'infected' && s !== 'suspicious'));

const CUT_STATUSES: ReadonlySet<string> = new Set(['corrupted']);
const NONE: ReadonlySet<string> = new Set();

async function scanWrapped(
  input: Spool,
  kind: { encoding: PartEncoding; boundary?: string },
  deps: ReplaceDeps,
  signal: AbortSignal | undefined,
  tolerate: ReadonlySet<string>,
  noticeEncoding: PartEncoding = kind.encoding,
): Promise<FilterOutcome> {
  const header = syntheticHeader(kind);
  const wrapped = new Spool(deps.spoolDir, deps.policy['spool-memory'], { hash: deps.scanner.wantsHash });
  let result: ReplaceResult | null = null;
  try {
    await wrapped.write(header);
    for await (const chunk of input.createReadStream() as AsyncIterable<Buffer>) await wrapped.write(chunk);
    await wrapped.end();
    // A headerless part with a made-up header is no message to keep: the quarantine takes whole ones.
    result = await scanAndReplace(wrapped, { ...deps, quarantine: null }, signal);
    if (!result.changed || result.replaced.every((d) => tolerate.has(d.status))) {
      const status = result.status === 'error' ? 'error' : 'clean';
      return { output: input, size: input.size, changed: false, replaced: [], status, dispose: async () => undefined };
    }
    const replaced = result.replaced.map((d) => ({ status: d.status, names: d.names, filename: d.filename }));
    if (kind.encoding === 'multipart' && result.output instanceof Spool) {
      // The rewritten multipart body: the rewriter copies untouched bytes, so the made-up header
      // is still in front; everything after its blank line is the part's new content.
      const out = result.output;
      const head = await out.readRange(0, Math.min(out.size, header.length + 4096));
      const end = head.indexOf('\r\n\r\n');
      const from = end >= 0 ? end + 4 : 0;
      const spool = new Spool(deps.spoolDir, deps.policy['spool-memory'], { hash: false });
      try {
        for (let pos = from; pos < out.size; pos += 256 * 1024) await spool.write(await out.readRange(pos, Math.min(out.size, pos + 256 * 1024)));
        await spool.end();
      } catch (err) {
        await spool.dispose();
        throw err;
      }
      return { output: spool, size: spool.size, changed: true, replaced, status: result.status, dispose: () => spool.dispose() };
    }
    const first = result.replaced[0];
    const notice = renderReplacement(deps.replacement, {
      virusNames: first?.names ?? [],
      filename: first?.filename ?? null,
      status: first?.status ?? 'replaced',
      reason: reasonOf(first?.status ?? 'replaced', first?.names ?? []),
      contentType: null,
      part: deps.label ?? 'part',
    });
    const body = encodeNotice(notice, noticeEncoding);
    return { output: body, size: body.length, changed: true, replaced, status: result.status, dispose: async () => undefined };
  } finally {
    await result?.dispose();
    await wrapped.dispose();
  }
}

/** The notice in the part's transfer encoding, so the client decodes readable text. */
export function encodeNotice(text: string, encoding: PartEncoding): Buffer {
  const crlf = text.replace(/\r?\n/g, '\r\n');
  if (encoding === 'base64') {
    const b64 = Buffer.from(crlf, 'utf8').toString('base64');
    return Buffer.from(`${b64.replace(/.{1,76}/g, '$&\r\n')}`, 'latin1');
  }
  return Buffer.from(crlf, 'utf8');
}

/** A notice standing for content that was not scanned at all (too large for the spool). */
export function unscannedNotice(deps: Pick<ReplaceDeps, 'replacement' | 'label'>, reason: string): Buffer {
  const text = renderReplacement(deps.replacement, { virusNames: [], filename: null, status: 'skipped', reason, contentType: null, part: deps.label ?? 'message' });
  return Buffer.from(text.replace(/\r?\n/g, '\r\n'), 'utf8');
}

export function reasonOf(status: string, names: readonly string[]): string {
  switch (status) {
    case 'infected':
      return `a virus was found in it (${names.join(', ') || 'no name'})`;
    case 'suspicious':
      return `it looks harmful (${names.join(', ') || 'no name'})`;
    case 'error':
      return 'it could not be scanned (the virus scanner failed)';
    default:
      return `its status is ${status}`;
  }
}
