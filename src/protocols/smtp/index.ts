/**
 * The SMTP/LMTP content filter's mail transport: server (inbound), next hop client (outbound),
 * the handler contract, and the pass-through handler. docs/mail.md describes deployments.
 */
export { SmtpFilterServer, newQueueId, type SmtpCounters, type SmtpServerDeps } from './server.js';
export { NextHopClient, nextHopOptions, failureReply, type NextHopCounters, type NextHopOptions } from './next-hop.js';
export { NextHopFailure, parseNextHop, dotStuff, type ClientTimeouts, type NextHopTarget } from './client.js';
export { passThroughHandler } from './pass-through.js';
export { reply, replyText, replySummary, formatReply, combineReplies, isPositive, isTemporary, isPermanent, encodeXtext } from './reply.js';
export type * from './types.js';
