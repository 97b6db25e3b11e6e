import { join, resolve } from 'node:path';
import type { Config } from '../config/schema.js';
import type { Logger } from '../core/logging.js';
import { compileMailPolicy } from '../policy/mail/index.js';
import { SmtpFilterServer } from '../protocols/smtp/server.js';
import { LocalDirQuarantine } from '../quarantine/local-dir.js';
import type { Runtime } from '../runtime.js';
import { MailFilter } from './filter.js';

export { MailFilter } from './filter.js';

export interface MailFrontEnd {
  server: SmtpFilterServer;
  filter: MailFilter;
  port: number;
}

/** The SMTP/LMTP content filter as `avgate serve` runs it: transport + filter + policy + quarantine. */
export async function startMailFilter(config: Readonly<Config>, runtime: Runtime, log: Logger): Promise<MailFrontEnd> {
  const mail = config.mail;
  const stateDir = config['state-dir'];
  const filter = new MailFilter({
    scanner: runtime.scannerFor(mail.engines).scanner,
    policy: compileMailPolicy(mail),
    quarantine: await LocalDirQuarantine.open(resolve(stateDir, mail['quarantine-dir'])),
    limits: {
      maxDepth: mail['max-depth'],
      maxParts: mail['max-parts'],
      maxHeaderSize: mail['max-header-size'],
      maxDecodedSize: mail['max-decoded-size'],
      maxLineLength: mail['max-line-length'],
    },
    spoolDir: join(resolve(stateDir, config.smtp['spool-dir']), 'documents'),
    documentMemory: mail['document-memory'],
    scanWholeMessage: mail['scan-whole-message'],
    lenientQuotedPrintable: mail['lenient-quoted-printable'],
    log: log.child({ component: 'mail' }),
  });
  const server = new SmtpFilterServer(config.smtp, { stateDir, log, handler: filter.handler, partition: filter.partition });
  const { port } = await server.listen();
  return { server, filter, port };
}
