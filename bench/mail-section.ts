/**
 * Mail section: messages per second through avgate's mail filter (default policy), ClamSMTP 1.10
 * and amavisd-new 2.13 (4 children, anti-virus checks only), all on the same clamd and delivering
 * to the same smtp-sink, plus the engine limit: the same messages straight to clamd (INSTREAM).
 *
 * - Load: bench/mail-load.ts, 10 and 50 concurrent SMTP sessions (INSTREAM connections for direct),
 *   one message per transaction; every message unique (bench/mail-messages.ts); 5% carry EICAR.
 * - Kinds: a 5 KB message (text + small attachment), a 100 KiB and a 2 MiB attachment (base64,
 *   multipart/mixed).
 * - A cell (kind x sessions x mode) is bounded by a message count and a time, whichever comes
 *   first; it is measured in slices that rotate through the modes, so that load from elsewhere on
 *   the small shared machine hits every mode alike.
 * - Checked: every reply (2xx accepted, 4xx/5xx refused, errors), the verdict where the reply tells
 *   it (ClamSMTP, amavisd, clamd), and the number of messages the sink received, which for avgate
 *   includes its notices (the per-message count is measured once per mode at the start).
 * - Measured: msg/s, p50/p99 per message, CPU per message of the client (this process), of the
 *   server's process tree (children amavisd has reaped included) and of clamd; RSS of avgate's
 *   process during its cells, and first vs last over a longer run (10 sessions, 5 KB).
 */
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { LocalClamd } from '../src/engines/clamd/local.js';
import { startAmavisd, type Amavisd } from '../tools/peers/amavisd.js';
import { startClamsmtp, type Clamsmtp } from '../tools/peers/clamsmtp.js';
import { rssOf, sampleRss } from './avgate-icap.js';
import type { SectionResult } from './engine-section.js';
import { checkStop, gc, log, onCleanup, processCpuMs } from './harness.js';
import { startAvgateMail, type AvgateMailChild } from './mail-avgate.js';
import { addCounts, closePool, driveMail, openPool, emptyCounts, SmtpSession, type MailCounts, type MailTarget, type SmtpReply } from './mail-load.js';
import { MESSAGE_KINDS, MessageFactory, type MessageKind } from './mail-messages.js';
import { startCountingSink, type CountingSink } from './mail-sink.js';
import { treeCpuMs } from './proc-cpu.js';
import { median, percentile, table } from './stats.js';

export interface MailSectionOptions {
  /** Wall time per cell (ms), split into `slices` slices. */
  cellMs: number;
  slices: number;
  /** Messages per cell at most, by kind label. */
  maxMessages: Record<string, number>;
  sessions: readonly number[];
  /** Kinds to run (labels of MESSAGE_KINDS). */
  kinds: readonly string[];
  /** Messages of the RSS run (10 sessions, 5 KB, avgate); 0 = no RSS run. */
  rssMessages: number;
  /** One in `infectedEvery` messages carries EICAR. */
  infectedEvery: number;
  /** amavisd's children. */
  amavisdChildren: number;
  directChunk: number;
  /** Node flags for avgate's mail filter process (e.g. --cpu-prof). */
  avgateNodeFlags?: readonly string[];
  /** Untimed messages per mode before the first cell (first kind, 10 sessions, infected as in the cells); 0 = none. */
  warmup: number;
}

export const MAIL_SESSIONS = [10, 50] as const;

/** What the issue asks of avgate against the better of ClamSMTP and amavisd-new, by kind. */
export const MAIL_TARGETS: Readonly<Record<string, number>> = { '5KB': 2.5, '100KB': 1.3, '2MB': 1.0 };

const FROM = 'sender@bench.test';
const TO = 'rcpt@bench.test';

