/**
 * Console section: one avgate child (bench/console-server.ts) that runs both the ICAP server and
 * the web console, on the benchmark's clamd, measured two ways.
 *
 * - Scanning API vs ICAP: the corpus of the ICAP section sent as `POST /api/v1/scan?name=F` (raw
 *   body, `Authorization: Bearer TOKEN`, one keep-alive node:http connection per worker) and as
 *   RESPMOD without preview with `Allow: 204` (bench/icap-client.ts, one connection per worker),
 *   at concurrency 1, 4 and 16, cold (every body unique: 16 random bytes appended, so no cache
 *   answers) and warm (the corpus as it is: avgate's verdict cache answers, after one checked
 *   fill pass per mode). The two modes alternate slice by slice (one corpus pass per slice, the
 *   order swapped every slice); every verdict is checked; CPU per request of this process, of
 *   the avgate child (both front ends: it is metered slice by slice, so each slice's CPU is its
 *   mode's) and of clamd is reported. Target: API objects/s >= 0.9 x ICAP's in every cell.
 * - Dashboard: the child's statistics store holds 1 000 000 events over 90 days (filled before
 *   start with bench/stats-fill.ts); after a real login (GET /login for the form's CSRF token and
 *   its cookie, POST /login), each page (overview 24h / 7d / 30d, quarantine, signatures,
 *   configuration) is fetched twice untimed and then N times; every answer must be 200 with the
 *   page's own markup (the activity chart with one bar per bucket for the overview), so a lost
 *   session cannot pass for a fast page. Target: p95 < 200 ms.
 */
