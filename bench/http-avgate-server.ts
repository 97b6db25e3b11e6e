/**
 * Child process of the HTTP and mail-proxy sections: `avgate serve` with exactly one front end
 * enabled (the one under test: http-proxy, pop3-proxy or imap-proxy) on a free loopback port
 * (`listen: 127.0.0.1:0`), every other front end (ICAP, SMTP, console and the other proxies) off,
 * scanning with the benchmark's clamd; verdict cache, statistics and everything else at their
 * defaults, as an installation would run. In a process of its own (bench/child.ts): the load
 * generator must not share its event loop. Prints `READY {"port":N}` with the port serve bound
 * (the same figure its 'avgate ready' log line gives); stops when stdin closes.
 *
 *   node dist/bench/http-avgate-server.js --front http-proxy --clamd-socket PATH --db-dir DIR --state-dir DIR [--front-yaml YAML]
 */
import { parseConfigText } from '../src/config/loader.js';
import { configSchema } from '../src/config/schema.js';
import { silentLogger } from '../src/core/logging.js';
import { serve, type Serving } from '../src/main.js';
import { externalClamdYaml } from '../tools/peers/avgate.js';
import { arg, stopWhenParentSays } from './child.js';

export const FRONT_ENDS = ['http-proxy', 'pop3-proxy', 'imap-proxy'] as const;
export type FrontEnd = (typeof FRONT_ENDS)[number];

/** Front ends of serve that are switched off in the bench config (those the schema knows). */
const OTHERS = ['icap', 'smtp', 'console', 'http-proxy', 'ftp-proxy', 'pop3-proxy', 'imap-proxy'];

function portOf(s: Serving, front: FrontEnd): number | null {
  if (front === 'http-proxy') return s.httpProxyPort;
  if (front === 'pop3-proxy') return s.pop3ProxyPort;
  return s.imapProxyPort;
}

async function main(): Promise<void> {
  const front = arg('--front') as FrontEnd;
  if (!FRONT_ENDS.includes(front)) throw new Error(`--front: expected one of ${FRONT_ENDS.join(', ')}`);
  const frontYaml = process.argv.includes('--front-yaml') ? arg('--front-yaml') : '';
  const known = Object.keys(configSchema.shape);
  const lines = [
    `state-dir: ${arg('--state-dir')}`,
    'log:',
    '  level: silent',
    ...externalClamdYaml({ socketPath: arg('--clamd-socket'), dbDir: arg('--db-dir') }),
    ...OTHERS.filter((k) => k !== front && known.includes(k)).flatMap((k) => [`${k}:`, '  enabled: false']),
    `${front}:`,
    '  enabled: true',
    '  listen: 127.0.0.1:0',
    ...frontYaml
      .split('\n')
      .filter((l) => l.trim().length > 0)
      .map((l) => `  ${l}`),
  ];
  const s = await serve({ config: parseConfigText(lines.join('\n'), 'bench-avgate.yaml'), path: null }, { logger: silentLogger() });
  const port = portOf(s, front);
  if (port === null) {
    await s.stop();
    throw new Error(`${front} did not start`);
  }
  stopWhenParentSays(`avgate ${front}`, () => s.stop());
  process.stdin.resume();
  process.stdout.write(`READY ${JSON.stringify({ port })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`http-avgate-server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
