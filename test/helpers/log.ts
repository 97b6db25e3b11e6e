import pino from 'pino';
import type { Logger } from '../../src/core/logging.js';

/** A logger whose JSON lines are kept in `lines`, parsed (for asserting what was logged). */
export function capturedLog(level: 'debug' | 'info' | 'warn' = 'info'): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) }) as unknown as Logger;
  return { log, lines };
}
