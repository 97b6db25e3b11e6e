import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { Config } from '../config/schema.js';
import { messageOf } from '../core/errors.js';
import { DEFAULT_TOKEN_SCOPES, parseScopes, PasswordStore, TokenStore, TOKEN_SCOPES, type TokenScope } from '../web/auth.js';

export const ADMIN_USAGE = `usage: avgate admin passwd [--user NAME] [--password-stdin] | --remove NAME
       avgate admin token add NAME [--scope SCOPES] | list | remove NAME

passwd        set a console user's password (scrypt hash in console.password-file); asks twice on a
              terminal, or reads one line from standard input with --password-stdin. The user's
              console sessions end at once
passwd --remove
              remove a console user; their sessions end at once
token add     create an API token; printed once, only its SHA-256 is kept. --scope: what it may do,
              one or more of ${TOKEN_SCOPES.join(',')} separated by commas (default scan):
                scan        POST /api/v1/scan
                read        statistics, the quarantine's list and items, /metrics
                quarantine  release and delete quarantined items
token list    token names, creation dates and scopes
token remove  revoke a token
`;

/** A token's scopes as `token list` shows them. */
function scopesText(scopes: readonly TokenScope[] | null): string {
  return scopes === null ? 'all (made before scopes)' : scopes.length > 0 ? scopes.join(',') : 'none';
}

export interface AdminIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

async function readLine(stdin: NodeJS.ReadableStream): Promise<string> {
  let text = '';
  for await (const chunk of stdin as AsyncIterable<Buffer | string>) {
    text += chunk.toString();
    if (text.includes('\n') || text.length > 4096) break;
  }
  return (text.split('\n')[0] ?? '').replace(/\r$/, '');
}

/** Reads a password from the terminal without echo. */
async function askHidden(prompt: string, io: AdminIo): Promise<string> {
  const stdin = io.stdin as NodeJS.ReadStream;
  io.stderr.write(prompt);
  stdin.setRawMode?.(true);
  let text = '';
  try {
    for await (const chunk of stdin as AsyncIterable<Buffer>) {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return text;
        if (ch === '\u0003') throw new Error('interrupted');
        if (ch === '\u007f') text = text.slice(0, -1);
        else text += ch;
      }
    }
    return text;
  } finally {
    stdin.setRawMode?.(false);
    stdin.pause();
    io.stderr.write('\n');
  }
}

export async function runAdminCommand(config: Readonly<Config>, args: string[], io: AdminIo): Promise<number> {
  const stateDir = resolve(config['state-dir']);
  const [sub, ...rest] = args;
  try {
    if (sub === 'passwd') {
      const { values } = parseArgs({ args: rest, options: { user: { type: 'string' }, 'password-stdin': { type: 'boolean', default: false }, remove: { type: 'string' } } });
      const store = new PasswordStore(resolve(stateDir, config.console['password-file']));
      if (values.remove !== undefined) {
        if (values.user !== undefined || values['password-stdin']) {
          io.stderr.write(ADMIN_USAGE);
          return 2;
        }
        if (!(await store.remove(values.remove))) {
          io.stderr.write(`avgate: no console user named "${values.remove}"\n`);
          return 1;
        }
        io.stdout.write(`user ${values.remove} removed; their console sessions end at once (${store.path})\n`);
        return 0;
      }
      const user = values.user ?? 'admin';
      let password: string;
      if (values['password-stdin'] || !io.stdin.isTTY) {
        password = await readLine(io.stdin);
      } else {
        password = await askHidden(`new password for ${user}: `, io);
        if ((await askHidden('again: ', io)) !== password) {
          io.stderr.write('avgate: the passwords differ; nothing changed\n');
          return 1;
        }
      }
      await store.setPassword(user, password);
      io.stdout.write(`password of ${user} set; their console sessions end at once (${store.path})\n`);
      return 0;
    }
    if (sub === 'token') {
      const store = new TokenStore(resolve(stateDir, config.console['tokens-file']));
      const { values, positionals } = parseArgs({ args: rest, options: { scope: { type: 'string' } }, allowPositionals: true });
      const [verb, name, ...extra] = positionals;
      if (values.scope !== undefined && verb !== 'add') {
        io.stderr.write(ADMIN_USAGE);
        return 2;
      }
      if (verb === 'add' && name && extra.length === 0) {
        const scopes = values.scope === undefined ? DEFAULT_TOKEN_SCOPES : parseScopes(values.scope);
        const token = await store.add(name, scopes);
        io.stderr.write(`token ${name} created with scopes ${scopesText(scopes)}; it is shown only now:\n`);
        io.stdout.write(`${token}\n`);
        return 0;
      }
      if (verb === 'list' && !name) {
        for (const t of await store.list()) io.stdout.write(`${t.name}\t${t.created}\t${scopesText(t.scopes)}\n`);
        return 0;
      }
      if (verb === 'remove' && name && extra.length === 0) {
        if (!(await store.remove(name))) {
          io.stderr.write(`avgate: no token named "${name}"\n`);
          return 1;
        }
        io.stdout.write(`token ${name} removed\n`);
        return 0;
      }
    }
  } catch (err) {
    io.stderr.write(`avgate: ${messageOf(err)}\n`);
    return 1;
  }
  io.stderr.write(ADMIN_USAGE);
  return 2;
}
