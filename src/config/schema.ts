import { z } from 'zod';
import { parseDuration, parseSize } from '../core/units.js';

/**
 * The configuration schema. Every key is kebab-case, every object is strict (an unknown key is an
 * error with its line, never silently ignored), every size and duration carries its unit, and the
 * defaults here are the ones documented in docs/config.md (a test checks that every key is there).
 */
const size = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = parseSize(v);
  if (n === null) {
    ctx.addIssue({ code: 'custom', message: `invalid size "${v}" (examples: 512KiB, 100MiB, 2GB)` });
    return z.NEVER;
  }
  return n;
});

const duration = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = parseDuration(v);
  if (n === null) {
    ctx.addIssue({ code: 'custom', message: `invalid duration "${v}" (examples: 250ms, 30s, 5m, 7d)` });
    return z.NEVER;
  }
  return n;
});

const positiveInt = z.number().int().min(1);
const optionValue = z.union([z.string(), z.number(), z.boolean()]);

export const ENGINE_ID = /^[a-z][a-z0-9_-]{0,31}$/;

const engineSchema = z.strictObject({
  /** clamd-net | clamd-file | icap | plugin */
  type: z.enum(['clamd-net', 'clamd-file', 'icap', 'plugin']),
  /** For type plugin: path of an ES module whose default export is an EngineFactory. */
  module: z.string().optional(),
  /** Engine options, passed as {name, value} pairs; a list value gives the option several times. */
  options: z.record(z.string(), z.union([optionValue, z.array(optionValue)])).default({}),
});

const logSchema = z.strictObject({
  level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  file: z.string().nullable().default(null),
});

const clamdSchema = z.strictObject({
  /** Start and stop a project-local clamd with `avgate serve`. */
  managed: z.boolean().default(true),
  /** `test` = generated test database; `system` = ClamAV's /var/lib/clamav (freshclam); or a directory. */
  database: z.string().default('test'),
  'tcp-port': z.number().int().min(0).max(65535).default(3310),
  'tcp-addr': z.string().default('127.0.0.1'),
  'stream-max-length': z.string().default('100M'),
  'max-threads': positiveInt.default(16),
  'start-timeout': duration.prefault('120s'),
});

const scanSchema = z.strictObject({
  /** Engine ids from `engines`, all asked about every object; verdicts are combined. */
  engines: z.array(z.string()).min(1).default(['clamav']),
  'max-checked-size': size.prefault('100MiB'),
  'scan-timeout': duration.prefault('120s'),
  'max-concurrent-scans': positiveInt.default(16),
  'max-queue': z.number().int().min(0).default(256),
  'context-idle-timeout': duration.prefault('20s'),
});

const cacheSchema = z.strictObject({
  enabled: z.boolean().default(true),
  'memory-entries': z.number().int().min(0).default(10000),
  /** SQLite file, relative to state-dir; null = memory level only. */
  sqlite: z.string().nullable().default('cache.sqlite'),
  'sqlite-max-entries': positiveInt.default(1_000_000),
  'max-age': duration.prefault('7d'),
});

const healthSchema = z.strictObject({
  /** How often `avgate serve` pings every engine and logs its state. */
  interval: duration.prefault('30s'),
});

export const configSchema = z.strictObject({
  /** Runtime files: clamd socket/conf/db, cache, quarantine. Relative to the working directory. */
  'state-dir': z.string().default('var'),
  log: logSchema.default(() => logSchema.parse({})),
  clamd: clamdSchema.default(() => clamdSchema.parse({})),
  engines: z
    .record(z.string(), engineSchema)
    .default(() => ({ clamav: engineSchema.parse({ type: 'clamd-net', options: { address: 'local' } }) })),
  scan: scanSchema.default(() => scanSchema.parse({})),
  cache: cacheSchema.default(() => cacheSchema.parse({})),
  health: healthSchema.default(() => healthSchema.parse({})),
});

export type Config = z.output<typeof configSchema>;
export type EngineConfig = z.output<typeof engineSchema>;
