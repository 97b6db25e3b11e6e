/**
 * `avgate status|reload|stop`: the running `avgate serve` of this config's state-dir, asked over
 * its control socket (src/control/server.ts). Exit status as LSB init scripts have it: 0 done,
 * 1 refused or failed, 3 not running.
 */
import type { Writable } from 'node:stream';
import type { Config } from '../config/schema.js';
import { controlRequest, controlSocketPath, type ControlReply } from '../control/server.js';
import { messageOf } from '../core/errors.js';

export const CONTROL_USAGE = `usage: avgate status [--json]     is avgate serve running; its front ends, engines, reloads
       avgate reload [--json]     read the config file again and apply it; prints the outcome
       avgate stop [--json] [--no-wait]
                                  stop gracefully (within stop-timeout) and wait until it is gone
The running avgate is found by the control socket (control-socket, under state-dir) of the config
given with --config or $AVGATE_CONFIG. Exit status: 0 done, 1 refused or failed, 3 not running.
`;

/** How long an answer may take: a reload starts engines and front ends (a slow clamd PING, TLS files). */
const ANSWER_TIMEOUT_MS = 60_000;

interface Io {
  stdout: Writable;
  stderr: Writable;
}

export async function runControlCommand(config: Readonly<Config>, command: 'status' | 'reload' | 'stop', args: string[], io: Io): Promise<number> {
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
    reply = await controlRequest(path, command, ANSWER_TIMEOUT_MS);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') {
      if (json) io.stdout.write(`${JSON.stringify({ ok: false, running: false, controlSocket: path })}\n`);
      else io.stdout.write(`avgate is not running (no answer on ${path})\n`);
      return 3;
    }
    io.stderr.write(`avgate ${command}: ${path}: ${messageOf(err)}${code === 'EACCES' ? ' (the socket is mode 0600: run as the user avgate serve runs as)' : ''}\n`);
    return 1;
  }
  if (command === 'stop' && reply['ok'] === true && wait) {
    const gone = await waitUntilGone(path, Number(reply['stopTimeoutMs'] ?? config['stop-timeout']) + 5_000);
    reply = { ...reply, stopped: gone };
    if (json) io.stdout.write(`${JSON.stringify(reply)}\n`);
    else io.stdout.write(gone ? `avgate (pid ${String(reply['pid'])}) stopped\n` : `avgate (pid ${String(reply['pid'])}) is still running after its stop-timeout\n`);
    return gone ? 0 : 1;
  }
  if (json) {
    io.stdout.write(`${JSON.stringify(reply)}\n`);
  } else if (reply['ok'] !== true) {
    io.stderr.write(`avgate ${command}: ${String(reply['error'] ?? 'refused')}\n`);
  } else {
    io.stdout.write(command === 'status' ? formatStatus(reply) : command === 'reload' ? formatReload(reply) : `avgate (pid ${String(reply['pid'])}) stopping\n`);
  }
  return reply['ok'] === true ? 0 : 1;
}

/** Polls the socket until nobody answers (the stop closes it last), at most timeoutMs. */
async function waitUntilGone(path: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      await controlRequest(path, 'status', 2_000);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ECONNREFUSED') return true;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

function formatReload(r: ControlReply): string {
  const list = (v: unknown) => (Array.isArray(v) && v.length > 0 ? v.join(', ') : 'none');
  const lines = [r['result'] === 'applied' ? `configuration reloaded; changed: ${list(r['changed'])}` : 'configuration unchanged: nothing rebuilt'];
  if (Array.isArray(r['restartNeeded']) && r['restartNeeded'].length > 0) lines.push(`these sections changed but keep their running values until a restart: ${list(r['restartNeeded'])}`);
  if (typeof r['note'] === 'string') lines.push(r['note']);
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
  const out: string[] = [];
  out.push(`avgate ${String(r['version'])} running, pid ${String(r['pid'])}, up ${formatDuration(Number(r['uptimeSeconds']))} (since ${String(r['startedAt'])})${r['stopping'] === true ? ', STOPPING' : ''}`);
  out.push(`config: ${typeof r['config'] === 'string' ? r['config'] : '(embedded defaults)'}`);
  const rl = obj(r['reloads']);
  out.push(
    `reloads: ${String(rl['applied'])} applied, ${String(rl['unchanged'])} unchanged, ${String(rl['failed'])} failed; last ${rl['lastOk'] === true ? 'ok' : 'FAILED'}` +
      `${Number(rl['draining']) > 0 ? `; ${String(rl['draining'])} previous configuration(s) still draining` : ''}${rl['reloading'] === true ? '; a reload is running' : ''}`,
  );
  out.push('front ends:');
  for (const [name, v] of Object.entries(obj(r['frontEnds']))) {
    if (v === null) {
      out.push(`  ${name.padEnd(11)} off`);
      continue;
    }
    const f = obj(v);
    const host = String(f['listen']).replace(/:\d+$/, '');
    const conns = f['connections'] === null ? '' : `  ${String(f['connections'])} connection(s)`;
    out.push(`  ${name.padEnd(11)} ${`${host}:${String(f['port'])}`.padEnd(22)}${conns}`.trimEnd());
  }
  out.push('engines:');
  for (const e of Array.isArray(r['engines']) ? r['engines'] : []) {
    const x = obj(e);
    const state = x['healthy'] === true ? 'healthy' : x['healthy'] === false ? `NOT ANSWERING (${String(x['lastError'])}, ${String(x['failuresInRow'])} in a row)` : 'not checked yet';
    const sig = typeof x['signatureVersion'] === 'string' ? `, signatures ${x['signatureVersion']}` : '';
    out.push(`  ${String(x['id']).padEnd(11)} ${state}${sig}`);
  }
  if (typeof r['clamdPid'] === 'number') out.push(`project-local clamd: pid ${r['clamdPid']}`);
  const sc = obj(r['scans']);
  const by = obj(sc['byStatus']);
  out.push(`scans: ${String(sc['scans'])} (${Object.entries(by).map(([k, v]) => `${k} ${String(v)}`).join(', ')}), ${String(sc['cacheHits'])} from the verdict cache`);
  return `${out.join('\n')}\n`;
}
