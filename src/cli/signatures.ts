import type { Config } from '../config/schema.js';
import { controlRequest, controlSocketPath } from '../control/server.js';
import { messageOf } from '../core/errors.js';
import { printable } from '../protocols/ftp/wire.js';
import { commandLogger } from '../core/logging.js';
import { readUpdaterState, signaturesStateDir, updaterFor, type UpdateReport } from '../signatures/index.js';

export const SIGNATURES_USAGE = `usage: avgate signatures update | status

  update   fetch every signatures.sources file that changed, check it (size, SHA-256, a test
           load with clamscan), install it into the project-local clamd's database and RELOAD;
           files installed from sources no longer configured are removed.
           Exit 0: all sources fine; 1: a source failed (what was in use stays); 2: cannot run.
  status   what the updater installed: file, size, SHA-256, when, from where
`;

interface Io {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

/** `avgate signatures ...`: returns the exit code. */
export async function runSignaturesCommand(config: Readonly<Config>, args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args;
  // Neither command takes options: an unknown one (--force, --json) is refused, not ignored.
  if ((sub === 'update' || sub === 'status') && rest.length > 0) {
    io.stderr.write(`avgate signatures ${sub}: unexpected ${rest.map((a) => `"${printable(a, 60)}"`).join(' ')}\n${SIGNATURES_USAGE}`);
    return 2;
  }
  if (sub === 'update') {
    if (config.signatures.sources.length === 0) {
      io.stderr.write('avgate: signatures.sources is empty: nothing to update\n');
      return 2;
    }
    // The report is the output; the log only says what went wrong.
    const log = commandLogger(config.log);
    let report: UpdateReport;
    try {
      report = await updaterFor(config, log).update();
    } catch (err) {
      io.stderr.write(`avgate: ${messageOf(err)}\n`);
      return 2;
    }
    for (const r of report.sources) {
      const detail = r.outcome === 'installed' ? ` (${r.bytes} bytes, sha256 ${r.sha256})` : r.reason ? `: ${r.reason}` : '';
      io.stdout.write(`${r.outcome.padEnd(9)} ${r.name} ${r.url}${detail}\n`);
    }
    if (report.reloadError) io.stdout.write(`clamd did not confirm the reload: ${report.reloadError}\n`);
    else if (report.changed) io.stdout.write(report.reloaded ? 'clamd reloaded\n' : 'clamd is not running: it loads the new files when it starts\n');
    else io.stdout.write('nothing changed\n');
    if (report.changed && report.reloaded) io.stdout.write(await tellServe(config));
    return report.failed > 0 ? 1 : 0;
  }
  if (sub === 'status') {
    const state = await readUpdaterState(signaturesStateDir(config));
    const run = state.lastRun;
    io.stdout.write(run ? `last run ${run.at}: ${run.sources.map((r) => `${r.name} ${r.outcome}`).join(', ') || 'no sources'}\n` : 'the updater has not run\n');
    for (const r of run?.sources ?? []) if (r.reason) io.stdout.write(`  ${r.name}: ${r.reason}\n`);
    const names = Object.keys(state.files).sort();
    if (names.length === 0) io.stdout.write('no files installed by the updater\n');
    for (const name of names) {
      const f = state.files[name];
      if (f) io.stdout.write(`${name}  ${f.size} bytes  sha256 ${f.sha256.slice(0, 16)}…  ${f.installedAt}  ${f.url}\n`);
    }
    return 0;
  }
  io.stderr.write(SIGNATURES_USAGE);
  return 2;
}

/**
 * After an update from the command line: the running avgate serve (if any) is told over its
 * control socket, so its verdict cache stops answering from the old signatures at once instead of
 * at its next look at the version (health.interval).
 */
async function tellServe(config: Readonly<Config>): Promise<string> {
  const path = controlSocketPath(config);
  if (path === null) return 'control-socket is null: a running avgate notices the new signatures within health.interval\n';
  try {
    const r = await controlRequest(path, 'signatures', 10_000);
    return r['ok'] === true ? 'the running avgate reads the new signature version\n' : `the running avgate did not take it: ${printable(String(r['error']), 500)}\n`;
  } catch {
    return ''; // no avgate serve running: nothing to tell
  }
}
