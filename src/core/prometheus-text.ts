/**
 * Pieces of the Prometheus text exposition format (version 0.0.4) every `/metrics` writer uses:
 * the statistics stores, the verdict cache and the signature updater.
 */

/** Label values per the format: backslash, double quote and line feed escaped. */
export function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/**
 * Appends a metric family to `lines`: its HELP and TYPE lines, then one line per sample
 * (`labels` already in braces, or '' for none). Samples may also be pushed after it by the caller.
 */
export function metricFamily(lines: string[], name: string, type: 'counter' | 'gauge' | 'histogram', help: string, samples: Array<[string, number]> = []): void {
  lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  for (const [labels, v] of samples) lines.push(`${name}${labels} ${v}`);
}
