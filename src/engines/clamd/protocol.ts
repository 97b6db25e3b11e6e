import type { VerdictResult } from '../../core/verdict.js';

/**
 * clamd's wire format, without sockets. Commands are sent in the `z` form (`zINSTREAM\0`) so
 * replies are NUL-terminated; inside an IDSESSION every reply is prefixed with the request id
 * (`3: stream: OK`). INSTREAM data travels as chunks, each a 4-byte big-endian length followed by
 * that many bytes, ended by a zero-length chunk.
 */
export function commandBytes(command: string): Buffer {
  return Buffer.from(`z${command}\0`, 'latin1');
}

export function chunkHeader(length: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(length, 0);
  return b;
}

export const END_OF_STREAM = Buffer.alloc(4);

/** Splits `12: reply` into id and reply; replies outside a session have no id. */
export function splitSessionReply(raw: string): { id: number | null; reply: string } {
  const m = /^(\d+): ([\s\S]*)$/.exec(raw);
  if (!m) return { id: null, reply: raw };
  return { id: Number(m[1]), reply: m[2] ?? '' };
}

export interface ReplyOptions {
  /** Treat `Heuristics.Encrypted.*` detections as skipped ("protected") rather than found. */
  encryptedAsSkipped?: boolean;
}

/** Messages of clamd's that mean "I declined to scan this", not "I failed". */
const SKIP_ERRORS = [/size limit exceeded/i, /exceeds? (the )?max/i];

/**
 * Maps a scan reply to a verdict. A reply may hold several results (ALLMATCHSCAN, one per line):
 * `stream: OK`, `stream: Eicar-Signature FOUND`, `/path: Can't open file ERROR`,
 * `INSTREAM size limit exceeded. ERROR`. Anything else is unknown, with the raw text kept.
 */
export function parseScanReply(raw: string, options: ReplyOptions = {}): VerdictResult {
  const lines = raw
    .split(/[\n\0]/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  if (lines.length === 0) return { status: 'unknown', raw };
  const names: string[] = [];
  const encrypted: string[] = [];
  let free = false;
  for (const line of lines) {
    if (line.endsWith(' FOUND')) {
      const body = line.slice(0, -' FOUND'.length);
      const sep = body.lastIndexOf(': ');
      const name = (sep >= 0 ? body.slice(sep + 2) : body).trim();
      if (name.length === 0) return { status: 'unknown', raw };
      if (options.encryptedAsSkipped && /^Heuristics\.Encrypted\./.test(name)) encrypted.push(name);
      else names.push(name);
    } else if (line === 'OK' || line.endsWith(': OK')) {
      free = true;
    } else if (line.endsWith(' ERROR')) {
      const message = line.slice(0, -' ERROR'.length).replace(/^[^:]*: /, '').trim();
      if (SKIP_ERRORS.some((re) => re.test(message))) return { status: 'skipped', reason: `engine: ${message}` };
      return { status: 'error', code: 'AVG_ERR_ENGINE_FAILED', cause: `engine: ${message}` };
    } else {
      return { status: 'unknown', raw };
    }
  }
  if (names.length > 0) return { status: 'found', names: [...new Set(names)] };
  if (encrypted.length > 0) return { status: 'skipped', reason: `encrypted (${encrypted.join(', ')})` };
  if (free) return { status: 'free' };
  return { status: 'unknown', raw };
}

/**
 * `ClamAV 1.4.6/27432/Sat Nov 21 09:20:01 2026` → signature part `27432/Sat Nov 21 ...`.
 * With only local databases clamd prints just `ClamAV 1.4.6`: then the engine version is all we
 * know, and the caller adds a fingerprint of the database directory.
 */
export function parseVersion(raw: string): { engine: string; signatures: string | null } {
  const text = raw.replace(/\0/g, '').trim();
  const slash = text.indexOf('/');
  if (slash < 0) return { engine: text, signatures: null };
  return { engine: text.slice(0, slash), signatures: text.slice(slash + 1) };
}

export type ClamdAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/** `unix:/run/clamd.ctl`, `/run/clamd.ctl`, `tcp:127.0.0.1:3310`, `127.0.0.1:3310`, `[::1]:3310`. */
export function parseAddress(text: string): ClamdAddress | null {
  const t = text.trim();
  if (t.startsWith('unix:')) return t.length > 5 ? { kind: 'unix', path: t.slice(5) } : null;
  if (t.startsWith('/')) return { kind: 'unix', path: t };
  const rest = t.startsWith('tcp:') ? t.slice(4) : t;
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(rest);
  if (!m) return null;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return null;
  return { kind: 'tcp', host: (m[1] ?? m[2]) as string, port };
}

export function formatAddress(a: ClamdAddress): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `tcp:${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

/** A stand-in for the path while a reply is parsed: the real path may hold `: `, `\n`, ` OK`. */
const REPLY_SUBJECT = 'file';

/**
 * A SCAN reply must be about the file that was asked for: `<path>: OK`, `<path>: Name FOUND`,
 * `<path>: ... ERROR`. A verdict about some other name is no answer about ours (unknown); clamd's
 * own complaints (`UNKNOWN COMMAND`, errors) carry no path and stand as they are.
 */
export function pathReplyVerdict(reply: string, wirePath: string, options: ReplyOptions = {}): VerdictResult {
  const raw = reply.replace(/[\0\s]+$/, '');
  const prefix = `${wirePath}: `;
  if (raw.startsWith(prefix)) {
    const v = parseScanReply(`${REPLY_SUBJECT}: ${raw.slice(prefix.length)}`, options);
    return v.status === 'unknown' ? { status: 'unknown', raw } : v;
  }
  const v = parseScanReply(raw, options);
  return v.status === 'error' || v.status === 'unknown' ? v : { status: 'unknown', raw };
}
