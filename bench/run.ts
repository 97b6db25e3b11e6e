/**
 * avgate's benchmark, in two sections on one corpus and one clamd (test database):
 *
 * - engine: direct clamd INSTREAM vs avgate's Scanner (clamd-net engine, no cache, and a warm
 *   verdict cache), plus the memory of one 2 GiB object streamed through the Scanner
 *   (bench/engine-section.ts);
 * - icap: direct clamd vs c-icap 0.5.10 (virus_scan + clamd_mod) vs avgate's ICAP server, with
 *   and without preview, cold (unique content) and warm (repeated content), plus the memory of
 *   avgate's ICAP server while a 2 GiB object passes through it (bench/icap-section.ts);
 * - mail: messages/s through avgate's mail filter vs ClamSMTP vs amavisd-new vs direct clamd, unique
 *   5 KB / 100 KiB / 2 MiB messages (5% EICAR) over 10 and 50 SMTP sessions, into one smtp-sink,
 *   plus the RSS of avgate's mail filter over a longer run (bench/mail-section.ts);
 * - console: one avgate child with both the ICAP server and the web console: the scanning API
 *   (POST /api/v1/scan, bearer token, keep-alive) vs ICAP RESPMOD (no preview, Allow: 204) on the
 *   icap corpus, cold and warm, concurrency 1/4/16, objects/s and MB/s and their ratio (target
 *   api >= 0.9 x icap); and the dashboard pages (overview 24h/7d/30d, quarantine, signatures,
 *   config) after a real login, with 1 000 000 events in the statistics store: median and p95
 *   of 20 fetches each (target p95 < 200 ms) (bench/console-section.ts);
 * - http: downloads of 1 KB-100 MB objects from a local origin (a child process) through avgate's
 *   HTTP proxy vs straight from the origin vs Squid 5.7 + c-icap (virus_scan/clamd_mod, as
 *   respmod_precache service) vs the same Squid with no ICAP (mode `squid`, a plain relay that
 *   scans nothing), concurrency 1/8/32, cold (every URL new content) and warm (the same URLs
 *   again: avgate's verdict cache), MB/s and req/s per cell and the ratios avgate/Squid+c-icap
 *   (targets 1.2 up to 100 KB, 1.0 above) and avgate/direct (warm target 0.8), and for reference
 *   with no target squid/direct and avgate/squid (bench/http-section.ts);
 * - mailproxy: messages/s read through avgate's POP3 and IMAP proxies vs straight from Dovecot,
 *   mailboxes of 5-100 KB messages (5% EICAR) delivered once, N sessions each reading its whole
 *   mailbox, cold (first pass) and warm (later passes), ratios avgate/direct (targets 0.5 cold,
 *   0.9 warm) (bench/mailproxy-section.ts). docs/bench.md describes both.
 *
 *   npm run bench                                (compiled: node --expose-gc dist/bench/run.js)
 *   npx tsx bench/run.ts [--quick] [--only engine|icap|mail|console|http|mailproxy]   (development)
 *
 * Flags: --quick (half corpus, two passes per cell, 256 MiB big objects; mail: half the time and
 * messages per cell; console: 4 cold and 8 warm passes per cell), --only engine|icap|mail|console,
 * --passes N (engine: corpus passes per direct/engine cell), --icap-passes N (icap: corpus passes
 * per cold cell), --icap-warm-passes N, --preview N (icap preview bytes, default 1024),
 * --big-bytes N, --skip-big, --big-full-scan (raise clamd's MaxFileSize/MaxScanSize for the big
 * objects), --direct-chunk N, --profile-avgate DIR (V8 CPU profile of avgate's ICAP server during
 * the icap cells), --avgate-cold-nocache (cold icap cells against a second avgate server whose
 * verdict cache is off), --avgate-node-flags "FLAGS" (node flags for avgate's ICAP server
 * processes, e.g. "--max-semi-space-size=32"; also for the mail filter's); mail: --mail-seconds N (per cell, default 10),
 * --mail-kinds 5KB,100KB,2MB, --mail-sessions 10,50, --mail-rss-messages N (default 20000; 0 = no
 * RSS run); console: --console-passes N (corpus passes per cold cell, default 10), --console-warm-passes N
 * (default 20), --console-events N (statistics events, default 1000000), --console-page-runs N (default 20);
 * http: --http-sizes 1KB,10KB,100KB,1MB,10MB,100MB, --http-conc 1,8,32, --http-seconds N (per mode and
 * cell, default 3; --quick 1), --http-budget-mb N (bytes per mode and cell, default 200; --quick 10),
 * --http-max-requests N (default 2000; --quick 100), --http-max-inflight-mb N (cells with concurrency
 * x size above it are left out, default 800; --quick 100), --http-no-plain-squid (leave out mode
 * `squid`, the plain-relay reference: no second Squid is started); mailproxy: --mailproxy-messages N (per
 * mailbox, default 200; --quick 50), --mailproxy-sessions N (default 4; --quick 2),
 * --mailproxy-warm-passes N (default 2; --quick 1), --mailproxy-no-engine-limit (leaves out the engine
 * limit: the documents avgate's walker decodes from as many fresh messages, sent straight to clamd
 * with INSTREAM over as many sessions, once after the cold passes; a reference line, no target),
 * --mailproxy-no-relay (leaves out modes `pop3 relay` and `imap relay`: mailboxes like direct's read
 * through a plain TCP relay in C, socat, client -> relay -> Dovecot; reference ratios relay/direct
 * and avgate/relay, no target; left out by themselves when socat is not installed);
 * every section but engine and console: --warmup N
 * (untimed requests or messages per mode before the section's first cell, so that no server is
 * measured while it is still starting up: avgate's JIT compiler, connection pools and caches of
 * code paths; default 1000, --quick 300, 0 = none); --clamd-temp-dir auto|state|DIR (the shared
 * clamd's TemporaryDirectory, as config clamd.temp-dir; default auto, what `avgate serve` starts:
 * /dev/shm when it is a tmpfs; `state` gives the disk directory every stop before 2026-12-07 used).
 *
 * Fairness: one clamd for everything; every cold request is made unique by the same scheme (16
 * random bytes appended) so clamd's own clean cache never answers; cells of one concurrency are
 * measured in slices that alternate between the modes, so that load from elsewhere on a small
 * shared machine hits all alike; CPU per request of this process (the clients), of the server
 * under test and of clamd is reported beside wall-clock figures; verdicts are checked on every
 * request.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { LocalClamd } from '../src/engines/clamd/local.js';
import { corpusSummary, loadCorpus } from './corpus.js';
import { runEngineSection, type SectionResult } from './engine-section.js';
import { checkStop, cleanupAll, compiled, gc, installSignalHandlers, isStopping, log, onCleanup, WARMUP_DEFAULT } from './harness.js';
import { runConsoleSection } from './console-section.js';
import { runIcapSection } from './icap-section.js';
import { MESSAGE_KINDS } from './mail-messages.js';
import { MAIL_SESSIONS, runMailSection } from './mail-section.js';
import { HTTP_CONCURRENCIES, HTTP_SIZES, runHttpSection, sizeLabel } from './http-section.js';
import { runMailProxySection } from './mailproxy-section.js';

// ---------------------------------------------------------------- options

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
function strArg(name: string, valueMayStartWithDashes = false): string | undefined {
  const i = argv.indexOf(name);
  if (i < 0) return undefined;
  const v = argv[i + 1];
  if (v === undefined || (v.startsWith('--') && !valueMayStartWithDashes)) throw new Error(`${name}: expected a value`);
  return v;
}
function numArg(name: string, fallback: number): number {
  const s = strArg(name);
  if (s === undefined) return fallback;
  const v = Number(s);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name}: expected a positive number, got "${s}"`);
  return v;
}
const quick = flag('--quick');
const only = strArg('--only');
const SECTIONS = ['engine', 'icap', 'mail', 'console', 'http', 'mailproxy'] as const;
if (only !== undefined && !(SECTIONS as readonly string[]).includes(only)) {
  throw new Error(`--only: expected one of ${SECTIONS.join(', ')}, got "${only}"`);
}
function listArg(name: string, fallback: readonly string[], allowed: readonly string[]): string[] {
  const s = strArg(name);
  if (s === undefined) return [...fallback];
  const list = s.split(',').map((x) => x.trim()).filter(Boolean);
  for (const x of list) if (!allowed.includes(x)) throw new Error(`${name}: expected some of ${allowed.join(',')}, got "${x}"`);
  return list;
}
const profileDir = strArg('--profile-avgate');
const opts = {
  quick,
  corpusScale: quick ? 0.5 : 1,
  engine: only === undefined || only === 'engine',
  icap: only === undefined || only === 'icap',
  mail: only === undefined || only === 'mail',
  console: only === undefined || only === 'console',
  http: only === undefined || only === 'http',
  mailproxy: only === undefined || only === 'mailproxy',
  passes: numArg('--passes', quick ? 2 : 12),
  /** Corpus passes per slice: direct and engine alternate slice by slice. */
  slicePasses: quick ? 1 : 2,
  icapPasses: numArg('--icap-passes', quick ? 2 : 10),
  icapWarmPasses: numArg('--icap-warm-passes', quick ? 2 : 8),
  preview: numArg('--preview', 1024),
  bigBytes: numArg('--big-bytes', quick ? 256 * 1024 ** 2 : 2 * 1024 ** 3),
  skipBig: flag('--skip-big'),
  bigFullScan: flag('--big-full-scan'),
  /** INSTREAM chunk of the direct client: the same as clamd-net's default chunk-size. */
  directChunk: numArg('--direct-chunk', 256 * 1024),
  profileDir: profileDir === undefined ? null : resolve(profileDir),
  coldNoCache: flag('--avgate-cold-nocache'),
  avgateNodeFlags: (strArg('--avgate-node-flags', true) ?? '').split(/\s+/).filter(Boolean),
  mailSeconds: numArg('--mail-seconds', quick ? 5 : 10),
  mailKinds: listArg('--mail-kinds', MESSAGE_KINDS.map((k) => k.label), MESSAGE_KINDS.map((k) => k.label)),
  mailSessions: listArg('--mail-sessions', MAIL_SESSIONS.map(String), ['1', '2', '4', '10', '20', '50', '100']).map(Number),
  mailRssMessages: strArg('--mail-rss-messages') === '0' ? 0 : numArg('--mail-rss-messages', quick ? 10_000 : 20_000),
  consolePasses: numArg('--console-passes', quick ? 4 : 10),
  consoleWarmPasses: numArg('--console-warm-passes', quick ? 8 : 20),
  consoleEvents: numArg('--console-events', 1_000_000),
  consolePageRuns: numArg('--console-page-runs', 20),
  httpSizes: listArg('--http-sizes', HTTP_SIZES.map(sizeLabel), HTTP_SIZES.map(sizeLabel)).map((l) => HTTP_SIZES[HTTP_SIZES.map(sizeLabel).indexOf(l)] as number),
  httpConcurrencies: listArg('--http-conc', HTTP_CONCURRENCIES.map(String), ['1', '2', '4', '8', '16', '32', '64']).map(Number),
  httpSeconds: numArg('--http-seconds', quick ? 1 : 3),
  httpBudgetMB: numArg('--http-budget-mb', quick ? 10 : 200),
  httpMaxRequests: numArg('--http-max-requests', quick ? 100 : 2000),
  httpMaxInflightMB: numArg('--http-max-inflight-mb', quick ? 100 : 800),
  httpPlainSquid: !flag('--http-no-plain-squid'),
  mailproxyMessages: numArg('--mailproxy-messages', quick ? 50 : 200),
  mailproxySessions: numArg('--mailproxy-sessions', quick ? 2 : 4),
  mailproxyWarmPasses: numArg('--mailproxy-warm-passes', quick ? 1 : 2),
  mailproxyEngineLimit: !flag('--mailproxy-no-engine-limit'),
  mailproxyRelay: !flag('--mailproxy-no-relay'),
  /** Untimed requests (messages) per mode before a section's first cell; 0 = none. */
  warmup: strArg('--warmup') === '0' ? 0 : numArg('--warmup', quick ? 300 : WARMUP_DEFAULT),
  clamdTempDir: strArg('--clamd-temp-dir') ?? 'auto',
};

