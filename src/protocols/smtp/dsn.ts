import { randomBytes } from 'node:crypto';
import { replyText } from './reply.js';
import type { Recipient, SmtpReply } from './types.js';

/**
 * Bounces (RFC 3464 delivery status notifications) for the recipients of an SMTP transaction
 * that the next hop refused while it took others: the client gets one DATA reply for all of
 * them, a 250, so without a bounce the sender would never learn that those were not delivered.
 * (LMTP answers each recipient itself; a transaction refused whole gets the 5xx and the client
 * bounces.) Pure: the server sends what this builds through the next hop, from `<>`.
 */

export interface BounceInput {
  /** The envelope sender; `''` (the null sender) is never bounced to. */
  sender: string;
  rcpts: readonly Recipient[];
  /** One reply per recipient, in order. */
  replies: readonly SmtpReply[];
  /** The original header block (bounded by the caller), for the text/rfc822-headers part. */
  headers: Buffer;
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
  /** An address is not ASCII: the bounce needs SMTPUTF8. */
  utf8: boolean;
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
  const lines: string[] = [];
  lines.push(
    `From: Mail Delivery System <MAILER-DAEMON@${i.hostname}>`,
    `To: <${clean(i.sender)}>`,
    'Subject: Undelivered Mail Returned to Sender',
    `Date: ${now.toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <${i.queueId}.${randomBytes(6).toString('hex')}@${i.hostname}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=utf-8',
    '',
    `This is the mail gateway at ${i.hostname}.`,
    '',
    'Your message was delivered to some of its recipients, but the next mail server refused',
    'the ones below. The message was not delivered to them.',
    '',
    ...failed.map(({ r, reply }) => `<${clean(r.address)}>: ${reply.code} ${clean(replyText(reply))}`),
    '',
    `--${boundary}`,
    'Content-Type: message/delivery-status',
    '',
    `Reporting-MTA: dns; ${i.hostname}`,
    `X-Avgate-Queue-ID: ${i.queueId}`,
    `Arrival-Date: ${i.arrival.toUTCString().replace('GMT', '+0000')}`,
  );
  for (const { r, reply } of failed) {
    const orcpt = typeof r.params.ORCPT === 'string' ? r.params.ORCPT : null;
    lines.push(
      '',
      ...(orcpt ? [`Original-Recipient: ${clean(orcpt)}`] : []),
      `Final-Recipient: rfc822; ${clean(r.address)}`,
      'Action: failed',
      `Status: ${statusOf(reply)}`,
      `Diagnostic-Code: smtp; ${reply.code} ${clean(replyText(reply))}`,
    );
  }
  lines.push('', `--${boundary}`, 'Content-Type: text/rfc822-headers', '');
  const head = Buffer.from(`${lines.join('\r\n')}\r\n`, 'utf8');
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'latin1');
  const headers = withCrlfEnd(i.headers);
  const utf8 = [i.sender, ...failed.map(({ r }) => r.address)].some((a) => /[^\p{ASCII}]/u.test(a));
  return { to: i.sender, failed: failed.map(({ r }) => r.address), message: Buffer.concat([head, headers, tail]), utf8 };
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
