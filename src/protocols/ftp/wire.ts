import { isIP } from 'node:net';

/**
 * FTP wire format (RFC 959, RFC 2428 for EPRT/EPSV): command lines from the client, reply lines
 * from the server, and the host-port arguments of PORT/PASV/EPRT/EPSV. Pure functions: no sockets,
 * no policy; every parser answers null (or a marked result) for garbage, never throws.
 */

export interface FtpCommand {
  /** Upper-cased verb (letters only, at most 4 by RFC 959, up to 8 tolerated for extensions). */
  verb: string;
  /** Everything after the first space (may be empty). */
  arg: string;
}

/** A command line without its line end; null when it is not `VERB[ SP arg]`. */
export function parseCommand(line: string): FtpCommand | null {
  // Telnet IAC sequences (IP, DM before ABOR) are dropped: a client may put them in front of ABOR.
  const clean = line.replace(/\xff[\xf0-\xfe]?/g, '');
  const m = /^([A-Za-z]{3,8})(?: (.*))?$/.exec(clean);
  if (!m) return null;
  const arg = m[2] ?? '';
  // A NUL or a stray CR inside a line would let a client smuggle a second command upstream.
  if (/[\0\r\n]/.test(arg)) return null;
  return { verb: (m[1] as string).toUpperCase(), arg };
}

export function formatCommand(verb: string, arg = ''): string {
  return arg.length > 0 ? `${verb} ${arg}\r\n` : `${verb}\r\n`;
}

/** One reply line: `NNN text` ends a reply, `NNN-text` opens a multi-line one, anything else continues it. */
export type ReplyLine = { code: number; last: boolean; text: string } | { code: null; last: false; text: string };

export function parseReplyLine(line: string): ReplyLine {
  const m = /^([1-5]\d\d)([ -])(.*)$/.exec(line);
  if (m) return { code: Number(m[1]), last: m[2] === ' ', text: m[3] as string };
  // RFC 959 allows "NNN" alone as a last line.
  const bare = /^([1-5]\d\d)$/.exec(line);
  if (bare) return { code: Number(bare[1]), last: true, text: '' };
  return { code: null, last: false, text: line };
}

/** A whole reply: its code and its lines (as received, without line ends). */
export interface FtpReply {
  code: number;
  lines: string[];
}

/**
 * Collects reply lines into replies. A multi-line reply ends at the first line starting with the
 * same code and a space (RFC 959 4.2); lines in between are kept verbatim. `maxLines` bounds one
 * reply (a server that never ends a reply would otherwise fill memory).
 */
export class ReplyAssembler {
  private open: { code: number; lines: string[] } | null = null;

  constructor(private readonly maxLines = 1000) {}

  /** Feeds one line; returns a reply when it completes one, an error text for garbage, else null. */
  push(line: string): FtpReply | { error: string } | null {
    const p = parseReplyLine(line);
    if (!this.open) {
      if (p.code === null) return { error: `not a reply line: ${line.slice(0, 80)}` };
      if (p.last) return { code: p.code, lines: [line] };
      this.open = { code: p.code, lines: [line] };
      return null;
    }
    this.open.lines.push(line);
    if (this.open.lines.length > this.maxLines) {
      this.open = null;
      return { error: `a multi-line reply longer than ${this.maxLines} lines` };
    }
    if (p.code === this.open.code && p.last) {
      const done = this.open;
      this.open = null;
      return done;
    }
    return null;
  }

  get inReply(): boolean {
    return this.open !== null;
  }
}

/** Formats a reply (one or several lines) with CRLF line ends; text lines never carry CR/LF. */
export function formatReply(code: number, text: string | readonly string[]): string {
  const lines = (typeof text === 'string' ? [text] : [...text]).map((l) => l.replace(/[\r\n]+/g, ' '));
  if (lines.length <= 1) return `${code} ${lines[0] ?? ''}\r\n`;
  const head = lines.slice(0, -1).map((l, i) => (i === 0 ? `${code}-${l}` : ` ${l}`));
  return `${head.join('\r\n')}\r\n${code} ${lines.at(-1) as string}\r\n`;
}

export interface HostPort {
  host: string;
  port: number;
}

/** `h1,h2,h3,h4,p1,p2` (PORT argument, and the numbers inside a 227 reply). */
export function parseHostPortNumbers(text: string): HostPort | null {
  const m = /^\s*(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})\s*$/.exec(text);
  if (!m) return null;
  const n = m.slice(1).map(Number);
  if (n.some((x) => x > 255)) return null;
  const port = (n[4] as number) * 256 + (n[5] as number);
  if (port === 0) return null;
  return { host: n.slice(0, 4).join('.'), port };
}

export function formatHostPortNumbers(hp: HostPort): string {
  return `${hp.host.split('.').join(',')},${Math.floor(hp.port / 256)},${hp.port % 256}`;
}

