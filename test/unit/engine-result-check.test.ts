import assert from 'node:assert/strict';
import type { Readable } from 'node:stream';
import { test } from 'node:test';
import { VerdictCache } from '../../src/cache/verdict-cache.js';
import { silentLogger } from '../../src/core/logging.js';
import type { Verdict } from '../../src/core/verdict.js';
import type { Engine, EngineScanResult } from '../../src/engines/types.js';
import { verdictReason } from '../../src/policy/verdict-policy.js';
import { checkedResult, Scanner, type ScannerLimits } from '../../src/scan/scanner.js';

const LIMITS: ScannerLimits = { maxCheckedSize: 1 << 20, scanTimeoutMs: 5000, maxConcurrentScans: 2, maxQueue: 4, contextIdleTimeoutMs: 1000 };

/** A plugin-like engine answering whatever `answer` gives (read after the stream is consumed). */
function engineAnswering(answer: () => unknown): Engine<null> {
  return {
    configure: () => undefined,
    info: () => ({ name: 'odd', description: 'answers what the test says' }),
    init: async () => undefined,
    close: async () => undefined,
    openContext: async () => null,
    closeContext: async () => undefined,
    contextUsable: () => true,
    async scan(_ctx, stream: Readable) {
      for await (const _ of stream) void _;
      return answer() as EngineScanResult;
    },
    signatureVersion: async () => 'v1',
  };
}

test('malformed engine results become an error verdict naming the engine, and are never cached', async () => {
  const bad: Array<[unknown, RegExp]> = [
    [null, /null instead of \{ verdict, bytes \}/],
    ['free', /string instead of/],
    [{ verdict: { status: 'banana' }, bytes: 1 }, /status "banana" is not free, found/],
    [{ verdict: { status: 'found', names: 'NotAnArray' }, bytes: 1 }, /found without names/],
    [{ verdict: { status: 'found', names: [] }, bytes: 1 }, /found without names/],
    [{ verdict: { status: 'found', names: [7] }, bytes: 1 }, /found without names/],
    [{ verdict: { status: 'skipped' }, bytes: 1 }, /skipped without a reason/],
    [{ verdict: { status: 'unknown', raw: 3 }, bytes: 1 }, /unknown without a raw/],
    [{ verdict: { status: 'error', code: 'X' }, bytes: 1 }, /error without code and cause/],
    [{ verdict: { status: 'free' }, bytes: -1 }, /bytes is not a number/],
    [{ verdict: { status: 'free' } }, /bytes is not a number/],
    [{ bytes: 1 }, /no verdict object/],
  ];
  for (const [answer, why] of bad) {
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'odd', engine: engineAnswering(() => answer) }], LIMITS, cache, silentLogger());
    try {
      const data = Buffer.from(`object for ${JSON.stringify(answer)}`);
      for (let i = 0; i < 2; i++) {
        const v: Verdict = await scanner.scan({ source: { kind: 'buffer', data } });
        assert.equal(v.status, 'error', JSON.stringify(answer));
        assert.equal(v.status === 'error' ? v.code : '', 'AVG_ERR_ENGINE_FAILED');
        assert.match(v.status === 'error' ? v.cause : '', /^engine odd returned an invalid result: /);
        assert.match(v.status === 'error' ? v.cause : '', why);
        assert.equal(v.cached, false, 'an invalid answer is not cached');
      }
    } finally {
      await scanner.close();
    }
  }
  // The five good shapes pass unchanged.
  for (const r of [
    { verdict: { status: 'free' }, bytes: 0 },
    { verdict: { status: 'found', names: ['A', 'B'] }, bytes: 5 },
    { verdict: { status: 'skipped', reason: 'big' }, bytes: 5 },
    { verdict: { status: 'unknown', raw: '??' }, bytes: 5 },
    { verdict: { status: 'error', code: 'AVG_ERR_ENGINE_CONNECT', cause: 'refused' }, bytes: 0 },
  ]) {
    assert.equal(checkedResult(r, 'x'), r);
  }
});

test('block-page reasons of error verdicts say what happened, not always "could not be reached"', () => {
  const err = (code: string) => verdictReason({ status: 'error', code, cause: 'c', engine: 'e', signatureVersion: null, durationMs: 1, bytes: 0, cached: false });
  assert.equal(err('AVG_ERR_ENGINE_CONNECT'), 'the antivirus engine could not be reached (AVG_ERR_ENGINE_CONNECT)');
  assert.equal(err('AVG_ERR_ENGINE_FAILED'), 'the antivirus engine could not scan the object (AVG_ERR_ENGINE_FAILED)');
  assert.equal(err('AVG_ERR_ENGINE_TIMEOUT'), 'the antivirus engine did not answer in time (AVG_ERR_ENGINE_TIMEOUT)');
  assert.equal(err('AVG_ERR_INTERNAL'), 'the antivirus gateway failed while scanning (AVG_ERR_INTERNAL)');
  assert.equal(err('SOMETHING_ELSE'), 'the antivirus engine could not scan the object (SOMETHING_ELSE)');
});

test('scan-timeout bounds the whole scan, the signature-version look-up included', async () => {
  const hanging: Engine<null> = {
    ...engineAnswering(() => ({ verdict: { status: 'free' }, bytes: 1 })),
    // Accepts the question and never answers it (clamd stopped with SIGSTOP), whatever the signal says.
    signatureVersion: () => new Promise<string | null>(() => undefined),
  };
  const cache = new VerdictCache({ memoryEntries: 10, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
  const scanner = new Scanner([{ id: 'slow', engine: hanging }], { ...LIMITS, scanTimeoutMs: 300 }, cache, silentLogger());
  try {
    const t = performance.now();
    const v = await scanner.scan({ source: { kind: 'buffer', data: Buffer.from('x') } });
    const ms = performance.now() - t;
    assert.ok(ms < 10_000, `answered after ${ms} ms, not bounded by scan-timeout`);
    assert.equal(v.cached, false);
  } finally {
    await scanner.close();
  }
});
