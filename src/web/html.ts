import type { ActivityPoint } from '../stats/types.js';

/**
 * HTML building blocks for the console. Every value from data goes through `esc` (or `attr`);
 * templates are tagged with `html` so that interpolations are escaped unless they are `Raw`.
 */
export class Raw {
  constructor(readonly html: string) {}
  toString(): string {
    return this.html;
  }
}

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

export function esc(value: unknown): string {
  return String(value ?? '').replace(/[&<>"'`]/g, (c) => ENTITIES[c] as string);
}

type Part = Raw | string | number | null | undefined | boolean | readonly Part[];

function render(v: Part): string {
  if (v instanceof Raw) return v.html;
  if (Array.isArray(v)) return v.map(render).join('');
  if (v === null || v === undefined || v === false) return '';
  return esc(v);
}

/** Tagged template: interpolated strings and numbers are escaped, `Raw` and arrays of parts are inserted. */
export function html(strings: TemplateStringsArray, ...values: Part[]): Raw {
  let out = strings[0] as string;
  for (let i = 0; i < values.length; i++) out += render(values[i] as Part) + (strings[i + 1] as string);
  return new Raw(out);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

export function isoMinute(t: number | string | null): string {
  return isoTime(t, 16);
}

/** A time to the second, UTC (`2026-12-07 20:31:05`); '—' for none. */
export function isoSecond(t: number | string | null): string {
  return isoTime(t, 19);
}

function isoTime(t: number | string | null, chars: number): string {
  if (t === null) return '—';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? '—' : d.toISOString().slice(0, chars).replace('T', ' ');
}

export interface PageContext {
  title: string;
  user: string | null;
  csrf: string | null;
  active?: 'overview' | 'quarantine' | 'signatures' | 'config';
}

export function csrfField(csrf: string): Raw {
  return html`<input type="hidden" name="_csrf" value="${csrf}">`;
}

export function layout(ctx: PageContext, body: Raw): string {
  const nav = ctx.user
    ? html`<nav>
  <a href="/"${ctx.active === 'overview' ? new Raw(' class="active"') : ''}>Overview</a>
  <a href="/quarantine"${ctx.active === 'quarantine' ? new Raw(' class="active"') : ''}>Quarantine</a>
  <a href="/signatures"${ctx.active === 'signatures' ? new Raw(' class="active"') : ''}>Signatures</a>
  <a href="/config"${ctx.active === 'config' ? new Raw(' class="active"') : ''}>Configuration</a>
  <form method="post" action="/logout" class="logout">${csrfField(ctx.csrf ?? '')}<span>${ctx.user}</span> <button type="submit" id="logout">Log out</button></form>
</nav>`
    : '';
  return `<!doctype html>
${html`<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${ctx.title} — avgate</title><link rel="stylesheet" href="/static/console.css"></head>
<body><header><strong>avgate</strong> ${nav}</header>
<main><h1>${ctx.title}</h1>
${body}
</main></body></html>`.html}
`;
}

export function table(head: readonly string[], rows: readonly Part[][], o: { id?: string; empty?: string } = {}): Raw {
  if (rows.length === 0) return html`<p class="empty">${o.empty ?? 'nothing yet'}</p>`;
  return html`<table${o.id ? new Raw(` id="${esc(o.id)}"`) : ''}><thead><tr>${head.map((h) => html`<th>${h}</th>`)}</tr></thead>
<tbody>${rows.map((r) => html`<tr>${r.map((c) => html`<td>${c}</td>`)}</tr>\n`)}</tbody></table>`;
}

const CHART = { width: 900, height: 220, pad: 28 };

/**
 * Virus activity as inline SVG: one `rect.bucket` per bucket (height = all verdicts) carrying the
 * counts as data attributes, with the found share drawn over it. No script: the numbers are in
 * each bar's <title> for the browser's tooltip.
 */
export function activityChart(points: readonly ActivityPoint[], bucket: 'hour' | 'day'): Raw {
  const totals = points.map((p) => Object.values(p.byStatus).reduce((a, b) => a + b, 0));
  const max = Math.max(1, ...totals);
  const plotH = CHART.height - CHART.pad;
  const w = points.length > 0 ? (CHART.width - CHART.pad) / points.length : 0;
  const bars = points.map((p, i) => {
    const total = totals[i] as number;
    const x = CHART.pad + i * w;
    const h = (total / max) * (plotH - 4);
    const fh = (p.byStatus.found / max) * (plotH - 4);
    const label = `${new Date(p.t).toISOString().slice(0, bucket === 'hour' ? 13 : 10).replace('T', ' ')}${bucket === 'hour' ? 'h' : ''}: ${total} scanned, ${p.byStatus.found} found, ${p.byStatus.error} errors`;
    const bw = Math.max(1, w - 1).toFixed(2);
    return html`<rect class="bucket" x="${x.toFixed(2)}" y="${(plotH - h).toFixed(2)}" width="${bw}" height="${h.toFixed(2)}" data-t="${p.t}" data-total="${total}" data-found="${p.byStatus.found}" data-free="${p.byStatus.free}" data-skipped="${p.byStatus.skipped}" data-unknown="${p.byStatus.unknown}" data-error="${p.byStatus.error}"><title>${label}</title></rect>${
      p.byStatus.found > 0 ? html`<rect class="found" x="${x.toFixed(2)}" y="${(plotH - fh).toFixed(2)}" width="${bw}" height="${fh.toFixed(2)}"><title>${label}</title></rect>` : ''
    }\n`;
  });
  const first = points[0];
  const last = points.at(-1);
  const fmt = (t: number) => new Date(t).toISOString().slice(0, bucket === 'hour' ? 16 : 10).replace('T', ' ');
  return html`<svg id="activity" class="chart" viewBox="0 0 ${CHART.width} ${CHART.height}" width="${CHART.width}" height="${CHART.height}" role="img" aria-label="verdicts per ${bucket}">
<line class="axis" x1="${CHART.pad}" y1="${plotH}" x2="${CHART.width}" y2="${plotH}"/>
<text class="label" x="0" y="12">${max}</text><text class="label" x="0" y="${plotH}">0</text>
${bars}
${first ? html`<text class="label" x="${CHART.pad}" y="${CHART.height - 6}">${fmt(first.t)}</text>` : ''}
${last ? html`<text class="label end" x="${CHART.width}" y="${CHART.height - 6}">${fmt(last.t)}</text>` : ''}
</svg>`;
}

export const CONSOLE_CSS = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #263238; color: #fff; padding: 8px 16px; display: flex; gap: 24px; align-items: center; }
header nav { display: flex; gap: 16px; align-items: center; flex: 1; }
header nav a { color: #cfd8dc; text-decoration: none; }
header nav a.active { color: #fff; font-weight: bold; }
header .logout { margin-left: auto; }
main { padding: 16px; max-width: 1200px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
th { background: #eceff1; }
pre { background: #fff; border: 1px solid #ddd; padding: 8px; overflow: auto; white-space: pre-wrap; word-break: break-all; }
.chart { background: #fff; border: 1px solid #ddd; max-width: 100%; height: auto; }
.chart rect.bucket { fill: #90a4ae; }
.chart rect.found { fill: #c62828; }
.chart .axis { stroke: #999; }
.chart .label { font-size: 11px; fill: #555; }
.chart .label.end { text-anchor: end; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 16px; }
.error, .bad { color: #b71c1c; }
.ok { color: #1b5e20; }
.notice { background: #e8f5e9; border: 1px solid #a5d6a7; padding: 8px; }
.empty { color: #777; }
form.inline { display: inline; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; }
dt { font-weight: bold; }
`;
