/**
 * Secrets in the effective config (`config show`, the console's configuration page): a string
 * under a key named like a password, passphrase, secret, token or key (`export-password`, an engine
 * plugin's `api-key` or `key`) is replaced, so a screenshot or a pasted output never carries one.
 * Paths to files holding secrets (`password-file`, `tokens-file`, a TLS `key: /etc/...pem`) and
 * switches (`metrics-token-required`) are shown as they are.
 */
const SECRET_KEY = /(pass|passwd|password|passphrase|secret|token)(s|\d+)?$|(^|-)(api-?|license-|private-|access-)?keys?$/;
/** A `key` holding a path (a TLS key file, `/...`, `./...`, `*.pem`) names where the secret is, not the secret. */
const KEY_FILE = (name: string, value: string) => /(^|-)keys?$/.test(name) && !/(api-?|license-|private-|access-)keys?$/.test(name) && (/^[./~]/.test(value) || /\.(pem|key|crt)$/i.test(value));
/** A key as kebab-case lower case: `clientSecret`, `client_secret` and `client-secret` alike. */
const kebab = (key: string) => key.replace(/([a-z0-9])([A-Z])/g, '$1-$2').replace(/_/g, '-').toLowerCase();

export function masked(value: unknown, key = ''): unknown {
  if (Array.isArray(value)) return value.map((v) => masked(v, key));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, masked(v, k)]));
  }
  const name = kebab(key);
  if (SECRET_KEY.test(name) && (typeof value === 'string' || typeof value === 'number') && value !== '' && !(typeof value === 'string' && KEY_FILE(name, value))) return '********';
  return typeof value === 'string' ? maskUrlPassword(value) : value;
}

/**
 * The effective config as it can be written in a config file again: the values the schema turned
 * into structures (a trickle `limit` of `90%`, `ftp-proxy.data-ports`) in their written form, secrets
 * masked. What `config show` prints and the console's configuration page shows; loaded back, it
 * gives the same configuration (test/unit/config-show.test.ts), but for the masked secrets.
 */
export function shownConfig(config: unknown): unknown {
  return masked(asWritten(config, ''));
}

function asWritten(value: unknown, key: string, parent = ''): unknown {
  if (Array.isArray(value)) return value.map((v) => asWritten(v, key, parent));
  if (key === 'data-ports' && parent === 'ftp-proxy' && (value === null || (typeof value === 'object' && 'min' in value))) {
    // null = any free port (written 0); {min, max} = MIN-MAX.
    if (value === null) return 0;
    const r = value as { min: number; max: number };
    return `${r.min}-${r.max}`;
  }
  if (value && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    const keys = Object.keys(o);
    if (key === 'limit' && keys.length === 2 && typeof o['value'] === 'number' && (o['kind'] === 'percent' || o['kind'] === 'bytes')) {
      return o['kind'] === 'percent' ? `${o['value']}%` : o['value'];
    }
    return Object.fromEntries(keys.map((k) => [k, asWritten(o[k], k, key)]));
  }
  return value;
}

/**
 * A URL's password (`redis://user:secret@host`, `unix:///run/redis.sock?password=secret`) replaced
 * by `********`, whatever key the URL is under; other strings are returned as they are.
 */
export function maskUrlPassword(text: string): string {
  if (!/^[a-z][a-z0-9+.-]*:/i.test(text) || !/@|password=/i.test(text)) return text;
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    // Not a URL after all; a password-like part is hidden anyway.
    return text.replace(/(:\/\/[^/@\s]*:)[^/\s]*@/, '$1********@').replace(/(password=)[^&#\s]*/gi, '$1********');
  }
  let hidden = false;
  if (u.password !== '') {
    u.password = '********';
    hidden = true;
  }
  for (const k of [...u.searchParams.keys()]) {
    if (/^pass(word)?$/i.test(k)) {
      u.searchParams.set(k, '********');
      hidden = true;
    }
  }
  // Untouched text stays as written (an address with an @ is no URL with a password).
  return hidden ? u.toString() : text;
}
