import assert from 'node:assert/strict';
import { test } from 'node:test';
import { combineVerdicts, describeVerdict, verdictLabel, type Verdict, type VerdictResult } from '../../src/core/verdict.js';

function v(result: VerdictResult, engine = 'e'): Verdict {
  return { ...result, engine, signatureVersion: '1', durationMs: 5, bytes: 10, cached: false };
}

const FREE = v({ status: 'free' }, 'a');
const FOUND = v({ status: 'found', names: ['X'] }, 'b');
const FOUND2 = v({ status: 'found', names: ['Y', 'X'] }, 'c');
const SKIPPED = v({ status: 'skipped', reason: 'size' }, 'd');
const UNKNOWN = v({ status: 'unknown', raw: '??' }, 'e');
const ERROR = v({ status: 'error', code: 'AVG_ERR_ENGINE_CONNECT', cause: 'refused' }, 'f');

test('combining engines: any found, else any free, else skipped, else unknown, else error', () => {
  const table: Array<[Verdict[], string]> = [
    [[FREE, FOUND], 'found'],
    [[ERROR, FOUND], 'found'],
    [[ERROR, FREE], 'free'],
    [[SKIPPED, FREE], 'free'],
    [[UNKNOWN, SKIPPED], 'skipped'],
    [[ERROR, UNKNOWN], 'unknown'],
    [[ERROR, ERROR], 'error'],
    [[SKIPPED, UNKNOWN, ERROR], 'skipped'],
  ];
  for (const [input, expected] of table) {
    assert.equal(combineVerdicts(input).status, expected, input.map((x) => x.status).join('+'));
    assert.equal(combineVerdicts([...input].reverse()).status, expected, 'order of engines does not matter');
  }
});

test('combined found carries the names of every engine that found, once each', () => {
  const c = combineVerdicts([FOUND, FREE, FOUND2]);
  assert.deepEqual(c.status === 'found' ? c.names : [], ['X', 'Y']);
  assert.equal(c.engine, 'b+a+c');
});

test('a single verdict is returned as it is', () => {
  assert.equal(combineVerdicts([ERROR]), ERROR);
  assert.throws(() => combineVerdicts([]));
});

test('combined error keeps its code and cause', () => {
  const c = combineVerdicts([ERROR, v({ status: 'error', code: 'AVG_ERR_ENGINE_TIMEOUT', cause: 't' })]);
  assert.equal(c.status === 'error' ? c.code : '', 'AVG_ERR_ENGINE_CONNECT');
});

test('describeVerdict', () => {
  assert.equal(describeVerdict(FREE), 'OK');
  assert.equal(describeVerdict(FOUND2), 'Y, X FOUND');
  assert.equal(describeVerdict(SKIPPED), 'SKIPPED (size)');
  assert.equal(describeVerdict(ERROR), 'ERROR (AVG_ERR_ENGINE_CONNECT: refused)');
});

test('access-log verdict field: names for found, the code for error, /cached for a cache hit', () => {
  assert.equal(verdictLabel(null), '-');
  assert.equal(verdictLabel({ status: 'free' }), 'free');
  assert.equal(verdictLabel({ status: 'free', cached: true }), 'free/cached');
  assert.equal(verdictLabel({ status: 'found', names: ['A b', 'C'], cached: true }), 'found:A_b,C/cached');
  assert.equal(verdictLabel({ status: 'error', code: 'AVG_ERR_ENGINE_CONNECT' }), 'error:AVG_ERR_ENGINE_CONNECT');
  assert.equal(verdictLabel({ status: 'skipped' }), 'skipped');
});
