/**
 * Mail-proxy section (issue 7): messages per second read through avgate's POP3 proxy and IMAP
 * proxy vs straight from Dovecot 2.3 (tools/peers/dovecot.ts), on the same clamd.
 *
 * - Mailboxes: one per mode and session, each with `messages` unique messages of 5-100 KB
 *   (bench/mailproxy-messages.ts, one in 20 with EICAR in its attachment), delivered once into
 *   Dovecot's maildir before anything is measured. Modes: pop3 direct, pop3 avgate, imap direct,
 *   imap avgate; avgate's two proxies run as two children (bench/http-avgate.ts), each with only
 *   its front end enabled and its own verdict cache.
 * - Load: `sessions` concurrent sessions, each reading its whole mailbox one message at a time
 *   (POP3 RETR, IMAP FETCH BODY.PEEK[]).
 * - cold: the first pass over a mailbox (nothing of it was ever scanned); warm: later passes over
 *   the same mailboxes (avgate's verdict cache answers). Passes rotate through the modes.
 * - Checked: every message (its token, the attachment there when clean; through avgate an infected
 *   attachment must be gone, directly it must be there) and the count per session.
 * - engine limit (reference, no target; off with engineLimit false): what clamd alone does with the
 *   documents avgate hands it. `sessions` x `messages` fresh messages from the same factory, each
 *   decoded beforehand (untimed) by avgate's own MIME walker into the documents
 *   src/mailproxy/replace.ts scans one by one (prescan-max-size 0, the default), then sent
 *   document by document with INSTREAM (bench/direct.ts) over `sessions` concurrent workers,
 *   counted per whole message; run once, after the cold passes. Checked: an infected message's
 *   attachment FOUND, every other document OK. Its ratio to pop3 direct is the ceiling of the
 *   cold ratio avgate/direct.
 * - relay (reference, no target; off with relay false, left out when socat is not installed): modes
 *   pop3 relay and imap relay read their own mailboxes through a plain TCP relay written in C
 *   (socat, tools/peers/relay.ts: client -> socat -> Dovecot, one forked process per session),
 *   in the same passes and rotation as the other modes, checked as direct (the infected
 *   attachments whole). relay/direct is what one more process relaying the bytes costs on this
 *   machine, whatever it does with them; avgate/relay is what avgate costs beyond that.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LocalClamd } from '../src/engines/clamd/local.js';
import { DEFAULT_MIME_LIMITS } from '../src/mime/index.js';
import { dovecotAvailable, startDovecot, type DovecotUser } from '../tools/peers/dovecot.js';
import { relayAvailable, relayVersion, startRelay, type Relay } from '../tools/peers/relay.js';
import type { SectionResult } from './engine-section.js';
import { classifyReply, directInstream } from './direct.js';
import { checkStop, log, onCleanup, processCpuMs } from './harness.js';
import { startAvgateFront, type AvgateFrontChild } from './http-avgate.js';
import { imapReadAll, pop3ReadAll, type SessionParams } from './mailproxy-clients.js';
import {
  checkFetched,
  MAX_MESSAGE_BYTES,
  messageDocuments,
  messageSizes,
  ProxyMessageFactory,
  type MessageDocument,
  type ProxyBenchMessage,
} from './mailproxy-messages.js';
import { treeCpuMs } from './proc-cpu.js';
import { percentile, ratio, table } from './stats.js';

export const MAILPROXY_TARGET_COLD = 0.5;
export const MAILPROXY_TARGET_WARM = 0.9;

export interface MailProxySectionOptions {
  /** Messages per mailbox. */
  messages: number;
  /** Concurrent sessions per mode (one mailbox each). */
  sessions: number;
  /** Warm passes per mode after the cold one. */
  warmPasses: number;
  /** One message in this many carries EICAR. */
  infectedEvery: number;
  /** A session that has not read its mailbox within this fails. */
  sessionTimeoutMs: number;
  avgateNodeFlags: readonly string[];
  /** Untimed messages per mode (read from a mailbox of their own, half of them twice) before the first pass; 0 = none. */
  warmup: number;
  /** Measure the engine limit (the same documents straight to clamd) after the cold passes. */
  engineLimit: boolean;
  /** INSTREAM chunk of the engine-limit client (bench/direct.ts). */
  directChunk: number;
  /** Measure the relay reference (modes pop3 relay and imap relay through socat), when socat is installed. */
  relay: boolean;
}

