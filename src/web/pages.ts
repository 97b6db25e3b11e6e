import type { EngineHealthEntry } from '../engines/health.js';
import type { AuditRecord, QuarantineRecord } from '../quarantine/types.js';
import type { NodeSummary, StoreStatus } from '../stats/types.js';
import type { SignatureListing } from './signatures.js';
import type { UpdaterState } from '../signatures/updater.js';
import { activityChart, csrfField, formatBytes, html, isoMinute, isoSecond, layout, Raw, table, type PageContext } from './html.js';
import { PERIODS, type PeriodName, type StatsFigures } from './stats-view.js';

/** The console's pages: pure functions from data to HTML (escaped by `html`). */

export { PERIODS, type PeriodName } from './stats-view.js';

export function loginPage(o: { csrf: string; error?: string; user?: string }): string {
  return layout(
    { title: 'Log in', user: null, csrf: null },
    html`${o.error ? html`<p class="error" id="login-error">${o.error}</p>` : ''}
<form method="post" action="/login" id="login">${csrfField(o.csrf)}
<p><label>User <input name="user" autocomplete="username" required value="${o.user ?? ''}"></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
<p><button type="submit">Log in</button></p></form>`,
  );
}

export function errorPage(ctx: PageContext, status: number, message: string): string {
  return layout({ ...ctx, title: `${status}` }, html`<p class="error">${message}</p><p><a href="/">Back to the overview</a></p>`);
}

function healthTable(health: readonly EngineHealthEntry[], info: (id: string) => string): Raw {
  return table(
    ['engine', 'type', 'state', 'version', 'signatures', 'last PING', 'failures (in a row / total)', 'last error'],
    health.map((h) => [
      h.id,
      info(h.id),
      h.healthy === null ? 'not checked yet' : h.healthy ? html`<span class="ok">answering (${h.reply ?? ''})</span>` : html`<span class="bad">not answering</span>`,
      h.version ?? '—',
      h.signatureVersion ?? '—',
      isoMinute(h.lastOkAt),
      `${h.failuresInRow} / ${h.failures}`,
      h.lastError ?? '',
    ]),
    { id: 'engines', empty: 'no engines' },
  );
}

export interface OverviewData {
  period: PeriodName;
  /** The period's figures; null when statistics are not collected. */
  stats: StatsFigures | null;
  /** Why the figures could not be read (the statistics database is unreachable or too slow). */
  statsError?: string;
  health: EngineHealthEntry[];
  engineInfo: (id: string) => string;
  quarantine: { items: number; bytes: number } | null;
}

/** The store's state when there is something to say: the PostgreSQL backend, or events lost. */
function storeLine(s: StoreStatus): Raw | string {
  if (s.backend === 'sqlite' && s.dropped === 0) return '';
  const db = s.backend === 'postgres' ? 'shared PostgreSQL database (figures of every node)' : 'SQLite';
  const state = s.reachable ? '' : html`; <span class="bad">database unreachable since ${isoMinute(s.unreachableSince)}: ${s.lastError ?? ''}</span>`;
  return html`<p id="stats-store">Statistics: ${db}; this node <strong>${s.node}</strong>: ${s.buffered} events buffered, ${s.dropped} dropped${state}</p>`;
}

function nodeTable(nodes: readonly NodeSummary[]): Raw {
  return table(
    ['node', 'verdicts', 'found', 'cache hits', 'bytes', 'last event (UTC)', 'last seen (UTC)', 'dropped'],
    nodes.map((n) => [n.node, n.events, n.found, n.cacheHits, formatBytes(n.bytes), isoMinute(n.lastEvent), isoMinute(n.lastSeen), n.dropped]),
    { id: 'nodes', empty: 'no node has written statistics yet' },
  );
}

