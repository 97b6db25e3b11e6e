import { isAscii } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { link, lstat, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AvgateError, messageOf } from '../core/errors.js';
import { anyNonAscii } from '../policy/mail/notify.js';
import type { EsmtpParams, NextHop, SmtpReply } from '../protocols/smtp/types.js';
import type { Quarantine, QuarantineSource } from './types.js';

/**
 * Release and restore: the only ways an object leaves the quarantine as plaintext besides export.
 * CONTRACT (implemented by the quarantine work; the console and CLI call these):
 * - releaseItem: re-sends a mail item's original bytes, unchanged, through `nextHop` with the
 *   original envelope sender to its original recipients, or to `to` (each address validated: one
 *   RFC 5321 mailbox, no CR/LF/NUL/<>/spaces — else AvgateError AVG_ERR_BAD_ADDRESS, nothing sent),
 *   with the MAIL parameters its content and addresses need (BODY=8BITMIME, SMTPUTF8).
 *   Records an audit entry (action 'release', actor, recipients, replies) and sets releasedAt
 *   when every recipient got a 2xx.
 * - restoreItem: writes a file item's bytes to `path` (absolute, no NUL; created 0600 with 'wx'
 *   unless `overwrite`), audit 'restore'.
 */
export interface ReleaseResult {
  ok: boolean;
  recipients: string[];
  replies: SmtpReply[];
}

/** Sources whose items are whole mail messages with an envelope (release); the others are files (restore). */
export const MAIL_SOURCES: ReadonlySet<QuarantineSource> = new Set<QuarantineSource>(['smtp', 'lmtp', 'pop3', 'imap']);

/** atext of RFC 5322 3.2.3 (dot-atom pieces); UTF-8 beyond ASCII is allowed (RFC 6531). */
const ATEXT = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\uFFFF-]+$/u;
const LABEL = /^(?!-)[A-Za-z0-9\u0080-\uFFFF-]{1,63}(?<!-)$/u;
const IPV4 = /^\[(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}\]$/;
const IPV6 = /^\[IPv6:[0-9A-Fa-f:.]{2,45}\]$/;

/**
 * One RFC 5321 mailbox `local@domain` — dot-atom local part (no quoted strings), a domain of
 * labels or an address literal — or an error message saying what is wrong. Everything that could
 * end an SMTP command or a header early (CR, LF, NUL, `<`, `>`, spaces, controls) is refused.
 */
export function checkMailbox(address: string): string | null {
  if (address.length === 0) return 'empty address';
  if (address.length > 254) return 'longer than 254 characters';
  if ([...address].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f)) return 'control character (CR, LF, NUL, ...)';
  if (/[<>\s]/u.test(address)) return "'<', '>' or white space";
  const at = address.lastIndexOf('@');
  if (at < 0) return "no '@'";
  if (address.indexOf('@') !== at) return "more than one '@'";
  const local = address.slice(0, at);
  const domain = address.slice(at + 1);
  if (local.length === 0 || local.length > 64) return 'local part empty or longer than 64 characters';
  if (!local.split('.').every((atom) => ATEXT.test(atom))) return 'local part is not a dot-atom (quoted local parts are not accepted)';
  if (domain.startsWith('[')) {
    if (!IPV4.test(domain) && !IPV6.test(domain)) return 'bad address literal';
  } else if (domain.length === 0 || domain.length > 253 || !domain.split('.').every((l) => LABEL.test(l))) {
    return 'bad domain';
  }
  return null;
}

function validated(addresses: readonly string[]): string[] {
  for (const a of addresses) {
    const why = checkMailbox(a);
    if (why) throw new AvgateError('AVG_ERR_BAD_ADDRESS', `refusing address ${JSON.stringify(a)}: ${why}; nothing was sent`);
  }
  return [...addresses];
}

/**
 * What a message needs from the transport, read from its bytes as a stream: `eightBit`, a byte
 * over 127 anywhere (RFC 6152: BODY=8BITMIME); `utf8Headers`, one in the top header block (RFC
 * 6531/6532: SMTPUTF8). Stops reading as soon as nothing more can change the answer; the read
 * fails as the stream does (a quarantine object that does not verify).
 */
export async function contentNeeds(message: Readable): Promise<{ eightBit: boolean; utf8Headers: boolean }> {
  let eightBit = false;
  let utf8Headers = false;
  let inHeaders = true;
  // The last bytes of the header block read so far, for an empty line split over two chunks;
  // "\n" as if a line had just ended, so a message that starts with one has no headers.
  let carry = Buffer.from('\n');
  try {
    for await (const chunk of message as AsyncIterable<Buffer>) {
      if (inHeaders) {
        const buf = Buffer.concat([carry, chunk]);
        const end = headerEnd(buf);
        if (!isAscii(end < 0 ? buf : buf.subarray(0, end))) {
          utf8Headers = true;
          eightBit = true;
        }
        if (end >= 0) {
          inHeaders = false;
          if (!isAscii(buf.subarray(end))) eightBit = true;
        } else carry = buf.subarray(Math.max(buf.length - 2, 0));
      } else if (!eightBit && !isAscii(chunk)) eightBit = true;
      if (utf8Headers || (!inHeaders && eightBit)) break;
    }
  } finally {
    message.destroy();
  }
  return { eightBit, utf8Headers };
}

