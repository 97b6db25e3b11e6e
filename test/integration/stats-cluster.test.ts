import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import type { Logger } from '../../src/core/logging.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Serving } from '../../src/main.js';
import type { StatsFigures } from '../../src/web/stats-view.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { ConsoleClient, rawRequest } from '../helpers/console.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';
import { startTestPostgres, type TestPostgres } from '../helpers/postgres.js';
import { waitFor } from '../helpers/wait.js';

/**
 * Two `avgate serve` nodes writing their statistics into one PostgreSQL database: each node's
 * dashboard and API show the sum of both, with a table of the nodes; /metrics stays per node. A
 * node whose database is not there yet still scans, says why its statistics are missing, and
 * catches up when the database appears.
 */
const EICAR = /^Avgate\.Test\.EICAR\./;
const PASSWORD = 'cluster-pass-1';

interface Line {
  level: number;
  msg: string;
  reason?: string;
}

type Node = Serving & { icapPort: number; token: string; lines: Line[] };

describe('statistics of two nodes in one PostgreSQL database', () => {
  let clamd: TestClamd;
  let pgt: TestPostgres;
  let dir: string;
  const nodes: Node[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'avgate-cluster-'));
    [clamd, pgt] = await Promise.all([startTestClamd(), startTestPostgres()]);
  });
  after(async () => {
    for (const n of nodes) await n.stop();
    await pgt?.destroy();
    await clamd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  async function startNode(name: string): Promise<Node> {
    const lines: Line[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Line) }) as unknown as Logger;
    const s = await startAvgatePeer({
      clamd,
      stateDir: join(dir, name),
      logger,
      yaml: ['stats:', `  node: ${name}`, '  flush-interval: 10ms', '  postgres:', `    url: ${pgt.url('cluster')}`, '    retry-interval: 200ms', '    connect-timeout: 1s'].join('\n'),
    });
    assert.ok(s.web);
    await s.web.passwords.setPassword('admin', PASSWORD);
    const node = { ...s, token: await s.web.tokens.add('ci', ['scan', 'read']), lines };
    nodes.push(node);
    return node;
  }

  const icap = async (n: Node, body: Buffer) => {
    const x = await icapExchange(n.icapPort, [buildRequest(n.icapPort, body, { allow204: true }).first]);
    x.socket.destroy();
    return x.responses[0]?.head.status;
  };
  const api = (n: Node, path: string) => rawRequest(n.consolePort as number, 'GET', path, { headers: { Authorization: `Bearer ${n.token}` } });
  const figures = async (n: Node) => {
    const r = await api(n, '/api/v1/stats?period=24h');
    assert.equal(r.status, 200, r.body);
    return JSON.parse(r.body) as StatsFigures;
  };

  test('a node whose database is not there yet serves and scans, says why its statistics are missing, and catches up when it appears', async () => {
    const n1 = await startNode('n1');
    assert.equal(await icap(n1, eicarBytes()), 200, 'scanning works without the statistics database');
    await waitFor('n1 to find the database missing', async () => (n1.stats?.status().reachable === false ? true : null), 10_000);
    const r = await api(n1, '/api/v1/stats');
    assert.equal(r.status, 503);
    assert.match(JSON.parse(r.body).reason, /statistics are unavailable: the statistics database is unreachable .*database "cluster" does not exist/);
    const bad = await api(n1, '/api/v1/stats?period=1y');
    assert.equal(bad.status, 400, bad.body);
    assert.match(JSON.parse(bad.body).reason, /period must be 24h, 7d or 30d/);
    assert.equal((await rawRequest(n1.consolePort as number, 'GET', '/api/v1/stats')).status, 401, 'a bearer token is needed');
    const c = new ConsoleClient(n1.consolePort as number);
    await c.login('admin', PASSWORD);
    const page = await c.get('/');
    assert.equal(page.status, 200);
    assert.match(page.body, /id="stats-error">Statistics are unavailable: .*does not exist/);
    const metrics = (await rawRequest(n1.consolePort as number, 'GET', '/metrics')).body;
    assert.match(metrics, /^avgate_stats_database_up 0$/m);
    assert.match(metrics, /^avgate_stats_buffered_events 1$/m, 'the EICAR event waits in memory');

    await pgt.createDatabase('cluster');
    await waitFor('n1 to reach the database', async () => (n1.stats?.status().reachable ? true : null), 10_000);
    const warns = n1.lines.filter((l) => l.level === 40);
    assert.equal(warns.length, 1, JSON.stringify(warns));
    assert.match(warns[0]?.msg ?? '', /PostgreSQL unreachable/);
    assert.match(warns[0]?.reason ?? '', /database "cluster" does not exist/);
    assert.equal(n1.lines.filter((l) => /reachable again/.test(l.msg)).length, 1);
    const f = await figures(n1);
    assert.deepEqual(f.statusesBySource, [{ source: 'icap', status: 'found', count: 1 }], 'the buffered event arrived');
  });

  test('each node shows the sum of both: activity, top viruses, statuses by source, cache hit rate; the node table lists both; /metrics is per node', async () => {
    const [n1] = nodes as [Node];
    const n2 = await startNode('n2');
    const clean1 = randomBytes(3000);
    assert.equal(await icap(n1, clean1), 204);
    assert.equal(await icap(n1, clean1), 204); // a cache hit on n1
    const scan = await fetch(`http://127.0.0.1:${n2.consolePort}/api/v1/scan?name=eicar.com`, { method: 'POST', headers: { Authorization: `Bearer ${n2.token}` }, body: eicarBytes() });
    assert.equal(((await scan.json()) as { status: string }).status, 'found');
    assert.equal(await icap(n2, randomBytes(5000)), 204);
    // Each node writes its own queue on a read; the other node's is written within flush-interval.
    await Promise.all([n1.stats?.flush(), n2.stats?.flush()]);

    const [a, b] = await Promise.all([figures(n1), figures(n2)]);
    const cluster = (x: StatsFigures) => ({ ...x, store: undefined, nodes: x.nodes.map((n) => ({ ...n, lastSeen: 0 })) });
    assert.deepEqual(cluster(a), cluster(b), 'both dashboards show the same cluster figures');
    assert.deepEqual(a.statusesBySource, [
      { source: 'api', status: 'found', count: 1 },
      { source: 'icap', status: 'found', count: 1 },
      { source: 'icap', status: 'free', count: 3 },
    ]);
    assert.equal(a.topViruses.length, 1);
    assert.match(a.topViruses[0]?.name ?? '', EICAR);
    assert.equal(a.topViruses[0]?.count, 2, 'EICAR found once on each node');
    assert.deepEqual(a.cacheHitRate, { hits: 1, total: 5, rate: 0.2 });
    assert.equal(a.activity.reduce((n, p) => n + p.byStatus.found, 0), 2);
    assert.equal(a.activity.reduce((n, p) => n + p.byStatus.free, 0), 3);
    assert.deepEqual(
      a.nodes.map((n) => [n.node, n.events, n.found, n.cacheHits, n.dropped]),
      [
        ['n1', 3, 1, 1, 0],
        ['n2', 2, 1, 0, 0],
      ],
    );
    for (const n of a.nodes) assert.ok(n.lastSeen !== null && Math.abs(n.lastSeen - Date.now()) < 60_000 && n.lastEvent !== null);
    assert.deepEqual([a.store.node, a.store.backend, b.store.node], ['n1', 'postgres', 'n2']);

    // The dashboard page of n2: the cluster's figures and the node table.
    const c = new ConsoleClient(n2.consolePort as number);
    await c.login('admin', PASSWORD);
    const page = (await c.get('/?period=24h')).body;
    const found = [...page.matchAll(/<rect class="bucket"[^>]*data-found="(\d+)"/g)].reduce((n, m) => n + Number(m[1]), 0);
    assert.equal(found, 2);
    assert.match(page, /id="cache-rate">20\.0 % hits \(1 of 5\)/);
    const table = /<table id="nodes">([\s\S]*?)<\/table>/.exec(page)?.[1] ?? '';
    assert.match(table, /<td>n1<\/td><td>3<\/td><td>1<\/td><td>1<\/td>/);
    assert.match(table, /<td>n2<\/td><td>2<\/td><td>1<\/td><td>0<\/td>/);
    assert.match(page, /id="stats-store">Statistics: shared PostgreSQL database .*this node <strong>n2<\/strong>/);

    // Prometheus scrapes every node: each exposes its own counters, never the cluster's sums.
    const m1 = (await rawRequest(n1.consolePort as number, 'GET', '/metrics')).body;
    const m2 = (await rawRequest(n2.consolePort as number, 'GET', '/metrics')).body;
    assert.match(m1, /^avgate_scans_total\{source="icap",status="found"\} 1$/m);
    assert.match(m1, /^avgate_scans_total\{source="icap",status="free"\} 2$/m);
    assert.doesNotMatch(m1, /source="api"/);
    assert.match(m2, /^avgate_scans_total\{source="api",status="found"\} 1$/m);
    assert.match(m2, /^avgate_scans_total\{source="icap",status="free"\} 1$/m);
    assert.doesNotMatch(m2, /source="icap",status="found"/);
    assert.match(m1, /^avgate_stats_database_up 1$/m);
  });
});
