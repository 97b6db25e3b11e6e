import { readFileSync } from 'node:fs';
import { PAGE_VALUE_NAMES, unknownPageNames } from '../policy/block-page.js';
import { formatBytes, parseSize } from '../core/units.js';
import type { Config } from './schema.js';

/** What `config check` (and the console's configuration page) warns about beyond schema errors. */
export function configWarnings(config: Readonly<Config>): string[] {
  const warnings: string[] = [];
  const sml = parseSize(config.clamd['stream-max-length']);
  if (sml !== null && config.clamd.managed && config.scan['max-checked-size'] > sml) {
    warnings.push(
      `scan.max-checked-size (${formatBytes(config.scan['max-checked-size'])}) is above clamd.stream-max-length (${formatBytes(sml)}): objects in between come back skipped from clamd`,
    );
  }
  const hp = config['http-proxy'];
  if (hp.enabled && hp['allowed-clients'].some((c) => /\/0$/.test(c.trim()))) {
    warnings.push(`http-proxy.allowed-clients lets any address use the proxy on ${hp.listen}: an open proxy relays for anyone who reaches it`);
  }
  const sig = config.signatures;
  if (sig.sources.length > 0 && !config.clamd.managed) {
    warnings.push('signatures.sources are not used: the signature updater installs into the project-local clamd (clamd.managed: true)');
  }
  if (sig.interval > 0 && sig.sources.length === 0) warnings.push('signatures.interval is set but signatures.sources is empty: nothing is updated');
  if (config.cache.redis !== null && !config.cache.enabled) warnings.push('cache.redis is not used: cache.enabled is false');
  if (config.cache.redis !== null && config.cache.enabled && config.cache['max-age'] === 0) {
    warnings.push('cache.max-age is 0: Redis entries never expire; bound that Redis with maxmemory and an eviction policy (allkeys-lru)');
  }
  // A bare number is bytes: `limit: 90` lets 90 bytes out, where `90%` was likely meant.
  for (const section of ['http-proxy', 'ftp-proxy'] as const) {
    config[section]['doc-acl'].forEach((rule, i) => {
      const limit = rule.trickle?.limit;
      if (limit?.kind === 'bytes' && limit.value > 0 && limit.value <= 100) {
        warnings.push(`${section}.doc-acl.${i}.trickle.limit is ${limit.value} bytes: a share of the body is written with %, as "${limit.value}%"`);
      }
    });
  }
  // A page template's {{NAME}} that nothing fills shows on the page as written (a typo, or a macro
  // of squidclamav's or HAVP's pages).
  const pages: Array<[string, string | null]> = [['http-proxy.block-page', hp['block-page']], ...Object.entries(config.icap.services).map(([n, s]): [string, string | null] => [`icap.services.${n}.block-page`, s['block-page']])];
  for (const [key, path] of pages) {
    if (path === null) continue;
    let names: string[];
    try {
      names = unknownPageNames(readFileSync(path, 'utf8'));
    } catch {
      continue; // serve refuses a template it cannot read, with the reason
    }
    if (names.length > 0) warnings.push(`${key} (${path}) uses ${names.map((n) => `{{${n}}}`).join(', ')}, which no page fills: they show as written (known: ${PAGE_VALUE_NAMES.join(', ')})`);
  }
  return warnings;
}
