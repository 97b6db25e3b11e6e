/**
 * avgate itself (serve) as a peer for tests and the benchmark: the ICAP server on a free loopback
 * port, scanning with a given clamd, everything else from the embedded defaults.
 */
import { parseConfigText } from '../../src/config/loader.js';
import { silentLogger, type Logger } from '../../src/core/logging.js';
import { serve, type Serving } from '../../src/main.js';

export interface AvgatePeerOptions {
  stateDir: string;
  clamd: { socketPath: string; dbDir: string };
  /** YAML inside `smtp:` (written unindented); the filter listens on a free port unless it says otherwise. */
  smtpYaml?: string;
  /** YAML inside `icap:` (written unindented). */
  icapYaml?: string;
  /** More entries under `engines:` besides `clamav` (written unindented). */
  extraEngines?: string;
  /** YAML inside `console:` (written unindented); the console listens on a free loopback port. */
  consoleYaml?: string;
  /** YAML inside `http-proxy:` (written unindented); the HTTP proxy listens on a free loopback port unless it says otherwise. */
  httpProxyYaml?: string;
  /** YAML inside `ftp-proxy:` (written unindented); the FTP proxy listens on a free loopback port unless it says otherwise. */
  ftpYaml?: string;
  /** YAML inside `pop3-proxy:` (written unindented); the POP3 proxy listens on a free loopback port unless it says otherwise. */
  pop3Yaml?: string;
  /** YAML inside `imap-proxy:` (written unindented); the IMAP proxy listens on a free loopback port unless it says otherwise. */
  imapYaml?: string;
  /** More top-level YAML (cache, scan ...). */
  yaml?: string;
  /** Where serve logs (default: nowhere). */
  logger?: Logger;
}

const indent = (text: string, by: string) =>
  text
    .split('\n')
    .filter((l) => l.trim().length > 0)
    .map((l) => `${by}${l}`)
    .join('\n');

/** Config lines for a clamd run elsewhere (not managed by avgate) as the engine `clamav`. */
export function externalClamdYaml(clamd: { socketPath: string; dbDir: string }): string[] {
  return [
    'clamd:',
    '  managed: false',
    'engines:',
    '  clamav:',
    '    type: clamd-net',
    '    options:',
    `      address: unix:${clamd.socketPath}`,
    `      database-dir: ${clamd.dbDir}`,
  ];
}

export async function startAvgatePeer(o: AvgatePeerOptions): Promise<Serving & { icapPort: number }> {
  const text = [
    `state-dir: ${o.stateDir}`,
    'log:',
    '  level: silent',
    ...externalClamdYaml(o.clamd),
    indent(o.extraEngines ?? '', '  '),
    'icap:',
    '  listen: 127.0.0.1:0',
    indent(o.icapYaml ?? '', '  '),
    'smtp:',
    /^\s*listen:/m.test(o.smtpYaml ?? '') ? '' : '  listen: 127.0.0.1:0',
    indent(o.smtpYaml ?? '', '  '),
    'console:',
    '  listen: 127.0.0.1:0',
    indent(o.consoleYaml ?? '', '  '),
    'ftp-proxy:',
    /^\s*listen:/m.test(o.ftpYaml ?? '') ? '' : '  listen: 127.0.0.1:0',
    indent(o.ftpYaml ?? '', '  '),
    'http-proxy:',
    /^\s*listen:/m.test(o.httpProxyYaml ?? '') ? '' : '  listen: 127.0.0.1:0',
    indent(o.httpProxyYaml ?? '', '  '),
    'pop3-proxy:',
    /^\s*listen:/m.test(o.pop3Yaml ?? '') ? '' : '  listen: 127.0.0.1:0',
    indent(o.pop3Yaml ?? '', '  '),
    'imap-proxy:',
    /^\s*listen:/m.test(o.imapYaml ?? '') ? '' : '  listen: 127.0.0.1:0',
    indent(o.imapYaml ?? '', '  '),
    o.yaml ?? '',
  ].join('\n');
  const s = await serve({ config: parseConfigText(text, 'avgate-peer.yaml'), path: null }, { logger: o.logger ?? silentLogger() });
  if (s.icapPort === null) {
    await s.stop();
    throw new Error('icap server not started');
  }
  return { ...s, icapPort: s.icapPort };
}
