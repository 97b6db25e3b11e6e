/**
 * Secrets in the effective config (`config show`, the console's configuration page): a value under
 * a key that looks like a password, secret, token or key is replaced, so a screenshot or a pasted
 * output never carries one.
 */
const SECRET_KEY = /pass(word)?|secret|token|key$/i;

export function masked(value: unknown, key = ''): unknown {
  if (Array.isArray(value)) return value.map((v) => masked(v, key));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, masked(v, k)]));
  }
  return SECRET_KEY.test(key) && value !== null && value !== '' ? '********' : value;
}
