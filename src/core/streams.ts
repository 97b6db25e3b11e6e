import type { Writable } from 'node:stream';

/** Resolves when `w` has drained or closed (the caller checks which); at once when it needs no drain. */
export function drainedOrClosed(w: Writable): Promise<void> {
  if (w.destroyed || !w.writableNeedDrain) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = () => {
      w.off('drain', done);
      w.off('close', done);
      resolve();
    };
    w.once('drain', done);
    w.once('close', done);
  });
}
