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
  if (n === null) {
    ctx.addIssue({ code: 'custom', message: `invalid duration "${v}" (examples: 250ms, 30s, 5m, 7d)` });
    return z.NEVER;
  }
  return n;
});

export const positiveInt = z.number().int().min(1);
