import { createWriteStream } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { hostname, userInfo } from 'node:os';
import { resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import type { LoadedConfig } from '../config/loader.js';
import { AvgateError, messageOf } from '../core/errors.js';
import { VERDICT_STATUSES } from '../core/verdict.js';
import { MAIL_STATUSES } from '../policy/mail/status.js';
import { formatBytes, parseDuration, parseSize } from '../core/units.js';
import { NextHopClient, nextHopOptions } from '../protocols/smtp/next-hop.js';
import { exportZip } from '../quarantine/export.js';
import { MAIL_SOURCES, releaseItem, restoreItem } from '../quarantine/release.js';
import { purgeByConfig } from '../quarantine/retention.js';
import { openQuarantine } from '../quarantine/store.js';
import { QUARANTINE_SOURCES, type Quarantine, type QuarantineFilter, type QuarantineRecord, type QuarantineSource } from '../quarantine/types.js';

export const QUARANTINE_USAGE = `usage: avgate quarantine COMMAND

  list [--since 1d|ISO-DATE] [--status S] [--source S] [--text T] [--limit N] [--json]
  show ID [--json]                 the record, its audit trail and (mail) the header block
  export ID FILE [--zip]           the original (0600, never overwrites); --zip: ZIP under quarantine.export-password
  release ID [--to ADDR ...]       re-send a mail item unchanged through smtp.next-hop (original recipients by default)
  restore ID [PATH] [--force]      write a file item back (default: where it was found)
  delete ID                        remove the item (and its object when no other item shares it)
  purge [--older-than 30d] [--max-total-size SIZE] [--dry-run]   default: the quarantine.max-age / max-total-size limits;
        --dry-run lists what would be removed and removes nothing

Exit status: 0 done, 1 not found or refused, 2 usage error.
`;

export interface QuarantineIo {
  stdout: Writable;
  stderr: Writable;
}

class UsageError extends Error {}

/** The actor of audit records: `cli:<user>`. */
function actor(): string {
  let user = process.env.USER ?? process.env.LOGNAME ?? '';
  if (!user) {
    try {
      user = userInfo().username;
    } catch {
      user = 'unknown';
    }
  }
  return `cli:${user}`;
}

/** `avgate quarantine ...`: thin commands over src/quarantine. */
export async function runQuarantineCommand(loaded: LoadedConfig, args: string[], io: QuarantineIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
    io.stdout.write(QUARANTINE_USAGE);
    return sub === undefined ? 2 : 0;
  }
  const commands: Record<string, (q: Quarantine, a: string[]) => Promise<number>> = {
    list: (q, a) => list(q, a, io),
    show: (q, a) => show(q, a, io),
    export: (q, a) => exportCommand(q, a, io, loaded),
    release: (q, a) => release(q, a, io, loaded),
    restore: (q, a) => restore(q, a, io),
    delete: (q, a) => deleteCommand(q, a, io),
    purge: (q, a) => purge(q, a, io, loaded),
  };
  const command = commands[sub];
  if (!command) {
    io.stderr.write(`avgate: unknown quarantine command "${sub}"\n${QUARANTINE_USAGE}`);
    return 2;
  }
  let q: Quarantine;
  try {
    q = await openQuarantine(loaded.config);
  } catch (e) {
    io.stderr.write(`avgate: cannot open the quarantine: ${messageOf(e)}\n`);
    return 1;
  }
  try {
    return await command(q, rest);
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      io.stderr.write(`avgate: ${messageOf(e)}\n${QUARANTINE_USAGE}`);
      return 2;
    }
    io.stderr.write(`avgate: ${messageOf(e)}\n`);
    return e instanceof AvgateError ? 1 : 2;
  } finally {
    await q.close();
  }
}

function one(positionals: string[], names: string[], optional: string[] = []): string[] {
  if (positionals.length < names.length || positionals.length > names.length + optional.length) {
    throw new UsageError(`expected ${[...names, ...optional.map((n) => `[${n}]`)].join(' ')}`);
  }
  return positionals;
}

/** Prints terminal-safe text: control characters other than tab and newline become `?`. */
function safe(text: string): string {
  return [...text].map((c) => (c === '\t' || c === '\n' || (c.charCodeAt(0) >= 0x20 && c.charCodeAt(0) !== 0x7f && !(c.charCodeAt(0) >= 0x80 && c.charCodeAt(0) < 0xa0)) ? c : '?')).join('');
}

function notFound(io: QuarantineIo, id: string): number {
  io.stderr.write(`avgate: no quarantined item ${JSON.stringify(id)}\n`);
  return 1;
}