import { randomBytes } from 'node:crypto';
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { HttpBenchClient } from './http-client.js';
import { mkdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { LocalClamd } from '../src/engines/clamd/local.js';
import { PasswordStore, TokenStore } from '../src/web/auth.js';
import { startBenchChild } from './child.js';
import type { CorpusItem } from './corpus.js';
import { CONCURRENCIES, type SectionResult } from './engine-section.js';
import { checkStop, drive, log, runSlice, warmUp, type Meters, type Outcome, type Send } from './harness.js';
import { IcapBenchClient } from './icap-client.js';
import { fillStatsStore, openBenchStatsStore, statsRowSummary } from './stats-fill.js';
import { Cell, ICAP_CELL_HEADERS, icapCellRow, median, percentile, table, type CellResult } from './stats.js';

export interface ConsoleSectionOptions {
  /** Corpus passes per cold cell (slices of one pass, alternating between the modes). */
  coldPasses: number;
  /** Corpus passes per warm cell. */
  warmPasses: number;
  /** Events in the statistics store of the dashboard run. */
  events: number;
  /** Timed fetches of each dashboard page (after two untimed ones). */
  pageRuns: number;
  avgateNodeFlags: string[];
}

type Regime = 'cold' | 'warm';

interface Mode {
  name: 'icap' | 'api';
  send: Send;
  close(): void;
}

const API_TARGET = 0.9;
const PAGE_TARGET_MS = 200;
const STATS_DAYS = 90;
const USER = 'bench';

/** RESPMOD without preview, with Allow: 204, one persistent connection per worker (as the ICAP section). */
function icapMode(port: number): Mode {
  const clients: IcapBenchClient[] = [];
  return {
    name: 'icap',
    send: async (body, _item, w) => {
      const c = (clients[w] ??= new IcapBenchClient(port, '/avscan'));
      const o = await c.respmod(body, { preview: null, allow204: true });
      return { status: o.status, detail: o.detail };
    },
    close: () => {
      for (const c of clients) c.close();
      clients.length = 0;
    },
  };
}

interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request over the given agent; the whole answer is read. */
function httpRequest(
  agent: Agent,
  port: number,
  method: 'GET' | 'POST',
  path: string,
  headers: Record<string, string | number>,
  body?: Buffer | string,
): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.setTimeout(60_000, () => req.destroy(new Error(`${method} ${path}: no answer in 60 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** `POST /api/v1/scan?name=F` with the raw body; one keep-alive connection per worker (bench/http-client.ts). */
function apiMode(port: number, token: string): Mode {
  const clients: HttpBenchClient[] = [];
  return {
    name: 'api',
    send: async (body, item, w) => {
      const client = (clients[w] ??= new HttpBenchClient(port));
      const path = `/api/v1/scan?name=${encodeURIComponent(basename(item.name))}`;
      const a = await client.request('POST', path, [`Authorization: Bearer ${token}`, 'Content-Type: application/octet-stream'], body);
      const text = a.body.toString('utf8');
      let v: { status?: unknown; names?: unknown; cached?: unknown };
      try {
        v = JSON.parse(text) as typeof v;
      } catch {
        return { status: 'other', detail: `HTTP ${a.status}: ${text.slice(0, 200)}` };
      }
      const names = Array.isArray(v.names) ? v.names.join(', ') : '';
      const detail = `HTTP ${a.status} ${String(v.status)}${names ? ` ${names}` : ''}`;
      const status = a.status === 200 && (v.status === 'free' || v.status === 'found') ? v.status : 'other';
      return { status, detail, cached: v.cached === true } satisfies Outcome;
    },
    close: () => {
      for (const c of clients) c.close();
      clients.length = 0;
    },
  };
}

// ---------------------------------------------------------------- dashboard

interface PageSpec {
  name: string;
  path: string;
  /** Null when the answer has the page's markup, else what is wrong with it. */
  check(html: string): string | null;
  /** What the page showed, for the log (bars and events of the chart). */
  describe?(html: string): string;
}

/** The activity chart: one `rect.bucket` per hour or day of the period, with its verdict count. */
function chartBars(html: string): { bars: number; events: number } {
  if (!html.includes('<svg id="activity"')) return { bars: -1, events: 0 };
  let bars = 0;
  let events = 0;
  for (const m of html.matchAll(/<rect class="bucket"[^>]*\bdata-total="(\d+)"/g)) {
    bars++;
    events += Number(m[1]);
  }
  return { bars, events };
}

function overviewSpec(period: '24h' | '7d' | '30d', buckets: number): PageSpec {
  return {
    name: `overview ${period}`,
    path: `/?period=${period}`,
    check: (h) => {
      const c = chartBars(h);
      if (c.bars < 0) return 'no activity chart (<svg id="activity">)';
      if (c.bars !== buckets) return `${c.bars} bars in the activity chart, expected ${buckets}`;
      if (c.events === 0) return 'the activity chart shows no events';
      if (!h.includes('id="top-viruses"')) return 'no top viruses table';
      if (!h.includes(`<strong>${period}</strong>`)) return `period ${period} is not the selected one`;
      return null;
    },
    describe: (h) => {
      const c = chartBars(h);
      return `${c.bars} bars, ${c.events} events`;
    },
  };
}

const PAGES: readonly PageSpec[] = [
  overviewSpec('24h', 24),
  overviewSpec('7d', 168),
  overviewSpec('30d', 30),
  {
    name: 'quarantine',
    path: '/quarantine',
    check: (h) => (h.includes('<form method="get" action="/quarantine" id="filters">') && /<p>\d+ items; page \d+ of \d+<\/p>/.test(h) ? null : 'no quarantine filter form and item count'),
  },
  {
    name: 'signatures',
    path: '/signatures',
    check: (h) => (h.includes('<section class="engine"><h2>clamav</h2>') ? null : 'no signature listing of engine clamav'),
  },
  {
    name: 'config',
    path: '/config',
    check: (h) => (h.includes('<pre id="config">') && h.includes('<table id="engines">') ? null : 'no effective configuration and engine table'),
  },
];

/** `name=value` of the named cookie in the answer's Set-Cookie headers, or null. */
function setCookie(headers: IncomingHttpHeaders, name: string): string | null {
  for (const c of headers['set-cookie'] ?? []) {
    const pair = c.split(';')[0] ?? '';
    if (pair.startsWith(`${name}=`) && pair.length > name.length + 1) return pair;
  }
  return null;
}

/** Logs in as a browser does; returns the session cookie (`avgate_session=...`). */
async function login(agent: Agent, port: number, password: string): Promise<string> {
  const form = await httpRequest(agent, port, 'GET', '/login', {});
  const html = form.body.toString('utf8');
  const csrf = /<input type="hidden" name="_csrf" value="([^"]+)">/.exec(html)?.[1];
  const loginCookie = setCookie(form.headers, 'avgate_login');
  if (form.status !== 200 || !csrf || !loginCookie) throw new Error(`GET /login: HTTP ${form.status}, ${csrf ? '' : 'no CSRF field, '}${loginCookie ? '' : 'no avgate_login cookie'}`);
  const body = new URLSearchParams({ _csrf: csrf, user: USER, password }).toString();
  const a = await httpRequest(agent, port, 'POST', '/login', {
    'Content-Type': 'application/x-www-form-urlencoded',
    'Content-Length': Buffer.byteLength(body),
    Cookie: loginCookie,
    Origin: `http://127.0.0.1:${port}`,
  }, body);
  const session = setCookie(a.headers, 'avgate_session');
  if (a.status < 300 || a.status > 399 || a.headers.location !== '/' || !session) {
    throw new Error(`POST /login: HTTP ${a.status}, Location ${a.headers.location ?? '-'}, ${session ? 'session cookie' : 'no session cookie'}: ${a.body.toString('utf8').slice(0, 300)}`);
  }
  return session;
}

interface PageTiming {
  spec: PageSpec;
  ms: number[];
  bytes: number;
  shown: string;
  errors: string[];
}

async function timePages(port: number, password: string, runs: number): Promise<{ timings: PageTiming[]; loginMs: number }> {
  // One keep-alive connection, as a browser tab: the timings are the server's page, not TCP set-up.
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const t0 = performance.now();
    const session = await login(agent, port, password);
    const loginMs = performance.now() - t0;
    const timings: PageTiming[] = [];
    for (const spec of PAGES) {
      checkStop();
      const t: PageTiming = { spec, ms: [], bytes: 0, shown: '', errors: [] };
      for (let i = 0; i < runs + 2; i++) {
        const started = performance.now();
        const a = await httpRequest(agent, port, 'GET', spec.path, { Cookie: session });
        const ms = performance.now() - started;
        const html = a.body.toString('utf8');
        const problem = a.status !== 200 ? `HTTP ${a.status}${a.headers.location ? ` to ${a.headers.location}` : ''}` : spec.check(html);
        if (problem !== null) {
          if (t.errors.length < 3) t.errors.push(problem);
          continue;
        }
        if (i < 2) continue; // warm-ups: checked, not timed
        t.ms.push(ms);
        t.bytes = a.body.length;
        t.shown = spec.describe?.(html) ?? '';
      }
      timings.push(t);
    }
    return { timings, loginMs };
  } finally {
    agent.destroy();
  }
}

