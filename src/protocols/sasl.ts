/**
 * The login name in a SASL exchange (RFC 4422), for the mail proxies' `users` rules: IMAP
 * AUTHENTICATE and POP3 AUTH feed it the client's data; it never answers the client itself.
 */

/**
 * SASL mechanisms whose exchange carries the login name in clear, so the `users` rules can be
 * applied: PLAIN (RFC 4616: authzid NUL authcid NUL password), LOGIN (the first response is the
 * name), CRAM-MD5 (RFC 2195: "name SP digest"). Others hide it (SCRAM-*: the name may be
 * SASLprep'd and escaped, GSSAPI, EXTERNAL: taken from elsewhere) or are unknown.
 */
export const NAMED_USER_MECHANISMS: ReadonlySet<string> = new Set(['PLAIN', 'LOGIN', 'CRAM-MD5']);

/** A SASL response or initial response (RFC 4422): base64; empty is a valid (empty) response. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** Longest login name taken; a longer one is no name (a bound, not a guess). */
const MAX_NAME = 256;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A login name as the ACLs see it: UTF-8, no control characters, 1 to 256 bytes; else null. */
export function loginNameOf(bytes: Buffer): string | null {
  if (bytes.length === 0 || bytes.length > MAX_NAME) return null;
  let name: string;
  try {
    name = utf8.decode(bytes);
  } catch {
    return null;
  }
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return null;
  }
  return name;
}

/**
 * The login name of one SASL exchange (IMAP AUTHENTICATE, POP3 AUTH), read from the client's data
 * for the mechanisms in NAMED_USER_MECHANISMS. Pure: the sessions feed it the client's initial
 * response and response lines, and take `identified` only when the server said OK.
 */
export class SaslIdentity {
  readonly mechanism: string;
  /** The login name read so far (null: not yet, or none). */
  private name: string | null = null;
  /** Why this exchange gives no login name (null: none so far). */
  problem: string | null = null;
  cancelled = false;
  /** Client data items seen (initial response included, an empty one excluded). */
  private items = 0;

  constructor(mechanism: string) {
    this.mechanism = mechanism.toUpperCase();
    if (!NAMED_USER_MECHANISMS.has(this.mechanism)) this.problem = `the ${this.mechanism} mechanism does not show the login name`;
  }

  /**
   * The login name when the exchange gave one: never after a cancel or a problem (a PLAIN authzid
   * other than the user, a malformed response), never before the data that carries it.
   */
  get identified(): string | null {
    return this.cancelled || this.problem !== null ? null : this.name;
  }

  /**
   * The initial response on the command line (RFC 4959 SASL-IR, RFC 5034): base64, `=` for an
   * empty one (servers then ask as if there were none). False: not base64.
   */
  initial(text: string): boolean {
    if (text === '=') return true;
    if (!BASE64.test(text)) return false;
    // CRAM-MD5 has no initial response (the server's challenge comes first): one sent anyway is
    // not the name, and a server may ignore it and read the name from the next line.
    if (this.mechanism === 'CRAM-MD5') {
      this.problem ??= 'CRAM-MD5 takes no initial response';
      return true;
    }
    this.data(text);
    return true;
  }

  /** One client response line: `*` cancels (RFC 4422 §3.5); anything but base64 is invalid. */
  response(text: string): 'relay' | 'cancel' | 'invalid' {
    if (text === '*') {
      this.cancelled = true;
      return 'cancel';
    }
    if (!BASE64.test(text)) return 'invalid';
    this.data(text);
    return 'relay';
  }

  private data(b64: string): void {
    if (this.items++ > 0 || this.problem !== null) return;
    const raw = Buffer.from(b64, 'base64');
    switch (this.mechanism) {
      case 'PLAIN': {
        const parts = splitNul(raw);
        const authc = parts.length === 3 ? loginNameOf(parts[1] as Buffer) : null;
        const authz = parts.length === 3 ? (parts[0] as Buffer) : null;
        if (authc === null || authz === null) this.problem = 'malformed PLAIN response';
        // The session would act as the authzid (a master user's login): neither name is certain.
        else if (authz.length > 0 && loginNameOf(authz)?.toLowerCase() !== authc.toLowerCase()) this.problem = 'PLAIN with an authorization identity other than the login name';
        else this.name = authc;
        return;
      }
      case 'LOGIN':
        this.name = loginNameOf(raw);
        if (this.name === null) this.problem = 'malformed LOGIN user name';
        return;
      case 'CRAM-MD5': {
        // "name SP digest": the digest is the last 32 hexadecimal digits; the name may hold blanks.
        const m = /^([^]+) [0-9a-fA-F]{32}$/.exec(raw.toString('latin1'));
        this.name = m ? loginNameOf(Buffer.from(m[1] as string, 'latin1')) : null;
        if (this.name === null) this.problem = 'malformed CRAM-MD5 response';
        return;
      }
    }
  }
}

function splitNul(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let from = 0;
  for (let i = b.indexOf(0); i >= 0; i = b.indexOf(0, from)) {
    out.push(b.subarray(from, i));
    from = i + 1;
  }
  out.push(b.subarray(from));
  return out;
}
