import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseConfigText } from '../../src/config/loader.js';
import { silentLogger } from '../../src/core/logging.js';
import { clamdRequest } from '../../src/engines/clamd/connection.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { within } from '../helpers/wait.js';

/**
 * Command-line runs (`avgate scan`) on the project-local clamd: the first one starts it, and it is
 * stopped when the last one ends — not when its starter ends while another still scans (trial
 * finding: an overlapping cron scan got thousands of connect errors), and never when it was
 * serve's.
 */
test('overlapping command-line runs share the clamd one of them started; the last to end stops it; serve\'s is never stopped by them', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-shared-clamd-'));
  const config = parseConfigText([`state-dir: ${join(dir, 'state')}`, 'log: {level: silent}', 'clamd: {tcp-port: null}', 'cache: {enabled: false}'].join('\n'), 'cli.yaml');
  const socket = { kind: 'unix' as const, path: join(dir, 'state', 'clamd', 'clamd.sock') };
  const up = async () => (await clamdRequest(socket, 'PING', { timeoutMs: 2000 }).catch(() => '')).trim() === 'PONG';
  const open = (localClamd: 'if-needed' | 'always') => within('openRuntime', 150_000, openRuntime(config, { logger: silentLogger(), localClamd }));
  const found = async (r: Runtime) => (await r.scanner.scan({ source: { kind: 'buffer', data: eicarBytes() } })).status;
  const runtimes: Runtime[] = [];
  try {
    const first = await open('if-needed');
    runtimes.push(first);
    assert.ok(first.clamd, 'the first run started clamd');
    const second = await open('if-needed');
    runtimes.push(second);
    assert.equal(second.clamd, null, 'the second one found it running');
    await first.close();
    runtimes.shift();
    assert.equal(await up(), true, 'still running for the second run');
    assert.equal(existsSync(join(dir, 'state', 'clamd', 'cli-started')), true, 'the stop is handed over');
    assert.equal(await found(second), 'found');
    await second.close();
    runtimes.shift();
    assert.equal(await up(), false, 'the last run stopped it');
    assert.equal(existsSync(join(dir, 'state', 'clamd', 'cli-started')), false);

    // serve's clamd: a command-line run uses it and leaves it running — even when a killed run
    // left its hand-over mark and registration behind.
    await mkdir(join(dir, 'state', 'clamd', 'users'), { recursive: true });
    await writeFile(join(dir, 'state', 'clamd', 'cli-started'), '1\n');
    await writeFile(join(dir, 'state', 'clamd', 'users', '999999-dead'), '');
    const served = await open('always');
    assert.equal(existsSync(join(dir, 'state', 'clamd', 'cli-started')), false, 'the stale mark is gone');
    runtimes.push(served);
    const cli = await open('if-needed');
    runtimes.push(cli);
    assert.equal(cli.clamd, null);
    assert.equal(await found(cli), 'found');
    await cli.close();
    runtimes.pop();
    assert.equal(await up(), true, "serve's clamd keeps running");
  } finally {
    for (const r of runtimes.reverse()) await r.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
});
