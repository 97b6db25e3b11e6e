import { execFile } from 'node:child_process';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { LineReader } from '../../src/protocols/pop3/wire.js';

/** A self-signed EC certificate and key for `cn` and 127.0.0.1 (PEM files in `dir`), made with openssl. */
export async function selfSignedCert(dir: string, cn = 'avgate.test'): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${cn}-cert.pem`);
  const key = join(dir, `${cn}-key.pem`);
  await promisify(execFile)('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${cn}`,
    '-addext', `subjectAltName=DNS:${cn},IP:127.0.0.1`,
  ]);
  return { cert, key };
}

/**
 * The client's side of an in-protocol upgrade (STARTTLS, STLS) after the server's go-ahead: the
 * plain reader lets go (what it held is dropped), TLS starts on the same socket (any certificate
 * accepted), and a line reader over it is returned.
 */
export async function clientTls(socket: Socket, plain: LineReader): Promise<{ secure: TLSSocket; reader: LineReader }> {
  plain.detach();
  const secure = tlsConnect({ socket, rejectUnauthorized: false });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', reject);
  });
  return { secure, reader: new LineReader(secure) };
}
