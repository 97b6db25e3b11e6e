import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseConfigText } from '../../src/config/loader.js';
import { silentLogger } from '../../src/core/logging.js';
import { ContextPool } from '../../src/engines/pool.js';
import type { Engine } from '../../src/engines/types.js';
import { openRuntime } from '../../src/runtime.js';

function fakeEngine() {
  const state = { opened: 0, closed: 0, broken: new Set<number>() };
  const engine = {
    openContext: async () => ++state.opened,
    closeContext: async () => {
      state.closed++;
    },
    contextUsable: (ctx: number) => !state.broken.has(ctx),
  } as unknown as Engine<number>;
  return { engine, state };
}

test('pool: reuses idle contexts, closes them after the idle timeout', async () => {
  const { engine, state } = fakeEngine();
  const pool = new ContextPool(engine, { maxSize: 4, idleTimeoutMs: 50 });
  const a = await pool.acquire();
  pool.release(a);
  assert.equal(await pool.acquire(), a, 'the idle context is reused');
  pool.release(a);
  assert.equal(state.opened, 1);
  await new Promise((r) => setTimeout(r, 120));
  assert.equal(state.closed, 1, 'closed after idle timeout');
  assert.equal(pool.size, 0);
  await pool.close();
});

test('pool: an unusable context is never handed out again', async () => {
  const { engine, state } = fakeEngine();
  const pool = new ContextPool(engine, { maxSize: 4, idleTimeoutMs: 10_000 });
  const a = await pool.acquire();
  pool.release(a);
  state.broken.add(a);
  const b = await pool.acquire();
  assert.notEqual(b, a);
  assert.equal(state.closed, 1);
  pool.release(b);
  await pool.close();
  assert.equal(state.closed, 2, 'close() closes idle contexts');
});

test('pool: keeps at most maxSize idle contexts', async () => {
  const { engine, state } = fakeEngine();
  const pool = new ContextPool(engine, { maxSize: 2, idleTimeoutMs: 10_000 });
  const ctxs = await Promise.all([1, 2, 3].map(() => pool.acquire()));
  ctxs.forEach((c) => pool.release(c));
  assert.equal(pool.idleCount, 2);
  assert.equal(state.closed, 1);
  await pool.close();
});

test('a plugin engine is loaded from its module and scans through the scanner', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-plugin-'));
  try {
    const module = new URL('../fixtures/plugin-engine.ts', import.meta.url).pathname;
    const text = [
      `state-dir: ${dir}`,
      'clamd:',
      '  managed: false',
      'engines:',
      '  marker:',
      '    type: plugin',
      `    module: ${module}`,
      '    options:',
      '      marker: EVIL',
      '      unknown-option: ignored',
      'scan:',
      '  engines: [marker]',
    ].join('\n');
    const config = parseConfigText(text, 'plugin.yaml');
    const rt = await openRuntime(config, { logger: silentLogger(), localClamd: 'never' });
    const found = await rt.scanner.scan({ source: { kind: 'buffer', data: Buffer.from('some EVIL content') } });
    assert.equal(found.status, 'found');
    assert.equal(found.engine, 'marker');
    assert.equal(found.signatureVersion, 'marker:EVIL');
    assert.equal((await rt.scanner.scan({ source: { kind: 'buffer', data: Buffer.from('fine') } })).status, 'free');
    assert.equal((await rt.scanner.scan({ source: { kind: 'buffer', data: Buffer.from('some EVIL content') } })).cached, true);
    await rt.close();

    // cache: false on the engine: the same scans, never from the cache.
    const uncached = await openRuntime(parseConfigText(`${text.replace('    options:', '    cache: false\n    options:')}\nstate-dir: ${join(dir, 'b')}`.replace(`state-dir: ${dir}\n`, ''), 'plugin.yaml'), { logger: silentLogger(), localClamd: 'never' });
    try {
      for (let i = 0; i < 2; i++) {
        for (const data of ['fine', 'some EVIL content']) {
          assert.equal((await uncached.scanner.scan({ source: { kind: 'buffer', data: Buffer.from(data) } })).cached, false, `${data} #${i}`);
        }
      }
    } finally {
      await uncached.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
