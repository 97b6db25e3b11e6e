import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

/** Every file under `dir`, recursively (for "no plaintext on disk" checks). */
export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out;
}

/** A self-signed EC certificate and key for `cn` (PEM files in `dir`), made with openssl. */
export async function selfSignedCert(dir: string, cn = 'avgate.test'): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${cn}-cert.pem`);
  const key = join(dir, `${cn}-key.pem`);
  await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${cn}`]);
  return { cert, key };
}
