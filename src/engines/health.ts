/**
 * What the health loop of `avgate serve` last learnt about each engine (PING, VERSION, signature
 * version, failures), kept for the dashboard so a page view never waits on an engine.
 */
export interface EngineHealthEntry {
  id: string;
  /** null until the first check finished. */
  healthy: boolean | null;
  /** Epoch ms of the last check (successful or not). */
  lastCheckAt: number | null;
  /** Epoch ms of the last successful PING. */
  lastOkAt: number | null;
  /** The last PING reply (`PONG`). */
  reply: string | null;
  /** The engine's own version text (clamd VERSION), when it tells. */
  version: string | null;
  signatureVersion: string | null;
  /** Failed checks in a row, and in total since start. */
  failuresInRow: number;
  failures: number;
  lastError: string | null;
}

export class EngineHealth {
  private readonly entries = new Map<string, EngineHealthEntry>();

  constructor(ids: readonly string[] = []) {
    for (const id of ids) this.entry(id);
  }

  private entry(id: string): EngineHealthEntry {
    let e = this.entries.get(id);
    if (!e) {
      e = { id, healthy: null, lastCheckAt: null, lastOkAt: null, reply: null, version: null, signatureVersion: null, failuresInRow: 0, failures: 0, lastError: null };
      this.entries.set(id, e);
    }
    return e;
  }

  ok(id: string, o: { reply: string; version: string | null; signatureVersion: string | null }, now = Date.now()): void {
    const e = this.entry(id);
    Object.assign(e, { healthy: true, lastCheckAt: now, lastOkAt: now, reply: o.reply, failuresInRow: 0, lastError: null });
    if (o.version !== null) e.version = o.version;
    e.signatureVersion = o.signatureVersion;
  }

  failed(id: string, error: string, now = Date.now()): void {
    const e = this.entry(id);
    e.healthy = false;
    e.lastCheckAt = now;
    e.failuresInRow++;
    e.failures++;
    e.lastError = error;
  }

  snapshot(): EngineHealthEntry[] {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }
}
