import { readFile } from 'node:fs/promises';
import { isMap, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import { AvgateError } from '../core/errors.js';
import { engineReferences } from './engine-refs.js';
import { configSchema, ENGINE_ID, type Config } from './schema.js';

export interface LoadedConfig {
  config: Readonly<Config>;
  /** The file it came from, or null for the embedded defaults. */
  path: string | null;
}

/** Reads and validates a config file; no path = the embedded defaults. */
export async function loadConfig(path: string | null): Promise<LoadedConfig> {
  if (path === null) return { config: deepFreeze(parseConfigText('', '(defaults)')), path: null };
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new AvgateError('AVG_ERR_CONFIG', `cannot read config ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return { config: deepFreeze(parseConfigText(text, path)), path };
}

/**
 * Parses YAML text into a validated config. Every problem is reported as `file:line: key: message`
 * — all of them at once, so an admin fixes a file in one pass.
 */
export function parseConfigText(text: string, label: string): Config {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const msgs = doc.errors.map((e) => {
      const line = e.pos ? lineCounter.linePos(e.pos[0]).line : '?';
      return `${label}:${line}: ${e.message.split('\n')[0]}`;
    });
    throw new AvgateError('AVG_ERR_CONFIG', msgs.join('\n'));
  }
  const raw: unknown = doc.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new AvgateError('AVG_ERR_CONFIG', `${label}:1: the config must be a mapping of keys`);
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const msgs = result.error.issues.map((issue) => {
      const path = issue.path.map(String);
      const unknown = issue.code === 'unrecognized_keys' ? issue.keys : [];
      if (unknown.length > 0) {
        return unknown
          .map((k) => `${label}:${lineOf(doc, lineCounter, [...path, k], true)}: ${[...path, k].join('.')}: unknown key`)
          .join('\n');
      }
      return `${label}:${lineOf(doc, lineCounter, path, false)}: ${path.join('.') || '(top)'}: ${issue.message}`;
    });
    throw new AvgateError('AVG_ERR_CONFIG', msgs.join('\n'));
  }
  const config = result.data;
  const problems: string[] = [];
  for (const ref of engineReferences(config)) {
    const key = ref.path.join('.');
    for (const id of ref.ids) {
      if (!(id in config.engines)) {
        problems.push(`${label}:${lineOf(doc, lineCounter, ref.path.map(String), false)}: ${key}: no engine "${id}" in engines`);
      }
    }
  }
  for (const [id, e] of Object.entries(config.engines)) {
    if (!ENGINE_ID.test(id)) {
      problems.push(`${label}:${lineOf(doc, lineCounter, ['engines', id], true)}: engines.${id}: engine ids are 1-32 lower-case letters, digits, - and _, starting with a letter`);
    }
    if (e.type === 'plugin' && !e.module) {
      problems.push(`${label}:${lineOf(doc, lineCounter, ['engines', id], true)}: engines.${id}: type plugin needs "module"`);
    }
  }
  if (problems.length > 0) throw new AvgateError('AVG_ERR_CONFIG', problems.join('\n'));
  return config;
}

/** Line of the deepest node on the path that exists in the document (1-based). */
function lineOf(doc: Document, lc: LineCounter, path: string[], keyNode: boolean): number | string {
  let node: unknown = doc.contents;
  let best: number | undefined = (doc.contents as { range?: [number, number, number] } | null)?.range?.[0];
  for (const key of path) {
    if (!isMap(node)) break;
    const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === key);
    if (!pair) break;
    const k = pair.key as { range?: [number, number, number] };
    const v = pair.value as { range?: [number, number, number] } | null;
    best = keyNode || !v?.range ? k.range?.[0] : v.range[0];
    node = pair.value;
  }
  return best === undefined ? '?' : lc.linePos(best).line;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
