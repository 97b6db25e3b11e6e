import { z } from 'zod';
import { duration, timerDuration, positiveInt, size, listenAddress } from './units-schema.js';

/** Slow or silent clients: each of these ends the request (and the connection) rather than hold it. */
const consoleTimeoutsSchema = z.strictObject({
  /** The request head must arrive within this (slowloris); else 408 and close. */
  header: timerDuration.prefault('30s'),
  /** A keep-alive connection without a new request for this long is closed. */
  idle: timerDuration.prefault('30s'),
  /**
   * Body bytes must keep coming within this (forms, API bodies, uploads); a stalled body gets 408
   * and the connection is closed. Time the console itself spends (a scan, a slow disk) is not counted.
   */
  body: timerDuration.prefault('30s'),
  /**
   * A response with bytes the client has not taken must make write progress within this (a client
   * that asks for a download or a page and stops reading); else the connection is cut. A slow
   * reader that keeps reading is not cut, and time the console itself spends is not counted.
   */
  send: timerDuration.prefault('60s'),
});

/** A name a browser may send in Host for the console (any port goes with it). */
const hostName = z
  .string()
  .max(253)
  .regex(/^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*$/, 'expected a host name without a port, like avgate.example.com');

/**
 * The `console` section: the web console (dashboard, quarantine browser), the scanning API and
 * /metrics (docs/console.md). Same conventions as the rest of the schema; the defaults are the ones
 * in config/avgate.example.yaml and docs/config.md.
 */
export const consoleSchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** host:port; loopback by default (the console is for the admin's machine or an SSH tunnel). */
  listen: listenAddress.default('127.0.0.1:8080'),
  /**
   * Host names the console answers to besides IP literals, `localhost` and the host of `listen`
   * (a reverse proxy's public name). Any other Host gets 421: a web page that rebinds its own
   * name to the console's address (DNS rebinding) must not read or log in to it.
   */
  'allowed-hosts': z.array(hostName).default([]),
  /** HTTPS instead of HTTP (session cookies then get `Secure`). */
  tls: z.strictObject({ cert: z.string(), key: z.string() }).nullable().default(null),
  /** Console users with scrypt hashes (`avgate admin passwd`); relative to state-dir. */
  'password-file': z.string().default('console/passwords.json'),
  /** API tokens, stored as SHA-256 only (`avgate admin token add`); relative to state-dir. */
  'tokens-file': z.string().default('console/tokens.json'),
  /** A session unused this long is logged out. */
  'session-idle-timeout': duration.prefault('30m'),
  /** A session ends this long after login, used or not. */
  'session-max-age': duration.prefault('12h'),
  /** Failed logins per client address within login-window before 429. */
  'login-max-failures': positiveInt.default(5),
  'login-window': duration.prefault('5m'),
  /** Client connections at once (browsers keep several each); one more is closed at once. */
  'max-connections': positiveInt.default(256),
  timeouts: consoleTimeoutsSchema.prefault({}),
  /** Largest object the scanning API takes (413 above). */
  'max-upload-size': size.prefault('1GiB'),
  /** /metrics only with an API token (Authorization: Bearer). */
  'metrics-token-required': z.boolean().default(false),
});

export type ConsoleConfig = z.output<typeof consoleSchema>;