/** Where the empty line that ends the header block starts (after its preceding LF), or -1. */
function headerEnd(b: Buffer): number {
  const lf = b.indexOf('\n\n');
  const crlf = b.indexOf('\n\r\n');
  const at = lf < 0 ? crlf : crlf < 0 ? lf : Math.min(lf, crlf);
  return at < 0 ? -1 : at + 1;
}

export async function releaseItem(q: Quarantine, id: string, o: { to?: string[]; nextHop: NextHop; actor: string }): Promise<ReleaseResult> {
  // Addresses first: a bad one must stop everything before the store is even asked.
  const explicit = o.to && o.to.length > 0 ? validated(o.to) : null;
  const item = await q.get(id);
  if (!item) throw new AvgateError('AVG_ERR_QUARANTINE', `no quarantined item ${JSON.stringify(id)}`);
  const r = item.record;
  if (!MAIL_SOURCES.has(r.source)) throw new AvgateError('AVG_ERR_QUARANTINE', `item ${id} is not a mail message (source ${r.source}): restore or export it instead`);
  // The stored envelope came through our own SMTP server, but it is checked the same way: a
  // release never sends what the validation would refuse.
  const recipients = explicit ?? validated(r.recipients);
  if (recipients.length === 0) throw new AvgateError('AVG_ERR_BAD_ADDRESS', `item ${id} has no recipients: give --to`);
  if (r.sender !== '' && checkMailbox(r.sender)) throw new AvgateError('AVG_ERR_BAD_ADDRESS', `item ${id} has an unusable envelope sender`);
  // The record does not keep the original's MAIL parameters (nor did it for items already
  // stored): what the bytes and addresses need is read from them. An 8-bit body or UTF-8 headers
  // sent without them are refused or mangled by the next hop (RFC 6152, RFC 6531).
  const needs = await contentNeeds(item.open());
  const params: EsmtpParams = {
    ...(needs.eightBit ? { BODY: '8BITMIME' } : {}),
    ...(needs.utf8Headers || anyNonAscii([r.sender, ...recipients]) ? { SMTPUTF8: true } : {}),
  };
  const result = await o.nextHop.deliver({
    mailFrom: { address: r.sender, params },
    rcpts: recipients.map((address) => ({ address, params: {} })),
    body: item.open(),
    size: r.size,
    queueId: `Q${id.slice(0, 11).toUpperCase()}`,
  });
  const ok = result.replies.length === recipients.length && result.replies.every((x) => x.code >= 200 && x.code < 300);
  await q.audit({
    itemId: id,
    action: 'release',
    actor: o.actor,
    detail: { ok, nextHop: o.nextHop.target, recipients, replies: result.replies.map((x) => ({ code: x.code, status: x.status, text: x.lines.join(' ') })) },
  });
  return { ok, recipients, replies: result.replies };
}

export async function restoreItem(q: Quarantine, id: string, path: string, o: { overwrite?: boolean; actor: string }): Promise<void> {
  if (path.includes('\0') || !isAbsolute(path)) throw new AvgateError('AVG_ERR_QUARANTINE', `restore target must be an absolute path: ${JSON.stringify(path)}`);
  const item = await q.get(id);
  if (!item) throw new AvgateError('AVG_ERR_QUARANTINE', `no quarantined item ${JSON.stringify(id)}`);
  if (MAIL_SOURCES.has(item.record.source)) throw new AvgateError('AVG_ERR_QUARANTINE', `item ${id} is a mail message: release or export it instead`);
  const existing = await lstat(path).catch(() => null);
  if (existing && !o.overwrite) throw new AvgateError('AVG_ERR_QUARANTINE', `${path} exists (use overwrite/--force)`);
  if (existing && !existing.isFile()) throw new AvgateError('AVG_ERR_QUARANTINE', `${path} exists and is not a regular file`);
  // The bytes go to a temp file beside the target and are moved into place only when the whole
  // object decrypted and verified: a tampered object never leaves a partial file at `path`.
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  let fh;
  try {
    fh = await open(tmp, 'wx', 0o600);
  } catch (err) {
    // A missing or unwritable directory is a refusal like any other (exit 1), not a crash.
    throw new AvgateError('AVG_ERR_QUARANTINE', `cannot restore ${id} to ${path}: ${messageOf(err)}`, { cause: err });
  }
  try {
    await pipeline(item.open(), createWriteStream('', { fd: fh, flush: true }));
    if (o.overwrite) await rename(tmp, path);
    else {
      // link() fails when the name appeared meanwhile: never replaces a file we did not mean to.
      await link(tmp, path);
      await unlink(tmp);
    }
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new AvgateError('AVG_ERR_QUARANTINE', `${path} exists (use overwrite/--force)`);
    throw new AvgateError('AVG_ERR_QUARANTINE', `cannot restore ${id} to ${path}: ${messageOf(err)}`, { cause: err });
  }
  await q.audit({ itemId: id, action: 'restore', actor: o.actor, detail: { path, overwrite: o.overwrite === true } });
}