export function overviewPage(ctx: PageContext, d: OverviewData): string {
  const { bucket } = PERIODS[d.period];
  const selector = html`<p class="periods">Period: ${(Object.keys(PERIODS) as PeriodName[]).map((p) =>
    p === d.period ? html`<strong>${p}</strong> ` : html`<a href="/?period=${p}">${p}</a> `,
  )}</p>`;
  const engines = html`<h2>Engine health (this node)</h2>${healthTable(d.health, d.engineInfo)}`;
  const quarantine = d.quarantine ? html`<p>Quarantine of this node: <a href="/quarantine">${d.quarantine.items} items</a>, ${formatBytes(d.quarantine.bytes)} (each node keeps its own)</p>` : '';
  if (d.statsError !== undefined) {
    return layout({ ...ctx, active: 'overview' }, html`${selector}<p class="error" id="stats-error">Statistics are unavailable: ${d.statsError}</p>${quarantine}${engines}`);
  }
  if (!d.stats) {
    return layout({ ...ctx, active: 'overview' }, html`${selector}<p class="empty">Statistics are not collected (no stats store).</p>${quarantine}${engines}`);
  }
  const s = d.stats;
  const cache = s.cacheHitRate;
  const traffic = s.trafficPerHour.filter((r) => r.objects > 0);
  const body = html`${selector}${storeLine(s.store)}
<h2>Virus activity (verdicts per ${bucket}; red: found)</h2>
${activityChart(s.activity, bucket)}
<div class="grid">
<section><h2>Top virus names</h2>${table(['name', 'count'], s.topViruses.map((v) => [v.name, v.count]), { id: 'top-viruses', empty: 'no viruses found in this period' })}</section>
<section><h2>Statuses by source</h2>${table(['source', 'status', 'count'], s.statusesBySource.map((r) => [r.source, r.status, r.count]), { id: 'by-source', empty: 'no scans in this period' })}</section>
<section><h2>Verdict cache</h2><p id="cache-rate">${cache.rate === null ? 'no scans in this period' : `${(cache.rate * 100).toFixed(1)} % hits (${cache.hits} of ${cache.total})`}</p>
<h2>Engine latency</h2>${table(['engine', 'scans', 'average ms', 'max ms'], s.engineLatency.map((l) => [l.engine, l.count, l.avgMs.toFixed(1), l.maxMs.toFixed(1)]), { empty: 'no scans in this period' })}
${quarantine}</section>
</div>
<h2>Recent detections</h2>${table(
    ['time (UTC)', 'node', 'source', 'virus', 'group / service', 'what'],
    s.recentDetections.map((r) => [isoSecond(r.time), r.node, r.source, r.virus ?? '', r.group ?? '', r.subject ?? '']),
    { id: 'recent-detections', empty: 'no detections kept (raw events are kept stats.event-retention)' },
  )}
<h2>Nodes</h2>${nodeTable(s.nodes)}
${engines}
<h2>Traffic per hour</h2>${table(['hour (UTC)', 'objects', 'bytes'], traffic.slice(-200).reverse().map((r) => [isoMinute(r.t), r.objects, formatBytes(r.bytes)]), { id: 'traffic', empty: 'no traffic in this period' })}`;
  return layout({ ...ctx, active: 'overview' }, body);
}

export interface QuarantineListData {
  records: QuarantineRecord[];
  total: number;
  page: number;
  pageSize: number;
  filter: { status: string; source: string; text: string; since: string };
  statuses: readonly string[];
  sources: readonly string[];
  error?: string;
}

function subjectOrName(r: QuarantineRecord): string {
  return r.subject ?? r.fileName ?? r.url ?? '';
}

export function quarantineListPage(ctx: PageContext, d: QuarantineListData): string {
  const f = d.filter;
  const option = (value: string, current: string) => html`<option value="${value}"${value === current ? new Raw(' selected') : ''}>${value || 'any'}</option>`;
  const qs = (page: number) => `/quarantine?${new URLSearchParams({ ...f, page: String(page) }).toString()}`;
  const pages = Math.max(1, Math.ceil(d.total / d.pageSize));
  const body = html`<form method="get" action="/quarantine" id="filters">
<label>Status <select name="status">${['', ...d.statuses].map((s) => option(s, f.status))}</select></label>
<label>Source <select name="source">${['', ...d.sources].map((s) => option(s, f.source))}</select></label>
<label>Text <input name="text" value="${f.text}" maxlength="200"></label>
<label>Since <input name="since" type="date" value="${f.since}"></label>
<button type="submit">Filter</button></form>
${d.error ? html`<p class="error">${d.error}</p>` : ''}
<p>${d.total} items; page ${d.page} of ${pages}</p>
${table(
  ['date (UTC)', 'source', 'sender', 'recipients', 'subject / file / URL', 'viruses', 'statuses', 'size', 'released'],
  d.records.map((r) => [
    html`<a href="/quarantine/${r.id}">${isoMinute(r.date)}</a>`,
    r.source,
    r.sender,
    r.recipients.join(', '),
    html`<a href="/quarantine/${r.id}" class="item">${subjectOrName(r) || '(none)'}</a>`,
    r.virusNames.join(', '),
    r.statuses.join(', '),
    formatBytes(r.size),
    r.releasedAt ? isoMinute(r.releasedAt) : '',
  ]),
  { id: 'items', empty: 'no items match' },
)}
<p>${d.page > 1 ? html`<a href="${qs(d.page - 1)}" rel="prev">previous</a> ` : ''}${d.page < pages ? html`<a href="${qs(d.page + 1)}" rel="next">next</a>` : ''}</p>`;
  return layout({ ...ctx, active: 'quarantine' }, body);
}

export const MAIL_SOURCES: ReadonlySet<string> = new Set(['smtp', 'lmtp', 'pop3', 'imap']);

export interface QuarantineItemData {
  record: QuarantineRecord;
  /** The message's header block as text (mail only), never rendered as HTML. */
  headers: string | null;
  audit: AuditRecord[];
  notice?: { ok: boolean; text: string };
  canRelease: boolean;
}

