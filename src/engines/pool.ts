import type { Engine } from './types.js';

export interface PoolOptions {
  /** Contexts kept open; a scan that finds none free opens a new one up to this number. */
  maxSize: number;
  /** A context unused for this long is closed (ms). */
  idleTimeoutMs: number;
}

interface Idle<Ctx> {
  ctx: Ctx;
  timer: NodeJS.Timeout;
}

/**
 * A pool of engine contexts (connections). The scanner's semaphore bounds how many scans run, so
 * the pool only has to reuse what is idle and open what is missing; it closes a context that has
 * been idle longer than idleTimeoutMs, and never returns one the engine calls unusable.
 */
export class ContextPool<Ctx> {
  private readonly idle: Array<Idle<Ctx>> = [];
  private open = 0;
  private closed = false;

  constructor(
    private readonly engine: Engine<Ctx>,
    private readonly options: PoolOptions,
  ) {}

  get size(): number {
    return this.open;
  }

  get idleCount(): number {
    return this.idle.length;
  }

  async acquire(signal?: AbortSignal): Promise<Ctx> {
    if (this.closed) throw new Error('context pool is closed');
    while (this.idle.length > 0) {
      const entry = this.idle.pop() as Idle<Ctx>; // most recently used first: warmest connection
      clearTimeout(entry.timer);
      if (this.engine.contextUsable(entry.ctx)) return entry.ctx;
      await this.discard(entry.ctx);
    }
    this.open++;
    try {
      return await this.engine.openContext(signal);
    } catch (err) {
      this.open--;
      throw err;
    }
  }

  release(ctx: Ctx): void {
    if (this.closed || !this.engine.contextUsable(ctx) || this.idle.length >= this.options.maxSize) {
      void this.discard(ctx);
      return;
    }
    const entry: Idle<Ctx> = {
      ctx,
      timer: setTimeout(() => {
        const i = this.idle.indexOf(entry);
        if (i >= 0) this.idle.splice(i, 1);
        void this.discard(ctx);
      }, this.options.idleTimeoutMs),
    };
    entry.timer.unref();
    this.idle.push(entry);
  }

  /** Gives a broken context back: it is closed, never reused. */
  async discard(ctx: Ctx): Promise<void> {
    this.open--;
    try {
      await this.engine.closeContext(ctx);
    } catch {
      // closing a broken connection may fail again; nothing more to do with it
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = this.idle.splice(0);
    await Promise.all(
      all.map((e) => {
        clearTimeout(e.timer);
        return this.discard(e.ctx);
      }),
    );
  }
}
