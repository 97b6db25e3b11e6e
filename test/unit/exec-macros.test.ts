import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { expandExecMacros } from '../../src/scan/actions.js';

/** What /bin/sh prints for the template with FULLPATH set to `value`. */
function run(template: string, value: string): string {
  return execFileSync('/bin/sh', ['-c', expandExecMacros(template)], { env: { ...process.env, AVGATE_FULLPATH: value }, cwd: '/', encoding: 'utf8' });
}

test('--exec macros: the value is one word wherever the macro stands (bare, in double or single quotes), never split, globbed or run', () => {
  const hostile = ['/srv/up/a *', '/srv/up/x -rf ..', "/srv/up/it's \"q\" $(touch /tmp/pwned) `id`", '/srv/up/back\\slash'];
  for (const value of hostile) {
    assert.equal(run("printf '<%s>\\n' %FULLPATH%", value), `<${value}>\n`, 'bare');
    assert.equal(run("printf '<%s>\\n' \"%FULLPATH%\"", value), `<${value}>\n`, 'in double quotes');
    assert.equal(run("printf '<%s>\\n' \"[%FULLPATH%] done\"", value), `<[${value}] done>\n`, 'inside a double-quoted text');
    assert.equal(run("printf '<%s>\\n' '[%FULLPATH%]'", value), `<[${value}]>\n`, 'inside single quotes');
  }
  // An escaped quote does not open a quoted text.
  assert.equal(run('printf \'<%s>\\n\' \\"%FULLPATH%', 'a b'), '<"a b>\n');
  assert.equal(expandExecMacros('logger found %VIRUSNAMES% in %FULLPATH%'), 'logger found "$AVGATE_VIRUSNAMES" in "$AVGATE_FULLPATH"');
});