// ---------------------------------------------------------------- section

export async function runConsoleSection(p: { corpus: readonly CorpusItem[]; clamd: LocalClamd; tmp: string; opts: ConsoleSectionOptions }): Promise<SectionResult> {
  const { corpus, clamd, tmp, opts } = p;
  const report: string[] = [];
  const result: string[] = [];
  let failed = false;

  // ------------------------------------------------------------ the child's state: stats, token, password
  const stateDir = join(tmp, 'avgate-console');
  await mkdir(stateDir, { recursive: true });
  const statsDb = join(stateDir, 'stats-1m.sqlite');
  const store = openBenchStatsStore(statsDb);
  let rows: string;
  let fillS: number;
  try {
    fillS = fillStatsStore(store, opts.events, STATS_DAYS, Date.now());
    rows = statsRowSummary(store);
  } finally {
    store.close();
  }
  log(`console section: statistics store filled with ${opts.events} events over ${STATS_DAYS} days in ${fillS.toFixed(1)} s (${rows})`);
  // The default file names under state-dir (console.tokens-file, console.password-file).
  const token = await new TokenStore(join(stateDir, 'console', 'tokens.json')).add('bench');
  const password = randomBytes(18).toString('base64url');
  await new PasswordStore(join(stateDir, 'console', 'passwords.json')).setPassword(USER, password);

  const portsFile = join(tmp, 'console-ports.json');
  const child = await startBenchChild({
    script: 'console-server',
    args: ['--clamd-socket', clamd.socketPath, '--db-dir', clamd.dbDir, '--state-dir', stateDir, '--stats-db', statsDb, '--ports-file', portsFile],
    label: 'avgate (ICAP + console)',
    nodeFlags: opts.avgateNodeFlags,
    startTimeoutMs: 60_000,
  });
  const ports = JSON.parse(await readFile(portsFile, 'utf8')) as { icapPort: number; consolePort: number };
  log(`  avgate child pid ${child.pid} (${child.runner}): ICAP port ${ports.icapPort}, console port ${ports.consolePort}, verdict cache on, API token and console user created before start`);

  // ------------------------------------------------------------ dashboard
  const dash = await timePages(ports.consolePort, password, opts.pageRuns);
  log(`  dashboard: logged in over HTTP in ${dash.loginMs.toFixed(0)} ms (scrypt); each page 2 untimed + ${opts.pageRuns} timed fetches`);
  const pageLines: string[] = [];
  for (const t of dash.timings) {
    const sorted = Float64Array.from(t.ms).sort();
    const p50 = median(t.ms);
    const p95 = percentile(sorted, 95);
    const ok = t.errors.length === 0 && t.ms.length === opts.pageRuns;
    if (!ok) failed = true;
    const line =
      `console page ${t.spec.name}: ` +
      (ok
        ? `p95 ${p95.toFixed(1)} ms ${p95 < PAGE_TARGET_MS ? `ok (< ${PAGE_TARGET_MS} ms)` : `OVER ${PAGE_TARGET_MS} ms`} ` +
          `[median ${p50.toFixed(1)} ms, max ${(sorted[sorted.length - 1] ?? Number.NaN).toFixed(1)} ms, ${(t.bytes / 1024).toFixed(0)} KiB${t.shown ? `, ${t.shown}` : ''}; ${opts.events} events in the store]`
        : `FAILED (${t.ms.length} of ${opts.pageRuns} good answers): ${t.errors.join('; ')}`);
    log(`  ${line}`);
    pageLines.push(line);
  }

  // ------------------------------------------------------------ scan API vs ICAP
  const meters: Meters = { clamdPid: clamd.pid, serverPid: child.pid };
  const modes: Mode[] = [icapMode(ports.icapPort), apiMode(ports.consolePort, token)];
  const cells = new Map<string, Cell>(); // `${regime} ${mode} ${c}`
  const cellOf = (regime: Regime, mode: string, c: number) => cells.get(`${regime} ${mode} ${c}`);
  const fills: Cell[] = [];
  try {
    for (const regime of ['cold', 'warm'] as const) {
      const unique = regime === 'cold';
      const passes = regime === 'cold' ? opts.coldPasses : opts.warmPasses;
      log(`  ${regime}: icap (RESPMOD, no preview, Allow: 204) vs api (POST /api/v1/scan, keep-alive); ${passes} corpus passes per cell (${passes * corpus.length} requests), slices of one pass alternating`);
      if (regime === 'warm') {
        // One checked pass of the corpus as it is puts every object in avgate's verdict cache.
        for (const m of modes) {
          checkStop();
          const fill = new Cell(`${m.name} fill`, 4);
          await drive(4, corpus.length, corpus, false, m.send, fill);
          m.close();
          fills.push(fill);
        }
      }
      for (const c of CONCURRENCIES) {
        for (const m of modes) {
          checkStop();
          cells.set(`${regime} ${m.name} ${c}`, new Cell(m.name, c));
          await warmUp(c, corpus, unique, m.send);
        }
        for (let s = 0; s < passes; s++) {
          for (const m of s % 2 === 0 ? modes : [...modes].reverse()) {
            checkStop();
            await runSlice(cellOf(regime, m.name, c) as Cell, corpus, corpus.length, unique, m.send, meters);
          }
        }
        for (const m of modes) m.close();
        for (const m of modes) {
          const r = (cellOf(regime, m.name, c) as Cell).result();
          log(
            `  ${regime} ${m.name.padEnd(4)} c${String(c).padEnd(2)} ${r.reqPerSec.toFixed(1).padStart(7)} objects/s ${r.mbPerSec.toFixed(1).padStart(6)} MB/s  ` +
              `p50 ${r.p50Ms.toFixed(2).padStart(6)} ms  p99 ${r.p99Ms.toFixed(2).padStart(7)} ms  ` +
              `cpu-ms/req client ${r.nodeCpuMsPerReq.toFixed(3)} avgate ${r.serverCpuMsPerReq.toFixed(3)} clamd ${r.clamdCpuMsPerReq.toFixed(2)}` +
              `${r.mismatches ? `  WRONG ${r.mismatches}` : ''}`,
          );
        }
      }
    }
  } finally {
    for (const m of modes) m.close();
    await child.stop();
  }

  // ------------------------------------------------------------ report
  const rows2: Array<[CellResult, Regime]> = [];
  for (const regime of ['cold', 'warm'] as const)
    for (const c of CONCURRENCIES)
      for (const m of modes) {
        const cell = cellOf(regime, m.name, c);
        if (cell) rows2.push([cell.result(), regime]);
      }
  report.push('', 'console: scanning API vs ICAP (one avgate child; req/s = objects/s; server cpu = the avgate child)');
  report.push(table(ICAP_CELL_HEADERS, rows2.map(([r, g]) => icapCellRow(r, g))));
  const checkedRows: Array<[CellResult, Regime]> = [...rows2, ...fills.map((f): [CellResult, Regime] => [f.result(), 'warm'])];
  for (const [r, g] of checkedRows.filter(([x]) => x.mismatches > 0)) {
    report.push(`WRONG VERDICTS in console ${g} ${r.mode} c${r.concurrency}: ${r.mismatches}`);
    for (const s of r.mismatchSamples) report.push(`  ${s}`);
  }

  for (const regime of ['cold', 'warm'] as const) {
    for (const c of CONCURRENCIES) {
      const a = cellOf(regime, 'api', c)?.result();
      const i = cellOf(regime, 'icap', c)?.result();
      if (!a || !i) continue;
      const r = a.reqPerSec / i.reqPerSec;
      const slice = median(a.sliceReqPerSec.map((x, k) => x / (i.sliceReqPerSec[k] ?? Number.NaN)));
      result.push(
        `console scan-api/icap ${regime} c${String(c).padEnd(2)}: ${r.toFixed(2)} objects/s (${a.reqPerSec.toFixed(1)} / ${i.reqPerSec.toFixed(1)}; ` +
          `MB/s ${a.mbPerSec.toFixed(1)} / ${i.mbPerSec.toFixed(1)}), median slice ratio ${slice.toFixed(2)}, ` +
          `avgate cpu ms/object ${a.serverCpuMsPerReq.toFixed(2)} / ${i.serverCpuMsPerReq.toFixed(2)}  ` +
          `${r >= API_TARGET ? `ok (>= ${API_TARGET})` : `BELOW ${API_TARGET}`}`,
      );
    }
  }
  result.push(...pageLines);

  return {
    report,
    result,
    wrong: checkedRows.reduce((n, [r]) => n + r.mismatches, 0),
    checked: checkedRows.reduce((n, [r]) => n + r.requests, 0),
    failed,
  };
}
