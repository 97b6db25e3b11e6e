import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { loadConfig, parseConfigText } from '../../src/config/loader.js';
import { configSchema } from '../../src/config/schema.js';
import { configError } from '../helpers/config.js';

test('embedded defaults', async () => {
  const { config, path } = await loadConfig(null);
  assert.equal(path, null);
  assert.equal(config.scan['max-checked-size'], 100 * 1024 * 1024);
  assert.equal(config.scan['scan-timeout'], 120_000);
  assert.deepEqual(config.scan.engines, ['clamav']);
  assert.equal(config.engines.clamav?.type, 'clamd-net');
  assert.equal(config['sqlite-cache-size'], 2 * 1024 * 1024);
  assert.ok(Object.isFrozen(config.scan), 'config is frozen after validation');
});

test('sizes and durations with units', () => {
  const c = parseConfigText('scan:\n  max-checked-size: 2GiB\n  scan-timeout: 90s\n', 'x');
  assert.equal(c.scan['max-checked-size'], 2 * 1024 ** 3);
  assert.equal(c.scan['scan-timeout'], 90_000);
});

test('an unknown key is rejected with its line and full key', () => {
  const msg = configError('scan:\n  max-checked-size: 1MiB\n  max-cheked-size: 2MiB\n');
  assert.match(msg, /^avgate\.yaml:3: scan\.max-cheked-size: unknown key$/m);
  assert.match(configError('\n\nbogus: 1\n'), /^avgate\.yaml:3: bogus: unknown key$/m);
});

test('a bad value names its line and key', () => {
  const msg = configError('cache:\n  enabled: true\nscan:\n  scan-timeout: soon\n');
  assert.match(msg, /^avgate\.yaml:4: scan\.scan-timeout: invalid duration "soon"/m);
  assert.match(configError('scan:\n  max-concurrent-scans: 0\n'), /avgate\.yaml:2: scan\.max-concurrent-scans:/);
});

test('every problem is reported at once', () => {
  const msg = configError('scan:\n  scan-timeout: soon\n  foo: 1\n');
  assert.equal(msg.split('\n').length, 2);
});

test('scan.engines must name configured engines; plugins need a module', () => {
  assert.match(configError('scan:\n  engines: [nope]\n'), /avgate\.yaml:2: scan\.engines: no engine "nope"/);
  assert.match(configError('engines:\n  p1:\n    type: plugin\n'), /avgate\.yaml:2: engines\.p1: type plugin needs "module"/);
  assert.match(configError('engines:\n  Bad Id:\n    type: icap\n'), /engine ids are/);
});

test('every place that names engines is checked against engines, with its path and line', () => {
  const cases: Array<[string, RegExp]> = [
    ['icap:\n  services:\n    av:\n      engines: [nope]\n', /avgate\.yaml:4: icap\.services\.av\.engines: no engine "nope"/],
    ['http-proxy:\n  doc-acl:\n    - antivirus: [nope]\n', /avgate\.yaml:3: http-proxy\.doc-acl\.0\.antivirus: no engine "nope"/],
    ['ftp-proxy:\n  doc-acl:\n    - antivirus: [nope]\n', /avgate\.yaml:3: ftp-proxy\.doc-acl\.0\.antivirus: no engine "nope"/],
    ['pop3-proxy:\n  antivirus: [nope]\n', /avgate\.yaml:2: pop3-proxy\.antivirus: no engine "nope"/],
    ['imap-proxy:\n  antivirus: [nope]\n', /avgate\.yaml:2: imap-proxy\.antivirus: no engine "nope"/],
    ['mail:\n  engines: [nope]\n', /avgate\.yaml:2: mail\.engines: no engine "nope"/],
  ];
  for (const [text, re] of cases) assert.match(configError(text), re, text);
  // `none` and null name no engine.
  assert.doesNotThrow(() => parseConfigText('http-proxy:\n  doc-acl:\n    - antivirus: none\n    - antivirus: null\n', 'avgate.yaml'));
});

test('YAML syntax errors and duplicate keys carry a line', () => {
  assert.match(configError('scan:\n  engines: [a\n'), /^avgate\.yaml:\d+: /);
  assert.match(configError('log:\n  level: info\nlog:\n  level: debug\n'), /avgate\.yaml:3: .*[Uu]nique|avgate\.yaml:3: /);
});

test('the shipped example config is valid and documents exactly the defaults', () => {
  const text = readFileSync(new URL('../../config/avgate.example.yaml', import.meta.url), 'utf8');
  const example = parseConfigText(text, 'avgate.example.yaml');
  assert.deepEqual(example, configSchema.parse({}));
});

test('docs/config.md names every key of the schema', () => {
  const doc = readFileSync(new URL('../../docs/config.md', import.meta.url), 'utf8');
  const walk = (o: Record<string, unknown>, prefix: string): string[] =>
    Object.entries(o).flatMap(([k, v]) =>
      v && typeof v === 'object' && !Array.isArray(v) && prefix !== 'engines.' ? [`${prefix}${k}`, ...walk(v as Record<string, unknown>, `${prefix}${k}.`)] : [`${prefix}${k}`],
    );
  for (const raw of walk(configSchema.parse({}) as unknown as Record<string, unknown>, '')) {
    if (raw.startsWith('engines.')) continue;
    // Services are a map by name: documented as icap.services.<name>.KEY.
    const key = raw.replace(/^icap\.services\.avscan/, 'icap.services.<name>');
    assert.ok(doc.includes(`\`${key}\``), `docs/config.md lacks \`${key}\``);
  }
});

test('stop-timeout and reload-drain-timeout: durations with units; stop-timeout below 5s is refused with its line', () => {
  const c = parseConfigText('stop-timeout: 30s\nreload-drain-timeout: 2m\n', 'x');
  assert.equal(c['stop-timeout'], 30_000);
  assert.equal(c['reload-drain-timeout'], 120_000);
  assert.match(configError('log:\n  level: info\nstop-timeout: 1s\n'), /avgate\.yaml:3: stop-timeout: at least 5s/);
});