export function quarantineItemPage(ctx: PageContext, d: QuarantineItemData): string {
  const r = d.record;
  const csrf = ctx.csrf ?? '';
  const facts: Array<[string, string]> = [
    ['id', r.id],
    ['date', r.date],
    ['source', r.source],
    ['group / service', r.group],
    ['statuses', r.statuses.join(', ')],
    ['viruses', r.virusNames.join(', ')],
    ['sender', r.sender],
    ['recipients', r.recipients.join(', ')],
    ['subject', r.subject ?? ''],
    ['message id', r.messageId ?? ''],
    ['queue id', r.queueId ?? ''],
    ['file name', r.fileName ?? ''],
    ['URL', r.url ?? ''],
    ['original path', r.originalPath ?? ''],
    ['action', r.action ?? ''],
    ['note', r.note ?? ''],
    ['size', `${formatBytes(r.size)} (${r.size} bytes)`],
    ['SHA-256', r.sha256],
    ['released', r.releasedAt ?? 'no'],
  ];
  const body = html`${d.notice ? html`<p class="${d.notice.ok ? 'notice' : 'error'}" id="notice">${d.notice.text}</p>` : ''}
<dl id="meta">${facts.filter(([, v]) => v !== '').map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>
${d.headers !== null ? html`<h2>Headers</h2><pre id="headers">${d.headers}</pre>` : ''}
<h2>Actions</h2>
${d.canRelease
  ? html`<form method="post" action="/quarantine/${r.id}/release" id="release">${csrfField(csrf)}
<label>To (optional, comma-separated; default: the original recipients) <input name="to" size="50" maxlength="2000"></label>
<button type="submit">Release</button></form>`
  : ''}
<p><a href="/quarantine/${r.id}/export.zip" id="download">Download (encrypted ZIP)</a></p>
<form method="post" action="/quarantine/${r.id}/delete" id="delete">${csrfField(csrf)}<button type="submit">Delete</button></form>
<h2>Audit trail</h2>
${table(['date', 'action', 'actor', 'detail'], d.audit.map((a) => [a.date, a.action, a.actor, JSON.stringify(a.detail)]), { id: 'audit', empty: 'no records' })}`;
  return layout({ ...ctx, title: `Quarantine item ${r.id}`, active: 'quarantine' }, body);
}

/** The signature updater's last run and its files (docs/signatures.md), when sources are configured. */
function updaterSection(state: UpdaterState): Raw {
  const run = state.lastRun;
  return html`<section id="updater"><h2>Signature updates</h2>
<p>${run ? `last run ${run.at}: ${run.reloadError ? `changes installed, but clamd did not confirm the reload: ${run.reloadError}` : run.changed ? (run.reloaded ? 'changes loaded by clamd' : 'changes installed, clamd not running') : 'nothing changed'}` : 'the updater has not run yet'}</p>
${run
  ? table(
      ['file', 'outcome', 'source', 'installed', 'size', 'SHA-256', 'reason'],
      run.sources.map((r) => {
        const f = state.files[r.name];
        return [r.name, r.outcome, r.url, f?.installedAt ?? '', f?.size ?? '', (f?.sha256 ?? '').slice(0, 16), r.reason ?? ''];
      }),
      { id: 'updater-sources', empty: '' },
    )
  : ''}</section>`;
}

export function signaturesPage(ctx: PageContext, listings: Array<{ engine: string; listing: SignatureListing }>, q: string, updater: UpdaterState | null = null): string {
  const body = html`${updater ? updaterSection(updater) : ''}<form method="get" action="/signatures"><label>Name contains <input name="q" value="${q}" maxlength="200"></label> <button type="submit">Search</button></form>
${listings.map(({ engine, listing: l }) => {
  const more = (page: number) => `/signatures?${new URLSearchParams({ engine, page: String(page), q }).toString()}`;
  const pages = Math.max(1, Math.ceil(l.total / l.pageSize));
  return html`<section class="engine"><h2>${engine}</h2>
${l.note ? html`<p>${l.note}</p>` : ''}
${l.files.length > 0 ? table(['database', 'kind', 'signatures'], l.files.map((f) => [f.name, f.kind, f.count === null ? 'unknown' : f.count]), { empty: '' }) : ''}
${l.names !== null
  ? html`<p>${l.total} names${q ? ' matching' : ''} readable from text databases; page ${l.page} of ${pages}</p>
<ul class="signatures">${l.names.map((n) => html`<li>${n}</li>`)}</ul>
<p>${l.page > 1 ? html`<a href="${more(l.page - 1)}">previous</a> ` : ''}${l.page < pages ? html`<a href="${more(l.page + 1)}">next</a>` : ''}</p>`
  : ''}</section>`;
})}`;
  return layout({ ...ctx, active: 'signatures' }, body);
}

export function configPage(ctx: PageContext, d: { yaml: string; source: string; warnings: string[]; health: EngineHealthEntry[]; engineInfo: (id: string) => string }): string {
  const body = html`<h2>Check</h2>
<p>${d.source}: syntax and keys OK</p>
${d.warnings.length > 0 ? html`<ul id="warnings">${d.warnings.map((w) => html`<li class="bad">warning: ${w}</li>`)}</ul>` : html`<p class="ok" id="warnings">no warnings</p>`}
${healthTable(d.health, d.engineInfo)}
<h2>Effective configuration (secrets masked; sizes in bytes, durations in ms)</h2>
<pre id="config">${d.yaml}</pre>`;
  return layout({ ...ctx, active: 'config' }, body);
}
