import { createReadStream } from 'node:fs';
import { access, constants, open, stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { formatBytes } from '../core/units.js';
import { describeVerdict, type VerdictCommon, type VerdictResult } from '../core/verdict.js';
import { identityOf, moveInto, removeFile, ReportFile, runExec, EXEC_TIMEOUT_MS, type FileIdentity, type FsPath } from '../scan/actions.js';
import type { ScanService, ScanSource } from '../scan/types.js';
import { dirId, fsErrorText, fsPathOf, walk, type WalkEntry } from '../scan/walk.js';

export interface ScanCommandDeps {
  scanner: ScanService;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
  /** Standard error is a terminal: show the progress line. */
  isTTY: boolean;
}

export const SCAN_USAGE = `Usage: avgate scan [options] PATH... | -

Scans files and directories (recursively) with the configured engines, like clamscan.
"-" scans standard input.

Options:
  --list FILE          read more paths from FILE, one per line (repeatable; not "-")
  --exclude GLOB       leave out entries matching GLOB (picomatch; repeatable). Matched against
                       the path relative to the named directory and against the base name, and
                       a GLOB starting with / against the absolute path; a matching directory is
                       not entered. Named paths are never excluded.
  --max-depth N        deepest level scanned below a named directory: its entries are depth 1,
                       their entries depth 2 ... 0 scans only files named directly.
  --follow-symlinks    follow symbolic links inside the tree, wherever they point (loops are
                       detected). Default: links inside a tree are not followed and are reported
                       as SKIPPED; a path named on the command line is always resolved.
  --json               one JSON object per line: {"type":"result", path, status, names | reason |
                       raw | code+cause, engine, signatureVersion, bytes, ms, cached, actions?},
                       and at the end {"type":"summary", ...}, all on standard output. A path
                       that is not valid UTF-8 has U+FFFD in "path" and its exact bytes in
                       "pathBase64" (also "toBase64" for the --move target)
  --infected           print only results that are not OK (found, error, unknown, and objects
                       skipped by a size limit; not links, FIFOs or devices the walk skipped)
  --no-summary         do not print the summary
  --move DIR           move infected files into DIR (name.1, name.2 ... on a collision)
  --remove             remove infected files
  --exec CMD           run CMD with /bin/sh -c for each infected file; %FULLPATH% (absolute),
                       %FILENAME% and %VIRUSNAMES% stand for the variables $AVGATE_FULLPATH,
                       $AVGATE_FILENAME and $AVGATE_VIRUSNAMES, quoted for where they stand
                       (bare, in "..." or '...'): one word each, so no file name is ever run,
                       split or globbed. Killed after ${EXEC_TIMEOUT_MS / 1000} s. Not run for a
                       path that is not valid UTF-8 (it cannot be passed on exactly): a failure.
  --report FILE        append a line (time, path, verdict) for every infected or failed object
  --alert-exceeds-max  an object not scanned because of a size limit (scan.max-checked-size,
                       clamd's StreamMaxLength) is reported FOUND as Heuristics.Limits.Exceeded.*
                       (exit status 1, actions apply), as clamscan's option does
  -h, --help           show this help

Actions apply to infected files only, in this order: report, exec, move or remove. A file that
is a symbolic link when the action runs, or that is no longer the file scanned (another inode, as
when a directory on its path was swapped for a link), is left in place. A failed action
(including an --exec command that exits non-zero) counts as an error in the summary.

Paths are printed with control characters and bytes that are not UTF-8 escaped (\\x1b, \\u009b,
\\xff; a backslash is doubled), so that one result is always one line.

Summary: "Errors" counts error and unknown verdicts, unreadable or missing paths and failed
actions; "Skipped" counts objects not scanned (size limit, symbolic links, FIFOs and devices).

Exit status: 0 nothing found, 1 something found, 2 errors and nothing found (also for bad usage).
`;

const OPTIONS = {
  list: { type: 'string', multiple: true },
  exclude: { type: 'string', multiple: true },
  'max-depth': { type: 'string' },
  'follow-symlinks': { type: 'boolean' },
  json: { type: 'boolean' },
  infected: { type: 'boolean' },
  'no-summary': { type: 'boolean' },
  move: { type: 'string' },
  remove: { type: 'boolean' },
  exec: { type: 'string' },
  report: { type: 'string' },
  'alert-exceeds-max': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Milliseconds between redraws of the progress line. */
const PROGRESS_INTERVAL_MS = 250;

class UsageError extends Error {}

interface ScanSettings {
  roots: string[];
  lists: string[];
  exclude: string[];
  maxDepth: number;
  followSymlinks: boolean;
  json: boolean;
  infectedOnly: boolean;
  summary: boolean;
  move: string | null;
  remove: boolean;
  exec: string | null;
  report: string | null;
  alertExceedsMax: boolean;
}

function parseSettings(argv: string[]): ScanSettings | 'help' {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const v = parsed.values;
  if (v.help) return 'help';
  let maxDepth = Number.POSITIVE_INFINITY;
  if (v['max-depth'] !== undefined) {
    if (!/^\d+$/.test(v['max-depth'])) throw new UsageError(`--max-depth: expected a whole number >= 0, got "${v['max-depth']}"`);
    maxDepth = Number(v['max-depth']);
  }
  const lists = v.list ?? [];
  if (lists.includes('-')) throw new UsageError('--list takes a file; to scan standard input give "-" as a path');
  if (parsed.positionals.filter((p) => p === '-').length > 1) throw new UsageError('"-" (standard input) can be given only once');
  if (parsed.positionals.length === 0 && lists.length === 0) throw new UsageError('nothing to scan: give a path, "-" or --list FILE');
  if (v.move !== undefined && v.remove) throw new UsageError('--move and --remove exclude each other');
  if (v.move === '' || v.exec === '' || v.report === '') throw new UsageError('--move, --exec and --report need a value');
  return {
    roots: parsed.positionals,
    lists,
    exclude: v.exclude ?? [],
    maxDepth,
    followSymlinks: v['follow-symlinks'] ?? false,
    json: v.json ?? false,
    infectedOnly: v.infected ?? false,
    summary: !(v['no-summary'] ?? false),
    move: v.move ?? null,
    remove: v.remove ?? false,
    exec: v.exec ?? null,
    report: v.report ?? null,
    alertExceedsMax: v['alert-exceeds-max'] ?? false,
  };
}

/**
 * A file name may hold a newline or a terminal escape: printed raw, `evil\n/etc/passwd: OK` forges
 * a result line and ESC sequences rewrite the admin's terminal. Control characters and the
 * backslash are written as escapes, so every output line is one object. JSON output is exact.
 */
export function printablePath(path: string): string {
  // eslint-disable-next-line no-control-regex
  return path.replace(/[\\\x00-\x1f\x7f-\x9f]/g, (c) => {
    if (c === '\\') return '\\\\';
    const code = c.charCodeAt(0);
    // C1 controls (U+0080..U+009F: U+009B is CSI to xterm) as \u00XX, distinct from a raw byte \xXX.
    return code < 0x80 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/**
 * printablePath of a path's exact bytes: the valid UTF-8 sequences as text, each other byte as
 * `\xNN`. Two names that differ only in invalid bytes print differently (their decoded text,
 * with U+FFFD for each, would be the same).
 */
export function printableBytes(raw: Buffer): string {
  let out = '';
  let text = '';
  for (let i = 0; i < raw.length; ) {
    const b = raw[i] as number;
    const n = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    if (n > 0 && i + n <= raw.length) {
      const piece = raw.subarray(i, i + n);
      const ch = piece.toString('utf8');
      if ([...ch].length === 1 && Buffer.from(ch).equals(piece)) {
        text += ch;
        i += n;
        continue;
      }
    }
    out += `${printablePath(text)}\\x${b.toString(16).padStart(2, '0')}`;
    text = '';
    i += 1;
  }
  return out + printablePath(text);
}

function printable(path: string, raw?: Buffer): string {
  return raw ? printableBytes(raw) : printablePath(path);
}

type Item = WalkEntry | { kind: 'stdin'; path: string };

interface ActionOutcome {
  action: 'moved' | 'removed' | 'exec' | 'report';
  ok: boolean;
  detail: string;
  to?: FsPath;
}

interface Outcome {
  path: string;
  /** The exact bytes of a path that is not valid UTF-8 (see walk.ts). */
  raw?: Buffer;
  /** The scanned file's device and inode: an action only touches that file. */
  identity?: FileIdentity;
  result: VerdictResult;
  /** Null for what never reached the scanner (walk errors and skips). */
  common: VerdictCommon | null;
  actions: ActionOutcome[];
}

interface Totals {
  scanned: number;
  infected: number;
  errors: number;
  skipped: number;
  bytes: number;
}

async function* listLines(file: string): AsyncGenerator<string> {
  const lines = createInterface({ input: createReadStream(file), crlfDelay: Number.POSITIVE_INFINITY });
  for await (const line of lines) {
    // Only a CR is stripped: spaces at either end are legal in file names.
    const path = line.endsWith('\r') ? line.slice(0, -1) : line;
    if (path.length > 0) yield path;
  }
}

/** Writes and waits for 'drain' when the stream asks for it, so a slow pipe throttles the scan instead of memory. */
function writerFor(stream: NodeJS.WritableStream): (text: string) => Promise<void> {
  return (text) =>
    stream.write(text)
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          const done = () => {
            stream.removeListener('drain', done);
            stream.removeListener('close', done);
            stream.removeListener('error', done);
            resolve();
          };
          stream.once('drain', done);
          stream.once('close', done);
          stream.once('error', done);
        });
}

/** The `\r`-redrawn status line on a terminal; cleared before every result line so the two never mix. */
class ProgressLine {
  private timer: NodeJS.Timeout | null = null;
  private shown = false;
  current = '';
  currentRaw: Buffer | undefined = undefined;

  constructor(
    private readonly stream: NodeJS.WritableStream,
    private readonly totals: Totals,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.draw(), PROGRESS_INTERVAL_MS);
    this.timer.unref();
  }

  private draw(): void {
    const columns = (this.stream as { columns?: number }).columns ?? 80;
    const t = this.totals;
    const head = `Scanned ${t.scanned}, infected ${t.infected}, errors ${t.errors}, ${formatBytes(t.bytes)}: `;
    // The end of a long path says more than its start; a line longer than the terminal would wrap
    // and `\r` could no longer redraw it.
    const room = Math.max(0, columns - 1 - head.length);
    let path = printable(this.current, this.currentRaw);
    if (path.length > room) path = room > 1 ? `…${path.slice(path.length - room + 1)}` : '';
    this.stream.write(`\r\x1b[2K${(head + path).slice(0, Math.max(0, columns - 1))}`);
    this.shown = true;
  }

  clear(): void {
    if (!this.shown) return;
    this.stream.write('\r\x1b[2K');
    this.shown = false;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.clear();
  }
}

export async function runScanCommand(argv: string[], deps: ScanCommandDeps): Promise<number> {
  const started = performance.now();
  const errOut = writerFor(deps.stderr);
  let settings: ScanSettings;
  try {
    const s = parseSettings(argv);
    if (s === 'help') {
      deps.stdout.write(SCAN_USAGE);
      return 0;
    }
    settings = s;
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    await errOut(`avgate scan: ${err.message}\n${SCAN_USAGE}`);
    return 2;
  }

  // Inputs and targets are checked before the first file is scanned: finding out after an hour
  // of scanning that the quarantine directory does not exist would leave every infected file in place.
  const skipDirectories = new Set<string>();
  for (const file of settings.lists) {
    try {
      await access(file, constants.R_OK);
    } catch (err) {
      await errOut(`avgate scan: --list ${printablePath(file)}: ${fsErrorText(err)}\n`);
      return 2;
    }
  }
  if (settings.move !== null) {
    try {
      const st = await stat(settings.move);
      if (!st.isDirectory()) throw new Error('not a directory');
      await access(settings.move, constants.W_OK);
      skipDirectories.add(dirId(st));
    } catch (err) {
      await errOut(`avgate scan: --move ${printablePath(settings.move)}: ${fsErrorText(err)}\n`);
      return 2;
    }
  }
  let report: ReportFile | null = null;
  if (settings.report !== null) {
    try {
      report = await ReportFile.open(settings.report);
    } catch (err) {
      await errOut(`avgate scan: --report ${printablePath(settings.report)}: ${fsErrorText(err)}\n`);
      return 2;
    }
  }

  const totals: Totals = { scanned: 0, infected: 0, errors: 0, skipped: 0, bytes: 0 };
  const out = writerFor(deps.stdout);
  const progress = deps.isTTY ? new ProgressLine(deps.stderr, totals) : null;
  const walkOptions = {
    maxDepth: settings.maxDepth,
    exclude: settings.exclude,
    followSymlinks: settings.followSymlinks,
    skipDirectories,
  };

  async function* items(): AsyncGenerator<Item> {
    for (const p of settings.roots) {
      if (p === '-') yield { kind: 'stdin', path: 'stdin' };
      else yield* walk(p, walkOptions);
    }
    for (const file of settings.lists) {
      // walk() reports its own failures as entries; what lands here is the list failing to read.
      try {
        for await (const p of listLines(file)) yield* walk(p, walkOptions);
      } catch (err) {
        yield { kind: 'error', path: file, cause: fsErrorText(err) };
      }
    }
  }

  async function scanItem(item: Item): Promise<Outcome> {
    const base: { path: string; raw?: Buffer; actions: ActionOutcome[] } = { path: item.path, actions: [] };
    if (item.kind !== 'stdin' && item.raw) base.raw = item.raw;
    switch (item.kind) {
      case 'error':
        return { ...base, result: { status: 'error', code: 'AVG_ERR_SOURCE', cause: item.cause }, common: null };
      case 'skipped':
        return { ...base, result: { status: 'skipped', reason: item.reason }, common: null };
      case 'stdin': {
        const stream = deps.stdin instanceof Readable ? deps.stdin : new Readable().wrap(deps.stdin);
        return split(base, await deps.scanner.scan({ source: { kind: 'stream', stream }, name: 'stdin' }));
      }
      case 'file': {
        const fsPath = fsPathOf(item);
        let identity: FileIdentity;
        try {
          // The scanner would report an unreadable file as an engine-side failure; say what it is.
          await access(fsPath, constants.R_OK);
          identity = await identityOf(fsPath);
        } catch (err) {
          return { ...base, result: { status: 'error', code: 'AVG_ERR_SOURCE', cause: fsErrorText(err) }, common: null };
        }
        let source: ScanSource = { kind: 'file', path: item.path };
        if (item.raw) {
          // Its name is not valid UTF-8: no string names it, so the scanner gets its content.
          // O_NONBLOCK: should it have become a FIFO meanwhile, opening it must not wait for a writer.
          try {
            const fh = await open(item.raw, constants.O_RDONLY | constants.O_NONBLOCK);
            const st = await fh.stat().catch(async (err: unknown) => {
              await fh.close();
              throw err;
            });
            if (!st.isFile()) {
              await fh.close();
              return { ...base, result: { status: 'skipped', reason: 'not a regular file' }, common: null };
            }
            source = { kind: 'stream', stream: fh.createReadStream({ highWaterMark: 256 * 1024 }), size: st.size };
          } catch (err) {
            return { ...base, result: { status: 'error', code: 'AVG_ERR_SOURCE', cause: fsErrorText(err) }, common: null };
          }
        }
        return { ...split(base, await deps.scanner.scan({ source, name: item.raw ? printableBytes(item.raw) : item.path })), identity };
      }
    }
  }

  async function applyActions(o: Outcome, isFile: boolean): Promise<void> {
    const r = o.result;
    if (report && (r.status === 'found' || r.status === 'error' || r.status === 'unknown')) {
      await report.append(`${new Date().toISOString()} ${printable(o.path, o.raw)}: ${describeVerdict(r)}`);
    }
    if (r.status !== 'found' || !isFile) return;
    const fsPath = fsPathOf(o);
    if (settings.exec !== null) {
      if (o.raw) {
        // Arguments and the environment are text: the command would get another file's name.
        o.actions.push({ action: 'exec', ok: false, detail: 'not run: the path is not valid UTF-8' });
      } else {
        const res = await runExec(settings.exec, { fullPath: resolve(o.path), fileName: basename(o.path), virusNames: r.names }, deps.stderr);
        o.actions.push({ action: 'exec', ok: res.ok, detail: res.detail });
      }
    }
    if (settings.move !== null) {
      try {
        const to = await moveInto(fsPath, settings.move, o.identity);
        const shown = typeof to === 'string' ? printablePath(to) : printableBytes(to);
        o.actions.push({ action: 'moved', ok: true, detail: `moved to ${shown}`, to });
      } catch (err) {
        o.actions.push({ action: 'moved', ok: false, detail: `move failed: ${fsErrorText(err)}` });
      }
    } else if (settings.remove) {
      try {
        await removeFile(fsPath, o.identity);
        o.actions.push({ action: 'removed', ok: true, detail: 'removed' });
      } catch (err) {
        o.actions.push({ action: 'removed', ok: false, detail: `remove failed: ${fsErrorText(err)}` });
      }
    }
  }

  function count(o: Outcome): void {
    switch (o.result.status) {
      case 'free':
        totals.scanned++;
        break;
      case 'found':
        totals.scanned++;
        totals.infected++;
        break;
      case 'skipped':
        totals.skipped++;
        break;
      case 'unknown':
      case 'error':
        totals.errors++;
        break;
    }
    totals.errors += o.actions.filter((a) => !a.ok).length;
    // "Data scanned": what an engine read, not what was skipped or failed.
    if (o.result.status === 'free' || o.result.status === 'found') totals.bytes += o.common?.bytes ?? 0;
  }

  async function print(o: Outcome): Promise<void> {
    // --infected: what needs a look. Entries the walk itself skipped (links, FIFOs, devices) are
    // no finding: a nightly run over home directories would mail them every time.
    if (settings.infectedOnly && o.actions.length === 0 && (o.result.status === 'free' || (o.result.status === 'skipped' && o.common === null))) return;
    progress?.clear();
    if (settings.json) {
      await out(`${JSON.stringify(jsonResult(o))}\n`);
      return;
    }
    const p = printable(o.path, o.raw);
    let text = `${p}: ${describeVerdict(o.result)}\n`;
    for (const a of o.actions) {
      if (a.action === 'exec') text += `${p}: exec ${a.ok ? 'done' : 'failed'} (${a.detail})\n`;
      else text += `${p}: ${a.detail}\n`;
    }
    await out(text);
  }

  async function handle(item: Item): Promise<void> {
    if (progress) {
      progress.current = item.path;
      progress.currentRaw = item.kind === 'stdin' ? undefined : item.raw;
    }
    let o: Outcome;
    try {
      o = await scanItem(item);
      if (settings.alertExceedsMax) o = exceedsAsFound(o);
      await applyActions(o, item.kind === 'file');
    } catch (err) {
      // The scanner turns failures into verdicts; anything arriving here is a bug, still one path's.
      o = { path: item.path, ...(item.kind !== 'stdin' && item.raw ? { raw: item.raw } : {}), result: { status: 'error', code: 'AVG_ERR_INTERNAL', cause: fsErrorText(err) }, common: null, actions: [] };
    }
    count(o);
    await print(o);
  }

  progress?.start();
  // A fixed pool of workers pulls from one generator: the walk runs only as fast as the scans
  // consume it, and no more scans run than the scanner admits at once (its queue stays empty).
  const iterator = items();
  const workers = Math.max(1, deps.scanner.concurrency);
  await Promise.all(
    Array.from({ length: workers }, async () => {
      for (;;) {
        const next = await iterator.next();
        if (next.done) return;
        await handle(next.value);
      }
    }),
  );
  progress?.stop();

  if (report) {
    await report.close();
    if (report.error) {
      totals.errors++;
      await errOut(`avgate scan: --report ${printablePath(settings.report ?? '')}: ${fsErrorText(report.error)}\n`);
    }
  }

  const seconds = (performance.now() - started) / 1000;
  if (settings.summary) {
    if (settings.json) {
      await out(`${JSON.stringify({ type: 'summary', ...totals, seconds: Number(seconds.toFixed(3)) })}\n`);
    } else {
      await out(
        [
          '',
          '----------- SCAN SUMMARY -----------',
          `Scanned files: ${totals.scanned}`,
          `Infected files: ${totals.infected}`,
          `Errors: ${totals.errors}`,
          `Skipped: ${totals.skipped}`,
          `Data scanned: ${formatBytes(totals.bytes)}`,
          `Time: ${seconds.toFixed(3)} sec (${Math.floor(seconds / 60)} m ${Math.floor(seconds % 60)} s)`,
          '',
        ].join('\n'),
      );
    }
  }
  if (totals.infected > 0) return 1;
  if (totals.errors > 0) return 2;
  return 0;
}

/**
 * --alert-exceeds-max (clamscan's option, clamd's AlertExceedsMax): an object not scanned because
 * of a size limit is reported as found, `Heuristics.Limits.Exceeded.<limit>`, so a cron job's exit
 * status does not pass it as clean; the actions apply to it as to any infected file.
 */
function exceedsAsFound(o: Outcome): Outcome {
  if (o.result.status !== 'skipped' || o.common === null) return o;
  const limit = /StreamMaxLength/.test(o.result.reason) ? 'StreamMaxLength' : /max-checked-size/.test(o.result.reason) ? 'MaxCheckedSize' : null;
  return limit === null ? o : { ...o, result: { status: 'found', names: [`Heuristics.Limits.Exceeded.${limit}`] } };
}

function split(base: { path: string; raw?: Buffer; actions: ActionOutcome[] }, v: VerdictCommon & VerdictResult): Outcome {
  const { engine, signatureVersion, durationMs, bytes, cached, ...result } = v;
  return { ...base, result: result as VerdictResult, common: { engine, signatureVersion, durationMs, bytes, cached } };
}

function jsonResult(o: Outcome): Record<string, unknown> {
  const { status, ...details } = o.result as VerdictResult & Record<string, unknown>;
  return {
    type: 'result',
    path: o.path,
    ...(o.raw ? { pathBase64: o.raw.toString('base64') } : {}),
    status,
    ...details,
    engine: o.common?.engine ?? null,
    signatureVersion: o.common?.signatureVersion ?? null,
    bytes: o.common?.bytes ?? 0,
    ms: o.common ? Math.round(o.common.durationMs) : 0,
    cached: o.common?.cached ?? false,
    ...(o.actions.length > 0
      ? {
          actions: o.actions.map((a) => ({
            action: a.action,
            ok: a.ok,
            detail: a.detail,
            ...(typeof a.to === 'string' ? { to: a.to } : a.to ? { to: a.to.toString('utf8'), toBase64: a.to.toString('base64') } : {}),
          })),
        }
      : {}),
  };
}
