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