type Protocol = 'pop3' | 'imap';
type Regime = 'cold' | 'warm';
/** direct: Dovecot itself; relay: through socat (reference); avgate: through avgate's proxy. */
type Kind = 'direct' | 'relay' | 'avgate';

interface Mode {
  name: string;
  protocol: Protocol;
  kind: Kind;
  /** Through avgate: an infected attachment must be gone (elsewhere it must be there, whole). */
  scanned: boolean;
  port: number;
  /** CPU (ms) so far of the process in the middle (avgate's child, the relay), or null (direct). */
  middleCpuMs: (() => Promise<number>) | null;
  mailboxes: Array<{ user: string; byToken: Map<string, ProxyBenchMessage> }>;
}

interface Acc {
  messages: number;
  seconds: number;
  bytes: number;
  latencies: number[];
  serverCpuMs: number;
  dovecotCpuMs: number;
  clamdCpuMs: number;
  wrong: number;
  samples: string[];
  passes: number[];
}

const newAcc = (): Acc => ({ messages: 0, seconds: 0, bytes: 0, latencies: [], serverCpuMs: 0, dovecotCpuMs: 0, clamdCpuMs: 0, wrong: 0, samples: [], passes: [] });

const PASSWORD = 'bench-secret';

/** Name of the engine-limit measurement in the table and the logs. */
const ENGINE_LIMIT = 'engine limit';

/** A message of the engine limit: its documents as avgate's walker decodes them, ready to send. */
interface EngineMessage {
  token: string;
  wireBytes: number;
  infected: boolean;
  documents: MessageDocument[];
  /** Found while decoding (a MIME problem, no attachment): counted as a wrong answer when sent. */
  problem: string | null;
}

/**
 * CPU (ms) of a process tree that forks per session (Dovecot, the socat relay): its live processes
 * plus the children it has reaped (cutime + cstime): Dovecot's POP3 or IMAP process and socat's
 * fork live for one session and are gone when the pass ends.
 */
async function forkingTreeCpuMs(pid: number): Promise<number> {
  let reaped = Number.NaN;
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    reaped = (Number(f[13]) + Number(f[14])) * 10;
  } catch {
    // gone
  }
  return (await treeCpuMs(pid)) + reaped;
}

