import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rename, rm, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { AppendLog } from '../../src/core/append-log.js';
import { createLogger, reopenLogFiles } from '../../src/core/logging.js';

const settle = () => new Promise((r) => setTimeout(r, 300));
const lines = (text: string) => text.split('\n').filter(Boolean).length;

test('SIGHUP reopen with a log path that cannot be opened (logrotate left a directory there): no crash, lines go on into the old files, the next reopen switches', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-reopen-'));
  try {
    const main = join(dir, 'avgate.log');
    const access = join(dir, 'access.log');
    const log = createLogger({ level: 'info', file: main });
    const accessLog = new AppendLog(access);
    log.info('one');
    accessLog.write('one\n');
    await settle();
    await rename(main, `${main}.1`);
    await rename(access, `${access}.1`);
    // Neither path can be opened as a file now (as root, permissions would not stop it).
    await mkdir(main);
    await mkdir(access);
    const first = reopenLogFiles();
    assert.equal(first.failed.length, 2, first.failed.join(' | '));
    assert.match(first.failed.join(' '), /EISDIR/);
    log.info('two');
    accessLog.write('two\n');
    await settle(); // an unhandled 'error' from the log stream would end the process here
    assert.equal(lines(await readFile(`${main}.1`, 'utf8')), 2, 'the main log goes on in its old file');
    assert.equal(lines(await readFile(`${access}.1`, 'utf8')), 2, 'the access log goes on in its old file');
    await rmdir(main);
    await rmdir(access);
    const second = reopenLogFiles();
    assert.deepEqual(second.failed, []);
    log.info('three');
    accessLog.write('three\n');
    await settle();
    assert.equal(lines(await readFile(main, 'utf8')), 1);
    assert.equal(lines(await readFile(access, 'utf8')), 1);
    assert.equal(lines(await readFile(`${main}.1`, 'utf8')), 2);
    await accessLog.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
