import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { chunkHeader, parseAddress, parseScanReply, parseVersion, splitSessionReply } from '../../src/engines/clamd/protocol.js';

test('scan replies → verdicts', () => {
  const table: Array<[string, unknown]> = [
    ['stream: OK', { status: 'free' }],
    ['OK', { status: 'free' }],
    ['/var/x: OK', { status: 'free' }],
    ['stream: Eicar-Signature FOUND', { status: 'found', names: ['Eicar-Signature'] }],
    ['/a: b: Win.Test.X.UNOFFICIAL FOUND', { status: 'found', names: ['Win.Test.X.UNOFFICIAL'] }],
    ['stream: A FOUND\nstream: B FOUND\nstream: A FOUND', { status: 'found', names: ['A', 'B'] }],
    ['INSTREAM size limit exceeded. ERROR', { status: 'skipped', reason: 'engine: INSTREAM size limit exceeded.' }],
    ['/tmp/x: Access denied. ERROR', { status: 'error', code: 'AVG_ERR_ENGINE_FAILED', cause: 'engine: Access denied.' }],
    ['stream: Heuristics.Encrypted.Zip FOUND', { status: 'found', names: ['Heuristics.Encrypted.Zip'] }],
    ['UNKNOWN COMMAND', { status: 'unknown', raw: 'UNKNOWN COMMAND' }],
    ['', { status: 'unknown', raw: '' }],
    ['stream:  FOUND', { status: 'unknown', raw: 'stream:  FOUND' }],
  ];
  for (const [raw, expected] of table) assert.deepEqual(parseScanReply(raw), expected, raw);
});

test('encrypted archives are skipped when so configured', () => {
  assert.deepEqual(parseScanReply('stream: Heuristics.Encrypted.Zip FOUND', { encryptedAsSkipped: true }), {
    status: 'skipped',
    reason: 'encrypted (Heuristics.Encrypted.Zip)',
  });
  assert.equal(parseScanReply('stream: Heuristics.Encrypted.Zip FOUND\nstream: Real FOUND', { encryptedAsSkipped: true }).status, 'found');
});

test('session replies carry the request id', () => {
  assert.deepEqual(splitSessionReply('12: stream: OK'), { id: 12, reply: 'stream: OK' });
  assert.deepEqual(splitSessionReply('stream: OK'), { id: null, reply: 'stream: OK' });
});

test('VERSION', () => {
  assert.deepEqual(parseVersion('ClamAV 1.4.6/27432/Sat Nov 21 09:20:01 2026\0'), {
    engine: 'ClamAV 1.4.6',
    signatures: '27432/Sat Nov 21 09:20:01 2026',
  });
  assert.deepEqual(parseVersion('ClamAV 1.4.6'), { engine: 'ClamAV 1.4.6', signatures: null });
});

test('addresses', () => {
  assert.deepEqual(parseAddress('unix:/run/clamd.ctl'), { kind: 'unix', path: '/run/clamd.ctl' });
  assert.deepEqual(parseAddress('/run/clamd.ctl'), { kind: 'unix', path: '/run/clamd.ctl' });
  assert.deepEqual(parseAddress('tcp:127.0.0.1:3310'), { kind: 'tcp', host: '127.0.0.1', port: 3310 });
  assert.deepEqual(parseAddress('[::1]:3310'), { kind: 'tcp', host: '::1', port: 3310 });
  for (const bad of ['unix:', 'localhost', '127.0.0.1:0', '127.0.0.1:70000', 'tcp:']) assert.equal(parseAddress(bad), null, bad);
});

test('chunk header is 4-byte big-endian length', () => {
  assert.deepEqual([...chunkHeader(0x01020304)], [1, 2, 3, 4]);
});

test('property: parseScanReply never throws and always yields one of the five statuses', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), (raw) => {
      const v = parseScanReply(raw);
      assert.ok(['free', 'found', 'skipped', 'unknown', 'error'].includes(v.status));
    }),
  );
});

test('property: any virus name round-trips through a FOUND reply', () => {
  const name = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,60}$/);
  fc.assert(
    fc.property(fc.array(name, { minLength: 1, maxLength: 4 }), (names) => {
      const v = parseScanReply(names.map((n) => `stream: ${n} FOUND`).join('\n'));
      assert.deepEqual(v, { status: 'found', names: [...new Set(names)] });
    }),
  );
});