interface Mode {
  name: string;
  target: MailTarget;
  /** The server process whose tree is metered (none for direct). */
  pid?: number;
  /** Add the CPU of reaped children (amavisd replaces its children every $max_requests messages). */
  reaped?: boolean;
  /** Messages the sink gets per accepted clean / infected message (measured by the probe); null = no sink. */
  sinkPerClean: number | null;
  sinkPerInfected: number;
  verdictOfReply?: (r: SmtpReply) => boolean | null;
  /** RSS sampled during the mode's slices (avgate). */
  rssPid?: number;
  note: string;
}

interface CellAcc {
  counts: MailCounts;
  seconds: number;
  clientCpuMs: number;
  serverCpuMs: number;
  clamdCpuMs: number;
  sinkExpected: number;
  sinkGot: number;
  rssPeakMB: number;
  sliceRates: number[];
}

const newAcc = (): CellAcc => ({
  counts: emptyCounts(),
  seconds: 0,
  clientCpuMs: 0,
  serverCpuMs: 0,
  clamdCpuMs: 0,
  sinkExpected: 0,
  sinkGot: 0,
  rssPeakMB: Number.NaN,
  sliceRates: [],
});

/** CPU (ms) of the children a process has waited for (cutime + cstime from /proc/PID/stat). */
async function reapedCpuMs(pid: number): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[13]) + Number(f[14])) * 10;
  } catch {
    return Number.NaN;
  }
}

async function serverCpu(m: Mode): Promise<number> {
  if (m.pid === undefined) return Number.NaN;
  return (await treeCpuMs(m.pid)) + (m.reaped ? await reapedCpuMs(m.pid) : 0);
}

/** Rotation of the modes for slice s: each runs first, last and in between as often. */
function rotate<T>(items: readonly T[], s: number): T[] {
  const k = s % items.length;
  const r = [...items.slice(k), ...items.slice(0, k)];
  return Math.floor(s / items.length) % 2 === 1 ? r.reverse() : r;
}

const fmt = (n: number, d: number) => (Number.isFinite(n) ? n.toFixed(d) : '-');

