/**
 * The deadline of a front end's graceful close. close() may be called again with a shorter
 * deadline (a stop while a reload's old generation is still draining): the running close
 * hurries instead of a second close beginning.
 */
export class Drain {
  private until: number;
  /** A later close() came (a stop during a reload's drain): what was kept for the drain goes now. */
  hurried = false;

  constructor(ms: number) {
    this.until = Date.now() + ms;
  }

  /** Brings the deadline forward to `ms` from now (never pushes it back). */
  shorten(ms: number): void {
    this.until = Math.min(this.until, Date.now() + ms);
    this.hurried = true;
  }

  get passed(): boolean {
    return Date.now() >= this.until;
  }

  /**
   * The wait of every front end's close: runs `step` (end what may be ended now: idle
   * connections, or tunnels once hurried) at once and every 50 ms, until `done()` or the deadline.
   */
  async wait(done: () => boolean, step: () => void = () => undefined): Promise<void> {
    step();
    while (!done() && !this.passed) {
      await new Promise((r) => setTimeout(r, 50));
      step();
    }
  }
}

/**
 * One close per front end: the first call runs `run` with its Drain; a later call shortens that
 * deadline and returns the same promise.
 */
export class CloseOnce {
  private running: { drain: Drain; done: Promise<void> } | null = null;

  close(ms: number, run: (drain: Drain) => Promise<void>): Promise<void> {
    if (this.running) {
      this.running.drain.shorten(ms);
      return this.running.done;
    }
    const drain = new Drain(ms);
    this.running = { drain, done: run(drain) };
    return this.running.done;
  }
}

/**
 * A front end's graceful close: `close(deadlineMs)` runs the front end's own `closeNow` once
 * with a Drain of that deadline; called again (a stop during a reload's drain), it hurries it.
 */
export abstract class GracefulServer {
  private readonly closeOnce = new CloseOnce();

  /** Graceful close within `deadlineMs`; called again, it hurries the running close (Drain). */
  close(deadlineMs = 5000): Promise<void> {
    return this.closeOnce.close(deadlineMs, (drain) => this.closeNow(drain));
  }

  protected abstract closeNow(drain: Drain): Promise<void>;
}