async function list(q: Quarantine, args: string[], io: QuarantineIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { since: { type: 'string' }, status: { type: 'string' }, source: { type: 'string' }, text: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' } },
  });
  one(positionals, []);
  const filter: QuarantineFilter = {};
  if (values.since !== undefined) filter.since = parseSince(values.since);
  if (values.status !== undefined) {
    // Mail items carry the mail statuses, the others the verdicts'.
    const statuses = [...new Set<string>([...MAIL_STATUSES, ...VERDICT_STATUSES])];
    if (!statuses.includes(values.status)) throw new UsageError(`--status: one of ${statuses.join(', ')}`);
    filter.status = values.status;
  }
  if (values.source !== undefined) {
    if (!(QUARANTINE_SOURCES as readonly string[]).includes(values.source)) throw new UsageError(`--source: one of ${QUARANTINE_SOURCES.join(', ')}`);
    filter.source = values.source as QuarantineSource;
  }
  if (values.text !== undefined) filter.text = values.text;
  if (values.limit !== undefined) {
    const n = Number(values.limit);
    if (!Number.isInteger(n) || n < 1 || n > 10_000) throw new UsageError('--limit: a whole number from 1 to 10000');
    filter.limit = n;
  }
  const records = await q.list(filter);
  if (values.json) {
    io.stdout.write(`${JSON.stringify(records, null, 2)}\n`);
    return 0;
  }
  for (const r of records) io.stdout.write(`${summaryLine(r)}\n`);
  if (records.length === 0) io.stdout.write('(no items)\n');
  return 0;
}

function summaryLine(r: QuarantineRecord): string {
  const what = MAIL_SOURCES.has(r.source)
    ? `${r.sender || '<>'} -> ${r.recipients.join(',')} ${JSON.stringify(r.subject ?? '')}`
    : (r.url ?? r.originalPath ?? r.fileName ?? '');
  const released = r.releasedAt ? ' released' : '';
  return safe(`${r.id}  ${r.date}  ${r.source}  ${r.statuses.join(',')}  ${r.virusNames.join(',') || '-'}  ${formatBytes(r.size)}${released}  ${what}`).replace(/\n/g, ' ');
}

/** `1d`, `12h` (that long ago) or an ISO 8601 date. */
function parseSince(text: string): Date {
  const ms = parseDuration(text);
  if (ms !== null && /[a-z]$/i.test(text.trim())) return new Date(Date.now() - ms);
  const d = new Date(text);
  if (/^\d{4}-\d{2}-\d{2}/.test(text) && !Number.isNaN(d.getTime())) return d;
  throw new UsageError(`--since: a duration (1d, 12h) or an ISO date, not ${JSON.stringify(text)}`);
}

async function show(q: Quarantine, args: string[], io: QuarantineIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const [id] = one(positionals, ['ID']) as [string];
  const item = await q.get(id);
  if (!item) return notFound(io, id);
  const audit = await q.auditTrail(item.record.id);
  const headers = MAIL_SOURCES.has(item.record.source) ? await headerBlock(item.open()) : null;
  if (values.json) {
    io.stdout.write(`${JSON.stringify({ record: item.record, audit, headers }, null, 2)}\n`);
    return 0;
  }
  const r = item.record;
  const rows: Array<[string, unknown]> = [
    ['id', r.id],
    ['date', r.date],
    ['source', r.source],
    ['group', r.group],
    ['statuses', r.statuses.join(', ')],
    ['virus names', r.virusNames.join(', ')],
    ['action', r.action],
    ['size', `${r.size} (${formatBytes(r.size)})`],
    ['sha256', r.sha256],
    ['sender', MAIL_SOURCES.has(r.source) ? r.sender || '<>' : null],
    ['recipients', r.recipients.join(', ')],
    ['subject', r.subject],
    ['message-id', r.messageId],
    ['queue id', r.queueId],
    ['file name', r.fileName],
    ['url', r.url],
    ['original path', r.originalPath],
    ['released', r.releasedAt],
    ['note', r.note],
  ];
  for (const [k, v] of rows) if (v !== null && v !== '') io.stdout.write(safe(`${`${k}:`.padEnd(15)}${String(v).replace(/\n/g, '\n               ')}`) + '\n');
  io.stdout.write('\naudit:\n');
  for (const a of audit) io.stdout.write(safe(`  ${a.date}  ${a.action}  ${a.actor}  ${JSON.stringify(a.detail)}`) + '\n');
  if (headers !== null) io.stdout.write(`\nheaders:\n${safe(headers)}\n`);
  return 0;
}

/** The message's top header block (up to the first empty line, at most 64 KiB), as text. */
async function headerBlock(stream: Readable): Promise<string> {
  const max = 64 * 1024;
  const parts: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      parts.push(chunk);
      total += chunk.length;
      const seen = Buffer.concat(parts);
      const end = seen.indexOf('\r\n\r\n') >= 0 ? seen.indexOf('\r\n\r\n') : seen.indexOf('\n\n');
      if (end >= 0 || total >= max) {
        stream.destroy();
        return seen.subarray(0, end >= 0 ? end : max).toString('utf8').replace(/\r\n/g, '\n');
      }
    }
  } catch (e) {
    return `(cannot read the original: ${messageOf(e)})`;
  }
  return Buffer.concat(parts).toString('utf8').replace(/\r\n/g, '\n');
}

