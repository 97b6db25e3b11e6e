import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { loadConfig, type LoadedConfig } from '../config/loader.js';
import { configWarnings } from '../config/check.js';
import { checkTlsFiles } from '../config/tls-schema.js';
import { shownConfig } from '../config/mask.js';
import { AvgateError, messageOf } from '../core/errors.js';
import { commandLogger, createLogger } from '../core/logging.js';
import { VERSION } from '../core/version.js';
import { serveForever } from '../main.js';
import { localClamdFor, openRuntime, redisConnectOptions } from '../runtime.js';
import { probeRedis } from '../cache/redis-level.js';
import { checkPgStats } from '../stats/open.js';
import { ADMIN_USAGE, runAdminCommand } from './admin.js';
import { runScanCommand, SCAN_USAGE } from './scan.js';
import { QUARANTINE_USAGE, runQuarantineCommand } from './quarantine.js';
import { runSignaturesCommand, SIGNATURES_USAGE } from './signatures.js';
import { CONTROL_USAGE, controlTargetOf, runControlCommand } from './control.js';
import { POLICY_USAGE, runPolicyCommand } from './policy.js';
import { checkPeers } from './check-peers.js';

const USAGE = `usage: avgate [--config FILE] COMMAND [ARGS]

commands:
  serve                 run the gateway (engines, project-local clamd, front ends)
  scan PATH...          scan files and directories (see: avgate scan --help)
  status [--json]       is avgate serve running: its front ends, engines, reloads (exit 3: not running)
  reload [--json]       the running avgate reads its config file again; prints the outcome (exit 1: refused)
  stop [--no-wait]      the running avgate stops gracefully; waits until it is gone
  policy show|mail|http-proxy|ftp-proxy
                        the config's rules in order; which mail group or doc-acl rule applies (see: avgate policy --help)
  config check          validate the config and check the engines answer
  config show           print the effective config (defaults filled in, secrets masked)
  clamd setup           write the test signature database and clamd.conf under state-dir
  clamd run             run the project-local clamd in the foreground
  admin passwd [--user NAME] [--password-stdin] | --remove NAME
                        set a web console user's password, or remove the user
  admin token add NAME [--scope scan,read,quarantine] | list | remove NAME
                        API tokens for the scanning API, statistics, quarantine and /metrics
  quarantine list|show|export|release|restore|delete|purge
                        manage the encrypted quarantine (see: avgate quarantine --help)
  signatures update|status
                        fetch, check and install signatures.sources; RELOAD clamd
  version               print avgate's version

The config file is --config FILE, else $AVGATE_CONFIG, else the embedded defaults.
`;

/** Splits off `--config FILE` wherever it stands before the command. */
function takeConfig(argv: string[]): { configPath: string | null; rest: string[] } {
  const rest: string[] = [];
  let configPath: string | null = process.env.AVGATE_CONFIG ?? null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--config' || a === '-c') {
      const v = argv[++i];
      if (v === undefined) throw new AvgateError('AVG_ERR_CONFIG', '--config needs a file');
      configPath = v;
    } else if (a.startsWith('--config=')) {
      configPath = a.slice('--config='.length);
    } else {
      rest.push(a);
    }
  }
  return { configPath, rest };
}

