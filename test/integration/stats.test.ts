import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { VerdictCache } from '../../src/cache/verdict-cache.js';
import { silentLogger } from '../../src/core/logging.js';
import { ClamdNetEngine } from '../../src/engines/clamd/net.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { Scanner, type ScannerLimits } from '../../src/scan/scanner.js';
import { HOUR_MS } from '../../src/stats/store.js';
import type { ScanEvent, StatsRecorder } from '../../src/stats/types.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';
import { eicarAttachment, mailWith, startMailAvgate } from '../helpers/mail.js';
import { SmtpTestClient, startRecordingServer } from '../helpers/smtp.js';

const LIMITS: ScannerLimits = { maxCheckedSize: 10 * 1024 * 1024, scanTimeoutMs: 10_000, maxConcurrentScans: 4, maxQueue: 16, contextIdleTimeoutMs: 5000 };
const NAME = /^Avgate\.Test\.EICAR\./;

/** One SMTP transaction, the DATA reply awaited. */
async function send(port: number, from: string, to: string[], message: Buffer): Promise<void> {
  const { client } = await SmtpTestClient.connect(port);
  try {
    await client.command('EHLO client.test');
    assert.equal((await client.command(`MAIL FROM:<${from}>`)).code, 250);
    for (const r of to) assert.equal((await client.command(`RCPT TO:<${r}>`)).code, 250);
    await client.data(message);
  } finally {
    await client.quit();
  }
}

class Collector implements StatsRecorder {
  events: ScanEvent[] = [];
  record(e: ScanEvent): void {
    this.events.push(e);
  }
}

describe('statistics fed by real scans', () => {
  let clamd: TestClamd;
  let dir: string;
  before(async () => {
    clamd = await startTestClamd();
    dir = await mkdtemp(join(tmpdir(), 'avgate-stats-int-'));
  });
  after(async () => {
    await clamd.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const engine = () => {
    const e = new ClamdNetEngine();
    e.configure([
      { name: 'address', value: `unix:${clamd.socketPath}` },
      { name: 'database-dir', value: clamd.dbDir },
    ]);
    return e;
  };

  test('the scanner reports every verdict with its origin, cache hits too', async () => {
    const stats = new Collector();
    const cache = new VerdictCache({ memoryEntries: 100, sqlitePath: null, sqliteMaxEntries: 10, maxAgeMs: 0 });
    const scanner = new Scanner([{ id: 'clamav', engine: engine() }], LIMITS, cache, silentLogger(), { stats, defaultOrigin: { source: 'fs' } });
    const clean = randomBytes(4000);
    const before = Date.now();
    await scanner.scan({ source: { kind: 'buffer', data: eicarBytes() }, name: 'Q1/2 eicar.com', origin: { source: 'smtp', group: 'sales' } });
    await scanner.scan({ source: { kind: 'buffer', data: clean }, name: 'http://origin.test/clean.bin', origin: { source: 'icap', group: 'avscan' } });
    await scanner.scan({ source: { kind: 'buffer', data: clean }, origin: { source: 'lmtp' } });
    await scanner.scan({ source: { kind: 'buffer', data: clean } });
    await scanner.close();
    const [virus, free, hit, noOrigin] = stats.events;
    assert.equal(stats.events.length, 4);
    assert.equal(virus?.source, 'smtp');
    assert.equal(virus?.group, 'sales');
    assert.equal(virus?.status, 'found');
    assert.match(virus?.virus ?? '', NAME);
    assert.equal(virus?.engine, 'clamav');
    assert.equal(virus?.bytes, eicarBytes().length);
    assert.equal(virus?.cached, false);
    assert.ok((virus?.time ?? 0) >= before && (virus?.time ?? 0) <= Date.now());
    assert.ok((virus?.durationMs ?? 0) > 0);
    assert.equal(virus?.subject, 'Q1/2 eicar.com', 'a detection keeps what was scanned');
    assert.equal(free?.subject, null, 'a free verdict does not');
    assert.deepEqual([free?.source, free?.group, free?.status, free?.virus, free?.bytes, free?.cached], ['icap', 'avscan', 'free', null, 4000, false]);
    assert.deepEqual([hit?.source, hit?.group, hit?.status, hit?.cached], ['lmtp', null, 'free', true]);
    assert.equal(noOrigin?.source, 'fs', 'no origin: the scanner default');
  });

  test('a recorder that throws does not break the scan', async () => {
    const scanner = new Scanner([{ id: 'clamav', engine: engine() }], LIMITS, null, silentLogger(), {
      stats: {
        record() {
          throw new Error('disk full');
        },
      },
    });
    const v = await scanner.scan({ source: { kind: 'buffer', data: eicarBytes() } });
    assert.equal(v.status, 'found');
    await scanner.close();
  });

  test('avgate serve: ICAP RESPMOD → an icap event of its service; SMTP → smtp events of the recipient group', async () => {
    const hop = await startRecordingServer();
    const s = await startMailAvgate({
      clamd,
      stateDir: join(dir, 'serve'),
      nextHop: `smtp:127.0.0.1:${hop.port}`,
      mailYaml: "groups:\n  - name: sales\n    recipients: ['.*@sales\\.example']",
    });
    try {
      assert.ok(s.stats, 'serve returns its statistics store');
      const { responses } = await icapExchange(s.icapPort, [buildRequest(s.icapPort, eicarBytes(), { allow204: true }).first]);
      assert.equal(responses[0]?.head.status, 200);
      const p = { from: Date.now() - HOUR_MS, to: Date.now() + HOUR_MS };
      assert.deepEqual(await s.stats.byGroup(p), [{ group: 'avscan', status: 'found', count: 1 }]);
      assert.deepEqual(await s.stats.statusesBySource(p), [{ source: 'icap', status: 'found', count: 1 }]);
      assert.match((await s.stats.topViruses(p, 5))[0]?.name ?? '', NAME);
      assert.match(await s.stats.prometheus(), /^avgate_scans_total\{source="icap",status="found"\} 1$/m);
      const [icapHit, ...none] = await s.stats.recentDetections(10);
      assert.equal(none.length, 0);
      assert.deepEqual([icapHit?.source, icapHit?.group, icapHit?.subject], ['icap', 'avscan', 'http://origin.test/file.bin']);
      assert.match(icapHit?.virus ?? '', NAME);

      await send(s.smtpPort, 'a@example.com', ['bob@sales.example'], mailWith('stats-1', [eicarAttachment()]));
      const [newest] = await s.stats.recentDetections(10);
      assert.equal(newest?.source, 'smtp');
      assert.match(newest?.subject ?? '', /^\S+\/\S+ eicar\.com$/, 'queue id, part and file name');
      const smtp = (await s.stats.statusesBySource(p)).filter((r) => r.source === 'smtp');
      assert.ok(smtp.some((r) => r.status === 'found'), JSON.stringify(smtp));
      const sales = (await s.stats.byGroup(p)).filter((r) => r.group === 'sales');
      assert.equal(
        sales.reduce((n, r) => n + r.count, 0),
        smtp.reduce((n, r) => n + r.count, 0),
        'every smtp scan carries the group of the first recipient',
      );
    } finally {
      await s.stop();
      await hop.close();
    }
    assert.doesNotThrow(() => s.stats?.record({ time: Date.now(), source: 'icap', status: 'free', virus: null, group: null, engine: 'x', bytes: 0, durationMs: 0, cached: false }));
  });
});
