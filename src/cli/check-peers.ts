import type { Socket } from 'node:net';
import type { Config } from '../config/schema.js';
import { messageOf } from '../core/errors.js';
import { connectWithTimeout, splitHostPort, type ConnectTarget } from '../core/net.js';
import { printable } from '../protocols/ftp/wire.js';
import { parseNextHop } from '../protocols/smtp/client.js';

/** A server an enabled front end hands things on to, and what happens while it does not answer. */
interface Peer {
  label: string;
  target: ConnectTarget;
  /** It greets in clear (SMTP, LMTP, IMAP, POP3, FTP): its first line is shown. */
  greets: boolean;
  meanwhile: string;
}

/** The fixed servers of the enabled front ends: the SMTP next hop, the proxies' upstreams, the parent proxy. */
export function peersOf(config: Readonly<Config>): Peer[] {
  const peers: Peer[] = [];
  if (config.smtp.enabled) {
    const t = parseNextHop(config.smtp['next-hop'].target);
    if (t.kind !== 'cmd') {
      peers.push({ label: `smtp.next-hop ${config.smtp['next-hop'].target}`, target: t.kind === 'unix' ? { path: t.path } : { host: t.host, port: t.port }, greets: true, meanwhile: 'mail gets 4xx and is retried by the client' });
    }
  }
  const imap = config['imap-proxy'];
  if (imap.enabled) peers.push({ label: `imap-proxy.upstream ${imap.upstream}`, target: splitHostPort(imap.upstream), greets: imap['upstream-tls'] !== 'tls', meanwhile: 'clients get * BYE' });
  const pop3 = config['pop3-proxy'];
  if (pop3.enabled && pop3.upstream !== null) peers.push({ label: `pop3-proxy.upstream ${pop3.upstream}`, target: splitHostPort(pop3.upstream), greets: pop3['upstream-tls'] !== 'tls', meanwhile: 'clients get -ERR' });
  const ftp = config['ftp-proxy'];
  if (ftp.enabled && ftp.upstream !== null) peers.push({ label: `ftp-proxy.upstream ${ftp.upstream}`, target: splitHostPort(ftp.upstream), greets: ftp['upstream-tls'] !== 'tls', meanwhile: 'clients get 421' });
  const http = config['http-proxy'];
  if (http.enabled && http['parent-proxy'] !== null) peers.push({ label: `http-proxy.parent-proxy ${http['parent-proxy']}`, target: splitHostPort(http['parent-proxy']), greets: false, meanwhile: 'requests get 502' });
  return peers;
}

/**
 * `config check`: can each fixed server be reached now? A line per server: OK with its greeting,
 * or a warning (it may simply not run yet: avgate starts without it and fails closed meanwhile).
 */
export async function checkPeers(config: Readonly<Config>, timeoutMs = 5000): Promise<string[]> {
  return Promise.all(
    peersOf(config).map(async (p) => {
      try {
        const s = await connectWithTimeout(p.target, { timeoutMs, label: p.label });
        try {
          const greeting = p.greets ? await firstLine(s, Math.min(timeoutMs, 3000)) : null;
          return `${p.label}: OK (${greeting === null ? 'accepts connections' : `greets ${JSON.stringify(printable(greeting, 80))}`})`;
        } finally {
          s.destroy();
        }
      } catch (err) {
        return `warning: ${messageOf(err)}: does not answer now (${p.meanwhile} until it does)`;
      }
    }),
  );
}

/** The first line the server sends within timeoutMs; null when it sends none. */
function firstLine(s: Socket, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    let text = '';
    const done = (v: string | null) => {
      clearTimeout(timer);
      s.off('data', onData);
      resolve(v);
    };
    const onData = (d: Buffer) => {
      text += d.toString('latin1');
      const nl = text.indexOf('\n');
      if (nl >= 0 || text.length > 512) done(text.slice(0, nl >= 0 ? nl : 512).replace(/\r$/, ''));
    };
    const timer = setTimeout(() => done(text.length > 0 ? text : null), timeoutMs);
    s.on('data', onData);
    s.once('close', () => done(text.length > 0 ? text : null));
  });
}
