import { AvgateError } from './errors.js';

/**
 * Bounds simultaneous scans. Waiters queue up to `maxQueue`; one more is refused at once with
 * AVG_ERR_QUEUE_FULL, because an unbounded queue turns an overload into a memory exhaustion and
 * into timeouts for everybody instead of a quick, explicit error for a few.
 */
export class Semaphore {
  private active = 0;
  private readonly waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];

  constructor(
    readonly max: number,
    readonly maxQueue: number,
  ) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError('Semaphore max must be >= 1');
    if (!Number.isInteger(maxQueue) || maxQueue < 0) throw new RangeError('Semaphore maxQueue must be >= 0');
  }

  get inUse(): number {
    return this.active;
  }

  get queued(): number {
    return this.waiters.length;
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (this.active < this.max) {
      this.active++;
      return this.releaser();
    }
    if (this.waiters.length >= this.maxQueue) {
      throw new AvgateError(
        'AVG_ERR_QUEUE_FULL',
        `${this.active} scans running and ${this.waiters.length} waiting (max-concurrent-scans ${this.max}, max-queue ${this.maxQueue})`,
      );
    }
    await new Promise<void>((resolve, reject) => {
      const waiter = { resolve, reject };
      this.waiters.push(waiter);
      signal?.addEventListener(
        'abort',
        () => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) {
            this.waiters.splice(i, 1);
            reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
          }
        },
        { once: true },
      );
    });
    return this.releaser();
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.waiters.shift();
      if (next) next.resolve(); // the slot passes straight to the next waiter
      else this.active--;
    };
  }
}
