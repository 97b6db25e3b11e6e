/**
 * The five answers an antivirus engine can give, as administrators know them from Kernun UTM's
 * antivirus module. Every front end speaks in these terms; policy maps them to actions.
 *
 * - free:    scanned, nothing found
 * - found:   at least one virus (names as the engine reported them)
 * - skipped: not scanned (over max-checked-size, engine's own size limit, encrypted archive ...)
 * - unknown: the engine answered something we do not understand (raw reply kept for the log)
 * - error:   we could not talk to the engine (refused, reset, timeout, queue full)
 */
export const VERDICT_STATUSES = ['free', 'found', 'skipped', 'unknown', 'error'] as const;
export type VerdictStatus = (typeof VERDICT_STATUSES)[number];

export interface VerdictCommon {
  /** Engine id from the config, or a `+`-joined list for a combined verdict. */
  engine: string;
  /** Signature version the engine scanned with, when it can tell. */
  signatureVersion: string | null;
  /** Wall time of the scan in milliseconds (for a cache hit: of the lookup). */
  durationMs: number;
  /** Bytes of content read for this scan. */
  bytes: number;
  /** True when the verdict came from the verdict cache, not from the engine. */
  cached: boolean;
}

export type VerdictResult =
  | { status: 'free' }
  | { status: 'found'; names: string[] }
  | { status: 'skipped'; reason: string }
  | { status: 'unknown'; raw: string }
  | { status: 'error'; code: string; cause: string };

export type Verdict = VerdictCommon & VerdictResult;

/** A verdict without the common fields: what an engine's reply parser produces. */
export type BareVerdict = VerdictResult;

export function withCommon(result: VerdictResult, common: VerdictCommon): Verdict {
  return { ...common, ...result };
}

/** A verdict a front end reaches without the engines' word on the content: not scanned, and why. */
export function skippedVerdict(reason: string, bytes: number, durationMs = 0): Verdict {
  return { status: 'skipped', reason, engine: '-', signatureVersion: null, durationMs, bytes, cached: false };
}

/**
 * A verdict as one access-log field: the status, for `found` the names (`found:Eicar-Test`,
 * several joined by commas), for `error` its code (`error:AVG_ERR_ENGINE_CONNECT`), and `/cached`
 * after a verdict the verdict cache answered; `-` for none. White space and control characters in
 * a name become `_`.
 */
export function verdictLabel(v: (Pick<Verdict, 'status'> & { names?: readonly string[]; code?: string; cached?: boolean }) | null): string {
  if (v === null) return '-';
  const cached = v.cached === true ? '/cached' : '';
  if (v.status === 'error' && v.code) return `error:${v.code.replace(/[\s\p{Cc}]/gu, '_')}`;
  if (v.status !== 'found' || !v.names || v.names.length === 0) return `${v.status}${cached}`;
  return `found:${v.names.map((n) => n.replace(/[\s\p{Cc}]/gu, '_')).join(',')}${cached}`;
}

/** Short human text for logs and the CLI: `FOUND Eicar-Test`, `SKIPPED (size limit)` ... */
export function describeVerdict(v: VerdictResult): string {
  switch (v.status) {
    case 'free':
      return 'OK';
    case 'found':
      return `${v.names.join(', ')} FOUND`;
    case 'skipped':
      return `SKIPPED (${v.reason})`;
    case 'unknown':
      return `UNKNOWN (${v.raw})`;
    case 'error':
      return `ERROR (${v.code}: ${v.cause})`;
  }
}

/**
 * Several engines on one object: any found → found (names of all that found);
 * else any free → free; else skipped; else unknown; else error.
 * The order matters: one engine that scanned and found nothing outweighs one that could not scan.
 */
export function combineVerdicts(verdicts: readonly Verdict[]): Verdict {
  if (verdicts.length === 0) throw new Error('combineVerdicts needs at least one verdict');
  if (verdicts.length === 1) return verdicts[0] as Verdict;
  const common: VerdictCommon = {
    engine: verdicts.map((v) => v.engine).join('+'),
    signatureVersion: verdicts.map((v) => v.signatureVersion ?? '-').join('+'),
    durationMs: Math.max(...verdicts.map((v) => v.durationMs)),
    bytes: Math.max(...verdicts.map((v) => v.bytes)),
    cached: verdicts.every((v) => v.cached),
  };
  const found = verdicts.filter((v): v is Verdict & { status: 'found' } => v.status === 'found');
  if (found.length > 0) {
    const names = [...new Set(found.flatMap((v) => v.names))];
    return { ...common, status: 'found', names };
  }
  for (const status of ['free', 'skipped', 'unknown', 'error'] as const) {
    const first = verdicts.find((v) => v.status === status);
    if (first) return { ...first, ...common };
  }
  /* c8 ignore next */
  throw new Error('unreachable');
}
