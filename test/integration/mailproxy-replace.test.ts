import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/core/logging.js';
import { Spool } from '../../src/core/spool.js';
import { loadReplacement, scanAndReplace, BUILT_IN_REPLACEMENT, type ReplaceDeps, type ReplaceResult } from '../../src/mailproxy/index.js';
import type { MessageInput } from '../../src/mime/index.js';
import { VerdictCache } from '../../src/cache/verdict-cache.js';
import type { Scanner } from '../../src/scan/scanner.js';
import type { ScanService } from '../../src/scan/types.js';
import { clamdScanner, startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { type CorpusMessage, deadScanner, mailCorpus, partDigests, PROXY_SCANNER_LIMITS, proxyPolicy, proxyScanner, sha256 } from '../helpers/mailproxy.js';

async function bytesOf(out: MessageInput): Promise<Buffer> {
  if (Buffer.isBuffer(out)) return out;
  if (out instanceof Spool) return out.readRange(0, out.size);
  throw new Error('unexpected output kind');
}

describe('mail proxy replacer (src/mailproxy) with a real clamd', () => {
  let clamd: TestClamd;
  let dir: string;
  let scanner: Scanner;
  let dead: Scanner;
  const corpus = mailCorpus('r');
  const msg = (name: string) => corpus.find((m) => m.name === name) as CorpusMessage;
  const deps = (over: Partial<ReplaceDeps> = {}): ReplaceDeps => ({
    scanner,
    policy: proxyPolicy(),
    replacement: BUILT_IN_REPLACEMENT,
    spoolDir: join(dir, 'spool'),
    log: silentLogger(),
    origin: { source: 'pop3' },
    ...over,
  });
  const results: ReplaceResult[] = [];
  const run = async (input: MessageInput, d: ReplaceDeps = deps()) => {
    const r = await scanAndReplace(input, d);
    results.push(r);
    return { r, out: await bytesOf(r.output) };
  };

  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-mailproxy-'));
    scanner = proxyScanner(`unix:${clamd.socketPath}`, clamd.dbDir);
    dead = deadScanner();
  });
  after(async () => {
    for (const r of results) await r.dispose();
    await scanner.close();
    await dead.close();
    await clamd.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('a clean message is returned as it was (same object, clean status)', async () => {
    for (const name of ['clean', 'plain']) {
      const m = msg(name);
      const { r, out } = await run(m.raw);
      assert.equal(r.changed, false, name);
      assert.equal(r.status, 'clean');
      assert.equal(r.output, m.raw);
      assert.equal(sha256(out), sha256(m.raw));
      assert.ok(r.documents.length > 0 && r.documents.every((d) => d.status === 'clean'));
    }
  });

  for (const name of ['eicar', 'clamzip', 'nested']) {
    test(`${name}: infected documents replaced by the notice, clean ones byte-identical, output walks again`, async () => {
      const m = msg(name);
      const { r, out } = await run(m.raw);
      assert.equal(r.changed, true);
      assert.equal(r.status, 'replaced');
      assert.equal(r.size, out.length);
      assert.deepEqual(
        r.replaced.map((d) => d.filename),
        m.infected,
      );
      for (const d of r.replaced) {
        assert.equal(d.status, 'infected');
        assert.ok(d.names.length > 0 && d.names.every((n) => n.endsWith('.UNOFFICIAL')), d.names.join());
      }
      const before = await partDigests(m.raw);
      const after = await partDigests(out);
      // Every clean document is still there with the same decoded bytes.
      for (const p of before.filter((p) => !m.infected.includes(p.key))) {
        assert.ok(after.some((q) => q.sha256 === p.sha256), `clean part ${p.key} changed`);
      }
      // The infected ones are gone; a notice naming the file stands in their place.
      for (const bad of m.infected) {
        const orig = before.find((p) => p.key === bad);
        assert.ok(orig);
        assert.ok(!after.some((q) => q.sha256 === orig.sha256), `${bad} still there`);
        assert.ok(after.some((q) => q.text?.includes('replaced by avgate') && q.text.includes(bad) && q.text.includes('.UNOFFICIAL')), `no notice for ${bad}`);
      }
      // The rewritten message is clean for the scanner.
      const again = await scanAndReplace(out, deps());
      assert.equal(again.changed, false);
      assert.equal(again.status, 'clean');
    });
  }

  test('the message header and the bytes outside replaced parts are copied as they were', async () => {
    const m = msg('eicar');
    const { out } = await run(m.raw);
    const head = (b: Buffer) => b.subarray(0, b.indexOf('\r\n\r\n') + 4);
    assert.equal(head(out).toString('latin1'), head(m.raw).toString('latin1'));
    // Everything before the infected part's header is byte-identical.
    const cut = m.raw.indexOf('Content-Type: application/octet-stream; name="eicar.com"');
    assert.ok(cut > 0);
    assert.equal(sha256(out.subarray(0, cut)), sha256(m.raw.subarray(0, cut)));
  });

  test('a spooled input (memory and disk) gives the same output as a buffer', async () => {
    const m = msg('nested');
    const ref = (await run(m.raw)).out;
    for (const limit of [1 << 20, 64]) {
      const s = new Spool(join(dir, 'spool'), limit, { hash: false });
      await s.write(m.raw);
      await s.end();
      const { out } = await run(s);
      assert.equal(sha256(out), sha256(ref), `memory limit ${limit}`);
      await s.dispose();
    }
  });

  test('engine error: the document is replaced by an unscanned notice; on-error pass keeps it', async () => {
    const m = msg('clean');
    const { r, out } = await run(m.raw, deps({ scanner: dead }));
    assert.equal(r.status, 'error');
    assert.equal(r.changed, true);
    assert.ok(r.replaced.length > 0 && r.replaced.every((d) => d.status === 'error'));
    const after = await partDigests(out);
    assert.ok(after.some((q) => q.text?.includes('could not be scanned')));
    assert.ok(!after.some((q) => q.key === 'report.bin'));

    const passed = await run(m.raw, deps({ scanner: dead, policy: proxyPolicy({ 'on-error': 'pass' }) }));
    assert.equal(passed.r.status, 'error');
    assert.equal(passed.r.changed, false);
    assert.equal(sha256(passed.out), sha256(m.raw));
  });

  test('doc-acl: first match wins; docok for a file name keeps EICAR, replace-infected keeps unknown', async () => {
    const m = msg('eicar');
    const policy = proxyPolicy({
      'doc-acl': [
        { name: 'trusted', match: { filenames: ['*.com'] }, action: 'docok' },
        { name: 'rest', action: 'replace-av-unknown' },
      ],
    });
    const { r } = await run(m.raw, deps({ policy }));
    assert.equal(r.changed, false);
    assert.equal(r.documents.find((d) => d.filename === 'eicar.com')?.rule, 'trusted');
    assert.equal(r.documents.find((d) => d.filename === 'eicar.com')?.status, 'infected');

    // replace-infected leaves engine errors to on-error, and unknown/skipped alone.
    const infectedOnly = proxyPolicy({ 'doc-acl': [{ name: 'only-infected', action: 'replace-infected' }], 'on-error': 'pass' });
    const e = await run(msg('clean').raw, deps({ scanner: dead, policy: infectedOnly }));
    assert.equal(e.r.changed, false);
    const i = await run(m.raw, deps({ policy: infectedOnly }));
    assert.deepEqual(
      i.r.replaced.map((d) => d.filename),
      ['eicar.com'],
    );
  });

  test('mail-acl reject replaces the whole body; a non-matching rule accepts', async () => {
    const m = msg('clean');
    const policy = proxyPolicy({ 'mail-acl': [{ name: 'no-alice', match: { senders: ['^a@example\\.com$'] }, action: 'reject' }] });
    const { r, out } = await run(m.raw, deps({ policy }));
    assert.equal(r.changed, true);
    assert.deepEqual(r.replaced, [{ path: '', filename: null, status: 'rejected', names: [] }]);
    const docs = await partDigests(out);
    assert.equal(docs.length, 1);
    assert.match(docs[0]?.text ?? '', /refused by rule no-alice/);
    const other = proxyPolicy({ 'mail-acl': [{ name: 'no-carol', match: { senders: ['carol@'] }, action: 'reject' }] });
    assert.equal((await run(m.raw, deps({ policy: other }))).r.changed, false);
  });

  test('replacement file: macros filled in; a missing file fails at load with the key and path', async () => {
    const file = join(dir, 'notice.txt');
    await writeFile(file, 'REMOVED {{FILENAME}} [{{STATUS}}] {{VIRUS_NAMES}} part {{PART}} {{UNKNOWN}}\n');
    const replacement = await loadReplacement(file, 'pop3-proxy.replacement');
    const { out } = await run(msg('eicar').raw, deps({ replacement }));
    const notice = (await partDigests(out)).find((p) => p.text?.startsWith('REMOVED'));
    assert.match(notice?.text ?? '', /^REMOVED eicar\.com \[infected\] \S+\.UNOFFICIAL part 2 \{\{UNKNOWN\}\}/);
    await assert.rejects(loadReplacement(join(dir, 'missing.txt'), 'pop3-proxy.replacement'), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'AVG_ERR_CONFIG');
      assert.match(err.message, /pop3-proxy\.replacement: cannot read the replacement file .*missing\.txt/);
      return true;
    });
  });
  /** The message in a hashed Spool, as the proxies hand it over (the prescan applies to spools). */
  const spooled = async (raw: Buffer): Promise<Spool> => {
    const sp = new Spool(join(dir, 'spool'), 1 << 20, { hash: true });
    await sp.write(raw);
    await sp.end();
    return sp;
  };
  const scansFor = async (raw: Buffer, d: ReplaceDeps = deps()) => {
    const sp = await spooled(raw);
    const before = scanner.counters.scans;
    const { r, out } = await run(sp, d);
    const scans = scanner.counters.scans - before;
    return { r, out, scans, sp };
  };

  /** The opt-in prescan (pop3-proxy.prescan-max-size; off by default). */
  const prescanDeps = (over: Record<string, unknown> = {}) => deps({ policy: proxyPolicy({ 'prescan-max-size': '1MiB', ...over }) });

  test('default: no prescan; every document is scanned, and a message read again is answered without a walk once its documents were scanned clean', async () => {
    const clean = await scansFor(msg('clean').raw);
    assert.equal(clean.scans, clean.r.documents.length, 'every document on its own');
    // This scanner has no verdict cache, so nothing is remembered: the same count again.
    assert.equal((await scansFor(msg('clean').raw)).scans, clean.r.documents.length);
    await clean.sp.dispose();

    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
    const cached = await clamdScanner(clamd, PROXY_SCANNER_LIMITS, cache);
    let scanCalls = 0;
    const counting: ScanService = {
      get wantsHash() { return cached.wantsHash; },
      get engineLikely() { return cached.engineLikely; },
      get concurrency() { return cached.concurrency; },
      prefersFiles: (size) => cached.prefersFiles(size),
      signatureKey: (signal) => cached.signatureKey(signal),
      close: () => cached.close(),
      scan: async (req) => {
        scanCalls++;
        return cached.scan(req);
      },
    };
    try {
      const raw = Buffer.from(msg('clean').raw.toString('latin1').replace('clean', `clean ${Date.now()}`), 'latin1');
      const first = await scansFor(raw, deps({ scanner: counting }));
      assert.equal(scanCalls, first.r.documents.length);
      const again = await scansFor(raw, deps({ scanner: counting }));
      assert.equal(scanCalls, first.r.documents.length, 'read again: no scan request, no walk');
      assert.deepEqual(again.r.documents, first.r.documents);
      assert.equal(again.r.changed, false);
      // An infected message is never remembered: each read scans it again.
      const dirty = await scansFor(msg('eicar').raw, deps({ scanner: counting }));
      const calls = scanCalls;
      const dirtyAgain = await scansFor(msg('eicar').raw, deps({ scanner: counting }));
      assert.ok(scanCalls > calls);
      assert.deepEqual(dirtyAgain.r.replaced.map((d) => d.filename), ['eicar.com']);
      for (const x of [first, again, dirty, dirtyAgain]) await x.sp.dispose();
    } finally {
      await cached.close();
      cache.close();
    }
  });

  test('a delimiter followed by a tab (clamd reads the message differently): the attachment is still found and replaced', async () => {
    const raw = Buffer.from(msg('eicar').raw.toString('latin1').replace(/^(--[^\r\n]+)\r\n/gm, '$1\t\r\n'), 'latin1');
    assert.notDeepEqual(raw, msg('eicar').raw);
    const r = await scansFor(raw);
    assert.deepEqual(r.r.replaced.map((d) => d.filename), ['eicar.com']);
    assert.ok(!r.out.includes(Buffer.from('EICAR-STANDARD-ANTIVIRUS-TEST-FILE')));
    await r.sp.dispose();
  });

  test('prescan (opt-in): a clean message costs one engine call; an infected one is then scanned part by part and its culprit replaced', async () => {
    const clean = await scansFor(msg('clean').raw, prescanDeps());
    assert.equal(clean.scans, 1, 'one whole-message scan');
    assert.equal(clean.r.changed, false);
    assert.ok(clean.r.documents.length >= 2 && clean.r.documents.every((d) => d.status === 'clean'));
    // Read again: the same bytes, remembered as well formed, still one call (no cache in this scanner).
    assert.equal((await scansFor(msg('clean').raw, prescanDeps())).scans, 1);
    const infected = await scansFor(msg('eicar').raw, prescanDeps());
    assert.equal(infected.scans, 1 + infected.r.documents.length, 'the whole message, then every document');
    assert.deepEqual(infected.r.replaced.map((d) => d.filename), ['eicar.com']);
    assert.ok(!infected.out.includes(Buffer.from('EICAR-STANDARD-ANTIVIRUS-TEST-FILE')));
    // prescan-max-size 0: every document on its own, as before.
    const off = await scansFor(msg('clean').raw, prescanDeps({ 'prescan-max-size': 0 }));
    assert.equal(off.scans, off.r.documents.length);
    for (const x of [clean, infected, off]) await x.sp.dispose();
  });

  test('prescan (opt-in): a clean answer is not trusted for documents nested deeper than clamd unpacks', async () => {
    // Nine levels of forwarded mail around a clean text: clamd's whole-message answer stops being
    // evidence below its recursion limit, so the documents are scanned one by one.
    let raw = msg('plain').raw;
    for (let i = 0; i < 9; i++) {
      raw = Buffer.concat([
        Buffer.from(`From: a@example.com\r\nTo: b@example.net\r\nSubject: level ${i}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="n${i}"\r\n\r\n--n${i}\r\nContent-Type: message/rfc822\r\n\r\n`),
        raw,
        Buffer.from(`\r\n--n${i}--\r\n`),
      ]);
    }
    const deep = await scansFor(raw, prescanDeps());
    assert.equal(deep.r.changed, false);
    assert.ok(deep.scans > 1, `scanned part by part (${deep.scans} scans)`);
    await deep.sp.dispose();
  });
});
