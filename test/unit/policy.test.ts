import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { configWarnings } from '../../src/config/check.js';
import { parseConfigText } from '../../src/config/loader.js';
import type { Verdict, VerdictResult } from '../../src/core/verdict.js';
import { DEFAULT_PAGE, escapeHtml, renderPage, unknownPageNames } from '../../src/policy/block-page.js';
import { decide } from '../../src/policy/verdict-policy.js';

const v = (r: VerdictResult): Verdict => ({ ...r, engine: 'e', signatureVersion: '1', durationMs: 1, bytes: 1, cached: false });
const BLOCK = { found: 403, skipped: 403, unknown: 403, error: 503 };

test('only free passes by default; each blocked status gets its HTTP status', () => {
  const p = { acceptStatus: ['free'] as const, blockStatus: BLOCK };
  assert.deepEqual(decide(v({ status: 'free' }), p), { action: 'pass', note: null });
  assert.deepEqual(decide(v({ status: 'found', names: ['X'] }), p), { action: 'block', httpStatus: 403, reason: 'infected: X' });
  assert.equal((decide(v({ status: 'error', code: 'AVG_ERR_ENGINE_CONNECT', cause: 'x' }), p) as { httpStatus: number }).httpStatus, 503);
  assert.equal(decide(v({ status: 'skipped', reason: 'big' }), p).action, 'block');
  assert.equal(decide(v({ status: 'unknown', raw: '?' }), p).action, 'block');
});

test('accepted non-free verdicts pass with a note', () => {
  const p = { acceptStatus: ['free', 'skipped'] as const, blockStatus: BLOCK };
  assert.deepEqual(decide(v({ status: 'skipped', reason: 'big' }), p), { action: 'pass', note: 'skipped; not scanned: big' });
});

test('pages: every value is HTML-escaped; unknown placeholders stay visible', () => {
  assert.equal(escapeHtml(`<a href="x">'&'</a>`), '&#60;a href=&#34;x&#34;&#62;&#39;&#38;&#39;&#60;/a&#62;');
  const html = renderPage('{{URL}} {{NOPE}} {{CLIENT}} {{USER}}', {
    TITLE: '', STATUS: '', REASON: '', VIRUS_NAMES: '', URL: '<script>', SERVICE: '', ENGINE: '', SIGNATURE_VERSION: '', TIME: '', CLIENT: '192.0.2.1', USER: 'j<d>',
  });
  assert.equal(html, '&#60;script&#62; {{NOPE}} 192.0.2.1 j&#60;d&#62;');
  assert.deepEqual(unknownPageNames('{{URL}} {{NOPE}} {{VIRUS}} {{NOPE}} {{CLIENT}}'), ['NOPE', 'VIRUS']);
  assert.deepEqual(unknownPageNames(DEFAULT_PAGE), []);
  for (const name of ['VIRUS_NAMES', 'URL', 'SERVICE', 'ENGINE', 'SIGNATURE_VERSION', 'STATUS', 'REASON']) {
    assert.ok(DEFAULT_PAGE.includes(`{{${name}}}`), name);
  }
});

test('config check warns about a page template using {{NAMES}} nothing fills (squidclamav/HAVP macros, typos)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-page-'));
  try {
    const page = join(dir, 'page.html');
    await writeFile(page, '<p>{{VIRUS}} at {{URL}} for {{CLIENT}} {{USER}}</p>');
    const warn = configWarnings(parseConfigText(`http-proxy: {block-page: ${page}}\nicap: {services: {avscan: {block-page: ${page}}}}\n`, 'x.yaml')).filter((w) => /block-page/.test(w));
    assert.equal(warn.length, 2, warn.join('\n'));
    assert.match(warn[0] ?? '', /^http-proxy\.block-page \(.*page\.html\) uses \{\{VIRUS\}\}, which no page fills/);
    assert.match(warn[1] ?? '', /^icap\.services\.avscan\.block-page /);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
