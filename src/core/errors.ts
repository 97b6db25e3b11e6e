/**
 * One table of error codes with stable names. Every code is listed in docs/errors.md, and
 * test/unit/errors.test.ts checks that the two agree. Protocol front ends map a code to their own
 * response (ICAP 503, SMTP 451 ...), so the code says what happened, not how to answer.
 */
export const ERROR_CODES = {
  AVG_ERR_CONFIG: 'configuration is invalid',
  AVG_ERR_COMM_DIR: 'comm-dir of a clamd-file engine is missing or not writable',
  AVG_ERR_ENGINE_UNKNOWN: 'an engine type or id named in the config does not exist',
  AVG_ERR_ENGINE_CONNECT: 'could not connect to the engine (refused, no such socket, connect timeout)',
  AVG_ERR_ENGINE_RESET: 'the engine closed or reset the connection before answering',
  AVG_ERR_ENGINE_TIMEOUT: 'the engine did not answer within the scan timeout',
  AVG_ERR_ENGINE_FAILED: 'the engine reported that it could not scan the object',
  AVG_ERR_ENGINE_PROTOCOL: 'the engine answered in a way that breaks its protocol framing',
  AVG_ERR_ABORTED: 'the scan was given up by its caller (the client went away, the session closed)',
  AVG_ERR_QUEUE_FULL: 'too many scans in progress and the wait queue is full',
  AVG_ERR_SOURCE: 'the object to scan could not be read',
  AVG_ERR_CLAMD_START: 'the project-local clamd did not start',
  AVG_ERR_STOPPED: 'avgate serve was asked to stop (a signal, avgate stop) before it was ready',
  AVG_ERR_BAD_ADDRESS: 'a mail address given for a release is not one plain mailbox',
  AVG_ERR_QUARANTINE: 'the quarantine store refused or could not do the operation',
  AVG_ERR_SIGNATURES: 'a signature update could not run (another one is running, or the database directory cannot be written)',
  AVG_ERR_CONTROL: 'the control socket could not be opened or did not answer (another avgate serves from this state-dir)',
  AVG_ERR_REWRITE: 'a document to remove or replace was not found by the rewriter: the message is not passed on',
  AVG_ERR_INTERNAL: 'an unexpected internal failure',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class AvgateError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'AvgateError';
  }
}

export function errorCodeOf(err: unknown): ErrorCode {
  return err instanceof AvgateError ? err.code : 'AVG_ERR_INTERNAL';
}

export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