export async function main(argv: string[]): Promise<number> {
  let configPath: string | null;
  let rest: string[];
  try {
    ({ configPath, rest } = takeConfig(argv));
  } catch (err) {
    process.stderr.write(`avgate: ${messageOf(err)}\n`);
    return 2;
  }
  const [command, ...args] = rest;
  const out = process.stdout;
  const err = process.stderr;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    out.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === 'version' || command === '--version') {
    out.write(`avgate ${VERSION}\n`);
    return 0;
  }
  // `avgate COMMAND --help`: the command's usage on stdout, exit 0, before any config is read.
  const help = COMMAND_USAGE[command];
  if (help !== undefined && (args.includes('--help') || args.includes('-h') || (args[0] === 'help' && args.length === 1))) {
    out.write(help);
    return 0;
  }
  let loaded: LoadedConfig;
  try {
    loaded = await loadConfig(configPath);
  } catch (e) {
    err.write(`avgate: ${messageOf(e)}\n`);
    if (command === 'reload') {
      // The same check the running avgate makes: it would refuse this file too.
      err.write('avgate reload: the running avgate was not asked to reload, it keeps its configuration\n');
      return 1;
    }
    if (command === 'status' || command === 'stop') {
      // Only state-dir and control-socket are needed to reach the running avgate.
      const target = controlTargetOf(configPath);
      if (target !== null) {
        err.write(`avgate ${command}: using the file's state-dir and control-socket to find the running avgate\n`);
        return runControlCommand(target, command, args, { stdout: out, stderr: err }, true);
      }
    }
    return 2;
  }
  switch (command) {
    case 'serve':
      return serveForever(loaded);
    case 'scan':
      return scanCommand(loaded, args);
    case 'config':
      return configCommand(loaded, args);
    case 'clamd':
      return clamdCommand(loaded, args);
    case 'admin':
      return runAdminCommand(loaded.config, args, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr });
    case 'quarantine':
      return runQuarantineCommand(loaded, args);
    case 'status':
    case 'reload':
    case 'stop':
      return runControlCommand(loaded.config, command, args, { stdout: process.stdout, stderr: process.stderr });
    case 'policy':
      return runPolicyCommand(loaded.config, args, { stdout: process.stdout, stderr: process.stderr });
    case 'signatures':
      return runSignaturesCommand(loaded.config, args, { stdout: process.stdout, stderr: process.stderr });
    default:
      err.write(`avgate: unknown command "${command}"\n${USAGE}`);
      return 2;
  }
}

const SERVE_USAGE = `usage: avgate [--config FILE] serve

  runs the gateway: the project-local clamd (when an engine uses it) and every enabled front end,
  until SIGTERM, SIGINT or \`avgate stop\`; SIGHUP or \`avgate reload\` read the config again.
  The config: --config FILE, else $AVGATE_CONFIG, else the embedded defaults (docs/config.md).
`;
const CONFIG_USAGE = 'usage: avgate config check|show\n';
const CLAMD_USAGE = 'usage: avgate clamd setup|run\n';
/** Usage texts `COMMAND --help` prints. */
const COMMAND_USAGE: Record<string, string> = {
  serve: SERVE_USAGE,
  signatures: SIGNATURES_USAGE,
  admin: ADMIN_USAGE,
  config: CONFIG_USAGE,
  clamd: CLAMD_USAGE,
  quarantine: QUARANTINE_USAGE,
  policy: POLICY_USAGE,
  scan: SCAN_USAGE,
  status: CONTROL_USAGE,
  reload: CONTROL_USAGE,
  stop: CONTROL_USAGE,
};

async function scanCommand(loaded: LoadedConfig, args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(SCAN_USAGE);
    return 0;
  }
  // Logs go to stderr and only when something is wrong: stdout belongs to the scan report. On a
  // terminal (no log.file) the per-object warnings would repeat each ERROR line of the report.
  const log = loaded.config.log;
  const logger = commandLogger(log.file === null && (log.level === 'info' || log.level === 'warn') ? { ...log, level: 'error' } : log);
  let runtime;
  try {
    runtime = await openRuntime(loaded.config, { logger, localClamd: 'if-needed', defaultOrigin: { source: 'fs' } });
  } catch (e) {
    process.stderr.write(`avgate: ${messageOf(e)}\n`);
    return 2;
  }
  try {
    return await runScanCommand(args, {
      scanner: runtime.scanner,
      stdout: process.stdout,
      stderr: process.stderr,
      stdin: process.stdin,
      isTTY: Boolean(process.stderr.isTTY),
    });
  } finally {
    await runtime.close();
  }
}

