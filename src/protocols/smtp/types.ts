import type { Readable } from 'node:stream';
import type { Spool } from '../../core/spool.js';

/**
 * The contract between the mail transport (this folder) and whatever decides about a message (the
 * scanning/policy layer, or the pass-through handler). The transport receives, spools and answers;
 * the handler decides and delivers through NextHop; the client gets its DATA reply only after the
 * handler has settled (docs/mail.md, "never lose mail").
 */

/**
 * ESMTP parameters of MAIL FROM / RCPT TO: keyword in upper case → value with xtext undone
 * (ENVID, ORCPT), or true for a keyword without a value (SMTPUTF8).
 */
export type EsmtpParams = Readonly<Record<string, string | true>>;

export interface MailFrom {
  /** Empty for the null sender `<>`. */
  address: string;
  /** SIZE, BODY, RET, ENVID, SMTPUTF8 ... as the client sent them. */
  params: EsmtpParams;
}

export interface Recipient {
  address: string;
  /** NOTIFY, ORCPT ... as the client sent them. */
  params: EsmtpParams;
}

export interface SmtpReply {
  /** Three digits: 250, 451, 550 ... */
  code: number;
  /** RFC 3463 enhanced status ("4.3.0"), null when the reply had none. */
  status: string | null;
  /** Text lines without code and status (a multi-line reply has several). */
  lines: string[];
}

/** One reply per accepted recipient, in the order of the envelope. */
export type RecipientReply = SmtpReply;

/**
 * Client attributes in XFORWARD/XCLIENT terms (NAME ADDR PORT PROTO HELO IDENT SOURCE LOGIN ...),
 * values decoded; "[UNAVAILABLE]" where the sender said so.
 */
export type ClientAttributes = Readonly<Record<string, string>>;

export interface InboundMessage {
  /** Generated per transaction, 12 upper-case letters/digits: in every log line of this message. */
  queueId: string;
  protocol: 'smtp' | 'lmtp';
  /** The peer that connected to avgate (before any XCLIENT/XFORWARD). */
  peer: { address: string; port: number };
  /** The client as avgate sees it after XCLIENT: address, host name, HELO name, protocol name. */
  client: { address: string; port: number; hostname: string; helo: string | null; proto: string };
  /** XFORWARD attributes sent by a trusted client for this transaction (empty when none). */
  xforward: ClientAttributes;
  /** XCLIENT attributes sent by a trusted client on this connection (empty when none). */
  xclient: ClientAttributes;
  /**
   * The original client, for the next hop's XFORWARD/XCLIENT: the XFORWARD attributes when the
   * client sent them, else this connection's client.
   */
  origin: ClientAttributes;
  mailFrom: MailFrom;
  rcptTo: Recipient[];
  /** The message as received (dot-stuffing undone, CRLF kept); re-readable; disposed by the server afterwards. */
  spool: Spool;
  size: number;
  receivedAt: Date;
  /** Aborted when the handler timeout passes or the server stops: deliveries not yet committed stop. */
  signal: AbortSignal;
}

export interface DeliveryRequest {
  mailFrom: MailFrom;
  rcpts: readonly Recipient[];
  /** The message (without dot-stuffing); read once, with backpressure. */
  body: Readable | Buffer;
  /** Message size in bytes for the SIZE parameter; omitted when unknown. */
  size?: number;
  /** Attributes for XFORWARD (only those the next hop names are sent). */
  xforward?: ClientAttributes;
  /** Attributes for XCLIENT, used when next-hop.xclient is on and the next hop offers XCLIENT. */
  xclient?: ClientAttributes;
  /** Aborting before the final dot has been sent cancels the delivery (4xx results). */
  signal?: AbortSignal;
  /** For log lines. */
  queueId?: string;
}

export interface DeliveryResult {
  /** One reply per recipient of the request, in order. Next hop trouble is a 4xx reply, never a throw. */
  replies: SmtpReply[];
  /** The command/reply dialogue (no body), for logs and tests. */
  transcript: string[];
  /** Parameters not passed on because the next hop does not announce their extension (e.g. "NOTIFY"). */
  dropped: string[];
}

export interface NextHop {
  /** As configured: smtp:HOST:PORT, lmtp:unix:/PATH, cmd:/PATH ARGS. */
  readonly target: string;
  deliver(request: DeliveryRequest): Promise<DeliveryResult>;
  close(): Promise<void>;
}

/**
 * Decides about one message and delivers it (possibly modified, possibly to some recipients only)
 * through nextHop. Returns one reply per msg.rcptTo entry, in order. A throw is answered 451 4.3.0.
 */
export type MessageHandler = (msg: InboundMessage, nextHop: NextHop) => Promise<RecipientReply[]>;

/**
 * SMTP mode only: recipients whose key differs from the first accepted recipient's get 452 4.5.3,
 * so every recipient of one SMTP transaction has the same outcome (one DATA reply can say one thing).
 */
export type PartitionHook = (mailFrom: MailFrom, rcpt: Recipient) => string;
