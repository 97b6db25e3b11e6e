import { readFileSync } from 'node:fs';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { startAvgatePeer } from '../../tools/peers/avgate.js';
import type { TestClamd } from './clamd.js';
import { crlf } from './smtp.js';

/** avgate serve with the mail filter (and its policy YAML) on a free port, scanning with `clamd`. */
export async function startMailAvgate(o: { clamd: TestClamd; stateDir: string; nextHop: string; smtpYaml?: string; mailYaml?: string }) {
  const s = await startAvgatePeer({
    clamd: o.clamd,
    stateDir: o.stateDir,
    smtpYaml: [`next-hop:`, `  target: ${o.nextHop}`, 'hostname: avgate.test', o.smtpYaml ?? ''].join('\n'),
    yaml: o.mailYaml ? `mail:\n${o.mailYaml.split('\n').map((l) => `  ${l}`).join('\n')}` : '',
  });
  if (s.smtpPort === null || !s.mail) throw new Error('mail filter not started');
  return { ...s, smtpPort: s.smtpPort, mail: s.mail };
}

function base64Lines(data: Buffer): string[] {
  return (data.toString('base64').match(/.{1,76}/g) ?? []) as string[];
}

export interface Attachment {
  name: string;
  type: string;
  data: Buffer;
}

/** A multipart/mixed message: a text part and the attachments (base64). */
export function mailWith(id: string, attachments: Attachment[], extraHeaders: string[] = []): Buffer {
  const boundary = `b-${id}`;
  return crlf([
    'From: Alice <a@example.com>',
    'To: Bob <b@example.net>',
    `Subject: test ${id}`,
    'Date: Sun, 22 Nov 2026 10:00:00 +0000',
    `Message-ID: <${id}@example.com>`,
    ...extraHeaders,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    '',
    'preamble',
    `--${boundary}`,
    'Content-Type: text/plain; charset=utf-8',
    '',
    `Hello, this is message ${id}.`,
    ...attachments.flatMap((a) => [
      `--${boundary}`,
      `Content-Type: ${a.type}; name="${a.name}"`,
      'Content-Transfer-Encoding: base64',
      `Content-Disposition: attachment; filename="${a.name}"`,
      '',
      ...base64Lines(a.data),
    ]),
    `--${boundary}--`,
    '',
  ]);
}

/** EICAR in a file with some text around it (never written literally anywhere). */
export function eicarAttachment(name = 'eicar.com'): Attachment {
  return { name, type: 'application/octet-stream', data: eicarBytes() };
}

export function clamZipAttachment(): Attachment {
  return { name: 'clam.zip', type: 'application/zip', data: readFileSync('/usr/share/clamav-testfiles/clam.zip') };
}

/** A message whose attachment is another message (message/rfc822) carrying EICAR. */
export function forwardedEicar(id: string): Buffer {
  const inner = mailWith(`${id}-inner`, [eicarAttachment('inner.com')]);
  const boundary = `o-${id}`;
  return Buffer.concat([
    crlf([
      'From: Alice <a@example.com>',
      'To: Bob <b@example.net>',
      `Subject: fwd ${id}`,
      `Message-ID: <${id}@example.com>`,
      'MIME-Version: 1.0',
      `Content-Type: multipart/mixed; boundary="${boundary}"`,
      '',
      `--${boundary}`,
      'Content-Type: text/plain',
      '',
      'see attached',
      `--${boundary}`,
      'Content-Type: message/rfc822',
      'Content-Disposition: attachment; filename="fwd.eml"',
      '',
    ]),
    inner,
    crlf([`--${boundary}--`, '']),
  ]);
}