export async function runMailSection(p: { clamd: LocalClamd; tmp: string; opts: MailSectionOptions }): Promise<SectionResult> {
  const { clamd, tmp, opts } = p;
  const sectionStarted = performance.now();
  const at = () => `${((performance.now() - sectionStarted) / 1000).toFixed(0)} s`;
  const report: string[] = [];
  const result: string[] = [];
  const problems: string[] = [];
  let failed = false;
  const kinds = MESSAGE_KINDS.filter((k) => opts.kinds.includes(k.label));

  // ------------------------------------------------------------ servers
  // amavisd runs as the amavis user and talks to clamd over its unix socket: the socket and the
  // directories above it (the benchmark's own temporary ones) must let that user through.
  await chmod(clamd.socketPath, 0o666);
  for (let d = dirname(clamd.socketPath); d.startsWith(tmp); d = dirname(d)) await chmod(d, 0o711);

  const sink: CountingSink = await startCountingSink();
  onCleanup(() => sink.stop());
  log(`mail section: smtp-sink pid ${sink.pid}, port ${sink.port} (counting, -c); clamd pid ${clamd.pid ?? '?'}`);

  const avgate: AvgateMailChild = await startAvgateMail({
    clamdSocket: clamd.socketPath,
    dbDir: clamd.dbDir,
    stateDir: join(tmp, 'avgate-mail'),
    nextHopPort: sink.port,
    ...(opts.avgateNodeFlags?.length ? { nodeFlags: [...opts.avgateNodeFlags] } : {}),
  });
  log(`  avgate mail filter: child pid ${avgate.pid} (${avgate.runner}), port ${avgate.port}, default policy`);

  let clamsmtp: Clamsmtp | null = null;
  try {
    clamsmtp = await startClamsmtp({ dir: join(tmp, 'clamsmtp'), clamdSocket: clamd.socketPath, outPort: sink.port, action: 'drop', maxConnections: 64 });
    onCleanup(() => clamsmtp?.stop() ?? Promise.resolve());
    log(`  ClamSMTP: pid ${clamsmtp.pid}, port ${clamsmtp.port}, Action drop, MaxConnections 64`);
  } catch (err) {
    problems.push(`ClamSMTP could not be run: ${err instanceof Error ? err.message.split('\n').slice(0, 6).join(' / ') : String(err)}`);
  }

  let amavisd: Amavisd | null = null;
  // Its own 0755 directory: a mkdtemp directory (like the benchmark's) is not traversable by amavis.
  const amavisDir = await mkdtemp(join(tmpdir(), 'avgate-bench-amavisd-'));
  onCleanup(() => rm(amavisDir, { recursive: true, force: true, maxRetries: 5 }));
  try {
    amavisd = await startAmavisd({ dir: amavisDir, clamdSocket: clamd.socketPath, forwardPort: sink.port, maxServers: opts.amavisdChildren });
    onCleanup(() => amavisd?.stop() ?? Promise.resolve());
    log(`  amavisd-new: pid ${amavisd.pid}, port ${amavisd.port}, ${opts.amavisdChildren} children, $max_requests 20 (its default), anti-virus checks only`);
  } catch (err) {
    problems.push(`amavisd-new could not be run: ${err instanceof Error ? err.message.split('\n').slice(0, 8).join(' / ') : String(err)}`);
  }

  // ------------------------------------------------------------ modes and the probe
  const modes: Mode[] = [
    {
      name: 'direct',
      target: { kind: 'instream', socketPath: clamd.socketPath, chunk: opts.directChunk },
      sinkPerClean: null,
      sinkPerInfected: 0,
      note: 'the raw message, one INSTREAM per message (clamd decodes the MIME itself)',
    },
    {
      name: 'avgate',
      target: { kind: 'smtp', port: avgate.port, reconnectEachMessage: false },
      pid: avgate.pid,
      rssPid: avgate.pid,
      sinkPerClean: 1,
      sinkPerInfected: 1,
      note: 'persistent sessions; infected: delivered with the part removed, plus notices',
    },
  ];
  if (clamsmtp) {
    modes.push({
      name: 'clamsmtp',
      target: { kind: 'smtp', port: clamsmtp.port, reconnectEachMessage: false },
      pid: clamsmtp.pid,
      sinkPerClean: 1,
      sinkPerInfected: 0,
      verdictOfReply: (r) => /Virus Detected/i.test(r.text),
      note:
        'persistent sessions, opened one at a time (ClamSMTP 1.10 loses some of the sessions opened together: they never get a greeting); ' +
        'infected: dropped (250 Virus Detected; Discarded Email)',
    });
  }
  if (amavisd) {
    modes.push({
      name: 'amavisd',
      target: { kind: 'smtp', port: amavisd.port, reconnectEachMessage: true },
      pid: amavisd.pid,
      reaped: true,
      sinkPerClean: 1,
      sinkPerInfected: 0,
      verdictOfReply: (r) => (/INFECTED/.test(r.text) ? true : /from MTA\(/.test(r.text) ? false : null),
      note: `a new connection per message (one SMTP session per child, ${opts.amavisdChildren} children); infected: discarded (250 2.7.0)`,
    });
  }

  // One clean and one infected message through each SMTP mode: the replies, and what the sink gets.
  const probeFactory = new MessageFactory(MESSAGE_KINDS[0] as MessageKind, FROM, TO);
  for (const m of [...modes]) {
    if (m.target.kind !== 'smtp') continue;
    const lines: string[] = [];
    try {
      const per: number[] = [];
      for (const infected of [false, true]) {
        const s = new SmtpSession(m.target.port, 'probe.bench.test', 60_000);
        await s.connect();
        const before = await sink.settle(Number.MAX_SAFE_INTEGER, 300, 2000);
        const r = await s.send(FROM, TO, probeFactory.make(infected).wire);
        await s.close();
        // Notices may follow the reply: wait until the count has been still for a while.
        const after = await sink.settle(Number.MAX_SAFE_INTEGER, 1000, 10_000);
        per.push(after - before);
        lines.push(`${infected ? 'infected' : 'clean'}: ${r.code} ${r.text.slice(0, 120)} (sink +${after - before})`);
        if (r.stage !== 'dot' || r.code !== 250) throw new Error(`${infected ? 'infected' : 'clean'} probe message answered ${r.stage} ${r.code} ${r.text}`);
        const v = m.verdictOfReply?.(r) ?? null;
        if (v !== null && v !== infected) throw new Error(`${infected ? 'infected' : 'clean'} probe message: reply says otherwise: ${r.text}`);
      }
      if (per[0] !== 1) throw new Error(`the sink got ${per[0]} messages for one clean message`);
      m.sinkPerInfected = per[1] ?? 0;
      if (m.name === 'avgate' && m.sinkPerInfected < 1) throw new Error('the infected probe message was not delivered (default policy: remove the part, deliver)');
      if (m.name !== 'avgate' && m.sinkPerInfected !== 0) throw new Error(`the infected probe message reached the sink (${m.sinkPerInfected})`);
      log(`  probe ${m.name}: ${lines.join('; ')}`);
    } catch (err) {
      problems.push(`${m.name} left out: probe failed: ${err instanceof Error ? err.message : String(err)} [${lines.join('; ')}]`);
      modes.splice(modes.indexOf(m), 1);
      // A peer that misbehaves is reported and left out; avgate misbehaving fails the run.
      if (m.name === 'avgate') failed = true;
    }
  }
  report.push(
    `mail messages: multipart/mixed, text/plain + one base64 attachment, unique (random text token, random attachment bytes); ` +
      kinds.map((k) => `${k.label} = ${k.textBytes} B text + ${k.attachmentBytes} B attachment`).join(', ') +
      `; one in ${opts.infectedEvery} carries EICAR at the start of its attachment; cells of ${opts.cellMs / 1000} s or ${Object.entries(opts.maxMessages)
        .map(([k, v]) => `${v} ${k}`)
        .join('/')} messages, in ${opts.slices} slices rotating through the modes`,
  );
  for (const m of modes) report.push(`mail mode ${m.name}: ${m.note}${m.sinkPerClean !== null ? `; sink per clean/infected message ${m.sinkPerClean}/${m.sinkPerInfected}` : ''}`);
  for (const pr of problems) log(`  ${pr}`);

  // ------------------------------------------------------------ cells
  const cells = new Map<string, CellAcc>(); // `${kind} ${sessions} ${mode}`
  const key = (k: string, s: number, m: string) => `${k} ${s} ${m}`;
  const sizes = new Map<string, number>();
  const sessionPools = new Map<string, SmtpSession[]>();
  const poolOf = (m: Mode) => {
    let pool = sessionPools.get(m.name);
    if (!pool) sessionPools.set(m.name, (pool = []));
    return pool;
  };
  const sessionTrouble: string[] = [];
  const sinkNow = () => sink.settle(Number.MAX_SAFE_INTEGER, 0, 0);
  const expectedSink = (m: Mode, c: MailCounts) =>
    m.sinkPerClean === null ? 0 : (c.accepted - c.acceptedInfected) * m.sinkPerClean + c.acceptedInfected * m.sinkPerInfected;

  if (opts.warmup > 0 && kinds.length > 0) {
    const t0 = performance.now();
    const factory = new MessageFactory(kinds[0] as MessageKind, FROM, TO);
    const done: string[] = [];
    for (const m of modes) {
      checkStop();
      const sessions = 10;
      if (m.target.kind === 'smtp' && !m.target.reconnectEachMessage) await openPool(poolOf(m), m.target.port, sessions);
      const before = await sinkNow();
      const w = await driveMail({ sessions, maxMessages: opts.warmup, maxMs: 60_000, infectedEvery: opts.infectedEvery, factory, target: m.target, verdictOfReply: m.verdictOfReply, pool: poolOf(m), from: FROM, to: TO });
      if (m.sinkPerClean !== null) await sink.settle(before + expectedSink(m, w), 1500, 30_000);
      if (m.target.kind === 'smtp') await closePool(poolOf(m));
      done.push(`${m.name} ${w.sent}${w.wrong ? ` (WRONG ${w.wrong})` : ''}`);
      if (w.wrong > 0) failed = true;
    }
    log(`  warm-up: untimed ${kinds[0]?.label ?? ''} messages over 10 sessions, 1 in ${opts.infectedEvery} infected: ${done.join(', ')} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }

  for (const kind of kinds) {
    const factory = new MessageFactory(kind, FROM, TO);
    sizes.set(kind.label, factory.approxSize);
    const maxPerCell = opts.maxMessages[kind.label] ?? 1000;
    for (const sessions of opts.sessions) {
      checkStop();
      log(`  ${kind.label} (${(factory.approxSize / 1024).toFixed(1)} KiB on the wire), ${sessions} sessions: ${modes.map((m) => m.name).join(', ')} [section time ${at()}]`);
      for (const m of modes) {
        cells.set(key(kind.label, sessions, m.name), newAcc());
        // Untimed: sessions opened (all first, then one message each), code paths warm; what the
        // sink got is waited for.
        if (m.target.kind === 'smtp' && !m.target.reconnectEachMessage) {
          const failures = await openPool(poolOf(m), m.target.port, sessions);
          if (failures.length > 0) {
            const line = `${m.name} ${kind.label} s${sessions}: ${failures.length} failed attempt(s) to open a session (opened one at a time, up to 3 tries): ${failures[0]}`;
            log(`    ${line}`);
            sessionTrouble.push(line);
          }
        }
        const before = await sinkNow();
        const w = await driveMail({ sessions, maxMessages: sessions, maxMs: 60_000, infectedEvery: 1e9, factory, target: m.target, pool: poolOf(m), from: FROM, to: TO });
        if (m.sinkPerClean !== null) await sink.settle(before + expectedSink(m, w), 1500, 30_000);
      }
      for (let s = 0; s < opts.slices; s++) {
        for (const m of rotate(modes, s)) {
          checkStop();
          const acc = cells.get(key(kind.label, sessions, m.name)) as CellAcc;
          gc?.();
          const sink0 = await sinkNow();
          const cpu0 = process.cpuUsage();
          const clamd0 = await processCpuMs(clamd.pid);
          const server0 = await serverCpu(m);
          const rss = m.rssPid !== undefined ? sampleRss(m.rssPid, 200) : null;
          const r = await driveMail({
            sessions,
            maxMessages: Math.ceil(maxPerCell / opts.slices),
            maxMs: opts.cellMs / opts.slices,
            infectedEvery: opts.infectedEvery,
            factory,
            target: m.target,
            verdictOfReply: m.verdictOfReply,
            pool: poolOf(m),
            from: FROM,
            to: TO,
          });
          const mem = rss ? await rss.stop() : null;
          const cpu = process.cpuUsage(cpu0);
          acc.clientCpuMs += (cpu.user + cpu.system) / 1000;
          acc.clamdCpuMs += (await processCpuMs(clamd.pid)) - clamd0;
          acc.serverCpuMs += (await serverCpu(m)) - server0;
          acc.seconds += r.seconds;
          acc.sliceRates.push(r.sent / r.seconds);
          if (mem) acc.rssPeakMB = Math.max(Number.isFinite(acc.rssPeakMB) ? acc.rssPeakMB : 0, mem.peakSampledMB);
          addCounts(acc.counts, r);
          if (m.sinkPerClean !== null) {
            const want = expectedSink(m, r);
            const got = (await sink.settle(sink0 + want, 1500, 30_000)) - sink0;
            acc.sinkExpected += want;
            acc.sinkGot += got;
          }
        }
      }
      for (const m of modes) {
        if (m.target.kind === 'smtp') await closePool(poolOf(m));
        const acc = cells.get(key(kind.label, sessions, m.name)) as CellAcc;
        const c = acc.counts;
        const sorted = Float64Array.from(c.latencies).sort();
        log(
          `  ${kind.label.padEnd(5)} s${String(sessions).padEnd(2)} ${m.name.padEnd(8)} ${fmt(c.sent / acc.seconds, 1).padStart(7)} msg/s  ` +
            `p50 ${fmt(percentile(sorted, 50), 1).padStart(7)} ms  p99 ${fmt(percentile(sorted, 99), 1).padStart(7)} ms  ` +
            `${c.sent} sent (${c.acceptedInfected + c.refusedInfected} infected), ${c.accepted} accepted, ${c.refused} refused, ${c.errors} errors` +
            `${m.sinkPerClean !== null ? `, sink ${acc.sinkGot}/${acc.sinkExpected}` : ''}${c.wrong ? `, WRONG ${c.wrong}` : ''}`,
        );
        for (const smp of c.samples) log(`      ${smp}`);
      }
    }
  }

  // ------------------------------------------------------------ RSS of avgate over a longer run
  // A fresh avgate child, alone with clamd and the sink (the peers are stopped): its RSS after a
  // warm-up, sampled every 500 ms while `rssMessages` 5 KB messages pass over 10 sessions.
  await clamsmtp?.stop();
  await amavisd?.stop();
  await avgate.stop();
  let rssLine: string | null = null;
  const rssKind = MESSAGE_KINDS[0] as MessageKind;
  if (opts.rssMessages > 0 && modes.some((m) => m.name === 'avgate')) {
    checkStop();
    const fresh = await startAvgateMail({ clamdSocket: clamd.socketPath, dbDir: clamd.dbDir, stateDir: join(tmp, 'avgate-mail-rss'), nextHopPort: sink.port });
    log(`  RSS run: fresh avgate mail filter, child pid ${fresh.pid} [section time ${at()}]`);
    const m = { ...(modes.find((x) => x.name === 'avgate') as Mode), target: { kind: 'smtp', port: fresh.port, reconnectEachMessage: false } as MailTarget };
    const factory = new MessageFactory(rssKind, FROM, TO);
    const pool: SmtpSession[] = [];
    await openPool(pool, fresh.port, 10);
    // Warm-up long enough to fill the in-memory verdict cache (10 000 entries, about 2 per message):
    // a bounded cache filling up is growth by design, not a leak.
    const warmCount = Math.min(10_000, Math.ceil(opts.rssMessages / 10));
    const warm = await driveMail({ sessions: 10, maxMessages: warmCount, maxMs: 120_000, infectedEvery: opts.infectedEvery, factory, target: m.target, pool, from: FROM, to: TO });
    const samples: number[] = [];
    const first = await rssOf(fresh.pid);
    if (first) samples.push(first.rssMB);
    // Live memory (after a full GC in the child) at the start and at the end: growth of garbage
    // not collected yet is not a leak; growth of what survives a GC may be.
    const mem0 = await fresh.memory();
    const timer = setInterval(() => {
      void rssOf(fresh.pid).then((r) => {
        if (r) samples.push(r.rssMB);
      });
    }, 500);
    const sink0 = await sinkNow();
    const r = await driveMail({
      sessions: 10,
      maxMessages: opts.rssMessages,
      // At least 180 s, and time for 200 messages/s (a loaded 2-core machine) beyond that.
      maxMs: Math.max(180_000, (opts.rssMessages / 200) * 1000),
      infectedEvery: opts.infectedEvery,
      factory,
      target: m.target,
      verdictOfReply: m.verdictOfReply,
      pool,
      from: FROM,
      to: TO,
    });
    clearInterval(timer);
    const last = await rssOf(fresh.pid);
    if (last) samples.push(last.rssMB);
    const mem1 = await fresh.memory();
    const mb = (n: number | undefined) => fmt((n ?? Number.NaN) / 1024 ** 2, 1);
    const gcLine =
      mem0 && mem1
        ? `after a full GC${mem0.gc ? '' : ' (gc not exposed!)'} at start/end: heapUsed ${mb(mem0.heapUsed)}/${mb(mem1.heapUsed)} MB, V8 heap in memory ${mb(mem0.heapPhysical)}/${mb(mem1.heapPhysical)} MB, external ${mb(mem0.external)}/${mb(mem1.external)} MB, RSS ${mb(mem0.rss)}/${mb(mem1.rss)} MB`
        : 'after-GC figures: the child did not answer';
    const want = expectedSink(m, r);
    const got = (await sink.settle(sink0 + want, 1500, 30_000)) - sink0;
    await closePool(pool);
    await fresh.stop();
    const firstMB = samples[0] ?? Number.NaN;
    const lastMB = samples[samples.length - 1] ?? Number.NaN;
    const growth = lastMB - firstMB;
    const allowed = Math.max(10, firstMB * 0.1);
    const flat = growth <= allowed;
    const q = Math.max(1, Math.floor(samples.length / 4));
    rssLine =
      `avgate mail RSS, fresh process, ${rssKind.label} x ${r.sent} messages over 10 sessions (${(r.sent / r.seconds).toFixed(0)} msg/s, ${r.seconds.toFixed(1)} s) after ${warm.sent} warm-up messages: ` +
      `first sample ${fmt(firstMB, 1)} MB, last ${fmt(lastMB, 1)} MB (${growth >= 0 ? '+' : ''}${fmt(growth, 1)} MB); ` +
      `min ${fmt(Math.min(...samples), 1)}, max ${fmt(Math.max(...samples), 1)} MB, median of first/last quarter ${fmt(median(samples.slice(0, q)), 1)}/${fmt(median(samples.slice(-q)), 1)} MB, ` +
      `${samples.length} samples every 500 ms, VmHWM ${fmt(last?.hwmMB ?? Number.NaN, 1)} MB; ${gcLine}; ` +
      `${r.accepted} accepted, ${r.refused} refused, ${r.errors} errors, sink ${got}/${want}  ` +
      `${flat ? `RSS flat ok (last - first <= ${allowed.toFixed(1)} MB)` : `RSS GROWING (last - first > ${allowed.toFixed(1)} MB)`}`;
    log(`  ${rssLine}`);
    if (!flat || r.errors > 0 || r.refused > 0 || got !== want) failed = true;
  }

  // ------------------------------------------------------------ report
  const headers = ['kind', 'msg KiB', 'sess', 'mode', 'sent', 'inf', 'acc', 'ref', 'err', 'time s', 'msg/s', 'MB/s', 'p50 ms', 'p99 ms', 'client cpu ms/msg', 'server cpu ms/msg', 'clamd cpu ms/msg', 'sink got/exp', 'RSS MB', 'wrong'];
  const rows: string[][] = [];
  const trouble: string[] = [];
  let wrong = 0;
  let checked = 0;
  const rate = (k: string, s: number, m: string) => {
    const a = cells.get(key(k, s, m));
    return a && a.counts.sent > 0 ? a.counts.sent / a.seconds : Number.NaN;
  };
  for (const kind of kinds)
    for (const sessions of opts.sessions)
      for (const m of modes) {
        const a = cells.get(key(kind.label, sessions, m.name));
        if (!a) continue;
        const c = a.counts;
        const sorted = Float64Array.from(c.latencies).sort();
        const sinkBad = m.sinkPerClean !== null && a.sinkGot !== a.sinkExpected;
        wrong += c.wrong + (sinkBad ? 1 : 0);
        checked += c.sent;
        if ((c.errors > 0 || c.refused > 0) && (m.name === 'avgate' || m.name === 'direct')) failed = true;
        if (c.errors > 0 || c.refused > 0) trouble.push(`${m.name} ${kind.label} s${sessions}: ${c.refused} refused, ${c.errors} errors (${c.samples.slice(0, 2).join(' | ')})`);
        rows.push([
          kind.label,
          fmt((sizes.get(kind.label) ?? 0) / 1024, 1),
          String(sessions),
          m.name,
          String(c.sent),
          String(c.acceptedInfected + c.refusedInfected),
          String(c.accepted),
          String(c.refused),
          String(c.errors),
          fmt(a.seconds, 1),
          fmt(c.sent / a.seconds, 1),
          fmt(((sizes.get(kind.label) ?? 0) * c.sent) / 1e6 / a.seconds, 1),
          fmt(percentile(sorted, 50), 1),
          fmt(percentile(sorted, 99), 1),
          fmt(a.clientCpuMs / c.sent, 2),
          fmt(a.serverCpuMs / c.sent, 2),
          fmt(a.clamdCpuMs / c.sent, 2),
          m.sinkPerClean === null ? '-' : `${a.sinkGot}/${a.sinkExpected}${sinkBad ? ' BAD' : ''}`,
          fmt(a.rssPeakMB, 0),
          String(c.wrong),
        ]);
      }
  report.push('', table(headers, rows));
  for (const t of sessionTrouble) report.push(`session trouble: ${t}`);
  for (const pr of problems) report.push(pr);
  if (rssLine) report.push(rssLine);

  const peers = modes.filter((m) => m.name === 'clamsmtp' || m.name === 'amavisd').map((m) => m.name);
  for (const kind of kinds) {
    const target = MAIL_TARGETS[kind.label];
    for (const sessions of opts.sessions) {
      const a = rate(kind.label, sessions, 'avgate');
      const best = peers.map((n) => ({ n, r: rate(kind.label, sessions, n) })).filter((x) => Number.isFinite(x.r)).sort((x, y) => y.r - x.r)[0];
      const d = rate(kind.label, sessions, 'direct');
      const label = `mail ${kind.label.padEnd(5)} s${String(sessions).padEnd(2)}`;
      if (best) {
        const ratio = a / best.r;
        const sliceRatio = median(
          (cells.get(key(kind.label, sessions, 'avgate'))?.sliceRates ?? []).map((x, i) => x / (cells.get(key(kind.label, sessions, best.n))?.sliceRates[i] ?? Number.NaN)),
        );
        result.push(
          `${label}: avgate/better peer (${best.n}) ${fmt(ratio, 2)} (${fmt(a, 1)} / ${fmt(best.r, 1)} msg/s, median slice ratio ${fmt(sliceRatio, 2)})` +
            (target === undefined ? '' : `  ${ratio >= target ? `ok (>= ${target})` : `BELOW ${target}`}`),
        );
      } else {
        result.push(`${label}: avgate/better peer: no peer ran (${problems.join('; ') || 'none available'})`);
      }
      result.push(`${label}: avgate/direct clamd ${fmt(a / d, 2)} (${fmt(a, 1)} / ${fmt(d, 1)} msg/s)`);
    }
  }
  if (rssLine) result.push(rssLine);
  for (const pr of problems) result.push(pr);
  for (const t of [...trouble, ...sessionTrouble]) result.push(`mail trouble: ${t}`);
  if (wrong > 0) {
    for (const kind of kinds)
      for (const sessions of opts.sessions)
        for (const m of modes) {
          const a = cells.get(key(kind.label, sessions, m.name));
          if (a && a.counts.wrong > 0) report.push(`WRONG in mail ${kind.label} s${sessions} ${m.name}: ${a.counts.samples.join(' | ')}`);
        }
  }

  // The servers are stopped by now (the clean-up steps find them gone): the next section has the
  // machine to itself.
  await sink.stop();
  return { report, result, wrong, checked, failed };
}
