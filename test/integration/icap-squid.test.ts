import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CLAMAV_TESTFILES_DIR, eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestIcap } from '../helpers/avgate-icap.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { generatedSha256, startTestOrigin, type TestOrigin } from '../helpers/origin.js';
import { startTestSquid, type TestSquid } from '../helpers/squid.js';

// A real Squid 5.7 (Debian) with the ICAP server as its RESPMOD service (bypass=0), in front of a
// local origin; curl fetches through Squid. Squid 5.7 stalls on bodies over 64 KB unless the ICAP
// server answers before the whole body has arrived (Squid bug 5352), so every fetch has a deadline
// and running into it is reported as a stall.

const THREAT = /Avgate\.Test\.(EICAR\.(HDB|NDB)|ClamExe)/;
const FETCH_TIMEOUT_S = 60;
const BIG_FETCH_TIMEOUT_S = 120;
const BIG_BYTES = 200 * 1024 * 1024;
const CONCURRENCY = 4;
const KB = 1024;

interface Target {
  port: number;
  url(service?: string): string;
  stop(): Promise<void>;
}

interface Fetch {
  url: string;
  /** curl's exit code (0 ok, 28 timeout, 18/56 transfer broken off ...). */
  exit: number | null;
  httpCode: number;
  bytes: number;
  sha256: string;
  /** The first 64 KB of the body (for block pages). */
  head: Buffer;
  stderr: string;
  ms: number;
  maxTimeS: number;
}

/** curl through the proxy; the body is hashed as it streams, never stored. */
function fetchVia(squid: TestSquid, url: string, maxTimeS = FETCH_TIMEOUT_S): Promise<Fetch> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(
      'curl',
      ['-sS', '--max-time', String(maxTimeS), '--noproxy', '', '-x', squid.proxyUrl, '-o', '-', '-w', '%{stderr}\nCURL-RESULT %{http_code} %{size_download}\n', url],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const hash = createHash('sha256');
    const head: Buffer[] = [];
    let headBytes = 0;
    let bytes = 0;
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      hash.update(d);
      bytes += d.length;
      if (headBytes < 64 * KB) {
        head.push(d);
        headBytes += d.length;
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('latin1')));
    child.once('error', reject);
    child.once('close', (exit) => {
      const m = /CURL-RESULT (\d{3}) (\d+)/.exec(stderr);
      resolve({
        url,
        exit,
        httpCode: m ? Number(m[1]) : 0,
        bytes,
        sha256: hash.digest('hex'),
        head: Buffer.concat(head).subarray(0, 64 * KB),
        stderr: stderr.replace(/\n?CURL-RESULT .*\n?/, '').trim(),
        ms: Date.now() - started,
        maxTimeS,
      });
    });
  });
}

function describeFetch(f: Fetch, expectedBytes?: number): string {
  return `${f.url}: curl exit ${f.exit}, HTTP ${f.httpCode}, ${f.bytes}${expectedBytes !== undefined ? ` of ${expectedBytes}` : ''} bytes in ${f.ms} ms${f.stderr ? ` (${f.stderr})` : ''}`;
}

const STALL_HINT =
  'Squid 5.7 stops moving a response body when the ICAP server holds its answer back (Squid bug 5352: ' +
  'at 64 KB before any answer; measured here also at about 2.7-3.3 MB of body sent after an early 200 head with no body bytes yet)';

/**
 * What went wrong with a fetch that should have delivered `expected`, or null. A stall is the
 * failure this suite exists for, so it is named plainly: curl's deadline (exit 28), or a transfer
 * broken off after sitting idle for a long time (the ICAP server's read timeout gave up).
 */
function fetchProblem(f: Fetch, expected: { bytes: number; sha256: string }): string | null {
  const what = describeFetch(f, expected.bytes);
  if (f.exit === 28) return `STALL (curl deadline of ${f.maxTimeS} s) ${what}`;
  if (f.exit !== 0 && f.ms >= 20_000) return `STALL, then broken off after ${Math.round(f.ms / 1000)} s: ${what}`;
  if (f.exit !== 0 || f.httpCode !== 200) return `FAILED ${what}`;
  if (f.bytes !== expected.bytes || f.sha256 !== expected.sha256) return `DIFFERENT BYTES ${what}`;
  return null;
}

