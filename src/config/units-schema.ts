import { z } from 'zod';
import { parseDuration, parseSize } from '../core/units.js';

/** Zod pieces every config section shares: sizes and durations with units, positive counts. */
export const size = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = parseSize(v);
  if (n === null) {
    ctx.addIssue({ code: 'custom', message: `invalid size "${v}" (examples: 512KiB, 100MiB, 2GB)` });
    return z.NEVER;
  }
  return n;
});

export const duration = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = parseDuration(v);
  // A number too long to be exact ("9999…9d" is Infinity) is no duration either.
  if (n === null || !Number.isSafeInteger(n)) {
    ctx.addIssue({ code: 'custom', message: `invalid duration "${v}" (examples: 250ms, 30s, 5m, 7d)` });
    return z.NEVER;
  }
  return n;
});

/** The longest delay a node timer waits (2^31-1 ms, about 24.8 days); a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A duration that arms a timer (timeouts, intervals): at most MAX_TIMER_MS. */
export const timerDuration = duration.refine((ms) => ms <= MAX_TIMER_MS, {
  message: `too long for a timer: at most 24d (${MAX_TIMER_MS}ms); longer values would fire at once`,
});

export const positiveInt = z.number().int().min(1);

/**
 * `host:port` (`[v6]:port` for IPv6) a listener binds, checked as the servers parse it, so a bad
 * one is a config error with its line and not a failure at start. Port 0 = any free port.
 */
export const listenAddress = z.string().refine(
  (s) => {
    const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s.trim());
    return m !== null && Number(m[3]) <= 65535;
  },
  { message: 'expected host:port with a port from 0 to 65535 ([::1]:port for IPv6)' },
);
