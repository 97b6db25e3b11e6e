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
  if (SECRET_KEY.test(key) && value !== null && value !== '') return '********';
  return typeof value === 'string' ? maskUrlPassword(value) : value;
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
