import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger, type Logger } from '../../src/core/logging.js';
import { pop3ProxySchema } from '../../src/config/mail-proxy-schema.js';
import { BUILT_IN_REPLACEMENT } from '../../src/mailproxy/index.js';
import { Pop3ProxyServer } from '../../src/protocols/pop3/index.js';
import type { Quarantine } from '../../src/quarantine/types.js';
import type { ScanService } from '../../src/scan/types.js';
import { ClamdNetEngine } from '../../src/engines/clamd/net.js';
import { mailProxyPolicySchema, type MailProxyPolicyConfig } from '../../src/config/mail-proxy-schema.js';
import { walkMessage } from '../../src/mime/index.js';
import { Scanner, type ScannerLimits } from '../../src/scan/scanner.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { crlf } from './smtp.js';
import { clamZipAttachment, eicarAttachment, forwardedEicar, mailWith } from './mail.js';

/** Shared by the mail proxy tests (POP3, IMAP): a scanner on a test clamd, a corpus, part digests. */

export const PROXY_SCANNER_LIMITS: ScannerLimits = {
  maxCheckedSize: 10 * 1024 * 1024,
  scanTimeoutMs: 20_000,
  maxConcurrentScans: 2,
  maxQueue: 16,
  contextIdleTimeoutMs: 5000,
};

/** A Scanner over clamd at `address` (`unix:/path`, or `127.0.0.1:PORT` for a dead engine). */
export function proxyScanner(address: string, dbDir?: string): Scanner {
  const e = new ClamdNetEngine();
  e.configure([{ name: 'address', value: address }, ...(dbDir ? [{ name: 'database-dir', value: dbDir }] : [])]);
  return new Scanner([{ id: 'clamav', engine: e }], PROXY_SCANNER_LIMITS, null, silentLogger());
}

/**
 * A scanner whose clamd is not there: a unix socket in a directory nobody creates, so every
 * connect fails at once (ENOENT). A closed TCP port could be taken by another test meanwhile.
 */
export function deadScanner(): Scanner {
  return proxyScanner(`unix:${join(tmpdir(), `avgate-no-clamd-${randomBytes(6).toString('hex')}`, 'clamd.sock')}`);
}

export function proxyPolicy(over: Record<string, unknown> = {}): MailProxyPolicyConfig {
  return mailProxyPolicySchema.parse(over);
}

export interface CorpusMessage {
  name: string;
  raw: Buffer;
  /** Documents (by file name or type#id) expected to be replaced. */
  infected: string[];
}

/** A clean mail, EICAR attached, clam.zip attached, a forwarded (message/rfc822) mail with EICAR; all CRLF. */
export function mailCorpus(id = 'c'): CorpusMessage[] {
  const cleanPdf = { name: 'report.bin', type: 'application/octet-stream', data: Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff)) };
  return [
    { name: 'clean', raw: mailWith(`${id}-clean`, [cleanPdf]), infected: [] },
    { name: 'eicar', raw: mailWith(`${id}-eicar`, [eicarAttachment('eicar.com'), cleanPdf]), infected: ['eicar.com'] },
    { name: 'clamzip', raw: mailWith(`${id}-zip`, [clamZipAttachment()]), infected: ['clam.zip'] },
    { name: 'nested', raw: forwardedEicar(`${id}-fwd`), infected: ['inner.com'] },
    // EICAR at the start of a 20 KB file: its notice is much shorter than the part.
    { name: 'bigvirus', raw: mailWith(`${id}-big`, [{ name: 'big.bin', type: 'application/octet-stream', data: Buffer.concat([eicarBytes(), Buffer.alloc(20_000, 0x41)]) }]), infected: ['big.bin'] },
    { name: 'plain', raw: crlf(['From: a@example.com', 'To: b@example.net', 'Subject: plain', '', 'Just text.', '.leading dot line', '..two dots', '']), infected: [] },
  ];
}

export interface PartDigest {
  key: string;
  contentType: string;
  filename: string | null;
  sha256: string;
  text: string | null;
}

/** Every document of a message: decoded bytes' SHA-256 (and the text of small text parts). */
export async function partDigests(raw: Buffer): Promise<PartDigest[]> {
  const out: PartDigest[] = [];
  await walkMessage(raw, {}, async (d) => {
    const s = d.source();
    const data = s.kind === 'chunks' ? Buffer.concat(s.chunks) : s.kind === 'buffer' ? s.data : s.kind === 'file' ? readFileSync(s.path) : Buffer.alloc(0);
    out.push({
      key: d.filename ?? `${d.contentType}#${d.id}`,
      contentType: d.contentType,
      filename: d.filename,
      sha256: createHash('sha256').update(data).digest('hex'),
      text: d.contentType.startsWith('text/') && data.length < 100_000 ? data.toString('utf8') : null,
    });
  });
  return out;
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * A POP3 proxy listening on a free loopback port (keep-alive off unless `yaml` sets it), added to
 * `into` for the test's after(); returns its port.
 */
export async function listenPop3Proxy(
  yaml: Record<string, unknown>,
  deps: { scanner: ScanService; spoolDir: string; quarantine?: Quarantine | null; log?: Logger },
  into: Pop3ProxyServer[],
): Promise<number> {
  const config = pop3ProxySchema.parse({ listen: '127.0.0.1:0', 'keep-alive': { after: 0 }, ...yaml });
  const server = new Pop3ProxyServer(config, {
    replace: { scanner: deps.scanner, policy: config, replacement: BUILT_IN_REPLACEMENT, spoolDir: deps.spoolDir, log: silentLogger(), origin: { source: 'pop3' }, quarantine: deps.quarantine ?? null },
    log: deps.log ?? silentLogger(),
  });
  into.push(server);
  return (await server.listen()).port;
}
