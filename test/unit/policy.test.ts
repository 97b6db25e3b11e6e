import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Verdict, VerdictResult } from '../../src/core/verdict.js';
import { DEFAULT_PAGE, escapeHtml, renderPage } from '../../src/policy/block-page.js';
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
  const html = renderPage('{{URL}} {{NOPE}}', {
    TITLE: '', STATUS: '', REASON: '', VIRUS_NAMES: '', URL: '<script>', SERVICE: '', ENGINE: '', SIGNATURE_VERSION: '', TIME: '',
  });
  assert.equal(html, '&#60;script&#62; {{NOPE}}');
  for (const name of ['VIRUS_NAMES', 'URL', 'SERVICE', 'ENGINE', 'SIGNATURE_VERSION', 'STATUS', 'REASON']) {
    assert.ok(DEFAULT_PAGE.includes(`{{${name}}}`), name);
  }
});
