import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { pino, type Logger } from 'pino';

export type { Logger };

export interface LogOptions {
  level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  /** Log file path; null = standard error. */
  file: string | null;
  /** This node's name on every line (`stats.node`, the hostname by default), for logs shipped from several nodes. */
  node?: string;
}

/**
 * Structured JSON logs. Fixed context fields (component, connection id, transaction id) are added
 * with child loggers; bodies, passwords and whole header blocks never go into a log line.
 */
export function createLogger(options: LogOptions): Logger {
  const destination = options.file ? pino.destination({ dest: options.file, mkdir: true, sync: false }) : pino.destination(2);
  if (options.file) {
    const file = options.file;
    // A write or open error of the log file (disk full, a path logrotate left unopenable) must not
    // end the daemon: pino re-emits it on the destination, where an unhandled 'error' is fatal.
    let reported = '';
    destination.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === reported) return;
      reported = err.code ?? 'error';
      process.stderr.write(`avgate: log file ${file}: ${err.message}\n`);
    });
    onReopenLogs(() => {
      // Tried first: a failed reopen would leave the destination half-switched (its old file closed
      // twice later); this way lines go on into the old file and the next SIGHUP tries again.
      checkAppendable(file, true);
      reported = '';
      destination.reopen();
    });
  }
  return pino({ level: options.level, base: { app: 'avgate', ...(options.node ? { node: options.node } : {}) }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}

/**
 * For a command whose stdout is its report (`avgate scan`, `avgate signatures update`): the
 * configured log, but `info` becomes `warn`, so only what went wrong is logged.
 */
export function commandLogger(options: LogOptions): Logger {
  return createLogger({ ...options, level: options.level === 'info' ? 'warn' : options.level });
}

/** A logger that drops everything: for library use and tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

const reopeners = new Set<() => void>();

/**
 * Throws when `path` cannot be opened for appending (created if missing, and with `mkdir` its
 * directory too): a log file is reopened only when its new file can be written.
 */
export function checkAppendable(path: string, mkdir = false): void {
  if (mkdir) mkdirSync(dirname(path), { recursive: true });
  closeSync(openSync(path, 'a', 0o644));
}

/**
 * Registers what reopens one log file by its path (throwing, the old file kept, when the new one
 * cannot be opened); returns the function that unregisters it.
 */
export function onReopenLogs(reopen: () => void): () => void {
  reopeners.add(reopen);
  return () => reopeners.delete(reopen);
}

/**
 * Reopens every log file by its path (the main log with `log.file`, the access logs): after
 * logrotate moved them away (`postrotate: kill -HUP`), new lines go to new files. One that cannot
 * be opened keeps writing to its old file and is listed in `failed`; never throws.
 */
export function reopenLogFiles(): { files: number; failed: string[] } {
  const failed: string[] = [];
  for (const r of reopeners) {
    try {
      r();
    } catch (err) {
      failed.push(err instanceof Error ? err.message : String(err));
    }
  }
  return { files: reopeners.size - failed.length, failed };
}
