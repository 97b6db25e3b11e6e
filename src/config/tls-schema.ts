import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { AvgateError, messageOf } from '../core/errors.js';

/**
 * TLS on a listening side that upgrades in the protocol (SMTP and IMAP STARTTLS, POP3 STLS, FTP AUTH TLS): offered only
 * with a certificate and its key (PEM files); `required` refuses the protocol's next step on a
 * connection that has not upgraded.
 */
export const listenerTlsSchema = z
  .strictObject({
    cert: z.string().min(1).nullable().default(null),
    key: z.string().min(1).nullable().default(null),
    required: z.boolean().default(false),
  })
  .refine((t) => (t.cert === null) === (t.key === null), { message: 'cert and key go together' })
  .refine((t) => !t.required || t.cert !== null, { message: 'required needs cert and key' });

export type ListenerTlsConfig = z.output<typeof listenerTlsSchema>;

/** A PEM file named by the config, read at start: unreadable is a configuration error naming `key`. */
export function readPem(path: string, key: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new AvgateError('AVG_ERR_CONFIG', `${key}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? messageOf(err)}`);
  }
}

/** The certificate and key of a listener's `tls` section (`prefix`: its config key), or null when TLS is off. */
export function listenerCredentials(tls: ListenerTlsConfig, prefix: string): { cert: Buffer; key: Buffer } | null {
  if (tls.cert === null || tls.key === null) return null;
  return { cert: readPem(tls.cert, `${prefix}.cert`), key: readPem(tls.key, `${prefix}.key`) };
}
