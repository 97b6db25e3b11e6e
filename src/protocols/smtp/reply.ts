import type { SmtpReply } from './types.js';

const STATUS = /^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)/;

/** A reply from parts; `text` may hold several lines. */
export function reply(code: number, status: string | null, text: string | readonly string[]): SmtpReply {
  return { code, status, lines: typeof text === 'string' ? text.split(/\r?\n/) : [...text] };
}

export function isPositive(r: SmtpReply): boolean {
  return r.code >= 200 && r.code < 300;
}

export function isTemporary(r: SmtpReply): boolean {
  return r.code >= 400 && r.code < 500;
}

export function isPermanent(r: SmtpReply): boolean {
  return r.code >= 500;
}

/**
 * Builds a reply from the lines of one server response ("250-first", "250 last"). The enhanced
 * status is taken from the first line when it is there and agrees with the reply class (RFC 3463:
 * a 2.x.x on a 550 is not trusted), and removed from every line that repeats it.
 */
export function replyFromLines(code: number, texts: readonly string[]): SmtpReply {
  const first = STATUS.exec(texts[0] ?? '');
  const status = first && first[1] === String(code)[0] ? `${first[1]}.${first[2]}.${first[3]}` : null;
  const lines = status
    ? texts.map((t) => {
        const m = STATUS.exec(t);
        return m && `${m[1]}.${m[2]}.${m[3]}` === status ? t.slice(m[0].length) : t;
      })
    : [...texts];
  return { code, status, lines };
}

/** The wire form, CRLF-terminated: "250-2.0.0 a\r\n250 2.0.0 b\r\n". */
export function formatReply(r: SmtpReply): string {
  const lines = r.lines.length > 0 ? r.lines : [''];
  return lines
    .map((l, i) => `${r.code}${i < lines.length - 1 ? '-' : ' '}${r.status ? `${r.status} ` : ''}${safeText(l)}`.trimEnd())
    .join('\r\n')
    .concat('\r\n');
}

/**
 * One line of text: status and lines folded together (smtp-server answers DATA with one line per
 * reply). Control characters become spaces, so a next hop's text cannot split our reply.
 */
export function replyText(r: SmtpReply): string {
  const text = r.lines.map(safeText).filter((l) => l.length > 0).join(' ');
  return r.status ? `${r.status} ${text}`.trimEnd() : text;
}

function safeText(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x1f\x7f]/g, ' ');
}

/** For a log line: "250 2.0.0 Ok: queued as X". */
export function replySummary(r: SmtpReply): string {
  return `${r.code} ${replyText(r)}`.trimEnd();
}

/**
 * The single DATA reply of an SMTP transaction whose recipients got different replies from the
 * handler: any temporary failure → that 4xx (the client retries every recipient later); all
 * permanent → the first 5xx; otherwise 250 (the recipients that failed permanently are the
 * handler's to report, e.g. by a bounce; the partition hook avoids the case). `mixed` says
 * whether the replies disagreed.
 */
export function combineReplies(replies: readonly SmtpReply[]): { reply: SmtpReply; mixed: boolean } {
  const classes = new Set(replies.map((r) => Math.floor(r.code / 100)));
  const mixed = classes.size > 1;
  const temp = replies.find(isTemporary);
  if (temp) return { reply: temp, mixed };
  if (replies.length > 0 && replies.every(isPermanent)) return { reply: replies[0] as SmtpReply, mixed };
  return { reply: replies.find(isPositive) ?? reply(250, '2.0.0', 'Ok'), mixed };
}

/** RFC 3461 xtext: "+" and "=", controls, space and non-ASCII as +XX. */
export function encodeXtext(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    out += byte > 32 && byte < 127 && byte !== 0x2b && byte !== 0x3d ? String.fromCharCode(byte) : `+${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
