/**
 * `avgate status|reload|stop`: the running `avgate serve` of this config's state-dir, asked over
 * its control socket (src/control/server.ts). Exit status as LSB init scripts have it: 0 done,
 * 1 refused or failed, 3 not running.
 */
import type { Writable } from 'node:stream';
import { configSchema, type Config } from '../config/schema.js';
import { controlRequest, controlSocketPath, processExists, type ControlReply } from '../control/server.js';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { messageOf } from '../core/errors.js';
import { printable } from '../protocols/ftp/wire.js';

export const CONTROL_USAGE = `usage: avgate status [--json]     is avgate serve running; its front ends, engines, reloads
       avgate reload [--json]     read the config file again and apply it; prints the outcome
       avgate stop [--json] [--no-wait]
                                  stop gracefully (within stop-timeout) and wait until it is gone
The running avgate is found by the control socket (control-socket, under state-dir) of the config
given with --config or $AVGATE_CONFIG (a relative state-dir is taken from the working directory).
Exit status: 0 done, 1 refused or failed, 2 bad arguments or config, 3 not running.
`;

/** How long an answer may take: a reload starts engines and front ends, after a reload already running. */
const ANSWER_TIMEOUT_MS: Record<'status' | 'reload' | 'stop', number> = { status: 10_000, reload: 600_000, stop: 30_000 };
/** A stop's wait is bounded by what the running avgate says, but never beyond this. */
const MAX_STOP_WAIT_MS = 3_600_000;

interface Io {
  stdout: Writable;
  stderr: Writable;
}

export async function runControlCommand(
  config: Pick<Config, 'state-dir' | 'control-socket' | 'stop-timeout'>,
  command: 'status' | 'reload' | 'stop',
  args: string[],
  io: Io,
  /** The config did not validate and only its state-dir was read: "not running" is then not certain (exit 1, not 3). */
  guessed = false,
): Promise<number> {
  const json = args.includes('--json');
  const wait = !args.includes('--no-wait');
  const unknown = args.filter((a) => a !== '--json' && a !== '--no-wait' && a !== '--help' && a !== '-h');
  if (args.includes('--help') || args.includes('-h')) {
    io.stdout.write(CONTROL_USAGE);
    return 0;
  }
  if (unknown.length > 0 || (command !== 'stop' && args.includes('--no-wait'))) {
    io.stderr.write(`avgate ${command}: unexpected argument ${unknown[0] ?? '--no-wait'}\n${CONTROL_USAGE}`);
    return 2;
  }
  const path = controlSocketPath(config);
  if (path === null) {
    io.stderr.write(`avgate ${command}: control-socket is null in this config, so the running avgate cannot be reached; use signals (SIGHUP reloads, SIGTERM stops)\n`);
    return 2;
  }
  let reply: ControlReply;
  try {
    reply = await controlRequest(path, command, ANSWER_TIMEOUT_MS[command]);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') {
      if (json) io.stdout.write(`${JSON.stringify({ ok: false, running: false, controlSocket: path })}\n`);
      else io.stdout.write(`avgate is not running (no answer on ${path})\n`);
      if (guessed) {
        io.stderr.write(`avgate ${command}: the config does not validate, so its state-dir may not be the running avgate's: not certain (exit 1)\n`);
        return 1;
      }
      return 3;
    }
    io.stderr.write(`avgate ${command}: ${path}: ${messageOf(err)}${code === 'EACCES' ? ' (the socket is mode 0600: run as the user avgate serve runs as)' : ''}\n`);
    return 1;
  }
  if (command === 'stop' && reply['ok'] === true && wait) {
    const said = Number(reply['waitMs']);
    const budget = (Number.isFinite(said) && said > 0 ? Math.min(said, MAX_STOP_WAIT_MS) : 2 * config['stop-timeout']) + 5_000;
    const pid = typeof reply['pid'] === 'number' && Number.isSafeInteger(reply['pid']) && reply['pid'] > 1 ? reply['pid'] : null;
    const gone = await waitUntilGone(path, pid, budget);
    reply = { ...reply, stopped: gone };
    if (json) io.stdout.write(`${JSON.stringify(reply)}\n`);
    else io.stdout.write(gone ? `avgate (pid ${String(pid)}) stopped\n` : `avgate (pid ${String(pid)}) is still running ${Math.round(budget / 1000)} s after the stop began\n`);
    return gone ? 0 : 1;
  }
  if (json) {
    io.stdout.write(`${JSON.stringify(reply)}\n`);
  } else if (reply['ok'] !== true) {
    io.stderr.write(`avgate ${command}: ${text(reply['error'] ?? 'refused')}\n`);
  } else {
    io.stdout.write(command === 'status' ? formatStatus(reply) : command === 'reload' ? formatReload(reply) : `avgate (pid ${text(reply['pid'])}) stopping\n`);
  }
  return reply['ok'] === true ? 0 : 1;
}

