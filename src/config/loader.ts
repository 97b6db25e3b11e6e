import { readFile, stat } from 'node:fs/promises';
import { isMap, isScalar, LineCounter, parseDocument, visit, type Document } from 'yaml';
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
  let bytes: Buffer;
  try {
    // A config is a few dozen KiB: a huge file (or a device) is refused before it is read into memory.
    const size = (await stat(path)).size;
    if (size > MAX_CONFIG_BYTES) {
      throw new AvgateError('AVG_ERR_CONFIG', `${path}:1: the file has ${size} bytes, a config may have at most ${MAX_CONFIG_BYTES}`);
    }
    bytes = await readFile(path);
  } catch (err) {
    if (err instanceof AvgateError) throw err;
    throw new AvgateError('AVG_ERR_CONFIG', `cannot read config ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (bytes.length > MAX_CONFIG_BYTES) {
    throw new AvgateError('AVG_ERR_CONFIG', `${path}:1: the file has more than ${MAX_CONFIG_BYTES} bytes, the most a config may have`);
  }
  return { config: deepFreeze(parseConfigText(decodeUtf8(bytes, path), path)), path };
}

/** Largest config file read (bytes). */
export const MAX_CONFIG_BYTES = 1024 * 1024;

/**
 * The file as UTF-8 text. Bytes that are not UTF-8 (a Latin-1 path, say) are an error naming
 * their line, never silently turned into U+FFFD.
 */
function decodeUtf8(bytes: Buffer, label: string): string {
  const strict = new TextDecoder('utf-8', { fatal: true });
  try {
    return strict.decode(bytes);
  } catch {
    let line = 1;
    let start = 0;
    for (;;) {
      const nl = bytes.indexOf(0x0a, start);
      const end = nl < 0 ? bytes.length : nl;
      try {
        strict.decode(bytes.subarray(start, end));
      } catch {
        break;
      }
      if (nl < 0) break;
      line++;
      start = nl + 1;
    }
    throw new AvgateError('AVG_ERR_CONFIG', `${label}:${line}: bytes that are not UTF-8 (the config must be UTF-8 text)`);
  }
}

/**
 * Parses YAML text into a validated config. Every problem is reported as `file:line: key: message`
 * — all of them at once, so an admin fixes a file in one pass.
 */
export function parseConfigText(text: string, label: string): Config {
  const deep = tooDeepFlowLine(text);
  if (deep !== null) {
    throw new AvgateError('AVG_ERR_CONFIG', `${label}:${deep}: [ ] and { } nested more than ${MAX_FLOW_DEPTH} deep: not a config`);
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const msgs = doc.errors.map((e) => {
      const line = e.pos ? lineCounter.linePos(e.pos[0]).line : '?';
      const first = e.message.split('\n')[0] ?? '';
      // yaml's composer recurses per level: a stack overflow means nesting far past any config.
      return `${label}:${line}: ${/call stack/i.test(first) ? 'nested too deep: not a config' : first}`;
    });
    throw new AvgateError('AVG_ERR_CONFIG', msgs.join('\n'));
  }
  let raw: unknown;
  try {
    raw = doc.toJS() ?? {};
  } catch (err) {
    // yaml refuses aliases that expand past maxAliasCount ("billion laughs"): name the first alias.
    throw new AvgateError('AVG_ERR_CONFIG', `${label}:${firstAliasLine(doc, lineCounter)}: ${aliasProblem(err)}`);
  }
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

/** Flow collections ([ ], { }) nested deeper than this are refused before yaml parses them. */
export const MAX_FLOW_DEPTH = 100;

/**
 * The line where flow collections first nest past MAX_FLOW_DEPTH, or null. yaml's parser and
 * composer recurse per level, so "[[[[…" a megabyte long costs seconds and gigabytes before it
 * fails. A rough lexer: brackets inside quotes and comments do not count.
 */
function tooDeepFlowLine(text: string): number | null {
  let depth = 0;
  let line = 1;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\n') {
      line++;
      continue;
    }
    if (quote === '"') {
      if (c === '\\') i++;
      else if (c === '"') quote = null;
      continue;
    }
    if (quote === "'") {
      if (c === "'") quote = null;
      continue;
    }
    if (c === '#' && (i === 0 || /\s/.test(text[i - 1] as string))) {
      const nl = text.indexOf('\n', i);
      if (nl < 0) break;
      i = nl - 1;
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === '[' || c === '{') {
      if (++depth > MAX_FLOW_DEPTH) return line;
    } else if ((c === ']' || c === '}') && depth > 0) {
      depth--;
    }
  }
  return null;
}

function aliasProblem(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return /alias/i.test(msg) ? 'aliases (*name) expand too much: the document would grow past what a config needs' : msg.split('\n')[0] ?? msg;
}

/** Line of the first alias (`*name`) in the document, or 1 when there is none. */
function firstAliasLine(doc: Document, lc: LineCounter): number {
  let line = 1;
  visit(doc, {
    Alias(_key, node) {
      if (node.range) line = lc.linePos(node.range[0]).line;
      return visit.BREAK;
    },
  });
  return line;
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
