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
 * TLS as the client on a socket whose plain reader has let go (after the server's go-ahead to
 * STARTTLS, STLS, AUTH TLS): any certificate accepted; resolves once the handshake is done.
 */
export async function tlsOver(socket: Socket): Promise<TLSSocket> {
  socket.pause();
  const secure = tlsConnect({ socket, rejectUnauthorized: false });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', reject);
  });
  return secure;
}

/** A test client's reader on a socket: its data and close handlers (errors are reported by close). */
export function attachReader(socket: Socket, onData: (d: Buffer) => void, onClose: () => void): void {
  socket.on('data', onData);
  socket.on('close', onClose);
  socket.on('error', () => undefined);
}

/** Moves a test client's reader (attachReader) from the plain socket to TLS over it; returns the TLS socket. */
export async function moveReaderToTls(plain: Socket, onData: (d: Buffer) => void, onClose: () => void): Promise<TLSSocket> {
  plain.off('data', onData);
  plain.off('close', onClose);
  const secure = await tlsOver(plain);
  attachReader(secure, onData, onClose);
  return secure;
}

/**
 * The client's side of an in-protocol upgrade (STARTTLS, STLS) after the server's go-ahead: the
 * plain reader lets go (what it held is dropped), TLS starts on the same socket, and a line
 * reader over it is returned.
 */
export async function clientTls(socket: Socket, plain: LineReader): Promise<{ secure: TLSSocket; reader: LineReader }> {
  plain.detach();
  const secure = await tlsOver(socket);
  return { secure, reader: new LineReader(secure) };
}
