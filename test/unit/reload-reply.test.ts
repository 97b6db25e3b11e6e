import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatReload } from '../../src/cli/control.js';

test('avgate reload says what it did: applied sections, nothing, or only restart-only sections changed', () => {
  assert.equal(formatReload({ ok: true, result: 'applied', changed: ['icap'], restartNeeded: [] }), 'configuration reloaded; changed: icap\n');
  assert.equal(formatReload({ ok: true, result: 'unchanged', changed: [], restartNeeded: [] }), 'configuration unchanged: nothing rebuilt\n');
  assert.equal(
    formatReload({ ok: true, result: 'unchanged', changed: [], restartNeeded: ['signatures'] }),
    'nothing that a reload applies changed: nothing rebuilt\nthese sections changed but keep their running values until a restart: signatures\n',
  );
});
