import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SHARED_SLABS, Spool } from '../core/spool.js';
import { verdictLabel, type Verdict } from '../core/verdict.js';
import type { Logger } from '../core/logging.js';
import type { ScanRequest, ScanService } from '../scan/types.js';
import type { TokenScope, TokenStore } from './auth.js';
import { HttpError, queryOf, sendJson } from './http.js';
import { multipartBoundary, MultipartError, readMultipartFile } from './multipart.js';

/**
 * The scanning API: `POST /api/v1/scan?name=FILE` with a bearer token. The body (raw, or the one
 * file of a multipart/form-data form) is spooled like an ICAP body (memory, then a 0600 file)
 * and scanned by the runtime's scanner — the same limits and verdict cache as every front end.
 */
export interface ScanApiDeps {
  scanner: ScanService;
  tokens: TokenStore;
  maxUploadSize: number;
  spoolDir: string;
  /** Bodies up to this stay in memory. */
  spoolMemory: number;
  /** One line per scan (client, token, name, verdict, bytes, ms), as the front ends' access lines. */
  log?: Logger;
}

/**
 * The token name for `Authorization: Bearer TOKEN`; a 401 without a valid token, a 403 when the
 * token lacks the route's scope (a scanning token must not release quarantined malware).
 */
export async function bearer(req: IncomingMessage, tokens: TokenStore, scope: TokenScope): Promise<string> {
  const m = /^Bearer[ \t]+([A-Za-z0-9._~+/=-]{1,256})[ \t]*$/i.exec(req.headers.authorization ?? '');
  const grant = m ? await tokens.grant(m[1] as string) : null;
  if (grant === null) throw new HttpError(401, 'a valid API token is required (Authorization: Bearer TOKEN)', { 'WWW-Authenticate': 'Bearer realm="avgate"' });
  if (!grant.scopes.has(scope)) throw new HttpError(403, `the token "${grant.name}" lacks the scope "${scope}"`);
  return grant.name;
}

/** The request body, failing with 413 as soon as it outgrows `max`. */
async function* metered(req: IncomingMessage, max: number): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    n += chunk.length;
    if (n > max) throw new HttpError(413, `the body is larger than console.max-upload-size (${max} bytes)`);
    yield chunk;
  }
}

export function verdictJson(v: Verdict, sha256: string | null): Record<string, unknown> {
  const out: Record<string, unknown> = { status: v.status };
  if (v.status === 'found') out.names = v.names;
  if (v.status === 'skipped') out.reason = v.reason;
  if (v.status === 'unknown') out.reason = v.raw;
  if (v.status === 'error') out.reason = `${v.code}: ${v.cause}`;
  Object.assign(out, { engine: v.engine, signatureVersion: v.signatureVersion, durationMs: v.durationMs, cached: v.cached, bytes: v.bytes });
  if (sha256) out.sha256 = sha256;
  return out;
}

export async function handleScan(req: IncomingMessage, res: ServerResponse, deps: ScanApiDeps): Promise<void> {
  const token = await bearer(req, deps.tokens, 'scan');
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > deps.maxUploadSize) {
    // Refused before reading: the connection is closed rather than drained.
    throw new HttpError(413, `the body is larger than console.max-upload-size (${deps.maxUploadSize} bytes)`, { Connection: 'close' });
  }
  const query = queryOf(req.url ?? '/');
  let name = (query.get('name') ?? '').slice(0, 1024);
  const spool = new Spool(deps.spoolDir, deps.spoolMemory, { hash: deps.scanner.wantsHash, slabs: SHARED_SLABS });
  const abort = new AbortController();
  const onClose = () => {
    if (!res.writableEnded) abort.abort();
  };
  res.on('close', onClose);
  try {
    const body = metered(req, deps.maxUploadSize);
    const boundary = multipartBoundary(req.headers['content-type']);
    if (/^multipart\//i.test(req.headers['content-type'] ?? '') && boundary === null) throw new HttpError(400, 'multipart body without a boundary');
    if (boundary !== null) {
      try {
        const file = await readMultipartFile(body, boundary, (chunk) => spool.write(chunk));
        if (!name) name = file.fileName.slice(0, 1024);
      } catch (err) {
        if (err instanceof MultipartError) throw new HttpError(400, `bad multipart body: ${err.message}`);
        throw err;
      }
    } else {
      for await (const chunk of body) await spool.write(chunk as Buffer);
    }
    await spool.end();
    const path = spool.filePath();
    const request: ScanRequest = {
      source: path ? { kind: 'file', path, size: spool.size } : { kind: 'chunks', chunks: spool.memoryChunks },
      ...(name ? { name } : {}),
      ...(spool.contentHash ? { hash: spool.contentHash } : {}),
      ...(path ? {} : { toFile: () => spool.fileForScan() }),
      signal: abort.signal,
      origin: { source: 'api' },
    };
    const verdict = await deps.scanner.scan(request);
    // Fail closed: an engine error is not an answer about the content.
    // An infected upload's SHA-256, to look it up elsewhere. Only then: the cache key is another hash
    // (core/content-hash.ts), and a SHA-256 of every clean upload would cost what a cache hit saves.
    const sha256 = verdict.status === 'found' && !abort.signal.aborted ? await sha256Of(spool) : null;
    sendJson(res, verdict.status === 'error' ? 503 : 200, verdictJson(verdict, sha256));
    deps.log?.info(
      { client: req.socket.remoteAddress ?? '-', token, name: name || '-', verdict: verdictLabel(verdict), bytes: verdict.bytes, ms: Math.round(verdict.durationMs), ...(sha256 ? { sha256 } : {}) },
      'api: scan',
    );
  } finally {
    res.off('close', onClose);
    // Nothing of the body is still being written anywhere: its slabs go back to the pool.
    await spool.dispose(true);
  }
}

/** The upload's SHA-256, read through the spool (its open handle when on disk); null if that fails: the verdict still goes out. */
async function sha256Of(spool: Spool): Promise<string | null> {
  const h = createHash('sha256');
  const step = 1024 * 1024;
  try {
    for (let at = 0; at < spool.size; at += step) {
      const piece = await spool.readRange(at, Math.min(spool.size, at + step));
      if (piece.length !== Math.min(step, spool.size - at)) return null;
      h.update(piece);
    }
    return h.digest('hex');
  } catch {
    return null;
  }
}
