import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext } from 'node:tls';
import { z } from 'zod';
import { AvgateError, messageOf } from '../core/errors.js';
import type { UpstreamTls } from '../core/net.js';
import type { Config } from './schema.js';

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

/** A listener's TLS context from its `tls` section, read once at start; null when TLS is off. */
export function listenerContext(tls: ListenerTlsConfig, prefix: string): SecureContext | null {
  const credentials = listenerCredentials(tls, prefix);
  return credentials ? createSecureContext(credentials) : null;
}

/**
 * TLS towards the server, the same three keys in the IMAP, POP3 and FTP proxies: `upstream-tls`
 * none; starttls = the protocol's own upgrade (STARTTLS, STLS, AUTH TLS) before anything of the
 * client is relayed; tls = implicit TLS (imaps, pop3s, ftps). `tls-verify`: check the server's
 * certificate (chain, and the name or address connected to); false only for test servers.
 * `tls-ca`: PEM file of the CAs trusted for the server, read once at start; null = the system's.
 */
export const upstreamTlsKeys = {
  'upstream-tls': z.enum(['none', 'starttls', 'tls']).default('none'),
  'tls-verify': z.boolean().default(true),
  'tls-ca': z.string().nullable().default(null),
};

/** How a section's server certificates are checked (its `tls-verify`, `tls-ca` read now; unreadable: AVG_ERR_CONFIG naming `prefix.tls-ca`). */
export function upstreamTls(section: { 'tls-verify': boolean; 'tls-ca': string | null }, prefix: string): UpstreamTls {
  return { verify: section['tls-verify'], ca: section['tls-ca'] !== null ? readPem(section['tls-ca'], `${prefix}.tls-ca`) : null };
}

/** A certificate due within this many days is reported by `config check`. */
export const CERT_EXPIRY_WARNING_DAYS = 30;

export interface TlsFilesReport {
  /** One line per file set checked and found usable. */
  ok: string[];
  /** Files that cannot serve: unreadable, not PEM, key not matching, expired. */
  errors: string[];
  /** Usable, but due soon (CERT_EXPIRY_WARNING_DAYS) or a CA file that expired. */
  warnings: string[];
}

const DAY_MS = 86_400_000;

function certificateFacts(pem: Buffer): { subject: string; validTo: number } {
  const x = new X509Certificate(pem);
  return { subject: x.subject.replace(/\n/g, ', '), validTo: Date.parse(x.validTo) };
}

/**
 * What `avgate config check` says of the TLS files the config names, for every enabled front end:
 * each listener's certificate and key are read, must belong together (a TLS context is built from
 * them) and the certificate must not have expired; each upstream CA file must parse. Nothing here
 * starts a listener.
 */
export function checkTlsFiles(config: Readonly<Config>, now = Date.now()): TlsFilesReport {
  const report: TlsFilesReport = { ok: [], errors: [], warnings: [] };
  const pairs: Array<{ prefix: string; cert: string; key: string }> = [];
  const pair = (enabled: boolean, prefix: string, t: { cert: string | null; key: string | null } | null) => {
    if (enabled && t && t.cert !== null && t.key !== null) pairs.push({ prefix, cert: t.cert, key: t.key });
  };
  pair(config.icap.enabled, 'icap.tls', config.icap.tls);
  pair(config.smtp.enabled, 'smtp.tls', config.smtp.tls);
  pair(config['pop3-proxy'].enabled, 'pop3-proxy.tls', config['pop3-proxy'].tls);
  pair(config['imap-proxy'].enabled, 'imap-proxy.tls', config['imap-proxy'].tls);
  pair(config['ftp-proxy'].enabled, 'ftp-proxy.tls', config['ftp-proxy'].tls);
  pair(config.console.enabled, 'console.tls', config.console.tls);
  for (const p of pairs) {
    try {
      const cert = readPem(p.cert, `${p.prefix}.cert`);
      const key = readPem(p.key, `${p.prefix}.key`);
      try {
        createSecureContext({ cert, key });
      } catch (err) {
        throw new Error(`${p.prefix}: ${p.cert} and ${p.key} do not make a TLS context: ${messageOf(err)}`, { cause: err });
      }
      const { subject, validTo } = certificateFacts(cert);
      const until = new Date(validTo).toISOString().slice(0, 10);
      if (validTo <= now) report.errors.push(`${p.prefix}: the certificate (${subject}) expired on ${until}`);
      else {
        if (validTo - now < CERT_EXPIRY_WARNING_DAYS * DAY_MS) report.warnings.push(`${p.prefix}: the certificate (${subject}) expires on ${until}`);
        report.ok.push(`${p.prefix}: ${subject}, valid until ${until}`);
      }
    } catch (err) {
      report.errors.push(messageOf(err));
    }
  }
  const cas: Array<{ key: string; enabled: boolean; path: string | null }> = [
    { key: 'pop3-proxy.tls-ca', enabled: config['pop3-proxy'].enabled, path: config['pop3-proxy']['tls-ca'] },
    { key: 'imap-proxy.tls-ca', enabled: config['imap-proxy'].enabled, path: config['imap-proxy']['tls-ca'] },
    { key: 'ftp-proxy.tls-ca', enabled: config['ftp-proxy'].enabled, path: config['ftp-proxy']['tls-ca'] },
    { key: 'smtp.next-hop.tls-ca', enabled: config.smtp.enabled, path: config.smtp['next-hop']['tls-ca'] },
  ];
  for (const ca of cas) {
    if (!ca.enabled || ca.path === null) continue;
    try {
      const { subject, validTo } = certificateFacts(readPem(ca.path, ca.key));
      if (validTo <= now) report.warnings.push(`${ca.key}: the CA certificate (${subject}) expired on ${new Date(validTo).toISOString().slice(0, 10)}`);
      report.ok.push(`${ca.key}: ${subject}`);
    } catch (err) {
      report.errors.push(err instanceof AvgateError ? err.message : `${ca.key}: ${ca.path} is not a PEM certificate: ${messageOf(err)}`);
    }
  }
  return report;
}
