import type { EngineHealthEntry } from '../engines/health.js';
import { escapeLabel, metricFamily } from '../core/prometheus-text.js';

/** What serve hands the console of its running front ends, for /metrics. */
export interface FrontEndSnapshot {
  /** Each front end's counters as the health log's `counters` line has them. */
  counters: Record<string, object>;
  /** Open client connections of each enabled front end (null where it does not count them). */
  connections: Record<string, number | null>;
}

/**
 * Front-end counters added up field by field (numbers, and the numbers of one level of maps such
 * as byStatus): the running configuration's on top of those reloads replaced.
 */
export function sumCounters(list: ReadonlyArray<Record<string, object>>): Record<string, object> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const counters of list) {
    for (const [frontend, fields] of Object.entries(counters)) {
      const into = (out[frontend] ??= {});
      for (const [field, value] of Object.entries(fields as Record<string, unknown>)) {
        if (typeof value === 'number') into[field] = (typeof into[field] === 'number' ? (into[field] as number) : 0) + value;
        else if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
          const map = (into[field] ??= {}) as Record<string, unknown>;
          for (const [key, n] of Object.entries(value as Record<string, unknown>)) if (typeof n === 'number') map[key] = (typeof map[key] === 'number' ? (map[key] as number) : 0) + n;
        } else if (!(field in into)) into[field] = value;
      }
    }
  }
  return out;
}

/** Counter fields that are levels, not counts: left out of the events family (connections has them). */
const LEVELS = new Set(['active']);

/**
 * The front ends' counters as one counter family, `avgate_frontend_events_total{frontend,event}`:
 * a field per event (`deferred`, `sendTimeouts`), a map's entries as `field:key` (`byVerdict:found`,
 * `byStatus:403`), counted on across reloads (sumCounters). And the open connections per front
 * end, a gauge.
 */
export function frontEndPrometheus(f: FrontEndSnapshot): string {
  const lines: string[] = [];
  const events: Array<[string, number]> = [];
  const label = (frontend: string, event: string) => `{frontend="${escapeLabel(frontend)}",event="${escapeLabel(event)}"}`;
  for (const [frontend, counters] of Object.entries(f.counters)) {
    for (const [field, value] of Object.entries(counters)) {
      if (typeof value === 'number') {
        if (!LEVELS.has(field)) events.push([label(frontend, field), value]);
      } else if (value !== null && typeof value === 'object') {
        for (const [key, n] of Object.entries(value as Record<string, unknown>)) if (typeof n === 'number') events.push([label(frontend, `${field}:${key}`), n]);
      }
    }
  }
  metricFamily(lines, 'avgate_frontend_events_total', 'counter', 'Front end events by kind (requests, messages, deferrals, refusals, timeouts, verdicts, statuses), as the health log counts them, counted on across reloads.', events);
  const open = Object.entries(f.connections).flatMap(([fe, n]): Array<[string, number]> => (n === null ? [] : [[`{frontend="${escapeLabel(fe)}"}`, n]]));
  metricFamily(lines, 'avgate_frontend_connections', 'gauge', 'Client connections (sessions) each front end holds open now.', open);
  return `${lines.join('\n')}\n`;
}

/** Each engine's health as the periodic check sees it: up or down, and its failed checks in a row. */
export function enginePrometheus(engines: readonly EngineHealthEntry[]): string {
  const lines: string[] = [];
  // Not before its first check: an engine still unknown is neither up nor down.
  const checked = engines.filter((e) => e.healthy !== null);
  const by = (pick: (e: EngineHealthEntry) => number): Array<[string, number]> => checked.map((e) => [`{engine="${escapeLabel(e.id)}"}`, pick(e)]);
  metricFamily(lines, 'avgate_engine_up', 'gauge', 'Whether the engine answered its last health check (health.interval); 0 means scans it takes part in fail closed.', by((e) => (e.healthy ? 1 : 0)));
  metricFamily(lines, 'avgate_engine_failed_checks', 'gauge', 'Health checks the engine failed in a row (0 once it answers again).', by((e) => e.failuresInRow));
  // The version each node's verdict cache keys on: nodes that drift apart stop sharing cached verdicts.
  const versions = checked.flatMap((e): Array<[string, number]> => (e.signatureVersion === null ? [] : [[`{engine="${escapeLabel(e.id)}",version="${escapeLabel(e.signatureVersion)}"}`, 1]]));
  metricFamily(lines, 'avgate_engine_signature_info', 'gauge', 'The signature version of each engine at its last health check, as the verdict cache keys on it (value always 1).', versions);
  return `${lines.join('\n')}\n`;
}

/** avgate's version and this node's name (stats.node), value 1: joins a node's series to its name. */
export function buildInfoPrometheus(version: string, node: string): string {
  const lines: string[] = [];
  metricFamily(lines, 'avgate_build_info', 'gauge', 'avgate version and node name (stats.node; the hostname unless set), value always 1.', [[`{version="${escapeLabel(version)}",node="${escapeLabel(node)}"}`, 1]]);
  return `${lines.join('\n')}\n`;
}