export async function runMailProxySection(p: { clamd: LocalClamd; tmp: string; opts: MailProxySectionOptions }): Promise<SectionResult> {
  const { clamd, tmp, opts } = p;
  const report: string[] = [];
  const result: string[] = [];
  let failed = false;
  if (!dovecotAvailable()) {
    return { report: ['mailproxy: Dovecot is not available here (dovecot-pop3d/imapd, root, users dovecot/dovenull/mail)'], result: ['mailproxy: NOT RUN (no Dovecot)'], wrong: 0, checked: 0, failed: true };
  }

  // ------------------------------------------------------------ Dovecot and the mailboxes
  // The relay reference: wanted unless --mailproxy-no-relay; left out (the section goes on) without socat.
  let relayNote: string | null = null;
  if (!opts.relay) relayNote = 'relay reference left out (--mailproxy-no-relay)';
  else if (!relayAvailable()) relayNote = 'relay reference left out: socat is not installed (Debian socat, scripts/system-deps.sh)';
  if (relayNote !== null) log(`  ${relayNote}`);
  const kinds: Kind[] = relayNote === null ? ['direct', 'relay', 'avgate'] : ['direct', 'avgate'];
  const modeSpecs: Array<{ name: string; protocol: Protocol; kind: Kind }> = (['pop3', 'imap'] as const).flatMap((protocol) => kinds.map((kind) => ({ name: `${protocol} ${kind}`, protocol, kind })));
  const userOf = (mode: string, s: number) => `bench-${mode.replace(' ', '-')}-${s}`;
  const users: DovecotUser[] = modeSpecs.flatMap((m) => Array.from({ length: opts.sessions }, (_, s) => ({ user: userOf(m.name, s), password: PASSWORD })));
  // The warm-up mailbox (one, read by every mode): half the warm-up's messages, read twice.
  const warmupMessages = Math.ceil(opts.warmup / 2);
  const warmupUser = 'bench-warmup';
  if (warmupMessages > 0) users.push({ user: warmupUser, password: PASSWORD });
  // Not under the bench's temporary directory (0700): Dovecot's auth and login processes run as
  // its own users and must reach the passwd file and the maildirs.
  const dir = await mkdtemp(join(tmpdir(), 'avgate-bench-dovecot-'));
  onCleanup(() => rm(dir, { recursive: true, force: true, maxRetries: 5 }));
  const dovecot = await startDovecot({ dir, users });
  onCleanup(() => dovecot.stop());

  const factory = new ProxyMessageFactory();
  const t0 = performance.now();
  let delivered = 0;
  let deliveredBytes = 0;
  const boxes = new Map<string, Map<string, ProxyBenchMessage>>();
  for (const u of users) {
    const byToken = new Map<string, ProxyBenchMessage>();
    const count = u.user === warmupUser ? warmupMessages : opts.messages;
    const sizes = messageSizes(count);
    for (let i = 0; i < count; i++) {
      const m = factory.make(sizes[i] as number, i % opts.infectedEvery === opts.infectedEvery - 1);
      byToken.set(m.token, m);
      await dovecot.deliver(u.user, m.wire);
      delivered++;
      deliveredBytes += m.wire.length;
    }
    boxes.set(u.user, byToken);
  }
  log(
    `mailproxy section: Dovecot pid ${dovecot.pid} (pop3 ${dovecot.pop3Port}, imap ${dovecot.imapPort}); ${users.length - (warmupMessages > 0 ? 1 : 0)} mailboxes x ${opts.messages} messages${warmupMessages > 0 ? ` + a warm-up mailbox of ${warmupMessages}` : ''} ` +
      `(${delivered} unique, ${(deliveredBytes / 1e6).toFixed(1)} MB, 1 in ${opts.infectedEvery} with EICAR) delivered in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );

  // ------------------------------------------------------------ engine limit: the documents, decoded before any clock
  const prepareEngine = async (m: ProxyBenchMessage): Promise<EngineMessage> => {
    const { documents, problems } = await messageDocuments(m.wire, { limits: DEFAULT_MIME_LIMITS, spoolDir: tmp });
    const attachments = documents.filter((d) => d.attachment).length;
    const problem = problems.length > 0 ? `MIME problems when decoding: ${problems.join(', ')}` : attachments !== 1 ? `${attachments} attachment documents instead of 1` : null;
    return { token: m.token, wireBytes: m.wire.length, infected: m.infected, documents, problem };
  };
  const engineSets: EngineMessage[][] = [];
  const engineWarmup: EngineMessage[] = [];
  if (opts.engineLimit) {
    const t1 = performance.now();
    // Fresh messages (not those of the mailboxes, which the proxies scan): clamd's own cache of
    // clean files must not answer; one set per session, sizes and infected ones as in a mailbox.
    for (let s = 0; s < opts.sessions; s++) {
      const sizes = messageSizes(opts.messages);
      const set: EngineMessage[] = [];
      for (let i = 0; i < opts.messages; i++) set.push(await prepareEngine(factory.make(sizes[i] as number, i % opts.infectedEvery === opts.infectedEvery - 1)));
      engineSets.push(set);
    }
    for (const m of boxes.get(warmupUser)?.values() ?? []) engineWarmup.push(await prepareEngine(m));
    const all = engineSets.flat();
    const docs = all.reduce((n, m) => n + m.documents.length, 0);
    const decoded = all.reduce((n, m) => n + m.documents.reduce((k, d) => k + d.data.length, 0), 0);
    log(
      `  engine limit: ${all.length} fresh messages (${(all.reduce((n, m) => n + m.wireBytes, 0) / 1e6).toFixed(1)} MB) decoded by avgate's MIME walker into ${docs} documents ` +
        `(${(decoded / 1e6).toFixed(1)} MB, in memory) in ${((performance.now() - t1) / 1000).toFixed(1)} s, before any clock`,
    );
  }

  // ------------------------------------------------------------ the relays (reference)
  const relays = new Map<Protocol, Relay | string>();
  let relayName = 'socat';
  if (relayNote === null) {
    relayName = relayVersion()?.replace(/^socat version (\S+).*$/, 'socat $1') ?? 'socat';
    for (const protocol of ['pop3', 'imap'] as const) {
      try {
        const r = await startRelay({ targetPort: protocol === 'pop3' ? dovecot.pop3Port : dovecot.imapPort, outPath: join(tmp, `mailproxy-relay-${protocol}.out`) });
        onCleanup(() => r.stop());
        relays.set(protocol, r);
        log(`  ${protocol} relay (${relayName}, a plain TCP relay, reference): pid ${r.pid}, port ${r.port} -> Dovecot ${protocol === 'pop3' ? dovecot.pop3Port : dovecot.imapPort}`);
      } catch (err) {
        const msg = err instanceof Error ? (err.message.split('\n')[0] ?? err.message) : String(err);
        relays.set(protocol, msg);
        log(`  ${protocol} relay NOT STARTED: ${msg}`);
        failed = true;
      }
    }
  }

  // ------------------------------------------------------------ avgate's proxies
  // AVGATE_BENCH_MAILPROXY_YAML: extra keys for both proxies' sections, one `key: value` per line
  // separated by ';' (to compare settings, e.g. `prescan-max-size: 0`); reported with the results.
  const extraFrontYaml = (process.env['AVGATE_BENCH_MAILPROXY_YAML'] ?? '')
    .split(';')
    .map((l) => l.trim())
    .filter(Boolean);
  if (extraFrontYaml.length > 0) log(`  avgate proxies with extra settings: ${extraFrontYaml.join('; ')}`);
  const children = new Map<Protocol, AvgateFrontChild | string>();
  for (const protocol of ['pop3', 'imap'] as const) {
    try {
      const c = await startAvgateFront({
        front: protocol === 'pop3' ? 'pop3-proxy' : 'imap-proxy',
        clamdSocket: clamd.socketPath,
        dbDir: clamd.dbDir,
        stateDir: join(tmp, `mailproxy-avgate-${protocol}`),
        frontYaml: [`upstream: 127.0.0.1:${protocol === 'pop3' ? dovecot.pop3Port : dovecot.imapPort}`, ...extraFrontYaml].join('\n'),
        nodeFlags: [...opts.avgateNodeFlags],
      });
      children.set(protocol, c);
      log(`  avgate ${protocol}-proxy: child pid ${c.pid} (${c.runner}), port ${c.port}`);
    } catch (err) {
      const msg = err instanceof Error ? (err.message.split('\n')[0] ?? err.message) : String(err);
      children.set(protocol, msg);
      log(`  avgate ${protocol}-proxy NOT STARTED: ${msg}`);
      failed = true;
    }
  }

  const modes: Mode[] = [];
  for (const spec of modeSpecs) {
    let port = spec.protocol === 'pop3' ? dovecot.pop3Port : dovecot.imapPort;
    let middleCpuMs: Mode['middleCpuMs'] = null;
    if (spec.kind === 'avgate') {
      const child = children.get(spec.protocol);
      if (typeof child !== 'object') continue;
      port = child.port;
      middleCpuMs = () => treeCpuMs(child.pid);
    } else if (spec.kind === 'relay') {
      const relay = relays.get(spec.protocol);
      if (typeof relay !== 'object') continue;
      port = relay.port;
      middleCpuMs = () => forkingTreeCpuMs(relay.pid);
    }
    modes.push({
      ...spec,
      scanned: spec.kind === 'avgate',
      port,
      middleCpuMs,
      mailboxes: Array.from({ length: opts.sessions }, (_, s) => {
        const user = userOf(spec.name, s);
        return { user, byToken: boxes.get(user) as Map<string, ProxyBenchMessage> };
      }),
    });
  }

  // ------------------------------------------------------------ passes
  const accs = new Map<string, Acc>(); // `${regime} ${mode}`
  const accOf = (regime: Regime, mode: string) => {
    let a = accs.get(`${regime} ${mode}`);
    if (!a) {
      a = newAcc();
      accs.set(`${regime} ${mode}`, a);
    }
    return a;
  };
  const sectionStarted = performance.now();
  const runPass = async (m: Mode, regime: Regime) => {
    checkStop();
    const acc = accOf(regime, m.name);
    const server0 = m.middleCpuMs ? await m.middleCpuMs() : Number.NaN;
    const dovecot0 = await forkingTreeCpuMs(dovecot.pid);
    const clamd0 = await processCpuMs(clamd.pid);
    const started = performance.now();
    let messages = 0;
    await Promise.all(
      m.mailboxes.map(async (box) => {
        const seen = new Set<string>();
        const params: SessionParams = {
          port: m.port,
          user: box.user,
          password: PASSWORD,
          deadline: Date.now() + opts.sessionTimeoutMs,
          maxBytes: 4 * MAX_MESSAGE_BYTES,
          onMessage: (raw, ms) => {
            messages++;
            acc.bytes += raw.length;
            acc.latencies.push(ms);
            const c = checkFetched(raw, box.byToken, m.scanned);
            const problem = c.problem ?? (c.token && seen.has(c.token) ? 'read twice in one session' : null);
            if (c.token) seen.add(c.token);
            if (problem) {
              acc.wrong++;
              if (acc.samples.length < 5) acc.samples.push(`${box.user} ${c.token ?? '?'}: ${problem}`);
            }
          },
        };
        try {
          const n = await (m.protocol === 'pop3' ? pop3ReadAll(params) : imapReadAll(params));
          if (n !== box.byToken.size || seen.size !== box.byToken.size) throw new Error(`${seen.size} of ${box.byToken.size} messages read (server listed ${n})`);
        } catch (err) {
          acc.wrong++;
          if (acc.samples.length < 5) acc.samples.push(`${box.user}: session failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    acc.messages += messages;
    acc.seconds += seconds;
    acc.passes.push(messages / seconds);
    if (m.middleCpuMs) acc.serverCpuMs += (await m.middleCpuMs()) - server0;
    acc.dovecotCpuMs += (await forkingTreeCpuMs(dovecot.pid)) - dovecot0;
    acc.clamdCpuMs += (await processCpuMs(clamd.pid)) - clamd0;
    log(`  ${regime} ${m.name.padEnd(11)} ${opts.sessions} sessions: ${messages} messages in ${seconds.toFixed(2)} s = ${(messages / seconds).toFixed(1)} msg/s${acc.wrong ? `  WRONG ${acc.wrong}` : ''}`);
  };
  /** Sends a message's documents to clamd one after the other (as the walker hands them over); what is wrong, or null. */
  const sendEngineMessage = async (m: EngineMessage): Promise<string | null> => {
    let problem = m.problem;
    for (const d of m.documents) {
      const expect = m.infected && d.attachment ? 'found' : 'free';
      let got: { status: string; detail: string };
      try {
        got = classifyReply(await directInstream(clamd.socketPath, [d.data], opts.directChunk));
      } catch (err) {
        got = { status: 'error', detail: err instanceof Error ? err.message : String(err) };
      }
      if (got.status !== expect) problem ??= `document ${d.id}${d.attachment ? ' (attachment)' : ''}: ${expect === 'found' ? 'FOUND' : 'OK'} expected, clamd: ${got.detail}`;
    }
    return problem;
  };
  let engineClientCpuMs = Number.NaN;
  const runEngineLimit = async () => {
    checkStop();
    const acc = accOf('cold', ENGINE_LIMIT);
    acc.serverCpuMs = Number.NaN;
    acc.dovecotCpuMs = Number.NaN;
    const clamd0 = await processCpuMs(clamd.pid);
    const client0 = process.cpuUsage();
    const started = performance.now();
    let messages = 0;
    await Promise.all(
      engineSets.map(async (set, s) => {
        for (const m of set) {
          checkStop();
          const t = performance.now();
          const problem = await sendEngineMessage(m);
          acc.latencies.push(performance.now() - t);
          messages++;
          acc.bytes += m.wireBytes;
          if (problem) {
            acc.wrong++;
            if (acc.samples.length < 5) acc.samples.push(`worker ${s} ${m.token}: ${problem}`);
          }
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const client = process.cpuUsage(client0);
    engineClientCpuMs = (client.user + client.system) / 1000;
    acc.messages += messages;
    acc.seconds += seconds;
    acc.passes.push(messages / seconds);
    acc.clamdCpuMs += (await processCpuMs(clamd.pid)) - clamd0;
    log(`  cold ${ENGINE_LIMIT.padEnd(11)} ${opts.sessions} sessions: ${messages} messages in ${seconds.toFixed(2)} s = ${(messages / seconds).toFixed(1)} msg/s${acc.wrong ? `  WRONG ${acc.wrong}` : ''}`);
  };
  if (warmupMessages > 0) {
    const t0 = performance.now();
    const byToken = boxes.get(warmupUser) as Map<string, ProxyBenchMessage>;
    let bad = 0;
    for (const m of modes) {
      for (let pass = 0; pass < 2; pass++) {
        checkStop();
        const params: SessionParams = {
          port: m.port,
          user: warmupUser,
          password: PASSWORD,
          deadline: Date.now() + opts.sessionTimeoutMs,
          maxBytes: 4 * MAX_MESSAGE_BYTES,
          onMessage: (raw) => {
            if (checkFetched(raw, byToken, m.scanned).problem) bad++;
          },
        };
        try {
          await (m.protocol === 'pop3' ? pop3ReadAll(params) : imapReadAll(params));
        } catch {
          bad++;
        }
      }
    }
    // The engine limit's client too: the warm-up mailbox's documents, twice.
    for (let pass = 0; pass < 2 && engineSets.length > 0; pass++) {
      for (const m of engineWarmup) {
        checkStop();
        if ((await sendEngineMessage(m)) !== null) bad++;
      }
    }
    log(`  warm-up: a mailbox of ${warmupMessages} messages read twice by every mode${engineSets.length > 0 ? ' (and its documents sent twice to clamd for the engine limit)' : ''} in ${((performance.now() - t0) / 1000).toFixed(1)} s${bad ? `; ${bad} WRONG` : ''}`);
    if (bad > 0) failed = true;
  }

  // cold: every mailbox read for the first time; warm: again, in a rotated order each pass
  for (const m of modes) await runPass(m, 'cold');
  if (engineSets.length > 0) await runEngineLimit();
  for (let pass = 0; pass < opts.warmPasses; pass++) {
    const k = pass % modes.length;
    const order = [...modes.slice(k), ...modes.slice(0, k)].reverse();
    for (const m of order) await runPass(m, 'warm');
  }
  const seconds = (performance.now() - sectionStarted) / 1000;

  // ------------------------------------------------------------ report
  const fmt = (n: number, d: number) => (Number.isFinite(n) ? n.toFixed(d) : '-');
  const rows: string[][] = [];
  let wrong = 0;
  let checked = 0;
  for (const regime of ['cold', 'warm'] as const) {
    for (const name of [...modes.map((m) => m.name), ENGINE_LIMIT]) {
      const a = accs.get(`${regime} ${name}`);
      if (!a) continue;
      wrong += a.wrong;
      checked += a.messages;
      const sorted = Float64Array.from(a.latencies).sort();
      rows.push([
        regime,
        name,
        String(opts.sessions),
        String(a.messages),
        fmt(a.seconds, 2),
        fmt(a.messages / a.seconds, 1),
        fmt(a.bytes / 1e6 / a.seconds, 1),
        fmt(percentile(sorted, 50), 2),
        fmt(percentile(sorted, 99), 2),
        a.passes.map((x) => x.toFixed(0)).join('/'),
        fmt(a.serverCpuMs / a.messages, 3),
        fmt(a.dovecotCpuMs / a.messages, 3),
        fmt(a.clamdCpuMs / a.messages, 3),
        String(a.wrong),
      ]);
      for (const s of a.samples) report.push(`WRONG ${regime} ${name}: ${s}`);
    }
  }
  const hasRelay = modes.some((m) => m.kind === 'relay');
  report.push(
    '',
    `Mail-proxy section: whole mailboxes read (${opts.messages} messages of 5-100 KB each, 1 in ${opts.infectedEvery} with EICAR), one mailbox per session` +
      (accs.has(`cold ${ENGINE_LIMIT}`) ? `; ${ENGINE_LIMIT}: as many fresh messages' documents straight to clamd, once after the cold passes (MB/s of the messages)` : '') +
      `; proxy cpu = avgate's child${hasRelay ? ', or the relay (socat and its per-session forks)' : ''}`,
    table(['regime', 'mode', 'sessions', 'messages', 'time s', 'msg/s', 'MB/s', 'p50 ms', 'p99 ms', 'msg/s per pass', 'proxy cpu ms/msg', 'dovecot cpu ms/msg', 'clamd cpu ms/msg', 'wrong'], rows),
  );
  const rate = (key: string) => {
    const a = accs.get(key);
    return a ? a.messages / a.seconds : Number.NaN;
  };
  const ratioRows: string[][] = [];
  let met = 0;
  for (const protocol of ['pop3', 'imap'] as const) {
    for (const regime of ['cold', 'warm'] as const) {
      const d = accs.get(`${regime} ${protocol} direct`);
      const a = accs.get(`${regime} ${protocol} avgate`);
      if (!d || !a) continue;
      const target = regime === 'cold' ? MAILPROXY_TARGET_COLD : MAILPROXY_TARGET_WARM;
      const rd = d.messages / d.seconds;
      const ra = a.messages / a.seconds;
      const ok = ra / rd >= target;
      if (ok) met++;
      ratioRows.push([protocol, regime, fmt(ra, 1), fmt(rd, 1), ratio(ra, rd), `>= ${target.toFixed(1)}`, ok ? 'ok' : 'BELOW']);
    }
  }
  if (ratioRows.length > 0) report.push('', 'Mail-proxy section: avgate / direct (msg/s)', table(['protocol', 'regime', 'avgate msg/s', 'direct msg/s', 'ratio', 'target', ''], ratioRows));
  const engine = accs.get(`cold ${ENGINE_LIMIT}`);
  let engineResult: string | null = null;
  if (engine) {
    const re = engine.messages / engine.seconds;
    report.push(
      '',
      `${ENGINE_LIMIT} (clamd INSTREAM of the same documents, ${opts.sessions} sessions): ${fmt(re, 1)} msg/s, clamd cpu-ms/msg ${fmt(engine.clamdCpuMs / engine.messages, 3)}, ` +
        `client cpu-ms/msg ${fmt(engineClientCpuMs / engine.messages, 3)} (run once after the cold passes; reference, no target)`,
      `  pop3 avgate cold / ${ENGINE_LIMIT}: ${ratio(rate('cold pop3 avgate'), re)}`,
      `  imap avgate cold / ${ENGINE_LIMIT}: ${ratio(rate('cold imap avgate'), re)}`,
      `  ${ENGINE_LIMIT} / pop3 direct: ${ratio(re, rate('cold pop3 direct'))} (the ceiling of the cold ratio avgate/direct)`,
    );
    engineResult = `mailproxy: ${ENGINE_LIMIT} ${fmt(re, 1)} msg/s = ${ratio(re, rate('cold pop3 direct'))} x pop3 direct cold (the ceiling of the cold ratio); pop3 avgate cold reaches ${ratio(rate('cold pop3 avgate'), re)} of it`;
  }
  // relay reference: relay/direct is what one more process passing the bytes on costs here;
  // avgate/relay what avgate costs beyond that
  const relayResult: string[] = [];
  if (relayNote !== null) {
    report.push('', relayNote);
    if (opts.relay) relayResult.push(`mailproxy: ${relayNote}`);
  } else if (hasRelay) {
    const protocols = (['pop3', 'imap'] as const).filter((proto) => modes.some((m) => m.name === `${proto} relay`));
    report.push('', `relay (${relayName}: client -> relay -> Dovecot, a plain TCP relay in C, one forked process per session; reference, no target)`);
    for (const protocol of protocols) {
      for (const regime of ['cold', 'warm'] as const) {
        const [rr, rd, ra] = (['relay', 'direct', 'avgate'] as const).map((k) => rate(`${regime} ${protocol} ${k}`)) as [number, number, number];
        report.push(`  ${protocol} relay ${regime} / ${protocol} direct ${regime}: ${ratio(rr, rd)}; ${protocol} avgate ${regime} / ${protocol} relay ${regime}: ${ratio(ra, rr)}`);
      }
    }
    const per = (f: (proto: Protocol) => string) => protocols.map((proto) => `${proto} ${f(proto)}`).join(', ');
    relayResult.push(
      `mailproxy: relay (${relayName}, a plain TCP relay) / direct warm ${per((proto) => ratio(rate(`warm ${proto} relay`), rate(`warm ${proto} direct`)))} ` +
        `(cold ${per((proto) => ratio(rate(`cold ${proto} relay`), rate(`cold ${proto} direct`)))}), against the warm target ${MAILPROXY_TARGET_WARM}x; ` +
        `avgate / relay warm ${per((proto) => ratio(rate(`warm ${proto} avgate`), rate(`warm ${proto} relay`)))}`,
    );
  }
  const relayMissing = [...relays.entries()].filter(([, r]) => typeof r === 'string').map(([proto, r]) => `${proto}: ${String(r)}`);
  if (relayMissing.length > 0) relayResult.push(`mailproxy: relay NOT STARTED (${relayMissing.join('; ')})`);
  const missing = [...children.entries()].filter(([, c]) => typeof c === 'string').map(([proto, c]) => `${proto}: ${String(c)}`);
  result.push(
    `mailproxy: ${met} of ${ratioRows.length} ratios meet their targets (avgate >= ${MAILPROXY_TARGET_COLD}x direct cold, >= ${MAILPROXY_TARGET_WARM}x warm); ${seconds.toFixed(0)} s` +
      (missing.length > 0 ? `; avgate NOT STARTED (${missing.join('; ')})` : ''),
  );
  if (engineResult !== null) result.push(engineResult);
  result.push(...relayResult);
  if (wrong > 0) failed = true;
  return { report, result, wrong, checked, failed };
}
