import type { MessageHandler } from './types.js';

/**
 * Delivers every message unchanged to the next hop and answers each recipient with the next
 * hop's reply (for tests, and for a filter that scans nothing). Next hop trouble comes back as 4xx
 * replies from NextHop.deliver, so the client keeps the message and retries.
 */
export const passThroughHandler: MessageHandler = async (msg, nextHop) => {
  const result = await nextHop.deliver({
    mailFrom: msg.mailFrom,
    rcpts: msg.rcptTo,
    body: msg.spool.createReadStream(),
    size: msg.size,
    xforward: msg.origin,
    xclient: msg.origin,
    signal: msg.signal,
    queueId: msg.queueId,
  });
  return result.replies;
};
