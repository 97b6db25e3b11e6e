import assert from 'node:assert/strict';
import { test } from 'node:test';
import { stringify } from 'yaml';
import { loadConfig, parseConfigText } from '../../src/config/loader.js';
import { shownConfig } from '../../src/config/mask.js';

const EXAMPLE = new URL('../../config/avgate.example.yaml', import.meta.url).pathname;

/** The config as JSON (what a deep comparison of two parses can look at). */
const plain = (v: unknown) => JSON.parse(JSON.stringify(v)) as unknown;

test('config show: what it prints loads back as the same configuration (defaults, the example, trickle limits and port ranges as written)', async () => {
  const texts = [
    '',
    [
      'http-proxy:',
      '  doc-acl:',
      '    - {name: a, trickle: {limit: 8MiB}}',
      '    - {name: b, trickle: {limit: "25%"}}',
      '    - {name: c, trickle: null}',
      'ftp-proxy:',
      '  data-ports: 40000-40100',
    ].join('\n'),
  ];
  const configs = [...texts.map((t) => parseConfigText(t, 'in.yaml')), (await loadConfig(EXAMPLE)).config];
  for (const c of configs) {
    const shown = stringify(shownConfig(c));
    // The one secret these have, the export archives' password, comes back masked.
    assert.equal(shown.split('"********"').length - 1, 1, shown);
    const back = parseConfigText(shown, 'shown.yaml');
    assert.equal(back.quarantine['export-password'], '********');
    assert.deepEqual(plain({ ...back, quarantine: { ...back.quarantine, 'export-password': c.quarantine['export-password'] } }), plain(c));
  }
  const ranged = stringify(shownConfig(configs[1]));
  assert.match(ranged, /data-ports: 40000-40100/);
  assert.match(ranged, /limit: 25%/);
  assert.match(ranged, /limit: 8388608/);
});

test('config show masks secrets, not paths to them nor switches', () => {
  const c = parseConfigText(['quarantine:', '  export-password: hunter2', 'console:', '  metrics-token-required: true'].join('\n'), 'in.yaml');
  const shown = stringify(shownConfig(c));
  assert.match(shown, /export-password: "\*{8}"/);
  assert.doesNotMatch(shown, /hunter2/);
  assert.match(shown, /metrics-token-required: true/);
  assert.match(shown, /password-file: \S+/);
  assert.doesNotMatch(shown, /password-file: "\*+"/);
  // Engine plugin options and TLS keys: a secret value is masked, a path to a key file is not.
  const secrets = ['api_key', 'key', 'license-key', 'client-secret', 'accessToken', 'authToken', 'clientSecret', 'sharedSecret', 'secretAccessKey', 'privateKey', 'apitoken', 'tokens', 'passwords', 'password2', 'apiKey'];
  const shownOpts = shownConfig({ engines: { p: { options: Object.fromEntries(secrets.map((k) => [k, 'x1'])) } } }) as { engines: { p: { options: Record<string, string> } } };
  assert.deepEqual(Object.entries(shownOpts.engines.p.options).filter(([, v]) => v !== '********'), [], 'every secret-like option masked');
  const kept = shownConfig({ smtp: { tls: { key: '/etc/avgate/key.pem', cert: '/etc/avgate/cert.pem' } }, engines: { p: { options: { monkey: 'm', 'data-ports': 'x', 'key-prefix': 'avgate:', 'tokens-file': 'tokens.json' } } } });
  assert.deepEqual(kept, { smtp: { tls: { key: '/etc/avgate/key.pem', cert: '/etc/avgate/cert.pem' } }, engines: { p: { options: { monkey: 'm', 'data-ports': 'x', 'key-prefix': 'avgate:', 'tokens-file': 'tokens.json' } } } });
});
