import { isAscii, isUtf8 } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { replyText } from './reply.js';
import type { EsmtpParams, Recipient, SmtpReply } from './types.js';

/**
 * Bounces (RFC 3464 delivery status notifications) for the recipients of an SMTP transaction
 * that the next hop refused while it took others: the client gets one DATA reply for all of
 * them, a 250, so without a bounce the sender would never learn that those were not delivered.
 * (LMTP answers each recipient itself; a transaction refused whole gets the 5xx and the client
 * bounces.) Pure: the server sends what this builds through the next hop, from `<>`.
 *
 * Internationalized mail (RFC 6533): UTF-8 original headers are returned as
 * message/global-headers, and a report with a UTF-8 address (utf-8 address type) is
 * message/global-delivery-status (report-type global-delivery-status); the bounce goes out with
 * SMTPUTF8 when the original came with it or an address needs it, and with BODY=8BITMIME when it
 * carries 8-bit bytes.
 */

export interface BounceInput {
  /** The envelope sender; `''` (the null sender) is never bounced to. */
  sender: string;
  rcpts: readonly Recipient[];
  /** One reply per recipient, in order. */
  replies: readonly SmtpReply[];
  /** The original header block (bounded by the caller), for the text/rfc822-headers (message/global-headers) part. */
  headers: Buffer;
  /** The original's ENVID (xtext decoded), for Original-Envelope-Id (RFC 3464 2.2.1). */
  envid?: string | null;
  /** The original came with SMTPUTF8: so does its bounce (RFC 6533: its DSN is not downgraded). */
  smtpUtf8?: boolean;
  /** This gateway's name (Reporting-MTA, From). */
  hostname: string;
  queueId: string;
  arrival: Date;
  now?: Date;
}

export interface Bounce {
  to: string;
  /** The refused recipients the bounce reports. */
  failed: string[];
  message: Buffer;
  /** MAIL parameters the bounce needs: SMTPUTF8 (UTF-8 addresses, an SMTPUTF8 original), BODY=8BITMIME (8-bit bytes). */
  params: EsmtpParams;
}

