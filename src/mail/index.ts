import { join, resolve } from 'node:path';
import type { Config } from '../config/schema.js';
import type { Listeners } from '../core/listen.js';
import type { Logger } from '../core/logging.js';
import { sweepSpoolDir } from '../core/spool.js';
import { mimeLimitsFrom } from '../mime/index.js';
import { compileMailPolicy } from '../policy/mail/index.js';
import { SmtpFilterServer } from '../protocols/smtp/server.js';
import type { Quarantine } from '../quarantine/types.js';
import type { Runtime } from '../runtime.js';
import { MailFilter } from './filter.js';

export { MailFilter } from './filter.js';

export interface MailFrontEnd {
  server: SmtpFilterServer;
  filter: MailFilter;
  port: number;
}

/**
 * The SMTP/LMTP content filter as `avgate serve` runs it: transport + filter + policy, putting
 * originals in `quarantine` (the one store serve opened for every front end; the caller closes it).
 */
export async function startMailFilter(config: Readonly<Config>, runtime: Runtime, log: Logger, quarantine: Quarantine, listeners: Listeners | null = null): Promise<MailFrontEnd> {
  const mail = config.mail;
  const stateDir = config['state-dir'];
  const documents = join(resolve(stateDir, config.smtp['spool-dir']), 'documents');
  const mlog = log.child({ component: 'mail' });
  // Documents of messages a killed process was scanning (the server sweeps its own spool-dir).
  await sweepSpoolDir(documents, mlog);
  const filter = new MailFilter({
    scanner: runtime.scannerFor(mail.engines).scanner,
    policy: compileMailPolicy(mail),
    quarantine,
    limits: mimeLimitsFrom(mail),
    spoolDir: documents,
    documentMemory: mail['document-memory'],
    scanWholeMessage: mail['scan-whole-message'],
    prescanMaxSize: mail['prescan-max-size'],
    lenientQuotedPrintable: mail['lenient-quoted-printable'],
    log: mlog,
  });
  const server = new SmtpFilterServer(config.smtp, { stateDir, log, handler: filter.handler, partition: filter.partition, listeners });
  try {
    const { port } = await server.listen();
    return { server, filter, port };
  } catch (err) {
    await server.close(0); // and the next hop pool it made
    throw err;
  }
}