function assertDelivered(fetches: Fetch[], expected: { bytes: number; sha256: string; label: string }[], squid: TestSquid): void {
  const bad = fetches
    .map((f, i) => {
      const e = expected[i] as { bytes: number; sha256: string; label: string };
      const p = fetchProblem(f, e);
      return p === null ? null : `${e.label}: ${p}`;
    })
    .filter((p): p is string => p !== null);
  assert.equal(
    bad.length,
    0,
    `${bad.length} of ${fetches.length} clean objects did not arrive intact` +
      `${bad.some((b) => b.includes('STALL')) ? ` (${STALL_HINT})` : ''}:\n${bad.join('\n')}\n--- squid cache.log ---\n${squid.logTail(1500)}`,
  );
}

/** A deadline hit is reported as a stall, not as a bare exit code. */
function assertNoStall(f: Fetch, expectedBytes?: number): void {
  assert.notEqual(f.exit, 28, `STALL: no complete answer within ${f.maxTimeS} s — ${describeFetch(f, expectedBytes)}. ${STALL_HINT}`);
}

function assertBlocked(f: Fetch, squid: TestSquid): void {
  const ctx = `${describeFetch(f)}\n--- body ---\n${f.head.toString('utf8').slice(0, 1500)}\n--- squid cache.log ---\n${squid.logTail(1500)}`;
  assertNoStall(f);
  assert.equal(f.exit, 0, ctx);
  assert.equal(f.httpCode, 403, ctx);
  const page = f.head.toString('utf8');
  assert.match(page, THREAT, `block page does not name the virus\n${ctx}`);
  assert.match(page, /avgate/i, `block page does not say avgate\n${ctx}`);
}

interface CorpusFile {
  name: string;
  path: string;
  size: number;
  sha256: string;
}

/** Evenly spaced picks from a sorted list: deterministic, and spread over the whole range. */
function spread<T>(items: readonly T[], n: number): T[] {
  if (items.length <= n) return [...items];
  return Array.from({ length: n }, (_, i) => items[Math.floor((i * items.length) / n)] as T);
}

async function regularFiles(dir: string, recursive: boolean): Promise<string[]> {
  const out: string[] = [];
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    // symlinks are left out: they would duplicate files and may point anywhere
    if (e.isFile()) out.push(p);
    else if (recursive && e.isDirectory()) out.push(...(await regularFiles(p, true)));
  }
  return out;
}