/**
 * For `status` and `stop` when the config file does not validate (say, halfway through an edit):
 * only its state-dir and control-socket are needed to find the running avgate. Null when even
 * those cannot be read.
 */
export function controlTargetOf(configPath: string | null): Pick<Config, 'state-dir' | 'control-socket' | 'stop-timeout'> | null {
  if (configPath === null) return null;
  try {
    const doc = parseYaml(readFileSync(configPath, 'utf8')) as unknown;
    const top = typeof doc === 'object' && doc !== null ? (doc as Record<string, unknown>) : {};
    // Each key by the schema's own rule and default; one that does not validate either gives up.
    const shape = configSchema.shape;
    const stop = shape['stop-timeout'].safeParse(top['stop-timeout']);
    return {
      'state-dir': shape['state-dir'].parse(top['state-dir']),
      'control-socket': shape['control-socket'].parse(top['control-socket']),
      'stop-timeout': stop.success ? stop.data : shape['stop-timeout'].parse(undefined),
    };
  } catch {
    return null;
  }
}

/** Waits until the socket stops answering and the process is gone; at most timeoutMs. */
async function waitUntilGone(path: string, pid: number | null, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let socketGoneAt: number | null = null;
  while (Date.now() < deadline) {
    if (socketGoneAt === null) {
      try {
        await controlRequest(path, 'status', 2_000);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ECONNREFUSED') socketGoneAt = Date.now();
      }
    }
    if (socketGoneAt !== null) {
      // The stop closes the socket last; the process ends right after. A pid of another pid
      // namespace (a container sharing the state-dir) may name some other process: the socket
      // being gone for 2 s then counts as stopped.
      if (pid === null || Date.now() - socketGoneAt > 2_000 || !processExists(pid)) return true;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

/** A value from the reply as one printable line (an engine's error text may carry anything). */
const text = (v: unknown): string => printable(String(v), 500);

export function formatReload(r: ControlReply): string {
  const list = (v: unknown) => (Array.isArray(v) && v.length > 0 ? v.map(text).join(', ') : 'none');
  const restartOnly = Array.isArray(r['restartNeeded']) && r['restartNeeded'].length > 0;
  const unchanged = restartOnly ? 'nothing that a reload applies changed: nothing rebuilt' : 'configuration unchanged: nothing rebuilt';
  const lines = [r['result'] === 'applied' ? `configuration reloaded; changed: ${list(r['changed'])}` : unchanged];
  if (Array.isArray(r['restartNeeded']) && r['restartNeeded'].length > 0) lines.push(`these sections changed but keep their running values until a restart: ${list(r['restartNeeded'])}`);
  if (typeof r['note'] === 'string') lines.push(text(r['note']));
  return `${lines.join('\n')}\n`;
}

function formatDuration(seconds: number): string {
  const d = Math.floor(seconds / 86_400);
  const h = Math.floor((seconds % 86_400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return d > 0 ? `${d}d ${h}h ${m}m` : h > 0 ? `${h}h ${m}m` : `${m}m ${seconds % 60}s`;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (typeof v === 'object' && v !== null ? (v as Obj) : {});

function formatStatus(r: ControlReply): string {
  if (r['starting'] === true) return `avgate (pid ${text(r['pid'])}) is starting: not serving yet\n`;
  const out: string[] = [];
  out.push(`avgate ${text(r['version'])} running, pid ${text(r['pid'])}, up ${formatDuration(Number(r['uptimeSeconds']))} (since ${text(r['startedAt'])})${r['stopping'] === true ? ', STOPPING' : ''}`);
  out.push(`config: ${typeof r['config'] === 'string' ? text(r['config']) : '(embedded defaults)'}`);
  if (typeof r['node'] === 'string') out.push(`node: ${text(r['node'])}`);
  const rl = obj(r['reloads']);
  out.push(
    `reloads: ${text(rl['applied'])} applied, ${text(rl['unchanged'])} unchanged, ${text(rl['failed'])} failed; last ${rl['lastOk'] === true ? 'ok' : 'FAILED'}` +
      `${Number(rl['draining']) > 0 ? `; ${text(rl['draining'])} previous configuration(s) still draining` : ''}${rl['reloading'] === true ? '; a reload is running' : ''}`,
  );
  out.push('front ends:');
  for (const [name, v] of Object.entries(obj(r['frontEnds']))) {
    if (v === null) {
      out.push(`  ${text(name).padEnd(11)} off`);
      continue;
    }
    const f = obj(v);
    const host = text(f['listen']).replace(/:\d+$/, '');
    const conns = f['connections'] === null ? '' : `  ${text(f['connections'])} connection(s)`;
    out.push(`  ${text(name).padEnd(11)} ${`${host}:${text(f['port'])}`.padEnd(22)}${conns}`.trimEnd());
  }
  out.push('engines:');
  for (const e of Array.isArray(r['engines']) ? r['engines'] : []) {
    const x = obj(e);
    const state = x['healthy'] === true ? 'healthy' : x['healthy'] === false ? `NOT ANSWERING (${text(x['lastError'])}, ${text(x['failuresInRow'])} in a row)` : 'not checked yet';
    const sig = typeof x['signatureVersion'] === 'string' ? `, signatures ${text(x['signatureVersion'])}` : '';
    out.push(`  ${text(x['id']).padEnd(11)} ${state}${sig}`);
  }
  if (typeof r['clamdPid'] === 'number') out.push(`project-local clamd: pid ${r['clamdPid']}`);
  const sc = obj(r['scans']);
  const by = obj(sc['byStatus']);
  out.push(`scans: ${text(sc['scans'])} (${Object.entries(by).map(([k, v]) => `${text(k)} ${text(v)}`).join(', ')}), ${text(sc['cacheHits'])} from the verdict cache`);
  const cache = r['cache'] === null || r['cache'] === undefined ? null : obj(r['cache']);
  if (cache) {
    const levels = Array.isArray(cache['levels']) ? cache['levels'].map(text).join(' + ') : '';
    const shared = cache['shared'] === undefined ? null : obj(cache['shared']);
    out.push(`verdict cache: ${levels || 'on'}${shared ? `; shared level ${shared['up'] === true ? 'up' : 'DOWN (look-ups skip it)'}` : ''}`);
  }
  const st = r['stats'] === null || r['stats'] === undefined ? null : obj(r['stats']);
  if (st) {
    const where = st['reachable'] === false ? `UNREACHABLE since ${text(st['unreachableSince'])} (${text(st['unreachable'])})` : 'reachable';
    out.push(`statistics: ${text(st['backend'])}${st['backend'] === 'postgres' ? ` ${where}` : ''}, ${text(st['buffered'])} buffered, ${text(st['dropped'])} dropped`);
  }
  return `${out.join('\n')}\n`;
}
