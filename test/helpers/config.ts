import assert from 'node:assert/strict';
import { parseConfigText } from '../../src/config/loader.js';

/** The message of the config error `text` (as file avgate.yaml) must give; fails the test when it parses. */
export function configError(text: string): string {
  try {
    parseConfigText(text, 'avgate.yaml');
  } catch (err) {
    assert.equal((err as { code?: string }).code, 'AVG_ERR_CONFIG');
    return (err as Error).message;
  }
  assert.fail('expected a config error');
}