async function withSizes(paths: string[]): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  for (const path of paths) {
    // the test signatures are in clamav's own files; nothing from there belongs in a clean corpus
    if (path.includes('clamav')) continue;
    try {
      out.push({ path, size: (await stat(path)).size });
    } catch {
      // unreadable: not part of the corpus
    }
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/**
 * ~30 real files picked deterministically: ELF libraries and .gz archives of 100 KB–2 MB (where
 * Squid 5.7 + c-icap stalls), files just over 64 KB, and small ones down to a few bytes.
 */
async function pickCorpus(): Promise<{ path: string; size: number }[]> {
  const libs = await withSizes((await regularFiles('/usr/lib/x86_64-linux-gnu', false)).filter((p) => /\.so(\.|$)/.test(p)));
  const share = await withSizes(await regularFiles('/usr/share', true));
  const elf: { path: string; size: number }[] = [];
  for (const f of libs.filter((f) => f.size >= 100 * KB && f.size <= 2048 * KB)) {
    const magic = (await readFile(f.path)).subarray(0, 4);
    if (magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) elf.push(f);
  }
  const between = (lo: number, hi: number) => share.filter((f) => f.size >= lo && f.size < hi);
  return [
    ...spread(elf, 12),
    ...spread(
      share.filter((f) => f.path.endsWith('.gz') && f.size >= 100 * KB && f.size <= 2048 * KB),
      8,
    ),
    ...spread(between(64 * KB + 1, 100 * KB), 4),
    ...spread(between(32 * KB, 64 * KB), 2),
    ...spread(between(1 * KB + 1, 32 * KB), 2),
    ...spread(between(1, 1 * KB + 1), 2),
  ];
}

describe('Squid 5.7 with the ICAP server as RESPMOD service, in front of a local origin', () => {
  let clamd: TestClamd;
  let target: Target;
  let origin: TestOrigin;
  let squid: TestSquid;
  let work: string;
  const corpus: CorpusFile[] = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'avgate-squid-test-'));
    // the 200 MB object must be scanned, not refused by clamd's INSTREAM limit, nor reported as
    // Heuristics.Limits.Exceeded.MaxFileSize (AlertExceedsMax is on, MaxFileSize is 100M by default)
    clamd = await startTestClamd({ streamMaxLength: '300M', extra: { MaxFileSize: '300M', MaxScanSize: '300M' } });
    // ... nor skipped by avgate's own size limits
    target = await startTestIcap({
      clamd,
      // capped: a service whose limit the big objects are over (answered without storing them)
      icapYaml: 'services:\n  avscan:\n    max-object-size: 300MiB\n  capped:\n    max-object-size: 1MiB\n',
      yaml: 'scan:\n  max-checked-size: 300MiB\n',
    });
    // built and copied at runtime: no file of the repository holds these bytes
    const eicar = eicarBytes();
    await writeFile(join(work, 'eicar.com'), eicar);
    await copyFile(join(CLAMAV_TESTFILES_DIR, 'clam.pdf'), join(work, 'clam.pdf'));
    await writeFile(join(work, 'eicar-inside-1m.bin'), Buffer.concat([Buffer.alloc(600 * KB, 0x61), eicar, Buffer.alloc(400 * KB, 0x62)]));
    const picked = await pickCorpus();
    picked.push({ path: join(work, 'empty.bin'), size: 0 });
    await writeFile(join(work, 'empty.bin'), Buffer.alloc(0));
    for (const [i, f] of picked.entries()) {
      const data = await readFile(f.path);
      if (data.includes(eicar)) continue;
      const name = `c${String(i).padStart(2, '0')}-${basename(f.path)}`;
      if (f.path !== join(work, name)) await writeFile(join(work, name), data);
      corpus.push({ name, path: f.path, size: data.length, sha256: createHash('sha256').update(data).digest('hex') });
    }
    origin = await startTestOrigin({ dir: work });
    squid = await startTestSquid({ icapUrl: target.url('avscan') });
  });

  after(() =>
    cleanupAll(
      squid && (() => squid.stop()),
      origin && (() => origin.stop()),
      target && (() => target.stop()),
      clamd && (() => clamd.stop()),
      work ? () => rm(work, { recursive: true, force: true }) : undefined,
    ),
  );

  test('the corpus covers the sizes that matter', () => {
    const over64k = corpus.filter((f) => f.size > 64 * KB).length;
    assert.ok(corpus.length >= 25, `only ${corpus.length} corpus files`);
    assert.ok(over64k >= 15, `only ${over64k} files over 64 KB`);
    assert.ok(corpus.some((f) => f.size === 0));
    assert.ok(corpus.some((f) => f.size > 0 && f.size <= 1024));
  });

  test('EICAR and clam.pdf get the block page (403)', async () => {
    for (const name of ['eicar.com', 'clam.pdf']) assertBlocked(await fetchVia(squid, origin.url(name)), squid);
  });

  test('EICAR inside a 1 MB object: never delivered whole, no stall', async (t) => {
    const f = await fetchVia(squid, origin.url('eicar-inside-1m.bin'));
    t.diagnostic(`outcome: ${describeFetch(f)}`);
    const ctx = describeFetch(f, 1024 * KB + 68);
    assertNoStall(f);
    // a 403 page, or (once the answer had started early) a transfer broken off before the end
    const complete = f.exit === 0 && f.httpCode === 200 && f.bytes === 1024 * KB + eicarBytes().length;
    assert.ok(!complete, `the infected object came through whole: ${ctx}`);
    if (f.exit === 0) assert.equal(f.httpCode, 403, ctx);
  });

  test('every clean file of the mixed corpus arrives byte for byte, no stall', async () => {
    const results = await mapLimit(corpus, CONCURRENCY, (f) => fetchVia(squid, origin.url(f.name)));
    assertDelivered(
      results,
      corpus.map((f) => ({ bytes: f.size, sha256: f.sha256, label: `${f.name} (from ${f.path})` })),
      squid,
    );
  });

  test('generated objects of 3, 8 and 32 MB arrive byte for byte, no stall', async () => {
    const sizes = [3 * KB * KB, 8 * KB * KB, 32 * KB * KB];
    const results = await Promise.all(sizes.map((n) => fetchVia(squid, origin.genUrl(n, `mid${n}`))));
    const expected = [];
    for (const n of sizes) expected.push({ bytes: n, sha256: await generatedSha256(n, `mid${n}`), label: `${n / KB / KB} MB` });
    assertDelivered(results, expected, squid);
  });

  test('a 200 MB generated object arrives byte for byte, no stall', async () => {
    const expected = await generatedSha256(BIG_BYTES, 'big');
    const f = await fetchVia(squid, origin.genUrl(BIG_BYTES, 'big'), BIG_FETCH_TIMEOUT_S);
    assertDelivered([f], [{ bytes: BIG_BYTES, sha256: expected, label: '200 MB' }], squid);
  });

  test('without ICAP preview: block page for EICAR and clam.pdf, exact bytes for clean files', async () => {
    const plain = await startTestSquid({ icapUrl: target.url('avscan'), preview: false });
    try {
      for (const name of ['eicar.com', 'clam.pdf']) assertBlocked(await fetchVia(plain, origin.url(name)), plain);
      const some = [...spread(corpus.filter((f) => f.size > 64 * KB), 4), ...corpus.filter((f) => f.size <= 1024)];
      const results = await mapLimit(some, CONCURRENCY, (f) => fetchVia(plain, origin.url(f.name)));
      assertDelivered(
        results,
        some.map((f) => ({ bytes: f.size, sha256: f.sha256, label: f.name })),
        plain,
      );
    } finally {
      await plain.stop();
    }
  });

  test('over max-object-size (1 MiB): a 32 MB object gets the 403 page at once, with and without preview, and the next object still passes', async () => {
    const small = corpus.find((f) => f.size > KB && f.size < 64 * KB) as CorpusFile;
    for (const preview of [true, false]) {
      const proxy = await startTestSquid({ icapUrl: target.url('capped'), preview });
      try {
        // Twice: the ICAP connection Squid keeps for the next request must still be in order.
        for (const seed of ['capped-a', 'capped-b']) {
          const f = await fetchVia(proxy, origin.genUrl(32 * KB * KB, seed));
          const ctx = `preview ${preview}: ${describeFetch(f)}\n--- body ---\n${f.head.toString('utf8').slice(0, 1500)}\n--- squid cache.log ---\n${proxy.logTail(1500)}`;
          assertNoStall(f);
          assert.equal(f.exit, 0, ctx);
          assert.equal(f.httpCode, 403, ctx);
          assert.match(f.head.toString('utf8'), /max-object-size/, ctx);
        }
        const g = await fetchVia(proxy, origin.url(small.name));
        assertDelivered([g], [{ bytes: small.size, sha256: small.sha256, label: `${small.name} after the refused ones (preview ${preview})` }], proxy);
      } finally {
        await proxy.stop();
      }
    }
  });
});

/** Runs `fn` over `items` with at most `limit` at a time; results in input order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, () => worker()));
  return results;
}

/** Runs every cleanup even when one fails (a failed stop must not leave the next process running). */
async function cleanupAll(...steps: Array<(() => Promise<unknown>) | undefined>): Promise<void> {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      await step?.();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
}
