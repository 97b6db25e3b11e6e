import { join, resolve } from 'node:path';
import type { Config } from '../../config/schema.js';
import type { Listeners } from '../../core/listen.js';
import type { Logger } from '../../core/logging.js';
import { loadReplacement } from '../../mailproxy/index.js';
import { mimeLimitsFrom } from '../../mime/index.js';
import type { Quarantine } from '../../quarantine/types.js';
import type { Runtime } from '../../runtime.js';
import { Pop3ProxyServer } from './server.js';

export { Pop3ProxyServer } from './server.js';
export type { Pop3Counters } from './session.js';

export interface Pop3FrontEnd {
  server: Pop3ProxyServer;
  port: number;
}

/**
 * The POP3 proxy as `avgate serve` runs it. The replacement file is read here, so a missing one
 * stops startup with the key's name (AVG_ERR_CONFIG).
 */
export async function startPop3Proxy(
  config: Readonly<Config>,
  runtime: Runtime,
  log: Logger,
  quarantine: Quarantine | null = null,
  listeners: Listeners | null = null,
): Promise<Pop3FrontEnd> {
  const c = config['pop3-proxy'];
  const mail = config.mail;
  const replacement = await loadReplacement(c.replacement, 'pop3-proxy.replacement');
  const plog = log.child({ component: 'pop3' });
  const server = new Pop3ProxyServer(c, {
    replace: {
      scanner: runtime.scannerFor(c.antivirus).scanner,
      policy: c,
      replacement,
      spoolDir: join(resolve(config['state-dir'], c['spool-dir']), 'pop3'),
      log: plog,
      origin: { source: 'pop3' },
      limits: mimeLimitsFrom(mail),
      lenientQuotedPrintable: mail['lenient-quoted-printable'],
      quarantine,
    },
    log: plog,
    listeners,
  });
  const { port } = await server.listen();
  return { server, port };
}