installSignalHandlers();

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const benchStarted = performance.now();
  const tmp = await mkdtemp(join(tmpdir(), 'avgate-bench-'));
  onCleanup(() => rm(tmp, { recursive: true, force: true, maxRetries: 5 }));

  const sections = SECTIONS.filter((name) => opts[name]).join(' + ');
  log(
    `avgate benchmark${opts.quick ? ' (--quick)' : ''}: ${sections} — node ${process.version}, ${compiled ? 'compiled' : 'tsx'}, gc ${gc ? 'exposed' : 'not exposed'}`,
  );
  // The mail section makes its own messages: no corpus when it runs alone.
  const corpus = opts.engine || opts.icap || opts.console ? await loadCorpus(opts.corpusScale) : [];
  if (opts.engine || opts.icap || opts.console) log(`corpus: ${corpusSummary(corpus)}`);

  const clamd = new LocalClamd({ stateDir: join(tmp, 'clamd'), database: 'test', tcpPort: 0, maxThreads: 16, streamMaxLength: '100M', tempDir: opts.clamdTempDir });
  onCleanup(() => clamd.stop());
  await clamd.start();
  log(`clamd: pid ${clamd.pid ?? '?'}, ${clamd.socketPath}, MaxThreads 16, test database, TemporaryDirectory ${clamd.tempDir ?? '?'}`);

  // One clamd for the multi-GB objects of both sections, started when first needed.
  let bigClamd: Promise<LocalClamd> | null = null;
  const getBigClamd = () =>
    (bigClamd ??= (async () => {
      const extra: Record<string, string> = opts.bigFullScan ? { MaxFileSize: '4000M', MaxScanSize: '4000M' } : {};
      // Temp files on disk: a 2 GB INSTREAM object would otherwise sit in /dev/shm (memory).
      const c = new LocalClamd({ stateDir: join(tmp, 'clamd-big'), database: 'test', tcpPort: 0, maxThreads: 2, streamMaxLength: '4000M', extra, tempDir: 'state' });
      onCleanup(() => c.stop());
      await c.start();
      return c;
    })());

  const done: Array<[string, SectionResult]> = [];
  if (opts.engine) {
    checkStop();
    const r = await runEngineSection({
      corpus,
      clamd,
      tmp,
      opts: {
        passes: opts.passes,
        slicePasses: opts.slicePasses,
        bigBytes: opts.bigBytes,
        skipBig: opts.skipBig,
        bigFullScan: opts.bigFullScan,
        directChunk: opts.directChunk,
      },
      bigClamd: getBigClamd,
    });
    done.push(['engine', r]);
    log(`engine section: ${((performance.now() - benchStarted) / 1000).toFixed(0)} s so far`);
  }
  if (opts.icap) {
    checkStop();
    const r = await runIcapSection({
      corpus,
      clamd,
      tmp,
      opts: {
        coldPasses: opts.icapPasses,
        warmPasses: opts.icapWarmPasses,
        preview: opts.preview,
        bigBytes: opts.bigBytes,
        skipBig: opts.skipBig,
        directChunk: opts.directChunk,
        profileDir: opts.profileDir,
        coldNoCache: opts.coldNoCache,
        avgateNodeFlags: opts.avgateNodeFlags,
        warmup: opts.warmup,
      },
      bigClamd: getBigClamd,
    });
    done.push(['icap', r]);
  }
  if (opts.mail) {
    checkStop();
    const mailStarted = performance.now();
    const half = opts.quick ? 0.5 : 1;
    const r = await runMailSection({
      clamd,
      tmp,
      opts: {
        cellMs: opts.mailSeconds * 1000,
        slices: 2,
        maxMessages: { '5KB': 20_000 * half, '100KB': 8_000 * half, '2MB': 1_000 * half },
        sessions: opts.mailSessions,
        kinds: opts.mailKinds,
        rssMessages: opts.mailRssMessages,
        infectedEvery: 20,
        amavisdChildren: 4,
        directChunk: opts.directChunk,
        avgateNodeFlags: opts.avgateNodeFlags,
        warmup: opts.warmup,
      },
    });
    done.push(['mail', r]);
    log(`mail section: ${((performance.now() - mailStarted) / 1000).toFixed(0)} s`);
  }
  if (opts.console) {
    checkStop();
    const consoleStarted = performance.now();
    const r = await runConsoleSection({
      corpus,
      clamd,
      tmp,
      opts: {
        coldPasses: opts.consolePasses,
        warmPasses: opts.consoleWarmPasses,
        events: opts.consoleEvents,
        pageRuns: opts.consolePageRuns,
        avgateNodeFlags: opts.avgateNodeFlags,
      },
    });
    done.push(['console', r]);
    log(`console section: ${((performance.now() - consoleStarted) / 1000).toFixed(0)} s`);
  }
  if (opts.http) {
    checkStop();
    const httpStarted = performance.now();
    const r = await runHttpSection({
      clamd,
      tmp,
      opts: {
        sizes: opts.httpSizes,
        concurrencies: opts.httpConcurrencies,
        budgetBytes: opts.httpBudgetMB * 1e6,
        maxRequests: opts.httpMaxRequests,
        cellSeconds: opts.httpSeconds,
        maxInflightBytes: opts.httpMaxInflightMB * 1e6,
        slices: opts.quick ? 1 : 2,
        timeoutMs: 120_000,
        avgateNodeFlags: opts.avgateNodeFlags,
        warmup: opts.warmup,
        plainSquid: opts.httpPlainSquid,
      },
    });
    done.push(['http', r]);
    log(`http section: ${((performance.now() - httpStarted) / 1000).toFixed(0)} s`);
  }
  if (opts.mailproxy) {
    checkStop();
    const mpStarted = performance.now();
    const r = await runMailProxySection({
      clamd,
      tmp,
      opts: {
        messages: opts.mailproxyMessages,
        sessions: opts.mailproxySessions,
        warmPasses: opts.mailproxyWarmPasses,
        engineLimit: opts.mailproxyEngineLimit,
        relay: opts.mailproxyRelay,
        directChunk: opts.directChunk,
        infectedEvery: 20,
        sessionTimeoutMs: 300_000,
        avgateNodeFlags: opts.avgateNodeFlags,
        warmup: opts.warmup,
      },
    });
    done.push(['mailproxy', r]);
    log(`mailproxy section: ${((performance.now() - mpStarted) / 1000).toFixed(0)} s`);
  }
  checkStop();

  // ------------------------------------------------------------ report
  for (const [, r] of done) for (const l of r.report) log(l);
  log('');
  log('RESULT');
  for (const [, r] of done) for (const l of r.result) log(l);
  const wrong = done.reduce((a, [, r]) => a + r.wrong, 0);
  const checked = done.reduce((a, [, r]) => a + r.checked, 0);
  log(`verdicts: ${wrong === 0 ? 'all correct' : `${wrong} WRONG`} (${checked} checked requests)`);
  log(`bench time: ${((performance.now() - benchStarted) / 1000).toFixed(0)} s`);
  if (wrong > 0 || done.some(([, r]) => r.failed)) process.exitCode = 1;
}

try {
  await main();
} catch (err) {
  if (isStopping()) process.stderr.write('bench interrupted\n');
  else process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
