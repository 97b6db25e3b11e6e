import { request as httpRequest } from 'node:http';

/**
 * A raw HTTP client for the web console's tests: the path is sent exactly as given (fetch and
 * URL would normalise `..`), cookies are kept per client, POSTs carry the same-origin header.
 */
export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export function rawRequest(
  port: number,
  method: string,
  path: string,
  o: { headers?: Record<string, string>; body?: Buffer | string | (() => AsyncIterable<Buffer>) } = {},
): Promise<Reply> {
  // A header given as '' is left out (to test requests without Origin).
  const headers = Object.fromEntries(Object.entries(o.headers ?? {}).filter(([, v]) => v !== ''));
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    const body = o.body;
    if (typeof body === 'function') {
      void (async () => {
        try {
          for await (const piece of body()) if (!req.write(piece)) await new Promise((r) => req.once('drain', r));
          req.end();
        } catch {
          /* the server closed early (413): the answer has arrived or will */
        }
      })();
    } else req.end(body);
  });
}

export class ConsoleClient {
  readonly cookies = new Map<string, string>();
  csrf = '';

  constructor(readonly port: number) {}

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private cookieHeader(): Record<string, string> {
    return this.cookies.size ? { Cookie: [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ') } : {};
  }

  private keep(r: Reply): Reply {
    const set = r.headers['set-cookie'];
    for (const c of Array.isArray(set) ? set : []) {
      const [pair] = c.split(';');
      const eq = (pair as string).indexOf('=');
      const name = (pair as string).slice(0, eq);
      const value = (pair as string).slice(eq + 1);
      if (/Max-Age=0/.test(c)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    const m = /name="_csrf" value="([^"]+)"/.exec(r.body);
    if (m) this.csrf = m[1] as string;
    return r;
  }

  async get(path: string, headers: Record<string, string> = {}): Promise<Reply> {
    return this.keep(await rawRequest(this.port, 'GET', path, { headers: { Host: `127.0.0.1:${this.port}`, ...this.cookieHeader(), ...headers } }));
  }

  /** A form POST; `_csrf` is the last token seen unless the form says otherwise; Origin is ours unless given. */
  async post(path: string, form: Record<string, string>, o: { csrf?: string | null; headers?: Record<string, string> } = {}): Promise<Reply> {
    const fields = { ...form };
    const csrf = o.csrf === undefined ? this.csrf : o.csrf;
    if (csrf !== null) fields._csrf = csrf;
    const body = new URLSearchParams(fields).toString();
    return this.keep(
      await rawRequest(this.port, 'POST', path, {
        headers: { Host: `127.0.0.1:${this.port}`, Origin: this.origin, 'Content-Type': 'application/x-www-form-urlencoded', ...this.cookieHeader(), ...(o.headers ?? {}) },
        body,
      }),
    );
  }

  async login(user: string, password: string): Promise<Reply> {
    await this.get('/login');
    return this.post('/login', { user, password });
  }
}
