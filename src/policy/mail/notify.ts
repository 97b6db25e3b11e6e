import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { MailHeader, MessageFacts } from './facts.js';
import type { AdminAttachment } from './groups.js';
import { crlfLines, formatMailDate, headerField, sanitizeMessageId, textBody } from './mime-text.js';

/** A notification the plan asks for, with its texts already rendered. */
export interface NotificationPlan {
  kind: 'sender' | 'recipient' | 'admin';
  /** From: header (mail.notify-from). */
  from: string;
  /**
   * Envelope sender: always the null reverse-path `<>` (RFC 3834 §3.3, RFC 5321 §4.5.5), so a
   * notification that cannot be delivered never bounces back into another notification.
   */
  envelopeFrom: '';
  /** Envelope recipients, and the To: header. One recipient notice per recipient (no leak of a BCC list). */
  to: string[];
  subject: string;
  body: string;
  /** What the admin notice carries besides its text. */
  attach: AdminAttachment;
  /** The report, for `attach` report or original. */
  report: string;
  /** Message-ID of the original, for References. */
  inReplyTo: string | null;
  date: Date;
}

/** Why a sender was not notified although the status asked for it. */
export type SenderSuppression = 'null-sender' | 'bulk' | 'forging-virus' | 'loop' | 'rejected';

function header(headers: readonly MailHeader[], name: string): string[] {
  const n = name.toLowerCase();
  return headers.filter((h) => h.name.toLowerCase() === n).map((h) => h.value.trim());
}

/**
 * Bulk, list or automatic mail, which should never get an automatic answer: the null sender, a
 * Precedence of bulk/list/junk, a List-Id (RFC 2919), an Auto-Submitted other than `no` (RFC 3834).
 * Returns the reason, or null for an ordinary message.
 */
export function bulkReason(facts: Pick<MessageFacts, 'sender' | 'headers'>): string | null {
  if (facts.sender.trim() === '' || facts.sender.trim() === '<>') return 'null sender';
  for (const p of header(facts.headers, 'Precedence')) {
    if (/^(bulk|list|junk)\b/i.test(p)) return `Precedence: ${p.toLowerCase()}`;
  }
  if (header(facts.headers, 'List-Id').length > 0) return 'List-Id';
  for (const a of header(facts.headers, 'Auto-Submitted')) {
    // `no` may carry a comment: `no (the user wrote this)`.
    const token = a.replace(/\([^)]*\)/g, '').trim().toLowerCase();
    if (token !== 'no') return `Auto-Submitted: ${token || '(empty)'}`;
  }
  return null;
}

/** The first name that belongs to a family known to forge senders, or null. */
export function forgingName(names: readonly string[], patterns: readonly RegExp[]): string | null {
  for (const n of names) if (patterns.some((re) => re.test(n))) return n;
  return null;
}

export interface BuildOptions {
  /**
   * The unchanged original, for an admin notice with `attach: original`: a stream, or a function
   * that opens one (called once, when the stream gets that far). It is copied through, never held
   * in memory as a whole.
   */
  original?: Readable | (() => Readable);
  /** Message-ID of the notification; default a random one at the notify-from domain. */
  messageId?: string;
  /** MIME boundary; default random (tests fix it). */
  boundary?: string;
}

function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  const d = at >= 0 ? address.slice(at + 1) : '';
  return /^[A-Za-z0-9.-]+$/.test(d) ? d : 'localhost';
}

function mailbox(address: string): string {
  return `<${address.replace(/[\s<>]/g, '')}>`;
}

// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

/**
 * The To: header. RFC 2047 words are not allowed in an address, so an address that is not ASCII
 * (an SMTPUTF8 recipient) is written as UTF-8 (RFC 6532); the notice then goes out with SMTPUTF8
 * (`needsSmtpUtf8`), or not at all when the next hop cannot take it.
 */
function toField(to: readonly string[]): string {
  const value = to.map(mailbox).join(', ');
  return NON_ASCII.test(value) ? `To: ${value.split(', ').join(',\r\n ')}\r\n` : headerField('To', value);
}

/** Whether an address list needs SMTPUTF8. */
export function anyNonAscii(addresses: readonly string[]): boolean {
  return addresses.some((a) => NON_ASCII.test(a));
}

/**
 * Whether a notification must be sent with SMTPUTF8: a recipient address that is not ASCII, or
 * (admin notice with the original attached) an original that came with SMTPUTF8.
 */
export function needsSmtpUtf8(n: Pick<NotificationPlan, 'to' | 'attach'>, originalSmtpUtf8: boolean): boolean {
  return anyNonAscii(n.to) || (n.attach === 'original' && originalSmtpUtf8);
}

function textPart(text: string, extra: string[] = []): string {
  const body = textBody(text);
  return [
    'Content-Type: text/plain; charset=utf-8',
    ...extra,
    `Content-Transfer-Encoding: ${body.encoding}`,
    '',
    body.data,
  ].join('\r\n');
}

/**
 * A complete RFC 5322 message for one notification, as a stream: headers, a text/plain UTF-8 body,
 * and for the admin optionally multipart/mixed with the report (text/plain attachment) and the
 * original (message/rfc822). Line ends are CRLF. The caller dot-stuffs when it sends over SMTP.
 */
export function buildNotification(n: NotificationPlan, options: BuildOptions = {}): Readable {
  if (n.attach === 'original' && options.original === undefined) {
    throw new Error('buildNotification: attach "original" needs options.original');
  }
  const messageId = options.messageId ?? `<${Date.now().toString(36)}.${randomBytes(9).toString('hex')}@${domainOf(n.from)}>`;
  const ref = sanitizeMessageId(n.inReplyTo);
  const head =
    headerField('From', `Antivirus gateway ${mailbox(n.from)}`) +
    toField(n.to) +
    headerField('Subject', n.subject) +
    headerField('Date', formatMailDate(n.date)) +
    headerField('Message-ID', messageId) +
    (ref ? headerField('References', ref) : '') +
    'MIME-Version: 1.0\r\n' +
    'Auto-Submitted: auto-generated\r\n';
  if (n.attach === 'none') {
    return Readable.from([Buffer.from(`${head}${textPart(n.body)}\r\n`, 'utf8')]);
  }
  const boundary = options.boundary ?? `avgate-${randomBytes(12).toString('hex')}`;
  const original = options.original;
  async function* parts(): AsyncGenerator<Buffer> {
    yield Buffer.from(
      `${head}Content-Type: multipart/mixed; boundary="${boundary}"\r\n\r\n` +
        'This is a message in MIME format.\r\n' +
        `--${boundary}\r\n${textPart(n.body)}\r\n` +
        `--${boundary}\r\n${textPart(n.report, ['Content-Disposition: attachment; filename="report.txt"'])}\r\n`,
      'utf8',
    );
    if (n.attach === 'original' && original !== undefined) {
      yield Buffer.from(
        `--${boundary}\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename="original.eml"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`,
        'utf8',
      );
      const stream = typeof original === 'function' ? original() : original;
      // The original's bytes go through as they are, with bare LF made CRLF; a random boundary of
      // 96 bits cannot occur in it by chance.
      yield* crlfLines(stream);
      yield Buffer.from('\r\n', 'utf8');
    }
    yield Buffer.from(`--${boundary}--\r\n`, 'utf8');
  }
  return Readable.from(parts(), { objectMode: false });
}
