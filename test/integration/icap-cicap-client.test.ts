import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CLAMAV_TESTFILES_DIR, eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startTestIcap } from '../helpers/avgate-icap.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';

// Debian's c-icap-client against avgate's ICAP server. c-icap-client exits 0 even when the exchange
// failed, so every check reads what it printed: with -v the ICAP response head (and the
// encapsulated HTTP head) on stderr, the body on stdout or in the -o file.

const THREAT = /^Avgate\.Test\.(EICAR\.(HDB|NDB)|ClamExe)(\.UNOFFICIAL)?$/;
const CLIENT_TIMEOUT_MS = 30_000;
const CONCURRENCY = 4;
const PREVIEW = 1024;

interface Target {
  port: number;
  url(service?: string): string;
  stop(): Promise<void>;
}

interface Head {
  status: string;
  code: number;
  headers: Map<string, string[]>;
}

interface ClientRun {
  args: string[];
  stdout: Buffer;
  stderr: string;
  /** The "OPTIONS:" summary c-icap-client prints after an OPTIONS exchange (Allow 204, Preview ...). */
  summary: Map<string, string>;
  icap: Head | null;
  /** The encapsulated HTTP head ("RESPMOD HEADERS:"), when the response had one. */
  http: Head | null;
  /** SHA-256 of the -o file, or null when c-icap-client did not write one (204). */
  outSha256: string | null;
  /** The first 64 KB of the body: of the -o file, or of stdout without -o. */
  body: Buffer;
  outBytes: number;
  timedOut: boolean;
}

/** The tab-indented lines that follow `title` in c-icap-client's -v output. */
function section(text: string, title: string): string[] | null {
  const lines = text.split('\n');
  const at = lines.findIndex((l) => l.trim() === title);
  if (at < 0) return null;
  const out: string[] = [];
  for (const l of lines.slice(at + 1)) {
    if (!l.startsWith('\t')) break;
    out.push(l.slice(1).replace(/\r$/, ''));
  }
  return out;
}

function parseHead(lines: string[] | null): Head | null {
  if (!lines || lines.length === 0) return null;
  const status = lines[0] as string;
  const m = /^(?:ICAP|HTTP)\/1\.[01] (\d{3})\b/.exec(status);
  const headers = new Map<string, string[]>();
  for (const l of lines.slice(1)) {
    // c-icap-client prints multi-line header values as extra lines: only "Name: value" lines count
    const h = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(l);
    if (!h) continue;
    const name = (h[1] as string).toLowerCase();
    headers.set(name, [...(headers.get(name) ?? []), h[2] as string]);
  }
  return { status, code: m ? Number(m[1]) : NaN, headers };
}

function header(h: Head | null, name: string): string | undefined {
  return h?.headers.get(name.toLowerCase())?.[0];
}

let outCounter = 0;

function runClient(target: Target, workDir: string, args: string[], opts: { service?: string; output?: boolean } = {}): Promise<ClientRun> {
  // c-icap-client refuses to overwrite an existing -o file, so every run gets a fresh name
  const outPath = opts.output === false ? null : join(workDir, `out-${process.pid}-${outCounter++}`);
  const full = ['-i', '127.0.0.1', '-p', String(target.port), '-s', opts.service ?? 'avscan', '-v', ...args, ...(outPath ? ['-o', outPath] : [])];
  return new Promise((resolve, reject) => {
    execFile('c-icap-client', full, { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024, timeout: CLIENT_TIMEOUT_MS, killSignal: 'SIGKILL' }, (err, stdout, stderrBuf) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new Error('c-icap-client is not installed (scripts/system-deps.sh)'));
      const stderr = stderrBuf.toString('latin1');
      const summary = new Map<string, string>();
      for (const l of section(stderr, 'OPTIONS:') ?? []) {
        const m = /^([^:]+):\s*(.*)$/.exec(l);
        if (m) summary.set(m[1] as string, m[2] as string);
      }
      let outSha256: string | null = null;
      let outBytes = 0;
      let body = stdout.subarray(0, 64 * 1024);
      if (outPath && existsSync(outPath)) {
        const data = readFileSync(outPath);
        outSha256 = sha256(data);
        outBytes = data.length;
        body = data.subarray(0, 64 * 1024);
      }
      const run: ClientRun = {
        args: full,
        stdout,
        stderr,
        summary,
        icap: parseHead(section(stderr, 'ICAP HEADERS:')),
        http: parseHead(section(stderr, 'RESPMOD HEADERS:')),
        outSha256,
        body,
        outBytes,
        timedOut: Boolean(err && err.killed),
      };
      const cleanup = outPath ? rm(outPath, { force: true }) : Promise.resolve();
      cleanup.then(() => resolve(run), reject);
    });
  });
}

