import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { test } from 'node:test';
import { stringify } from 'yaml';
import { parseConfigText } from '../../src/config/loader.js';
import { masked } from '../../src/config/mask.js';
import { describePostgres, parsePostgresUrl } from '../../src/config/postgres-url.js';
import { statsNodeName } from '../../src/config/stats-schema.js';
import { configError } from '../helpers/config.js';

const withUrl = (url: string, extra = '') => `stats:\n  node: edge-1\n  postgres:\n    url: ${JSON.stringify(url)}\n${extra}`;

test('stats defaults: SQLite, node = host name; a postgres section gets every limit with its default', () => {
  const d = parseConfigText('', 'avgate.yaml').stats;
  assert.equal(d.postgres, null);
  assert.equal(d.node, null);
  assert.equal(statsNodeName(d), hostname());
  const c = parseConfigText(withUrl('postgres://avgate:pw@db.example/avgate'), 'avgate.yaml').stats;
  assert.equal(statsNodeName(c), 'edge-1');
  assert.deepEqual(c.postgres, {
    url: 'postgres://avgate:pw@db.example/avgate',
    'max-buffered': 100_000,
    'batch-size': 1000,
    'connect-timeout': 5000,
    'query-timeout': 5000,
    'retry-interval': 5000,
    'max-connections': 4,
  });
  const tuned = parseConfigText(withUrl('postgres://a@h/d', '    max-buffered: 5000\n    query-timeout: 800ms\n    batch-size: 50\n'), 'x').stats.postgres;
  assert.deepEqual([tuned?.['max-buffered'], tuned?.['query-timeout'], tuned?.['batch-size']], [5000, 800, 50]);
});

test('a malformed postgres URL is refused with its file, line and key', () => {
  const cases: Array<[string, RegExp]> = [
    ['mysql://a:b@h/db', /not a postgres:\/\/ URL/],
    ['postgres://a:b@h:99999/db', /malformed URL/],
    ['postgres://a:b@h:0/db', /port must be 1 to 65535/],
    ['postgres://a:b@h:5432', /names no database/],
    ['postgres://a:b@h/', /names no database/],
    ['postgres://a:b@/db', /names no host/],
    ['postgres://a:b@h/db?sslmode=prefer', /sslmode must be one of disable, require, verify-full/],
    ['postgres://a:b@h/db?connect_timeout=3', /unknown parameter "connect_timeout"/],
    ['postgres://a:b@h/db?sslrootcert=/ca.pem', /sslrootcert needs sslmode=verify-full/],
    ['postgres://a:b@h/db#x', /#fragment/],
  ];
  for (const [url, why] of cases) {
    const msg = configError(withUrl(url));
    assert.match(msg, /^avgate\.yaml:4: stats\.postgres\.url: /m, url);
    assert.match(msg, why, url);
    assert.ok(!msg.includes(':b@'), `the password stays out of the message: ${msg}`);
  }
  assert.match(configError('stats:\n  postgres:\n    max-buffered: 10\n'), /^avgate\.yaml:3: stats\.postgres\.url: required: postgres:\/\/user:password@host:port\/database$/m, 'url is required');
  assert.match(configError(withUrl('postgres://a@h/d', '    max-buffered: 0\n')), /^avgate\.yaml:5: stats\.postgres\.max-buffered/m);
  assert.match(configError(withUrl('postgres://a@h/d', '    query-timeout: soon\n')), /^avgate\.yaml:5: stats\.postgres\.query-timeout: invalid duration/m);
  assert.match(configError(withUrl('postgres://a@h/d', '    pasword: x\n')), /^avgate\.yaml:5: stats\.postgres\.pasword: unknown key/m);
  assert.match(configError('stats:\n  node: "two words"\n'), /^avgate\.yaml:2: stats\.node: /m);
});

test('URL forms: TCP with port and percent-encoded credentials, IPv6, unix-socket directory (query or host part), TLS modes', () => {
  const ok = (url: string) => {
    const r = parsePostgresUrl(url);
    assert.ok(r.ok, `${url}: ${r.ok ? '' : r.error}`);
    return r.target;
  };
  assert.deepEqual(ok('postgres://av%40gate:p%3Ass@db.example:6432/stats'), {
    host: 'db.example', port: 6432, user: 'av@gate', password: 'p:ss', database: 'stats', sslMode: 'disable', sslRootCert: null,
  });
  assert.equal(ok('postgresql://u@h/d').port, 5432);
  assert.equal(ok('postgres://u:p@[::1]:5433/d').host, '::1');
  assert.equal(describePostgres(ok('postgres://u:p@[::1]:5433/d')), 'u@[::1]:5433/d');
  const socket = ok('postgres://avgate@/avgate?host=/run/postgresql');
  assert.deepEqual([socket.host, socket.user, socket.database, socket.password], ['/run/postgresql', 'avgate', 'avgate', null]);
  assert.equal(ok('postgres://avgate:pw@:5444/avgate?host=/tmp/pg').port, 5444);
  assert.equal(ok('postgres://avgate@%2Frun%2Fpostgresql/avgate').host, '/run/postgresql');
  assert.equal(describePostgres(socket), 'avgate@/run/postgresql (unix socket)/avgate');
  assert.equal(ok('postgres://u@h/d?sslmode=require').sslMode, 'require');
  assert.deepEqual([ok('postgres://u@h/d?sslmode=verify-full&sslrootcert=/etc/ca.pem').sslRootCert], ['/etc/ca.pem']);
});

test('the database password is masked wherever the config is printed (config show, the console page)', () => {
  for (const url of ['postgres://avgate:S3cret-pw@db.example:5432/avgate', 'postgres://avgate:S3cret-pw@/avgate?host=/run/postgresql']) {
    const config = parseConfigText(withUrl(url), 'avgate.yaml');
    const shown = stringify(masked(config));
    assert.ok(!shown.includes('S3cret-pw'), shown);
    assert.match(shown, /url: postgres:\/\/avgate:\*{8}@/);
    assert.match(shown, /node: edge-1/);
  }
});
