import type { Spool } from '../core/spool.js';
import type { MailHeader } from '../policy/mail/facts.js';

/**
 * The top header block of a spooled message, unfolded, in order (values as written: encoded words
 * kept). Reads at most `max` bytes: a longer block is cut there (the walker reports it).
 */
export async function readTopHeaders(spool: Spool, max: number): Promise<MailHeader[]> {
  const head = await spool.readRange(0, Math.min(spool.size, max));
  const text = head.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  const block = end >= 0 ? text.slice(0, end) : text;
  const headers: MailHeader[] = [];
  for (const line of block.split(/\r?\n/)) {
    if (/^[ \t]/.test(line)) {
      const last = headers.at(-1);
      if (last) last.value += ` ${line.trim()}`;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) {
      if (headers.length === 0 && line.startsWith('From ')) continue; // mbox separator
      break; // not a field: the body starts here
    }
    headers.push({ name: line.slice(0, colon).trim(), value: line.slice(colon + 1).trim() });
  }
  return headers;
}