function describeRun(r: ClientRun): string {
  return `c-icap-client ${r.args.join(' ')}${r.timedOut ? ` (killed after ${CLIENT_TIMEOUT_MS} ms)` : ''}\n--- stderr ---\n${r.stderr.slice(0, 3000)}\n--- body (${r.outSha256 === null ? `stdout, ${r.stdout.length}` : `-o file, ${r.outBytes}`} bytes) ---\n${r.body.toString('latin1').slice(0, 600)}`;
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
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

/** Why `r` is not a report of an infected object, or null when it is one. */
function notInfected(r: ClientRun): string | null {
  if (r.icap?.code !== 200) return `ICAP status ${r.icap?.status ?? '(none: no ICAP response head printed)'}`;
  if (r.http?.code !== 403) return `encapsulated HTTP status ${r.http?.status ?? '(none)'}, expected 403`;
  const xif = header(r.icap, 'X-Infection-Found');
  if (!xif) return 'no X-Infection-Found header';
  const m = /^Type=0; Resolution=2; Threat=([^;]+);$/.exec(xif.trim());
  if (!m) return `X-Infection-Found not in c-icap's form: ${xif}`;
  if (!THREAT.test(m[1] as string)) return `unexpected threat name ${m[1]}`;
  const page = r.body.toString('utf8');
  if (!page.includes((m[1] as string).replace(/\.UNOFFICIAL$/, ''))) return 'block page does not name the virus';
  if (!/avgate/i.test(page)) return 'block page does not say avgate';
  return null;
}

function assertInfected(r: ClientRun): void {
  const why = notInfected(r);
  assert.equal(why, null, `${why}\n${describeRun(r)}`);
}

/** A clean run: 204, or (where allowed) a 200 echo of exactly the bytes sent. */
function assertClean(r: ClientRun, sent: Buffer, allowed: { s204: boolean; s200: boolean }): void {
  const ctx = describeRun(r);
  assert.ok(!r.timedOut, `timed out\n${ctx}`);
  if (r.icap?.code === 204) {
    assert.ok(allowed.s204, `204 where the client did not allow it\n${ctx}`);
    assert.match(r.stderr, /No modification needed/, ctx);
    return;
  }
  assert.equal(r.icap?.code, 200, `expected ${allowed.s204 ? '204' : ''}${allowed.s204 && allowed.s200 ? ' or ' : ''}${allowed.s200 ? '200 echo' : ''}, got ${r.icap?.status ?? 'no ICAP response'}\n${ctx}`);
  assert.ok(allowed.s200, `200 where 204 was expected\n${ctx}`);
  assert.equal(r.http?.code, 200, `encapsulated HTTP status\n${ctx}`);
  assert.equal(header(r.icap, 'X-Infection-Found'), undefined, ctx);
  assert.equal(r.outBytes, sent.length, `echoed body length\n${ctx}`);
  assert.equal(r.outSha256, sha256(sent), `echoed body differs from the bytes sent\n${ctx}`);
}

describe('c-icap-client (Debian c-icap 0.5.10) against the ICAP server', () => {
  let clamd: TestClamd;
  let target: Target;
  let work: string;
  const files = new Map<string, Buffer>();
  const file = (name: string) => join(work, name);

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'avgate-cicap-client-'));
    clamd = await startTestClamd();
    target = await startTestIcap({ clamd });
    // built at runtime: no file of the repository holds these bytes
    const eicar = eicarBytes();
    const clean: Record<string, Buffer> = {
      'clean-empty.bin': Buffer.alloc(0),
      'clean-100.txt': Buffer.from('a clean text file, smaller than the preview\n'.repeat(2).slice(0, 100)),
      'clean-1024.bin': randomBytes(PREVIEW),
      'clean-1025.bin': randomBytes(PREVIEW + 1),
      'clean-12k.txt': Buffer.from('hello world\n'.repeat(1000)),
      'clean-40k.bin': randomBytes(40 * 1024),
      'clean-100k.bin': randomBytes(100 * 1024),
      'clean-libc.so': readFileSync('/usr/lib/x86_64-linux-gnu/libc.so.6'),
      'clean-3m.bin': randomBytes(3 * 1024 * 1024),
    };
    const infected: Record<string, Buffer> = {
      'eicar.com': eicar,
      // EICAR deep inside a bigger object: only a body signature over the whole stream finds it
      'eicar-inside-300k.bin': Buffer.concat([randomBytes(200 * 1024), eicar, randomBytes(100 * 1024)]),
    };
    for (const [name, data] of Object.entries({ ...clean, ...infected })) {
      files.set(name, data);
      await writeFile(file(name), data);
    }
  });

  after(() =>
    cleanupAll(
      target && (() => target.stop()),
      clamd && (() => clamd.stop()),
      work ? () => rm(work, { recursive: true, force: true }) : undefined,
    ),
  );

  test('OPTIONS: methods, ISTag, preview, Allow 204, TTL, null body', async () => {
    const r = await runClient(target, work, [], { output: false });
    const ctx = describeRun(r);
    assert.equal(r.icap?.code, 200, ctx);
    const methods = (header(r.icap, 'Methods') ?? '').split(',').map((s) => s.trim());
    assert.ok(methods.includes('RESPMOD'), ctx);
    assert.ok(methods.includes('REQMOD'), ctx);
    const istag = header(r.icap, 'ISTag') ?? '';
    // RFC 3507 4.7: a quoted string of at most 32 characters
    assert.match(istag, /^"[^"]{1,32}"$/, ctx);
    assert.ok(header(r.icap, 'Service'), ctx);
    assert.equal(header(r.icap, 'Preview'), String(PREVIEW), ctx);
    assert.equal(header(r.icap, 'Allow'), '204', ctx);
    assert.match(header(r.icap, 'Options-TTL') ?? '', /^\d+$/, ctx);
    assert.equal(header(r.icap, 'Encapsulated'), 'null-body=0', ctx);
    assert.ok(header(r.icap, 'Transfer-Preview'), ctx);
    assert.ok(!Number.isNaN(Date.parse(header(r.icap, 'Date') ?? '')), ctx);
    // what c-icap-client understood from it
    assert.equal(r.summary.get('Allow 204'), 'Yes', ctx);
    assert.equal(r.summary.get('Preview'), String(PREVIEW), ctx);
    assert.equal(r.summary.get('Keep alive'), 'Yes', ctx);
    assert.match(header(r.icap, 'Max-Connections') ?? '', /^\d+$/, ctx);
    // the same service under its default aliases, same ISTag
    for (const alias of ['srv_clamav', 'virus_scan', 'squidclamav']) {
      const a = await runClient(target, work, [], { service: alias, output: false });
      assert.equal(a.icap?.code, 200, describeRun(a));
      assert.equal(header(a.icap, 'ISTag'), istag, describeRun(a));
    }
  });

  test('OPTIONS for an unknown service: 404', async () => {
    const r = await runClient(target, work, [], { service: 'no-such-service', output: false });
    assert.equal(r.icap?.code, 404, describeRun(r));
  });

  test('EICAR: infected with preview, without preview, with -no204, and in REQMOD', async () => {
    for (const args of [[], ['-nopreview'], ['-no204'], ['-nopreview', '-no204'], ['-req', 'http://127.0.0.1/upload']]) {
      assertInfected(await runClient(target, work, [...args, '-f', file('eicar.com')]));
    }
  });

  test('EICAR deep inside a 300 KB object is found, with and without preview', async () => {
    for (const args of [[], ['-nopreview']]) {
      assertInfected(await runClient(target, work, [...args, '-f', file('eicar-inside-300k.bin')]));
    }
  });

  test('-no204: an infected 300 KB object is blocked or broken off, never delivered whole', async () => {
    const sent = files.get('eicar-inside-300k.bin') as Buffer;
    for (const args of [['-no204'], ['-no204', '-nopreview']]) {
      const r = await runClient(target, work, [...args, '-f', file('eicar-inside-300k.bin')]);
      const ctx = describeRun(r);
      assert.ok(!r.timedOut, `timed out\n${ctx}`);
      // Without Allow: 204 the server may have started a 200 echo before the verdict (early
      // response); then the only safe ending is to break the connection off before the last byte.
      assert.notEqual(r.outSha256, sha256(sent), `the infected object was delivered whole\n${ctx}`);
      assert.ok(r.outBytes < sent.length, `the infected object was delivered whole\n${ctx}`);
      if (header(r.icap, 'X-Infection-Found') !== undefined) assertInfected(r);
    }
  });

  test('every file of clamav-testfiles is reported infected, with and without preview', async () => {
    const names = readdirSync(CLAMAV_TESTFILES_DIR)
      .filter((n) => statSync(join(CLAMAV_TESTFILES_DIR, n)).isFile())
      .sort();
    assert.ok(names.length >= 40, `clamav-testfiles looks incomplete (${names.length} files in ${CLAMAV_TESTFILES_DIR})`);
    const jobs = names.flatMap((n) => [
      { name: n, args: [] as string[] },
      { name: n, args: ['-nopreview'] },
    ]);
    const runs = await mapLimit(jobs, CONCURRENCY, (j) => runClient(target, work, [...j.args, '-f', join(CLAMAV_TESTFILES_DIR, j.name)]));
    const failures = runs
      .map((r, i) => ({ r, j: jobs[i] as (typeof jobs)[number], why: notInfected(r) }))
      .filter((x) => x.why !== null);
    assert.equal(
      failures.length,
      0,
      `${failures.length} of ${jobs.length} runs not reported infected:\n${failures
        .map((f) => `- ${f.j.name} ${f.j.args.join(' ')}: ${f.why}`)
        .join('\n')}\nfirst failure:\n${failures[0] ? describeRun(failures[0].r) : ''}`,
    );
  });

  test('clean files get 204, with and without preview', async () => {
    const names = [...files.keys()].filter((n) => n.startsWith('clean-'));
    const jobs = names.flatMap((n) => [
      { name: n, args: [] as string[] },
      { name: n, args: ['-nopreview'] },
    ]);
    await mapLimit(jobs, CONCURRENCY, async (j) => {
      const sent = files.get(j.name) as Buffer;
      const r = await runClient(target, work, [...j.args, '-f', file(j.name)]);
      // The client allows 204 everywhere. A server that starts its answer early (before the whole
      // body has arrived, for Squid 5.7) can no longer say 204 for big objects: then a faithful echo.
      assertClean(r, sent, { s204: true, s200: sent.length > 32 * 1024 });
    });
  });

  test('-no204: clean files come back 200 with the same bytes, with and without preview', async () => {
    const names = [...files.keys()].filter((n) => n.startsWith('clean-'));
    const jobs = names.flatMap((n) => [
      { name: n, args: ['-no204'] },
      { name: n, args: ['-no204', '-nopreview'] },
    ]);
    await mapLimit(jobs, CONCURRENCY, async (j) => {
      const sent = files.get(j.name) as Buffer;
      const r = await runClient(target, work, [...j.args, '-f', file(j.name)]);
      // RFC 3507 4.5: a 204 is allowed in answer to a preview even without Allow: 204, which
      // is the case when the whole object fitted into the preview
      const wholeInPreview = !j.args.includes('-nopreview') && sent.length <= PREVIEW;
      assertClean(r, sent, { s204: wholeInPreview, s200: true });
    });
  });
});
