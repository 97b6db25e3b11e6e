import assert from 'node:assert/strict';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AvgateError } from '../../src/core/errors.js';
import { loadConfig, MAX_CONFIG_BYTES, parseConfigText } from '../../src/config/loader.js';

/** The config error a text gets: an AvgateError whose every line is `file:line: message`. */
function configError(text: string, label = 'cfg.yaml'): string {
  let caught: unknown;
  try {
    parseConfigText(text, label);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof AvgateError, `an AvgateError, got ${String(caught)}`);
  assert.equal(caught.code, 'AVG_ERR_CONFIG');
  for (const line of caught.message.split('\n')) assert.match(line, new RegExp(`^${label.replace(/\./g, '\\.')}:\\d+: `), line);
  return caught.message;
}

/** A time-bounded call: parsing hostile text must fail fast, not work for seconds. */
function fast<T>(what: string, fn: () => T, ms = 1000): T {
  const t0 = performance.now();
  const r = fn();
  const took = performance.now() - t0;
  assert.ok(took < ms, `${what} took ${Math.round(took)} ms`);
  return r;
}

describe('config loader: hostile YAML', () => {
  test('"billion laughs" aliases: a config error naming the file and the first alias line', () => {
    const levels = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]'];
    for (const [i, name] of ['b', 'c', 'd', 'e', 'f', 'g', 'h'].entries()) {
      const prev = String.fromCharCode('a'.charCodeAt(0) + i);
      levels.push(`${name}: &${name} [${Array(10).fill(`*${prev}`).join(', ')}]`);
    }
    const msg = fast('alias bomb', () => configError(`${levels.join('\n')}\n`));
    assert.match(msg, /^cfg\.yaml:2: aliases .* expand too much/);
  });

  test('flow collections nested a million deep: refused at once, with the line', () => {
    const n = 1_000_000;
    const msg = fast('deep nesting', () => configError(`log:\n  level: info\nx: ${'['.repeat(n)}${']'.repeat(n)}\n`));
    assert.match(msg, /^cfg\.yaml:3: .*nested more than \d+ deep/);
    const maps = fast('deep maps', () => configError(`x: ${'{a: '.repeat(n)}1${'}'.repeat(n)}\n`));
    assert.match(maps, /^cfg\.yaml:1: /);
  });

  test('brackets inside quotes and comments do not count as nesting', () => {
    const deep = '['.repeat(500);
    assert.doesNotThrow(() => parseConfigText(`# ${deep}\nhttp-proxy:\n  via: "${deep}"\n  block-page: '${deep}'\n`, 'cfg.yaml'));
  });

  test('deep block nesting: a plain message, not "Maximum call stack size exceeded"', () => {
    const text = `${Array.from({ length: 1500 }, (_, i) => `${' '.repeat(i)}k:`).join('\n')} 1\n`;
    const msg = configError(text);
    assert.doesNotMatch(msg, /call stack/i);
    assert.match(msg, /nested too deep/);
  });

  test('duplicate keys, a key in another case and tabs are errors with their lines', () => {
    assert.match(configError('log:\n  level: info\n  level: debug\n'), /^cfg\.yaml:3: .*unique/);
    assert.match(configError('log:\n  Level: info\n'), /^cfg\.yaml:2: log\.Level: unknown key/);
    assert.match(configError('log:\n\tlevel: info\n'), /^cfg\.yaml:2: /);
  });

  test('durations: one too long to be a number, and one past what a timer can wait, are refused', () => {
    assert.match(configError(`http-proxy:\n  timeouts:\n    body: "${'9'.repeat(400)}s"\n`), /^cfg\.yaml:3: http-proxy\.timeouts\.body: invalid duration/);
    assert.match(configError('http-proxy:\n  timeouts:\n    body: 30d\n'), /^cfg\.yaml:3: http-proxy\.timeouts\.body: too long for a timer/);
    assert.match(configError('icap:\n  idle-timeout: 25d\n'), /^cfg\.yaml:2: icap\.idle-timeout: too long for a timer/);
    assert.match(configError('http-proxy:\n  timeouts:\n    body: 1e309s\n'), /^cfg\.yaml:3: /);
    assert.match(configError('http-proxy:\n  timeouts:\n    body: 1e309\n'), /^cfg\.yaml:3: /);
    // Ages and retentions are no timers: long ones stay valid.
    const c = parseConfigText('http-proxy:\n  timeouts:\n    body: 24d\nquarantine:\n  max-age: 365d\n', 'cfg.yaml');
    assert.equal(c['http-proxy'].timeouts.body, 24 * 86_400_000);
    assert.equal(c.quarantine['max-age'], 365 * 86_400_000);
  });

  test('sizes and ports out of range are refused with their lines', () => {
    assert.match(configError('scan:\n  max-checked-size: -1\n'), /^cfg\.yaml:2: scan\.max-checked-size: invalid size/);
    assert.match(configError('http-proxy:\n  connect-ports: [0]\n'), /^cfg\.yaml:2: /);
    assert.match(configError('http-proxy:\n  connect-ports: [65536]\n'), /^cfg\.yaml:2: /);
    assert.match(configError('clamd:\n  tcp-port: 65536\n'), /^cfg\.yaml:2: clamd\.tcp-port/);
  });

  test('listen addresses are checked by config check, not first at start', () => {
    for (const [section, value] of [
      ['http-proxy', '127.0.0.1:65536'],
      ['icap', '127.0.0.1:99999'],
      ['console', 'localhost'],
      ['smtp', '::1:25'],
      ['ftp-proxy', '127.0.0.1:'],
    ] as const) {
      assert.match(configError(`${section}:\n  listen: "${value}"\n`), new RegExp(`^cfg\\.yaml:2: ${section}\\.listen: expected host:port`), value);
    }
    const ok = parseConfigText('http-proxy:\n  listen: "[::1]:0"\nicap:\n  listen: 0.0.0.0:1344\n', 'cfg.yaml');
    assert.equal(ok['http-proxy'].listen, '[::1]:0');
  });
});

describe('config loader: hostile files', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-cfg-hostile-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('bytes that are not UTF-8: an error naming the file and line, not a silent U+FFFD', async () => {
    const file = join(dir, 'latin1.yaml');
    await writeFile(file, Buffer.concat([Buffer.from('log:\n  level: info\nhttp-proxy:\n  spool-dir: caf'), Buffer.from([0xe9]), Buffer.from('\n')]));
    await assert.rejects(loadConfig(file), (err: unknown) => {
      assert.ok(err instanceof AvgateError);
      assert.match(err.message, new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4: .*not UTF-8`));
      return true;
    });
  });

  test('a huge file is refused without being read whole', async () => {
    const file = join(dir, 'huge.yaml');
    await writeFile(file, 'log:\n  level: info\n');
    await truncate(file, 4 * 1024 * 1024 * 1024); // sparse: 4 GiB of zero bytes
    await assert.rejects(loadConfig(file), (err: unknown) => {
      assert.ok(err instanceof AvgateError);
      assert.match(err.message, new RegExp(`:1: the file has \\d+ bytes, a config may have at most ${MAX_CONFIG_BYTES}`));
      return true;
    });
  });
});
