import type { Config } from './schema.js';

/** One place in a config that names engines: its key path and the engine ids it lists. */
export interface EngineReference {
  /** Keys from the top, list positions as numbers (e.g. `['ftp-proxy', 'doc-acl', 2, 'antivirus']`). */
  path: ReadonlyArray<string | number>;
  ids: readonly string[];
}

/**
 * Every place that names engine ids, in the order the loader reports them. Places left at null
 * (= scan.engines) or `none` name no engine. The loader checks that each id exists; the runtime
 * builds exactly these engines — one list, so the two cannot disagree.
 */
export function engineReferences(config: Config): EngineReference[] {
  const refs: EngineReference[] = [{ path: ['scan', 'engines'], ids: config.scan.engines }];
  for (const [name, svc] of Object.entries(config.icap.services)) {
    if (svc.engines) refs.push({ path: ['icap', 'services', name, 'engines'], ids: svc.engines });
  }
  for (const section of ['http-proxy', 'ftp-proxy'] as const) {
    config[section]['doc-acl'].forEach((rule, i) => {
      if (rule.antivirus !== null && rule.antivirus !== 'none') refs.push({ path: [section, 'doc-acl', i, 'antivirus'], ids: rule.antivirus });
    });
  }
  for (const section of ['pop3-proxy', 'imap-proxy'] as const) {
    const ids = config[section].antivirus;
    if (ids) refs.push({ path: [section, 'antivirus'], ids });
  }
  if (config.mail.engines) refs.push({ path: ['mail', 'engines'], ids: config.mail.engines });
  return refs;
}
