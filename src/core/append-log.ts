import { createWriteStream, type WriteStream } from 'node:fs';
import { checkAppendable, onReopenLogs } from './logging.js';

/**
 * A line log appended to a file (the access logs of the ICAP server and the proxies). Reopened
 * by path on SIGHUP (`reopenLogFiles`), so logrotate can move the file away and the next
 * line goes to a new file of the same name; lines already queued finish in the old one.
 * Writes are not awaited: a line is small, and a disk that does not keep up shows in the
 * stream's buffer, never in a request's latency.
 */
export class AppendLog {
  private stream: WriteStream;
  private readonly unregister: () => void;

  constructor(readonly path: string) {
    this.stream = AppendLog.open(path);
    this.unregister = onReopenLogs(() => this.reopen());
  }

  private static open(path: string): WriteStream {
    const s = createWriteStream(path, { flags: 'a' });
    // An unwritable log (disk full, directory gone) must not take the daemon down with it.
    s.on('error', () => undefined);
    return s;
  }

  write(line: string): void {
    this.stream.write(line);
  }

  /** Throws, the old file kept, when the path cannot be opened (see reopenLogFiles). */
  reopen(): void {
    checkAppendable(this.path);
    const old = this.stream;
    this.stream = AppendLog.open(this.path);
    old.end();
  }

  /** Flushes and closes the file; later writes are dropped. */
  async close(): Promise<void> {
    this.unregister();
    const s = this.stream;
    await new Promise<void>((resolve) => s.end(resolve));
  }
}