async function configCommand(loaded: LoadedConfig, args: string[]): Promise<number> {
  const [sub] = args;
  const { config } = loaded;
  if (sub === 'show') {
    process.stdout.write(`# effective configuration (${loaded.path ?? 'embedded defaults'}); sizes in bytes, durations in ms\n`);
    process.stdout.write(stringify(shownConfig(config)));
    return 0;
  }
  if (sub !== 'check') {
    process.stderr.write(CONFIG_USAGE);
    return 2;
  }
  process.stdout.write(`config ${loaded.path ?? '(embedded defaults)'}: syntax and keys OK\n`);
  const warnings = configWarnings(config);
  for (const w of warnings) process.stdout.write(`warning: ${w}\n`);
  const tls = checkTlsFiles(config);
  for (const line of tls.ok) process.stdout.write(`tls ${line}: OK\n`);
  for (const w of tls.warnings) process.stdout.write(`warning: ${w}\n`);
  for (const e of tls.errors) process.stdout.write(`tls FAILED: ${e}\n`);
  const logger = createLogger({ level: 'error', file: null });
  let failed = false;
  let runtime;
  try {
    runtime = await openRuntime(config, { logger, localClamd: 'if-needed', withoutCache: true });
  } catch (e) {
    process.stdout.write(`engines: FAILED: ${messageOf(e)}\n`);
    return 1;
  }
  try {
    for (const { id, engine } of runtime.allEngines) {
      try {
        const signal = AbortSignal.timeout(10_000);
        const reply = engine.ping ? (await engine.ping(signal)).trim() : 'no ping';
        const v = await engine.signatureVersion(signal);
        process.stdout.write(`engine ${id} (${engine.info().name}): OK (${reply}; signatures ${v ?? 'unknown'})\n`);
      } catch (e) {
        failed = true;
        process.stdout.write(`engine ${id} (${engine.info().name}): FAILED: ${messageOf(e)}\n`);
      }
    }
    const redis = config.cache.enabled ? config.cache.redis : null;
    if (redis) {
      const o = redisConnectOptions(redis);
      try {
        process.stdout.write(`cache.redis ${o.label}: OK (PONG in ${(await probeRedis(o)).toFixed(1)} ms)\n`);
      } catch (e) {
        failed = true;
        process.stdout.write(`cache.redis ${o.label}: FAILED: ${messageOf(e)} (serve scans without the shared level until it answers)\n`);
      }
    }
  } finally {
    await runtime.close();
  }
  for (const line of await checkPeers(config)) process.stdout.write(`${line}\n`);
  const statsDb = config.stats.enabled && config.stats.postgres ? await checkPgStats(config.stats, config.stats.postgres) : null;
  if (statsDb) {
    process.stdout.write(`${statsDb.line}\n`);
    if (!statsDb.ok) failed = true;
  }
  return failed || tls.errors.length > 0 ? 1 : 0;
}

async function clamdCommand(loaded: LoadedConfig, args: string[]): Promise<number> {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  const local = localClamdFor(loaded.config);
  if (positionals[0] === 'setup') {
    await local.setup();
    process.stdout.write(`clamd.conf: ${local.confPath}\ndatabase: ${local.dbDir}\ntemporary directory: ${local.tempDir ?? '-'}\n`);
    return 0;
  }
  if (positionals[0] === 'run') {
    await local.start();
    process.stdout.write(`clamd running (pid ${local.pid}) on ${local.socketPath}${local.tcpPort === null ? '' : ` and ${loaded.config.clamd['tcp-addr']}:${local.tcpPort}`}; Ctrl-C stops it\n`);
    await new Promise<void>((resolve) => {
      const stop = () => void local.stop().finally(resolve);
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
    return 0;
  }
  process.stderr.write(CLAMD_USAGE);
  return 2;
}
