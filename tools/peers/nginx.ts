/**
 * nginx (Debian `nginx-light`) as an origin server for the HTTP proxy's tests and benchmark: in the
 * foreground (`daemon off`) with its own prefix, config, logs and temp dirs in `dir`, serving
 * `root` on a free loopback port. `/gzip/` serves the same files compressed on the fly
 * (Content-Encoding: gzip for clients that ask, proxied requests included).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { accepts, startPeer, tail, type PeerProcess } from './process.js';

export const NGINX_BIN = '/usr/sbin/nginx';

export interface NginxOptions {
  /** Prefix: config, pid, logs and temp dirs go here. */
  dir: string;
  /** The document root. */
  root: string;
  startTimeoutMs?: number;
}

export interface Nginx extends PeerProcess {
  url(path: string): string;
  logTail(): string;
}

export async function startNginx(o: NginxOptions): Promise<Nginx> {
  const conf = join(o.dir, 'nginx.conf');
  const errorLog = join(o.dir, 'error.log');
  for (const d of ['tmp/body', 'tmp/proxy', 'tmp/fastcgi', 'tmp/uwsgi', 'tmp/scgi']) await mkdir(join(o.dir, d), { recursive: true });
  const peer = await startPeer({
    name: 'nginx',
    command: NGINX_BIN,
    args: ['-p', o.dir, '-c', conf, '-e', errorLog],
    outPath: join(o.dir, 'nginx.out'),
    diagnostics: () => `${tail(errorLog, 2000)}\n${tail(join(o.dir, 'nginx.out'), 1000)}`,
    ...(o.startTimeoutMs ? { startTimeoutMs: o.startTimeoutMs } : {}),
    ready: (port) => accepts(port),
    writeConfig: (port) =>
      writeFile(
        conf,
        [
          'daemon off;',
          'master_process off;',
          'worker_processes 1;',
          `pid ${join(o.dir, 'nginx.pid')};`,
          `error_log ${errorLog} warn;`,
          'events { worker_connections 256; }',
          'http {',
          `  access_log ${join(o.dir, 'access.log')};`,
          `  client_body_temp_path ${join(o.dir, 'tmp/body')};`,
          `  proxy_temp_path ${join(o.dir, 'tmp/proxy')};`,
          `  fastcgi_temp_path ${join(o.dir, 'tmp/fastcgi')};`,
          `  uwsgi_temp_path ${join(o.dir, 'tmp/uwsgi')};`,
          `  scgi_temp_path ${join(o.dir, 'tmp/scgi')};`,
          '  default_type application/octet-stream;',
          '  keepalive_timeout 30s;',
          '  sendfile on;',
          // A conditional GET with any later date gets 304 (the default wants the exact date).
          '  if_modified_since before;',
          '  server {',
          `    listen 127.0.0.1:${port};`,
          `    root ${o.root};`,
          '    location /gzip/ {',
          `      alias ${o.root}/;`,
          '      gzip on;',
          '      gzip_min_length 1;',
          '      gzip_types *;',
          // Requests through a proxy carry Via: nginx compresses them only when told to.
          '      gzip_proxied any;',
          '    }',
          '  }',
          '}',
          '',
        ].join('\n'),
      ),
  });
  return {
    ...peer,
    url: (path) => `http://127.0.0.1:${peer.port}/${path}`,
    logTail: () => tail(errorLog, 2000),
  };
}