async function exportCommand(q: Quarantine, args: string[], io: QuarantineIo, loaded: LoadedConfig): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { zip: { type: 'boolean' } } });
  const [id, file] = one(positionals, ['ID', 'FILE']) as [string, string];
  const item = await q.get(id);
  if (!item) return notFound(io, id);
  const path = resolve(file);
  let fh;
  try {
    // 'wx' and 0600: an export never replaces a file and is nobody else's to read.
    fh = await open(path, 'wx', 0o600);
  } catch (e) {
    io.stderr.write(`avgate: cannot create ${path}: ${messageOf(e)}\n`);
    return 1;
  }
  try {
    const source = values.zip ? exportZip(item, loaded.config.quarantine['export-password']) : item.open();
    await pipeline(source, createWriteStream('', { fd: fh, flush: true }));
  } catch (e) {
    await fh.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    io.stderr.write(`avgate: export failed (nothing written): ${messageOf(e)}\n`);
    return 1;
  }
  await q.audit({ itemId: item.record.id, action: 'export', actor: actor(), detail: { path, zip: values.zip === true } });
  io.stdout.write(`${path}${values.zip ? ' (zip, password from quarantine.export-password)' : ''}\n`);
  return 0;
}

async function release(q: Quarantine, args: string[], io: QuarantineIo, loaded: LoadedConfig): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { to: { type: 'string', multiple: true } } });
  const [id] = one(positionals, ['ID']) as [string];
  if (!(await q.get(id))) return notFound(io, id);
  const smtp = loaded.config.smtp;
  const nextHop = new NextHopClient(smtp['next-hop'].target, nextHopOptions(smtp['next-hop'], smtp.hostname ?? hostname()));
  try {
    const result = await releaseItem(q, id, { ...(values.to ? { to: values.to } : {}), nextHop, actor: actor() });
    result.recipients.forEach((rcpt, i) => {
      const r = result.replies[i];
      io.stdout.write(safe(`${rcpt}: ${r ? `${r.code}${r.status ? ` ${r.status}` : ''} ${r.lines.join(' ')}` : 'no reply'}`) + '\n');
    });
    return result.ok ? 0 : 1;
  } finally {
    await nextHop.close();
  }
}

async function restore(q: Quarantine, args: string[], io: QuarantineIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { force: { type: 'boolean' } } });
  const [id, target] = one(positionals, ['ID'], ['PATH']) as [string, string | undefined];
  const item = await q.get(id);
  if (!item) return notFound(io, id);
  const path = target ?? item.record.originalPath;
  if (!path) {
    io.stderr.write(`avgate: item ${id} has no original path: give PATH\n`);
    return 1;
  }
  const absolute = resolve(path);
  await restoreItem(q, id, absolute, { overwrite: values.force === true, actor: actor() });
  io.stdout.write(`${absolute}\n`);
  return 0;
}

async function deleteCommand(q: Quarantine, args: string[], io: QuarantineIo): Promise<number> {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  const [id] = one(positionals, ['ID']) as [string];
  if (!(await q.remove(id, actor()))) return notFound(io, id);
  io.stdout.write(`deleted ${id}\n`);
  return 0;
}

async function purge(q: Quarantine, args: string[], io: QuarantineIo, loaded: LoadedConfig): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { 'older-than': { type: 'string' }, 'max-total-size': { type: 'string' }, 'dry-run': { type: 'boolean' } },
  });
  one(positionals, []);
  const dryRun = values['dry-run'] === true;
  let result;
  if (values['older-than'] === undefined && values['max-total-size'] === undefined) {
    result = await purgeByConfig(q, loaded.config.quarantine, actor(), dryRun);
  } else {
    const olderThanMs = values['older-than'] === undefined ? undefined : parseDuration(values['older-than']);
    const maxTotalSize = values['max-total-size'] === undefined ? undefined : parseSize(values['max-total-size']);
    if (olderThanMs === null) throw new UsageError('--older-than: a duration such as 30d or 12h');
    if (maxTotalSize === null) throw new UsageError('--max-total-size: a size such as 10GiB');
    result = await q.purge({ ...(olderThanMs !== undefined ? { olderThanMs } : {}), ...(maxTotalSize !== undefined ? { maxTotalSize } : {}), actor: actor(), dryRun });
  }
  const usage = await q.usage();
  if (dryRun) {
    // The items as `list` shows them, so the admin sees what would go (sources, dates, names).
    for (const id of result.ids ?? []) {
      const r = (await q.get(id))?.record;
      io.stdout.write(r ? `${summaryLine(r)}\n` : `${id}\n`);
    }
    io.stdout.write(`dry run: would purge ${result.removed} item(s), ${formatBytes(result.bytes)} freed; ${usage.items} item(s), ${formatBytes(usage.bytes)} now; nothing removed\n`);
    return 0;
  }
  io.stdout.write(`purged ${result.removed} item(s), ${formatBytes(result.bytes)} freed; left: ${usage.items} item(s), ${formatBytes(usage.bytes)}\n`);
  return 0;
}
