import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { LocalClamd } from '../../src/engines/clamd/local.js';
import { waitFor } from '../helpers/wait.js';

/** A logger that keeps its lines (level and message), for the assertions. */
function recordingLogger(): { log: pino.Logger; lines: Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });
  return { log, lines };
}

test('serve\'s clamd: killed, it is started again (and logged); stop() ends the watch, no clamd is left', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-clamd-sup-'));
  const clamd = new LocalClamd({ stateDir: join(dir, 'clamd'), database: 'test', tcpPort: 0, maxThreads: 2, tempDir: 'state' });
  const { log, lines } = recordingLogger();
  try {
    await clamd.start();
    clamd.supervise(log);
    const first = clamd.pid as number;
    process.kill(first, 'SIGKILL');
    // The restart's log line comes once start() has settled, which may be after clamd answers PING.
    await waitFor('clamd restarted', async () => (clamd.pid !== first && (await clamd.ping()) && lines.some((l) => /clamd restarted/.test(l.msg)) ? true : null), 60_000);
    assert.ok(lines.some((l) => l.level >= 50 && /clamd ended on its own/.test(l.msg)), JSON.stringify(lines));
    assert.ok(lines.some((l) => /clamd restarted/.test(l.msg)));
    const second = clamd.pid as number;
    const t0 = performance.now();
    await clamd.stop();
    assert.ok(performance.now() - t0 < 15_000, 'stop is not held up by the watch');
    assert.equal(await clamd.ping(), false);
    assert.throws(() => process.kill(second, 0), 'the restarted clamd is gone too');
    // Stopped on purpose: not restarted.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await clamd.ping(), false);
  } finally {
    await clamd.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
