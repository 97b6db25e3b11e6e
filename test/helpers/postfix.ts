import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostfix, startSmtpSink, type Postfix, type SmtpSink } from '../../tools/peers/postfix.js';

export interface TestPostfix {
  postfix: Postfix;
  /** The final destination (Postfix's relayhost), dumping every message. */
  sink: SmtpSink;
  dir: string;
  stop(): Promise<void>;
}

/**
 * A real Postfix whose mail goes through avgate on `contentFilterPort` (content_filter) and is
 * then relayed to an smtp-sink; everything in a fresh directory that stop() removes.
 */
export async function startTestPostfix(opts: { contentFilterPort: number | null; main?: Record<string, string> }): Promise<TestPostfix> {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-postfix-'));
  // Postfix's daemons run as the postfix user and must reach the queue inside.
  await chmod(dir, 0o755);
  let sink: SmtpSink | null = null;
  try {
    sink = await startSmtpSink({ dir: join(dir, 'sink') });
    const postfix = await startPostfix({ dir: join(dir, 'postfix'), relayhost: `[127.0.0.1]:${sink.port}`, contentFilterPort: opts.contentFilterPort, ...(opts.main ? { main: opts.main } : {}) });
    const s = sink;
    return {
      postfix,
      sink: s,
      dir,
      async stop() {
        await postfix.stop();
        await s.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await sink?.stop();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
