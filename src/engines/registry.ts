import { AvgateError } from '../core/errors.js';
import { createClamdFileEngine } from './clamd/file.js';
import { createClamdNetEngine } from './clamd/net.js';
import { createIcapEngine } from './icap/engine.js';
import type { Engine, EngineFactory } from './types.js';

/** Built-in engine types. A plugin engine is loaded from its module instead (see runtime.ts). */
const BUILT_IN: Record<string, EngineFactory> = {
  'clamd-net': createClamdNetEngine,
  'clamd-file': createClamdFileEngine,
  icap: createIcapEngine as EngineFactory,
};

export function engineTypes(): string[] {
  return Object.keys(BUILT_IN);
}

export function createEngine(type: string): Engine {
  const factory = BUILT_IN[type];
  if (!factory) throw new AvgateError('AVG_ERR_ENGINE_UNKNOWN', `no engine type "${type}" (known: ${engineTypes().join(', ')})`);
  return factory();
}
