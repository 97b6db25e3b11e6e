import { pino, type Logger } from 'pino';

export type { Logger };

export interface LogOptions {
  level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  /** Log file path; null = standard error. */
  file: string | null;
}

/**
 * Structured JSON logs. Fixed context fields (component, connection id, transaction id) are added
 * with child loggers; bodies, passwords and whole header blocks never go into a log line.
 */
export function createLogger(options: LogOptions): Logger {
  const destination = options.file ? pino.destination({ dest: options.file, mkdir: true, sync: false }) : pino.destination(2);
  if (options.file) onReopenLogs(() => destination.reopen());
  return pino({ level: options.level, base: { app: 'avgate' }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
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

/** Registers what reopens one log file by its path; returns the function that unregisters it. */
export function onReopenLogs(reopen: () => void): () => void {
  reopeners.add(reopen);
  return () => reopeners.delete(reopen);
}

/**
 * Reopens every log file by its path (the main log with `log.file`, the access logs): after
 * logrotate moved them away (`postrotate: kill -HUP`), new lines go to new files. Returns how
 * many files were reopened.
 */
export function reopenLogFiles(): number {
  for (const r of reopeners) r();
  return reopeners.size;
}