/** The bounce for the permanently refused recipients of a transaction that was taken, or null. */
export function bounceFor(i: BounceInput): Bounce | null {
  if (i.sender === '') return null;
  const failed = i.rcpts
    .map((r, k) => ({ r, reply: i.replies[k] as SmtpReply }))
    .filter(({ r, reply }) => reply !== undefined && reply.code >= 500 && wantsFailureNotice(r));
  if (failed.length === 0 || !i.replies.some((r) => r.code >= 200 && r.code < 300)) return null;
  const now = i.now ?? new Date();
  const boundary = `avgate-dsn-${randomBytes(12).toString('hex')}`;
  const clean = (s: string) => s.replace(/[\p{Cc}]/gu, ' ');
  const nonAscii = (s: string) => /[^\p{ASCII}]/u.test(s);
  const headers = withCrlfEnd(i.headers);
  // UTF-8 headers are message/global-headers; other 8-bit bytes (legacy mail) are no UTF-8 and
  // stay text/rfc822-headers, sent as 8bit all the same.
  const headers8 = !isAscii(headers);
  const globalHeaders = headers8 && isUtf8(headers);
  // An envelope id is printable ASCII (RFC 3461 4.4); anything else a client decoded into it is not kept.
  const envid = typeof i.envid === 'string' && i.envid !== '' ? i.envid.replace(/[^\x20-\x7e]/g, '?') : null;
  const orcptOf = (r: Recipient) => (typeof r.params.ORCPT === 'string' ? clean(r.params.ORCPT) : null);
  // A UTF-8 address needs the global report; message/delivery-status itself is ASCII only.
  const globalStatus = failed.some(({ r }) => nonAscii(r.address) || nonAscii(orcptOf(r) ?? ''));
  const field = (s: string) => (globalStatus ? s : s.replace(/[^\x20-\x7e]/g, '?'));
  const text8 = failed.some(({ r, reply }) => nonAscii(r.address) || nonAscii(replyText(reply)));
  const cte8 = ['Content-Transfer-Encoding: 8bit'];
  const lines: string[] = [];
  lines.push(
    `From: Mail Delivery System <MAILER-DAEMON@${i.hostname}>`,
    `To: <${clean(i.sender)}>`,
    'Subject: Undelivered Mail Returned to Sender',
    `Date: ${now.toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <${i.queueId}.${randomBytes(6).toString('hex')}@${i.hostname}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=${globalStatus ? 'global-delivery-status' : 'delivery-status'}; boundary="${boundary}"`,
    // A multipart holding an 8bit part is 8bit itself (RFC 2045).
    ...(text8 || globalStatus || headers8 ? cte8 : []),
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=utf-8',
    ...(text8 ? cte8 : []),
    '',
    `This is the mail gateway at ${i.hostname}.`,
    '',
    'Your message was delivered to some of its recipients, but the next mail server refused',
    'the ones below. The message was not delivered to them.',
    '',
    ...failed.map(({ r, reply }) => `<${clean(r.address)}>: ${reply.code} ${clean(replyText(reply))}`),
    '',
    `--${boundary}`,
    `Content-Type: message/${globalStatus ? 'global-delivery-status' : 'delivery-status'}`,
    ...(globalStatus ? cte8 : []),
    '',
    // RFC 3464 2.2.1: required when the client gave ENVID; its value, xtext decoded.
    ...(envid !== null ? [`Original-Envelope-Id: ${envid}`] : []),
    `Reporting-MTA: dns; ${i.hostname}`,
    `X-Avgate-Queue-ID: ${i.queueId}`,
    `Arrival-Date: ${i.arrival.toUTCString().replace('GMT', '+0000')}`,
  );
  for (const { r, reply } of failed) {
    const orcpt = orcptOf(r);
    lines.push(
      '',
      ...(orcpt ? [`Original-Recipient: ${field(orcpt)}`] : []),
      // RFC 6533: a UTF-8 address has the utf-8 address type.
      `Final-Recipient: ${nonAscii(r.address) ? 'utf-8' : 'rfc822'}; ${clean(r.address)}`,
      'Action: failed',
      `Status: ${statusOf(reply)}`,
      `Diagnostic-Code: smtp; ${reply.code} ${field(clean(replyText(reply)))}`,
    );
  }
  lines.push('', `--${boundary}`, `Content-Type: ${globalHeaders ? 'message/global-headers' : 'text/rfc822-headers'}`, ...(headers8 ? cte8 : []), '');
  const head = Buffer.from(`${lines.join('\r\n')}\r\n`, 'utf8');
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'latin1');
  const message = Buffer.concat([head, headers, tail]);
  const utf8 = i.smtpUtf8 === true || globalHeaders || [i.sender, ...failed.map(({ r }) => r.address)].some(nonAscii);
  const params: EsmtpParams = { ...(utf8 ? { SMTPUTF8: true as const } : {}), ...(!isAscii(message) ? { BODY: '8BITMIME' } : {}) };
  return { to: i.sender, failed: failed.map(({ r }) => r.address), message, params };
}

/** RFC 3461: NOTIFY absent means the default (failures are reported); NEVER or a list without FAILURE means not. */
function wantsFailureNotice(r: Recipient): boolean {
  const notify = r.params.NOTIFY;
  if (typeof notify !== 'string') return true;
  return notify.toUpperCase().split(',').includes('FAILURE');
}

/** The reply's enhanced status code, or 5.0.0. */
function statusOf(reply: SmtpReply): string {
  return reply.status && /^5\.\d{1,3}\.\d{1,3}$/.test(reply.status) ? reply.status : '5.0.0';
}

/** The header block ends with CRLF (a block cut short by the caller's bound may not). */
function withCrlfEnd(b: Buffer): Buffer {
  return b.length >= 2 && b[b.length - 2] === 0x0d && b[b.length - 1] === 0x0a ? b : Buffer.concat([b, Buffer.from('\r\n')]);
}
