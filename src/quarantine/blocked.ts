import { messageOf } from '../core/errors.js';
import type { Logger } from '../core/logging.js';
import type { Spool } from '../core/spool.js';
import type { Verdict } from '../core/verdict.js';
import { verdictReason } from '../policy/verdict-policy.js';
import type { Quarantine, QuarantineSource } from './types.js';

/**
 * Keeps an object a web or file front end blocked (ICAP, HTTP, FTP): the spool's own file or its
 * bytes, with the facts every such item carries (URL, file name, statuses, virus names, the reason
 * of a status other than found). A failure is logged and never changes the answer to the client:
 * null then. The caller decides whether the object goes in at all.
 */
export async function keepBlockedObject(
  q: Quarantine,
  spool: Spool,
  v: Verdict,
  facts: { source: QuarantineSource; group: string; url: string; fileName: string | null; action: string; client?: string | null; user?: string | null },
  log: Logger,
  logFields: Record<string, unknown>,
): Promise<string | null> {
  try {
    const { id } = await q.put(spool.filePath() ?? spool.createReadStream(), {
      source: facts.source,
      sender: '',
      recipients: [],
      group: facts.group,
      statuses: [v.status],
      virusNames: v.status === 'found' ? v.names : [],
      url: facts.url,
      fileName: facts.fileName,
      action: facts.action,
      // Who fetched or sent it (the client address, a login name), so an item leads to a workstation.
      note: [v.status === 'found' ? null : verdictReason(v), facts.client ? `client ${facts.client}` : null, facts.user ? `user ${facts.user}` : null].filter((x) => x !== null).join('\n') || null,
    });
    log.info({ url: facts.url, ...(facts.client ? { client: facts.client } : {}), ...logFields, quarantineId: id }, `${facts.source}: blocked object quarantined`);
    return id;
  } catch (err) {
    log.error({ url: facts.url, err: messageOf(err) }, `${facts.source}: quarantine failed`);
    return null;
  }
}