/** The host-port of a 227 reply: the first `h1,...,p2` group in the text (with or without parentheses). */
export function parsePasvReply(text: string): HostPort | null {
  const m = /(\d{1,3},\d{1,3},\d{1,3},\d{1,3},\d{1,3},\d{1,3})/.exec(text);
  return m ? parseHostPortNumbers(m[1] as string) : null;
}

/** The port of a 229 reply: `(|||port|)` with any delimiter character (RFC 2428). */
export function parseEpsvReply(text: string): number | null {
  const m = /\(([\x21-\x7e])\1\1(\d{1,5})\1\)/.exec(text);
  if (!m) return null;
  const port = Number(m[2]);
  return port >= 1 && port <= 65535 ? port : null;
}

/** `|1|132.235.1.2|6275|` or `|2|::1|6275|` (EPRT, RFC 2428); the delimiter is the first character. */
export function parseEprt(text: string): (HostPort & { family: 4 | 6 }) | null {
  const t = text.trim();
  if (t.length < 7) return null;
  const d = t[0] as string;
  const code = d.charCodeAt(0);
  if (code < 33 || code > 126 || /[0-9a-fA-F.:]/.test(d)) return null;
  const parts = t.split(d);
  if (parts.length !== 5 || parts[0] !== '' || parts[4] !== '') return null;
  const [, proto, host, portText] = parts as [string, string, string, string, string];
  if (proto !== '1' && proto !== '2') return null;
  if (!/^\d{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port < 1 || port > 65535) return null;
  const family = isIP(host);
  if ((proto === '1' && family !== 4) || (proto === '2' && family !== 6)) return null;
  return { host, port, family: proto === '1' ? 4 : 6 };
}

/** The directory of a 257 reply: `257 "/a ""b"" c" is current` → `/a "b" c` (RFC 959 appendix II). */
export function parsePwdReply(line: string): string | null {
  const m = /^257[ -]"((?:[^"]|"")*)"/.exec(line);
  return m ? (m[1] as string).replace(/""/g, '"') : null;
}

/**
 * The size a server announces at the end of its 150 for RETR (`150 Opening BINARY mode data
 * connection for f (1234 bytes).`, vsftpd and ProFTPD), else null. Only the end of the last line
 * counts: the file name before it is the client's and may read `(N bytes)` too.
 */
export function parseAnnouncedSize(r: FtpReply): number | null {
  const m = /\((\d{1,18}) bytes\)\.?\s*$/i.exec(r.lines.at(-1) ?? '');
  return r.code >= 100 && r.code < 200 && m ? Number(m[1]) : null;
}

/** `USER name@host[:port]` / `name@[v6]:port`: the last @ separates the login from the target. */
export function parseUserAtHost(arg: string): { user: string; host: string; port: number | null } | null {
  const at = arg.lastIndexOf('@');
  if (at <= 0 || at === arg.length - 1) return null;
  const user = arg.slice(0, at);
  const target = arg.slice(at + 1);
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+))(?::(\d{1,5}))?$/.exec(target);
  if (!m) return null;
  const host = (m[1] ?? m[2]) as string;
  if (m[1] !== undefined && isIP(host) !== 6) return null;
  const port = m[3] === undefined ? null : Number(m[3]);
  if (port !== null && (port < 1 || port > 65535)) return null;
  return { user, host, port };
}

/** An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) as the plain IPv4 address; others unchanged. */
export function plainAddress(address: string): string {
  return address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The text of a command argument or path for people (logs, doc-ACL URLs, quarantine records).
 * Lines are read as latin1, one character per octet, so that what goes to the server is exactly
 * what the client sent; FTP names are octets, and RFC 2640 makes them UTF-8. So: the octets
 * decoded as UTF-8 when they are valid UTF-8 (no overlong forms, no surrogates; a BOM is kept),
 * else as they are (latin1). Never use the result on the wire.
 */
export function textOf(octets: string): string {
  let high = false;
  for (let i = 0; i < octets.length; i++) {
    const c = octets.charCodeAt(i);
    // Above 0xff: not a string of octets, so nothing to decode.
    if (c > 0xff) return octets;
    if (c > 0x7f) high = true;
  }
  // Plain ASCII reads the same either way.
  if (!high) return octets;
  try {
    return utf8.decode(Buffer.from(octets, 'latin1'));
  } catch {
    return octets;
  }
}

/**
 * Text for a log line (a path: textOf of the octets, decoded once): control characters (C0, DEL, C1)
 * and the bidirectional formatting marks (U+202E in front of `gnp.exe` makes it show as
 * `exe.png`) replaced by `?`, bounded to `max` characters.
 */
export function printable(text: string, max = 200): string {
  // eslint-disable-next-line no-control-regex
  const t = [...text.replace(/[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, '?')];
  return t.length > max ? `${t.slice(0, max).join('')}…` : t.join('');
}
